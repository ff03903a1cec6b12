"""``sqlite:///relative.db`` and ``sqlite:////absolute/path.db``: the embedded store.

Several processes share one file: WAL journal (readers never block the writer), a busy
timeout so a writer waits for another's transaction instead of failing, and one
``BEGIN IMMEDIATE`` transaction per batch that also claims the batch id, so a batch is
applied whole or not at all, and exactly once. Counters are long rows
``(day, field, value)`` upserted as ``value = value + excluded.value``, so a game's own
counters need no schema change.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from gso_analytics.clock import iso_from_ms, iso_ms, parse_iso_ms, to_ms
from gso_analytics.errors import ConfigurationError, StoreError
from gso_analytics.model import (
    DailyStats,
    EventRecord,
    MonthStats,
    Number,
    OpenSession,
    ReloginClose,
    SessionOpen,
    SessionRecord,
)
from gso_analytics.store import Store, Transaction

SCHEMA = """
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
CREATE TABLE IF NOT EXISTS {p}sessions (
    id TEXT PRIMARY KEY, userId TEXT NOT NULL, username TEXT,
    loginAt TEXT NOT NULL, logoutAt TEXT, durationS INTEGER NOT NULL DEFAULT 0,
    day TEXT NOT NULL, month TEXT NOT NULL, timedOut INTEGER NOT NULL DEFAULT 0,
    reloginBy TEXT);
CREATE INDEX IF NOT EXISTS {p}sessions_user ON {p}sessions (userId, loginAt);
CREATE INDEX IF NOT EXISTS {p}sessions_open ON {p}sessions (loginAt) WHERE logoutAt IS NULL;
CREATE TABLE IF NOT EXISTS {p}pending_logouts (
    userId TEXT NOT NULL, logoutAt TEXT NOT NULL, origin TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS {p}pending_logouts_user ON {p}pending_logouts (userId, logoutAt);
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
CREATE TABLE IF NOT EXISTS {p}user_revenue (
    day TEXT NOT NULL, userId TEXT NOT NULL, revenueCents NOT NULL,
    PRIMARY KEY (day, userId)) WITHOUT ROWID;
"""


class _SQLiteTransaction(Transaction):
    def __init__(self, conn: sqlite3.Connection, prefix: str) -> None:
        self.conn = conn
        self.p = prefix

    def claim_batch(self, batch_id: str, at: datetime) -> bool:
        cur = self.conn.execute(
            f"INSERT OR IGNORE INTO {self.p}batches (id, appliedAt) VALUES (?, ?)",
            (batch_id, iso_ms(at)),
        )
        return cur.rowcount == 1

    def _add_users(self, table: str, key: str, users: set[str]) -> int:
        cur = self.conn.executemany(
            f"INSERT OR IGNORE INTO {self.p}{table} VALUES (?, ?)", [(key, u) for u in users]
        )
        return cur.rowcount

    def add_day_users(self, day: str, users: set[str]) -> int:
        return self._add_users("day_users", day, users)

    def add_month_users(self, month: str, users: set[str]) -> int:
        return self._add_users("month_users", month, users)

    def _keep_first(self, table: str, first_days: dict[str, str]) -> None:
        self.conn.executemany(
            f"INSERT INTO {self.p}{table} (userId, day) VALUES (?, ?)"
            " ON CONFLICT (userId) DO UPDATE SET day = min(day, excluded.day)",
            sorted(first_days.items()),
        )

    def add_first_seen(self, first_days: dict[str, str]) -> None:
        self._keep_first("first_seen", first_days)

    def add_first_payments(self, first_days: dict[str, str]) -> None:
        self._keep_first("first_payments", first_days)

    def add_user_revenue(self, revenue: dict[str, dict[str, Number]]) -> None:
        self.conn.executemany(
            f"INSERT INTO {self.p}user_revenue (day, userId, revenueCents) VALUES (?, ?, ?)"
            " ON CONFLICT (day, userId) DO UPDATE"
            " SET revenueCents = revenueCents + excluded.revenueCents",
            [
                (day, user, cents)
                for day, payers in revenue.items()
                for user, cents in payers.items()
            ],
        )

    def increment_daily(self, day: str, month: str, increments: dict[str, Number]) -> None:
        self.conn.executemany(
            f"INSERT INTO {self.p}daily (day, month, field, value) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (day, field) DO UPDATE SET value = value + excluded.value",
            [(day, month, field, amount) for field, amount in increments.items()],
        )

    def increment_monthly(self, month: str, increments: dict[str, int]) -> None:
        self.conn.executemany(
            f"INSERT INTO {self.p}monthly (month, field, value) VALUES (?, ?, ?)"
            " ON CONFLICT (month, field) DO UPDATE SET value = value + excluded.value",
            [(month, field, amount) for field, amount in increments.items()],
        )

    def insert_session(self, op: SessionOpen) -> None:
        self.conn.execute(
            f"INSERT INTO {self.p}sessions (id, userId, username, loginAt, day, month)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (op.session_id, op.user_id, op.username, iso_ms(op.login_at), op.day, op.month),
        )

    def find_open_session(
        self, user_id: str, session_id: str | None, before: datetime
    ) -> OpenSession | None:
        if session_id is not None:
            row = self.conn.execute(
                f"SELECT id, loginAt, day, month FROM {self.p}sessions"
                " WHERE id = ? AND logoutAt IS NULL",
                (session_id,),
            ).fetchone()
        else:
            row = self.conn.execute(
                f"SELECT id, loginAt, day, month FROM {self.p}sessions"
                " WHERE userId = ? AND logoutAt IS NULL AND loginAt <= ?"
                " ORDER BY loginAt DESC LIMIT 1",
                (user_id, iso_ms(before)),
            ).fetchone()
        return _open_session(row) if row else None

    def end_session(
        self,
        session_id: str,
        logout_at: datetime,
        duration: int,
        timed_out: bool,
        relogin_by: str | None = None,
    ) -> None:
        self.conn.execute(
            f"UPDATE {self.p}sessions SET logoutAt = ?, durationS = ?, timedOut = ?, reloginBy = ?"
            " WHERE id = ?",
            (iso_ms(logout_at), duration, int(timed_out), relogin_by, session_id),
        )

    def find_relogin_close(self, user_id: str, at: datetime, origin: str) -> ReloginClose | None:
        when = iso_ms(at)
        # By the partial index: the user's second-login ends after ``at``, a handful,
        # where the (userId, loginAt) index the planner prefers for the ORDER BY would
        # walk back through every session of the user when none matches.
        row = self.conn.execute(
            f"SELECT id, loginAt, logoutAt, durationS, day, month FROM {self.p}sessions"
            f" INDEXED BY {self.p}sessions_relogin"
            " WHERE userId = ? AND reloginBy IS NOT NULL AND logoutAt > ? AND loginAt <= ?"
            " AND reloginBy != ? ORDER BY loginAt DESC LIMIT 1",
            (user_id, when, when, origin),
        ).fetchone()
        if row is None:
            return None
        session_id, login_at, logout_at, duration, day, month = row
        return ReloginClose(
            session_id, parse_iso_ms(login_at), parse_iso_ms(logout_at), duration, day, month
        )

    def correct_relogin_close(
        self, session: ReloginClose, logout_at: datetime, duration: int
    ) -> None:
        self.conn.execute(
            f"UPDATE {self.p}sessions SET logoutAt = ?, durationS = ?, reloginBy = NULL"
            " WHERE id = ?",
            (iso_ms(logout_at), duration, session.session_id),
        )

    def add_pending_logout(self, user_id: str, logout_at: datetime, origin: str) -> None:
        self.conn.execute(
            f"INSERT INTO {self.p}pending_logouts (userId, logoutAt, origin) VALUES (?, ?, ?)",
            (user_id, iso_ms(logout_at), origin),
        )

    def take_pending_logout(self, user_id: str, login_at: datetime, origin: str) -> datetime | None:
        row = self.conn.execute(
            f"SELECT rowid, logoutAt FROM {self.p}pending_logouts"
            " WHERE userId = ? AND logoutAt >= ? AND origin != ? ORDER BY logoutAt LIMIT 1",
            (user_id, iso_ms(login_at), origin),
        ).fetchone()
        if row is None:
            return None
        self.conn.execute(f"DELETE FROM {self.p}pending_logouts WHERE rowid = ?", (row[0],))
        return parse_iso_ms(row[1])

    def insert_events(self, events: list[EventRecord]) -> None:
        self.conn.executemany(
            f"INSERT INTO {self.p}events (ts, userId, event, data, day) VALUES (?, ?, ?, ?, ?)",
            [(iso_from_ms(e.ts_ms), e.user_id, e.event, e.data, e.day) for e in events],
        )

    def delete_events_before(self, cutoff: datetime) -> int:
        cur = self.conn.execute(f"DELETE FROM {self.p}events WHERE ts < ?", (iso_ms(cutoff),))
        return cur.rowcount

    def open_sessions_before(self, cutoff: datetime) -> list[OpenSession]:
        rows = self.conn.execute(
            f"SELECT id, loginAt, day, month FROM {self.p}sessions"
            " WHERE logoutAt IS NULL AND loginAt < ?",
            (iso_ms(cutoff),),
        ).fetchall()
        return [_open_session(row) for row in rows]

    def delete_pending_logouts_before(self, cutoff: datetime) -> None:
        self.conn.execute(
            f"DELETE FROM {self.p}pending_logouts WHERE logoutAt < ?", (iso_ms(cutoff),)
        )

    def delete_batches_before(self, cutoff: datetime) -> None:
        self.conn.execute(f"DELETE FROM {self.p}batches WHERE appliedAt < ?", (iso_ms(cutoff),))


def _upgrade(conn: sqlite3.Connection, prefix: str) -> None:
    """Bring a file written by an earlier version up to the schema.

    Reads first, so opening an up-to-date file never waits for the write lock; an
    upgrade takes it and looks again, so two processes opening one file at once do not
    both alter it.
    """

    def missing() -> bool:
        columns = {row[1] for row in conn.execute(f"PRAGMA table_info({prefix}sessions)")}
        return "reloginBy" not in columns

    if missing():
        conn.execute("BEGIN IMMEDIATE")
        try:
            if missing():
                conn.execute(f"ALTER TABLE {prefix}sessions ADD COLUMN reloginBy TEXT")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    # Finding a session a second login ended reads only those, by user and end.
    conn.execute(
        f"CREATE INDEX IF NOT EXISTS {prefix}sessions_relogin ON {prefix}sessions"
        " (userId, logoutAt) WHERE reloginBy IS NOT NULL"
    )


def _event_record(row: tuple[Any, ...]) -> EventRecord:
    ts, user_id, event, data, day = row
    return EventRecord(to_ms(parse_iso_ms(ts)), user_id, event, data, day)


def _open_session(row: tuple[Any, ...]) -> OpenSession:
    return OpenSession(row[0], parse_iso_ms(row[1]), row[2], row[3])


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


#: The open stores of this process, and the locks a fork holds (see :func:`_before_fork`).
_stores: weakref.WeakSet[SQLiteStore] = weakref.WeakSet()
_held_at_fork: list[threading.Lock] = []


def _before_fork() -> None:
    """SQLite keeps the locks of a process's connections in process memory, and a child
    inherits that memory: forked while another thread is inside a write transaction,
    the child could never write the file again, even on new connections. So a fork
    waits until no transaction of this process is open (at most ``busy_timeout``)."""
    for store in list(_stores):
        for lock in (store._write_lock, store._lock):
            lock.acquire()
            _held_at_fork.append(lock)


def _after_fork() -> None:
    while _held_at_fork:
        _held_at_fork.pop().release()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork, after_in_child=_after_fork)


class SQLiteStore(Store):
    """One SQLite file shared by threads and processes.

    Each thread gets its own connection (sqlite3 connections are not shared across
    threads or a fork); a child process opens fresh ones.
    """

    schemes = ("sqlite",)

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_timeout: float = 30.0,
        prefix: str = "gso_analytics_",
    ) -> None:
        if not prefix.isidentifier():
            raise ConfigurationError(f"table prefix {prefix!r} is not an SQL identifier")
        self.path = str(Path(path))
        self.busy_timeout = busy_timeout
        self.prefix = prefix
        self._local = threading.local()
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()  # held by a transaction; a fork waits for it
        self._connections: list[tuple[int, sqlite3.Connection]] = []
        self._closed = False
        _stores.add(self)
        conn = self._conn()
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(SCHEMA.format(p=prefix))
            _upgrade(conn, prefix)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot prepare SQLite database {self.path}: {exc}") from exc

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

    def _conn(self) -> sqlite3.Connection:
        pid = os.getpid()
        cached = getattr(self._local, "conn", None)
        if cached is not None and cached[0] == pid:
            return cached[1]
        if self._closed:
            raise StoreError(f"SQLite store {self.path} is closed")
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=self.busy_timeout,
                isolation_level=None,
                check_same_thread=False,
            )
            conn.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open SQLite database {self.path}: {exc}") from exc
        self._local.conn = (pid, conn)
        with self._lock:
            # Connections inherited over a fork belong to the parent: forget, never close.
            self._connections = [(p, c) for p, c in self._connections if p == pid]
            self._connections.append((pid, conn))
        return conn

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        conn = self._conn()
        with self._write_lock:
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
                    raise StoreError(f"SQLite {self.path}: {exc}") from exc
                raise

    def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        try:
            return self._conn().execute(sql.format(p=self.prefix), params).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite {self.path}: {exc}") from exc

    def _days(self, days: list[str]) -> list[DailyStats]:
        if not days:
            return []
        marks = ",".join("?" * len(days))
        rows = self._read(
            f"SELECT day, month, field, value FROM {{p}}daily WHERE day IN ({marks})", tuple(days)
        )
        found: dict[str, DailyStats] = {}
        for day, month, field, value in rows:
            found.setdefault(day, DailyStats(day, month, {}))
            found[day].counters[field] = value  # type: ignore[index]
        return [found[day] for day in days if day in found]

    def get_day(self, day: str) -> DailyStats | None:
        found = self._days([day])
        return found[0] if found else None

    def recent_days(self, limit: int = 30) -> list[DailyStats]:
        rows = self._read("SELECT DISTINCT day FROM {p}daily ORDER BY day DESC LIMIT ?", (limit,))
        return self._days([row[0] for row in rows])

    def get_month(self, month: str) -> MonthStats:
        figures = dict(self._read("SELECT field, value FROM {p}monthly WHERE month = ?", (month,)))
        return MonthStats.from_fields(month, figures)

    def count_open_sessions(self) -> int:
        return self._read("SELECT COUNT(*) FROM {p}sessions WHERE logoutAt IS NULL")[0][0]

    def get_sessions(self, user_id: str) -> list[SessionRecord]:
        return self._sessions("userId = ? ORDER BY loginAt, rowid", (user_id,))

    def _sessions(self, where: str, params: tuple[Any, ...]) -> list[SessionRecord]:
        rows = self._read(
            "SELECT id, userId, username, loginAt, logoutAt, durationS, day, month, timedOut"
            f" FROM {{p}}sessions WHERE {where}",
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
            )
            for sid, uid, name, login, logout, duration, day, month, timed_out in rows
        ]

    def get_events(self, user_id: str | None = None, limit: int = 1000) -> list[EventRecord]:
        where, params = ("WHERE userId = ?", (user_id,)) if user_id is not None else ("", ())
        rows = self._read(
            f"SELECT ts, userId, event, data, day FROM {{p}}events {where}"
            " ORDER BY id DESC LIMIT ?",
            (*params, limit),
        )
        return [_event_record(row) for row in reversed(rows)]

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
        pid = os.getpid()
        with self._lock:
            self._closed = True
            mine = [c for p, c in self._connections if p == pid]
            self._connections = []
        for conn in mine:
            conn.close()
