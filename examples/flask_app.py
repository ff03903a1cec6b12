"""A minimal Flask game backend counted by gso_analytics.

Start it (from the repository root, after ``pip install -e ".[flask,prometheus]"``)::

    flask --app examples/flask_app.py run

or with gunicorn, three workers, the app created once before the fork::

    gunicorn -w 3 --preload --chdir examples 'flask_app:create_app()'

Then play and read the metrics (the token is ``GSO_ANALYTICS_METRICS_TOKEN``)::

    curl -X POST localhost:5000/login -H 'Content-Type: application/json' \\
         -d '{"user_id": "u1", "username": "alice"}'
    curl -X POST localhost:5000/dungeon -H 'Content-Type: application/json' \\
         -d '{"user_id": "u1", "dungeon": "crypt"}'
    curl -X POST localhost:5000/purchase -H 'Content-Type: application/json' \\
         -d '{"user_id": "u1", "pack": "gems_100"}'
    curl -X POST localhost:5000/logout -H 'Content-Type: application/json' \\
         -d '{"user_id": "u1"}'
    curl -H 'Authorization: Bearer dev-token' localhost:5000/metrics
    curl -H 'Authorization: Bearer dev-token' 'localhost:5000/metrics?format=prometheus'

Settings come from the environment (``GSO_ANALYTICS_STORE``, ``..._FLUSH_INTERVAL``,
``..._METRICS_TOKEN``), with defaults good for a laptop. A real game identifies the
player from its own authentication, not from the request body.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from flask import Flask, jsonify, request

from gso_analytics.integrations.flask import GSOAnalytics, get_analytics

#: Credits a player earns per completed dungeon.
DUNGEON_REWARD = {"crypt": 50, "tower": 120}
#: Gem packs: gems granted and their price in USD cents.
GEM_PACKS = {"gems_100": (100, 199), "gems_550": (550, 999)}

analytics_ext = GSOAnalytics()


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """The application factory (``flask run`` and gunicorn find it by name)."""
    app = Flask(__name__)
    app.config.update(
        GSO_ANALYTICS_STORE=os.environ.get("GSO_ANALYTICS_STORE", "sqlite:///gso_example.db"),
        GSO_ANALYTICS_FLUSH_INTERVAL=os.environ.get("GSO_ANALYTICS_FLUSH_INTERVAL", "10"),
        # Change it: anyone holding the token reads your game's numbers.
        GSO_ANALYTICS_METRICS_TOKEN=os.environ.get("GSO_ANALYTICS_METRICS_TOKEN", "dev-token"),
    )
    app.config.update(config or {})
    analytics_ext.init_app(app)
    register_routes(app)
    return app


class BadRequest(Exception):
    """A request this game refuses (answered 400)."""


def _player() -> tuple[str, dict[str, Any]]:
    body = request.get_json(silent=True) or {}
    user_id = body.get("user_id")
    if not isinstance(user_id, str) or not user_id:
        raise BadRequest("user_id (a non-empty string) is required")
    return user_id, body


def _ok(**extra: Any) -> Any:
    # The worker's pid shows which gunicorn worker answered.
    return jsonify(ok=True, pid=os.getpid(), **extra)


def register_routes(app: Flask) -> None:
    @app.errorhandler(BadRequest)
    def bad_request(error: BadRequest) -> Any:
        return jsonify(ok=False, error=str(error)), 400

    @app.get("/")
    def index() -> Any:
        return _ok(routes=["POST /login", "POST /logout", "POST /dungeon", "POST /purchase"])

    @app.post("/login")
    def login() -> Any:
        user_id, body = _player()
        get_analytics().on_login(user_id, body.get("username"))
        return _ok()

    @app.post("/logout")
    def logout() -> Any:
        user_id, _ = _player()
        get_analytics().on_logout(user_id)
        return _ok()

    @app.post("/dungeon")
    def dungeon() -> Any:
        user_id, body = _player()
        name = body.get("dungeon", "crypt")
        if name not in DUNGEON_REWARD:
            raise BadRequest(f"dungeon must be one of {sorted(DUNGEON_REWARD)}")
        analytics = get_analytics()
        analytics.track("dungeon.complete", user_id, {"dungeon": name})
        analytics.track("credits.earn", user_id, {"amount": DUNGEON_REWARD[name]})
        return _ok(credits=DUNGEON_REWARD[name])

    @app.post("/purchase")
    def purchase() -> Any:
        user_id, body = _player()
        pack = body.get("pack")
        if pack not in GEM_PACKS:
            raise BadRequest(f"pack must be one of {sorted(GEM_PACKS)}")
        gems, cents = GEM_PACKS[pack]
        analytics = get_analytics()
        analytics.track("stripe.payment", user_id, {"amountCents": cents, "pack": pack})
        analytics.track("gems.purchase", user_id, {"gems": gems})
        return _ok(gems=gems)
