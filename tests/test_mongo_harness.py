"""The MongoDB test harness (tests/mongo_harness.py) itself, with pymongo directly, on
nx-27017 and on mongomock: the store's own tests rely on it to see writes made outside a
transaction and to meet the write conflicts a replica set raises."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mongo_server
import pymongo
import pytest
from bson import json_util
from bson.json_util import CANONICAL_JSON_OPTIONS
from mongo_harness import ClientProxy, CollectionProxy, Harness, SessionProxy, WriteRecord
from pymongo.errors import OperationFailure

TESTS = Path(__file__).resolve().parent


pytestmark = pytest.mark.own_harness


@dataclass
class Setup:
    """A harness, its patch active, and a way to open wrapped clients on one database."""

    harness: Harness
    url: str
    teardown: contextlib.ExitStack

    def client(self) -> ClientProxy:
        client = pymongo.MongoClient(self.url)
        assert isinstance(client, ClientProxy), "harness.patched() must wrap every client"
        self.teardown.callback(client.close)
        return client

    def collection(self, name: str = "docs") -> CollectionProxy:
        return self.client().get_default_database()[name]


@pytest.fixture(params=["nx-27017", "mongomock"])
def make_setup(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., Setup]]:
    """``make_setup(**harness_options)``: on mongomock, the harness is entered inside
    ``mongomock_patched()``, as the store's tests will do."""
    with contextlib.ExitStack() as teardown:

        def make(**options: Any) -> Setup:
            harness = Harness(tmp_path / "harness", **options)
            if request.param == "mongomock":
                teardown.enter_context(mongo_server.mongomock_patched())
                url = mongo_server.mongomock_url()
            else:
                url = request.getfixturevalue("nx_27017").url()
            teardown.enter_context(harness.patched())
            return Setup(harness, url, teardown)

        yield make


def _is_conflict(exc: BaseException) -> bool:
    return (
        isinstance(exc, OperationFailure)
        and exc.code == 112
        and exc.has_error_label("TransientTransactionError")
    )


def _wait_until_begun(session: SessionProxy) -> None:
    """Until ``session``'s thread has taken its begin point (it then waits for its turn)."""
    deadline = time.monotonic() + 10
    while session.begun_at is None:
        assert time.monotonic() < deadline, "the other transaction never began"
        time.sleep(0.002)


def test_writes_outside_transactions_are_reported(make_setup: Callable[..., Setup]) -> None:
    setup = make_setup()
    docs = setup.collection()
    docs.insert_one({"_id": "outside"})
    setup.collection("gso_analytics_heartbeats").insert_one({"_id": "beat"})  # ignored
    with docs.database.client.start_session() as session:
        session.start_transaction()
        docs.insert_one({"_id": "inside"}, session=session)
        docs.update_one({"_id": "outside"}, {"$set": {"n": 1}}, session=session)
        session.commit_transaction()

    outside = setup.harness.writes_outside_transactions()
    assert [(r.collection, r.op, r.keys) for r in outside] == [
        ("docs", "insert_one", frozenset({'"outside"'}))
    ]
    txn = session.txn
    assert txn is not None
    assert setup.harness.write_sets() == {txn: {("docs", '"inside"'), ("docs", '"outside"')}}
    assert setup.harness.records == setup.harness.all_records()
    assert docs.find_one({"_id": "outside"}) == {"_id": "outside", "n": 1}


def test_an_aborted_transaction_leaves_nothing_behind(make_setup: Callable[..., Setup]) -> None:
    setup = make_setup()
    docs = setup.collection()
    docs.insert_many([{"_id": 1, "n": 1}, {"_id": 2, "n": 2}])
    before = list(docs.find({}, sort=[("_id", 1)]))
    session = docs.database.client.start_session()
    session.start_transaction()
    docs.insert_one({"_id": 3}, session=session)
    docs.update_one({"_id": 1}, {"$set": {"n": 10}}, session=session)
    docs.delete_one({"_id": 2}, session=session)
    docs.bulk_write(
        [pymongo.UpdateOne({"k": "new"}, {"$set": {"v": 1}}, upsert=True)], session=session
    )
    assert docs.count_documents({}, session=session) == 3
    session.abort_transaction()
    assert not session.in_transaction
    assert list(docs.find({}, sort=[("_id", 1)])) == before
    session.end_session()
    assert session.has_ended


def _overlap(
    setup: Setup,
    first_write: Callable[[Any, SessionProxy], Any],
    second_write: Callable[[Any, SessionProxy], Any],
) -> tuple[list[BaseException], SessionProxy, SessionProxy]:
    """Transaction A writes; transaction B begins (in a thread) before A commits, waits for
    its turn, then writes, and on a conflict aborts and retries once. What B raised."""
    docs_a, docs_b = setup.collection(), setup.collection()
    session_a = docs_a.database.client.start_session()
    session_b = docs_b.database.client.start_session()
    raised: list[BaseException] = []

    def transaction_b() -> None:
        for _attempt in range(2):
            session_b.start_transaction()
            try:
                second_write(docs_b, session_b)
            except OperationFailure as exc:
                raised.append(exc)
                session_b.abort_transaction()
                continue
            session_b.commit_transaction()
            return

    session_a.start_transaction()
    first_write(docs_a, session_a)
    thread = threading.Thread(target=transaction_b)
    thread.start()
    _wait_until_begun(session_b)
    session_a.commit_transaction()
    thread.join(timeout=20)
    assert not thread.is_alive()
    return raised, session_a, session_b


def test_the_second_writer_of_a_document_gets_a_write_conflict(
    make_setup: Callable[..., Setup],
) -> None:
    setup = make_setup()
    setup.collection().insert_one({"_id": "x", "n": 0})

    def increment(docs: Any, session: SessionProxy) -> None:
        docs.update_one({"_id": "x"}, {"$inc": {"n": 1}}, session=session)

    raised, session_a, session_b = _overlap(setup, increment, increment)

    assert len(raised) == 1 and _is_conflict(raised[0]), raised
    assert str(session_a.txn) in str(raised[0])
    assert setup.collection().find_one({"_id": "x"}) == {"_id": "x", "n": 2}
    assert not session_b.in_transaction
    sets = setup.harness.write_sets()
    assert sets[session_a.txn or 0] == sets[session_b.txn or 0] == {("docs", '"x"')}


def test_writers_of_different_documents_both_commit(make_setup: Callable[..., Setup]) -> None:
    setup = make_setup()

    raised, session_a, session_b = _overlap(
        setup,
        lambda docs, session: docs.insert_one({"_id": "a"}, session=session),
        lambda docs, session: docs.replace_one(
            {"_id": "b"}, {"_id": "b", "v": 1}, upsert=True, session=session
        ),
    )

    assert raised == []
    sets = setup.harness.write_sets()
    assert session_a.txn is not None and session_b.txn is not None
    assert sets[session_a.txn] == {("docs", '"a"')}
    assert sets[session_b.txn] == {("docs", '"b"')}
    assert sorted(d["_id"] for d in setup.collection().find()) == ["a", "b"]


def test_upserts_of_the_same_new_document_conflict(make_setup: Callable[..., Setup]) -> None:
    setup = make_setup()

    def upsert(docs: Any, session: SessionProxy) -> None:
        docs.update_one(
            {"day": "2025-03-14", "page": "/"}, {"$inc": {"views": 1}}, upsert=True, session=session
        )

    raised, session_a, _ = _overlap(setup, upsert, upsert)

    assert len(raised) == 1 and _is_conflict(raised[0]), raised
    [doc] = setup.collection().find({}, {"_id": 0})
    assert doc == {"day": "2025-03-14", "page": "/", "views": 2}
    # The first upsert's write set holds the filter's key and the new document's _id.
    assert session_a.txn is not None
    keys = {key for _, key in setup.harness.write_sets()[session_a.txn]}
    assert any(k.startswith("filter:") for k in keys) and len(keys) == 2


def test_a_write_outside_transactions_after_one_began_conflicts_with_it(
    make_setup: Callable[..., Setup],
) -> None:
    """A write outside a transaction is a transaction of its own to the server."""
    setup = make_setup()
    docs = setup.collection()
    docs.insert_one({"_id": "x", "n": 0})
    with docs.database.client.start_session() as session:
        session.start_transaction()
        docs.update_one({"_id": "x"}, {"$inc": {"n": 1}})  # no session: outside
        with pytest.raises(OperationFailure) as caught:
            docs.update_one({"_id": "x"}, {"$inc": {"n": 1}}, session=session)
        assert _is_conflict(caught.value)
        assert "outside any transaction" in str(caught.value)
        session.abort_transaction()
    assert docs.find_one({"_id": "x"}) == {"_id": "x", "n": 1}


def test_the_keys_each_write_method_records(make_setup: Callable[..., Setup]) -> None:
    setup = make_setup()
    docs = setup.collection()
    new = [{"n": 1}, {"n": 2}, {"n": 3}]
    docs.insert_many(new)
    ids = [d["_id"] for d in new]  # assigned before the write, as pymongo does
    docs.delete_many({"n": {"$gte": 2}})
    docs.find_one_and_update({"n": 1}, {"$set": {"m": 1}})
    docs.find_one_and_update({"k": "new"}, {"$set": {"m": 1}}, upsert=True)
    docs.bulk_write(
        [
            pymongo.InsertOne({"_id": "i"}),
            pymongo.UpdateMany({"n": 1}, {"$set": {"m": 2}}),
            pymongo.ReplaceOne({"_id": "r"}, {"_id": "r"}, upsert=True),
            pymongo.DeleteOne({"_id": "i"}),
        ]
    )
    docs.find_one_and_delete({"_id": "r"})

    def key(value: Any) -> str:
        return json_util.dumps(value, json_options=CANONICAL_JSON_OPTIONS)

    [upserted] = docs.find({"k": "new"})
    assert [(r.op, r.keys) for r in setup.harness.records] == [
        ("insert_many", frozenset(map(key, ids))),
        ("delete_many", frozenset(map(key, ids[1:]))),
        ("find_one_and_update", frozenset({key(ids[0])})),
        ("find_one_and_update", frozenset({key(upserted["_id"]), 'filter:{"k": "new"}'})),
        ("bulk_write", frozenset({'"i"', '"r"', key(ids[0])})),
        ("find_one_and_delete", frozenset({'"r"'})),
    ]


def test_conflict_rate_injects_on_a_transactional_write(make_setup: Callable[..., Setup]) -> None:
    setup = make_setup(conflict_rate=1.0, seed=7)
    docs = setup.collection()
    docs.insert_one({"_id": "outside"})  # never injected outside a transaction
    session = docs.database.client.start_session()
    session.start_transaction()
    with pytest.raises(OperationFailure) as caught:
        docs.insert_one({"_id": "inside"}, session=session)
    assert _is_conflict(caught.value)
    assert setup.harness.injected == 1
    # The server aborted the transaction: it cannot commit, only be aborted.
    with pytest.raises(OperationFailure) as doomed:
        docs.insert_one({"_id": "again"}, session=session)
    assert doomed.value.code == 251
    session.abort_transaction()
    assert docs.find_one({"_id": "inside"}) is None
    assert [r.keys for r in setup.harness.all_records()] == [frozenset({'"outside"'})]


def test_mongomock_answers_hello_as_a_replica_set(tmp_path: Path) -> None:
    harness = Harness(tmp_path)
    with mongo_server.mongomock_patched(), harness.patched():
        client = pymongo.MongoClient(mongo_server.mongomock_url())
        database = client.get_default_database()
        assert database.client is client
        hello = database.command("hello")
        assert hello["setName"] == "harness" and hello["logicalSessionTimeoutMinutes"] == 30
        assert type(database["docs"]._target).__module__.startswith("mongomock")


WORKER = """
import sys
sys.path.insert(0, sys.argv[1])
import mongo_harness
assert mongo_harness.activate_from_env() is not None
import pymongo
docs = pymongo.MongoClient(sys.argv[2]).get_default_database()["docs"]
docs.insert_one({"_id": "worker-outside"})
with docs.database.client.start_session() as session:
    with session.start_transaction():
        docs.insert_one({"_id": "worker-inside"}, session=session)
"""


def test_a_worker_process_records_into_the_parents_state_dir(
    nx_27017: mongo_server.NxServer, tmp_path: Path
) -> None:
    harness = Harness(tmp_path / "harness")
    url = nx_27017.url()
    result = subprocess.run(
        [sys.executable, "-c", WORKER, str(TESTS), url],
        env={**os.environ, **harness.env()},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    records = harness.all_records()
    assert harness.records == []
    assert {r.pid for r in records} == {records[0].pid} != {os.getpid()}
    assert [(r.keys, r.txn is None) for r in records] == [
        (frozenset({'"worker-outside"'}), True),
        (frozenset({'"worker-inside"'}), False),
    ]
    assert [r.collection for r in harness.writes_outside_transactions()] == ["docs"]
    with pymongo.MongoClient(url) as client:
        names = sorted(d["_id"] for d in client.get_default_database()["docs"].find())
    assert names == ["worker-inside", "worker-outside"]


def test_the_helpers_read_given_records(tmp_path: Path) -> None:
    """Ignored collections match on the name's end, whatever the store's prefix."""
    harness = Harness(tmp_path)
    records = [
        WriteRecord("gso_analytics_heartbeats", "update_one", frozenset({"h"}), None, 1),
        WriteRecord("x_locks", "delete_one", frozenset({"l"}), None, 1),
        WriteRecord("gso_analytics_events", "insert_many", frozenset({"e"}), None, 1),
        WriteRecord("gso_analytics_events", "insert_many", frozenset({"f", "g"}), 3, 1),
    ]
    assert harness.writes_outside_transactions(records) == [records[2]]
    assert harness.write_sets(records) == {
        3: {("gso_analytics_events", "f"), ("gso_analytics_events", "g")}
    }
