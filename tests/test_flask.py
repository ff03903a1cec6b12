"""The Flask extension and the metrics endpoint, through Flask's test client.

Why here and so thorough: the endpoint serves a game's business numbers, so access is
the first thing pinned (every view and every format: missing, wrong, malformed and
query-string tokens are refused with 401 and ``WWW-Authenticate: Bearer``; no token
configured is a 404 unless made public). Then the numbers: the JSON is the seed's
``getMetrics()`` / ``getLast30Days()``, the Prometheus text parses with
``prometheus_client``'s own parser and carries the same numbers, a failing store is a
503 and never a traceback. The framework-free parts (settings validation, content
negotiation) are tested here once; ``test_django.py`` reuses this module's scenario,
so both integrations are held to the same numbers.
"""

from __future__ import annotations

import gc
import importlib.util
import logging
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from gso_analytics.backends.memory import MemoryStore
from gso_analytics.backends.sqlite import SQLiteStore
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

import gso_analytics.integrations
from gso_analytics import DAILY_FIELDS, Analytics, ConfigurationError, StoreError
from gso_analytics.forwarding import Delivery, EncodedEvent, ForwardedEvent, Forwarder
from gso_analytics.heartbeats import process_identity
from gso_analytics.integrations import config as config_module
from gso_analytics.integrations.config import read_settings
from gso_analytics.integrations.flask import GSOAnalytics, get_analytics
from gso_analytics.integrations.metrics import Format, negotiate
from gso_analytics.integrations.prometheus import (
    FORWARDING,
    HEALTH,
    METRICS_GAUGES,
    NOT_COUNTERS,
    today_gauge,
)
from gso_analytics.testing import RecordingAnalytics, assert_tracked

if TYPE_CHECKING:
    from conftest import FakeClock

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "s3cret-Token_value"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TODAY = "2025-03-14"  # conftest's FakeClock starts here, at noon UTC
YESTERDAY = "2025-03-13"
PROMETHEUS_ACCEPT = (  # what Prometheus 2.x and 3.x send when scraping
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
    "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
VIEWS = ("", "/days", "/stats")
FORMATS: dict[str, dict[str, Any]] = {
    "json": {},
    "accept": {"headers": {"Accept": "text/plain"}},
    "query": {"query_string": {"format": "prometheus"}},
}

# -- the scenario both integrations are tested on ----------------------------------------

#: A game's own counter, to see it in both formats.
COUNTERS = {"quest.complete": "questsCompleted"}


def play(analytics: Analytics, clock: FakeClock) -> None:
    """Yesterday alice plays 10 minutes; today alice plays 90 s and bob is still on."""
    clock.advance(days=-1)
    analytics.on_login("alice", "Alice")
    analytics.track("credits.earn", "alice", {"amount": 30})
    clock.advance(minutes=10)
    analytics.on_logout("alice")
    clock.advance(days=1, minutes=-10)  # back to today, noon
    analytics.on_login("alice", "Alice")
    analytics.on_login("bob", "Bob")
    for _ in range(2):
        analytics.track("dungeon.complete", "bob", {"dungeon": "crypt"})
        analytics.track("credits.earn", "bob", {"amount": 50})
    analytics.track("gems.purchase", "bob", {"gems": 100})
    analytics.track("stripe.payment", "bob", {"amountCents": 199})
    analytics.track("quest.complete", "alice")
    clock.advance(seconds=90)
    analytics.on_logout("alice")


SEED_FIELDS = {
    "newUsers": 0,
    "creditsEarned": 0,
    "creditsSpent": 0,
    "gemsEarned": 0,
    "gemsSpent": 0,
    "gemsPurchased": 0,
    "stripeRevenue": 0,
    "dungeonsRun": 0,
    "craftsCompleted": 0,
    "pvpBattles": 0,
    "raidBattles": 0,
    "marketSales": 0,
}
EXPECTED_TODAY = {
    "day": TODAY,
    "month": "2025-03",
    "dau": 2,
    **SEED_FIELDS,
    "creditsEarned": 100,
    "gemsPurchased": 100,
    "stripeRevenue": 199,
    "dungeonsRun": 2,
    "totalSessionS": 90,
    "sessionCount": 2,
    "questsCompleted": 1,
}
EXPECTED_METRICS = {
    "today": EXPECTED_TODAY,
    "dau": 2,
    "mau": 2,
    "avgSessionMin": 4,  # (600 s + 90 s + bob's 0 s so far) / 3 = 3.83 min, rounded
    "activeSessions": 1,  # bob
}
EXPECTED_DAYS = [
    EXPECTED_TODAY,
    {
        "day": YESTERDAY,
        "month": "2025-03",
        "dau": 1,
        **SEED_FIELDS,
        "creditsEarned": 30,
        "totalSessionS": 600,
        "sessionCount": 1,
    },
]


def get(
    client: FlaskClient,
    path: str,
    fmt: str = "json",
    headers: dict[str, str] | None = None,
    query: dict[str, str] | None = None,
) -> Any:
    """GET ``path`` asking for ``fmt`` (a key of :data:`FORMATS`) with extra headers/query."""
    request = FORMATS[fmt]
    return client.get(
        path,
        headers={**request.get("headers", {}), **(headers or {})},
        query_string={**request.get("query_string", {}), **(query or {})},
    )


def samples(text: str, *, openmetrics: bool = False) -> dict[str, dict[tuple, float]]:
    """Parse an exposition with prometheus_client's parser: sample name -> labels -> value."""
    parse = openmetrics_families if openmetrics else text_string_to_metric_families
    found: dict[str, dict[tuple, float]] = {}
    for family in parse(text):
        for sample in family.samples:
            found.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def assert_same_numbers(exposition: dict[str, dict[tuple, float]], metrics: dict) -> None:
    """Every number of the getMetrics() JSON appears, unchanged, in the exposition."""
    for key, (name, _) in METRICS_GAUGES.items():
        assert exposition[name] == {(): metrics[key]}, name
    for field, value in metrics["today"].items():
        if field not in NOT_COUNTERS:
            assert exposition[today_gauge(field)] == {(): value}, field


def this_process() -> tuple[tuple[str, str], ...]:
    """The labels of this process's health series."""
    _, host, pid = process_identity()
    return (("host", host), ("pid", str(pid)))


def assert_same_health(exposition: dict[str, dict[tuple, float]], analytics: Analytics) -> None:
    """The health series equal the process's heartbeat (``stats()`` and its flush
    interval), labelled with the answering process."""
    stats = analytics.heartbeat().stats
    for key, (name, kind, _) in HEALTH.items():
        exposed = f"{name}_total" if kind == "counter" else name
        assert exposition[exposed] == {this_process(): stats[key]}, exposed


# -- fixtures -----------------------------------------------------------------------------


@pytest.fixture
def make_app(clock: FakeClock) -> Iterator[Callable[..., Flask]]:
    """Flask apps with gso_analytics on the fake clock; every one stopped at teardown."""
    made: list[Flask] = []

    def make(*, testing: bool = False, extension: GSOAnalytics | None = None, **config: Any):
        app = Flask(f"game{len(made)}")
        app.testing = testing
        app.config.update({f"GSO_ANALYTICS_{key}": value for key, value in config.items()})
        (extension or GSOAnalytics(clock=clock, counters=COUNTERS)).init_app(app)
        made.append(app)
        return app

    yield make
    for app in made:
        if "gso_analytics" in app.extensions:
            app.extensions["gso_analytics"].stop()


@pytest.fixture
def app(make_app: Callable[..., Flask], clock: FakeClock) -> Flask:
    app = make_app(STORE="memory://", METRICS_TOKEN=TOKEN)
    play(get_analytics(app), clock)
    return app


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


# -- the extension --------------------------------------------------------------------------


def test_extension_starts_analytics_and_exposes_it(make_app: Callable[..., Flask]) -> None:
    app = make_app(STORE="memory://", METRICS_TOKEN=TOKEN, FLUSH_INTERVAL=0.05)
    analytics = app.extensions["gso_analytics"]
    assert isinstance(analytics, Analytics)
    with app.app_context():
        assert get_analytics() is analytics
    assert get_analytics(app) is analytics
    # Started: the flush thread stores calls on its own, without any read.
    analytics.on_login("u1")
    deadline = time.monotonic() + 10
    while analytics.stats()["flushed"] < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert analytics.stats()["flushed"] == 1
    assert analytics.stop() is True


def test_one_extension_serves_several_apps(
    make_app: Callable[..., Flask], clock: FakeClock
) -> None:
    extension = GSOAnalytics(clock=clock)
    first = make_app(STORE="memory://", extension=extension)
    second = make_app(STORE="memory://", extension=extension)
    assert get_analytics(first) is not get_analytics(second)
    with second.app_context():
        assert extension.analytics is get_analytics(second)


def _app_threads() -> set[threading.Thread]:
    """The threads an app's Analytics keeps running (flush, and stop in progress)."""
    return {t for t in threading.enumerate() if t.name.startswith("gso-analytics")}


def test_twenty_test_apps_leave_no_thread_behind(clock: FakeClock) -> None:
    """An app per test, never stopped by the test: each app's Analytics stops when the
    app is gone (it left one flush thread per app behind: 1 -> 21 threads)."""
    before = _app_threads()
    for n in range(20):
        app = Flask(f"t{n}")
        app.config.update(TESTING=True, GSO_ANALYTICS_STORE="memory://")
        GSOAnalytics(app, clock=clock)
        app.test_client().get("/metrics")
        get_analytics(app).track("dungeon.complete", "u1")
    assert _app_threads() - before  # the last app's flush thread at least, still alive
    del app
    gc.collect()
    deadline = time.monotonic() + 20
    while _app_threads() - before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _app_threads() - before


def test_an_app_serves_an_analytics_made_elsewhere(make_app: Callable[..., Flask]) -> None:
    """``analytics=``: the app's routes and endpoint use it as it is (the pytest
    fixture's, say); the app neither starts nor stops it."""
    shared = RecordingAnalytics("memory://", strict=True)
    app = Flask("shared")
    app.config.update(
        GSO_ANALYTICS_STORE="sqlite:///never-opened.db", GSO_ANALYTICS_METRICS_TOKEN=TOKEN
    )
    GSOAnalytics(app, analytics=shared)
    assert get_analytics(app) is shared and not shared._started
    shared.track("dungeon.complete", "u1")
    answer = app.test_client().get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.get_json()["today"]["dungeonsRun"] == 1
    assert not Path("never-opened.db").exists()
    with pytest.raises(ConfigurationError, match="used as it is"):
        GSOAnalytics(Flask("other"), analytics=shared, clock=lambda: None)
    del app
    gc.collect()
    shared.track("dungeon.complete", "u2")  # still running: the app did not stop it
    assert shared.get_metrics().to_dict()["today"]["dungeonsRun"] == 2
    shared.stop()


@pytest.mark.parametrize(
    ("debug", "options", "strict"),
    [
        pytest.param(False, {}, False, id="production-lenient"),
        pytest.param(True, {}, True, id="debug-strict"),
        pytest.param(True, {"strict": False}, False, id="debug-lenient-by-option"),
        pytest.param(False, {"strict": True}, True, id="production-strict-by-option"),
    ],
)
def test_a_development_server_is_strict_by_default(
    debug: bool, options: dict[str, Any], strict: bool, clock: FakeClock
) -> None:
    """Under ``app.debug`` a bad amount raises where the developer sees it; in
    production it is counted in ``stats()["rejected"]`` and the request goes on."""
    app = Flask("dev")
    app.debug = debug
    app.config.update(GSO_ANALYTICS_STORE="memory://", GSO_ANALYTICS_OPTIONS=options)
    analytics = GSOAnalytics().init_app(app, clock=clock)
    try:
        assert analytics.strict is strict
        if strict:
            with pytest.raises(ValueError, match="must not be negative"):
                analytics.track("credits.earn", "u1", {"amount": -5})
        else:
            analytics.track("credits.earn", "u1", {"amount": -5})
            assert analytics.stats()["rejected"] == 1
    finally:
        analytics.stop()


def test_init_app_twice_is_an_error(make_app: Callable[..., Flask]) -> None:
    app = make_app(STORE="memory://")
    with pytest.raises(ConfigurationError, match="already initialised"):
        GSOAnalytics(app)


def test_get_analytics_without_the_extension_is_a_clear_error() -> None:
    with pytest.raises(ConfigurationError, match=r"GSOAnalytics\(app\)"):
        get_analytics(Flask("bare"))


def test_missing_store_names_the_key(make_app: Callable[..., Flask]) -> None:
    with pytest.raises(ConfigurationError, match="GSO_ANALYTICS_STORE is not set"):
        make_app(METRICS_TOKEN=TOKEN)


def test_missing_store_under_testing_uses_memory_with_a_warning(
    make_app: Callable[..., Flask],
) -> None:
    with pytest.warns(RuntimeWarning, match="GSO_ANALYTICS_STORE is not set; using memory://"):
        app = make_app(testing=True)
    analytics = get_analytics(app)
    analytics.on_login("u1")
    assert analytics.get_metrics().dau == 1


def test_testing_app_counts_into_memory_and_records_its_calls(
    make_app: Callable[..., Flask],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Under app.testing the configured store is never touched (not even created): the
    numbers go to memory://, said once per process, and the calls are recorded."""
    monkeypatch.setattr(config_module, "_replacement_logged", False)
    url = f"sqlite:///{tmp_path}/real.db"
    with caplog.at_level(logging.WARNING, logger="gso_analytics"):
        first = make_app(testing=True, STORE=url)
        make_app(testing=True, STORE=url)
    notices = [r.getMessage() for r in caplog.records if "replaced by memory://" in r.message]
    assert len(notices) == 1
    assert "sqlite:// store (GSO_ANALYTICS_STORE)" in notices[0]
    assert "GSO_ANALYTICS_TEST_STORE = 'keep'" in notices[0]
    analytics = get_analytics(first)
    assert isinstance(analytics.store, MemoryStore)
    assert isinstance(analytics, RecordingAnalytics)
    with first.test_request_context():
        get_analytics().track("dungeon.complete", "u1", {"dungeon": "crypt"})
    assert_tracked(analytics, "dungeon.complete", "u1", dungeon="crypt")
    assert not (tmp_path / "real.db").exists()


def test_testing_app_keeps_the_store_when_asked(
    make_app: Callable[..., Flask], tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path}/kept.db"
    kept = get_analytics(make_app(testing=True, STORE=url, TEST_STORE="keep"))
    assert isinstance(kept.store, SQLiteStore)
    production = get_analytics(make_app(STORE=url))
    assert isinstance(production.store, SQLiteStore)
    assert type(production) is Analytics  # no recording outside tests
    with pytest.raises(ConfigurationError, match="GSO_ANALYTICS_TEST_STORE must be"):
        make_app(testing=True, STORE=url, TEST_STORE="sqlite")


def test_options_and_flush_interval_reach_analytics(make_app: Callable[..., Flask]) -> None:
    app = make_app(
        STORE="memory://",
        FLUSH_INTERVAL="2.5",  # as read from the environment
        OPTIONS={"tz": "Europe/Paris", "idle_timeout": timedelta(hours=1)},
    )
    analytics = get_analytics(app)
    assert analytics._flusher.interval == 2.5
    assert str(analytics.tz) == "Europe/Paris"
    assert analytics.idle_timeout == timedelta(hours=1)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"METRIC_TOKEN": TOKEN}, "unknown setting GSO_ANALYTICS_METRIC_TOKEN"),
        ({"METRICS_PUBLIC": "False"}, "GSO_ANALYTICS_METRICS_PUBLIC must be True or False"),
        ({"METRICS_TOKEN": "two words"}, "GSO_ANALYTICS_METRICS_TOKEN must be printable ASCII"),
        ({"METRICS_TOKEN": "jeton-é"}, "GSO_ANALYTICS_METRICS_TOKEN must be printable ASCII"),
        ({"METRICS_TOKEN": 1234}, "GSO_ANALYTICS_METRICS_TOKEN must be a string"),
        ({"FLUSH_INTERVAL": 0}, "GSO_ANALYTICS_FLUSH_INTERVAL must be a positive"),
        ({"FLUSH_INTERVAL": "soon"}, "GSO_ANALYTICS_FLUSH_INTERVAL must be a number"),
        ({"FLUSH_INTERVAL": True}, "GSO_ANALYTICS_FLUSH_INTERVAL must be a number"),
        ({"METRICS_PATH": "metrics"}, "GSO_ANALYTICS_METRICS_PATH must be a URL path"),
        ({"METRICS_PATH": "/"}, "GSO_ANALYTICS_METRICS_PATH must be a URL path"),
        ({"OPTIONS": {"flush_interval": 1}}, "Analytics takes no option 'flush_interval'"),
        ({"OPTIONS": {"timezone": "UTC"}}, "GSO_ANALYTICS_OPTIONS: Analytics takes no option"),
        ({"STORE": 42}, "GSO_ANALYTICS_STORE must be a store URL"),
        ({"OPTIONS": {"tz": "Mars/Olympus"}}, "unknown timezone 'Mars/Olympus'"),
    ],
)
def test_bad_settings_fail_at_start_naming_the_key(config: dict[str, Any], message: str) -> None:
    app = Flask("bad")
    app.config.update({"GSO_ANALYTICS_STORE": "memory://"})
    app.config.update({f"GSO_ANALYTICS_{key}": value for key, value in config.items()})
    with pytest.raises(ConfigurationError, match=message):
        GSOAnalytics(app)
    assert "gso_analytics" not in app.extensions


def test_a_failed_init_app_leaves_nothing_running(monkeypatch: pytest.MonkeyPatch) -> None:
    app = Flask("late")
    app.config.update(GSO_ANALYTICS_STORE="memory://", GSO_ANALYTICS_METRICS_TOKEN=TOKEN)
    app.test_client().get("/")  # too late to register a blueprint now
    stopped: list[Analytics] = []
    real_stop = Analytics.stop
    monkeypatch.setattr(Analytics, "stop", lambda self: stopped.append(self) or real_stop(self))
    with pytest.raises(AssertionError, match="register_blueprint"):
        GSOAnalytics(app)
    assert "gso_analytics" not in app.extensions
    assert len(stopped) == 1  # its store closed; it never started a thread


def test_token_never_appears_in_reprs() -> None:
    settings = read_settings(
        {"STORE": "memory://", "METRICS_TOKEN": TOKEN}, name=str, testing=False
    )
    assert TOKEN not in repr(settings)


def test_no_secret_of_the_settings_appears_in_their_repr() -> None:
    """A debug page or a log line may show the settings: the store's password and a
    pseudonymization key (Django's ``OPTIONS``) stay out, the rest is there to read."""
    settings = read_settings(
        {
            "STORE": "mongodb://app:hunter2-secret@db1:27017/gso?replicaSet=rs0",
            "OPTIONS": {"pseudonymize_key": "k" * 20 + "-secret", "strict": True},
        },
        name=str,
        testing=False,
    )
    shown = repr(settings)
    assert "secret" not in shown, shown
    assert "mongodb://app:***@db1:27017/gso?replicaSet=rs0" in shown
    assert "'pseudonymize_key': '<hidden>'" in shown and "'strict': True" in shown


# -- access ---------------------------------------------------------------------------------


@pytest.mark.parametrize("view", VIEWS)
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(
    ("headers", "query", "error"),
    [
        pytest.param({}, {}, None, id="no-header"),
        pytest.param({"Authorization": "Bearer wrong"}, {}, "invalid_token", id="wrong-token"),
        pytest.param({"Authorization": f"Bearer {TOKEN}x"}, {}, "invalid_token", id="longer"),
        pytest.param({"Authorization": f"Bearer {TOKEN[:-1]}"}, {}, "invalid_token", id="prefix"),
        pytest.param({"Authorization": f"Basic {TOKEN}"}, {}, None, id="basic-scheme"),
        pytest.param({"Authorization": TOKEN}, {}, None, id="no-scheme"),
        pytest.param({"Authorization": "Bearer "}, {}, None, id="empty-bearer"),
        pytest.param({}, {"token": TOKEN}, None, id="query-token"),
        pytest.param({}, {"access_token": TOKEN}, None, id="query-access-token"),
    ],
)
def test_refused_without_the_right_bearer_token(
    client: FlaskClient,
    view: str,
    fmt: str,
    headers: dict[str, str],
    query: dict[str, str],
    error: str | None,
) -> None:
    response = get(client, f"/metrics{view}", fmt, headers, query)
    assert response.status_code == 401
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith("Bearer ")
    assert ('error="invalid_token"' in challenge) == (error is not None)
    assert response.is_json and "error" in response.json
    assert b"dau" not in response.data


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
def test_the_right_token_is_accepted_whatever_the_scheme_case(
    client: FlaskClient, scheme: str
) -> None:
    response = client.get("/metrics", headers={"Authorization": f"{scheme}  {TOKEN} "})
    assert response.status_code == 200


@pytest.mark.parametrize("view", VIEWS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_no_token_configured_is_404_for_every_view_and_format(
    make_app: Callable[..., Flask], view: str, fmt: str, caplog: pytest.LogCaptureFixture
) -> None:
    client = make_app(STORE="memory://").test_client()
    response = get(client, f"/metrics{view}", fmt, AUTH)
    assert response.status_code == 404
    assert "WWW-Authenticate" not in response.headers
    assert "METRICS_TOKEN" in caplog.text  # the operator learns why, once


@pytest.mark.parametrize("view", VIEWS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_public_opt_out_serves_without_a_token(
    make_app: Callable[..., Flask], view: str, fmt: str
) -> None:
    client = make_app(STORE="memory://", METRICS_PUBLIC=True).test_client()
    response = get(client, f"/metrics{view}", fmt)
    # Past authentication: the days are JSON only, so ?format=prometheus is a 406 there.
    assert response.status_code == (406 if (view, fmt) == ("/days", "query") else 200)


def test_public_does_not_disable_a_configured_token(make_app: Callable[..., Flask]) -> None:
    client = make_app(STORE="memory://", METRICS_TOKEN=TOKEN, METRICS_PUBLIC=True).test_client()
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers=AUTH).status_code == 200


def test_only_get_and_head(client: FlaskClient) -> None:
    assert client.post("/metrics", headers=AUTH).status_code == 405
    head = client.head("/metrics", headers=AUTH)
    assert head.status_code == 200 and head.data == b""


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"])
@pytest.mark.parametrize("path", ["/metrics", "/metrics/days", "/metrics/stats"])
def test_without_a_valid_token_every_method_gets_the_same_answer(
    make_app: Callable[..., Flask], client: FlaskClient, method: str, path: str
) -> None:
    """A stranger cannot tell the route exists from a 405 beside a 404 (issue 28): with
    a token configured every method is a 401, without one a 404, like a path that is
    not there."""
    assert client.open(path, method=method).status_code == 401
    bad = {"Authorization": "Bearer wrong"}
    assert client.open(path, method=method, headers=bad).status_code == 401
    hidden = make_app(STORE="memory://").test_client()
    assert hidden.open(path, method=method).status_code == 404
    assert hidden.open("/nothing-here", method=method).status_code == 404
    if method not in ("GET",):
        answer = client.open(path, method=method, headers=AUTH)
        assert answer.status_code == 405 and answer.headers["Allow"] == "GET, HEAD"


# -- JSON -------------------------------------------------------------------------------------


def test_json_metrics_are_the_seeds_get_metrics(client: FlaskClient) -> None:
    response = client.get("/metrics", headers=AUTH)
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert response.json == EXPECTED_METRICS
    assert response.headers["Cache-Control"] == "no-store"
    assert "Accept" in response.headers["Vary"] and "Authorization" in response.headers["Vary"]


@pytest.mark.parametrize(
    "accept", [None, "*/*", "application/json", "text/html,application/xhtml+xml,*/*;q=0.8"]
)
def test_json_is_the_default_for_browsers_and_curl(client: FlaskClient, accept: str) -> None:
    headers = {**AUTH, **({"Accept": accept} if accept else {})}
    assert client.get("/metrics", headers=headers).json == EXPECTED_METRICS


def test_days_are_the_last_30_newest_first(client: FlaskClient) -> None:
    response = client.get("/metrics/days", headers=AUTH)
    assert response.status_code == 200
    assert response.json == EXPECTED_DAYS


def test_days_ignore_accept_and_refuse_prometheus(client: FlaskClient) -> None:
    accept = client.get("/metrics/days", headers={**AUTH, "Accept": "text/plain"})
    assert accept.status_code == 200 and accept.json == EXPECTED_DAYS
    explicit = client.get("/metrics/days?format=prometheus", headers=AUTH)
    assert explicit.status_code == 406 and "JSON only" in explicit.json["error"]


def test_stats_json_is_this_process_health(client: FlaskClient, app: Flask) -> None:
    response = client.get("/metrics/stats", headers=AUTH)
    assert response.status_code == 200
    assert set(response.json) == set(get_analytics(app).stats())


def test_unknown_format_is_a_400(client: FlaskClient) -> None:
    response = client.get("/metrics?format=xml", headers=AUTH)
    assert response.status_code == 400
    assert "json" in response.json["error"] and "prometheus" in response.json["error"]


def test_json_format_parameter_wins_over_accept(client: FlaskClient) -> None:
    response = client.get("/metrics?format=json", headers={**AUTH, "Accept": "text/plain"})
    assert response.json == EXPECTED_METRICS


# -- Prometheus -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "request_kwargs",
    [
        {"headers": {**AUTH, "Accept": "text/plain"}},
        {"headers": {**AUTH, "Accept": "text/plain;version=0.0.4"}},
        {"headers": AUTH, "query_string": {"format": "prometheus"}},
        {
            "headers": {**AUTH, "Accept": "application/json"},
            "query_string": {"format": "PROMETHEUS"},
        },
    ],
    ids=["accept", "accept-version", "query", "query-over-accept"],
)
def test_prometheus_text_parses_and_carries_the_json_numbers(
    client: FlaskClient, app: Flask, request_kwargs: dict[str, Any]
) -> None:
    response = client.get("/metrics", **request_kwargs)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    exposition = samples(response.get_data(as_text=True))
    assert_same_numbers(exposition, EXPECTED_METRICS)
    assert_same_numbers(exposition, client.get("/metrics", headers=AUTH).json)
    assert_same_health(exposition, get_analytics(app))
    assert all(name.startswith("gso_analytics_") for name in exposition)


def test_prometheus_scraper_gets_openmetrics(client: FlaskClient) -> None:
    response = client.get("/metrics", headers={**AUTH, "Accept": PROMETHEUS_ACCEPT})
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/openmetrics-text")
    body = response.get_data(as_text=True)
    assert body.endswith("# EOF\n")
    assert_same_numbers(samples(body, openmetrics=True), EXPECTED_METRICS)


def test_prometheus_before_any_activity_is_all_zeros(make_app: Callable[..., Flask]) -> None:
    client = make_app(STORE="memory://", METRICS_TOKEN=TOKEN).test_client()
    body = client.get("/metrics?format=prometheus", headers=AUTH).get_data(as_text=True)
    exposition = samples(body)
    today = client.get("/metrics", headers=AUTH).json["today"]
    fields = {key: value for key, value in today.items() if key not in ("day", "month")}
    assert fields == dict.fromkeys([*DAILY_FIELDS, "questsCompleted"], 0)  # every field
    assert_same_numbers(exposition, {"today": today, **dict.fromkeys(METRICS_GAUGES, 0)})
    # The scrape's own flush (an empty one) is this worker's heartbeat.
    assert set(exposition["gso_analytics_last_flush_timestamp_seconds"]) == {this_process()}
    assert exposition["gso_analytics_credits_earned_total"] == {(): 0}


def test_prometheus_stats_view_is_health_only(client: FlaskClient, app: Flask) -> None:
    body = client.get("/metrics/stats?format=prometheus", headers=AUTH).get_data(as_text=True)
    exposition = samples(body)
    assert "gso_analytics_dau" not in exposition
    assert_same_health(exposition, get_analytics(app))


class RefusingSome(Forwarder):
    """Delivers every event but those named ``refused.event``, which its endpoint refuses."""

    name = "partner"

    def encode(self, event: ForwardedEvent) -> bytes:
        return event.event.encode()

    def send(self, batch: Any, timeout: Any) -> Delivery:
        events: list[EncodedEvent] = list(batch)
        return Delivery.delivered(
            rejected=[i for i, e in enumerate(events) if e.body == b"refused.event"]
        )


def test_prometheus_shows_each_forwarders_counts(
    make_app: Callable[..., Flask], clock: FakeClock
) -> None:
    """An endpoint that refuses events shows in the exposition, per forwarder."""
    extension = GSOAnalytics(clock=clock, counters=COUNTERS, forwarders=[RefusingSome()])
    app = make_app(STORE="memory://", METRICS_TOKEN=TOKEN, extension=extension)
    analytics = get_analytics(app)
    for event in ("quest.complete", "refused.event", "quest.complete", "refused.event"):
        analytics.track(event, "u1")
    deadline = time.monotonic() + 10
    while analytics.stats()["forwarding"]["delivered"] < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    counts = analytics.stats()["forwarding"]["forwarders"]["partner"]
    assert (counts["delivered"], counts["dropped_rejected"]) == (2, 2)

    client = app.test_client()
    exposition = samples(client.get("/metrics/stats?format=prometheus", headers=AUTH).text)
    labels = (("forwarder", "partner"), *this_process())
    for key, (name, kind, _) in FORWARDING.items():
        exposed = f"{name}_total" if kind == "counter" else name
        assert exposition[exposed] == {labels: counts[key]}, exposed
    assert exposition["gso_analytics_forward_rejected_events_total"] == {labels: 2}


def test_prometheus_without_forwarders_has_no_forwarding_series(client: FlaskClient) -> None:
    exposition = samples(client.get("/metrics/stats?format=prometheus", headers=AUTH).text)
    assert not any(name.startswith("gso_analytics_forward_") for name in exposition)


def test_without_prometheus_client_the_format_is_a_clear_501(
    client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As if prometheus_client were not installed (the ``prometheus`` extra is optional).
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    monkeypatch.delitem(sys.modules, "gso_analytics.integrations.prometheus")
    monkeypatch.delattr(gso_analytics.integrations, "prometheus")
    response = client.get("/metrics?format=prometheus", headers=AUTH)
    assert response.status_code == 501
    assert "gso-analytics[prometheus]" in response.json["error"]
    assert client.get("/metrics", headers=AUTH).json == EXPECTED_METRICS


# -- a failing store ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "broken", "fmt"),
    [
        ("/metrics", "get_day", "json"),
        ("/metrics", "get_month", "query"),
        ("/metrics", "count_active_sessions", "accept"),
        ("/metrics/days", "recent_days", "json"),
    ],
)
def test_store_failure_is_a_503_with_a_json_error(
    client: FlaskClient,
    app: Flask,
    monkeypatch: pytest.MonkeyPatch,
    path: str,
    broken: str,
    fmt: str,
) -> None:
    def fail(*args: object) -> None:
        raise StoreError("database is locked")

    monkeypatch.setattr(get_analytics(app).store, broken, fail)
    response = get(client, path, fmt, AUTH)
    assert response.status_code == 503
    assert response.json == {"error": "store unavailable"}
    assert "Traceback" not in response.get_data(as_text=True)
    # The health view reads no store: it still answers, for JSON and Prometheus.
    assert client.get("/metrics/stats", headers=AUTH).status_code == 200


def test_failing_flush_is_a_503_and_nothing_is_lost(
    client: FlaskClient, app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    analytics = get_analytics(app)
    store = analytics.store
    real_apply = store.apply

    def fail(batch: object) -> None:
        raise StoreError("disk full")

    analytics.on_login("carol")
    monkeypatch.setattr(store, "apply", fail)
    assert client.get("/metrics", headers=AUTH).status_code == 503
    stats = client.get("/metrics/stats", headers=AUTH).json
    assert stats["flush_failures"] >= 1 and stats["buffered"] >= 1
    monkeypatch.setattr(store, "apply", real_apply)
    assert client.get("/metrics", headers=AUTH).json["dau"] == 3


@pytest.mark.parametrize("broken", ["get_day", "apply"])
def test_a_bug_is_a_500_with_a_logged_traceback_not_an_outage(
    client: FlaskClient,
    app: Flask,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    broken: str,
) -> None:
    """An exception that is not a ``StoreError`` (a bug in a read or in the flush) is
    a 500 whose traceback is logged, without Retry-After: a 503 would page the store's
    owner for the library's bug. The flush counts it apart from outages."""
    analytics = get_analytics(app)

    def bug(*args: object) -> None:
        raise ZeroDivisionError("a bug")

    analytics.on_login("carol")
    monkeypatch.setattr(analytics.store, broken, bug)
    with caplog.at_level(logging.ERROR, logger="gso_analytics"):
        response = client.get("/metrics", headers=AUTH)
    assert response.status_code == 500
    assert response.json == {"error": "internal error"}
    assert "Retry-After" not in response.headers
    assert "Traceback" not in response.get_data(as_text=True)
    assert "ZeroDivisionError" in caplog.text and "Traceback" in caplog.text
    stats = client.get("/metrics/stats", headers=AUTH).json
    assert stats["internal_errors"] == (1 if broken == "apply" else 0)


# -- the path -----------------------------------------------------------------------------------


def test_metrics_path_is_configurable(make_app: Callable[..., Flask]) -> None:
    client = make_app(
        STORE="memory://", METRICS_TOKEN=TOKEN, METRICS_PATH="/internal/gso/"
    ).test_client()
    assert client.get("/metrics", headers=AUTH).status_code == 404
    assert client.get("/internal/gso", headers=AUTH).status_code == 200
    assert client.get("/internal/gso/days", headers=AUTH).status_code == 200


def test_metrics_path_none_registers_no_route(make_app: Callable[..., Flask]) -> None:
    app = make_app(STORE="memory://", METRICS_TOKEN=TOKEN, METRICS_PATH=None)
    assert app.test_client().get("/metrics", headers=AUTH).status_code == 404
    assert "gso_analytics" not in app.blueprints


# -- content negotiation (framework-free) -------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, Format.JSON),
        ("", Format.JSON),
        ("*/*", Format.JSON),
        ("application/json", Format.JSON),
        ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", Format.JSON),
        ("image/png", Format.JSON),
        ("text/plain", Format.PROMETHEUS),
        ("text/*", Format.PROMETHEUS),
        ("text/plain;version=0.0.4;q=0.5,*/*;q=0.1", Format.PROMETHEUS),
        (PROMETHEUS_ACCEPT, Format.PROMETHEUS),
        ("application/json, text/plain", Format.JSON),
        ("application/json;q=0.5, text/plain", Format.PROMETHEUS),
        ("text/plain;q=0, */*", Format.JSON),
        ("text/plain;q=bogus, application/json;q=0.1", Format.JSON),
        ("nonsense, ;;, text/plain", Format.PROMETHEUS),
    ],
)
def test_negotiation(accept: str | None, expected: Format) -> None:
    assert negotiate("metrics", accept, None) is expected


# -- the example app ----------------------------------------------------------------------------


def load_example() -> Any:
    spec = importlib.util.spec_from_file_location(
        "gso_example_flask_app", ROOT / "examples" / "flask_app.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_app_counts_a_game_session(tmp_path: Path) -> None:
    example = load_example()
    app = example.create_app(
        {
            "GSO_ANALYTICS_STORE": f"sqlite:///{tmp_path}/example.db",
            "GSO_ANALYTICS_METRICS_TOKEN": TOKEN,
        }
    )
    analytics = get_analytics(app)
    try:
        client = app.test_client()
        assert client.get("/").status_code == 200
        player = {"user_id": "u1", "username": "alice"}
        assert client.post("/login", json=player).status_code == 200
        assert client.post("/dungeon", json={**player, "dungeon": "tower"}).json["credits"] == 120
        assert client.post("/purchase", json={**player, "pack": "gems_550"}).status_code == 200
        assert client.post("/logout", json=player).status_code == 200
        assert client.post("/login", json={}).status_code == 400
        assert client.post("/purchase", json={**player, "pack": "free"}).status_code == 400
        metrics = client.get("/metrics", headers=AUTH).json
    finally:
        assert analytics.stop() is True
    today = metrics["today"]
    assert (metrics["dau"], metrics["activeSessions"], today["sessionCount"]) == (1, 0, 1)
    assert (today["dungeonsRun"], today["creditsEarned"]) == (1, 120)
    assert (today["gemsPurchased"], today["stripeRevenue"]) == (550, 999)
    assert analytics.stats()["rejected"] == 0


def test_example_defaults_need_no_configuration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for key in ("STORE", "FLUSH_INTERVAL", "METRICS_TOKEN"):
        monkeypatch.delenv(f"GSO_ANALYTICS_{key}", raising=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        app = load_example().create_app()
    try:
        assert (tmp_path / "gso_example.db").exists()
        assert app.test_client().get("/metrics", headers={"Authorization": "Bearer dev-token"}).json
    finally:
        get_analytics(app).stop()
