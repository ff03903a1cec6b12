"""What only the SQLite store has: files written by an earlier version keep working.

Why: a game's SQLite file outlives library upgrades. Opening it must add what the new
version needs (the ``reloginBy`` column of sessions and its index) without losing a
row, and without the write lock when there is nothing to add.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

from gso_analytics.backends.sqlite import SCHEMA, SQLiteStore

from gso_analytics import Analytics

PREFIX = "gso_analytics_"
#: The schema before sessions had ``reloginBy`` (gso-analytics of 2026-11-24).
OLD_SCHEMA = SCHEMA.replace(",\n    reloginBy TEXT", "")


def old_file(path: Path) -> None:
    assert OLD_SCHEMA != SCHEMA
    conn = sqlite3.connect(path)
    conn.executescript(OLD_SCHEMA.format(p=PREFIX))
    conn.execute(
        f"INSERT INTO {PREFIX}sessions (id, userId, loginAt, logoutAt, durationS, day, month)"
        " VALUES ('old', 'u1', '2026-01-30T09:00:00.000Z', '2026-01-30T09:01:00.000Z', 60,"
        " '2026-01-30', '2026-01')"
    )
    conn.commit()
    conn.close()


def test_an_old_file_gets_the_new_column_and_keeps_its_sessions(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old_file(path)
    with SQLiteStore(path) as store:
        (session,) = store.get_sessions("u1")
        assert (session.session_id, session.duration_s) == ("old", 60)
    conn = sqlite3.connect(path)
    columns = [row[1] for row in conn.execute(f"PRAGMA table_info({PREFIX}sessions)")]
    indexes = [row[1] for row in conn.execute(f"PRAGMA index_list({PREFIX}sessions)")]
    conn.close()
    assert columns.count("reloginBy") == 1
    assert f"{PREFIX}sessions_relogin" in indexes
    SQLiteStore(path).close()  # a second open finds nothing to do


def test_an_upgraded_file_corrects_a_second_login_end(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old_file(path)
    now = [datetime(2026, 1, 30, 10, tzinfo=UTC)]
    a = Analytics(SQLiteStore(path), flush_interval=3600, clock=lambda: now[0])
    b = Analytics(SQLiteStore(path), flush_interval=3600, clock=lambda: now[0])
    try:
        a.on_login("u1")
        now[0] += timedelta(seconds=45)
        b.on_logout("u1")
        now[0] += timedelta(seconds=15)
        a.on_login("u1")
        a.flush()
        b.flush()
        assert [s.duration_s for s in a.store.get_sessions("u1")] == [60, 45, 0]
        # 45 s, not A's guess of 60 s (the old row was written by hand, not counted).
        assert a.store.get_day("2026-01-30")["totalSessionS"] == 45
    finally:
        a.stop()
        b.stop()
        a.store.close()
        b.store.close()


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
