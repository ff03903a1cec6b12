"""``track()`` from 8 threads at once, against ``prometheus_client`` from 8 threads.

A game server runs requests on a thread pool; what matters there is how many calls per
second the process can make when every worker calls at the same time, and whether a
shared lock or a contended structure makes them wait on each other. Under the GIL
threads do not run Python in parallel, so the ideal is that 8 threads together do as
many calls per second as 1 thread alone (per-call ns unchanged), not fewer.

Each crew of threads is started once and reused: per round, every thread waits on a
barrier, makes ``calls`` calls, and waits on a second barrier; the round's time is
from the release to the last thread's arrival, so thread start-up is never timed.
Subjects alternate round by round (rotating order) in the same run. ``ns_per_call``
is the round's wall time divided by all the calls of all its threads (1e9 / aggregate
calls per second); the medians and p99 are over rounds. gso's flush thread runs
(memory store, every 50 ms) and is drained off the clock after each round; a round
lasts tens of milliseconds, so the flush thread often aggregates part of it inside
the clock. That is what a busy process pays, and why these per-call figures are
higher than ``track()``'s in :mod:`bench.hotpath`, whose 500-call rounds rarely meet it.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable

from gso_analytics import Analytics

Work = Callable[[int], None]


class Crew:
    """``size`` threads that each run ``work(calls)`` when :meth:`round` is called."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._work: Work = lambda n: None
        self._calls = 0
        self._stop = False
        self._start = threading.Barrier(size + 1)
        self._end = threading.Barrier(size + 1)
        self._threads = [
            threading.Thread(target=self._loop, name=f"bench-crew-{i}", daemon=True)
            for i in range(size)
        ]
        for thread in self._threads:
            thread.start()

    def _loop(self) -> None:
        while True:
            self._start.wait()
            if self._stop:
                return
            self._work(self._calls)
            self._end.wait()

    def round(self, work: Work, calls: int) -> int:
        """Every thread makes ``calls`` calls; returns the wall time in ns."""
        self._work, self._calls = work, calls
        start = time.perf_counter_ns()
        self._start.wait()
        self._end.wait()
        return time.perf_counter_ns() - start

    def close(self) -> None:
        self._stop = True
        self._start.wait()
        for thread in self._threads:
            thread.join()


def _subjects(analytics: Analytics) -> dict[str, Work]:
    track = analytics.track
    amount = {"amount": 50}

    def gso(n: int) -> None:
        for _ in range(n):
            track("credits.earn", "u1", amount)

    subjects = {"gso track() with amount": gso}
    try:
        from prometheus_client import CollectorRegistry, Counter
    except ImportError:
        pass
    else:
        counter = Counter("bench_threads", "events", registry=CollectorRegistry())

        def inc(n: int) -> None:
            for _ in range(n):
                counter.inc()

        subjects["prometheus Counter.inc"] = inc
    lock = threading.Lock()
    counts: dict[str, int] = {}

    def locked(n: int) -> None:
        for _ in range(n):
            with lock:
                counts["creditsEarned"] = counts.get("creditsEarned", 0) + 50

    subjects["locked dict increment"] = locked
    return subjects


def run(rounds: int = 40, calls: int = 2000, threads: int = 8) -> list[dict[str, object]]:
    """Rows for each subject on ``threads`` threads and on 1 (the reference)."""
    analytics = Analytics("memory://", flush_interval=0.05, max_buffered_events=10**8).start()
    crews = {threads: Crew(threads), 1: Crew(1)}
    try:
        plans = [
            (name, size, work)
            for name, work in _subjects(analytics).items()
            for size in (threads, 1)
        ]
        samples: dict[tuple[str, int], list[float]] = {(n, s): [] for n, s, _ in plans}
        for _name, size, work in plans:  # warm-up
            crews[size].round(work, calls // size)
        analytics.flush()
        for index in range(rounds):
            shift = index % len(plans)
            for name, size, work in plans[shift:] + plans[:shift]:
                # 1 thread makes as many calls as the whole crew: equal work per round.
                per_thread = calls if size == threads else calls * threads
                elapsed = crews[size].round(work, per_thread)
                samples[(name, size)].append(elapsed / (per_thread * size))
                analytics.flush()
    finally:
        for crew in crews.values():
            crew.close()
        analytics.stop()
    reference = samples.get(("prometheus Counter.inc", threads))
    base = statistics.median(reference) if reference else None
    rows = []
    for (name, size), values in samples.items():
        median = statistics.median(values)
        rows.append(
            {
                "subject": name,
                "threads": size,
                "calls_per_s": round(1e9 / median),
                "ns_per_call": round(median),
                "p99_of_rounds_ns": round(
                    sorted(values)[min(len(values) - 1, int(len(values) * 0.99))]
                ),
                "x_counter_inc_8_threads": round(median / base, 2) if base else None,
                "x_same_on_1_thread": round(median / statistics.median(samples[(name, 1)]), 2),
            }
        )
    return rows
