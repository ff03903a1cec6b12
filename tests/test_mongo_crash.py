"""MongoDB standalone: a worker killed in the middle of applying a batch, and the
batch finished by another process from the intent its claim recorded.

Why: without transactions a batch is written in steps; a process killed between two
steps (OOM killer, deploy) is never retried after its restart, so the batch used to
stay partly applied for good. The claim document now holds the batch itself (its
intent) and a lease on the server's clock; once the lease has ended, the prune job of
any process re-applies the batch in recovery mode, where the per-document guards make
whatever the dead process wrote count exactly once.

The worker is this file run as a script (as in tests/test_crash.py): it stores one
batch, then parks its second flush at a chosen step (``PARK_POINTS``) and says so; the
test kills it with SIGKILL and checks, from its own process, that a prune completes
the batch and every total equals the two batches applied once.
"""

from __future__ import annotations

import math
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

if __name__ != "__main__":
    pytest.importorskip("pymongo")
    pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="POSIX signals")

#: The lease of the killed worker's batch (and session lock): short, so the test waits
#: little for the dead worker's lease to end.
LEASE = timedelta(seconds=1)
DEADLINE_S = 60.0
#: Where the worker's second flush parks: after its claim (intent recorded, nothing
#: else), after the (day, user) and (month, user) records, inside the session journal's
#: replay (marks written, their increments not), after the day and month counters, and
#: after the events (only the done mark left).
PARK_POINTS = ["claim", "user_records", "sessions", "counters", "events"]


# -- the worker (this file run as a script) ------------------------------------------------


def _park(point: str) -> None:
    """Make the next flush stop for good at ``point``, saying ``parked`` first."""
    from gso_analytics.backends import mongo

    def park() -> None:
        print("parked", flush=True)
        time.sleep(DEADLINE_S)

    def after(owner: Any, name: str) -> None:
        original = getattr(owner, name)

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            result = original(*args, **kwargs)
            park()
            return result

        setattr(owner, name, wrapped)

    tx = mongo._MongoTransaction
    if point == "claim":
        after(tx, "claim_batch")
    elif point == "user_records":
        after(tx, "add_month_users")
    elif point == "sessions":
        after(mongo, "write_marks")
    elif point == "counters":
        original = tx._write_user_facts

        def facts(self: Any) -> None:
            park()
            original(self)

        tx._write_user_facts = facts  # type: ignore[method-assign]
    else:
        after(tx, "_write_events")


def worker(url: str, point: str) -> None:
    from gso_analytics.backends.mongo import MongoStore

    from gso_analytics import Analytics

    store = MongoStore.from_url(url, batch_lease=LEASE, lock_lease=LEASE)
    clock = [datetime.now(UTC)]
    analytics = Analytics(store, clock=lambda: clock[0], flush_interval=3600, forwarders=[])
    for i in range(10):
        analytics.on_login(f"a{i}", f"name-a{i}")
        analytics.track("credits.earn", f"a{i}", {"amount": 1})
    analytics.flush()
    print("stored", flush=True)
    for i in range(10):
        analytics.on_login(f"b{i}")
        analytics.track("credits.earn", f"b{i}", {"amount": 1})
        analytics.track("market.sale", f"a{i}")
    clock[0] += timedelta(seconds=90)
    for i in range(5):
        analytics.on_logout(f"a{i}")  # closes sessions stored by the first batch
    analytics.on_logout("ghost")  # a logout mark that ends no session
    _park(point)
    analytics.flush()
    print("not killed", flush=True)


if __name__ == "__main__":
    worker(*sys.argv[1:])
    sys.exit(0)


# -- the parent side ---------------------------------------------------------------------------

import mongo_server  # noqa: E402
from gso_analytics.backends import mongo as mongo_backend  # noqa: E402
from gso_analytics.backends.mongo import MongoStore  # noqa: E402
from test_crash import Worker, kill  # noqa: E402

from gso_analytics import Analytics, open_store  # noqa: E402
from gso_analytics.batch_json import batch_to_json  # noqa: E402
from gso_analytics.model import EventRecord, FlushBatch, Login  # noqa: E402


class _Worker(Worker):
    """test_crash's worker process, running this file's :func:`worker`."""

    def __init__(self, *args: str) -> None:
        here = Path(__file__).resolve()
        self.proc = subprocess.Popen(
            [sys.executable, str(here), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=here.parent,
        )
        self._buffer = b""


EVENT_TTL = timedelta(days=7)
SESSION_TIMEOUT = timedelta(hours=12)


def _prune(store: MongoStore) -> None:
    store.prune(datetime.now(UTC), EVENT_TTL, SESSION_TIMEOUT)


def _totals(store: MongoStore) -> dict[str, Any]:
    """Every figure the two batches make, summed over days (a run may cross midnight)."""
    days = store.recent_days()
    months = {day.month for day in days}
    figures: dict[str, Any] = {
        field: sum(day[field] for day in days)
        for field in ("dau", "creditsEarned", "marketSales", "sessionCount", "totalSessionS")
    }
    figures["mau"] = sum(store.get_month(m).mau for m in months)
    figures["timed"] = sum(store.get_month(m).timed_session_s for m in months)
    figures["events"] = store._collection("events").count_documents({})
    figures["sessions"] = store._collection("sessions").count_documents({})
    figures["open"] = store.count_open_sessions()
    figures["day_users"] = store._collection("day_users").count_documents({})
    figures["ghost"] = store._collection("logouts").count_documents({"userId": "ghost"})
    return figures


#: The two batches of the worker, applied once.
EXPECTED = {
    "dau": 20,
    "creditsEarned": 20,
    "marketSales": 10,
    "sessionCount": 20,
    "totalSessionS": 5 * 90,
    "mau": 20,
    "timed": 5 * 90,
    "events": 30,
    "sessions": 20,
    "open": 15,
    "day_users": 20,
    "ghost": 1,
}


@pytest.mark.parametrize("point", PARK_POINTS)
def test_a_batch_killed_mid_apply_is_completed_by_another_processs_prune(point: str) -> None:
    """SIGKILL while the worker's second flush is parked at ``point``; once the lease
    ended, a prune in this process completes the batch: every total is the two
    batches applied exactly once, a second prune changes nothing, and the store takes
    the next flush."""
    url = mongo_server.nx_server().url(query="ttlIndex=false&transactions=false")
    deadline = time.monotonic() + DEADLINE_S
    proc = _Worker(url, point)
    try:
        assert proc.expect(deadline) == "stored"
        assert proc.expect(deadline) == "parked"
        kill(proc)
    finally:
        proc.end()
    with MongoStore.from_url(url, lock_wait=timedelta(seconds=5)) as store:
        batches = store._collection("batches")
        assert batches.count_documents({"done": False}) == 1
        time.sleep(LEASE.total_seconds() + 0.2)
        _prune(store)
        assert batches.count_documents({"done": False}) == 0
        assert batches.count_documents({"intent": {"$exists": True}}) == 0
        assert _totals(store) == EXPECTED
        _prune(store)
        assert _totals(store) == EXPECTED

        survivor = Analytics(store, flush_interval=3600, forwarders=[])
        survivor.track("credits.earn", "a0", {"amount": 1})
        survivor.on_logout("a5")
        assert survivor.stop() is True
        assert _totals(store)["creditsEarned"] == 21
        assert store.count_open_sessions() == 14


def _fail_after_counters(monkeypatch: pytest.MonkeyPatch) -> None:
    """The flush loses its connection after the counters (a process about to die)."""
    import pymongo

    def facts(self: Any) -> None:
        raise pymongo.errors.AutoReconnect("injected: connection lost after the counters")

    monkeypatch.setattr(mongo_backend._MongoTransaction, "_write_user_facts", facts)


def _half_applied_batch(store: MongoStore) -> Analytics:
    analytics = Analytics(store, flush_interval=3600, forwarders=[])
    for i in range(3):
        analytics.on_login(f"u{i}")
        analytics.track("credits.earn", f"u{i}", {"amount": 5})
        analytics.track("stripe.payment", f"u{i}", {"amountCents": 100})
    with pytest.MonkeyPatch.context() as patch, pytest.raises(Exception, match="injected"):
        _fail_after_counters(patch)
        analytics.flush()
    analytics._flusher._pending.clear()  # the process dies: its batch is never retried
    return analytics


def _check_once(store: MongoStore) -> None:
    day = store.recent_days()[0]
    assert (day["dau"], day["creditsEarned"], day["sessionCount"]) == (3, 15, 3)
    assert store._collection("events").count_documents({}) == 6
    assert store._collection("user_revenue").count_documents({}) == 3
    assert sum(d["revenueCents"] for d in store._collection("user_revenue").find()) == 300


def test_a_batch_whose_owner_holds_its_lease_is_not_taken_over() -> None:
    """A batch not done whose lease has not ended belongs to a live process (slow, or
    between two retries): the prune job leaves it alone, and takes it over only once
    the lease ended."""
    url = mongo_server.nx_server().url(query="ttlIndex=false&transactions=false")
    with MongoStore.from_url(url, batch_lease=timedelta(seconds=1.5)) as store:
        _half_applied_batch(store)
        batches = store._collection("batches")
        claim = batches.find_one({"done": False})
        assert claim is not None and claim.get("intent")
        _prune(store)
        assert batches.find_one({"_id": claim["_id"]})["owner"] == claim["owner"]
        assert store._collection("events").count_documents({}) == 0  # not completed
        time.sleep(1.7)
        _prune(store)
        assert batches.find_one({"_id": claim["_id"]})["done"]
        _check_once(store)


def test_a_retry_finds_its_batch_taken_over_and_leaves_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """The owner's retry takes its own batch back at once; but once another process
    took it over (the lease ended meanwhile), the retry is refused as a store error
    until that process is done, and is then a duplicate."""
    url = mongo_server.nx_server().url(query="ttlIndex=false&transactions=false")
    with (
        MongoStore.from_url(url, batch_lease=timedelta(seconds=0.5)) as store,
        MongoStore.from_url(url) as other,
    ):
        analytics = Analytics(store, flush_interval=3600, forwarders=[])
        analytics.on_login("u0")
        analytics.track("credits.earn", "u0", {"amount": 5})
        _fail_after_counters(monkeypatch)
        with pytest.raises(Exception, match="injected"):
            analytics.flush()
        monkeypatch.undo()
        batch_id = store._collection("batches").find_one({"done": False})["_id"]
        time.sleep(0.7)
        token = "another-process"
        assert other._take_over(batch_id, token, own=False)
        with pytest.raises(Exception, match="being completed by another process"):
            analytics.flush()
        other._mark_done(batch_id, 0)  # as if that process had finished it
        analytics.flush()
        assert analytics.stats()["retried"] >= 1
        assert not analytics._flusher._pending


def test_a_large_intent_is_split_across_documents(monkeypatch: pytest.MonkeyPatch) -> None:
    """An intent past :data:`INTENT_CHUNK_CHARS` goes to ``batch_intents`` in chunks,
    written before the claim: a killed batch is completed from them, and they are
    deleted once it is done. (Chunks of 500 characters here, to keep it small.)"""
    monkeypatch.setattr(mongo_backend, "INTENT_CHUNK_CHARS", 500)
    url = mongo_server.nx_server().url(query="ttlIndex=false&transactions=false")
    with MongoStore.from_url(url, batch_lease=timedelta(seconds=0.5)) as store:
        _half_applied_batch(store)
        claim = store._collection("batches").find_one({"done": False})
        assert "intent" not in claim and claim["intentChunks"] >= 2
        chunks = store._collection("batch_intents")
        assert chunks.count_documents({}) == claim["intentChunks"]
        time.sleep(0.7)
        _prune(store)
        _check_once(store)
        assert chunks.count_documents({}) == 0


def _big_part(players: int, events_per_player: int) -> FlushBatch:
    """A part as large as MongoDB parts get: ``players`` logins, records, events."""
    at = datetime(2026, 11, 25, 12, tzinfo=UTC)
    ms = int(at.timestamp() * 1000)
    day, month = "2026-11-25", "2026-11"
    users = [f"player-{i:06d}" for i in range(players)]
    return FlushBatch(
        id="0123456789abcdef0123456789abcdef",
        created_at=at,
        counters={day: {"creditsEarned": players * events_per_player, "sessionCount": players}},
        months={day: month},
        day_users={day: set(users)},
        month_users={month: set(users)},
        logins=[
            Login(f"{u}-login", u, ms, "0123456789abcdef", i, u, day, month)
            for i, u in enumerate(users)
        ],
        logouts=[],
        session_timeout_ms=12 * 3600 * 1000,
        events=[
            EventRecord(ms + j, u, "credits.earn", '{"amount":25,"source":"quest"}', day).row
            for u in users
            for j in range(events_per_player)
        ],
        payments={},
    )


def test_the_intent_of_a_full_part_fits_mongodbs_document_limit() -> None:
    """A full part (10,000 players, 30 events each: 300,000 events) as JSON passes
    16 MiB; split in chunks, every document the store writes stays far below it."""
    import bson

    limit = 16 * 1024 * 1024
    text = batch_to_json(_big_part(MongoStore.max_part_players, 30))
    assert len(text) > limit  # a single claim document could not hold it
    count = math.ceil(len(text) / mongo_backend.INTENT_CHUNK_CHARS)
    at = datetime(2026, 11, 25, tzinfo=UTC)
    chunk = text[: mongo_backend.INTENT_CHUNK_CHARS]
    biggest = len(bson.encode({"_id": "x" * 40, "at": at, "text": chunk}))
    claim = {
        "_id": "x" * 40,
        "appliedAt": at,
        "done": False,
        "intentChunks": count,
        "owner": "0" * 32,
        "leaseUntil": 2**41,
    }
    assert biggest < limit // 3
    assert len(bson.encode(claim)) < 200
    # The largest intent held inline, in its claim document:
    inline = dict(claim, intent="x" * mongo_backend.INTENT_CHUNK_CHARS)
    del inline["intentChunks"]
    assert len(bson.encode(inline)) < limit // 3


@pytest.mark.slow
def test_a_full_parts_intent_round_trips_through_the_server() -> None:
    """The chunks of a 10,000-player part's intent (about 30 MB) written to nx-27017
    and read back give the same batch."""
    part = _big_part(MongoStore.max_part_players, 30)
    text = batch_to_json(part)
    url = mongo_server.nx_server().url(query="ttlIndex=false&transactions=false")
    with MongoStore.from_url(url) as store:
        fields = store._write_intent(part.id, part.created_at, text)
        assert fields == {"intentChunks": math.ceil(len(text) / mongo_backend.INTENT_CHUNK_CHARS)}
        store._collection("batches").insert_one({"_id": part.id, "done": False, **fields})
        loaded = store._load_intent(part.id)
    assert loaded is not None and batch_to_json(loaded[0]) == text
    assert loaded[1] == fields["intentChunks"]


def test_the_lease_clock_is_the_servers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Leases are on the server's clock (``hello``'s ``localTime``), read once and
    advanced by the monotonic clock: a host whose clock is an hour off still writes
    leases the other hosts read right."""
    url = mongo_server.nx_server().url(query="ttlIndex=false&transactions=false")
    with open_store(url) as store:
        assert isinstance(store, MongoStore)
        server = store._hello()["localTime"].replace(tzinfo=UTC)
        real_now = datetime.now

        class _Skewed(datetime):
            @classmethod
            def now(cls, tz: Any = None) -> datetime:  # type: ignore[override]
                return real_now(tz) + timedelta(hours=1)

        monkeypatch.setattr(mongo_backend, "datetime", _Skewed)
        assert abs(store._server_now() - server) < timedelta(seconds=5)
        token = store._acquire_lock()
        lock = store._collection("locks").find_one({"_id": "sessions"})
        until = lock["until"]
        until = until if isinstance(until, datetime) else datetime.fromisoformat(until)
        assert abs(until.replace(tzinfo=UTC) - (server + store.lock_lease)) < timedelta(seconds=5)
        store._release_lock(token)
