"""``python -m bench.prune [--events N]``: a writer's longest flush while expired events
are pruned from SQLite, chunked (the prune job) against one delete transaction (what
it did before), side by side on copies of one file.

Why: the event-TTL delete used to run as one write transaction, so with a million
expired events every writer (any process) waited for all of it. The writer here is
another process flushing a small batch every 20 ms through its own store; the figure
is its longest flush while each prune runs. Not a test: timings on shared machines are
only compared within one run.
"""

from __future__ import annotations

import argparse
import multiprocessing
import shutil
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from gso_analytics.backends.sqlite import SQLiteStore

from gso_analytics.clock import iso_ms, to_ms
from gso_analytics.model import EventRecord, FlushBatch

NOW = datetime(2025, 3, 14, 12, tzinfo=UTC)
TTL = timedelta(days=7)
SEED_BATCH = 100_000
FLUSH_EVERY_S = 0.02


def seed(path: Path, events: int) -> None:
    """``events`` events a day older than the TTL, in batches of :data:`SEED_BATCH`."""
    old = to_ms(NOW - TTL - timedelta(days=1))
    with SQLiteStore(path) as store:
        for start in range(0, events, SEED_BATCH):
            count = min(SEED_BATCH, events - start)
            store.apply(
                FlushBatch(
                    created_at=NOW,
                    events=[
                        EventRecord(old + i, f"u{i % 1000}", "old", "{}", "2025-03-06").row
                        for i in range(start, start + count)
                    ],
                )
            )


def writer(path: str, stop: multiprocessing.synchronize.Event, out: multiprocessing.Queue) -> None:
    """Flush a small batch every :data:`FLUSH_EVERY_S` until ``stop``; send the latencies."""
    latencies = []
    with SQLiteStore(path) as store:
        while not stop.is_set():
            batch = FlushBatch(
                created_at=NOW,
                counters={"2025-03-14": {"dungeonsRun": 1}},
                months={"2025-03-14": "2025-03"},
                events=[EventRecord(to_ms(NOW), "w", "dungeon.complete", "{}", "2025-03-14").row],
            )
            started = time.perf_counter()
            store.apply(batch)
            latencies.append(time.perf_counter() - started)
            time.sleep(FLUSH_EVERY_S)
    out.put(latencies)


def one_transaction(store: SQLiteStore) -> None:
    """The delete as it was: every expired event in one write transaction."""
    last = iso_ms(NOW - TTL)
    with store.transaction() as tx:
        tx.conn.execute(f"DELETE FROM {store.prefix}events WHERE ts <= ?", (last,))  # type: ignore[attr-defined]


def measure(path: Path, how: str) -> tuple[float, float, int]:
    """(prune seconds, longest concurrent flush in seconds, flushes during the prune)."""
    context = multiprocessing.get_context("spawn")
    stop, out = context.Event(), context.Queue()
    process = context.Process(target=writer, args=(str(path), stop, out))
    process.start()
    time.sleep(1.0)  # the writer is up and flushing
    with SQLiteStore(path) as store:
        started = time.perf_counter()
        if how == "chunked":
            store.prune(NOW, TTL, timedelta(hours=12))
        else:
            one_transaction(store)
        elapsed = time.perf_counter() - started
    stop.set()
    latencies = out.get(timeout=60)
    process.join(60)
    return elapsed, max(latencies), len(latencies)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        seeded = Path(tmp) / "seeded.db"
        started = time.perf_counter()
        seed(seeded, args.events)
        print(f"seeded {args.events:,} expired events in {time.perf_counter() - started:.1f}s")
        for how in ("one transaction", "chunked"):
            copy = Path(tmp) / f"{how.replace(' ', '_')}.db"
            shutil.copy(seeded, copy)
            elapsed, longest, flushes = measure(copy, how)
            print(
                f"{how:>16}: prune {elapsed:6.2f}s;"
                f" longest concurrent flush {longest * 1000:8.1f} ms"
                f" ({flushes} flushes by the writer process in all)"
            )


if __name__ == "__main__":
    main()
