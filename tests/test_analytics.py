"""The ``Analytics`` facade: lifecycle, the flush thread, failing and hanging stores, fork.

These run on every backend through the ``store`` fixture where the store matters;
time-dependent tests poll with a deadline instead of sleeping a guessed amount.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from polling import wait_for

from gso_analytics import Analytics, FlushBatch, Store, StoreError, open_store
from gso_analytics.model import ApplyResult

if TYPE_CHECKING:
    from conftest import AnalyticsFactory, FakeClock

TODAY = "2025-03-14"  # the fake clock's start day


def counter(store: Store, field: str, day: str = TODAY) -> float:
    stats = store.get_day(day)
    return stats[field] if stats is not None else 0


class FlakyApply:
    """Replaces ``store.apply``: the first ``failures`` calls fail, then it recovers.

    ``after_write`` makes a failing call do the real write first (a timeout after
    the commit: the caller cannot know it succeeded).
    """

    def __init__(self, store: Store, failures: int, *, after_write: bool = False) -> None:
        self.real = store.apply
        self.failures = failures
        self.after_write = after_write
        self.calls = 0
        self.results: list[ApplyResult] = []

    def __call__(self, batch: FlushBatch) -> ApplyResult:
        self.calls += 1
        failing = self.calls <= self.failures
        if failing and not self.after_write:
            raise StoreError(f"injected failure {self.calls}")
        result = self.real(batch)
        self.results.append(result)
        if failing:
            raise StoreError(f"injected failure {self.calls} after the write")
        return result


class HangingApply:
    """Replaces ``store.apply``: blocks until ``release`` is set, then applies."""

    def __init__(self, store: Store) -> None:
        self.real = store.apply
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, batch: FlushBatch) -> ApplyResult:
        self.entered.set()
        self.release.wait(30)
        return self.real(batch)


# -- lifecycle --------------------------------------------------------------------------


def test_context_manager_starts_and_stops_with_final_flush(store: Store, clock: FakeClock) -> None:
    """``with Analytics(...)`` starts the thread and stores everything on exit."""
    with Analytics(store, clock=clock, flush_interval=3600) as analytics:
        assert analytics.start() is analytics  # starting twice is harmless
        analytics.on_login("u1")
        analytics.track("credits.earn", "u1", {"amount": 9})
        assert store.get_day(TODAY) is None  # the hour-long interval has not passed
    assert counter(store, "creditsEarned") == 9
    assert counter(store, "dau") == 1
    assert analytics.stats()["buffered"] == 0


def test_stop_is_safe_twice_and_applies_once(
    store: Store, make_analytics: AnalyticsFactory
) -> None:
    """A second ``stop()`` (atexit after an explicit stop) neither fails nor re-applies."""
    analytics = make_analytics(store, flush_interval=3600).start()
    analytics.track("market.sale", "u1")
    assert analytics.stop() is True
    assert analytics.stop() is True
    assert counter(store, "marketSales") == 1
    assert analytics.stats()["batches"] == 1


def test_analytics_from_url_owns_and_closes_its_store(sqlite_url: str, clock: FakeClock) -> None:
    """Given a URL, Analytics opens the store itself and closes it on stop."""
    analytics = Analytics(sqlite_url, clock=clock)
    analytics.track("raid.complete", "u1")
    assert analytics.stop() is True
    with pytest.raises(StoreError):
        analytics.store.get_day(TODAY)
    with open_store(sqlite_url) as store:
        assert counter(store, "raidBattles") == 1


def test_stop_is_bounded_with_a_hanging_store(
    store: Store, make_analytics: AnalyticsFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store that never answers cannot hold the process at exit past ``stop_timeout``."""
    hanging = HangingApply(store)
    monkeypatch.setattr(store, "apply", hanging)
    analytics = make_analytics(store, flush_interval=0.01, stop_timeout=0.3).start()
    analytics.track("dungeon.complete", "u1")
    try:
        assert hanging.entered.wait(10), "the flush thread never called apply"
        started = time.monotonic()
        assert analytics.stop() is False  # not everything was stored
        elapsed = time.monotonic() - started
        assert elapsed < 0.3 + 1.5, f"stop() took {elapsed:.2f}s with stop_timeout=0.3"
    finally:
        hanging.release.set()
    # Once the store answers, the batch the thread held is stored, once.
    assert wait_for(lambda: counter(store, "dungeonsRun") == 1)


def test_stop_is_bounded_with_a_failing_store(
    store: Store,
    make_analytics: AnalyticsFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With the store down, stop() retries until ``stop_timeout``, then reports loudly
    what it could not store instead of blocking the exit."""
    flaky = FlakyApply(store, failures=10**9)
    monkeypatch.setattr(store, "apply", flaky)
    analytics = make_analytics(store, stop_timeout=0.3)
    analytics.track("dungeon.complete", "u1")
    started = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="gso_analytics"):
        assert analytics.stop() is False
    elapsed = time.monotonic() - started
    assert elapsed < 0.3 + 1.5, f"stop() took {elapsed:.2f}s with stop_timeout=0.3"
    # The retry may land just as stop() stops waiting; it must still happen.
    assert wait_for(lambda: flaky.calls >= 2), "the final flush gave up without retrying"
    assert any("not stored" in r.getMessage() for r in caplog.records)
    assert analytics.stats()["buffered"] == 1


def test_reads_flush_this_process_first(store: Store, make_analytics: AnalyticsFactory) -> None:
    """``get_metrics()`` and ``get_last_30_days()`` see this process's buffer, like the seed."""
    analytics = make_analytics(store)
    analytics.on_login("u1")
    analytics.track("pvp.battle", "u1")
    metrics = analytics.get_metrics()
    assert metrics.dau == 1
    assert metrics.active_sessions == 1
    assert metrics.to_dict()["today"]["pvpBattles"] == 1
    assert set(metrics.to_dict()) == {"today", "dau", "mau", "avgSessionMin", "activeSessions"}
    analytics.track("pvp.ranked.battle", "u1")
    (today,) = analytics.get_last_30_days()
    assert today["pvpBattles"] == 2
    assert analytics.stats()["buffered"] == 0


# -- failing stores ---------------------------------------------------------------------


def test_failing_store_keeps_the_buffer_until_it_recovers(
    store: Store, make_analytics: AnalyticsFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Failed flushes keep every call; totals are exact once the store is back."""
    flaky = FlakyApply(store, failures=3)
    monkeypatch.setattr(store, "apply", flaky)
    analytics = make_analytics(store)
    expected = 0
    for round_ in range(3):
        analytics.on_login(f"u{round_}")
        analytics.track("credits.earn", f"u{round_}", {"amount": 10 + round_})
        expected += 10 + round_
        with pytest.raises(StoreError, match="injected failure"):
            analytics.flush()
        assert analytics.stats()["buffered"] == 2 * (round_ + 1)
    assert store.get_day(TODAY) is None

    analytics.track("credits.earn", "u0", {"amount": 100})
    analytics.flush()
    assert counter(store, "creditsEarned") == expected + 100
    assert counter(store, "dau") == 3
    assert counter(store, "sessionCount") == 3
    stats = analytics.stats()
    assert stats["flush_failures"] == 3
    assert stats["retried"] == 3  # the first batch was tried three more times
    assert stats["buffered"] == 0
    assert stats["flushed"] == 7
    assert stats["dropped"] == 0
    assert "injected failure 3" in stats["last_error"]


def test_apply_failing_after_the_write_is_not_counted_twice(
    store: Store, make_analytics: AnalyticsFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store that commits and then reports an error (a timeout after the write): the
    retry carries the same batch id and is recognised as already applied."""
    flaky = FlakyApply(store, failures=1, after_write=True)
    monkeypatch.setattr(store, "apply", flaky)
    analytics = make_analytics(store)
    analytics.on_login("u1")
    analytics.track("gems.earn", "u1", {"amount": 25})
    with pytest.raises(StoreError, match="after the write"):
        analytics.flush()
    assert counter(store, "gemsEarned") == 25  # it did reach the store
    analytics.track("gems.earn", "u1", {"amount": 5})
    analytics.flush()
    assert [r.duplicate for r in flaky.results] == [False, True, False]
    assert counter(store, "gemsEarned") == 30
    assert counter(store, "dau") == 1
    assert counter(store, "sessionCount") == 1
    assert store.count_open_sessions() == 1
    assert len(store.get_events()) == 2
    assert analytics.stats()["retried"] == 1


def test_buffer_is_bounded_and_overflow_counted(
    store: Store,
    make_analytics: AnalyticsFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With the store down, memory stays bounded: calls beyond ``max_buffered_events``
    are dropped and counted, and nothing that was admitted is lost."""
    flaky = FlakyApply(store, failures=10**9)
    monkeypatch.setattr(store, "apply", flaky)
    analytics = make_analytics(store, max_buffered_events=10)
    for _ in range(6):
        analytics.track("credits.spend", "u1", {"amount": 1})
    with pytest.raises(StoreError):
        analytics.flush()  # the failed batch still counts toward the bound
    with caplog.at_level(logging.ERROR, logger="gso_analytics"):
        for _ in range(6):
            analytics.track("credits.spend", "u1", {"amount": 1})
    stats = analytics.stats()
    assert (stats["dropped"], stats["buffered"]) == (2, 10)
    assert any("buffer full" in r.getMessage() for r in caplog.records)

    flaky.failures = 0
    analytics.flush()
    assert counter(store, "creditsSpent") == 10
    assert len(store.get_events()) == 10
    assert analytics.stats()["dropped"] == 2
    assert analytics.stats()["buffered"] == 0


@pytest.mark.parametrize(
    "data",
    [
        pytest.param({"blob": ["x" * 16_000]}, id="16KB-json-text"),
        pytest.param({"note": "é" * 4_000}, id="non-ascii-text"),
        pytest.param({f"k{n}": f"{n:064d}" for n in range(16)}, id="16-flat-strings"),
    ],
)
def test_buffer_is_bounded_in_bytes(
    make_analytics: AnalyticsFactory, monkeypatch: pytest.MonkeyPatch, data: dict[str, Any]
) -> None:
    """Valid large payloads with the store down (issue 28, finding 7): the memory the
    buffer holds, measured by tracemalloc (not by the library's own estimate), stays
    near ``max_buffered_bytes``, failed batches included; the rest is dropped and
    counted, and what was admitted is stored once the store is back."""
    import tracemalloc

    store = open_store("memory://")
    flaky = FlakyApply(store, failures=10**9)
    monkeypatch.setattr(store, "apply", flaky)
    bound = 2 * 1024 * 1024
    analytics = make_analytics(store, max_buffered_bytes=bound)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for n in range(300):
            analytics.track("gift.send", f"u{n:04d}", data)
        with pytest.raises(StoreError):
            analytics.flush()  # the failed batch still counts toward the bound
        for n in range(300, 600):
            analytics.track("gift.send", f"u{n:04d}", data)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    stats = analytics.stats()
    assert held < 1.5 * bound, held
    assert stats["buffered_bytes"] <= bound + 4 * 16 * 1024  # the last call may pass it
    assert stats["dropped"] > 0 and stats["dropped"] + stats["buffered"] == 600
    flaky.failures = 0
    analytics.flush()
    assert len(store.get_events(limit=1000)) == 600 - stats["dropped"]
    assert analytics.stats()["buffered_bytes"] == 0


# -- the flush thread -------------------------------------------------------------------


def test_flush_thread_flushes_on_its_interval(
    store: Store, make_analytics: AnalyticsFactory
) -> None:
    """Without any flush() call, data reaches the store within a few intervals."""
    analytics = make_analytics(store, flush_interval=0.05).start()
    analytics.track("craft.complete", "u1")
    assert wait_for(lambda: counter(store, "craftsCompleted") == 1)
    analytics.track("craft.complete", "u2")
    assert wait_for(lambda: counter(store, "craftsCompleted") == 2)
    # The store shows a batch a moment before the flusher counts it: wait for both.
    assert wait_for(lambda: analytics.stats()["batches"] >= 2)
    assert analytics.stats()["last_flush_age_s"] is not None


def test_flush_thread_retries_a_failing_store(
    store: Store, make_analytics: AnalyticsFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The thread keeps a failed batch and retries it with backoff until it is stored."""
    flaky = FlakyApply(store, failures=2)
    monkeypatch.setattr(store, "apply", flaky)
    analytics = make_analytics(store, flush_interval=0.05).start()
    analytics.track("stripe.payment", "u1", {"amountCents": 499})
    assert wait_for(lambda: counter(store, "stripeRevenue") == 499)
    assert wait_for(lambda: analytics.stats()["retried"] == 2)
    assert analytics.stats()["flush_failures"] == 2


def test_concurrent_callers_and_flush_thread_lose_nothing(
    store: Store, make_analytics: AnalyticsFactory
) -> None:
    """Many request threads and the flush thread swapping the buffer under them: every
    call is counted exactly once."""
    analytics = make_analytics(store, flush_interval=0.005).start()
    threads_n, calls = 6, 300

    def player(n: int) -> None:
        for i in range(calls):
            analytics.track("credits.earn", f"p{n}", {"amount": i % 7})
            if i % 50 == 0:
                analytics.on_login(f"p{n}")

    threads = [threading.Thread(target=player, args=(n,)) for n in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert analytics.stop() is True
    expected = threads_n * sum(i % 7 for i in range(calls))
    assert counter(store, "creditsEarned") == expected
    # Each player's calls come within idle_timeout of each other: one session each,
    # however many logins and flushes.
    assert counter(store, "sessionCount") == threads_n
    assert counter(store, "dau") == threads_n
    assert len(store.get_events(limit=10**6)) == threads_n * calls


# -- fork -------------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_fork_child_starts_empty_and_parent_data_is_stored_once(
    tmp_path: Path, clock: FakeClock
) -> None:
    """A forked worker (gunicorn --preload) must not flush the parent's buffer again:
    it starts empty, with its own flush thread, and its own data still counts."""
    store = open_store(f"sqlite:///{tmp_path}/fork.db")
    parent = Analytics(store, clock=clock, flush_interval=3600, stop_timeout=5).start()
    try:
        parent.on_login("parent-user")
        for _ in range(3):
            parent.track("credits.earn", "parent-user", {"amount": 10})
        pid = os.fork()
        if pid == 0:  # the child: report through the exit code only
            code = 1
            try:
                if parent.stats()["buffered"] == 0:
                    code = 2
                    parent.track("credits.earn", "child-user", {"amount": 1})
                    if parent.stop() and parent.stats()["flushed"] == 1:
                        code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, "child saw the parent's buffer or failed"
        assert parent.stats()["buffered"] == 4
        assert counter(store, "creditsEarned") == 1  # the child's own call only
        assert parent.stop() is True
        assert counter(store, "creditsEarned") == 31
        assert counter(store, "dau") == 2  # the parent's player and the child's
        assert len(store.get_events("parent-user")) == 3
    finally:
        parent.stop()
        store.close()


def test_stats_shape(store: Store, make_analytics: AnalyticsFactory) -> None:
    """``stats()`` exposes what was buffered, stored, retried, dropped and rejected."""
    analytics = make_analytics(store)
    analytics.on_login("u1")
    before: dict[str, Any] = analytics.stats()
    assert before["buffered"] == 1
    assert before["last_flush_age_s"] is None
    analytics.flush()
    after = analytics.stats()
    assert (after["buffered"], after["flushed"], after["batches"]) == (0, 1, 1)
    assert (after["dropped"], after["rejected"], after["flush_failures"]) == (0, 0, 0)
    assert after["logouts_without_session"] == 0
    analytics.on_logout("u2")  # nobody logged u2 in: the logout ends no session
    analytics.flush()
    assert analytics.stats()["logouts_without_session"] == 1


# -- calls nobody flushes: stored at exit, or counted aloud -----------------------------

EXIT_SCRIPT = """
import sys
from gso_analytics import Analytics, StoreError, open_store
from gso_analytics.backends.memory import MemoryStore

class Down(MemoryStore):
    def transaction(self):
        raise StoreError("the store is down")

case, url = sys.argv[1], sys.argv[2]
if case == "never-started":
    analytics = Analytics(url, forwarders=[])
    analytics.on_login("u1")
    analytics.track("credits.earn", "u1", {"amount": 5})
elif case == "store-down":
    analytics = Analytics(Down(), forwarders=[], stop_timeout=0.3)
    analytics.on_login("u1")
    analytics.track("credits.earn", "u1", {"amount": 5})
else:  # after-stop
    analytics = Analytics(url, forwarders=[]).start()
    analytics.stop()
    analytics.track("credits.earn", "u1", {"amount": 5})
"""


def _run_exit_script(case: str, url: str, cwd: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-c", EXIT_SCRIPT, case, url],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stderr


def test_calls_before_start_are_stored_at_exit_with_a_warning(
    sqlite_url: str, tmp_path: Path
) -> None:
    """A script that forgot ``start()``: its calls were accepted, so they are stored at
    exit, and the log says why the flush thread never ran."""
    stderr = _run_exit_script("never-started", sqlite_url, tmp_path)
    assert "2 calls were made but start() was never called" in stderr
    with open_store(sqlite_url) as store:
        (day,) = store.recent_days()
        assert (day["dau"], day["creditsEarned"]) == (1, 5)


def test_calls_that_cannot_be_stored_at_exit_are_counted(tmp_path: Path) -> None:
    stderr = _run_exit_script("store-down", "memory://", tmp_path)
    # Which of the two says it depends on scheduling: the drain thread, giving up at the
    # deadline ("stopping with 2 calls not stored"), or stop(), whose join of the same
    # length can end first ("... at stop; 2 calls not stored"). Both count the calls.
    assert re.search(r"\b2 calls not stored", stderr), stderr


def test_calls_after_stop_are_counted_at_exit(sqlite_url: str, tmp_path: Path) -> None:
    stderr = _run_exit_script("after-stop", sqlite_url, tmp_path)
    assert "1 calls made after stop() were not stored" in stderr
