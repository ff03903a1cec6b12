"""SQLite persistence, end to end, against a raw ``executemany`` of the same rows.

gso: ``track()`` N events (each with a ``data`` dict) and ``flush()`` them: validation,
aggregation, the batch transaction, counters and the event rows. Raw: the same event
rows built (``data`` JSON-encoded, timestamp formatted) and inserted with one
``executemany`` in one transaction into a table with the same columns and indexes.
Both write to fresh files in the same directory.
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

RAW_SCHEMA = """
PRAGMA journal_mode=WAL;
PRAGMA synchronous=NORMAL;
CREATE TABLE events (id INTEGER PRIMARY KEY, ts TEXT NOT NULL, userId TEXT NOT NULL,
    event TEXT NOT NULL, data TEXT NOT NULL, day TEXT NOT NULL);
CREATE INDEX events_ts ON events (ts);
CREATE INDEX events_user ON events (userId, id);
"""


def _gso(path: Path, n: int) -> float:
    analytics = Analytics(open_store(f"sqlite:///{path}"), max_buffered_events=n + 1)
    start = time.perf_counter()
    for i in range(n):
        analytics.track("credits.earn", f"u{i % 500}", {"amount": i % 100})
    analytics.flush()
    elapsed = time.perf_counter() - start
    analytics.stop()
    return elapsed


def _raw(path: Path, n: int) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(RAW_SCHEMA)
    start = time.perf_counter()
    rows = [
        (
            iso_ms(datetime.now(UTC)),
            f"u{i % 500}",
            "credits.earn",
            json.dumps({"amount": i % 100}),
            "2026-01-01",
        )
        for i in range(n)
    ]
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(
        "INSERT INTO events (ts, userId, event, data, day) VALUES (?, ?, ?, ?, ?)", rows
    )
    conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    conn.close()
    return elapsed


def run(n: int = 100_000, repeats: int = 3) -> list[dict[str, object]]:
    """Best of ``repeats`` for each side, alternating, on fresh files."""
    gso_best = raw_best = float("inf")
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeats):
            gso_best = min(gso_best, _gso(Path(tmp) / f"gso{i}.db", n))
            raw_best = min(raw_best, _raw(Path(tmp) / f"raw{i}.db", n))
    return [
        {"subject": "gso track()+flush() to SQLite", "events_per_s": round(n / gso_best)},
        {"subject": "raw rows + executemany", "events_per_s": round(n / raw_best)},
        {"subject": "gso / raw", "ratio": round(raw_best / gso_best, 2)},
    ]
