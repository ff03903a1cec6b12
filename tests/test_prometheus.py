"""The Prometheus side: the exposition read from the store (every worker's health, the
all-time counters across midnight), promtool on both formats, the alert rules and
their unit tests, and the Grafana dashboard's structure.

The dashboard's queries are evaluated against a real Prometheus scraping real
gunicorn workers in ``tests/test_prometheus_scrape.py``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml
from test_flask import samples

from gso_analytics import Analytics
from gso_analytics.heartbeats import process_identity
from gso_analytics.integrations import prometheus
from gso_analytics.model import Heartbeat

if TYPE_CHECKING:
    from conftest import AnalyticsFactory, FakeClock, RealTool

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "examples" / "prometheus" / "alerts.yml"
ALERT_TESTS = ROOT / "examples" / "prometheus" / "alerts_test.yml"
DASHBOARD = ROOT / "examples" / "grafana" / "gso_analytics.json"
OPENMETRICS = "application/openmetrics-text; version=1.0.0"
COUNTERS = {"quest.complete": "questsCompleted", "boss.kill": "bossKills"}


def scrape(analytics: Analytics, accept: str | None = None) -> str:
    body, _ = prometheus.render(prometheus.take_scrape(analytics, business=True), accept)
    return body.decode()


def other_worker(analytics: Analytics, host: str, pid: int, **stats: Any) -> Heartbeat:
    """A heartbeat as another worker (another process or host) would write it."""
    now = analytics.kpis.clock()
    return Heartbeat(
        f"{host}:{pid}",
        host,
        pid,
        now,
        now + timedelta(seconds=300),
        {"flushed": 0, "buffered": 0, "flush_interval_s": 60, **stats},
        {"webhook": {"delivered": 4, "queued": 1}},
    )


# -- the exposition ------------------------------------------------------------------------


def test_totals_equal_the_store_and_never_drop_across_a_replayed_midnight(
    store: Any, make_analytics: AnalyticsFactory, clock: FakeClock
) -> None:
    """The day's gauges restart at midnight; the ``_total`` counters go on, equal to
    the store's totals (every worker's), custom counters included."""
    a = make_analytics(store, counters=COUNTERS)
    b = make_analytics(store, counters=COUNTERS)  # a second worker on the same store
    clock.set(clock.now.replace(hour=23, minute=59))
    seen = []
    for step in range(8):  # from 23:59:00 to 00:00:45, 15 s apart
        worker = (a, b)[step % 2]
        worker.track("credits.earn", f"u{step}", {"amount": 100 + step})
        worker.track("boss.kill", f"u{step}")
        b.flush()
        seen.append(samples(scrape(a)))
        clock.advance(15)
    credits = [s["gso_analytics_credits_earned_total"][()] for s in seen]
    today = [s["gso_analytics_today_credits_earned"][()] for s in seen]
    assert credits == sorted(credits) and credits[-1] == sum(100 + i for i in range(8))
    # Midnight falls after the 4th step: the day's gauge restarts, the total does not.
    assert today == [100, 201, 303, 406, 104, 209, 315, 422]
    assert [s["gso_analytics_boss_kills_total"][()] for s in seen] == list(range(1, 9))
    totals = store.get_totals()
    last = seen[-1]
    for field in ("creditsEarned", "bossKills", "dau", "newUsers"):
        if field in prometheus.NOT_COUNTERS:
            continue
        assert last[prometheus.total_counter(field) + "_total"][()] == totals.get(field, 0)


def test_a_registration_moved_to_an_earlier_day_is_withdrawn_never_subtracted(
    store: Any, make_analytics: AnalyticsFactory, clock: FakeClock
) -> None:
    """A worker flushing late an earlier registration of a player counted on a later
    day moves them: ``new_users_total`` only grows, the move is also counted in
    ``new_users_withdrawn_total``, and their difference is the players registered."""
    a = make_analytics(store)
    b = make_analytics(store)
    b.track("user.register", "u1")  # buffered in b: the earlier registration
    clock.advance(days=1)
    a.track("user.register", "u1")
    a.flush()
    b.flush()
    exposition = samples(scrape(a))
    total = exposition[prometheus.total_counter("newUsers") + "_total"][()]
    withdrawn = exposition[prometheus.total_counter("newUsers") + "_withdrawn_total"][()]
    assert (total, withdrawn) == (2, 1)


def test_every_live_worker_is_in_every_scrape_and_an_expired_one_leaves(
    store: Any, make_analytics: AnalyticsFactory, clock: FakeClock
) -> None:
    analytics = make_analytics(store, flush_interval=10).start()  # a worker
    store.save_heartbeat(other_worker(analytics, "web-2", 4242, flushed=17))
    exposition = samples(scrape(analytics))
    _, host, pid = process_identity()
    flushed = exposition["gso_analytics_flushed_calls_total"]
    assert flushed == {
        (("host", host), ("pid", str(pid))): 0,
        (("host", "web-2"), ("pid", "4242")): 17,
    }
    forwarded = exposition["gso_analytics_forward_delivered_events_total"]
    assert forwarded == {(("forwarder", "webhook"), ("host", "web-2"), ("pid", "4242")): 4}
    clock.advance(301)  # web-2 wrote nothing for longer than its heartbeat lives
    exposition = samples(scrape(analytics))
    assert set(exposition["gso_analytics_flushed_calls_total"]) == {
        (("host", host), ("pid", str(pid)))
    }


def test_last_flush_timestamp_moves_with_empty_flushes(
    store: Any, make_analytics: AnalyticsFactory, clock: FakeClock
) -> None:
    """An idle worker is not a stale one: its empty flushes move the timestamp."""
    analytics = make_analytics(store).start()
    first = samples(scrape(analytics))["gso_analytics_last_flush_timestamp_seconds"]
    clock.advance(30)
    analytics.flush()  # nothing buffered
    (beat,) = store.live_heartbeats(clock.now)
    assert beat.at == clock.now
    later = samples(scrape(analytics))["gso_analytics_last_flush_timestamp_seconds"]
    assert list(later.values()) == [clock.now.timestamp()]
    ((_, moved),), ((_, before),) = later.items(), first.items()
    assert moved - before == 30


def test_info_mau30_and_the_session_summary(
    store: Any, make_analytics: AnalyticsFactory, clock: FakeClock
) -> None:
    analytics = make_analytics(store, tz="Europe/Paris")
    for day, user in enumerate(["a", "b", "c"]):  # three players, on three days
        analytics.on_login(user, user)
        clock.advance(90 + day)
        analytics.on_logout(user)
        analytics.flush()
        clock.advance(hours=24)
    analytics.on_login("d", "d")  # open, 0 s so far: in the summary's count
    exposition = samples(scrape(analytics))
    info = exposition["gso_analytics_info"]
    ((labels, value),) = info.items()
    assert value == 1 and dict(labels)["tz"] == "Europe/Paris"
    assert dict(labels)["store"] == store.schemes[0]
    assert exposition["gso_analytics_mau30"] == {(): 4}  # a, b, c in the last 30 days, d today
    assert exposition["gso_analytics_dau"] == {(): 1}
    assert exposition["gso_analytics_session_duration_seconds_count"] == {(): 4}
    assert exposition["gso_analytics_session_duration_seconds_sum"] == {(): 90 + 91 + 92}
    assert "gso_analytics_avg_session_minutes" not in exposition
    assert "gso_analytics_today_counter" not in exposition


def test_both_formats_carry_the_same_series(store: Any, make_analytics: AnalyticsFactory) -> None:
    analytics = make_analytics(store, counters=COUNTERS)
    analytics.track("quest.complete", "u1")
    store.save_heartbeat(other_worker(analytics, "web-2", 7))
    classic = samples(scrape(analytics))
    openmetrics = samples(scrape(analytics, OPENMETRICS), openmetrics=True)
    openmetrics = {k: v for k, v in openmetrics.items() if not k.endswith("_created")}
    assert classic.keys() == openmetrics.keys()
    for name in ("gso_analytics_quests_completed_total", "gso_analytics_today_quests_completed"):
        assert classic[name] == openmetrics[name] == {(): 1}


# -- promtool ---------------------------------------------------------------------------------


def test_promtool_finds_nothing_to_lint(
    store: Any, make_analytics: AnalyticsFactory, real_tool: RealTool
) -> None:
    """``promtool check metrics`` is clean on the classic format, custom counters and
    forwarders included. (promtool 2.x parses the classic text format only: on the
    OpenMetrics body it reports every counter, whose family name has no ``_total``
    there by the OpenMetrics rules; the OpenMetrics body is checked by
    ``prometheus_client``'s strict parser above and scraped by Prometheus itself in
    ``test_prometheus_scrape.py``.)"""
    promtool = real_tool("promtool", install="apt-get install prometheus")
    analytics = make_analytics(store, counters=COUNTERS)
    analytics.track("boss.kill", "u1")
    store.save_heartbeat(other_worker(analytics, "web-2", 7))
    body = scrape(analytics)
    assert "gso_analytics_forward_delivered_events_total" in body
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=body, capture_output=True, text=True, timeout=60
    )
    assert (checked.returncode, checked.stdout + checked.stderr) == (0, "")


def test_promtool_would_report_a_bad_name(real_tool: RealTool) -> None:
    """The check above can fail: promtool does report the names issue 16 found."""
    promtool = real_tool("promtool", install="apt-get install prometheus")
    bad = (
        "# HELP gso_analytics_avg_session_minutes Mean.\n"
        "# TYPE gso_analytics_avg_session_minutes gauge\n"
        "gso_analytics_avg_session_minutes 6\n"
    )
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=bad, capture_output=True, text=True, timeout=60
    )
    assert checked.returncode != 0 and "base unit" in checked.stdout + checked.stderr


def test_alert_rules_are_valid(real_tool: RealTool) -> None:
    promtool = real_tool("promtool", install="apt-get install prometheus")
    checked = subprocess.run(
        [promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 7 rules found" in checked.stdout


def test_every_alert_has_a_case_that_fires_and_one_that_does_not(real_tool: RealTool) -> None:
    promtool = real_tool("promtool", install="apt-get install prometheus")
    tested = subprocess.run(
        [promtool, "test", "rules", str(ALERT_TESTS)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ALERT_TESTS.parent,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    alerts = {rule["alert"] for rule in yaml.safe_load(ALERTS.read_text())["groups"][0]["rules"]}
    cases = yaml.safe_load(ALERT_TESTS.read_text())["tests"]
    firing = {
        case["alertname"]
        for test in cases
        for case in test["alert_rule_test"]
        if case.get("exp_alerts")
    }
    quiet = {
        case["alertname"]
        for test in cases
        for case in test["alert_rule_test"]
        if not case.get("exp_alerts")
    }
    assert (
        firing
        == quiet
        == alerts
        == {
            "GsoAnalyticsTargetDown",
            "GsoAnalyticsCallsDropped",
            "GsoAnalyticsCallsRejected",
            "GsoAnalyticsFlushFailing",
            "GsoAnalyticsBufferGrowing",
            "GsoAnalyticsFlushStale",
            "GsoAnalyticsBatchesQuarantined",
        }
    )


# -- the Grafana dashboard -----------------------------------------------------------------------


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every query of the dashboard."""
    doc = json.loads(DASHBOARD.read_text())
    return [
        (panel["title"], target["expr"])
        for panel in doc["panels"]
        for target in panel.get("targets", [])
    ]


def test_dashboard_is_a_grafana_dashboard() -> None:
    doc = json.loads(DASHBOARD.read_text())
    assert {"title", "uid", "panels", "schemaVersion", "templating", "time"} <= doc.keys()
    (variable,) = doc["templating"]["list"]
    assert (variable["name"], variable["type"], variable["query"]) == (
        "datasource",
        "datasource",
        "prometheus",
    )
    ids = [panel["id"] for panel in doc["panels"]]
    assert len(ids) == len(set(ids))
    for panel in doc["panels"]:
        grid = panel["gridPos"]
        assert grid.keys() == {"h", "w", "x", "y"} and grid["x"] + grid["w"] <= 24
        assert panel["type"] in {"row", "stat", "timeseries", "table"}
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        refs = [target["refId"] for target in panel["targets"]]
        assert refs and len(refs) == len(set(refs))
    titles = {title for title, _ in dashboard_queries()}
    exprs = " ".join(expr for _, expr in dashboard_queries())
    for needed in ("DAU", "MAU (rolling 30 days)", "Sessions", "Revenue per hour"):
        assert needed in titles
    for metric in ("mau30", "stripe_revenue_cents_total", "credits_earned_total", "buffered"):
        assert f"gso_analytics_{metric}" in exprs


@pytest.mark.parametrize("title,expr", dashboard_queries())
def test_dashboard_queries_name_exposed_metrics_only(title: str, expr: str) -> None:
    """Each metric a query names is one the exposition has (the real evaluation is in
    test_prometheus_scrape.py)."""
    exposed = {
        f"{name}_total" if kind == prometheus.COUNTER else name
        for name, kind, _ in prometheus.HEALTH.values()
    } | {
        prometheus.LAST_FLUSH[0],
        "gso_analytics_dau",
        "gso_analytics_mau",
        "gso_analytics_mau30",
        "gso_analytics_active_sessions",
        "gso_analytics_info",
        "gso_analytics_session_duration_seconds_sum",
        "gso_analytics_session_duration_seconds_count",
        prometheus.SESSION_WITHDRAWN[0] + "_total",
        prometheus.total_counter("totalSessionS") + "_withdrawn_total",
        prometheus.total_counter("newUsers") + "_withdrawn_total",
    }
    for field in ("newUsers", "stripeRevenue", "sessionCount", "creditsEarned", "creditsSpent",
                  "gemsEarned", "gemsSpent", "gemsPurchased", "dungeonsRun", "craftsCompleted",
                  "pvpBattles", "raidBattles", "marketSales"):  # fmt: skip
        exposed |= {prometheus.today_gauge(field), prometheus.total_counter(field) + "_total"}
    for name in re.findall(r"gso_analytics_\w+", expr):
        assert name in exposed, (title, name)


@pytest.mark.parametrize("ci,outcome", [("true", "1 failed"), ("", "1 skipped")])
def test_a_missing_tool_fails_under_ci_and_skips_elsewhere(
    tmp_path: Path, ci: str, outcome: str
) -> None:
    """The ``real_tool`` fixture, run by a real pytest whose PATH holds no tool."""
    empty = tmp_path / "bin"
    empty.mkdir()
    env = {**os.environ, "PATH": str(empty), "CI": ci}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-rfs",
            f"{Path(__file__).name}::test_alert_rules_are_valid",
        ],
        cwd=Path(__file__).parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert outcome in run.stdout, run.stdout + run.stderr
    assert "promtool is not installed (apt-get install prometheus)" in run.stdout
