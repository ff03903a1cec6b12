"""The Flask extension: ``GSOAnalytics(app)`` or ``GSOAnalytics().init_app(app)``.

``init_app`` reads the ``GSO_ANALYTICS_*`` config keys (see :mod:`.config`), starts an
:class:`~gso_analytics.Analytics`, puts it in ``app.extensions["gso_analytics"]`` for
request handlers (:func:`get_analytics`), and registers the metrics blueprint at
``GSO_ANALYTICS_METRICS_PATH`` (``/metrics``; ``None`` registers none).

Why "started with the app" means at ``init_app``: Flask has no start or shutdown
signal. Under gunicorn ``--preload`` the app is created in the master, so the library
starts there and its fork hook gives every worker an empty buffer and its own flush
thread; without ``--preload`` each worker creates its own. Stopping relies on the exit
hook ``Analytics.start()`` registers: it runs whenever the interpreter exits normally,
which includes gunicorn workers (they leave through ``sys.exit`` on SIGTERM, SIGINT,
SIGQUIT and ``--max-requests``) and ``flask run`` on Ctrl-C. Only a hard kill (SIGKILL,
``os._exit``) skips it, losing at most one ``flush_interval`` of that process's calls.
An app's ``Analytics`` is also stopped when the app itself is garbage-collected: a test
suite that makes an app per test leaves no flush thread per app behind. Flask has no
teardown of its own for an app, so its end of life is the signal.

``GSOAnalytics(app, analytics=...)`` serves an ``Analytics`` made elsewhere (the
``gso_analytics`` pytest fixture, say) instead of building one: the app neither starts
nor stops it, its owner does.

Under ``app.testing`` (``TESTING = True`` before ``init_app``) the configured store URL
is replaced by ``memory://`` unless ``GSO_ANALYTICS_TEST_STORE = "keep"``, and the
``Analytics`` is a :class:`~gso_analytics.testing.RecordingAnalytics`, so a test run
never writes into the game's real numbers and can ``assert_tracked`` what a route did.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

from flask import Blueprint, Flask, Response, current_app, request

from ..analytics import Analytics
from ..errors import ConfigurationError
from .config import PREFIX, build_analytics, prefixed, read_settings
from .metrics import ROUTED_METHODS, VIEWS, MetricsEndpoint, MetricsRequest, View

EXTENSION = "gso_analytics"


class GSOAnalytics:
    """Starts gso_analytics with a Flask app and serves its metrics.

    Keyword arguments are passed to :class:`~gso_analytics.Analytics` (a ``clock`` in
    tests, ``counters`` the game adds) and win over ``GSO_ANALYTICS_OPTIONS``. One
    extension object may serve several apps (the application-factory pattern): each
    app gets its own ``Analytics``.
    """

    def __init__(self, app: Flask | None = None, **options: Any) -> None:
        self.options = options
        if app is not None:
            self.init_app(app)

    def init_app(
        self, app: Flask, *, analytics: Analytics | None = None, **options: Any
    ) -> Analytics:
        """Wire ``app``: its own started ``Analytics``, or ``analytics`` when given
        (then used as it is: not started, not stopped by the app)."""
        if EXTENSION in app.extensions:
            raise ConfigurationError(f"gso_analytics is already initialised on app {app.name!r}")
        shared = analytics if analytics is not None else self.options.get("analytics")
        options = {**self.options, **options}
        options.pop("analytics", None)
        if shared is not None and options:
            raise ConfigurationError(
                f"analytics= is used as it is; options {sorted(options)} cannot apply to it"
            )
        values = prefixed(app.config)
        if shared is not None:  # its store is the app's, whatever the config names
            values["STORE"] = shared.store
        testing = bool(app.testing)
        settings = read_settings(
            values,
            name=lambda key: PREFIX + key,
            testing=testing,
            default_strict=development_server(app),
        )
        own = build_analytics(settings, **options) if shared is None else None
        try:
            if settings.metrics_path is not None:
                blueprint = metrics_blueprint(MetricsEndpoint(settings.endpoint))
                app.register_blueprint(blueprint, url_prefix=settings.metrics_path)
        except BaseException:
            if own is not None:
                own.stop()  # closes the store it opened; nothing was started
            raise
        if own is None:
            app.extensions[EXTENSION] = shared
            return shared  # type: ignore[return-value]
        app.extensions[EXTENSION] = own
        stop_with(app, own)
        return own.start()

    @property
    def analytics(self) -> Analytics:
        """The current app's ``Analytics`` (inside an app or request context)."""
        return get_analytics()


def stop_with(app: Flask, analytics: Analytics) -> None:
    """Stop ``analytics`` when ``app`` is garbage-collected (at interpreter exit its own
    exit hook does). The stop runs in a thread of its own: a collection can happen on
    any thread, the flush thread that the stop joins among them."""

    def stop() -> None:
        threading.Thread(target=analytics.stop, name="gso-analytics-app-gone").start()

    weakref.finalize(app, stop).atexit = False


def development_server(app: Flask) -> bool:
    """True for an app served by a development server: ``app.debug`` (``flask run
    --debug``, ``FLASK_DEBUG=1``, ``app.run(debug=True)``), where bad input is better
    raised than counted (see :mod:`.config`)."""
    return bool(app.debug)


def get_analytics(app: Flask | None = None) -> Analytics:
    """The ``Analytics`` of ``app``, by default of the current app."""
    app = app if app is not None else current_app
    try:
        analytics: Analytics = app.extensions[EXTENSION]
        return analytics
    except KeyError:
        raise ConfigurationError(
            f"gso_analytics is not initialised on app {app.name!r}: call GSOAnalytics(app)"
        ) from None


def metrics_blueprint(endpoint: MetricsEndpoint, name: str = EXTENSION) -> Blueprint:
    """The metrics routes: ``""`` (getMetrics), ``/days`` and ``/stats``.

    Each view translates the Flask request into a :class:`MetricsRequest` and the
    answer into a Flask ``Response``; every decision is :class:`MetricsEndpoint`'s.
    """
    blueprint = Blueprint(name, __name__)

    def serve(view: View) -> Response:
        answer = endpoint.handle(
            get_analytics(),
            view,
            MetricsRequest(
                authorization=request.headers.get("Authorization"),
                accept=request.headers.get("Accept"),
                format=request.args.get("format"),
                method=request.method,
            ),
        )
        return Response(
            answer.body,
            status=answer.status,
            content_type=answer.content_type,
            headers=dict(answer.headers),
        )

    for view in VIEWS:
        rule = "" if view == "metrics" else f"/{view}"
        # Every method reaches the view (and no automatic OPTIONS answer): the
        # endpoint refuses the unsafe ones after authorization (see ROUTED_METHODS).
        blueprint.add_url_rule(
            rule,
            view,
            lambda view=view: serve(view),
            methods=list(ROUTED_METHODS),
            provide_automatic_options=False,
        )
    return blueprint
