"""The flush shares the GIL, and the buffer gives the garbage collector nothing to do.

Why: a request thread waits for the GIL while the flush thread runs Python, and a
collection (which holds the GIL, on whichever thread triggers it) traverses every
object the collector tracks. So the buffered calls and a batch's events must be
objects it stops tracking (tuples of strings and numbers), and the flush's long loops
must let waiting threads in between slices. Timings are not asserted here (the
machines are shared; ``python -m bench.tail`` measures the stalls), but for one whose
mechanism is a time: a thread queued behind the flush thread's time slice, where the
figure with the mechanism is a third of the bound and without it above the bound.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import os
import threading
import time
import types
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gso_analytics import Analytics, FlushBatch, open_store, pacing
from gso_analytics.aggregator import Aggregator
from gso_analytics.clock import DayKeys, to_ms

CALLS = 3_000


def _track_mix(analytics: Analytics, n: int) -> None:
    """Every kind of buffered call: plain, flat data, nested data (JSON text), sessions."""
    for i in range(n):
        user = f"u{i % 50}"
        kind = i % 5
        if kind == 0:
            analytics.track("dungeon.complete", user)
        elif kind == 1:
            analytics.track("credits.earn", user, {"amount": i, "source": "quest"})
        elif kind == 2:
            analytics.track("item.craft", user, {"item": {"name": "sword", "tier": [1, 2]}})
        elif kind == 3:
            analytics.on_login(user, "Name")
        else:
            analytics.on_logout(user)


@pytest.fixture
def collector_paused() -> Iterator[None]:
    """Collections only when the test asks (the test's own, restored after)."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def test_buffered_calls_are_untracked_before_the_old_generation(
    collector_paused: None,
) -> None:
    """3,000 buffered calls of every kind are untracked by two young collections (the
    first promotes them, the second untracks them), so they never reach the old
    generation every full collection traverses; a call holding a dict would stay
    tracked until it is flushed."""
    analytics = Analytics("memory://", forwarders=[], max_buffered_events=CALLS + 1)
    try:
        before = len(gc.get_objects())
        _track_mix(analytics, CALLS)
        gc.collect(0)
        gc.collect(1)
        added = len(gc.get_objects()) - before
        assert analytics.stats()["buffered"] == CALLS
        assert added < CALLS // 30, f"{added} tracked objects for {CALLS} buffered calls"
    finally:
        analytics.stop()


def test_a_batch_holds_no_tracked_object_per_event() -> None:
    """The events of a batch are plain tuples the collector drops after one look (an
    object per event would be traversed by every collection until it is stored)."""
    aggregator = Aggregator(None, DayKeys(UTC), CALLS + 1)
    for i in range(CALLS):
        aggregator.data_event("credits.earn", f"u{i % 50}", (("amount", i),), "creditsEarned", i)
    batch = aggregator.swap()
    gc.collect()
    assert len(batch.events) == CALLS
    assert not any(gc.is_tracked(event) for event in batch.events)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 3), st.integers(0, 5_000), st.sampled_from("etp")),
        max_size=80,
    )
)
def test_the_swap_keeps_every_activity_mark_sorted(calls: list[tuple[int, int, str]]) -> None:
    """A player's marks of a batch (tracked calls but passive ones, and touches), in
    whatever order the threads stamped them: all of them, sorted, against a plain
    grouping."""
    start = datetime(2026, 12, 6, 12, tzinfo=UTC)
    now = [start]
    aggregator = Aggregator(
        lambda: now[0], DayKeys(UTC), len(calls) + 1, passive_events=frozenset({"paid"})
    )
    expected: dict[str, list[int]] = {}
    for player, ms, kind in calls:
        now[0] = start + timedelta(milliseconds=ms)
        user = f"u{player}"
        if kind == "t":
            aggregator.touch(user)
        else:
            aggregator.event("paid" if kind == "p" else "played", user, None, 0)
        if kind != "p":
            expected.setdefault(user, []).append(to_ms(now[0]))
    batch = aggregator.swap()
    assert batch.activity == {user: tuple(sorted(times)) for user, times in expected.items()}


@pytest.fixture
def yields(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[float]]:
    """Every pause of the pacer, which looks at every tick (a slice of no length)."""
    pauses: list[float] = []
    monkeypatch.setattr(pacing, "SLICE_S", 0.0)
    monkeypatch.setattr(
        pacing, "time", types.SimpleNamespace(perf_counter=time.perf_counter, sleep=pauses.append)
    )
    yield pauses


@pytest.fixture
def other_thread(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A second thread alive that wants the GIL at every look: its CPU time moves by
    more than :data:`~gso_analytics.pacing.MOVED_NS` between any two (the pauses are
    recorded, not taken, so a real thread could not move)."""
    moving = itertools.count(0, pacing.MOVED_NS + 1)
    monkeypatch.setattr(pacing, "others_cpu_ns", lambda: next(moving))
    monkeypatch.setattr(pacing, "_looked", threading.local())  # no earlier test's reading
    done = threading.Event()
    thread = threading.Thread(target=done.wait, name="test-waiting")
    thread.start()
    yield
    done.set()
    thread.join()


def test_a_long_flush_lets_waiting_threads_in_between_slices(
    tmp_path: Path, yields: list[float], other_thread: None
) -> None:
    """Aggregating the buffer and building the SQLite rows pause once per slice of
    ``CHECK_EVERY`` items, releasing the GIL (``time.sleep(0)``)."""
    store = open_store(f"sqlite:///{tmp_path}/paced.db")
    analytics = Analytics(store, forwarders=[], max_buffered_events=CALLS + 1)
    for i in range(CALLS):
        analytics.track("credits.earn", f"u{i % 50}", {"amount": 1})
    analytics.flush()
    slices = -(-CALLS // pacing.CHECK_EVERY)
    assert len(yields) >= 2 * slices  # the aggregation's slices, then the rows'
    assert set(yields) == {0}
    assert analytics.get_metrics().today["creditsEarned"] == CALLS
    analytics.stop()
    store.close()


def test_alone_the_flush_does_not_pause(
    yields: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no other thread (a script flushing by hand) a pause would only cost time."""
    monkeypatch.setattr(pacing, "threading", types.SimpleNamespace(active_count=lambda: 1))
    analytics = Analytics("memory://", forwarders=[], max_buffered_events=CALLS + 1)
    for i in range(CALLS):
        analytics.track("credits.earn", f"u{i % 50}", {"amount": 1})
    analytics.flush()
    analytics.stop()
    assert yields == []


def test_paced_slices_cover_every_item_in_order(yields: list[float], other_thread: None) -> None:
    items = list(range(1000))
    slices = list(pacing.paced_slices(items, 300))
    assert [len(s) for s in slices] == [300, 300, 300, 100]
    assert [x for s in slices for x in s] == items
    assert len(yields) == 4


def _swap_flat_calls() -> FlushBatch:
    aggregator = Aggregator(None, DayKeys(UTC), CALLS + 1)
    for i in range(CALLS):
        aggregator.data_event("credits.earn", f"u{i % 50}", (("amount", i),), "creditsEarned", i)
    gc.collect()
    return aggregator.swap()


def test_the_swap_leaves_no_young_generation_for_one_long_collection(
    yields: list[float], other_thread: None
) -> None:
    """Were the swap to free each buffered call as it makes its event, the
    interpreter's allocation count would stay flat and no young collection would run
    during it: every event would wait in generation 0 for one collection later in the
    flush (28 ms for 200,000, holding the GIL). The swap keeps the calls until the
    batch is made, so the collector's usual small collections run along the loop."""
    batch = _swap_flat_calls()
    assert len(batch.events) == CALLS
    # The batch's own containers are young and live: a list of activity marks and a set
    # of days per player; nothing else may be waiting there.
    own = len(batch.activity) + len(batch.day_users) + len(batch.month_users)
    # Generation 0 is the whole interpreter's: other threads' young objects count too
    # (a few hundred on a loaded machine); freed one by one, the calls would leave
    # every event there, CALLS of them.
    assert len(gc.get_objects(generation=0)) - own < CALLS // 4


def test_release_empties_a_list_a_slice_at_a_time(yields: list[float], other_thread: None) -> None:
    """Freeing a batch's rows or events in one ``del`` holds the GIL for the whole of it."""
    items = list(range(5_000))
    pacing.release(items)
    assert items == []
    assert len(yields) == -(-5_000 // (4 * pacing.CHECK_EVERY))


def test_apply_batch_lets_waiting_threads_in_between_its_store_calls(
    yields: list[float], other_thread: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each bulk store call of a batch takes a few hundred µs for thousands of players;
    without a pause between them they would add up to one stretch holding the GIL."""
    store = open_store("memory://")
    analytics = Analytics(store, forwarders=[], max_buffered_events=CALLS + 3)
    _track_mix(analytics, CALLS)
    analytics.track("user.register", "newcomer")
    analytics.track("stripe.payment", "u1", {"amountCents": 499})
    bulk = (
        "tombstones",
        "add_first_seen",
        "add_first_payments",
        "add_day_users",
        "registration_days",
        "set_registration_days",
        "add_month_users",
        "write_sessions",
        "insert_events",
    )
    calls: list[tuple[str, int]] = []
    real_transaction = store.transaction

    @contextlib.contextmanager
    def transaction() -> Iterator[Any]:
        with real_transaction() as tx:
            for name in bulk:
                monkeypatch.setattr(tx, name, _recording(name, getattr(tx, name), calls, yields))
            yield tx

    monkeypatch.setattr(store, "transaction", transaction)
    analytics.flush()
    assert {name for name, _ in calls} == set(bulk)
    pauses_before = [seen for _, seen in calls]
    assert all(a < b for a, b in itertools.pairwise(pauses_before)), calls
    analytics.stop()


def _recording(name: str, method: Any, calls: list[tuple[str, int]], pauses: list[float]) -> Any:
    """``method``, noting its name and the pauses so far at each call."""

    def recorded(*args: Any) -> Any:
        calls.append((name, len(pauses)))
        return method(*args)

    return recorded


@contextlib.contextmanager
def _counted_pauses(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[list[int], list[float]]]:
    """The pacer's looks (slices ended with another thread alive) and its pauses, both
    real: the clocks are read and the GIL released as without the test."""
    looks: list[int] = []
    pauses: list[float] = []
    real_others = pacing.others_cpu_ns

    def others() -> int:
        looks.append(1)
        return real_others()

    def sleep(seconds: float) -> None:
        pauses.append(seconds)
        time.sleep(seconds)

    monkeypatch.setattr(pacing, "others_cpu_ns", others, raising=False)  # (none before it)
    monkeypatch.setattr(
        pacing,
        "time",
        types.SimpleNamespace(
            perf_counter=time.perf_counter,
            thread_time_ns=time.thread_time_ns,
            process_time_ns=time.process_time_ns,
            sleep=sleep,
        ),
    )
    yield looks, pauses


def _flush_beside(target: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[int, int, int]:
    """Slices (of :data:`~gso_analytics.pacing.SLICE_S`) its wall time holds, looks and
    pauses of one flush of :data:`CALLS` calls while ``target(done)`` runs in another
    thread."""
    analytics = Analytics("memory://", forwarders=[], max_buffered_events=CALLS + 1)
    for i in range(CALLS):
        analytics.track("credits.earn", f"u{i % 50}", {"amount": 1})
    done = threading.Event()
    thread = threading.Thread(target=target, args=(done,), name="test-beside")
    thread.start()
    try:
        time.sleep(0.01)  # under way (and, idle, asleep)
        with _counted_pauses(monkeypatch) as (looks, pauses):
            start = time.perf_counter()
            analytics.flush()
            slices = int((time.perf_counter() - start) / pacing.SLICE_S)
    finally:
        done.set()
        thread.join()
    assert analytics.get_metrics().today["creditsEarned"] == CALLS
    analytics.stop()
    return slices, len(looks), len(pauses)


def test_beside_an_idle_thread_the_flush_does_not_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    """A thread that sleeps (a server's request thread between requests) does not want
    the GIL: its CPU time does not move, and a pause would only cost the flush (80 µs of
    wall time and 20 µs of CPU each in a virtual machine). The few allowed are the
    clocks' own noise (an interrupt counted between the two reads)."""
    slices, _, pauses = _flush_beside(lambda done: done.wait(), monkeypatch)
    assert slices >= 30  # long enough to have paused, were the thread wanting the GIL
    assert pauses <= 1 + slices // 10, (slices, pauses)


def test_beside_a_busy_thread_the_flush_pauses(monkeypatch: pytest.MonkeyPatch) -> None:
    """A thread running Python wants the GIL whenever it does not hold it: a pause lets
    it run (until the interpreter's switch interval takes the GIL back), its CPU time
    moves, and the next look pauses again. How many of the looks depends on the
    machine's other load (a spinner the OS has not scheduled does not move); a few, at
    least, whatever the load."""

    def spin(done: threading.Event) -> None:
        while not done.is_set():
            sum(range(100))

    _, looks, pauses = _flush_beside(spin, monkeypatch)
    assert looks >= 30
    assert pauses >= 5, (looks, pauses)


def test_a_pause_only_when_other_threads_used_cpu_since_the_last_look(
    yields: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rule, on given readings of the other threads' CPU time: a pause at a look
    where it moved by more than ``MOVED_NS`` since the look before (and at a thread's
    first look, with nothing to compare). The reading is not taken again after a
    pause: what ran during it counts toward the next look. Every other look lends the
    CPU instead (a thread queued for it has not run, so it cannot have moved)."""
    moved = pacing.MOVED_NS + 1
    readings = iter([0, 0, moved, moved, 2 * moved - 2, 2 * moved - 1, 10 * moved, 10 * moved])
    monkeypatch.setattr(pacing, "others_cpu_ns", lambda: next(readings))
    monkeypatch.setattr(pacing, "_looked", threading.local())
    monkeypatch.setattr(pacing, "threading", types.SimpleNamespace(active_count=lambda: 2))
    lends: list[None] = []
    monkeypatch.setattr(pacing, "_lend_cpu", lambda: lends.append(None))
    pacer = pacing.Pacer()
    paused_at, lent_at = [], []
    for look in range(8):
        paused, lent = len(yields), len(lends)
        pacer.tick()
        if len(yields) > paused:
            paused_at.append(look)
        if len(lends) > lent:
            lent_at.append(look)
    assert paused_at == [0, 2, 6]
    assert lent_at == [1, 3, 4, 5, 7]


def _oversleeps_beside_a_paced_loop(cpu: int, requests: int = 150) -> list[float]:
    """How much later than asked this thread's 1 ms sleeps end, each followed by 0.5 ms
    of Python (a request), while another thread runs a paced Python loop, both on
    ``cpu``: the kernel queues this thread there when its sleep ends."""
    done = threading.Event()

    def paced_loop() -> None:
        os.sched_setaffinity(0, {cpu})  # this thread's own, on Linux
        pacer = pacing.Pacer()
        while not done.is_set():
            sum(range(200))  # about 2 µs of Python holding the GIL
            pacer.tick()

    thread = threading.Thread(target=paced_loop, name="test-paced-loop")
    own = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    thread.start()
    late = []
    try:
        time.sleep(0.01)
        for _ in range(requests):
            start = time.perf_counter()
            time.sleep(0.001)
            woke = time.perf_counter()
            late.append(woke - start - 0.001)
            while time.perf_counter() - woke < 0.0005:
                pass
    finally:
        done.set()
        thread.join()
        os.sched_setaffinity(0, own)
    return sorted(late)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity here")
def test_a_thread_woken_on_the_flush_threads_cpu_runs_within_a_slice() -> None:
    """A thread whose sleep ends on the CPU where the flush thread runs has not run,
    so it cannot have moved the clock the pacer looks at. The pacer lends the CPU at
    each look that sees nobody, and the woken thread runs then, not when the flush
    thread's time slice is over (Linux 6.18's EEVDF scheduler here: the median came
    to 0.64-0.65 ms late without the lend, 0.12 ms with it; 0.08 ms is the timer's own)."""
    cpu = min(os.sched_getaffinity(0))
    late = _oversleeps_beside_a_paced_loop(cpu)
    assert late[len(late) // 2] < 0.00035, late[len(late) // 2]
