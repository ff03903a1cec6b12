"""The walk of docs/concepts.md with logins as the only activity (``active_on="login"``),
on plain integers: the session model that the property and the state-machine tests
share (each keeps its own record of the calls).

A login with no session open starts one, with one open moves its last mark; a logout
ends it there; a mark more than ``idle_ms`` after the last ends it at the last (timed
out), as the prune job does for a session whose ``(user, login, last)`` is in
``pruned``. Seconds are ``Math.round((end or last - login) / 1000)``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def seconds_between(login: int, logout: int) -> int:
    """The seed's ``Math.round((logout - login) / 1000)``, halves up, never negative."""
    return max(0, (logout - login + 500) // 1000)


def login_sessions(
    user: str,
    ordered: Iterable[tuple[int, str, str, str]],
    idle_ms: int,
    pruned: set[tuple[Any, ...]],
) -> list[dict[str, Any]]:
    """``ordered``: the player's marks ``(ms, "login" | "logout", day, month)`` in the
    store's order (time, then process and call)."""
    found: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    for at, kind, day, month in ordered:
        if current is not None and at - current["last"] > idle_ms:
            current.update(logout=current["last"], timed_out=True)
            found.append(current)
            current = None
        if kind == "logout":
            if current is not None:
                current.update(logout=at, timed_out=False)
                found.append(current)
                current = None
        elif current is None:
            current = {"user": user, "login": at, "day": day, "month": month}
            current.update(last=at, logout=None, timed_out=False)
        else:
            current["last"] = at
    if current is not None:
        if (user, current["login"], current["last"]) in pruned:
            current.update(logout=current["last"], timed_out=True)
        found.append(current)
    for session in found:
        end = session["last"] if session["logout"] is None else session["logout"]
        session["duration"] = seconds_between(session["login"], end)
    return found
