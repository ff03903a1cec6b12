"""``sqlite:///relative.db`` and ``sqlite:////absolute/path.db``: the embedded store.

Several processes share one file: WAL journal (readers never block the writer), a busy
timeout so a writer waits for another's transaction instead of failing, and one
``BEGIN IMMEDIATE`` transaction per batch that also claims the batch id, so a batch is
applied whole or not at all, and exactly once. Counters are long rows
``(day, field, value)`` upserted as ``value = value + excluded.value``, so a game's own
counters need no schema change.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from itertools import chain
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import attrs

from gso_analytics import forking
from gso_analytics.clock import from_ms, iso_from_ms, iso_ms, parse_iso_ms, to_ms
from gso_analytics.counters import MAX_COUNTER
from gso_analytics.erasure import ErasureReceipt, UserRecords, read_user_records
from gso_analytics.errors import ConfigurationError, StoreError
from gso_analytics.model import (
    ORIGIN,
    ActivityRun,
    DailyStats,
    EventRecord,
    EventRow,
    Heartbeat,
    Logout,
    MonthStats,
    Number,
    SessionRecord,
    StoredSession,
)
from gso_analytics.pacing import Pacer, paced
from gso_analytics.private_files import create_private
from gso_analytics.sessions import decode_marks, encode_logins, encode_marks
from gso_analytics.store import Store, Transaction, check_ours, total_increments

#: A logout mark: keyed by player and time (what ``logouts_since`` reads), its process
#: an ``origins`` number; ``id`` only when it is not ``<origin>-<seq>`` (marks moved
#: from files of 0.1, see :func:`_upgrade_to_marks`).
LOGOUTS = """
CREATE TABLE IF NOT EXISTS {p}logouts (
    userId TEXT NOT NULL, atMs INTEGER NOT NULL, originId INTEGER NOT NULL,
    seq INTEGER NOT NULL, id TEXT, PRIMARY KEY (userId, atMs, originId, seq)) WITHOUT ROWID;
"""

SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS {p}batches (
    id TEXT PRIMARY KEY, appliedAt TEXT NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS {p}batches_at ON {p}batches (appliedAt);
CREATE TABLE IF NOT EXISTS {p}daily (
    day TEXT NOT NULL, month TEXT NOT NULL, field TEXT NOT NULL, value NOT NULL,
    PRIMARY KEY (day, field)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS {p}monthly (
    month TEXT NOT NULL, field TEXT NOT NULL, value INTEGER NOT NULL,
    PRIMARY KEY (month, field)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS {p}day_users (
    day TEXT NOT NULL, userId TEXT NOT NULL, PRIMARY KEY (day, userId)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS {p}month_users (
    month TEXT NOT NULL, userId TEXT NOT NULL, PRIMARY KEY (month, userId)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS {p}new_users (
    userId TEXT PRIMARY KEY, day TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS {p}sessions (
    id TEXT PRIMARY KEY, userId TEXT NOT NULL, username TEXT,
    loginAt TEXT NOT NULL, logoutAt TEXT, durationS INTEGER NOT NULL DEFAULT 0,
    day TEXT NOT NULL, month TEXT NOT NULL, timedOut INTEGER NOT NULL DEFAULT 0,
    originId INTEGER NOT NULL DEFAULT 0, seq INTEGER NOT NULL DEFAULT 0,
    lastMs INTEGER NOT NULL, frozen INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS {p}origins (
    id INTEGER PRIMARY KEY, origin TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS {p}activity (
    id INTEGER PRIMARY KEY, userId TEXT NOT NULL, firstMs INTEGER NOT NULL,
    lastMs INTEGER NOT NULL, marks BLOB NOT NULL, logins TEXT);
CREATE INDEX IF NOT EXISTS {p}activity_user ON {p}activity (userId, lastMs);
CREATE INDEX IF NOT EXISTS {p}activity_last ON {p}activity (lastMs);
CREATE TABLE IF NOT EXISTS {p}events (
    id INTEGER PRIMARY KEY, ts TEXT NOT NULL, userId TEXT NOT NULL, event TEXT NOT NULL,
    data TEXT NOT NULL, day TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS {p}events_ts ON {p}events (ts);
CREATE INDEX IF NOT EXISTS {p}events_user ON {p}events (userId, id);
CREATE INDEX IF NOT EXISTS {p}sessions_day ON {p}sessions (day);
CREATE INDEX IF NOT EXISTS {p}events_event_day ON {p}events (event, day);
CREATE TABLE IF NOT EXISTS {p}first_seen (
    userId TEXT PRIMARY KEY, day TEXT NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS {p}first_seen_day ON {p}first_seen (day);
CREATE TABLE IF NOT EXISTS {p}first_payments (
    userId TEXT PRIMARY KEY, day TEXT NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS {p}first_payments_day ON {p}first_payments (day);
CREATE TABLE IF NOT EXISTS {p}totals (
    field TEXT PRIMARY KEY, value NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS {p}heartbeats (
    process TEXT PRIMARY KEY, host TEXT NOT NULL, pid INTEGER NOT NULL, at TEXT NOT NULL,
    expiresAt TEXT NOT NULL, payload TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS {p}user_revenue (
    day TEXT NOT NULL, userId TEXT NOT NULL, revenueCents NOT NULL,
    PRIMARY KEY (day, userId)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS {p}meta (
    key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS {p}tombstones (
    hash TEXT PRIMARY KEY, token TEXT NOT NULL, erasedAt TEXT NOT NULL) WITHOUT ROWID;
"""
    + LOGOUTS
)

#: Indexes on columns a file from 0.2 gets at its upgrade (made after :func:`_upgrade`).
#: ``sessions_user`` (userId, loginAt) of 0.2 goes: ``sessions_last`` finds a player's
#: sessions too, and each new session wrote one index entry more. So does
#: ``sessions_open_user`` (userId) of open sessions: a player's open session is their
#: latest, which ``sessions_last`` finds (see ``sessions_since``). ``logouts_at`` is
#: made here since the logouts table of earlier files is rebuilt by the upgrade (its
#: key now serves what ``logouts_user`` did).
INDEXES = """
CREATE INDEX IF NOT EXISTS {p}sessions_last ON {p}sessions (userId, lastMs);
CREATE INDEX IF NOT EXISTS {p}sessions_idle ON {p}sessions (lastMs) WHERE logoutAt IS NULL;
CREATE INDEX IF NOT EXISTS {p}logouts_at ON {p}logouts (atMs);
DROP INDEX IF EXISTS {p}sessions_user;
DROP INDEX IF EXISTS {p}sessions_open_user;
"""

#: Tables whose records a (key, user) pair makes, renamed in place by an erase.
#: A counter's upsert: the sum held at the ceiling. Both terms are at most 2**61 (a
#: batch adds at most 2**53 to one counter of a day), so the sum is an exact INTEGER
#: before MIN, never SQLite's REAL of an overflowing one.
_CAPPED = f"MIN(value + excluded.value, {MAX_COUNTER})"

_USER_RECORD_TABLES = ("day_users", "month_users")
#: Tables of one day per player (the earliest), merged into the token's by an erase.
_FIRST_DAY_TABLES = ("first_seen", "first_payments", "new_users")
#: Host parameters per ``IN (...)`` list, well below SQLite's limit (32766 since 3.32).
_IN_CHUNK = 500


#: Rows written or read between two looks at the clock: each costs SQLite about 12 µs,
#: so a slice ends within 25 µs of its length (with 8, eight rows fell just short of it
#: and slices ran to ~190 µs: request p99 1.35x without analytics, 1.07-1.29x with 2).
ROWS_PER_LOOK = 2


class _PacedCursor(sqlite3.Cursor):
    """Rows read one by one, a look at the clock before each (see
    :class:`_PacedConnection`)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        super().__init__(conn)
        self._tick = Pacer().tick

    def __next__(self) -> Any:
        self._tick()
        return super().__next__()


class _PacedConnection(sqlite3.Connection):
    """The write connection, whose statements run on the flush thread: sqlite3 releases
    the GIL for each row it writes or reads, but only for a few µs, and a thread woken
    then mostly finds it taken again for the next row (it waited through whole
    ``executemany`` calls of a thousand players' rows, 5-20 ms). So every statement's
    parameters and rows come through the pacer, which hands the GIL over between rows
    when another thread wants it (see :mod:`~gso_analytics.pacing`)."""

    def executemany(self, sql: str, parameters: Iterable[Any], /) -> sqlite3.Cursor:
        return super().executemany(sql, paced(parameters, ROWS_PER_LOOK))

    def cursor(self, factory: Any = _PacedCursor) -> Any:
        return super().cursor(factory)

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        # sqlite3's own execute makes a plain cursor, not this connection's.
        cursor: sqlite3.Cursor = self.cursor()
        return cursor.execute(sql, parameters)


def _rows(events: list[EventRow]) -> Iterator[tuple[str, str, str, str, str]]:
    """The events table's rows, made as the paced ``executemany`` takes them."""
    for ts, user, name, data, day in events:
        yield iso_from_ms(ts), user, name, data, day


class _SQLiteTransaction(Transaction):
    session_part = 256  # each write_sessions is a few statements, no round trip

    def __init__(self, conn: sqlite3.Connection, prefix: str) -> None:
        self.conn = conn
        self.p = prefix
        #: The processes' numbers looked up or assigned in this transaction (only in
        #: it: a number assigned in a transaction rolled back may go to another).
        self._origins: dict[str, int] = {}

    def claim_batch(self, batch_id: str, at: datetime) -> bool:
        cur = self.conn.execute(
            f"INSERT OR IGNORE INTO {self.p}batches (id, appliedAt) VALUES (?, ?)",
            (batch_id, iso_ms(at)),
        )
        return cur.rowcount == 1

    def _add_users(self, table: str, key: str, users: set[str]) -> int:
        # The players as one JSON array, a statement for all: a row's own bind, step
        # and reset through sqlite3 cost more than its insert (see _NULL_IF_0).
        cur = self.conn.execute(
            f"INSERT OR IGNORE INTO {self.p}{table} SELECT ?, value FROM json_each(?)",
            (key, json.dumps(sorted(users))),
        )
        return cur.rowcount

    def add_day_users(self, day: str, users: set[str]) -> int:
        return self._add_users("day_users", day, users)

    def add_month_users(self, month: str, users: set[str]) -> int:
        return self._add_users("month_users", month, users)

    def registration_days(self, users: set[str]) -> dict[str, str]:
        sql = f"SELECT userId, day FROM {self.p}new_users WHERE userId IN ({{marks}})"
        return dict(self._select_in(sql, users))

    def set_registration_days(self, days: dict[str, str]) -> None:
        self._keep_first("new_users", days)

    def _keep_first(self, table: str, first_days: dict[str, str]) -> None:
        self.conn.execute(
            f"INSERT INTO {self.p}{table} (userId, day) SELECT key, value FROM json_each(?)"
            " WHERE true ON CONFLICT (userId) DO UPDATE SET day = min(day, excluded.day)",
            (json.dumps(dict(sorted(first_days.items()))),),
        )

    def add_first_seen(self, first_days: dict[str, str]) -> None:
        self._keep_first("first_seen", first_days)

    def add_first_payments(self, first_days: dict[str, str]) -> None:
        self._keep_first("first_payments", first_days)

    def add_user_revenue(self, revenue: dict[str, dict[str, Number]]) -> None:
        self.conn.executemany(
            f"INSERT INTO {self.p}user_revenue (day, userId, revenueCents) VALUES (?, ?, ?)"
            " ON CONFLICT (day, userId) DO UPDATE"
            f" SET revenueCents = MIN(revenueCents + excluded.revenueCents, {MAX_COUNTER})",
            [
                (day, user, cents)
                for day, payers in revenue.items()
                for user, cents in payers.items()
            ],
        )

    def _add_totals(self, increments: Mapping[str, Number]) -> None:
        """The all-time totals, in one statement that returns the new values: those at
        the ceiling with a positive increment are the cuts (see ``Transaction.saturated``)."""
        adding = total_increments(increments)
        if not adding:
            return
        rows = self.conn.execute(
            f"INSERT INTO {self.p}totals (field, value) SELECT key, value FROM json_each(?)"
            f" WHERE true ON CONFLICT (field) DO UPDATE SET value = {_CAPPED}"
            " RETURNING field, value",
            (json.dumps(adding),),
        ).fetchall()
        self.saturated += sum(1 for field, value in rows if value >= MAX_COUNTER)

    def increment_daily(self, day: str, month: str, increments: dict[str, Number]) -> None:
        self.conn.executemany(
            f"INSERT INTO {self.p}daily (day, month, field, value) VALUES (?, ?, ?, ?)"
            f" ON CONFLICT (day, field) DO UPDATE SET value = {_CAPPED}",
            [(day, month, field, amount) for field, amount in increments.items()],
        )
        self._add_totals(increments)

    def increment_monthly(self, month: str, increments: dict[str, int]) -> None:
        self.conn.executemany(
            f"INSERT INTO {self.p}monthly (month, field, value) VALUES (?, ?, ?)"
            f" ON CONFLICT (month, field) DO UPDATE SET value = {_CAPPED}",
            [(month, field, amount) for field, amount in increments.items()],
        )
        self._add_totals(increments)

    def sessions_since(self, users: set[str], since_ms: int) -> list[StoredSession]:
        # One query for the batch: the players as a JSON array, each looked up by the
        # (userId, lastMs) index, from since_ms on and, before it, their latest session
        # if it is open (a player's only open session is their latest: the walk leaves
        # only its last run open and reads every session after the one it opens).
        rows = self.conn.execute(
            f"SELECT {_SESSION_COLUMNS} FROM {self.p}sessions s {self._origin_of('s')}"
            " WHERE s.userId IN (SELECT value FROM json_each(?1)) AND s.lastMs >= ?2"
            f" UNION ALL SELECT {_SESSION_COLUMNS} FROM (SELECT j.value AS userId,"
            f" (SELECT lastMs FROM {self.p}sessions WHERE userId = j.value"
            " ORDER BY lastMs DESC LIMIT 1) AS lastMs FROM json_each(?1) j) latest"
            f" JOIN {self.p}sessions s USING (userId, lastMs) {self._origin_of('s')}"
            " WHERE latest.lastMs < ?2 AND s.logoutAt IS NULL",
            (json.dumps(sorted(users)), since_ms),
        )
        return [_stored_session(row) for row in rows]

    def _origin_of(self, table: str) -> str:
        """The join that names a row's process (rows keep its ``origins`` number)."""
        return f"JOIN {self.p}origins o ON o.id = {table}.originId"

    def origin_ids(self, origins: set[str]) -> dict[str, int]:
        """Each process's ``origins`` number, numbering the new ones: a row keeps a
        small integer instead of the 32 characters of its process's origin. (Every
        origin asked for, and perhaps more.)"""
        if not origins <= self._origins.keys():
            self._origins.update(_origin_ids(self.conn, self.p, origins))
        return self._origins

    def logouts_since(self, users: set[str], since_ms: int) -> list[Logout]:
        rows = self.conn.execute(
            f"SELECT {_LOGOUT_COLUMNS} FROM {self.p}logouts l {self._origin_of('l')}"
            " WHERE l.userId IN (SELECT value FROM json_each(?)) AND l.atMs >= ?",
            (json.dumps(sorted(users)), since_ms),
        )
        return rows.fetchall()

    def activity_runs(self, user_id: str, first_ms: int, last_ms: int) -> list[ActivityRun]:
        rows = self.conn.execute(
            f"SELECT userId, firstMs, lastMs, marks, logins FROM {self.p}activity"
            " WHERE userId = ? AND lastMs >= ? AND firstMs <= ?",
            (user_id, first_ms, last_ms),
        ).fetchall()
        logins = [json.loads(text) if text else [] for *_, text in rows]
        numbered = {o for found in logins for _, o, _ in found if isinstance(o, int)}
        names = dict(
            self.conn.execute(
                f"SELECT id, origin FROM {self.p}origins"
                " WHERE id IN (SELECT value FROM json_each(?))",
                (json.dumps(sorted(numbered)),),
            )
            if numbered
            else ()
        )
        return [
            (
                u,
                f,
                la,
                decode_marks(m),
                # Records written before origins were numbered name them.
                tuple((ms, names[o] if isinstance(o, int) else o, seq) for ms, o, seq in found),
            )
            for (u, f, la, m, _), found in zip(rows, logins, strict=True)
        ]

    def save_sessions(self, sessions: list[StoredSession]) -> None:
        origins = self.origin_ids({session[ORIGIN] for session in sessions})
        _insert_rows(
            self.conn,
            f"INSERT INTO {self.p}sessions ({_SESSION_FIELDS}) VALUES ",
            f"(?,?,{_NULL_IF_0},?,{_NULL_IF_0},?,?,?,?,?,?,?,?)",
            " ON CONFLICT (id) DO UPDATE SET logoutAt = excluded.logoutAt,"
            " durationS = excluded.durationS, timedOut = excluded.timedOut,"
            " lastMs = excluded.lastMs, username = excluded.username",
            [_session_row(session, origins) for session in sessions],
        )

    def delete_sessions(self, ids: list[str]) -> None:
        self.conn.executemany(f"DELETE FROM {self.p}sessions WHERE id = ?", [(i,) for i in ids])

    def insert_logouts(self, logouts: list[Logout]) -> None:
        origins = self.origin_ids({origin for _, _, _, origin, _ in logouts})
        _insert_logouts(self.conn, self.p, logouts, origins=origins)

    def insert_activity(self, runs: list[ActivityRun]) -> None:
        """Each run a row; its logins' origins by their ``origins`` numbers."""
        origins = self.origin_ids({o for *_, logins in runs for _, o, _ in logins})
        _insert_rows(
            self.conn,
            f"INSERT INTO {self.p}activity (userId, firstMs, lastMs, marks, logins) VALUES ",
            f"(?, ?, ?, ?, {_NULL_IF_0})",
            "",
            [
                (
                    user,
                    first,
                    last,
                    bytearray(encode_marks(marks)),  # bound as is, see _NULL_IF_0
                    encode_logins(tuple([(ms, origins[o], seq) for ms, o, seq in logins]))
                    if logins
                    else 0,
                )
                for user, first, last, marks, logins in paced(runs)
            ],
        )

    def insert_events(self, events: list[EventRow]) -> None:
        # One executemany pulling its rows from a paced generator: sqlite3 releases
        # the GIL while it writes each row, but only for a few µs, and a waiting
        # thread woken then mostly finds it taken again for the next row; the pauses
        # between rows hand it over (see .pacing). No list of every row is built.
        self.conn.executemany(
            f"INSERT INTO {self.p}events (ts, userId, event, data, day) VALUES (?, ?, ?, ?, ?)",
            _rows(events),
        )

    def delete_events_until(self, last: datetime, limit: int) -> int:
        cur = self.conn.execute(
            f"DELETE FROM {self.p}events WHERE id IN"
            f" (SELECT id FROM {self.p}events WHERE ts <= ? LIMIT ?)",
            (iso_ms(last), limit),
        )
        return cur.rowcount

    def open_sessions_before(self, cutoff_ms: int, limit: int) -> list[StoredSession]:
        rows = self.conn.execute(
            f"SELECT {_SESSION_COLUMNS} FROM {self.p}sessions s {self._origin_of('s')}"
            " WHERE s.logoutAt IS NULL AND s.lastMs < ? LIMIT ?",
            (cutoff_ms, limit),
        ).fetchall()
        return [_stored_session(row) for row in rows]

    def delete_logouts_before(self, cutoff_ms: int, limit: int) -> int:
        return self.conn.execute(
            f"DELETE FROM {self.p}logouts WHERE (userId, atMs, originId, seq) IN"
            f" (SELECT userId, atMs, originId, seq FROM {self.p}logouts WHERE atMs < ? LIMIT ?)",
            (cutoff_ms, limit),
        ).rowcount

    def delete_activity_before(self, cutoff_ms: int, limit: int) -> int:
        return self.conn.execute(
            f"DELETE FROM {self.p}activity WHERE id IN"
            f" (SELECT id FROM {self.p}activity WHERE lastMs < ? LIMIT ?)",
            (cutoff_ms, limit),
        ).rowcount

    def delete_batches_before(self, cutoff: datetime, limit: int) -> int:
        return self.conn.execute(
            f"DELETE FROM {self.p}batches WHERE id IN"
            f" (SELECT id FROM {self.p}batches WHERE appliedAt < ? LIMIT ?)",
            (iso_ms(cutoff), limit),
        ).rowcount

    # -- players' data rights ---------------------------------------------------------

    def claim_meta(self, key: str, candidate: str) -> str:
        self.conn.execute(
            f"INSERT OR IGNORE INTO {self.p}meta (key, value) VALUES (?, ?)", (key, candidate)
        )
        found = self.meta_value(key)
        assert found is not None  # inserted just now, or there before
        return found

    def set_meta(self, key: str, value: str) -> None:
        self.conn.execute(
            f"INSERT OR REPLACE INTO {self.p}meta (key, value) VALUES (?, ?)", (key, value)
        )

    def meta_value(self, key: str) -> str | None:
        row = self.conn.execute(f"SELECT value FROM {self.p}meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _select_in(self, sql: str, keys: set[str]) -> Iterator[Any]:
        """The rows of ``sql`` whose ``IN ({marks})`` list is filled with ``keys``, a
        chunk of :data:`_IN_CHUNK` at a time."""
        ordered = sorted(keys)
        for i in range(0, len(ordered), _IN_CHUNK):
            chunk = ordered[i : i + _IN_CHUNK]
            yield from self.conn.execute(sql.format(marks=",".join("?" * len(chunk))), chunk)

    def tombstones(self, hashes: Mapping[str, str]) -> dict[str, str]:
        users = {h: user for user, h in hashes.items()}
        sql = f"SELECT hash, token FROM {self.p}tombstones WHERE hash IN ({{marks}})"
        return {users[key_hash]: token for key_hash, token in self._select_in(sql, set(users))}

    def add_tombstone(self, key_hash: str, token: str, at: datetime) -> str | None:
        row = self.conn.execute(
            f"SELECT token FROM {self.p}tombstones WHERE hash = ?", (key_hash,)
        ).fetchone()
        if row is not None:
            return str(row[0])
        self.conn.execute(
            f"INSERT INTO {self.p}tombstones (hash, token, erasedAt) VALUES (?, ?, ?)",
            (key_hash, token, iso_ms(at)),
        )
        return None

    def _merge_into_token(self, table: str, keys: str, merge: str, user: str, token: str) -> int:
        """Move the user's rows of ``table`` to ``token``, merging with a row the token
        has already (``merge``: the SET clause of the conflict)."""
        chosen = keys.replace("userId", "?")
        self.conn.execute(
            f"INSERT INTO {self.p}{table} ({keys}) SELECT {chosen} FROM {self.p}{table}"
            f" WHERE userId = ? ON CONFLICT DO UPDATE SET {merge}",
            (token, user),
        )
        return self.conn.execute(f"DELETE FROM {self.p}{table} WHERE userId = ?", (user,)).rowcount

    def rename_user(self, user_id: str, token: str) -> dict[str, int]:
        execute, p = self.conn.execute, self.p
        counts = {
            table: execute(
                f"UPDATE OR REPLACE {p}{table} SET userId = ? WHERE userId = ?", (token, user_id)
            ).rowcount
            for table in _USER_RECORD_TABLES
        }
        for table in _FIRST_DAY_TABLES:
            counts[table] = self._merge_into_token(
                table, "userId, day", "day = min(day, excluded.day)", user_id, token
            )
        counts["user_revenue"] = self._merge_into_token(
            "user_revenue",
            "day, userId, revenueCents",
            f"revenueCents = MIN(revenueCents + excluded.revenueCents, {MAX_COUNTER})",
            user_id,
            token,
        )
        counts["sessions"] = execute(
            f"UPDATE {p}sessions SET userId = ?, username = NULL WHERE userId = ?",
            (token, user_id),
        ).rowcount
        counts["logouts"] = execute(
            f"UPDATE {p}logouts SET userId = ? WHERE userId = ?", (token, user_id)
        ).rowcount
        counts["activity"] = execute(
            f"UPDATE {p}activity SET userId = ? WHERE userId = ?", (token, user_id)
        ).rowcount
        return counts

    def delete_user_events(self, user_id: str) -> int:
        return self.conn.execute(
            f"DELETE FROM {self.p}events WHERE userId = ?", (user_id,)
        ).rowcount

    def events_after(
        self, after: Any, needles: Sequence[str], limit: int
    ) -> list[tuple[Any, EventRow]]:
        """Only events whose data text holds a needle: ``instr`` over the JSON text, in
        SQLite's C, so no row the erase leaves alone is sent to Python."""
        if not needles:
            return []
        found = " OR ".join("instr(data, ?) > 0" for _ in needles)
        rows = self.conn.execute(
            f"SELECT id, ts, userId, event, data, day FROM {self.p}events"
            f" WHERE id > ? AND ({found}) ORDER BY id LIMIT ?",
            (-1 if after is None else after, *needles, limit),
        )
        return [(row[0], _event_record(row[1:]).row) for row in rows]

    def set_event_data(self, changes: Mapping[Any, str]) -> None:
        self.conn.executemany(
            f"UPDATE {self.p}events SET data = ? WHERE id = ?",
            [(data, position) for position, data in changes.items()],
        )


def _upgrade(conn: sqlite3.Connection, prefix: str) -> None:
    """Bring a file written by an earlier version up to the schema.

    Reads first, so opening an up-to-date file never waits for the write lock; an
    upgrade takes it and looks again, so two processes opening one file at once do not
    both alter it.

    Files from before sessions were computed from marks (up to 0.1 of 2026-11-25) get
    the ``origin``/``seq`` columns (their sessions order by time and id), a logout mark
    for each session a logout closed and for each logout still waiting for its login,
    and lose the pairing machinery those versions kept (``pending_logouts``,
    ``reloginBy``). Files that kept a registration per (day, player) (up to 0.2) keep
    each player's earliest day (:func:`_upgrade_registrations`). Sessions of 0.2 get
    their last mark (:func:`_upgrade_to_activity`).
    """

    def columns() -> set[str]:
        return {row[1] for row in conn.execute(f"PRAGMA table_info({prefix}sessions)")}

    def tables() -> set[str]:
        return {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}

    def outdated() -> bool:
        return not {"origin", "originId"} & columns() or f"{prefix}pending_logouts" in tables()

    def origins_per_row() -> bool:
        logouts = {row[1] for row in conn.execute(f"PRAGMA table_info({prefix}logouts)")}
        return "origin" in columns() or "originId" not in logouts

    def without_totals() -> bool:
        # Counters but no totals: written before the totals existed (every batch since
        # adds to both in one transaction).
        found = f"SELECT 1 FROM {prefix}{{}} LIMIT 1"
        return bool(
            conn.execute(found.format("totals")).fetchone() is None
            and conn.execute(found.format("daily")).fetchone()
        )

    def registrations_by_day() -> bool:
        found = conn.execute(f"PRAGMA table_info({prefix}new_users)")
        return any(name == "day" and pk for _, name, _, _, _, pk in found)

    def without_activity() -> bool:
        return "lastMs" not in columns()

    if not (
        outdated()
        or without_totals()
        or registrations_by_day()
        or without_activity()
        or origins_per_row()
    ):
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        if origins_per_row():
            _upgrade_logouts(conn, prefix)
        if outdated():
            _upgrade_to_marks(conn, prefix, columns(), tables())
        if without_activity():
            _upgrade_to_activity(conn, prefix)
        if registrations_by_day():
            _upgrade_registrations(conn, prefix)
        if "origin" in columns():
            _upgrade_session_origins(conn, prefix)
        if without_totals():
            conn.execute(
                f"INSERT INTO {prefix}totals (field, value) SELECT field, SUM(value) FROM"
                f" (SELECT field, value FROM {prefix}daily"
                f" UNION ALL SELECT field, value FROM {prefix}monthly) GROUP BY field"
            )
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _upgrade_to_marks(
    conn: sqlite3.Connection, p: str, columns: set[str], tables: set[str]
) -> None:
    if not {"origin", "originId"} & columns:
        conn.execute(f"ALTER TABLE {p}sessions ADD COLUMN origin TEXT NOT NULL DEFAULT ''")
        conn.execute(f"ALTER TABLE {p}sessions ADD COLUMN seq INTEGER NOT NULL DEFAULT 0")
    relogin = "reloginBy" in columns
    rows = conn.execute(
        f"SELECT id, userId, logoutAt FROM {p}sessions WHERE logoutAt IS NOT NULL"
        " AND timedOut = 0" + (" AND reloginBy IS NULL" if relogin else "")
    ).fetchall()
    marks = [(f"{sid}-logout", user, to_ms(parse_iso_ms(at)), sid, 1) for sid, user, at in rows]
    if f"{p}pending_logouts" in tables:
        rows = conn.execute(f"SELECT rowid, userId, logoutAt FROM {p}pending_logouts").fetchall()
        marks += [
            (f"pending-{rowid}", user, to_ms(parse_iso_ms(at)), "pending", rowid)
            for rowid, user, at in rows
        ]
        conn.execute(f"DROP TABLE {p}pending_logouts")
    _insert_logouts(conn, p, marks, "INSERT OR IGNORE")
    if relogin:
        conn.execute(f"DROP INDEX IF EXISTS {p}sessions_relogin")
        conn.execute(f"ALTER TABLE {p}sessions DROP COLUMN reloginBy")


def _upgrade_to_activity(conn: sqlite3.Connection, p: str) -> None:
    """Sessions of 0.2 get their last mark: an open one its login (it goes on under the
    activity rules), a closed one its end, and ``frozen`` (kept as it is, see
    :mod:`gso_analytics.sessions`)."""
    conn.execute(f"ALTER TABLE {p}sessions ADD COLUMN lastMs INTEGER NOT NULL DEFAULT 0")
    conn.execute(f"ALTER TABLE {p}sessions ADD COLUMN frozen INTEGER NOT NULL DEFAULT 0")
    rows = conn.execute(f"SELECT id, loginAt, logoutAt FROM {p}sessions").fetchall()
    conn.executemany(
        f"UPDATE {p}sessions SET lastMs = ?, frozen = ? WHERE id = ?",
        [
            (to_ms(parse_iso_ms(logout or login)), int(logout is not None), sid)
            for sid, login, logout in rows
        ],
    )


def _upgrade_logouts(conn: sqlite3.Connection, p: str) -> None:
    """Logout marks of files up to 0.3 (keyed by id, with their process's origin and
    two indexes) move to the table keyed by player and time, their origin numbered in
    ``origins``: about a quarter of the bytes per mark."""
    conn.execute(f"ALTER TABLE {p}logouts RENAME TO {p}logouts_by_id")
    conn.execute(f"DROP INDEX IF EXISTS {p}logouts_user")
    conn.execute(f"DROP INDEX IF EXISTS {p}logouts_at")
    conn.execute(LOGOUTS.format(p=p))
    rows = conn.execute(f"SELECT id, userId, atMs, origin, seq FROM {p}logouts_by_id").fetchall()
    _insert_logouts(conn, p, rows)
    conn.execute(f"DROP TABLE {p}logouts_by_id")


def _upgrade_session_origins(conn: sqlite3.Connection, p: str) -> None:
    """Sessions of files up to 0.3 kept their process's origin on every row; they get
    its ``origins`` number instead."""
    conn.execute(
        f"INSERT OR IGNORE INTO {p}origins (origin) SELECT DISTINCT origin FROM {p}sessions"
    )
    conn.execute(f"ALTER TABLE {p}sessions ADD COLUMN originId INTEGER NOT NULL DEFAULT 0")
    conn.execute(
        f"UPDATE {p}sessions SET originId ="
        f" (SELECT id FROM {p}origins o WHERE o.origin = {p}sessions.origin)"
    )
    conn.execute(f"ALTER TABLE {p}sessions DROP COLUMN origin")


def _upgrade_registrations(conn: sqlite3.Connection, p: str) -> None:
    """``new_users`` keyed by (day, player) becomes one row per player with their
    earliest day, the day ``newUsers`` counts them in from now on. The daily
    ``newUsers`` already counted stay as they are."""
    conn.execute(
        f"CREATE TABLE {p}new_users_by_player (userId TEXT PRIMARY KEY, day TEXT NOT NULL)"
        " WITHOUT ROWID"
    )
    conn.execute(
        f"INSERT INTO {p}new_users_by_player (userId, day)"
        f" SELECT userId, MIN(day) FROM {p}new_users GROUP BY userId"
    )
    conn.execute(f"DROP TABLE {p}new_users")
    conn.execute(f"ALTER TABLE {p}new_users_by_player RENAME TO {p}new_users")


def _event_record(row: tuple[Any, ...]) -> EventRecord:
    ts, user_id, event, data, day = row
    return EventRecord(to_ms(parse_iso_ms(ts)), user_id, event, data, day)


#: A logout's columns as :class:`~gso_analytics.model.Logout` takes them (``l`` the
#: logouts table, ``o`` its process's row of ``origins``).
_LOGOUT_COLUMNS = "COALESCE(l.id, o.origin || '-' || l.seq), l.userId, l.atMs, o.origin, l.seq"
#: A session's columns as stored, and as read (``s`` the sessions table, ``o`` origins).
_SESSION_FIELDS = (
    "id, userId, username, loginAt, logoutAt, durationS, day, month, timedOut, originId, seq,"
    " lastMs, frozen"
)
#: A parameter that may be NULL, bound as the integer 0 for NULL (where the column
#: only ever holds text): sqlite3 binds str, int, float and bytearray as they are, but
#: looks every other value (None, bytes) up among its adapters first, and that failed
#: lookup formats an AttributeError's message (~4,000 instructions a value, a tenth
#: of a player's activity record). So rows carry 0 for NULL and bytearray for bytes.
_NULL_IF_0 = "NULLIF(?, 0)"
_SESSION_COLUMNS = ", ".join(
    "o.origin" if field == "originId" else f"s.{field}" for field in _SESSION_FIELDS.split(", ")
)


def _origin_ids(conn: sqlite3.Connection, p: str, origins: set[str]) -> dict[str, int]:
    """The ``origins`` numbers of these processes' origins, numbering the new ones
    (each process's origin is stored once, not on every session and logout row)."""
    if not origins:
        return {}
    conn.executemany(
        f"INSERT OR IGNORE INTO {p}origins (origin) VALUES (?)", [(o,) for o in origins]
    )
    rows = conn.execute(
        f"SELECT origin, id FROM {p}origins WHERE origin IN (SELECT value FROM json_each(?))",
        (json.dumps(sorted(origins)),),
    )
    return dict(rows)


def _insert_logouts(
    conn: sqlite3.Connection,
    p: str,
    marks: list[tuple[str, str, int, str, int]],
    insert: str = "INSERT",
    origins: dict[str, int] | None = None,
) -> None:
    """Store logout marks ``(id, userId, atMs, origin, seq)``; an id that is not
    ``<origin>-<seq>`` (a mark moved from a file of 0.1) is kept as it is. ``origins``:
    their processes' numbers, if known."""
    if origins is None:
        origins = _origin_ids(conn, p, {origin for _, _, _, origin, _ in marks})
    _insert_rows(
        conn,
        f"{insert} INTO {p}logouts (userId, atMs, originId, seq, id) VALUES ",
        f"(?, ?, ?, ?, {_NULL_IF_0})",
        "",
        [
            (user, at, origins[origin], seq, 0 if mark == f"{origin}-{seq}" else mark)
            for mark, user, at, origin, seq in marks
        ],
    )


#: Rows per multi-row ``INSERT`` (see :func:`_insert_rows`): 13 parameters a session
#: row, 416 a statement, below the 999 of SQLite builds older than 3.32.
ROWS_PER_INSERT = 32


def _insert_rows(
    conn: sqlite3.Connection, head: str, row: str, tail: str, rows: Sequence[tuple[Any, ...]]
) -> None:
    """``head`` + ``row`` + ``tail`` for each of ``rows``, :data:`ROWS_PER_INSERT` rows a
    statement (``VALUES (...), (...), ...``, the same SQL for every full chunk; the rest
    one by one). Why: through sqlite3 a row of its own costs a bind, a step (the GIL
    released and taken again), a reset and a statement's start and end, about 7,000
    instructions beside its ~14,000 of inserting (a player's activity record and session
    row in a flush of ~25 events each). The pacer looks between chunks; sqlite3 runs
    each chunk's step without the GIL, so waiting threads run meanwhile."""
    full = len(rows) - len(rows) % ROWS_PER_INSERT
    if full:
        sql = head + ",".join([row] * ROWS_PER_INSERT) + tail
        pacer = Pacer()
        for start in range(0, full, ROWS_PER_INSERT):
            pacer.tick()
            conn.execute(sql, list(chain.from_iterable(rows[start : start + ROWS_PER_INSERT])))
    if full < len(rows):
        conn.executemany(head + row + tail, rows[full:])


def _stored_session(row: tuple[Any, ...]) -> StoredSession:
    sid, user, name, login, logout, duration, day, month, timed_out, origin, seq, last, frozen = row
    return (
        *(sid, user, to_ms(parse_iso_ms(login)), origin, seq, name, day, month),
        None if logout is None else to_ms(parse_iso_ms(logout)),
        duration,
        bool(timed_out),
        None if frozen else last,
    )


def _session_row(session: StoredSession, origins: dict[str, int]) -> tuple[Any, ...]:
    sid, user, at, origin, seq, name, day, month, logout, duration, timed_out, last = session
    return (
        sid,
        user,
        0 if name is None else name,  # NULL, see _NULL_IF_0
        iso_from_ms(at),
        0 if logout is None else iso_from_ms(logout),
        duration,
        day,
        month,
        int(timed_out),
        origins[origin],
        seq,
        logout if last is None else last,  # a frozen session is indexed by its end
        int(last is None),
    )


def path_from_url(url: str) -> str:
    """``sqlite:///rel.db`` → ``rel.db``; ``sqlite:////abs/x.db`` → ``/abs/x.db``."""
    path = urlsplit(url).path
    if not path.startswith("/") or len(path) < 2:
        raise ConfigurationError(
            f"SQLite URL {url!r} names no file; use sqlite:///relative.db or sqlite:////abs/path.db"
        )
    path = path[1:]
    if path == ":memory:":
        raise ConfigurationError(
            "sqlite:///:memory: gives each connection its own database; use memory:// instead"
        )
    return path


#: SQLite errors about what a batch holds, not about the file being reachable: the
#: same statement fails again however often it is retried.
_PERMANENT_ERRORS = (sqlite3.IntegrityError, sqlite3.DataError, sqlite3.InterfaceError)

#: Connections a child inherited over a fork. They belong to the parent: kept
#: referenced so that garbage collection never closes them in the child (a close there
#: may checkpoint or drop the parent's WAL), and never used.
_inherited: list[sqlite3.Connection] = []


def _check_existing(path: Path, prefix: str) -> None:
    """``existing=True``: refuse a missing file (a relative path is relative to the
    process's directory: the message shows where it looked) or a file without our
    tables under ``prefix``, opening it read-only, so nothing is created."""
    where = str(path.resolve())
    if not path.is_file():
        raise ConfigurationError(f"no SQLite database at {where}")
    try:
        with contextlib.closing(
            sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        ) as conn:
            names = [row[0] for row in conn.execute("SELECT name FROM sqlite_master")]
    except sqlite3.Error as exc:
        raise ConfigurationError(f"cannot read SQLite database {where}: {exc}") from exc
    check_ours(names, prefix, where)


def _store_error(path: str, exc: sqlite3.Error) -> StoreError:
    return StoreError(f"SQLite {path}: {exc}", permanent=isinstance(exc, _PERMANENT_ERRORS))


class SQLiteStore(Store):
    """One SQLite file shared by threads and processes.

    A process holds one connection for writes (transactions take the write lock, so
    one is all they can use) and a pool of read connections shared by every thread: a
    server that runs each request on a new thread costs no new connection per request,
    and at most :attr:`read_pool` idle connections stay open. sqlite3 connections never
    cross a fork: a child opens its own.
    """

    schemes = ("sqlite",)
    #: Idle read connections kept open; more are opened while more threads read at
    #: once, and closed when they are done.
    read_pool = 4

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_timeout: float = 30.0,
        prefix: str = "gso_analytics_",
        existing: bool = False,
    ) -> None:
        if not prefix.isidentifier():
            raise ConfigurationError(f"table prefix {prefix!r} is not an SQL identifier")
        if existing:
            _check_existing(Path(path), prefix)
        self.path = str(Path(path))
        self.busy_timeout = busy_timeout
        self.prefix = prefix
        self._closed = False
        self._write_conn: sqlite3.Connection | None = None
        self._idle: list[sqlite3.Connection] = []
        self.after_fork_in_child(new_locks=True)  # the locks; no connection yet
        forking.register(self)
        if self.path != ":memory:" and not existing:
            # A new database starts 0600, and SQLite gives -wal and -shm its mode. A
            # path we cannot create is left to sqlite3, whose error names it.
            with contextlib.suppress(OSError):
                create_private(self.path)
        try:
            with self._write_lock:
                conn = self._writer()
                conn.execute("PRAGMA journal_mode=WAL")
                conn.executescript(SCHEMA.format(p=prefix))
                _upgrade(conn, prefix)
                conn.executescript(INDEXES.format(p=prefix))
        except sqlite3.Error as exc:
            raise StoreError(f"cannot prepare SQLite database {self.path}: {exc}") from exc

    # -- connections and fork ---------------------------------------------------------

    def fork_locks(self) -> list[threading.Lock]:
        return [self._write_lock, self._lock]

    def fork_wait(self) -> float:
        return self.busy_timeout

    def after_fork_in_child(self, new_locks: bool) -> None:
        """No connection of the parent's: they stay the parent's (see :data:`_inherited`)."""
        _inherited.extend(c for c in (self._write_conn, *self._idle) if c is not None)
        self._write_conn, self._idle = None, []
        if new_locks:
            self._lock = threading.Lock()  # guards the connections
            self._write_lock = threading.Lock()  # held by a transaction; a fork waits for it

    def _open(self, factory: type[sqlite3.Connection] = sqlite3.Connection) -> sqlite3.Connection:
        if self._closed:
            raise StoreError(f"SQLite store {self.path} is closed")
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=self.busy_timeout,
                isolation_level=None,
                check_same_thread=False,
                factory=factory,
            )
            conn.execute("PRAGMA synchronous=NORMAL")
            # Deleted and rewritten content is zeroed, not left in free space: a row
            # rewritten before an erase (a session closed, revenue added) must not
            # keep an old copy of the player's id in the file (see erase_user).
            conn.execute("PRAGMA secure_delete=ON")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open SQLite database {self.path}: {exc}") from exc
        return conn

    def _writer(self) -> sqlite3.Connection:
        """The write connection; called with the write lock held."""
        if self._write_conn is None:
            self._write_conn = self._open(_PacedConnection)
        return self._write_conn

    @contextmanager
    def _reader(self) -> Iterator[sqlite3.Connection]:
        """A read connection from the pool, back in it afterwards (or closed, when the
        pool is full or the store was closed meanwhile)."""
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = self._open()
        try:
            yield conn
        finally:
            with self._lock:
                keep = not self._closed and len(self._idle) < self.read_pool
                if keep:
                    self._idle.append(conn)
            if not keep:
                conn.close()

    @classmethod
    def from_url(cls, url: str, **options: Any) -> SQLiteStore:
        query = dict(parse_qsl(urlsplit(url).query))
        if "busy_timeout" in query:
            text = query.pop("busy_timeout")
            try:
                options.setdefault("busy_timeout", float(text))
            except ValueError:
                raise ConfigurationError(
                    f"SQLite URL option busy_timeout must be seconds, got {text!r}"
                ) from None
        if "prefix" in query:
            options.setdefault("prefix", query.pop("prefix"))
        if query:
            raise ConfigurationError(f"unknown SQLite URL options: {', '.join(sorted(query))}")
        return cls(path_from_url(url), **options)

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        with self._write_lock:
            conn = self._writer()
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StoreError(f"SQLite {self.path}: cannot begin a transaction: {exc}") from exc
            try:
                yield _SQLiteTransaction(conn, self.prefix)
                conn.execute("COMMIT")
            except BaseException as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise _store_error(self.path, exc) from exc
                raise

    def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        try:
            with self._reader() as conn:
                return conn.execute(sql.format(p=self.prefix), params).fetchall()
        except sqlite3.Error as exc:
            raise _store_error(self.path, exc) from exc

    def _days(self, days: list[str]) -> list[DailyStats]:
        if not days:
            return []
        marks = ",".join("?" * len(days))
        rows = self._read(
            f"SELECT day, month, field, value FROM {{p}}daily WHERE day IN ({marks})", tuple(days)
        )
        found: dict[str, tuple[str, dict[str, Number]]] = {}
        for day, month, field, value in rows:
            found.setdefault(day, (month, {}))[1][field] = value
        return [DailyStats(day, *found[day]) for day in days if day in found]

    def get_day(self, day: str) -> DailyStats | None:
        found = self._days([day])
        return found[0] if found else None

    def recent_days(self, limit: int = 30) -> list[DailyStats]:
        rows = self._read("SELECT DISTINCT day FROM {p}daily ORDER BY day DESC LIMIT ?", (limit,))
        return self._days([row[0] for row in rows])

    def get_month(self, month: str) -> MonthStats:
        figures = dict(self._read("SELECT field, value FROM {p}monthly WHERE month = ?", (month,)))
        return MonthStats.from_fields(month, figures)

    def get_totals(self) -> dict[str, Number]:
        return dict(self._read("SELECT field, value FROM {p}totals"))

    def _write(self, sql: str, params: tuple[Any, ...]) -> None:
        """One statement outside any batch (its own implicit transaction)."""
        with self._write_lock:
            try:
                self._writer().execute(sql.format(p=self.prefix), params)
            except sqlite3.Error as exc:
                raise _store_error(self.path, exc) from exc

    def save_heartbeat(self, heartbeat: Heartbeat) -> None:
        self._write(
            "INSERT OR REPLACE INTO {p}heartbeats"
            " (process, host, pid, at, expiresAt, payload) VALUES (?, ?, ?, ?, ?, ?)",
            (
                heartbeat.process,
                heartbeat.host,
                heartbeat.pid,
                iso_ms(heartbeat.at),
                iso_ms(heartbeat.expires_at),
                heartbeat.payload(),
            ),
        )

    def live_heartbeats(self, now: datetime) -> list[Heartbeat]:
        rows = self._read(
            "SELECT process, host, pid, at, expiresAt, payload FROM {p}heartbeats"
            " WHERE expiresAt > ? ORDER BY process",
            (iso_ms(now),),
        )
        return [
            Heartbeat.from_payload(
                process, host, pid, parse_iso_ms(at), parse_iso_ms(expires), payload
            )
            for process, host, pid, at, expires, payload in rows
        ]

    def forget_heartbeats(self, expired_before: datetime) -> None:
        self._write("DELETE FROM {p}heartbeats WHERE expiresAt < ?", (iso_ms(expired_before),))

    def withdraw_heartbeat(self, process: str) -> None:
        self._write("DELETE FROM {p}heartbeats WHERE process = ?", (process,))

    def count_active_sessions(self, since_ms: int) -> int:
        found = self._read(
            "SELECT COUNT(*) FROM {p}sessions WHERE logoutAt IS NULL AND lastMs >= ?", (since_ms,)
        )
        return int(found[0][0])

    def get_sessions(self, user_id: str) -> list[SessionRecord]:
        return self._sessions(
            "userId = ? ORDER BY loginAt, (SELECT origin FROM {p}origins WHERE id = originId), seq",
            (user_id,),
        )

    def get_logouts(self, user_id: str) -> list[Logout]:
        return self._read(
            f"SELECT {_LOGOUT_COLUMNS} FROM {{p}}logouts l JOIN {{p}}origins o ON o.id = l.originId"
            " WHERE l.userId = ? ORDER BY l.atMs, o.origin, l.seq",
            (user_id,),
        )

    def _sessions(self, where: str, params: tuple[Any, ...]) -> list[SessionRecord]:
        rows = self._read(
            "SELECT id, userId, username, loginAt, logoutAt, durationS, day, month, timedOut,"
            f" lastMs, frozen FROM {{p}}sessions WHERE {where}",
            params,
        )
        return [
            SessionRecord(
                sid,
                uid,
                name,
                parse_iso_ms(login),
                parse_iso_ms(logout) if logout else None,
                duration,
                day,
                month,
                bool(timed_out),
                None if frozen else from_ms(last),
            )
            for sid, uid, name, login, logout, duration, day, month, timed_out, last, frozen in rows
        ]

    def get_events(self, user_id: str | None = None, limit: int = 1000) -> list[EventRecord]:
        where, params = ("WHERE userId = ?", (user_id,)) if user_id is not None else ("", ())
        rows = self._read(
            f"SELECT ts, userId, event, data, day FROM {{p}}events {where}"
            " ORDER BY id DESC LIMIT ?",
            (*params, limit),
        )
        return [_event_record(row) for row in reversed(rows)]

    def user_records(self, user_id: str) -> UserRecords:
        def keys(table: str, key: str) -> list[str]:
            sql = f"SELECT {key} FROM {{p}}{table} WHERE userId = ? ORDER BY {key}"
            return [row[0] for row in self._read(sql, (user_id,))]

        def first(table: str) -> str | None:
            found = keys(table, "day")
            return found[0] if found else None

        revenue = self._read(
            "SELECT day, revenueCents FROM {p}user_revenue WHERE userId = ? ORDER BY day",
            (user_id,),
        )
        return read_user_records(keys, first, dict(revenue))

    def erase_user(self, user_id: str, at: datetime, *, also: Iterable[str] = ()) -> ErasureReceipt:
        """The shared erase, then a ``wal_checkpoint(TRUNCATE)``: the WAL holds the old
        pages until they are copied back and it is cut to zero bytes. Every connection
        runs with ``secure_delete`` on, so no earlier version of a row lingers in free
        space (the erase alone could not reach those). A reader of another process
        still in a transaction can hold the checkpoint back: then the WAL keeps the old
        pages until the next checkpoint (the receipt says so, ``walTruncated``)."""
        receipt = super().erase_user(user_id, at, also=also)
        with self._write_lock:
            busy, _, _ = self._writer().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        return attrs.evolve(receipt, wal_truncated=not busy)

    # -- KPI range reads: each an index range on the day key -------------------------

    def days_between(self, start: str, end: str) -> list[DailyStats]:
        rows = self._read(
            "SELECT DISTINCT day FROM {p}daily WHERE day BETWEEN ? AND ? ORDER BY day", (start, end)
        )
        return self._days([row[0] for row in rows])

    def _grouped(self, sql: str, start: str, end: str) -> dict[str, set[str]]:
        found: dict[str, set[str]] = {}
        for day, user in self._read(sql, (start, end)):
            found.setdefault(day, set()).add(user)
        return found

    def day_users_between(self, start: str, end: str) -> dict[str, set[str]]:
        return self._grouped(
            "SELECT day, userId FROM {p}day_users WHERE day BETWEEN ? AND ?", start, end
        )

    def count_day_users(self, start: str, end: str) -> int:
        rows = self._read(
            "SELECT COUNT(DISTINCT userId) FROM {p}day_users WHERE day BETWEEN ? AND ?",
            (start, end),
        )
        return int(rows[0][0])

    def first_seen_between(self, start: str, end: str) -> dict[str, set[str]]:
        return self._grouped(
            "SELECT day, userId FROM {p}first_seen WHERE day BETWEEN ? AND ?", start, end
        )

    def first_payments_between(self, start: str, end: str) -> dict[str, set[str]]:
        return self._grouped(
            "SELECT day, userId FROM {p}first_payments WHERE day BETWEEN ? AND ?", start, end
        )

    def user_revenue_between(self, start: str, end: str) -> dict[str, dict[str, Number]]:
        found: dict[str, dict[str, Number]] = {}
        for day, user, cents in self._read(
            "SELECT day, userId, revenueCents FROM {p}user_revenue WHERE day BETWEEN ? AND ?",
            (start, end),
        ):
            found.setdefault(day, {})[user] = cents
        return found

    def sessions_between(self, start: str, end: str) -> list[SessionRecord]:
        return self._sessions("day BETWEEN ? AND ?", (start, end))

    def events_between(
        self, start: str | None, end: str | None, names: list[str]
    ) -> list[EventRecord]:
        if not names:
            return []
        marks = ",".join("?" * len(names))
        rows = self._read(
            f"SELECT ts, userId, event, data, day FROM {{p}}events WHERE event IN ({marks})"
            " AND day >= ? AND day <= ? ORDER BY ts, id",
            (*names, start or "", end or "9999-12-31"),
        )
        return [_event_record(row) for row in rows]

    def close(self) -> None:
        """Close this process's connections (a read in flight closes its own after).
        Not behind the write lock: a transaction hung on the file must not hang this."""
        with self._lock:
            self._closed = True
            mine = [c for c in (self._write_conn, *self._idle) if c is not None]
            self._write_conn, self._idle = None, []
        for conn in mine:
            conn.close()
