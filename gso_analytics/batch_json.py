"""A :class:`~.model.FlushBatch` as JSON and back, exactly.

Why: a batch the store refuses for good is set aside in a dead-letter file (see
:mod:`.dead_letters`) to be replayed later, possibly by another process or version, so
the text must give back the same batch: the same id (a replay stays exactly once), the
same ints and floats, the same sets. JSON has no sets nor datetimes, so sets are
sorted lists and ``created_at`` is ISO 8601 text; everything else is plain JSON.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import attrs

from .model import EventRecord, FlushBatch

#: Bumped when the shape changes; :func:`batch_from_json` refuses what it cannot read,
#: and reads the formats before it: 1 had no activity marks, registrations nor
#: timezone (its logins were sessions of their own; they are activity marks now).
FORMAT = 2

#: A login's and a logout's fields (see :data:`~.model.Login`), as the text names them.
_LOGIN_FIELDS = ("id", "user_id", "at_ms", "origin", "seq", "username", "day", "month")
_LOGOUT_FIELDS = _LOGIN_FIELDS[:5]


def _mark(fields: dict[str, Any], names: tuple[str, ...]) -> Any:
    """A login or logout (a tuple) from its fields, all of them and no others."""
    if set(fields) != set(names):
        raise ValueError(f"a mark has the fields {names}, not {sorted(fields)}")
    return tuple(fields[name] for name in names)


def batch_to_dict(batch: FlushBatch) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "id": batch.id,
        "created_at": None if batch.created_at is None else batch.created_at.isoformat(),
        "counters": batch.counters,
        "months": batch.months,
        "day_users": {key: sorted(users) for key, users in batch.day_users.items()},
        "month_users": {key: sorted(users) for key, users in batch.month_users.items()},
        "new_users": {key: sorted(users) for key, users in batch.new_users.items()},
        "logins": [dict(zip(_LOGIN_FIELDS, login, strict=True)) for login in batch.logins],
        "logouts": [dict(zip(_LOGOUT_FIELDS, logout, strict=True)) for logout in batch.logouts],
        "activity": batch.activity,
        "idle_timeout_ms": batch.idle_timeout_ms,
        "tz": batch.tz,
        "events": [attrs.asdict(EventRecord(*row)) for row in batch.events],
        "payments": batch.payments,
    }


def batch_from_dict(data: dict[str, Any]) -> FlushBatch:
    if data.get("format") not in (1, FORMAT):
        raise ValueError(f"not a batch of format {FORMAT}: format {data.get('format')!r}")
    created_at = data["created_at"]
    return FlushBatch(
        id=data["id"],
        created_at=None if created_at is None else datetime.fromisoformat(created_at),
        counters=data["counters"],
        months=data["months"],
        day_users={key: set(users) for key, users in data["day_users"].items()},
        month_users={key: set(users) for key, users in data["month_users"].items()},
        # Absent from files written before it was kept (their registrations were lost).
        new_users={key: set(users) for key, users in data.get("new_users", {}).items()},
        logins=[_mark(login, _LOGIN_FIELDS) for login in data["logins"]],
        logouts=[_mark(logout, _LOGOUT_FIELDS) for logout in data["logouts"]],
        activity={user: tuple(marks) for user, marks in data.get("activity", {}).items()},
        idle_timeout_ms=data.get("idle_timeout_ms", FlushBatch().idle_timeout_ms),
        tz=data.get("tz", "UTC"),
        events=[EventRecord(**event).row for event in data["events"]],
        payments=data["payments"],
    )
