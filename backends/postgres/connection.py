"""The store's hold on the server: a bounded pool of this process's own (a child
process opens its own), driver errors translated into :class:`StoreError` and
:class:`~gso_analytics.conflicts.Conflict`, and the transactions everything runs in."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from gso_analytics import conflicts, forking
from gso_analytics.conflicts import Conflict
from gso_analytics.errors import StoreError
from gso_analytics.stored_rows import StoredRows

from .options import Options, pool_class, pool_timeout, psycopg

#: The time budget of a transaction run again after a serialization failure or a
#: deadlock, with backoff; past it the error goes to the flusher, which keeps the batch.
TRANSIENT_RETRY_S = 10.0

#: SQLSTATEs of a transaction that lost to a concurrent one: serialization failure,
#: deadlock, a unique key inserted first by a transaction this one's snapshot does not
#: see, a lock not granted within ``lock_timeout``.
CONFLICTS = frozenset({"40001", "40P01", "23505", "55P03"})
#: A row for which no partition exists (events of a day whose partition another
#: process dropped, or this process believed created): the partitions are made again.
NO_PARTITION = "23514"
#: SQLSTATE classes of errors about what was sent, which no retry can fix.
_PERMANENT_CLASSES = ("22", "42")
_PRIVILEGE = "42501"

_T = TypeVar("_T")

#: Pools a child inherited over a fork. They belong to the parent: kept referenced so
#: that garbage collection never closes their connections in the child (libpq would
#: send the server a Terminate on the parent's sockets), and never used.
_inherited: list[Any] = []


class NoPartition(Conflict):
    """An event fell outside the partitions: the store makes them, then runs again."""


class Connection:
    """The pool and what every part of the store does with it."""

    #: The store's (:attr:`gso_analytics.store.Store.stored_rows`).
    stored_rows: StoredRows

    def __init__(self, conninfo: str, where: str, options: Options, replica: str | None) -> None:
        self._conninfo = conninfo
        self._replica_conninfo = replica
        self.where = where
        self.options = options
        self.schema = options.schema
        self._pool: Any = None
        self._replica_pool: Any = None
        self._closed = False
        self._lock = threading.Lock()
        #: Held while this process makes or drops event partitions.
        self._ddl_lock = threading.Lock()
        forking.register(self)

    # -- the pool, and forks ---------------------------------------------------------------

    def fork_locks(self) -> list[threading.Lock]:
        """The pool's creation and the DDL of partitions: a transaction of another
        thread at the fork stays the parent's, on a connection the child never uses."""
        return [self._lock, self._ddl_lock]

    def fork_wait(self) -> float:
        return self.options.pool_timeout

    def after_fork_in_child(self, new_locks: bool) -> None:
        _inherited.extend(p for p in (self._pool, self._replica_pool) if p is not None)
        self._pool = self._replica_pool = None
        if new_locks:
            self._lock = threading.Lock()
            self._ddl_lock = threading.Lock()

    def _pool_of_this_process(self, replica: bool = False) -> Any:
        """This process's pool (of the primary, or of the replicas: see
        :attr:`~.options.Options.replica`), opened on first use."""
        with self._lock:
            if self._closed:
                raise StoreError(f"PostgreSQL store {self.where} is closed")
            if replica and self._replica_conninfo is not None:
                if self._replica_pool is None:
                    self._replica_pool = self._new_pool(self._replica_conninfo, "replica")
                return self._replica_pool
            if self._pool is None:
                self._pool = self._new_pool(self._conninfo, "primary")
            return self._pool

    def _new_pool(self, conninfo: str, role: str) -> Any:
        pool = pool_class()
        opened = pool(
            conninfo,
            min_size=1,
            max_size=self.options.pool_size,
            timeout=self.options.pool_timeout,
            kwargs={"autocommit": True},
            check=pool.check_connection,
            configure=self._connected if role == "primary" else None,
            open=False,
            name=f"gso_analytics-{role}-{os.getpid()}",
        )
        opened.open(wait=False)
        return opened

    def _connected(self, conn: Any) -> None:
        """A new connection to the primary (the pool's ``configure``): it may reach
        another server than the connection before (after a failover, a standby promoted
        may lack the last commits), so what the store remembers as stored is forgotten
        (:mod:`gso_analytics.stored_rows`; a pool grows rarely, so this costs little)."""
        self.stored_rows.forget()

    def close(self) -> None:
        """Close this process's pool; safe to call twice."""
        with self._lock:
            self._closed = True
            pools = [p for p in (self._pool, self._replica_pool) if p is not None]
            self._pool = self._replica_pool = None
        for pool in pools:
            pool.close()

    # -- errors ------------------------------------------------------------------------------

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """Driver errors become :class:`StoreError`, lost races :class:`Conflict`."""
        driver = psycopg()
        try:
            yield
        except pool_timeout() as exc:
            raise StoreError(
                f"PostgreSQL {self.where} unreachable while {action}: no connection within"
                f" {self.options.pool_timeout:g}s ({exc})"
            ) from exc
        except driver.Error as exc:
            raise self._translate(action, exc) from exc

    def _translate(self, action: str, exc: Exception) -> StoreError:
        state = getattr(exc, "sqlstate", None) or ""
        if state in CONFLICTS:
            return Conflict(f"PostgreSQL {self.where}: conflict while {action}: {exc}")
        if state == NO_PARTITION and "partition" in str(exc):
            return NoPartition(f"PostgreSQL {self.where}: {exc}")
        if state == _PRIVILEGE:
            return StoreError(
                f"PostgreSQL {self.where}: the role may not do this while {action}: {exc}"
                " (grant it USAGE on the schema and SELECT, INSERT, UPDATE, DELETE on its"
                " tables, or run gso-analytics pg-init as the schema's owner; see"
                " docs/postgresql.md)"
            )
        permanent = state.startswith(_PERMANENT_CLASSES)
        return StoreError(f"PostgreSQL {self.where}: {action} failed: {exc}", permanent=permanent)

    # -- connections and transactions ---------------------------------------------------------

    @contextmanager
    def _connection(self, action: str, *, replica: bool = False) -> Iterator[Any]:
        """A pooled connection in autocommit: each statement its own transaction (the
        characteristics of a transaction opened on it are reset: the last user's stay
        on a pooled connection). ``replica``: a standby's, when the store has some."""
        pool = self._pool_of_this_process(replica)
        with self._errors(action), pool.connection() as conn:
            conn.isolation_level = None
            conn.read_only = None
            yield conn

    @contextmanager
    def _transaction(self, action: str, *, read_only: bool = False) -> Iterator[Any]:
        """One REPEATABLE READ transaction (see the package docstring): committed when
        the block ends, rolled back if it raises."""
        driver = psycopg()
        with self._connection(action) as conn:
            conn.isolation_level = driver.IsolationLevel.REPEATABLE_READ
            conn.read_only = read_only
            with conn.transaction():
                yield conn

    def _retrying(self, attempt: Callable[[], _T]) -> _T:
        """``attempt()`` run again while it loses to a concurrent transaction."""
        return conflicts.until_no_conflict(attempt, TRANSIENT_RETRY_S)

    def _snapshot(self, action: str, read: Callable[[Any], _T]) -> _T:
        """``read(cursor)`` in a read-only REPEATABLE READ transaction: one consistent
        view of several tables (the folded figures and the deltas not folded yet)."""

        def attempt() -> _T:
            with self._transaction(action, read_only=True) as conn:
                return read(conn.cursor())

        return self._retrying(attempt)

    def _read(self, sql: str, params: Any = (), *, replica: bool = False) -> list[Any]:
        """One statement's rows (one statement: one snapshot). ``{s}`` is the schema.
        ``replica``: a read that may lag, sent to a standby when the store has some."""
        with self._connection("reading", replica=replica) as conn:
            rows: list[Any] = conn.execute(sql.format(s=self.schema), params).fetchall()
        return rows

    def _write(self, sql: str, params: Any = ()) -> int:
        """One statement outside any batch, in its own transaction; rows affected."""
        with self._connection("writing") as conn:
            return int(conn.execute(sql.format(s=self.schema), params).rowcount)

    @contextmanager
    def _direct(self, action: str) -> Iterator[Any]:
        """A connection of its own, outside the pool, in autocommit: for DDL a batch's
        transaction needs done meanwhile (an event partition), and for statements that
        cannot run in a transaction block (``DETACH PARTITION CONCURRENTLY``)."""
        with self._errors(action):
            conn = psycopg().connect(self._conninfo, autocommit=True)
            try:
                yield conn
            finally:
                conn.close()
