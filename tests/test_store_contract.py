"""The store contract: every rule that makes the numbers right, run against every backend.

Each test takes the ``store`` fixture (parametrized in conftest over every backend) and,
where two processes matter, ``other_store``: a second handle on the same data (a second
``SQLiteStore`` on the same file; the same object for ``memory://``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import pytest
from faults import FaultyStore
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gso_analytics import (
    DAILY_FIELDS,
    CounterRule,
    FlushBatch,
    Store,
    StoreError,
    ValidationError,
    aggregator,
    open_store,
)
from gso_analytics.clock import to_ms
from gso_analytics.counters import DECIMAL_PLACES, MAX_COUNTER, decode_counters
from gso_analytics.errors import ConfigurationError
from gso_analytics.heartbeats import process_identity
from gso_analytics.model import EventRecord, Heartbeat, Login, Logout
from gso_analytics.store import WITHDRAWN

if TYPE_CHECKING:
    from conftest import AnalyticsFactory, Backend, FakeClock

Snapshot = Callable[..., dict[str, Any]]


def at(text: str) -> datetime:
    """An aware UTC moment from ``YYYY-MM-DD HH:MM:SS[.ffffff]``."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def day_dict(store: Store, day: str) -> dict[str, Any]:
    stats = store.get_day(day)
    return stats.to_dict() if stats is not None else {}


# -- counters ---------------------------------------------------------------------------


def test_counters_are_increments_across_instances_and_restarts(
    store: Store, other_store: Store, make_analytics: AnalyticsFactory, clock: FakeClock
) -> None:
    """Two processes (and a restarted one) add to the stored totals, never overwrite them:
    the seed wrote process-local totals with ``$set``."""
    a = make_analytics(store)
    b = make_analytics(other_store)
    a.track("credits.earn", "u1", {"amount": 50})
    b.track("credits.earn", "u2", {"amount": 7})
    a.flush()
    b.flush()
    a.track("credits.earn", "u1", {"amount": 3})
    b.track("credits.earn", "u2", {"amount": 1000})
    b.track("dungeon.complete", "u2")
    b.flush()
    a.flush()
    assert store.get_day("2025-03-14")["creditsEarned"] == 50 + 7 + 3 + 1000
    assert other_store.get_day("2025-03-14")["dungeonsRun"] == 1

    a.stop()  # a "restart": a new instance continues the day's totals
    restarted = make_analytics(store)
    restarted.track("credits.earn", "u1", {"amount": 2})
    restarted.track("dungeon.complete", "u1")
    restarted.flush()
    today = day_dict(other_store, "2025-03-14")
    assert today["creditsEarned"] == 1062
    assert today["dungeonsRun"] == 2


def test_dau_and_mau_count_each_user_once(
    store: Store, other_store: Store, make_analytics: AnalyticsFactory, clock: FakeClock
) -> None:
    """(day,user) and (month,user) records make dau/mau exact, also across instances."""
    a = make_analytics(store)
    b = make_analytics(other_store)
    for _ in range(3):
        a.on_login("u1", "alice")
        clock.advance(60)
        a.on_logout("u1")
        a.flush()
    b.on_login("u1", "alice")
    b.on_login("u2", "bob")
    a.on_login("u1", "alice")
    b.flush()
    a.flush()
    today = day_dict(store, "2025-03-14")
    assert today["dau"] == 2
    # u1: three sessions ended by their logouts (a login after a logout of the same
    # millisecond starts the next), a fourth from the last logins; u2: one.
    assert today["sessionCount"] == 5
    assert store.get_month("2025-03").mau == 2

    clock.advance(days=1)
    b.on_login("u1")
    a.on_login("u3")
    a.on_login("u3")
    b.flush()
    metrics = a.get_metrics()  # flushes a
    assert metrics.dau == 2
    assert metrics.mau == 3
    assert day_dict(other_store, "2025-03-15")["sessionCount"] == 2  # u3 logged in twice: one
    assert day_dict(other_store, "2025-03-14")["dau"] == 2  # yesterday untouched


# -- exactly once, atomically -----------------------------------------------------------


def make_batch(clock_at: datetime) -> FlushBatch:
    """A batch touching every kind of record: counters, users, a session, an event."""
    day, month = clock_at.strftime("%Y-%m-%d"), clock_at.strftime("%Y-%m")
    return FlushBatch(
        created_at=clock_at + timedelta(minutes=1),
        counters={day: {"creditsEarned": 50, "sessionCount": 1}},
        months={day: month},
        day_users={day: {"u1"}},
        month_users={month: {"u1"}},
        logins=[("a-1", "u1", to_ms(clock_at), "a", 1, "alice", day, month)],
        logouts=[("a-2", "u1", to_ms(clock_at) + 90_000, "a", 2)],
        events=[EventRecord(to_ms(clock_at), "u1", "credits.earn", '{"amount":50}', day).row],
    )


def test_new_users_count_each_player_once_ever(
    store: Store, other_store: Store, make_analytics: AnalyticsFactory, clock: FakeClock
) -> None:
    """``newUsers`` counts a player on the day of their first ``user.register`` ever:
    a repeat (same batch, a later batch, another process, a later day) adds nothing."""
    a = make_analytics(store)
    b = make_analytics(other_store)
    a.track("user.register", "u1")
    a.track("user.register", "u1")
    a.track("user.register", "u2")
    a.flush()
    b.track("user.register", "u1")
    b.flush()
    a.track("user.register", "u2")
    a.flush()
    assert store.get_day("2025-03-14")["newUsers"] == 2
    clock.advance(days=1)
    b.track("user.register", "u1")
    b.track("user.register", "u3")
    b.flush()
    assert other_store.get_day("2025-03-15")["newUsers"] == 1  # u3 only
    assert store.get_day("2025-03-14")["newUsers"] == 2
    assert store.export_user("u1")["registeredOn"] == "2025-03-14"
    assert len(store.get_events(limit=100)) == 7  # every call is still in the stream


def registrations(created: str, by_day: dict[str, set[str]]) -> FlushBatch:
    """A batch of registrations only (as a worker's flush of ``user.register`` calls)."""
    return FlushBatch(
        created_at=at(created),
        months={day: day[:7] for day in by_day},
        new_users=by_day,
    )


def test_new_users_are_each_players_earliest_registration_in_any_flush_order(
    store: Store, other_store: Store
) -> None:
    """The day's ``newUsers`` is the number of players whose earliest registration
    ever is that day, whatever order two workers' batches reach the store in: a batch
    flushed later carrying an earlier registration moves the player (-1 on the later
    day, +1 on the earlier). Checked after every flush (retries included) against that
    definition computed from the batches applied so far, over a month's end."""
    rng = random.Random(27)
    days = [(date(2025, 2, 25) + timedelta(days=n)).isoformat() for n in range(9)]
    players = [f"p{n}" for n in range(10)]
    batches = [
        registrations(
            "2025-03-06 00:00:00",
            {day: set(rng.sample(players, rng.randint(1, 4))) for day in rng.sample(days, 2)},
        )
        for _ in range(14)
    ]
    applied: list[FlushBatch] = []
    for batch in rng.sample(batches, len(batches)):
        retry = [rng.choice(applied)] if applied and rng.random() < 0.3 else []
        for flushed in [batch, *retry]:
            rng.choice([store, other_store]).apply(flushed)
        applied.append(batch)
        earliest: dict[str, str] = {}
        for done in applied:
            for day, users in done.new_users.items():
                for user in users:
                    earliest[user] = min(day, earliest.get(user, day))
        expected = Counter(earliest.values())
        assert {day: day_dict(store, day).get("newUsers", 0) for day in days} == {
            day: expected[day] for day in days
        }
    totals = other_store.get_totals()
    assert totals["newUsers"] - totals.get("newUsers" + WITHDRAWN, 0) == len(earliest)
    assert totals.get("newUsers" + WITHDRAWN, 0) > 0, "no registration moved: a weak order"
    for user, day in earliest.items():
        assert store.export_user(user)["registeredOn"] == day


def test_an_erased_players_earlier_registration_moves_the_tokens(store: Store) -> None:
    """An erase merges the registration into the token's record (the earliest day, as
    first-seen), and a batch of the erased player applied later, renamed to the
    token, still moves the count to its earlier day."""
    store.apply(registrations("2025-03-05 12:00:00", {"2025-03-05": {"u1", "u2"}}))
    store.erase_user("u1", at("2025-03-06 00:00:00"))
    assert store.export_user("u1")["registeredOn"] is None
    store.apply(registrations("2025-03-03 12:00:00", {"2025-03-03": {"u1"}}))
    assert store.get_day("2025-03-05")["newUsers"] == 1  # u2
    assert store.get_day("2025-03-03")["newUsers"] == 1  # u1's token, moved
    assert store.export_user("u2")["registeredOn"] == "2025-03-05"


def test_same_batch_applied_twice_is_a_duplicate(
    store: Store, other_store: Store, clock: FakeClock, take_snapshot: Snapshot
) -> None:
    """A retried batch (unknown outcome of the first try) is recognised by its id and
    changes nothing, even when the retry reaches the store through another handle."""
    batch = make_batch(clock.now)
    first = store.apply(batch)
    assert not first.duplicate
    assert first.new_day_users == 1
    after_first = take_snapshot(store, ("u1",))
    assert after_first["days"][0]["creditsEarned"] == 50
    assert after_first["days"][0]["totalSessionS"] == 90

    assert store.apply(batch).duplicate
    assert other_store.apply(batch).duplicate
    assert take_snapshot(store, ("u1",)) == after_first

    # The guard is the id, not the content: a new batch with the same counters adds.
    again = FlushBatch(
        created_at=batch.created_at,
        counters=batch.counters,
        months=batch.months,
        events=batch.events,
    )
    assert not other_store.apply(again).duplicate
    assert day_dict(store, clock.now.strftime("%Y-%m-%d"))["creditsEarned"] == 100
    assert len(store.get_events()) == 2


class _FailingTransaction:
    """Delegates to a real transaction; ``fail_at`` raises after doing its real write."""

    def __init__(self, tx: Any, fail_at: str) -> None:
        self._tx = tx
        self._fail_at = fail_at
        self.called: list[str] = []

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._tx, name)
        if not callable(real):  # a setting (session_part), not a write
            return real

        def call(*args: Any, **kwargs: Any) -> Any:
            self.called.append(name)
            result = real(*args, **kwargs)
            if name == self._fail_at:
                raise RuntimeError(f"injected crash after {name}")
            return result

        return call


@pytest.mark.parametrize(
    "fail_at",
    ["add_day_users", "increment_daily", "sessions_since", "write_sessions", "insert_events"],
)
def test_apply_is_atomic(
    store: Store,
    make_analytics: AnalyticsFactory,
    clock: FakeClock,
    take_snapshot: Snapshot,
    monkeypatch: pytest.MonkeyPatch,
    fail_at: str,
) -> None:
    """A crash between the statements of a batch leaves nothing applied (batch id
    included, so the retry applies the whole batch once), on every backend: the memory
    store too, whose transactions undo their writes. The crash is a bug (not a
    ``StoreError``): ``flush()`` raises it as it is."""
    analytics = make_analytics(store)
    analytics.on_login("u1", "alice")
    analytics.track("credits.earn", "u1", {"amount": 40})
    clock.advance(75)
    analytics.on_logout("u1")
    empty = take_snapshot(store, ("u1",))

    real_transaction = store.transaction
    reached: list[list[str]] = []

    @contextlib.contextmanager
    def crashing() -> Iterator[Any]:
        with real_transaction() as tx:
            failing = _FailingTransaction(tx, fail_at)
            reached.append(failing.called)
            yield failing

    monkeypatch.setattr(store, "transaction", crashing)
    with pytest.raises(RuntimeError, match="injected crash"):
        analytics.flush()
    # Any attempt: on MongoDB an attempt may lose an (injected) write conflict before the
    # point and be run again.
    assert any(fail_at in calls for calls in reached), (
        "the injected failure point was never reached"
    )
    assert take_snapshot(store, ("u1",)) == empty

    monkeypatch.undo()
    analytics.flush()
    today = day_dict(store, "2025-03-14")
    assert (today["creditsEarned"], today["dau"], today["sessionCount"]) == (40, 1, 1)
    assert today["totalSessionS"] == 75
    assert [s.duration_s for s in store.get_sessions("u1")] == [75]
    assert len(store.get_events()) == 1
    assert analytics.stats()["retried"] == 1


# -- events -----------------------------------------------------------------------------


def test_a_batch_of_many_events_is_stored_whole_and_once(store: Store, clock: FakeClock) -> None:
    """A batch longer than every write slice of a backend (rows built in slices,
    MongoDB's inserts sent in chunks, see ``gso_analytics.pacing``) is stored whole and
    in order; applied again (a retry) it adds nothing."""
    day = clock.now.strftime("%Y-%m-%d")
    start = to_ms(clock.now)
    rows = [
        EventRecord(start + i, f"u{i % 7}", "credits.earn", f'{{"amount":{i}}}', day).row
        for i in range(2_600)
    ]
    batch = FlushBatch(created_at=clock.now, events=rows)
    store.apply(batch)
    store.apply(batch)
    stored = store.get_events(limit=10_000)
    assert [(e.ts_ms, e.user_id, e.event, json.loads(e.data), e.day) for e in stored] == [
        (ts, user, name, json.loads(data), d) for ts, user, name, data, d in rows
    ]


def test_event_stream_keeps_data_and_prune_drops_expired(
    store: Store, make_analytics: AnalyticsFactory, clock: FakeClock
) -> None:
    """Every tracked event is stored with its data; ``prune`` deletes what is older than
    ``event_ttl`` and nothing else (counters stay)."""
    analytics = make_analytics(store, event_ttl=timedelta(hours=2))
    first_at = clock.now
    data = {"step": 1, "nested": {"list": [1, "x", None, True, 2.5]}, "name": "Grüße 🎮"}
    analytics.track("tutorial.step", "u1", data)
    analytics.track("credits.earn", "u2", {"amount": 5})
    late_at = clock.advance(hours=3)
    analytics.track("tutorial.step", "u1", {"step": 2})
    analytics.flush()

    events = store.get_events()
    assert [(e.user_id, e.event) for e in events] == [
        ("u1", "tutorial.step"),
        ("u2", "credits.earn"),
        ("u1", "tutorial.step"),
    ]
    assert json.loads(events[0].data) == data
    assert [e.ts for e in events] == [first_at, first_at, late_at]
    assert {e.day for e in events} == {"2025-03-14"}
    assert [json.loads(e.data)["step"] for e in store.get_events("u1")] == [1, 2]

    result = analytics.prune()
    assert result.events_deleted == 2
    assert [(e.user_id, e.ts) for e in store.get_events()] == [("u1", late_at)]
    assert store.get_day("2025-03-14")["creditsEarned"] == 5
    assert analytics.prune().events_deleted == 0


# -- sessions ---------------------------------------------------------------------------


def test_prune_closes_idle_sessions(
    store: Store, make_analytics: AnalyticsFactory, clock: FakeClock
) -> None:
    """A session whose last mark is more than ``idle_timeout`` ago has ended there: the
    prune job records it (``timedOut``, ended at its last mark), which changes no figure
    (its seconds so far were counted), and it no longer counts as active. A logout
    later than ``idle_timeout`` after the last mark ends nothing."""
    analytics = make_analytics(store, idle_timeout=timedelta(minutes=30))
    analytics.on_login("stale", "s")
    analytics.on_login("timed", "t")
    clock.advance(120)
    analytics.track("dungeon.complete", "stale")  # its last mark: 120 s in
    clock.advance(60)
    analytics.on_logout("timed")
    clock.advance(hours=1)
    analytics.on_login("fresh", "f")
    analytics.flush()
    before = store.get_day("2025-03-14")
    assert analytics.get_metrics().active_sessions == 1  # "stale" is idle already

    assert analytics.prune().sessions_timed_out == 1
    assert store.get_day("2025-03-14") == before
    (stale,) = store.get_sessions("stale")
    assert stale.timed_out
    assert stale.duration_s == 120
    assert stale.logout_at == stale.last_at == stale.login_at + timedelta(seconds=120)
    assert not store.get_sessions("timed")[0].timed_out
    assert store.get_sessions("fresh")[0].logout_at is None

    metrics = analytics.get_metrics()
    assert metrics.active_sessions == 1
    assert metrics.avg_session_min == 2  # (120 + 180 + 0) s / 3 sessions = 1.67 min
    assert metrics.today is not None
    assert metrics.today["totalSessionS"] == 300
    assert store.get_month("2025-03").timed_sessions == 3

    # A late logout past the timeout changes nothing.
    clock.advance(60)
    analytics.on_logout("stale")
    analytics.flush()
    assert store.get_sessions("stale")[0].duration_s == 120
    assert store.get_day("2025-03-14")["totalSessionS"] == 300
    assert analytics.prune().sessions_timed_out == 0


@pytest.mark.parametrize("flush_order", ["login_first", "logout_first"])
def test_logout_in_another_instance_closes_session(
    store: Store,
    other_store: Store,
    make_analytics: AnalyticsFactory,
    clock: FakeClock,
    flush_order: str,
) -> None:
    """A logout handled by a process that did not see the login closes the session,
    whichever process flushes first (the seed dropped such a logout)."""
    a = make_analytics(store)
    b = make_analytics(other_store)
    login_at = clock.now
    a.on_login("u1", "alice")
    logout_at = clock.advance(90)
    b.on_logout("u1")
    if flush_order == "login_first":
        a.flush()
        assert store.count_open_sessions() == 1
        b.flush()
    else:
        b.flush()
        assert store.get_sessions("u1") == []
        a.flush()

    (session,) = other_store.get_sessions("u1")
    assert (session.login_at, session.logout_at) == (login_at, logout_at)
    assert session.duration_s == 90
    assert session.username == "alice"
    assert not session.timed_out
    assert store.get_day("2025-03-14")["totalSessionS"] == 90
    metrics = b.get_metrics()
    assert metrics.active_sessions == 0
    assert metrics.avg_session_min == 2  # 1.5 min rounds half up


def test_stray_logout_does_not_close_a_later_login(
    store: Store, other_store: Store, make_analytics: AnalyticsFactory, clock: FakeClock
) -> None:
    """A logout with no session before it must not end a session that starts later."""
    a = make_analytics(store)
    b = make_analytics(other_store)
    b.on_logout("u1")
    b.flush()
    clock.advance(30)
    a.on_login("u1")
    a.flush()
    (session,) = store.get_sessions("u1")
    assert session.logout_at is None
    assert store.count_open_sessions() == 1


def test_late_logout_ends_the_session_it_falls_in(
    store: Store, other_store: Store, make_analytics: AnalyticsFactory, clock: FakeClock
) -> None:
    """A logout that reaches the store late ends the session open at its time (the
    first logout after a login ends it), never one that started after it."""
    a = make_analytics(store)
    b = make_analytics(other_store)
    a.on_login("u1")
    a.flush()
    clock.advance(10)
    b.on_logout("u1")  # held in b's buffer for a while
    clock.advance(10)
    a.on_logout("u1")
    clock.advance(10)
    newer_login = clock.now
    a.on_login("u1")
    a.flush()
    b.flush()
    sessions = store.get_sessions("u1")
    assert [s.duration_s for s in sessions] == [10, 0]
    assert (sessions[1].login_at, sessions[1].logout_at) == (newer_login, None)
    assert store.count_open_sessions() == 1
    assert store.get_day("2025-03-14")["totalSessionS"] == 10


@pytest.mark.parametrize("flush_order", ["second_login_first", "logout_first"])
def test_a_logout_from_another_process_ends_the_session_before_a_second_login(
    store: Store,
    other_store: Store,
    make_analytics: AnalyticsFactory,
    clock: FakeClock,
    flush_order: str,
) -> None:
    """Process A sees login, login, logout; process B the logout of the first session.

    As far as A's marks go, the second login (within ``idle_timeout``) continues one
    session of 240 s. Whichever process flushes first, the store ends up with B's logout
    ending the first session and the second login starting the next: the real durations
    (60 s and 120 s), not A's alone.
    """
    a = make_analytics(store)
    b = make_analytics(other_store)
    first_login = clock.now
    a.on_login("u1")
    logout_1 = clock.advance(60)
    b.on_logout("u1")
    second_login = clock.advance(60)
    a.on_login("u1")
    logout_2 = clock.advance(120)
    a.on_logout("u1")
    if flush_order == "second_login_first":
        a.flush()
        assert [s.duration_s for s in store.get_sessions("u1")] == [240]  # A's guess
        b.flush()
    else:
        b.flush()
        a.flush()

    sessions = other_store.get_sessions("u1")
    assert [(s.login_at, s.logout_at, s.duration_s) for s in sessions] == [
        (first_login, logout_1, 60),
        (second_login, logout_2, 120),
    ]
    assert store.get_day("2025-03-14")["totalSessionS"] == 180
    month = store.get_month("2025-03")
    assert (month.timed_sessions, month.timed_session_s) == (2, 180)
    assert store.count_open_sessions() == 0


def test_a_late_logout_splitting_a_session_takes_its_seconds_back(
    store: Store, other_store: Store, make_analytics: AnalyticsFactory, clock: FakeClock
) -> None:
    """A's login and second login 30 s later are one session of 30 s so far; B's logout
    a millisecond after the first login ends it at 0 s, and the second login starts a
    second session (0 s so far): the month's sessions become 2 and its seconds 0."""
    a = make_analytics(store)
    b = make_analytics(other_store)
    a.on_login("u1")
    clock.advance(0.001)
    b.on_logout("u1")
    clock.advance(29.999)
    a.on_login("u1")
    a.flush()
    month = store.get_month("2025-03")
    assert (month.timed_sessions, month.timed_session_s) == (1, 30)
    b.flush()
    assert [s.duration_s for s in store.get_sessions("u1")] == [0, 0]
    assert [s.logout_at is None for s in store.get_sessions("u1")] == [False, True]
    month = store.get_month("2025-03")
    assert (month.timed_sessions, month.timed_session_s) == (2, 0)
    assert store.get_day("2025-03-14")["totalSessionS"] == 0


def test_a_logout_after_a_logout_changes_nothing(
    store: Store, other_store: Store, make_analytics: AnalyticsFactory, clock: FakeClock
) -> None:
    """A logout with no session open ends nothing, whatever the order the processes
    flush in (the second login, 60 s after the first, continues the session)."""
    a = make_analytics(store)
    b = make_analytics(other_store)
    a.on_login("u1")
    clock.advance(60)
    a.on_login("u1")
    clock.advance(20)
    a.on_logout("u1")
    clock.advance(20)
    b.on_logout("u1")  # after both sessions
    a.flush()
    b.flush()
    assert [s.duration_s for s in store.get_sessions("u1")] == [80]
    assert store.get_day("2025-03-14")["totalSessionS"] == 80
    assert b.stats()["logouts_without_session"] == 1


def test_logouts_without_session_are_counted_once_as_of_when_they_were_stored(
    store: Store, other_store: Store, make_analytics: AnalyticsFactory, clock: FakeClock
) -> None:
    """The figure is per process and counts a logout when it is stored: one whose
    player's login another worker has not flushed yet ends no session *then* and is
    counted, though that login, stored later, ends its session at this logout (the
    figure only grows). So summed over the workers it can exceed the logouts that end
    no session in the end. A retried batch never counts its logouts a second time."""
    a = make_analytics(store)
    faulty = FaultyStore(other_store)
    b = make_analytics(faulty)
    a.on_login("u1")
    clock.advance(10)
    b.on_logout("u1")
    b.flush()  # before the login reaches the store
    a.flush()
    assert [s.duration_s for s in store.get_sessions("u1")] == [10]
    assert (a.stats()["logouts_without_session"], b.stats()["logouts_without_session"]) == (0, 1)

    b.on_logout("ghost")  # no login anywhere
    faulty.fail_after(1)  # committed, then an error: the retry is a duplicate
    with pytest.raises(StoreError):
        b.flush()
    b.flush()
    b.on_logout("ghost")
    b.flush()
    # u1's, and the second ghost's (after a logout); the first ghost's batch reported an
    # error after its commit, and its retry is a duplicate that counts nothing.
    assert b.stats()["logouts_without_session"] == 2


def test_late_logouts_end_the_session_they_fall_in(store: Store, clock: FakeClock) -> None:
    """Marks applied directly: a late logout inside a session ends it there and the
    next stored mark starts a new one; later ones change nothing and are counted as
    ending no session."""
    day, month = "2025-03-14", "2025-03"
    t0 = to_ms(clock.now)

    def login(origin: str, seq: int, at_s: int) -> Login:
        return (f"{origin}-{seq}", "u1", t0 + at_s * 1000, origin, seq, None, day, month)

    def logout(origin: str, seq: int, at_s: int) -> Logout:
        return (f"{origin}-{seq}", "u1", t0 + at_s * 1000, origin, seq)

    store.apply(
        FlushBatch(
            created_at=clock.now,
            logins=[login("a", 1, 0), login("a", 2, 100)],
            logouts=[logout("a", 3, 150)],
        )
    )
    assert [s.duration_s for s in store.get_sessions("u1")] == [150]  # one session
    first = store.apply(FlushBatch(created_at=clock.now, logouts=[logout("b", 1, 10)]))
    assert first.unmatched_logouts == 0
    late = store.apply(
        FlushBatch(created_at=clock.now, logouts=[logout("c", 1, 40), logout("d", 1, 30)])
    )
    assert late.unmatched_logouts == 2
    assert [s.duration_s for s in store.get_sessions("u1")] == [10, 50]
    assert store.get_day(day)["totalSessionS"] == 60
    figures = store.get_month(month)
    assert (figures.timed_sessions, figures.timed_session_s) == (2, 60)


def test_active_sessions_count_every_instance(
    store: Store, other_store: Store, make_analytics: AnalyticsFactory, clock: FakeClock
) -> None:
    """``activeSessions`` is cluster-wide, not one process's map (the seed's defect)."""
    a = make_analytics(store)
    b = make_analytics(other_store)
    a.on_login("u1")
    a.on_login("u2")
    b.on_login("u3")
    b.flush()
    assert a.get_metrics().active_sessions == 3
    clock.advance(10)
    b.on_logout("u1")  # a's session, closed through b
    a.on_logout("u2")
    b.flush()
    assert a.get_metrics().active_sessions == 1
    assert b.get_metrics().active_sessions == 1


def test_a_second_login_within_idle_timeout_continues_the_session(
    store: Store, make_analytics: AnalyticsFactory, clock: FakeClock
) -> None:
    """A reconnect (a login with a session open) is the same session: one session of
    60 s so far, still open."""
    analytics = make_analytics(store)
    analytics.on_login("u1")
    clock.advance(60)
    analytics.on_login("u1")
    metrics = analytics.get_metrics()
    assert [s.duration_s for s in store.get_sessions("u1")] == [60]
    assert [s.logout_at is None for s in store.get_sessions("u1")] == [True]
    assert (metrics.dau, metrics.active_sessions) == (1, 1)
    assert store.get_day("2025-03-14")["sessionCount"] == 1


# -- reads ------------------------------------------------------------------------------


def test_recent_days_newest_first_limited_to_30(
    store: Store, make_analytics: AnalyticsFactory, clock: FakeClock
) -> None:
    """``get_last_30_days`` is the newest 30 daily documents, newest first."""
    analytics = make_analytics(store)
    start = datetime(2025, 2, 1, 10, tzinfo=UTC)
    clock.set(start)
    for offset in range(35):
        clock.set(start + timedelta(days=offset))
        analytics.track("dungeon.complete", "u1")
        for _ in range(offset % 3):
            analytics.track("craft.complete", "u1")
        if offset % 7 == 0:
            analytics.flush()
    days = analytics.get_last_30_days()
    expected = [(start + timedelta(days=offset)).date().isoformat() for offset in range(34, 4, -1)]
    assert [d.day for d in days] == expected
    assert [d["craftsCompleted"] for d in days] == [offset % 3 for offset in range(34, 4, -1)]
    months = {d.day: d.month for d in days}
    assert (months["2025-02-28"], months["2025-03-01"]) == ("2025-02", "2025-03")
    assert store.recent_days(3) == days[:3]


def test_get_month_figures(
    store: Store, make_analytics: AnalyticsFactory, clock: FakeClock
) -> None:
    """``get_month``: distinct users, and the sessions of a month with their seconds
    (0-second ones included)."""
    analytics = make_analytics(store)
    for user, seconds in [("u1", 100), ("u2", 0), ("u1", 50)]:
        analytics.on_login(user)
        clock.advance(seconds)
        analytics.on_logout(user)
    analytics.flush()
    month = store.get_month("2025-03")
    assert (month.mau, month.timed_sessions, month.timed_session_s) == (2, 3, 150)
    unknown = store.get_month("1999-01")
    assert (unknown.mau, unknown.timed_sessions, unknown.timed_session_s) == (0, 0, 0)
    assert store.get_day("1999-01-01") is None


def test_custom_counters_end_up_in_the_daily_dict(
    store: Store, make_analytics: AnalyticsFactory
) -> None:
    """A game's own counters sit beside the seed's fields, which keep working."""
    analytics = make_analytics(
        store, counters={"quest.complete": "questsCompleted", "gold.loot": ("goldLooted", "amount")}
    )
    analytics.track("quest.complete", "u1", {"quest": "q7"})
    analytics.track("quest.complete", "u2")
    analytics.track("gold.loot", "u1", {"amount": 120})
    analytics.track("gold.loot", "u2", {"amount": 5})
    analytics.track("gems.purchase", "u2", {"gems": 80})
    analytics.track("stripe.payment", "u2", {"amountCents": 499})
    (today,) = analytics.get_last_30_days()
    doc = today.to_dict()
    assert doc["questsCompleted"] == 2
    assert doc["goldLooted"] == 125
    assert (doc["gemsPurchased"], doc["stripeRevenue"]) == (80, 499)
    assert list(doc)[: 2 + len(DAILY_FIELDS)] == ["day", "month", *DAILY_FIELDS]
    assert analytics.get_metrics().to_dict()["today"]["goldLooted"] == 125


#: Players of :func:`test_sessions_since_is_the_sessions_reaching_the_moment`, fresh
#: for each example (the store is the test's, shared by its examples).
_SINCE_PLAYERS = iter(range(10**9))


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    st.lists(  # per player: (gap before, length) of each session, the last one maybe open
        st.tuples(
            st.lists(st.tuples(st.integers(0, 5), st.integers(0, 5)), max_size=4),
            st.booleans(),
        ),
        min_size=1,
        max_size=3,
    ),
    st.integers(0, 40),
)
def test_sessions_since_is_the_sessions_reaching_the_moment(
    store: Store, players: list[tuple[list[tuple[int, int]], bool]], since_s: int
) -> None:
    """What the walk reads of a batch's players: every stored session whose last mark is
    at or after the moment, and the open one whatever its age; no other. Sessions of a
    player follow each other (one may start in the millisecond the last ended), as the
    walk stores them; the moment falls before, inside, between and after them. The
    oracle is the definition over the sessions written."""
    base = to_ms(datetime(2025, 3, 14, 12, tzinfo=UTC))
    written: list[Any] = []
    for runs, last_open in players:
        user, at = f"since-{next(_SINCE_PLAYERS)}", base
        for n, (gap, length) in enumerate(runs):
            login = at + gap * 1000
            last = login + length * 1000
            open_ = last_open and n == len(runs) - 1
            written.append(
                (f"{user}-{n}", user, login, "w", n, None, "2025-03-14", "2025-03")
                + ((None, 0, False, last) if open_ else (last, length, False, last))
            )
            at = last
    since = base + since_s * 1000
    users = {session[1] for session in written} | {f"since-{next(_SINCE_PLAYERS)}"}
    store.run_in_transaction(lambda tx: tx.save_sessions(written))
    found = store.run_in_transaction(lambda tx: tx.sessions_since(users, since))
    expected = [s for s in written if s[8] is None or s[11] >= since]
    assert sorted(found) == sorted(expected)


GOLD = {"gold.loot": CounterRule("goldLooted", "amount", decimal=True)}


@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    st.lists(
        st.tuples(
            st.integers(0, 1),  # which process
            st.one_of(
                st.integers(0, 10**6),
                st.decimals(0, 10**6, places=DECIMAL_PLACES).map(float),
            ),
        ),
        max_size=25,
    )
)
def test_a_decimal_counter_sums_exactly_across_processes(
    store: Store,
    other_store: Store,
    make_analytics: AnalyticsFactory,
    calls: list[tuple[int, float]],
) -> None:
    """Amounts of up to six decimals, from two processes flushing in any order, add up
    to their exact decimal sum (``0.1 + 0.2`` is 0.3), today, in the day's history and
    in the all-time totals: the oracle is Python's Decimal over the amounts as written."""
    workers = [make_analytics(store, counters=GOLD), make_analytics(other_store, counters=GOLD)]
    before = decode_counters(store.get_totals()).get("goldLooted", 0)
    today = workers[0].get_metrics().to_dict()["today"]["goldLooted"]
    for which, amount in calls:
        workers[which].track("gold.loot", f"u{which}", {"amount": amount})
        if amount % 3 == 0:
            workers[1 - which].flush()
    for worker in workers:
        worker.flush()
    expected = sum((Decimal(repr(amount)) for _, amount in calls), Decimal(0))
    for worker in workers:
        assert worker.get_metrics().to_dict()["today"]["goldLooted"] == today + expected
    days = store.recent_days(1)
    stored = days[0]["goldLooted"] if days else Decimal(0)
    assert stored == today + expected and isinstance(stored, Decimal | int)
    assert decode_counters(store.get_totals()).get("goldLooted", 0) == before + expected


def test_amounts_are_exact_integers_unless_the_counter_is_decimal(
    store: Store, make_analytics: AnalyticsFactory
) -> None:
    """The issue's case: 0.1 + 0.2 credits spent showed 0.30000000000000004. An integer
    counter refuses fractions (an integral float counts as the int); a decimal counter
    sums them exactly and refuses what it cannot keep (a seventh decimal, a float's own
    binary error); every reader shows the exact figure."""
    analytics = make_analytics(store, counters=GOLD)
    analytics.track("credits.spend", "u1", {"amount": 0.1})
    analytics.track("credits.spend", "u1", {"amount": 0.2})
    analytics.track("credits.spend", "u1", {"amount": 3.0})
    analytics.track("gold.loot", "u1", {"amount": 0.1})
    analytics.track("gold.loot", "u1", {"amount": 0.2})
    analytics.track("gold.loot", "u1", {"amount": 2})
    analytics.track("gold.loot", "u1", {"amount": 0.1 + 0.2})  # 0.30000000000000004
    analytics.track("gold.loot", "u1", {"amount": 1e-7})
    assert analytics.stats()["rejected"] == 4
    (day,) = analytics.get_last_30_days()
    doc = day.to_dict()
    assert doc["creditsSpent"] == 3 and type(doc["creditsSpent"]) is int
    assert doc["goldLooted"] == Decimal("2.3") and str(doc["goldLooted"]) == "2.3"
    assert analytics.get_metrics().to_dict()["today"]["goldLooted"] == Decimal("2.3")
    strict = make_analytics(open_store("memory://"), counters=GOLD, strict=True)
    with pytest.raises(ValidationError, match="creditsSpent is an integer counter"):
        strict.track("credits.spend", "u1", {"amount": 0.1})
    with pytest.raises(ValidationError, match="more than 6 decimal places"):
        strict.track("gold.loot", "u1", {"amount": 0.1 + 0.2})


def test_timezone_day_keys(
    store: Store, make_analytics: AnalyticsFactory, clock: FakeClock
) -> None:
    """Day and month keys follow ``tz``, across midnight, month end and both DST switches."""
    analytics = make_analytics(store, tz="America/New_York")
    moments = [  # (UTC moment, local day in New York)
        ("2025-03-09 05:30:00", "2025-03-09"),  # 00:30 EST
        ("2025-03-10 03:59:59", "2025-03-09"),  # 23:59:59 EDT, a 23-hour day
        ("2025-03-10 04:00:00", "2025-03-10"),  # 00:00 EDT
        ("2025-03-15 03:30:00", "2025-03-14"),  # 23:30 EDT
        ("2025-03-15 04:30:00", "2025-03-15"),
        ("2025-04-01 03:59:00", "2025-03-31"),  # month end, local
        ("2025-04-01 04:00:00", "2025-04-01"),
        ("2025-11-02 04:30:00", "2025-11-02"),  # 00:30 EDT
        ("2025-11-03 04:30:00", "2025-11-02"),  # 23:30 EST, a 25-hour day
        ("2025-11-03 05:00:00", "2025-11-03"),
    ]
    expected: dict[str, int] = {}
    for moment, local_day in moments:
        clock.set(at(moment))
        analytics.track("dungeon.complete", "u1")
        expected[local_day] = expected.get(local_day, 0) + 1
    analytics.on_login("u1")
    metrics = analytics.get_metrics()
    found = {d.day: (d.month, d["dungeonsRun"]) for d in store.recent_days()}
    assert found == {day: (day[:7], count) for day, count in expected.items()}
    assert metrics.today is not None
    assert metrics.today.day == "2025-11-03"
    assert [e.day for e in store.get_events()] == [local for _, local in moments]


@pytest.mark.parametrize(
    ("tz", "login_at", "seconds", "login_day", "next_day"),
    [
        ("UTC", "2025-03-14 23:59:30", 90, "2025-03-14", "2025-03-15"),
        ("UTC", "2025-03-31 23:59:00", 120, "2025-03-31", "2025-04-01"),
        ("America/New_York", "2025-04-01 03:59:00", 120, "2025-03-31", "2025-04-01"),
    ],
    ids=["next-day", "next-month", "next-month-new-york"],
)
def test_session_seconds_belong_to_login_day(
    store: Store,
    make_analytics: AnalyticsFactory,
    clock: FakeClock,
    tz: str,
    login_at: str,
    seconds: int,
    login_day: str,
    next_day: str,
) -> None:
    """A session that ends after midnight (or month end) counts on its start day and
    month; the logout makes the player active on its own day, nothing more."""
    analytics = make_analytics(store, tz=tz)
    clock.set(at(login_at))
    analytics.on_login("u1")
    clock.advance(seconds)
    analytics.on_logout("u1")
    metrics = analytics.get_metrics()
    assert store.get_day(login_day)["totalSessionS"] == seconds
    assert store.get_day(next_day).counters == {"dau": 1}
    assert metrics.today.counters == {"dau": 1}  # no session started on the logout day
    login_month, next_month = store.get_month(login_day[:7]), store.get_month(next_day[:7])
    assert (login_month.timed_sessions, login_month.timed_session_s) == (1, seconds)
    if next_month.month != login_month.month:
        assert (next_month.mau, next_month.timed_sessions, metrics.avg_session_min) == (1, 0, 0)


@pytest.mark.parametrize(
    ("login_offset_us", "logout_offset_us", "expected_s"),
    [
        (0, 1_500_000, 2),
        (0, 2_500_000, 3),
        (0, 1_499_000, 1),
        (0, 500_000, 1),
        (0, 499_000, 0),
        (0, 0, 0),
        (0, 59_999_000, 60),
        # Both ends are truncated to milliseconds first, as JavaScript Dates are:
        # 1.5005 s - 0.0009 s is 1.4996 s exactly, but 1500 ms - 0 ms rounds to 2.
        (900, 1_500_500, 2),
    ],
)
def test_duration_rounds_half_up_like_math_round(
    store: Store,
    make_analytics: AnalyticsFactory,
    clock: FakeClock,
    login_offset_us: int,
    logout_offset_us: int,
    expected_s: int,
) -> None:
    """durationS is JavaScript's Math.round of the seconds (halves up, not to even)."""
    analytics = make_analytics(store)
    base = clock.now
    clock.set(base + timedelta(microseconds=login_offset_us))
    analytics.on_login("u1")
    clock.set(base + timedelta(microseconds=logout_offset_us))
    analytics.on_logout("u1")
    analytics.flush()
    (session,) = store.get_sessions("u1")
    assert session.duration_s == expected_s
    assert store.get_day("2025-03-14")["totalSessionS"] == expected_s
    assert store.get_month("2025-03").timed_sessions == 1  # 0-second sessions too


@pytest.mark.parametrize(
    ("durations_ms", "expected_min"),
    [
        ([90_000], 2),  # 1.5 min
        ([150_000], 3),  # 2.5 min
        ([89_000], 1),
        ([30_000], 1),  # 0.5 min
        ([29_000], 0),
        ([60_000, 120_000], 2),  # mean 90 s
        ([400, 60_000], 1),  # 0 s and 60 s: mean 30 s, 0.5 min
        ([400, 400, 60_000], 0),  # 0-second sessions are in the mean: 20 s
        ([1_000, 2_000], 0),
        ([1_500, 178_500], 2),  # 2 s and 179 s: mean 90.5 s
        ([], 0),
    ],
)
def test_avg_session_min_rounds_half_up(
    store: Store,
    make_analytics: AnalyticsFactory,
    clock: FakeClock,
    durations_ms: list[int],
    expected_min: int,
) -> None:
    """avgSessionMin is Math.round(mean durationS of this month's sessions / 60)."""
    analytics = make_analytics(store)
    start = clock.now
    users = [f"u{i}" for i in range(len(durations_ms))]
    for user in users:
        analytics.on_login(user)
    for user, duration in sorted(zip(users, durations_ms, strict=True), key=lambda x: x[1]):
        clock.set(start + timedelta(milliseconds=duration))
        analytics.on_logout(user)
    assert analytics.get_metrics().avg_session_min == expected_min


def test_a_logout_stamped_before_its_login_ends_nothing(
    store: Store, make_analytics: AnalyticsFactory, clock: FakeClock
) -> None:
    """Sessions follow the marks' times, not the calls' order: a logout stamped before
    the login (the clock stepped back 30 s) comes first in the walk and ends nothing;
    the session stays open until the player's next mark (or ``idle_timeout``)."""
    analytics = make_analytics(store)
    login_at = clock.now
    analytics.on_login("u1")
    clock.advance(-30)
    analytics.on_logout("u1")
    metrics = analytics.get_metrics()
    (session,) = store.get_sessions("u1")
    assert (session.login_at, session.logout_at, session.duration_s) == (login_at, None, 0)
    assert (metrics.active_sessions, metrics.avg_session_min) == (1, 0)
    assert analytics.stats()["logouts_without_session"] == 1
    clock.advance(40)  # 10 s after the login
    analytics.on_logout("u1")
    analytics.flush()
    (session,) = store.get_sessions("u1")
    assert session.duration_s == 10
    assert store.count_open_sessions() == 0


# -- money, expiry, prune ---------------------------------------------------------------


def test_two_payments_of_one_player_in_one_flush_add_up(
    store: Store, make_analytics: AnalyticsFactory
) -> None:
    """Payments are increments per (day, player) inside a flush and across flushes:
    two of one player in one batch are both counted, in the per-player revenue the
    KPIs read and in the day's ``stripeRevenue``."""
    analytics = make_analytics(store)
    analytics.track("stripe.payment", "u1", {"amountCents": 499})
    analytics.track("stripe.payment", "u1", {"amountCents": 1000})
    analytics.track("stripe.payment", "u2", {"amountCents": 1})
    analytics.flush()
    day = "2025-03-14"
    assert store.user_revenue_between(day, day) == {day: {"u1": 1499, "u2": 1}}
    assert store.get_day(day)["stripeRevenue"] == 1500
    analytics.track("stripe.payment", "u1", {"amountCents": 1})
    analytics.track("stripe.payment", "u1", {"amountCents": 2})
    analytics.flush()
    assert store.user_revenue_between(day, day) == {day: {"u1": 1502, "u2": 1}}
    assert store.get_day(day)["stripeRevenue"] == 1503
    assert store.first_payments_between(day, day) == {day: {"u1", "u2"}}


def test_an_event_exactly_event_ttl_old_is_expired(
    backend: Backend, store: Store, make_analytics: AnalyticsFactory, clock: FakeClock
) -> None:
    """The TTL boundary, one definition for every backend (the documented one): an event is
    expired once it is ``event_ttl`` old, the boundary included; younger, it is kept."""
    ttl = timedelta(hours=2)
    analytics = make_analytics(store, event_ttl=ttl)
    analytics.track("old", "u1")
    clock.advance(1)
    analytics.track("young", "u1")
    clock.advance(ttl.total_seconds() - 1)  # old: exactly ttl old
    analytics.flush()
    assert analytics.prune().events_deleted == 1
    assert [e.event for e in store.get_events()] == ["young"]
    clock.advance(0.5)  # young: ttl - 0.5 s old, kept
    assert analytics.prune().events_deleted == 0
    if backend.name != "mongo":  # nx-27017 compares dates to the second, not the ms
        clock.advance(0.499)  # young: ttl - 1 ms old, kept
        assert analytics.prune().events_deleted == 0
        clock.advance(0.001)
    else:
        clock.advance(0.5)
    assert analytics.prune().events_deleted == 1
    assert store.get_events() == []


def test_prune_deletes_expired_events_in_chunks_a_flush_gets_between(
    store: Store,
    other_store: Store,
    make_analytics: AnalyticsFactory,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Expired events go in transactions of at most ``prune_chunk`` events, and
    between two of them nothing is held: another process's flush, started during the
    prune, is stored before the prune ends (it would wait for all of it otherwise)."""
    store.prune_chunk = 40
    day = clock.now.strftime("%Y-%m-%d")
    old = to_ms(clock.now)
    store.apply(
        FlushBatch(
            created_at=clock.now,
            events=[EventRecord(old + i, "u1", "old", "{}", day).row for i in range(130)],
        )
    )
    clock.advance(hours=3)
    pruner = make_analytics(store, event_ttl=timedelta(hours=1))
    writer = make_analytics(other_store)
    writer.track("dungeon.complete", "u2")
    chunks: list[int] = []

    def counting_transaction(real: Callable[[], Any]) -> Callable[[], Any]:
        @contextlib.contextmanager
        def transaction() -> Iterator[Any]:
            with real() as tx:
                real_tx_delete = tx.delete_events_until

                def delete(last: datetime, limit: int) -> int:
                    deleted = real_tx_delete(last, limit)
                    chunks.append(deleted)
                    return deleted

                monkeypatch.setattr(tx, "delete_events_until", delete)
                yield tx

        return transaction

    flushed_between: list[bool] = []
    real_sleep = time.sleep
    pruning = threading.current_thread()  # prune() runs here; time.sleep is every thread's

    def pause(seconds: float) -> None:
        if seconds == 0 or threading.current_thread() is not pruning:
            # The pacer letting other threads in (see .pacing), or the writer's own wait
            # (a MongoDB conflict's backoff): not the prune's gap between chunks.
            real_sleep(seconds)
            return
        if not flushed_between:  # the first pause: a flush from another thread
            thread = threading.Thread(target=writer.flush)
            thread.start()
            thread.join(10.0)
            flushed_between.append(not thread.is_alive())

    monkeypatch.setattr(store, "transaction", counting_transaction(store.transaction))
    monkeypatch.setattr("gso_analytics.store.time.sleep", pause)
    assert pruner.prune().events_deleted == 130
    assert chunks == [40, 40, 40, 10]
    assert flushed_between == [True], "a flush waited for the whole prune"
    assert store.get_day(day)["dungeonsRun"] == 1
    assert [e.event for e in store.get_events()] == ["dungeon.complete"]


# -- all-time totals ----------------------------------------------------------------------


def _summed(store: Store) -> dict[str, Any]:
    """The totals as the sum of every stored day and month: the rule they must keep."""
    summed: dict[str, Any] = {}
    days = store.recent_days(10_000)
    for fields in [d.counters for d in days] + [
        {"mau": m.mau, "timedSessions": m.timed_sessions, "timedSessionS": m.timed_session_s}
        for m in (store.get_month(month) for month in sorted({d.month for d in days}))
    ]:
        for field, value in fields.items():
            summed[field] = summed.get(field, 0) + value
    return {field: value for field, value in summed.items() if value}


def _net(totals: dict[str, Any]) -> dict[str, Any]:
    """The exact all-time figures: each field less what was withdrawn from it."""
    net = {f: v for f, v in totals.items() if not f.endswith(WITHDRAWN)}
    for field, taken in totals.items():
        if field.endswith(WITHDRAWN):
            base = field.removesuffix(WITHDRAWN)
            net[base] = net.get(base, 0) - taken
    return {field: value for field, value in net.items() if value}


@pytest.mark.parametrize("seed", range(3))
def test_totals_are_exact_across_processes_and_never_drop_at_midnight(
    store: Store,
    other_store: Store,
    make_analytics: AnalyticsFactory,
    clock: FakeClock,
    seed: int,
) -> None:
    """Two processes write random work over three midnights, flushing in a random order:
    the totals equal an oracle kept from the calls, equal the sum of the days and
    months, and no counter total ever decreases (a day ending takes nothing back)."""
    import itertools
    import random

    rng = random.Random(seed)
    # The economy is passive here (no sessions of its own), so the sessions are the
    # logins' and logouts' alone, whose seconds the oracle knows.
    passive = ["credits.earn", "dungeon.complete"]
    writers = [make_analytics(s, passive_events=passive) for s in (store, other_store)]
    oracle = {"creditsEarned": 0, "dungeonsRun": 0, "sessionCount": 0, "timedSessionS": 0}
    seen: list[dict[str, Any]] = []
    clock.now = at("2025-03-13 23:00:00")
    for step in range(60):
        writer = rng.choice(writers)
        user = f"u{rng.randrange(4)}"
        amount = rng.randrange(1, 500)
        writer.track("credits.earn", user, {"amount": amount})
        oracle["creditsEarned"] += amount
        if rng.random() < 0.3:
            writer.track("dungeon.complete", user)
            oracle["dungeonsRun"] += 1
        if rng.random() < 0.2:
            # A whole session in one process, so its seconds are known here.
            writer.on_login(f"s{step}", "p")
            seconds = rng.randrange(1, 300)
            clock.advance(seconds)
            writer.on_logout(f"s{step}")
            oracle["sessionCount"] += 1
            oracle["timedSessionS"] += seconds
        clock.advance(rng.randrange(60, 4 * 3600))
        if rng.random() < 0.4:
            rng.choice(writers).flush()
            seen.append(other_store.get_totals())
    for writer in rng.sample(writers, 2):
        writer.flush()
    seen.append(store.get_totals())

    totals = store.get_totals()
    assert {field: totals.get(field, 0) for field in oracle} == oracle
    assert totals["totalSessionS"] == oracle["timedSessionS"]
    assert len(store.recent_days(10_000)) >= 3  # the work did cross midnights
    assert _net(totals) == _summed(store)
    for before, after in itertools.pairwise(seen):
        for field in ("creditsEarned", "dungeonsRun", "sessionCount", "newUsers", "dau"):
            assert after.get(field, 0) >= before.get(field, 0), (field, before, after)


def test_a_late_logout_is_withdrawn_from_the_totals_never_subtracted(
    store: Store,
    other_store: Store,
    make_analytics: AnalyticsFactory,
    clock: FakeClock,
) -> None:
    """A logout flushed late by another worker ends a stored session earlier: the
    day's seconds go down, every total only grows, and total minus withdrawn is the
    sum of the days (what a Prometheus counter needs: a decrease reads as a restart)."""
    first, late = make_analytics(store), make_analytics(other_store)
    first.on_login("u1", "alice")
    clock.advance(100)
    late.on_logout("u1")  # buffered in the other worker
    clock.advance(500)
    first.on_logout("u1")
    first.flush()
    before = store.get_totals()
    assert before["totalSessionS"] == 600
    late.flush()
    after = store.get_totals()
    assert store.recent_days(1)[0].counters["totalSessionS"] == 100
    for field, value in before.items():
        assert after.get(field, 0) >= value, (field, before, after)
    assert after["totalSessionS" + WITHDRAWN] == 500
    assert after["timedSessionS" + WITHDRAWN] == 500
    assert _net(after) == _summed(store)


def test_a_retried_batch_adds_to_the_totals_once(
    store: Store, other_store: Store, clock: FakeClock
) -> None:
    batch = make_batch(clock.now)
    store.apply(batch)
    once = store.get_totals()
    assert once["creditsEarned"] == 50
    assert other_store.apply(batch).duplicate
    assert other_store.get_totals() == once


# -- process heartbeats ---------------------------------------------------------------------


def _beat(process: str, at_: datetime, lifetime_s: float, flushed: int) -> Heartbeat:
    host, _, pid = process.partition(":")
    return Heartbeat(
        process,
        host,
        int(pid),
        at_,
        at_ + timedelta(seconds=lifetime_s),
        {"flushed": flushed, "buffered": 3},
        {"webhook": {"delivered": 7}},
    )


def test_heartbeats_are_replaced_per_process_and_read_until_they_expire(
    store: Store, other_store: Store
) -> None:
    """Each process keeps one record (the newest), every handle reads every live one,
    a record is live until its ``expires_at`` (excluded), and prune-time cleanup
    deletes only records expired before the given moment."""
    t0 = at("2025-03-14 12:00:00.250")
    assert store.live_heartbeats(t0) == []
    store.save_heartbeat(_beat("web-1:10", t0, 30, 5))
    other_store.save_heartbeat(_beat("web-2:10", t0, 90, 8))
    store.save_heartbeat(_beat("web-1:10", t0 + timedelta(seconds=10), 30, 9))

    live = other_store.live_heartbeats(t0 + timedelta(seconds=20))
    assert [(b.process, b.host, b.pid, b.stats["flushed"]) for b in live] == [
        ("web-1:10", "web-1", 10, 9),
        ("web-2:10", "web-2", 10, 8),
    ]
    assert live[0].at == t0 + timedelta(seconds=10)
    assert live[0].expires_at == t0 + timedelta(seconds=40)
    assert live[1].forwarders == {"webhook": {"delivered": 7}}
    assert live[1].stats == {"flushed": 8, "buffered": 3}

    assert [b.process for b in store.live_heartbeats(t0 + timedelta(seconds=40))] == ["web-2:10"]
    store.forget_heartbeats(t0 + timedelta(seconds=60))
    store.save_heartbeat(_beat("web-3:11", t0, 1, 1))
    store.forget_heartbeats(t0 + timedelta(seconds=60))
    assert [b.process for b in store.live_heartbeats(t0)] == ["web-2:10"]


def test_a_withdrawn_heartbeat_leaves_at_once_and_only_its_own(
    store: Store, other_store: Store
) -> None:
    """A worker that stops withdraws its record: gone for every handle before it expires,
    the other workers' records untouched; withdrawing a record that is not there (never
    written, or already expired and pruned) is no error."""
    t0 = at("2025-03-14 12:00:00.250")
    store.save_heartbeat(_beat("web-1:10", t0, 300, 5))
    store.save_heartbeat(_beat("web-1:11", t0, 300, 6))
    other_store.withdraw_heartbeat("web-1:10")
    assert [b.process for b in store.live_heartbeats(t0)] == ["web-1:11"]
    store.withdraw_heartbeat("web-1:10")
    store.withdraw_heartbeat("web-9:99")
    assert [b.process for b in other_store.live_heartbeats(t0)] == ["web-1:11"]


def test_a_workers_every_flush_writes_a_heartbeat_an_empty_one_too(
    store: Store, other_store: Store, make_analytics: AnalyticsFactory, clock: FakeClock
) -> None:
    analytics = make_analytics(store, flush_interval=30).start()
    analytics.flush()  # nothing buffered
    first = other_store.live_heartbeats(clock.now)
    assert [(b.pid, b.stats["flushed"], b.at) for b in first] == [(os.getpid(), 0, clock.now)]
    assert first[0].expires_at == clock.now + timedelta(seconds=150)  # 5 intervals
    analytics.track("credits.earn", "u1", {"amount": 1})
    clock.advance(5)
    analytics.flush()
    (beat,) = other_store.live_heartbeats(clock.now)
    assert (beat.stats["flushed"], beat.at) == (1, clock.now)
    assert other_store.live_heartbeats(clock.now + timedelta(seconds=150)) == []


def test_only_a_started_instance_is_a_worker_and_stop_withdraws_its_heartbeat(
    store: Store, other_store: Store, make_analytics: AnalyticsFactory, clock: FakeClock
) -> None:
    """A command or a script that flushes by hand (never started) writes no heartbeat,
    so it is not counted among the workers; a worker's graceful stop() withdraws its
    own record at once, the other workers' records untouched."""
    one_off = make_analytics(store)
    one_off.track("credits.earn", "u1", {"amount": 1})
    one_off.flush()
    one_off.get_metrics()
    assert other_store.live_heartbeats(clock.now) == []
    other_store.save_heartbeat(_beat("web-2:7", clock.now, 300, 1))
    worker = make_analytics(store, flush_interval=30).start()
    worker.flush()
    _, host, pid = process_identity()
    assert {(b.host, b.pid) for b in other_store.live_heartbeats(clock.now)} == {
        (host, pid),
        ("web-2", 7),
    }
    assert worker.stop()
    assert [b.process for b in other_store.live_heartbeats(clock.now)] == ["web-2:7"]
    assert [b.process for b in store.live_heartbeats(clock.now)] == ["web-2:7"]


def test_count_day_users_counts_each_user_once_in_the_range(store: Store, clock: FakeClock) -> None:
    """The rolling MAU30 of a scrape: distinct users of the days in [start, end]."""
    activity = {"2025-03-01": {"a", "b"}, "2025-03-02": {"b", "c"}, "2025-03-05": {"d"}}
    for day, users in activity.items():
        store.apply(
            FlushBatch(
                created_at=clock.now,
                day_users={day: users},
                months={day: day[:7]},
                counters={day: {"creditsEarned": 1}},
            )
        )
    assert store.count_day_users("2025-03-01", "2025-03-02") == 3
    assert store.count_day_users("2025-03-02", "2025-03-05") == 3
    assert store.count_day_users("2025-03-03", "2025-03-04") == 0
    assert store.count_day_users("2025-02-01", "2025-03-31") == len(set().union(*activity.values()))


# -- players' data rights: erase and export ------------------------------------------------

ALICE, ALICE_NAME = "player-alice-4711", "AliceWonderName"


def raw_dump(store: Store) -> str:
    """Every stored record of ``store``, as text, whatever the backend: what an erase
    must leave without the player's id or username."""
    from gso_analytics.backends.memory import MemoryStore
    from gso_analytics.backends.mongo import MongoStore
    from gso_analytics.backends.postgres import PostgresStore
    from gso_analytics.backends.sqlite import SQLiteStore

    if isinstance(store, MemoryStore):
        return repr(store._state)
    if isinstance(store, SQLiteStore):
        import sqlite3

        with contextlib.closing(sqlite3.connect(store.path)) as conn:
            sql = "SELECT name FROM sqlite_master WHERE type = 'table'"
            tables = [r[0] for r in conn.execute(sql)]
            return repr({t: conn.execute(f"SELECT * FROM {t}").fetchall() for t in tables})
    if isinstance(store, PostgresStore):
        sql = "SELECT tablename FROM pg_tables WHERE schemaname = %s"
        tables = [r[0] for r in store._read(sql, (store.schema,))]
        return repr({t: store._read(f"SELECT * FROM {{s}}.{t}") for t in tables})
    assert isinstance(store, MongoStore)
    db = store._db()
    return repr({name: list(db[name].find()) for name in db.list_collection_names()})


def _figures(store: Store, days: tuple[str, str]) -> dict[str, Any]:
    """The numbers an erase must not change: the days' counters, the month, the
    distinct counts behind retention and revenue, and the sessions' shape."""
    start, end = days
    return {
        "days": [d.to_dict() for d in store.days_between(start, end)],
        "month": store.get_month(start[:7]),
        "active": {d: len(u) for d, u in store.day_users_between(start, end).items()},
        "cohorts": {d: len(u) for d, u in store.first_seen_between(start, end).items()},
        "payers": {d: len(u) for d, u in store.first_payments_between(start, end).items()},
        "revenue": {
            d: sorted(p.values()) for d, p in store.user_revenue_between(start, end).items()
        },
        "users_with_sessions": len({s.user_id for s in store.sessions_between(start, end)}),
        "open": store.count_open_sessions(),
    }


def _play_two_days(a: Any, clock: FakeClock) -> None:
    a.on_login(ALICE, ALICE_NAME)
    a.track("stripe.payment", ALICE, {"amountCents": 499, "note": ALICE_NAME})
    a.on_login("bob", "Bob")
    clock.advance(minutes=30)
    a.on_logout(ALICE)
    a.track("credits.earn", "bob", {"amount": 5})
    a.flush()
    clock.advance(days=1)
    a.on_login(ALICE, ALICE_NAME)
    a.track("credits.earn", ALICE, {"amount": 7})
    a.flush()


def test_erase_removes_the_player_and_keeps_every_figure(
    store: Store, other_store: Store, make_analytics: AnalyticsFactory, clock: FakeClock
) -> None:
    """After the erase, with a call of the player still buffered in another worker and
    flushed after it: no stored record holds the id or the username, every figure of
    both days is what it was (plus the late call's own counters), the late call went to
    the same token, and the other player is untouched."""
    a = make_analytics(store, forwarders=[])
    worker = make_analytics(other_store, forwarders=[])
    _play_two_days(a, clock)
    clock.advance(minutes=10)
    worker.track("stripe.payment", ALICE, {"amountCents": 100})  # buffered in "another process"
    worker.on_logout(ALICE)
    days = ("2025-03-14", "2025-03-15")
    before = _figures(store, days)
    bob_before = store.export_user("bob")
    assert ALICE in raw_dump(store) and ALICE_NAME in raw_dump(store)

    receipt = a.erase_user(ALICE)
    assert receipt.pseudonymized["day_users"] == 2
    assert receipt.pseudonymized["sessions"] == 2
    assert receipt.deleted["events"] == 2
    assert not receipt.already_erased
    worker.flush()  # the late batch: its calls of the player must go to the token

    dump = raw_dump(store)
    assert ALICE not in dump and ALICE_NAME not in dump
    after = _figures(store, days)
    # The late call: one more payment of the same (renamed) payer on day 2, and the
    # logout closing the renamed open session; the distinct counts do not move.
    assert after["days"][1]["stripeRevenue"] == before["days"][1]["stripeRevenue"] + 100
    assert after["revenue"]["2025-03-15"] == [100]
    for key in ("active", "cohorts", "payers", "users_with_sessions"):
        assert after[key] == before[key], key
    assert after["month"].mau == before["month"].mau == 2
    # The late payment and logout end the renamed session 10 minutes after its login
    # (the session, open and 0 s so far, was counted already).
    assert after["month"].timed_sessions == before["month"].timed_sessions
    assert after["month"].timed_session_s == before["month"].timed_session_s + 600
    assert after["days"][0] == before["days"][0]
    assert after["open"] == before["open"] - 1
    tokens = {s.user_id for s in store.sessions_between(*days)} - {"bob"}
    assert len(tokens) == 1 and tokens.pop().startswith("erased-")
    assert store.export_user("bob") == bob_before
    again = a.erase_user(ALICE)
    assert again.already_erased and again.total == 0


def test_a_batch_retried_after_the_erase_stays_erased(store: Store, clock: FakeClock) -> None:
    """A batch applied before the erase and retried after it (an unknown outcome) is a
    duplicate; one applied for the first time after it (a dead letter replayed later)
    goes to the same token as the erased records."""
    from gso_analytics.erasure import keyed_hash

    def batch(n: int) -> FlushBatch:
        return FlushBatch(
            id=f"b{n}",
            created_at=clock(),
            day_users={"2025-03-14": {ALICE}},
            month_users={"2025-03": {ALICE}},
            months={"2025-03-14": "2025-03"},
            counters={"2025-03-14": {"creditsEarned": n}},
            events=[EventRecord(to_ms(clock()), ALICE, "credits.earn", "{}", "2025-03-14").row],
        )

    assert not store.apply(batch(1)).duplicate
    store.erase_user(ALICE, clock())
    assert store.apply(batch(1)).duplicate
    store.apply(batch(2))
    assert ALICE not in raw_dump(store)
    assert store.get_month("2025-03").mau == 1
    assert day_dict(store, "2025-03-14")["dau"] == 1
    assert day_dict(store, "2025-03-14")["creditsEarned"] == 3
    assert store.get_events(ALICE) == []
    # The tombstone is a keyed hash: the id is not in it, and only the store's key finds it.
    assert keyed_hash(store.erasure_key(), ALICE) in raw_dump(store)


def test_export_user_has_sessions_events_payments_and_days(
    store: Store, make_analytics: AnalyticsFactory, clock: FakeClock
) -> None:
    a = make_analytics(store, forwarders=[])
    _play_two_days(a, clock)
    export = a.export_user(ALICE)
    json.dumps(export)  # JSON-serializable as it is
    assert export["userId"] == ALICE
    assert [s["username"] for s in export["sessions"]] == [ALICE_NAME, ALICE_NAME]
    assert [s["durationS"] for s in export["sessions"]] == [1800, 0]
    assert export["sessions"][0]["loginAt"] == "2025-03-14T12:00:00.000Z"
    assert [(e["event"], e["data"]) for e in export["events"]] == [
        ("stripe.payment", {"amountCents": 499, "note": ALICE_NAME}),
        ("credits.earn", {"amount": 7}),
    ]
    assert export["daysActive"] == ["2025-03-14", "2025-03-15"]
    assert export["monthsActive"] == ["2025-03"]
    assert export["firstSeen"] == "2025-03-14"
    assert export["firstPayment"] == "2025-03-14"
    assert export["revenueCents"] == {"2025-03-14": 499}
    assert export["logouts"] == ["2025-03-14T12:30:00.000Z"]  # the marks are records too
    # The times of her activity, kept for late logouts: a login and a call each day.
    first, second = "2025-03-14T12:00:00.000Z", "2025-03-15T12:30:00.000Z"
    assert export["activity"] == [first, first, second, second]
    assert store.export_user("nobody")["sessions"] == []
    assert store.export_user("nobody")["logouts"] == []
    assert store.export_user("nobody")["activity"] == []


def test_erase_replaces_the_player_in_other_players_event_data(
    store: Store, make_analytics: AnalyticsFactory, clock: FakeClock
) -> None:
    """Other players' events naming the erased player by id or username, at any depth,
    keep their place with the token in those strings; the export returns them as
    ``mentions`` (without the other player's id) before the erase. Strings that merely
    contain the name, and numbers, are left alone."""
    a = make_analytics(store, forwarders=[])
    a.on_login(ALICE, ALICE_NAME)
    a.track("pvp.battle", "bob", {"opponent": ALICE, "won": True})
    a.track(
        "friend.request",
        "carol",
        {"to": ALICE, "meta": {"toName": ALICE_NAME, "list": [1, [ALICE], {"x": ALICE_NAME}]}},
    )
    a.track("chat.say", "dave", {"text": f"hi {ALICE_NAME}", "n": 4711})
    a.flush()
    mentions = a.export_user(ALICE)["mentions"]
    assert [m["event"] for m in mentions] == ["pvp.battle", "friend.request"]
    assert "bob" not in json.dumps(mentions)  # another player's id is not the player's data

    receipt = a.erase_user(ALICE)
    assert receipt.mentions == 2 and receipt.status == "erased"
    dump = raw_dump(store)
    assert ALICE not in dump.replace(f"hi {ALICE_NAME}", "")
    assert ALICE_NAME not in dump.replace(f"hi {ALICE_NAME}", "")
    by_user = {e.user_id: json.loads(e.data) for e in store.get_events(limit=100)}
    token = by_user["bob"]["opponent"]
    assert token.startswith("erased-") and by_user["bob"]["won"] is True
    assert by_user["carol"] == {
        "to": token,
        "meta": {"toName": token, "list": [1, [token], {"x": token}]},
    }
    assert by_user["dave"] == {"text": f"hi {ALICE_NAME}", "n": 4711}
    assert a.export_user(ALICE)["mentions"] == []
    assert a.erase_user(ALICE).mentions == 0


def test_export_after_erase_returns_what_the_token_holds(
    store: Store, make_analytics: AnalyticsFactory, clock: FakeClock
) -> None:
    """A returning player's calls land under the token; the export says the player was
    erased and, asked with ``after_erase``, returns the token's records."""
    a = make_analytics(store, forwarders=[])
    a.on_login(ALICE, ALICE_NAME)
    a.flush()
    assert a.export_user(ALICE)["erased"] is False
    a.erase_user(ALICE)
    clock.advance(days=1)
    a.on_login(ALICE, ALICE_NAME)
    a.track("stripe.payment", ALICE, {"amountCents": 250})
    plain = a.export_user(ALICE)
    assert plain["erased"] is True and plain["events"] == [] and plain["daysActive"] == []
    after = a.export_user(ALICE, after_erase=True)
    assert after["userId"] == ALICE and after["storedAs"].startswith("erased-")
    assert after["daysActive"] == ["2025-03-14", "2025-03-15"]
    assert after["events"] == []  # an erased player's events are not kept (see apply_batch)
    assert after["revenueCents"] == {"2025-03-15": 250}
    assert [s["username"] for s in after["sessions"]] == [None, None]
    assert a.export_user("nobody", after_erase=True)["erased"] is False


def test_opening_an_existing_store_refuses_a_prefix_without_tables(
    backend: Any, store: Store, store_url: str
) -> None:
    """What the commands that read or erase open: a prefix under which the database
    holds none of our tables (collections) is refused, and none is created."""
    if backend.name == "memory":
        pytest.skip("memory:// opens a new store every time")
    before = raw_dump(store)
    # PostgreSQL keeps a store in a schema of its own rather than under a prefix.
    option, refused = (
        ("schema=typo", "no gso_analytics store in schema 'typo'")
        if backend.name == "postgres"
        else ("prefix=typo_", "no gso_analytics store with prefix 'typo_'")
    )
    typo = store_url + ("&" if "?" in store_url else "?") + option
    with pytest.raises(ConfigurationError, match=refused):
        open_store(typo, existing=True)
    assert raw_dump(store) == before
    open_store(store_url, existing=True).close()


def test_an_erasure_secret_kept_apart_stays_out_of_the_store(
    store: Store, other_store: Store, make_analytics: AnalyticsFactory
) -> None:
    """The store keeps a check of the secret, never the secret; the store's own secret,
    given back from outside, is moved out (the tombstones still match); another secret
    is refused."""
    a = make_analytics(store, forwarders=[])
    a.on_login(ALICE, ALICE_NAME)
    a.erase_user(ALICE)
    own = store.erasure_key()
    assert own in raw_dump(store)
    other_store._erasure_key = None  # another process, started with the secret outside
    other_store.external_secret = own
    b = make_analytics(other_store, forwarders=[])
    b.on_login("bob")
    b.flush()
    assert own not in raw_dump(store) and "outside:" in raw_dump(store)
    assert b.erase_user(ALICE).already_erased
    other_store._erasure_key = None
    other_store.external_secret = "not-the-secret-of-this-store"
    with pytest.raises(ConfigurationError, match="not this store's"):
        other_store.erasure_key()


def test_a_counter_taken_past_64_bits_across_batches_saturates_and_breaks_nothing(
    store: Store, clock: FakeClock
) -> None:
    """Three batches each adding 2**62 to one counter (more than a batch made by
    ``track()`` can add: a replayed batch of an older version could): no apply and no
    prune raises (on MongoDB the roll-up's sum passed what BSON holds, and the driver's
    OverflowError escaped the applied batch and every prune; SQLite and nx-27017 turned
    the sum into a float); the day and the total read MAX_COUNTER, an int, exactly."""

    def batch(n: int) -> FlushBatch:
        return FlushBatch(
            id=f"big{n}",
            created_at=clock(),
            months={"2025-03-14": "2025-03"},
            counters={"2025-03-14": {"creditsEarned": 2**62}},
        )

    for n in range(3):
        store.apply(batch(n))
    store.prune(clock() + timedelta(days=1), timedelta(days=30), timedelta(hours=12))
    for value in (
        day_dict(store, "2025-03-14")["creditsEarned"],
        store.get_totals()["creditsEarned"],
    ):
        assert (value, type(value)) == (MAX_COUNTER, int)


# -- a batch applied in parts ----------------------------------------------------------------


def test_a_batch_applied_in_parts_stores_what_it_stores_whole(
    store: Store,
    make_analytics: AnalyticsFactory,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Registrations, activity, payments, sessions and events of 7 players in one batch
    applied in parts of 2 players and 3 events (every backend may split: MongoDB does
    above ``max_part_players`` or ``max_part_events``; a player's 4 events then span two
    parts) give the figures of the same calls applied whole to a memory store.
    Registrations were once left out of the parts, losing ``newUsers``."""
    from gso_analytics import open_store

    whole = open_store("memory://")
    monkeypatch.setattr(type(store), "max_part_players", 2)
    monkeypatch.setattr(type(store), "max_part_events", 3)
    writers = [make_analytics(store, forwarders=[]), make_analytics(whole, forwarders=[])]
    for n in range(7):
        for analytics in writers:
            analytics.track("user.register", f"p{n}")
            analytics.on_login(f"p{n}", f"name{n}")
            analytics.track("stripe.payment", f"p{n}", {"amountCents": 100 + n})
            for step in range(n % 5):
                analytics.track("tutorial.step", f"p{n}", {"step": step})
    clock.advance(minutes=5)
    for analytics in writers:
        for n in range(0, 7, 2):
            analytics.on_logout(f"p{n}")
        analytics.flush()

    def figures(s: Store) -> dict[str, Any]:
        day = clock.now.strftime("%Y-%m-%d")
        return {
            "days": [d.to_dict() for d in s.recent_days(2)],
            "month": s.get_month(day[:7]),
            "cohort": {d: sorted(u) for d, u in s.first_seen_between(day, day).items()},
            "payers": {d: sorted(u) for d, u in s.first_payments_between(day, day).items()},
            "revenue": s.user_revenue_between(day, day),
            "sessions": sorted((r.user_id, r.duration_s) for r in s.sessions_between(day, day)),
            "events": len(s.get_events(limit=1000)),
            "open": s.count_open_sessions(),
        }

    split = figures(store)
    assert split == figures(whole)
    assert split["days"][0]["newUsers"] == 7


def test_counters_saturate_at_the_ceiling_across_batches_in_any_flush_order(
    store: Store,
    make_analytics: AnalyticsFactory,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Batch after batch, a whale's maximum amounts take a day's counter, the all-time
    total and his revenue of the day past what a 64-bit integer holds: SQLite turned the
    sum into an inexact REAL, MongoDB's roll-up failed at every flush, PostgreSQL's
    bigint raised. Now each figure stops at MAX_COUNTER (an int, exactly), the cut is
    counted and logged once, and the honest players of the same batches are stored
    exactly: two workers flushing in a random order, against the oracle min(sum, ceiling).

    The batch bound is raised to 2**60 for the test only (a batch then adds up to 2**60,
    127 calls at 2**53), so six batches pass the ceiling rather than 257: the stores'
    sums stay within 64 bits either way (test_sqlite.py has the real-size run)."""
    monkeypatch.setattr(aggregator, "MAX_BATCH_SUM", 2**60)
    writers = [make_analytics(store, forwarders=[]) for _ in range(2)]
    rng = random.Random(1)
    credits = revenue = honest_cents = 0
    for batch in range(6):
        for n in range(10):
            writer = writers[n % 2]
            writer.on_login(f"honest{n}")
            writer.track("stripe.payment", f"honest{n}", {"amountCents": 499})
            writer.track("credits.earn", f"honest{n}", {"amount": 7})
            honest_cents += 499
            credits += 7
        whale = writers[batch % 2]
        for _ in range(127):  # 2**60 less room for the honest players' amounts
            whale.track("credits.earn", "whale", {"amount": 2**53})
            whale.track("stripe.payment", "whale", {"amountCents": 2**53})
        credits += 127 * 2**53
        revenue += 127 * 2**53
        with caplog.at_level(logging.WARNING, logger="gso_analytics"):
            for writer in rng.sample(writers, 2):
                writer.flush()
    day = clock.now.strftime("%Y-%m-%d")
    stored = store.get_day(day)
    assert stored is not None
    assert credits > MAX_COUNTER and revenue + honest_cents > MAX_COUNTER
    assert stored["creditsEarned"] == min(credits, MAX_COUNTER)
    assert type(stored["creditsEarned"]) is int
    assert stored["stripeRevenue"] == MAX_COUNTER
    assert stored["dau"] == 11
    totals = store.get_totals()
    assert (totals["creditsEarned"], totals["stripeRevenue"]) == (MAX_COUNTER, MAX_COUNTER)
    assert all(type(v) is int for v in totals.values())
    payers = store.user_revenue_between(day, day)[day]
    assert payers["whale"] == MAX_COUNTER
    assert {user: cents for user, cents in payers.items() if user != "whale"} == {
        f"honest{n}": 6 * 499 for n in range(10)
    }
    assert len(store.get_events(limit=10_000)) == 6 * (20 + 254)  # logins are marks
    stats = [w.stats() for w in writers]
    failed = [(s["quarantined"], s["flush_failures"], s["rejected"]) for s in stats]
    assert failed == [(0, 0, 0)] * 2
    assert stats[0]["counters_saturated"] > 0
    saturated = [r for r in caplog.records if "reached its ceiling" in r.getMessage()]
    assert len(saturated) == 1


def test_calls_that_would_overflow_their_batch_are_rejected_alone(
    store: Store,
    make_analytics: AnalyticsFactory,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Each amount is at most 2**53, but 1,025 of them from one player in one batch
    passed the stores' 64-bit integers: the batch failed, was retried, then set aside
    with 50 honest players' logins and payments in it. Now the calls that would take the
    batch's counter past 2**53 are rejected (counted once each, logged once), and
    everything else of the batch is stored, on every backend."""
    analytics = make_analytics(store, forwarders=[])
    for n in range(50):
        analytics.on_login(f"honest{n}")
        analytics.track("stripe.payment", f"honest{n}", {"amountCents": 499})
    for _ in range(1025):
        analytics.track("credits.earn", "whale", {"amount": 2**53})
    with caplog.at_level(logging.WARNING, logger="gso_analytics"):
        analytics.flush()
    day = store.get_day(clock.now.strftime("%Y-%m-%d"))
    assert day is not None
    assert (day["dau"], day["stripeRevenue"]) == (51, 50 * 499)  # the whale's first call too
    assert day["creditsEarned"] == 2**53  # the first call fits, the 1,024 others do not
    stats = analytics.stats()
    assert (stats["rejected"], stats["quarantined"], stats["flush_failures"]) == (1024, 0, 0)
    assert len([r for r in caplog.records if "would pass 2**53" in r.getMessage()]) == 1
    events = store.get_events(limit=2000)
    assert len([e for e in events if e.user_id == "whale"]) == 1
    assert len(events) == 51
