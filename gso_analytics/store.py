"""The ``Store`` base class, the meaning of a batch, and ``open_store``.

What a :class:`~gso_analytics.model.FlushBatch` means lives here, once: which records
make ``dau`` and ``mau``, how a logout finds its session (also one opened by another
process, in either flush order), what a duration is and where it is added, which
per-user facts the KPIs read (first-seen and first-payment days, revenue per day and
user). A backend only translates the small :class:`Transaction` vocabulary into its
own writes, inside one atomic unit that also claims the batch id, so a retried batch
is never counted twice.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from importlib import import_module
from importlib.metadata import entry_points
from typing import Any, ClassVar

from .clock import duration_s
from .errors import ConfigurationError
from .model import (
    ApplyResult,
    DailyStats,
    EventRecord,
    FlushBatch,
    MonthStats,
    Number,
    OpenSession,
    PruneResult,
    ReloginClose,
    SessionClose,
    SessionOpen,
    SessionRecord,
)

#: Batch ids are remembered at least this long, far beyond any retry.
MIN_BATCH_RETENTION = timedelta(days=1)


class Transaction(ABC):
    """The writes a backend offers inside one atomic unit of work."""

    @abstractmethod
    def claim_batch(self, batch_id: str, at: datetime) -> bool:
        """Record ``batch_id``; False when it was already recorded (already applied)."""

    def prefetch(self, batch: FlushBatch) -> None:  # noqa: B027 - an optional hint
        """Called once the batch is claimed, before any session read. A store whose
        reads are network round trips loads here, in bulk, what the batch's logins and
        logouts will read (their sessions, pending logouts), instead of one query per
        call; a store that reads locally has nothing to do."""

    @abstractmethod
    def add_day_users(self, day: str, users: set[str]) -> int:
        """Insert the (day, user) records; return how many did not exist before."""

    @abstractmethod
    def add_month_users(self, month: str, users: set[str]) -> int:
        """Insert the (month, user) records; return how many did not exist before."""

    @abstractmethod
    def add_first_seen(self, first_days: dict[str, str]) -> None:
        """Keep, per user, the earliest of the stored first-seen day and ``first_days[user]``.

        An earliest day (not "insert if absent") makes the fact exact whatever order
        processes flush in, and idempotent: applying it twice changes nothing."""

    @abstractmethod
    def add_first_payments(self, first_days: dict[str, str]) -> None:
        """As :meth:`add_first_seen`, for the day of each user's first payment."""

    @abstractmethod
    def add_user_revenue(self, revenue: dict[str, dict[str, Number]]) -> None:
        """Add ``revenue[day][user]`` to the (day, user) revenue records, creating them
        (a payment of 0 still makes its user a payer of the day)."""

    @abstractmethod
    def increment_daily(self, day: str, month: str, increments: dict[str, Number]) -> None:
        """Add ``increments`` to the day's counters, creating the day if needed."""

    @abstractmethod
    def increment_monthly(self, month: str, increments: dict[str, int]) -> None:
        """Add to the month's ``mau``, ``timedSessions`` and ``timedSessionS``."""

    @abstractmethod
    def insert_session(self, op: SessionOpen) -> None:
        """Store a new open session."""

    @abstractmethod
    def find_open_session(
        self, user_id: str, session_id: str | None, before: datetime
    ) -> OpenSession | None:
        """The open session ``session_id``, or without an id the user's newest open
        session that started at or before ``before``."""

    @abstractmethod
    def end_session(
        self,
        session_id: str,
        logout_at: datetime,
        duration: int,
        timed_out: bool,
        relogin_by: str | None = None,
    ) -> None:
        """Close a session found by :meth:`find_open_session` or :meth:`open_sessions_before`.

        ``relogin_by`` is the origin of the process whose second login of the user
        ends the session: the store keeps it with the session until a logout from
        another origin corrects that end (:meth:`find_relogin_close`)."""

    @abstractmethod
    def find_relogin_close(self, user_id: str, at: datetime, origin: str) -> ReloginClose | None:
        """The user's newest session that a second login ended, by another origin than
        ``origin``, with ``login_at <= at < logout_at`` and not corrected yet."""

    @abstractmethod
    def correct_relogin_close(
        self, session: ReloginClose, logout_at: datetime, duration: int
    ) -> None:
        """End ``session`` at ``logout_at`` instead, and forget its second-login mark."""

    @abstractmethod
    def add_pending_logout(self, user_id: str, logout_at: datetime, origin: str) -> None:
        """Remember a logout whose login has not arrived yet."""

    @abstractmethod
    def take_pending_logout(self, user_id: str, login_at: datetime, origin: str) -> datetime | None:
        """Remove and return the user's earliest pending logout at or after ``login_at``
        recorded by another origin than ``origin``."""

    @abstractmethod
    def insert_events(self, events: list[EventRecord]) -> None:
        """Append to the event stream."""

    @abstractmethod
    def delete_events_before(self, cutoff: datetime) -> int:
        """Delete events with ``ts < cutoff``; return how many."""

    @abstractmethod
    def open_sessions_before(self, cutoff: datetime) -> list[OpenSession]:
        """Open sessions that started before ``cutoff``."""

    @abstractmethod
    def delete_pending_logouts_before(self, cutoff: datetime) -> None:
        """Forget pending logouts older than ``cutoff``."""

    @abstractmethod
    def delete_batches_before(self, cutoff: datetime) -> None:
        """Forget batch ids claimed before ``cutoff``."""


class Store(ABC):
    """Where aggregates live. Subclasses implement :meth:`transaction` and the reads.

    ``schemes`` lists the URL schemes :func:`open_store` maps to the class.
    """

    schemes: ClassVar[tuple[str, ...]] = ()

    @classmethod
    @abstractmethod
    def from_url(cls, url: str, **options: Any) -> Store:
        """Open the store a URL names."""

    @abstractmethod
    def transaction(self) -> contextlib.AbstractContextManager[Transaction]:
        """One atomic unit: committed when the block ends, rolled back if it raises."""

    # -- reads --------------------------------------------------------------------

    @abstractmethod
    def get_day(self, day: str) -> DailyStats | None:
        """The day's counters, or None when nothing was recorded that day."""

    @abstractmethod
    def recent_days(self, limit: int = 30) -> list[DailyStats]:
        """The newest ``limit`` days, newest first."""

    @abstractmethod
    def get_month(self, month: str) -> MonthStats:
        """The month's maintained figures (zeros for an unknown month)."""

    @abstractmethod
    def count_open_sessions(self) -> int:
        """Open sessions across every process writing to this store."""

    @abstractmethod
    def get_sessions(self, user_id: str) -> list[SessionRecord]:
        """A user's sessions, oldest first."""

    @abstractmethod
    def get_events(self, user_id: str | None = None, limit: int = 1000) -> list[EventRecord]:
        """The newest events (of one user, when given), oldest first."""

    # -- range reads for the KPIs (days are inclusive ``YYYY-MM-DD`` keys) -----------------
    #
    # Not abstract, so a wrapper or a third-party store written before the KPIs still
    # opens; calling one it lacks raises, it never answers "nothing". Every built-in
    # backend implements them as index range reads bounded by the days asked for.

    def _no_kpi_reads(self, what: str) -> NotImplementedError:
        return NotImplementedError(f"{type(self).__name__} does not implement {what} (KPI reads)")

    def days_between(self, start: str, end: str) -> list[DailyStats]:
        """The daily counters of the days in [start, end] that have any, oldest first."""
        raise self._no_kpi_reads("days_between")

    def day_users_between(self, start: str, end: str) -> dict[str, set[str]]:
        """The (day, user) activity records of [start, end], as day -> users."""
        raise self._no_kpi_reads("day_users_between")

    def first_seen_between(self, start: str, end: str) -> dict[str, set[str]]:
        """The users whose first-seen day is in [start, end], as day -> users."""
        raise self._no_kpi_reads("first_seen_between")

    def first_payments_between(self, start: str, end: str) -> dict[str, set[str]]:
        """The users whose first payment day is in [start, end], as day -> users."""
        raise self._no_kpi_reads("first_payments_between")

    def user_revenue_between(self, start: str, end: str) -> dict[str, dict[str, Number]]:
        """The (day, user) revenue records of [start, end], as day -> user -> cents."""
        raise self._no_kpi_reads("user_revenue_between")

    def sessions_between(self, start: str, end: str) -> list[SessionRecord]:
        """The sessions whose login day is in [start, end] (any order)."""
        raise self._no_kpi_reads("sessions_between")

    def events_between(
        self, start: str | None, end: str | None, names: list[str]
    ) -> list[EventRecord]:
        """The retained events named one of ``names`` whose day is in [start, end]
        (None: unbounded on that side), in time order. The event TTL bounds them."""
        raise self._no_kpi_reads("events_between")

    def close(self) -> None:  # noqa: B027 - a store without resources has nothing to close
        """Release connections. Safe to call twice."""

    def check_event_ttl(self, event_ttl: timedelta) -> None:  # noqa: B027 - any TTL is fine
        """Raise :class:`~gso_analytics.errors.ConfigurationError` for an ``event_ttl``
        this store cannot keep.


        ``Analytics`` calls it when it is built: the TTL is otherwise first used by the
        prune job, in a background thread, where a mistake would only be logged."""

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- writes, shared by every backend ------------------------------------------

    def apply(self, batch: FlushBatch) -> ApplyResult:
        """Apply ``batch`` exactly once, atomically. A retry of an applied batch is a no-op."""
        with self.transaction() as tx:
            return apply_batch(tx, batch)

    def prune(self, now: datetime, event_ttl: timedelta, session_timeout: timedelta) -> PruneResult:
        """Delete expired events; close and flag sessions open longer than ``session_timeout``."""
        with self.transaction() as tx:
            deleted = tx.delete_events_before(now - event_ttl)
            stale = tx.open_sessions_before(now - session_timeout)
            for session in stale:
                tx.end_session(session.session_id, now, 0, timed_out=True)
            tx.delete_pending_logouts_before(now - session_timeout)
            tx.delete_batches_before(now - max(event_ttl, MIN_BATCH_RETENTION))
        return PruneResult(events_deleted=deleted, sessions_timed_out=len(stale))


def apply_batch(tx: Transaction, batch: FlushBatch) -> ApplyResult:
    """Translate a batch into :class:`Transaction` calls. Shared by every backend."""
    created_at = batch.created_at
    if created_at is None:
        raise ValueError("a batch must carry created_at before it is applied")
    if not tx.claim_batch(batch.id, created_at):
        return ApplyResult(duplicate=True)
    if batch.session_ops:
        tx.prefetch(batch)
    daily: defaultdict[str, defaultdict[str, Number]] = defaultdict(lambda: defaultdict(int))
    months = dict(batch.months)
    for day, fields in batch.counters.items():
        daily[day].update(fields)
    monthly: defaultdict[str, defaultdict[str, int]] = defaultdict(lambda: defaultdict(int))

    if batch.day_users:
        tx.add_first_seen(_first_days(batch.day_users))
    if batch.payments:
        tx.add_user_revenue(batch.payments)
        tx.add_first_payments(_first_days(batch.payments))

    new_day_users = 0
    for day, users in batch.day_users.items():
        added = tx.add_day_users(day, users)
        if added:
            daily[day]["dau"] += added
            new_day_users += added
    for month, users in batch.month_users.items():
        added = tx.add_month_users(month, users)
        if added:
            monthly[month]["mau"] += added

    def count(day: str, month: str, seconds: int, sign: int = 1) -> None:
        daily[day]["totalSessionS"] += sign * seconds
        months[day] = month
        if seconds > 0:
            monthly[month]["timedSessions"] += sign
            monthly[month]["timedSessionS"] += sign * seconds

    def close(session: OpenSession, logout_at: datetime, relogin_by: str | None = None) -> None:
        seconds = duration_s(session.login_at, logout_at)
        tx.end_session(session.session_id, logout_at, seconds, False, relogin_by)
        count(session.day, session.month, seconds)

    def correct(ended: ReloginClose, logout_at: datetime) -> None:
        # The second login's end was a guess: take its seconds back, count the real ones.
        seconds = duration_s(ended.login_at, logout_at)
        tx.correct_relogin_close(ended, logout_at, seconds)
        count(ended.day, ended.month, ended.duration_s, sign=-1)
        count(ended.day, ended.month, seconds)

    unmatched = 0
    for op in batch.session_ops:
        if isinstance(op, SessionOpen):
            tx.insert_session(op)
            logout_at = tx.take_pending_logout(op.user_id, op.login_at, op.origin)
            if logout_at is not None:
                close(OpenSession(op.session_id, op.login_at, op.day, op.month), logout_at)
        elif isinstance(op, SessionClose):
            session = tx.find_open_session(op.user_id, op.session_id, op.logout_at)
            if session is None and op.session_id is not None and not op.relogin:
                # A stale id: another process closed that session since, so this
                # logout ends the user's current session, wherever it was opened.
                session = tx.find_open_session(op.user_id, None, op.logout_at)
            if session is not None:
                close(session, op.logout_at, op.origin if op.relogin else None)
            elif not op.relogin:
                # The session may have been ended by a later login in the process that
                # opened it, which could not know of this logout: it ends there instead.
                ended = tx.find_relogin_close(op.user_id, op.logout_at, op.origin)
                if ended is not None:
                    correct(ended, op.logout_at)
                else:
                    # The login may sit in another process's unflushed batch.
                    tx.add_pending_logout(op.user_id, op.logout_at, op.origin)
                    unmatched += 1

    for day, fields in daily.items():
        tx.increment_daily(day, months[day], dict(fields))
    for month, fields in monthly.items():
        tx.increment_monthly(month, dict(fields))
    if batch.events:
        tx.insert_events(batch.events)
    return ApplyResult(new_day_users=new_day_users, unmatched_logouts=unmatched)


def _first_days(by_day: Mapping[str, Iterable[str]]) -> dict[str, str]:
    """user -> the earliest day the user appears under."""
    first: dict[str, str] = {}
    for day in sorted(by_day):
        for user in by_day[day]:
            first.setdefault(user, day)
    return first


# -- open_store -----------------------------------------------------------------------

#: Built-in schemes map to import strings, so a driver loads only when its store is used.
BUILTIN_STORES: dict[str, str] = {
    "memory": "gso_analytics.backends.memory:MemoryStore",
    "sqlite": "gso_analytics.backends.sqlite:SQLiteStore",
    "mongodb": "gso_analytics.backends.mongo:MongoStore",
    "mongodb+srv": "gso_analytics.backends.mongo:MongoStore",
}

ENTRY_POINT_GROUP = "gso_analytics.stores"


def _plugin_stores() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def known_schemes() -> list[str]:
    return sorted(set(BUILTIN_STORES) | set(_plugin_stores()))


def _load(target: str) -> type[Store]:
    module, _, name = target.partition(":")
    return getattr(import_module(module), name)


def store_class(scheme: str) -> type[Store]:
    """The Store class registered for ``scheme`` (built-in first, then entry points)."""
    if scheme in BUILTIN_STORES:
        return _load(BUILTIN_STORES[scheme])
    plugin = _plugin_stores().get(scheme)
    if plugin is None:
        raise ConfigurationError(
            f"unknown store scheme {scheme!r}; known schemes: {', '.join(known_schemes())}"
            f" (more register through the entry-point group {ENTRY_POINT_GROUP!r})"
        )
    return plugin.load()


def open_store(url: str, **options: Any) -> Store:
    """Open a store by URL: ``memory://``, ``sqlite:///relative.db``, ``sqlite:////abs.db``."""
    if not isinstance(url, str) or "://" not in url:
        raise ConfigurationError(
            f"a store URL looks like 'scheme://...', got {url!r};"
            f" known schemes: {', '.join(known_schemes())}"
        )
    scheme = url.split("://", 1)[0].lower()
    return store_class(scheme).from_url(url, **options)
