"""Documents and the records they are: sessions, logout marks and events as MongoDB
holds them (the seed's camelCase fields), and back."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from gso_analytics.clock import from_ms, to_ms
from gso_analytics.model import (
    ActivityRun,
    EventRecord,
    EventRow,
    Logout,
    SessionRecord,
    StoredSession,
    last_mark,
)
from gso_analytics.sessions import decode_logins, decode_marks, encode_logins, encode_marks

from .options import aware

#: The collections of one day per player (the earliest: first login, first payment,
#: registration) -> the field holding the player. ``new_users`` keeps ``userId``, as
#: the (day, user) records do, so it can be sharded like them.
FIRST_DAYS = {"first_seen": "_id", "first_payments": "_id", "new_users": "userId"}


def safe_keys(value: Any) -> bool:
    """True when every key of a JSON value can be a BSON field name as it is."""
    if isinstance(value, dict):
        return all(
            isinstance(key, str)
            and key
            and key[0] != "$"
            and "." not in key
            and "\x00" not in key
            and safe_keys(item)
            for key, item in value.items()
        )
    if isinstance(value, list):
        return all(safe_keys(item) for item in value)
    return True


def data_value(text: str) -> Any:
    """``data`` as a subdocument (queryable as ``data.amount``, like the seed's), or as
    its JSON text when MongoDB could not hold it field for field."""
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, dict) and safe_keys(value) else text


def data_text(value: Any) -> str:
    """The JSON text ``encode_data`` produced: compact, key order kept by BSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def event_doc(event: EventRow) -> dict[str, Any]:
    ts_ms, user_id, name, data, day = event
    return {
        "ts": from_ms(ts_ms),
        "userId": user_id,
        "event": name,
        "data": data_value(data),
        "day": day,
    }


def event_record(doc: Mapping[str, Any]) -> EventRecord:
    ts_ms = to_ms(aware(doc["ts"]))
    return EventRecord(ts_ms, doc["userId"], doc["event"], data_text(doc["data"]), doc["day"])


def session_record(doc: Mapping[str, Any]) -> SessionRecord:
    return SessionRecord(
        doc["_id"],
        doc["userId"],
        doc.get("username"),
        aware(doc["loginAt"]),
        aware(doc["logoutAt"]) if doc.get("logoutAt") is not None else None,
        int(doc.get("durationS", 0)),
        doc["day"],
        doc["month"],
        bool(doc.get("timedOut", False)),
        None if doc.get("frozen") else aware(doc["lastAt"]),
    )


def stored_session(doc: Mapping[str, Any]) -> StoredSession:
    logout = doc.get("logoutAt")
    return (
        doc["_id"],
        doc["userId"],
        to_ms(aware(doc["loginAt"])),
        doc.get("origin", ""),
        doc.get("seq", 0),
        doc.get("username"),
        doc["day"],
        doc["month"],
        None if logout is None else to_ms(aware(logout)),
        int(doc.get("durationS", 0)),
        bool(doc.get("timedOut", False)),
        None if doc.get("frozen") else to_ms(aware(doc["lastAt"])),
    )


def session_doc(session: StoredSession) -> dict[str, Any]:
    sid, user, at, origin, seq, name, day, month, logout, duration, timed_out, last = session
    return {
        "_id": sid,
        "userId": user,
        "username": name,
        "loginAt": from_ms(at),
        "logoutAt": None if logout is None else from_ms(logout),
        "durationS": duration,
        "day": day,
        "month": month,
        "timedOut": timed_out,
        "open": logout is None,
        "origin": origin,
        "seq": seq,
        # A frozen (0.2) session's end stands for its last mark in the range reads.
        "lastAt": from_ms(last_mark(session)),
        "frozen": last is None,
    }


def activity_doc(run: ActivityRun) -> dict[str, Any]:
    user, first, last, marks, logins = run
    doc = {
        "userId": user,
        "firstAt": from_ms(first),
        "lastAt": from_ms(last),
        "marks": encode_marks(marks),
    }
    if logins:
        doc["logins"] = encode_logins(logins)
    return doc


def activity_run(doc: Mapping[str, Any]) -> ActivityRun:
    return (
        doc["userId"],
        to_ms(aware(doc["firstAt"])),
        to_ms(aware(doc["lastAt"])),
        decode_marks(bytes(doc["marks"])),
        decode_logins(doc.get("logins")),
    )


def logout_mark(doc: Mapping[str, Any]) -> Logout:
    return (doc["_id"], doc["userId"], to_ms(aware(doc["at"])), doc["origin"], doc["seq"])


def logout_doc(logout: Logout) -> dict[str, Any]:
    mark_id, user, at, origin, seq = logout
    return {"_id": mark_id, "userId": user, "at": from_ms(at), "origin": origin, "seq": seq}
