"""``python -m bench.tail [--rate 1000] [--work-us 150] [--stores memory,sqlite]
[--seconds 4] [--rounds 4] [--flush-interval 1] [--floor] [--unpaced] [--runq]
[--probe-events 200000]``: what a request thread feels while the flush thread works,
the tail of the latency distribution.

Latency: one request thread serves open-loop arrivals, ``rate`` per second on a fixed
schedule, each ``work_us`` of pure-Python work plus three ``track()`` calls (one plain,
one with an amount, one with a small ``data`` dict). A request's latency is its finish
minus its *scheduled* arrival, so a stall delays every request queued behind it, as a
server's clients see it (a closed loop would hide that). Three arms alternate round by
round, their order rotating: ``none A`` and ``none B`` (the handler without analytics:
their ratio is the A/A noise of the machine) and ``with`` (a started ``Analytics`` on
the store, flushing every ``flush_interval`` seconds, created before the round and
stopped after it, both off the clock). With ``--floor``, a fourth arm, ``other
process``: the handler without analytics while another process does the ``with``
arm's analytics work (the machine's share of ``with``: CPUs, and on MongoDB the
server's own CPU, shared with that work; everything but the GIL). With ``--unpaced``,
another arm: ``with`` and the flush never pausing (:data:`~gso_analytics.pacing.SLICE_S`
infinite for the round), what the pacing buys and what it costs. p50/p99/p99.9/max
are taken per round; the table gives their medians over rounds and the ratio of each
arm to ``none A``. ``cpu_us_per_event`` is the process CPU of an arm with analytics
beyond ``none A``'s (medians over rounds), per tracked event: ``track()``, the flush
and its pauses. ``flush_cpu_us_per_event`` is the CPU of the process's other threads
(the flush thread's, its final flush included) per tracked event, measured directly:
what pacing changes, without a noisy ``none A`` subtracted from a round of requests.
``looks``, ``pauses`` and ``lends`` are the pacer's per ``with`` round (``lent``: the
lends during which another thread ran, 20 us or more), and ``pacing_cpu_pct`` what
they cost (the pauses' and lends' CPU as paid, the looks' at a look's cost measured
in the same run) against the flush's CPU: an account of the pacing's own CPU that
the machine's noise moves far less than a ratio of two rounds' CPU times (what it
leaves out: the flush's work running slower after a request ran in between, its
caches cold). With ``--runq`` (Linux), ``slow_wait_us`` and ``slow_runq_us``: the
slowest 1% of requests' mean wait (start minus due) and, of it, their mean run-queue
delay, the time the request thread was runnable but not running (waiting for a CPU,
which no pacing of the GIL gives it; the rest was the GIL, its sleep's own lateness
or the request before it).

GIL probe: a thread sleeps 100 us in a loop and records by how much each sleep
overslept (how long it waited for the GIL after waking), while another thread runs one
``flush()`` of ``probe_events`` buffered events. The same probe with no flush running
is the floor (the machine's own scheduling). The longest oversleep is the longest
stall a request thread can meet during a flush.

Pauses: why the pacer pauses with ``time.sleep(0)`` and what a pause costs; see
:func:`pauses`.

Event loop: the same handler served by uvicorn, the asyncio loop's lag with and without
analytics (``--skip loop`` leaves it out); see :mod:`bench.tail_loop`.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import hashlib
import multiprocessing
import os
import statistics
import tempfile
import threading
import time
import types
import unittest.mock
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from gso_analytics import Analytics, open_store, pacing
from gso_analytics.repeating import repeating
from gso_analytics.store import Store

NONE_A, NONE_B, WITH, OTHER = "none A", "none B", "with", "other process"
UNPACED = "with, unpaced"
QUANTILES = (("p50", 0.5), ("p99", 0.99), ("p99.9", 0.999), ("max", 1.0))
PROBE_SLEEP_NS = 100_000
#: With ``--runq``: the slowest 1% of requests' mean wait, and of it their mean
#: run-queue delay (see :func:`serve`).
SLOWEST = ("slow_wait", "slow_runq")


def _quantile(ordered: list[int], q: float) -> int:
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def calibrate(work_us: float) -> int:
    """Iterations of :func:`_work`'s loop that take ``work_us`` here (best of 5)."""
    n = 20_000
    best = min(_timed_work(n) for _ in range(5))
    return max(1, round(n * work_us * 1_000 / best))


def _timed_work(n: int) -> int:
    start = time.perf_counter_ns()
    _work(n)
    return time.perf_counter_ns() - start


def _work(n: int) -> int:
    """Pure-Python work that holds the GIL, as a request handler's own code does."""
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


def _handler(analytics: Analytics | None, iterations: int) -> Callable[[int], None]:
    amount, item = {"amount": 50}, {"item": "sword", "tier": 3}

    def handle(i: int) -> None:
        _work(iterations)
        if analytics is not None:
            user = f"u{i % 1000}"
            analytics.track("dungeon.complete", user)
            analytics.track("credits.earn", user, amount)
            analytics.track("item.craft", user, item)

    return handle


def _runq_ns(schedstat: int) -> int:
    """The ns a thread has spent runnable but not running, waiting for a CPU: the
    second figure of its ``/proc/thread-self/schedstat`` (Linux), open as ``schedstat``."""
    return int(os.pread(schedstat, 64, 0).split()[1])


def serve(
    handle: Callable[[int], None],
    rate: float,
    seconds: float,
    waits: list[tuple[int, int]] | None = None,
) -> list[int]:
    """Open loop: request i is due at ``start + i / rate``; returns latencies in ns.
    With ``waits``, each request's wait (its start minus its due time) and the part of
    it the thread spent waiting for a CPU (its run-queue delay), in ns, appended there:
    the rest was its sleep's own lateness, the GIL, or the request before it."""
    period = 1e9 / rate
    count = int(rate * seconds)
    latencies = []
    clock = time.perf_counter_ns
    schedstat = -1 if waits is None else os.open("/proc/thread-self/schedstat", os.O_RDONLY)
    queued = 0
    try:
        start = clock() + 1_000_000
        for i in range(count):
            due = start + int(i * period)
            if waits is not None:
                queued = _runq_ns(schedstat)
            ahead = due - clock()
            if ahead > 0:
                time.sleep(ahead / 1e9)
            if waits is not None:
                waits.append((clock() - due, _runq_ns(schedstat) - queued))
            handle(i)
            latencies.append(clock() - due)
    finally:
        if waits is not None:
            os.close(schedstat)
    return latencies


@contextlib.contextmanager
def _stores(names: list[str], tmp: Path) -> Iterator[dict[str, Callable[[], Store]]]:
    """A factory of fresh stores per name (a new file or database per round)."""
    factories: dict[str, Callable[[], Store]] = {}
    counter = iter(range(10**9))
    with contextlib.ExitStack() as stack:
        for name in names:
            if name == "memory":
                factories[name] = lambda: open_store("memory://")
            elif name == "sqlite":
                factories[name] = lambda: open_store(
                    f"sqlite:///{tmp}/tail{next(counter)}_{os.getpid()}.db"
                )
            elif name == "mongo":
                from bench import mongo_flush

                base = stack.enter_context(mongo_flush.nx_27017())
                factories[name] = lambda base=base: open_store(  # type: ignore[misc]
                    mongo_flush.database_url(base, f"tail{next(counter)}_{os.getpid()}")
                )
            else:
                raise ValueError(f"unknown store {name!r}: memory, sqlite or mongo")
        yield factories


def _other_process(
    store: Callable[[], Store], rate: float, seconds: float, flush_interval: float, ready: Any
) -> None:
    """The ``with`` arm's analytics work, in a process of its own: the same calls at the
    same rate into a fresh store, flushed as often."""
    analytics = Analytics(
        store(), flush_interval=flush_interval, max_buffered_events=10**7, forwarders=[]
    ).start()
    track = _handler(analytics, 0)
    ready.set()
    serve(track, rate, seconds)
    analytics.stop()
    analytics.store.close()


#: The pacer's looks, pauses and lends in the current ``with`` round (see
#: :func:`_counting`).
PACING = {"looks": 0, "pauses": 0, "lends": 0, "lent": 0, "pause_ns": 0}


@contextlib.contextmanager
def _counting() -> Iterator[None]:
    """Count the pacer's looks (reads of the other threads' CPU), pauses and lends,
    and their CPU as paid (a pause that let a request in costs about twice one that
    found nobody: the flush thread blocks again to take the GIL back): with a look's
    unit cost (:func:`_look_ns`), an account of what pacing costs in CPU, steadier
    on a shared machine than the difference of two rounds' CPU times."""
    PACING.update(looks=0, pauses=0, lends=0, lent=0, pause_ns=0)
    look, lend = pacing.others_cpu_ns, pacing._lend_cpu

    def counted_look() -> int:
        PACING["looks"] += 1
        return look()

    def counted_pause(seconds: float) -> None:
        PACING["pauses"] += 1
        cpu = time.thread_time_ns()
        time.sleep(seconds)  # and taking the GIL back: after a request, if one ran
        PACING["pause_ns"] += time.thread_time_ns() - cpu

    def counted_lend() -> None:
        PACING["lends"] += 1
        cpu, wall = time.thread_time_ns(), time.perf_counter_ns()
        lend()
        PACING["lent"] += time.perf_counter_ns() - wall >= 20_000
        PACING["pause_ns"] += time.thread_time_ns() - cpu

    clock = types.SimpleNamespace(
        perf_counter=time.perf_counter,
        sleep=counted_pause,
        thread_time_ns=time.thread_time_ns,
        process_time_ns=time.process_time_ns,
    )
    with (
        unittest.mock.patch.object(pacing, "others_cpu_ns", counted_look),
        unittest.mock.patch.object(pacing, "_lend_cpu", counted_lend),
        unittest.mock.patch.object(pacing, "time", clock),
    ):
        yield


def _look_ns(n: int = 2_000) -> float:
    """CPU ns of one look (the two clock reads), here and now."""
    start = time.thread_time_ns()
    for _ in range(n):
        pacing.others_cpu_ns()
    return (time.thread_time_ns() - start) / n


def _round(
    arm: str,
    store: Callable[[], Store],
    iterations: int,
    rate: float,
    seconds: float,
    flush_interval: float,
    waits: list[tuple[int, int]] | None = None,
) -> list[int]:
    if arm == OTHER:
        context = multiprocessing.get_context("fork")
        ready = context.Event()
        other = context.Process(
            target=_other_process, args=(store, rate, seconds + 0.5, flush_interval, ready)
        )
        other.start()
        ready.wait()
        try:
            return serve(_handler(None, iterations), rate, seconds, waits)
        finally:
            other.join()
    if arm not in (WITH, UNPACED):
        return serve(_handler(None, iterations), rate, seconds, waits)
    analytics = Analytics(
        store(), flush_interval=flush_interval, max_buffered_events=10**7, forwarders=[]
    ).start()
    never = unittest.mock.patch.object(pacing, "SLICE_S", float("inf"))
    try:
        with never if arm == UNPACED else _counting():
            latencies = serve(_handler(analytics, iterations), rate, seconds, waits)
            analytics.stop()  # the final flush: unpaced too
        stored = len(analytics.store.get_events(limit=10**8))
    finally:
        analytics.stop()
        analytics.store.close()
    if stored != 3 * len(latencies):  # refuse a figure for work not done
        raise AssertionError(f"stored {stored} events of {3 * len(latencies)} tracked")
    return latencies


def latency(
    stores: list[str],
    rate: float,
    work_us: float,
    seconds: float,
    rounds: int,
    flush_interval: float,
    floor: bool = False,
    unpaced: bool = False,
    runq: bool = False,
) -> list[dict[str, object]]:
    """One row per store and arm: medians over rounds of each round's quantiles, in us.
    With ``runq``, also what the slowest 1% of requests waited (``slow_wait_us``, their
    mean start minus due time) and how much of it for a CPU (``slow_runq_us``, their
    mean run-queue delay: runnable, not running; see :func:`serve`).

    With ``floor``, a fourth arm serves without analytics while another process does
    the ``with`` arm's analytics work: what the machine alone (CPUs shared with that
    work, and with the store's server for MongoDB) does to the request thread, the
    part of ``with`` that is not the GIL."""
    iterations = calibrate(work_us)
    rows: list[dict[str, object]] = []
    arms = [NONE_A, NONE_B, WITH] + ([OTHER] if floor else []) + ([UNPACED] if unpaced else [])
    with tempfile.TemporaryDirectory() as tmp, _stores(stores, Path(tmp)) as factories:
        for name, store in factories.items():
            samples: dict[str, dict[str, list[int]]] = {
                arm: {
                    q: [] for q in [*(q for q, _ in QUANTILES), "cpu", "flush", *PACING, *SLOWEST]
                }
                for arm in arms
            }
            _round(WITH, store, iterations, rate, min(seconds, 1.0), flush_interval)  # warm-up
            gc.collect()
            look_ns = _look_ns()
            for index in range(rounds):
                shift = index % len(arms)
                for arm in arms[shift:] + arms[:shift]:
                    cpu = time.process_time_ns()  # the final flush in, the fork's out
                    own = time.thread_time_ns()
                    waits: list[tuple[int, int]] | None = [] if runq else None
                    latencies = _round(arm, store, iterations, rate, seconds, flush_interval, waits)
                    samples[arm]["cpu"].append(time.process_time_ns() - cpu)
                    # The other threads' CPU: the flush thread's, its final flush in
                    # (an ended thread's time stays in the process's).
                    others = samples[arm]["cpu"][-1] - (time.thread_time_ns() - own)
                    samples[arm]["flush"].append(others)
                    for count in PACING:  # this round's when it was a with round
                        samples[arm][count].append(PACING[count] if arm == WITH else 0)
                    ordered = sorted(latencies)
                    for q, at in QUANTILES:
                        samples[arm][q].append(_quantile(ordered, at))
                    if waits is not None:
                        p99 = _quantile(ordered, 0.99)
                        slow = [w for w, ns in zip(waits, latencies, strict=True) if ns >= p99]
                        for index, key in enumerate(SLOWEST):
                            samples[arm][key].append(statistics.mean(w[index] for w in slow))
                    # Off the clock, in every arm: the with arms' read-back (9,000 event
                    # records, tracked, most reaching the old generation) made a full
                    # collection due every round or two, which then ran in a later
                    # round of any arm (15-20 ms: its p99.9). Each round starts from a
                    # collected heap; the flush's own objects still count within it.
                    gc.collect()
            medians = {
                arm: {q: statistics.median(v) for q, v in per.items() if v}
                for arm, per in samples.items()
            }
            events = 3 * int(rate * seconds)
            for arm in arms:
                row: dict[str, object] = {"store": name, "arm": arm}
                row.update({f"{q}_us": round(medians[arm][q] / 1e3) for q, _ in QUANTILES})
                if runq:
                    row.update({f"{key}_us": round(medians[arm][key] / 1e3) for key in SLOWEST})
                if arm in (WITH, UNPACED):
                    beyond = medians[arm]["cpu"] - medians[NONE_A]["cpu"]
                    row["cpu_us_per_event"] = round(beyond / events / 1e3, 2)
                    row["flush_cpu_us_per_event"] = round(medians[arm]["flush"] / events / 1e3, 2)
                if arm == WITH:
                    looks = medians[arm]["looks"]
                    for count in ("looks", "pauses", "lends", "lent"):
                        row[count] = round(medians[arm][count])
                    # what they cost against the flush's CPU
                    paid = looks * look_ns + medians[arm]["pause_ns"]
                    row["pacing_cpu_pct"] = round(100 * paid / medians[arm]["flush"], 1)
                rows.append(row)
            if unpaced:
                rows.append(
                    {
                        "store": name,
                        "arm": f"{WITH} / {UNPACED}",
                        **{
                            f"x_{q}": round(medians[WITH][q] / medians[UNPACED][q], 2)
                            for q, _ in QUANTILES
                        },
                        "x_cpu_per_event": round(
                            (medians[WITH]["cpu"] - medians[NONE_A]["cpu"])
                            / (medians[UNPACED]["cpu"] - medians[NONE_A]["cpu"]),
                            2,
                        ),
                        "x_flush_cpu_per_event": round(
                            medians[WITH]["flush"] / medians[UNPACED]["flush"], 3
                        ),
                    }
                )
            for arm in arms[1:]:
                rows.append(
                    {
                        "store": name,
                        "arm": f"{arm} / {NONE_A}",
                        **{
                            f"x_{q}": round(medians[arm][q] / medians[NONE_A][q], 2)
                            for q, _ in QUANTILES
                        },
                    }
                )
    return rows


class Probe:
    """A thread that sleeps ``PROBE_SLEEP_NS`` in a loop and records each oversleep."""

    def __init__(self) -> None:
        self.oversleeps: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-gil-probe", daemon=True)

    def _loop(self) -> None:
        clock, sleep, seconds = time.perf_counter_ns, time.sleep, PROBE_SLEEP_NS / 1e9
        oversleeps, stopped = self.oversleeps, self._stop.is_set
        while not stopped():
            before = clock()
            sleep(seconds)
            oversleeps.append(clock() - before - PROBE_SLEEP_NS)

    def __enter__(self) -> Probe:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def figures(self) -> dict[str, object]:
        ordered = sorted(self.oversleeps)
        return {
            "turns": len(ordered),
            "p99_us": round(_quantile(ordered, 0.99) / 1e3),
            "max_us": round(ordered[-1] / 1e3),
            "over_1ms": sum(1 for v in ordered if v > 1_000_000),
        }


def _buffered(store: Store, events: int) -> Analytics:
    analytics = Analytics(store, max_buffered_events=events + 1, forwarders=[])
    _track(analytics, events)
    return analytics


def _track(analytics: Analytics, events: int) -> None:
    """``events`` calls, a third each: no data, ``{"amount": 50}``, a two-key dict."""
    amount, item = {"amount": 50}, {"item": "sword", "tier": 3}
    for i in range(events // 3):
        user = f"u{i % 5000}"
        analytics.track("dungeon.complete", user)
        analytics.track("credits.earn", user, amount)
        analytics.track("item.craft", user, item)


def _burn_without_gil(seconds: float) -> None:
    """CPU work that releases the GIL (hashlib on large buffers): the machine as busy
    as during a flush, the GIL free."""
    block, deadline = b"x" * (1 << 20), time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        hashlib.sha256(block).digest()


def _probed(target: Callable[[], object]) -> tuple[float, dict[str, object]]:
    worker = threading.Thread(target=target, name="bench-probed")
    with Probe() as watching:
        time.sleep(0.01)
        start = time.perf_counter()
        worker.start()
        worker.join()
        elapsed = time.perf_counter() - start
    return elapsed, watching.figures()


def probe(stores: list[str], events: int, rounds: int) -> list[dict[str, object]]:
    """Per store, medians over ``rounds``: the probe's oversleep during one flush of
    ``events`` (``flush_``), while a thread burns CPU for as long without holding the
    GIL (``busy_``: the machine's share of a stall) and with nothing running
    (``idle_``)."""
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp, _stores(stores, Path(tmp)) as factories:
        for name, store in factories.items():
            figures: dict[str, list[dict[str, Any]]] = {"flush_": [], "busy_": [], "idle_": []}
            flush_s: list[float] = []
            for _ in range(rounds):
                analytics = _buffered(store(), events)
                elapsed, during = _probed(analytics.flush)
                analytics.stop()
                analytics.store.close()
                flush_s.append(elapsed)
                figures["flush_"].append(during)
                busy = functools.partial(_burn_without_gil, elapsed)
                figures["busy_"].append(_probed(busy)[1])
                figures["idle_"].append(_probed(functools.partial(time.sleep, elapsed))[1])
            row: dict[str, object] = {
                "store": name,
                "events": events,
                "flush_ms": round(statistics.median(flush_s) * 1e3),
            }
            for prefix, measured in figures.items():
                for key in measured[0]:
                    row[prefix + key] = round(statistics.median(f[key] for f in measured))
            row["flush_worst_max_us"] = max(f["max_us"] for f in figures["flush_"])
            rows.append(row)
    return rows


class _Collections:
    """Counts the collector's passes by generation (``gc.callbacks``) while active."""

    def __init__(self) -> None:
        self.passes = {0: 0, 1: 0, 2: 0}
        self.full_ms: list[float] = []
        self._start = 0.0

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
            return
        self.passes[info["generation"]] += 1
        if info["generation"] == 2:
            self.full_ms.append((time.perf_counter() - self._start) * 1e3)

    def __enter__(self) -> _Collections:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc_info: object) -> None:
        gc.callbacks.remove(self._callback)


def collector(events: int) -> list[dict[str, object]]:
    """What the buffer and a flush give the garbage collector: tracked objects left by
    buffered calls after two young collections, and the collections (full ones timed)
    while ``events`` calls are buffered and while they are flushed to SQLite. Counts,
    not times, are the figure: they do not depend on the machine."""
    with tempfile.TemporaryDirectory() as tmp:
        probe_calls = Analytics("memory://", max_buffered_events=3_001, forwarders=[])
        gc.collect()
        gc.disable()  # the bench's own process: young collections only when asked
        try:
            before = len(gc.get_objects())
            _track(probe_calls, 3_000)
            gc.collect(0)
            gc.collect(1)
            left = len(gc.get_objects()) - before
        finally:
            gc.enable()
        probe_calls.stop()
        gc.collect()
        with _Collections() as buffering:
            analytics = _buffered(open_store(f"sqlite:///{tmp}/gc.db"), events)
        tracked = len(gc.get_objects())
        with _Collections() as flushing:
            analytics.flush()
        analytics.stop()
        analytics.store.close()
    return [
        {"figure": "tracked objects left by 3,000 buffered calls", "value": left},
        {"figure": f"tracked objects with {events:,} calls buffered", "value": tracked},
        *(
            {
                "figure": f"collections while {what} {events:,} calls (gen 0/1/2)",
                "value": "/".join(str(counted.passes[g]) for g in (0, 1, 2)),
                "full_ms_total": round(sum(counted.full_ms), 1),
                "full_ms_longest": round(max(counted.full_ms, default=0.0), 1),
            }
            for what, counted in (("buffering", buffering), ("flushing to SQLite", flushing))
        ),
    ]


def process_cpu(
    sizes: tuple[int, ...] = (6_000, 60_000), rounds: int = 12
) -> list[dict[str, object]]:
    """Process CPU per call of ``track()`` and the ``flush()`` of what it buffered
    (memory store, the calls of :func:`_track`), with ``size`` calls buffered per
    flush: a larger buffer is what a longer ``flush_interval`` holds, and what the
    collector's full collections traverse when buffered calls are tracked. Measured
    alone (the flush then never pauses) and beside an idle thread, as in a server
    (the flush looks at the other threads' CPU every
    :data:`~gso_analytics.pacing.SLICE_S` and, since they do not move, does not pause:
    the looks' cost)."""
    rows: list[dict[str, object]] = []
    for size in sizes:
        row: dict[str, object] = {"calls_per_flush": size}
        for column, beside in (("alone_ns_per_call", False), ("beside_a_thread_ns", True)):
            with _idle_thread() if beside else contextlib.nullcontext():
                analytics = Analytics("memory://", max_buffered_events=size + 1, forwarders=[])
                samples = []
                for _ in range(rounds):
                    start = time.process_time_ns()
                    _track(analytics, size)
                    analytics.flush()
                    samples.append((time.process_time_ns() - start) / size)
                analytics.stop()
            row[column] = round(min(samples))  # interference only ever adds
        rows.append(row)
    return rows


def _idle_thread() -> contextlib.AbstractContextManager[None]:
    """Another thread, asleep while the block runs (it wakes to do nothing hourly)."""
    return repeating(lambda: None, 3600.0, "bench-idle")


#: Ways to let another thread have the GIL, compared by :func:`pauses`.
PAUSES: dict[str, Callable[[], object]] = {
    "time.sleep(0)": functools.partial(time.sleep, 0),
    "os.sched_yield()": getattr(os, "sched_yield", functools.partial(time.sleep, 0)),
    "no pause": lambda: None,
}


def pauses(seconds: float = 1.0, slice_s: float = 0.0001) -> list[dict[str, object]]:
    """Why the pacer pauses with ``time.sleep(0)``: a thread runs Python for
    ``seconds``, pausing every ``slice_s`` each way, while the probe sleeps 100 us in a
    loop. A pause that hands the GIL over gives the probe a turn at (nearly) every
    pause; one that returns at once lets the pausing thread take the GIL back before
    the woken waiter can. Then each pause's own cost with nobody waiting."""
    rows: list[dict[str, object]] = []
    for name, pause in PAUSES.items():
        count = 0

        def busy(pause: Callable[[], object] = pause) -> None:
            nonlocal count
            clock = time.perf_counter
            end = since = clock()
            end += seconds
            while (now := clock()) < end:
                sum(range(20))
                if now - since >= slice_s:
                    pause()
                    count += 1
                    since = clock()

        _, figures = _probed(busy)
        with _idle_thread():
            wall, cpu = time.perf_counter(), time.thread_time()
            for _ in range(10_000):
                pause()
            wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
        rows.append(
            {
                "pause": name,
                "pauses": count,
                "probe_turns": figures["turns"],
                "probe_p99_us": figures["p99_us"],
                "probe_max_us": figures["max_us"],
                "pause_wall_us": round(wall / 10_000 * 1e6, 1),
                "pause_cpu_us": round(cpu / 10_000 * 1e6, 1),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    from bench.__main__ import table

    parser = argparse.ArgumentParser(prog="python -m bench.tail", description=__doc__)
    parser.add_argument("--rate", type=float, default=1000.0, help="requests per second")
    parser.add_argument("--work-us", type=float, default=150.0, help="Python work per request")
    parser.add_argument("--stores", default="memory,sqlite", help="memory,sqlite,mongo")
    parser.add_argument("--seconds", type=float, default=4.0, help="per round and arm")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--flush-interval", type=float, default=1.0)
    parser.add_argument("--probe-events", type=int, default=200_000)
    parser.add_argument("--probe-rounds", type=int, default=3)
    parser.add_argument(
        "--floor",
        action="store_true",
        help="a fourth arm: the analytics work in another process (the machine's share)",
    )
    parser.add_argument(
        "--unpaced",
        action="store_true",
        help="another arm: with analytics, the flush never pausing (what pacing buys, costs)",
    )
    parser.add_argument(
        "--runq",
        action="store_true",
        help="what the slowest 1%% of requests waited, and how much of it for a CPU (Linux)",
    )
    parser.add_argument(
        "--skip",
        action="append",
        default=[],
        choices=("latency", "loop", "probe", "collector", "pauses"),
    )
    args = parser.parse_args(argv)
    stores = [s.strip() for s in args.stores.split(",") if s.strip()]
    print(f"load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs", flush=True)
    if "latency" not in args.skip:
        rows = latency(
            stores,
            args.rate,
            args.work_us,
            args.seconds,
            args.rounds,
            args.flush_interval,
            floor=args.floor,
            unpaced=args.unpaced,
            runq=args.runq,
        )
        print(table("Request latency, us (medians over rounds)", rows), flush=True)
    if "loop" not in args.skip:  # the asyncio arm: see bench.tail_loop
        from bench.tail_loop import LOOP_TITLE, loop_lag

        rows = loop_lag(args.rate, args.work_us, args.seconds, args.rounds, args.flush_interval)
        print(table(LOOP_TITLE, rows), flush=True)
    if "collector" not in args.skip:
        print(table("Garbage collector", collector(args.probe_events)), flush=True)
        print(table("Process CPU, track() + flush()", process_cpu()), flush=True)
    if "pauses" not in args.skip:
        print(table("Ways to pause, every 0.1 ms for 1 s (bench.tail.pauses)", pauses()))
    if "probe" not in args.skip:
        print(
            table("GIL probe during one flush", probe(stores, args.probe_events, args.probe_rounds))
        )
    print(f"load average {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
