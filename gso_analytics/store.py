"""The ``Store`` base class, the meaning of a batch, and ``open_store``.

What a :class:`~gso_analytics.model.FlushBatch` means lives here, once: which records
make ``dau`` and ``mau``, how sessions follow from the players' marks (the walk in
:mod:`.sessions`), which per-user facts the KPIs read (first-seen and first-payment
days, revenue per day and user). A backend only translates the small
:class:`Transaction` vocabulary into its own writes, inside one atomic unit that also
claims the batch id, so a retried batch is never counted twice.
"""

from __future__ import annotations

import contextlib
import json
import time
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta
from importlib import import_module
from importlib.metadata import entry_points
from typing import Any, ClassVar, Self, TypeVar

from .clock import from_ms, iso_from_ms, to_ms
from .counters import NEW_USERS
from .erasure import (
    ErasureReceipt,
    UserRecords,
    keyed_hash,
    new_secret,
    new_token,
    rename_users,
    session_export,
)
from .errors import ConfigurationError
from .model import (
    ApplyResult,
    DailyStats,
    EventRecord,
    EventRow,
    FlushBatch,
    Heartbeat,
    Logout,
    Mark,
    MonthStats,
    Number,
    PruneResult,
    SessionRecord,
    StoredSession,
)
from .pacing import Pacer, paced_slices
from .sessions import SessionChanges, earliest, plan_sessions, time_out

T = TypeVar("T")

#: Batch ids are remembered at least this long after the batch was made
#: (``created_at``, the time :meth:`Transaction.claim_batch` stores), and longer with a
#: longer ``event_ttl``. Every process's prune job uses at least this bound, whatever
#: its own ``event_ttl``, so a worker can rely on it alone.
MIN_BATCH_RETENTION = timedelta(days=7)
#: The flusher retries a batch only this long after it was made: a retry later than
#: that could find its id forgotten by a prune (in any process) and count the batch a
#: second time, so the batch is set aside instead (see :mod:`.flusher`). The day of
#: margin covers clocks of different hosts and a prune running meanwhile.
MAX_RETRY_AGE = MIN_BATCH_RETENTION - timedelta(days=1)
#: How long the prune job keeps a heartbeat after it expired (it is not read any more;
#: kept a little for someone looking into the store after a crash).
HEARTBEAT_KEPT = timedelta(hours=1)
#: The most events :meth:`Store.export_user` reads (the event TTL bounds them anyway).
EXPORT_EVENT_LIMIT = 2**31 - 1
#: Expired events are deleted at most this many per transaction, so a writer waits for
#: one chunk, never for the whole prune.
PRUNE_CHUNK = 5000
#: After each chunk the prune job pauses as long as the chunk took (at most this), so
#: writers waiting for the lock, in this process or another, get it between chunks.
PRUNE_MAX_PAUSE_S = 0.1


class Transaction(ABC):
    """The writes a backend offers inside one atomic unit of work."""

    @abstractmethod
    def claim_batch(self, batch_id: str, at: datetime) -> bool:
        """Record ``batch_id``; False when it was already recorded (already applied)."""

    @abstractmethod
    def add_day_users(self, day: str, users: set[str]) -> int:
        """Insert the (day, user) records; return how many did not exist before."""

    @abstractmethod
    def add_month_users(self, month: str, users: set[str]) -> int:
        """Insert the (month, user) records; return how many did not exist before."""

    @abstractmethod
    def registration_days(self, users: set[str]) -> dict[str, str]:
        """The stored registration day of each of ``users`` that has one: the day of
        their earliest ``user.register`` the store has seen, one record per player."""

    @abstractmethod
    def set_registration_days(self, days: dict[str, str]) -> None:
        """Keep, per user, the earliest of the stored registration day and
        ``days[user]``, creating the record (as :meth:`add_first_seen`).

        :func:`apply_batch` moves the ``newUsers`` counts from what
        :meth:`registration_days` read in the same transaction, so a store whose
        transactions are snapshots must make this write conflict with another
        transaction's write of the same player's record (MongoDB: one document per
        player, under a unique index on ``userId``)."""

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
        """Add ``increments`` to the day's counters, creating the day if needed, and to
        the all-time totals (:meth:`Store.get_totals`) in the same atomic unit.

        Why one record of totals kept beside the days rather than a sum of the days at
        read time: a scrape reads one record whatever the length of history, and since
        both change in the same unit, the totals are exactly the sum of the days (a
        day that ends does not take anything back, so they never drop at midnight)."""

    @abstractmethod
    def increment_monthly(self, month: str, increments: dict[str, int]) -> None:
        """Add to the month's ``mau``, ``timedSessions`` and ``timedSessionS``, and to
        the all-time totals, as :meth:`increment_daily` does (the totals of the timed
        sessions are the count and sum of every closed session's seconds)."""

    # -- sessions: the marks and what the walk made of them ----------------------------

    @abstractmethod
    def session_marks(
        self, since: Mapping[str, int], horizon_ms: int
    ) -> list[StoredSession | Logout]:
        """For each user of ``since``: the stored logins (with their sessions' current
        ends) and logouts at or after ``since[user]`` (ms); the newest stored mark
        before it when it is at most ``horizon_ms`` older; and the user's open session
        whatever its time. More marks may come back, as long as they reach without a
        gap to the user's newest (a store that reads in bulk may return everything
        from ``min(since) - horizon_ms`` on)."""

    @abstractmethod
    def save_sessions(self, sessions: list[StoredSession]) -> None:
        """Store each session in the state given, inserting it or replacing it by id."""

    @abstractmethod
    def insert_logouts(self, logouts: list[Logout]) -> None:
        """Store logout marks (new ids)."""

    def write_sessions(self, changes: SessionChanges) -> None:
        """Store what :func:`~.sessions.plan_sessions` decided and add its differences
        to the aggregates."""
        if changes.logouts:
            self.insert_logouts(changes.logouts)
        if changes.sessions:
            self.save_sessions(changes.sessions)
        for day, fields in changes.daily.items():
            if any(fields.values()):
                self.increment_daily(day, changes.months[day], dict(fields))
        for month, fields in changes.monthly.items():
            if any(fields.values()):
                self.increment_monthly(month, dict(fields))

    @abstractmethod
    def open_sessions_before(self, cutoff_ms: int, limit: int) -> list[StoredSession]:
        """At most ``limit`` open sessions whose login is before ``cutoff_ms`` (any of
        them: the prune job times them out a chunk per transaction)."""

    @abstractmethod
    def delete_logouts_before(self, cutoff_ms: int, limit: int) -> int:
        """Forget at most ``limit`` logout marks older than ``cutoff_ms`` (no batch that
        late is taken); return how many."""

    @abstractmethod
    def insert_events(self, events: list[EventRow]) -> None:
        """Append to the event stream. A backend builds its rows or documents from a
        long list in :func:`~.pacing.paced_slices`, so the flush shares the GIL."""

    @abstractmethod
    def delete_events_until(self, last: datetime, limit: int) -> int:
        """Delete at most ``limit`` events with ``ts <= last`` (any of them); return
        how many. The prune job calls it until fewer than ``limit`` go, each call in
        its own transaction, so no transaction holds the store for the whole prune."""

    @abstractmethod
    def delete_batches_before(self, cutoff: datetime, limit: int) -> int:
        """Forget at most ``limit`` batch ids claimed before ``cutoff``; return how many."""

    # -- players' data rights (see :mod:`.erasure`) -----------------------------------

    @abstractmethod
    def erasure_secret(self, candidate: str) -> str:
        """The store's erasure secret: ``candidate`` is stored when there is none yet
        (two processes racing keep one of theirs), and the stored one returned."""

    @abstractmethod
    def tombstones(self, hashes: Mapping[str, str]) -> dict[str, str]:
        """For ``hashes`` (user -> keyed hash), the erased users: user -> token. A store
        whose transactions are snapshots must make this read conflict with an erase of
        the same user (MongoDB writes a document of each user both touch)."""

    @abstractmethod
    def add_tombstone(self, key_hash: str, token: str, at: datetime) -> str | None:
        """Record the tombstone ``key_hash -> token`` unless there is one for
        ``key_hash``; return the token already there, or None when it is new."""

    @abstractmethod
    def rename_user(self, user_id: str, token: str) -> dict[str, int]:
        """Replace ``user_id`` by ``token`` in every per-player record (activity
        records, registrations, first days, revenue, sessions without the username,
        logout marks); return how many records changed, per collection."""

    @abstractmethod
    def delete_user_events(self, user_id: str) -> int:
        """Delete the player's events; return how many."""


class Store(ABC):
    """Where aggregates live. Subclasses implement :meth:`transaction` and the reads.

    ``schemes`` lists the URL schemes :func:`open_store` maps to the class.
    """

    schemes: ClassVar[tuple[str, ...]] = ()
    #: The most players one transaction may touch; a batch with more is applied as
    #: parts (:meth:`FlushBatch.parts`). None: any batch is one transaction.
    max_part_players: ClassVar[int | None] = None
    #: The most events, and about the most bytes of events, one part carries (with
    #: :attr:`max_part_players`; None: no bound).
    max_part_events: ClassVar[int | None] = None
    max_part_bytes: ClassVar[int | None] = None
    #: Counter field names the store cannot hold (they key its records or hold its
    #: guards). ``Analytics`` refuses a counter map using one when it is built: a
    #: batch carrying one would fail on every flush.
    reserved_fields: ClassVar[frozenset[str]] = frozenset()
    #: Expired events deleted per prune transaction (see :data:`PRUNE_CHUNK`).
    prune_chunk: int = PRUNE_CHUNK

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
    def get_totals(self) -> dict[str, Number]:
        """Every daily and monthly counter summed over all time (see
        :meth:`Transaction.increment_daily`); empty before the first batch."""

    @abstractmethod
    def count_open_sessions(self) -> int:
        """Open sessions across every process writing to this store."""

    @abstractmethod
    def get_sessions(self, user_id: str) -> list[SessionRecord]:
        """A user's sessions, oldest first."""

    @abstractmethod
    def get_events(self, user_id: str | None = None, limit: int = 1000) -> list[EventRecord]:
        """The newest events (of one user, when given), oldest first."""

    def get_logouts(self, user_id: str) -> list[Logout]:
        """A user's stored logout marks, oldest first (kept as long as a late batch may
        need them: see :meth:`prune`). Not abstract, as the KPI reads."""
        raise self._no_kpi_reads("get_logouts")

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

    def count_day_users(self, start: str, end: str) -> int:
        """How many distinct users have a (day, user) activity record in [start, end]
        (the rolling MAU30 of a scrape). From :meth:`day_users_between` here; a store
        that can count without sending every user id back overrides it."""
        return len(set().union(*self.day_users_between(start, end).values()))

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

    # -- process heartbeats (see :class:`~gso_analytics.model.Heartbeat`) ----------------

    @abstractmethod
    def save_heartbeat(self, heartbeat: Heartbeat) -> None:
        """Insert or replace the record of ``heartbeat.process``. Not part of a batch:
        a flush with nothing to store writes one too."""

    @abstractmethod
    def live_heartbeats(self, now: datetime) -> list[Heartbeat]:
        """The records with ``expires_at`` after ``now``, ordered by ``process``."""

    @abstractmethod
    def forget_heartbeats(self, expired_before: datetime) -> None:
        """Delete the records whose ``expires_at`` is before ``expired_before``."""

    @abstractmethod
    def withdraw_heartbeat(self, process: str) -> None:
        """Delete the record of ``process`` (none: nothing to do). A worker that stops
        gracefully withdraws its own, so it leaves the scrape at once instead of
        showing as a stale worker until its record expires."""

    def user_records(self, user_id: str) -> UserRecords:
        """What the store keeps about one player besides sessions and events."""
        raise self._no_kpi_reads("user_records")

    def close(self) -> None:  # noqa: B027 - a store without resources has nothing to close
        """Release connections. Safe to call twice."""

    def check_event_ttl(self, event_ttl: timedelta) -> None:  # noqa: B027 - any TTL is fine
        """Raise :class:`~gso_analytics.errors.ConfigurationError` for an ``event_ttl``
        this store cannot keep.


        ``Analytics`` calls it when it is built: the TTL is otherwise first used by the
        prune job, in a background thread, where a mistake would only be logged."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- writes, shared by every backend ------------------------------------------

    def apply(self, batch: FlushBatch) -> ApplyResult:
        """Apply ``batch`` exactly once, atomically (part by part where the store bounds
        its transactions, see :attr:`max_part_players`). A retry of an applied batch,
        or of its applied parts, is a no-op."""
        results = []
        for part in batch.parts(self.max_part_players, self.max_part_events, self.max_part_bytes):

            def step(tx: Transaction, part: FlushBatch = part) -> tuple[str, ApplyResult]:
                key = self._erasure_key or tx.erasure_secret(new_secret())
                return key, apply_batch(tx, part, key)

            key, result = self.run_in_transaction(step)
            results.append(result)
            self._erasure_key = key  # committed: the key is the store's
        return ApplyResult(
            duplicate=all(r.duplicate for r in results),
            new_day_users=sum(r.new_day_users for r in results),
            unmatched_logouts=sum(r.unmatched_logouts for r in results),
        )

    # -- players' data rights ----------------------------------------------------------

    _erasure_key: str | None = None

    def erasure_key(self) -> str:
        """The store's erasure secret (made by the first process that needs it, then
        read once per process, inside the first batch's transaction when a batch comes
        first): the key of the tombstones' hashes."""
        if self._erasure_key is None:
            self._erasure_key = self.run_in_transaction(lambda tx: tx.erasure_secret(new_secret()))
        return self._erasure_key

    def erase_user(self, user_id: str, at: datetime) -> ErasureReceipt:
        """Erase one player in one transaction: the tombstone first (an existing one
        keeps its token, so a second call changes nothing), then the player's id
        replaced by the token wherever it makes a distinct count, the events deleted.
        A batch of that player applied later is renamed by :func:`apply_batch`."""
        key_hash = keyed_hash(self.erasure_key(), user_id)
        token = new_token()

        def step(tx: Transaction) -> tuple[str | None, dict[str, int], int]:
            existing = tx.add_tombstone(key_hash, token, at)
            return (
                existing,
                tx.rename_user(user_id, existing or token),
                tx.delete_user_events(user_id),
            )

        existing, renamed, deleted = self.run_in_transaction(step)
        return ErasureReceipt(renamed, {"events": deleted}, already_erased=existing is not None)

    def export_user(self, user_id: str) -> dict[str, Any]:
        """Everything stored about one player (the id as stored), JSON-ready."""
        records = self.user_records(user_id)
        return {
            "userId": user_id,
            "sessions": [session_export(s) for s in self.get_sessions(user_id)],
            # The marks sessions are computed from: a logout is a record of the player's
            # too, kept a while after its session closed.
            "logouts": [iso_from_ms(m.at_ms) for m in self.get_logouts(user_id)],
            "events": [
                {
                    "ts": iso_from_ms(e.ts_ms),
                    "event": e.event,
                    "data": json.loads(e.data),
                    "day": e.day,
                }
                for e in self.get_events(user_id, limit=EXPORT_EVENT_LIMIT)
            ],
            "daysActive": records.days_active,
            "monthsActive": records.months_active,
            "registeredOn": records.registered_on,
            "firstSeen": records.first_seen,
            "firstPayment": records.first_payment,
            "revenueCents": records.revenue_cents,
        }

    def prune(self, now: datetime, event_ttl: timedelta, session_timeout: timedelta) -> PruneResult:
        """Delete expired events; time out sessions open longer than ``session_timeout``
        (ended at ``login + session_timeout``, as a later mark would end them).

        An event is expired once it is ``event_ttl`` old: at ``ts + event_ttl <= now``,
        the boundary included, the same on every store. Events go in chunks of
        :attr:`prune_chunk`, one transaction each (see :meth:`delete_expired_events`).

        Batch ids are kept :func:`batch_retention` after their batch was made, and
        logout marks that long plus the timeout: a batch retried within that time is
        recognised, and still finds every mark its walk needs. Sessions, marks and ids
        go a chunk per transaction (:meth:`in_chunks`)."""
        deleted = self.delete_expired_events(last_expired(now, event_ttl))
        retention = batch_retention(event_ttl)
        timeout_ms = session_timeout // timedelta(milliseconds=1)
        cutoff_ms = to_ms(now) - timeout_ms

        def time_out_stale(tx: Transaction) -> int:
            stale = tx.open_sessions_before(cutoff_ms, self.prune_chunk)
            if stale:
                tx.write_sessions(time_out(stale, timeout_ms))
            return len(stale)

        logouts_ms = to_ms(now - retention - session_timeout)
        timed_out = self.in_chunks(time_out_stale)
        self.in_chunks(lambda tx: tx.delete_logouts_before(logouts_ms, self.prune_chunk))
        self.in_chunks(lambda tx: tx.delete_batches_before(now - retention, self.prune_chunk))
        self.forget_heartbeats(now - HEARTBEAT_KEPT)
        return PruneResult(events_deleted=deleted, sessions_timed_out=timed_out)

    def in_chunks(self, step: Callable[[Transaction], int]) -> int:
        """Run ``step`` (which handles at most :attr:`prune_chunk` records and says how
        many) in one transaction after another until a chunk falls short, so no
        transaction of the prune grows with the backlog (MongoDB bounds a transaction's
        lifetime; SQLite's writers wait for it). After a full chunk it pauses as long as
        the chunk took (at most :data:`PRUNE_MAX_PAUSE_S`): a writer polling for the
        lock (SQLite's busy handler) needs a gap to find it. Returns the records
        handled."""
        total = 0
        while True:
            started = time.monotonic()
            done = self.run_in_transaction(step)
            total += done
            if done < self.prune_chunk:
                return total
            time.sleep(min(time.monotonic() - started, PRUNE_MAX_PAUSE_S))

    def run_in_transaction(self, step: Callable[[Transaction], T]) -> T:
        """``step(tx)`` in a transaction of its own. A store whose transactions can lose
        to a concurrent one (MongoDB's write conflicts) runs it again."""
        with self.transaction() as tx:
            return step(tx)

    def delete_expired_events(self, last: datetime) -> int:
        """Delete the events until ``last`` in chunks (:meth:`in_chunks`): a million
        expired events must not hold every writer for the whole delete."""
        return self.in_chunks(lambda tx: tx.delete_events_until(last, self.prune_chunk))


#: Suffix of the total that counts what was taken back from a field (see
#: :func:`total_increments`).
WITHDRAWN = "Withdrawn"


def total_increments(increments: Mapping[str, Number]) -> dict[str, Number]:
    """What one day's (or month's) ``increments`` add to the all-time totals.

    Why not the increments themselves: a session recomputed when a mark arrives late
    (a logout from another worker inside a closed session) takes seconds back, so a
    day's ``totalSessionS`` can go down, and a Prometheus counter that goes down reads
    as a restart (``increase()`` would count the whole total again). So a negative
    increment is added, as a positive amount, to ``<field>Withdrawn``: both totals only
    grow, and the field's exact all-time figure is ``field - fieldWithdrawn`` (the
    sum of its days). How a correction splits between the two depends on when the
    late mark arrived; their difference does not."""
    totals: dict[str, Number] = {}
    for field, amount in increments.items():
        if amount < 0:
            totals[field + WITHDRAWN] = -amount
        elif amount:
            totals[field] = amount
    return totals


def batch_retention(event_ttl: timedelta) -> timedelta:
    """How long a prune keeps batch ids: :data:`MIN_BATCH_RETENTION`, or the event TTL
    when longer (a batch may carry events that old)."""
    return max(event_ttl, MIN_BATCH_RETENTION)


def last_expired(now: datetime, event_ttl: timedelta) -> datetime:
    """The newest event time expired at ``now``: the events at or before it are exactly
    those at least ``event_ttl`` old (stored times are whole milliseconds)."""
    return from_ms(to_ms(now - event_ttl))


def apply_batch(tx: Transaction, batch: FlushBatch, erasure_key: str) -> ApplyResult:
    """Translate a batch into :class:`Transaction` calls. Shared by every backend.

    Players erased before (a tombstone under ``erasure_key``, the store's secret) are
    renamed to their tokens, and their events dropped, inside the transaction that
    writes their records: an erase committed before it is always seen."""
    created_at = batch.created_at
    if created_at is None:
        raise ValueError("a batch must carry created_at before it is applied")
    if not tx.claim_batch(batch.id, created_at):
        return ApplyResult(duplicate=True)
    # Each step below is one store call over the whole batch (a few hundred µs for
    # thousands of players); the pacer lets waiting threads in between steps, so the
    # steps do not add up to one stretch the length of the interpreter's switch
    # interval (see .pacing).
    pacer = Pacer()
    users = batch.players()
    if users:
        hashes: dict[str, str] = {}
        for part in paced_slices(list(users)):  # every player (cached, else ~2 µs each)
            hashes.update([(user, keyed_hash(erasure_key, user)) for user in part])
        erased = tx.tombstones(hashes)
        pacer.tick()
        batch = rename_users(batch, erased, keep_events=False)
        pacer.tick()
    daily: defaultdict[str, defaultdict[str, Number]] = defaultdict(lambda: defaultdict(int))
    for day, fields in batch.counters.items():
        daily[day].update(fields)
    monthly: defaultdict[str, defaultdict[str, int]] = defaultdict(lambda: defaultdict(int))

    if batch.day_users:
        tx.add_first_seen(_first_days(batch.day_users))
        pacer.tick()
    if batch.payments:
        tx.add_user_revenue(batch.payments)
        tx.add_first_payments(_first_days(batch.payments))
        pacer.tick()

    new_day_users = 0
    for day, users in batch.day_users.items():
        added = tx.add_day_users(day, users)
        pacer.tick()
        if added:
            daily[day]["dau"] += added
            new_day_users += added
    if batch.new_users:
        for day, moved in _registrations(tx, _first_days(batch.new_users), pacer).items():
            daily[day][NEW_USERS] += moved
        pacer.tick()
    for month, users in batch.month_users.items():
        added = tx.add_month_users(month, users)
        pacer.tick()
        if added:
            monthly[month]["mau"] += added

    unmatched = 0
    if batch.logins or batch.logouts:
        marks: tuple[Mark, ...] = (*batch.logins, *batch.logouts)
        stored = tx.session_marks(earliest(marks), batch.session_timeout_ms)
        changes = plan_sessions(stored, batch.logins, batch.logouts, batch.session_timeout_ms)
        tx.write_sessions(changes)
        unmatched = changes.unmatched_logouts
        pacer.tick()

    for day, fields in daily.items():
        if fields:  # a day of repeated registrations only has nothing to add
            tx.increment_daily(day, batch.months.get(day, month_of(day)), dict(fields))
    for month, month_fields in monthly.items():
        tx.increment_monthly(month, dict(month_fields))
    pacer.tick()
    if batch.events:
        tx.insert_events(batch.events)
    return ApplyResult(new_day_users=new_day_users, unmatched_logouts=unmatched)


def _registrations(tx: Transaction, registering: dict[str, str], pacer: Pacer) -> dict[str, int]:
    """Store the batch's registrations (user -> the batch's earliest day for them) and
    return what moves in ``newUsers``, day -> +/- players.

    ``newUsers`` of a day counts the players whose earliest registration ever is that
    day. A player already stored with a later day moves: -1 there, +1 on the earlier
    day. So the figures equal that definition whatever order workers flush in (a
    later flush may carry an earlier registration), and a player counts once."""
    stored = tx.registration_days(set(registering))
    pacer.tick()
    earlier = {
        user: day for user, day in registering.items() if user not in stored or day < stored[user]
    }
    moves: defaultdict[str, int] = defaultdict(int)
    for user, day in earlier.items():
        moves[day] += 1
        if user in stored:
            moves[stored[user]] -= 1
    if earlier:
        tx.set_registration_days(earlier)
    return moves


def month_of(day: str) -> str:
    """The ``YYYY-MM`` month of a ``YYYY-MM-DD`` day key (both in the store's timezone):
    a registration can move a count to a day the batch does not carry."""
    return day[:7]


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
    "postgresql": "gso_analytics.backends.postgres:PostgresStore",
    "postgres": "gso_analytics.backends.postgres:PostgresStore",
}

ENTRY_POINT_GROUP = "gso_analytics.stores"


def _plugin_stores() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def known_schemes() -> list[str]:
    return sorted(set(BUILTIN_STORES) | set(_plugin_stores()))


def _load(target: str) -> type[Store]:
    module, _, name = target.partition(":")
    found: type[Store] = getattr(import_module(module), name)
    return found


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
    found: type[Store] = plugin.load()
    return found


def open_store(url: str, **options: Any) -> Store:
    """Open a store by URL: ``memory://``, ``sqlite:///relative.db``, ``sqlite:////abs.db``."""
    if not isinstance(url, str) or "://" not in url:
        raise ConfigurationError(
            f"a store URL looks like 'scheme://...', got {url!r};"
            f" known schemes: {', '.join(known_schemes())}"
        )
    scheme = url.split("://", 1)[0].lower()
    return store_class(scheme).from_url(url, **options)
