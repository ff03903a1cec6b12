"""SQLite persistence, end to end, against a raw ``executemany`` of the same rows.

gso: ``track()`` N events (each with a ``data`` dict) and ``flush()`` them: validation,
aggregation, the batch transaction, counters and the event rows. Raw: the same event
rows built as a hand-written logger would (``data`` through ``json.dumps``, the time
through ``isoformat``) and inserted with one ``executemany`` in one transaction into
the library's own events table (created by the store, so the columns, indexes and
pragmas are the same). A third figure inserts rows built beforehand: what the
``executemany`` alone costs, the floor neither side can go under. All write to fresh
files in the same directory.

gso is measured twice: as a script uses it (no other thread: the flush never pauses,
see :mod:`gso_analytics.pacing`) and with the flush thread started and idle, as every
server worker has it (a thread the flush could pause for, which does not want the GIL).
"""

from __future__ import annotations

import json
import sqlite3
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from gso_analytics import Analytics, open_store
from gso_analytics.clock import iso_ms

PREFIX = "gso_analytics_"
INSERT = f"INSERT INTO {PREFIX}events (ts, userId, event, data, day) VALUES (?, ?, ?, ?, ?)"


def _gso(path: Path, n: int, started: bool = False) -> float:
    analytics = Analytics(
        open_store(f"sqlite:///{path}"), max_buffered_events=n + 1, flush_interval=3600
    )
    if started:
        analytics.start()  # its thread waits an hour: idle while this one flushes
    start = time.perf_counter()
    for i in range(n):
        analytics.track("credits.earn", f"u{i % 500}", {"amount": i % 100})
    analytics.flush()
    elapsed = time.perf_counter() - start
    analytics.stop()
    _check_stored(path, n)
    return elapsed


def _check_stored(path: Path, n: int) -> None:
    """Refuse a figure for work not done: every event stored with its data, counter exact."""
    conn = sqlite3.connect(path)
    try:
        (events, data_sum), (earned,) = (
            conn.execute(
                f"SELECT count(*), sum(json_extract(data, '$.amount')) FROM {PREFIX}events"
            ).fetchone(),
            conn.execute(
                f"SELECT sum(value) FROM {PREFIX}daily WHERE field = 'creditsEarned'"
            ).fetchone(),
        )
    finally:
        conn.close()
    expected = sum(i % 100 for i in range(n))
    if (events, data_sum, earned) != (n, expected, expected):
        raise AssertionError(
            f"gso stored {events} events (amounts {data_sum}, counter {earned});"
            f" expected {n} events and {expected}"
        )


def _rows(n: int) -> list[tuple[str, str, str, str, str]]:
    return [
        (
            iso_ms(datetime.now(UTC)),
            f"u{i % 500}",
            "credits.earn",
            json.dumps({"amount": i % 100}),
            "2026-01-01",
        )
        for i in range(n)
    ]


def _insert(path: Path, n: int, prebuilt: bool) -> float:
    open_store(f"sqlite:///{path}", prefix=PREFIX).close()  # the library's schema
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous=NORMAL")  # as the store sets it (WAL is in the file)
    prebuilt_rows = _rows(n) if prebuilt else None
    start = time.perf_counter()
    rows = prebuilt_rows if prebuilt_rows is not None else _rows(n)
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(INSERT, rows)
    conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    conn.close()
    return elapsed


def run(n: int = 100_000, repeats: int = 3) -> list[dict[str, object]]:
    """Best of ``repeats`` for each subject, alternating, on fresh files."""
    gso_best = started_best = raw_best = insert_best = float("inf")
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeats):
            gso_best = min(gso_best, _gso(Path(tmp) / f"gso{i}.db", n))
            started_best = min(started_best, _gso(Path(tmp) / f"thr{i}.db", n, started=True))
            raw_best = min(raw_best, _insert(Path(tmp) / f"raw{i}.db", n, prebuilt=False))
            insert_best = min(insert_best, _insert(Path(tmp) / f"ins{i}.db", n, prebuilt=True))
    return [
        {"subject": "gso track()+flush() to SQLite", "events_per_s": round(n / gso_best)},
        {
            "subject": "gso, flush thread started (idle)",
            "events_per_s": round(n / started_best),
        },
        {"subject": "raw rows + executemany", "events_per_s": round(n / raw_best)},
        {"subject": "executemany of prebuilt rows", "events_per_s": round(n / insert_best)},
        {"subject": "gso / raw", "ratio": round(raw_best / gso_best, 2)},
        {"subject": "gso, thread started / raw", "ratio": round(raw_best / started_best, 2)},
        {"subject": "gso / executemany alone", "ratio": round(insert_best / gso_best, 2)},
    ]
