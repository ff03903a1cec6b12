"""A stricter MongoDB stand-in for tests, at the pymongo level.

The store's stand-ins hide what a real replica set does: nx-27017 runs concurrent
transactions without isolation (and aborts undo writes made outside them), and mongomock
has no sessions at all. A :class:`Harness` wraps a ``pymongo.MongoClient`` (or a mongomock
one) so that a test can see and provoke what a replica set would do to the store:

- every data write is recorded with its transaction (:class:`WriteRecord`), so a test
  can fail on a write made outside one;
- MongoDB's first-writer-wins rule: a transaction writing a document that another
  transaction (or a write outside any) wrote and committed after the first one began
  gets a ``WriteConflict`` (code 112, label ``TransientTransactionError``), so retry
  paths run;
- optional seeded random conflicts (``conflict_rate``), for the same reason;
- sessions and transactions for mongomock (an abort restores a snapshot).

Transactions of every thread and process sharing ``state_dir`` run one at a time (a
thread lock plus ``flock``): nx-27017 cannot run two at once, and one at a time is what
makes aborts and isolation honest on the stand-ins. A transaction's begin point is taken
*before* it waits for its turn, so transactions that overlap in time still conflict.

What it does not simulate:

- snapshot reads: reads inside a transaction see commits made after it began;
- conflicts other than write-write ones (no read/write or DDL conflicts);
- a second writer's conflict while the first writer is still uncommitted: the second
  waits for its turn instead, and goes ahead without a conflict if the first aborts;
- retrying a commit that failed (the driver allows it; here a failed commit is final);
- concurrency inside the server: code in which one transaction waits on another thread's
  transaction deadlocks here, and fails after ``LOCK_TIMEOUT_S``;
- on mongomock, isolation: other threads see an open transaction's writes, and a write
  outside a transaction, to a collection an open transaction wrote, is undone if that
  transaction aborts (as nx-27017 does for any write).

Worker processes of a multi-process test call :func:`activate_from_env` (the parent passes
:meth:`Harness.env`); the parent reads every process's writes with
:meth:`Harness.all_records`.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import functools
import inspect
import json
import os
import random
import threading
import weakref
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import pymongo
import pymongo.collection
import pymongo.database
from bson import ObjectId, json_util
from bson.json_util import CANONICAL_JSON_OPTIONS
from pymongo.errors import InvalidOperation, OperationFailure
from pymongo.operations import (
    DeleteMany,
    DeleteOne,
    InsertOne,
    ReplaceOne,
    UpdateMany,
    UpdateOne,
)

#: The environment variable naming a harness's ``state_dir`` for worker processes.
ENV_VAR = "GSO_MONGO_HARNESS"
#: The share of transactional writes a worker process's harness fails with a conflict.
RATE_ENV_VAR = "GSO_MONGO_HARNESS_CONFLICTS"
#: A transaction waiting longer than this for its turn means one was never ended: fail
#: loudly instead of hanging the test run.
LOCK_TIMEOUT_S = 30.0
#: ``(database, collection, key)``: what two transactions conflict on.
WriteKey = tuple[str, str, str]


@dataclass(frozen=True)
class WriteRecord:
    """One data write: ``collection`` without the database name, the method (``op``), the
    documents' keys (canonical JSON of their ``_id``, or ``filter:...`` for an upsert
    that matched nothing), the harness-wide transaction number (None outside one)."""

    collection: str
    op: str
    keys: frozenset[str]
    txn: int | None
    pid: int


def write_conflict(message: str) -> OperationFailure:
    """The error a replica set raises on a write-write conflict inside a transaction."""
    errmsg = f"WriteConflict error: {message}"
    return OperationFailure(
        errmsg,
        112,
        {
            "errorLabels": ["TransientTransactionError"],
            "code": 112,
            "codeName": "WriteConflict",
            "errmsg": errmsg,
            "ok": 0.0,
        },
    )


def _no_such_transaction(message: str) -> OperationFailure:
    """What a replica set answers to a transaction it already aborted (after a conflict)."""
    return OperationFailure(
        message,
        251,
        {
            "errorLabels": ["TransientTransactionError"],
            "code": 251,
            "codeName": "NoSuchTransaction",
            "errmsg": message,
            "ok": 0.0,
        },
    )


def _canonical(value: Any) -> str:
    """One string per BSON value, so keys compare across processes and types."""
    return json_util.dumps(value, json_options=CANONICAL_JSON_OPTIONS, sort_keys=True)


def _equality_fields(query: Mapping[str, Any]) -> dict[str, Any]:
    """The fields an upsert copies from its filter into the new document."""
    fields: dict[str, Any] = {}
    for name, value in query.items():
        if name == "$and":
            for part in value:
                fields.update(_equality_fields(part))
        elif name.startswith("$"):
            continue
        elif isinstance(value, Mapping) and value and all(k.startswith("$") for k in value):
            if "$eq" in value:
                fields[name] = value["$eq"]
        else:
            fields[name] = value
    return fields


_FILTER_PREFIX = "filter:"


def _mongomock_id(value: Any) -> Any:
    """The key mongomock files a document under (a dict ``_id`` becomes its hashdict)."""
    if isinstance(value, dict):
        from mongomock.helpers import hashdict

        return hashdict(value)
    return value


def upsert_key(query: Mapping[str, Any]) -> str:
    """The key of the document an upsert that matched nothing creates: its ``_id``'s key
    when the filter names one (so it conflicts with an insert of that ``_id``), else the
    filter's equality fields (so two upserts of the same new document conflict)."""
    fields = _equality_fields(query)
    if "_id" in fields:
        return _canonical(fields["_id"])
    return _FILTER_PREFIX + _canonical(dict(sorted(fields.items())))


def _is_mongomock(obj: Any) -> bool:
    return type(obj).__module__.startswith("mongomock")


@functools.cache
def _database_types() -> tuple[type, ...]:
    """What a call may return that must come back wrapped (mongomock is optional)."""
    types: list[type] = [pymongo.database.Database]
    with contextlib.suppress(ImportError):
        import mongomock

        types.append(mongomock.Database)
    return tuple(types)


@functools.cache
def _collection_types() -> tuple[type, ...]:
    types: list[type] = [pymongo.collection.Collection]
    with contextlib.suppress(ImportError):
        import mongomock

        types.append(mongomock.Collection)
    return tuple(types)


class _TransactionLock:
    """Transactions one at a time across threads (the thread lock) and processes
    (``flock`` on a file of ``state_dir``), with a timeout instead of a hang."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._thread_lock = threading.Lock()
        self._fd: int | None = None
        self._owner: int | None = None
        _forkable.add(self)

    def fork_locks(self) -> list[threading.Lock]:
        return [self._thread_lock]

    def after_fork_in_child(self) -> None:
        """A child forked while another thread held the turn (a flush inside its
        transaction) has no such thread: the turn is free in the child, and the parent's
        ``flock`` is the parent's (the child opens a file of its own at each turn)."""
        self._fd = self._owner = None

    def acquire(self) -> None:
        if self._owner == threading.get_ident():
            raise RuntimeError(
                "mongo harness: this thread already runs a transaction; a second one "
                "would wait for the first forever (transactions run one at a time)"
            )
        if not self._thread_lock.acquire(timeout=LOCK_TIMEOUT_S):
            raise TimeoutError(f"mongo harness: no transaction turn in {LOCK_TIMEOUT_S}s")
        fd = -1
        try:
            fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o644)
            # Blocking: the kernel wakes a waiting process when the holder unlocks, where
            # polling let a process that takes turns back to back (a flush thread every
            # millisecond) starve the others. No timeout across processes: the test's own
            # bound on its workers catches a hang.
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            self._thread_lock.release()
            raise
        self._fd = fd
        self._owner = threading.get_ident()

    def release(self) -> None:
        fd, self._fd, self._owner = self._fd, None, None
        assert fd is not None, "released a transaction lock that is not held"
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        finally:
            self._thread_lock.release()


#: The harness's objects that hold thread locks (``fork_locks()``). A child forked while
#: another thread held one has no such thread to release it: the locks held at the fork
#: are released in the child. Not replaced by new locks: the library's own at-fork
#: handler (registered first, by its pytest plugin) may already have started a thread
#: that waits on the old one.
_forkable: weakref.WeakSet[Any] = weakref.WeakSet()
_held_at_fork: list[tuple[Any, list[threading.Lock]]] = []


def _before_fork() -> None:
    """Runs in the forking thread, holding the GIL until the fork: no other thread can
    take or release a lock between this look and the fork."""
    _held_at_fork[:] = [
        (holder, held)
        for holder in list(_forkable)
        if (held := [lock for lock in holder.fork_locks() if lock.locked()])
    ]


def _after_fork_in_parent() -> None:
    _held_at_fork.clear()


def _after_fork_in_child() -> None:
    for holder, locks in _held_at_fork:
        for lock in locks:
            lock.release()
        after = getattr(holder, "after_fork_in_child", None)
        if after is not None:  # state besides the lock that the gone thread left
            after()
    _held_at_fork.clear()


os.register_at_fork(
    before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child
)


def _append_line(path: Path, entry: Mapping[str, Any]) -> None:
    """One ``write`` with ``O_APPEND``: lines of concurrent writers do not interleave."""
    data = (json.dumps(entry, sort_keys=True) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _read_lines(path: Path) -> list[dict[str, Any]]:
    """The complete lines of a JSON-lines file (a line being appended is left out)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    complete = data[: data.rfind(b"\n") + 1]
    return [json.loads(line) for line in complete.splitlines()]


@dataclass(frozen=True)
class _Commit:
    txn: int | None  # None: a write made outside a transaction
    pid: int
    writes: frozenset[WriteKey]


class _CommitLog:
    """``commits.jsonl``, the write keys of every commit in commit order, shared by the
    processes; each process parses only what was appended since it last looked (a
    transaction checks it before each write)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._mutex = threading.Lock()
        self._commits: list[_Commit] = []
        self._offset = 0
        _forkable.add(self)

    def fork_locks(self) -> list[threading.Lock]:
        return [self._mutex]

    def append(self, txn: int | None, writes: set[WriteKey]) -> None:
        _append_line(self._path, {"txn": txn, "pid": os.getpid(), "writes": sorted(writes)})

    def since(self, position: int) -> list[_Commit]:
        """The commits after ``position`` (a past :meth:`position`)."""
        with self._mutex:
            self._refresh()
            return self._commits[position:]

    def position(self) -> int:
        """How many commits there are so far: a transaction's begin point."""
        with self._mutex:
            self._refresh()
            return len(self._commits)

    def _refresh(self) -> None:
        try:
            with open(self._path, "rb") as file:
                file.seek(self._offset)
                data = file.read()
        except FileNotFoundError:
            return
        complete = data[: data.rfind(b"\n") + 1]
        self._offset += len(complete)
        for line in complete.splitlines():
            entry = json.loads(line)
            writes = frozenset((db, coll, key) for db, coll, key in entry["writes"])
            self._commits.append(_Commit(entry["txn"], entry["pid"], writes))


class Harness:
    """The shared state of the stand-in: see the module docstring.

    ``state_dir`` holds what processes share: ``txn.lock``, ``commits.jsonl`` (the write
    keys of each committed transaction and of each write outside one, in commit order),
    ``writes.jsonl`` (every process's :class:`WriteRecord`) and ``txn.counter``.
    ``ignore``: collections (matched on the name's end, whatever its prefix) whose writes
    outside transactions are expected.
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        conflict_rate: float = 0.0,
        seed: int = 0,
        ignore: frozenset[str] = frozenset({"heartbeats", "locks"}),
    ) -> None:
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.conflict_rate = conflict_rate
        self.ignore = ignore
        self.records: list[WriteRecord] = []
        self._existing: set[tuple[str, str]] = set()
        self.injected = 0
        self._random = random.Random(seed)
        self._mutex = threading.Lock()
        _forkable.add(self)
        self._lock = _TransactionLock(self.state_dir / "txn.lock")
        self._commits = _CommitLog(self.state_dir / "commits.jsonl")
        self._writes = self.state_dir / "writes.jsonl"
        self._counter = self.state_dir / "txn.counter"

    # -- wrapping ---------------------------------------------------------------------

    def wrap(self, client: Any) -> ClientProxy:
        """``client`` (pymongo or mongomock) with its writes recorded and checked."""
        return ClientProxy(self, client)

    def fork_locks(self) -> list[threading.Lock]:
        return [self._mutex]

    @contextlib.contextmanager
    def patched(self) -> Iterator[Harness]:
        """While active, every ``pymongo.MongoClient(...)`` is wrapped. Whatever
        ``pymongo.MongoClient`` is on entry is what constructs the client, so inside
        ``mongo_server.mongomock_patched()`` a mongomock host gives a wrapped mongomock
        client."""
        original = pymongo.MongoClient
        harness = self

        class _WrappedMongoClient:
            def __new__(cls, *args: Any, **kwargs: Any) -> ClientProxy:  # type: ignore[misc]
                return harness.wrap(original(*args, **kwargs))

        with mock.patch.object(pymongo, "MongoClient", _WrappedMongoClient):
            _current.append(self)
            try:
                yield self
            finally:
                _current.remove(self)

    def env(self) -> dict[str, str]:
        """The environment a worker process needs for :func:`activate_from_env` (the
        conflict rate too, each process seeding its injections by its pid)."""
        return {ENV_VAR: str(self.state_dir), RATE_ENV_VAR: repr(self.conflict_rate)}

    # -- records ----------------------------------------------------------------------

    def all_records(self) -> list[WriteRecord]:
        """Every process's records on this ``state_dir``, in the order written."""
        return [
            WriteRecord(
                collection=line["collection"],
                op=line["op"],
                keys=frozenset(line["keys"]),
                txn=line["txn"],
                pid=line["pid"],
            )
            for line in _read_lines(self._writes)
        ]

    def writes_outside_transactions(
        self, records: Iterable[WriteRecord] | None = None
    ) -> list[WriteRecord]:
        """Writes made outside a transaction to a collection not in ``ignore``."""
        chosen = self.all_records() if records is None else records
        return [
            r
            for r in chosen
            if r.txn is None and not any(r.collection.endswith(name) for name in self.ignore)
        ]

    def write_sets(
        self, records: Iterable[WriteRecord] | None = None
    ) -> dict[int, set[tuple[str, str]]]:
        """Per transaction, the ``(collection, key)`` pairs it wrote."""
        sets: dict[int, set[tuple[str, str]]] = {}
        for r in self.all_records() if records is None else records:
            if r.txn is not None:
                sets.setdefault(r.txn, set()).update((r.collection, k) for k in r.keys)
        return sets

    def clear(self) -> None:
        """Forget the records (of every process) and the injection count. The commit log
        stays: open transactions' begin points are positions in it."""
        with self._mutex:
            self.records.clear()
            self.injected = 0
            self._writes.unlink(missing_ok=True)

    def _record(self, record: WriteRecord) -> None:
        with self._mutex:
            self.records.append(record)
        entry = asdict(record)
        entry["keys"] = sorted(record.keys)
        _append_line(self._writes, entry)

    # -- transactions -----------------------------------------------------------------

    def _begin(self) -> int:
        """Take the transaction turn; the new transaction's harness-wide number."""
        self._lock.acquire()
        try:
            number = int(self._counter.read_text() or 0) + 1 if self._counter.exists() else 1
            self._counter.write_text(str(number))
        except BaseException:
            self._lock.release()
            raise
        return number

    def _end(self, txn: int, writes: set[WriteKey] | None) -> None:
        """Log a committed transaction's writes (None: aborted) and give the turn up."""
        try:
            if writes:
                self._commits.append(txn, writes)
        finally:
            self._lock.release()

    def _check(self, begun_at: int, txn: int, keys: set[WriteKey]) -> None:
        """First writer wins: fail a write to a key committed after ``begun_at``; or
        inject a conflict at the configured rate."""
        for commit in self._commits.since(begun_at):
            clash = keys & commit.writes
            if clash:
                db, coll, key = min(clash)
                writer = "a write outside any transaction"
                if commit.txn is not None:
                    writer = f"transaction {commit.txn}"
                raise write_conflict(
                    f"transaction {txn} writes {db}.{coll} {key}, which {writer} "
                    f"(pid {commit.pid}) committed after it began"
                )
        if self.conflict_rate > 0:
            with self._mutex:
                inject = self._random.random() < self.conflict_rate
                if inject:
                    self.injected += 1
            if inject:
                raise write_conflict(f"injected by the mongo harness in transaction {txn}")


class SessionProxy:
    """A client session whose transactions take the harness's turn and are checked.

    For a pymongo client it drives a real session; for mongomock (no sessions) it keeps a
    copy of each collection the transaction writes, restored on abort.
    """

    def __init__(self, harness: Harness, client: ClientProxy, real: Any) -> None:
        self._harness = harness
        self._client = client
        self._real = real
        self._ended = False
        self._state = "none"  # none | in_progress | committed | aborted
        self._doomed: OperationFailure | None = None
        self._snapshots: dict[int, tuple[Any, Any, dict[Any, Any]]] = {}
        #: The commit-log position the current (or last) transaction began at, set
        #: before it waits for its turn.
        self.begun_at: int | None = None
        #: The harness-wide number of the current (or last) transaction.
        self.txn: int | None = None
        #: What the current transaction wrote, logged when it commits.
        self.writes: set[WriteKey] = set()
        #: ``(database, collection)`` the current transaction wrote.
        self.collections: set[tuple[str, str]] = set()

    @property
    def client(self) -> ClientProxy:
        return self._client

    @property
    def in_transaction(self) -> bool:
        return self._state == "in_progress"

    @property
    def has_ended(self) -> bool:
        return self._ended

    @property
    def real(self) -> Any:
        """The pymongo session (None for mongomock), for calls on the real collection."""
        return self._real

    def start_transaction(self, **kwargs: Any) -> _TransactionContext:
        """Begin point first, then the turn, then the real transaction (pymongo) or an
        empty snapshot set (mongomock). Usable as ``with session.start_transaction():``."""
        if self._ended:
            raise InvalidOperation("Cannot use ended session")
        if self.in_transaction:
            raise InvalidOperation("Transaction already in progress")
        self.begun_at = self._harness._commits.position()
        txn = self._harness._begin()
        try:
            if self._real is not None:
                self._real.start_transaction(**kwargs)
        except BaseException:
            self._harness._end(txn, None)
            raise
        self.txn = txn
        self.writes = set()
        self.collections = set()
        self._snapshots = {}
        self._doomed = None
        self._state = "in_progress"
        return _TransactionContext(self)

    def commit_transaction(self) -> None:
        """Commit, log this transaction's write keys, give the turn up. A transaction
        that hit a conflict cannot commit (the server already aborted it). A commit that
        fails ends the transaction here: unlike pymongo, it cannot be retried."""
        self._require_transaction("commitTransaction")
        assert self.txn is not None
        if self._doomed is not None:
            self._undo()
            self._state = "committed"
            raise _no_such_transaction(
                f"Transaction {self.txn} has been aborted (after: {self._doomed})"
            )
        try:
            if self._real is not None:
                self._real.commit_transaction()
        except BaseException:
            # The driver's session is past commit now (it refuses an abort): only the
            # turn is left to give up.
            self._state = "committed"
            self._harness._end(self.txn, None)
            raise
        self._state = "committed"
        self._harness._end(self.txn, self.writes)

    def abort_transaction(self) -> None:
        """Abort the real transaction, or put the mongomock snapshot back; give the turn up."""
        self._require_transaction("abortTransaction")
        self._undo()
        self._state = "aborted"

    def end_session(self) -> None:
        """Abort a transaction left open, as the server does."""
        if self.in_transaction:
            self.abort_transaction()
        if self._real is not None:
            self._real.end_session()
        self._ended = True

    def with_transaction(self, *args: Any, **kwargs: Any) -> Any:
        """Not provided: the real one would bypass the harness's turn and checks."""
        raise NotImplementedError("mongo harness: use start/commit/abort_transaction")

    def _require_transaction(self, command: str) -> None:
        if self._state == "none":
            raise InvalidOperation("No transaction started")
        if self._state != "in_progress":
            raise InvalidOperation(f"Cannot call {command} after the transaction ended")

    def _undo(self) -> None:
        """Real abort or snapshot restore, then give the turn up, whatever fails."""
        assert self.txn is not None
        try:
            if self._real is not None:
                self._real.abort_transaction()
            for store, prior, saved in self._snapshots.values():
                restored = prior.copy()
                for doc_id, doc in saved.items():
                    if doc is None:
                        restored.pop(doc_id, None)
                    else:
                        restored[doc_id] = doc
                with store._rwlock.writer():
                    store._documents = restored
        finally:
            self._snapshots = {}
            self._harness._end(self.txn, None)

    def _before_write(self, real_collection: Any, keys: set[WriteKey]) -> None:
        """Inside a transaction: conflicts first (nothing is sent if one is raised), then
        the mongomock snapshot of the collection about to change."""
        assert self.begun_at is not None and self.txn is not None
        if self._doomed is not None:
            raise _no_such_transaction(f"Transaction {self.txn} has been aborted")
        try:
            self._harness._check(self.begun_at, self.txn, keys)
        except OperationFailure as exc:
            self._doomed = exc
            raise
        if self._real is None:
            self._save_before(real_collection._store, keys)

    def _save_before(self, store: Any, keys: set[WriteKey]) -> None:
        """mongomock: at a collection's first write in the transaction, its mapping of
        documents (a shallow copy: the documents it holds are shared); before each write,
        a deep copy of each document about to change (mongomock changes them in place),
        or None for one that does not exist yet. An abort puts both back: O(written
        documents), where a deep copy of the collection made each flush O(history)."""
        if id(store) not in self._snapshots:
            self._snapshots[id(store)] = (store, store._documents.copy(), {})
        _, _, saved = self._snapshots[id(store)]
        for _, _, key in keys:
            if key.startswith(_FILTER_PREFIX):
                continue  # a document the write creates: absent from the mapping saved
            doc_id = _mongomock_id(json_util.loads(key))
            if doc_id not in saved:
                current = store._documents.get(doc_id)
                saved[doc_id] = None if current is None else copy.deepcopy(current)

    def __enter__(self) -> SessionProxy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.end_session()

    def __getattr__(self, name: str) -> Any:
        if self._real is None:
            raise AttributeError(f"mongo harness: a mongomock session has no {name!r}")
        return getattr(self._real, name)


class _TransactionContext:
    """``with session.start_transaction():`` commits on success, aborts on an error."""

    def __init__(self, session: SessionProxy) -> None:
        self._session = session

    def __enter__(self) -> _TransactionContext:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        if self._session.in_transaction:
            if exc_type is None:
                self._session.commit_transaction()
            else:
                self._session.abort_transaction()


class _Proxy:
    """Passes attributes through, unwrapping harness proxies in arguments (sessions to
    the real one, or away for mongomock) and wrapping databases and collections returned."""

    def __init__(self, harness: Harness, client: ClientProxy | None, target: Any) -> None:
        self._harness = harness
        self._client_proxy = client
        self._target = target
        self._mongomock = _is_mongomock(target)

    def _unwrap_args(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any], SessionProxy | None]:
        session = kwargs.pop("session", None)
        proxy = session if isinstance(session, SessionProxy) else None
        real_session = proxy.real if proxy is not None else session
        if real_session is not None and not self._mongomock:
            kwargs["session"] = real_session
        if self._mongomock:
            # An index build's vote among members: the replica set mongomock now plays
            # has none, and its createIndexes does not take the option.
            kwargs.pop("commitQuorum", None)
        args = tuple(a._target if isinstance(a, _Proxy) else a for a in args)
        return args, kwargs, proxy

    def _wrap_result(self, result: Any) -> Any:
        client = self._client_proxy
        assert client is not None
        if isinstance(result, _collection_types()):
            return CollectionProxy(self._harness, client, result)
        if isinstance(result, _database_types()):
            return DatabaseProxy(self._harness, client, result)
        return result

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        if not callable(value) or isinstance(value, type):
            return self._wrap_result(value)

        def call(*args: Any, **kwargs: Any) -> Any:
            args, kwargs, _ = self._unwrap_args(args, kwargs)
            return self._wrap_result(value(*args, **kwargs))

        return call

    def __eq__(self, other: object) -> bool:
        """As the wrapped objects compare (pymongo's databases and collections by name)."""
        return isinstance(other, _Proxy) and self._target == other._target

    def __hash__(self) -> int:
        return hash(self._target)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._target!r})"


class ClientProxy(_Proxy):
    """A wrapped ``MongoClient``: databases and sessions come back wrapped."""

    def __init__(self, harness: Harness, client: Any) -> None:
        super().__init__(harness, self, client)

    def __getitem__(self, name: str) -> DatabaseProxy:
        return DatabaseProxy(self._harness, self, self._target[name])

    def get_database(self, *args: Any, **kwargs: Any) -> DatabaseProxy:
        return DatabaseProxy(self._harness, self, self._target.get_database(*args, **kwargs))

    def get_default_database(self, *args: Any, **kwargs: Any) -> DatabaseProxy:
        database = self._target.get_default_database(*args, **kwargs)
        return DatabaseProxy(self._harness, self, database)

    def start_session(self, **kwargs: Any) -> SessionProxy:
        """A harness session: mongomock gets one of the harness's own."""
        real = None if self._mongomock else self._target.start_session(**kwargs)
        return SessionProxy(self._harness, self, real)

    def __enter__(self) -> ClientProxy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._target.close()


class DatabaseProxy(_Proxy):
    """A wrapped database: collections come back wrapped, ``client`` is the proxy."""

    @property
    def client(self) -> ClientProxy:
        assert self._client_proxy is not None
        return self._client_proxy

    def __getitem__(self, name: str) -> CollectionProxy:
        return self.get_collection(name)

    def get_collection(self, name: str, *args: Any, **kwargs: Any) -> CollectionProxy:
        collection = self._target.get_collection(name, *args, **kwargs)
        return CollectionProxy(self._harness, self.client, collection)

    def command(self, command: Any, *args: Any, **kwargs: Any) -> Any:
        """As the real one; mongomock's ``hello`` answers as a replica set member would,
        since the store needs one for transactions."""
        args, kwargs, _ = self._unwrap_args(args, kwargs)
        answer = self._target.command(command, *args, **kwargs)
        name = command if isinstance(command, str) else next(iter(command))
        if self._mongomock and name == "hello":
            answer = {**answer, "setName": "harness", "logicalSessionTimeoutMinutes": 30}
        return answer


def _bind(method: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The named arguments of a pymongo ``Collection`` method call (mongomock's methods
    take the same leading arguments)."""
    signature = inspect.signature(getattr(pymongo.collection.Collection, method))
    bound = signature.bind_partial(None, *args, **kwargs)
    return dict(bound.arguments)


@dataclass
class _Target:
    """What one write touches: inserted ``_id`` keys, or a filter (one or many matches)."""

    keys: list[str]
    query: Mapping[str, Any] | None = None
    single: bool = False
    sort: Any = None
    upsert: bool = False


def _insert_key(document: Any) -> list[str]:
    """The inserted document's key; an ``_id`` is assigned first, as pymongo does."""
    if isinstance(document, MutableMapping) and "_id" not in document:
        document["_id"] = ObjectId()
    return [_canonical(document["_id"])] if "_id" in document else []


def _bulk_target(request: Any) -> _Target:
    if isinstance(request, InsertOne):
        return _Target(_insert_key(request._doc))
    if isinstance(request, UpdateOne | ReplaceOne | UpdateMany):
        return _Target(
            [],
            request._filter,
            single=not isinstance(request, UpdateMany),
            sort=getattr(request, "_sort", None),
            upsert=bool(request._upsert),
        )
    if isinstance(request, DeleteOne | DeleteMany):
        return _Target([], request._filter, single=isinstance(request, DeleteOne))
    raise TypeError(f"mongo harness: unknown bulk write request {request!r}")


class CollectionProxy(_Proxy):
    """A wrapped collection: data writes are recorded and, inside a transaction,
    checked for conflicts before they are sent; everything else passes through."""

    @property
    def database(self) -> DatabaseProxy:
        assert self._client_proxy is not None
        return DatabaseProxy(self._harness, self._client_proxy, self._target.database)

    def insert_one(self, document: Any, *args: Any, **kwargs: Any) -> Any:
        return self._write("insert_one", [_Target(_insert_key(document))], args, kwargs, document)

    def insert_many(self, documents: Iterable[Any], *args: Any, **kwargs: Any) -> Any:
        documents = list(documents)
        targets = [_Target(_insert_key(d)) for d in documents]
        return self._write("insert_many", targets, args, kwargs, documents)

    def update_one(self, *args: Any, **kwargs: Any) -> Any:
        return self._filtered("update_one", args, kwargs, single=True)

    def update_many(self, *args: Any, **kwargs: Any) -> Any:
        return self._filtered("update_many", args, kwargs, single=False)

    def replace_one(self, *args: Any, **kwargs: Any) -> Any:
        return self._filtered("replace_one", args, kwargs, single=True)

    def delete_one(self, *args: Any, **kwargs: Any) -> Any:
        return self._filtered("delete_one", args, kwargs, single=True)

    def delete_many(self, *args: Any, **kwargs: Any) -> Any:
        return self._filtered("delete_many", args, kwargs, single=False)

    def find_one_and_update(self, *args: Any, **kwargs: Any) -> Any:
        return self._filtered("find_one_and_update", args, kwargs, single=True)

    def find_one_and_replace(self, *args: Any, **kwargs: Any) -> Any:
        return self._filtered("find_one_and_replace", args, kwargs, single=True)

    def find_one_and_delete(self, *args: Any, **kwargs: Any) -> Any:
        return self._filtered("find_one_and_delete", args, kwargs, single=True)

    def bulk_write(self, requests: Iterable[Any], *args: Any, **kwargs: Any) -> Any:
        requests = list(requests)
        targets = [_bulk_target(r) for r in requests]
        return self._write("bulk_write", targets, args, kwargs, requests)

    def _filtered(
        self, op: str, args: tuple[Any, ...], kwargs: dict[str, Any], *, single: bool
    ) -> Any:
        named = _bind(op, args, {k: v for k, v in kwargs.items() if k != "session"})
        target = _Target(
            [],
            named["filter"],
            single=single,
            sort=named.get("sort"),
            upsert=bool(named.get("upsert", False)),
        )
        return self._write(op, [target], args, kwargs, None)

    def _write(
        self,
        op: str,
        targets: list[_Target],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        first: Any,
    ) -> Any:
        """Keys, conflict check (in a transaction), the write, then its record.
        ``first``: the (materialised) first argument, or None to pass ``args`` as given."""
        args, kwargs, session = self._unwrap_args(args, kwargs)
        real_session = kwargs.get("session")
        txn = session.txn if session is not None and session.in_transaction else None
        database, name = self._target.database.name, self._target.name
        exists = self._exists(session, (database, name))
        keys: set[str] = set()
        new_upserts: list[_Target] = []
        for target in targets:
            keys.update(target.keys)
            if target.query is None:
                continue
            matched = self._matching(target, real_session) if exists else []
            keys.update(matched)
            if not matched and target.upsert:
                keys.add(upsert_key(target.query))
                new_upserts.append(target)
        if txn is not None:
            assert session is not None
            session._before_write(self._target, {(database, name, k) for k in keys})
        call_args = args if first is None else (first, *args)
        try:
            result = getattr(self._target, op)(*call_args, **kwargs)
            if new_upserts:
                keys.update(self._upserted(result, new_upserts, real_session))
        finally:
            written = {(database, name, k) for k in keys}
            if session is not None and txn is not None:
                session.writes.update(written)
                session.collections.add((database, name))
            self._harness._record(WriteRecord(name, op, frozenset(keys), txn, os.getpid()))
        if txn is None and written:  # a write outside a transaction commits at once
            self._harness._commits.append(None, written)
        return result

    def _exists(self, session: SessionProxy | None, collection: tuple[str, str]) -> bool:
        """Whether the collection can hold a document the write matches. nx-27017 loses a
        transaction whose first command reads a collection that does not exist (its
        commit fails: "No session specified"), so the harness's own read before a write
        must not be that command. Asked outside the session (``listCollections`` is not
        allowed in a transaction) unless this transaction wrote the collection already;
        a collection once seen is remembered."""
        if collection in self._harness._existing:
            return True
        if session is not None and session.in_transaction and collection in session.collections:
            return True
        if collection[1] in self._target.database.list_collection_names():
            self._harness._existing.add(collection)
            return True
        return False

    def _matching(self, target: _Target, real_session: Any) -> list[str]:
        """The ``_id`` keys of the documents the write's filter matches now."""
        assert target.query is not None
        options: dict[str, Any] = {}
        if real_session is not None:
            options["session"] = real_session
        if target.single:
            options["limit"] = 1
            if target.sort:
                options["sort"] = target.sort
        cursor = self._target.find(target.query, {"_id": 1}, **options)
        return [_canonical(doc["_id"]) for doc in cursor]

    def _upserted(self, result: Any, targets: list[_Target], real_session: Any) -> list[str]:
        """The new documents' ``_id`` keys, so a later write to one by ``_id`` conflicts."""
        upserted_ids = getattr(result, "upserted_ids", None)
        if upserted_ids:
            return [_canonical(i) for i in upserted_ids.values()]
        upserted_id = getattr(result, "upserted_id", None)
        if upserted_id is not None:
            return [_canonical(upserted_id)]
        if isinstance(result, Mapping) or result is None:  # find_one_and_*: look it up
            found: list[str] = []
            for target in targets:
                found.extend(self._matching(target, real_session))
            return found
        return []


_active: list[contextlib.AbstractContextManager[Harness]] = []
_current: list[Harness] = []


def current() -> Harness | None:
    """The harness whose :meth:`Harness.patched` is innermost now, if any: a stand-in
    patched in later (mongomock's) wraps its clients with it too."""
    return _current[-1] if _current else None


def activate_from_env() -> Harness | None:
    """In a worker process: if ``GSO_MONGO_HARNESS`` names a directory, wrap every
    ``pymongo.MongoClient`` for the rest of the process with a harness on it."""
    state_dir = os.environ.get(ENV_VAR)
    if not state_dir or not Path(state_dir).is_dir():
        return None
    rate = float(os.environ.get(RATE_ENV_VAR) or 0.0)
    patch = Harness(Path(state_dir), conflict_rate=rate, seed=os.getpid()).patched()
    harness = patch.__enter__()
    _active.append(patch)  # kept referenced: a collected generator would undo the patch
    return harness
