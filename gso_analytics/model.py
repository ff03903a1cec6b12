"""The data model: what a flush hands to a store, and what a store hands back.

Timestamps are aware UTC datetimes truncated to milliseconds (the seed's JavaScript
``Date`` resolution), so every backend computes the same rounded durations.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import attrs

from .clock import from_ms
from .counters import DAILY_FIELDS

Number = int | float


def new_id() -> str:
    """A unique id for a batch or a session (uuid4, hex)."""
    return uuid.uuid4().hex


@attrs.frozen
class SessionOpen:
    """A login: a new session record, open until a logout or the session timeout."""

    session_id: str
    user_id: str
    username: str | None
    login_at: datetime
    day: str
    month: str
    origin: str = ""


@attrs.frozen
class SessionClose:
    """A logout. ``session_id`` is known when this process saw the login.

    Without it the store closes the user's newest open session that started before
    ``logout_at``, or remembers the logout until that login arrives from another
    process. ``origin`` names the recording process: a login it records later is
    never the session of its own earlier logout.

    A process's ``session_id`` goes stale when another process handled the user's
    logout (and maybe a new login) since: the store then falls back to the user's
    newest open session, as without an id. ``relogin`` marks the close that a second
    login in the same process implies: it ends that very session if still open,
    nothing else.
    """

    user_id: str
    logout_at: datetime
    session_id: str | None = None
    origin: str = ""
    relogin: bool = False


@attrs.define
class EventRecord:
    """One entry of the event stream; ``data`` is JSON text, validated at the call.

    The time is kept as integer milliseconds since the epoch (``ts_ms``), as the
    aggregator stamps it: a flush builds one record per event, and neither a
    ``datetime`` nor a frozen class (whose ``__init__`` goes through
    ``object.__setattr__``) is paid for per event; a store formats the milliseconds as
    it stores them. ``ts`` is the same moment as an aware UTC datetime, for readers.
    """

    ts_ms: int
    user_id: str
    event: str
    data: str
    day: str

    @property
    def ts(self) -> datetime:
        return from_ms(self.ts_ms)


SessionOp = SessionOpen | SessionClose


@attrs.define
class FlushBatch:
    """Everything one process buffered between two flushes, applied exactly once.

    ``counters`` holds increments per day (never totals); ``day_users`` and
    ``month_users`` the activity records whose newly inserted count feeds ``dau`` and
    ``mau``; ``session_ops`` the logins and logouts in call order; ``payments`` the
    ``stripe.payment`` amounts per day and user (increments, like ``counters``), which
    the per-user revenue facts of the KPIs are kept from.
    """

    id: str = attrs.field(factory=new_id)
    created_at: datetime | None = None
    counters: dict[str, dict[str, Number]] = attrs.field(factory=dict)
    months: dict[str, str] = attrs.field(factory=dict)  # day -> month
    day_users: dict[str, set[str]] = attrs.field(factory=dict)
    month_users: dict[str, set[str]] = attrs.field(factory=dict)
    session_ops: list[SessionOp] = attrs.field(factory=list)
    events: list[EventRecord] = attrs.field(factory=list)
    payments: dict[str, dict[str, Number]] = attrs.field(factory=dict)  # day -> user -> cents

    @property
    def size(self) -> int:
        """The number of buffered calls this batch carries (its weight in the bound)."""
        return len(self.events) + len(self.session_ops)

    def is_empty(self) -> bool:
        return not (
            self.counters or self.day_users or self.session_ops or self.events or self.payments
        )


@attrs.frozen
class OpenSession:
    """What a store knows of an open session when a logout closes it."""

    session_id: str
    login_at: datetime
    day: str
    month: str


@attrs.frozen
class ReloginClose:
    """A session a second login ended in the process that opened it.

    That end is the process's best guess: the player's real logout may have been
    recorded by another process and reach the store later. Such a logout, stamped
    inside ``[login_at, logout_at)``, corrects the session (see
    :func:`~gso_analytics.store.apply_batch`).
    """

    session_id: str
    login_at: datetime
    logout_at: datetime
    duration_s: int
    day: str
    month: str


@attrs.frozen
class SessionRecord:
    """A stored session, as the seed's session document."""

    session_id: str
    user_id: str
    username: str | None
    login_at: datetime
    logout_at: datetime | None
    duration_s: int
    day: str
    month: str
    timed_out: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "sessionId": self.session_id,
            "userId": self.user_id,
            "username": self.username,
            "loginAt": self.login_at,
            "logoutAt": self.logout_at,
            "durationS": self.duration_s,
            "day": self.day,
            "month": self.month,
            "timedOut": self.timed_out,
        }


@attrs.frozen
class DailyStats:
    """One day's counters, as the seed's daily document."""

    day: str
    month: str
    counters: Mapping[str, Number] = attrs.field(factory=dict)

    def __getitem__(self, field: str) -> Number:
        return self.counters.get(field, 0)

    def to_dict(self) -> dict[str, Any]:
        """The seed's camelCase document: every seed field (0 when absent), then extras."""
        doc: dict[str, Any] = {"day": self.day, "month": self.month}
        for field in DAILY_FIELDS:
            doc[field] = self.counters.get(field, 0)
        for field in sorted(self.counters):
            doc.setdefault(field, self.counters[field])
        return doc


@attrs.frozen
class MonthStats:
    """Maintained per-month figures: distinct users and the timed sessions' sum."""

    month: str
    mau: int = 0
    timed_sessions: int = 0
    timed_session_s: int = 0

    @classmethod
    def from_fields(cls, month: str, fields: Mapping[str, int]) -> MonthStats:
        """From the stored camelCase fields (``mau``, ``timedSessions``, ``timedSessionS``)."""
        return cls(
            month,
            mau=fields.get("mau", 0),
            timed_sessions=fields.get("timedSessions", 0),
            timed_session_s=fields.get("timedSessionS", 0),
        )


@attrs.frozen
class Metrics:
    """The seed's ``getMetrics()`` result."""

    today: DailyStats | None
    dau: int
    mau: int
    avg_session_min: int
    active_sessions: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "today": self.today.to_dict() if self.today else {},
            "dau": self.dau,
            "mau": self.mau,
            "avgSessionMin": self.avg_session_min,
            "activeSessions": self.active_sessions,
        }


@attrs.frozen
class ApplyResult:
    """What ``Store.apply`` did: ``duplicate`` when the batch id was already applied."""

    duplicate: bool = False
    new_day_users: int = 0
    unmatched_logouts: int = 0


@attrs.frozen
class PruneResult:
    events_deleted: int = 0
    sessions_timed_out: int = 0
