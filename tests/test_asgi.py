"""The ASGI integration (Starlette, FastAPI), through FastAPI's TestClient and httpx.

Why these tests: the metrics endpoint must answer exactly as the Flask one does, which
``test_flask.py`` pins thoroughly, so here every combination of view, format, method
and credentials is asked of both, on the same scenario, and the answers compared (the
Flask app is the oracle). Then what only ASGI has: the lifespan builds, starts and
stops the library (bounded, off the event loop), store I/O never runs on the loop
(a slow store read must not hold up another request), ``get_analytics`` as a FastAPI
dependency for HTTP and WebSocket handlers, the environment as the settings, test runs
counting into ``memory://``, the pytest fixtures served to the app, and ``playing()``
making a WebSocket connection a session (property-tested against a session oracle).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import anyio
import httpx
import pytest
from fastapi import Depends, FastAPI, WebSocket
from fastapi.testclient import TestClient
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from test_flask import COUNTERS, PROMETHEUS_ACCEPT, TOKEN, play

from gso_analytics import Analytics, ConfigurationError, StoreError, open_store
from gso_analytics.integrations import flask as flask_integration
from gso_analytics.integrations.asgi import GSOAnalytics, get_analytics, playing, serving
from gso_analytics.integrations.config import from_environment
from gso_analytics.testing import FrozenClock, RecordingAnalytics, assert_tracked

if TYPE_CHECKING:
    from conftest import FakeClock

AUTH = {"Authorization": f"Bearer {TOKEN}"}
AnalyticsDep = Annotated[Analytics, Depends(get_analytics)]


def running(client: TestClient) -> Analytics:
    """The ``Analytics`` the client's app uses now."""
    ext: GSOAnalytics = client.app.state.gso_analytics  # type: ignore[attr-defined]
    return ext.analytics


def make_asgi(clock: Any = None, **settings_: Any) -> FastAPI:
    app = FastAPI()
    options = {} if clock is None else {"clock": clock, "counters": COUNTERS}
    GSOAnalytics(app, settings=settings_, testing=False, environ={}, **options)
    return app


# -- the metrics endpoint answers as Flask's ----------------------------------------------

PATHS = ["/metrics", "/metrics/days", "/metrics/stats"]
CREDENTIALS: dict[str, dict[str, str]] = {
    "none": {},
    "right": AUTH,
    "wrong": {"Authorization": "Bearer nope"},
    "basic": {"Authorization": "Basic dXNlcjpwYXNz"},
    "empty": {"Authorization": "Bearer "},
}
ASKS: dict[str, tuple[dict[str, str], str]] = {
    "default": ({}, ""),
    "accept-text": ({"Accept": "text/plain"}, ""),
    "scraper": ({"Accept": PROMETHEUS_ACCEPT}, ""),
    "browser": ({"Accept": "text/html,*/*;q=0.8"}, ""),
    "format-prom": ({}, "?format=prometheus"),
    "format-json": ({"Accept": "text/plain"}, "?format=json"),
    "format-bad": ({}, "?format=xml"),
}
COMPARED_HEADERS = ("content-type", "www-authenticate", "allow", "retry-after", "cache-control")


def answer(status: int, headers: Any, body: bytes, path: str) -> dict[str, Any]:
    """What must be equal between the two frameworks: status, headers, and the body
    where it does not hold this process's live health (stats, Prometheus samples)."""
    seen = {name: headers.get(name) for name in COMPARED_HEADERS}
    seen["vary"] = sorted(v.strip() for v in (headers.get("vary") or "").split(","))
    content_type = headers.get("content-type") or ""
    if not body:  # HEAD
        seen["body"] = None
    elif content_type.startswith("application/json") and (status != 200 or path != PATHS[2]):
        seen["body"] = json.loads(body)
    elif status == 200:
        seen["lines"] = sorted(  # the metric names exposed, not their live values
            {line.split("{")[0].split(" ")[0] for line in body.decode().splitlines() if line}
        )
    return seen


@pytest.fixture
def twins(clock: FakeClock) -> Iterator[tuple[Any, TestClient]]:
    """A Flask app and a FastAPI app on the same store settings and scenario."""
    flask_app = Flask("twin")
    flask_app.config.update(GSO_ANALYTICS_STORE="memory://", GSO_ANALYTICS_METRICS_TOKEN=TOKEN)
    flask_integration.GSOAnalytics(clock=clock, counters=COUNTERS).init_app(flask_app)
    asgi_app = make_asgi(clock, STORE="memory://", METRICS_TOKEN=TOKEN)
    with TestClient(asgi_app) as client:
        flask_analytics = flask_integration.get_analytics(flask_app)
        asgi_analytics = running(client)
        start = clock.now
        for analytics in (flask_analytics, asgi_analytics):
            clock.set(start)  # the same story, at the same times, for each twin
            play(analytics, clock)
        yield flask_app.test_client(), client
    flask_analytics.stop()


def test_every_answer_of_the_endpoint_equals_flasks(twins: tuple[Any, TestClient]) -> None:
    flask_client, asgi_client = twins
    compared = 0
    for path in PATHS:
        for method in ("GET", "HEAD", "POST", "DELETE"):
            for credentials in CREDENTIALS.values():
                for headers, query in ASKS.values():
                    sent = {**credentials, **headers}
                    theirs = flask_client.open(path + query, method=method, headers=sent)
                    ours = asgi_client.request(method, path + query, headers=sent)
                    expected = answer(theirs.status_code, theirs.headers, theirs.data, path)
                    got = answer(ours.status_code, ours.headers, ours.content, path)
                    assert got == expected, (method, path + query, sent)
                    compared += 1
    assert compared == 3 * 4 * len(CREDENTIALS) * len(ASKS)


def test_the_numbers_are_the_scenarios(twins: tuple[Any, TestClient]) -> None:
    _, client = twins
    metrics = client.get("/metrics", headers=AUTH).json()
    assert (
        metrics["dau"],
        metrics["today"]["creditsEarned"],
        metrics["today"]["questsCompleted"],
    ) == (
        2,
        100,
        1,
    )
    assert [day["day"] for day in client.get("/metrics/days", headers=AUTH).json()] == [
        "2025-03-14",
        "2025-03-13",
    ]


@pytest.mark.parametrize(
    ("error", "status"), [(StoreError("down"), 503), (RuntimeError("bug"), 500)]
)
def test_a_failing_store_is_a_503_and_a_bug_a_500(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch, error: Exception, status: int
) -> None:
    with TestClient(make_asgi(clock, STORE="memory://", METRICS_TOKEN=TOKEN)) as client:
        analytics = running(client)

        def fail(*args: Any) -> None:
            raise error

        monkeypatch.setattr(analytics.store, "get_day", fail)
        response = client.get("/metrics", headers=AUTH)
        assert response.status_code == status
        assert ("Retry-After" in response.headers) == (status == 503)


def test_metrics_path_none_adds_no_route_and_the_endpoint_mounts(clock: FakeClock) -> None:
    app = make_asgi(clock, STORE="memory://", METRICS_TOKEN=TOKEN, METRICS_PATH=None)
    ext: GSOAnalytics = app.state.gso_analytics
    app.mount("/ops/metrics", ext.metrics_app())
    with TestClient(app) as client:
        assert client.get("/metrics", headers=AUTH).status_code == 404
        assert client.get("/ops/metrics/", headers=AUTH).json()["dau"] == 0
        assert client.get("/ops/metrics/stats").status_code == 401
        assert client.get("/ops/metrics/days", headers=AUTH).json() == []


def test_a_custom_metrics_path(clock: FakeClock) -> None:
    app = make_asgi(clock, STORE="memory://", METRICS_PUBLIC=True, METRICS_PATH="/internal/gso/")
    with TestClient(app) as client:
        assert client.get("/internal/gso").json()["dau"] == 0
        assert client.get("/internal/gso/stats").json()["buffered"] == 0


# -- the lifespan ---------------------------------------------------------------------------


def stored_counters(db_url: str) -> dict[str, Any]:
    with closing(open_store(db_url)) as store:
        return dict(store.get_totals())


def test_the_lifespan_starts_and_stops_the_library(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path}/game.db"
    app = make_asgi(STORE=db_url, FLUSH_INTERVAL=600)
    with pytest.raises(ConfigurationError, match="lifespan has not started"):
        _ = app.state.gso_analytics.analytics
    for round_ in (1, 2):  # a fresh, started Analytics each time the app starts
        with TestClient(app) as client:
            analytics = running(client)
            assert analytics._started
            assert type(analytics) is Analytics
            analytics.track("dungeon.complete", "u1", {"dungeon": "crypt"})
            # Nothing stored before shutdown: only the final flush can store it.
            assert stored_counters(db_url).get("dungeonsRun", 0) == round_ - 1
        assert stored_counters(db_url)["dungeonsRun"] == round_
        assert not analytics._started
    with pytest.raises(ConfigurationError, match="lifespan has not started"):
        _ = app.state.gso_analytics.analytics


def test_the_apps_own_lifespan_runs_inside(tmp_path: Path) -> None:
    seen: list[str] = []
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        seen.append(f"start, running: {app.state.gso_analytics.analytics._started}")
        yield {"game": "on"}
        seen.append(f"stop, running: {app.state.gso_analytics.analytics._started}")

    app = FastAPI(lifespan=lifespan)
    GSOAnalytics(app, settings={"STORE": "memory://"}, environ={})
    with TestClient(app) as client:
        assert client.app_state["game"] == "on"  # type: ignore[index]
    assert seen == ["start, running: True", "stop, running: True"]


@pytest.mark.anyio
async def test_shutdown_is_bounded_and_leaves_the_loop_free(tmp_path: Path) -> None:
    store = open_store("memory://")
    release = threading.Event()
    real_apply = store.apply

    def hanging_apply(batch: Any) -> Any:
        release.wait(30)
        return real_apply(batch)

    store.apply = hanging_apply  # type: ignore[method-assign]
    app = Starlette()
    GSOAnalytics(app, settings={"STORE": store}, testing=False, environ={}, stop_timeout=1.0)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await anyio.sleep(0.01)
            ticks += 1

    try:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(ticker)
            async with app.router.lifespan_context(app):
                app.state.gso_analytics.analytics.track("dungeon.complete", "u1", {"dungeon": "c"})
                ticks = 0
                began = time.monotonic()
            took = time.monotonic() - began
            tasks.cancel_scope.cancel()
    finally:
        release.set()
    assert took < 1.0 + 2.0, f"shutdown took {took:.1f}s with stop_timeout=1"
    # The final flush waited in a thread: the loop ticked all along (~100 in 1 s).
    assert ticks > 30, ticks


# -- no store I/O on the event loop ---------------------------------------------------------


@pytest.mark.anyio
async def test_a_slow_store_read_does_not_hold_up_other_requests() -> None:
    app = FastAPI()
    GSOAnalytics(app, settings={"STORE": "memory://", "METRICS_TOKEN": TOKEN}, environ={})

    @app.get("/ping")
    async def ping() -> str:
        return "pong"

    @app.get("/today")
    async def today(analytics: AnalyticsDep) -> int:
        return (await analytics.aget_metrics()).dau

    async with app.router.lifespan_context(app):
        analytics = app.state.gso_analytics.analytics
        real_get_day = analytics.store.get_day
        loop_thread = threading.get_ident()
        read_threads: list[int] = []

        def slow_get_day(day: str) -> Any:
            read_threads.append(threading.get_ident())
            time.sleep(0.6)
            return real_get_day(day)

        analytics.store.get_day = slow_get_day
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://game") as client:
            finished: dict[str, float] = {}
            began = time.monotonic()

            async def get(path: str, **kwargs: Any) -> None:
                response = await client.get(path, **kwargs)
                assert response.status_code == 200
                finished[path] = time.monotonic() - began

            async with anyio.create_task_group() as tasks:
                tasks.start_soon(lambda: get("/metrics", headers=AUTH))
                tasks.start_soon(lambda: get("/today"))
                await anyio.sleep(0.1)  # both reads are under way
                tasks.start_soon(lambda: get("/ping"))
    assert finished["/ping"] < 0.4 < min(finished["/metrics"], finished["/today"]), finished
    assert len(read_threads) == 2 and loop_thread not in read_threads


@pytest.mark.anyio
async def test_the_async_reads_equal_the_sync_ones(clock: FakeClock) -> None:
    with Analytics("memory://", clock=clock, counters=COUNTERS, forwarders=[]) as analytics:
        play(analytics, clock)
        assert await analytics.aget_metrics() == analytics.get_metrics()
        assert await analytics.aget_last_30_days() == analytics.get_last_30_days()
        analytics.track("quest.complete", "carol")
        await analytics.aflush()
        assert analytics.stats()["buffered"] == 0


# -- settings ---------------------------------------------------------------------------------


def test_the_environment_is_the_settings(caplog: pytest.LogCaptureFixture) -> None:
    environ = {
        "GSO_ANALYTICS_STORE": "memory://",
        "GSO_ANALYTICS_FLUSH_INTERVAL": "2.5",
        "GSO_ANALYTICS_METRICS_TOKEN": TOKEN,
        "GSO_ANALYTICS_METRICS_PUBLIC": "Yes",
        "GSO_ANALYTICS_METRICS_PATH": "",  # empty: unset
        "GSO_ANALYTICS_ERASURE_SECRET": "x" * 20,  # ours, read elsewhere: no warning
        "GSO_ANALYTICS_METRICS_TOKN": "typo",
        "OTHER": "1",
    }
    with caplog.at_level(logging.WARNING, "gso_analytics"):
        values = from_environment(environ)
    assert values == {
        "STORE": "memory://",
        "FLUSH_INTERVAL": "2.5",
        "METRICS_TOKEN": TOKEN,
        "METRICS_PUBLIC": True,
    }
    assert "GSO_ANALYTICS_METRICS_TOKN" in caplog.text and "ERASURE" not in caplog.text
    app = FastAPI()
    ext = GSOAnalytics(app, environ=environ, settings={"FLUSH_INTERVAL": 7}, tz="Europe/Paris")
    assert (ext.settings.flush_interval, ext.settings.endpoint.token) == (7.0, TOKEN)
    with TestClient(app) as client:
        analytics = running(client)
        assert str(analytics.tz) == "Europe/Paris"
        assert client.get("/metrics", headers=AUTH).status_code == 200


@pytest.mark.parametrize(
    ("environ", "settings_", "message"),
    [
        (
            {"GSO_ANALYTICS_FLUSH_INTERVAL": "soon", "GSO_ANALYTICS_STORE": "memory://"},
            {},
            "GSO_ANALYTICS_FLUSH_INTERVAL must be",
        ),
        (
            {"GSO_ANALYTICS_FLUSH_INTERVAL": "1"},
            {"FLUSH_INTERVAL": "soon", "STORE": "memory://"},
            r'settings\["FLUSH_INTERVAL"\] must be',
        ),
        ({"GSO_ANALYTICS_METRICS_PUBLIC": "maybe"}, {}, "METRICS_PUBLIC must be true or false"),
        ({}, {"METRICS_TOKN": "x"}, r'unknown setting settings\["METRICS_TOKN"\]'),
        ({}, {}, "GSO_ANALYTICS_STORE is not set"),
    ],
)
def test_bad_settings_fail_at_construction_naming_them(
    environ: dict[str, str], settings_: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        GSOAnalytics(FastAPI(), environ=environ, settings=settings_, testing=False)


def test_twice_on_one_app_is_an_error() -> None:
    app = FastAPI()
    GSOAnalytics(app, settings={"STORE": "memory://"}, environ={})
    with pytest.raises(ConfigurationError, match="already initialised"):
        GSOAnalytics(app, settings={"STORE": "memory://"}, environ={})
    with pytest.raises(ConfigurationError, match="not initialised"):
        get_analytics(type("Conn", (), {"app": FastAPI()})())  # type: ignore[arg-type]


# -- test runs --------------------------------------------------------------------------------


def test_a_pytest_run_counts_into_memory_and_records(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db_url = f"sqlite:///{tmp_path}/game.db"
    app = FastAPI()
    GSOAnalytics(app, environ={"GSO_ANALYTICS_STORE": db_url})  # testing: this pytest run

    @app.post("/dungeon")
    async def dungeon(analytics: AnalyticsDep) -> None:
        analytics.track("dungeon.complete", "u1", {"dungeon": "crypt"})

    with TestClient(app) as client:
        analytics = running(client)
        assert isinstance(analytics, RecordingAnalytics)
        assert client.post("/dungeon").status_code == 200
        assert_tracked(analytics, "dungeon.complete", "u1", dungeon="crypt")
    assert not (tmp_path / "game.db").exists()
    kept = FastAPI()
    GSOAnalytics(kept, environ={"GSO_ANALYTICS_STORE": db_url, "GSO_ANALYTICS_TEST_STORE": "keep"})
    with TestClient(kept):
        pass
    assert (tmp_path / "game.db").exists()


def fixture_app() -> FastAPI:
    """A module-level app as a game has one: its settings from the environment."""
    app = FastAPI()
    GSOAnalytics(
        app, environ={"GSO_ANALYTICS_STORE": "memory://", "GSO_ANALYTICS_METRICS_TOKEN": TOKEN}
    )

    @app.post("/dungeon/{user_id}")
    async def dungeon(user_id: str, analytics: AnalyticsDep) -> None:
        analytics.track("dungeon.complete", user_id, {"dungeon": "crypt"})

    @app.websocket("/play/{user_id}")
    async def ws(websocket: WebSocket, user_id: str, analytics: AnalyticsDep) -> None:
        await websocket.accept()
        async with playing(analytics, user_id) as player:
            async for message in player.messages(websocket, "json"):
                player.track(message["event"])
                await websocket.send_json({"ok": True})

    return app


def test_the_fixture_serves_the_app_under_testclient(
    gso_analytics: RecordingAnalytics, gso_clock: FrozenClock
) -> None:
    app = fixture_app()
    with serving(app, gso_analytics), TestClient(app) as client:
        assert client.post("/dungeon/u1").status_code == 200
        with client.websocket_connect("/play/u2") as ws:
            gso_clock.advance(minutes=5)
            ws.send_json({"event": "quest.complete"})
            assert ws.receive_json() == {"ok": True}
            gso_clock.advance(minutes=1)
        assert client.get("/metrics", headers=AUTH).json()["dau"] == 2
    assert_tracked(gso_analytics, "dungeon.complete", "u1")
    assert_tracked(gso_analytics, "quest.complete", "u2")
    [session] = gso_analytics.store.get_sessions("u2")
    assert session.duration_s == 6 * 60
    assert gso_analytics._started, "the app must not stop the fixture's Analytics"


@pytest.mark.anyio
async def test_the_fixture_serves_the_app_under_httpx(gso_analytics: RecordingAnalytics) -> None:
    app = FastAPI()
    GSOAnalytics(app, analytics=gso_analytics)

    @app.post("/dungeon")
    async def dungeon(analytics: AnalyticsDep) -> None:
        analytics.track("dungeon.complete", "u1", {"dungeon": "tower"})

    transport = httpx.ASGITransport(app=app)  # runs no lifespan: none is needed
    async with httpx.AsyncClient(transport=transport, base_url="http://game") as client:
        assert (await client.post("/dungeon")).status_code == 200
    assert_tracked(gso_analytics, "dungeon.complete", "u1", dungeon="tower")
    with pytest.raises(ConfigurationError, match="used as it is"):
        GSOAnalytics(FastAPI(), analytics=gso_analytics, clock=FrozenClock())


# -- WebSocket sessions -----------------------------------------------------------------------

#: One connection: minutes before each message, then how it ends.
connections = st.lists(
    st.tuples(
        st.lists(st.integers(0, 25), max_size=6),
        st.sampled_from(["close", "error"]),
        st.integers(0, 25),
    ),
    min_size=1,
    max_size=4,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(connections)
def test_a_connection_is_one_session_from_connect_to_its_end(plays: list[Any]) -> None:
    """Each connection's messages are less than the idle timeout apart but may add up to
    more: only if every message is activity is it one session, connect to end."""
    clock = FrozenClock()
    app = FastAPI()
    GSOAnalytics(app, settings={"STORE": "memory://"}, environ={}, clock=clock, strict=True)

    @app.websocket("/play/{user_id}")
    async def ws(websocket: WebSocket, user_id: str, analytics: AnalyticsDep) -> None:
        await websocket.accept()
        async with playing(analytics, user_id) as player:
            async for message in player.messages(websocket, "json"):
                if message == "boom":
                    raise RuntimeError("a bug in the game's handler")
                await websocket.send_json("ok")

    expected: dict[str, list[int]] = {}
    with TestClient(app, raise_server_exceptions=False) as client:
        analytics = running(client)
        for n, (gaps, end, last_gap) in enumerate(plays):
            user = f"p{n}"
            try:
                with client.websocket_connect(f"/play/{user}") as socket:
                    for gap in gaps:
                        clock.advance(minutes=gap)
                        socket.send_json("move")
                        assert socket.receive_json() == "ok"
                    clock.advance(minutes=last_gap)
                    if end == "error":
                        socket.send_json("boom")
                        socket.receive_json()  # the bug ends the connection
            except RuntimeError as exc:  # the test client re-raises the handler's bug
                assert end == "error" and "a bug" in str(exc)
            expected[user] = [(sum(gaps) + last_gap) * 60]
            clock.advance(hours=2)
        analytics.flush()
        got = {
            user: [s.duration_s for s in analytics.store.get_sessions(user)] for user in expected
        }
        assert analytics.store.count_open_sessions() == 0
    assert got == expected
