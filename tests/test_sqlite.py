"""What only the SQLite store has: files written by an earlier version keep working.

Why: a game's SQLite file outlives library upgrades. Opening it must bring it to the
new schema (sessions from login and logout marks: ``origin``/``seq`` columns and a
``logouts`` table, which the marks of the old sessions and pending logouts move to)
without losing a row, and without the write lock when there is nothing to do.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from gso_analytics.backends.sqlite import SQLiteStore

from gso_analytics import Analytics, FlushBatch
from gso_analytics.counters import MAX_COUNTER
from gso_analytics.model import LOGOUT_AT, USERNAME, StoredSession

if TYPE_CHECKING:
    from conftest import AnalyticsFactory, FakeClock

PREFIX = "gso_analytics_"
#: The session tables of gso-analytics 0.1 as of 2026-11-25 (pairing in arrival order).
OLD_SCHEMA = """
CREATE TABLE {p}sessions (
    id TEXT PRIMARY KEY, userId TEXT NOT NULL, username TEXT,
    loginAt TEXT NOT NULL, logoutAt TEXT, durationS INTEGER NOT NULL DEFAULT 0,
    day TEXT NOT NULL, month TEXT NOT NULL, timedOut INTEGER NOT NULL DEFAULT 0,
    reloginBy TEXT);
CREATE INDEX {p}sessions_user ON {p}sessions (userId, loginAt);
CREATE INDEX {p}sessions_open ON {p}sessions (loginAt) WHERE logoutAt IS NULL;
CREATE INDEX {p}sessions_relogin ON {p}sessions (userId, logoutAt)
    WHERE reloginBy IS NOT NULL;
CREATE TABLE {p}pending_logouts (
    userId TEXT NOT NULL, logoutAt TEXT NOT NULL, origin TEXT NOT NULL);
"""
DAY = "'2026-01-30', '2026-01'"
#: The session tables as written before origins were numbered: each session and logout
#: row kept its process's origin, logouts were keyed by id with two indexes, and open
#: sessions had an index of their own.
PREVIOUS_SCHEMA = """
CREATE TABLE {p}sessions (
    id TEXT PRIMARY KEY, userId TEXT NOT NULL, username TEXT,
    loginAt TEXT NOT NULL, logoutAt TEXT, durationS INTEGER NOT NULL DEFAULT 0,
    day TEXT NOT NULL, month TEXT NOT NULL, timedOut INTEGER NOT NULL DEFAULT 0,
    origin TEXT NOT NULL DEFAULT '', seq INTEGER NOT NULL DEFAULT 0,
    lastMs INTEGER NOT NULL, frozen INTEGER NOT NULL DEFAULT 0);
CREATE INDEX {p}sessions_day ON {p}sessions (day);
CREATE INDEX {p}sessions_last ON {p}sessions (userId, lastMs);
CREATE INDEX {p}sessions_idle ON {p}sessions (lastMs) WHERE logoutAt IS NULL;
CREATE INDEX {p}sessions_open_user ON {p}sessions (userId) WHERE logoutAt IS NULL;
CREATE TABLE {p}logouts (
    id TEXT PRIMARY KEY, userId TEXT NOT NULL, atMs INTEGER NOT NULL, origin TEXT NOT NULL,
    seq INTEGER NOT NULL) WITHOUT ROWID;
CREATE INDEX {p}logouts_user ON {p}logouts (userId, atMs);
CREATE INDEX {p}logouts_at ON {p}logouts (atMs);
"""


def previous_file(path: Path) -> sqlite3.Connection:
    """A file with the session tables of :data:`PREVIOUS_SCHEMA` (the others as
    today's), open for the caller to fill and close."""
    SQLiteStore(path).close()
    conn = sqlite3.connect(path)
    for table in ("sessions", "logouts", "origins"):
        conn.execute(f"DROP TABLE {PREFIX}{table}")
    conn.executescript(PREVIOUS_SCHEMA.format(p=PREFIX))
    return conn


def old_file(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.executescript(OLD_SCHEMA.format(p=PREFIX))
    columns = "(id, userId, loginAt, logoutAt, durationS, day, month, timedOut, reloginBy)"
    for row in (
        # closed by a logout at 09:01; ended by the same process's second login; timed out
        f"('old', 'u1', '2026-01-30T09:00:00.000Z', '2026-01-30T09:01:00.000Z', 60, {DAY}, 0,"
        " NULL)",
        f"('relogin', 'u4', '2026-01-30T08:00:00.000Z', '2026-01-30T08:05:00.000Z', 300, {DAY},"
        " 0, 'proc-a')",
        f"('stale', 'u5', '2026-01-29T08:00:00.000Z', '2026-01-29T20:00:00.000Z', 0, {DAY}, 1,"
        " NULL)",
    ):
        conn.execute(f"INSERT INTO {PREFIX}sessions {columns} VALUES {row}")
    conn.execute(
        f"INSERT INTO {PREFIX}pending_logouts VALUES ('u3', '2026-01-30T10:00:00.000Z', 'p')"
    )
    conn.commit()
    conn.close()


def test_an_old_file_is_upgraded_to_marks_and_keeps_its_sessions(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old_file(path)
    with SQLiteStore(path) as store:
        (session,) = store.get_sessions("u1")
        assert (session.session_id, session.duration_s) == ("old", 60)
    conn = sqlite3.connect(path)
    columns = [row[1] for row in conn.execute(f"PRAGMA table_info({PREFIX}sessions)")]
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    conn.close()
    assert "reloginBy" not in columns and {"originId", "seq"} <= set(columns)
    assert f"{PREFIX}pending_logouts" not in tables
    assert f"{PREFIX}sessions_relogin" not in tables
    # The logout that closed 'old' and the waiting one; not the second login's end
    # (that login is the next mark) nor the timeout.
    with SQLiteStore(path) as store:
        logouts = [
            m[:2]
            for u in ("u1", "u3", "u4", "u5")
            for m in store.get_logouts(u)  # id, user
        ]
    assert logouts == [("old-logout", "u1"), ("pending-1", "u3")]
    SQLiteStore(path).close()  # a second open finds nothing to do


def test_late_marks_pair_with_the_upgraded_ones(tmp_path: Path) -> None:
    """A login that arrives after the upgrade inside an old closed session belongs to
    it (the session is kept as it was: 60 s); one before an old waiting logout is
    ended by it."""
    path = tmp_path / "old.db"
    old_file(path)
    now = [datetime(2026, 1, 30, 9, 0, 30, tzinfo=UTC)]
    analytics = Analytics(SQLiteStore(path), flush_interval=3600, clock=lambda: now[0])
    try:
        analytics.on_login("u1")
        now[0] = datetime(2026, 1, 30, 9, 59, tzinfo=UTC)
        analytics.on_login("u3")
        analytics.flush()
        assert [s.duration_s for s in analytics.store.get_sessions("u1")] == [60]
        assert [s.duration_s for s in analytics.store.get_sessions("u3")] == [60]
        assert analytics.store.count_open_sessions() == 0
    finally:
        analytics.stop()
        analytics.store.close()


def test_a_0_2_file_keeps_its_sessions_and_an_open_one_goes_on(tmp_path: Path) -> None:
    """A file of 0.2 (sessions without a last mark, no activity table): a session it
    closed is kept as it was, a mark inside it belongs to it and the next one after it
    starts a new session; a session it left open goes on under the activity rules."""
    path = tmp_path / "v02.db"
    conn = previous_file(path)
    for index in ("sessions_last", "sessions_idle", "sessions_open_user"):
        conn.execute(f"DROP INDEX {PREFIX}{index}")
    for column in ("lastMs", "frozen"):
        conn.execute(f"ALTER TABLE {PREFIX}sessions DROP COLUMN {column}")
    conn.execute(f"DROP TABLE {PREFIX}activity")
    columns = "(id, userId, loginAt, logoutAt, durationS, day, month, timedOut, origin, seq)"
    for row in (
        f"('closed', 'u1', '2026-01-30T09:00:00.000Z', '2026-01-30T09:40:00.000Z', 2400, {DAY},"
        " 0, 'o', 1)",
        f"('open', 'u2', '2026-01-30T09:30:00.000Z', NULL, 0, {DAY}, 0, 'o', 2)",
    ):
        conn.execute(f"INSERT INTO {PREFIX}sessions {columns} VALUES {row}")
    conn.commit()
    conn.close()

    now = [datetime(2026, 1, 30, 9, 20, tzinfo=UTC)]
    analytics = Analytics(SQLiteStore(path), flush_interval=3600, clock=lambda: now[0])
    try:
        analytics.track("dungeon.complete", "u1")  # inside the closed session
        now[0] = datetime(2026, 1, 30, 9, 45, tzinfo=UTC)
        analytics.track("dungeon.complete", "u1")  # after it: a new session
        analytics.track("dungeon.complete", "u2")  # 15 minutes after the open one's login
        analytics.flush()
        u1 = analytics.store.get_sessions("u1")
        assert (u1[0].session_id, u1[0].duration_s) == ("closed", 2400)
        assert [s.duration_s for s in u1] == [2400, 0]
        (u2,) = analytics.store.get_sessions("u2")
        assert (u2.session_id, u2.duration_s, u2.logout_at) == ("open", 900, None)
    finally:
        analytics.stop()
        analytics.store.close()


def test_a_file_whose_rows_kept_their_origin_numbers_it_once(tmp_path: Path) -> None:
    """A file written before origins were numbered: its sessions and logout marks read
    back as they were (ids, origins, times), each origin is stored once, the indexes
    it no longer needs are gone, and new marks walk with the moved ones: a login inside
    a session its logout closed changes nothing (the logout is found), a logout ends
    an open session."""
    path = tmp_path / "previous.db"
    conn = previous_file(path)
    process = "5f0c" * 8  # a process's origin: 32 hex digits
    at = 1769763600000  # 2026-01-30T09:00:00Z
    for row in (
        (f"'s1', 'u1', 'ann', '2026-01-30T09:00:00.000Z', NULL, 600, {DAY}, 0, '{process}',"
         f" 1, {at + 600_000}, 0"),
        (f"'s2', 'u2', NULL, '2026-01-30T09:00:00.000Z', '2026-01-30T09:05:00.000Z', 300, {DAY},"
         f" 0, '{process}', 2, {at}, 0"),
        (f"'s3', 'u3', NULL, '2026-01-30T08:00:00.000Z', '2026-01-30T08:00:00.000Z', 0, {DAY},"
         f" 1, '', 0, {at - 3_600_000}, 0"),
    ):  # fmt: skip
        conn.execute(f"INSERT INTO {PREFIX}sessions VALUES ({row})")
    conn.execute(
        f"INSERT INTO {PREFIX}logouts VALUES (?, 'u2', ?, ?, 3)",
        (f"{process}-3", at + 300_000, process),
    )
    conn.execute(
        f"INSERT INTO {PREFIX}daily VALUES ('2026-01-30', '2026-01', 'sessionCount', 3),"
        " ('2026-01-30', '2026-01', 'totalSessionS', 900)"
    )
    conn.commit()
    conn.close()

    with SQLiteStore(path) as store:
        (s1,) = store.get_sessions("u1")
        assert (s1.session_id, s1.username, s1.duration_s, s1.logout_at) == ("s1", "ann", 600, None)
        (logout,) = store.get_logouts("u2")
        assert (logout[0], logout[2], logout[3], logout[4]) == (  # id, at, origin, seq
            f"{process}-3",
            at + 300_000,
            process,
            3,
        )
        assert [s.session_id for s in store.get_sessions("u3")] == ["s3"]
    conn = sqlite3.connect(path)
    columns = {row[1] for row in conn.execute(f"PRAGMA table_info({PREFIX}sessions)")}
    names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    origins = sorted(row[0] for row in conn.execute(f"SELECT origin FROM {PREFIX}origins"))
    (check,) = conn.execute("PRAGMA integrity_check").fetchone()
    conn.close()
    assert "origin" not in columns and "originId" in columns
    assert origins == ["", process]
    assert not {f"{PREFIX}sessions_open_user", f"{PREFIX}logouts_user"} & names
    assert f"{PREFIX}logouts_at" in names and check == "ok"

    now = [datetime(2026, 1, 30, 9, 4, tzinfo=UTC)]
    analytics = Analytics(SQLiteStore(path), flush_interval=3600, clock=lambda: now[0])
    try:
        analytics.on_login("u2")  # inside s2, before its moved logout: s2 stays 300 s
        now[0] = datetime(2026, 1, 30, 9, 12, tzinfo=UTC)
        analytics.on_logout("u1")  # ends s1 at 09:12
        analytics.flush()
        store = analytics.store
        assert [(s.session_id, s.duration_s) for s in store.get_sessions("u2")] == [("s2", 300)]
        (s1,) = store.get_sessions("u1")
        assert (s1.duration_s, s1.logout_at) == (720, now[0])
        day = store.get_day("2026-01-30")
        assert day is not None and (day["sessionCount"], day["totalSessionS"]) == (3, 1020)
        assert store.count_open_sessions() == 0
    finally:
        analytics.stop()
        analytics.store.close()
    SQLiteStore(path).close()  # a second open finds nothing to do


def test_opening_an_up_to_date_file_needs_no_write_lock(tmp_path: Path) -> None:
    path = tmp_path / "busy.db"
    SQLiteStore(path).close()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        SQLiteStore(path, busy_timeout=0.1).close()
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_registrations_by_day_keep_each_players_earliest(tmp_path: Path) -> None:
    """A file of 0.2 kept a registration per (day, player): opened, it keeps one per
    player, their earliest day, and the daily ``newUsers`` already counted stay; a
    registration on an earlier day then moves the player there."""
    path = tmp_path / "registrations.db"
    conn = sqlite3.connect(path)
    conn.execute(
        f"CREATE TABLE {PREFIX}new_users (day TEXT NOT NULL, userId TEXT NOT NULL,"
        " PRIMARY KEY (day, userId)) WITHOUT ROWID"
    )
    conn.executemany(
        f"INSERT INTO {PREFIX}new_users VALUES (?, ?)",
        [("2026-01-30", "u1"), ("2026-01-28", "u1"), ("2026-01-30", "u2")],
    )
    conn.execute(
        f"CREATE TABLE {PREFIX}daily (day TEXT NOT NULL, month TEXT NOT NULL,"
        " field TEXT NOT NULL, value NOT NULL, PRIMARY KEY (day, field)) WITHOUT ROWID"
    )
    conn.executemany(
        f"INSERT INTO {PREFIX}daily VALUES (?, '2026-01', 'newUsers', ?)",
        [("2026-01-28", 1), ("2026-01-30", 2)],
    )
    conn.commit()
    conn.close()
    with SQLiteStore(path) as store:
        assert store.export_user("u1")["registeredOn"] == "2026-01-28"
        assert store.export_user("u2")["registeredOn"] == "2026-01-30"
        assert store.get_day("2026-01-30")["newUsers"] == 2  # as counted before
        store.apply(
            FlushBatch(
                created_at=datetime(2026, 1, 31, tzinfo=UTC),
                months={"2026-01-27": "2026-01"},
                new_users={"2026-01-27": {"u2"}},
            )
        )
        assert store.get_day("2026-01-27")["newUsers"] == 1
        assert store.get_day("2026-01-30")["newUsers"] == 1
    conn = sqlite3.connect(path)
    key = [row[1] for row in conn.execute(f"PRAGMA table_info({PREFIX}new_users)") if row[5]]
    conn.close()
    assert key == ["userId"]
    SQLiteStore(path).close()  # a second open finds nothing to do


def test_a_real_counter_saturates_on_sqlite(
    tmp_path: Path, make_analytics: AnalyticsFactory, clock: FakeClock
) -> None:
    """Real amounts, no bound raised: 1,100 batches of one call at 2**53 each take a
    day's counter, its total and the player's revenue of the day past 2**63 - 1, where
    SQLite's ``value + excluded.value`` silently became a REAL (and a float no longer
    counts to the unit). They stop at MAX_COUNTER as INTEGERs, and a last batch's honest
    payment is stored exactly beside them."""
    path = tmp_path / "game.db"
    analytics = make_analytics(f"sqlite:///{path}", forwarders=[])
    for _ in range(1100):
        analytics.track("credits.earn", "whale", {"amount": 2**53})
        analytics.track("stripe.payment", "whale", {"amountCents": 2**53})
        analytics.flush()
    analytics.track("stripe.payment", "honest", {"amountCents": 499})
    analytics.flush()
    assert 1100 * 2**53 > 2**63 - 1
    conn = sqlite3.connect(path)
    stored = conn.execute(
        f"SELECT field, value, typeof(value) FROM {PREFIX}daily"
        " WHERE field IN ('creditsEarned', 'stripeRevenue') ORDER BY field"
    ).fetchall()
    assert stored == [
        ("creditsEarned", MAX_COUNTER, "integer"),
        ("stripeRevenue", MAX_COUNTER, "integer"),
    ]
    totals = conn.execute(
        f"SELECT field, value, typeof(value) FROM {PREFIX}totals"
        " WHERE field IN ('creditsEarned', 'stripeRevenue') ORDER BY field"
    ).fetchall()
    assert totals == stored
    revenue = conn.execute(
        f"SELECT userId, revenueCents, typeof(revenueCents) FROM {PREFIX}user_revenue"
        " ORDER BY userId"
    ).fetchall()
    assert revenue == [("honest", 499, "integer"), ("whale", MAX_COUNTER, "integer")]
    conn.close()
    stats = analytics.stats()
    assert (stats["flushed"], stats["flush_failures"], stats["quarantined"]) == (2201, 0, 0)
    # Both totals, from the 256th batch (which reaches 2**61 exactly) on, and the last
    # batch's revenue total.
    assert stats["counters_saturated"] == 2 * (1100 - 255) + 1


@pytest.mark.parametrize("n", [1, 31, 32, 33, 65])
def test_rows_written_many_a_statement_read_back_as_given(tmp_path: Path, n: int) -> None:
    """Sessions, activity runs and logout marks go 32 rows a statement (the rest one by
    one) with NULLs bound as 0 and marks as a bytearray: each reads back as given, NULLs
    included (no username, no logout, no logins, a logout id of the usual form), in the
    SQL NULL the queries test, and a session saved twice in one call keeps its second
    state, as one row after another would."""
    origin = "a" * 32
    sessions: list[StoredSession] = [
        (
            *(f"s{i}", f"u{i}", 1_000 * i, origin if i % 2 else "", i % 2 * i),
            None if i % 3 else f"name{i}",
            *("2026-03-02", "2026-03"),
            *((None, 0, False) if i % 2 else (1_000 * i + 700, 1, i % 4 == 0)),
            1_000 * i + 600,
        )
        for i in range(n)
    ]
    again = (*sessions[0][:LOGOUT_AT], 900, 1, True, 600)
    runs = [
        (f"u{i}", 1_000 * i, 1_000 * i + 600, (1_000 * i, 1_000 * i + 600), ())
        if i % 2
        else (f"u{i}", 1_000 * i, 1_000 * i, (1_000 * i,), ((1_000 * i, origin, i),))
        for i in range(n)
    ]
    logouts = [
        (f"{origin}-{i}" if i % 2 else f"moved-{i}", f"u{i}", 1_000 * i + 700, origin, i)
        for i in range(n)
    ]
    store = SQLiteStore(tmp_path / "rows.db")
    with store.transaction() as tx:
        tx.save_sessions([*sessions, again])
        tx.insert_activity(runs)
        tx.insert_logouts(logouts)
    users = {f"u{i}" for i in range(n)}
    with store.transaction() as tx:
        assert sorted(tx.sessions_since(users, 0)) == sorted([again, *sessions[1:]])
        assert [r for i in range(n) for r in tx.activity_runs(f"u{i}", 0, 10**9)] == runs
        assert sorted(tx.logouts_since(users, 0)) == sorted(logouts)
    assert store.count_open_sessions() == n // 2
    conn = sqlite3.connect(tmp_path / "rows.db")
    nulls = conn.execute(
        f"SELECT (SELECT count(*) FROM {PREFIX}sessions WHERE username IS NULL),"
        f" (SELECT count(*) FROM {PREFIX}activity WHERE logins IS NULL),"
        f" (SELECT count(*) FROM {PREFIX}logouts WHERE id IS NULL)"
    ).fetchone()
    conn.close()
    store.close()
    assert nulls == (sum(1 for s in [again, *sessions[1:]] if s[USERNAME] is None), n // 2, n // 2)
