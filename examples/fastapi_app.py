"""A minimal FastAPI game server counted by gso_analytics: play over a WebSocket.

Start it (from the repository root, after ``pip install -e ".[asgi,prometheus]"
fastapi uvicorn websockets``), three worker processes::

    uvicorn --factory --app-dir examples fastapi_app:create_app --workers 3

A player connects to ``ws://localhost:8000/play?user_id=u1&username=alice`` (the
connection is the session: connecting is the login, closing or dropping it the
logout) and sends JSON messages::

    {"action": "dungeon", "dungeon": "crypt"}
    {"action": "purchase", "pack": "gems_100"}
    {"action": "ping"}

each answered with ``{"ok": true, "pid": ...}`` (the worker's pid). Then read the
metrics (the token is ``GSO_ANALYTICS_METRICS_TOKEN``)::

    curl -H 'Authorization: Bearer dev-token' localhost:8000/metrics
    curl -H 'Authorization: Bearer dev-token' 'localhost:8000/metrics?format=prometheus'
    curl localhost:8000/today

Settings come from the environment (``GSO_ANALYTICS_STORE``, ``..._FLUSH_INTERVAL``,
``..._METRICS_TOKEN``), with defaults good for a laptop. A real game identifies the
player from its own authentication, not from the query string.
"""

from __future__ import annotations

import os
from typing import Annotated, Any

from fastapi import Depends, FastAPI, WebSocket

from gso_analytics import Analytics
from gso_analytics.integrations.asgi import GSOAnalytics, Player, get_analytics, playing

#: Handlers take the app's Analytics as a dependency (HTTP and WebSocket alike).
AnalyticsDep = Annotated[Analytics, Depends(get_analytics)]
#: Credits a player earns per completed dungeon.
DUNGEON_REWARD = {"crypt": 50, "tower": 120}
#: Gem packs: gems granted and their price in USD cents.
GEM_PACKS = {"gems_100": (100, 199), "gems_550": (550, 999)}


def create_app(**options: Any) -> FastAPI:
    """The application factory (``uvicorn --factory``); ``options`` go to ``Analytics``."""
    app = FastAPI()
    GSOAnalytics(
        app,
        settings={
            "STORE": os.environ.get("GSO_ANALYTICS_STORE", "sqlite:///gso_example.db"),
            "FLUSH_INTERVAL": os.environ.get("GSO_ANALYTICS_FLUSH_INTERVAL", "10"),
            # Change it: anyone holding the token reads your game's numbers.
            "METRICS_TOKEN": os.environ.get("GSO_ANALYTICS_METRICS_TOKEN", "dev-token"),
        },
        **options,
    )

    @app.get("/today")
    async def today(analytics: AnalyticsDep) -> dict[str, Any]:
        # A read is store I/O: awaited in a worker thread, never on the event loop.
        metrics = await analytics.aget_metrics()
        return {"dau": metrics.dau, "activeSessions": metrics.active_sessions}

    @app.websocket("/play")
    async def play(
        websocket: WebSocket,
        user_id: str,
        analytics: AnalyticsDep,
        username: str | None = None,
    ) -> None:
        await websocket.accept()
        async with playing(analytics, user_id, username) as player:
            async for message in player.messages(websocket, "json"):
                error = act(player, message)
                reply = {"ok": False, "error": error} if error else {"ok": True}
                await websocket.send_json({**reply, "pid": os.getpid()})

    return app


def act(player: Player, message: Any) -> str | None:
    """Count one message of the player; an error message for one the game refuses."""
    action = message.get("action") if isinstance(message, dict) else None
    if action == "dungeon":
        name = message.get("dungeon")
        if name not in DUNGEON_REWARD:
            return f"dungeon must be one of {sorted(DUNGEON_REWARD)}"
        player.track("dungeon.complete", {"dungeon": name})
        player.track("credits.earn", {"amount": DUNGEON_REWARD[name]})
    elif action == "purchase":
        pack = message.get("pack")
        if pack not in GEM_PACKS:
            return f"pack must be one of {sorted(GEM_PACKS)}"
        gems, cents = GEM_PACKS[pack]
        player.track("stripe.payment", {"amountCents": cents, "pack": pack})
        player.track("gems.purchase", {"gems": gems})
    elif action != "ping":  # a ping is activity only (the message marked it)
        return "action must be 'dungeon', 'purchase' or 'ping'"
    return None
