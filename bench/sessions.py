"""A login-heavy SQLite flush: what computing sessions from marks costs a flush, and
that it does not grow with the players' history.

gso: ``players`` players each log in, play a minute, log out, reconnect ten seconds
later and play another minute (four marks a player, the reconnect case the session
walk exists for), in one batch: ``flush()`` is timed. The same flush is timed on a
store where every player already has ``history`` sessions, days before (seeded through
the public API, flushed day by day). Raw: the session rows and logout rows the flush
stores, inserted with one ``executemany`` each into the library's own tables (created
by the store: same columns, indexes and pragmas), the floor a hand-written logger
could reach without pairing anything.
"""

from __future__ import annotations

import sqlite3
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from gso_analytics import Analytics, open_store

PREFIX = "gso_analytics_"
START = datetime(2026, 3, 2, 12, tzinfo=UTC)


class _Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def _play(analytics: Analytics, clock: _Clock, players: int, at: datetime) -> None:
    """Four marks a player: login, logout a minute later, a reconnect, a logout."""
    for step, seconds in enumerate((0, 60, 70, 130)):
        clock.now = at + timedelta(seconds=seconds)
        for i in range(players):
            (analytics.on_logout if step % 2 else analytics.on_login)(f"p{i}")


def analytics_for(path: Path, clock: _Clock, players: int) -> Analytics:
    """The worker the flush is measured on: flushed by hand only, buffering a day."""
    return Analytics(
        open_store(f"sqlite:///{path}"),
        clock=clock,
        forwarders=[],
        flush_interval=3600,
        max_buffered_events=8 * players + 8,
    )


def _flush_seconds(path: Path, players: int, history: int) -> float:
    first_day = START - timedelta(days=history + 1)
    clock = _Clock(first_day)
    analytics = analytics_for(path, clock, players)
    try:
        for day in range(history):
            _play(analytics, clock, players, first_day + timedelta(days=day))
            analytics.flush()
        _play(analytics, clock, players, START)
        started = time.perf_counter()
        analytics.flush()
        elapsed = time.perf_counter() - started
        _check_sessions(analytics, players)
        return elapsed
    finally:
        analytics.stop()


def _check_sessions(analytics: Analytics, players: int) -> None:
    """Refuse a figure for work not done: two 60 s sessions per player today."""
    day = analytics.store.get_day(START.date().isoformat())
    figures = (day["sessionCount"], day["totalSessionS"]) if day else None
    if figures != (2 * players, 120 * players) or analytics.store.count_open_sessions():
        raise AssertionError(f"gso stored {figures} for {players} players")


def _raw_seconds(path: Path, players: int) -> float:
    """The rows the flush stores (two sessions, two logouts and an activity record a
    player), inserted raw."""
    open_store(f"sqlite:///{path}").close()  # the library's tables, indexes and pragmas
    login = START.isoformat(timespec="milliseconds")
    at = (START - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)
    sessions = [
        (f"s{i}-{k}", f"p{i}", None, login, login, 60, "2026-03-02", "2026-03", 0, 1, k, at, 0)
        for i in range(players)
        for k in (1, 2)
    ]
    activity = [(f"p{i}", at, at + 70_000, bytes(16)) for i in range(players)]
    logouts = [(f"p{i}", at, 1, 4 * i + k) for i in range(players) for k in (1, 2)]
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous=NORMAL")
        started = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            f"INSERT INTO {PREFIX}sessions (id, userId, username, loginAt, logoutAt, durationS,"
            " day, month, timedOut, originId, seq, lastMs, frozen)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            sessions,
        )
        conn.executemany(
            f"INSERT INTO {PREFIX}activity (userId, firstMs, lastMs, marks) VALUES (?,?,?,?)",
            activity,
        )
        conn.executemany(
            f"INSERT INTO {PREFIX}logouts (userId, atMs, originId, seq) VALUES (?,?,?,?)",
            logouts,
        )
        conn.execute("COMMIT")
        return time.perf_counter() - started
    finally:
        conn.close()


def run(players: int = 5_000, history: int = 40, repeats: int = 3) -> list[dict[str, object]]:
    """Best of ``repeats`` for each figure, alternating, each on fresh files."""
    best = {"fresh": float("inf"), "history": float("inf"), "raw": float("inf")}
    with tempfile.TemporaryDirectory(prefix="gso-bench-sessions-") as tmp:
        for r in range(repeats):
            best["fresh"] = min(best["fresh"], _flush_seconds(Path(tmp, f"f{r}.db"), players, 0))
            best["history"] = min(
                best["history"], _flush_seconds(Path(tmp, f"h{r}.db"), players, history)
            )
            best["raw"] = min(best["raw"], _raw_seconds(Path(tmp, f"r{r}.db"), players))
    marks = 4 * players

    def row(name: str, seconds: float, versus: str) -> dict[str, object]:
        return {
            "flush": name,
            "marks": marks,
            "us_per_mark": round(seconds / marks * 1e6, 2),
            "vs": versus,
            "ratio": round(seconds / best[versus], 2) if versus != name else 1.0,
        }

    return [
        row("raw", best["raw"], "raw"),
        row("fresh", best["fresh"], "raw"),
        row("history", best["history"], "fresh"),
    ]
