"""What the store reads: the figures (folded rows plus the deltas not folded yet, in
one snapshot), sessions, events, the KPIs' ranges, heartbeats. Every read is an index
lookup or range, bounded by ``statement_timeout``."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from gso_analytics.clock import from_ms, to_ms
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

from . import sessions
from .connection import Connection
from .rollup import TOTALS_ID

_UNFOLDED = "SELECT delta FROM {s}.batches WHERE NOT folded"


def _event_record(row: tuple[Any, ...]) -> EventRecord:
    ts, user_id, event, data, day = row
    return EventRecord(to_ms(ts), user_id, event, data, day)


def _session_record(row: tuple[Any, ...]) -> SessionRecord:
    sid, user, name, login, logout, duration, day, month, timed_out, last, frozen = row
    return SessionRecord(
        sid,
        user,
        name,
        login,
        logout,
        duration,
        day,
        month,
        timed_out,
        None if frozen else from_ms(last),
    )


class Reads(Connection):
    """The read half of :class:`~.store.PostgresStore`."""

    def _pending(self, cur: Any) -> Any:
        return add_up(row[0] for row in cur.execute(_UNFOLDED.format(s=self.schema)))

    # -- the figures: folded + not folded yet, in one snapshot ---------------------------

    def _days(
        self, where: str, params: Any, keep: Callable[[str], bool], limit: int = 0
    ) -> list[DailyStats]:
        def read(cur: Any) -> list[DailyStats]:
            sql = f"SELECT day, month, counters FROM {self.schema}.daily WHERE {where}"
            sql += " ORDER BY day DESC"
            if limit:
                sql += f" LIMIT {int(limit)}"
            folded = {day: (month, counters) for day, month, counters in cur.execute(sql, params)}
            pending, _, _ = self._pending(cur)
            return days_with_pending(folded, pending, keep, limit)

        return self._snapshot("reading days", read)

    def get_day(self, day: str) -> DailyStats | None:
        found = self._days("day = %s", (day,), lambda d: d == day)
        return found[0] if found else None

    def recent_days(self, limit: int = 30) -> list[DailyStats]:
        return self._days("true", (), lambda d: True, int(limit))

    def days_between(self, start: str, end: str) -> list[DailyStats]:
        found = self._days("day BETWEEN %s AND %s", (start, end), lambda d: start <= d <= end)
        return sorted(found, key=lambda d: d.day)

    def get_month(self, month: str) -> MonthStats:
        def read(cur: Any) -> dict[str, Number]:
            row = cur.execute(
                f"SELECT counters FROM {self.schema}.monthly WHERE month = %s", (month,)
            ).fetchone()
            _, pending, _ = self._pending(cur)
            return plus(row[0] if row else {}, pending.get(month, {}))

        figures = self._snapshot(f"reading month {month}", read)
        return MonthStats.from_fields(month, {k: int(v) for k, v in figures.items()})

    def get_totals(self) -> dict[str, Number]:
        def read(cur: Any) -> dict[str, Number]:
            row = cur.execute(
                f"SELECT counters FROM {self.schema}.totals WHERE id = %s", (TOTALS_ID,)
            ).fetchone()
            _, _, pending = self._pending(cur)
            return plus(row[0] if row else {}, pending)

        return self._snapshot("reading the totals", read)

    # -- heartbeats (not part of any batch) ----------------------------------------------

    def save_heartbeat(self, heartbeat: Heartbeat) -> None:
        self._write(
            "INSERT INTO {s}.heartbeats (process, host, pid, at, expires_at, payload)"
            " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (process) DO UPDATE SET"
            " host = excluded.host, pid = excluded.pid, at = excluded.at,"
            " expires_at = excluded.expires_at, payload = excluded.payload",
            (
                heartbeat.process,
                heartbeat.host,
                heartbeat.pid,
                heartbeat.at,
                heartbeat.expires_at,
                heartbeat.payload(),
            ),
        )

    def live_heartbeats(self, now: datetime) -> list[Heartbeat]:
        rows = self._read(
            "SELECT process, host, pid, at, expires_at, payload FROM {s}.heartbeats"
            " WHERE expires_at > %s ORDER BY process",
            (now,),
        )
        return [Heartbeat.from_payload(*row) for row in rows]

    def forget_heartbeats(self, expired_before: datetime) -> None:
        self._write("DELETE FROM {s}.heartbeats WHERE expires_at < %s", (expired_before,))

    def withdraw_heartbeat(self, process: str) -> None:
        self._write("DELETE FROM {s}.heartbeats WHERE process = %s", (process,))

    # -- sessions and events -----------------------------------------------------------------

    def count_active_sessions(self, since_ms: int) -> int:
        return int(self._read(sessions.COUNT_ACTIVE, (since_ms,))[0][0])

    def _sessions(self, where: str, params: Any, replica: bool = False) -> list[SessionRecord]:
        with self._connection("reading sessions", replica=replica) as conn:
            rows = sessions.user_sessions(conn.cursor(), self.schema, where, params)
        return [_session_record(row) for row in rows]

    def get_sessions(self, user_id: str) -> list[SessionRecord]:
        return self._sessions("user_id = %s ORDER BY login_at, origin, seq", (user_id,))

    def get_logouts(self, user_id: str) -> list[Logout]:
        rows = self._read(
            f"SELECT {sessions.LOGOUT_COLUMNS} FROM {{s}}.logouts WHERE user_id = %s"
            " ORDER BY at, origin, seq",
            (user_id,),
        )
        return [sessions.logout_mark(row) for row in rows]

    def get_events(self, user_id: str | None = None, limit: int = 1000) -> list[EventRecord]:
        """Newest first by time, ties by id, the newest ``limit`` (an index range on
        ``(user_id, ts, id)`` or ``(ts, id)``), returned oldest first."""
        where, params = ("WHERE user_id = %s", (user_id,)) if user_id is not None else ("", ())
        rows = self._read(
            f"SELECT ts, user_id, event, data, day FROM {{s}}.events {where}"
            " ORDER BY ts DESC, id DESC LIMIT %s",
            (*params, limit),
        )
        return [_event_record(row) for row in reversed(rows)]

    # -- KPI range reads: each an index range on the day key, on a standby if any -----------
    #
    # They may lag behind the primary by the replication delay (the store's ``replica``
    # option): KPIs are computed from days that are over. The figures (days_between)
    # stay on the primary, read with the deltas not folded yet in one snapshot.

    def _grouped(self, table: str, start: str, end: str) -> dict[str, set[str]]:
        found: dict[str, set[str]] = {}
        sql = f"SELECT day, user_id FROM {{s}}.{table} WHERE day BETWEEN %s AND %s"
        for day, user in self._read(sql, (start, end), replica=True):
            found.setdefault(day, set()).add(user)
        return found

    def day_users_between(self, start: str, end: str) -> dict[str, set[str]]:
        return self._grouped("day_users", start, end)

    def count_day_users(self, start: str, end: str) -> int:
        rows = self._read(
            "SELECT count(DISTINCT user_id) FROM {s}.day_users WHERE day BETWEEN %s AND %s",
            (start, end),
            replica=True,
        )
        return int(rows[0][0])

    def first_seen_between(self, start: str, end: str) -> dict[str, set[str]]:
        return self._grouped("first_seen", start, end)

    def first_payments_between(self, start: str, end: str) -> dict[str, set[str]]:
        return self._grouped("first_payments", start, end)

    def user_revenue_between(self, start: str, end: str) -> dict[str, dict[str, Number]]:
        found: dict[str, dict[str, Number]] = {}
        for day, user, cents in self._read(
            "SELECT day, user_id, revenue_cents FROM {s}.user_revenue WHERE day BETWEEN %s AND %s",
            (start, end),
        ):
            found.setdefault(day, {})[user] = cents
        return found

    def sessions_between(self, start: str, end: str) -> list[SessionRecord]:
        return self._sessions("day BETWEEN %s AND %s", (start, end), replica=True)

    def events_between(
        self, start: str | None, end: str | None, names: list[str]
    ) -> list[EventRecord]:
        rows = self._read(
            "SELECT ts, user_id, event, data, day FROM {s}.events WHERE event = ANY(%s)"
            " AND day >= %s AND day <= %s ORDER BY ts, id",
            (list(names), start or "", end or "9999-12-31"),
            replica=True,
        )
        return [_event_record(row) for row in rows]

    def user_records(self, user_id: str) -> UserRecords:
        def keys(table: str, key: str) -> list[str]:
            sql = f"SELECT {key} FROM {{s}}.{table} WHERE user_id = %s ORDER BY {key}"
            return [row[0] for row in self._read(sql, (user_id,))]

        def first(table: str) -> str | None:
            found = keys(table, "day")
            return found[0] if found else None

        revenue = self._read(
            "SELECT day, revenue_cents FROM {s}.user_revenue WHERE user_id = %s ORDER BY day",
            (user_id,),
        )
        return read_user_records(keys, first, dict(revenue))
