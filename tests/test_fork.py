"""Fork safety: ``os.fork``, ``multiprocessing`` (fork and spawn) and the gunicorn
``--preload`` pattern, without gunicorn.

Why: a game backend's app (and with it ``Analytics``, its buffer, its flush thread and
its store connection) is often created in a master process and then forked into
workers. Each child must start with an empty buffer and its own flush thread; what
the parent buffered (or holds in a failed batch) must be stored exactly once, by the
parent; a child's own calls must reach the store when it exits the way that kind of
child exits (``sys.exit`` after ``os.fork``, ``os._exit`` after a multiprocessing
``fork`` target returns, interpreter exit after ``spawn``); and a lock held by another
thread at the moment of the fork must not deadlock the child. ``tests/test_analytics.py``
covers one ``os.fork`` child that calls ``stop()`` itself; ``tests/test_gunicorn.py``
runs a real gunicorn. Every wait here has a deadline.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from faults import FaultyStore

from gso_analytics import Analytics, Store, open_store

if TYPE_CHECKING:
    from conftest import Backend

HERE = Path(__file__).resolve()
#: Backends whose data lives in the process: a forked child writes to its own copy.
IN_PROCESS = {"memory", "mongomock"}
DEADLINE_S = 30.0

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def total(store: Store, field: str) -> float:
    return sum(day[field] for day in store.recent_days(10_000))


def wait_child(pid: int, deadline: float) -> int:
    """The child's exit code; kills it and fails when it does not end by ``deadline``."""
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.005)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    raise AssertionError(f"child {pid} did not exit in time: deadlocked?")


# -- the gunicorn --preload pattern, in a fresh interpreter ------------------------------------


def preload_master(db: str, workers: int) -> None:
    """A master that creates and starts Analytics, buffers calls, forks ``workers``
    children that each play and end with ``sys.exit(0)`` (like a gunicorn worker),
    then goes on and stops. Prints a JSON report."""
    analytics = Analytics(f"sqlite:///{db}", flush_interval=3600, stop_timeout=10).start()
    analytics.on_login("master-user", "boss")
    for _ in range(3):
        analytics.track("credits.earn", "master-user", {"amount": 10})
    pids = []
    for n in range(workers):
        pid = os.fork()
        if pid == 0:  # a worker: its own calls only; the exit hook flushes them
            analytics.on_login(f"w{n}")
            for _ in range(5):
                analytics.track("credits.earn", f"w{n}", {"amount": 1})
            if n == 0:
                analytics.on_logout("master-user")  # the login sits in the master's buffer
            analytics.on_logout(f"w{n}")
            sys.exit(0 if analytics.stats()["buffered"] == 7 + (n == 0) else 7)
        pids.append(pid)
    deadline = time.monotonic() + DEADLINE_S
    codes = [wait_child(pid, deadline) for pid in pids]
    analytics.track("credits.earn", "master-user", {"amount": 100})
    print(json.dumps({"codes": codes, "stopped": analytics.stop()}), flush=True)


def test_preload_master_forks_workers_that_exit_cleanly(tmp_path: Path) -> None:
    """The master's buffered calls are stored once (by the master), each worker's on
    its ``sys.exit``, and a worker's logout of the master's unflushed login closes it."""
    db = tmp_path / "preload.db"
    out = subprocess.run(
        [sys.executable, str(HERE), "preload", str(db), "4"],
        capture_output=True,
        text=True,
        timeout=DEADLINE_S,
        cwd=HERE.parent,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report == {"codes": [0, 0, 0, 0], "stopped": True}, out.stderr
    with open_store(f"sqlite:///{db}") as store:
        assert total(store, "creditsEarned") == 3 * 10 + 100 + 4 * 5
        # The master's last call, after its player's logout, starts a session of its own.
        assert total(store, "sessionCount") == 6
        assert total(store, "dau") == 5
        assert store.count_open_sessions() == 1
        master_session, after = store.get_sessions("master-user")
        assert master_session.logout_at is not None and not master_session.timed_out
        assert after.logout_at is None
        assert len(store.get_events(limit=1000)) == 4 + 4 * 5


# -- multiprocessing ---------------------------------------------------------------------------


def _mp_fork_child(analytics: Analytics, n: int) -> None:
    """A multiprocessing target that records and returns, without calling stop(): the
    library must still store its calls (multiprocessing ends it with ``os._exit``)."""
    if analytics.stats()["buffered"] != 0:
        raise SystemExit(5)  # the parent's buffer leaked into the child
    analytics.on_login(f"mp{n}")
    analytics.track("credits.earn", f"mp{n}", {"amount": 1})


def test_multiprocessing_fork_children_store_their_calls_at_exit(tmp_path: Path) -> None:
    """``multiprocessing`` with the fork context: children start empty, their calls
    are stored although their target never calls ``stop()``, the parent's once."""
    store = open_store(f"sqlite:///{tmp_path}/mp.db")
    analytics = Analytics(store, flush_interval=3600, stop_timeout=10).start()
    try:
        analytics.on_login("parent")
        analytics.track("credits.earn", "parent", {"amount": 100})
        context = multiprocessing.get_context("fork")
        children = [context.Process(target=_mp_fork_child, args=(analytics, n)) for n in range(3)]
        for child in children:
            child.start()
        for child in children:
            child.join(DEADLINE_S)
            assert child.exitcode == 0, f"child exit code {child.exitcode}"
        assert total(store, "creditsEarned") == 3, "a child's calls were lost at its exit"
        assert analytics.stats()["buffered"] == 2
        assert analytics.stop() is True
        assert total(store, "creditsEarned") == 103
        assert total(store, "dau") == 4
    finally:
        analytics.stop()
        store.close()


def _spawn_child(url: str, n: int) -> None:
    """A spawn target: a fresh interpreter opens its own Analytics and returns."""
    analytics = Analytics(url, flush_interval=3600).start()
    analytics.track("credits.earn", f"sp{n}", {"amount": 1})


def test_multiprocessing_spawn_children_flush_at_exit(tmp_path: Path) -> None:
    """``spawn`` children import the library afresh; a started instance is flushed by
    the exit hook, and the parent's buffer is untouched (no fork)."""
    url = f"sqlite:///{tmp_path}/spawn.db"
    analytics = Analytics(open_store(url), flush_interval=3600).start()
    try:
        analytics.track("credits.earn", "parent", {"amount": 100})
        context = multiprocessing.get_context("spawn")
        children = [context.Process(target=_spawn_child, args=(url, n)) for n in range(2)]
        for child in children:
            child.start()
        for child in children:
            child.join(DEADLINE_S)
            assert child.exitcode == 0
        assert total(analytics.store, "creditsEarned") == 2
        assert analytics.stop() is True
        assert total(analytics.store, "creditsEarned") == 102
    finally:
        analytics.stop()
        analytics.store.close()


# -- os.fork in this process ---------------------------------------------------------------


def test_a_failed_batch_pending_at_fork_is_stored_once_by_the_parent(tmp_path: Path) -> None:
    """Not only the buffer: a batch that failed before the fork and waits for a retry
    belongs to the parent too; the child must not retry it."""
    faulty = FaultyStore(open_store(f"sqlite:///{tmp_path}/pending.db"))
    analytics = Analytics(faulty, flush_interval=3600, stop_timeout=10)
    try:
        faulty.down()
        analytics.track("credits.earn", "parent", {"amount": 100})
        with pytest.raises(Exception, match="outage"):
            analytics.flush()
        assert analytics.stats()["buffered"] == 1
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                faulty.up()  # the child's copy of the wrapper
                analytics.track("credits.earn", "child", {"amount": 1})
                stats = analytics.stats()
                if analytics.stop() and stats["buffered"] == 1:
                    code = 0
            finally:
                os._exit(code)
        assert wait_child(pid, time.monotonic() + DEADLINE_S) == 0
        assert total(faulty.inner, "creditsEarned") == 1
        faulty.up()
        assert analytics.stop() is True
        assert total(faulty.inner, "creditsEarned") == 101
    finally:
        analytics.stop()
        faulty.close()


def test_a_fork_during_a_store_transaction_leaves_the_child_able_to_write(
    backend: Backend, store_url: str
) -> None:
    """The flush thread is inside a store transaction (parked there by the fault
    wrapper) when the main thread forks. SQLite keeps its lock bookkeeping in process
    memory, so a child forked at that moment could never write the file again, even
    through new connections; a lock held by the thread could hang the child. The
    child must record and store its own call within its bound."""
    faulty = FaultyStore(open_store(store_url))
    analytics = Analytics(faulty, flush_interval=0.01, stop_timeout=5)
    gate = faulty.hang_during("claim_batch")
    analytics.track("credits.earn", "parent", {"amount": 100})
    analytics.start()
    assert gate.wait_entered(DEADLINE_S), "the flush never reached the store"
    releaser = threading.Timer(0.3, gate.release)  # the transaction ends 0.3 s from now
    releaser.start()
    try:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                analytics.track("raid.complete", "child")
                if analytics.stop() and analytics.stats()["flushed"] == 1:
                    code = 0
            finally:
                os._exit(code)
        assert wait_child(pid, time.monotonic() + DEADLINE_S) == 0, "the child could not write"
    finally:
        gate.release()
        releaser.join(DEADLINE_S)
    assert analytics.stop() is True
    try:
        assert total(faulty.inner, "creditsEarned") == 100
        if backend.name not in IN_PROCESS:
            assert total(faulty.inner, "raidBattles") == 1
    finally:
        faulty.close()


def test_forking_while_a_thread_hammers_track_never_deadlocks(
    backend: Backend, store_url: str, tmp_path: Path
) -> None:
    """A request thread calls ``track()`` without pause and the flush thread writes
    every millisecond while the main thread forks 12 times: every child records, stops
    within its bound and exits; the parent's own count is exact. A lock (ours, the
    store's) held by another thread at the fork would hang the child here."""
    if backend.name == "mongomock":
        pytest.skip(
            "mongomock keeps its data behind its own locks, which the flush thread may hold"
            " at the fork (a child then waits out stop_timeout); the wire server's run is"
            " the MongoDB case"
        )
    store = open_store(store_url)
    # A hung child fails at stop_timeout; a slow one (a loaded machine, a Python wire
    # server) must not: 20 s, inside the 30 s the parent waits for each child.
    analytics = Analytics(store, flush_interval=0.001, stop_timeout=20).start()
    hammering = threading.Event()
    hammering.set()
    sent = 0

    def hammer() -> None:
        nonlocal sent
        while hammering.is_set():
            # Bursts of 10, about 2,000 calls a second: a call is under way at every
            # fork, and the slowest store here (a Python wire server on a loaded machine,
            # conflicts injected) keeps up, so nothing is dropped and the final flush
            # ends within stop_timeout (at 10,000 a second the buffer filled up).
            for _ in range(10):
                analytics.track("credits.earn", "hammer", {"amount": 1})
                sent += 1
            time.sleep(0.005)

    thread = threading.Thread(target=hammer)
    thread.start()
    children = 12
    try:
        for k in range(children):
            time.sleep(0.005)
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    analytics.track("raid.complete", f"child{k}")
                    if analytics.stop() and analytics.stats()["flushed"] == 1:
                        code = 0
                finally:
                    os._exit(code)
            assert wait_child(pid, time.monotonic() + DEADLINE_S) == 0, f"child {k} failed"
    finally:
        hammering.clear()
        thread.join(DEADLINE_S)
    assert analytics.stop() is True
    try:
        assert total(store, "creditsEarned") == sent
        if backend.name not in IN_PROCESS:  # children wrote to the same store
            assert total(store, "raidBattles") == children
        assert analytics.stats()["dropped"] == 0
    finally:
        store.close()


@pytest.mark.parametrize("kind", ["sqlite", "memory"])
def test_a_fork_waits_for_a_stuck_transaction_only_its_bound(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A transaction hung in another thread holds the fork at most ``busy_timeout``
    (SQLite; the memory store's ``FORK_WAIT_S``), not for ever: then the fork goes on
    with a warning, the child gets new locks (it can use the store without waiting
    for a thread it does not have), and the parent's transaction ends normally."""
    from gso_analytics.backends.memory import MemoryStore
    from gso_analytics.backends.sqlite import SQLiteStore

    bound = 0.3
    if kind == "sqlite":
        store: Store = SQLiteStore(tmp_path / "fork.db", busy_timeout=bound)
    else:
        monkeypatch.setattr(MemoryStore, "FORK_WAIT_S", bound)
        store = MemoryStore()
    entered, release = threading.Event(), threading.Event()

    def hold() -> None:
        with store.transaction():
            entered.set()
            release.wait(DEADLINE_S)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert entered.wait(DEADLINE_S)
        started = time.monotonic()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                if kind == "memory":
                    store.get_day("2025-03-14")  # the child's lock is its own
                code = 0
            finally:
                os._exit(code)
        waited = time.monotonic() - started
        assert wait_child(pid, time.monotonic() + DEADLINE_S) == 0
    finally:
        release.set()
        holder.join(DEADLINE_S)
    assert bound <= waited < DEADLINE_S
    assert "forking while" in caplog.text
    assert store.get_day("2025-03-14") is None  # the parent's store works on
    store.close()


if __name__ == "__main__":
    if sys.argv[1] == "preload":
        preload_master(sys.argv[2], int(sys.argv[3]))
