"""The session part of the :class:`~gso_analytics.store.Transaction` vocabulary in SQL:
the players' sessions, logout marks and activity runs read for the walk, what the
walk decided, the prune's idle sessions and old marks. All of the store's session SQL
is here.

A session is found by its last activity mark (``last_ms``, epoch milliseconds, the
walk's values): the walk reads a player's sessions from a moment on through
``(user_id, last_ms)``, and the prune finds the idle ones through a partial index on
``last_ms`` of the open ones."""

from __future__ import annotations

from typing import Any

from gso_analytics.clock import from_ms, to_ms
from gso_analytics.model import ActivityRun, Login, Logout, SessionEnd, StoredSession
from gso_analytics.sessions import decode_marks, encode_marks

SESSION_COLUMNS = (
    "id, user_id, username, login_at, logout_at, duration_s, day, month, timed_out, origin, seq,"
    " last_ms, frozen"
)
LOGOUT_COLUMNS = "id, user_id, at, origin, seq"
#: The columns of :class:`~gso_analytics.model.SessionRecord`, for the reads.
RECORD_COLUMNS = (
    "id, user_id, username, login_at, logout_at, duration_s, day, month, timed_out, last_ms, frozen"
)


def stored_session(row: tuple[Any, ...]) -> StoredSession:
    sid, user, name, login, logout, duration, day, month, timed_out, origin, seq, last, frozen = row
    return StoredSession(
        Login(sid, user, to_ms(login), origin, seq, name, day, month),
        SessionEnd(
            None if logout is None else to_ms(logout), duration, timed_out, None if frozen else last
        ),
    )


def logout_mark(row: tuple[Any, ...]) -> Logout:
    sid, user, at, origin, seq = row
    return Logout(sid, user, to_ms(at), origin, seq)


def sessions_since(cur: Any, s: str, users: set[str], since_ms: int) -> list[StoredSession]:
    """One query for the part: each player's sessions by ``(user_id, last_ms)`` from
    ``since_ms`` on, and their open ones (``sessions_open_user``) whatever their age."""
    rows = cur.execute(
        f"SELECT {SESSION_COLUMNS} FROM {s}.sessions WHERE user_id = ANY(%s) AND last_ms >= %s"
        f" UNION SELECT {SESSION_COLUMNS} FROM {s}.sessions WHERE user_id = ANY(%s)"
        " AND logout_at IS NULL",
        (sorted(users), since_ms, sorted(users)),
    )
    return [stored_session(row) for row in rows]


def logouts_since(cur: Any, s: str, users: set[str], since_ms: int) -> list[Logout]:
    rows = cur.execute(
        f"SELECT {LOGOUT_COLUMNS} FROM {s}.logouts WHERE user_id = ANY(%s) AND at >= %s",
        (sorted(users), from_ms(since_ms)),
    )
    return [logout_mark(row) for row in rows]


def activity_runs(cur: Any, s: str, user_id: str, first_ms: int, last_ms: int) -> list[ActivityRun]:
    rows = cur.execute(
        f"SELECT user_id, first_ms, last_ms, marks FROM {s}.activity"
        " WHERE user_id = %s AND last_ms >= %s AND first_ms <= %s",
        (user_id, first_ms, last_ms),
    )
    return [ActivityRun(u, f, la, decode_marks(bytes(m))) for u, f, la, m in rows]


def save_sessions(cur: Any, s: str, sessions: list[StoredSession]) -> None:
    cur.executemany(
        f"INSERT INTO {s}.sessions ({SESSION_COLUMNS}) VALUES"
        " (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (id) DO UPDATE SET logout_at = excluded.logout_at,"
        " duration_s = excluded.duration_s, timed_out = excluded.timed_out,"
        " last_ms = excluded.last_ms, username = excluded.username",
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
                session.end.last,
                session.end.frozen,
            )
            for session in sessions
        ],
    )


def delete_sessions(cur: Any, s: str, ids: list[str]) -> None:
    cur.execute(f"DELETE FROM {s}.sessions WHERE id = ANY(%s)", (list(ids),))


def insert_logouts(cur: Any, s: str, logouts: list[Logout]) -> None:
    cur.executemany(
        f"INSERT INTO {s}.logouts ({LOGOUT_COLUMNS}) VALUES (%s, %s, %s, %s, %s)",
        [(m.id, m.user_id, from_ms(m.at_ms), m.origin, m.seq) for m in logouts],
    )


def insert_activity(cur: Any, s: str, runs: list[ActivityRun]) -> None:
    """One statement for the part's runs (one per player), from four arrays."""
    cur.execute(
        f"INSERT INTO {s}.activity (user_id, first_ms, last_ms, marks)"
        " SELECT * FROM unnest(%s::text[], %s::bigint[], %s::bigint[], %s::bytea[])",
        (
            [r.user_id for r in runs],
            [r.first_ms for r in runs],
            [r.last_ms for r in runs],
            [encode_marks(r.marks) for r in runs],
        ),
    )


def open_sessions_before(cur: Any, s: str, cutoff_ms: int, limit: int) -> list[StoredSession]:
    rows = cur.execute(
        f"SELECT {SESSION_COLUMNS} FROM {s}.sessions"
        " WHERE logout_at IS NULL AND last_ms < %s LIMIT %s",
        (cutoff_ms, limit),
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


def delete_activity_before(cur: Any, s: str, cutoff_ms: int, limit: int) -> int:
    return int(
        cur.execute(
            f"DELETE FROM {s}.activity WHERE id IN"
            f" (SELECT id FROM {s}.activity WHERE last_ms < %s LIMIT %s)",
            (cutoff_ms, limit),
        ).rowcount
    )


def user_sessions(cur: Any, s: str, where: str, params: Any) -> list[Any]:
    """Session rows for the reads (:data:`RECORD_COLUMNS`)."""
    rows: list[Any] = cur.execute(
        f"SELECT {RECORD_COLUMNS} FROM {s}.sessions WHERE {where}", params
    ).fetchall()
    return rows


#: The open sessions with a mark at or after a moment (the partial index), for
#: :meth:`~gso_analytics.store.Store.count_active_sessions`.
COUNT_ACTIVE = "SELECT count(*) FROM {s}.sessions WHERE logout_at IS NULL AND last_ms >= %s"


def rename_sessions(cur: Any, s: str, user_id: str, token: str) -> dict[str, int]:
    """An erase: the player's sessions (without the username), logout marks and
    activity runs to the token."""
    return {
        "sessions": cur.execute(
            f"UPDATE {s}.sessions SET user_id = %s, username = NULL WHERE user_id = %s",
            (token, user_id),
        ).rowcount,
        "logouts": cur.execute(
            f"UPDATE {s}.logouts SET user_id = %s WHERE user_id = %s", (token, user_id)
        ).rowcount,
        "activity": cur.execute(
            f"UPDATE {s}.activity SET user_id = %s WHERE user_id = %s", (token, user_id)
        ).rowcount,
    }
