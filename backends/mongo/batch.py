"""One batch part as one MongoDB transaction: the :class:`Transaction` vocabulary
translated into reads in the transaction's snapshot and writes sent, in bulk, just
before it commits.

Every write of a part is in its transaction, events included: a retry is either a
duplicate (the part's document in ``batches`` exists) or a clean re-run, and nothing
of an aborted attempt is left behind. What two workers' parts may both write decides
whether they conflict, so a part writes only:

- documents of its own players: the (day, user) and (month, user) records (upserts
  keyed by ``{userId, day|month}``, whose ``upsertedCount`` says how many players are
  new), the registration record (one per player, ``{userId, day}``: a part that
  moves a player's ``newUsers`` writes it, so two parts that would both move the
  same player conflict, and the later one reads the other's day when retried),
  revenue and first days, sessions, logout marks and activity runs, and, for
  players with marks, their ``session_users`` document (two parts that both read one
  player's sessions then conflict instead of each missing the other's: the write skew
  snapshot isolation would otherwise allow);
- new documents: its events, and its own ``batches`` document, which is the
  exactly-once guard and carries the part's day, month and all-time increments as a
  *delta* (insert-only; :mod:`.rollup` folds deltas into ``daily``, ``monthly`` and
  ``totals`` later, and reads add the deltas not folded yet).

So parts of different players write no common document (and parts whose players
have no marks write none either). An erase is not fenced by a document every part
writes: see :mod:`.erase`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from gso_analytics.clock import from_ms
from gso_analytics.counters import MICRO_SUFFIX
from gso_analytics.deltas import DeltaBuffer, capped_increments
from gso_analytics.errors import StoreError
from gso_analytics.model import ID, USER, ActivityRun, EventRow, Logout, Number, StoredSession
from gso_analytics.pacing import paced_slices
from gso_analytics.store import Transaction

from . import erase
from .documents import (
    activity_doc,
    activity_run,
    data_value,
    event_doc,
    event_record,
    logout_doc,
    logout_mark,
    session_doc,
    stored_session,
)
from .options import READ_TIMEOUT_MS, pymongo

if TYPE_CHECKING:
    from .connection import Connection

#: Event documents per ``insert_many``: the driver encodes each call to BSON holding
#: the GIL, and this many small documents take about a quarter of a millisecond.
EVENT_CHUNK = 256
#: Event documents built between two looks at the clock: each costs 10-30 µs (its
#: ``data`` parsed into a subdocument, its time made a ``datetime``).
DOCS_PER_LOOK = 8


#: Names a counter can never have: they key the figures' documents.
RESERVED_FIELDS = frozenset({"_id", "day", "month", "appliedBatches"})


def _check_fields(fields: Mapping[str, Number]) -> None:
    for field in fields:
        name = field.removesuffix(MICRO_SUFFIX)  # a decimal counter's (see .counters)
        if not name.isidentifier() or field in RESERVED_FIELDS:
            raise StoreError(f"counter field {field!r} cannot be stored in MongoDB", permanent=True)


class Replan(Exception):
    """The batch was split before with other bounds (its plan says which): it must be
    split the same way again, or a part would be counted twice."""

    def __init__(self, bounds: tuple[int, int, int]) -> None:
        super().__init__(bounds)
        self.bounds = bounds


class BatchTransaction(Transaction):
    """A part (or a chunk of the prune) in one transaction: reads in its snapshot,
    writes buffered and sent by :meth:`flush_writes` before the commit."""

    def __init__(self, store: Connection, session: Any) -> None:
        self.store = store
        self.session = session
        #: Ids whose document means this part is applied too (the whole batch's id).
        self.also_applied: tuple[str, ...] = ()
        #: The batch's plan (``{_id, bounds}``): an earlier attempt's, with other
        #: bounds, makes the claim raise :class:`Replan`; the first part of a split
        #: batch records it (``record_plan``) unless an earlier attempt did.
        self.plan: dict[str, Any] | None = None
        self.record_plan = False
        #: user -> keyed hash of the part's players that were not erased in the
        #: snapshot: the store looks for their tombstones again after the commit.
        self.unerased: dict[str, str] = {}
        self.part_id: str | None = None
        self.created_at: datetime | None = None
        self.duplicate = False
        self._delta = DeltaBuffer()
        self._events: list[EventRow] = []
        self._first_days: dict[str, dict[str, str]] = {}
        self._revenue: dict[tuple[str, str], Number] = {}
        self._sessions: dict[str, dict[str, Any]] = {}
        self._logouts: list[dict[str, Any]] = []
        self._activity: list[dict[str, Any]] = []
        self._deleted_sessions: list[str] = []
        self._fenced: set[str] = set()

    # -- plumbing ---------------------------------------------------------------------

    def _c(self, name: str) -> Any:
        return self.store._collection(name)

    def _find(self, name: str, query: dict[str, Any], fields: Any = None) -> Any:
        return self._c(name).find(query, fields, session=self.session, max_time_ms=READ_TIMEOUT_MS)

    # -- the part's id ------------------------------------------------------------------

    def prepare(
        self,
        *,
        also_applied: tuple[str, ...],
        plan: dict[str, Any] | None,
        record_plan: bool,
        unerased: dict[str, str],
    ) -> None:
        """What the part's claim checks besides its id (see the attributes), and the
        dict :meth:`tombstones` fills with the players it found not erased."""
        self.also_applied, self.plan, self.record_plan = also_applied, plan, record_plan
        self.unerased = unerased

    def claim_batch(self, batch_id: str, at: datetime) -> bool:
        """Read only: the part's document is written with the part's other writes. One
        query looks for it, for the whole batch's (applied whole by an earlier attempt)
        and for the batch's plan (split with other bounds by an earlier attempt)."""
        self.part_id, self.created_at = batch_id, at
        ids = [batch_id, *self.also_applied]
        if self.plan is not None:
            ids.append(self.plan["_id"])
        found = {
            doc["_id"]: doc for doc in self._find("batches", {"_id": {"$in": ids}}, {"bounds": 1})
        }
        if self.plan is not None and self.plan["_id"] in found:
            bounds = tuple(found[self.plan["_id"]]["bounds"])
            if bounds != tuple(self.plan["bounds"]):
                raise Replan((int(bounds[0]), int(bounds[1]), int(bounds[2])))
            self.record_plan = False  # recorded by an earlier attempt
        if any(i in found for i in (batch_id, *self.also_applied)):
            self.duplicate = True
            return False
        return True

    # -- (day, user) and (month, user) records -------------------------------------------

    def _add_users(self, name: str, key: str, value: str, users: set[str]) -> int:
        if not users:
            return 0
        driver = pymongo()
        result = self._c(name).bulk_write(
            [
                driver.UpdateOne(
                    {"userId": user, key: value},
                    {"$setOnInsert": {"batchId": self.part_id}},
                    upsert=True,
                )
                for user in sorted(users)
            ],
            ordered=False,
            session=self.session,
        )
        return int(result.upserted_count)

    def add_day_users(self, day: str, users: set[str]) -> int:
        return self._add_users("day_users", "day", day, users)

    def add_month_users(self, month: str, users: set[str]) -> int:
        return self._add_users("month_users", "month", month, users)

    def registration_days(self, users: set[str]) -> dict[str, str]:
        found = self._find("new_users", {"userId": {"$in": sorted(users)}}, {"day": 1, "userId": 1})
        return {doc["userId"]: doc["day"] for doc in found}

    def set_registration_days(self, days: dict[str, str]) -> None:
        """Sent at once, as the activity records: the part read these documents in
        its snapshot, and this write is what makes a concurrent part's write of the
        same player conflict."""
        driver = pymongo()
        self._c("new_users").bulk_write(
            [
                driver.UpdateOne(
                    {"userId": user},
                    {"$min": {"day": day}, "$setOnInsert": {"batchId": self.part_id}},
                    upsert=True,
                )
                for user, day in sorted(days.items())
            ],
            ordered=False,
            session=self.session,
        )

    # -- counters (the part's delta), events and per-user facts: sent before commit ----

    def increment_daily(self, day: str, month: str, increments: dict[str, Number]) -> None:
        self._delta.add_daily(day, month, increments)

    def increment_monthly(self, month: str, increments: dict[str, int]) -> None:
        self._delta.add_monthly(month, increments)

    def insert_events(self, events: list[EventRow]) -> None:
        self._events.extend(events)

    def _keep_first(self, name: str, first_days: dict[str, str]) -> None:
        kept = self._first_days.setdefault(name, {})
        for user, day in first_days.items():
            if user not in kept or day < kept[user]:
                kept[user] = day

    def add_first_seen(self, first_days: dict[str, str]) -> None:
        self._keep_first("first_seen", first_days)

    def add_first_payments(self, first_days: dict[str, str]) -> None:
        self._keep_first("first_payments", first_days)

    def add_user_revenue(self, revenue: dict[str, dict[str, Number]]) -> None:
        for day, payers in revenue.items():
            for user, cents in payers.items():
                self._revenue[day, user] = self._revenue.get((day, user), 0) + cents

    # -- sessions ----------------------------------------------------------------------

    def sessions_since(self, users: set[str], since_ms: int) -> list[StoredSession]:
        """Two queries for the whole part. Each player read is fenced (module docstring)."""
        self._fenced.update(users)
        players = sorted(users)
        query = {"userId": {"$in": players}, "lastAt": {"$gte": from_ms(since_ms)}}
        docs = {doc["_id"]: doc for doc in self._find("sessions", query)}
        for doc in self._find("sessions", {"open": True, "userId": {"$in": players}}):
            docs.setdefault(doc["_id"], doc)
        return [stored_session(doc) for doc in docs.values()]

    def logouts_since(self, users: set[str], since_ms: int) -> list[Logout]:
        query = {"userId": {"$in": sorted(users)}, "at": {"$gte": from_ms(since_ms)}}
        return [logout_mark(doc) for doc in self._find("logouts", query)]

    def activity_runs(self, user_id: str, first_ms: int, last_ms: int) -> list[ActivityRun]:
        query = {
            "userId": user_id,
            "lastAt": {"$gte": from_ms(first_ms)},
            "firstAt": {"$lte": from_ms(last_ms)},
        }
        return [activity_run(doc) for doc in self._find("activity", query)]

    def save_sessions(self, sessions: list[StoredSession]) -> None:
        for session in sessions:
            self._sessions[session[ID]] = session_doc(session)
            self._fenced.add(session[USER])

    def delete_sessions(self, ids: list[str]) -> None:
        for session_id in ids:
            self._sessions.pop(session_id, None)
        self._deleted_sessions += ids

    def insert_logouts(self, logouts: list[Logout]) -> None:
        self._logouts += [logout_doc(logout) for logout in logouts]

    def insert_activity(self, runs: list[ActivityRun]) -> None:
        self._activity += [activity_doc(run) for run in runs]

    def open_sessions_before(self, cutoff_ms: int, limit: int) -> list[StoredSession]:
        query = {"open": True, "lastAt": {"$lt": from_ms(cutoff_ms)}}
        return [stored_session(doc) for doc in self._find("sessions", query).limit(limit)]

    # -- the prune's deletes: a chunk each, by id ------------------------------------------

    def _delete_chunk(self, name: str, query: dict[str, Any], limit: int) -> int:
        ids = [doc["_id"] for doc in self._find(name, query, {"_id": 1}).limit(limit)]
        if not ids:
            return 0
        deleted = self._c(name).delete_many({"_id": {"$in": ids}}, session=self.session)
        return int(deleted.deleted_count)

    def delete_events_until(self, last: datetime, limit: int) -> int:
        return self._delete_chunk("events", {"ts": {"$lte": last}}, limit)

    def delete_logouts_before(self, cutoff_ms: int, limit: int) -> int:
        return self._delete_chunk("logouts", {"at": {"$lt": from_ms(cutoff_ms)}}, limit)

    def delete_activity_before(self, cutoff_ms: int, limit: int) -> int:
        return self._delete_chunk("activity", {"lastAt": {"$lt": from_ms(cutoff_ms)}}, limit)

    def delete_batches_before(self, cutoff: datetime, limit: int) -> int:
        """Only folded ones: a delta not folded yet is a figure, not just a guard."""
        query = {"appliedAt": {"$lt": cutoff}, "folded": {"$ne": False}}
        return self._delete_chunk("batches", query, limit)

    # -- players' data rights ---------------------------------------------------------------

    def claim_meta(self, key: str, candidate: str) -> str:
        found = self.meta_value(key)
        if found is not None:
            return found
        self._c("meta").insert_one({"_id": key, "value": candidate}, session=self.session)
        return candidate

    def set_meta(self, key: str, value: str) -> None:
        self._c("meta").replace_one(
            {"_id": key}, {"_id": key, "value": value}, upsert=True, session=self.session
        )

    def meta_value(self, key: str) -> str | None:
        found = self._c("meta").find_one(
            {"_id": key}, session=self.session, max_time_ms=READ_TIMEOUT_MS
        )
        return None if found is None else str(found["value"])

    def tombstones(self, hashes: Mapping[str, str]) -> dict[str, str]:
        """Read in the snapshot, no fence written: an erase that commits while this part
        runs is caught after the commit (see :mod:`.erase`)."""
        users = {h: user for user, h in hashes.items()}
        found = self._find("tombstones", {"_id": {"$in": sorted(users)}}, {"token": 1})
        erased = {users[doc["_id"]]: str(doc["token"]) for doc in found}
        self.unerased.update((u, h) for u, h in hashes.items() if u not in erased)
        return erased

    def add_tombstone(self, key_hash: str, token: str, at: datetime) -> str | None:
        stones = self._c("tombstones")
        found = stones.find_one(
            {"_id": key_hash}, session=self.session, max_time_ms=READ_TIMEOUT_MS
        )
        if found is not None:
            return str(found["token"])
        stones.insert_one({"_id": key_hash, "token": token, "erasedAt": at}, session=self.session)
        return None

    def rename_user(self, user_id: str, token: str) -> dict[str, int]:
        """A chunk of the player's records moved (:mod:`.erase`)."""
        return erase.rename_chunk(self.store, self.session, user_id, token)

    def delete_user_events(self, user_id: str) -> int:
        return self._delete_chunk("events", {"userId": user_id}, erase.ERASE_CHUNK)

    def events_after(
        self, after: Any, needles: Sequence[str], limit: int
    ) -> list[tuple[Any, EventRow]]:
        """Every event, in ``_id`` order: ``data`` is a subdocument, which no query
        can search for a string at any depth, so the shared code looks at each."""
        query = {} if after is None else {"_id": {"$gt": after}}
        docs = self._find("events", query).sort("_id", 1).limit(limit)
        return [(doc["_id"], event_record(doc).row) for doc in docs]

    def set_event_data(self, changes: Mapping[Any, str]) -> None:
        driver = pymongo()
        ops = [
            driver.UpdateOne({"_id": position}, {"$set": {"data": data_value(data)}})
            for position, data in changes.items()
        ]
        self._c("events").bulk_write(ops, ordered=False, session=self.session)

    # -- before the commit ------------------------------------------------------------------

    def delta(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The buffered day and month increments as a delta holds them (see
        :mod:`gso_analytics.deltas`), their field names checked."""
        for _, fields in self._delta.daily.values():
            _check_fields(fields)
        for fields in self._delta.monthly.values():
            _check_fields(fields)
        doc = self._delta.document()
        return doc["daily"], doc["monthly"]

    def flush_writes(self, delta_id: str | None) -> None:
        """Send every buffered write, in the transaction: the part's own document first
        (a concurrent attempt at the same part fails at once), then events, sessions,
        per-user facts. ``delta_id`` names the delta of a prune chunk (which has no
        part id); nothing is written for a duplicate."""
        if self.duplicate:
            return
        daily, monthly = self.delta()
        guard = self.part_id or delta_id
        if guard is not None and (self.part_id is not None or daily or monthly):
            doc: dict[str, Any] = {
                "_id": guard,
                "appliedAt": self.created_at or self.store._server_now(),
            }
            doc["folded"] = not (daily or monthly)
            if daily or monthly:
                doc.update(daily=daily, monthly=monthly)
            self._c("batches").insert_one(doc, session=self.session)
        if self.record_plan and self.plan is not None:
            plan = {**self.plan, "appliedAt": self.created_at, "folded": True}
            self._c("batches").insert_one(plan, session=self.session)
        self._write_events()
        self._write_sessions()
        self._write_user_facts()

    def _write_events(self) -> None:
        """The part's events, built in paced slices and sent :data:`EVENT_CHUNK` at a
        time: the driver encodes an ``insert_many`` to BSON in C, holding the GIL."""
        events = self._c("events")
        docs: list[dict[str, Any]] = []
        for position, part in enumerate(paced_slices(self._events, DOCS_PER_LOOK)):
            docs += [event_doc(event) for event in part]
            last = (position + 1) * DOCS_PER_LOOK >= len(self._events)
            if len(docs) >= EVENT_CHUNK or last:
                events.insert_many(docs, ordered=False, session=self.session)
                docs = []

    def _write_sessions(self) -> None:
        driver = pymongo()
        if self._logouts:
            self._c("logouts").insert_many(self._logouts, ordered=False, session=self.session)
        if self._activity:
            self._c("activity").insert_many(self._activity, ordered=False, session=self.session)
        if self._deleted_sessions:
            self._c("sessions").delete_many(
                {"_id": {"$in": self._deleted_sessions}}, session=self.session
            )
        if self._sessions:
            self._c("sessions").bulk_write(
                [
                    # With the shard key (userId): an upsert on a sharded collection
                    # must name it in its filter. A replacement rather than $set, which
                    # on nx-27017 turns dates into strings.
                    driver.ReplaceOne(
                        {"_id": doc["_id"], "userId": doc["userId"]}, doc, upsert=True
                    )
                    for doc in self._sessions.values()
                ],
                ordered=False,
                session=self.session,
            )
        if self._fenced:
            self._c("session_users").bulk_write(
                [
                    driver.UpdateOne({"_id": user}, {"$inc": {"sessionOps": 1}}, upsert=True)
                    for user in sorted(self._fenced)
                ],
                ordered=False,
                session=self.session,
            )

    def _write_user_facts(self) -> None:
        """Revenue per (day, user) as ``$inc`` upserts; first-seen and first-payment days
        as ``$min`` upserts keyed by the user (the earliest day wins, in any order)."""
        driver = pymongo()
        if self._revenue:
            # Read in the transaction, so the $inc stops at the ceiling (a revenue that
            # passed it would fail every later $inc of the record).
            found = self._find(
                "user_revenue",
                {
                    "userId": {"$in": sorted({user for _, user in self._revenue})},
                    "day": {"$in": sorted({day for day, _ in self._revenue})},
                },
                {"userId": 1, "day": 1, "revenueCents": 1},
            )
            stored = {(doc["day"], doc["userId"]): doc for doc in found}
            revenue = []
            for (day, user), cents in sorted(self._revenue.items()):
                inc, _ = capped_increments(stored.get((day, user)), {"revenueCents": cents})
                revenue.append(
                    driver.UpdateOne({"userId": user, "day": day}, {"$inc": inc}, upsert=True)
                )
            self._c("user_revenue").bulk_write(revenue, ordered=False, session=self.session)
        for name, first_days in sorted(self._first_days.items()):
            ops = [
                driver.UpdateOne({"_id": user}, {"$min": {"day": day}}, upsert=True)
                for user, day in sorted(first_days.items())
            ]
            if ops:
                self._c(name).bulk_write(ops, ordered=False, session=self.session)
