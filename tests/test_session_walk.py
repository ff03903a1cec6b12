"""Stored sessions equal a walk over each player's logins and logouts in time order.

Why: a session is now defined by the player's marks in time order, wherever and
whenever they were recorded. Each login's session ends at the player's next mark
(login or logout) from any worker or thread. If that mark comes within
``session_timeout``, the session is closed there. If it comes later, the session timed
out at ``login + session_timeout``. If there is no next mark, the session is still
open. A logout that follows no login changes nothing. The old rules, where a logout
closed the session its own process opened, or the newest open one, or waited as a
pending logout, made the result depend on which worker flushed first once a player
had several sessions unflushed. In the issue's example, two sessions of 60 s became one
of 130 s plus one left open.

:func:`walk` writes the definition out on plain integers (milliseconds, exact
fractions), sharing no code with the library, and is itself checked on hand-computed
timelines. The store must then equal it:

- a hypothesis property on every backend (with MongoDB's transaction path too):
  2-4 workers on one store, random timelines around midnight of a month end, calls
  on random workers, flushes at random moments, flushes that fail before or after
  their commit, a worker that crashes with its calls unflushed, and a final flush of
  every worker in a random order;
- the issue's two-worker example, in both flush orders;
- two threads of one process, whose login is appended after its later logout;
- a prune that times a session out, then a late logout from another worker that
  re-closes it when it lies inside the timeout and leaves it timed out otherwise.
"""

from __future__ import annotations

import contextlib
import tempfile
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from fractions import Fraction
from math import floor
from pathlib import Path
from typing import Any

import hypothesis
import pytest
from conftest import BACKENDS, START, Backend, FakeClock
from faults import FaultyStore
from hypothesis import HealthCheck, Phase, given, note, settings
from hypothesis import strategies as st

from gso_analytics import Analytics, SessionRecord, Store, StoreError, open_store

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
SECOND_MS = 1000
MINUTE_MS = 60_000
HOUR_MS = 3_600_000
DAY_MS = 86_400_000
#: Short, so that generated timelines reach it often without spanning many days.
TIMEOUT_MS = 2 * HOUR_MS
SESSION_TIMEOUT = timedelta(milliseconds=TIMEOUT_MS)
#: Generated timelines start within an hour of this: midnight and the month end.
MONTH_END = datetime(2025, 3, 31, 23, 0, tzinfo=UTC)
#: Bound on a thread handshake of the race test; it takes microseconds.
HANDSHAKE_S = 10.0

#: Conftest's backends: the Mongo ones (nx-27017 and mongomock) run through its harness,
#: with write conflicts injected at random and retried.
backends = pytest.mark.parametrize("backend", BACKENDS, ids=[b.name for b in BACKENDS])

#: Hypothesis examples per backend: the whole module stays well under a minute, and
#: every flush costs a few round trips on the Mongo servers.
EXAMPLES = {"memory": 40, "sqlite": 30, "mongomock": 25, "mongo": 20}
#: Over the wire, shrinking a counterexample takes minutes: one found there is reported
#: as found. The in-process backends run first and shrink theirs, and the example
#: database replays it on every backend.
UNSHRUNK = {"mongo", "mongodb-uri"}


# -- the oracle --------------------------------------------------------------------------


def to_ms(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(milliseconds=1)


def at(ms: int) -> datetime:
    return EPOCH + timedelta(milliseconds=ms)


def day_key(ms: int) -> str:
    """The UTC day of ``ms``, by day arithmetic on the epoch (the library uses datetimes)."""
    return (date(1970, 1, 1) + timedelta(days=ms // DAY_MS)).isoformat()


def month_key(ms: int) -> str:
    return day_key(ms)[:7]


def js_round(value: Fraction) -> int:
    """JavaScript ``Math.round``: halves go up (Python's ``round`` goes to even)."""
    return floor(value + Fraction(1, 2))


@dataclass(frozen=True)
class Mark:
    """One login or logout call of a player."""

    t: int  # milliseconds since the epoch
    login: bool
    order: int = 0  # call order: orders one worker's calls of one millisecond


@dataclass(frozen=True)
class WalkedSession:
    login: int
    logout: int | None
    duration_s: int
    timed_out: bool

    def row(self) -> tuple[Any, ...]:
        """As :func:`session_row` reads a stored session."""
        logout = None if self.logout is None else at(self.logout)
        return (
            stamp(at(self.login)),
            stamp(logout),
            self.duration_s,
            self.timed_out,
            day_key(self.login),
            month_key(self.login),
        )


@dataclass
class DayFigures:
    session_count: int = 0
    total_session_s: int = 0
    users: set[str] = field(default_factory=set)


@dataclass
class MonthFigures:
    users: set[str] = field(default_factory=set)
    timed_sessions: int = 0
    timed_session_s: int = 0

    @property
    def avg_session_min(self) -> int:
        if not self.timed_sessions:
            return 0
        return js_round(Fraction(self.timed_session_s, self.timed_sessions) / 60)


@dataclass
class Walk:
    """What the store must hold: every session, and the figures they make."""

    sessions: dict[str, list[WalkedSession]] = field(default_factory=dict)
    days: defaultdict[str, DayFigures] = field(default_factory=lambda: defaultdict(DayFigures))
    months: defaultdict[str, MonthFigures] = field(
        default_factory=lambda: defaultdict(MonthFigures)
    )

    @property
    def open_sessions(self) -> int:
        return sum(s.logout is None for sessions in self.sessions.values() for s in sessions)


def walk(marks: Mapping[str, Iterable[Mark]], timeout_ms: int = TIMEOUT_MS) -> Walk:
    """The definition: each login's session ends at the player's next mark."""
    result = Walk()
    for player, player_marks in marks.items():
        ordered = sorted(player_marks, key=lambda mark: (mark.t, mark.order))
        sessions = result.sessions[player] = []
        for i, mark in enumerate(ordered):
            if not mark.login:
                continue  # a logout only ends the login right before it, if there is one
            day = result.days[day_key(mark.t)]
            month = result.months[month_key(mark.t)]
            day.session_count += 1
            day.users.add(player)
            month.users.add(player)
            end = ordered[i + 1].t if i + 1 < len(ordered) else None
            if end is None:
                sessions.append(WalkedSession(mark.t, None, 0, False))
            elif end - mark.t > timeout_ms:
                sessions.append(WalkedSession(mark.t, mark.t + timeout_ms, 0, True))
            else:
                seconds = js_round(Fraction(end - mark.t, SECOND_MS))
                sessions.append(WalkedSession(mark.t, end, seconds, False))
                day.total_session_s += seconds  # on the login's day, and month
                if seconds > 0:
                    month.timed_sessions += 1
                    month.timed_session_s += seconds
    return result


# -- the oracle, on timelines computed by hand -------------------------------------------

T0 = to_ms(START)  # where the fake clock starts


def marks(*script: tuple[int, str]) -> list[Mark]:
    """``(ms after T0, "in" | "out")`` pairs as marks, in the order given."""
    return [Mark(T0 + dt, kind == "in", order) for order, (dt, kind) in enumerate(script)]


def test_oracle_the_issue_example() -> None:
    """Login, 60 s, logout, 10 s, login, 60 s, logout: two sessions of 60 s."""
    result = walk({"p": marks((0, "in"), (60_000, "out"), (70_000, "in"), (130_000, "out"))})
    assert result.sessions["p"] == [
        WalkedSession(T0, T0 + 60_000, 60, False),
        WalkedSession(T0 + 70_000, T0 + 130_000, 60, False),
    ]
    assert result.days["2025-03-14"] == DayFigures(2, 120, {"p"})
    assert result.months["2025-03"] == MonthFigures({"p"}, 2, 120)
    assert result.open_sessions == 0


def test_oracle_a_login_ends_the_session_before_it() -> None:
    """A relogin without a logout ends the first session (1500.5 s rounds up to 1501);
    a logout after a logout, or before any login, changes nothing."""
    result = walk(
        {
            "p": marks(
                (-5_000, "out"),
                (0, "in"),
                (1_500_500, "in"),
                (1_600_000, "out"),
                (1_700_000, "out"),
            ),
            "q": marks((0, "in")),
        }
    )
    assert result.sessions["p"] == [
        WalkedSession(T0, T0 + 1_500_500, 1501, False),
        WalkedSession(T0 + 1_500_500, T0 + 1_600_000, 100, False),
    ]
    assert result.sessions["q"] == [WalkedSession(T0, None, 0, False)]
    assert result.days["2025-03-14"] == DayFigures(3, 1601, {"p", "q"})
    assert result.months["2025-03"] == MonthFigures({"p", "q"}, 2, 1601)
    assert result.open_sessions == 1


def test_oracle_the_timeout_is_inclusive() -> None:
    """An end exactly at the timeout closes the session; a millisecond later it timed
    out at login + timeout, with no seconds; a session under half a second counts its
    login but no timed seconds."""
    result = walk(
        {
            "exact": marks((0, "in"), (TIMEOUT_MS, "out")),
            "late": marks((0, "in"), (TIMEOUT_MS + 1, "in"), (TIMEOUT_MS + 500, "out")),
        }
    )
    assert result.sessions["exact"] == [WalkedSession(T0, T0 + TIMEOUT_MS, 7200, False)]
    assert result.sessions["late"] == [
        WalkedSession(T0, T0 + TIMEOUT_MS, 0, True),
        WalkedSession(T0 + TIMEOUT_MS + 1, T0 + TIMEOUT_MS + 500, 0, False),
    ]
    assert result.days["2025-03-14"] == DayFigures(3, 7200, {"exact", "late"})
    assert result.months["2025-03"] == MonthFigures({"exact", "late"}, 1, 7200)
    assert result.open_sessions == 0


def test_oracle_midnight_of_a_month_end_and_the_average() -> None:
    """Seconds belong to the login's day and month; 2.5 s rounds to 3; two sessions of
    150 s average 2.5 minutes, which rounds to 3 (Python's ``round`` says 2)."""
    midnight = to_ms(datetime(2025, 4, 1, tzinfo=UTC))
    result = walk(
        {
            "p": [Mark(midnight - 1_000, True), Mark(midnight + 1_500, False)],
            "q": [
                Mark(midnight - 150_000, True),
                Mark(midnight, True),
                Mark(midnight + 150_000, False),
            ],
        }
    )
    assert result.sessions["p"] == [WalkedSession(midnight - 1_000, midnight + 1_500, 3, False)]
    assert result.days["2025-03-31"] == DayFigures(2, 153, {"p", "q"})
    assert result.days["2025-04-01"] == DayFigures(1, 150, {"q"})
    assert result.months["2025-03"] == MonthFigures({"p", "q"}, 2, 153)
    assert result.months["2025-04"].avg_session_min == 3
    assert MonthFigures({"q"}, 2, 300).avg_session_min == 3
    assert MonthFigures().avg_session_min == 0


def test_oracle_ties_of_one_worker_in_call_order() -> None:
    """Two calls of one worker at one millisecond: the later call is the later mark."""
    logout_first = walk({"p": [Mark(T0, False, 0), Mark(T0, True, 1)]})
    login_first = walk({"p": [Mark(T0, True, 0), Mark(T0, False, 1)]})
    assert logout_first.sessions["p"] == [WalkedSession(T0, None, 0, False)]
    assert login_first.sessions["p"] == [WalkedSession(T0, T0, 0, False)]


# -- reading the store, and what it must read ----------------------------------------------


def stamp(moment: datetime | None) -> str | None:
    """A stored or expected time, readable in a failure's diff."""
    return None if moment is None else f"{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S.%f}"[:-3]


def session_row(record: SessionRecord) -> tuple[Any, ...]:
    return (
        stamp(record.login_at),
        stamp(record.logout_at),
        record.duration_s,
        record.timed_out,
        record.day,
        record.month,
    )


def observe(
    store: Store,
    analytics: Analytics,
    clock: FakeClock,
    players: Iterable[str],
    moments: Iterable[int],
) -> dict[str, Any]:
    """What a reader sees of the days and months of ``moments`` and the sessions of
    ``players``, one flat key each, so that a failure lists just what differs.

    ``get_metrics`` reads the clock's month, so the clock visits the last of the
    moments in each month (and is put back); ``analytics`` must have nothing left to
    flush.
    """
    moments = list(moments)
    seen: dict[str, Any] = {"open sessions": store.count_open_sessions()}
    for day in sorted({day_key(t) for t in moments}):
        stats = store.get_day(day)  # None: nothing recorded that day
        seen[f"day {day}"] = {
            name: 0 if stats is None else stats[name]
            for name in ("sessionCount", "totalSessionS", "dau")
        }
    now = clock.now
    last_in_month = {month_key(t): t for t in sorted(moments)}
    for month in sorted(last_in_month):
        stats = store.get_month(month)
        clock.set(at(last_in_month[month]))
        metrics = analytics.get_metrics()
        seen[f"month {month}"] = {
            "mau": stats.mau,
            "timedSessions": stats.timed_sessions,
            "timedSessionS": stats.timed_session_s,
            "metrics.mau": metrics.mau,
            "avgSessionMin": metrics.avg_session_min,
            "activeSessions": metrics.active_sessions,
        }
    clock.set(now)
    for player in players:
        rows = map(session_row, store.get_sessions(player))
        seen[f"sessions of {player}"] = sorted(rows, key=lambda row: tuple(map(str, row)))
    return seen


def expect(result: Walk, players: Iterable[str], moments: Iterable[int]) -> dict[str, Any]:
    """:func:`observe`'s answer for a store that holds ``result``."""
    moments = list(moments)
    wanted: dict[str, Any] = {"open sessions": result.open_sessions}
    for day in sorted({day_key(t) for t in moments}):
        figures = result.days.get(day, DayFigures())
        wanted[f"day {day}"] = {
            "sessionCount": figures.session_count,
            "totalSessionS": figures.total_session_s,
            "dau": len(figures.users),
        }
    for month in sorted({month_key(t) for t in moments}):
        figures = result.months.get(month, MonthFigures())
        wanted[f"month {month}"] = {
            "mau": len(figures.users),
            "timedSessions": figures.timed_sessions,
            "timedSessionS": figures.timed_session_s,
            "metrics.mau": len(figures.users),
            "avgSessionMin": figures.avg_session_min,
            "activeSessions": result.open_sessions,
        }
    for player in players:
        wanted[f"sessions of {player}"] = [s.row() for s in result.sessions.get(player, [])]
    return wanted


def worker(store: Store, clock: Callable[[], datetime]) -> Analytics:
    """One worker process: never started (flushed by hand only), forwarding nothing."""
    return Analytics(
        store, clock=clock, flush_interval=3600, session_timeout=SESSION_TIMEOUT, forwarders=[]
    )


# -- the property -----------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    t: int  # milliseconds since the epoch; the clock is set there for the call
    player: str
    login: bool
    worker: int  # index in the fleet; ``Scenario.workers`` is the crashed worker


@dataclass(frozen=True)
class Flush:
    after: int  # made after this many calls
    worker: int
    fault: str | None  # None, "before" (nothing written) or "after" (committed, then raised)
    retry_now: bool  # a failed flush is retried at once, or left to the worker's next one


@dataclass(frozen=True)
class Scenario:
    workers: int
    calls: tuple[Call, ...]  # in time order
    flushes: tuple[Flush, ...]  # in order of ``after``
    final_order: tuple[int, ...]

    def marks(self) -> dict[str, list[Mark]]:
        """Every call that reached the store, as the oracle's marks (the crashed
        worker's calls never did)."""
        found: dict[str, list[Mark]] = {}
        for order, call in enumerate(self.calls):
            found.setdefault(call.player, [])
            if call.worker != self.workers:
                found[call.player].append(Mark(call.t, call.login, order))
        return found


#: A session's length, or the time to the next login when it has no logout.
DURATIONS = st.one_of(
    st.integers(1, 20).map(lambda halves: halves * 500),  # x.5 s: half up, not to even
    st.sampled_from([1, 499, 500, 1_499, 2_500]),  # rounds to 0 s, or a small half
    st.integers(1, HOUR_MS),
    st.sampled_from([TIMEOUT_MS - 1, TIMEOUT_MS, TIMEOUT_MS + 1]),
    st.integers(TIMEOUT_MS + 1, 3 * TIMEOUT_MS),
)
#: From a logout to the next login: a reconnect, a break, or longer than the timeout.
GAPS = st.one_of(
    st.integers(1, MINUTE_MS),
    st.integers(MINUTE_MS, 3 * HOUR_MS),
    st.integers(TIMEOUT_MS, 12 * HOUR_MS),
)
#: How a session ends: a logout, a second logout too, or only the next login.
ENDS = ["logout", "logout", "logout", "two logouts", "next login", "next login"]
FAULTS = [None, None, None, "before", "after"]


@st.composite
def timeline(draw: st.DrawFn) -> list[tuple[int, bool]]:
    """One player's marks, 1 ms apart at least: 1-5 sessions, sometimes a logout first."""
    t = to_ms(MONTH_END) + draw(st.integers(-HOUR_MS, HOUR_MS))
    found = []
    if draw(st.integers(0, 5)) == 0:
        found.append((t, False))
        t += draw(GAPS)
    for _ in range(draw(st.integers(1, 5))):
        found.append((t, True))
        t += draw(DURATIONS)
        end = draw(st.sampled_from(ENDS))
        if end == "next login":
            continue
        found.append((t, False))
        if end == "two logouts":
            t += draw(st.integers(1, MINUTE_MS))
            found.append((t, False))
        t += draw(GAPS)
    return found


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    workers = draw(st.integers(2, 4))
    crashed = draw(st.booleans())
    picks = [*range(workers)] * 4 + ([workers] if crashed else [])
    calls = []
    for player in range(draw(st.integers(3, 8))):
        for t, login in draw(timeline()):
            calls.append(Call(t, f"p{player}", login, draw(st.sampled_from(picks))))
    calls.sort(key=lambda call: call.t)  # stable: a player's own marks never tie
    flushes = draw(
        st.lists(
            st.builds(
                Flush,
                after=st.integers(0, len(calls)),
                worker=st.integers(0, workers - 1),
                fault=st.sampled_from(FAULTS),
                retry_now=st.booleans(),
            ),
            max_size=4 * workers,
        )
    )
    return Scenario(
        workers,
        tuple(calls),
        tuple(sorted(flushes, key=lambda flush: flush.after)),
        tuple(draw(st.permutations(range(workers)))),
    )


def flush(analytics: Analytics, faulty: FaultyStore, plan: Flush) -> None:
    """One flush of the plan, its fault armed on the worker's store handle."""
    if plan.fault == "before":
        faulty.fail_before()
    elif plan.fault == "after":
        faulty.fail_after()
    try:
        analytics.flush()
    except StoreError as exc:
        if plan.fault is None or "injected" not in str(exc):
            raise
        note(f"  {exc}")
        if plan.retry_now:
            analytics.flush()
    finally:
        faulty.disarm()  # unused when the worker had nothing to flush


def note_coverage(scenario: Scenario, result: Walk) -> None:
    """What an example exercised (``pytest --hypothesis-show-statistics`` shows it)."""
    sessions = [s for player in result.sessions.values() for s in player]
    hypothesis.event(f"most sessions of a player: {max(map(len, result.sessions.values()))}")
    hypothesis.event(f"a session timed out: {any(s.timed_out for s in sessions)}")
    hypothesis.event(f"months with logins: {len(result.months)}")
    crashed = any(call.worker == scenario.workers for call in scenario.calls)
    hypothesis.event(f"a crashed worker: {crashed}")
    hypothesis.event(f"a failed flush: {any(f.fault for f in scenario.flushes)}")


def run_scenario(backend: Backend, scenario: Scenario) -> None:
    """Replay ``scenario`` on a fresh store of ``backend`` and compare it with the walk."""
    clock = FakeClock(at(scenario.calls[0].t))
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        url = backend.make_url(Path(tmp))
        reader = stack.enter_context(open_store(url))
        handles = [
            stack.enter_context(open_store(url)) if backend.shared_by_url else reader
            for _ in range(scenario.workers + 1)
        ]
        faulty = [FaultyStore(handle) for handle in handles]
        fleet = [worker(store, clock) for store in faulty]
        plans = list(scenario.flushes)
        for done in range(len(scenario.calls) + 1):
            while plans and plans[0].after == done:
                plan = plans.pop(0)
                note(f"flush w{plan.worker}" + (f", failing {plan.fault}" if plan.fault else ""))
                flush(fleet[plan.worker], faulty[plan.worker], plan)
            if done < len(scenario.calls):
                call = scenario.calls[done]
                clock.set(at(call.t))
                name = "crashed" if call.worker == scenario.workers else f"w{call.worker}"
                kind = "login" if call.login else "logout"
                note(f"{stamp(at(call.t))} {call.player} {kind} on {name}")
                if call.login:
                    fleet[call.worker].on_login(call.player)
                else:
                    fleet[call.worker].on_logout(call.player)
        note(f"final flushes: {scenario.final_order}")
        for index in scenario.final_order:
            fleet[index].flush()
        result = walk(scenario.marks())
        note_coverage(scenario, result)
        players = sorted(result.sessions)
        moments = [call.t for call in scenario.calls]
        assert observe(reader, fleet[0], clock, players, moments) == expect(
            result, players, moments
        )


@backends
def test_every_interleaving_stores_the_walk(backend: Backend) -> None:
    """Whatever the workers, the flush order, failed flushes and a crashed worker, the
    store holds exactly the walk of the calls that reached it."""

    phases = settings.default.phases
    if backend.name in UNSHRUNK:
        phases = tuple(phase for phase in phases if phase is not Phase.shrink)

    @settings(
        max_examples=EXAMPLES.get(backend.name, 10),
        deadline=None,  # a flush on the Mongo servers varies with the machine's load
        suppress_health_check=[HealthCheck.too_slow],
        phases=phases,
    )
    @given(scenario=scenarios())
    def check(scenario: Scenario) -> None:
        run_scenario(backend, scenario)

    check()


# -- the issue's example ----------------------------------------------------------------


@backends
@pytest.mark.parametrize("first", ["logout's worker", "logins' worker"])
def test_the_issue_example_in_either_flush_order(
    backend: Backend, store: Store, other_store: Store, clock: FakeClock, first: str
) -> None:
    """A logs in, out after 60 s, in again 10 s later; B logs the player out 60 s
    after that: two sessions of 60 s, none open, whichever worker flushes first."""
    a = worker(store, clock)
    b = worker(other_store, clock)
    a.on_login("p")
    clock.advance(60)
    a.on_logout("p")
    clock.advance(10)
    a.on_login("p")
    clock.advance(60)
    b.on_logout("p")
    for analytics in (b, a) if first == "logout's worker" else (a, b):
        analytics.flush()

    metrics = a.get_metrics()
    assert (metrics.active_sessions, store.get_day(day_key(T0))["totalSessionS"]) == (0, 120)
    script = marks((0, "in"), (60_000, "out"), (70_000, "in"), (130_000, "out"))
    assert observe(store, a, clock, ["p"], [T0]) == expect(walk({"p": script}), ["p"], [T0])


# -- two threads of one process ---------------------------------------------------------


class RaceClock:
    """Time per thread, so that a login is appended after its own later logout.

    The login thread's first reading is ``login_at``, and it is held until the logout
    thread's call (stamped ``logout_at``) is appended: a thread can lose the CPU
    between reading the clock and appending its call. Every other thread (the test's,
    the flush) reads ``login_at``.
    """

    def __init__(self, login_at: datetime, logout_at: datetime) -> None:
        self.login_at = login_at
        self.logout_at = logout_at
        self.login_thread: threading.Thread | None = None
        self.logout_thread: threading.Thread | None = None
        self.login_read = threading.Event()
        self.logout_appended = threading.Event()

    def __call__(self) -> datetime:
        current = threading.current_thread()
        if current is self.logout_thread:
            return self.logout_at
        if current is self.login_thread and not self.login_read.is_set():
            self.login_read.set()
            self.logout_appended.wait(HANDSHAKE_S)
        return self.login_at


@backends
def test_a_login_appended_after_its_later_logout(backend: Backend, store: Store) -> None:
    """Two request threads: the login reads 12:00:00, the logout 12:01:00.5 and is
    appended first. The session is the walk's: closed, 61 s (60.5 rounds up)."""
    clock = RaceClock(START, START + timedelta(seconds=60.5))
    analytics = worker(store, clock)
    login_appended = threading.Event()
    seen: list[bool] = []

    def log_in() -> None:
        analytics.on_login("p")
        login_appended.set()

    def log_out() -> None:
        assert clock.login_read.wait(HANDSHAKE_S), "the login never read the clock"
        analytics.on_logout("p")
        seen.append(login_appended.is_set())
        clock.logout_appended.set()

    clock.login_thread = threading.Thread(target=log_in)
    clock.logout_thread = threading.Thread(target=log_out)
    for thread in (clock.login_thread, clock.logout_thread):
        thread.start()
    for thread in (clock.login_thread, clock.logout_thread):
        thread.join(HANDSHAKE_S)
    assert seen == [False], "the logout was not appended before the login"
    analytics.flush()

    script = marks((0, "in"), (60_500, "out"))
    fake = FakeClock()  # observe() moves a clock through the months
    reader = worker(store, fake)
    assert observe(store, reader, fake, ["p"], [T0]) == expect(walk({"p": script}), ["p"], [T0])


# -- prune, then a late logout ----------------------------------------------------------


@backends
@pytest.mark.parametrize(
    "logout_after_ms",
    [30 * MINUTE_MS, TIMEOUT_MS, TIMEOUT_MS + MINUTE_MS],
    ids=["inside the timeout", "at the timeout", "past the timeout"],
)
def test_a_logout_flushed_after_a_prune(
    backend: Backend, store: Store, other_store: Store, clock: FakeClock, logout_after_ms: int
) -> None:
    """A prune past the timeout times the open session out at login + timeout. B's
    logout, made before the prune and flushed after it, then closes the session with
    its real duration when it lies within the timeout; past it, nothing changes."""
    a = worker(store, clock)
    b = worker(other_store, clock)
    a.on_login("p")
    a.flush()
    clock.set(at(T0 + logout_after_ms))
    b.on_logout("p")
    clock.set(at(T0 + TIMEOUT_MS + 5 * MINUTE_MS))
    a.prune()

    timed_out = WalkedSession(T0, T0 + TIMEOUT_MS, 0, True)
    assert [session_row(s) for s in store.get_sessions("p")] == [timed_out.row()]
    assert store.count_open_sessions() == 0
    b.flush()

    script = marks((0, "in"), (logout_after_ms, "out"))
    moments = [T0, T0 + logout_after_ms]
    assert observe(store, a, clock, ["p"], moments) == expect(walk({"p": script}), ["p"], moments)
