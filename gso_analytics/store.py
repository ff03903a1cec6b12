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
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from importlib import import_module
from importlib.metadata import entry_points
from typing import Any, ClassVar, Self, TypeVar

from .clock import from_ms, iso_from_ms, to_ms
from .counters import NEW_USERS
from .erasure import (
    ERASURE_SECRET_ENV,
    ERASURE_SECRET_FILE_ENV,
    ErasureReceipt,
    UserRecords,
    is_secret_check,
    keyed_hash,
    mention_needles,
    mentions,
    new_secret,
    new_token,
    rename_users,
    rewrite_mentions,
    secret_check,
    session_export,
)
from .errors import ConfigurationError
from .model import (
    AT,
    ActivityRun,
    ApplyResult,
    DailyStats,
    EventRecord,
    EventRow,
    FlushBatch,
    Heartbeat,
    Logout,
    MonthStats,
    Number,
    PruneResult,
    SessionRecord,
    StoredSession,
)
from .pacing import Pacer, paced_slices
from .sessions import (
    MarkKey,
    SessionChanges,
    close_idle,
    earliest_marks,
    plan_sessions,
    run_keys,
)
from .stored_rows import Attempt, StoredRows

T = TypeVar("T")

log = logging.getLogger("gso_analytics")
#: Guards :attr:`Store.saturated`: the flush thread and the prune job both count.
_SATURATED_LOCK = threading.Lock()
#: Guards the creation of a store's :attr:`Store.stored_rows`.
_STORED_ROWS_LOCK = threading.Lock()

#: The ``meta`` record holding the store's erasure secret.
ERASURE_SECRET = "erasureSecret"
#: The ``meta`` record a store written with ``pseudonymize_key`` keeps: a keyed hash of
#: :data:`PSEUDONYM_CHECK` under the key (it tells the key again, and reveals nothing).
PSEUDONYMIZED = "pseudonymized"
PSEUDONYM_CHECK = "gso_analytics: the pseudonymize_key of this store"
#: The table (collection) every store of this library has had since its first version:
#: its presence under a prefix tells one of our stores.
MARK_TABLE = "daily"


def check_ours(names: Iterable[str], prefix: str, where: str) -> None:
    """Refuse a database holding none of this library's tables under ``prefix``
    (``names``: its table or collection names), naming the prefixes it does hold: an
    erase or a report of a mistyped prefix must not create a new empty store."""
    names = set(names)
    if f"{prefix}{MARK_TABLE}" in names:
        return
    found = sorted(name[: -len(MARK_TABLE)] for name in names if name.endswith(MARK_TABLE))
    hint = (
        f"; prefixes found there: {', '.join(repr(p) for p in found)}"
        if found
        else "; it holds no gso_analytics store"
    )
    raise ConfigurationError(f"no gso_analytics store with prefix {prefix!r} in {where}{hint}")


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
#: The last millisecond a datetime holds (9999-12-31T23:59:59.999Z): "no end" in a range
#: read of marks, which a store may turn into a date.
LAST_MS = 253_402_300_799_999
#: The most events :meth:`Store.export_user` reads (the event TTL bounds them anyway).
EXPORT_EVENT_LIMIT = 2**31 - 1
#: Events an erase or an export reads per chunk when it looks for other players'
#: events naming the player (:func:`mention_chunk`).
MENTION_CHUNK = 1000
#: Expired events are deleted at most this many per transaction, so a writer waits for
#: one chunk, never for the whole prune.
PRUNE_CHUNK = 5000
#: After each chunk the prune job pauses as long as the chunk took (at most this), so
#: writers waiting for the lock, in this process or another, get it between chunks.
PRUNE_MAX_PAUSE_S = 0.1


class Transaction(ABC):
    """The writes a backend offers inside one atomic unit of work."""

    #: Positive increments of an all-time total that :data:`~.counters.MAX_COUNTER`
    #: cut in this transaction; a store counts them once it commits. The totals are
    #: enough: every stored figure is at most its field's total, so a figure the
    #: ceiling cuts takes its total's increment past the ceiling in the same write.
    saturated: int = 0

    #: Players whose sessions one :meth:`write_sessions` call stores (0: the batch's
    #: all in one). A store that writes each call at once takes a part at a time, so
    #: a part's session objects are freed before the next part is walked: a whole
    #: batch's, kept until one write, outlive two young collections of the cyclic
    #: garbage collector and can make a full one due (10% of an activity flush's CPU,
    #: more in a process with a larger heap). A store that pays a round trip per call
    #: writes the batch in one.
    session_part = 0

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
    def sessions_since(self, users: set[str], since_ms: int) -> list[StoredSession]:
        """The stored sessions of ``users`` whose last mark is at or after ``since_ms``
        (for a frozen one, see :class:`~.model.SessionEnd`, its end), and their open
        sessions whatever their age (a new mark ends one left open by the clock). A
        player has at most one open session, their latest: the walk leaves only its
        last run open, and reads every session after the one it opens."""

    @abstractmethod
    def logouts_since(self, users: set[str], since_ms: int) -> list[Logout]:
        """The stored logout marks of ``users`` at or after ``since_ms``."""

    @abstractmethod
    def activity_runs(self, user_id: str, first_ms: int, last_ms: int) -> list[ActivityRun]:
        """The player's stored activity runs that have a mark in [first_ms, last_ms]
        (or more: runs overlapping that range)."""

    @abstractmethod
    def save_sessions(self, sessions: list[StoredSession]) -> None:
        """Store each session in the state given, inserting it or replacing it by id."""

    @abstractmethod
    def delete_sessions(self, ids: list[str]) -> None:
        """Forget sessions merged into an earlier one."""

    @abstractmethod
    def insert_logouts(self, logouts: list[Logout]) -> None:
        """Store logout marks (new ids)."""

    @abstractmethod
    def insert_activity(self, runs: list[ActivityRun]) -> None:
        """Store activity runs (a batch part's, one per player)."""

    def write_sessions(self, changes: SessionChanges) -> None:
        """Store what :func:`~.sessions.plan_sessions` decided and add its differences
        to the aggregates."""
        if changes.logouts:
            self.insert_logouts(changes.logouts)
        if changes.activity:
            self.insert_activity(changes.activity)
        if changes.deleted:
            self.delete_sessions(changes.deleted)
        if changes.sessions:
            self.save_sessions(changes.sessions)
        for day, fields in changes.daily.items():
            if any(fields.values()):
                self.increment_daily(day, changes.months[day], dict(fields))
        for month, fields in changes.monthly.items():
            if any(fields.values()):
                self.increment_monthly(month, dict(fields))

    def marks_between(self, user_id: str, first_ms: int, last_ms: int) -> list[MarkKey]:
        """The player's stored activity marks in [first_ms, last_ms] as walk keys
        (their millisecond, then their place in it), sorted."""
        return sorted(
            key
            for run in self.activity_runs(user_id, first_ms, last_ms)
            for key in run_keys(run)
            if first_ms <= key[0] <= last_ms
        )

    @abstractmethod
    def open_sessions_before(self, cutoff_ms: int, limit: int) -> list[StoredSession]:
        """At most ``limit`` open sessions whose last mark is before ``cutoff_ms`` (any
        of them: the prune job closes them a chunk per transaction)."""

    @abstractmethod
    def delete_logouts_before(self, cutoff_ms: int, limit: int) -> int:
        """Forget at most ``limit`` logout marks older than ``cutoff_ms`` (no batch that
        late is taken); return how many."""

    @abstractmethod
    def delete_activity_before(self, cutoff_ms: int, limit: int) -> int:
        """Forget at most ``limit`` activity runs whose last mark is older than
        ``cutoff_ms``; return how many."""

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
    def claim_meta(self, key: str, candidate: str) -> str:
        """The ``meta`` record ``key``: ``candidate`` is stored when there is none yet
        (two processes racing keep one of theirs), and the stored value returned."""

    @abstractmethod
    def set_meta(self, key: str, value: str) -> None:
        """Store ``value`` as the ``meta`` record ``key``, replacing one that is there."""

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

    @abstractmethod
    def events_after(
        self, after: Any, needles: Sequence[str], limit: int
    ) -> list[tuple[Any, EventRow]]:
        """At most ``limit`` events after the position ``after`` (None: from the first),
        in the store's order, each with its position: the scan :func:`mention_chunk`
        walks in chunks. A store may leave out events whose data text contains none of
        ``needles`` (see :func:`~.erasure.mention_needles`), so a chunk reads only the
        likely ones, as long as it returns fewer than ``limit`` only at the end."""

    @abstractmethod
    def set_event_data(self, changes: Mapping[Any, str]) -> None:
        """Replace the ``data`` text of the events at the positions of ``changes``."""

    @abstractmethod
    def meta_value(self, key: str) -> str | None:
        """The store's ``meta`` record ``key`` (None when absent); never writes."""


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
    def count_active_sessions(self, since_ms: int) -> int:
        """Sessions not ended whose last mark is at or after ``since_ms`` (now minus
        ``idle_timeout``: ``activeSessions``), across every process."""

    def count_open_sessions(self) -> int:
        """Sessions not ended yet, whatever their age (``activeSessions`` are those of
        them with a mark within ``idle_timeout``; the prune job closes the others)."""
        return self.count_active_sessions(0)

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

            def step(tx: Transaction, part: FlushBatch = part) -> tuple[str, Attempt, ApplyResult]:
                key = self.first_reads(tx)
                written = self.stored_rows.attempt()  # afresh: a retry remembers nothing
                return key, written, apply_batch(tx, part, key, written)

            with self.forgetting_on_failure():
                key, written, result = self.run_in_transaction(step)
            results.append(result)
            self.committed(key, written)
            self.count_saturated(result.saturated)
        return ApplyResult(
            duplicate=all(r.duplicate for r in results),
            new_day_users=sum(r.new_day_users for r in results),
            unmatched_logouts=sum(r.unmatched_logouts for r in results),
            saturated=sum(r.saturated for r in results),
        )

    #: Increments of an all-time total cut at :data:`~.counters.MAX_COUNTER` by this
    #: object's committed writes (batches and roll-ups), ``stats()["counters_saturated"]``.
    saturated = 0

    def count_saturated(self, cut: int) -> None:
        """Count committed increments the ceiling cut; log the first of this store.

        A warning, once: a figure at the ceiling stays there, and every batch adding to
        it would otherwise log again."""
        if not cut:
            return
        with _SATURATED_LOCK:
            first = not self.saturated
            self.saturated += cut
        if first:
            log.warning(
                "gso_analytics: a counter of %s reached its ceiling of 2**61 and stays at it"
                " (read it as 'at least'); cuts are counted in stats()['counters_saturated']",
                type(self).__name__,
            )

    # -- players' data rights ----------------------------------------------------------

    _erasure_key: str | None = None
    #: Set by ``Analytics`` when the erasure secret is kept outside the store (see
    #: :func:`~.erasure.configured_erasure_secret`).
    external_secret: str | None = None
    #: Set by ``Analytics(pseudonymize_key=...)``: the check its first batch records.
    pseudonym_check: str | None = None
    _pseudonym_marked = False

    def _secret(self, tx: Transaction, *, create: bool) -> str | None:
        """The key of the tombstones' hashes, read (and with ``create`` made) in ``tx``:
        the store's own secret, kept in its ``meta``; or the secret kept outside it,
        whose keyed check the store keeps instead. A store whose secret is outside
        refuses a process without it, and a store keeps one secret for good (another
        would lose every tombstone): a mismatch is a :class:`ConfigurationError`.
        A process given the secret the store keeps in clear moves it out (the store
        keeps only the check from then on)."""
        if self._erasure_key is not None:
            return self._erasure_key
        external = self.external_secret
        candidate = new_secret() if external is None else secret_check(external)
        stored = (
            tx.claim_meta(ERASURE_SECRET, candidate) if create else tx.meta_value(ERASURE_SECRET)
        )
        if stored is None:  # not made yet, and not to be made now
            return None
        if external is None:
            if is_secret_check(stored):
                raise ConfigurationError(
                    "this store's erasure secret is kept outside it: give it to every process"
                    f" ({ERASURE_SECRET_ENV} or {ERASURE_SECRET_FILE_ENV})"
                )
            return stored
        if stored == candidate:
            return external
        if stored == external:  # the store's own secret, moved out by the operator
            tx.set_meta(ERASURE_SECRET, candidate)
            return external
        raise ConfigurationError(
            "the erasure secret given is not this store's: its tombstones would match"
            " nobody (the secret cannot change; give the one the store was erased with)"
        )

    def first_reads(self, tx: Transaction) -> str:
        """In a batch part's transaction: the erasure secret (read once per process, in
        the first part's transaction) and, for a process writing pseudonymized ids,
        the store's :data:`PSEUDONYMIZED` mark, recorded with its first batch so an
        erase without the key (or with another) is refused. Returns the secret."""
        key = self._secret(tx, create=True)
        assert key is not None  # created when absent
        check = self.pseudonym_check
        if (
            check is not None
            and not self._pseudonym_marked
            and tx.claim_meta(PSEUDONYMIZED, check) != check
        ):
            raise ConfigurationError(
                "this store was written with another pseudonymize_key: its ids would"
                " not match (the key cannot change without rewriting the store)"
            )
        return key

    def committed(self, key: str, written: Attempt | None = None) -> None:
        """After a part's commit: what :meth:`first_reads` read is the store's, and the
        records the part wrote are stored (see :mod:`.stored_rows`)."""
        self._erasure_key = key
        self._pseudonym_marked = self.pseudonym_check is not None
        if written is not None:
            self.stored_rows.remember(written)

    _stored_rows: StoredRows | None = None

    @property
    def stored_rows(self) -> StoredRows:
        """The per-player records this store object's committed batches wrote, which
        later batches skip (:mod:`.stored_rows`)."""
        if self._stored_rows is None:
            with _STORED_ROWS_LOCK:
                if self._stored_rows is None:
                    self._stored_rows = StoredRows()
        return self._stored_rows

    @contextlib.contextmanager
    def forgetting_on_failure(self) -> Iterator[None]:
        """Around a batch part's transaction (its retries included): when it fails, the
        store may have lost what it had (a failover), so :attr:`stored_rows` is
        forgotten."""
        try:
            yield
        except BaseException:
            self.stored_rows.forget()
            raise

    def check_pseudonym_key(self, check: str | None) -> None:
        """Refuse an export or an erase whose ids would not match the store's: a store
        marked :data:`PSEUDONYMIZED` asked without its key, or with another one. (A
        store written before the mark existed cannot tell.)"""
        stored = self.run_in_transaction(lambda tx: tx.meta_value(PSEUDONYMIZED))
        if stored is None or stored == check:
            return
        if check is None:
            raise ConfigurationError(
                "this store was written with pseudonymize_key: its ids are keyed hashes,"
                " so an id given as the game tracks it matches nothing; give the key"
                " (Analytics(pseudonymize_key=...); the CLI's --pseudonymize-key-env NAME)"
            )
        raise ConfigurationError(
            "the pseudonymize_key given is not the one this store was written with"
        )

    def erasure_key(self) -> str:
        """The store's erasure secret (made by the first process that needs it, then
        read once per process, inside the first batch's transaction when a batch comes
        first): the key of the tombstones' hashes."""
        if self._erasure_key is None:
            key = self.run_in_transaction(lambda tx: self._secret(tx, create=True))
            assert key is not None  # created when absent
            self._erasure_key = key
        return self._erasure_key

    def erase_user(self, user_id: str, at: datetime, *, also: Iterable[str] = ()) -> ErasureReceipt:
        """Erase one player in one transaction: the tombstone first (an existing one
        keeps its token, so a second call changes nothing), then the player's id
        replaced by the token wherever it makes a distinct count, the events deleted,
        and every string of other players' event data equal to the id, the username or
        one of ``also`` (the real id of a pseudonymized store) replaced by the token.
        A batch of that player applied later is renamed by :func:`apply_batch`."""
        self.stored_rows.forget()  # not needed (see .stored_rows), and simpler to trust
        key_hash = keyed_hash(self.erasure_key(), user_id)
        names = self.mention_names(user_id, also)
        token = new_token()

        def step(tx: Transaction) -> tuple[str | None, dict[str, int], int, int]:
            existing = tx.add_tombstone(key_hash, token, at)
            renamed = tx.rename_user(user_id, existing or token)
            deleted = tx.delete_user_events(user_id)
            mentioned, after = mention_chunk(tx, names, existing or token, None)
            while after is not None:
                more, after = mention_chunk(tx, names, existing or token, after)
                mentioned += more
            return existing, renamed, deleted, mentioned

        existing, renamed, deleted, mentioned = self.run_in_transaction(step)
        return ErasureReceipt(
            renamed, {"events": deleted}, already_erased=existing is not None, mentions=mentioned
        )

    def mention_names(self, user_id: str, also: Iterable[str] = ()) -> set[str]:
        """What other players' event data may name the player by: the id as stored,
        ``also``, and every username of the player's sessions."""
        usernames = {s.username for s in self.get_sessions(user_id) if s.username}
        return {user_id, *also, *usernames} - {""}

    def rewrite_mentions(self, names: set[str], token: str) -> int:
        """:func:`mention_chunk` over the whole event stream, a transaction per chunk
        (the erase of a store whose transactions are bounded); how many events changed."""
        total, after = 0, None
        while True:

            def chunk(tx: Transaction, after: Any = after) -> tuple[int, Any]:
                return mention_chunk(tx, names, token, after)

            done, after = self.run_in_transaction(chunk)
            total += done
            if after is None:
                return total

    def find_mentions(self, names: set[str], user_id: str) -> list[EventRecord]:
        """Other players' events (not ``user_id``'s) whose data holds one of ``names``
        as a string, at any depth: what an export returns as ``mentions``."""
        found: list[EventRecord] = []
        after: Any = None
        needles = mention_needles(names)
        while True:

            def chunk(tx: Transaction, after: Any = after) -> list[tuple[Any, EventRow]]:
                return tx.events_after(after, needles, MENTION_CHUNK)

            rows = self.run_in_transaction(chunk)
            found.extend(
                EventRecord(*row)
                for _, row in rows
                if row[1] != user_id and mentions(row[3], names)
            )
            if len(rows) < MENTION_CHUNK:
                return sorted(found, key=lambda e: e.ts_ms)
            after = rows[-1][0]

    def erased_token(self, user_id: str) -> str | None:
        """The token that replaced ``user_id`` when it was erased; None when it was not.
        Reads only: a store without an erasure secret has no tombstone."""
        return self.erased_tokens({user_id}).get(user_id)

    def erased_tokens(self, users: Iterable[str]) -> dict[str, str]:
        """The erased ones of ``users``, each with its token (reads only)."""

        def look(tx: Transaction) -> dict[str, str]:
            secret = self._secret(tx, create=False)
            if secret is None:
                return {}
            return tx.tombstones({user: keyed_hash(secret, user) for user in users})

        return self.run_in_transaction(look)

    def activity_marks(self, user_id: str) -> list[int]:
        """The player's stored activity marks (milliseconds), oldest first: what the
        sessions are walked from, kept as long as a batch may be retried."""
        keys = self.run_in_transaction(lambda tx: tx.marks_between(user_id, 0, LAST_MS))
        return [ms for ms, _ in keys]

    def export_user(self, user_id: str, *, also: Iterable[str] = ()) -> dict[str, Any]:
        """Everything stored about one player (the id as stored), JSON-ready; with
        ``mentions``: other players' events whose data names the player (the id, a
        username or one of ``also``), without the other player's id."""
        records = self.user_records(user_id)
        return {
            "userId": user_id,
            "sessions": [session_export(s) for s in self.get_sessions(user_id)],
            # The marks sessions are computed from: a logout is a record of the player's
            # too, kept a while after its session closed.
            "logouts": [iso_from_ms(m[AT]) for m in self.get_logouts(user_id)],
            # And the times of the player's activity, kept as long as logouts.
            "activity": [iso_from_ms(ms) for ms in self.activity_marks(user_id)],
            "events": [event_export(e) for e in self.get_events(user_id, limit=EXPORT_EVENT_LIMIT)],
            "mentions": [
                event_export(e)
                for e in self.find_mentions(self.mention_names(user_id, also), user_id)
            ],
            "daysActive": records.days_active,
            "monthsActive": records.months_active,
            "registeredOn": records.registered_on,
            "firstSeen": records.first_seen,
            "firstPayment": records.first_payment,
            "revenueCents": records.revenue_cents,
        }

    def prune(self, now: datetime, event_ttl: timedelta, idle_timeout: timedelta) -> PruneResult:
        """Delete expired events; close the sessions whose last mark is more than
        ``idle_timeout`` ago (ended at that mark, as a later mark would end them).

        An event is expired once it is ``event_ttl`` old: at ``ts + event_ttl <= now``,
        the boundary included, the same on every store. Events go in chunks of
        :attr:`prune_chunk`, one transaction each (see :meth:`delete_expired_events`).

        Batch ids are kept :func:`batch_retention` after their batch was made, and
        logout marks that long plus the timeout: a batch retried within that time is
        recognised, and still finds every mark its walk needs (logouts and activity
        runs are kept that long plus ``idle_timeout``). Sessions, marks and ids go a
        chunk per transaction (:meth:`in_chunks`)."""
        deleted = self.delete_expired_events(last_expired(now, event_ttl))
        retention = batch_retention(event_ttl)
        cutoff_ms = to_ms(now - idle_timeout)

        def close_stale(tx: Transaction) -> int:
            stale = tx.open_sessions_before(cutoff_ms, self.prune_chunk)
            if stale:
                tx.write_sessions(close_idle(stale))
            return len(stale)

        marks_ms = to_ms(now - retention - idle_timeout)
        timed_out = self.in_chunks(close_stale)
        self.in_chunks(lambda tx: tx.delete_logouts_before(marks_ms, self.prune_chunk))
        self.in_chunks(lambda tx: tx.delete_activity_before(marks_ms, self.prune_chunk))
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


def event_export(event: EventRecord) -> dict[str, Any]:
    """An event as an export shows it (no user id: a mention is another player's)."""
    return {
        "ts": iso_from_ms(event.ts_ms),
        "event": event.event,
        "data": json.loads(event.data),
        "day": event.day,
    }


def mention_chunk(tx: Transaction, names: set[str], token: str, after: Any) -> tuple[int, Any]:
    """One chunk of an erase's look through the event stream: every string equal to
    one of ``names`` in the data of the events after ``after`` replaced by ``token``.
    Returns how many events changed and where the next chunk starts (None: done)."""
    rows = tx.events_after(after, mention_needles(names), MENTION_CHUNK)
    changes = {}
    for position, row in rows:
        rewritten = rewrite_mentions(row[3], names, token)
        if rewritten is not None:
            changes[position] = rewritten
    if changes:
        tx.set_event_data(changes)
    return len(changes), (rows[-1][0] if len(rows) == MENTION_CHUNK else None)


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


def apply_batch(
    tx: Transaction, batch: FlushBatch, erasure_key: str, written: Attempt | None = None
) -> ApplyResult:
    """Translate a batch into :class:`Transaction` calls. Shared by every backend.

    Players erased before (a tombstone under ``erasure_key``, the store's secret) are
    renamed to their tokens, and their events dropped, inside the transaction that
    writes their records: an erase committed before it is always seen. ``written``
    (:meth:`Store.stored_rows`'s attempt): the (day, user), (month, user) and
    first-seen records known stored are skipped, after the renaming (see
    :mod:`.stored_rows`), and those written are collected for after the commit."""
    rows = Attempt(None) if written is None else written
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

    first_seen = rows.first_seen_days(_first_days(batch.day_users))
    pacer.tick()  # every step ticks, also one that found nothing to write
    if first_seen:
        tx.add_first_seen(first_seen)
        pacer.tick()
    if batch.payments:
        tx.add_user_revenue(batch.payments)
        tx.add_first_payments(_first_days(batch.payments))
        pacer.tick()

    new_day_users = 0
    for day, users in batch.day_users.items():
        users = rows.day_users(day, users)
        pacer.tick()
        if not users:
            continue
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
        users = rows.month_users(month, users)
        pacer.tick()
        if not users:
            continue
        added = tx.add_month_users(month, users)
        pacer.tick()
        if added:
            monthly[month]["mau"] += added

    unmatched = 0
    if batch.logins or batch.logouts or batch.activity:
        stored, logouts = _session_window(tx, batch)
        for changes in plan_sessions(batch, stored, logouts, tx.marks_between, tx.session_part):
            tx.write_sessions(changes)
            unmatched += changes.unmatched_logouts
        pacer.tick()

    for day, fields in daily.items():
        if fields:  # a day of repeated registrations only has nothing to add
            tx.increment_daily(day, batch.months.get(day, month_of(day)), dict(fields))
    for month, month_fields in monthly.items():
        tx.increment_monthly(month, dict(month_fields))
    pacer.tick()
    if batch.events:
        tx.insert_events(batch.events)
    return ApplyResult(
        new_day_users=new_day_users, unmatched_logouts=unmatched, saturated=tx.saturated
    )


def _session_window(tx: Transaction, batch: FlushBatch) -> tuple[list[StoredSession], list[Logout]]:
    """What the walk of the batch's players needs from the store (see
    :func:`~.sessions.plan_sessions`): two range reads over all of them, from the
    earliest new mark minus ``idle_timeout`` (one bound for the batch, whose marks lie
    within a flush interval or so; a player's earlier sessions walk unchanged)."""
    since = earliest_marks(batch)
    Pacer().tick()
    users = set(since)
    sessions = tx.sessions_since(users, min(since.values()) - batch.idle_timeout_ms)
    first = min([s[AT] for s in sessions], default=min(since.values()))
    return sessions, tx.logouts_since(users, min(first, min(since.values())))


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
    """Open a store by URL: ``memory://``, ``sqlite:///relative.db``, ``sqlite:////abs.db``.

    ``existing=True`` opens only a store that is there (what the commands that read or
    erase use): a missing SQLite file, or a database without this library's tables
    (collections) under the prefix, is a :class:`ConfigurationError`, and nothing is
    created."""
    if not isinstance(url, str) or "://" not in url:
        raise ConfigurationError(
            f"a store URL looks like 'scheme://...', got {url!r};"
            f" known schemes: {', '.join(known_schemes())}"
        )
    scheme = url.split("://", 1)[0].lower()
    return store_class(scheme).from_url(url, **options)
