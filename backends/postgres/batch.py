"""One batch part (or one chunk of the prune, or an erase) as one PostgreSQL
transaction: the :class:`Transaction` vocabulary translated into statements.

What two workers' parts may both write decides whether they wait for each other, so
a part writes only:

- rows of its own players: the player's fence (``fences``, keyed by the player's
  keyed hash, see the package docstring), the (day, user) and (month, user) records
  (``INSERT ... ON CONFLICT DO NOTHING``, whose row count says how many players are
  new), the registration, first days and revenue (``ON CONFLICT DO UPDATE``, where only
  parts of the same player meet), sessions, logout marks and activity runs;
- new rows: its own ``batches`` row (the exactly-once guard, inserted first, holding
  the part's increments as a delta once the part is done, see
  :mod:`gso_analytics.deltas`) and its events (``COPY``).

So parts of different players share no row and never wait for each other; parts that
share a player meet at the player's fence, where the later one waits for the earlier
one's commit and then fails with a serialization failure and runs again on a fresh
snapshot, before it did any other work.

Round trips: a statement whose result nothing reads (a first day kept, the sessions,
logout marks and activity runs written, the part's delta) is queued in a pipeline
(psycopg's pipeline mode) and sent with the next statement that is read, so several
go in one round trip; the server runs them in order, in the same transaction, and an
error of a queued one (a serialization failure) is raised by that next statement, or
before the ``COPY`` (which cannot run in a pipeline) or the commit, so the part still
commits whole or not at all and runs again. A statement whose row count is read
waits for the queue (:meth:`PgTransaction._count`); one that fetches rows rides it.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from contextlib import ExitStack
from datetime import datetime
from typing import TYPE_CHECKING, Any

from gso_analytics.counters import MAX_COUNTER
from gso_analytics.deltas import DeltaBuffer
from gso_analytics.erasure import keyed_hash
from gso_analytics.model import USER, ActivityRun, EventRow, Logout, Number, StoredSession
from gso_analytics.store import Transaction

from . import events, sessions
from .arrays import text_array

if TYPE_CHECKING:
    from .store import PostgresStore


class PgTransaction(Transaction):
    """The statements of one transaction on ``conn``. Used as a context manager around
    the transaction's statements: the pipeline, when one is open, is closed (its
    statements sent and their errors raised) before the commit."""

    def __init__(self, store: PostgresStore, conn: Any) -> None:
        self.store = store
        self.conn = conn
        self._pipeline: Any = None
        self._stack = ExitStack()
        self.s = store.schema
        self.part_id: str | None = None
        self.duplicate = False
        self.delta = DeltaBuffer()
        self._fenced: set[str] = set()

    def __enter__(self) -> PgTransaction:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._pipeline = None
        self._stack.__exit__(*exc_info)

    # -- round trips -----------------------------------------------------------------------

    @property
    def piped(self) -> Any:
        """A cursor for one statement whose rows are fetched: in the pipeline when one
        is open (it and the statements queued before it then take one round trip).
        One cursor per statement: in a pipeline a cursor takes a result whenever it
        arrives, so one shared with a statement queued before could show that one's."""
        return self.conn.cursor()

    @property
    def cur(self) -> Any:
        """A cursor for one statement that needs the queued ones done first (its row
        count read, a ``COPY``, SQL of :mod:`.sessions` reading a row count)."""
        if self._pipeline is not None:
            self._pipeline = None
            self._stack.close()  # sends the queue, waits for it, raises its errors
        return self.conn.cursor()

    def _queued(self) -> Any:
        """A cursor in a pipeline, for one statement whose result nothing reads: it is
        sent with the next statement that is read."""
        if self._pipeline is None:
            self._pipeline = self._stack.enter_context(self.conn.pipeline())
        return self.conn.cursor()

    def _queue(self, sql: str, params: Any) -> None:
        self._queued().execute(sql, params)

    def _count(self, sql: str, params: Any) -> int:
        """The rows a statement wrote: it and the queue before it in one round trip."""
        cur = self.piped.execute(sql, params)
        if self._pipeline is not None:
            self._pipeline.sync()
        return int(cur.rowcount)

    # -- the part's id, and the players' fences -----------------------------------------

    def claim_batch(self, batch_id: str, at: datetime) -> bool:
        """Inserted first, so a concurrent attempt at the same part waits here and then
        fails (and, run again, finds it applied) before doing anything else."""
        self.part_id = batch_id
        inserted = self.cur.execute(
            f"INSERT INTO {self.s}.batches (id, applied_at) VALUES (%s, %s)"
            " ON CONFLICT (id) DO NOTHING",
            (batch_id, at),
        ).rowcount
        self.duplicate = inserted == 0
        return not self.duplicate

    def _fence_sql(self, param: str) -> str:
        """The statement writing the fences of the hashes in parameter ``param``."""
        return (
            f"INSERT INTO {self.s}.fences (hash) SELECT unnest(%({param})s::text[])"
            " ON CONFLICT (hash) DO UPDATE SET ops = fences.ops + 1"
        )

    def _unfenced(self, hashes: Iterable[str]) -> list[str]:
        """The hashes of these players not fenced yet in this transaction, sorted: two
        parts lock shared fences in one order, so they wait, never deadlock."""
        new = sorted(set(hashes) - self._fenced)
        self._fenced.update(new)
        return new

    def _fence(self, hashes: list[str]) -> None:
        """Write the fences of these players."""
        new = self._unfenced(hashes)
        if new:
            self._queue(self._fence_sql("new"), {"new": text_array(new)})

    def _fence_users(self, users: set[str]) -> None:
        key = self.store._secret(self, create=True)
        assert key is not None  # created when absent
        self._fence([keyed_hash(key, user) for user in users])

    # -- (day, user) and (month, user) records, per-player facts ---------------------------

    def _add_users(self, table: str, key: str, value: str, users: set[str]) -> int:
        return self._count(
            f"INSERT INTO {self.s}.{table} ({key}, user_id)"
            " SELECT %s, unnest(%s::text[]) ON CONFLICT DO NOTHING",
            (value, text_array(sorted(users))),
        )

    def add_day_users(self, day: str, users: set[str]) -> int:
        return self._add_users("day_users", "day", day, users)

    def add_month_users(self, month: str, users: set[str]) -> int:
        return self._add_users("month_users", "month", month, users)

    def registration_days(self, users: set[str]) -> dict[str, str]:
        rows = self.piped.execute(
            f"SELECT user_id, day FROM {self.s}.new_users WHERE user_id = ANY(%s::text[])",
            (text_array(sorted(users)),),
        )
        return dict(rows.fetchall())

    def _keep_first(self, table: str, days: Mapping[str, str]) -> None:
        """The earlier day kept; a row whose day stays is not written again (a player
        seen in every flush would otherwise leave a dead row version each time)."""
        ordered = sorted(days.items())
        self._queue(
            f"INSERT INTO {self.s}.{table} (user_id, day)"
            " SELECT * FROM unnest(%s::text[], %s::text[])"
            f" ON CONFLICT (user_id) DO UPDATE SET day = excluded.day"
            f" WHERE excluded.day < {table}.day",
            (text_array(u for u, _ in ordered), text_array(d for _, d in ordered)),
        )

    def set_registration_days(self, days: dict[str, str]) -> None:
        self._keep_first("new_users", days)

    def add_first_seen(self, first_days: dict[str, str]) -> None:
        self._keep_first("first_seen", first_days)

    def add_first_payments(self, first_days: dict[str, str]) -> None:
        self._keep_first("first_payments", first_days)

    def add_user_revenue(self, revenue: dict[str, dict[str, Number]]) -> None:
        rows = sorted(
            (day, user, cents) for day, payers in revenue.items() for user, cents in payers.items()
        )
        self._queue(
            f"INSERT INTO {self.s}.user_revenue (day, user_id, revenue_cents)"
            " SELECT * FROM unnest(%s::text[], %s::text[], %s::bigint[])"
            " ON CONFLICT (day, user_id) DO UPDATE"
            " SET revenue_cents = LEAST(user_revenue.revenue_cents + excluded.revenue_cents,"
            f" {MAX_COUNTER})",
            (
                text_array(r[0] for r in rows),
                text_array(r[1] for r in rows),
                [int(r[2]) for r in rows],
            ),
        )

    # -- counters: the part's delta, written before the commit -------------------------

    def increment_daily(self, day: str, month: str, increments: dict[str, Number]) -> None:
        self.delta.add_daily(day, month, increments)

    def increment_monthly(self, month: str, increments: dict[str, int]) -> None:
        self.delta.add_monthly(month, increments)

    def finish(self) -> None:
        """Before the commit: the delta into the part's own row. A transaction without
        a part (a prune chunk that timed sessions out) inserts a row of its own."""
        if self.duplicate or not self.delta:
            return
        delta = json.dumps(self.delta.document())
        if self.part_id is not None:
            self._queue(
                f"UPDATE {self.s}.batches SET folded = false, delta = %s WHERE id = %s",
                (delta, self.part_id),
            )
        else:
            self._queue(
                f"INSERT INTO {self.s}.batches (id, applied_at, folded, delta)"
                " VALUES (%s, now(), false, %s)",
                (f"prune-{uuid.uuid4().hex}", delta),
            )

    # -- sessions (:mod:`.sessions`) ------------------------------------------------------

    def sessions_since(self, users: set[str], since_ms: int) -> list[StoredSession]:
        """The players' fences first (written already when the part looked up their
        tombstones): what the walk reads, another part of one of them cannot change
        before this one commits."""
        self._fence_users(users)
        return sessions.sessions_since(self.piped, self.s, users, since_ms)

    def logouts_since(self, users: set[str], since_ms: int) -> list[Logout]:
        return sessions.logouts_since(self.piped, self.s, users, since_ms)

    def activity_runs(self, user_id: str, first_ms: int, last_ms: int) -> list[ActivityRun]:
        return sessions.activity_runs(self.piped, self.s, user_id, first_ms, last_ms)

    def save_sessions(self, found: list[StoredSession]) -> None:
        """Fenced: the prune closes idle sessions without reading through a fence."""
        self._fence_users({session[USER] for session in found})
        sessions.save_sessions(self._queued(), self.s, found)

    def delete_sessions(self, ids: list[str]) -> None:
        sessions.delete_sessions(self._queued(), self.s, ids)

    def insert_logouts(self, logouts: list[Logout]) -> None:
        sessions.insert_logouts(self._queued(), self.s, logouts)

    def insert_activity(self, runs: list[ActivityRun]) -> None:
        sessions.insert_activity(self._queued(), self.s, runs)

    def open_sessions_before(self, cutoff_ms: int, limit: int) -> list[StoredSession]:
        return sessions.open_sessions_before(self.piped, self.s, cutoff_ms, limit)

    def delete_logouts_before(self, cutoff_ms: int, limit: int) -> int:
        return sessions.delete_logouts_before(self.cur, self.s, cutoff_ms, limit)

    def delete_activity_before(self, cutoff_ms: int, limit: int) -> int:
        return sessions.delete_activity_before(self.cur, self.s, cutoff_ms, limit)

    # -- events ---------------------------------------------------------------------------

    def insert_events(self, rows: list[EventRow]) -> None:
        self.store.make_partitions(events.days_of(rows))
        events.copy_events(self.cur, self.s, rows)

    def delete_events_until(self, last: datetime, limit: int) -> int:
        return int(
            self.cur.execute(
                f"DELETE FROM {self.s}.events WHERE ts <= %s AND id IN"
                f" (SELECT id FROM {self.s}.events WHERE ts <= %s LIMIT %s)",
                (last, last, limit),
            ).rowcount
        )

    def delete_batches_before(self, cutoff: datetime, limit: int) -> int:
        """Only folded ones: a delta not folded yet is a figure, not just a guard."""
        return int(
            self.cur.execute(
                f"DELETE FROM {self.s}.batches WHERE id IN (SELECT id FROM {self.s}.batches"
                " WHERE applied_at < %s AND folded LIMIT %s)",
                (cutoff, limit),
            ).rowcount
        )

    # -- players' data rights --------------------------------------------------------------

    def claim_meta(self, key: str, candidate: str) -> str:
        """Read in the snapshot; written when missing (a concurrent writer's row makes
        the insert fail with a serialization failure, and the retry reads it)."""
        found = self.meta_value(key)
        if found is not None:
            return found
        self.cur.execute(
            f"INSERT INTO {self.s}.meta (key, value) VALUES (%s, %s) ON CONFLICT (key) DO NOTHING",
            (key, candidate),
        )
        found = self.meta_value(key)
        assert found is not None  # inserted just now
        return found

    def set_meta(self, key: str, value: str) -> None:
        self.cur.execute(
            f"INSERT INTO {self.s}.meta (key, value) VALUES (%s, %s)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def meta_value(self, key: str) -> str | None:
        row = self.cur.execute(f"SELECT value FROM {self.s}.meta WHERE key = %s", (key,)).fetchone()
        return None if row is None else str(row[0])

    def tombstones(self, hashes: Mapping[str, str]) -> dict[str, str]:
        """The players' fences first: an erase writes the fence of its player too, so a
        part and an erase of one player never both commit on stale snapshots. One
        statement does both (the fences in a ``WITH``, which runs to completion whatever
        the query reads; the tombstones read in the part's snapshot, which the fences'
        writes do not change): one round trip, the hashes sent once."""
        users = {h: user for user, h in hashes.items()}
        wanted = sorted(users)
        new = self._unfenced(wanted)
        params = {"wanted": text_array(wanted)}
        sql = f"SELECT hash, token FROM {self.s}.tombstones WHERE hash = ANY(%(wanted)s::text[])"
        if new:
            fencing = "wanted"
            if new != wanted:  # some fenced already by this transaction
                params["new"], fencing = text_array(new), "new"
            sql = f"WITH fenced AS ({self._fence_sql(fencing)}) {sql}"
        rows = self.piped.execute(sql, params)
        return {users[h]: token for h, token in rows}

    def add_tombstone(self, key_hash: str, token: str, at: datetime) -> str | None:
        self._fence([key_hash])
        row = self.cur.execute(
            f"SELECT token FROM {self.s}.tombstones WHERE hash = %s", (key_hash,)
        ).fetchone()
        if row is not None:
            return str(row[0])
        self.cur.execute(
            f"INSERT INTO {self.s}.tombstones (hash, token, erased_at) VALUES (%s, %s, %s)",
            (key_hash, token, at),
        )
        return None

    def _merge_into_token(self, table: str, keys: str, merge: str, user: str, token: str) -> int:
        """Move the user's rows of ``table`` to ``token``, merged with a row the token
        has already (``merge``: the ``ON CONFLICT`` clause's rest)."""
        chosen = keys.replace("user_id", "%s::text")
        self.cur.execute(
            f"INSERT INTO {self.s}.{table} ({keys}) SELECT {chosen} FROM {self.s}.{table}"
            f" WHERE user_id = %s ON CONFLICT {merge}",
            (token, user),
        )
        return int(
            self.cur.execute(f"DELETE FROM {self.s}.{table} WHERE user_id = %s", (user,)).rowcount
        )

    def rename_user(self, user_id: str, token: str) -> dict[str, int]:
        counts = {
            table: self._merge_into_token(table, f"{key}, user_id", "DO NOTHING", user_id, token)
            for table, key in (("day_users", "day"), ("month_users", "month"))
        }
        for table in ("first_seen", "first_payments", "new_users"):
            counts[table] = self._merge_into_token(
                table,
                "user_id, day",
                f"(user_id) DO UPDATE SET day = LEAST({table}.day, excluded.day)",
                user_id,
                token,
            )
        counts["user_revenue"] = self._merge_into_token(
            "user_revenue",
            "day, user_id, revenue_cents",
            "(day, user_id) DO UPDATE"
            " SET revenue_cents = LEAST(user_revenue.revenue_cents + excluded.revenue_cents,"
            f" {MAX_COUNTER})",
            user_id,
            token,
        )
        counts.update(sessions.rename_sessions(self.cur, self.s, user_id, token))
        return counts

    def delete_user_events(self, user_id: str) -> int:
        return int(
            self.cur.execute(f"DELETE FROM {self.s}.events WHERE user_id = %s", (user_id,)).rowcount
        )

    def events_after(
        self, after: Any, needles: Sequence[str], limit: int
    ) -> list[tuple[Any, EventRow]]:
        """In ``(ts, id)`` order (the ``events_ts`` index; a position is that pair), only
        the events whose data text holds a needle (``strpos`` on the server, so the
        rows an erase leaves alone are not sent)."""
        return events.events_after(self.cur, self.s, after, needles, limit)

    def set_event_data(self, changes: Mapping[Any, str]) -> None:
        events.set_event_data(self.cur, self.s, changes)
