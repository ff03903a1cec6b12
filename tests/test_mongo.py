"""What only the MongoDB store has: indexes, the TTL index, operator safety, connection
errors, round trips, exactly-once under injected failures, several OS processes and the
CLI over the wire, and the pieces of the standalone protocol (the session lock).

The store-contract suite runs on Mongo too (``mongo`` and ``mongomock`` parameters in
conftest, and at the end of this module once more with transactions on, as on a
replica set); this module holds what the contract cannot express. Most
tests run against ``nx-27017`` (a wire-protocol server, see tests/mongo_server.py) and
mongomock; where nx-27017 departs from MongoDB's documented behaviour the test is
marked ``xfail(strict=True)`` for that server with the reason.

Run as a script (``python tests/test_mongo.py IGNORED SCRIPT``) it is the worker of the
multi-process test: ``tests/procs.py`` on the store named by ``GSO_TEST_STORE_URL``.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import mongo_server
import pytest

from gso_analytics import (
    Analytics,
    ConfigurationError,
    FlushBatch,
    InvalidTypeError,
    StoreError,
    ValidationError,
    conflicts,
    open_store,
)
from gso_analytics.clock import to_ms
from gso_analytics.model import EventRecord
from gso_analytics.store import store_class

STORE_URL_ENV = "GSO_TEST_STORE_URL"

if __name__ == "__main__":  # the multi-process worker: procs.py on a Mongo store
    import mongo_harness
    import procs

    mongo_harness.activate_from_env()  # the parent's harness, shared through its files

    procs.open_store = lambda _sqlite_url, **options: open_store(
        os.environ[STORE_URL_ENV], **options
    )
    procs.main()
    sys.exit(0)

pymongo = pytest.importorskip("pymongo")
import bson  # noqa: E402
import mongo_harness as mongo_harness_module  # noqa: E402
from gso_analytics.backends import mongo as mongo_backend  # noqa: E402
from gso_analytics.backends.mongo import MongoStore  # noqa: E402
from gso_analytics.backends.mongo import batch as mongo_batch  # noqa: E402
from gso_analytics.backends.mongo import connection as mongo_connection  # noqa: E402
from gso_analytics.backends.mongo import erase as mongo_erase  # noqa: E402
from gso_analytics.backends.mongo import indexes as mongo_indexes  # noqa: E402
from gso_analytics.backends.mongo import rollup as mongo_rollup  # noqa: E402
from gso_analytics.backends.mongo import store as mongo_store_module  # noqa: E402
from gso_analytics.backends.mongo.options import MAX_COMMIT_TIME_MS, WRITE_TIMEOUT_MS  # noqa: E402
from mongo_harness import Harness  # noqa: E402
from pymongo import monitoring  # noqa: E402
from pymongo.mongo_client import MongoClient as RealMongoClient  # noqa: E402

NOW = datetime.now(UTC).replace(microsecond=0)
NOW_0 = datetime(1970, 1, 1, tzinfo=UTC)

# -- fixtures: one parameter per server ----------------------------------------------------


@contextlib.contextmanager
def _server(kind: str) -> Iterator[str]:
    """``kind`` ready for the test: nx-27017 started, mongomock's patch active, or the
    ``MONGODB_URI`` server set (skipped otherwise)."""
    if kind == "mongomock":
        with mongo_server.mongomock_patched():
            yield kind
    elif kind == "mongodb-uri":
        if mongo_server.real_mongodb_uri() is None:
            pytest.skip("MONGODB_URI is not set")
        yield kind
    else:
        mongo_server.nx_server()
        yield kind


@pytest.fixture(params=["nx-27017", "mongomock"])
def mongo_kind(request: pytest.FixtureRequest) -> Iterator[str]:
    """The server kind; with mongomock, its patch is active for the test."""
    with _server(request.param) as kind:
        yield kind


@pytest.fixture(params=["nx-27017", "mongomock", "mongodb-uri"])
def ttl_kind(request: pytest.FixtureRequest) -> Iterator[str]:
    """The TTL tests' servers: the stand-ins, and a real MongoDB when ``MONGODB_URI`` is
    set, whose TTL index is real (the contract suite turns it off there)."""
    with _server(request.param) as kind:
        yield kind


@pytest.fixture
def ttl_url(ttl_kind: str) -> str:
    """A fresh database on ``ttl_kind``, with the TTL index on."""
    if ttl_kind == "mongodb-uri":
        return mongo_server.real_mongodb_url(ttl_index=True)
    return url_for(ttl_kind)


def url_for(server: str, query: str = "") -> str:
    """A fresh database on ``server``."""
    if server == "mongomock":
        return mongo_server.mongomock_url(query)
    return mongo_server.nx_server().url(query=query)


@pytest.fixture
def mongo_url(mongo_kind: str) -> str:
    return url_for(mongo_kind)


@pytest.fixture
def mongo_store(mongo_url: str) -> Iterator[MongoStore]:
    with open_store(mongo_url) as opened:
        assert isinstance(opened, MongoStore)
        yield opened


@contextlib.contextmanager
def raw_database(url: str) -> Iterator[Any]:
    """The database ``url`` names, through a client of its own (as a DBA would)."""
    client = pymongo.MongoClient(url.split("?")[0], serverSelectionTimeoutMS=2000)
    try:
        yield client.get_default_database()
    finally:
        client.close()


def raw(store: MongoStore, name: str) -> Any:
    """The raw collection (for assertions on documents and indexes)."""
    return store._collection(name)


def driver_type(collection: Any) -> type:
    """The driver's (or mongomock's) collection class behind the harness's proxy."""
    return type(getattr(collection, "_target", collection))


def index_keys(store: MongoStore, name: str) -> dict[tuple[tuple[str, Any], ...], dict]:
    return {
        tuple(dict(spec["key"]).items()): dict(spec) for spec in raw(store, name).list_indexes()
    }


# -- opening ----------------------------------------------------------------------------


def test_schemes_map_to_the_mongo_store() -> None:
    assert store_class("mongodb") is MongoStore
    assert store_class("mongodb+srv") is MongoStore
    # An SRV name that does not resolve is a configuration error naming it, at once.
    with pytest.raises(ConfigurationError, match=r"cluster0\.gso-test\.invalid"):
        open_store("mongodb+srv://app:secret@cluster0.gso-test.invalid/gso")


def test_missing_pymongo_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pymongo", None)  # import pymongo -> ImportError
    with pytest.raises(ConfigurationError, match=r"pip install 'gso-analytics\[mongo\]'"):
        open_store("mongodb://127.0.0.1:1/db")


def test_unreachable_server_fails_fast_naming_host_and_timeout() -> None:
    port = mongo_server._free_port()  # nothing listens there
    started = time.monotonic()
    with pytest.raises(StoreError) as caught:
        open_store(f"mongodb://user:secret@127.0.0.1:{port}/gso?serverSelectionTimeoutMS=300")
    elapsed = time.monotonic() - started
    message = str(caught.value)
    assert f"127.0.0.1:{port}" in message
    assert "serverSelectionTimeoutMS=300" in message
    assert "unreachable" in message
    assert "secret" not in message  # never the password
    assert elapsed < 5, elapsed


def test_default_server_selection_timeout_is_short(nx_27017: mongo_server.NxServer) -> None:
    """Without the option a lost server is an error after 5 s, not pymongo's 30 s; with
    it, the URL's value wins."""
    with open_store(nx_27017.url()) as store:
        assert store._client().options.server_selection_timeout == 5.0
        assert "serverSelectionTimeoutMS=5000" in store.where
        assert store._client().options.retry_writes
    with open_store(nx_27017.url(query="serverSelectionTimeoutMS=1500")) as store:
        assert store._client().options.server_selection_timeout == 1.5


@pytest.mark.parametrize(
    "query",
    [
        "retryWrites=false&appname=my-game&serverSelectionTimeoutMS=1500",
        "retrywrites=false&appName=my-game&serverselectiontimeoutms=1500",  # any case
    ],
)
def test_url_options_win_over_the_stores_defaults(
    nx_27017: mongo_server.NxServer, query: str
) -> None:
    """The store's client defaults (retryable writes, its appname, a 5 s server
    selection timeout) are only defaults: an option in the URL is what the client gets."""
    with open_store(nx_27017.url(query=query)) as store:
        options = store._client().options
        assert options.retry_writes is False
        assert options.pool_options.metadata["application"] == {"name": "my-game"}
        assert options.server_selection_timeout == 1.5
        assert "serverSelectionTimeoutMS=1500" in store.where


def test_keyword_client_options_win_too(nx_27017: mongo_server.NxServer) -> None:
    """A keyword argument for MongoClient overrides the store's default (and, as pymongo
    does, the URL)."""
    with MongoStore.from_url(nx_27017.url(), retryWrites=False, appname="kw-game") as store:
        options = store._client().options
        assert options.retry_writes is False
        assert options.pool_options.metadata["application"] == {"name": "kw-game"}
    with open_store(nx_27017.url()) as store:  # and without either, the defaults
        options = store._client().options
        assert options.retry_writes is True
        assert options.pool_options.metadata["application"] == {"name": "gso-analytics"}


class _RefusingDatabase:
    """A database whose server refuses the credentials (nx-27017 has no auth to test)."""

    name = "gso"
    client = None

    def command(self, name: str, *args: Any, **kwargs: Any) -> Any:
        raise pymongo.errors.OperationFailure("Authentication failed.", code=18)


def test_auth_failure_says_what_to_check() -> None:
    with pytest.raises(StoreError, match="rejected the credentials") as caught:
        MongoStore(_RefusingDatabase(), where="mongodb://db.example:27017/gso")
    assert "authSource" in str(caught.value)
    assert "db.example:27017" in str(caught.value)


def test_unacknowledged_writes_are_refused(nx_27017: mongo_server.NxServer) -> None:
    with pytest.raises(ConfigurationError, match="w=0"):
        open_store(nx_27017.url(query="w=0"))


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("transactions=maybe", "transactions must be true or false"),
        ("ttlIndex=perhaps", "ttlIndex must be true or false"),
        ("prefix=bad$name", "collection prefix"),
    ],
)
def test_bad_url_options(nx_27017: mongo_server.NxServer, query: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        open_store(nx_27017.url(query=query))


def test_prefix_names_the_collections(nx_27017: mongo_server.NxServer) -> None:
    url = nx_27017.url(query="prefix=game1_&appname=my-game")  # pymongo options pass through
    with open_store(url) as store:
        analytics = Analytics(store)
        analytics.track("dungeon.complete", "u1")
        analytics.flush()
        names = set(store._db().list_collection_names())
    assert {"game1_daily", "game1_events"} <= names
    assert not any(name.startswith("gso_analytics_") for name in names)


def test_open_from_the_applications_client(nx_27017: mongo_server.NxServer) -> None:
    """An app's own MongoClient is used as it is, and not closed with the store."""
    client = pymongo.MongoClient(f"mongodb://{nx_27017.address}/", serverSelectionTimeoutMS=2000)
    try:
        name = mongo_server.fresh_db_name()
        with MongoStore.from_client(client, name, transactions=True) as store:
            analytics = Analytics(store)
            analytics.track("credits.earn", "u1", {"amount": 5})
            analytics.flush()
        assert client[name]["gso_analytics_daily"].find_one()["creditsEarned"] == 5
        with MongoStore(client[name], transactions=True) as again:
            assert again.recent_days()[0]["creditsEarned"] == 5
    finally:
        client.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_uses_a_client_of_its_own(nx_27017: mongo_server.NxServer) -> None:
    """A client is not fork-safe: after ``fork()`` (gunicorn --preload) the child's first
    use of the store opens a new one; the parent keeps its own."""
    with open_store(nx_27017.url(query="ttlIndex=false")) as store:
        parent_db = store._db()
        analytics = Analytics(store)
        analytics.track("credits.earn", "parent", {"amount": 1})
        analytics.flush()
        pid = os.fork()
        if pid == 0:  # the child: report through the exit code only
            code = 1
            try:
                child = Analytics(store)
                child.track("credits.earn", "child", {"amount": 2})
                child.flush()
                code = 0 if store._db() is not parent_db else 2
            finally:
                os._exit(code)
        deadline = time.monotonic() + 60
        while (waited := os.waitpid(pid, os.WNOHANG)) == (0, 0):
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                pytest.fail("the forked child hung")
            time.sleep(0.01)
        assert os.waitstatus_to_exitcode(waited[1]) == 0
        assert store._db() is parent_db
        assert store.recent_days()[0]["creditsEarned"] == 3


# -- indexes and the TTL ------------------------------------------------------------------


EXPECTED_INDEXES = {
    "daily": [((("day", 1),), True), ((("month", 1),), False)],
    "monthly": [((("month", 1),), True)],
    "day_users": [((("userId", 1), ("day", 1)), True), ((("day", 1), ("userId", 1)), False)],
    "month_users": [((("userId", 1), ("month", 1)), True)],
    "new_users": [((("userId", 1),), True)],
    "user_revenue": [((("userId", 1), ("day", 1)), True), ((("day", 1), ("userId", 1)), False)],
    "sessions": [
        ((("userId", 1), ("loginAt", 1)), False),
        ((("userId", 1), ("lastAt", 1)), False),
        ((("open", 1), ("lastAt", 1)), False),
        ((("open", 1), ("userId", 1)), False),
    ],
    "logouts": [((("userId", 1), ("at", 1)), False), ((("at", 1),), False)],
    "activity": [((("userId", 1), ("lastAt", 1)), False), ((("lastAt", 1),), False)],
    "events": [((("ts", 1),), False), ((("userId", 1), ("ts", 1)), False)],
    "batches": [((("appliedAt", 1),), False), ((("folded", 1), ("appliedAt", 1)), False)],
}


def test_indexes_are_created_once_and_found_by_key(mongo_url: str) -> None:
    """Every query's index exists (unique where counting depends on it); reopening
    creates nothing twice, whatever the server named them."""
    with open_store(mongo_url) as store:
        first = {name: index_keys(store, name) for name in EXPECTED_INDEXES}
    for name, wanted in EXPECTED_INDEXES.items():
        for key, unique in wanted:
            assert key in first[name], (name, key, list(first[name]))
            if unique:
                assert first[name][key].get("unique"), (name, key)
    with open_store(mongo_url) as store:
        again = {name: index_keys(store, name) for name in EXPECTED_INDEXES}
    assert {n: sorted(k) for n, k in again.items()} == {n: sorted(k) for n, k in first.items()}


def test_an_index_under_another_name_is_reused(mongo_url: str) -> None:
    """A DBA's index with our key but their name is ours: no second index, no error."""
    with raw_database(mongo_url) as database:
        database["gso_analytics_daily"].create_index(
            [("day", 1)], unique=True, name="dba_named_day"
        )
    with open_store(mongo_url) as store:
        keys = [tuple(dict(s["key"]).items()) for s in raw(store, "daily").list_indexes()]
    assert keys.count((("day", 1),)) == 1


def test_a_non_unique_key_index_is_an_error(mongo_url: str) -> None:
    """Exact dau needs the (user, day) index unique: say so instead of counting wrong."""
    with raw_database(mongo_url) as database:
        database["gso_analytics_day_users"].create_index([("userId", 1), ("day", 1)])
    with pytest.raises(StoreError, match="without unique"):
        open_store(mongo_url)


def _index_names(url: str, collection: str) -> dict[tuple[tuple[str, Any], ...], str]:
    with raw_database(url) as database:
        specs = database[f"gso_analytics_{collection}"].list_indexes()
        return {tuple(dict(spec["key"]).items()): spec["name"] for spec in specs}


def _drop_index(url: str, collection: str, key: tuple[tuple[str, Any], ...]) -> None:
    """Drop by key (the servers name indexes differently), as a DBA would."""
    name = _index_names(url, collection)[key]
    with raw_database(url) as database:
        database[f"gso_analytics_{collection}"].drop_index(name)


EVENTS_BY_USER = (("userId", 1), ("ts", 1))


def _works(store: MongoStore) -> None:
    """A flush with a login and an event goes through and counts."""
    before = store.recent_days()[0]["creditsEarned"] if store.recent_days() else 0
    analytics = Analytics(store, forwarders=[])
    analytics.on_login("u1")
    analytics.track("credits.earn", "u1", {"amount": 2})
    analytics.flush()
    assert store.recent_days()[0]["creditsEarned"] == before + 2


def test_stores_opened_at_once_build_each_index_once(mongo_kind: str, mongo_url: str) -> None:
    """Workers starting together on a new database: one of them builds the indexes
    under the lease, the others wait for the unique ones it builds first (counting
    needs them) and build nothing; every index exists exactly once."""
    workers = 4
    listeners = [_Commands() for _ in range(workers)]
    barrier = threading.Barrier(workers)

    def open_one(i: int) -> MongoStore:
        options = {"event_listeners": [listeners[i]]} if mongo_kind == "nx-27017" else {}
        barrier.wait()
        return MongoStore.from_url(mongo_url, **options)

    with ThreadPoolExecutor(workers) as pool:
        stores = list(pool.map(open_one, range(workers)))
    try:
        for name, wanted in EXPECTED_INDEXES.items():
            keys = [tuple(dict(s["key"]).items()) for s in raw(stores[0], name).list_indexes()]
            assert len(keys) == len(set(keys)), (name, keys)
            assert {key for key, _ in wanted} <= set(keys), (name, keys)
        _works(stores[-1])
    finally:
        for store in stores:
            store.close()
    if mongo_kind == "nx-27017":
        builders = [i for i, lst in enumerate(listeners) if "createIndexes" in lst.names]
        assert len(builders) == 1, builders


def test_a_store_that_finds_the_lease_taken_warns_and_carries_on(
    mongo_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An index added by an upgrade, on a large collection: while one process builds
    it, the others open at once, warn naming it, and work without it."""
    with open_store(mongo_url) as builder:
        _drop_index(mongo_url, "events", EVENTS_BY_USER)
        token = builder._take_index_lease()  # another process is building it
        assert token is not None
        assert builder._take_index_lease() is None  # one holder at a time
        with caplog.at_level("WARNING", logger="gso_analytics"), open_store(mongo_url) as store:
            _works(store)
        assert "gso_analytics_events {userId: 1, ts: 1}" in caplog.text
        assert "another process is creating them" in caplog.text
        assert EVENTS_BY_USER not in _index_names(mongo_url, "events")
        builder._release_index_lease(token)
    with open_store(mongo_url):  # the lease is free: this process builds it
        assert EVENTS_BY_USER in _index_names(mongo_url, "events")


def test_a_missing_unique_index_is_waited_for_never_skipped(
    mongo_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Exact dau needs the unique (user, day) index: a process that cannot build it
    (another holds the lease) waits up to ``UNIQUE_INDEX_WAIT`` for it, then fails
    clearly; once the lease is free, it builds the indexes itself."""
    lease_filter = {"_id": "indexes"}
    with raw_database(mongo_url) as database:
        database["gso_analytics_locks"].insert_one(
            {**lease_filter, "owner": "other", "until": datetime.now(UTC) + timedelta(hours=1)}
        )
    started = time.monotonic()
    monkeypatch.setattr(mongo_indexes, "UNIQUE_INDEX_WAIT", timedelta(seconds=0.3))
    with pytest.raises(StoreError, match=r"unique indexes .* still missing after 0\.3 s"):
        MongoStore.from_url(mongo_url)
    assert 0.25 < time.monotonic() - started < 5
    monkeypatch.setattr(mongo_indexes, "UNIQUE_INDEX_WAIT", timedelta(seconds=20))

    def release() -> None:
        time.sleep(0.3)
        with raw_database(mongo_url) as database:
            database["gso_analytics_locks"].update_one(lease_filter, {"$set": {"until": NOW_0}})

    releaser = threading.Thread(target=release)
    releaser.start()
    try:
        with MongoStore.from_url(mongo_url) as store:
            assert (("userId", 1), ("day", 1)) in index_keys(store, "day_users")
            _works(store)
    finally:
        releaser.join()


def test_create_indexes_false_never_builds_and_mongo_init_does(
    mongo_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """``createIndexes=false`` for deployments that build indexes in a deploy step: a
    missing index is a warning naming it and mongo-init (a missing unique one an error,
    the store cannot count without it); ``mongo_init`` creates exactly what is missing."""
    no_builds = mongo_server.with_query(mongo_url, "createIndexes=false")
    with pytest.raises(StoreError, match=r"unique indexes .*missing.*mongo-init"):
        open_store(no_builds)
    assert (("userId", 1), ("day", 1)) not in _index_names(mongo_url, "day_users")
    created = mongo_backend.mongo_init(mongo_url, event_ttl=timedelta(hours=3))
    assert "gso_analytics_day_users {userId: 1, day: 1} unique" in created
    assert "gso_analytics_events {ts: 1} TTL" in created
    assert "gso_analytics_events {userId: 1, ts: 1}" in created
    assert mongo_backend.mongo_init(mongo_url) == []  # again: nothing to create
    _drop_index(mongo_url, "events", EVENTS_BY_USER)
    for opened in (
        lambda: open_store(no_builds),
        lambda: MongoStore.from_url(mongo_url, create_indexes=False),
    ):
        caplog.clear()
        with caplog.at_level("WARNING", logger="gso_analytics"), opened() as store:
            assert store.event_ttl_index()["expireAfterSeconds"] == 3 * 3600
            _works(store)
        assert "gso_analytics_events {userId: 1, ts: 1}" in caplog.text
        assert "gso-analytics mongo-init" in caplog.text
        assert EVENTS_BY_USER not in _index_names(mongo_url, "events")
    assert mongo_backend.mongo_init(mongo_url) == ["gso_analytics_events {userId: 1, ts: 1}"]
    assert EVENTS_BY_USER in _index_names(mongo_url, "events")


def test_create_indexes_must_be_a_boolean_in_the_url(nx_27017: mongo_server.NxServer) -> None:
    with pytest.raises(ConfigurationError, match="createIndexes must be true or false"):
        open_store(nx_27017.url(query="createIndexes=later"))


def test_indexes_are_built_with_a_majority_commit_quorum_on_a_replica_set(
    nx_27017: mongo_server.NxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``commitQuorum: "majority"`` where members vote (a standalone refuses it, and
    nx-27017 is one: the replica set is simulated by the detection), unique indexes in
    the first commands."""
    replica = {"setName": "rs0", "maxWireVersion": 21, "logicalSessionTimeoutMinutes": 30}
    assert mongo_indexes._commit_quorum_possible(replica)
    assert mongo_indexes._commit_quorum_possible({"msg": "isdbgrid", "maxWireVersion": 9})
    assert not mongo_indexes._commit_quorum_possible({**replica, "maxWireVersion": 8})  # 4.2
    assert not mongo_indexes._commit_quorum_possible({"maxWireVersion": 21})  # standalone
    for quorum in (False, True):
        monkeypatch.setattr(
            mongo_store_module, "_commit_quorum_possible", lambda hello, q=quorum: q
        )
        listener = _Commands()
        MongoStore.from_url(nx_27017.url(), event_listeners=[listener]).close()
        creates = [c for c in listener.sent if "createIndexes" in c]
        assert creates
        expected = "majority" if quorum else None
        assert [c.get("commitQuorum") for c in creates] == [expected] * len(creates)
        uniques = [all(i.get("unique") for i in c["indexes"]) for c in creates]
        assert uniques == sorted(uniques, reverse=True), uniques  # unique ones first


def test_mongo_init_cli(
    nx_27017: mongo_server.NxServer, capsys: pytest.CaptureFixture[str]
) -> None:
    from gso_analytics.cli import main

    url = nx_27017.url()
    assert main(["mongo-init", "--store", url, "--event-ttl-days", "2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Created ")
    assert "gso_analytics_day_users {userId: 1, day: 1} unique" in out
    assert main(["mongo-init", "--store", url]) == 0
    assert "nothing to create" in capsys.readouterr().out
    with open_store(mongo_server.with_query(url, "createIndexes=false")) as store:
        assert store.event_ttl_index()["expireAfterSeconds"] == 2 * 86400
    for argv, message in [
        (["--store", "sqlite:///x.db"], "mongo-init prepares MongoDB stores"),
        (["--store", url, "--event-ttl-days", "100000"], "at most 2147483647 seconds"),
        (["--store", url, "--event-ttl-days", "1e12"], "too long"),
    ]:
        assert main(["mongo-init", *argv]) == 2
        assert message in capsys.readouterr().err


def test_ttl_index_follows_event_ttl_with_collmod(
    ttl_url: str, ttl_kind: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The TTL index gets ``event_ttl``; a new TTL is applied in place (``collMod``), the
    index is never dropped and rebuilt. MongoDB answers the ``collMod`` with the old and
    new values, which the real server's run checks too."""
    if ttl_kind == "nx-27017":
        request.applymarker(
            pytest.mark.xfail(
                strict=True,
                reason="nx-27017: collMod of expireAfterSeconds returns ok but does not"
                " change the index",
            )
        )
    listener = _Commands()
    with MongoStore.from_url(
        ttl_url, event_ttl=timedelta(hours=1), event_listeners=[listener]
    ) as store:
        assert store.event_ttl_index()["expireAfterSeconds"] == 3600
        dropped: list[Any] = []
        collection_type = driver_type(raw(store, "events"))
        for name in ("drop_index", "drop_indexes"):
            monkeypatch.setattr(collection_type, name, lambda *a, **k: dropped.append(a))
        analytics = Analytics(store, event_ttl=timedelta(hours=2))
        analytics.prune()  # the TTL setting changed: collMod
        monkeypatch.undo()
        assert dropped == []
        assert store.event_ttl_index()["expireAfterSeconds"] == 7200
    if ttl_kind == "mongodb-uri":
        replies = [reply for name, reply in listener.replies if name == "collMod"]
        assert len(replies) == 1, replies
        assert replies[0]["expireAfterSeconds_old"] == 3600
        assert replies[0]["expireAfterSeconds_new"] == 7200
    with open_store(ttl_url) as reopened:  # no event_ttl given: the live setting is kept
        assert reopened.event_ttl_index()["expireAfterSeconds"] == 7200


def test_ttl_index_is_created_with_the_seeds_seven_days(ttl_url: str) -> None:
    with open_store(ttl_url) as store:
        assert store.event_ttl_index()["expireAfterSeconds"] == 7 * 86400


def test_event_ttl_must_fit_the_ttl_index(ttl_url: str) -> None:
    """``expireAfterSeconds`` is a 32-bit signed integer: the longest TTL it holds is
    accepted and stored as it is; one second more, or a TTL under a second, is a
    ConfigurationError naming the limit when it is first given (the store, ``Analytics``,
    a direct prune), never a failure of the background prune job."""
    longest = mongo_backend.MAX_EVENT_TTL
    assert longest == timedelta(seconds=2**31 - 1)
    too_long = longest + timedelta(seconds=1)
    with pytest.raises(ConfigurationError, match=r"at most 2147483647 seconds"):
        MongoStore.from_url(ttl_url, event_ttl=too_long)
    for bad in (timedelta(0), timedelta(seconds=-5), timedelta(milliseconds=500)):
        with pytest.raises(ConfigurationError, match="at least one second"):
            MongoStore.from_url(ttl_url, event_ttl=bad)
    with MongoStore.from_url(ttl_url, event_ttl=longest) as store:
        assert store.event_ttl_index()["expireAfterSeconds"] == 2**31 - 1
        with pytest.raises(ConfigurationError, match="2147483647"):
            Analytics(store, event_ttl=too_long)
        with pytest.raises(ConfigurationError, match="at least one second"):
            Analytics(store, event_ttl=timedelta(0))
        with pytest.raises(ConfigurationError, match="2147483647"):
            store.prune(NOW, too_long, timedelta(hours=12))
        Analytics(store, event_ttl=longest).prune()
        assert store.event_ttl_index()["expireAfterSeconds"] == 2**31 - 1


def test_event_ttl_is_unbounded_without_the_ttl_index(ttl_url: str) -> None:
    """With ``ttlIndex=false`` no index holds the TTL, so only a positive TTL is asked
    for; the prune job deletes by ``ts`` whatever its length."""
    with open_store(mongo_server.with_query(ttl_url, "ttlIndex=false")) as store:
        analytics = Analytics(store, event_ttl=timedelta(days=100 * 365))
        analytics.prune()
        with pytest.raises(ConfigurationError, match="at least one second"):
            Analytics(store, event_ttl=timedelta(seconds=-1))


def test_an_analytics_that_opened_its_store_closes_it_on_a_bad_ttl(
    nx_27017: mongo_server.NxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed: list[MongoStore] = []
    real_close = MongoStore.close

    def close(self: MongoStore) -> None:
        closed.append(self)
        real_close(self)

    monkeypatch.setattr(MongoStore, "close", close)
    with pytest.raises(ConfigurationError, match="2147483647"):
        Analytics(nx_27017.url(), event_ttl=mongo_backend.MAX_EVENT_TTL * 2)
    assert len(closed) == 1


def test_ttl_index_off_keeps_a_plain_ts_index(ttl_url: str) -> None:
    with open_store(mongo_server.with_query(ttl_url, "ttlIndex=false")) as store:
        index = store.event_ttl_index()
        assert index is not None
        assert "expireAfterSeconds" not in index
        analytics = Analytics(store, event_ttl=timedelta(hours=2))
        analytics.prune()
        assert "expireAfterSeconds" not in store.event_ttl_index()


def _old_and_new_events(store: MongoStore) -> None:
    """One event three hours old (past a one-hour TTL) and one of now."""
    old = NOW - timedelta(hours=3)
    store.apply(
        FlushBatch(
            created_at=NOW,
            events=[
                EventRecord(to_ms(old), "u1", "old.event", "{}", old.date().isoformat()).row,
                EventRecord(to_ms(NOW), "u1", "new.event", "{}", NOW.date().isoformat()).row,
            ],
        )
    )


def test_the_stand_ins_hide_expired_events_at_once(mongo_url: str) -> None:
    """Without prune, the TTL index alone expires events: nx-27017 and mongomock hide
    expired documents from reads at once (MongoDB's monitor deletes them within a
    minute or two: the next test, on a real server)."""
    with MongoStore.from_url(mongo_url, event_ttl=timedelta(hours=1)) as store:
        _old_and_new_events(store)
        assert [e.event for e in store.get_events()] == ["new.event"]


def _ttl_monitor(store: MongoStore) -> tuple[bool, int]:
    """Whether the server's TTL monitor runs, and its pass interval in seconds (60 by
    default); the defaults where ``getParameter`` is not allowed (Atlas)."""
    try:
        found = store._client().admin.command(
            "getParameter", 1, ttlMonitorEnabled=1, ttlMonitorSleepSecs=1
        )
    except pymongo.errors.OperationFailure:
        return True, 60
    return bool(found.get("ttlMonitorEnabled", True)), int(found.get("ttlMonitorSleepSecs", 60))


@pytest.mark.slow
@pytest.mark.skipif(mongo_server.real_mongodb_uri() is None, reason="MONGODB_URI is not set")
def test_the_ttl_monitor_deletes_expired_events() -> None:
    """On a real MongoDB the TTL monitor deletes expired documents in its next pass,
    every ``ttlMonitorSleepSecs`` (60 s): the old event stays readable until then, so
    this polls for up to two passes (at least 120 s); the new event stays."""
    url = mongo_server.real_mongodb_url(ttl_index=True)
    with MongoStore.from_url(url, event_ttl=timedelta(hours=1)) as store:
        assert store.event_ttl_index()["expireAfterSeconds"] == 3600
        enabled, pass_s = _ttl_monitor(store)
        if not enabled:
            pytest.skip("the server's TTL monitor is off (ttlMonitorEnabled=false)")
        _old_and_new_events(store)
        events = raw(store, "events")
        deadline = time.monotonic() + max(120, 2 * pass_s + 10)
        while events.count_documents({"event": "old.event"}):
            if time.monotonic() > deadline:
                pytest.fail(f"the TTL monitor left an expired event for {2 * pass_s} s")
            time.sleep(2)
        assert [e.event for e in store.get_events()] == ["new.event"]


# -- operator-looking input ---------------------------------------------------------------


def test_operator_looking_input_is_data_never_an_operator(mongo_store: MongoStore) -> None:
    """``$where``, ``a.b`` and dicts such as ``{"$gt": ""}``: stored verbatim as values or
    rejected, and other users' documents stay exactly as they were."""
    analytics = Analytics(mongo_store, strict=True)
    analytics.on_login("victim", "v")
    analytics.track("credits.earn", "victim", {"amount": 10})
    analytics.flush()
    before = {
        name: list(raw(mongo_store, name).find({}, {"_id": 0}))
        for name in ("sessions", "events", "day_users")
    }
    before_day = mongo_store.get_day(NOW.date().isoformat())

    for bad in ({"$gt": ""}, {"$ne": None}, ["$where"]):
        with pytest.raises(InvalidTypeError):
            analytics.track("credits.earn", bad)  # type: ignore[arg-type]
        with pytest.raises(InvalidTypeError):
            analytics.on_logout(bad)  # type: ignore[arg-type]
        with pytest.raises(InvalidTypeError):
            mongo_store.get_sessions(bad)  # type: ignore[arg-type]
        with pytest.raises(InvalidTypeError):
            mongo_store.get_events(bad)  # type: ignore[arg-type]
    for data in ({"$gt": ""}, {"a.b": 1}, {"nested": {"$where": "1"}}):
        with pytest.raises(ValidationError):
            analytics.track("tutorial.step", "u1", data)

    # Plain strings that look like operators or paths are values, stored as such.
    analytics.on_login("$where", "$gt")
    analytics.track("$where", "a.b", {"q": "$gt", "path": "a.b"})
    analytics.on_logout("$where")
    analytics.flush()
    (session,) = mongo_store.get_sessions("$where")
    assert (session.user_id, session.username) == ("$where", "$gt")
    (event,) = mongo_store.get_events("a.b")
    assert (event.event, json.loads(event.data)) == ("$where", {"q": "$gt", "path": "a.b"})
    stored = raw(mongo_store, "events").find_one({"userId": "a.b"})
    assert stored["data"] == {"q": "$gt", "path": "a.b"}  # a subdocument of plain keys

    after = {
        name: [doc for doc in raw(mongo_store, name).find({}, {"_id": 0}) if doc in before[name]]
        for name in before
    }
    assert after == before  # every earlier document still there, unchanged
    assert raw(mongo_store, "sessions").count_documents({"userId": "victim", "open": True}) == 1
    today = mongo_store.get_day(NOW.date().isoformat())
    assert today is not None and before_day is not None
    assert today["creditsEarned"] == before_day["creditsEarned"] == 10
    assert mongo_store.get_sessions("victim")[0].logout_at is None


def test_data_with_unstorable_keys_is_kept_as_text(mongo_store: MongoStore) -> None:
    """Should a record bypass validation, keys MongoDB would read as operators or paths
    are never fields: the data is stored as its JSON text and read back the same."""
    text = '{"$gt":"","a.b":1}'
    mongo_store.apply(
        FlushBatch(
            created_at=NOW,
            events=[EventRecord(to_ms(NOW), "u1", "raw", text, NOW.date().isoformat()).row],
        )
    )
    assert raw(mongo_store, "events").find_one({"event": "raw"})["data"] == text
    assert mongo_store.get_events("u1")[0].data == text


# -- reads: no distinct(), no scans --------------------------------------------------------


def test_reads_never_use_distinct(mongo_store: MongoStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """mau and activeSessions come from maintained counts (the seed's distinct() broke
    past 16 MB)."""
    collection_type = driver_type(raw(mongo_store, "sessions"))

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("distinct() must not be used")

    monkeypatch.setattr(collection_type, "distinct", refuse)
    analytics = Analytics(mongo_store)
    for user in ("u1", "u2", "u3"):
        analytics.on_login(user)
    analytics.on_logout("u3")
    metrics = analytics.get_metrics()
    assert (metrics.dau, metrics.mau, metrics.active_sessions) == (3, 3, 2)


class _Commands(monitoring.CommandListener):
    """A pymongo command listener: the name of every command sent, the commands
    themselves and the replies."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.sent: list[dict[str, Any]] = []
        self.replies: list[tuple[str, dict[str, Any]]] = []

    def started(self, event: Any) -> None:
        self.names.append(event.command_name)
        self.sent.append(dict(event.command))

    def succeeded(self, event: Any) -> None:
        self.replies.append((event.command_name, dict(event.reply)))

    def failed(self, event: Any) -> None:
        pass


def test_a_flush_is_a_handful_of_round_trips(nx_27017: mongo_server.NxServer) -> None:
    """2,000 events, 100 logins and then 100 re-logins (100 closes) cost the same score
    of commands as a tiny batch: bulk writes and three queries for the users' marks,
    never a command per event, user, login or logout. (A client of its own, not the
    harness's, whose look-ups before each write would be counted too.)"""
    listener = _Commands()
    client = RealMongoClient(nx_27017.url(), event_listeners=[listener])
    store = MongoStore.from_client(client, client.get_default_database().name, transactions=True)
    try:
        analytics = Analytics(store)

        def flush_counting(users: int, events: int) -> list[str]:
            for i in range(users):
                analytics.on_login(f"user{i}")
            for i in range(events):
                analytics.track("credits.earn", f"user{i % 50}", {"amount": 1})
            listener.names.clear()
            analytics.flush()
            return list(listener.names)

        tiny = flush_counting(2, 3)
        large = flush_counting(100, 2000)
        relogins = flush_counting(100, 20)
    finally:
        client.close()
    # One transaction per batch (its claim, records, marks, events, delta, commit), then
    # the roll-up's transaction (read the deltas, fold, mark them, commit), the tombstone
    # re-check, the heartbeat. Events go EVENT_CHUNK per insert_many.
    more_inserts = -(-2000 // mongo_batch.EVENT_CHUNK) - 1
    for names in (tiny, large, relogins):
        assert len(names) <= 24 + more_inserts, names
    assert len(large) <= len(tiny) + 2 + more_inserts, (tiny, large)
    assert len(relogins) <= len(tiny) + 2, (tiny, relogins)


# -- the transactions' concerns and retries -------------------------------------------------


def _transactions(sent: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The commands sent inside transactions, grouped by transaction (session and
    ``txnNumber``), in the order sent."""
    grouped: dict[tuple[Any, int], list[dict[str, Any]]] = {}
    for command in sent:
        if command.get("autocommit") is False:
            key = (command["lsid"]["id"], command["txnNumber"])
            grouped.setdefault(key, []).append(command)
    return list(grouped.values())


def test_every_transaction_has_its_own_concerns(nx_27017: mongo_server.NxServer) -> None:
    """Whatever the URL's ``readConcernLevel`` and ``w``, a transaction reads a snapshot
    (its first command carries ``readConcern: snapshot``, the others none) and commits
    with ``w: majority`` and ``maxTimeMS``; the commands inside send no write concern of
    their own. Batches with sessions and a prune, which are transactions too."""
    listener = _Commands()
    url = nx_27017.url(query="readConcernLevel=linearizable&w=1")
    client = pymongo.MongoClient(url, serverSelectionTimeoutMS=2000, event_listeners=[listener])
    try:
        assert client.read_concern.level == "linearizable"
        with MongoStore.from_client(
            RealMongoClient(url, event_listeners=[listener]),
            client.get_default_database().name,
            transactions=True,
            ttl_index=False,
        ) as store:
            clock = [NOW]
            analytics = Analytics(store, clock=lambda: clock[0], forwarders=[])
            listener.sent.clear()
            analytics.on_login("u1")
            analytics.on_login("u2")
            analytics.track("credits.earn", "u1", {"amount": 3})
            analytics.flush()
            clock[0] += timedelta(seconds=30)
            analytics.on_logout("u1")
            analytics.flush()
            analytics.prune()
            assert store.get_day(NOW.date().isoformat())["totalSessionS"] == 30
    finally:
        client.close()
    transactions = _transactions(listener.sent)
    assert len(transactions) >= 3, [[c.keys() for c in t] for t in transactions]
    for commands in transactions:
        first, *rest = commands
        assert first.get("startTransaction") is True, first
        assert first["readConcern"] == {"level": "snapshot"}, first
        assert all("readConcern" not in c and "startTransaction" not in c for c in rest)
        commit = commands[-1]
        assert "commitTransaction" in commit, list(commit)
        assert commit["writeConcern"] == {"w": "majority", "wtimeout": WRITE_TIMEOUT_MS}
        assert commit["maxTimeMS"] == MAX_COMMIT_TIME_MS
        assert all("writeConcern" not in c for c in commands[:-1])


class _FlakyCommits:
    """A session whose commits fail with the given errors first, then succeed."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.commits = 0

    def commit_transaction(self) -> None:
        self.commits += 1
        if self.errors:
            raise self.errors.pop(0)


def _commit_error(code: int, label: str = "UnknownTransactionCommitResult") -> Exception:
    return pymongo.errors.OperationFailure(
        f"injected commit failure {code}", code=code, details={"errorLabels": [label]}
    )


def test_a_commit_with_an_unknown_outcome_is_sent_again(mongo_store: MongoStore) -> None:
    session = _FlakyCommits(_commit_error(91), _commit_error(189))  # shutdown, stepdown
    started = time.monotonic()
    mongo_store._commit(session)
    assert session.commits == 3
    assert time.monotonic() - started < 1  # a backoff of milliseconds, not seconds


def test_a_commit_that_ran_out_of_max_commit_time_is_not_sent_again(
    mongo_store: MongoStore,
) -> None:
    """MaxTimeMSExpired carries the unknown-result label too, but a second commit would
    wait as long for the majority: the error goes to the flusher, which keeps the batch."""
    session = _FlakyCommits(_commit_error(50))
    with pytest.raises(pymongo.errors.OperationFailure, match="50"):
        mongo_store._commit(session)
    assert session.commits == 1
    other = _FlakyCommits(_commit_error(11600, "TransientTransactionError"))
    with pytest.raises(pymongo.errors.OperationFailure):  # redone by apply, not here
        mongo_store._commit(other)
    assert other.commits == 1


class _VirtualClock:
    """The retry loops' clock (:mod:`gso_analytics.conflicts`), moved by their sleeps
    and by 1 ms a reading (so a loop that stopped sleeping still ends): what a loop does
    within its budget then does not depend on how fast this machine runs the attempts
    (a stall of the test process before the first sleep once left a real 0.2 s budget
    spent after one attempt)."""

    def __init__(self) -> None:
        self.now = 1_000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        self.now += 0.001
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def _assert_backed_off(clock: _VirtualClock, attempts: int, budget: float) -> None:
    """Backed off (each wait at least the one before: the delay doubles and the jitter
    takes at most half of it), not a busy loop, and given up within the budget."""
    assert 2 <= attempts < 100
    assert len(clock.sleeps) == attempts - 1
    assert clock.sleeps[0] < 0.01
    assert all(b >= a for a, b in zip(clock.sleeps, clock.sleeps[1:], strict=False))
    assert sum(clock.sleeps) < budget


def test_commit_and_conflict_retries_stop_within_their_budget(
    mongo_store: MongoStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    budget = 0.2
    monkeypatch.setattr(mongo_connection, "TRANSIENT_RETRY_S", budget)
    clock = _VirtualClock()
    monkeypatch.setattr(conflicts, "time", clock)
    session = _FlakyCommits(*[_commit_error(91) for _ in range(10_000)])
    with pytest.raises(pymongo.errors.OperationFailure):
        mongo_store._commit(session)
    _assert_backed_off(clock, session.commits, budget)

    attempts: list[int] = []

    def conflicting(self: Any, *args: Any) -> Any:
        attempts.append(1)
        raise mongo_connection.Conflict("injected write conflict")

    monkeypatch.setattr(MongoStore, "_apply_part", conflicting)
    clock = _VirtualClock()
    monkeypatch.setattr(conflicts, "time", clock)
    with pytest.raises(StoreError, match="injected write conflict"):
        mongo_store.apply(FlushBatch(created_at=NOW))
    _assert_backed_off(clock, len(attempts), budget)


# -- exactly once under failures ----------------------------------------------------------


#: Where a flush fails, after the writes before that point were sent: inside the
#: part's transaction (its records, its sessions, its events), at its commit (before it,
#: or after it with the acknowledgement lost: an unknown outcome), and at the roll-up.
FAILURE_POINTS = [
    "after_records",
    "after_sessions",
    "mid_events",
    "before_commit",
    "after_commit",
    "rollup",
]


def _inject(monkeypatch: pytest.MonkeyPatch, point: str) -> list[str]:
    """Raise a connection error once at ``point``, after the writes before it were sent."""
    fired: list[str] = []

    def fail_once() -> None:
        if not fired:
            fired.append(point)
            raise pymongo.errors.AutoReconnect(f"injected: connection lost {point}")

    tx = mongo_batch.BatchTransaction

    def after(owner: Any, name: str) -> None:
        original = getattr(owner, name)

        def failing(self: Any, *args: Any, **kwargs: Any) -> Any:
            result = original(self, *args, **kwargs)
            fail_once()
            return result

        monkeypatch.setattr(owner, name, failing)

    if point == "after_records":
        after(tx, "add_month_users")
    elif point == "after_sessions":
        after(tx, "_write_sessions")
    elif point == "mid_events":  # one event per insert_many: fail after the first
        monkeypatch.setattr(mongo_batch, "EVENT_CHUNK", 1)
        monkeypatch.setattr(mongo_batch, "DOCS_PER_LOOK", 1)
        original_doc = mongo_batch.event_doc
        built: list[int] = []

        def event_doc(event: Any) -> Any:
            built.append(1)
            if len(built) == 2:
                fail_once()
            return original_doc(event)

        monkeypatch.setattr(mongo_batch, "event_doc", event_doc)
    elif point in ("before_commit", "after_commit"):
        original_commit = mongo_connection.Connection._commit

        def commit(self: Any, session: Any) -> None:
            if point == "after_commit":
                original_commit(self, session)
            fail_once()
            if point == "before_commit":
                original_commit(self, session)

        monkeypatch.setattr(mongo_connection.Connection, "_commit", commit)
    else:
        original_fold = mongo_rollup._fold_chunk

        def fold(store: Any) -> int:
            with store._errors("folding"):  # as an error inside the roll-up would be
                fail_once()
            return original_fold(store)

        monkeypatch.setattr(mongo_rollup, "_fold_chunk", fold)
    return fired


@pytest.mark.parametrize("point", FAILURE_POINTS)
def test_a_retried_batch_never_double_counts(
    nx_27017: mongo_server.NxServer, monkeypatch: pytest.MonkeyPatch, point: str
) -> None:
    """A failure at any point of a flush, then the flusher's retry of the same batch:
    every number exactly once, every event once. Inside the transaction nothing of the
    failed attempt stays (the retry is a clean re-run); after the commit the retry is a
    duplicate; a failed roll-up loses nothing (reads add the deltas not folded)."""
    url = nx_27017.url(query="ttlIndex=false")
    clock = [NOW]
    with open_store(url) as store, open_store(url) as other:
        a = Analytics(store, clock=lambda: clock[0])
        b = Analytics(other, clock=lambda: clock[0])
        b.on_login("cross")  # opened by b, closed by a's batch
        b.flush()
        a.on_login("u1", "alice")
        a.on_login("u2")
        a.track("credits.earn", "u1", {"amount": 40})
        for step in range(3):
            a.track("tutorial.step", "u2", {"step": step})
        clock[0] += timedelta(seconds=90)
        a.on_logout("u1")
        a.on_logout("cross")
        a.on_logout("nobody")  # ends no session
        fired = _inject(monkeypatch, point)
        if point == "rollup":
            a.flush()  # applied; the roll-up's failure is logged, the batch is not kept
        else:
            with pytest.raises(StoreError, match="injected"):
                a.flush()
        assert fired == [point]
        monkeypatch.undo()
        a.flush()  # the retry of the same batch
        assert a.stats()["retried"] == (0 if point == "rollup" else 1)
        a.flush()

        today = store.get_day(NOW.date().isoformat())
        assert today is not None
        # "nobody"'s logout makes it active; u2's session (its events at its login) is 0 s.
        assert (today["dau"], today["sessionCount"], today["creditsEarned"]) == (4, 3, 40)
        assert today["totalSessionS"] == 180
        month = store.get_month(NOW.strftime("%Y-%m"))
        assert (month.mau, month.timed_sessions, month.timed_session_s) == (4, 3, 180)
        assert [s.duration_s for s in store.get_sessions("u1")] == [90]
        assert [s.duration_s for s in store.get_sessions("cross")] == [90]
        assert store.count_open_sessions() == 1  # u2
        events = sorted((e.event, e.data) for e in store.get_events())
        assert events == sorted(
            [("credits.earn", '{"amount":40}')]
            + [("tutorial.step", f'{{"step":{step}}}') for step in range(3)]
        )
        assert raw(store, "logouts").count_documents({"userId": "nobody"}) == 1
        totals = store.get_totals()
        assert (totals["creditsEarned"], totals["dau"], totals["mau"]) == (40, 4, 4)
        a.stop()
        b.stop()


def test_a_store_of_the_pairing_version_is_upgraded_to_marks(
    nx_27017: mongo_server.NxServer,
) -> None:
    """Documents written by 0.1 (pending logouts, ``closedBy``/``reloginBy`` fields)
    become marks on open, and their closed sessions are kept as they were: a late login
    inside one belongs to it, a late login before an old waiting logout is ended by it."""
    mongo_url = nx_27017.url(query="ttlIndex=false")
    login = NOW.replace(microsecond=0) - timedelta(hours=1)
    day, month = login.date().isoformat(), login.strftime("%Y-%m")
    old = {"username": None, "day": day, "month": month, "open": False, "timedOut": False}
    with raw_database(mongo_url) as db:
        db["gso_analytics_sessions"].insert_many(
            [
                {
                    **old,
                    "_id": "closed",
                    "userId": "u1",
                    "loginAt": login,
                    "logoutAt": login + timedelta(seconds=60),
                    "durationS": 60,
                    "closedBy": "b1",
                    "reloginBy": None,
                    "correctedBy": "",
                },
                {
                    **old,
                    "_id": "relogin",
                    "userId": "u4",
                    "loginAt": login,
                    "logoutAt": login + timedelta(seconds=300),
                    "durationS": 300,
                    "closedBy": "b1",
                    "reloginBy": "proc-a",
                    "correctedBy": "",
                },
            ]
        )
        db["gso_analytics_pending_logouts"].insert_one(
            {
                "_id": "p1",
                "userId": "u3",
                "logoutAt": login + timedelta(seconds=600),
                "origin": "o",
                "takenBy": "",
            }
        )
    with open_store(mongo_url) as store:
        names = store._db().list_collection_names()
        assert "gso_analytics_pending_logouts" not in names
        marks = sorted(doc["_id"] for doc in raw(store, "logouts").find())
        assert marks == ["closed-logout", "pending-p1"]
        assert raw(store, "sessions").count_documents({"reloginBy": {"$exists": True}}) == 0
        clock = [login + timedelta(seconds=30)]
        analytics = Analytics(store, clock=lambda: clock[0])
        analytics.on_login("u1")
        clock[0] = login + timedelta(seconds=540)
        analytics.on_login("u3")
        analytics.flush()
        # u1's login falls inside the old closed session, which is kept as it was.
        assert [s.duration_s for s in store.get_sessions("u1")] == [60]
        assert [s.duration_s for s in store.get_sessions("u3")] == [60]
    with open_store(mongo_url):
        pass  # nothing left to upgrade


# -- the standalone session lock -------------------------------------------------------------


# -- several OS processes, the CLI --------------------------------------------------------------


def _oracle_variants() -> list[Any]:
    import test_multiprocess

    return test_multiprocess.VARIANTS


def _three_processes_on(
    url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    flush_interval: float,
    flush_each_op: bool,
    seed: int,
) -> None:
    """tests/test_multiprocess.py's three-process scenario and independent oracle, run
    unchanged against ``url``: the workers and the final reads open one Mongo database
    instead of one SQLite file."""
    import test_multiprocess

    monkeypatch.setenv(STORE_URL_ENV, url)
    monkeypatch.setattr(test_multiprocess, "WORKER", Path(__file__))
    monkeypatch.setattr(test_multiprocess, "open_store", lambda _sqlite_url: open_store(url))
    test_multiprocess.test_three_processes_match_the_oracle(
        tmp_path, flush_interval, flush_each_op, seed
    )
    assert not list(tmp_path.glob("*.db")), "the run must not have touched SQLite"
    with open_store(url) as store:
        assert store.recent_days(), "the workers wrote to the Mongo database"
        assert raw(store, "batches").count_documents({}) >= 3


@pytest.mark.slow
@pytest.mark.parametrize(("flush_interval", "flush_each_op", "seed"), _oracle_variants())
def test_three_processes_on_the_wire_server_match_the_oracle(
    nx_27017: mongo_server.NxServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    flush_interval: float,
    flush_each_op: bool,
    seed: int,
) -> None:
    """On nx-27017 through the harness, shared by the three worker processes: their
    transactions one at a time, first-writer-wins conflicts between them (two batches
    of one player's marks) and 5% more injected at random, every one retried."""
    monkeypatch.setenv(mongo_harness_module.RATE_ENV_VAR, "0.05")
    url = nx_27017.url(query="ttlIndex=false")
    _three_processes_on(url, tmp_path, monkeypatch, flush_interval, flush_each_op, seed)


@pytest.mark.slow
@pytest.mark.parametrize(("flush_interval", "flush_each_op", "seed"), _oracle_variants())
def test_three_processes_on_a_real_mongodb_match_the_oracle(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    flush_interval: float,
    flush_each_op: bool,
    seed: int,
) -> None:
    """The same against ``MONGODB_URI``: on a replica set, three processes whose
    transactions really are isolated and really conflict (what nx-27017 cannot show)."""
    url = mongo_server.real_mongodb_url()  # skips when MONGODB_URI is not set
    _three_processes_on(url, tmp_path, monkeypatch, flush_interval, flush_each_op, seed)


def _run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gso_analytics", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_demo_cli_against_the_wire_server(nx_27017: mongo_server.NxServer, tmp_path: Path) -> None:
    """``gso-analytics demo --store mongodb://...`` prints the same report as on SQLite
    (same seed, same numbers), and ``report`` reads it back."""
    demo = ["demo", "--players", "40", "--days", "3", "--today", "2026-03-12", "--seed", "3"]
    mongo_url = nx_27017.url(database=mongo_server.fresh_db_name())
    sqlite_url = f"sqlite:///{tmp_path / 'demo.db'}"
    on_mongo = _run_cli(*demo, "--store", mongo_url, cwd=tmp_path)
    assert on_mongo.returncode == 0, on_mongo.stderr
    on_sqlite = _run_cli(*demo, "--store", sqlite_url, cwd=tmp_path)
    assert on_sqlite.returncode == 0, on_sqlite.stderr

    def report_part(out: str, url: str) -> list[str]:
        lines = out.replace(url, "URL").splitlines()
        return [line for line in lines if " API calls in " not in line]

    assert "DAU" in on_mongo.stdout.upper()
    assert report_part(on_mongo.stdout, mongo_url) == report_part(on_sqlite.stdout, sqlite_url)
    report = _run_cli(
        "report", "--store", mongo_url, "--today", "2026-03-12", "--json", cwd=tmp_path
    )
    assert report.returncode == 0, report.stderr
    assert json.loads(report.stdout)


# -- a real MongoDB -------------------------------------------------------------------------------


def test_real_mongodb_when_configured() -> None:
    """Against ``MONGODB_URI`` (a local mongod, a replica set, a cluster): one batch with
    everything in it; the contract suite also runs there (conftest ``mongodb-uri``)."""
    url = mongo_server.real_mongodb_url()  # skips when MONGODB_URI is not set
    with open_store(url) as store:
        assert isinstance(store, MongoStore)
        day, month = NOW.date().isoformat(), NOW.strftime("%Y-%m")
        batch = FlushBatch(
            created_at=NOW,
            counters={day: {"creditsEarned": 5, "sessionCount": 1}},
            months={day: month},
            day_users={day: {"u1"}},
            month_users={month: {"u1"}},
            logins=[("o-1", "u1", to_ms(NOW), "o", 1, "alice", day, month)],
            logouts=[("o-2", "u1", to_ms(NOW) + 30_000, "o", 2)],
            events=[EventRecord(to_ms(NOW), "u1", "credits.earn", '{"amount":5}', day).row],
        )
        assert not store.apply(batch).duplicate
        assert store.apply(batch).duplicate
        assert store.get_day(day)["totalSessionS"] == 30
        assert store.get_month(month).mau == 1
        assert len(store.get_events("u1")) == 1


@pytest.mark.parametrize("point", ["before", "after"])
def test_a_retried_batch_that_changes_a_stored_session_counts_once(
    nx_27017: mongo_server.NxServer, monkeypatch: pytest.MonkeyPatch, point: str
) -> None:
    """The connection drops just before or after the commit of a batch whose logout
    ends, at an earlier time, a session another process's second login ended; the retry
    (a clean re-run, or a duplicate) takes the same decision and counts the durations
    once."""
    url = nx_27017.url(query="ttlIndex=false")
    now = [datetime(2025, 3, 14, 12, tzinfo=UTC)]
    with open_store(url) as store, open_store(url) as other:
        a = Analytics(store, clock=lambda: now[0], forwarders=[], flush_interval=3600)
        b = Analytics(other, clock=lambda: now[0], forwarders=[], flush_interval=3600)
        a.on_login("u1")
        now[0] += timedelta(seconds=60)
        b.on_logout("u1")
        now[0] += timedelta(seconds=60)
        a.on_login("u1")
        now[0] += timedelta(seconds=120)
        a.on_logout("u1")
        a.flush()
        fired = _inject(monkeypatch, f"{point}_commit")
        with pytest.raises(StoreError, match="injected"):
            b.flush()
        monkeypatch.undo()
        b.flush()
        assert fired == [f"{point}_commit"]
        assert b.stats()["retried"] == 1
        assert [s.duration_s for s in store.get_sessions("u1")] == [60, 120]
        assert store.get_day("2025-03-14")["totalSessionS"] == 180
        month = store.get_month("2025-03")
        assert (month.timed_sessions, month.timed_session_s) == (2, 180)
        a.stop()
        b.stop()


# -- transactions that stay small and conflict-free (through the harness) ---------------------


def _batch_transactions(harness: Harness) -> dict[int, set[tuple[str, str]]]:
    """The write sets of the transactions that applied a batch part (each inserts its
    part's document into ``batches``; the roll-up's only update them)."""
    records = harness.records
    parts = {
        r.txn
        for r in records
        if r.txn is not None and r.op == "insert_one" and r.collection.endswith("batches")
    }
    return {txn: writes for txn, writes in harness.write_sets(records).items() if txn in parts}


def test_two_workers_write_no_common_document(
    nx_27017: mongo_server.NxServer, mongo_harness: Harness
) -> None:
    """Two workers flushing at once, each for its own players (logins, credits,
    payments) and both for the same 50 players who only had passive events (sent by the
    server: no activity): the write sets of their parts' transactions are disjoint (so
    on a replica set neither aborts the other), none writes a day, month or totals
    document, and nothing of a flush is written outside a transaction. The figures
    count both once. (Activity of one player on two workers does conflict: both parts
    walk that player's sessions, and the later one is retried.)"""
    url = nx_27017.url(query="ttlIndex=false")
    clock = [NOW]
    with open_store(url) as store, open_store(url) as reader:
        workers = [
            Analytics(
                store, clock=lambda: clock[0], forwarders=[], passive_events=["dungeon.complete"]
            )
            for _ in "ab"
        ]
        for w, worker in enumerate(workers):
            for i in range(5):
                player = f"w{w}-p{i}"
                worker.on_login(player)
                worker.track("credits.earn", player, {"amount": 10})
                worker.track("stripe.payment", player, {"amountCents": 99})
            for i in range(50):
                worker.track("dungeon.complete", f"shared{i}", {"dungeon": "crypt"})
        clock[0] += timedelta(seconds=90)
        for w, worker in enumerate(workers):
            worker.on_logout(f"w{w}-p0")
        mongo_harness.clear()
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda worker: worker.flush(), workers))
        sets = list(_batch_transactions(mongo_harness).values())
        assert len(sets) == 2, sets
        assert not sets[0] & sets[1], sets[0] & sets[1]
        hot = ("daily", "monthly", "totals")
        assert not [w for writes in sets for w in writes if w[0].endswith(hot)]
        assert not mongo_harness.writes_outside_transactions(mongo_harness.records)
        day = reader.get_day(NOW.date().isoformat())
        assert (day["dau"], day["creditsEarned"], day["stripeRevenue"]) == (10, 100, 990)
        assert (day["dungeonsRun"], day["totalSessionS"]) == (100, 180)


def test_two_batches_of_one_players_marks_conflict_and_both_count(
    nx_27017: mongo_server.NxServer, mongo_harness: Harness
) -> None:
    """Where the meaning needs it they do conflict: two workers' batches with marks of
    the same player write that player's fence document, the second loses (first writer
    wins), is run again on what the first committed, and the session is exact."""
    url = nx_27017.url(query="ttlIndex=false")
    clock = [NOW]
    with open_store(url) as store:
        a = Analytics(store, clock=lambda: clock[0], forwarders=[])
        b = Analytics(store, clock=lambda: clock[0], forwarders=[])
        a.on_login("u1")
        clock[0] += timedelta(seconds=40)
        b.on_logout("u1")
        mongo_harness.clear()
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda worker: worker.flush(), [a, b]))
        sets = list(_batch_transactions(mongo_harness).values())
        fence = ("gso_analytics_session_users", '"u1"')
        assert len([writes for writes in sets if fence in writes]) >= 2, sets
        assert [s.duration_s for s in store.get_sessions("u1")] == [40]
        assert store.get_day(NOW.date().isoformat())["totalSessionS"] == 40


def test_deltas_are_counted_once_however_late_they_are_folded(
    nx_27017: mongo_server.NxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process that committed its batch and died before the roll-up (here: 40 batches
    whose roll-up never ran, as from 40 dead processes): every read already counts them
    once, the next prune folds them, a second prune changes nothing, and the day,
    month and totals documents carry no guard ids (they stay a few hundred bytes)."""
    url = nx_27017.url(query="ttlIndex=false")
    monkeypatch.setattr(mongo_store_module, "roll_up", lambda store: 0)
    with open_store(url) as store:
        analytics = Analytics(store, clock=lambda: NOW, forwarders=[])
        for i in range(40):
            analytics.on_login(f"u{i}")
            analytics.track("credits.earn", f"u{i}", {"amount": 7})
            analytics.flush()
        monkeypatch.undo()
        day_key = NOW.date().isoformat()
        assert raw(store, "daily").count_documents({}) == 0  # nothing folded yet
        assert raw(store, "batches").count_documents({"folded": False}) == 40
        for _ in range(3):
            day = store.get_day(day_key)
            assert (day["dau"], day["creditsEarned"], day["sessionCount"]) == (40, 280, 40)
            assert store.get_totals()["creditsEarned"] == 280
            assert store.get_month(NOW.strftime("%Y-%m")).mau == 40
            assert [d.day for d in store.recent_days()] == [day_key]
            analytics.prune()
        assert raw(store, "batches").count_documents({"folded": False}) == 0
        for name in ("daily", "monthly", "totals"):
            doc = raw(store, name).find_one()
            assert "appliedBatches" not in doc
            assert len(bson.encode(doc)) < 1000, doc
        analytics.stop()


def test_a_batch_retried_after_an_erase_stores_each_remaining_event_once(
    nx_27017: mongo_server.NxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch fails before its commit, the erase of one of its players commits, then
    the retry: the other players' events are stored exactly once, the erased player's
    not at all, and his records are under the token only."""
    url = nx_27017.url(query="ttlIndex=false")
    with open_store(url) as store, open_store(url) as other:
        a = Analytics(store, clock=lambda: NOW, forwarders=[])
        for user in ("u1", "u2", "u3"):
            a.on_login(user)
            for step in range(3):
                a.track("tutorial.step", user, {"step": step})
        fired = _inject(monkeypatch, "before_commit")
        with pytest.raises(StoreError, match="injected"):
            a.flush()
        monkeypatch.undo()
        assert fired and not store.get_events()
        Analytics(other, clock=lambda: NOW, forwarders=[]).erase_user("u2")
        a.flush()
        users = sorted(e.user_id for e in store.get_events())
        assert users == ["u1"] * 3 + ["u3"] * 3
        assert store.get_sessions("u2") == []
        assert store.get_day(NOW.date().isoformat())["dau"] == 3
        assert raw(store, "day_users").count_documents({"userId": "u2"}) == 0
        a.stop()


def test_an_erase_committed_while_a_batch_ran_is_caught_after_its_commit(
    nx_27017: mongo_server.NxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The erase commits after the batch's snapshot (simulated: the batch's read of
    the tombstones sees none), so the batch writes the player under his real id; its
    check after the commit finds the tombstone and moves everything to the token."""
    url = nx_27017.url(query="ttlIndex=false")
    with open_store(url) as store:
        a = Analytics(store, clock=lambda: NOW, forwarders=[])
        a.on_login("keep")
        a.flush()
        a.erase_user("gone")  # tombstone first (no records yet)
        original = mongo_batch.BatchTransaction.tombstones

        def blind(self: Any, hashes: Any) -> dict[str, str]:
            original(self, {})  # nothing found: the erase is not in this snapshot
            self.unerased.update(hashes)
            return {}

        monkeypatch.setattr(mongo_batch.BatchTransaction, "tombstones", blind)
        a.on_login("gone", "Gone Person")
        a.track("credits.earn", "gone", {"amount": 5})
        a.track("stripe.payment", "gone", {"amountCents": 300})
        a.flush()
        monkeypatch.undo()
        for name in ("day_users", "month_users", "sessions", "events", "user_revenue"):
            assert raw(store, name).count_documents({"userId": "gone"}) == 0, name
        assert raw(store, "first_seen").count_documents({"_id": "gone"}) == 0
        assert raw(store, "sessions").count_documents({"username": "Gone Person"}) == 0
        day = store.get_day(NOW.date().isoformat())
        assert (day["dau"], day["stripeRevenue"]) == (2, 300)  # figures keep the player
        a.stop()


def test_erase_moves_records_without_changing_a_shard_key_in_place(
    nx_27017: mongo_server.NxServer,
) -> None:
    """At the command level: an erase never updates ``userId`` (a shard key on the
    documented layout: MongoDB refuses to change one with a multi-update) and never
    runs a multi-update; every write is inside a transaction."""
    listener = _Commands()
    client = RealMongoClient(nx_27017.url(), event_listeners=[listener])
    try:
        with MongoStore.from_client(
            client, client.get_default_database().name, transactions=True
        ) as store:
            a = Analytics(store, clock=lambda: NOW, forwarders=[])
            a.on_login("u1", "alice")
            a.track("stripe.payment", "u1", {"amountCents": 100})
            a.on_logout("u1")
            a.flush()
            listener.sent.clear()
            receipt = a.erase_user("u1")
            assert receipt.pseudonymized["sessions"] == 1
            assert receipt.pseudonymized["user_revenue"] == 1
    finally:
        client.close()
    writes = [c for c in listener.sent if next(iter(c)) in ("insert", "update", "delete")]
    assert writes
    for command in writes:
        assert command.get("autocommit") is False, command  # in a transaction
        for update in command.get("updates", []):
            assert not update.get("multi"), update
            assert "userId" not in (update["u"].get("$set") or {}), update


def test_every_write_is_majority_and_every_read_bounded(nx_27017: mongo_server.NxServer) -> None:
    """With ``w=1`` in the URL: every commit and every write outside a transaction
    carries ``w: majority`` and a ``wtimeout``; every query carries ``maxTimeMS``."""
    listener = _Commands()
    client = RealMongoClient(nx_27017.url(query="w=1"), event_listeners=[listener])
    try:
        with MongoStore.from_client(
            client, client.get_default_database().name, transactions=True
        ) as store:
            a = Analytics(store, clock=lambda: NOW, forwarders=[]).start()  # heartbeats too
            listener.sent.clear()
            a.on_login("u1")
            a.track("credits.earn", "u1", {"amount": 1})
            a.flush()
            a.get_metrics()
            store.get_events("u1")
            store.get_sessions("u1")
            a.prune()
            a.erase_user("u1")
            assert a.stop()  # withdraws the heartbeat
    finally:
        client.close()
    majority = {"w": "majority", "wtimeout": WRITE_TIMEOUT_MS}
    for command in listener.sent:
        name = next(iter(command))
        if name == "commitTransaction" or (
            name in ("insert", "update", "delete") and "autocommit" not in command
        ):
            assert command.get("writeConcern") == majority, command
        if name in ("find", "aggregate", "count"):
            assert command.get("maxTimeMS"), command
    beats = [c for c in listener.sent if "gso_analytics_heartbeats" in c.values()]
    assert {"update", "delete"} <= {next(iter(c)) for c in beats}  # saved, withdrawn at stop
    assert any(d["q"].get("_id") for c in beats for d in c.get("deletes", ()))


def test_a_standalone_server_is_refused_with_how_to_start_a_replica_set(
    nx_27017: mongo_server.NxServer,
) -> None:
    """nx-27017 says it is a standalone server: without ``transactions=true`` the store
    refuses it, and says how to make a single-node replica set; ``transactions=false``
    (0.2's guarded path) is gone."""
    with pytest.raises(ConfigurationError, match=r"rs\.initiate\(\)") as caught:
        open_store(nx_27017.url(query="transactions=auto"))
    assert "--replSet" in str(caught.value) and "sqlite" in str(caught.value)
    with pytest.raises(ConfigurationError, match="no standalone mode"):
        open_store(nx_27017.url(query="transactions=false"))


def test_every_collection_exists_before_the_first_transaction(mongo_store: MongoStore) -> None:
    """Creating a collection inside a transaction fails on MongoDB before 4.4 and in
    cross-shard transactions: opening the store creates them all."""
    names = set(mongo_store._db().list_collection_names())
    assert {f"gso_analytics_{name}" for name in mongo_indexes.COLLECTIONS} <= names


def test_prune_runs_in_bounded_transactions(
    nx_27017: mongo_server.NxServer, mongo_harness: Harness
) -> None:
    """35 stale sessions, their logouts and batch ids, pruned with a chunk of 10: every
    prune transaction writes at most a chunk's worth of records (a backlog after months
    without a prune never makes one transaction outlive MongoDB's 60 s)."""
    url = nx_27017.url(query="ttlIndex=false")
    clock = [NOW - timedelta(days=30)]
    with open_store(url) as store:
        store.prune_chunk = 10
        a = Analytics(store, clock=lambda: clock[0], forwarders=[], idle_timeout=timedelta(hours=1))
        for i in range(35):
            a.on_login(f"u{i}")
            a.track("credits.earn", f"u{i}", {"amount": 1})
            a.flush()
        clock[0] = NOW
        mongo_harness.clear()
        result = a.prune()
        assert result.sessions_timed_out == 35
        sets = mongo_harness.write_sets(mongo_harness.records)
        assert len(sets) >= 4
        assert max(len(writes) for writes in sets.values()) <= 3 * store.prune_chunk + 2
        assert store.count_open_sessions() == 0
        assert store.get_day((NOW - timedelta(days=30)).date().isoformat())["sessionCount"] == 35
        a.stop()


def test_a_large_batch_is_applied_in_bounded_parts_exactly_once(
    nx_27017: mongo_server.NxServer, monkeypatch: pytest.MonkeyPatch, mongo_harness: Harness
) -> None:
    """30,000 events of 3,000 players in one batch, parts bounded at 1,000 players and
    4,000 events (5,000 and 10,000 by default): each part its own transaction; a failure
    between two parts, then the retry with *other* bounds (a new setting, or version):
    the batch is split as its first attempt split it (its plan), the parts already
    applied are skipped, every event and counter is stored exactly once."""
    players, per_player = 3_000, 10
    monkeypatch.setattr(MongoStore, "max_part_players", 1_000)
    monkeypatch.setattr(MongoStore, "max_part_events", 4_000)
    with open_store(nx_27017.url(query="ttlIndex=false")) as store:
        analytics = Analytics(store, clock=lambda: NOW, forwarders=[], max_buffered_events=200_000)
        for i in range(players):
            analytics.on_login(f"p{i}")
            for _ in range(per_player):
                analytics.track("credits.earn", f"p{i}", {"amount": 1})
        parts_done: list[int] = []
        original = MongoStore._apply_part

        def failing_after_two_parts(self: Any, *args: Any) -> Any:
            if len(parts_done) == 2:
                raise StoreError("injected: connection lost between two parts")
            parts_done.append(1)
            return original(self, *args)

        monkeypatch.setattr(MongoStore, "_apply_part", failing_after_two_parts)
        mongo_harness.clear()
        with pytest.raises(StoreError, match="between two parts"):
            analytics.flush()
        monkeypatch.setattr(MongoStore, "_apply_part", original)
        monkeypatch.setattr(MongoStore, "max_part_players", 2_000)  # another setting
        analytics.flush()  # the retry: split as before, parts 0 and 1 are duplicates
        assert analytics.stats()["retried"] == 1

        parts = [s for s in _batch_transactions(mongo_harness).values()]
        assert len(parts) == -(-players * per_player // 4_000)  # the events bound the parts
        events_per_part = [len([w for w in writes if w[0].endswith("events")]) for writes in parts]
        assert max(events_per_part) <= 4_000, events_per_part
        day = store.get_day(NOW.date().isoformat())
        assert (day["dau"], day["sessionCount"]) == (players, players)
        assert day["creditsEarned"] == players * per_player
        assert raw(store, "events").count_documents({}) == players * per_player
        assert store.count_open_sessions() == players
        analytics.stop()


# -- stores of 0.2 --------------------------------------------------------------------------


@pytest.mark.parametrize("registration_key", [("day", "userId"), ("userId", "day")])
def test_mongo_init_migrates_a_store_of_0_2(
    nx_27017: mongo_server.NxServer, registration_key: tuple[str, str]
) -> None:
    """0.2's day-first unique indexes (which no shard key could serve) become user-first
    ones, registrations by (day, player) (0.2's, or the first 0.3 stores' user-first
    key) one per player at their earliest day, the guard arrays and the standalone
    collections go, and the figures stay (``newUsers`` as counted)."""
    url = nx_27017.url(query="ttlIndex=false")
    with raw_database(url) as db:
        db["gso_analytics_day_users"].create_index([("day", 1), ("userId", 1)], unique=True)
        registered = db["gso_analytics_new_users"]
        registered.create_index([(field, 1) for field in registration_key], unique=True)
        registered.insert_many(
            [
                {"day": day, "userId": user, "batchId": "b0"}
                for user, days in (("old", ("2025-01-01", "2024-12-30")), ("once", ("2025-01-01",)))
                for day in days
            ]
        )
        db["gso_analytics_day_users"].insert_one(
            {"day": "2025-01-01", "userId": "old", "batchId": "b0"}
        )
        db["gso_analytics_daily"].insert_one(
            {"day": "2025-01-01", "month": "2025-01", "dau": 1, "newUsers": 2,
             "appliedBatches": ["b0"]}
        )  # fmt: skip
        db["gso_analytics_batches"].insert_one({"_id": "b0", "done": True, "countersApplied": True})
        db["gso_analytics_session_journal"].insert_one({"_id": "b0:sessions", "done": True})
    created = mongo_backend.mongo_init(url)
    assert any("dropped the replaced unique gso_analytics_day_users" in c for c in created)
    assert any("(1 later ones removed)" in c for c in created), created
    with open_store(url) as store:
        keys = index_keys(store, "day_users")
        assert keys[(("userId", 1), ("day", 1))].get("unique")
        assert not keys[(("day", 1), ("userId", 1))].get("unique")
        unique = {k for k, v in index_keys(store, "new_users").items() if v.get("unique")}
        assert unique == {(("userId", 1),)}
        assert store.export_user("old")["registeredOn"] == "2024-12-30"
        assert store.export_user("once")["registeredOn"] == "2025-01-01"
        assert store.get_day("2025-01-01")["newUsers"] == 2  # as counted before
        assert "appliedBatches" not in raw(store, "daily").find_one()
        assert "gso_analytics_session_journal" not in store._db().list_collection_names()
        assert store.get_day("2025-01-01")["dau"] == 1
        a = Analytics(store, clock=lambda: datetime(2025, 1, 1, 12, tzinfo=UTC), forwarders=[])
        a.on_login("old")
        a.on_login("new")
        a.flush()
        assert store.get_day("2025-01-01")["dau"] == 2
        a.stop()
    assert mongo_backend.mongo_init(url) == []  # idempotent


def test_a_store_of_registrations_by_day_opens_with_one_per_player(
    nx_27017: mongo_server.NxServer,
) -> None:
    """Without ``mongo-init``: the first open merges a player's registrations into the
    earliest before it builds the ``{userId: 1}`` unique index, and counting goes on
    under it (the old (player, day) index, left for ``mongo-init``, is no hindrance)."""
    url = nx_27017.url(query="ttlIndex=false")
    with raw_database(url) as db:
        registered = db["gso_analytics_new_users"]
        registered.create_index([("userId", 1), ("day", 1)], unique=True)
        registered.insert_many(
            [{"day": "2025-01-02", "userId": "u1"}, {"day": "2025-01-01", "userId": "u1"}]
        )
        db["gso_analytics_daily"].insert_many(  # as the old version counted u1: twice
            [{"day": d, "month": "2025-01", "newUsers": 1} for d in ("2025-01-01", "2025-01-02")]
        )
    with open_store(url) as store:
        assert raw(store, "new_users").count_documents({}) == 1
        assert index_keys(store, "new_users")[(("userId", 1),)].get("unique")
        store.apply(
            FlushBatch(
                created_at=datetime(2025, 1, 3, tzinfo=UTC),
                months={"2024-12-31": "2024-12", "2025-01-03": "2025-01"},
                new_users={"2024-12-31": {"u1"}, "2025-01-03": {"u2"}},
            )
        )
        assert store.export_user("u1")["registeredOn"] == "2024-12-31"
        assert store.get_day("2024-12-31")["newUsers"] == 1  # u1 moved from 1 January
        assert store.get_day("2025-01-01")["newUsers"] == 0
        assert store.get_day("2025-01-02")["newUsers"] == 1  # as counted before
        assert store.get_day("2025-01-03")["newUsers"] == 1  # u2


def test_a_store_0_2_left_half_applied_is_refused(nx_27017: mongo_server.NxServer) -> None:
    url = nx_27017.url(query="ttlIndex=false")
    with raw_database(url) as db:
        db["gso_analytics_batches"].insert_one(
            {"_id": "b1", "done": True, "countersApplied": False, "daily": {}}
        )
    with pytest.raises(StoreError, match="gso-analytics prune"):
        open_store(url)


def test_an_erase_runs_in_bounded_transactions(
    nx_27017: mongo_server.NxServer, monkeypatch: pytest.MonkeyPatch, mongo_harness: Harness
) -> None:
    """A player with five days of history, erased with chunks of two records per
    collection: several transactions, none moving more than a chunk of any collection,
    and every record moved (a long history never makes one transaction outlive 60 s)."""
    monkeypatch.setattr(mongo_erase, "ERASE_CHUNK", 2)
    clock = [NOW - timedelta(days=5)]
    with open_store(nx_27017.url(query="ttlIndex=false")) as store:
        a = Analytics(store, clock=lambda: clock[0], forwarders=[])
        for _ in range(5):
            a.on_login("u1")
            a.track("credits.earn", "u1", {"amount": 1})
            a.flush()
            clock[0] += timedelta(days=1)
        mongo_harness.clear()
        receipt = a.erase_user("u1")
        assert receipt.pseudonymized["day_users"] == 5
        assert receipt.pseudonymized["sessions"] == 5
        assert receipt.deleted["events"] == 5
        sets = mongo_harness.write_sets(mongo_harness.records)
        assert len(sets) >= 4, sets
        for writes in filter(None, sets.values()):  # the last chunk finds nothing to write
            per_collection = Counter(collection for collection, _ in writes)
            # A moved record is the player's document deleted and the token's upserted
            # (the harness counts an upsert's filter and the document it created).
            assert max(per_collection.values()) <= 3 * 2, per_collection
        for name in ("day_users", "sessions", "events"):
            assert raw(store, name).count_documents({"userId": "u1"}) == 0, name
        assert a.erase_user("u1").total == 0  # again: nothing left
        a.stop()


def test_a_document_too_large_is_a_permanent_error(mongo_store: MongoStore) -> None:
    """MongoDB's 16 MiB limit: retrying the same write can never succeed, so the
    flusher sets the batch aside at once instead of retrying it for a week."""
    error = mongo_store._translate("applying a batch", pymongo.errors.DocumentTooLarge("17 MB"))
    assert isinstance(error, StoreError) and error.permanent
    assert "16 MiB" in str(error)


def test_the_index_build_lease_is_renewed_while_the_build_runs(
    nx_27017: mongo_server.NxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A build longer than the lease (a large collection) keeps its lease, so no other
    process takes it over and builds the same indexes meanwhile."""
    monkeypatch.setattr(mongo_indexes, "INDEX_BUILD_LEASE", timedelta(seconds=0.4))
    url = nx_27017.url()
    seen: list[Any] = []
    original = mongo_indexes.Indexes._build_indexes

    def slow_build(self: Any, missing: Any) -> None:
        for _ in range(4):
            time.sleep(0.2)
            seen.append(raw(self, "locks").find_one({"_id": "indexes"})["until"])
        original(self, missing)

    monkeypatch.setattr(mongo_indexes.Indexes, "_build_indexes", slow_build)
    with open_store(url) as store:
        assert len(seen) == 4
        assert seen[-1] > seen[0], seen  # renewed during the build
        assert raw(store, "locks").find_one({"_id": "indexes"})["owner"] == ""  # released


def test_a_failing_roll_up_never_stops_the_prune(
    nx_27017: mongo_server.NxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A roll-up that fails (here on every attempt) is logged; the prune still deletes
    expired events and times sessions out, and every figure reads exact from the deltas
    not folded, until a later roll-up folds them."""
    clock = [NOW - timedelta(days=10)]
    with open_store(nx_27017.url(query="ttlIndex=false")) as store:
        a = Analytics(store, clock=lambda: clock[0], forwarders=[])
        a.on_login("u1")
        a.track("credits.earn", "u1", {"amount": 3})

        def failing(store: Any) -> int:
            with store._errors("folding"):
                raise pymongo.errors.AutoReconnect("injected: roll-up failing")

        monkeypatch.setattr(mongo_rollup, "_fold_chunk", failing)
        a.flush()
        clock[0] = NOW
        result = a.prune()
        assert result.events_deleted == 1 and result.sessions_timed_out == 1
        day = store.get_day((NOW - timedelta(days=10)).date().isoformat())
        assert (day["creditsEarned"], day["dau"], day["sessionCount"]) == (3, 1, 1)
        assert raw(store, "batches").count_documents({"folded": False}) >= 1
        monkeypatch.undo()
        a.prune()
        assert raw(store, "batches").count_documents({"folded": False}) == 0
        assert store.get_totals()["creditsEarned"] == 3
        a.stop()
