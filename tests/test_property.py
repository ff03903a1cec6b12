"""Property test: random play through ``Analytics`` matches an independent model.

Hypothesis generates sequences of logins, logouts, tracked events (counted, with
amounts, custom and unknown), clock steps (sub-second, across midnight and month end,
past the session timeout, and backwards), flushes of either of two instances, prunes
and intermediate reads. Each sequence runs on the memory store and on a fresh SQLite
file, and every read is compared with :class:`Model`: plain Python written from the
seed's semantics, sharing no code with the library (its own day keys, counter map,
integer-millisecond durations with JavaScript rounding, dau/mau sets, averages, and
sessions as the walk over each player's marks in time order).

Each user is served by one instance (as a sticky load balancer would), so the model
is exact; the two instances still share every day, month and counter.
"""

from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import hypothesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from login_walk import login_sessions

from gso_analytics import Analytics, Store, open_store

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MS_PER_HOUR = 3_600_000
#: The seed's definitions: ``active_on="login"`` (tracked calls are no marks) and a
#: long ``idle_timeout``, under which login/logout pairs give 0.2's sessions.
IDLE_TIMEOUT_MS = 12 * MS_PER_HOUR
EVENT_TTL_MS = 7 * 24 * MS_PER_HOUR  # the library's default event_ttl

USERS = ("u0", "u1", "u2", "u3")
INSTANCES = 2

#: The seed's daily document fields, typed out from AnalyticsSystem.js.
SEED_FIELDS = (
    "dau", "newUsers", "creditsEarned", "creditsSpent", "gemsEarned", "gemsSpent",
    "gemsPurchased", "stripeRevenue", "dungeonsRun", "craftsCompleted", "pvpBattles",
    "raidBattles", "marketSales", "totalSessionS", "sessionCount",
)  # fmt: skip

#: event -> (field, key of the amount in data or None for +1); from the seed's COUNTER_MAP
#: plus the two custom counters passed below.
RULES: dict[str, tuple[str, str | None]] = {
    "dungeon.complete": ("dungeonsRun", None),
    "pvp.battle": ("pvpBattles", None),
    "pvp.ranked.battle": ("pvpBattles", None),
    "user.register": ("newUsers", None),
    "credits.earn": ("creditsEarned", "amount"),
    "gems.spend": ("gemsSpent", "amount"),
    "gems.purchase": ("gemsPurchased", "gems"),
    "stripe.payment": ("stripeRevenue", "amountCents"),
    "quest.complete": ("questsCompleted", None),
    "gold.loot": ("goldLooted", "amount"),
}
CUSTOM_COUNTERS = {"quest.complete": "questsCompleted", "gold.loot": ("goldLooted", "amount")}
UNKNOWN_EVENTS = ("tutorial.step", "shop.open")

STARTS = [  # UTC instants near the awkward places of a calendar
    datetime(2024, 2, 28, 21, 0, tzinfo=UTC),  # leap day ahead
    datetime(2025, 1, 31, 20, 0, tzinfo=UTC),  # month end (New York: 15:00)
    datetime(2025, 3, 8, 22, 0, tzinfo=UTC),  # New York springs forward on the 9th
    datetime(2025, 11, 1, 23, 0, tzinfo=UTC),  # New York falls back on the 2nd
    datetime(2025, 12, 31, 17, 0, tzinfo=UTC),  # year end
]


class Clock:
    """The injected clock: integer microseconds since the epoch."""

    def __init__(self, us: int) -> None:
        self.us = us

    def __call__(self) -> datetime:
        return EPOCH + timedelta(microseconds=self.us)


def as_datetime(ms: int) -> datetime:
    return EPOCH + timedelta(milliseconds=ms)


def session_order(session: tuple[Any, ...]) -> tuple[Any, ...]:
    """Sessions sort by login, then logout (an open session has none), then the rest."""
    login, logout, *rest = session
    return (login, logout is None, logout or login, *rest)


class Model:
    """What the store must contain, computed from the operations alone."""

    def __init__(self, tz: str, now_us: int) -> None:
        self.tz = ZoneInfo(tz)
        self.now_us = now_us
        self.buffers: list[list[tuple[Any, ...]]] = [[] for _ in range(INSTANCES)]
        # The store, as applied so far:
        self.days: dict[str, dict[str, Any]] = {}  # day -> {"month": .., field: value}
        self.day_users: set[tuple[str, str]] = set()
        self.month_users: set[tuple[str, str]] = set()
        self.registered: dict[str, str] = {}  # user -> day of their first registration
        # user -> stored marks (time, call number, kind, day, month); a user is served by
        # one instance, so the call number orders two marks of one millisecond.
        self.marks: defaultdict[str, list[tuple[Any, ...]]] = defaultdict(list)
        self.pruned: set[tuple[str, int, int]] = set()  # logins the prune job timed out
        self.events: list[tuple[Any, ...]] = []
        self.calls = 0

    # -- time --
    @property
    def now_ms(self) -> int:
        return self.now_us // 1000  # JavaScript Dates hold milliseconds

    def keys(self, ms: int) -> tuple[str, str]:
        local = as_datetime(ms).astimezone(self.tz)
        return (
            f"{local.year:04d}-{local.month:02d}-{local.day:02d}",
            f"{local.year:04d}-{local.month:02d}",
        )

    # -- calls (buffered per instance) --
    def login(self, user: str) -> None:
        i, t = USERS.index(user) % INSTANCES, self.now_ms
        day, month = self.keys(t)
        self.calls += 1
        buffer = self.buffers[i]
        buffer.append(("mark", user, t, self.calls, "login", day, month))
        buffer.append(("users", day, month, user))

    def logout(self, user: str) -> None:
        self.calls += 1
        mark = ("mark", user, self.now_ms, self.calls, "logout", "", "")
        self.buffers[USERS.index(user) % INSTANCES].append(mark)

    def track(self, instance: int, event: str, user: str, data: dict[str, Any]) -> None:
        t = self.now_ms
        day, month = self.keys(t)
        if event in RULES:
            field, key = RULES[event]
            amount = data[key] if key is not None else 1
            if field == "newUsers":  # players on the day of their first registration ever
                self.buffers[instance].append(("new", day, month, user))
            else:
                self.buffers[instance].append(("count", day, month, field, amount))
        self.buffers[instance].append(("event", as_datetime(t), user, event, data, day))

    # -- the store --
    def flush(self, instance: int) -> None:
        registering: dict[str, tuple[str, str]] = {}  # user -> the batch's earliest
        for op in self.buffers[instance]:
            kind = op[0]
            if kind == "count":
                _, day, month, field, amount = op
                doc = self.days.setdefault(day, {"month": month})
                doc[field] = doc.get(field, 0) + amount
            elif kind == "new":
                _, day, month, user = op
                registering[user] = min((day, month), registering.get(user, (day, month)))
            elif kind == "users":
                _, day, month, user = op
                self.days.setdefault(day, {"month": month})
                self.day_users.add((day, user))
                self.month_users.add((month, user))
            elif kind == "mark":
                self.marks[op[1]].append(op[2:])
            elif kind == "event":
                self.events.append(op[1:])
        for user, (day, month) in registering.items():
            first = self.registered.get(user)
            if first is None or day < first:  # the player moves to the earlier day
                if first is not None:
                    self.days[first]["newUsers"] -= 1
                self.registered[user] = day
                doc = self.days.setdefault(day, {"month": month})
                doc["newUsers"] = doc.get("newUsers", 0) + 1
        self.buffers[instance] = []

    def prune(self) -> None:
        now = self.now_ms
        for s in self.sessions():
            if s["logout"] is None and s["last"] < now - IDLE_TIMEOUT_MS:
                self.pruned.add((s["user"], s["login"], s["last"]))
        # Expired at exactly EVENT_TTL_MS old (the documented boundary): kept while younger.
        self.events = [e for e in self.events if e[0] > as_datetime(now - EVENT_TTL_MS)]

    def sessions(self) -> list[dict[str, Any]]:
        """The walk (docs/concepts.md) with logins as the only activity: a login with
        no session open starts one, with one open moves its last mark; a logout ends
        it there; a mark more than the idle timeout after the last ends it at the last
        (timed out), as the prune job does; Math.round((end or last - login) / 1000)
        seconds. At one millisecond, logins come before logouts."""
        found = []
        for user, marks in self.marks.items():
            ordered = sorted(marks)  # time, then call order (one process per player)
            marked = [(t, kind, day, month) for t, _call, kind, day, month in ordered]
            found += login_sessions(user, marked, IDLE_TIMEOUT_MS, self.pruned)
        return found

    def timed(self, month: str) -> tuple[int, int]:
        seconds = [s["duration"] for s in self.sessions() if s["month"] == month]
        return len(seconds), sum(seconds)

    # -- reads --
    def day_doc(self, day: str) -> dict[str, Any]:
        stored = self.days[day]
        doc: dict[str, Any] = {"day": day, "month": stored["month"]}
        for field in SEED_FIELDS:
            doc[field] = stored.get(field, 0)
        doc["dau"] = sum(1 for d, _ in self.day_users if d == day)
        doc["totalSessionS"] = sum(s["duration"] for s in self.sessions() if s["day"] == day)
        doc["sessionCount"] = sum(1 for s in self.sessions() if s["day"] == day)
        doc.update((k, v) for k, v in stored.items() if k not in doc)
        return doc

    def metrics(self) -> dict[str, Any]:
        today, month = self.keys(self.now_ms)
        count, total = self.timed(month)
        return {
            "today": {  # every field, custom counters too, zeros before anything moved
                "day": today,
                "month": month,
                **dict.fromkeys([*SEED_FIELDS, "goldLooted", "questsCompleted"], 0),
                **(self.day_doc(today) if today in self.days else {}),
            },
            "dau": sum(1 for d, _ in self.day_users if d == today),
            "mau": sum(1 for m, _ in self.month_users if m == month),
            # Math.round(total / count / 60), exactly, in integers
            "avgSessionMin": (2 * total + 60 * count) // (120 * count) if count else 0,
            "activeSessions": sum(
                s["logout"] is None and s["last"] >= self.now_ms - IDLE_TIMEOUT_MS
                for s in self.sessions()
            ),
        }

    def last_30_days(self) -> list[dict[str, Any]]:
        return [self.day_doc(day) for day in sorted(self.days, reverse=True)[:30]]

    def sessions_of(self, user: str) -> list[tuple[Any, ...]]:
        return sorted(
            (
                (
                    as_datetime(s["login"]),
                    None if s["logout"] is None else as_datetime(s["logout"]),
                    s["duration"],
                    s["timed_out"],
                    s["day"],
                    s["month"],
                )
                for s in self.sessions()
                if s["user"] == user
            ),
            key=session_order,
        )


# -- operations -------------------------------------------------------------------------

users = st.sampled_from(USERS)
instances = st.integers(0, INSTANCES - 1)
#: Whole amounts, some as floats (``3.0`` counts as 3; a fraction is bad input).
amounts = st.integers(0, 10**6) | st.integers(0, 4000).map(float)
#: Clock steps in microseconds, by kind; ``STEP_KINDS`` sets how often each is drawn.
#: Only "fine" and "back" leave whole half-seconds, so many sessions last exactly x.5 s
#: and many month averages are exactly x.5 minutes: the cases rounding gets wrong.
HALF_MINUTE = 30_000_000
STEPS = {
    "fine": st.integers(0, 3_000_000),  # sub-second to seconds, microsecond precision
    "halves": st.integers(0, 9).map(lambda halves: halves * 500_000),
    "minutes": st.integers(1, 20).map(lambda k: k * HALF_MINUTE),
    "hours": st.integers(0, 4 * 60).map(lambda k: k * HALF_MINUTE),  # up to two hours
    "long": st.integers(6 * 60, 40 * 60).map(lambda k: k * HALF_MINUTE),  # midnight, timeout
    "days": st.integers(1, 12).map(lambda days: days * 24 * MS_PER_HOUR * 1000),  # event TTL
    "back": st.integers(-3_000_000, 0),  # the clock steps back
}
STEP_KINDS = ["fine", "halves", "halves", "halves", "minutes", "minutes", "hours"]
STEP_KINDS += ["long", "long", "long", "days", "back"]


@st.composite
def step_us(draw: st.DrawFn) -> int:
    return draw(STEPS[draw(st.sampled_from(STEP_KINDS))])


@st.composite
def track_op(draw: st.DrawFn) -> tuple[Any, ...]:
    event = draw(st.sampled_from([*RULES, *UNKNOWN_EVENTS]))
    key = RULES[event][1] if event in RULES else None
    amount = draw(st.integers(0, 10**6) if key == "amountCents" else amounts)  # whole cents
    data: dict[str, Any] = {key: amount} if key else {"tag": draw(st.sampled_from("ab"))}
    return ("track", draw(instances), event, draw(users), data)


#: How often each kind of operation is drawn (a kind listed twice is drawn twice as often).
KINDS = ["login"] * 3 + ["logout"] * 2 + ["track"] * 4 + ["advance"] * 4 + ["flush"] * 2
KINDS += ["prune", "prune", "check"]


@st.composite
def operation(draw: st.DrawFn) -> tuple[Any, ...]:
    kind = draw(st.sampled_from(KINDS))
    if kind in ("login", "logout"):
        return (kind, draw(users))
    if kind == "track":
        return draw(track_op())
    if kind == "advance":
        return (kind, draw(step_us()))
    if kind == "flush":
        return (kind, draw(instances))
    return (kind,)


operations = st.lists(operation(), min_size=20, max_size=80)


def note_coverage(model: Model) -> None:
    """What an example exercised (``pytest --hypothesis-show-statistics`` shows it)."""
    closed = [s for s in model.sessions() if s["logout"] is not None]
    hypothesis.event(f"months with data: {len({d['month'] for d in model.days.values()})}")
    hypothesis.event(f"a session timed out: {any(s['timed_out'] for s in closed)}")
    months = {d["month"] for d in model.days.values()}
    hypothesis.event(f"a timed session: {any(model.timed(month)[0] for month in months)}")
    hypothesis.event(
        "a session of 0.5, 2.5, 4.5... s (round-half-even would differ): "
        + str(any((s["logout"] - s["login"]) % 2000 == 500 for s in closed))
    )


def assert_reads_match(analytics: Analytics, model: Model) -> None:
    assert analytics.get_metrics().to_dict() == model.metrics()
    assert [d.to_dict() for d in analytics.get_last_30_days()] == model.last_30_days()


def run(store: Store, ops: list[tuple[Any, ...]], tz: str, start_us: int) -> None:
    clock = Clock(start_us)
    model = Model(tz, start_us)
    fleet = [
        Analytics(
            store,
            clock=clock,
            tz=tz,
            counters=CUSTOM_COUNTERS,
            strict=True,
            active_on="login",
            idle_timeout=timedelta(milliseconds=IDLE_TIMEOUT_MS),
        )
        for _ in range(INSTANCES)
    ]
    for op in ops:
        kind = op[0]
        if kind == "login":
            fleet[USERS.index(op[1]) % INSTANCES].on_login(op[1], f"name-{op[1]}")
            model.login(op[1])
        elif kind == "logout":
            fleet[USERS.index(op[1]) % INSTANCES].on_logout(op[1])
            model.logout(op[1])
        elif kind == "track":
            _, instance, event, user, data = op
            fleet[instance].track(event, user, data)
            model.track(instance, event, user, data)
        elif kind == "advance":
            clock.us += op[1]
            model.now_us += op[1]
        elif kind == "flush":
            fleet[op[1]].flush()
            model.flush(op[1])
        elif kind == "prune":
            # After every instance flushed, as the flush thread prunes after a flush: a
            # prune forgets logout marks older than the batch-id retention plus the
            # timeout, which a call still buffered across a jump of days would need.
            for instance in range(INSTANCES):
                fleet[instance].flush()
                model.flush(instance)
            fleet[0].prune()
            model.prune()
        elif kind == "check":  # reads flush the reading instance only
            model.flush(0)
            assert_reads_match(fleet[0], model)

    for instance in range(INSTANCES):
        fleet[instance].flush()
        model.flush(instance)
    for analytics in fleet:
        assert_reads_match(analytics, model)
    for user in USERS:
        found = sorted(
            (
                (s.login_at, s.logout_at, s.duration_s, s.timed_out, s.day, s.month)
                for s in store.get_sessions(user)
            ),
            key=session_order,
        )
        assert found == model.sessions_of(user), user
        assert {s.username for s in store.get_sessions(user)} <= {f"name-{user}"}
    note_coverage(model)
    stored_events = [
        (e.ts, e.user_id, e.event, json.loads(e.data), e.day) for e in store.get_events(limit=10**6)
    ]
    assert stored_events == model.events
    for analytics in fleet:
        stats = analytics.stats()
        assert (stats["buffered"], stats["rejected"], stats["dropped"]) == (0, 0, 0)
        assert analytics.stop() is True


@settings(
    max_examples=60,
    deadline=None,  # SQLite commits vary with the machine's load
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    ops=operations,
    start=st.sampled_from(STARTS),
    offset_us=st.integers(0, 4 * MS_PER_HOUR * 1000),
    tz=st.sampled_from(["UTC", "America/New_York", "Asia/Kolkata"]),
)
def test_analytics_matches_an_independent_model(
    ops: list[tuple[Any, ...]], start: datetime, offset_us: int, tz: str
) -> None:
    """Whatever the order of calls, flushes, prunes and clock steps, every backend
    reports exactly what the model computes."""
    start_us = (start - EPOCH) // timedelta(microseconds=1) + offset_us
    run(open_store("memory://"), ops, tz, start_us)
    with tempfile.TemporaryDirectory() as tmp, open_store(f"sqlite:///{tmp}/prop.db") as store:
        run(store, ops, tz, start_us)
