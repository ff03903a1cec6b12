"""Real gunicorn (2 workers), real Prometheus scraping it with a bearer token, across a
replayed midnight: what issue 16 found wrong with a real Prometheus, checked on one.

- every scrape holds every worker's health series (from the heartbeats in the store),
  checked on the scrapes this test makes and on Prometheus' own samples (``count`` of
  the per-worker series never drops between two scrapes);
- the ``_total`` counters equal the store's totals and an oracle kept from the played
  requests, and never decrease in Prometheus across midnight (``resets() == 0``),
  while the day's gauge restarts;
- ``promtool check metrics`` is clean on a live scrape;
- every PromQL expression of the Grafana dashboard evaluates, with data, on this
  Prometheus.

Midnight is replayed, not waited for: the app module gives the library a clock that
shows 00:00 UTC a few seconds after the workers start (every worker computes the same
offset from ``MIDNIGHT_AT``). Every wait has a deadline; both servers run in their own
sessions and are killed by their process groups at the end.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import closing, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from test_gunicorn import Gunicorn, Supervisor, play
from test_prometheus import DASHBOARD

from gso_analytics import open_store

if TYPE_CHECKING:
    from conftest import RealTool

pytestmark = pytest.mark.slow

TOKEN = "gunicorn-test-token"
WORKERS = 2
#: Seconds from the workers' start to the replayed midnight, and how long to play after.
BEFORE_MIDNIGHT_S = 12.0
AFTER_MIDNIGHT_S = 8.0
DEADLINE_S = 60.0
#: What one player's script (test_gunicorn.SCRIPT) adds to the store's totals.
PER_PLAYER = {
    "creditsEarned": 50 + 120,
    "dungeonsRun": 2,
    "gemsPurchased": 100,
    "stripeRevenue": 199,
    "sessionCount": 1,
}

APP_MODULE = """
import os
from datetime import UTC, datetime

import flask_app
from gso_analytics.integrations.flask import GSOAnalytics

# The library's clock shows midnight (UTC) at MIDNIGHT_AT, in every worker alike.
MIDNIGHT = datetime(2026, 1, 1, tzinfo=UTC)
OFFSET = MIDNIGHT - datetime.fromtimestamp(float(os.environ["MIDNIGHT_AT"]), UTC)

flask_app.analytics_ext = GSOAnalytics(clock=lambda: datetime.now(UTC) + OFFSET)
app = flask_app.create_app()
open(f"ready-{os.getpid()}", "w").close()  # in --chdir: tells the test this process is ready
"""


def free_port() -> int:
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Prometheus:
    """A real Prometheus server scraping ``target`` every second with the token."""

    def __init__(self, binary: str, tmp_path: Path, target: str) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global:\n"
            "  scrape_interval: 1s\n"
            "  scrape_timeout: 1s\n"
            "scrape_configs:\n"
            "  - job_name: gso_analytics\n"
            "    authorization:\n"
            f"      credentials: {TOKEN}\n"
            "    static_configs:\n"
            f"      - targets: ['{target}']\n",
            encoding="utf-8",
        )
        self.log_path = tmp_path / "prometheus.log"
        self.log_file = self.log_path.open("w", encoding="utf-8")
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def api(self, path: str, **params: Any) -> Any:
        response = requests.get(f"{self.base_url}/api/v1/{path}", params=params, timeout=15)
        body = response.json()
        assert body["status"] == "success", (params, body)
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return self.api("query", query=expr)["result"]

    def scalar(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def series(self, expr: str, start: float, end: float) -> list[float]:
        """One series' values at every second of [start, end]."""
        result = self.api("query_range", query=expr, start=start, end=end, step=1)["result"]
        assert len(result) == 1, (expr, result)
        return [float(value) for _, value in result[0]["values"]]

    def wait_for(self, expr: str, expected: float) -> None:
        deadline = time.monotonic() + DEADLINE_S
        while True:
            with suppress(requests.RequestException):
                if self.scalar(expr) == expected:
                    return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"{expr} never reached {expected}:\n{self.log()}")
            time.sleep(0.25)

    def stop(self) -> None:
        if self.proc.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.log_file.close()


def scrape(base_url: str) -> dict[str, dict[tuple, float]]:
    """One scrape as Prometheus' classic format gives it: name -> labels -> value."""
    response = requests.get(
        f"{base_url}/metrics",
        headers={"Authorization": f"Bearer {TOKEN}", "Accept": "text/plain;version=0.0.4"},
        timeout=15,
    )
    assert response.status_code == 200, response.text
    found: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            found.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def pids_in(exposition: dict[str, dict[tuple, float]]) -> set[int]:
    return {int(dict(labels)["pid"]) for labels in exposition["gso_analytics_flushed_calls_total"]}


def wait_for_workers(prom: Prometheus, base_url: str, workers: set[int]) -> None:
    """Every worker (flushing often) in the app's own scrapes, then in Prometheus':
    the target up, one health series per worker."""
    deadline = time.monotonic() + DEADLINE_S
    while pids_in(scrape(base_url)) != workers:
        assert time.monotonic() < deadline, "the workers never all appeared in a scrape"
        time.sleep(0.2)
    prom.wait_for('up{job="gso_analytics"}', 1)
    prom.wait_for("count(gso_analytics_flushed_calls_total)", len(workers))


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[Any]]:
    started: list[Any] = []
    yield started
    for server in reversed(started):
        if isinstance(server, Supervisor):
            server.kill()
        else:
            server.stop()


def test_prometheus_scraping_gunicorn_sees_every_worker_and_exact_totals_across_midnight(
    tmp_path: Path, servers: list[Any], real_tool: RealTool
) -> None:
    prometheus_bin = real_tool("prometheus", install="apt-get install prometheus")
    promtool = real_tool("promtool", install="apt-get install prometheus")
    db_url = f"sqlite:///{tmp_path}/game.db"
    midnight_at = time.time() + BEFORE_MIDNIGHT_S
    app = Gunicorn(
        tmp_path,
        db_url,
        preload=False,
        workers=WORKERS,
        app_module=APP_MODULE,
        env={"GSO_ANALYTICS_FLUSH_INTERVAL": "1", "MIDNIGHT_AT": str(midnight_at)},
    )
    servers.append(app)
    app.wait_ready()
    workers = app.booted_workers()
    assert len(workers) == WORKERS
    target = app.base_url.removeprefix("http://")
    prom = Prometheus(prometheus_bin, tmp_path, target)
    servers.append(prom)

    # Both workers flush every second: soon every scrape lists both.
    wait_for_workers(prom, app.base_url, workers)
    both_since = time.time()

    # Play until past the replayed midnight, scraping as Prometheus does meanwhile.
    players = iter(range(1_000_000))
    played = []
    stop = threading.Event()

    def player_loop() -> None:
        while not stop.is_set():
            player = next(players)
            play(app.base_url, player)
            played.append(player)

    threads = [threading.Thread(target=player_loop) for _ in range(3)]
    for thread in threads:
        thread.start()
    scrapes = []
    try:
        while time.time() < midnight_at + AFTER_MIDNIGHT_S:
            scrapes.append(scrape(app.base_url))
            time.sleep(0.3)
    finally:
        stop.set()
        for thread in threads:
            thread.join(DEADLINE_S)
    assert played and len(scrapes) > 20
    # Every scrape, whichever worker answered it, holds every worker's health.
    for exposition in scrapes:
        assert pids_in(exposition) == workers
        assert set(exposition["gso_analytics_last_flush_timestamp_seconds"]) == {
            labels for labels in exposition["gso_analytics_flushed_calls_total"]
        }

    # Everything flushed (1 s interval): the totals equal the store's and the oracle's.
    oracle = {field: amount * len(played) for field, amount in PER_PLAYER.items()}
    deadline = time.monotonic() + DEADLINE_S
    while True:
        final = scrape(app.base_url)
        exposed = {
            "creditsEarned": final["gso_analytics_credits_earned_total"][()],
            "dungeonsRun": final["gso_analytics_dungeons_run_total"][()],
            "gemsPurchased": final["gso_analytics_gems_purchased_total"][()],
            "stripeRevenue": final["gso_analytics_stripe_revenue_cents_total"][()],
            "sessionCount": final["gso_analytics_sessions_total"][()],
        }
        if exposed == oracle or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert exposed == oracle
    with closing(open_store(db_url)) as store:
        stored = store.get_totals()
        days = [day.day for day in store.recent_days(10)]
    assert {field: stored[field] for field in oracle} == oracle
    assert days == ["2026-01-01", "2025-12-31"], "the replayed midnight did not happen"
    summary = "gso_analytics_session_duration_seconds"
    assert final[f"{summary}_count"][()] == stored.get("timedSessions", 0)
    assert final[f"{summary}_sum"][()] == stored.get("timedSessionS", 0)

    # Prometheus saw the same: the total reached the oracle, never dropped, while the
    # day's gauge restarted at midnight; both workers were in every one of its scrapes.
    total = "max without(instance) (gso_analytics_credits_earned_total)"
    prom.wait_for(total, oracle["creditsEarned"])
    now = time.time()
    credits = prom.series(total, both_since, now)
    assert credits == sorted(credits) and credits[-1] > credits[0]
    window = f"{int(now - both_since) + 5}s"
    assert prom.scalar(f"resets(gso_analytics_credits_earned_total[{window}])") == 0
    today = prom.series("gso_analytics_today_credits_earned", both_since, now)
    assert any(later < earlier for earlier, later in itertools.pairwise(today))
    workers_seen = prom.series("count(gso_analytics_flushed_calls_total)", both_since, now)
    assert set(workers_seen) == {WORKERS}, workers_seen

    # promtool on a live scrape, and every dashboard query on this Prometheus.
    body = requests.get(
        f"{app.base_url}/metrics?format=prometheus",
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=15,
    ).text
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=body, capture_output=True, text=True, timeout=60
    )
    assert (checked.returncode, checked.stdout + checked.stderr) == (0, "")
    dashboard = json.loads(DASHBOARD.read_text())
    empty = []
    for panel in dashboard["panels"]:
        for target_ in panel.get("targets", []):
            expr = target_["expr"].replace("$__rate_interval", "15s")
            if not prom.query(expr):
                empty.append((panel["title"], expr))
    assert empty == [], f"dashboard queries without data: {empty}"
    assert app.stop() == 0
