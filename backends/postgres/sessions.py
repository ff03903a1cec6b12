"""The session part of the :class:`~gso_analytics.store.Transaction` vocabulary in SQL:
the players' sessions, logout marks and activity runs read for the walk, what the
walk decided, the prune's idle sessions and old marks. All of the store's session SQL
is here.

A session is found by what it keeps from its start: the walk reads a player's
sessions from a moment on through ``(user_id, login_at)``, the prune and the count of
active sessions look among the open ones (a partial index on ``login_at``). Its last
activity mark (``last_ms``, epoch milliseconds, the walk's values) is in no index, so
the update that moves it, every flush of an open session, is a HOT one."""

from __future__ import annotations

import json
from typing import Any

from gso_analytics.clock import from_ms, iso_from_ms, to_ms
from gso_analytics.model import ID, ActivityRun, Logout, StoredSession, last_mark
from gso_analytics.sessions import decode_logins, decode_marks, encode_logins, encode_marks

from .arrays import text_array

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
    return (
        *(sid, user, to_ms(login), origin, seq, name, day, month),
        None if logout is None else to_ms(logout),
        duration,
        timed_out,
        None if frozen else last,
    )


def logout_mark(row: tuple[Any, ...]) -> Logout:
    sid, user, at, origin, seq = row
    return (sid, user, to_ms(at), origin, seq)


def sessions_since(cur: Any, s: str, users: set[str], since_ms: int) -> list[StoredSession]:
    """One query for the part: per player, the sessions that start at or after
    ``since_ms`` and the latest one that starts before it, kept if it reaches
    ``since_ms`` or is open. A player's sessions do not overlap (the walk's), so no
    earlier one can reach it, and their only open session is their latest. Both are
    ranges of ``sessions_user`` (player, login time), which never changes: a row's
    last mark, which moves every flush, is in no index (its update stays HOT)."""
    rows = cur.execute(
        f"SELECT found.* FROM unnest(%(users)s::text[]) AS p(player) CROSS JOIN LATERAL"
        f" (SELECT {SESSION_COLUMNS} FROM {s}.sessions WHERE user_id = p.player"
        f" AND login_at >= coalesce((SELECT max(login_at) FROM {s}.sessions"
        " WHERE user_id = p.player AND login_at < %(at)s), %(at)s)"
        " AND (login_at >= %(at)s OR last_ms >= %(since)s OR logout_at IS NULL)) AS found",
        {"users": text_array(sorted(users)), "since": since_ms, "at": from_ms(since_ms)},
    )
    return [stored_session(row) for row in rows]


def logouts_since(cur: Any, s: str, users: set[str], since_ms: int) -> list[Logout]:
    rows = cur.execute(
        f"SELECT {LOGOUT_COLUMNS} FROM {s}.logouts WHERE user_id = ANY(%s::text[]) AND at >= %s",
        (text_array(sorted(users)), from_ms(since_ms)),
    )
    return [logout_mark(row) for row in rows]


def activity_runs(cur: Any, s: str, user_id: str, first_ms: int, last_ms: int) -> list[ActivityRun]:
    rows = cur.execute(
        f"SELECT user_id, first_ms, last_ms, marks, logins FROM {s}.activity"
        " WHERE user_id = %s AND last_ms >= %s AND first_ms <= %s",
        (user_id, first_ms, last_ms),
    )
    return [
        (u, f, la, decode_marks(bytes(m)), decode_logins(logins)) for u, f, la, m, logins in rows
    ]


#: The rows a write sends, as one JSON parameter (``json_to_recordset``): the driver
#: formats a PostgreSQL array element by element in Python (about 3 µs each, so 20 ms
#: for a part's 500 sessions of 13 columns, as long as the server takes to store
#: them), where ``json.dumps`` formats the whole in C and the server parses it.
SESSION_RECORD = (
    "id text, user_id text, username text, login_at timestamptz, logout_at timestamptz,"
    " duration_s bigint, day text, month text, timed_out boolean, origin text, seq bigint,"
    " last_ms bigint, frozen boolean"
)


def _iso(ms: int | None) -> str | None:
    return None if ms is None else iso_from_ms(ms)


def _session_json(session: StoredSession) -> dict[str, Any]:
    sid, user, at, origin, seq, name, day, month, logout, duration, timed_out, last = session
    return {
        "id": sid,
        "user_id": user,
        "username": name,
        "login_at": iso_from_ms(at),
        "logout_at": _iso(logout),
        "duration_s": duration,
        "day": day,
        "month": month,
        "timed_out": timed_out,
        "origin": origin,
        "seq": seq,
        "last_ms": last_mark(session),
        "frozen": last is None,
    }


def save_sessions(cur: Any, s: str, sessions: list[StoredSession]) -> None:
    """One statement for the part's sessions. An id appears once: ``ON CONFLICT DO
    UPDATE`` may not touch a row twice in one statement, and the walk's later decision
    about a session is its last."""
    latest = {session[ID]: session for session in sessions}
    if not latest:
        return
    rows = [_session_json(session) for session in latest.values()]
    cur.execute(
        f"INSERT INTO {s}.sessions ({SESSION_COLUMNS}) SELECT {SESSION_COLUMNS}"
        f" FROM json_to_recordset(%s::json) AS r({SESSION_RECORD})"
        " ON CONFLICT (id) DO UPDATE SET logout_at = excluded.logout_at,"
        " duration_s = excluded.duration_s, timed_out = excluded.timed_out,"
        " last_ms = excluded.last_ms, username = excluded.username",
        (json.dumps(rows),),
    )


def delete_sessions(cur: Any, s: str, ids: list[str]) -> None:
    cur.execute(f"DELETE FROM {s}.sessions WHERE id = ANY(%s::text[])", (text_array(ids),))


def insert_logouts(cur: Any, s: str, logouts: list[Logout]) -> None:
    """One statement, the marks as one JSON parameter (see :data:`SESSION_RECORD`)."""
    rows = [
        {"id": mark_id, "user_id": user, "at": iso_from_ms(at), "origin": origin, "seq": seq}
        for mark_id, user, at, origin, seq in logouts
    ]
    cur.execute(
        f"INSERT INTO {s}.logouts ({LOGOUT_COLUMNS}) SELECT {LOGOUT_COLUMNS}"
        " FROM json_to_recordset(%s::json)"
        " AS r(id text, user_id text, at timestamptz, origin text, seq bigint)",
        (json.dumps(rows),),
    )


def insert_activity(cur: Any, s: str, runs: list[ActivityRun]) -> None:
    """One statement for the part's runs (one per player), as one JSON parameter (see
    :data:`SESSION_RECORD`; the marks' bytes in hex, the logins as
    :func:`~gso_analytics.sessions.encode_logins` writes them)."""
    rows = [
        {
            "user_id": user,
            "first_ms": first,
            "last_ms": last,
            "marks": encode_marks(marks).hex(),
            "logins": encode_logins(logins),
        }
        for user, first, last, marks, logins in runs
    ]
    cur.execute(
        f"INSERT INTO {s}.activity (user_id, first_ms, last_ms, marks, logins)"
        " SELECT user_id, first_ms, last_ms, decode(marks, 'hex'), logins"
        " FROM json_to_recordset(%s::json)"
        " AS r(user_id text, first_ms bigint, last_ms bigint, marks text, logins text)",
        (json.dumps(rows),),
    )


def open_sessions_before(cur: Any, s: str, cutoff_ms: int, limit: int) -> list[StoredSession]:
    rows = cur.execute(
        f"SELECT {SESSION_COLUMNS} FROM {s}.sessions"
        " WHERE logout_at IS NULL AND login_at < %s AND last_ms < %s LIMIT %s",
        (from_ms(cutoff_ms), cutoff_ms, limit),
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


#: The open sessions (their partial index) with a mark at or after a moment, for
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
