"""A hypothesis state machine of the whole ``Analytics`` API against a plain model, on
every backend of ``conftest.BACKENDS``.

Why, beside ``tests/test_property.py`` (random operation lists on memory and SQLite):
a ``RuleBasedStateMachine`` checks ``stats()`` after every step and shrinks a failure
to the shortest story, and this machine also drives what that test leaves out -
flushes that fail before or after the write (``tests/faults.py``), a process restart
(``stop()`` and a new instance on the same store, which forgets the sessions it saw),
rejected input, logouts without login, double logins, prunes with sessions open,
and the clock stepping back by hours - against a model that knows the store's rules
(dau/mau records, sessions as the walk over every process's marks in time order,
durations rounded half up, totals on the login day, timeouts) and nothing of the
library's code but each process's origin, the tie-break of two marks of one
millisecond.

Kept modest (``max_examples``, ``stateful_step_count`` below) so the whole run takes
seconds per backend.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from faults import FaultyStore
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from login_walk import login_sessions, seconds_between

from gso_analytics import DAILY_FIELDS, Analytics, CounterRule, StoreError, open_store

if TYPE_CHECKING:
    from conftest import Backend

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: 21:00 UTC on 31 January: midnight and the month end are a few steps away.
START_MS = (datetime(2025, 1, 31, 21, tzinfo=UTC) - EPOCH) // timedelta(milliseconds=1)
HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
#: The seed's definitions: ``active_on="login"`` and a long ``idle_timeout``.
IDLE_TIMEOUT_MS = 12 * HOUR_MS
EVENT_TTL_MS = 7 * DAY_MS
MAX_RETRY_AGE_MS = 6 * DAY_MS  # a failed batch older than this is set aside
USERS = ("u0", "u1", "u2")

#: event -> (field, amount key or None for +1): the seed's map (a sample) and two
#: custom counters passed to Analytics below.
RULES: dict[str, tuple[str, str | None]] = {
    "dungeon.complete": ("dungeonsRun", None),
    "credits.earn": ("creditsEarned", "amount"),
    "gems.purchase": ("gemsPurchased", "gems"),
    "stripe.payment": ("stripeRevenue", "amountCents"),
    "quest.complete": ("questsCompleted", None),
    "gold.loot": ("goldLooted", "amount"),
}
#: ``goldLooted`` is decimal: its quarters sum exactly (the other counters refuse them).
CUSTOM_COUNTERS = {
    "quest.complete": "questsCompleted",
    "gold.loot": CounterRule("goldLooted", "amount", decimal=True),
}
DECIMAL_EVENTS = {"gold.loot"}
EVENTS = [*RULES, "tutorial.step"]

#: Backends whose test server compares dates to the second in ``find()`` (nx-27017:
#: ``{"loginAt": {"$lt": t + 500 ms}}`` misses ``loginAt == t``; MongoDB and mongomock
#: compare milliseconds). Their clock moves in whole seconds here; the millisecond
#: cases (durations of x.5 s, boundaries within a second) run on the other backends.
WHOLE_SECONDS = {"mongo"}

#: Calls lenient mode counts as rejected and drops whole.
HOSTILE = [
    lambda a: a.on_login(None),
    lambda a: a.on_logout({"$ne": None}),
    lambda a: a.track("", "u0"),
    lambda a: a.track("credits.earn", "u0", {"amount": -5}),
    lambda a: a.track("gems.purchase", "u1", {"gems": float("nan")}),
    lambda a: a.track("tutorial.step", "u2", {"$where": "1"}),
    lambda a: a.on_login("u0", "\x00name"),
]

CLOCK_STEPS = {
    "ms": st.integers(0, 3000),
    "halves": st.integers(0, 6).map(lambda k: k * 500),
    "minutes": st.integers(1, 90).map(lambda k: k * 60_000),
    "hours": st.integers(1, 13).map(lambda k: k * HOUR_MS + 500),
    "days": st.integers(1, 9).map(lambda k: k * DAY_MS),
    "back": st.integers(-3000, -1),
    "back-hours": st.integers(1, 3).map(lambda k: -k * HOUR_MS),
}


def keys(ms: int) -> tuple[str, str]:
    day = (EPOCH + timedelta(milliseconds=ms)).strftime("%Y-%m-%d")
    return day, day[:7]


@dataclass
class Batch:
    ops: list[tuple[Any, ...]]
    created: int  # the clock when the flush made it
    applied: bool = False  # reached the store (a failure after the write)
    failed: bool = False  # an attempt failed: the next one counts as a retry

    @property
    def size(self) -> int:
        return sum(op[0] in ("login", "logout", "event") for op in self.ops)


@dataclass
class Model:
    """The store and one process's buffer, as plain Python."""

    now: int = START_MS
    origin: str = ""  # the library's process origin: ties of one millisecond follow it
    seq: int = 0  # the process's marks, numbered in call order
    buffer: list[list[tuple[Any, ...]]] = field(default_factory=list)  # ops per call
    pending: list[Batch] = field(default_factory=list)
    logins: set[tuple[str, int]] = field(default_factory=set)
    logouts: set[tuple[str, int]] = field(default_factory=set)
    # stats()
    flushed: int = 0
    failures: int = 0
    quarantined: int = 0
    retried: int = 0
    rejected: int = 0
    # the store
    days: defaultdict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    day_users: set[tuple[str, str]] = field(default_factory=set)
    month_users: set[tuple[str, str]] = field(default_factory=set)
    registered: dict[str, str] = field(default_factory=dict)  # user -> first registration
    # the stored marks: user -> [(time, origin, seq, kind, day, month)]
    marks: defaultdict[str, list[tuple[Any, ...]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    pruned: set[tuple[int, str, int]] = field(default_factory=set)  # keys of timed-out logins
    events: list[tuple[int, str, str, Any, str]] = field(default_factory=list)

    # -- calls --
    def login(self, user: str) -> None:
        day, month = keys(self.now)
        self.seq += 1
        self.buffer.append(
            [
                ("login", user, self.now, self.origin, self.seq, day, month),
                ("users", day, month, user),
            ]
        )
        self.logins.add((user, self.now))

    def logout(self, user: str) -> None:
        self.seq += 1
        self.buffer.append([("logout", user, self.now, self.origin, self.seq, "", "")])
        self.logouts.add((user, self.now))

    def track(self, event: str, user: str, data: dict[str, Any]) -> None:
        day, _ = keys(self.now)
        ops: list[tuple[Any, ...]] = [("event", self.now, user, event, data, day)]
        if event in RULES:
            name, key = RULES[event]
            if name == "newUsers":  # players on the day of their first registration ever
                ops.append(("new", day, user))
            else:
                amount = 1 if key is None else data[key]
                exact = Decimal(repr(amount)) if event in DECIMAL_EVENTS else int(amount)
                ops.append(("count", day, name, exact))
        self.buffer.append(ops)

    # -- flushes: "ok", or an injected failure "before" / "after" the write --
    def flush(self, mode: str = "ok") -> bool:
        """Returns True when the library must raise StoreError."""
        if self.buffer:
            self.pending.append(Batch([op for call in self.buffer for op in call], self.now))
            self.buffer = []
        while self.pending:
            batch = self.pending[0]
            if batch.failed and self.now - batch.created > MAX_RETRY_AGE_MS:
                # Its id may be pruned by now: set aside, never retried (flusher.py).
                self.pending.pop(0)
                self.quarantined += 1
                continue
            self.retried += batch.failed
            if mode == "ok":
                if not batch.applied:
                    self.apply(batch.ops)
                self.flushed += batch.size
                self.pending.pop(0)
                continue
            self.failures += 1
            if mode == "after" and not batch.applied:
                self.apply(batch.ops)
                batch.applied = True
            batch.failed = True
            return True
        return False

    def restart(self, origin: str) -> None:
        """stop() (a successful final flush), then a new process with its own origin."""
        self.flush()
        self.origin, self.seq = origin, 0
        self.flushed = self.failures = self.retried = self.rejected = 0  # stats() is per process
        self.quarantined = 0

    # -- the store's rules --
    def sessions(self) -> list[dict[str, Any]]:
        """The walk with logins as the only activity (docs/concepts.md): a login with no
        session open starts one, with one open moves its last mark; a logout ends it
        there; a mark more than the idle timeout after the last ends it at the last,
        as the prune job does. Logins come before logouts at one millisecond."""
        found = []
        for user, marks in self.marks.items():
            ordered = sorted(marks)  # time, then the process and its call order
            marked = [(at, kind, day, month) for at, _origin, _seq, kind, day, month in ordered]
            found += login_sessions(user, marked, IDLE_TIMEOUT_MS, self.pruned)
        return found

    def timed(self, month: str) -> tuple[int, int]:
        seconds = [s["duration"] for s in self.sessions() if s["month"] == month]
        return len(seconds), sum(seconds)

    def apply(self, ops: list[tuple[Any, ...]]) -> None:
        for op in ops:
            if op[0] == "users":
                _, day, month, user = op
                if (day, user) not in self.day_users:
                    self.day_users.add((day, user))
                    self.days[day]["dau"] += 1
                self.month_users.add((month, user))
        registering: dict[str, str] = {}  # user -> the batch's earliest registration
        for op in ops:
            if op[0] == "new":
                _, day, user = op
                registering[user] = min(day, registering.get(user, day))
        for user, day in registering.items():
            first = self.registered.get(user)
            if first is None or day < first:  # the player moves to the earlier day
                if first is not None:
                    self.days[first]["newUsers"] -= 1
                self.registered[user] = day
                self.days[day]["newUsers"] += 1
        for op in ops:
            if op[0] in ("login", "logout"):
                kind, user, at, origin, seq, day, month = op
                self.marks[user].append((at, origin, seq, kind, day, month))
            elif op[0] == "count":
                _, day, name, amount = op
                self.days[day][name] += amount
        self.events += [(op[1], op[2], op[3], op[4], op[5]) for op in ops if op[0] == "event"]

    def prune(self) -> None:
        for s in self.sessions():
            if s["logout"] is None and s["last"] < self.now - IDLE_TIMEOUT_MS:
                self.pruned.add((s["user"], s["login"], s["last"]))
        # Expired at exactly EVENT_TTL_MS old (the documented boundary): kept while younger.
        self.events = [e for e in self.events if e[0] > self.now - EVENT_TTL_MS]

    # -- reads --
    def day_doc(self, day: str) -> dict[str, Any]:
        counters = self.days[day]
        doc: dict[str, Any] = {"day": day, "month": day[:7]}
        doc.update((name, counters.get(name, 0)) for name in DAILY_FIELDS)
        doc["totalSessionS"] = sum(s["duration"] for s in self.sessions() if s["day"] == day)
        doc["sessionCount"] = sum(1 for s in self.sessions() if s["day"] == day)
        doc.update((name, counters[name]) for name in sorted(counters) if name not in doc)
        return doc

    def metrics(self) -> dict[str, Any]:
        day, month = keys(self.now)
        count, total = self.timed(month)
        # Every field, custom counters too, zeros before anything moved.
        zeros = dict.fromkeys(["goldLooted", "questsCompleted"], 0)
        today = {"day": day, "month": month, **dict.fromkeys(DAILY_FIELDS, 0), **zeros}
        if day in self.days:
            today.update(self.day_doc(day))
        return {
            "today": today,
            "dau": today["dau"],
            "mau": sum(1 for m, _ in self.month_users if m == month),
            "avgSessionMin": (2 * total + 60 * count) // (120 * count) if count else 0,
            "activeSessions": self.active_sessions(),
        }

    def last_30_days(self) -> list[dict[str, Any]]:
        return [self.day_doc(day) for day in sorted(self.days, reverse=True)[:30]]

    def sessions_of(self, user: str) -> list[tuple[Any, ...]]:
        return sorted(
            (s["login"], s["logout"], s["duration"], s["day"], s["timed_out"])
            for s in self.sessions()
            if s["user"] == user
        )

    def open_sessions(self) -> int:
        return sum(s["logout"] is None for s in self.sessions())

    def active_sessions(self) -> int:
        return sum(
            s["logout"] is None and s["last"] >= self.now - IDLE_TIMEOUT_MS for s in self.sessions()
        )


def _ms(moment: datetime | None) -> int | None:
    return None if moment is None else (moment - EPOCH) // timedelta(milliseconds=1)


class AnalyticsMachine(RuleBasedStateMachine):
    """Drives one ``Analytics`` (restarted at will) on a fresh store of ``backend``."""

    backend: Backend

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="gso-stateful-"))
        self.store = FaultyStore(open_store(self.backend.make_url(self.tmp)))
        self.model = Model()
        self.analytics = self._new_analytics()
        self.model.origin = self.analytics._aggregator.origin

    def _clock(self) -> datetime:
        return EPOCH + timedelta(milliseconds=self.model.now)

    def _new_analytics(self) -> Analytics:
        return Analytics(
            self.store,
            clock=self._clock,
            counters=CUSTOM_COUNTERS,
            flush_interval=3600,
            active_on="login",
            idle_timeout=timedelta(milliseconds=IDLE_TIMEOUT_MS),
        )

    def teardown(self) -> None:
        try:
            self.analytics.flush()
            self.model.flush()
            self.check_store_content()
            assert self.analytics.get_metrics().to_dict() == self.model.metrics()
        finally:
            self.analytics.stop_timeout = 1.0
            self.analytics.stop()
            self.store.close()
            shutil.rmtree(self.tmp, ignore_errors=True)

    # -- calls --------------------------------------------------------------------------

    @rule(user=st.sampled_from(USERS))
    def login(self, user: str) -> None:
        if (user, self.model.now) in self.model.logins:
            return  # two logins of one user in one millisecond: no "newest" to pick
        self.analytics.on_login(user, f"name-{user}")
        self.model.login(user)

    @rule(user=st.sampled_from(USERS))
    def logout(self, user: str) -> None:
        if (user, self.model.now) in self.model.logouts:
            return  # two pending logouts alike but for their origin: no "earliest"
        self.analytics.on_logout(user)
        self.model.logout(user)

    @rule(
        event=st.sampled_from(EVENTS),
        user=st.sampled_from(USERS),
        amount=st.integers(0, 10**6) | st.integers(0, 400).map(lambda q: q / 4),
    )
    def track(self, event: str, user: str, amount: float) -> None:
        key = RULES.get(event, ("", None))[1]
        if key == "amountCents":
            amount = int(amount)  # real money is whole cents
        data: dict[str, Any] = {key: amount} if key else {"step": 1}
        self.analytics.track(event, user, data)
        if key is not None and event not in DECIMAL_EVENTS and amount != int(amount):
            self.model.rejected += 1  # a fraction for a whole counter: counted, dropped
        else:
            self.model.track(event, user, data)

    @rule(call=st.sampled_from(HOSTILE))
    def hostile(self, call: Any) -> None:
        call(self.analytics)
        self.model.rejected += 1

    # -- time -----------------------------------------------------------------------------

    @rule(data=st.data(), kind=st.sampled_from([*sorted(CLOCK_STEPS), "midnight", "month-end"]))
    def advance(self, data: st.DataObject, kind: str) -> None:
        """A step of the clock, or a jump to one second before midnight or month end."""
        if kind in CLOCK_STEPS:
            step = data.draw(CLOCK_STEPS[kind], label=kind)
            if self.backend.name in WHOLE_SECONDS:
                step = step // 1000 * 1000
            self.model.now += step
            return
        moment = EPOCH + timedelta(milliseconds=self.model.now)
        edge = (moment + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
        if kind == "month-end":
            edge = (moment.replace(day=28) + timedelta(days=4)).replace(day=1, hour=0, minute=0)
            edge = edge.replace(second=0, microsecond=0)
        self.model.now = (edge - EPOCH) // timedelta(milliseconds=1) - 1000

    # -- flushes, restarts, prunes -------------------------------------------------------------

    @rule(mode=st.sampled_from(["ok", "ok", "before", "after"]))
    def flush(self, mode: str) -> None:
        """A flush; or one the store fails before the write, or after it (then the
        outcome looks unknown to the library, which keeps and retries the batch)."""
        if mode == "ok":
            self.analytics.flush()
            self.model.flush()
            return
        (self.store.fail_before if mode == "before" else self.store.fail_after)()
        raised = False
        try:
            self.analytics.flush()
        except StoreError:
            raised = True
        finally:
            self.store.disarm()  # unused when there was nothing to flush
        assert raised == self.model.flush(mode)

    @rule()
    def restart(self) -> None:
        """The process stops (final flush) and a new one takes over the store, a
        millisecond later: a player's marks of one millisecond from two processes are
        ordered by the processes' origins, which a logout stored after another process's
        login of that millisecond cannot be (stored activity keeps its millisecond only;
        docs/concepts.md), and that tie is not what this machine is about."""
        assert self.analytics.stop() is True
        self.model.now += 1
        self.analytics = self._new_analytics()
        self.model.restart(self.analytics._aggregator.origin)

    @precondition(lambda self: not self.model.pending and not self.model.buffer)
    @rule()
    def prune(self) -> None:
        """The library prunes after a successful flush only, never with a batch pending
        (a retried batch must find its id, which the prune could forget) and with no
        calls buffered from before it: a prune forgets logout marks older than the
        batch-id retention plus the timeout, which a call buffered across a clock jump
        of days would still need (the documented limit of the guarantee)."""
        self.analytics.prune()
        self.model.prune()

    # -- reads ---------------------------------------------------------------------------------

    @rule(kind=st.sampled_from(["metrics", "last-30-days", "store"]))
    def read(self, kind: str) -> None:
        """``get_metrics()`` and ``get_last_30_days()`` flush first; "store" reads what
        the store holds now, without a flush."""
        if kind == "metrics":
            metrics = self.analytics.get_metrics().to_dict()
            self.model.flush()
            assert metrics == self.model.metrics()
        elif kind == "last-30-days":
            days = [d.to_dict() for d in self.analytics.get_last_30_days()]
            self.model.flush()
            assert days == self.model.last_30_days()
        else:
            self.check_store_content()

    def check_store_content(self) -> None:
        """Sessions, events, open sessions and month figures, as the model says."""
        inner = self.store.inner
        for user in USERS:
            got = sorted(
                (_ms(s.login_at), _ms(s.logout_at), s.duration_s, s.day, s.timed_out)
                for s in inner.get_sessions(user)
            )
            assert got == self.model.sessions_of(user), user
        events = [
            (_ms(e.ts), e.user_id, e.event, json.loads(e.data), e.day)
            for e in inner.get_events(limit=100_000)
        ]
        # Compared as a multiset: with equal or stepped-back timestamps the backends
        # order the stream differently (insertion order; MongoDB's ts-based _id).
        assert sorted(events, key=repr) == sorted(self.model.events, key=repr)
        assert inner.count_open_sessions() == self.model.open_sessions()
        for month in {m for m, _ in self.model.month_users}:
            figures = inner.get_month(month)
            count, total = self.model.timed(month)
            mau = sum(1 for m, _ in self.model.month_users if m == month)
            assert (figures.mau, figures.timed_sessions, figures.timed_session_s) == (
                mau,
                count,
                total,
            )

    @invariant()
    def stats_match(self) -> None:
        stats = self.analytics.stats()
        model = self.model
        buffered = len(model.buffer) + sum(batch.size for batch in model.pending)
        assert stats["buffered"] == buffered
        assert stats["rejected"] == model.rejected
        assert stats["dropped"] == 0
        assert stats["flushed"] == model.flushed
        assert stats["flush_failures"] == model.failures
        assert stats["retried"] == model.retried
        assert stats["quarantined"] == model.quarantined


#: Slower backends get fewer examples; every one still gets a few dozen steps each.
EXAMPLES = {"memory": 150, "sqlite": 80}


def test_analytics_state_machine(backend: Backend, store_url: str) -> None:
    """Any sequence of API calls, failures, restarts, prunes and clock steps leaves the
    library's stats and the store exactly where the model says."""
    del store_url  # requested so a backend that cannot run here is skipped early
    machine = type(
        f"AnalyticsMachine_{backend.name.replace('-', '_')}",
        (AnalyticsMachine,),
        {"backend": backend},
    )
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=EXAMPLES.get(backend.name, 25),
            stateful_step_count=50,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            database=None,
        ),
    )


@pytest.mark.parametrize("ms", [0, 499, 500, 1499, 1500, 2500, -1, -1500])
def test_model_rounds_like_the_seed(ms: int) -> None:
    """The model itself: JavaScript's Math.round (halves up), never below zero."""
    expected = {0: 0, 499: 0, 500: 1, 1499: 1, 1500: 2, 2500: 3, -1: 0, -1500: 0}[ms]
    assert seconds_between(0, ms) == expected
