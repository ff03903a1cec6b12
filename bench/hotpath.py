"""Cost of one call on the request path, side by side with the alternatives.

Subjects, all in this process and this run:

- a locked ``dict`` increment: the practical floor for counting anything thread-safely;
- ``prometheus_client``: ``Counter.inc()`` and ``Counter.labels(...).inc()``;
- gso: ``track()`` of an event without data, ``track("credits.earn", "u1",
  {"amount": 50})`` (validated, counted, kept in the event stream with its data), and
  ``on_login``/``on_logout`` (per call), on a memory store with the flush thread running;
- the PostHog, Segment and Mixpanel SDKs' buffered calls with the same event, user and
  properties (see :mod:`bench.saas`), posting to a stub in another process.

How it is measured, so that the ratios are fair on a shared, noisy machine:

- Subjects alternate round by round (their order rotates each round), so a noisy
  neighbour slows them all alike. One untimed warm-up round comes first.
- Per round and subject, ``calls`` calls run in a loop under one clock read each side:
  that round's mean is one sample of ``median ns``. ``caller cpu ns`` is the calling
  thread's own CPU time per call (``time.thread_time_ns``): what the call itself costs,
  without waiting for the GIL while a background thread (an SDK's consumer, gso's
  flush thread) runs. ``process cpu ns`` is the whole process's CPU per call over the
  round and the drain that follows it (every thread: serialising, sending, aggregating).
- Then ``single`` more calls are timed one by one; ``p99 ns`` is the 99th percentile of
  those per-call times (timer included: the empty-call row shows that floor). An SDK
  that sends on the caller's thread now and then (Mixpanel) shows it here.
- After each subject's round its background work is drained off the clock (gso's
  ``flush()``, the SDKs' ``flush()``), so it does not slow the next subject.
"""

from __future__ import annotations

import functools
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import attrs

from bench.saas import Sdk
from gso_analytics import Analytics

Subject = Callable[[int], None]  # runs the call n times

#: The gso call the SDK rows are compared with: same event, user and data.
GSO_TRACK = "gso track() with amount"
PROM_INC = "prometheus Counter.inc"
EMPTY = "(empty call: loop and timer floor)"


@attrs.define
class Contender:
    """One subject: ``run(n)`` makes n calls in a loop, ``one()`` a single call."""

    name: str
    run: Subject
    one: Callable[[], Any]
    drain: Callable[[], None] | None = None
    sdk: Sdk | None = None
    means: list[float] = attrs.field(factory=list)
    cpu: list[float] = attrs.field(factory=list)
    process_cpu: list[float] = attrs.field(factory=list)
    singles: list[int] = attrs.field(factory=list)


def _empty() -> Contender:
    def nothing() -> None:
        pass

    def run(n: int) -> None:
        for _ in range(n):
            nothing()

    return Contender(EMPTY, run, nothing)


def _locked_dict() -> Contender:
    lock = threading.Lock()
    counts: dict[str, int] = {}

    def one() -> None:
        with lock:
            counts["dungeonsRun"] = counts.get("dungeonsRun", 0) + 1

    def run(n: int) -> None:
        for _ in range(n):
            with lock:
                counts["dungeonsRun"] = counts.get("dungeonsRun", 0) + 1

    return Contender("locked dict increment", run, one)


def _prometheus() -> list[Contender]:
    try:
        from prometheus_client import CollectorRegistry, Counter
    except ImportError:  # the table then says so: no x_counter_inc column figures
        return []
    registry = CollectorRegistry()
    plain = Counter("bench_events", "events", registry=registry)
    labelled = Counter("bench_labelled", "events", ["event"], registry=registry)

    def inc(n: int) -> None:
        for _ in range(n):
            plain.inc()

    def labels_one() -> None:
        labelled.labels("dungeon.complete").inc()

    def labels_inc(n: int) -> None:
        for _ in range(n):
            labelled.labels("dungeon.complete").inc()

    return [
        Contender(PROM_INC, inc, plain.inc),
        Contender("prometheus labels().inc", labels_inc, labels_one),
    ]


def _gso(analytics: Analytics) -> list[Contender]:
    track = analytics.track
    on_login, on_logout = analytics.on_login, analytics.on_logout
    amount, pair = {"amount": 50}, {"item": "sword", "tier": 3}

    def plain(n: int) -> None:
        for _ in range(n):
            track("dungeon.complete", "u1")

    def with_amount(n: int) -> None:
        for _ in range(n):
            track("credits.earn", "u1", amount)

    def with_pair(n: int) -> None:
        for _ in range(n):
            track("item.craft", "u1", pair)

    def session(n: int) -> None:
        for _ in range(n // 2):
            on_login("u1")
            on_logout("u1")

    logged_in = [False]

    def session_one() -> None:
        if logged_in[0]:
            on_logout("u1")
        else:
            on_login("u1")
        logged_in[0] = not logged_in[0]

    flush = analytics.flush
    return [
        Contender("gso track()", plain, functools.partial(track, "dungeon.complete", "u1"), flush),
        Contender(
            GSO_TRACK, with_amount, functools.partial(track, "credits.earn", "u1", amount), flush
        ),
        Contender(
            "gso track() + two-key dict",
            with_pair,
            functools.partial(track, "item.craft", "u1", pair),
            flush,
        ),
        Contender("gso on_login/on_logout", session, session_one, flush),
    ]


def _sdk(sdk: Sdk) -> Contender:
    one = sdk.one

    def run(n: int) -> None:
        for _ in range(n):
            one()

    return Contender(f"{sdk.name} {sdk.version}", run, one, sdk.drain, sdk)


def _round(contender: Contender, calls: int, single: int) -> None:
    clock = time.perf_counter_ns
    start_process = time.process_time_ns()
    start_cpu = time.thread_time_ns()
    start = clock()
    contender.run(calls)
    end = clock()
    end_cpu = time.thread_time_ns()
    one = contender.one
    singles = contender.singles
    for _ in range(single):
        before = clock()
        one()
        singles.append(clock() - before)
    if contender.drain is not None:
        contender.drain()
    end_process = time.process_time_ns()
    contender.means.append((end - start) / calls)
    contender.cpu.append((end_cpu - start_cpu) / calls)
    contender.process_cpu.append((end_process - start_process) / (calls + single))
    if contender.sdk is not None:
        contender.sdk.calls += calls + single


def _p(values: list[float] | list[int], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def measure(contenders: list[Contender], rounds: int, calls: int, single: int) -> None:
    """Interleave the contenders round by round, rotating their order."""
    for contender in contenders:  # warm-up: connections, caches, first allocations
        contender.run(calls)
        if contender.drain is not None:
            contender.drain()
        if contender.sdk is not None:
            contender.sdk.calls += calls
    for index in range(rounds):
        shift = index % len(contenders)
        for contender in contenders[shift:] + contenders[:shift]:
            _round(contender, calls, single)


def summarize(contenders: list[Contender]) -> list[dict[str, object]]:
    """One row per contender; ratios are of medians measured in the same rounds."""
    medians = {c.name: statistics.median(c.means) for c in contenders}
    prom, gso = medians.get(PROM_INC), medians.get(GSO_TRACK)
    rows = []
    for c in contenders:
        median = medians[c.name]
        rows.append(
            {
                "subject": c.name,
                "median_ns": round(median),
                "p99_ns": round(_p(c.singles, 0.99)),
                "caller_cpu_ns": round(statistics.median(c.cpu)),
                "process_cpu_ns": round(statistics.median(c.process_cpu)),
                "x_counter_inc": round(median / prom, 2) if prom else None,
                "x_gso_track": round(median / gso, 2) if gso else None,
            }
        )
    return rows


def run(
    rounds: int = 60, calls: int = 500, single: int = 200, sdks: list[Sdk] | None = None
) -> list[dict[str, object]]:
    """Time every subject (``sdks`` from :func:`bench.saas.sdks`, already started)."""
    analytics = Analytics("memory://", flush_interval=0.05, max_buffered_events=10**7)
    analytics.start()
    try:
        contenders = [
            _empty(),
            _locked_dict(),
            *_prometheus(),
            *_gso(analytics),
            *(_sdk(sdk) for sdk in sdks or []),
        ]
        measure(contenders, rounds, calls, single)
    finally:
        analytics.stop()
    return summarize(contenders)
