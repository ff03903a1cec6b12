"""Real gunicorn, three workers, one SQLite file: exact totals after a SIGTERM.

Why: a game backend runs the Flask example under gunicorn, often with ``--preload``,
where the app (and the library's buffer, flush thread and store connection) is
created in the master and then forked. The unit tests of the fork hook cannot show
that a real server neither loses the calls buffered in each worker when it stops nor
counts the master's buffer once per worker. So this starts gunicorn (a subprocess,
``127.0.0.1``, a port the kernel picks) on ``examples/flask_app.py`` once with and
once without ``--preload``, plays a bounded number of real HTTP requests from
concurrent clients (12 players x login, two dungeons, a purchase, logout = 60
requests), checks that nothing reached the store yet (the flush interval is far
longer than the test: every number must come from the workers' exit flush), stops
gunicorn with SIGTERM, and finds the exact totals in the store.

The app module written for gunicorn also tracks one ``server.boot`` event where the
app is created: under ``--preload`` that is the master, before the fork, and the
event must be stored exactly once (by the master at its exit), not once per worker;
without it, once per worker.

Every wait has a deadline; gunicorn runs in its own session and is killed as a group
if anything goes wrong, so no process outlives the test.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, suppress
from pathlib import Path
from typing import Any

import gunicorn
import pytest
import requests

from gso_analytics import open_store

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
WORKERS = 3
PLAYERS = 12
CLIENT_THREADS = 6
TOKEN = "gunicorn-test-token"
#: Far longer than the test: nothing may be stored before the shutdown flushes.
FLUSH_INTERVAL_S = 600
BOOT_TIMEOUT_S = 60.0
REQUEST_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 60.0

#: The gunicorn app: the example app, plus one (passive) event recorded where it is created.
APP_MODULE = """
import os

from flask_app import create_app
from gso_analytics.integrations.flask import get_analytics

# The boot record is sent by the server, not a player: passive (no activity, no session).
app = create_app({"GSO_ANALYTICS_OPTIONS": {"passive_events": ["server.boot"]}})
get_analytics(app).track("server.boot", "server", {"pid": os.getpid()})
open(f"ready-{os.getpid()}", "w").close()  # in --chdir: tells the test this process is ready
"""

#: Each player's requests, in order: (path, extra body).
SCRIPT = [
    ("/login", {}),
    ("/dungeon", {"dungeon": "crypt"}),
    ("/dungeon", {"dungeon": "tower"}),
    ("/purchase", {"pack": "gems_100"}),
    ("/logout", {}),
]


def _supports_control_socket_flag() -> bool:
    version = tuple(int(part) for part in re.findall(r"\d+", gunicorn.__version__)[:2])
    return version >= (25, 1)


class Supervisor:
    """A server process run in its own session (its workers in its process group), and
    its log: stopped as a process manager does, killed whole when a test fails."""

    name = "the server"
    proc: subprocess.Popen[bytes]
    log_path: Path
    log_file: Any

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> int:
        """SIGTERM, as a process manager stops it; the supervisor's exit code."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"{self.name} did not stop within {STOP_TIMEOUT_S}s:\n{self.log()}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=STOP_TIMEOUT_S)
        self.log_file.close()


class Gunicorn(Supervisor):
    """One gunicorn master (and its workers), its log, and its port."""

    name = "gunicorn"

    def __init__(
        self,
        tmp_path: Path,
        db_url: str,
        preload: bool,
        *,
        workers: int = WORKERS,
        app_module: str = APP_MODULE,
        env: dict[str, str] | None = None,
    ) -> None:
        (tmp_path / "gunicorn_app.py").write_text(app_module, encoding="utf-8")
        self.log_path = tmp_path / "gunicorn.log"
        self.tmp_path = tmp_path
        self.preload = preload
        self.workers = workers
        args = [
            sys.executable,
            "-m",
            "gunicorn",
            "--workers",
            str(workers),
            "--bind",
            "127.0.0.1:0",
            "--chdir",
            str(tmp_path),
            "--pythonpath",
            str(EXAMPLES),
            "--graceful-timeout",
            "30",
            "--log-level",
            "info",
        ]
        if _supports_control_socket_flag():
            args.append("--no-control-socket")  # else every gunicorn shares ~/.gunicorn/
        if preload:
            args.append("--preload")
        args.append("gunicorn_app:app")
        env = {
            **os.environ,
            "GSO_ANALYTICS_STORE": db_url,
            "GSO_ANALYTICS_FLUSH_INTERVAL": str(FLUSH_INTERVAL_S),
            "GSO_ANALYTICS_METRICS_TOKEN": TOKEN,
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        self.log_file = self.log_path.open("w", encoding="utf-8")
        self.proc = subprocess.Popen(
            args,
            cwd=tmp_path,
            env=env,
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, killed whole on failure
        )
        self.base_url = ""

    def booted_workers(self) -> set[int]:
        return {int(pid) for pid in re.findall(r"Booting worker with pid: (\d+)", self.log())}

    def ready(self) -> bool:
        """Every worker has its app: created before the fork, or loaded by each worker."""
        booted = self.booted_workers()
        if len(booted) < self.workers:
            return False
        loaded = {int(path.name.split("-")[1]) for path in self.tmp_path.glob("ready-*")}
        return self.proc.pid in loaded if self.preload else booted <= loaded

    def wait_ready(self) -> None:
        """The port from the log, every worker with its app, and one authorised answer."""
        deadline = time.monotonic() + BOOT_TIMEOUT_S
        while not self.base_url:
            if self.proc.poll() is not None:
                pytest.fail(f"gunicorn exited with {self.proc.returncode}:\n{self.log()}")
            found = re.search(r"Listening at: (http://127\.0\.0\.1:\d+)", self.log())
            if found:
                self.base_url = found.group(1)
            elif time.monotonic() > deadline:
                pytest.fail(f"gunicorn did not listen within {BOOT_TIMEOUT_S}s:\n{self.log()}")
            else:
                time.sleep(0.05)
        while not self.ready():
            if time.monotonic() > deadline:
                pytest.fail(f"{self.workers} workers did not load the app in time:\n{self.log()}")
            time.sleep(0.05)
        while True:  # the metrics endpoint, as a scraper would call it; nothing to flush yet
            with suppress(requests.RequestException):
                response = requests.get(
                    f"{self.base_url}/metrics",
                    headers={"Authorization": f"Bearer {TOKEN}"},
                    timeout=REQUEST_TIMEOUT_S,
                )
                if response.status_code == 200:
                    assert response.json()["dau"] == 0
                    return
            if time.monotonic() > deadline:
                pytest.fail(f"gunicorn did not answer within {BOOT_TIMEOUT_S}s:\n{self.log()}")
            time.sleep(0.05)


@pytest.fixture
def start_gunicorn(tmp_path: Path) -> Iterator:
    started: list[Gunicorn] = []

    def start(db_url: str, preload: bool, **options: Any) -> Gunicorn:
        server = Gunicorn(tmp_path, db_url, preload, **options)
        started.append(server)
        return server

    yield start
    for server in started:
        server.kill()


def play(base_url: str, player: int) -> list[int]:
    """One player's session, request after request; the pids of the workers that answered."""
    user = {"user_id": f"player-{player}", "username": f"Player {player}"}
    pids = []
    for path, extra in SCRIPT:
        response = requests.post(f"{base_url}{path}", json={**user, **extra}, timeout=15)
        assert response.status_code == 200, response.text
        pids.append(response.json()["pid"])
    return pids


@pytest.mark.parametrize("preload", [True, False], ids=["preload", "no-preload"])
def test_gunicorn_workers_lose_nothing_and_count_nothing_twice(
    tmp_path: Path, start_gunicorn, preload: bool
) -> None:
    db_url = f"sqlite:///{tmp_path}/game.db"
    server: Gunicorn = start_gunicorn(db_url, preload)
    server.wait_ready()
    workers = server.booted_workers()

    with ThreadPoolExecutor(CLIENT_THREADS) as pool:
        played = list(pool.map(lambda p: play(server.base_url, p), range(PLAYERS)))
    answered = Counter(pid for pids in played for pid in pids)
    assert sum(answered.values()) == PLAYERS * len(SCRIPT)
    assert set(answered) <= workers, (answered, workers)
    assert len(answered) >= 2, f"one worker answered everything: {answered}"
    # Players whose logout was handled by another worker than their login.
    crossed = sum(pids[0] != pids[-1] for pids in played)

    with closing(open_store(db_url)) as store:
        assert store.recent_days(10) == [], "stored before shutdown: not the exit flush"

    assert server.stop() == 0
    log = server.log()
    for pid in workers:
        assert f"Worker exiting (pid: {pid})" in log
    assert "Traceback" not in log and "not stored" not in log, log

    with closing(open_store(db_url)) as store:
        days = store.recent_days(10)
        totals: Counter[str] = Counter()
        for day in days:
            totals.update(day.counters)
        months = {day.month for day in days}
        events = Counter(event.event for event in store.get_events(limit=10_000))
        boot_pids = {json.loads(e.data)["pid"] for e in store.get_events("server", limit=100)}
        sessions = [s for p in range(PLAYERS) for s in store.get_sessions(f"player-{p}")]
        open_sessions = store.count_open_sessions()
        mau = sum(store.get_month(month).mau for month in months)

    # One login per player: dau summed over days is exact even across midnight.
    assert totals["dau"] == PLAYERS and mau == PLAYERS
    assert totals["sessionCount"] == PLAYERS
    assert totals["dungeonsRun"] == 2 * PLAYERS
    assert totals["creditsEarned"] == (50 + 120) * PLAYERS
    assert totals["gemsPurchased"] == 100 * PLAYERS
    assert totals["stripeRevenue"] == 199 * PLAYERS
    assert events == {
        "dungeon.complete": 2 * PLAYERS,
        "credits.earn": 2 * PLAYERS,
        "gems.purchase": PLAYERS,
        "stripe.payment": PLAYERS,
        "server.boot": 1 if preload else len(workers),
    }
    # Created in the master under --preload: stored once, by the master, not per worker.
    assert boot_pids == ({server.proc.pid} if preload else workers)
    # Every session closed (also when the logout reached another worker than the login).
    assert open_sessions == 0
    assert len(sessions) == PLAYERS
    assert all(s.logout_at is not None and not s.timed_out for s in sessions)
    assert totals["totalSessionS"] == sum(s.duration_s for s in sessions)
    print(
        f"\n{'--preload' if preload else 'no --preload'}: requests per worker"
        f" {dict(answered)}, {crossed}/{PLAYERS} logouts on another worker than the login"
    )
