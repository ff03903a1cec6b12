"""Cost of one call on the request path, side by side with the alternatives.

Each subject runs in rounds of ``calls`` calls; a round's time divided by ``calls`` is
one sample. Subjects alternate round by round, so a noisy neighbour slows all of them
alike, and the table reports the median and p99 of the samples and each median's ratio
to ``prometheus_client``'s ``Counter.inc``.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable

from gso_analytics import Analytics

Subject = Callable[[int], None]  # runs the call n times


def _locked_dict() -> Subject:
    lock = threading.Lock()
    counts: dict[str, int] = {}

    def run(n: int) -> None:
        for _ in range(n):
            with lock:
                counts["dungeonsRun"] = counts.get("dungeonsRun", 0) + 1

    return run


def _prometheus() -> dict[str, Subject]:
    try:
        from prometheus_client import CollectorRegistry, Counter
    except ImportError:
        return {}
    registry = CollectorRegistry()
    plain = Counter("bench_events", "events", registry=registry)
    labelled = Counter("bench_labelled", "events", ["event"], registry=registry)

    def inc(n: int) -> None:
        for _ in range(n):
            plain.inc()

    def labels_inc(n: int) -> None:
        for _ in range(n):
            labelled.labels("dungeon.complete").inc()

    return {"prometheus Counter.inc": inc, "prometheus labels().inc": labels_inc}


def _gso(analytics: Analytics) -> dict[str, Subject]:
    track = analytics.track
    amount = {"amount": 50}

    def plain(n: int) -> None:
        for _ in range(n):
            track("dungeon.complete", "u1")

    def with_amount(n: int) -> None:
        for _ in range(n):
            track("credits.earn", "u1", amount)

    def session(n: int) -> None:
        for _ in range(n // 2):
            analytics.on_login("u1")
            analytics.on_logout("u1")

    return {
        "gso track()": plain,
        "gso track() with amount": with_amount,
        "gso on_login/on_logout": session,
    }


def measure(subjects: dict[str, Subject], rounds: int, calls: int) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {name: [] for name in subjects}
    for _ in range(rounds):
        for name, run in subjects.items():
            start = time.perf_counter_ns()
            run(calls)
            samples[name].append((time.perf_counter_ns() - start) / calls)
    return samples


def summarize(samples: dict[str, list[float]], baseline: str) -> list[dict[str, object]]:
    base = statistics.median(samples[baseline]) if baseline in samples else None
    rows = []
    for name, values in samples.items():
        values = sorted(values)
        median = statistics.median(values)
        p99 = values[min(len(values) - 1, int(len(values) * 0.99))]
        rows.append(
            {
                "subject": name,
                "median_ns": round(median, 1),
                "p99_ns": round(p99, 1),
                "vs_baseline": round(median / base, 2) if base else None,
            }
        )
    return rows


def run(rounds: int = 200, calls: int = 1000) -> list[dict[str, object]]:
    """Time every subject; gso's buffer is flushed between rounds by its own thread."""
    analytics = Analytics("memory://", flush_interval=0.05, max_buffered_events=10**7)
    analytics.start()
    try:
        subjects = {"locked dict increment": _locked_dict(), **_prometheus(), **_gso(analytics)}
        samples = measure(subjects, rounds, calls)
    finally:
        analytics.stop()
    return summarize(samples, "prometheus Counter.inc")
