"""KPIs against an independent computation, on every store.

A seeded generator writes a raw trace of play (registrations spread over 42 days,
retention decay, 1-3 sessions a day, payments and the economy) as timed calls of
several "processes" (``Analytics`` instances on one store), a login often handled by
one and its logout by another. The trace is replayed through the public API, and each
KPI is compared with what plain Python computes from the trace itself, without the
library: the oracle never reads the store.
"""

from __future__ import annotations

import random
import statistics
from collections import defaultdict
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import attrs
import mongo_server
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mongo_harness import Harness

from gso_analytics import (
    Analytics,
    ConfigurationError,
    FlushBatch,
    KPIs,
    Store,
    StoreError,
    open_store,
)

if TYPE_CHECKING:
    from conftest import AnalyticsFactory, Backend, FakeClock

FIRST_DAY = date(2025, 1, 6)
DAYS = 42
PROCESSES = 3
#: Slot k of a day starts at this hour + 3k; a session ends before the next slot.
SLOT_HOURS = (2, 5, 8)
#: The seed's definitions, under which this trace's login/logout pairs give 0.2's
#: sessions: only logins are activity (``active_on="login"``), and a session left
#: without a logout ends at its login when the next mark comes ``idle_timeout`` (12 h)
#: later, the next day (0 s, "orphaned"). The prune job of each day runs at 23:00.
PRUNE_HOUR = 23
ECONOMY = {
    "credits.earn": ("amount", (5, 50)),
    "credits.spend": ("amount", (1, 40)),
    "gems.earn": ("amount", (1, 5)),
    "gems.purchase": ("gems", (10, 100)),
    "gems.spend": ("amount", (1, 30)),
}
PRICES = (99, 499, 999, 1999)
MONGO_USERS = 120


@attrs.define
class Call:
    at: datetime
    process: int
    kind: str  # login, logout, track
    user: str
    event: str = ""
    data: dict[str, Any] | None = None


@attrs.define
class Session:
    user: str
    login: datetime
    duration_s: int | None  # None: never logged out (ended at its login: 0 s)


@attrs.define
class Trace:
    """The calls, slot by slot, and the facts the oracle needs (from the trace only)."""

    slots: list[tuple[date, list[Call]]] = attrs.field(factory=list)
    sessions: list[Session] = attrs.field(factory=list)
    payments: list[tuple[datetime, str, int]] = attrs.field(factory=list)
    amounts: list[tuple[datetime, str, int]] = attrs.field(factory=list)


def generate(seed: int, users: int) -> Trace:
    rng = random.Random(seed)
    trace = Trace()
    profiles = []
    for i in range(users):
        registered = rng.randrange(DAYS)
        loyalty = rng.choice((0.05, 0.2, 0.5, 0.8))
        payer = rng.random() < 0.3
        profiles.append((f"user{i:04d}", registered, loyalty, payer))
    for offset in range(DAYS):
        day = FIRST_DAY + timedelta(days=offset)
        plans: dict[int, list[tuple[str, bool]]] = defaultdict(list)
        for user, registered, loyalty, payer in profiles:
            if offset < registered:
                continue
            age = offset - registered
            if age and rng.random() > loyalty * (0.97**age):
                continue
            count = rng.choice((1, 1, 2, 3))
            for k in range(count):
                plans[k].append((user, payer))
        for k, hour in enumerate(SLOT_HOURS):
            calls: list[Call] = []
            for user, payer in plans.get(k, []):
                login = datetime(day.year, day.month, day.day, hour, tzinfo=UTC) + timedelta(
                    seconds=rng.randrange(3600)
                )
                last = k + 1 == len(SLOT_HOURS) or user not in {u for u, _ in plans.get(k + 1, [])}
                orphaned = last and rng.random() < 0.08
                duration = rng.choice((0, rng.randrange(1, 90), rng.randrange(60, 5400)))
                login_process = rng.randrange(PROCESSES)
                calls.append(Call(login, login_process, "login", user))
                for _ in range(rng.randrange(4)):
                    event = rng.choice(list(ECONOMY))
                    key, (low, high) = ECONOMY[event]
                    amount = rng.randint(low, high)
                    at = login + timedelta(seconds=rng.randint(0, duration))
                    calls.append(
                        Call(at, rng.randrange(PROCESSES), "track", user, event, {key: amount})
                    )
                    trace.amounts.append((at, event, amount))
                if payer and rng.random() < 0.25:
                    cents = rng.choice(PRICES)
                    at = login + timedelta(seconds=rng.randint(0, duration))
                    data = {"amountCents": cents}
                    calls.append(
                        Call(at, rng.randrange(PROCESSES), "track", user, "stripe.payment", data)
                    )
                    trace.payments.append((at, user, cents))
                if not orphaned:
                    logout = login + timedelta(seconds=duration)
                    process = rng.randrange(PROCESSES)
                    # A logout in the login's millisecond stays on its process: across
                    # processes, two marks of one millisecond follow the store's
                    # tie-break (the process origin), which a trace cannot know.
                    calls.append(
                        Call(logout, process if duration else login_process, "logout", user)
                    )
                trace.sessions.append(Session(user, login, None if orphaned else duration))
            # Stable: a logout at the login's instant stays after it.
            calls.sort(key=lambda call: call.at)
            trace.slots.append((day, calls))
    return trace


def replay(trace: Trace, instances: list[Any], clock: FakeClock, seed: int) -> None:
    """Each slot's calls in time order, each by its process; then every process
    flushes, in a random order (so a logout may reach the store before its login); a
    prune at the end of each day."""
    rng = random.Random(seed)
    for index, (day, calls) in enumerate(trace.slots):
        for call in calls:
            clock.set(call.at)
            analytics = instances[call.process]
            if call.kind == "login":
                analytics.on_login(call.user)
            elif call.kind == "logout":
                analytics.on_logout(call.user)
            else:
                analytics.track(call.event, call.user, call.data)
        for analytics in rng.sample(instances, len(instances)):
            analytics.flush()
        next_day = trace.slots[index + 1][0] if index + 1 < len(trace.slots) else None
        if next_day != day:
            clock.set(datetime(day.year, day.month, day.day, PRUNE_HOUR, tzinfo=UTC))
            instances[0].prune()


# -- the oracle: plain Python over the trace ---------------------------------------------


def days_of(start: date, end: date) -> list[date]:
    return [start + timedelta(days=i) for i in range((end - start).days + 1)]


def div(a: float, b: float) -> float:
    return a / b if b else 0.0


class Oracle:
    """Days are the calls' local dates in ``tz``."""

    def __init__(self, trace: Trace, today: date, tz: tzinfo = UTC) -> None:
        def day_of(moment: datetime) -> date:
            return moment.astimezone(tz).date()

        self.today = today
        self.logins = [(day_of(s.login), s) for s in trace.sessions]
        self.payments = [(day_of(at), user, cents) for at, user, cents in trace.payments]
        self.amounts: dict[tuple[date, str], int] = defaultdict(int)
        for at, event, amount in trace.amounts:
            self.amounts[day_of(at), event] += amount
        self.active: dict[date, set[str]] = defaultdict(set)
        self.first_seen: dict[str, date] = {}
        for day, s in self.logins:
            self.active[day].add(s.user)
            self.first_seen[s.user] = min(day, self.first_seen.get(s.user, day))

    def retention(self, start: date, end: date, ns: tuple[int, ...]) -> list[dict[str, Any]]:
        rows = []
        for cohort in days_of(start, end):
            users = {u for u, d in self.first_seen.items() if d == cohort}
            if not users:
                continue
            row: dict[str, Any] = {"cohort": cohort.isoformat(), "users": len(users)}
            for n in ns:
                target = cohort + timedelta(days=n)
                over = target < self.today  # day N is over: measurable
                count = len(users & self.active[target]) if over else None
                row[f"d{n}"] = count
                row[f"d{n}Rate"] = None if count is None else count / len(users)
            rows.append(row)
        return rows

    def window(self, day: date, width: int) -> int:
        seen: set[str] = set()
        for back in range(width):
            seen |= self.active[day - timedelta(days=back)]
        return len(seen)

    def active_users(self, start: date, end: date) -> list[dict[str, Any]]:
        rows = []
        for day in days_of(start, end):
            dau, mau30 = len(self.active[day]), self.window(day, 30)
            rows.append(
                {
                    "day": day.isoformat(),
                    "dau": dau,
                    "wau": self.window(day, 7),
                    "mau30": mau30,
                    "stickiness": div(dau, mau30),
                }
            )
        return rows

    def revenue(self, start: date, end: date) -> list[dict[str, Any]]:
        first_pay: dict[str, date] = {}
        for day, user, _ in self.payments:
            first_pay[user] = min(day, first_pay.get(user, day))
        rows = []
        for day in days_of(start, end):
            cents = sum(c for d, _, c in self.payments if d == day)
            payers = len({u for d, u, _ in self.payments if d == day})
            dau = len(self.active[day])
            rows.append(
                {
                    "day": day.isoformat(),
                    "revenueCents": cents,
                    "payingUsers": payers,
                    "firstTimePayers": sum(1 for d in first_pay.values() if d == day),
                    "dau": dau,
                    "arpdauCents": div(cents, dau),
                    "arppuCents": div(cents, payers),
                }
            )
        return rows

    def sessions(self, start: date, end: date) -> list[dict[str, Any]]:
        rows = []
        for day in days_of(start, end):
            of_day = [s for d, s in self.logins if d == day]
            closed = [s.duration_s or 0 for s in of_day]  # every session, orphans as 0 s
            dau = len(self.active[day])
            rows.append(
                {
                    "day": day.isoformat(),
                    "sessions": len(of_day),
                    "sessionsPerUser": div(len(of_day), dau),
                    "playTimePerDauS": div(sum(closed), dau),
                    "medianSessionS": statistics.median(closed) if closed else None,
                    "orphanedSessions": sum(s.duration_s is None for s in of_day),
                }
            )
        return rows

    def period(self, start: date, end: date) -> dict[str, Any]:
        """The headline figures of one period, from the trace."""
        closing = self.active_users(end, end)[0]

        def pooled(n: int) -> float | None:
            back = timedelta(days=n)
            cohorts = self.retention(start - back, end - back, (n,))
            known = [row for row in cohorts if row[f"d{n}"] is not None]
            users = sum(row["users"] for row in known)
            return sum(row[f"d{n}"] for row in known) / users if users else None

        payments = [(user, cents) for day, user, cents in self.payments if start <= day <= end]
        cents = sum(c for _, c in payments)
        user_days = sum(len(self.active[day]) for day in days_of(start, end))
        closed = [s.duration_s or 0 for d, s in self.logins if start <= d <= end]
        return {
            "dau": closing["dau"],
            "mau30": closing["mau30"],
            "d1Rate": pooled(1),
            "d7Rate": pooled(7),
            "revenueCents": cents,
            "payingUsers": len({user for user, _ in payments}),
            "arpdauCents": div(cents, user_days),
            "avgSessionS": sum(closed) / len(closed) if closed else None,
        }

    def headline(self, start: date, end: date) -> dict[str, Any]:
        length = end - start + timedelta(days=1)
        now, before = self.period(start, end), self.period(start - length, end - length)
        return {
            "start": start.isoformat(),
            "end": end.isoformat(),
            "previousStart": (start - length).isoformat(),
            "previousEnd": (end - length).isoformat(),
            "figures": {
                name: {
                    "value": value,
                    "previous": before[name],
                    "change": None
                    if value is None or not before[name]
                    else value / before[name] - 1,
                }
                for name, value in now.items()
            },
        }

    def first_day_with_data(self, start: date, end: date) -> date | None:
        days = {d for d, _ in self.logins} | {d for d, _ in self.amounts}
        return min((d for d in days if start <= d <= end), default=None)

    def economy(self, start: date, end: date) -> list[dict[str, Any]]:
        rows = []
        for day in days_of(start, end):
            a = {event: self.amounts.get((day, event), 0) for event in ECONOMY}
            rows.append(
                {
                    "day": day.isoformat(),
                    "creditsEarned": a["credits.earn"],
                    "creditsSpent": a["credits.spend"],
                    "creditsNet": a["credits.earn"] - a["credits.spend"],
                    "gemsEarned": a["gems.earn"],
                    "gemsPurchased": a["gems.purchase"],
                    "gemsSpent": a["gems.spend"],
                    "gemsNet": a["gems.earn"] + a["gems.purchase"] - a["gems.spend"],
                }
            )
        return rows


# -- the test ---------------------------------------------------------------------------


def users_for(backend: Backend) -> int:
    """Several hundred players where writes are cheap; fewer on the Mongo parameters
    (nx-27017 answers over TCP from Python, mongomock in Python), same days and
    processes."""
    return 300 if backend.name in ("memory", "sqlite") else MONGO_USERS


def as_dicts(rows: list[Any]) -> list[dict[str, Any]]:
    return [row.to_dict() for row in rows]


def check_trace(
    handles: list[Store],
    make_analytics: AnalyticsFactory,
    clock: FakeClock,
    users: int,
    tz: tzinfo = UTC,
) -> None:
    """Replay the trace through ``handles`` (one per process) and compare every KPI."""
    trace = generate(seed=7, users=users)
    options = {
        "forwarders": [],
        "idle_timeout": timedelta(hours=12),
        "active_on": "login",
        "tz": tz,
    }
    instances = [make_analytics(handles[i % len(handles)], **options) for i in range(PROCESSES)]
    replay(trace, instances, clock, seed=11)

    last_day = FIRST_DAY + timedelta(days=DAYS - 1)
    clock.set(datetime(last_day.year, last_day.month, last_day.day, 23, 30, tzinfo=UTC))
    oracle = Oracle(trace, today=last_day, tz=tz)
    kpis = instances[1].kpis  # any process reads the same numbers
    assert kpis.today() == last_day

    whole = (FIRST_DAY - timedelta(days=3), last_day + timedelta(days=2))
    recent = (last_day - timedelta(days=20), last_day)
    for start, end in (whole, recent):
        assert as_dicts(kpis.active_users(start, end)) == oracle.active_users(start, end)
        assert as_dicts(kpis.revenue(start, end)) == oracle.revenue(start, end)
        assert as_dicts(kpis.sessions(start, end)) == oracle.sessions(start, end)
        assert as_dicts(kpis.economy(start, end)) == oracle.economy(start, end)
        for ns in ((1, 7, 30), (0, 2, 14)):
            assert as_dicts(kpis.retention(start, end, days=ns)) == oracle.retention(start, end, ns)

    week = (last_day - timedelta(days=6), last_day)
    for start, end in (whole, recent, week):
        assert kpis.headline(start, end).to_dict() == oracle.headline(start, end)
    for start, end in (whole, recent, (last_day + timedelta(days=1), last_day + timedelta(days=9))):
        assert kpis.first_day_with_data(start, end) == oracle.first_day_with_data(start, end)
    assert oracle.headline(*week)["figures"]["d7Rate"]["change"] is not None  # compared

    # The trace exercised what it claims to: orphans, payers, cross-day windows,
    # not-yet-measurable retention.
    assert sum(row["orphanedSessions"] for row in oracle.sessions(*whole)) > 0
    assert sum(row["firstTimePayers"] for row in oracle.revenue(*whole)) > 1
    assert any(row["d30"] is None for row in oracle.retention(*whole, (1, 7, 30)))
    assert any(row["d7"] for row in oracle.retention(*whole, (1, 7, 30)))

    # A KPIs built from the store alone (another process, reading) agrees.
    reader = KPIs(handles[-1], clock=clock, tz=tz)
    assert as_dicts(reader.active_users(*recent)) == oracle.active_users(*recent)


def test_kpis_match_an_independent_computation_of_the_trace(
    backend: Backend,
    store: Store,
    other_store: Store,
    make_analytics: AnalyticsFactory,
    clock: FakeClock,
) -> None:
    check_trace([store, other_store], make_analytics, clock, users_for(backend))


def test_kpis_on_the_mongo_transaction_path(
    nx_27017: mongo_server.NxServer,
    make_analytics: AnalyticsFactory,
    clock: FakeClock,
    mongo_harness: Harness,
) -> None:
    """Two handles on one nx-27017 database, through the harness with 5% of the
    transactional writes failing with an injected write conflict (each retried)."""
    mongo_harness.conflict_rate = 0.05
    url = nx_27017.url(query="ttlIndex=false")
    with open_store(url) as store, open_store(url) as other:
        check_trace([store, other], make_analytics, clock, users=MONGO_USERS)
    assert mongo_harness.injected > 0, "no conflict was injected: the retries ran for nothing"


def test_kpis_in_the_configured_timezone(
    backend: Backend,
    store: Store,
    other_store: Store,
    make_analytics: AnalyticsFactory,
    clock: FakeClock,
) -> None:
    """Days in Los Angeles: the trace's sessions (02:00-10:00 UTC) start the evening
    before or after local midnight, so sessions, payments and activity move to the
    local day, and "today" is the local date."""
    if backend.name not in ("memory", "sqlite", "postgres"):
        pytest.skip("day keys come from the core; the Mongo parameters run the UTC trace")
    tz = ZoneInfo("America/Los_Angeles")
    check_trace([store, other_store], make_analytics, clock, MONGO_USERS, tz=tz)


# -- the per-user facts are exact once ----------------------------------------------------


def paying_batch(clock: FakeClock) -> FlushBatch:
    day = clock.now.date().isoformat()
    return FlushBatch(
        created_at=clock.now,
        months={day: day[:7]},
        day_users={day: {"u1", "u2"}},
        payments={day: {"u1": 499, "u2": 0}},
    )


def test_a_batch_applied_twice_adds_revenue_once(store: Store, clock: FakeClock) -> None:
    batch = paying_batch(clock)
    day = clock.now.date().isoformat()
    assert not store.apply(batch).duplicate
    assert store.apply(batch).duplicate
    assert store.user_revenue_between(day, day) == {day: {"u1": 499, "u2": 0}}
    assert store.first_payments_between(day, day) == {day: {"u1", "u2"}}
    assert store.first_seen_between(day, day) == {day: {"u1", "u2"}}


def test_first_days_keep_the_earliest_whatever_the_flush_order(
    store: Store, other_store: Store, clock: FakeClock
) -> None:
    """A process flushing an older day late moves the fact back; a newer one never
    moves it forward."""

    def batch(day: str, cents: int | None = None) -> FlushBatch:
        payments = {} if cents is None else {day: {"u1": cents}}
        return FlushBatch(
            created_at=clock.now,
            months={day: day[:7]},
            day_users={day: {"u1"}},
            payments=payments,
        )

    store.apply(batch("2025-03-10", 5))
    other_store.apply(batch("2025-03-02", 7))
    store.apply(batch("2025-03-12"))
    assert store.first_seen_between("2025-03-01", "2025-03-31") == {"2025-03-02": {"u1"}}
    assert store.first_payments_between("2025-03-01", "2025-03-31") == {"2025-03-02": {"u1"}}
    assert store.user_revenue_between("2025-03-01", "2025-03-31") == {
        "2025-03-02": {"u1": 7},
        "2025-03-10": {"u1": 5},
    }


@pytest.mark.parametrize("point", ["before", "after"])
def test_mongo_retry_after_a_failure_counts_revenue_once(
    nx_27017: mongo_server.NxServer, monkeypatch: pytest.MonkeyPatch, point: str
) -> None:
    """The connection drops just before or after the per-user facts were sent, inside
    the part's transaction; the flusher's retry of the same batch (a clean re-run: the
    aborted attempt left nothing) counts them once."""
    pymongo = pytest.importorskip("pymongo")
    from gso_analytics.backends.mongo import batch as mongo_batch

    url = nx_27017.url(query="ttlIndex=false")
    fired: list[str] = []
    tx_type = mongo_batch.BatchTransaction
    original = tx_type._write_user_facts

    def write_user_facts(self: Any) -> None:
        if point == "after":
            original(self)
        if not fired:
            fired.append(point)
            raise pymongo.errors.AutoReconnect(f"injected: connection lost {point}")
        original(self)

    now = datetime(2025, 3, 14, 12, tzinfo=UTC)
    with open_store(url) as store:
        a = Analytics(store, clock=lambda: now, forwarders=[])
        a.on_login("u1")
        a.track("stripe.payment", "u1", {"amountCents": 499})
        a.track("stripe.payment", "u1", {"amountCents": 100})
        monkeypatch.setattr(tx_type, "_write_user_facts", write_user_facts)
        with pytest.raises(StoreError, match="injected"):
            a.flush()
        monkeypatch.undo()
        a.flush()
        assert a.stats()["retried"] == 1
        day = now.date().isoformat()
        assert store.user_revenue_between(day, day) == {day: {"u1": 599}}
        assert store.first_payments_between(day, day) == {day: {"u1"}}
        assert store.get_day(day)["stripeRevenue"] == 599
        a.stop()


# -- semantics on a small, hand-checked history (memory store) --------------------------


@pytest.fixture
def small(make_analytics: AnalyticsFactory, clock: FakeClock) -> tuple[Any, Any]:
    """u1 plays 2025-03-01, 03-02 and 03-08 and pays twice; u2 plays 03-01 only."""
    store = open_store("memory://")
    a = make_analytics(store, forwarders=[])
    for day, users in (
        ("2025-03-01", ("u1", "u2")),
        ("2025-03-02", ("u1",)),
        ("2025-03-08", ("u1",)),
    ):
        clock.set(datetime.fromisoformat(f"{day}T10:00:00+00:00"))
        for user in users:
            a.on_login(user)
        if day != "2025-03-01":
            a.track("stripe.payment", "u1", {"amountCents": 250})
        clock.advance(90)
        for user in users:
            a.on_logout(user)
    clock.set(datetime(2025, 3, 9, 12, tzinfo=UTC))
    return a, store


def test_retention_counts_exact_day_n_and_none_after_today(small: tuple[Any, Any]) -> None:
    a, _ = small
    rows = as_dicts(a.kpis.retention("2025-03-01", date(2025, 3, 2), days=(1, 7, 30)))
    assert rows == [
        {"cohort": "2025-03-01", "users": 2, "d1": 1, "d1Rate": 0.5, "d7": 1, "d7Rate": 0.5,
         "d30": None, "d30Rate": None},
    ]  # fmt: skip


@pytest.mark.parametrize("tz", ["America/Los_Angeles", "Asia/Kolkata", "UTC"])
def test_retention_is_none_until_day_n_is_over_in_the_store_timezone(
    tz: str, make_analytics: AnalyticsFactory, clock: FakeClock
) -> None:
    """Day N is measurable once it is over, locally: D1 of the 1 March cohort is None
    all of 2 March (00:05 and its last millisecond), a count from 3 March 00:00; D0
    likewise from 2 March 00:00. A 0 read during the day would be a drop to zero."""
    zone = ZoneInfo(tz)

    def local(moment: str) -> datetime:
        return datetime.fromisoformat(moment).replace(tzinfo=zone)

    a = make_analytics(open_store("memory://"), forwarders=[], tz=zone)
    for at, users in (("2025-03-01T23:00", ("u1", "u2")), ("2025-03-02T23:00", ("u1",))):
        clock.set(local(at))
        for user in users:
            a.on_login(user)
    a.flush()

    def figures(at: str) -> tuple[Any, ...]:
        clock.set(local(at))
        (row,) = as_dicts(a.kpis.retention("2025-03-01", "2025-03-01", days=(0, 1)))
        return row["users"], row["d0"], row["d1"], row["d1Rate"]

    assert figures("2025-03-01T23:59:59.999") == (2, None, None, None)
    assert figures("2025-03-02T00:00") == (2, 2, None, None)
    assert figures("2025-03-02T00:05") == (2, 2, None, None)
    assert figures("2025-03-02T23:59:59.999") == (2, 2, None, None)
    assert figures("2025-03-03T00:00") == (2, 2, 1, 0.5)
    clock.set(local("2025-03-02T00:05"))
    assert a.kpis.headline("2025-03-02", "2025-03-02").figures["d1Rate"].value is None
    clock.set(local("2025-03-03T00:00"))
    assert a.kpis.headline("2025-03-02", "2025-03-02").figures["d1Rate"].value == 0.5


def test_zero_days_are_rows_with_zero_ratios(small: tuple[Any, Any]) -> None:
    a, _ = small
    kpis = a.kpis
    (row,) = as_dicts(kpis.revenue("2025-03-05", "2025-03-05"))
    assert row == {"day": "2025-03-05", "revenueCents": 0, "payingUsers": 0, "firstTimePayers": 0,
                   "dau": 0, "arpdauCents": 0.0, "arppuCents": 0.0}  # fmt: skip
    (row,) = as_dicts(kpis.sessions("2025-03-05", "2025-03-05"))
    assert row["medianSessionS"] is None and row["sessionsPerUser"] == 0.0
    au = as_dicts(kpis.active_users("2025-03-07", "2025-03-08"))
    assert [(r["dau"], r["wau"], r["mau30"]) for r in au] == [(0, 2, 2), (1, 1, 2)]
    assert au[1]["stickiness"] == 0.5
    rev = as_dicts(kpis.revenue("2025-03-02", "2025-03-08"))
    assert [r["firstTimePayers"] for r in rev] == [1, 0, 0, 0, 0, 0, 0]
    assert rev[-1]["arppuCents"] == 250.0 and rev[-1]["payingUsers"] == 1


def test_bad_ranges_and_days_are_refused(small: tuple[Any, Any]) -> None:
    kpis = small[0].kpis
    with pytest.raises(ValueError, match="after end"):
        kpis.active_users("2025-03-02", "2025-03-01")
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        kpis.economy("2025-3-1", "2025-03-02")
    with pytest.raises(ValueError, match="non-negative"):
        kpis.retention("2025-03-01", "2025-03-02", days=(-1,))


# -- funnels ------------------------------------------------------------------------------

FUNNEL = ("shop.open", "shop.view", "shop.buy")
FUNNEL_TODAY = datetime(2025, 5, 20, 18, tzinfo=UTC)


def funnel_calls(seed: int, users: int) -> list[tuple[datetime, int, str, str]]:
    """(time, process, user, event): repeated, out-of-order and other events over five
    days, to the millisecond (ties included)."""
    rng = random.Random(seed)
    names = [*FUNNEL, "shop.open", "shop.view", "chat.send"]
    calls = []
    for i in range(users):
        base = FUNNEL_TODAY - timedelta(days=5) + timedelta(seconds=rng.randrange(4 * 86400))
        at = base
        for _ in range(rng.randrange(9)):
            at += timedelta(milliseconds=rng.choice((0, 250, 61_000, 3_600_000, 30 * 3_600_000)))
            calls.append((at, rng.randrange(PROCESSES), f"user{i:04d}", rng.choice(names)))
    return sorted(calls)


def funnel_oracle(
    calls: list[tuple[datetime, int, str, str]],
    within: timedelta,
    start: date | None,
    end: date | None,
) -> list[dict[str, Any]]:
    """The definition, in milliseconds and per-step sorted lists."""
    times: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for at, _, user, event in calls:
        if (start is None or at.date() >= start) and (end is None or at.date() <= end):
            times[user][event].append(int(at.timestamp() * 1000))
    reached = [0, 0, 0]
    gaps: list[list[float]] = [[], [], []]
    for per_event in times.values():
        if not per_event[FUNNEL[0]]:
            continue
        entry = previous = min(per_event[FUNNEL[0]])
        reached[0] += 1
        for k in (1, 2):
            later = sorted(
                t
                for t in per_event[FUNNEL[k]]
                if previous <= t <= entry + within // timedelta(milliseconds=1)
            )
            if not later:
                break
            reached[k] += 1
            gaps[k].append((later[0] - previous) / 1000)
            previous = later[0]
    return [
        {
            "step": FUNNEL[k],
            "users": reached[k],
            "pctOfFirst": div(100 * reached[k], reached[0]),
            "pctOfPrevious": 100.0 if k == 0 else div(100 * reached[k], reached[k - 1]),
            "medianTimeFromPreviousS": statistics.median(gaps[k]) if k and gaps[k] else None,
        }
        for k in range(3)
    ]


def test_funnel_matches_an_independent_computation(
    backend: Backend,
    store: Store,
    other_store: Store,
    make_analytics: AnalyticsFactory,
    clock: FakeClock,
) -> None:
    calls = funnel_calls(seed=3, users=users_for(backend))
    handles = [store, other_store]
    instances = [make_analytics(handles[i % 2], forwarders=[]) for i in range(PROCESSES)]
    for at, process, user, event in calls:
        clock.set(at)
        instances[process].track(event, user)
    for analytics in instances:
        analytics.flush()
    clock.set(FUNNEL_TODAY)
    kpis = instances[0].kpis
    day = FUNNEL_TODAY.date()
    cases = [
        (timedelta(days=1), None, None),
        (timedelta(hours=2), None, None),
        (timedelta(days=1), day - timedelta(days=3), day - timedelta(days=1)),
        (timedelta(days=3), day - timedelta(days=4), None),
    ]
    for within, start, end in cases:
        funnel = kpis.funnel(list(FUNNEL), within=within, start=start, end=end)
        assert as_dicts(funnel.steps) == funnel_oracle(calls, within, start, end)
    everyone = funnel_oracle(calls, timedelta(days=1), None, None)
    assert everyone[0]["users"] > everyone[2]["users"] > 0  # the trace has drop-off


def test_funnel_truncated_when_the_range_reaches_past_the_event_ttl(
    make_analytics: AnalyticsFactory, clock: FakeClock
) -> None:
    a = make_analytics(open_store("memory://"), forwarders=[], event_ttl=timedelta(days=7))
    clock.set(FUNNEL_TODAY)
    today = FUNNEL_TODAY.date()
    kpis = a.kpis
    assert kpis.funnel(["a", "b"]).truncated
    # 18:00 today: the prune has taken day -7 up to 18:00 (ts + 7 days <= now); day -6
    # is the first whole day kept.
    assert kpis.funnel(["a", "b"], start=today - timedelta(days=7)).truncated
    assert not kpis.funnel(["a", "b"], start=today - timedelta(days=6)).truncated
    first = kpis.funnel(["a", "b"], start=today).steps[0].to_dict()
    assert first == {"step": "a", "users": 0, "pctOfFirst": 0.0, "pctOfPrevious": 100.0,
                     "medianTimeFromPreviousS": None}  # fmt: skip
    with pytest.raises(ValueError, match="distinct"):
        kpis.funnel(["a", "b", "a"])


@pytest.mark.parametrize("tz", ["UTC", "America/Los_Angeles", "Asia/Kolkata"])
@pytest.mark.parametrize(
    ("now", "start", "truncated"),
    [
        # A 7-day TTL read at midnight: midnight of day -7 is exactly 7 days old, expired.
        ("2025-05-20T00:00:00.000", "2025-05-13", True),
        ("2025-05-20T00:00:00.000", "2025-05-14", False),
        # A millisecond before: day -7's midnight is 1 ms short of expired, day -8's
        # (the last day partly pruned) is long gone.
        ("2025-05-19T23:59:59.999", "2025-05-12", True),
        ("2025-05-19T23:59:59.999", "2025-05-13", False),
    ],
)
def test_funnel_truncated_at_the_first_and_last_retained_day(
    tz: str, now: str, start: str, truncated: bool
) -> None:
    """At the prune's own boundary, in the store's timezone: a start day is whole
    exactly while its first event (at local midnight) would survive a prune now."""
    zone = ZoneInfo(tz)
    moment = datetime.fromisoformat(now).replace(tzinfo=zone)
    survives = prune_keeps(zone, moment, timedelta(days=7), date.fromisoformat(start))
    assert survives is not truncated
    kpis = KPIs(open_store("memory://"), tz=zone, clock=lambda: moment)
    assert kpis.funnel(["a"], start=start).truncated is truncated


def prune_keeps(zone: tzinfo, now: datetime, ttl: timedelta, day: date) -> bool:
    """The oracle: whether a prune at ``now`` keeps an event at ``day``'s local
    midnight (the earliest event of the day), asked of a store."""
    store = open_store("memory://")
    midnight = datetime.combine(day, time.min, zone)
    store.apply(
        FlushBatch(
            created_at=now,
            events=[(int(midnight.timestamp() * 1000), "u1", "a", "{}", day.isoformat())],
        )
    )
    store.prune(now, ttl, timedelta(hours=1))
    return bool(store.get_events())


@settings(max_examples=200, deadline=None)
@given(
    tz=st.sampled_from(["UTC", "America/Los_Angeles", "Asia/Kolkata", "Pacific/Chatham"]),
    now_ms=st.integers(1_735_689_600_000, 1_767_225_600_000),  # 2025
    ttl_ms=st.integers(1, 40 * 86_400_000),
    back=st.integers(-2, 45),
)
def test_funnel_truncated_exactly_when_the_prune_took_part_of_the_start_day(
    tz: str, now_ms: int, ttl_ms: int, back: int
) -> None:
    zone = ZoneInfo(tz)
    now = datetime.fromtimestamp(now_ms / 1000, UTC)
    ttl = timedelta(milliseconds=ttl_ms)
    start = now.astimezone(zone).date() - timedelta(days=back)
    kpis = KPIs(open_store("memory://"), tz=zone, clock=lambda: now, event_ttl=ttl)
    truncated = kpis.funnel(["a"], start=start).truncated
    assert truncated is not prune_keeps(zone, now, ttl, start)


def test_test_users_are_left_out_of_every_per_user_kpi(
    make_analytics: AnalyticsFactory, clock: FakeClock
) -> None:
    store = open_store("memory://")
    a = make_analytics(store, forwarders=[], test_users=["bot1"])
    for user in ("u1", "bot1", "bot2"):
        a.on_login(user)
        a.track("stripe.payment", user, {"amountCents": 100})
        a.track("shop.open", user)
        clock.advance(60)
        a.on_logout(user)
    day = clock.now.date()
    by_list = a.kpis
    by_predicate = KPIs(store, clock=clock, test_users=lambda user: user.startswith("bot"))
    assert by_list.active_users(day, day)[0].dau == 2
    assert by_predicate.active_users(day, day)[0].dau == 1
    assert by_predicate.revenue(day, day)[0].to_dict()["revenueCents"] == 100
    assert by_predicate.revenue(day, day)[0].first_time_payers == 1
    assert by_predicate.sessions(day, day)[0].sessions == 1
    assert by_predicate.retention(day, day)[0].users == 1
    assert by_predicate.funnel(["shop.open"]).steps[0].users == 1
    assert by_list.funnel(["shop.open"]).steps[0].users == 2
    with pytest.raises(ConfigurationError, match="list of user ids"):
        make_analytics(store, test_users="bot1")
    with pytest.raises(ValueError, match="list of user ids"):
        KPIs(store, test_users="bot1")


def test_sqlite_kpi_reads_are_index_searches(sqlite_url: str, clock: FakeClock) -> None:
    """Every read a KPI makes is a range search on an index, never a table scan: its
    cost follows the range asked for, not the history."""
    with open_store(sqlite_url) as store:
        statements: list[tuple[str, tuple[Any, ...]]] = []
        read = store._read  # type: ignore[attr-defined]

        def recording(sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
            statements.append((sql, params))
            return read(sql, params)

        store._read = recording  # type: ignore[attr-defined]
        clock.set(datetime(2025, 3, 20, 12, tzinfo=UTC))
        kpis = KPIs(store, clock=clock)
        for method in (kpis.active_users, kpis.revenue, kpis.sessions, kpis.economy):
            method("2025-03-01", "2025-03-10")
        kpis.retention("2025-03-01", "2025-03-10")
        kpis.funnel(["a", "b"], start="2025-03-01", end="2025-03-10")
        kpis.funnel(["a", "b"])
        assert len(statements) >= 8
        for sql, params in statements:
            plan = read("EXPLAIN QUERY PLAN " + sql, params)
            details = [row[-1] for row in plan]
            assert not any(d.startswith("SCAN") for d in details), (sql, details)
