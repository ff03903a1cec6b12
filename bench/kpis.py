"""KPI query cost against the length of the history: each ``KPIs`` query for the last
30 days, on a SQLite store holding only the 60 days those queries may read (the range,
and the 30 days before it that ``mau30`` reaches back to) and on one holding the same
daily activity over a whole year (1M sessions), read alternately in the same run.

Why these two stores, and not 1k sessions against 1M: a KPI query reads every user
active in its range (and, for ``mau30``, the 29 days before), so its cost follows the
activity *in the range*; comparing a quiet store with a busy one would measure the
traffic, not the history. Here both stores have the same sessions per day, so the
ratio isolates what must not matter: how much history lies before the range. A ratio
near 1 means no query scans the history (each is an index range on the day key).

The stores come from :func:`bench.reads.seed` (sessions, (day, user) and (month, user)
records, daily and monthly counters), plus what the KPIs read and that seed does not
write, derived from its rows in SQL: each user's first-seen day, revenue for about
1 user in 50 on each of their active days, first payment days, and a funnel's events
for the last 7 days (the event stream keeps ``event_ttl``, 7 days by default).
"""

from __future__ import annotations

import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from gso_analytics.backends.sqlite import SQLiteStore

from bench import reads
from gso_analytics.kpis import KPIs

P = reads.PREFIX
RANGE_DAYS = 30
WINDOW_DAYS = 2 * RANGE_DAYS  # the range and the days mau30 reads before it
EVENT_DAYS = 7  # the default event_ttl: all the events a store keeps
FUNNEL = ["tutorial.start", "tutorial.done"]
PAYMENT_CENTS = 499


def add_kpi_facts(path: Path) -> dict[str, int]:
    """Write the KPI tables (first_seen, user_revenue, first_payments) and funnel events
    consistently with the rows :func:`bench.reads.seed` left in ``path``."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN")
        conn.execute(
            f"INSERT INTO {P}first_seen (userId, day)"
            f" SELECT userId, min(day) FROM {P}day_users GROUP BY userId"
        )
        conn.execute(  # ~2% of each day's players pay once that day
            f"INSERT INTO {P}user_revenue (day, userId, revenueCents)"
            f" SELECT day, userId, {PAYMENT_CENTS} FROM {P}day_users"
            " WHERE (unicode(substr(userId, -1)) + unicode(substr(userId, -2, 1)) * 10"
            " + CAST(substr(day, 9, 2) AS INTEGER)) % 50 = 0"
        )
        conn.execute(
            f"INSERT INTO {P}first_payments (userId, day)"
            f" SELECT userId, min(day) FROM {P}user_revenue GROUP BY userId"
        )
        first_event_day = (reads.LAST_DAY - timedelta(days=EVENT_DAYS - 1)).isoformat()
        for offset, name in enumerate(FUNNEL):  # every player starts, a third finish
            keep = "1" if offset == 0 else "abs(unicode(substr(userId, -1))) % 3 = 0"
            conn.execute(
                f"INSERT INTO {P}events (ts, userId, event, data, day)"
                f" SELECT day || 'T12:0{offset}:00.000Z', userId, ?, '{{}}', day"
                f" FROM {P}day_users WHERE day >= ? AND {keep}",
                (name, first_event_day),
            )
        conn.execute("COMMIT")
        conn.execute("ANALYZE")
        return {
            table: conn.execute(f"SELECT count(*) FROM {P}{table}").fetchone()[0]
            for table in ("first_seen", "user_revenue", "events")
        }
    finally:
        conn.close()


def _queries(start: str, end: str) -> dict[str, Callable[[KPIs], Any]]:
    return {
        "retention()": lambda k: k.retention(start, end),
        "active_users()": lambda k: k.active_users(start, end),
        "revenue()": lambda k: k.revenue(start, end),
        "sessions()": lambda k: k.sessions(start, end),
        "economy()": lambda k: k.economy(start, end),
        "funnel() (7 days of events)": lambda k: k.funnel(FUNNEL, start=start, end=end),
    }


def run(large: int = 1_000_000, rounds: int = 15) -> dict[str, Any]:
    """Seed both stores, then time each KPI query on both, alternating call by call."""
    year = 365
    per_day = large // year
    small = per_day * WINDOW_DAYS  # the same days as the large store's last 60
    sizes = {"60 days": (small, WINDOW_DAYS), "a year": (per_day * year, year)}
    end = reads.LAST_DAY.isoformat()
    start = (reads.LAST_DAY - timedelta(days=RANGE_DAYS - 1)).isoformat()
    queries = _queries(start, end)
    with tempfile.TemporaryDirectory(prefix="bench-kpis-") as tmp:
        history: dict[str, dict[str, Any]] = {}
        stores: dict[str, SQLiteStore] = {}
        for key, (sessions, days) in sizes.items():
            path = Path(tmp) / f"{key.replace(' ', '-')}.db"
            history[key] = reads.seed(path, sessions, days, users=100_000)
            history[key].update(add_kpi_facts(path))
            stores[key] = SQLiteStore(path)
        samples: dict[tuple[str, str], list[int]] = {(q, k): [] for q in queries for k in sizes}
        answers: dict[tuple[str, str], Any] = {}
        try:
            kpis = {key: KPIs(store, clock=reads._fixed_clock) for key, store in stores.items()}
            clock = time.perf_counter_ns
            for index in range(rounds + 1):  # round 0 warms the caches, not timed
                order = list(sizes) if index % 2 == 0 else list(reversed(sizes))
                for name, query in queries.items():
                    for key in order:
                        began = clock()
                        answer = query(kpis[key])
                        elapsed = clock() - began
                        if index:
                            samples[(name, key)].append(elapsed)
                        answers[(name, key)] = answer
        finally:
            for store in stores.values():
                store.close()
    _check(answers, list(sizes))
    rows = []
    for name in queries:
        small_ms = statistics.median(samples[(name, "60 days")]) / 1e6
        large_ms = statistics.median(samples[(name, "a year")]) / 1e6
        rows.append(
            {
                "query (last 30 days)": name,
                f"{small:,}_sessions_ms": round(small_ms, 2),
                f"{per_day * year:,}_sessions_ms": round(large_ms, 2),
                "ratio_year_range": round(large_ms / small_ms, 2),
            }
        )
    return {"rows": rows, "history": history, "per_day": per_day}


def _check(answers: dict[tuple[str, str], Any], keys: list[str]) -> None:
    """The two stores share the range's daily activity, so the per-day figures that do
    not depend on earlier history must agree; a seed that reads wrong is no benchmark."""
    small, large = keys
    for name in ("sessions()", "economy()"):
        if answers[(name, small)] != answers[(name, large)]:
            raise RuntimeError(f"{name} differs between the seeded stores")
    dau = [row.dau for row in answers[("active_users()", large)]]
    if not all(dau):
        raise RuntimeError(f"the seeded store has days without players: {dau}")
