"""The session part of the :class:`~gso_analytics.store.Transaction` vocabulary in SQL:
the players' marks read for the walk, the sessions and logout marks it decided, the
prune's stale sessions and old marks. All of the store's session SQL is here."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gso_analytics.clock import from_ms, to_ms
from gso_analytics.model import Login, Logout, SessionEnd, StoredSession

SESSION_COLUMNS = (
    "id, user_id, username, login_at, logout_at, duration_s, day, month, timed_out, origin, seq"
)
LOGOUT_COLUMNS = "id, user_id, at, origin, seq"


def stored_session(row: tuple[Any, ...]) -> StoredSession:
    sid, user, name, login, logout, duration, day, month, timed_out, origin, seq = row
    return StoredSession(
        Login(sid, user, to_ms(login), origin, seq, name, day, month),
        SessionEnd(None if logout is None else to_ms(logout), duration, timed_out),
    )


def logout_mark(row: tuple[Any, ...]) -> Logout:
    sid, user, at, origin, seq = row
    return Logout(sid, user, to_ms(at), origin, seq)


def session_marks(
    cur: Any, s: str, since: Mapping[str, int], horizon_ms: int
) -> list[StoredSession | Logout]:
    """Two queries for the whole part: the players' sessions from the earliest
    ``since`` minus the horizon on, with their open sessions whatever their age, and
    their logout marks from that moment on (a few more marks than asked, no gaps)."""
    users = sorted(since)
    start = from_ms(min(since.values()) - horizon_ms)
    found: list[StoredSession | Logout] = [
        stored_session(row)
        for row in cur.execute(
            f"SELECT {SESSION_COLUMNS} FROM {s}.sessions WHERE user_id = ANY(%s)"
            " AND (login_at >= %s OR logout_at IS NULL)",
            (users, start),
        )
    ]
    found += [
        logout_mark(row)
        for row in cur.execute(
            f"SELECT {LOGOUT_COLUMNS} FROM {s}.logouts WHERE user_id = ANY(%s) AND at >= %s",
            (users, start),
        )
    ]
    return found


def save_sessions(cur: Any, s: str, sessions: list[StoredSession]) -> None:
    cur.executemany(
        f"INSERT INTO {s}.sessions ({SESSION_COLUMNS}) VALUES"
        " (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (id) DO UPDATE SET logout_at = excluded.logout_at,"
        " duration_s = excluded.duration_s, timed_out = excluded.timed_out",
        [
            (
                session.login.id,
                session.login.user_id,
                session.login.username,
                from_ms(session.login.at_ms),
                None if session.end.logout_ms is None else from_ms(session.end.logout_ms),
                session.end.duration_s,
                session.login.day,
                session.login.month,
                session.end.timed_out,
                session.login.origin,
                session.login.seq,
            )
            for session in sessions
        ],
    )


def insert_logouts(cur: Any, s: str, logouts: list[Logout]) -> None:
    cur.executemany(
        f"INSERT INTO {s}.logouts ({LOGOUT_COLUMNS}) VALUES (%s, %s, %s, %s, %s)",
        [(m.id, m.user_id, from_ms(m.at_ms), m.origin, m.seq) for m in logouts],
    )


def open_sessions_before(cur: Any, s: str, cutoff_ms: int, limit: int) -> list[StoredSession]:
    rows = cur.execute(
        f"SELECT {SESSION_COLUMNS} FROM {s}.sessions"
        " WHERE logout_at IS NULL AND login_at < %s LIMIT %s",
        (from_ms(cutoff_ms), limit),
    )
    return [stored_session(row) for row in rows]


def delete_logouts_before(cur: Any, s: str, cutoff_ms: int, limit: int) -> int:
    return int(
        cur.execute(
            f"DELETE FROM {s}.logouts WHERE id IN"
            f" (SELECT id FROM {s}.logouts WHERE at < %s LIMIT %s)",
            (from_ms(cutoff_ms), limit),
        ).rowcount
    )


def user_sessions(cur: Any, s: str, where: str, params: Any) -> list[Any]:
    """Session rows for the reads (:class:`~gso_analytics.model.SessionRecord` fields)."""
    rows: list[Any] = cur.execute(
        "SELECT id, user_id, username, login_at, logout_at, duration_s, day, month, timed_out"
        f" FROM {s}.sessions WHERE {where}",
        params,
    ).fetchall()
    return rows


def rename_sessions(cur: Any, s: str, user_id: str, token: str) -> dict[str, int]:
    """An erase: the player's sessions (without the username) and marks to the token."""
    return {
        "sessions": cur.execute(
            f"UPDATE {s}.sessions SET user_id = %s, username = NULL WHERE user_id = %s",
            (token, user_id),
        ).rowcount,
        "logouts": cur.execute(
            f"UPDATE {s}.logouts SET user_id = %s WHERE user_id = %s", (token, user_id)
        ).rowcount,
    }
