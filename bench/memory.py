"""Memory with a stuck store: events keep arriving, nothing can be written, and the
process must not grow past ``max_buffered_events``.

Two stuck stores (each a :class:`Store` wrapper around a memory store):

- ``raises``: every ``apply`` raises :class:`StoreError` at once (a database that
  refuses connections); the flush thread keeps its batches and retries with backoff;
- ``blocks``: ``apply`` never returns (a database that accepts the connection and
  then hangs); the flush thread sits in it holding one batch.

Each runs in a fresh child process (``python -m bench.memory --child MODE --bound N``)
so one's freed memory cannot hide the other's growth. The child tracks ``bound`` x 4
events (each with its own ``data`` dict, 1000 users), and at 0, bound/2, bound,
2 x bound and 4 x bound calls records the resident set size (psutil, or VmRSS from
``/proc/self/status``), what ``stats()`` reports buffered and dropped. The bound holds
when the RSS stops growing once ``bound`` calls are held: the growth from bound to
4 x bound is a small fraction of the growth from 0 to bound, and ``dropped`` counts
the overflow (about 3 x bound calls).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta
from typing import Any

from gso_analytics import Analytics, FlushBatch, Store, StoreError, open_store
from gso_analytics.model import (
    ApplyResult,
    DailyStats,
    EventRecord,
    Heartbeat,
    MonthStats,
    Number,
    SessionRecord,
)
from gso_analytics.store import Transaction


def rss_bytes() -> int:
    """This process's resident set size."""
    try:
        import psutil
    except ImportError:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no psutil and no /proc/self/status: cannot read RSS") from None
    return psutil.Process().memory_info().rss


class StuckStore(Store):
    """A store whose ``apply`` raises (``mode="raises"``) or hangs (``"blocks"``)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.inner = open_store("memory://")
        self.release = threading.Event()
        self.attempts = 0

    @classmethod
    def from_url(cls, url: str, **options: Any) -> StuckStore:
        return cls(options.get("mode", "raises"))

    def apply(self, batch: FlushBatch) -> ApplyResult:
        self.attempts += 1
        if self.mode == "blocks":
            self.release.wait(300)
        raise StoreError(f"bench: the store is stuck ({self.mode})")

    def transaction(self) -> contextlib.AbstractContextManager[Transaction]:
        return self.inner.transaction()

    def get_day(self, day: str) -> DailyStats | None:
        return self.inner.get_day(day)

    def recent_days(self, limit: int = 30) -> list[DailyStats]:
        return self.inner.recent_days(limit)

    def get_month(self, month: str) -> MonthStats:
        return self.inner.get_month(month)

    def count_active_sessions(self, since_ms: int) -> int:
        return self.inner.count_active_sessions(since_ms)

    def get_totals(self) -> dict[str, Number]:
        return self.inner.get_totals()

    def save_heartbeat(self, heartbeat: Heartbeat) -> None:
        raise StoreError(f"bench: the store is stuck ({self.mode})")

    def live_heartbeats(self, now: datetime) -> list[Heartbeat]:
        return self.inner.live_heartbeats(now)

    def forget_heartbeats(self, expired_before: datetime) -> None:
        raise StoreError("bench: the store is stuck")

    def withdraw_heartbeat(self, process: str) -> None:
        raise StoreError("bench: the store is stuck")

    def get_sessions(self, user_id: str) -> list[SessionRecord]:
        return self.inner.get_sessions(user_id)

    def get_events(self, user_id: str | None = None, limit: int = 1000) -> list[EventRecord]:
        return self.inner.get_events(user_id, limit)

    def prune(self, now: datetime, event_ttl: timedelta, idle_timeout: timedelta) -> Any:
        raise StoreError("bench: the store is stuck")


def child(mode: str, bound: int) -> list[dict[str, object]]:
    """Run in the child process: track 4 x ``bound`` events, sample RSS at checkpoints."""
    logging.getLogger("gso_analytics").setLevel(logging.CRITICAL)  # retries and drops
    store = StuckStore(mode)
    analytics = Analytics(store, flush_interval=0.02, max_buffered_events=bound, stop_timeout=0.2)
    analytics.start()
    users = [f"user{i:04d}" for i in range(1000)]
    track = analytics.track
    checkpoints = [0, bound // 2, bound, 2 * bound, 4 * bound]
    samples: list[dict[str, object]] = []
    done = 0
    for checkpoint in checkpoints:
        for i in range(done, checkpoint):
            track("credits.earn", users[i % 1000], {"amount": i % 100, "item": "sword"})
        done = checkpoint
        # Let the flush thread finish the batch it may be building (calls in a batch
        # under construction are in neither the buffer nor the pending batches).
        deadline = time.monotonic() + 5
        settled = 0
        while settled < 2 and time.monotonic() < deadline:
            stats = analytics.stats()
            settled = settled + 1 if stats["buffered"] + stats["dropped"] >= checkpoint else 0
            time.sleep(0.05)
        gc.collect()
        stats = analytics.stats()
        samples.append(
            {
                "calls": checkpoint,
                "rss_mb": round(rss_bytes() / 1e6, 1),
                "buffered": stats["buffered"],
                "dropped": stats["dropped"],
            }
        )
    store.release.set()
    analytics.stop()
    return samples


def run(bound: int = 100_000) -> list[dict[str, object]]:
    """One child per stuck store; rows per checkpoint with the RSS grown since 0 calls."""
    rows: list[dict[str, object]] = []
    for mode in ("raises", "blocks"):
        result = subprocess.run(
            [sys.executable, "-m", "bench.memory", "--child", mode, "--bound", str(bound)],
            capture_output=True,
            text=True,
            check=True,
        )
        samples = json.loads(result.stdout.splitlines()[-1])
        base = float(samples[0]["rss_mb"])  # type: ignore[arg-type]
        at_bound = float(samples[2]["rss_mb"]) - base  # type: ignore[arg-type]
        for sample in samples:
            grown = float(sample["rss_mb"]) - base  # type: ignore[arg-type]
            rows.append(
                {
                    "store": mode,
                    "calls": sample["calls"],
                    "rss_mb": sample["rss_mb"],
                    "grown_mb": round(grown, 1),
                    "vs_grown_at_bound": round(grown / at_bound, 2) if at_bound > 0 else None,
                    "buffered": sample["buffered"],
                    "dropped": sample["dropped"],
                }
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__)
    parser.add_argument("--child", choices=("raises", "blocks"), help=argparse.SUPPRESS)
    parser.add_argument("--bound", type=int, default=100_000, help="max_buffered_events")
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.bound)))
        return 0
    for row in run(args.bound):
        print(row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
