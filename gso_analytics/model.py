"""The data model: what a flush hands to a store, and what a store hands back.

Timestamps are aware UTC datetimes truncated to milliseconds (the seed's JavaScript
``Date`` resolution), so every backend computes the same rounded durations.
"""

from __future__ import annotations

import functools
import json
import math
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final

import attrs

from .clock import DayKeys, from_ms, resolve_tz
from .counters import DAILY_FIELDS, decode_counters
from .pacing import CHECK_EVERY, paced_slices

Number = int | float


def new_id() -> str:
    """A unique id for a batch or a session (uuid4, hex)."""
    return uuid.uuid4().hex


#: Where a mark's and a session's fields are. Marks, stored sessions and activity runs
#: are plain tuples of scalars, not objects: the cyclic garbage collector untracks an
#: exact tuple of untracked values at its first look (a ``NamedTuple`` or attrs instance
#: stays tracked), so the thousands a flush holds while it walks its players (the
#: batch's marks, the sessions read back and planned) never reach the old generation
#: and never make a full collection due, which would run on the flush thread holding
#: the GIL (10-50 ms: a request's p99.9). A tuple is also several times cheaper to make
#: than a frozen attrs instance. Read them by these positions, or unpack them.
ID: Final = 0
USER: Final = 1
AT: Final = 2
ORIGIN: Final = 3
SEQ: Final = 4
USERNAME: Final = 5
DAY: Final = 6
MONTH: Final = 7
LOGOUT_AT: Final = 8
DURATION: Final = 9
TIMED_OUT: Final = 10
LAST: Final = 11

#: A login call as flushed, or the first mark of a stored session:
#: ``(id, user_id, at_ms, origin, seq, username, day, month)``.
#:
#: A login is an activity mark that carries a username (see :mod:`.sessions`); a session
#: keeps the mark it started at in this shape (an activity mark has no origin: ``origin``
#: is empty and ``seq`` 0 there). Marks are ordered by :func:`mark_key`, their time in
#: milliseconds and then the process (``origin``) and its sequence number: one order for
#: every worker, whatever the order they flush in, and the call order for two calls of
#: one process in the same millisecond. In a session, ``id`` is the session's id.
Login = tuple[str, str, int, str, int, str | None, str, str]

#: A logout call as flushed, a mark on the player's timeline (see :data:`Login`), its
#: first five fields in the same places: ``(id, user_id, at_ms, origin, seq)``.
Logout = tuple[str, str, int, str, int]

#: Where a session stands in the walk of its player's marks:
#: ``(logout_ms, duration_s, timed_out, last_ms)``.
#:
#: ``last_ms`` is its last activity mark; ``logout_ms`` when it ended (its logout, or its
#: last mark once ``idle_timeout`` passed with no mark: ``timed_out``), None while open;
#: ``duration_s`` its seconds so far (end, or last mark, minus start). ``last_ms`` is
#: None only for a session closed by version 0.2 (before activity marks): such a
#: session is kept as it was (:func:`is_frozen`, see :mod:`.sessions`).
SessionEnd = tuple[int | None, int, bool, int | None]

#: A session as a store keeps it: its login mark followed by its current end
#: (``login + end``; fields at :data:`ID` ... :data:`LAST`).
StoredSession = tuple[
    str, str, int, str, int, str | None, str, str, int | None, int, bool, int | None
]

#: One player's activity marks (logins included) of one batch part, sorted:
#: ``(user_id, first_ms, last_ms, marks, logins)``, what a store keeps so that a logout
#: arriving late inside a stored session can split it at the right marks (see
#: :func:`gso_analytics.sessions.plan_sessions`). ``logins`` says which of the marks were
#: logins, as ``(ms, origin, seq)``: their place among a logout's of the same
#: millisecond, and which piece of a split session a login names (no username is kept
#: here: an erased player's would outlive them).
ActivityRun = tuple[str, int, int, tuple[int, ...], tuple[tuple[int, str, int], ...]]


def mark_key(mark: Login | Logout | StoredSession) -> tuple[int, str, int]:
    """A mark's place on its player's timeline (a session's: its first mark's)."""
    return (mark[AT], mark[ORIGIN], mark[SEQ])


def login_of(session: StoredSession) -> Login:
    return session[:8]


def end_of(session: StoredSession) -> SessionEnd:
    return session[8:]


def is_open(session: StoredSession) -> bool:
    return session[LOGOUT_AT] is None


def is_frozen(session: StoredSession) -> bool:
    """A 0.2 session closed before its store was upgraded: never walked again."""
    return session[LAST] is None


def last_mark(session: StoredSession) -> int:
    """Its last mark; a frozen session's end (stores index sessions by it)."""
    last = session[LOGOUT_AT] if session[LAST] is None else session[LAST]
    if last is None:
        raise ValueError("an open session has a last mark")
    return last


#: One event as a flush carries it to a store: ``(ts_ms, user_id, event, data, day)``,
#: the fields of :class:`EventRecord` in order. A plain tuple of ints and strings, not
#: an object: the cyclic garbage collector stops tracking such a tuple at its first
#: look, so the 200,000 events of a large batch add nothing to what every later
#: collection must traverse (each collection holds the GIL, on whichever thread
#: triggers it: a request thread, often). Readers get :class:`EventRecord`.
EventRow = tuple[int, str, str, str, str]


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

    @property
    def row(self) -> EventRow:
        """This record as a batch carries it (see :data:`EventRow`)."""
        return (self.ts_ms, self.user_id, self.event, self.data, self.day)


@attrs.define
class FlushBatch:
    """Everything one process buffered between two flushes, applied exactly once.

    ``counters`` holds increments per day (never totals); ``day_users`` and
    ``month_users`` the activity records whose newly inserted count feeds ``dau`` and
    ``mau``; ``new_users`` the (day, user) registrations, from which the store keeps
    each player's earliest registration day, the day ``newUsers`` counts them (once,
    see :func:`gso_analytics.store.apply_batch`); ``logins``
    and ``logouts`` the marks that sessions are computed from (with
    ``activity`` (user -> the times of their tracked calls and touches, sorted) the
    marks that sessions are computed from with ``idle_timeout_ms`` (see
    :mod:`gso_analytics.sessions`), ``tz`` the timezone of its day keys (a session's
    day is its first mark's); ``payments`` the
    ``stripe.payment`` amounts per day and user (increments, like ``counters``), which
    the per-user revenue facts of the KPIs are kept from.
    """

    id: str = attrs.field(factory=new_id)
    created_at: datetime | None = None
    counters: dict[str, dict[str, Number]] = attrs.field(factory=dict)
    months: dict[str, str] = attrs.field(factory=dict)  # day -> month
    day_users: dict[str, set[str]] = attrs.field(factory=dict)
    month_users: dict[str, set[str]] = attrs.field(factory=dict)
    new_users: dict[str, set[str]] = attrs.field(factory=dict)
    logins: list[Login] = attrs.field(factory=list)
    logouts: list[Logout] = attrs.field(factory=list)
    activity: dict[str, tuple[int, ...]] = attrs.field(factory=dict)
    idle_timeout_ms: int = 30 * 60 * 1000
    tz: str = "UTC"
    events: list[EventRow] = attrs.field(factory=list)  # see EventRow
    payments: dict[str, dict[str, Number]] = attrs.field(factory=dict)  # day -> user -> cents
    #: Bytes its calls weighed beyond ``CALL_BYTES`` each in the buffer's byte bound
    #: (see :mod:`.aggregator`): what it still counts for while it is pending.
    extra_bytes: int = attrs.field(default=0, eq=False)

    @property
    def size(self) -> int:
        """The number of buffered calls this batch carries (its weight in the bound)."""
        return len(self.events) + len(self.logins) + len(self.logouts)

    def players(self) -> set[str]:
        """Every player id the batch carries, in any of its parts. Read on the flush
        thread from a batch of up to a minute of events: paced (see :mod:`.pacing`)."""
        players: set[str] = set()
        for events in paced_slices(self.events, 4 * CHECK_EVERY):
            players.update([event[1] for event in events])
        return (
            players
            | {m[USER] for m in self.logins}
            | {m[USER] for m in self.logouts}
            | set(self.activity)
            | {u for users in self.day_users.values() for u in users}
            | {u for users in self.month_users.values() for u in users}
            | {u for users in self.new_users.values() for u in users}
            | {u for payers in self.payments.values() for u in payers}
        )

    def is_empty(self) -> bool:
        return not (
            self.counters
            or self.day_users
            or self.new_users
            or self.logins
            or self.logouts
            or self.activity
            or self.events
            or self.payments
        )

    def day_of(self, ms: int) -> tuple[str, str]:
        """The (day, month) of ``ms`` in the batch's timezone."""
        return day_keys(self.tz)(ms)

    def parts(
        self,
        max_users: int | None,
        max_events: int | None = None,
        max_bytes: int | None = None,
    ) -> list[FlushBatch]:
        """The batch split into parts of at most ``max_users`` players, ``max_events``
        events and about ``max_bytes`` bytes of events each.

        A store whose transactions must stay bounded (MongoDB: lifetime, cache, the
        oplog) applies the parts one by one, each claimed under its own id
        (``<id>:<n>``), so a retried batch skips the parts already applied and the
        whole is applied exactly once. Everything of one player but events goes to one
        part (the session walk needs all of a player's marks together); a player with
        more events than a part holds has the rest in parts of events alone. The day
        counters, which are not per player, go with the first part. A batch within
        every bound is its own single part. The split depends on the bounds, so a store
        records them with a split batch and splits a retry the same way.
        """
        if max_users is None:
            return [self]
        event_cap = max_events or len(self.events) + 1
        byte_cap = max_bytes or math.inf
        by_player: dict[str, list[int]] = {}
        for start, events in enumerate(paced_slices(self.events, 4 * CHECK_EVERY)):
            base = start * 4 * CHECK_EVERY
            for offset, event in enumerate(events):
                by_player.setdefault(event[1], []).append(base + offset)
        players = sorted(self.players())
        total_bytes = sum(event_bytes(event) for event in self.events)
        if len(players) <= max_users and len(self.events) <= event_cap and total_bytes <= byte_cap:
            return [self]
        groups: list[tuple[set[str], list[int]]] = [(set(), [])]
        size = 0
        for player in players:
            indexes = by_player.get(player, [])
            group, taken = groups[-1]
            if group and (
                len(group) >= max_users
                or len(taken) + len(indexes) > event_cap
                or size + sum(event_bytes(self.events[i]) for i in indexes) > byte_cap
            ):
                groups.append((set(), []))
                size = 0
            groups[-1][0].add(player)
            for index in indexes:
                weight = event_bytes(self.events[index])
                if groups[-1][1] and (len(groups[-1][1]) >= event_cap or size + weight > byte_cap):
                    groups.append((set(), []))  # the rest of this player's events
                    size = 0
                groups[-1][1].append(index)
                size += weight
        return [
            FlushBatch(
                id=f"{self.id}:{n}",
                created_at=self.created_at,
                counters=self.counters if n == 0 else {},
                months=self.months,
                day_users=_only(self.day_users, group),
                month_users=_only(self.month_users, group),
                new_users=_only(self.new_users, group),
                logins=[m for m in self.logins if m[USER] in group],
                logouts=[m for m in self.logouts if m[USER] in group],
                activity={u: marks for u, marks in self.activity.items() if u in group},
                idle_timeout_ms=self.idle_timeout_ms,
                tz=self.tz,
                events=[self.events[i] for i in sorted(indexes)],
                payments={
                    day: kept
                    for day, payers in self.payments.items()
                    if (kept := {u: c for u, c in payers.items() if u in group})
                },
            )
            for n, (group, indexes) in enumerate(groups)
        ]


@functools.lru_cache(maxsize=8)
def day_keys(tz: str) -> DayKeys:
    """The day keys of a timezone name (as :func:`~.clock.tz_name` gives it)."""
    return DayKeys(resolve_tz(tz))


def event_bytes(event: EventRow) -> int:
    """About what one event weighs in a store's transaction: its strings and a fixed
    overhead for its field names, time and id."""
    return len(event[1]) + len(event[2]) + len(event[3]) + 64


def _only(by_key: dict[str, set[str]], group: set[str]) -> dict[str, set[str]]:
    return {key: kept for key, users in by_key.items() if (kept := users & group)}


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
    #: The session's last activity mark (None for a session closed by version 0.2).
    last_at: datetime | None = None

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
            "lastAt": self.last_at,
        }


@attrs.frozen
class DailyStats:
    """One day's counters, as the seed's daily document. Built from the counters as a
    store keeps them: a decimal counter reads as a :class:`~decimal.Decimal` under its
    own name (see :mod:`gso_analytics.counters`)."""

    day: str
    month: str
    counters: Mapping[str, Number] = attrs.field(factory=dict, converter=decode_counters)

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
    """Maintained per-month figures: distinct users, and the sessions that started in
    the month with their seconds (so far), behind ``avgSessionMin``."""

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
    #: Logouts of the batch that ended no session (no login of the player before them).
    unmatched_logouts: int = 0
    #: Increments of an all-time total the ceiling cut (see ``counters.MAX_COUNTER``).
    saturated: int = 0


@attrs.frozen
class PruneResult:
    events_deleted: int = 0
    sessions_timed_out: int = 0


@attrs.frozen
class Heartbeat:
    """One process's health as it was at its last flush, kept in the store.

    Why in the store: a scrape reaches one worker, and only the store is shared by all
    of them, so every scrape can list every live worker's health (see
    :mod:`gso_analytics.heartbeats`). ``process`` (``host:pid``) keys the record: a
    process overwrites its own at each flush. ``stats`` holds numbers only
    (:meth:`~gso_analytics.Analytics.stats` flattened), ``forwarders`` the per
    forwarder counts. The record is live until ``expires_at`` (a few flush intervals
    of its process after ``at``): a worker that stops flushing drops out of the scrape.
    """

    process: str
    host: str
    pid: int
    at: datetime
    expires_at: datetime
    stats: Mapping[str, Number] = attrs.field(factory=dict)
    forwarders: Mapping[str, Mapping[str, Number]] = attrs.field(factory=dict)

    def payload(self) -> str:
        """``stats`` and ``forwarders`` as the JSON text a store keeps."""
        return json.dumps({"stats": self.stats, "forwarders": self.forwarders}, sort_keys=True)

    @classmethod
    def from_payload(
        cls, process: str, host: str, pid: int, at: datetime, expires_at: datetime, text: str
    ) -> Heartbeat:
        data = json.loads(text)
        return cls(process, host, pid, at, expires_at, data["stats"], data["forwarders"])
