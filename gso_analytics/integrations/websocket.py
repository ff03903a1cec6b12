"""A WebSocket connection as a play session: ``async with playing(...) as player``.

Why a connection is a session: in a real-time game the player is playing exactly while
the socket is open. So the connection's start is the login, each message the player
sends is activity (a mark that extends the session, see ``Analytics.touch``), and its
end, a clean close, a dropped connection or an error in the handler alike, is the
logout. Without the helper, a handler that forgets the ``finally`` leaves a dropped
player's session open until ``idle_timeout`` ends it at their last mark.

Everything here runs on the event loop as it is: the recording calls do no I/O.

::

    @app.websocket("/play")
    async def play(websocket: WebSocket, analytics: Analytics = Depends(get_analytics)):
        user_id = authenticate(websocket)  # the game's own authentication
        await websocket.accept()
        async with playing(analytics, user_id) as player:
            async for message in player.messages(websocket, "json"):
                if message.get("action") == "dungeon":
                    player.track("dungeon.complete", {"dungeon": message["dungeon"]})
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

import attrs
from starlette.websockets import WebSocket, WebSocketDisconnect

from ..analytics import Analytics

Mode = Literal["text", "bytes", "json"]


@attrs.frozen
class Player:
    """One connected player: the ``Analytics`` calls with the ``user_id`` filled in."""

    analytics: Analytics
    user_id: str

    def touch(self) -> None:
        """Activity with nothing to count (see ``Analytics.touch``)."""
        self.analytics.touch(self.user_id)

    def track(self, event: str, data: dict[str, Any] | None = None) -> None:
        """``Analytics.track(event, user_id, data)``: counted, and activity too."""
        self.analytics.track(event, self.user_id, data)

    async def messages(self, websocket: WebSocket, mode: Mode = "text") -> AsyncIterator[Any]:
        """The messages the player sends (text, bytes or decoded JSON), each one marked
        as activity when it arrives; ends when the client disconnects."""
        receive = {
            "text": websocket.receive_text,
            "bytes": websocket.receive_bytes,
            "json": websocket.receive_json,
        }[mode]
        while True:
            try:
                message = await receive()
            except WebSocketDisconnect:
                return
            self.touch()
            yield message


@asynccontextmanager
async def playing(
    analytics: Analytics, user_id: str, username: str | None = None
) -> AsyncIterator[Player]:
    """``on_login`` on entry and ``on_logout`` on exit, whatever ends the block: the
    client's close, a dropped connection (``WebSocketDisconnect``), an exception, the
    server's shutdown cancelling the handler."""
    analytics.on_login(user_id, username)  # a bad id raises here, before any session
    try:
        yield Player(analytics, user_id)
    finally:
        analytics.on_logout(user_id)
