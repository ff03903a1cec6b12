"""The store's hold on the server: the database handle (a client of its own in a
forked child), driver errors translated into messages that say what to do, the
transactions every batch, roll-up, prune and snapshot read runs in, and the server's
clock for leases."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from gso_analytics import conflicts
from gso_analytics.conflicts import Backoff, Conflict
from gso_analytics.errors import StoreError

from .options import (
    MAX_COMMIT_TIME_MS,
    STANDALONE_REFUSED,
    aware,
    describe,
    majority,
    pymongo,
)

#: The time budget of retries: a transaction run again after it lost a write conflict
#: (``TransientTransactionError``), and a commit sent again while its outcome is
#: unknown (``UnknownTransactionCommitResult``), each with exponential backoff; past it
#: the error goes to the flusher, which keeps the batch.
TRANSIENT_RETRY_S = 10.0
#: How often the server's clock is read (``hello``'s ``localTime``); in between it is
#: advanced by this host's monotonic clock, which no clock step moves.
SERVER_CLOCK_REFRESH_S = 60.0
_MAX_TIME_EXPIRED = 50
_AUTH_FAILED = 18
_UNAUTHORIZED = 13
DUPLICATE_KEY = 11000
#: "Transaction numbers are only allowed on a replica set member or mongos".
_ILLEGAL_OPERATION = 20

_T = TypeVar("_T")


def until_no_conflict(attempt: Callable[[], _T]) -> _T:
    """``attempt()``, run again while it loses a conflict, within :data:`TRANSIENT_RETRY_S`."""
    return conflicts.until_no_conflict(attempt, TRANSIENT_RETRY_S)


def _max_time_expired(exc: Exception) -> bool:
    """The commit (or its write concern) ran out of ``maxCommitTimeMS``."""
    details = getattr(exc, "details", None) or {}
    concern_error = details.get("writeConcernError") or {}
    return _MAX_TIME_EXPIRED in (getattr(exc, "code", None), concern_error.get("code"))


class Connection:
    """The database handle and what every part of the store does with it."""

    where: str

    def __init__(
        self, database: Any, where: str | None, reconnect: Callable[[], Any] | None
    ) -> None:
        self._database = database
        self._reconnect = reconnect
        self._pid = os.getpid()
        self._fork_lock = threading.Lock()
        self._closed = False
        self._clock_reading: tuple[datetime, float] | None = None
        self.where = where or describe(database)

    # -- the handle ---------------------------------------------------------------------

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

    def _client(self) -> Any:
        return self._db().client

    def _collection(self, name: str) -> Any:
        raise NotImplementedError  # MongoStore names collections with its prefix

    def _hello(self) -> Mapping[str, Any]:
        """What the server says it is: a standalone, a replica set member or mongos."""
        try:
            hello: Mapping[str, Any] = self._database.command("hello")
        except pymongo().errors.OperationFailure:  # before MongoDB 4.4.2 (and 5.0)
            hello = self._database.command("isMaster")
        return hello

    # -- errors ---------------------------------------------------------------------------

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """Driver errors become :class:`StoreError` naming the server and what to do."""
        try:
            yield
        except pymongo().errors.PyMongoError as exc:
            raise self._translate(action, exc) from exc

    def _translate(self, action: str, exc: Exception) -> StoreError:
        errors = pymongo().errors
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
        if code == _ILLEGAL_OPERATION and "replica set" in str(exc):
            return StoreError(STANDALONE_REFUSED.format(where=self.where), permanent=True)
        if isinstance(exc, errors.DocumentTooLarge):
            return StoreError(
                f"MongoDB {self.where}: a document over 16 MiB while {action}: {exc}",
                permanent=True,
            )
        if isinstance(exc, errors.PyMongoError) and exc.has_error_label(
            "TransientTransactionError"
        ):
            return Conflict(f"MongoDB {self.where}: transaction conflict while {action}: {exc}")
        if code == DUPLICATE_KEY or _duplicate_in_bulk(exc):
            # Inside a transaction: another transaction inserted the same unique key
            # first and committed; a fresh attempt sees its document.
            return Conflict(f"MongoDB {self.where}: concurrent insert while {action}: {exc}")
        return StoreError(f"MongoDB {self.where}: {action} failed: {exc}")

    # -- transactions -----------------------------------------------------------------------

    @contextmanager
    def _session_transaction(self, action: str) -> Iterator[Any]:
        """One transaction with its own concerns, never the client's: ``snapshot`` reads
        (one consistent view, across shards too), a ``majority`` commit bounded in time
        (a flush acknowledged survives a failover, whatever the URL's ``w``), the
        primary. Committed when the block ends (the commit sent again while its outcome
        is unknown), aborted if it raises; driver errors translated."""
        driver = pymongo()
        with self._errors(action):
            session = self._client().start_session()
            try:
                session.start_transaction(
                    read_concern=driver.read_concern.ReadConcern("snapshot"),
                    write_concern=majority(),
                    read_preference=driver.ReadPreference.PRIMARY,
                    max_commit_time_ms=MAX_COMMIT_TIME_MS,
                )
                try:
                    yield session
                except BaseException:
                    if session.in_transaction:
                        # The original error is what matters, not the abort's.
                        with contextlib.suppress(driver.errors.PyMongoError):
                            session.abort_transaction()
                    raise
                self._commit(session)
            finally:
                session.end_session()

    def _commit(self, session: Any) -> None:
        """Commit, sending the commit again while its outcome is unknown, as
        ``with_transaction`` does (pymongo retries it with ``w: majority``): with backoff,
        within :data:`TRANSIENT_RETRY_S`, and not after ``maxCommitTimeMS`` ran out."""
        errors = pymongo().errors
        backoff = Backoff(TRANSIENT_RETRY_S)
        while True:
            try:
                session.commit_transaction()
                return
            except errors.PyMongoError as exc:
                if (
                    not exc.has_error_label("UnknownTransactionCommitResult")
                    or _max_time_expired(exc)
                    or not backoff.sleep()
                ):
                    raise

    def _snapshot(self, action: str, read: Callable[[Any], _T]) -> _T:
        """``read(session)`` in a read-only transaction: one consistent view of several
        collections (the folded figures and the deltas not folded yet), retried while it
        loses to a concurrent roll-up."""

        def attempt() -> _T:
            with self._session_transaction(action) as session:
                return read(session)

        return until_no_conflict(attempt)

    # -- the server's clock -------------------------------------------------------------------

    def _read_clock(self, hello: Mapping[str, Any]) -> None:
        """Keep ``hello``'s ``localTime`` with the monotonic moment it was read. A
        stand-in that does not send it (mongomock) leaves this host's clock in use."""
        local = hello.get("localTime")
        server = aware(local) if isinstance(local, datetime) else datetime.now(UTC)
        self._clock_reading = (server, time.monotonic())

    def _server_now(self) -> datetime:
        """The server's time: a lease is written by one host and judged expired by
        another, so leases are all on one clock, the server's, whatever the hosts'
        clocks say. Read at most every :data:`SERVER_CLOCK_REFRESH_S`."""
        reading = self._clock_reading
        if reading is None or time.monotonic() - reading[1] > SERVER_CLOCK_REFRESH_S:
            self._read_clock(self._hello())
            reading = self._clock_reading
            assert reading is not None
        return reading[0] + timedelta(seconds=time.monotonic() - reading[1])


def _duplicate_in_bulk(exc: Exception) -> bool:
    errors = (getattr(exc, "details", None) or {}).get("writeErrors", [])
    return bool(errors) and all(e.get("code") == DUPLICATE_KEY for e in errors)
