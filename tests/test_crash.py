"""Real worker processes killed on SQLite: SIGKILL mid-flush, SIGTERM with and without a
handler.

Why: a game server's workers are killed by the OOM killer, by a deploy, by a
supervisor's timeout. The seed lost its buffer and could leave half of a flush in
MongoDB. Here a worker process (this file run as a script, see :func:`worker`) is
killed with SIGKILL

- at a chosen statement inside its transaction (``tests/faults.py`` parks the flush
  there and the worker says so), and
- at random moments while it and a second worker flush continuously,

and the store must pass ``PRAGMA integrity_check``, hold no trace of the killed batch
(every table identical to before it), keep per-batch consistency between counters,
events, sessions and the (day, user) records, lose at most the killed worker's own
unflushed calls, and stay writable by the other processes.

SIGTERM: Python runs no atexit handler on SIGTERM by default, so a plain process
killed with it loses its buffer (pinned below, as docs/failures.md says). A worker that
turns SIGTERM into a clean exit - gunicorn does this for its workers; a plain script
installs ``signal.signal(SIGTERM, lambda *a: sys.exit(0))`` - flushes at exit, and
within ``stop_timeout`` even when the store is locked.
"""

from __future__ import annotations

import json
import os
import random
import selectors
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from gso_analytics import Analytics, open_store

HERE = Path(__file__).resolve()
#: Bound on any one wait for a worker; the runs take well under a second each.
DEADLINE_S = 30.0

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="POSIX signals")


# -- the worker (this file run as a script) ------------------------------------------------


def _say(line: str) -> None:
    print(line, flush=True)


def worker(mode: str, db: str, *args: str) -> None:
    """One worker process on the SQLite file ``db``; reports progress on stdout."""
    from faults import FaultyStore  # tests/ is sys.path[0] when run as a script

    if mode.startswith("term"):
        _term_worker(mode, db)
        return
    store = FaultyStore(open_store(f"sqlite:///{db}"))
    if mode == "mid-flush":
        analytics = Analytics(store, flush_interval=3600, strict=True)
        for i in range(10):
            analytics.on_login(f"a{i}", f"name-a{i}")
            analytics.track("credits.earn", f"a{i}", {"amount": 1, "seq": i})
        analytics.flush()
        _say("stored")
        for i in range(10):
            analytics.on_login(f"b{i}")
            analytics.track("credits.earn", f"b{i}", {"amount": 1, "seq": i})
            analytics.track("dungeon.complete", f"a{i}")
        for i in range(5):
            analytics.on_logout(f"a{i}")  # closes sessions stored by the first batch
        analytics.on_logout("ghost")  # a logout mark that ends no session
        store.hang_during(args[0], on_enter=lambda: _say("mid-flush"))
        analytics.flush()  # parks inside the transaction until SIGKILL
        _say("not killed")
    elif mode == "loop":
        # Stops after ``calls`` users, or (calls == 0) once the file ``<db>.stop`` exists.
        name, calls = args[0], int(args[1])
        stop_file = Path(f"{db}.stop")
        analytics = Analytics(store, flush_interval=0.001, strict=True).start()
        i = -1
        while (i := i + 1) < calls or (calls == 0 and not stop_file.exists()):
            user = f"{name}-{i}"
            analytics.on_login(user)
            analytics.track("credits.earn", user, {"amount": 1, "seq": i})
            analytics.track("market.sale", user, {"seq": i})
            analytics.on_logout(user)
            if i % 10 == 9:
                analytics.flush()
                _say(f"stored {i + 1}")
        report = {"users": i, "stopped": analytics.stop(), "stats": analytics.stats()}
        _say(json.dumps(report, default=str))


def _term_worker(mode: str, db: str) -> None:
    if mode in ("term-handler", "term-locked"):
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    busy = "?busy_timeout=0.05" if mode == "term-locked" else ""
    analytics = Analytics(f"sqlite:///{db}{busy}", flush_interval=3600, stop_timeout=0.5)
    analytics.start()  # registers the exit flush
    for i in range(50):
        analytics.track("credits.earn", "u1", {"amount": 1, "seq": i})
    _say("ready")
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:  # a server, idle between requests
        time.sleep(0.05)


# -- the parent side ---------------------------------------------------------------------------


class Worker:
    """A worker process and its stdout, read line by line with a deadline.

    The pipe is read with ``os.read`` into our own buffer: a buffered ``readline``
    could swallow two lines at once and leave ``select`` waiting for one already read.
    """

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=HERE.parent,
        )
        self._buffer = b""

    def read_line(self, deadline: float) -> str | None:
        """The next line, or None at end of output; fails at ``deadline``."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buffer:
            with selectors.DefaultSelector() as sel:
                sel.register(fd, selectors.EVENT_READ)
                if not sel.select(max(0.0, deadline - time.monotonic())):
                    self.proc.kill()
                    raise AssertionError(f"worker silent until the deadline: {self.proc.args}")
            chunk = os.read(fd, 65536)
            if not chunk:
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode()

    def expect(self, deadline: float) -> str:
        line = self.read_line(deadline)
        if line is None:
            self.proc.wait(5)
            err = self.proc.stderr.read().decode() if self.proc.stderr else ""
            raise AssertionError(f"worker ended early ({self.proc.returncode}): {err}")
        return line

    def end(self) -> None:
        """Make sure the process is gone (teardown)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)


def kill(worker: Worker) -> None:
    worker.proc.send_signal(signal.SIGKILL)
    assert worker.proc.wait(DEADLINE_S) == -signal.SIGKILL


def tables(db: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, sorted: what "identical to before" compares."""
    with sqlite3.connect(db) as conn:
        names = [
            r[0]
            for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            if not r[0].startswith("sqlite_")
        ]
        return {
            name: sorted(conn.execute(f"SELECT * FROM {name}").fetchall(), key=repr)
            for name in names
        }


def integrity(db: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute("PRAGMA integrity_check").fetchall()


def consistent(db: Path) -> dict[str, int]:
    """Cross-table invariants every whole batch keeps; a half-applied one breaks them.

    Each ``credits.earn`` call adds 1 to ``creditsEarned`` and one event, each
    ``market.sale`` likewise, each login one session row, one ``sessionCount`` and
    (first of the day) one (day, user) record and one ``dau``; each logout sets one
    ``durationS`` that ``totalSessionS`` adds.
    """
    p = "gso_analytics_"
    with sqlite3.connect(db) as conn:

        def one(sql: str) -> int:
            return conn.execute(sql.format(p=p)).fetchone()[0] or 0

        def field(name: str) -> int:
            return one(f"SELECT SUM(value) FROM {{p}}daily WHERE field = '{name}'")

        figures = {
            "credit_events": one("SELECT COUNT(*) FROM {p}events WHERE event = 'credits.earn'"),
            "sale_events": one("SELECT COUNT(*) FROM {p}events WHERE event = 'market.sale'"),
            "sessions": one("SELECT COUNT(*) FROM {p}sessions"),
            "day_users": one("SELECT COUNT(*) FROM {p}day_users"),
            "month_users": one("SELECT COUNT(*) FROM {p}month_users"),
            "session_s": one("SELECT SUM(durationS) FROM {p}sessions"),
        }
        assert field("creditsEarned") == figures["credit_events"]
        assert field("marketSales") == figures["sale_events"]
        assert field("sessionCount") == figures["sessions"]
        assert field("dau") == figures["day_users"]
        assert (
            one("SELECT SUM(value) FROM {p}monthly WHERE field = 'mau'") == (figures["month_users"])
        )
        assert field("totalSessionS") == figures["session_s"]
        return figures


# -- SIGKILL ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "statement",
    ["claim_batch", "add_month_users", "write_sessions", "increment_daily", "insert_events"],
)
def test_sigkill_inside_the_transaction_leaves_no_trace_of_the_batch(
    tmp_path: Path, statement: str
) -> None:
    """Killed while its flush is parked right after ``statement``: the store is intact
    and exactly as the previous flush left it; the next writer is not blocked."""
    db = tmp_path / "crash.db"
    open_store(f"sqlite:///{db}").close()
    deadline = time.monotonic() + DEADLINE_S
    proc = Worker("mid-flush", str(db), statement)
    try:
        assert proc.expect(deadline) == "stored"
        before = tables(db)
        assert proc.expect(deadline) == "mid-flush"
        kill(proc)
    finally:
        proc.end()
    assert integrity(db) == [("ok",)]
    assert tables(db) == before
    assert len(before["gso_analytics_batches"]) == 1
    consistent(db)

    # The lock died with the process: another writer gets in at once.
    with open_store(f"sqlite:///{db}?busy_timeout=1") as store:
        survivor = Analytics(store, flush_interval=3600)
        survivor.track("credits.earn", "a0", {"amount": 1, "seq": 10})
        survivor.on_logout("a0")
        assert survivor.stop() is True
        assert sum(day["creditsEarned"] for day in store.recent_days()) == 10 + 1
        assert store.count_open_sessions() == 9


def _stored_calls(db: Path, name: str) -> set[tuple[int, int]]:
    """Which calls of worker ``name`` reached the store, as (i, j): j = 0 login,
    1 credits.earn, 2 market.sale, 3 logout of user ``name-i``."""
    with sqlite3.connect(db) as conn:
        found: set[tuple[int, int]] = set()
        for user, logout in conn.execute(
            "SELECT userId, logoutAt FROM gso_analytics_sessions WHERE userId LIKE ?",
            (f"{name}-%",),
        ):
            i = int(user.rsplit("-", 1)[1])
            found.add((i, 0))
            if logout is not None:
                found.add((i, 3))
        for event, data in conn.execute(
            "SELECT event, data FROM gso_analytics_events WHERE userId LIKE ?", (f"{name}-%",)
        ):
            found.add((json.loads(data)["seq"], 1 if event == "credits.earn" else 2))
    return found


def test_sigkill_at_random_moments_loses_only_the_unflushed_buffer(tmp_path: Path) -> None:
    """Two workers flush every millisecond; one is killed at a random moment, twice
    (two incarnations). Each killed worker's stored calls are an exact prefix of its
    calls, covering at least what it reported stored; the other worker's calls are
    all there; every cross-table invariant holds; the file is intact."""
    db = tmp_path / "race.db"
    open_store(f"sqlite:///{db}").close()
    rng = random.Random(8)
    deadline = time.monotonic() + DEADLINE_S
    steady = Worker("loop", str(db), "steady", "0")  # until the stop file appears
    victims: list[tuple[str, int]] = []
    try:
        for round_ in range(2):
            name = f"victim{round_}"
            proc = Worker("loop", str(db), name, "100000")
            try:
                reported = 0
                target = rng.randint(40, 120)
                while reported < target:
                    reported = int(proc.expect(deadline).split()[1])
                time.sleep(rng.uniform(0, 0.02))
                kill(proc)
                while (line := proc.read_line(deadline)) is not None:  # printed before dying
                    reported = int(line.split()[1])
            finally:
                proc.end()
            victims.append((name, reported))
        assert steady.proc.poll() is None, "the steady worker must outlive the kills"
        Path(f"{db}.stop").touch()
        lines = []
        while (line := steady.read_line(deadline)) is not None:
            lines.append(line)
        assert steady.proc.wait(DEADLINE_S) == 0, steady.proc.stderr.read()  # type: ignore[union-attr]
    finally:
        steady.end()
    report = json.loads(lines[-1])
    users = report["users"]
    assert users > 0
    assert report["stopped"] is True
    assert report["stats"]["dropped"] == 0

    assert integrity(db) == [("ok",)]
    figures = consistent(db)
    assert _stored_calls(db, "steady") == {(i, j) for i in range(users) for j in range(4)}
    for name, reported in victims:
        stored = _stored_calls(db, name)
        count = len(stored)
        assert stored == {divmod(c, 4) for c in range(count)}, f"{name}: not a prefix"
        assert count >= 4 * reported, f"{name} reported {reported} users stored, has {count}"
    assert figures["sessions"] == users + sum(
        len({i for i, j in _stored_calls(db, n) if j == 0}) for n, _ in victims
    )


# -- SIGTERM ------------------------------------------------------------------------------------


def _credits(db: Path) -> int:
    with open_store(f"sqlite:///{db}") as store:
        return sum(day["creditsEarned"] for day in store.recent_days())


def _terminate(db: Path, mode: str) -> tuple[int, float, str]:
    """Start a term-* worker, SIGTERM it once ready; (exit code, seconds to exit, stderr)."""
    deadline = time.monotonic() + DEADLINE_S
    proc = Worker(mode, str(db))
    try:
        assert proc.expect(deadline) == "ready"
        started = time.monotonic()
        proc.proc.send_signal(signal.SIGTERM)
        _, err = proc.proc.communicate(timeout=DEADLINE_S)
        return proc.proc.returncode, time.monotonic() - started, err.decode()
    finally:
        proc.end()


def test_sigterm_with_a_clean_exit_handler_flushes_the_buffer(tmp_path: Path) -> None:
    """SIGTERM turned into ``sys.exit(0)`` (what gunicorn does for its workers) runs
    the exit hook: the 50 buffered calls are stored before the process ends."""
    db = tmp_path / "term.db"
    open_store(f"sqlite:///{db}").close()
    code, _, err = _terminate(db, "term-handler")
    assert code == 0, err
    assert _credits(db) == 50


def test_sigterm_without_a_handler_loses_the_buffer(tmp_path: Path) -> None:
    """Python's default SIGTERM ends the process without atexit: the buffer is lost.
    This pins what the docs tell users, so a change of behaviour is noticed."""
    db = tmp_path / "term.db"
    open_store(f"sqlite:///{db}").close()
    code, _, _ = _terminate(db, "term-default")
    assert code == -signal.SIGTERM
    assert _credits(db) == 0


def test_sigterm_with_the_store_locked_exits_within_stop_timeout(tmp_path: Path) -> None:
    """The final flush cannot write (the file is locked by this test process): the
    worker still exits within its ``stop_timeout`` (0.5 s) and says what it lost."""
    db = tmp_path / "term.db"
    open_store(f"sqlite:///{db}").close()
    with sqlite3.connect(db, isolation_level=None) as locker:
        locker.execute("BEGIN EXCLUSIVE")
        try:
            code, elapsed, err = _terminate(db, "term-locked")
        finally:
            locker.execute("COMMIT")
    assert code == 0, err
    assert elapsed < 0.5 + 3.0, f"exit took {elapsed:.2f}s with stop_timeout=0.5"
    assert "not stored" in err
    assert _credits(db) == 0


if __name__ == "__main__":
    sys.exit(worker(*sys.argv[1:]))
