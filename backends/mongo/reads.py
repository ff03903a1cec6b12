"""What the store reads: the figures (folded ones plus the deltas not folded yet, in
one snapshot, see :mod:`.rollup`), sessions, events, the KPIs' ranges, heartbeats.
Every read is an index lookup or range bounded by ``maxTimeMS``."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from gso_analytics.clock import from_ms
from gso_analytics.deltas import add_up, days_with_pending, plus
from gso_analytics.erasure import UserRecords, read_user_records
from gso_analytics.model import (
    DailyStats,
    EventRecord,
    Heartbeat,
    Logout,
    MonthStats,
    Number,
    SessionRecord,
)

from .connection import Connection
from .documents import FIRST_DAYS, event_record, logout_mark, session_record
from .options import READ_TIMEOUT_MS, aware, check_str, majority
from .rollup import TOTALS_ID, unfolded

_NOT_COUNTERS = ("_id", "day", "month", "appliedBatches")


class Reads(Connection):
    """The read half of :class:`~.store.MongoStore`."""

    def _find(self, name: str, query: Mapping[str, Any], fields: Any = None, **kw: Any) -> Any:
        return self._collection(name).find(query, fields, max_time_ms=READ_TIMEOUT_MS, **kw)

    # -- the figures: folded + not folded yet, in one snapshot -------------------------------

    def _days(self, query: Mapping[str, Any], keep: Any, limit: int = 0) -> list[DailyStats]:
        """The days of ``daily`` matching ``query`` (newest first, at most ``limit``)
        with the unfolded deltas of the days ``keep(day)`` accepts added."""

        def read(s: Any) -> list[DailyStats]:
            cursor = self._find("daily", query, {"appliedBatches": 0}, session=s).sort("day", -1)
            folded = {
                doc["day"]: (doc["month"], {k: v for k, v in doc.items() if k not in _NOT_COUNTERS})
                for doc in cursor.limit(limit)
            }
            pending, _, _ = add_up(unfolded(self, s, {"daily": 1}))
            return days_with_pending(folded, pending, keep, limit)

        return self._snapshot("reading days", read)

    def get_day(self, day: str) -> DailyStats | None:
        check_str(day, "day")
        found = self._days({"day": day}, lambda d: d == day)
        return found[0] if found else None

    def recent_days(self, limit: int = 30) -> list[DailyStats]:
        return self._days({}, lambda d: True, int(limit))

    def days_between(self, start: str, end: str) -> list[DailyStats]:
        query = {"day": {"$gte": check_str(start, "start"), "$lte": check_str(end, "end")}}
        return sorted(self._days(query, lambda d: start <= d <= end), key=lambda d: d.day)

    def get_month(self, month: str) -> MonthStats:
        check_str(month, "month")

        def read(s: Any) -> dict[str, Number]:
            found = self._find("monthly", {"month": month}, session=s).limit(1)
            doc: Mapping[str, Any] = next(iter(found), {})
            _, pending, _ = add_up(unfolded(self, s, {"monthly": 1}))
            fields = {k: v for k, v in doc.items() if k not in _NOT_COUNTERS}
            return plus(fields, pending.get(month, {}))

        figures = self._snapshot(f"reading month {month}", read)
        return MonthStats.from_fields(month, {k: int(v) for k, v in figures.items()})

    def get_totals(self) -> dict[str, Number]:
        def read(s: Any) -> dict[str, Number]:
            found = self._find("totals", {"_id": TOTALS_ID}, session=s).limit(1)
            doc: Mapping[str, Any] = next(iter(found), {})
            _, _, pending = add_up(unfolded(self, s))
            return plus({k: v for k, v in doc.items() if k not in _NOT_COUNTERS}, pending)

        return self._snapshot("reading the totals", read)

    # -- heartbeats (not part of any batch) ------------------------------------------------------

    def save_heartbeat(self, heartbeat: Heartbeat) -> None:
        doc = {
            "_id": heartbeat.process,
            "host": heartbeat.host,
            "pid": heartbeat.pid,
            "at": heartbeat.at,
            "expiresAt": heartbeat.expires_at,
            "payload": heartbeat.payload(),
        }
        with self._errors("writing a heartbeat"):
            beats = self._collection("heartbeats").with_options(write_concern=majority())
            beats.replace_one({"_id": doc["_id"]}, doc, upsert=True)

    def live_heartbeats(self, now: datetime) -> list[Heartbeat]:
        with self._errors("reading the heartbeats"):
            docs = list(self._find("heartbeats", {"expiresAt": {"$gt": now}}).sort("_id", 1))
        return [
            Heartbeat.from_payload(
                d["_id"], d["host"], d["pid"], aware(d["at"]), aware(d["expiresAt"]), d["payload"]
            )
            for d in docs
        ]

    def forget_heartbeats(self, expired_before: datetime) -> None:
        with self._errors("deleting expired heartbeats"):
            beats = self._collection("heartbeats").with_options(write_concern=majority())
            beats.delete_many({"expiresAt": {"$lt": expired_before}})

    def withdraw_heartbeat(self, process: str) -> None:
        with self._errors("withdrawing a heartbeat"):
            beats = self._collection("heartbeats").with_options(write_concern=majority())
            beats.delete_one({"_id": process})

    # -- sessions and events ---------------------------------------------------------------------

    def count_active_sessions(self, since_ms: int) -> int:
        with self._errors("counting active sessions"):
            return int(
                self._collection("sessions").count_documents(
                    {"open": True, "lastAt": {"$gte": from_ms(since_ms)}},
                    maxTimeMS=READ_TIMEOUT_MS,
                )
            )

    def get_sessions(self, user_id: str) -> list[SessionRecord]:
        check_str(user_id, "user_id")
        with self._errors("reading sessions"):
            docs = list(
                self._find("sessions", {"userId": user_id}).sort(
                    [("loginAt", 1), ("origin", 1), ("seq", 1)]
                )
            )
        return [session_record(doc) for doc in docs]

    def get_logouts(self, user_id: str) -> list[Logout]:
        query = {"userId": check_str(user_id, "user_id")}
        with self._errors("reading logout marks"):
            docs = list(self._find("logouts", query).sort([("at", 1), ("origin", 1), ("seq", 1)]))
        return [logout_mark(doc) for doc in docs]

    def get_events(self, user_id: str | None = None, limit: int = 1000) -> list[EventRecord]:
        """Newest first by time, ties by ``_id`` (so the order is total): the index of
        ``{userId, ts}`` (or of ``ts``) finds them, the server keeps the newest ``limit``
        (a top-k sort, memory bounded by ``limit``); returned oldest first."""
        query = {} if user_id is None else {"userId": check_str(user_id, "user_id")}
        with self._errors("reading events"):
            docs = list(
                self._find("events", query).sort([("ts", -1), ("_id", -1)]).limit(int(limit))
            )
        return [event_record(doc) for doc in reversed(docs)]

    # -- KPI range reads: each an index range on the day key -------------------------------------

    def _day_range(
        self, name: str, start: str, end: str, fields: dict[str, int] | None
    ) -> list[Any]:
        query = {"day": {"$gte": check_str(start, "start"), "$lte": check_str(end, "end")}}
        with self._errors(f"reading {name} from {start} to {end}"):
            return list(self._find(name, query, fields))

    def _grouped(self, name: str, user_key: str, start: str, end: str) -> dict[str, set[str]]:
        found: dict[str, set[str]] = {}
        for doc in self._day_range(name, start, end, {"day": 1, user_key: 1}):
            found.setdefault(doc["day"], set()).add(doc[user_key])
        return found

    def day_users_between(self, start: str, end: str) -> dict[str, set[str]]:
        return self._grouped("day_users", "userId", start, end)

    def count_day_users(self, start: str, end: str) -> int:
        days = {"$gte": check_str(start, "start"), "$lte": check_str(end, "end")}
        pipeline = [{"$match": {"day": days}}, {"$group": {"_id": "$userId"}}, {"$count": "users"}]
        with self._errors("counting active users"):
            found = list(
                self._collection("day_users").aggregate(pipeline, maxTimeMS=READ_TIMEOUT_MS)
            )
        return int(found[0]["users"]) if found else 0

    def first_seen_between(self, start: str, end: str) -> dict[str, set[str]]:
        return self._grouped("first_seen", "_id", start, end)

    def first_payments_between(self, start: str, end: str) -> dict[str, set[str]]:
        return self._grouped("first_payments", "_id", start, end)

    def user_revenue_between(self, start: str, end: str) -> dict[str, dict[str, Number]]:
        found: dict[str, dict[str, Number]] = {}
        fields = {"day": 1, "userId": 1, "revenueCents": 1}
        for doc in self._day_range("user_revenue", start, end, fields):
            found.setdefault(doc["day"], {})[doc["userId"]] = doc.get("revenueCents", 0)
        return found

    def sessions_between(self, start: str, end: str) -> list[SessionRecord]:
        return [session_record(doc) for doc in self._day_range("sessions", start, end, None)]

    def events_between(
        self, start: str | None, end: str | None, names: list[str]
    ) -> list[EventRecord]:
        """On the ``{event, ts}`` index, one range per name, in time order (ties by
        ``_id``); the event TTL bounds what the server sorts."""
        query: dict[str, Any] = {"event": {"$in": [check_str(n, "event") for n in names]}}
        days: dict[str, str] = {}
        if start is not None:
            days["$gte"] = check_str(start, "start")
        if end is not None:
            days["$lte"] = check_str(end, "end")
        if days:
            query["day"] = days
        with self._errors("reading events for a funnel"):
            docs = list(self._find("events", query).sort([("ts", 1), ("_id", 1)]))
        return [event_record(doc) for doc in docs]

    def user_records(self, user_id: str) -> UserRecords:
        check_str(user_id, "user_id")

        def keys(name: str, key: str) -> list[str]:
            return sorted(doc[key] for doc in self._find(name, {"userId": user_id}, {key: 1}))

        def first(name: str) -> str | None:
            player = FIRST_DAYS[name]
            found = next(iter(self._find(name, {player: user_id}).limit(1)), None)
            return None if found is None else str(found["day"])

        with self._errors("reading a player's records"):
            revenue = {
                doc["day"]: doc["revenueCents"]
                for doc in self._find(
                    "user_revenue", {"userId": user_id}, {"day": 1, "revenueCents": 1}
                )
            }
            return read_user_records(keys, first, revenue)
