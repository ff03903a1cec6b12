"""The ASGI integration, for Starlette and FastAPI: ``GSOAnalytics(app)``.

``GSOAnalytics(app)`` reads the settings (the ``GSO_ANALYTICS_*`` environment variables,
then ``settings={...}`` with the same short keys as Django's ``GSO_ANALYTICS`` dict; see
:mod:`.config`), adds the metrics routes at ``METRICS_PATH`` (``/metrics``), and hooks
the app's lifespan: at startup it builds and starts an
:class:`~gso_analytics.Analytics`, at shutdown it stops it (the final flush, bounded by
``stop_timeout``). Handlers reach it with :func:`get_analytics`, also a FastAPI
dependency (``analytics: Analytics = Depends(get_analytics)``), HTTP and WebSocket alike.

Why the lifespan and not the constructor, as Flask does: an ASGI server tells the app
when it starts and stops, so the library lives exactly as long as the app serves (each
``uvicorn --workers`` process has its own), and a test suite that enters ``with
TestClient(app)`` in every test gets a fresh ``Analytics`` each time instead of one
stopped by the previous test. Settings are still checked in the constructor, so a typo
fails at import, not at the first request.

Why threads: a flush and every read are store I/O (a SQLite write, a MongoDB round
trip), which on the event loop would stall every connection of the worker. The metrics
endpoint runs :class:`~.metrics.MetricsEndpoint` in the thread pool, the final flush at
shutdown too, and handlers use ``await analytics.aget_metrics()``. The recording calls
(``track()``, ``on_login()``, ``touch()``) do no I/O and are called on the loop as they are.

In a pytest run (:func:`gso_analytics.testing.is_test_run`) or with ``testing=True``
the configured store URL is replaced by ``memory://`` (unless ``TEST_STORE`` is
``"keep"``) and the instance is a :class:`~gso_analytics.testing.RecordingAnalytics`,
as in Flask and Django test runs. ``GSOAnalytics(app, analytics=...)`` and
:func:`serving` make the app use an ``Analytics`` made elsewhere (the ``gso_analytics``
fixture), which the app neither starts nor stops.

WebSocket games: :func:`playing` makes a connection a session (see :mod:`.websocket`).
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from typing import Any

import anyio.to_thread
from starlette.applications import Starlette
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route, Router
from starlette.types import ASGIApp

from ..analytics import Analytics
from ..errors import ConfigurationError
from ..testing import is_test_run
from .config import PREFIX, Settings, build_analytics, from_environment, read_settings
from .metrics import ROUTED_METHODS, VIEWS, MetricsEndpoint, MetricsRequest, View
from .websocket import Player, playing

log = logging.getLogger("gso_analytics")

STATE = "gso_analytics"

__all__ = ["GSOAnalytics", "Player", "get_analytics", "playing", "serving"]


class GSOAnalytics:
    """Starts gso_analytics with a Starlette or FastAPI app and serves its metrics.

    :param app: the application; its lifespan starts and stops the library.
    :param settings: settings by short key (``{"STORE": ..., "METRICS_TOKEN": ...}``),
        over the ``GSO_ANALYTICS_*`` environment variables.
    :param analytics: an ``Analytics`` made elsewhere, used as it is (neither started nor
        stopped by the app); then no option may be given.
    :param testing: a test run (``memory://``, a ``RecordingAnalytics``); by default, a
        pytest run.
    :param environ: where the environment variables are read (``os.environ``).
    :param options: ``Analytics`` keyword arguments (``clock``, ``counters``, ...), over
        ``settings["OPTIONS"]``.
    """

    def __init__(
        self,
        app: Starlette,
        *,
        settings: Mapping[str, Any] | None = None,
        analytics: Analytics | None = None,
        testing: bool | None = None,
        environ: Mapping[str, str] | None = None,
        **options: Any,
    ) -> None:
        if analytics is not None and options:
            raise ConfigurationError(
                f"analytics= is used as it is; options {sorted(options)} cannot apply to it"
            )
        state = app.state
        if getattr(state, STATE, None) is not None:
            raise ConfigurationError("gso_analytics is already initialised on this app")
        given = dict(settings or {})
        values = {**from_environment(os.environ if environ is None else environ), **given}
        if analytics is not None:  # its store is the app's, whatever the settings name
            values["STORE"] = analytics.store
        self.settings: Settings = read_settings(
            values,
            name=lambda key: f'settings["{key}"]' if key in given else PREFIX + key,
            testing=is_test_run() if testing is None else testing,
            default_strict=bool(getattr(app, "debug", False)),
        )
        self.options = options
        self.endpoint = MetricsEndpoint(self.settings.endpoint)
        self._given = analytics
        self._serving: Analytics | None = None  # set by serving()
        self._own: Analytics | None = None  # built and started by the lifespan
        if self.settings.metrics_path is not None:
            app.router.routes[0:0] = self.metrics_routes(self.settings.metrics_path)
        app.router.lifespan_context = self._lifespan(app.router.lifespan_context)
        setattr(state, STATE, self)

    @property
    def analytics(self) -> Analytics:
        """The ``Analytics`` the app uses now; an error outside its lifespan."""
        current = next((a for a in (self._serving, self._given, self._own) if a is not None), None)
        if current is None:
            raise ConfigurationError(
                "gso_analytics is not running: the app's lifespan has not started (an ASGI"
                " server runs it; in tests enter 'with TestClient(app)' or run the lifespan)"
            )
        return current

    # -- lifespan ---------------------------------------------------------------------

    def _lifespan(
        self, inner: Any
    ) -> Any:  # Starlette's Lifespan type varies across versions: any callable
        """The app's lifespan, with the library started before it and stopped after."""

        @asynccontextmanager
        async def lifespan(app: Any) -> AsyncIterator[Any]:
            await self.startup()
            try:
                context: AbstractAsyncContextManager[Any] = inner(app)
                async with context as state:
                    yield state
            finally:
                await self.shutdown()

        return lifespan

    async def startup(self) -> None:
        """Build and start this app's ``Analytics`` (none when one was given)."""
        if self._given is not None or self._serving is not None or self._own is not None:
            return
        # Opening the store is I/O (a SQLite file, a MongoDB connection): off the loop.
        own = await anyio.to_thread.run_sync(
            functools.partial(build_analytics, self.settings, **self.options)
        )
        self._own = own.start()  # a thread started, no I/O

    async def shutdown(self) -> None:
        """Stop it: the final flush in a worker thread, so the loop (other apps'
        shutdowns, the server's) goes on meanwhile. ``Analytics.stop()`` bounds it by
        ``stop_timeout`` and ``forward_stop_timeout``."""
        own, self._own = self._own, None
        if own is not None and not await anyio.to_thread.run_sync(own.stop):
            log.warning("gso_analytics: the final flush did not store everything (see above)")

    # -- the metrics endpoint ---------------------------------------------------------

    def metrics_routes(self, prefix: str) -> list[BaseRoute]:
        """The metrics routes under ``prefix``: ``prefix`` (getMetrics), ``/days`` and
        ``/stats``, taking every method (the endpoint refuses the unsafe ones only after
        authorization, see :mod:`.metrics`)."""
        routes: list[BaseRoute] = []
        for view in VIEWS:
            path = (prefix or "/") if view == "metrics" else f"{prefix}/{view}"
            routes.append(
                Route(
                    path,
                    self._view(view),
                    methods=list(ROUTED_METHODS),
                    name=f"gso_analytics.{view}",
                    include_in_schema=False,
                )
            )
        return routes

    def metrics_app(self) -> ASGIApp:
        """The endpoint as an ASGI app to mount (``app.mount("/metrics",
        ext.metrics_app())`` with ``METRICS_PATH=None``); it serves ``/``, ``/days``
        and ``/stats`` under the mount point."""
        return Router(routes=self.metrics_routes(""))

    def _view(self, view: View) -> Any:
        async def serve(request: Request) -> Response:
            query = request.query_params
            answer = await anyio.to_thread.run_sync(
                self.endpoint.handle,
                self.analytics,
                view,
                MetricsRequest(
                    authorization=request.headers.get("Authorization"),
                    accept=request.headers.get("Accept"),
                    format=query.get("format"),
                    method=request.method,
                ),
            )
            headers = {**answer.headers, "Content-Type": answer.content_type}
            return Response(answer.body, status_code=answer.status, headers=headers)

        return serve


def _extension(app: Any) -> GSOAnalytics:
    ext = getattr(app.state, STATE, None)
    if not isinstance(ext, GSOAnalytics):
        raise ConfigurationError("gso_analytics is not initialised on this app: GSOAnalytics(app)")
    return ext


def get_analytics(connection: HTTPConnection) -> Analytics:
    """The ``Analytics`` of the app serving ``connection`` (a ``Request`` or a
    ``WebSocket``); as a FastAPI dependency: ``Depends(get_analytics)``."""
    return _extension(connection.app).analytics


@contextmanager
def serving(app: Starlette, analytics: Analytics) -> Iterator[Analytics]:
    """Within the block the app uses ``analytics`` (the ``gso_analytics`` fixture's, say)
    instead of its own, with the same metrics settings; the app's lifespan then builds
    none. Neither is stopped here."""
    ext = _extension(app)
    previous, ext._serving = ext._serving, analytics
    try:
        yield analytics
    finally:
        ext._serving = previous
