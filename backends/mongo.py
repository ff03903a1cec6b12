"""``mongodb://host/db`` and ``mongodb+srv://``: the production store, on pymongo.

Collections (prefix ``gso_analytics_`` by default, ``?prefix=`` to change it) keep the
seed's camelCase documents, so dashboards built on the seed keep working:

- ``sessions``: ``{_id: sessionId, userId, username, loginAt, logoutAt, durationS, day,
  month, timedOut}``, plus ``open`` (a boolean the open-session indexes are built on)
  and ``origin``/``seq`` (the login mark's process and number, which order two marks
  of one millisecond); a session is its login mark with the end the walk gives it
  (:mod:`gso_analytics.sessions`);
- ``logouts``: the logout marks ``{_id, userId, at, origin, seq}``, kept as long as a
  late batch can still need them;
- ``daily``: one document per day, ``{day, month, dau, newUsers, creditsEarned, ...}``;
- ``events``: ``{ts, userId, event, data, day}``, expired by a native TTL index on ``ts``;
- ``monthly`` (``{month, mau, timedSessions, timedSessionS}``), ``day_users`` and
  ``month_users`` (one ``{day|month, userId}`` record per active user: ``dau`` and ``mau``
  are counts of the records newly inserted, so no read ever runs ``distinct()``),
  ``new_users`` (``{day, userId}``, one per player registered that day: ``newUsers``
  counts the records newly inserted, as ``dau`` does),
  ``batches`` (applied batch ids) and, by deployment, ``locks`` and
  ``session_journal`` (standalone) or ``session_users`` (transactions);
- the KPIs' per-user facts: ``user_revenue`` (``{day, userId, revenueCents}``, one per
  payer and day), ``first_seen`` and ``first_payments`` (``{_id: userId, day}``), each
  read by a range on an index of ``day``;
- players' data rights (:mod:`gso_analytics.erasure`): ``tombstones`` (``{_id: keyed
  hash of an erased id, token, erasedAt}``) and ``meta`` (``{_id: "erasureSecret",
  value}``, the key of those hashes).

What a batch means lives in :func:`gso_analytics.store.apply_batch`; this module only
translates the :class:`~gso_analytics.store.Transaction` calls into as few round trips
as it can, a score per flush whatever its size. ``session_marks`` reads the marks of
all the batch's players in three queries (their sessions and logouts since the
earliest window, and their open sessions). Counter increments, events, sessions (new
or changed, in their final state) and logout marks are buffered in the transaction
object and sent at commit: one ``bulk_write`` of ``$inc`` upserts per counter
collection, one ``insert_many`` for the events, one bulk write per session collection.
The (day, user) and (month, user) records go at once (one unordered insert per day or
month), because their duplicate-key errors tell ``apply_batch`` how many users are new.

Indexes
-------

Opening the store lists each collection's indexes; missing ones are built by one
process under a lease in ``locks`` while the others warn and start (waiting only for
a missing unique index, which exact counting needs), or not at all with
``createIndexes=false``, where a deploy step runs :func:`mongo_init`. Builds use
``commitQuorum: "majority"`` where the deployment has voting members.

Exactly once
------------

A batch of more than :attr:`MongoStore.max_part_players` players is applied in parts
of that many players (:meth:`~gso_analytics.model.FlushBatch.parts`), each claimed
under its own id, so no transaction or journal grows with the batch and a retry skips
the parts already applied.

*Replica set or sharded cluster* (detected from ``hello``; ``?transactions=`` forces
it either way): each part is one multi-document transaction that writes only what
belongs to its own players, so two workers' transactions write no common document and
neither aborts the other with a write conflict:

1. the events first, *outside* the transaction, under ids derived from the batch (a
   retry's insert is a duplicate-key no-op);
2. in the transaction: the (day, user) and (month, user) records, the per-user KPI
   facts, the players' sessions and marks, and, written last, the batch document
   ``{_id: batchId, done, daily, monthly, countersApplied: false}`` holding the day and
   month increments (including ``dau``/``mau`` from the records it inserted);
3. after the commit, those increments as upserts guarded by the batch id (step 4
   below), outside any transaction, then ``countersApplied: true``. A retry that finds
   the batch document with ``countersApplied: false`` (the connection was lost after
   the commit), and the prune job of any process (its process died), apply them; the
   guard makes that exact however often it happens.

Inside a transaction a duplicate-key error would abort it, so user records are
upserts whose ``upsertedCount`` counts the new users. Snapshot isolation would let a login in one
process and that user's logout in another each miss the other (write skew: neither
writes what the other read), so every transaction that reads or writes a user's
marks also increments that user's ``session_users`` document: two of them conflict,
and the loser is retried (TransientTransactionError) on a fresh snapshot, with backoff,
for up to :data:`TRANSIENT_RETRY_S`. Every transaction has its own concerns, not the
client's: ``snapshot`` reads, a ``majority`` commit bounded by
:data:`MAX_COMMIT_TIME_MS`, the primary; a commit whose outcome is unknown is sent
again (see :meth:`MongoStore._commit`).

*Standalone server* (no transactions): a batch is written in steps, and every step is
guarded so that a retry after any failure, with an unknown outcome or half-way,
completes the batch without counting anything twice:

1. ``batches`` gets ``{_id: batchId, done: false, intent, owner, leaseUntil}``: the
   claim records the part itself (``intent``, its :mod:`~gso_analytics.batch_json`
   text; past :data:`INTENT_CHUNK_CHARS` in ``batch_intents`` chunks written first and
   counted by ``intentChunks``) and a lease on the server's clock. A duplicate key
   means the batch was tried before: ``done`` means applied (a duplicate, nothing to
   do), otherwise the retry takes the batch back (its own lease, or one that ended)
   and runs in *recovery* mode.
2. User records carry the ``batchId`` that inserted them. In recovery, a duplicate whose
   ``batchId`` is this batch's was inserted by the earlier attempt and still counts as
   new, so ``dau``/``mau`` get exactly the increments the first attempt computed.
3. Session reads and writes run under one store-wide lease lock (``locks``), as SQLite's
   ``BEGIN IMMEDIATE`` would: without it two batches of one player could each miss the
   other's marks. The lock is taken at the batch's first session read and released
   once its session writes are done, so batches without logins or logouts never wait.
   The writes go through a *journal*: one ``session_journal`` document
   ``{_id: "<batchId>:sessions", sessions, logouts, daily, monthly, done: false}``
   holding the marks, the sessions in their new state and the increments they make,
   inserted in one write, then *replayed*: marks and sessions written by id
   (idempotent), the increments as guarded upserts (step 4) under the journal's id,
   then ``done``. Whoever takes the lock first completes any journal not done, in
   the order they were written, before reading marks: the batch's own retry or any
   other batch, even when the process that wrote it died. A retry whose journal
   exists takes it instead of planning again.
4. Daily and monthly ``$inc`` upserts are filtered by ``{appliedBatches: {$nin: [id]}}``
   and ``$push`` the id (``$slice`` keeps the last ``applied_batches_kept``): a document
   that already has the id does not match, the upsert then hits the unique key, and
   that duplicate-key error means "already applied" (``$nin`` rather than ``$ne``, which
   the nx-27017 test server gets wrong on missing fields).
   The (day, user) ``user_revenue`` increments are the same guarded upserts. The
   ``first_seen`` and ``first_payments`` days are ``$min`` upserts: idempotent and
   order-free by themselves (the earliest day wins, however often and in whatever
   order batches apply), so they need no guard, in recovery or across processes; a
   duplicate key there is two processes inserting the same user, and sending it once
   more makes it the ``$min`` update of the document the other one created.
5. Events get ``_id`` values derived from (batch id, position), so re-inserting them is
   a duplicate-key no-op (outside recovery a duplicate can only be a collision of two
   batches' ids, and those events are inserted again with fresh ids).
6. The batch document is marked ``done`` (its intent and lease removed).

A process killed in the middle of a flush (never retried) leaves that batch partly
applied on a standalone server until its lease ends (:data:`DEFAULT_BATCH_LEASE`,
renewed before the guarded writes): then the prune job of any process takes it over
and applies it again from its intent, in recovery mode, exactly once. A replica set,
even a single-node one, applies it whole or not at all.

Retryable writes are on (``retryWrites=true``) unless the URL or a keyword argument
turns them off, as with every client option the store defaults; outside transactions
the write concern is the client's (``w=majority`` is MongoDB's default), and
unacknowledged writes (``w=0``) are refused because exact counting reads the result of
every write.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import math
import os
import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import attrs

from gso_analytics.batch_json import batch_from_json, batch_to_json
from gso_analytics.clock import from_ms, to_ms
from gso_analytics.erasure import ErasureReceipt, UserRecords, read_user_records
from gso_analytics.errors import ConfigurationError, InvalidTypeError, StoreError
from gso_analytics.model import (
    ApplyResult,
    DailyStats,
    EventRecord,
    EventRow,
    FlushBatch,
    Heartbeat,
    Login,
    Logout,
    MonthStats,
    Number,
    PruneResult,
    SessionEnd,
    SessionRecord,
    StoredSession,
)
from gso_analytics.pacing import paced_slices
from gso_analytics.sessions import SessionChanges
from gso_analytics.store import Store, Transaction, apply_batch, total_increments

if TYPE_CHECKING:
    from types import ModuleType

log = logging.getLogger("gso_analytics")

INSTALL_HINT = "pip install 'gso-analytics[mongo]'"
DEFAULT_DATABASE = "gso_analytics"
DEFAULT_PREFIX = "gso_analytics_"
#: The seed's event TTL; the index follows ``Analytics(event_ttl=...)`` at each prune.
DEFAULT_EVENT_TTL = timedelta(days=7)
#: The longest ``event_ttl`` a TTL index can hold: MongoDB keeps ``expireAfterSeconds``
#: in a 32-bit signed integer (2**31 - 1 seconds, about 68 years).
MAX_EVENT_TTL = timedelta(seconds=2**31 - 1)
#: Fail fast when the server is unreachable, instead of pymongo's 30 s default.
DEFAULT_SERVER_SELECTION_TIMEOUT_MS = 5000
#: Batch ids kept on each daily/monthly document for the standalone guard: a retry
#: must arrive before this many other batches touched the same document.
DEFAULT_APPLIED_BATCHES_KEPT = 1000
#: How long a batch waits for the standalone session lock, and how long a lock whose
#: holder died blocks the others.
DEFAULT_LOCK_WAIT = timedelta(seconds=10)
DEFAULT_LOCK_LEASE = timedelta(seconds=30)
#: How long a standalone batch belongs to the process that claimed it (renewed before
#: its counters): past it, with the batch still not done, its process is taken for
#: dead and the prune job of any process finishes the batch from its intent. Far
#: longer than any step of one part, which a lease must outlast.
DEFAULT_BATCH_LEASE = timedelta(minutes=2)
#: The intent text (a part as ``batch_json``, ASCII) a claim document holds itself;
#: a longer one goes to ``batch_intents`` in chunks of this many characters, far below
#: MongoDB's 16 MiB document limit (a 10,000-player part with its events can pass it).
INTENT_CHUNK_CHARS = 4 * 1024 * 1024
#: How often the server's clock is read (``hello``'s ``localTime``); in between it is
#: advanced by this host's monotonic clock, which no clock step moves.
SERVER_CLOCK_REFRESH_S = 60.0
#: How long a process building missing indexes at open holds the lease on them (a
#: ``locks`` document): the others carry on meanwhile, and past it (the builder died)
#: the next process to open the store builds them.
INDEX_BUILD_LEASE = timedelta(minutes=10)
#: The time budget of retries: ``apply`` running a batch again after its transaction
#: lost a write conflict (``TransientTransactionError``), and a commit sent again while
#: its outcome is unknown (``UnknownTransactionCommitResult``), each with exponential
#: backoff; past it the error goes to the flusher, which keeps the batch.
TRANSIENT_RETRY_S = 10.0
#: ``maxCommitTimeMS`` of every transaction: how long ``commitTransaction`` may wait for
#: the majority write concern before the server gives up. A commit that timed out is
#: not sent again at once (it would wait as long); the flusher retries the batch.
MAX_COMMIT_TIME_MS = 5000
#: Event documents per ``insert_many``: the driver encodes each call to BSON holding
#: the GIL, and this many small documents take about a quarter of a millisecond.
EVENT_CHUNK = 256
#: Event documents built between two looks at the clock: each costs 10-30 µs (its
#: ``data`` parsed into a subdocument, its time made a ``datetime``).
DOCS_PER_LOOK = 8
_MAX_TIME_EXPIRED = 50

#: Fields a counter can never be: they key the documents or hold the guard.
_T = TypeVar("_T")
_RESERVED_FIELDS = frozenset({"_id", "day", "month", "appliedBatches"})
_PREFIX_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_LOCK_ID = "sessions"
_TOTALS_ID = "all"
_INDEX_LEASE_ID = "indexes"
#: ``createIndexes`` with ``commitQuorum`` needs MongoDB 4.4 (wire version 9).
_COMMIT_QUORUM_WIRE_VERSION = 9
#: ``closedBy`` of the sessions the prune job times out (batches put their id there).
_DUPLICATE_KEY = 11000
_AUTH_FAILED = 18
_UNAUTHORIZED = 13
#: ``MongoClient`` options the store sets unless the URL or the caller sets them: writes
#: retried once after a failover, the store named in the server's logs, and a lost
#: server reported after 5 s.
_CLIENT_DEFAULTS: dict[str, Any] = {
    "retryWrites": True,
    "appname": "gso-analytics",
    "serverSelectionTimeoutMS": DEFAULT_SERVER_SELECTION_TIMEOUT_MS,
}
#: ``?name=`` options of the URL that belong to the store, not to pymongo.
_URL_OPTIONS = {
    "prefix": "prefix",
    "transactions": "transactions",
    "ttlindex": "ttl_index",
    "createindexes": "create_indexes",
}
_STORE_KWARGS = frozenset(
    {
        "prefix",
        "transactions",
        "ttl_index",
        "create_indexes",
        "event_ttl",
        "applied_batches_kept",
        "lock_wait",
        "lock_lease",
        "batch_lease",
    }
)


def _pymongo() -> ModuleType:
    """Import pymongo on first use, so the core never needs it."""
    try:
        import pymongo
    except ImportError as exc:
        raise ConfigurationError(
            f"the MongoDB store needs the pymongo driver: {INSTALL_HINT}"
        ) from exc
    return pymongo


def _aware(moment: datetime) -> datetime:
    """BSON dates come back naive unless the client is ``tz_aware``; they are UTC."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _check_str(value: object, name: str) -> str:
    """Reads take caller input: a dict such as ``{"$ne": None}`` must never become a
    query operator."""
    if type(value) is not str:
        raise InvalidTypeError(name, f"must be a str, not {type(value).__name__}")
    return value


def _safe_keys(value: Any) -> bool:
    """True when every key of a JSON value can be a BSON field name as it is."""
    if isinstance(value, dict):
        return all(
            isinstance(key, str)
            and key
            and key[0] != "$"
            and "." not in key
            and "\x00" not in key
            and _safe_keys(item)
            for key, item in value.items()
        )
    if isinstance(value, list):
        return all(_safe_keys(item) for item in value)
    return True


def _data_value(text: str) -> Any:
    """``data`` as a subdocument (queryable as ``data.amount``, like the seed's), or as
    its JSON text when MongoDB could not hold it field for field."""
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, dict) and _safe_keys(value) else text


def _data_text(value: Any) -> str:
    """The JSON text ``encode_data`` produced: compact, key order kept by BSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _event_ids(batch_id: str, created_at: datetime, start: int, count: int) -> list[Any]:
    """Deterministic ObjectIds for the events at positions ``start`` to ``start +
    count`` of a batch, so a retried insert is a duplicate: the batch's time (seconds,
    then milliseconds: ``_id`` order is flush order, as with ObjectIds a driver makes),
    4 bytes of the batch id, the position (2 bytes; every 65,536 events take the next 4
    bytes of a hash of the id)."""
    from bson import ObjectId

    stamp = (int(created_at.timestamp()) & 0xFFFFFFFF).to_bytes(4, "big")
    stamp += (created_at.microsecond // 1000).to_bytes(2, "big")
    ids: list[Any] = []
    step, end = 1 << 16, start + count
    while start < end:
        block = start - start % step
        tag = hashlib.blake2b(f"{batch_id}:{block}".encode(), digest_size=4).digest()
        stop = min(end, block + step)
        ids.extend(
            ObjectId(stamp + tag + (i - block).to_bytes(2, "big")) for i in range(start, stop)
        )
        start = stop
    return ids


def _chunk_id(batch_id: str, n: int) -> str:
    """The ``batch_intents`` id of chunk ``n`` of a batch's intent."""
    return f"{batch_id}/{n}"


def _write_errors(exc: Exception) -> list[dict[str, Any]]:
    errors: list[dict[str, Any]] = (getattr(exc, "details", None) or {}).get("writeErrors", [])
    return errors


def _only_duplicates(exc: Exception) -> list[int]:
    """Indexes of the duplicate-key failures of a bulk write; re-raise anything else."""
    errors = _write_errors(exc)
    details = getattr(exc, "details", None) or {}
    if details.get("writeConcernErrors") or any(e.get("code") != _DUPLICATE_KEY for e in errors):
        raise exc
    return [e["index"] for e in errors]


def _ttl_seconds(event_ttl: timedelta, ttl_index: bool) -> int:
    """``event_ttl`` in whole seconds, the TTL index's ``expireAfterSeconds``: refused
    here, with the limit named, rather than by the server in a background prune.
    Rounded up, so the index never expires an event the prune job would keep."""
    if event_ttl < timedelta(seconds=1):
        raise ConfigurationError(f"event_ttl must be at least one second, got {event_ttl}")
    if ttl_index and event_ttl > MAX_EVENT_TTL:
        limit = int(MAX_EVENT_TTL.total_seconds())
        raise ConfigurationError(
            f"event_ttl {event_ttl} is longer than MongoDB's TTL index can hold:"
            f" expireAfterSeconds is a 32-bit integer, at most {limit} seconds"
            f" ({MAX_EVENT_TTL.days} days); use a shorter TTL or ttlIndex=false"
        )
    return math.ceil(event_ttl.total_seconds())


class _Backoff:
    """Exponential backoff with jitter inside a time budget, between the attempts of a
    retry loop: at once a few milliseconds, so a lost conflict is redone quickly, then
    up to half a second, so many workers retrying do not collide again in step."""

    def __init__(self, budget_s: float) -> None:
        self.deadline = time.monotonic() + budget_s
        self.delay = 0.005

    def sleep(self) -> bool:
        """Wait before the next attempt; False, without waiting, once the budget is spent."""
        pause = self.delay * random.uniform(0.5, 1.0)
        if time.monotonic() + pause >= self.deadline:
            return False
        time.sleep(pause)
        self.delay = min(self.delay * 2, 0.5)
        return True


def _max_time_expired(exc: Exception) -> bool:
    """The commit (or its write concern) ran out of ``maxCommitTimeMS``."""
    details = getattr(exc, "details", None) or {}
    concern_error = details.get("writeConcernError") or {}
    return _MAX_TIME_EXPIRED in (getattr(exc, "code", None), concern_error.get("code"))


class _Conflict(StoreError):
    """A write lost to a concurrent writer; applying the batch again resolves it."""


def _parse_bool(name: str, text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise ConfigurationError(f"MongoDB URL option {name} must be true or false, got {text!r}")


class _MongoTransaction(Transaction):
    """One batch (or one prune) against MongoDB: reads go to the server, writes are
    buffered and sent in bulk by :meth:`commit` (see the module docstring)."""

    def __init__(self, store: MongoStore) -> None:
        self.store = store
        self.txn = store.uses_transactions
        self.session: Any = None
        self.batch_id: str | None = None
        self.created_at: datetime | None = None
        self.recovering = False
        self.duplicate = False
        self._lock_token: str | None = None
        # Standalone: the part being applied, the token of this attempt's lease on its
        # batch document, the intent chunks to delete once done, and whether the
        # batch is resumed from its intent (the prune job took it over).
        self._intent: FlushBatch | None = None
        self._owner: str | None = None
        self._intent_chunks = 0
        self._resumed = False
        self._daily: dict[str, tuple[str, dict[str, Number]]] = {}
        self._monthly: dict[str, dict[str, int]] = {}
        self._events: list[EventRow] = []
        self._first_days: dict[str, dict[str, str]] = {}  # collection -> user -> day
        self._revenue: dict[tuple[str, str], Number] = {}  # (day, user) -> cents
        # Session writes, buffered to commit (transactions) or written at once by
        # write_sessions (standalone, see the module docstring).
        self._sessions: dict[str, dict[str, Any]] = {}
        self._logouts: list[dict[str, Any]] = []
        self._journal_changes: SessionChanges | None = None
        self._counters_pending = False
        self._touched: set[str] = set()

    # -- plumbing -----------------------------------------------------------------

    def _c(self, name: str) -> Any:
        return self.store._collection(name)

    @property
    def _kw(self) -> dict[str, Any]:
        """``session=`` for every call inside a transaction (none on standalone, which
        also keeps stand-ins that have no sessions working)."""
        return {"session": self.session} if self.session is not None else {}

    def _begin(self) -> None:
        """Start the transaction at the first call whose reads must be consistent with
        the writes; bulk deletes of expired data run before it, outside any."""
        if not self.txn or self.session is not None:
            return
        self.session = self.store._client().start_session()
        self.store._start_transaction(self.session)

    def _enter_sessions(self) -> None:
        """Before reading sessions or pending logouts: a transaction, or the lock."""
        if self.txn:
            self._begin()
        elif self._lock_token is None:
            self._lock_token = self.store._acquire_lock()

    def _touch(self, user_id: str) -> None:
        if self.txn:
            self._touched.add(user_id)

    # -- the batch id ---------------------------------------------------------------

    def record_intent(self, batch: FlushBatch) -> None:
        """Standalone: kept for :meth:`claim_batch`, which writes it with the claim."""
        if not self.txn:
            self._intent = batch

    def resume(self, owner: str, chunks: int) -> None:
        """Apply a batch the prune job took over (its lease is ``owner``): its claim and
        intent (in ``chunks`` chunks, or none) exist, and it runs in recovery mode."""
        self._owner, self._intent_chunks = owner, chunks
        self._resumed = self.recovering = True

    def claim_batch(self, batch_id: str, at: datetime) -> bool:
        self._begin()
        self.batch_id, self.created_at = batch_id, at
        batches = self._c("batches")
        if self.txn:
            # Read only: the batch document is the transaction's last write (commit).
            found = batches.find_one({"_id": batch_id}, {"countersApplied": 1}, **self._kw)
            if found is not None:
                self.duplicate = True
                # Committed, but its process stopped before the day counters: do them.
                self._counters_pending = found.get("countersApplied") is False
                return False
            return True
        if self._resumed:
            return True
        pymongo = _pymongo()
        claim: dict[str, Any] = {"_id": batch_id, "appliedAt": at, "done": False}
        if self._intent is not None:
            # The intent goes first (its chunks before the claim that names them), so a
            # claim not done always holds what it takes to finish the batch.
            text = batch_to_json(self._intent)
            claim.update(self.store._write_intent(batch_id, at, text))
            self._intent_chunks = claim.get("intentChunks", 0)
            self._owner = uuid.uuid4().hex
            claim.update(owner=self._owner, leaseUntil=self.store._lease_end())
        try:
            batches.insert_one(claim)
        except pymongo.errors.DuplicateKeyError:
            found = batches.find_one({"_id": batch_id}, {"done": 1})
            if found is None or found.get("done"):
                self.duplicate = True
                self._owner = None
                return False
            if self._owner is not None and not self.store._take_over(batch_id, self._owner):
                raise StoreError(
                    f"MongoDB {self.store.where}: batch {batch_id} is being completed by"
                    " another process (its lease on the batch has not ended); retried later"
                ) from None
            self.recovering = True
            log.info("gso_analytics: batch %s was tried before; completing it", batch_id)
        if self._owner is not None:
            self.store._claims[batch_id] = self._owner
        return True

    # -- (day, user) and (month, user) records --------------------------------------

    def _add_users(self, name: str, key: str, value: str, users: set[str]) -> int:
        if not users:
            return 0
        pymongo = _pymongo()
        records = self._c(name)
        ordered = sorted(users)
        if self.txn:
            result = records.bulk_write(
                [
                    pymongo.UpdateOne(
                        {key: value, "userId": user},
                        {"$setOnInsert": {"batchId": self.batch_id}},
                        upsert=True,
                    )
                    for user in ordered
                ],
                ordered=False,
                **self._kw,
            )
            return int(result.upserted_count)
        docs = [{key: value, "userId": user, "batchId": self.batch_id} for user in ordered]
        try:
            records.insert_many(docs, ordered=False)
        except pymongo.errors.BulkWriteError as exc:
            duplicates = _only_duplicates(exc)
            added = int(exc.details.get("nInserted", len(docs) - len(duplicates)))
            if self.recovering and duplicates:
                # Inserted by this batch's earlier attempt: still new for its counts.
                added += records.count_documents(
                    {
                        key: value,
                        "userId": {"$in": [docs[i]["userId"] for i in duplicates]},
                        "batchId": self.batch_id,
                    }
                )
            return added
        return len(docs)

    def add_day_users(self, day: str, users: set[str]) -> int:
        return self._add_users("day_users", "day", day, users)

    def add_month_users(self, month: str, users: set[str]) -> int:
        return self._add_users("month_users", "month", month, users)

    def add_new_users(self, day: str, users: set[str]) -> int:
        return self._add_users("new_users", "day", day, users)

    # -- counters and events: buffered, sent at commit -----------------------------

    def increment_daily(self, day: str, month: str, increments: dict[str, Number]) -> None:
        _, fields = self._daily.setdefault(day, (month, {}))
        for field, amount in increments.items():
            fields[field] = fields.get(field, 0) + amount

    def increment_monthly(self, month: str, increments: dict[str, int]) -> None:
        fields = self._monthly.setdefault(month, {})
        for field, amount in increments.items():
            fields[field] = fields.get(field, 0) + amount

    def insert_events(self, events: list[EventRow]) -> None:
        self._events.extend(events)

    # -- per-user KPI facts: buffered, sent at commit ---------------------------------

    def _keep_first(self, name: str, first_days: dict[str, str]) -> None:
        kept = self._first_days.setdefault(name, {})
        for user, day in first_days.items():
            if user not in kept or day < kept[user]:
                kept[user] = day

    def add_first_seen(self, first_days: dict[str, str]) -> None:
        self._keep_first("first_seen", first_days)

    def add_first_payments(self, first_days: dict[str, str]) -> None:
        self._keep_first("first_payments", first_days)

    def add_user_revenue(self, revenue: dict[str, dict[str, Number]]) -> None:
        for day, payers in revenue.items():
            for user, cents in payers.items():
                self._revenue[day, user] = self._revenue.get((day, user), 0) + cents

    # -- sessions: marks in, the walk's changes out --------------------------------------

    def session_marks(
        self, since: Mapping[str, int], horizon_ms: int
    ) -> list[StoredSession | Logout]:
        """Three queries for the whole batch: the users' sessions and logouts from the
        earliest ``since`` on (one bound for all: a few more marks, no gaps), and their
        open sessions. On standalone, journals of batches that stopped half-way are
        completed first, under the lock, so the marks read are whole."""
        self._enter_sessions()
        if not self.txn:
            self.store._replay_journals()
        users = sorted(since)
        for user in users:
            self._touch(user)
        start = _from_ms(min(since.values()) - horizon_ms)
        sessions = self._c("sessions")
        docs = {
            doc["_id"]: doc
            for doc in sessions.find(
                {"userId": {"$in": users}, "loginAt": {"$gte": start}}, **self._kw
            )
        }
        for doc in sessions.find({"open": True, "userId": {"$in": users}}, **self._kw):
            docs.setdefault(doc["_id"], doc)
        found: list[StoredSession | Logout] = [_stored_session(doc) for doc in docs.values()]
        found += [
            _logout(doc)
            for doc in self._c("logouts").find(
                {"userId": {"$in": users}, "at": {"$gte": start}}, **self._kw
            )
        ]
        return found

    def save_sessions(self, sessions: list[StoredSession]) -> None:
        for session in sessions:
            self._sessions[session.login.id] = _session_doc(session)

    def insert_logouts(self, logouts: list[Logout]) -> None:
        self._logouts += [_logout_doc(logout) for logout in logouts]

    def write_sessions(self, changes: SessionChanges) -> None:
        """In a transaction: buffered with the batch. On standalone: through a journal
        (module docstring, step 3), so that these writes and their increments happen
        exactly once even when this batch stops half-way."""
        if self.txn:
            super().write_sessions(changes)
        else:
            self._journal_changes = changes  # journaled at commit, still under the lock

    def open_sessions_before(self, cutoff_ms: int) -> list[StoredSession]:
        self._enter_sessions()
        if not self.txn:
            self.store._replay_journals()
        docs = self._c("sessions").find(
            {"open": True, "loginAt": {"$lt": _from_ms(cutoff_ms)}}, **self._kw
        )
        return [_stored_session(doc) for doc in docs]

    # -- deletes (prune) ----------------------------------------------------------------

    def delete_events_until(self, last: datetime, limit: int) -> int:
        events = self._c("events")
        ids = [
            d["_id"]
            for d in events.find({"ts": {"$lte": last}}, {"_id": 1}, **self._kw).limit(limit)
        ]
        if not ids:
            return 0
        return int(events.delete_many({"_id": {"$in": ids}}, **self._kw).deleted_count)

    def delete_logouts_before(self, cutoff_ms: int) -> None:
        self._c("logouts").delete_many({"at": {"$lt": _from_ms(cutoff_ms)}}, **self._kw)

    def delete_batches_before(self, cutoff: datetime) -> None:
        self._c("batches").delete_many({"appliedAt": {"$lt": cutoff}}, **self._kw)
        # Chunks of intents whose claim was never written (the process died between).
        self._c("batch_intents").delete_many({"at": {"$lt": cutoff}}, **self._kw)
        self._c("session_journal").delete_many({"done": True, "at": {"$lt": cutoff}}, **self._kw)

    # -- players' data rights -------------------------------------------------------------

    def erasure_secret(self, candidate: str) -> str:
        self._begin()
        meta = self._c("meta")
        meta.update_one(
            {"_id": "erasureSecret"},
            {"$setOnInsert": {"value": candidate}},
            upsert=True,
            **self._kw,
        )
        found = meta.find_one({"_id": "erasureSecret"}, **self._kw)
        return str(found["value"])

    def tombstones(self, hashes: Mapping[str, str]) -> dict[str, str]:
        """In a transaction, each user's ``session_users`` document ``e:<hash>`` is
        written at commit, as an erase of the user writes it: a batch that read no
        tombstone and an erase of one of its players conflict, so one of them runs
        again on a fresh snapshot and the id never comes back."""
        self._begin()
        if self.txn:
            self._touched.update(f"e:{h}" for h in hashes.values())
        users = {h: user for user, h in hashes.items()}
        found = self._c("tombstones").find({"_id": {"$in": sorted(users)}}, **self._kw)
        return {users[doc["_id"]]: doc["token"] for doc in found}

    def add_tombstone(self, key_hash: str, token: str, at: datetime) -> str | None:
        self._begin()
        if self.txn:
            self._touched.add(f"e:{key_hash}")
        stones = self._c("tombstones")
        found = stones.find_one({"_id": key_hash}, **self._kw)
        if found is not None:
            return str(found["token"])
        stones.insert_one({"_id": key_hash, "token": token, "erasedAt": at}, **self._kw)
        return None

    def _rename_first_day(self, name: str, user: str, token: str) -> int:
        """``first_seen``/``first_payments`` are keyed by the user (``_id``): the day
        moves to a document of the token (the earliest day wins, as always)."""
        facts = self._c(name)
        found = facts.find_one({"_id": user}, **self._kw)
        if found is None:
            return 0
        facts.update_one({"_id": token}, {"$min": {"day": found["day"]}}, upsert=True, **self._kw)
        return int(facts.delete_one({"_id": user}, **self._kw).deleted_count)

    def _rename_journals(self, user: str, token: str) -> int:
        """Standalone: the session journals (kept a while after their replay) hold the
        marks they wrote; the player's are renamed as the marks themselves are."""
        journal = self._c("session_journal")
        changed = 0
        query = {"$or": [{"sessions.userId": user}, {"logouts.userId": user}]}
        for doc in journal.find(query, **self._kw):
            for mark in (*doc["sessions"], *doc["logouts"]):
                if mark.get("userId") == user:
                    mark["userId"] = token
                    mark.pop("username", None)
            journal.replace_one({"_id": doc["_id"]}, doc, **self._kw)
            changed += 1
        return changed

    def rename_user(self, user_id: str, token: str) -> dict[str, int]:
        self._begin()
        kw = self._kw
        rename = {"$set": {"userId": token}}
        counts = {
            name: int(self._c(name).update_many({"userId": user_id}, rename, **kw).modified_count)
            for name in ("day_users", "month_users", "new_users", "user_revenue", "logouts")
        }
        for name in ("first_seen", "first_payments"):
            counts[name] = self._rename_first_day(name, user_id, token)
        counts["sessions"] = int(
            self._c("sessions")
            .update_many(
                {"userId": user_id}, {"$set": {"userId": token}, "$unset": {"username": ""}}, **kw
            )
            .modified_count
        )
        counts["session_users"] = int(
            self._c("session_users").delete_one({"_id": user_id}, **kw).deleted_count
        )
        if not self.txn:
            counts["session_journal"] = self._rename_journals(user_id, token)
        return counts

    def delete_user_events(self, user_id: str) -> int:
        self._begin()
        return int(self._c("events").delete_many({"userId": user_id}, **self._kw).deleted_count)

    # -- commit ------------------------------------------------------------------------

    def commit(self) -> None:
        """Send the buffered writes (see the module docstring for the order)."""
        if self.txn:
            self._commit_transaction()
            return
        if self._owner is not None and self.batch_id is not None:
            # Renewed before the guarded writes: a process that lost its batch to a
            # takeover (it stalled past the lease) stops here instead of counting it.
            self.store._renew_lease(self.batch_id, self._owner)
        if self._journal_changes is not None:
            guard = None if self.batch_id is None else f"{self.batch_id}:sessions"
            at = self.created_at or datetime.now(UTC)
            self.store._journal(guard, self._journal_changes, at)
        self.release()
        self.store._apply_counters(self.batch_id, *self._counter_docs())
        self._write_user_facts()
        self._write_events()
        if self.batch_id is not None and not self.duplicate:
            self.store._mark_done(self.batch_id, self._intent_chunks)

    def _commit_transaction(self) -> None:
        """Replica set: the events first, outside the transaction (idempotent under
        deterministic ids); in it only what belongs to the batch's own players, and the
        batch document last, holding the day and month increments; after the commit
        those increments, outside it, as upserts guarded by the batch id, so the
        transactions of two workers write no common document."""
        if self.duplicate:
            if self.session is not None and self.session.in_transaction:
                self.store._commit(self.session)
            if self._counters_pending and self.batch_id is not None:
                self.store._complete_counters(self.batch_id)
            return
        self._write_events()
        if self._sessions or self._logouts or self._touched:
            self._write_sessions()
        self._write_user_facts()
        daily, monthly = self._counter_docs()
        if self.batch_id is not None:
            self._c("batches").insert_one(
                {
                    "_id": self.batch_id,
                    "appliedAt": self.created_at,
                    "done": True,
                    "daily": daily,
                    "monthly": monthly,
                    "countersApplied": False,
                },
                **self._kw,
            )
        if self.session is not None and self.session.in_transaction:
            self.store._commit(self.session)
        if self.batch_id is not None:
            self.store._complete_counters(self.batch_id, daily, monthly)

    def _counter_docs(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The buffered day and month increments, as a journal or batch document holds
        them: ``{day: {month, inc}}`` and ``{month: inc}``."""
        daily = {day: {"month": month, "inc": dict(f)} for day, (month, f) in self._daily.items()}
        return daily, {month: dict(f) for month, f in self._monthly.items()}

    def _write_sessions(self) -> None:
        """The batch's session writes inside its transaction, and a write to each of its
        users' ``session_users`` document, so two batches that read one user's marks
        conflict instead of each missing the other's (write skew)."""
        pymongo = _pymongo()
        write_marks(self.store, self._logouts, list(self._sessions.values()), self._kw)
        if not self._touched:
            return
        self._c("session_users").bulk_write(
            [
                pymongo.UpdateOne({"_id": user}, {"$inc": {"sessionOps": 1}}, upsert=True)
                for user in sorted(self._touched)
            ],
            ordered=False,
            **self._kw,
        )

    def _write_user_facts(self) -> None:
        """The KPIs' per-user facts: (day, user) revenue as ``$inc`` upserts, guarded on
        standalone like the counters (in a transaction, the transaction is the guard);
        first-seen and first-payment days as ``$min`` upserts keyed by the user, which
        need no guard: applying one again changes nothing."""
        pymongo = _pymongo()
        guard = None if self.txn else self.batch_id
        kept = self.store.applied_batches_kept
        revenue = [
            inc_op({"day": day, "userId": user}, {"revenueCents": cents}, None, guard, kept)
            for (day, user), cents in sorted(self._revenue.items())
        ]
        upsert(self.store, "user_revenue", revenue, self._kw)
        for name, first_days in sorted(self._first_days.items()):
            ops = [
                pymongo.UpdateOne({"_id": user}, {"$min": {"day": day}}, upsert=True)
                for user, day in sorted(first_days.items())
            ]
            upsert(self.store, name, ops, self._kw)

    def _write_events(self) -> None:
        """Insert the batch's events under ids derived from the batch (outside any
        transaction), so sending them again is a duplicate-key no-op.

        The documents are built in paced slices and sent :data:`EVENT_CHUNK` at a time:
        the driver encodes an ``insert_many`` to BSON in C, holding the GIL throughout,
        about 1 µs a document."""
        if not self._events:
            return
        events = self._c("events")
        ids: Callable[[int, int], list[Any]]
        send: Callable[[list[dict[str, Any]]], object]
        if self.batch_id is not None and self.created_at is not None:
            ids = functools.partial(_event_ids, self.batch_id, self.created_at)
            send = functools.partial(self._insert_events_once, events)
        else:  # no batch to name them by (a direct write): the driver's ids
            ids = lambda start, count: [None] * count  # noqa: E731
            send = functools.partial(events.insert_many, ordered=False)
        docs: list[dict[str, Any]] = []
        position = 0
        for part in paced_slices(self._events, DOCS_PER_LOOK):
            docs += [
                _event_doc(e, _id) for e, _id in zip(part, ids(position, len(part)), strict=True)
            ]
            position += len(part)
            if len(docs) >= EVENT_CHUNK or position == len(self._events):
                send(docs)
                docs = []

    def _insert_events_once(self, events: Any, docs: list[dict[str, Any]]) -> None:
        """Insert ``docs``; a duplicate that is not this batch's event (another batch's
        id collided) is inserted again under a fresh id."""
        pymongo = _pymongo()
        from bson import ObjectId

        while docs:
            try:
                events.insert_many(docs, ordered=False)
                return
            except pymongo.errors.BulkWriteError as exc:
                clashing = [docs[i] for i in _only_duplicates(exc)]
            stored = {
                doc["_id"]: doc
                for doc in events.find({"_id": {"$in": [d["_id"] for d in clashing]}})
            }
            docs = [
                {**doc, "_id": ObjectId()}
                for doc in clashing
                if _event_key(stored.get(doc["_id"])) != _event_key(doc)
            ]

    def release(self) -> None:
        """Give the standalone session lock back (safe to call twice)."""
        if self._lock_token is not None:
            token, self._lock_token = self._lock_token, None
            self.store._release_lock(token)

    def abort(self) -> None:
        self.release()
        if self.session is not None and self.session.in_transaction:
            try:
                self.session.abort_transaction()
            except Exception:  # the original error is what matters
                log.debug("gso_analytics: abort_transaction failed", exc_info=True)

    def end(self) -> None:
        self.release()
        if self.session is not None:
            self.session.end_session()
            self.session = None


def _session_record(doc: Mapping[str, Any]) -> SessionRecord:
    return SessionRecord(
        doc["_id"],
        doc["userId"],
        doc.get("username"),
        _aware(doc["loginAt"]),
        _aware(doc["logoutAt"]) if doc.get("logoutAt") is not None else None,
        int(doc.get("durationS", 0)),
        doc["day"],
        doc["month"],
        bool(doc.get("timedOut", False)),
    )


def _from_ms(ms: int) -> datetime:
    """A BSON date (milliseconds, as the marks' times are)."""
    return from_ms(ms)


def _stored_session(doc: Mapping[str, Any]) -> StoredSession:
    logout = doc.get("logoutAt")
    return StoredSession(
        Login(
            doc["_id"],
            doc["userId"],
            to_ms(_aware(doc["loginAt"])),
            doc.get("origin", ""),
            doc.get("seq", 0),
            doc.get("username"),
            doc["day"],
            doc["month"],
        ),
        SessionEnd(
            None if logout is None else to_ms(_aware(logout)),
            int(doc.get("durationS", 0)),
            bool(doc.get("timedOut", False)),
        ),
    )


def _session_doc(session: StoredSession) -> dict[str, Any]:
    login, end = session.login, session.end
    return {
        "_id": login.id,
        "userId": login.user_id,
        "username": login.username,
        "loginAt": _from_ms(login.at_ms),
        "logoutAt": None if end.logout_ms is None else _from_ms(end.logout_ms),
        "durationS": end.duration_s,
        "day": login.day,
        "month": login.month,
        "timedOut": end.timed_out,
        "open": end.open,
        "origin": login.origin,
        "seq": login.seq,
    }


def _logout(doc: Mapping[str, Any]) -> Logout:
    return Logout(doc["_id"], doc["userId"], to_ms(_aware(doc["at"])), doc["origin"], doc["seq"])


def _logout_doc(logout: Logout) -> dict[str, Any]:
    return {
        "_id": logout.id,
        "userId": logout.user_id,
        "at": _from_ms(logout.at_ms),
        "origin": logout.origin,
        "seq": logout.seq,
    }


def inc_op(
    query: dict[str, Any],
    fields: Mapping[str, Number],
    on_insert: dict[str, Any] | None,
    guard: str | None,
    kept: int,
) -> Any:
    """An ``$inc`` upsert; with a ``guard`` (an id), applied at most once per document
    (step 4 of the module docstring)."""
    update: dict[str, Any] = {}
    if fields:
        update["$inc"] = dict(fields)
    if on_insert:
        update["$setOnInsert"] = on_insert
    if guard is not None:
        query["appliedBatches"] = {"$nin": [guard]}
        update["$push"] = {"appliedBatches": {"$each": [guard], "$slice": -kept}}
    return _pymongo().UpdateOne(query, update, upsert=True) if update else None


def upsert(store: MongoStore, name: str, ops: list[Any], kw: dict[str, Any]) -> None:
    """Send upserts; on standalone, a duplicate key is sent once more, now that the
    document exists: it was created by another process between our filter and our
    insert (the retry then matches it), or, for a guarded op, it holds this batch's
    id already (the retry hits the key again: applied). A transaction never sees
    one: a concurrent insert is a write conflict, and the batch is retried."""
    if not ops:
        return
    pymongo = _pymongo()
    collection = store._collection(name)
    for attempt in range(2):
        try:
            collection.bulk_write(ops, ordered=False, **kw)
            return
        except pymongo.errors.BulkWriteError as exc:
            if kw:
                raise
            duplicates = _only_duplicates(exc)
            if attempt == 1:
                return  # the document exists and holds this batch id: applied
            ops = [ops[i] for i in duplicates]


def write_marks(
    store: MongoStore,
    logouts: list[dict[str, Any]],
    sessions: list[dict[str, Any]],
    kw: dict[str, Any],
) -> None:
    """Insert logout marks and insert or replace sessions: idempotent, so a journal can
    be replayed. (A replacement rather than ``$set``, which on nx-27017 turns dates into
    strings; on MongoDB both are the same single-document atomic write. The replacement
    repeats the ``_id``: nx-27017's upsert would otherwise insert under a new one.)"""
    pymongo = _pymongo()
    if logouts:
        try:
            store._collection("logouts").insert_many(logouts, ordered=False, **kw)
        except pymongo.errors.BulkWriteError as exc:
            if kw:
                raise
            _only_duplicates(exc)  # inserted by an earlier replay
    if sessions:
        store._collection("sessions").bulk_write(
            [
                # With the shard key (userId): an upsert on a sharded collection must
                # name it in its filter.
                pymongo.ReplaceOne({"_id": doc["_id"], "userId": doc["userId"]}, doc, upsert=True)
                for doc in sessions
            ],
            ordered=False,
            **kw,
        )


def _event_record(doc: Mapping[str, Any]) -> EventRecord:
    ts_ms = to_ms(_aware(doc["ts"]))
    return EventRecord(ts_ms, doc["userId"], doc["event"], _data_text(doc["data"]), doc["day"])


def _event_key(doc: Mapping[str, Any] | None) -> tuple[Any, ...] | None:
    """What tells a batch's own event from another's under the same ``_id``."""
    if doc is None:
        return None
    return (to_ms(_aware(doc["ts"])), doc["userId"], doc["event"], doc["day"])


def _event_doc(event: EventRow, _id: Any = None) -> dict[str, Any]:
    ts_ms, user_id, name, data, day = event
    doc: dict[str, Any] = {} if _id is None else {"_id": _id}
    doc.update(ts=from_ms(ts_ms), userId=user_id, event=name, data=_data_value(data), day=day)
    return doc


def _index_key(spec: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple((field, direction) for field, direction in dict(spec["key"]).items())


@attrs.frozen
class _Index:
    """One index the store needs, on the collection ``name`` (without the prefix)."""

    name: str
    keys: tuple[tuple[str, int], ...]
    options: Mapping[str, Any] = attrs.field(factory=dict, hash=False)

    @property
    def unique(self) -> bool:
        """Exact counting depends on it: the store never writes without it."""
        return bool(self.options.get("unique"))

    def describe(self, prefix: str) -> str:
        """``gso_analytics_day_users {day: 1, userId: 1} unique``, for messages."""
        keys = ", ".join(f"{field}: {direction}" for field, direction in self.keys)
        flags = [flag for flag in ("unique", "expireAfterSeconds") if flag in self.options]
        shown = " ".join("TTL" if flag == "expireAfterSeconds" else flag for flag in flags)
        return f"{prefix}{self.name} {{{keys}}}" + (f" {shown}" if shown else "")


def _until_no_conflict(attempt: Callable[[], _T]) -> _T:
    """``attempt()``, run again after a short backoff while it loses a write conflict
    to a concurrent transaction (:class:`_Conflict`), within :data:`TRANSIENT_RETRY_S`."""
    backoff = _Backoff(TRANSIENT_RETRY_S)
    while True:
        try:
            return attempt()
        except _Conflict:
            if not backoff.sleep():
                raise


def mongo_init(url: str, *, event_ttl: timedelta | None = None, **options: Any) -> list[str]:
    """Create every missing index of the store ``url`` names (and, with ``event_ttl``,
    set the TTL index to it): the deploy step of ``gso-analytics mongo-init``, after
    which workers open the store with ``createIndexes=false`` and never build any.
    Returns the indexes created; store and client options as for ``open_store``."""
    with MongoStore.from_url(url, create_indexes=None, **options) as store:
        return store.init_indexes(event_ttl)


def _transactions_possible(hello: Mapping[str, Any]) -> bool:
    """Transactions need a replica set (4.0+) or mongos (4.2+) with sessions."""
    if hello.get("logicalSessionTimeoutMinutes") is None:
        return False
    wire = int(hello.get("maxWireVersion", 0))
    if hello.get("msg") == "isdbgrid":
        return wire >= 8
    return "setName" in hello and wire >= 7


def _commit_quorum_possible(hello: Mapping[str, Any]) -> bool:
    """``commitQuorum`` needs 4.4, and a standalone server refuses it (no members)."""
    replicated = "setName" in hello or hello.get("msg") == "isdbgrid"
    return replicated and hello.get("maxWireVersion", 0) >= _COMMIT_QUORUM_WIRE_VERSION


class MongoStore(Store):
    """Analytics in a MongoDB database: a pymongo ``Database`` (or a stand-in with the
    same API, such as mongomock's), usually opened by :func:`open_store` from a URL.

    ``prefix`` names the collections; ``event_ttl`` sets the TTL index when given
    (otherwise it is created with 7 days and then follows the ``event_ttl`` of the
    ``Analytics`` that prunes); ``ttl_index=False`` leaves expiry to the prune job alone;
    ``transactions`` is ``None`` (detect), True or False. ``create_indexes``: True
    builds missing indexes at open in one process (a lease) while the others carry on;
    False only checks and warns (a missing unique index is an error), for deployments
    that run :meth:`init_indexes` (``gso-analytics mongo-init``) as a deploy step; None
    leaves indexes alone at open, for that step itself.
    """

    schemes = ("mongodb", "mongodb+srv")
    #: Players per transaction (and per standalone journal): a larger batch is applied
    #: in parts, so no transaction outgrows MongoDB's 60 s lifetime or its cache.
    max_part_players = 10_000
    reserved_fields = _RESERVED_FIELDS

    def __init__(
        self,
        database: Any,
        *,
        prefix: str = DEFAULT_PREFIX,
        event_ttl: timedelta | None = None,
        ttl_index: bool = True,
        transactions: bool | None = None,
        create_indexes: bool | None = True,
        applied_batches_kept: int = DEFAULT_APPLIED_BATCHES_KEPT,
        lock_wait: timedelta = DEFAULT_LOCK_WAIT,
        lock_lease: timedelta = DEFAULT_LOCK_LEASE,
        batch_lease: timedelta = DEFAULT_BATCH_LEASE,
        where: str | None = None,
        reconnect: Callable[[], Any] | None = None,
    ) -> None:
        if not isinstance(prefix, str) or not _PREFIX_RE.fullmatch(prefix):
            raise ConfigurationError(
                f"collection prefix {prefix!r} must be letters, digits, '_', '.' or '-'"
            )
        if applied_batches_kept < 10:
            raise ConfigurationError("applied_batches_kept must be at least 10")
        if event_ttl is not None:
            _ttl_seconds(event_ttl, ttl_index)
        self.prefix = prefix
        self.ttl_index = ttl_index
        self.create_indexes = create_indexes
        self.applied_batches_kept = applied_batches_kept
        self.lock_wait = lock_wait
        self.lock_lease = lock_lease
        self.batch_lease = batch_lease
        #: batch id -> the lease token of this process's last attempt at it, so the
        #: flusher's retry takes its own batch back at once, lease or not.
        self._claims: dict[str, str] = {}
        self._clock_reading: tuple[datetime, float] | None = None
        self._database = database
        self._reconnect = reconnect
        self._pid = os.getpid()
        self._fork_lock = threading.Lock()
        self._closed = False
        self._synced_ttl: int | None = None
        self.where = where or self._describe(database)
        wc = getattr(database, "write_concern", None)
        if wc is not None and not wc.acknowledged:
            raise ConfigurationError(
                "the MongoDB store needs acknowledged writes (w>=1, default w=majority):"
                " exact counting reads the result of every write; remove w=0"
            )
        with self._errors("connecting"):
            database.command("ping")
            hello = self._hello()
            self._read_clock(hello)
            self.uses_transactions = (
                _transactions_possible(hello) if transactions is None else bool(transactions)
            )
            self._commit_quorum = _commit_quorum_possible(hello)
            if create_indexes is not None:
                self._open_indexes(event_ttl)
            self._create_collections()
            if event_ttl is not None:
                self._sync_event_ttl(event_ttl)
            self._upgrade_sessions()

    # -- opening ---------------------------------------------------------------------

    @classmethod
    def from_url(cls, url: str, **options: Any) -> MongoStore:
        """``mongodb://[user:pass@]host[:port][,host...]/db?options``.

        Store options in the query (``prefix``, ``transactions``, ``ttlIndex``) or as
        keyword arguments; every other keyword argument goes to ``MongoClient``.
        """
        pymongo = _pymongo()
        parts = urlsplit(url)
        query = []
        for name, value in parse_qsl(parts.query, keep_blank_values=True):
            option = _URL_OPTIONS.get(name.lower())
            if option is None:
                query.append((name, value))
            elif option == "prefix":
                options.setdefault("prefix", value)
            elif option == "transactions":
                options.setdefault(
                    "transactions",
                    None if value.lower() == "auto" else _parse_bool(name, value),
                )
            else:
                options.setdefault(option, _parse_bool(name, value))
        store_options = {k: options.pop(k) for k in list(options) if k in _STORE_KWARGS}
        # pymongo lets keyword arguments override the URL, and matches option names in
        # any case: a default goes in only where neither the URL nor the caller set it.
        given = {name.lower(): value for name, value in query}
        given.update((name.lower(), value) for name, value in options.items())
        client_options = {
            name: value for name, value in _CLIENT_DEFAULTS.items() if name.lower() not in given
        }
        client_options.update(options)
        driver_url = urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), ""))
        name = unquote(parts.path.lstrip("/")) or DEFAULT_DATABASE
        hosts = parts.netloc.rpartition("@")[2] or "localhost"
        timeout_ms = given.get("serverselectiontimeoutms", DEFAULT_SERVER_SELECTION_TIMEOUT_MS)
        where = f"{parts.scheme}://{hosts}/{name} (serverSelectionTimeoutMS={timeout_ms})"

        def connect() -> Any:
            try:
                return pymongo.MongoClient(driver_url, **client_options)
            except pymongo.errors.ConfigurationError as exc:  # bad option, unknown SRV name
                raise ConfigurationError(f"cannot open MongoDB {where}: {exc}") from exc
            except pymongo.errors.PyMongoError as exc:
                raise StoreError(f"cannot open MongoDB {where}: {exc}") from exc
            except (TypeError, ValueError) as exc:
                raise ConfigurationError(f"invalid MongoDB URL option for {where}: {exc}") from exc

        client = connect()
        try:
            return cls(
                client[name],
                where=where,
                reconnect=lambda: connect()[name],
                **store_options,
            )
        except BaseException:
            client.close()
            raise

    @classmethod
    def from_client(cls, client: Any, name: str = DEFAULT_DATABASE, **options: Any) -> MongoStore:
        """Use a ``MongoClient`` the application already has (it keeps owning it)."""
        return cls(client[name], **options)

    @staticmethod
    def _describe(database: Any) -> str:
        client = getattr(database, "client", None)
        hosts = "?"
        try:
            servers = client.topology_description.server_descriptions()  # type: ignore[union-attr]
            hosts = ",".join(f"{h}:{p}" for h, p in servers)
        except Exception:  # only a description for messages
            address = getattr(client, "address", None)
            if address:
                hosts = f"{address[0]}:{address[1]}"
        timeout = getattr(getattr(client, "options", None), "server_selection_timeout", None)
        shown = f" (serverSelectionTimeoutMS={int(timeout * 1000)})" if timeout is not None else ""
        return f"mongodb://{hosts}/{getattr(database, 'name', '?')}{shown}"

    def _hello(self) -> Mapping[str, Any]:
        """What the server says it is: a standalone, a replica set member or mongos."""
        pymongo = _pymongo()
        try:
            hello: Mapping[str, Any] = self._database.command("hello")
        except pymongo.errors.OperationFailure:  # before MongoDB 4.4.2 (and 5.0)
            hello = self._database.command("isMaster")
        return hello

    def _client(self) -> Any:
        return self._db().client

    def _db(self) -> Any:
        """The database handle of this process: a client inherited over ``fork()`` is
        not safe to use, so a child opens its own (when the store opened the first)."""
        if self._closed:
            raise StoreError(f"MongoDB store {self.where} is closed")
        pid = os.getpid()
        if pid != self._pid and self._reconnect is not None:
            with self._fork_lock:
                if pid != self._pid:
                    self._database = self._reconnect()  # the parent's stays the parent's
                    self._pid = pid
        return self._database

    def _collection(self, name: str) -> Any:
        return self._db()[f"{self.prefix}{name}"]

    # -- errors ------------------------------------------------------------------------

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """Driver errors become :class:`StoreError` naming the server and what to do."""
        pymongo = _pymongo()
        try:
            yield
        except pymongo.errors.PyMongoError as exc:
            raise self._translate(action, exc) from exc

    def _translate(self, action: str, exc: Exception) -> StoreError:
        pymongo = _pymongo()
        errors = pymongo.errors
        if isinstance(exc, errors.ServerSelectionTimeoutError):
            return StoreError(
                f"MongoDB {self.where} unreachable while {action}: no server answered within"
                f" the server selection timeout ({exc.__class__.__name__}: {exc})"
            )
        code = getattr(exc, "code", None)
        if code == _AUTH_FAILED or "Authentication failed" in str(exc):
            return StoreError(
                f"MongoDB {self.where} rejected the credentials while {action}: check the user,"
                " the password (percent-encoded in the URL) and authSource= (the database"
                " the user was created in, often admin)"
            )
        if code == _UNAUTHORIZED:
            return StoreError(
                f"MongoDB {self.where}: the user may not do this while {action}: grant it"
                " readWrite and createIndex/collMod on the database (dbAdmin covers both):"
                f" {exc}"
            )
        if isinstance(exc, errors.PyMongoError) and exc.has_error_label(
            "TransientTransactionError"
        ):
            return _Conflict(f"MongoDB {self.where}: transaction conflict while {action}: {exc}")
        return StoreError(f"MongoDB {self.where}: {action} failed: {exc}")

    # -- indexes and the TTL -----------------------------------------------------------

    def _index_plan(
        self, ttl_seconds: int
    ) -> list[tuple[str, list[tuple[str, int]], dict[str, Any]]]:
        """Every index the store's queries need: each read or guarded write is an index
        lookup, never a collection scan."""
        ts_options: dict[str, Any] = {"expireAfterSeconds": ttl_seconds} if self.ttl_index else {}
        return [
            ("daily", [("day", 1)], {"unique": True}),
            ("daily", [("month", 1)], {}),
            ("monthly", [("month", 1)], {"unique": True}),
            ("day_users", [("day", 1), ("userId", 1)], {"unique": True}),
            ("month_users", [("month", 1), ("userId", 1)], {"unique": True}),
            ("new_users", [("day", 1), ("userId", 1)], {"unique": True}),
            ("sessions", [("userId", 1), ("loginAt", 1)], {}),
            (
                "sessions",
                [("open", 1), ("loginAt", 1)],
                {"partialFilterExpression": {"open": True}},
            ),
            (
                "sessions",
                [("open", 1), ("userId", 1), ("loginAt", 1)],
                {"partialFilterExpression": {"open": True}},
            ),
            ("logouts", [("userId", 1), ("at", 1)], {}),
            ("logouts", [("at", 1)], {}),
            ("session_journal", [("done", 1), ("journaledAt", 1)], {}),
            (
                "batches",
                [("countersApplied", 1)],
                {"partialFilterExpression": {"countersApplied": False}},
            ),
            ("events", [("ts", 1)], ts_options),
            ("events", [("userId", 1), ("ts", 1)], {}),
            ("sessions", [("day", 1)], {}),
            ("events", [("event", 1), ("day", 1)], {}),
            ("user_revenue", [("day", 1), ("userId", 1)], {"unique": True}),
            ("first_seen", [("day", 1)], {}),
            ("first_payments", [("day", 1)], {}),
            ("batches", [("appliedAt", 1)], {}),
            (
                "batches",
                [("leaseUntil", 1)],
                {"partialFilterExpression": {"done": False}},
            ),
        ]

    def _existing_indexes(self, name: str) -> dict[tuple[tuple[str, Any], ...], dict[str, Any]]:
        """By key, not by name: names differ between servers and tools."""
        return {_index_key(spec): dict(spec) for spec in self._collection(name).list_indexes()}

    def _missing_indexes(self, event_ttl: timedelta | None) -> list[_Index]:
        """The planned indexes the server lacks (one ``listIndexes`` per collection),
        unique ones first; an index on a key that must be unique but is not is an error:
        exact counting would silently be wrong."""
        ttl = _ttl_seconds(event_ttl or DEFAULT_EVENT_TTL, self.ttl_index)
        existing: dict[str, dict[tuple[tuple[str, Any], ...], dict[str, Any]]] = {}
        missing: list[_Index] = []
        for name, keys, options in self._index_plan(ttl):
            if name not in existing:
                existing[name] = self._existing_indexes(name)
            found = existing[name].get(tuple(keys))
            if found is None:
                missing.append(_Index(name, tuple(keys), options))
            elif options.get("unique") and not found.get("unique"):
                raise StoreError(
                    f"MongoDB {self.where}: {self.prefix}{name} has an index on"
                    f" {dict(keys)} without unique, which exact counting needs: drop it"
                    " and reopen the store (or run gso-analytics mongo-init) to have it"
                    " created unique"
                )
        return sorted(missing, key=lambda index: not index.unique)

    def _build_indexes(self, missing: list[_Index]) -> None:
        """``createIndexes``, unique indexes first (the processes waiting for them go on
        sooner), with ``commitQuorum: "majority"`` where the deployment has members to
        vote (the default waits for every voting member)."""
        pymongo = _pymongo()
        options = {"commitQuorum": "majority"} if self._commit_quorum else {}
        groups: dict[tuple[bool, str], list[Any]] = {}
        for index in missing:
            model = pymongo.IndexModel(list(index.keys), **index.options)
            groups.setdefault((not index.unique, index.name), []).append(model)
        for (_, name), models in groups.items():
            self._collection(name).create_indexes(models, **options)

    def _describe_indexes(self, indexes: list[_Index]) -> str:
        return ", ".join(index.describe(self.prefix) for index in indexes)

    def _open_indexes(self, event_ttl: timedelta | None) -> None:
        """At open: nothing to do when every index exists. Otherwise one process builds
        the missing ones under a lease, and the others carry on with a warning, unless
        a unique index is missing: without it counting is wrong, so they wait for it
        (up to ``lock_wait``). ``create_indexes=False`` only checks (deploy steps run
        ``gso-analytics mongo-init``)."""
        missing = self._missing_indexes(event_ttl)
        if missing and not self.create_indexes:
            self._report_missing(missing, "run `gso-analytics mongo-init --store URL`")
            return
        deadline = time.monotonic() + self.lock_wait.total_seconds()
        while missing:
            token = self._take_index_lease()
            if token is not None:
                try:
                    # Another process may have built some since we looked.
                    self._build_indexes(self._missing_indexes(event_ttl))
                finally:
                    self._release_index_lease(token)
                return
            if not any(index.unique for index in missing):
                self._report_missing(missing, "another process is creating them")
                return
            if time.monotonic() >= deadline:
                raise StoreError(
                    f"MongoDB {self.where}: unique indexes exact counting needs are still"
                    f" missing after {self.lock_wait.total_seconds():g} s while another"
                    f" process builds them ({self._describe_indexes(missing)}; its lease"
                    f" in {self.prefix}locks ends {INDEX_BUILD_LEASE} after it began)"
                )
            time.sleep(0.05)
            missing = self._missing_indexes(event_ttl)

    def _report_missing(self, missing: list[_Index], remedy: str) -> None:
        """A missing unique index is an error; any other is a warning (its queries scan
        the collection until it exists)."""
        unique = [index for index in missing if index.unique]
        if unique:
            raise StoreError(
                f"MongoDB {self.where}: unique indexes exact counting needs are missing"
                f" ({self._describe_indexes(unique)}): {remedy}"
            )
        log.warning(
            "gso_analytics: MongoDB %s is missing indexes (%s); queries that need them"
            " scan their collection until they exist: %s",
            self.where,
            self._describe_indexes(missing),
            remedy,
        )

    def _take_index_lease(self) -> str | None:
        """The lease on building indexes (a ``locks`` document, as the session lock):
        its token if this process got it, None while another one holds it."""
        pymongo = _pymongo()
        locks = self._collection("locks")
        token = uuid.uuid4().hex
        now = self._server_now()
        lease = {"owner": token, "until": now + INDEX_BUILD_LEASE, "since": now}
        if locks.replace_one({"_id": _INDEX_LEASE_ID, "until": {"$lt": now}}, lease).matched_count:
            return token
        try:
            locks.insert_one({"_id": _INDEX_LEASE_ID, **lease})
        except pymongo.errors.DuplicateKeyError:
            return None  # held, or taken just now by another process
        return token

    def _release_index_lease(self, token: str) -> None:
        pymongo = _pymongo()
        try:
            self._collection("locks").replace_one(
                {"_id": _INDEX_LEASE_ID, "owner": token}, {"owner": "", "until": _EPOCH}
            )
        except pymongo.errors.PyMongoError as exc:  # the build's own error matters more
            log.warning("gso_analytics: could not release the index lease (%s): it expires", exc)

    def _create_collections(self) -> None:
        """Every collection exists before the first transaction: creating one inside a
        transaction fails on MongoDB before 4.4 and in cross-shard transactions."""
        pymongo = _pymongo()
        present = set(self._db().list_collection_names())
        for name in ("session_users", "locks", "logouts", "session_journal", "meta", "tombstones"):
            if f"{self.prefix}{name}" not in present:
                # CollectionInvalid: another process created it just now.
                with contextlib.suppress(pymongo.errors.CollectionInvalid):
                    self._db().create_collection(f"{self.prefix}{name}")

    def init_indexes(self, event_ttl: timedelta | None = None) -> list[str]:
        """Create every missing index now, in this process (what ``gso-analytics
        mongo-init`` runs in a deploy step, before workers open the store with
        ``createIndexes=false``); with ``event_ttl``, set the TTL index to it. Returns
        the indexes created, described as in the warnings."""
        with self._errors("creating indexes"):
            missing = self._missing_indexes(event_ttl)
            self._build_indexes(missing)
            self._create_collections()
            if event_ttl is not None:
                self._sync_event_ttl(event_ttl)
        return [index.describe(self.prefix) for index in missing]

    def check_event_ttl(self, event_ttl: timedelta) -> None:
        """At least a second, and at most :data:`MAX_EVENT_TTL` with the TTL index."""
        _ttl_seconds(event_ttl, self.ttl_index)

    def event_ttl_index(self) -> dict[str, Any] | None:
        """The events' ``{ts: 1}`` index as the server describes it (None if absent)."""
        with self._errors("reading the events' indexes"):
            return self._existing_indexes("events").get((("ts", 1),))

    def _sync_event_ttl(self, event_ttl: timedelta) -> None:
        """Make the TTL index expire events after ``event_ttl``: changed in place with
        ``collMod``, never dropped and rebuilt under a live collection."""
        seconds = _ttl_seconds(event_ttl, self.ttl_index)
        if not self.ttl_index or seconds == self._synced_ttl:
            return
        pymongo = _pymongo()
        with self._errors("setting the event TTL index"):
            index = self._existing_indexes("events").get((("ts", 1),))
            if index is None:
                return  # not built yet (by the lease holder or mongo-init): next prune
            try:
                if index.get("expireAfterSeconds") != seconds:
                    log.info(
                        "gso_analytics: TTL index of %sevents: expireAfterSeconds %s -> %d",
                        self.prefix,
                        index.get("expireAfterSeconds"),
                        seconds,
                    )
                    self._db().command(
                        "collMod",
                        f"{self.prefix}events",
                        index={"keyPattern": {"ts": 1}, "expireAfterSeconds": seconds},
                    )
            except pymongo.errors.OperationFailure as exc:
                # Pruning still deletes expired events; only the server-side expiry lags.
                log.warning(
                    "gso_analytics: cannot set the event TTL index to %d s on %s (%s);"
                    " events are still deleted by the prune job",
                    seconds,
                    self.where,
                    exc,
                )
        self._synced_ttl = seconds

    # -- upgrading stores of earlier versions -----------------------------------------------

    def _upgrade_sessions(self) -> None:
        """Stores written before sessions were computed from marks (up to 0.1 of
        2026-11-25) get a logout mark for each session a logout closed and for each
        logout still waiting for its login, and lose the pairing fields those versions
        kept. Idempotent (marks are keyed by the session or pending logout), so
        processes opening the store at once may all run it."""
        pymongo = _pymongo()
        pending = f"{self.prefix}pending_logouts"
        if pending not in self._db().list_collection_names():
            return
        log.info("gso_analytics: upgrading %s sessions to login/logout marks", self.where)
        sessions = self._collection("sessions")
        marks = [
            {
                "_id": f"{doc['_id']}-logout",
                "userId": doc["userId"],
                "at": doc["logoutAt"],
                "origin": doc["_id"],
                "seq": 1,
            }
            for doc in sessions.find(
                {"open": False, "timedOut": False, "reloginBy": None},
                {"userId": 1, "logoutAt": 1},
            )
        ]
        marks += [
            {
                "_id": f"pending-{doc['_id']}",
                "userId": doc["userId"],
                "at": doc["logoutAt"],
                "origin": "pending",
                "seq": 0,
            }
            for doc in self._db()[pending].find({"takenBy": ""})
        ]
        if marks:
            try:
                self._collection("logouts").insert_many(marks, ordered=False)
            except pymongo.errors.BulkWriteError as exc:
                _only_duplicates(exc)  # another process upgrading at the same time
        sessions.update_many(
            {},
            {
                "$unset": {
                    field: ""
                    for field in (
                        "closedBy",
                        "reloginBy",
                        "correctedBy",
                        "reloginLogoutAt",
                        "reloginDurationS",
                    )
                }
            },
        )
        self._db().drop_collection(pending)

    # -- day and month counters: guarded upserts, outside any transaction ------------------

    def _apply_counters(
        self, guard: str | None, daily: Mapping[str, Any], monthly: Mapping[str, Any]
    ) -> None:
        """Add ``{day: {month, inc}}`` and ``{month: inc}`` to the daily and monthly
        documents, at most once per ``guard`` (step 4 of the module docstring)."""
        kept = self.applied_batches_kept
        for fields in (*(entry["inc"] for entry in daily.values()), *monthly.values()):
            for field in fields:
                if not field.isidentifier() or field in _RESERVED_FIELDS:
                    raise StoreError(
                        f"counter field {field!r} cannot be stored in MongoDB", permanent=True
                    )
        ops = [
            inc_op({"day": day}, entry["inc"], {"month": entry["month"]}, guard, kept)
            for day, entry in sorted(daily.items())
        ]
        upsert(self, "daily", [op for op in ops if op is not None], {})
        ops = [inc_op({"month": m}, f, None, guard, kept) for m, f in sorted(monthly.items())]
        upsert(self, "monthly", [op for op in ops if op is not None], {})
        # The all-time totals, under the same guard: exactly the sum of the days and
        # months, whichever of these writes a stopped process left for a retry.
        totals: dict[str, Number] = {}
        for fields in (*(entry["inc"] for entry in daily.values()), *monthly.values()):
            for field, amount in total_increments(fields).items():
                totals[field] = totals.get(field, 0) + amount
        op = inc_op({"_id": _TOTALS_ID}, {f: v for f, v in totals.items() if v}, None, guard, kept)
        upsert(self, "totals", [] if op is None else [op], {})

    def _complete_counters(
        self,
        batch_id: str,
        daily: Mapping[str, Any] | None = None,
        monthly: Mapping[str, Any] | None = None,
    ) -> None:
        """Replica set: a committed batch's day and month increments, from its batch
        document (read unless given), then marked applied. Safe to run twice or from
        two processes at once: the increments are guarded by the batch id."""
        batches = self._collection("batches")
        if daily is None or monthly is None:
            doc = batches.find_one({"_id": batch_id}, {"daily": 1, "monthly": 1})
            if doc is None:
                return
            daily, monthly = doc.get("daily", {}), doc.get("monthly", {})
        self._apply_counters(batch_id, daily, monthly)
        batches.update_one(
            {"_id": batch_id},
            {"$set": {"countersApplied": True}, "$unset": {"daily": "", "monthly": ""}},
        )

    def _complete_all_counters(self) -> int:
        """The prune job's part: batches committed by a process that stopped before their
        counters (killed, or the connection lost after the commit)."""
        pending = list(
            self._collection("batches").find({"countersApplied": False}, {"daily": 1, "monthly": 1})
        )
        for doc in pending:
            log.info("gso_analytics: applying the day counters of batch %s", doc["_id"])
            self._complete_counters(doc["_id"], doc.get("daily", {}), doc.get("monthly", {}))
        return len(pending)

    # -- the standalone session journal ----------------------------------------------------

    def _journal(self, guard: str | None, changes: SessionChanges, at: datetime) -> None:
        """Write a batch's session changes on standalone (step 3 of the module docstring):
        one journal document first, then its replay. ``guard`` None (the prune job's
        timeouts, which change no aggregate) writes the sessions directly."""
        sessions = [_session_doc(session) for session in changes.sessions]
        logouts = [_logout_doc(logout) for logout in changes.logouts]
        if guard is None:
            write_marks(self, logouts, sessions, {})
            return
        doc = {
            "_id": guard,
            "at": at,
            "journaledAt": datetime.now(UTC),
            "done": False,
            "sessions": sessions,
            "logouts": logouts,
            "daily": {
                day: {"month": changes.months[day], "inc": {k: v for k, v in f.items() if v}}
                for day, f in changes.daily.items()
                if any(f.values())
            },
            "monthly": {
                month: {k: v for k, v in f.items() if v}
                for month, f in changes.monthly.items()
                if any(f.values())
            },
        }
        try:
            self._collection("session_journal").insert_one(doc)
        except _pymongo().errors.DuplicateKeyError:
            return  # an earlier attempt journaled it, and session_marks replayed it
        self._replay(doc)

    def _replay(self, doc: Mapping[str, Any]) -> None:
        """Apply a journal: idempotent mark and session writes, then increments guarded
        by the journal's id, so a replay by this batch's retry or by any later batch
        (after this one stopped half-way) counts them exactly once."""
        write_marks(self, list(doc["logouts"]), list(doc["sessions"]), {})
        self._apply_counters(doc["_id"], doc["daily"], doc["monthly"])
        self._collection("session_journal").update_one(
            {"_id": doc["_id"]}, {"$set": {"done": True}}
        )

    def _replay_journals(self) -> None:
        """Complete the journals of batches that stopped half-way (under the lock, in
        the order they were written), before reading any marks."""
        journal = self._collection("session_journal")
        for doc in journal.find({"done": False}).sort("journaledAt", 1):
            log.info("gso_analytics: completing the session writes of batch %s", doc["_id"])
            self._replay(doc)

    # -- the server's clock ---------------------------------------------------------------

    def _read_clock(self, hello: Mapping[str, Any]) -> None:
        """Keep ``hello``'s ``localTime`` with the monotonic moment it was read. A
        stand-in that does not send it (mongomock) leaves this host's clock in use."""
        local = hello.get("localTime")
        server = _aware(local) if isinstance(local, datetime) else datetime.now(UTC)
        self._clock_reading = (server, time.monotonic())

    def _server_now(self) -> datetime:
        """The server's time: leases are written by one host and judged expired by
        another, so they are all on one clock, the server's, whatever the hosts' clocks
        say. Read at most every :data:`SERVER_CLOCK_REFRESH_S` (``hello``, one cheap
        command; nx-27017 and mongomock have no aggregation-pipeline updates, so
        ``$$NOW`` cannot set a lease's end on them)."""
        reading = self._clock_reading
        if reading is None or time.monotonic() - reading[1] > SERVER_CLOCK_REFRESH_S:
            self._read_clock(self._hello())
            reading = self._clock_reading
            assert reading is not None
        return reading[0] + timedelta(seconds=time.monotonic() - reading[1])

    # -- standalone batch intents and their leases ---------------------------------------

    def _lease_end(self) -> int:
        """When a batch lease taken now ends, in milliseconds of the server's clock: a
        number, because nx-27017's ``$set`` stores a date as a string, which no longer
        compares with dates."""
        return to_ms(self._server_now() + self.batch_lease)

    def _write_intent(self, batch_id: str, at: datetime, text: str) -> dict[str, Any]:
        """The fields of a claim document that hold its intent: the text itself, or,
        past :data:`INTENT_CHUNK_CHARS`, the number of ``batch_intents`` chunks written
        here first (replaced by id: a retry writes the same chunks)."""
        if len(text) <= INTENT_CHUNK_CHARS:
            return {"intent": text}
        pymongo = _pymongo()
        chunks = [text[i : i + INTENT_CHUNK_CHARS] for i in range(0, len(text), INTENT_CHUNK_CHARS)]
        self._collection("batch_intents").bulk_write(
            [
                pymongo.ReplaceOne(
                    {"_id": _chunk_id(batch_id, n)},
                    {"_id": _chunk_id(batch_id, n), "at": at, "text": chunk},
                    upsert=True,
                )
                for n, chunk in enumerate(chunks)
            ],
            ordered=False,
        )
        return {"intentChunks": len(chunks)}

    def _load_intent(self, batch_id: str) -> tuple[FlushBatch, int] | None:
        """The part a claim not done recorded, and in how many chunks; None when it
        recorded none (claimed by a version before intents) or its chunks are gone."""
        doc = self._collection("batches").find_one(
            {"_id": batch_id, "done": False}, {"intent": 1, "intentChunks": 1}
        )
        if doc is None:
            return None
        text = doc.get("intent")
        if text is None and doc.get("intentChunks"):
            ids = [_chunk_id(batch_id, n) for n in range(doc["intentChunks"])]
            found = {
                d["_id"]: d["text"]
                for d in self._collection("batch_intents").find({"_id": {"$in": ids}})
            }
            if len(found) == len(ids):
                text = "".join(found[i] for i in ids)
        return None if text is None else (batch_from_json(text), doc.get("intentChunks", 0))

    def _take_over(self, batch_id: str, token: str, *, own: bool = True) -> bool:
        """Make ``token`` the owner of a claim not done, if nobody else holds it: its
        lease ended (its process died), it has none (claimed before leases), or, with
        ``own``, this process's last attempt holds it (the flusher retries a batch only
        once that attempt failed)."""
        previous = self._claims.get(batch_id) if own else None
        free: list[dict[str, Any]] = [] if previous is None else [{"owner": previous}]
        free += [
            {"leaseUntil": {"$lt": to_ms(self._server_now())}},
            {"leaseUntil": {"$exists": False}},
        ]
        # One compare-and-swap per condition, not one $or: nx-27017 applies an update
        # whose filter has $or to the first document the $or alone matches.
        batches = self._collection("batches")
        for condition in free:
            taken = batches.update_one(
                {"_id": batch_id, "done": False, **condition},
                {"$set": {"owner": token, "leaseUntil": self._lease_end()}},
            )
            if taken.matched_count:
                return True
        return False

    def _renew_lease(self, batch_id: str, token: str) -> None:
        renewed = self._collection("batches").update_one(
            {"_id": batch_id, "done": False, "owner": token},
            {"$set": {"leaseUntil": self._lease_end()}},
        )
        if not renewed.matched_count:
            raise StoreError(
                f"MongoDB {self.where}: batch {batch_id} was taken over by another process"
                f" (this one held it past its {self.batch_lease.total_seconds():g} s lease);"
                " that process completes it"
            )

    def _mark_done(self, batch_id: str, chunks: int) -> None:
        """The batch is applied: its intent and lease are no longer needed."""
        self._collection("batches").update_one(
            {"_id": batch_id},
            {
                "$set": {"done": True},
                "$unset": {"intent": "", "intentChunks": "", "owner": "", "leaseUntil": ""},
            },
        )
        if chunks:
            ids = [_chunk_id(batch_id, n) for n in range(chunks)]
            self._collection("batch_intents").delete_many({"_id": {"$in": ids}})
        self._claims.pop(batch_id, None)

    def _complete_abandoned_batches(self) -> int:
        """The prune job's part on standalone: finish every batch whose process died
        half-way (not done, lease ended), from its intent, in recovery mode, where the
        guards make whatever the dead process wrote count once. A batch that fails for
        good is logged and left for the next prune; a store error (the server is down)
        ends the prune."""
        abandoned = [
            doc["_id"]
            for doc in self._collection("batches").find(
                {"done": False, "leaseUntil": {"$lt": to_ms(self._server_now())}}, {"_id": 1}
            )
        ]
        completed = 0
        for batch_id in abandoned:
            intent = self._load_intent(batch_id)
            token = uuid.uuid4().hex
            if intent is None or not self._take_over(batch_id, token, own=False):
                continue  # done meanwhile, or taken over by another process
            log.warning("gso_analytics: completing batch %s, whose process died", batch_id)
            try:
                with self.transaction() as tx:
                    assert isinstance(tx, _MongoTransaction)
                    tx.resume(token, intent[1])
                    apply_batch(tx, intent[0], self.erasure_key())
            except StoreError as exc:
                if not exc.permanent:
                    raise
                log.exception("gso_analytics: batch %s cannot be completed", batch_id)
                continue
            completed += 1
        return completed

    # -- the standalone session lock ------------------------------------------------------

    def _acquire_lock(self) -> str:
        """Take the standalone session lock: a compare-and-swap on one document, free
        once its lease has ended (a release ends it at once)."""
        pymongo = _pymongo()
        token = uuid.uuid4().hex
        locks = self._collection("locks")
        deadline = time.monotonic() + self.lock_wait.total_seconds()
        delay = 0.001
        created = False
        while True:
            now = self._server_now()
            taken = locks.replace_one(  # free: released (until = epoch) or lease over
                {"_id": _LOCK_ID, "until": {"$lt": now}},
                {"owner": token, "until": now + self.lock_lease, "since": now},
            )
            if taken.matched_count:
                return token
            if not created:  # the first batch of a new database creates the lock
                created = True
                try:
                    locks.insert_one({"_id": _LOCK_ID, "owner": "", "until": _EPOCH})
                    continue
                except pymongo.errors.DuplicateKeyError:
                    pass
            if time.monotonic() >= deadline:
                raise StoreError(
                    f"MongoDB {self.where}: the session lock ({self.prefix}locks) stayed taken"
                    f" for {self.lock_wait.total_seconds():g} s; another process is applying"
                    " a batch (or died holding it: the lease ends"
                    f" {self.lock_lease.total_seconds():g} s after it was taken)"
                )
            time.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, 0.05)

    def _release_lock(self, token: str) -> None:
        pymongo = _pymongo()
        try:
            self._collection("locks").replace_one(
                {"_id": _LOCK_ID, "owner": token}, {"owner": "", "until": _EPOCH}
            )
        except pymongo.errors.PyMongoError as exc:
            log.warning("gso_analytics: could not release the session lock (%s): it expires", exc)

    # -- transactions ---------------------------------------------------------------------

    def _start_transaction(self, session: Any) -> None:
        """Start a transaction with its own concerns, never the client's: ``snapshot``
        reads (one consistent view, across shards too; a URL's ``readConcernLevel=
        linearizable`` is not allowed in a transaction), a ``majority`` commit (a flush
        acknowledged survives a failover, whatever the URL's ``w``) bounded by
        :data:`MAX_COMMIT_TIME_MS`, and the primary (reads in a transaction must be)."""
        pymongo = _pymongo()
        session.start_transaction(
            read_concern=pymongo.read_concern.ReadConcern("snapshot"),
            write_concern=pymongo.WriteConcern("majority"),
            read_preference=pymongo.ReadPreference.PRIMARY,
            max_commit_time_ms=MAX_COMMIT_TIME_MS,
        )

    def _commit(self, session: Any) -> None:
        """Commit, sending the commit again while its outcome is unknown, as
        ``with_transaction`` does (pymongo retries it with ``w: majority``): with backoff,
        within :data:`TRANSIENT_RETRY_S`, and not after ``maxCommitTimeMS`` ran out."""
        pymongo = _pymongo()
        backoff = _Backoff(TRANSIENT_RETRY_S)
        while True:
            try:
                session.commit_transaction()
                return
            except pymongo.errors.PyMongoError as exc:
                if (
                    not exc.has_error_label("UnknownTransactionCommitResult")
                    or _max_time_expired(exc)
                    or not backoff.sleep()
                ):
                    raise

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        tx = _MongoTransaction(self)
        try:
            with self._errors("applying a batch"):
                try:
                    yield tx
                    tx.commit()
                except BaseException:
                    tx.abort()
                    raise
        finally:
            tx.end()

    def apply(self, batch: FlushBatch) -> ApplyResult:
        """Apply exactly once; a transaction or write that lost to a concurrent one is
        tried again after a short backoff (the guards make the retry exact)."""
        return _until_no_conflict(lambda: super(MongoStore, self).apply(batch))

    def erase_user(self, user_id: str, at: datetime) -> ErasureReceipt:
        """The shared erase; in a transaction that lost a write conflict to a batch of
        the same player (see :meth:`_MongoTransaction.tombstones`), run again."""
        _check_str(user_id, "user_id")
        return _until_no_conflict(lambda: super(MongoStore, self).erase_user(user_id, at))

    def user_records(self, user_id: str) -> UserRecords:
        _check_str(user_id, "user_id")

        def keys(name: str, key: str) -> list[str]:
            return sorted(doc[key] for doc in self._collection(name).find({"userId": user_id}))

        def first(name: str) -> str | None:
            found = self._collection(name).find_one({"_id": user_id})
            return None if found is None else str(found["day"])

        with self._errors("reading a player's records"):
            revenue = {
                doc["day"]: doc["revenueCents"]
                for doc in self._collection("user_revenue").find({"userId": user_id})
            }
            return read_user_records(keys, first, revenue)

    def prune(self, now: datetime, event_ttl: timedelta, session_timeout: timedelta) -> PruneResult:
        """Bring the TTL index to ``event_ttl`` (a ``collMod`` when it changed), then the
        shared prune: the TTL monitor runs about once a minute, the prune job makes the
        contract exact at any moment."""
        self._sync_event_ttl(event_ttl)
        if self.uses_transactions:
            with self._errors("completing batches' counters"):
                self._complete_all_counters()
        else:
            with self._errors("completing batches of processes that died"):
                self._complete_abandoned_batches()
        return super().prune(now, event_ttl, session_timeout)

    # -- reads -------------------------------------------------------------------------------

    def _daily_stats(self, doc: Mapping[str, Any]) -> DailyStats:
        counters = {k: v for k, v in doc.items() if k not in ("_id", "day", "month")}
        counters.pop("appliedBatches", None)
        return DailyStats(doc["day"], doc["month"], counters)

    def get_day(self, day: str) -> DailyStats | None:
        _check_str(day, "day")
        with self._errors(f"reading day {day}"):
            doc = self._collection("daily").find_one({"day": day}, {"appliedBatches": 0})
        return self._daily_stats(doc) if doc else None

    def recent_days(self, limit: int = 30) -> list[DailyStats]:
        with self._errors("reading recent days"):
            docs = list(
                self._collection("daily")
                .find({}, {"appliedBatches": 0})
                .sort("day", -1)
                .limit(int(limit))
            )
        return [self._daily_stats(doc) for doc in docs]

    def get_month(self, month: str) -> MonthStats:
        _check_str(month, "month")
        with self._errors(f"reading month {month}"):
            doc = self._collection("monthly").find_one({"month": month}) or {}
        return MonthStats.from_fields(month, doc)

    def get_totals(self) -> dict[str, Number]:
        with self._errors("reading the totals"):
            doc = self._collection("totals").find_one({"_id": _TOTALS_ID}) or {}
        return {k: v for k, v in doc.items() if k not in ("_id", "appliedBatches")}

    def save_heartbeat(self, heartbeat: Heartbeat) -> None:
        doc = {
            "_id": heartbeat.process,
            "host": heartbeat.host,
            "pid": heartbeat.pid,
            "at": heartbeat.at,
            "expiresAt": heartbeat.expires_at,
            "payload": heartbeat.payload(),
        }
        with self._errors("writing a heartbeat"):
            self._collection("heartbeats").replace_one({"_id": doc["_id"]}, doc, upsert=True)

    def live_heartbeats(self, now: datetime) -> list[Heartbeat]:
        with self._errors("reading the heartbeats"):
            docs = list(
                self._collection("heartbeats").find({"expiresAt": {"$gt": now}}).sort("_id", 1)
            )
        return [
            Heartbeat.from_payload(
                d["_id"], d["host"], d["pid"], _aware(d["at"]), _aware(d["expiresAt"]), d["payload"]
            )
            for d in docs
        ]

    def forget_heartbeats(self, expired_before: datetime) -> None:
        with self._errors("deleting expired heartbeats"):
            self._collection("heartbeats").delete_many({"expiresAt": {"$lt": expired_before}})

    def count_open_sessions(self) -> int:
        with self._errors("counting open sessions"):
            return int(self._collection("sessions").count_documents({"open": True}))

    def get_sessions(self, user_id: str) -> list[SessionRecord]:
        _check_str(user_id, "user_id")
        with self._errors("reading sessions"):
            docs = list(
                self._collection("sessions")
                .find({"userId": user_id})
                .sort([("loginAt", 1), ("origin", 1), ("seq", 1)])
            )
        return [_session_record(doc) for doc in docs]

    def get_events(self, user_id: str | None = None, limit: int = 1000) -> list[EventRecord]:
        query = {} if user_id is None else {"userId": _check_str(user_id, "user_id")}
        with self._errors("reading events"):
            # Newest flushed first, by _id: unique, so the order is total (MongoDB
            # leaves ties of a sort on ts in any order), and ObjectIds grow with time
            # and with the position in a batch.
            docs = list(self._collection("events").find(query).sort("_id", -1).limit(int(limit)))
        return [_event_record(doc) for doc in reversed(docs)]

    # -- KPI range reads: each an index range on the day key ----------------------------

    def _day_range(
        self, name: str, start: str, end: str, fields: dict[str, int] | None
    ) -> list[Any]:
        query = {"day": {"$gte": _check_str(start, "start"), "$lte": _check_str(end, "end")}}
        with self._errors(f"reading {name} from {start} to {end}"):
            return list(self._collection(name).find(query, fields))

    def days_between(self, start: str, end: str) -> list[DailyStats]:
        docs = self._day_range("daily", start, end, {"appliedBatches": 0})
        return sorted((self._daily_stats(doc) for doc in docs), key=lambda d: d.day)

    def _grouped(self, name: str, user_key: str, start: str, end: str) -> dict[str, set[str]]:
        found: dict[str, set[str]] = {}
        for doc in self._day_range(name, start, end, {"day": 1, user_key: 1}):
            found.setdefault(doc["day"], set()).add(doc[user_key])
        return found

    def day_users_between(self, start: str, end: str) -> dict[str, set[str]]:
        return self._grouped("day_users", "userId", start, end)

    def count_day_users(self, start: str, end: str) -> int:
        days = {"$gte": _check_str(start, "start"), "$lte": _check_str(end, "end")}
        pipeline = [
            {"$match": {"day": days}},
            {"$group": {"_id": "$userId"}},
            {"$count": "users"},
        ]
        with self._errors("counting active users"):
            found = list(self._collection("day_users").aggregate(pipeline))
        return int(found[0]["users"]) if found else 0

    def first_seen_between(self, start: str, end: str) -> dict[str, set[str]]:
        return self._grouped("first_seen", "_id", start, end)

    def first_payments_between(self, start: str, end: str) -> dict[str, set[str]]:
        return self._grouped("first_payments", "_id", start, end)

    def user_revenue_between(self, start: str, end: str) -> dict[str, dict[str, Number]]:
        found: dict[str, dict[str, Number]] = {}
        fields = {"day": 1, "userId": 1, "revenueCents": 1}
        for doc in self._day_range("user_revenue", start, end, fields):
            found.setdefault(doc["day"], {})[doc["userId"]] = doc.get("revenueCents", 0)
        return found

    def sessions_between(self, start: str, end: str) -> list[SessionRecord]:
        return [_session_record(doc) for doc in self._day_range("sessions", start, end, None)]

    def events_between(
        self, start: str | None, end: str | None, names: list[str]
    ) -> list[EventRecord]:
        query: dict[str, Any] = {"event": {"$in": [_check_str(n, "event") for n in names]}}
        days: dict[str, str] = {}
        if start is not None:
            days["$gte"] = _check_str(start, "start")
        if end is not None:
            days["$lte"] = _check_str(end, "end")
        if days:
            query["day"] = days
        with self._errors("reading events for a funnel"):
            docs = list(self._collection("events").find(query).sort([("ts", 1), ("_id", 1)]))
        return [_event_record(doc) for doc in docs]

    def close(self) -> None:
        """Close the client when the store opened it (from a URL); safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self._reconnect is not None and os.getpid() == self._pid:
            client = getattr(self._database, "client", None)
            if client is not None:
                client.close()
