"""Real ASGI servers (three worker processes), the FastAPI WebSocket example, Prometheus.

Why: a WebSocket game's session is its connection, and the only place that can tell
whether a dropped connection still ends its session, or whether three workers' flushes
and their shutdowns lose or double anything, is a real server. So this starts uvicorn
(``--workers 3``), and gunicorn with three uvicorn workers (``--preload``), a subprocess
on ``127.0.0.1``, on ``examples/fastapi_app.py`` with one SQLite store, and a real
Prometheus scraping ``/metrics`` with the bearer token. 50 players connect, play a fixed
script (two dungeons, a purchase, pings), and leave: most close the connection, every
fifth drops it (the TCP connection is reset, with no close frame). A client-side oracle
keeps what they did; then

- while the server runs: Prometheus' scrapes list the 3 workers (their heartbeats in
  the store) and its totals reach the oracle's;
- after SIGTERM (each worker's lifespan shutdown, the final flush): the stored totals
  equal the oracle, every player has exactly one session, closed by a logout (dropped
  connections included), none longer than the client saw it.

Every wait has a deadline; both servers run in their own process groups, killed at the
end whatever happens.
"""

from __future__ import annotations

import json
import os
import re
import socket
import struct
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import requests
import test_prometheus_scrape
from test_gunicorn import Supervisor, _supports_control_socket_flag
from test_prometheus_scrape import TOKEN, Prometheus, free_port, wait_for_workers
from websockets.sync.client import connect

from gso_analytics import open_store

if TYPE_CHECKING:
    from conftest import RealTool

pytestmark = pytest.mark.slow
#: The servers a test starts, killed at its end (the fixture of the Prometheus test).
servers = test_prometheus_scrape.servers

ROOT = Path(__file__).resolve().parent.parent
WORKERS = 3
PLAYERS = 50
CLIENT_THREADS = 10
DROP_EVERY = 5  # players 0, 5, 10, ... drop the connection instead of closing it
DEADLINE_S = 60.0
#: Each player's messages, in order.
SCRIPT = [
    {"action": "dungeon", "dungeon": "crypt"},
    {"action": "ping"},
    {"action": "dungeon", "dungeon": "tower"},
    {"action": "purchase", "pack": "gems_100"},
    {"action": "ping"},
]
#: What one player's script adds to the stored totals.
PER_PLAYER = {
    "dungeonsRun": 2,
    "creditsEarned": 50 + 120,
    "gemsPurchased": 100,
    "stripeRevenue": 199,
    "sessionCount": 1,
}


#: How each server runs the example: uvicorn's own supervisor, and gunicorn with
#: uvicorn workers (``--preload``: the app is made in the master, before the fork).
SERVERS = {
    "uvicorn": [
        "uvicorn",
        "--factory",
        "fastapi_app:create_app",
        "--workers",
        str(WORKERS),
        "--host",
        "127.0.0.1",
        "--port",
        "{port}",
        "--ws",
        "websockets",
        "--timeout-graceful-shutdown",
        "30",
    ],
    "gunicorn-uvicorn-worker": [
        "gunicorn",
        "--worker-class",
        "uvicorn_worker.UvicornWorker",
        "--workers",
        str(WORKERS),
        "--preload",
        "--bind",
        "127.0.0.1:{port}",
        "--graceful-timeout",
        "30",
        "fastapi_app:create_app()",
    ],
}


class Server(Supervisor):
    """One ASGI server (its supervisor and worker processes), its log and its address."""

    def __init__(self, kind: str, tmp_path: Path, db_url: str) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp_path / f"{kind}.log"
        self.log_file = self.log_path.open("w", encoding="utf-8")
        args = [arg.format(port=self.port) for arg in SERVERS[kind]]
        if args[0] == "gunicorn" and _supports_control_socket_flag():
            args.insert(1, "--no-control-socket")  # else every gunicorn shares ~/.gunicorn/
        self.proc = subprocess.Popen(
            [sys.executable, "-m", *args],
            cwd=ROOT / "examples",
            env={
                **os.environ,
                "GSO_ANALYTICS_STORE": db_url,
                "GSO_ANALYTICS_FLUSH_INTERVAL": "1",
                "GSO_ANALYTICS_METRICS_TOKEN": TOKEN,
                "PYTHONUNBUFFERED": "1",
                "PYTHONPATH": str(ROOT / "examples"),
            },
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, killed whole on failure
        )

    def workers(self) -> set[int]:
        return {int(pid) for pid in re.findall(r"Started server process \[(\d+)\]", self.log())}

    def wait_ready(self) -> None:
        """Every worker through its lifespan startup, and one authorised answer."""
        deadline = time.monotonic() + DEADLINE_S
        while self.log().count("Application startup complete.") < WORKERS:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the server's {WORKERS} workers did not start:\n{self.log()}")
            time.sleep(0.1)
        while True:
            with suppress(requests.RequestException):
                response = requests.get(
                    f"{self.base_url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}
                )
                if response.status_code == 200:
                    return
            if time.monotonic() > deadline:
                pytest.fail(f"the server did not answer:\n{self.log()}")
            time.sleep(0.1)


def play(port: int, player: int) -> dict[str, Any]:
    """One player's connection: the script, a few seconds of play, then a clean close or
    a drop. What the client saw: the workers that answered and how long it lasted."""
    url = f"ws://127.0.0.1:{port}/play?user_id=player-{player}&username=Player+{player}"
    dropped = player % DROP_EVERY == 0
    linger = player % 3  # seconds between the last message and the end
    began = time.monotonic()
    pids = set()
    with connect(url, open_timeout=15, close_timeout=15) as ws:
        for message in SCRIPT:
            ws.send(json.dumps(message))
            reply = json.loads(ws.recv(timeout=15))
            assert reply["ok"], reply
            pids.add(reply["pid"])
        time.sleep(linger)
        if dropped:  # the connection dies: no close frame, the TCP connection reset
            ws.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            ws.socket.close()
    return {"pids": pids, "seconds": time.monotonic() - began, "dropped": dropped, "linger": linger}


@pytest.mark.parametrize("kind", SERVERS)
def test_asgi_workers_count_websocket_players_exactly(
    kind: str, tmp_path: Path, servers: list[Any], real_tool: RealTool
) -> None:
    prometheus_bin = real_tool("prometheus", install="apt-get install prometheus")
    db_url = f"sqlite:///{tmp_path}/game.db"
    app = Server(kind, tmp_path, db_url)
    servers.append(app)
    app.wait_ready()
    workers = app.workers()
    assert len(workers) == WORKERS, app.log()
    prom = Prometheus(prometheus_bin, tmp_path, f"127.0.0.1:{app.port}")
    servers.append(prom)

    with ThreadPoolExecutor(CLIENT_THREADS) as pool:
        played = list(pool.map(lambda p: play(app.port, p), range(PLAYERS)))
    answered = Counter(pid for seen in played for pid in seen["pids"])
    assert set(answered) <= workers, (answered, workers)
    assert len(answered) >= 2, f"one worker answered everything: {answered}"
    assert sum(seen["dropped"] for seen in played) == PLAYERS // DROP_EVERY

    # Running: every worker flushes each second, so every scrape lists all three, and
    # Prometheus' totals reach the oracle's once the dropped connections are noticed.
    oracle = {field: amount * PLAYERS for field, amount in PER_PLAYER.items()}
    wait_for_workers(prom, app.base_url, workers)
    prom.wait_for("max(gso_analytics_credits_earned_total)", oracle["creditsEarned"])
    prom.wait_for("max(gso_analytics_sessions_total)", PLAYERS)
    listed = {int(r["metric"]["pid"]) for r in prom.query("gso_analytics_flushed_calls_total")}
    assert listed == workers

    assert app.stop() == 0
    log = app.log()
    assert log.count("Application shutdown complete.") == WORKERS, log
    assert "Traceback" not in log and "not stored" not in log, log

    with closing(open_store(db_url)) as store:
        totals = store.get_totals()
        days = store.recent_days(10)
        sessions = {p: store.get_sessions(f"player-{p}") for p in range(PLAYERS)}
        open_sessions = store.count_open_sessions()
    assert {field: totals[field] for field in oracle} == oracle
    assert sum(day.counters["dau"] for day in days) == PLAYERS  # exact across a midnight
    assert open_sessions == 0
    for player, seen in enumerate(played):
        [session] = sessions[player]  # one connection, one session, drop or close
        assert session.logout_at is not None and not session.timed_out, (player, session)
        assert seen["linger"] - 1 <= session.duration_s <= seen["seconds"] + 1, (session, seen)
    assert totals["totalSessionS"] == sum(s.duration_s for [s] in sessions.values()) > 0
    print(f"\nconnections answered per worker {dict(answered)}; {PLAYERS // DROP_EVERY} dropped")
