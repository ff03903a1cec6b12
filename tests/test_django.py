"""The Django app and its metrics views, through Django's test client.

Why: the Django integration must answer exactly as the Flask one (same access rules,
same negotiation, same numbers), so this module plays ``test_flask.py``'s scenario and
checks the same expectations, and adds what is Django's own: ``settings.GSO_ANALYTICS``
validation, the test-run fallback to memory, ``override_settings`` restarting the
library, the autoreloader guard, the ``gso_analytics`` management command, and the
example project (in a subprocess: Django's settings are configured once per process).

Django is configured here with ``settings.configure()`` (this module is the
ROOT_URLCONF) when nothing configured it before; no other test module uses Django.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from datetime import timedelta
from io import StringIO
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import django
import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.test import Client, override_settings
from django.urls import include, path
from gso_analytics.backends.memory import MemoryStore
from gso_analytics.backends.sqlite import SQLiteStore
from test_flask import (
    AUTH,
    COUNTERS,
    EXPECTED_DAYS,
    EXPECTED_METRICS,
    PROMETHEUS_ACCEPT,
    TOKEN,
    assert_same_health,
    assert_same_numbers,
    play,
    samples,
)

from gso_analytics import Analytics, ConfigurationError, StoreError
from gso_analytics.integrations.django import apps as app_module
from gso_analytics.integrations.django import get_analytics, serving
from gso_analytics.testing import RecordingAnalytics, assert_tracked

if TYPE_CHECKING:
    from conftest import FakeClock

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "django_project"
RUN_TIMEOUT_S = 120

urlpatterns = [path("metrics/", include("gso_analytics.integrations.django.urls"))]

BASE = {"STORE": "memory://", "METRICS_TOKEN": TOKEN}

if not settings.configured:
    settings.configure(
        SECRET_KEY="test-only",
        ALLOWED_HOSTS=["testserver"],
        INSTALLED_APPS=["gso_analytics.integrations.django"],
        ROOT_URLCONF=__name__,
        MIDDLEWARE=[],
        DATABASES={},
        USE_TZ=True,
        GSO_ANALYTICS=BASE,
    )
    django.setup()

VIEWS = ("/metrics/", "/metrics/days", "/metrics/stats")
FORMATS: dict[str, tuple[dict[str, str], dict[str, str]]] = {  # name -> (headers, query)
    "json": ({}, {}),
    "accept": ({"Accept": "text/plain"}, {}),
    "query": ({}, {"format": "prometheus"}),
}


def get(url: str, fmt: str = "json", headers: dict[str, str] | None = None, **query: str) -> Any:
    fmt_headers, fmt_query = FORMATS[fmt]
    return Client().get(url, {**fmt_query, **query}, headers={**fmt_headers, **(headers or {})})


@pytest.fixture
def configure(clock: FakeClock) -> Iterator[Callable[..., Analytics]]:
    """Restart the library with ``GSO_ANALYTICS`` = the given keys (plus the fake clock)
    for one test, through ``override_settings`` as a project's own tests would."""
    with ExitStack() as stack:

        def restart(**values: Any) -> Analytics:
            options = {"clock": clock, "counters": COUNTERS, **values.pop("OPTIONS", {})}
            stack.enter_context(override_settings(GSO_ANALYTICS={**values, "OPTIONS": options}))
            return get_analytics()

        yield restart


@pytest.fixture
def game(configure: Callable[..., Analytics], clock: FakeClock) -> Analytics:
    analytics = configure(**BASE)
    play(analytics, clock)
    return analytics


# -- the app ------------------------------------------------------------------------------


def test_ready_started_one_analytics_per_process() -> None:
    analytics = get_analytics()
    assert isinstance(analytics, Analytics)
    assert app_module.start() is analytics  # a second start is a no-op


def test_override_settings_restarts_and_restores(configure: Callable[..., Analytics]) -> None:
    before = get_analytics()
    with override_settings(GSO_ANALYTICS={**BASE, "FLUSH_INTERVAL": 5}):
        during = get_analytics()
        assert during is not before and during._flusher.interval == 5
    after = get_analytics()
    assert after is not during and after._flusher.interval == 60


def test_serving_lends_the_views_another_analytics(game: Analytics) -> None:
    """``serving(analytics)``: views and ``get_analytics()`` reach it within the block
    (the ``gso_analytics`` fixture's, say), the app's own again afterwards."""
    lent = RecordingAnalytics("memory://", strict=True)
    lent.track("dungeon.complete", "u9")
    with serving(lent):
        assert get_analytics() is lent
        answer = get("/metrics/", headers={"Authorization": f"Bearer {TOKEN}"})
        assert answer.json()["today"]["dungeonsRun"] == 1
    assert get_analytics() is game
    assert not game.stats()["rejected"] and lent.get_metrics().dau == 1  # u9's event
    lent.stop()


def test_debug_is_strict_by_default_and_production_lenient(clock: FakeClock) -> None:
    """``DEBUG = True`` (``runserver`` in development): a bad amount raises; without it,
    as in production, it is counted; ``OPTIONS`` decides over both."""

    def project(debug: bool, **options: Any) -> Any:
        return override_settings(
            DEBUG=debug, GSO_ANALYTICS={**BASE, "OPTIONS": {"clock": clock, **options}}
        )

    with project(False):
        get_analytics().track("credits.earn", "u1", {"amount": -5})
        assert get_analytics().strict is False and get_analytics().stats()["rejected"] == 1
    with project(True):
        assert get_analytics().strict is True
        with pytest.raises(ValueError, match="must not be negative"):
            get_analytics().track("credits.earn", "u1", {"amount": -5})
    with project(True, strict=False):
        assert get_analytics().strict is False
    with project(False, strict=True):
        assert get_analytics().strict is True


def test_missing_store_in_a_test_run_uses_memory_with_a_warning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(app_module, "is_test_run", lambda: True)
    with (
        pytest.warns(RuntimeWarning, match=r'GSO_ANALYTICS\["STORE"\] is not set; using memory'),
        override_settings(GSO_ANALYTICS={"METRICS_TOKEN": TOKEN}),
    ):
        analytics = get_analytics()
        analytics.on_login("u1")
        assert analytics.get_metrics().dau == 1


@pytest.mark.parametrize(
    ("argv", "modules", "expected"),
    [
        (["manage.py", "test"], (), True),
        (["django-admin", "test", "game"], (), True),
        (["pytest"], ("pytest_django",), True),
        (["pytest"], (), False),  # pytest alone is not a Django test run
        (["manage.py", "runserver"], (), False),
    ],
)
def test_a_test_run_is_djangos_runner_or_pytest_django(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], modules: tuple[str, ...], expected: bool
) -> None:
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.delitem(sys.modules, "pytest_django", raising=False)
    for name in modules:
        monkeypatch.setitem(sys.modules, name, sys.modules[__name__])
    assert app_module.is_test_run() is expected


def test_a_test_run_replaces_the_configured_store_unless_kept(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(app_module, "is_test_run", lambda: True)
    url = f"sqlite:///{tmp_path}/real.db"
    with override_settings(GSO_ANALYTICS={**BASE, "STORE": url}):
        analytics = get_analytics()
        assert isinstance(analytics.store, MemoryStore)
        analytics.track("dungeon.complete", "u1")
        assert_tracked(analytics, "dungeon.complete", "u1")
    assert not (tmp_path / "real.db").exists()
    with override_settings(GSO_ANALYTICS={**BASE, "STORE": url, "TEST_STORE": "keep"}):
        assert isinstance(get_analytics().store, SQLiteStore)


@pytest.mark.parametrize("url", ["/metrics/days", "/metrics/days/", "/metrics/stats/"])
def test_trailing_slash_or_not_the_views_answer(game: Analytics, url: str) -> None:
    """With or without APPEND_SLASH (CommonMiddleware), never a 404 or a redirect."""
    for append_slash in (True, False):
        with override_settings(
            APPEND_SLASH=append_slash, MIDDLEWARE=["django.middleware.common.CommonMiddleware"]
        ):
            assert get(url, headers=AUTH).status_code == 200, (url, append_slash)


@pytest.mark.parametrize("value", [{}, None])
def test_missing_store_outside_a_test_run_names_the_key(
    monkeypatch: pytest.MonkeyPatch, value: dict | None
) -> None:
    monkeypatch.setattr(app_module, "is_test_run", lambda: False)
    with (
        pytest.raises(ConfigurationError, match=r'GSO_ANALYTICS\["STORE"\] is not set'),
        override_settings(GSO_ANALYTICS=value),
    ):
        pass
    assert get_analytics()  # restored with the module's settings


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({**BASE, "METRICS_PATH": "/m"}, r'unknown setting GSO_ANALYTICS\["METRICS_PATH"\]'),
        ({**BASE, "METRICS_PUBLIC": "yes"}, r'GSO_ANALYTICS\["METRICS_PUBLIC"\] must be True'),
        ({**BASE, "OPTIONS": {"tz": "Mars/Olympus"}}, r"Mars/Olympus"),
        ("memory://", "settings.GSO_ANALYTICS must be a dict"),
    ],
)
def test_bad_settings_fail_naming_the_key(value: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message), override_settings(GSO_ANALYTICS=value):
        pass
    assert get_analytics()


def test_autoreloader_watcher_does_not_start(monkeypatch: pytest.MonkeyPatch) -> None:
    app_module.stop()
    try:
        with monkeypatch.context() as patch:
            patch.setattr(sys, "argv", ["manage.py", "runserver"])
            patch.delenv("RUN_MAIN", raising=False)
            assert app_module.start() is None  # the file watcher: no store, no thread
            with pytest.raises(ConfigurationError, match="INSTALLED_APPS"):
                get_analytics()
            patch.setenv("RUN_MAIN", "true")  # the serving child
            assert isinstance(app_module.start(), Analytics)
            app_module.stop()
            patch.delenv("RUN_MAIN")
            patch.setattr(sys, "argv", ["manage.py", "runserver", "--noreload"])
            assert isinstance(app_module.start(), Analytics)
            app_module.stop()
    finally:
        app_module.start()
    assert get_analytics()


def test_the_libraries_own_command_is_not_a_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    """``manage.py gso_analytics report`` builds the library without starting it: its
    flushes write no heartbeat, so the command is not counted among the workers."""
    app_module.stop()
    try:
        with monkeypatch.context() as patch:
            patch.setattr(sys, "argv", ["manage.py", "gso_analytics", "report"])
            command = app_module.start()
            assert command is not None
            command.flush()
            assert command.store.live_heartbeats(command.clock()) == []
            app_module.stop()
            patch.setattr(sys, "argv", ["manage.py", "runserver", "--noreload"])
            worker = app_module.start()
            assert worker is not None
            worker.flush()
            assert len(worker.store.live_heartbeats(worker.clock())) == 1
            app_module.stop()
    finally:
        app_module.start()
    assert get_analytics()


# -- access ------------------------------------------------------------------------------


@pytest.mark.parametrize("view", VIEWS)
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(
    ("headers", "query", "invalid"),
    [
        pytest.param({}, {}, False, id="no-header"),
        pytest.param({"Authorization": "Bearer wrong"}, {}, True, id="wrong-token"),
        pytest.param({"Authorization": f"Basic {TOKEN}"}, {}, False, id="basic-scheme"),
        pytest.param({}, {"token": TOKEN}, False, id="query-token"),
        pytest.param({}, {"access_token": TOKEN}, False, id="query-access-token"),
    ],
)
def test_refused_without_the_right_bearer_token(
    game: Analytics,
    view: str,
    fmt: str,
    headers: dict[str, str],
    query: dict[str, str],
    invalid: bool,
) -> None:
    response = get(view, fmt, headers, **query)
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer ")
    assert ('error="invalid_token"' in response["WWW-Authenticate"]) == invalid
    assert "error" in response.json()


@pytest.mark.parametrize("view", VIEWS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_no_token_configured_is_404(
    configure: Callable[..., Analytics], view: str, fmt: str
) -> None:
    configure(STORE="memory://")
    response = get(view, fmt, AUTH)
    assert response.status_code == 404
    assert not response.has_header("WWW-Authenticate")


@pytest.mark.parametrize("view", VIEWS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_public_opt_out_serves_without_a_token(
    configure: Callable[..., Analytics], view: str, fmt: str
) -> None:
    configure(STORE="memory://", METRICS_PUBLIC=True)
    response = get(view, fmt)
    # Past authentication: the days are JSON only, so ?format=prometheus is a 406 there.
    assert response.status_code == (406 if (view, fmt) == ("/metrics/days", "query") else 200)


def test_only_safe_methods(game: Analytics) -> None:
    assert Client().post("/metrics/", headers=AUTH).status_code == 405
    assert Client().head("/metrics/", headers=AUTH).status_code == 200


@pytest.mark.parametrize("method", ["get", "post", "put", "patch", "delete", "options", "trace"])
def test_without_a_valid_token_every_method_gets_the_same_answer(
    configure: Callable[..., Analytics], method: str
) -> None:
    """A 405 to POST beside a 401 or 404 to GET would tell a stranger the route exists
    (issue 28): every method gets the same answer until the token is valid."""
    configure(**BASE)
    for url in ("/metrics/", "/metrics/days", "/metrics/stats/"):
        assert getattr(Client(), method)(url).status_code == 401, url
        bad = {"Authorization": "Bearer wrong"}
        assert getattr(Client(), method)(url, headers=bad).status_code == 401, url
    if method != "get":
        answer = getattr(Client(), method)("/metrics/", headers=AUTH)
        assert answer.status_code == 405 and answer["Allow"] == "GET, HEAD"
    configure(STORE="memory://")  # no token: the endpoint is hidden
    assert getattr(Client(), method)("/metrics/").status_code == 404


# -- the numbers ---------------------------------------------------------------------------


def test_json_metrics_days_and_stats(game: Analytics) -> None:
    metrics = get("/metrics/", headers=AUTH)
    assert metrics.status_code == 200
    assert metrics["Content-Type"] == "application/json"
    assert metrics["Cache-Control"] == "no-store"
    assert metrics.json() == EXPECTED_METRICS
    assert get("/metrics/days", headers=AUTH).json() == EXPECTED_DAYS
    assert set(get("/metrics/stats", headers=AUTH).json()) == set(game.stats())


@pytest.mark.parametrize("fmt", ["accept", "query"])
def test_prometheus_text_parses_and_carries_the_json_numbers(game: Analytics, fmt: str) -> None:
    response = get("/metrics/", fmt, AUTH)
    assert response.status_code == 200
    assert response["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    exposition = samples(response.content.decode())
    assert_same_numbers(exposition, EXPECTED_METRICS)
    assert_same_numbers(exposition, get("/metrics/", headers=AUTH).json())
    assert_same_health(exposition, game)


def test_prometheus_scraper_gets_openmetrics(game: Analytics) -> None:
    response = get("/metrics/", headers={**AUTH, "Accept": PROMETHEUS_ACCEPT})
    assert response["Content-Type"].startswith("application/openmetrics-text")
    assert_same_numbers(samples(response.content.decode(), openmetrics=True), EXPECTED_METRICS)


@pytest.mark.parametrize("fmt", ["json", "query"])
def test_store_failure_is_a_503_with_a_json_error(
    game: Analytics, monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    def fail(*args: object) -> None:
        raise StoreError("database is locked")

    monkeypatch.setattr(game.store, "get_month", fail)
    response = get("/metrics/", fmt, AUTH)
    assert response.status_code == 503
    assert response.json() == {"error": "store unavailable"}
    assert get("/metrics/stats", headers=AUTH).status_code == 200


def test_a_bug_is_a_500_not_an_outage(game: Analytics, monkeypatch: pytest.MonkeyPatch) -> None:
    """As in Flask: a non-``StoreError`` exception is a 500, never a 503."""

    def bug(*args: object) -> None:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(game.store, "get_month", bug)
    response = get("/metrics/", headers=AUTH)
    assert response.status_code == 500
    assert response.json() == {"error": "internal error"}
    assert get("/metrics/stats", headers=AUTH).status_code == 200


# -- the management command ----------------------------------------------------------------


def run_command(*args: str) -> str:
    out = StringIO()
    call_command("gso_analytics", *args, stdout=out)
    return out.getvalue()


def test_command_report_reads_the_projects_store(game: Analytics) -> None:
    doc = json.loads(run_command("report", "--json", "--days", "1"))
    assert doc.pop("kpis")["end"] == "2025-03-14"
    assert doc.pop("headline")["end"] == "2025-03-14"
    assert doc == {"metrics": EXPECTED_METRICS, "days": EXPECTED_DAYS[:1]}
    text = run_command("report")
    assert text.startswith("Headline ") and "\nToday 2025-03-14\n" in text
    assert "2025-03-13" in text  # both days listed


def test_command_report_has_the_clis_options(game: Analytics, tmp_path: Path) -> None:
    """KPIs of a range, a past day, the HTML page: what ``gso-analytics report`` takes,
    and the same output for the same store and options."""
    page = tmp_path / "report.html"
    args = ["--today", "2025-03-13", "--start", "2025-03-01", "--end", "2025-03-14"]
    doc = json.loads(run_command("report", "--json", *args, "--html", str(page)))
    assert (doc["kpis"]["start"], doc["kpis"]["end"]) == ("2025-03-01", "2025-03-14")
    assert doc["metrics"]["today"]["day"] == "2025-03-13"
    assert doc["metrics"]["dau"] == EXPECTED_DAYS[1]["dau"]
    assert page.read_text().startswith("<!DOCTYPE html>")
    text = run_command("report", *args)
    assert text.startswith("Headline 2025-03-01 to 2025-03-14") and "\nToday 2025-03-13" in text
    assert "\nKPIs 2025-03-01 to 2025-03-14" in text
    assert get_analytics() is game  # the project's instance is left running


def test_command_prune_uses_the_projects_rules(
    configure: Callable[..., Analytics], clock: FakeClock
) -> None:
    analytics = configure(**BASE, OPTIONS={"idle_timeout": timedelta(hours=1)})
    analytics.on_login("idle")
    analytics.flush()
    clock.advance(hours=2)
    assert "closed 1 sessions idle for 1 hours" in run_command("prune")
    assert analytics.get_metrics().active_sessions == 0


def test_command_export_user_and_erase(configure: Callable[..., Analytics]) -> None:
    """``manage.py gso_analytics export-user ID`` and ``erase ID`` on the project's store."""
    analytics = configure(**BASE)
    analytics.on_login("u-django", "Dj")
    analytics.track("credits.earn", "u-django", {"amount": 3})
    export = json.loads(run_command("export-user", "u-django"))
    assert export["sessions"][0]["username"] == "Dj" and len(export["events"]) == 1
    receipt = json.loads(run_command("erase", "u-django"))
    assert receipt["pseudonymized"]["sessions"] == 1 and receipt["deleted"] == {"events": 1}
    assert json.loads(run_command("export-user", "u-django"))["sessions"] == []
    assert analytics.get_metrics().dau == 1  # the day still counts the player


@pytest.mark.parametrize("args", [(), ("report", "--days", "31"), ("explode",)])
def test_command_usage_errors(game: Analytics, args: tuple[str, ...]) -> None:
    with pytest.raises(CommandError):
        run_command(*args)


# -- the example project ---------------------------------------------------------------------

PLAY_EXAMPLE = """
import json, os
import django
django.setup()
from django.test import Client
client = Client()
player = {"user_id": "u1", "username": "alice"}
post = lambda url, body: client.post(url, body, content_type="application/json").status_code
codes = [
    post("/login", player),
    post("/dungeon", {**player, "dungeon": "crypt"}),
    post("/dungeon", {**player, "dungeon": "tower"}),
    post("/purchase", {**player, "pack": "gems_100"}),
    post("/logout", player),
    post("/login", {}),
]
auth = {"Authorization": "Bearer example-token"}
print(json.dumps({
    "codes": codes,
    "refused": client.get("/metrics/").status_code,
    "metrics": client.get("/metrics/", headers=auth).json(),
}))
"""


def test_example_project_plays_and_reports(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "game.settings",
        "GSO_ANALYTICS_STORE": f"sqlite:///{tmp_path}/example.db",
        "GSO_ANALYTICS_METRICS_TOKEN": "example-token",
        "PYTHONPATH": str(EXAMPLE),
    }
    played = subprocess.run(
        [sys.executable, "-c", PLAY_EXAMPLE],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    assert played.returncode == 0, played.stderr
    result = json.loads(played.stdout)
    assert result["codes"] == [200, 200, 200, 200, 200, 400]
    assert result["refused"] == 401
    metrics = result["metrics"]
    assert (metrics["dau"], metrics["activeSessions"]) == (1, 0)
    assert metrics["today"]["creditsEarned"] == 170
    assert metrics["today"]["stripeRevenue"] == 199
    # The management command reads the same store, in another process.
    report = subprocess.run(
        [sys.executable, str(EXAMPLE / "manage.py"), "gso_analytics", "report", "--json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    assert report.returncode == 0, report.stderr
    assert json.loads(report.stdout)["metrics"] == metrics


GAME_TESTS = """
from django.test import TestCase

from gso_analytics.integrations.django import get_analytics, serving
from gso_analytics.testing import RecordingAnalytics, assert_tracked


class GameTests(TestCase):
    def test_dungeon_and_purchase_are_counted(self):
        player = {"user_id": "u1", "username": "alice"}
        purchase = {**player, "pack": "gems_100"}
        for url, body in [("/login", player), ("/dungeon", player), ("/purchase", purchase)]:
            response = self.client.post(url, body, content_type="application/json")
            self.assertEqual(response.status_code, 200)
        analytics = get_analytics()
        assert_tracked(analytics, "stripe.payment", "u1", amountCents=199)
        today = analytics.get_metrics().to_dict()["today"]
        self.assertEqual((today["creditsEarned"], today["stripeRevenue"]), (50, 199))
"""


def test_manage_py_test_never_writes_into_the_configured_sqlite_file(tmp_path: Path) -> None:
    """The issue's bug: ``manage.py test`` of a Django project counted into the real
    store. A copy of the example project with a TestCase runs Django's test runner;
    the configured SQLite file, holding a day of real numbers, is byte for byte and
    time for time what it was."""
    project = tmp_path / "project"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("*.db", "__pycache__"))
    (project / "game" / "tests.py").write_text(GAME_TESTS)
    (project / "game" / "test_settings.py").write_text(
        "from game.settings import *  # noqa: F403\n"
        "DATABASES = {'default': {'ENGINE': 'django.db.backends.sqlite3', 'NAME': ':memory:'}}\n"
    )
    real = tmp_path / "real.db"
    with Analytics(f"sqlite:///{real}", forwarders=[]) as analytics:
        analytics.track("stripe.payment", "payer", {"amountCents": 999})
    before = (real.read_bytes(), real.stat().st_mtime_ns)
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "game.test_settings",
        "GSO_ANALYTICS_STORE": f"sqlite:///{real}",
    }
    env.pop("GSO_ANALYTICS_TEST_STORE", None)
    ran = subprocess.run(
        [sys.executable, "manage.py", "test", "game", "-v", "2"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "Ran 1 test" in ran.stderr and "OK" in ran.stderr
    assert ran.stderr.count("replaced by memory://") == 1
    assert (real.read_bytes(), real.stat().st_mtime_ns) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["project", "real.db"]  # no -wal


# -- the PostgreSQL store in the project's own database ---------------------------------------


@pytest.mark.filterwarnings("ignore:Overriding setting DATABASES")
def test_database_alias_opens_the_postgresql_store_in_its_schema(
    monkeypatch: pytest.MonkeyPatch, clock: FakeClock
) -> None:
    """``"DATABASE": "default"``: the store URL comes from ``DATABASES`` (host, port,
    name, user, password percent-encoded, libpq OPTIONS), the tables in their own
    schema; the ORM is never used (this project has no database app at all)."""
    import pg_server
    from gso_analytics.backends.postgres import PostgresStore

    from gso_analytics.integrations.django.database import store_url

    server = urlsplit(pg_server.server_url())
    schema = pg_server.fresh_schema()
    databases = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": server.path.lstrip("/"),
            "USER": server.username,
            "PASSWORD": server.password or "",
            "HOST": server.hostname,
            "PORT": server.port,
            "OPTIONS": {"sslmode": "disable", "pool": True, "connect_timeout": 5},
        }
    }
    url = store_url(databases, "default", schema)
    assert "pool" not in url and "sslmode=disable" in url and url.endswith(f"schema={schema}")
    monkeypatch.setattr(app_module, "is_test_run", lambda: False)
    values = {"DATABASE": "default", "SCHEMA": schema, "METRICS_TOKEN": TOKEN}
    with override_settings(
        DATABASES=databases, GSO_ANALYTICS={**values, "OPTIONS": {"clock": clock}}
    ):
        analytics = get_analytics()
        assert isinstance(analytics.store, PostgresStore)
        assert analytics.store.schema == schema
        analytics.on_login("u1", "alice")
        analytics.flush()
        assert analytics.store.get_day(clock.now.date().isoformat())["dau"] == 1
    with (
        pytest.raises(ConfigurationError, match="not both"),
        override_settings(GSO_ANALYTICS={**values, "STORE": "memory://"}),
    ):
        pass


def test_database_alias_must_be_postgresql() -> None:
    from gso_analytics.integrations.django.database import store_url

    sqlite = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": "db.sqlite3"}}
    with pytest.raises(ConfigurationError, match="only a PostgreSQL database"):
        store_url(sqlite, "default", None)
    with pytest.raises(ConfigurationError, match="not in DATABASES"):
        store_url(sqlite, "analytics", None)
    odd = {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": "game",
        "USER": "app",
        "PASSWORD": "p@ss:/word",
        "HOST": "/var/run/postgresql",
    }
    assert (
        store_url({"default": odd}, "default", None)
        == "postgresql://app:p%40ss%3A%2Fword@/game?host=%2Fvar%2Frun%2Fpostgresql"
    )
