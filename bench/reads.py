"""Read cost against the size of the history: ``get_metrics()`` and
``get_last_30_days()`` on a SQLite store holding 1k sessions vs 1M sessions.

The seed's ``getMetrics()`` ran ``distinct()`` over every session of the month and
its reads grew with the history. Here every figure a read returns is maintained at
flush (``dau``/``mau`` counters, the month's timed-session sums), and the open-session
count uses a partial index of open sessions, so a read should cost the same on a
store with a year of history as on a new one.

Both stores are seeded directly (``executemany`` into the ``gso_analytics_`` tables,
the schema of :mod:`gso_analytics.backends.sqlite`, indexes built after the rows), as
flushes would have left them: closed sessions of 10 minutes (two per active user and
day), the (day, user) and (month, user) records, the daily counters and the monthly
figures, consistent with one another, plus the same 50 open sessions in both (today's
players). The small store spans 30 days (so both return 30 days), the large one a year.

Then both are read through ``Analytics`` (clock fixed at noon of the last day, so
"today" exists) alternately, call by call, in the same run; each read includes the
flush of an empty buffer that ``get_metrics()``/``get_last_30_days()`` start with.
"""

from __future__ import annotations

import sqlite3
import statistics
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from gso_analytics.backends.sqlite import SCHEMA, SQLiteStore

from gso_analytics import Analytics
from gso_analytics.integrations import prometheus

PREFIX = "gso_analytics_"
LAST_DAY = date(2026, 11, 25)
SESSION_S = 600
OPEN_SESSIONS = 50


def _day_plan(sessions: int, days: int) -> list[tuple[str, str, int]]:
    """(day, month, sessions that day), oldest first, ending on :data:`LAST_DAY`."""
    per_day, extra = divmod(sessions, days)
    first = LAST_DAY - timedelta(days=days - 1)
    plan = []
    for index in range(days):
        day = first + timedelta(days=index)
        plan.append((day.isoformat(), day.isoformat()[:7], per_day + (index < extra)))
    return plan


def _user(day_index: int, k: int, users: int, per_day: int) -> str:
    # Two sessions per user and day; 60% of a day's players played the day before
    # (the window of ids moves by 40% of a day's players a day).
    shift = max(1, per_day // 5)
    return f"u{(day_index * shift + k // 2) % users:07d}"


def seed(path: Path, sessions: int, days: int, users: int) -> dict[str, object]:
    """Write ``sessions`` sessions of history over ``days`` days into a new store file."""
    started = time.perf_counter()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=OFF")
    conn.execute("PRAGMA synchronous=OFF")
    conn.executescript(SCHEMA.format(p=PREFIX))
    # Build the secondary indexes once, after the rows (faster than row by row); the
    # same SCHEMA recreates them below, so the file ends with the store's exact schema.
    indexes = [
        name
        for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
        )
    ]
    for name in indexes:
        conn.execute(f"DROP INDEX {name}")
    plan = _day_plan(sessions, days)
    conn.execute("BEGIN")

    def session_rows() -> Iterator[tuple[object, ...]]:
        for day_index, (day, month, count) in enumerate(plan):
            step = 72_000 // max(count, 1)  # logins spread over 00:00 to 20:00
            for k in range(count):
                second = k * step
                clock = f"{second // 3600:02d}:{second // 60 % 60:02d}:{second % 60:02d}"
                end = second + SESSION_S
                end_clock = f"{end // 3600:02d}:{end // 60 % 60:02d}:{end % 60:02d}"
                yield (
                    f"s{day_index:05d}{k:08d}",
                    _user(day_index, k, users, count),
                    None,
                    f"{day}T{clock}.000Z",
                    f"{day}T{end_clock}.000Z",
                    SESSION_S,
                    day,
                    month,
                )

    conn.executemany(
        f"INSERT INTO {PREFIX}sessions"
        " (id, userId, username, loginAt, logoutAt, durationS, day, month)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        session_rows(),
    )
    last_day, last_month, _ = plan[-1]
    conn.executemany(
        f"INSERT INTO {PREFIX}sessions (id, userId, loginAt, day, month) VALUES (?, ?, ?, ?, ?)",
        [
            (f"open{k:04d}", f"p{k:04d}", f"{last_day}T21:00:00.000Z", last_day, last_month)
            for k in range(OPEN_SESSIONS)
        ],
    )
    month_users: dict[str, set[str]] = {}
    month_sessions: dict[str, int] = {}
    daily_rows: list[tuple[object, ...]] = []
    day_user_count = 0
    for day_index, (day, month, count) in enumerate(plan):
        users_today = {_user(day_index, k, users, count) for k in range(count)}
        if day == last_day:
            users_today |= {f"p{k:04d}" for k in range(OPEN_SESSIONS)}
        conn.executemany(
            f"INSERT INTO {PREFIX}day_users VALUES (?, ?)", [(day, u) for u in users_today]
        )
        day_user_count += len(users_today)
        month_users.setdefault(month, set()).update(users_today)
        month_sessions[month] = month_sessions.get(month, 0) + count
        logins = count + (OPEN_SESSIONS if day == last_day else 0)
        fields = {
            "dau": len(users_today),
            "sessionCount": logins,
            "totalSessionS": count * SESSION_S,
            "creditsEarned": count * 120,
            "dungeonsRun": count * 3,
            "pvpBattles": count,
        }
        daily_rows += [(day, month, field, value) for field, value in fields.items()]
    conn.executemany(f"INSERT INTO {PREFIX}daily VALUES (?, ?, ?, ?)", daily_rows)
    for month, members in month_users.items():
        conn.executemany(
            f"INSERT INTO {PREFIX}month_users VALUES (?, ?)", [(month, u) for u in members]
        )
        figures = {
            "mau": len(members),
            "timedSessions": month_sessions[month],
            "timedSessionS": month_sessions[month] * SESSION_S,
        }
        conn.executemany(
            f"INSERT INTO {PREFIX}monthly VALUES (?, ?, ?)",
            [(month, field, value) for field, value in figures.items()],
        )
    conn.execute("COMMIT")
    conn.executescript(SCHEMA.format(p=PREFIX))  # the indexes dropped above
    conn.execute("ANALYZE")
    conn.close()
    return {
        "sessions": sessions + OPEN_SESSIONS,
        "days": days,
        "day_user_rows": day_user_count,
        "month_user_rows": sum(len(m) for m in month_users.values()),
        "file_mb": round(path.stat().st_size / 1e6, 1),
        "seed_s": round(time.perf_counter() - started, 1),
    }


def _fixed_clock() -> datetime:
    return datetime(LAST_DAY.year, LAST_DAY.month, LAST_DAY.day, 12, tzinfo=UTC)


def run(large: int = 1_000_000, small: int = 1_000, rounds: int = 300) -> dict[str, object]:
    """Seed both stores, then time each read on both, alternating call by call."""
    with tempfile.TemporaryDirectory(prefix="bench-reads-") as tmp:
        sizes = {"small": (small, 30, 1_000), "large": (large, 365, 100_000)}
        history = {
            key: seed(Path(tmp) / f"{key}.db", sessions, days, users)
            for key, (sessions, days, users) in sizes.items()
        }
        instances = {
            key: Analytics(SQLiteStore(Path(tmp) / f"{key}.db"), clock=_fixed_clock)
            for key in sizes
        }
        try:
            for analytics in instances.values():  # warm-up, and a check of the seed
                metrics = analytics.get_metrics()
                days = analytics.get_last_30_days()
                if metrics.active_sessions != OPEN_SESSIONS or len(days) != 30:
                    raise RuntimeError(f"the seeded store reads wrong: {metrics}, {len(days)}")
            reads = {
                "get_metrics()": lambda a: a.get_metrics(),
                "get_last_30_days()": lambda a: a.get_last_30_days(),
                # What the Prometheus endpoint adds: the totals, every heartbeat, and
                # the rolling MAU30 (30 days of (day, user) records: it grows with
                # the players of the last 30 days, not with the history).
                "Prometheus scrape": lambda a: prometheus.render(
                    prometheus.take_scrape(a, business=True), None
                ),
            }
            samples: dict[tuple[str, str], list[int]] = {
                (name, key): [] for name in reads for key in sizes
            }
            clock = time.perf_counter_ns
            for index in range(rounds):
                order = list(sizes) if index % 2 == 0 else list(reversed(sizes))
                for name, read in reads.items():
                    for key in order:
                        analytics = instances[key]
                        start = clock()
                        read(analytics)
                        samples[(name, key)].append(clock() - start)
        finally:
            for analytics in instances.values():
                analytics.stop()
                analytics.store.close()

    def p99(values: list[int]) -> float:
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]

    rows = []
    for name in reads:
        small_median = statistics.median(samples[(name, "small")])
        large_median = statistics.median(samples[(name, "large")])
        rows.append(
            {
                "read": name,
                f"{small:,}_sessions_median_us": round(small_median / 1000, 1),
                f"{small:,}_p99_us": round(p99(samples[(name, "small")]) / 1000, 1),
                f"{large:,}_sessions_median_us": round(large_median / 1000, 1),
                f"{large:,}_p99_us": round(p99(samples[(name, "large")]) / 1000, 1),
                "ratio_large_small": round(large_median / small_median, 2),
            }
        )
    return {"rows": rows, "history": history}
