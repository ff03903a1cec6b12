"""Stored play sessions equal a walk over each player's marks in time order.

The definition (docs/concepts.md): a player's marks are activity (tracked calls that
are not passive, ``touch()``, logins) and logouts, from every worker, in time order
(at one millisecond tracked calls first, then logins and logouts in call order). An
open session ends at its last mark when the next mark comes more than ``idle_timeout``
later; activity with no session open starts one (on its day), with one open it moves
the session's last mark; a logout ends the open session at the logout. A session's
seconds are its end (or last mark) minus its start, on its start day. A player is
active on a day with any mark that day (``active_on="any"``) or with a login
(``"login"``, where tracked calls are no marks).

:func:`walk` writes the definition out on plain integers (milliseconds, exact
fractions), sharing no code with the library, and is itself checked on hand-computed
timelines (the issue's: a crash, a reconnect, a lunch break, a webhook after
midnight). The store must then equal it:

- a hypothesis property on every backend (with MongoDB's transaction path too): 2-4
  workers on one store, random timelines around midnight of a month end with
  sessions of activity, crashes (no logout), reconnects, pauses around
  ``idle_timeout``, logouts and passive events, calls on random workers, flushes at
  random moments, flushes that fail before or after their commit, a worker that
  crashes with its calls unflushed, and a final flush of every worker in a random
  order; with ``idle_timeout`` 30 minutes and ``active_on="any"``, and with a long
  ``idle_timeout`` and ``active_on="login"`` (the seed's definitions);
- a logout flushed late inside a stored session splits it at the right marks;
- two threads of one process, whose login is appended after its later logout;
- a prune that closes an idle session changes no figure, and a late mark reopens it.
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
from gso_analytics.backends.sqlite import _SQLiteTransaction
from hypothesis import HealthCheck, Phase, given, note, settings
from hypothesis import strategies as st

from gso_analytics import Analytics, SessionRecord, Store, StoreError, open_store
from gso_analytics.store import Transaction

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
SECOND_MS = 1000
MINUTE_MS = 60_000
HOUR_MS = 3_600_000
DAY_MS = 86_400_000
#: The issue's idle timeout, and a long one for the seed's login/logout definitions.
IDLE_MS = 30 * MINUTE_MS
LONG_IDLE_MS = 12 * HOUR_MS
#: Generated timelines start within an hour of this: midnight and the month end.
MONTH_END = datetime(2025, 3, 31, 23, 0, tzinfo=UTC)
#: Bound on a thread handshake of the race test; it takes microseconds.
HANDSHAKE_S = 10.0
#: A passive event: counted, stored, but no activity.
PASSIVE = "reward.grant"

#: Conftest's backends: the Mongo ones (nx-27017 and mongomock) run through its harness,
#: with write conflicts injected at random and retried.
backends = pytest.mark.parametrize("backend", BACKENDS, ids=[b.name for b in BACKENDS])

#: Hypothesis examples per backend: the whole module stays well under a minute or two,
#: and every flush costs a few round trips on the Mongo servers.
EXAMPLES = {"memory": 60, "sqlite": 30, "mongomock": 25, "mongo": 20}
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
    """One call of a player: "login", "event" (a tracked call), "touch", "passive" (a
    passive event) or "logout"."""

    t: int  # milliseconds since the epoch
    kind: str
    order: int = 0  # call order (unused by the definition: activity precedes a logout)


@dataclass(frozen=True)
class WalkedSession:
    start: int
    end: int | None  # None: open
    last: int
    duration_s: int
    timed_out: bool

    def row(self) -> tuple[Any, ...]:
        """As :func:`session_row` reads a stored session."""
        return (
            stamp(at(self.start)),
            stamp(None if self.end is None else at(self.end)),
            stamp(at(self.last)),
            self.duration_s,
            self.timed_out,
            day_key(self.start),
            month_key(self.start),
        )


@dataclass
class DayFigures:
    session_count: int = 0
    total_session_s: int = 0
    users: set[str] = field(default_factory=set)


@dataclass
class MonthFigures:
    users: set[str] = field(default_factory=set)
    sessions: int = 0
    session_s: int = 0

    @property
    def avg_session_min(self) -> int:
        if not self.sessions:
            return 0
        return js_round(Fraction(self.session_s, self.sessions) / 60)


@dataclass
class Walk:
    """What the store must hold: every session, and the figures they make."""

    idle_ms: int
    sessions: dict[str, list[WalkedSession]] = field(default_factory=dict)
    days: defaultdict[str, DayFigures] = field(default_factory=lambda: defaultdict(DayFigures))
    months: defaultdict[str, MonthFigures] = field(
        default_factory=lambda: defaultdict(MonthFigures)
    )

    def active_sessions(self, now: int) -> int:
        """Sessions not ended whose last mark is within ``idle_timeout`` of ``now``."""
        return sum(
            s.end is None and now - s.last <= self.idle_ms
            for sessions in self.sessions.values()
            for s in sessions
        )


def walk(
    marks: Mapping[str, Iterable[Mark]], idle_ms: int = IDLE_MS, active_on: str = "any"
) -> Walk:
    """The definition, mark by mark."""
    result = Walk(idle_ms)
    activity = {"login", "event", "touch"} if active_on == "any" else {"login"}
    for player, player_marks in marks.items():
        ordered = sorted(
            (m for m in player_marks if m.kind in activity or m.kind == "logout"),
            key=lambda m: (m.t, m.kind in ("login", "logout"), m.order),
        )
        sessions = result.sessions[player] = []
        start = last = None  # the open session
        for mark in ordered:
            if mark.kind != "logout" or active_on == "any":
                result.days[day_key(mark.t)].users.add(player)
                result.months[month_key(mark.t)].users.add(player)
            if start is not None and last is not None and mark.t - last > idle_ms:
                sessions.append(WalkedSession(start, last, last, 0, True))
                start = last = None
            if mark.kind == "logout":
                if start is not None and last is not None:
                    sessions.append(WalkedSession(start, mark.t, last, 0, False))
                    start = last = None
            elif start is None:
                start = last = mark.t
            else:
                last = mark.t
        if start is not None and last is not None:
            sessions.append(WalkedSession(start, None, last, 0, False))
        for n, session in enumerate(sessions):
            end = session.last if session.end is None else session.end
            seconds = js_round(Fraction(end - session.start, SECOND_MS))
            sessions[n] = session = WalkedSession(
                session.start, session.end, session.last, seconds, session.timed_out
            )
            day = result.days[day_key(session.start)]
            month = result.months[month_key(session.start)]
            day.session_count += 1
            day.total_session_s += seconds
            month.sessions += 1
            month.session_s += seconds
    return result


# -- the oracle, on timelines computed by hand -------------------------------------------

T0 = to_ms(START)  # where the fake clock starts


def marks(*script: tuple[int, str]) -> list[Mark]:
    """``(ms after T0, kind)`` pairs as marks, in the order given."""
    return [Mark(T0 + dt, kind, order) for order, (dt, kind) in enumerate(script)]


def test_oracle_the_issue_examples() -> None:
    """A crash: a login, 5 minutes of play, nothing; 11 h 55 min later a login: two
    sessions, the first of 300 s (the seed counted 11.9 h). A 12.5 h session with an
    event every 10 minutes, then a logout: one session of 12.5 h (the seed: 0 s, timed
    out). A reconnect a minute after a logout-less drop: one session."""
    crash = marks(
        (0, "login"), (300_000, "event"), (300_000 + 11 * HOUR_MS + 55 * MINUTE_MS, "login")
    )
    long_play = marks(
        (0, "login"),
        *[(n * 10 * MINUTE_MS, "event") for n in range(1, 75)],
        (75 * 10 * MINUTE_MS, "logout"),
    )
    reconnect = marks((0, "login"), (120_000, "event"), (180_000, "login"), (240_000, "logout"))
    result = walk({"crash": crash, "long": long_play, "reconnect": reconnect})
    later = T0 + 300_000 + 11 * HOUR_MS + 55 * MINUTE_MS
    assert result.sessions["crash"] == [
        WalkedSession(T0, T0 + 300_000, T0 + 300_000, 300, True),
        WalkedSession(later, None, later, 0, False),
    ]
    assert result.sessions["long"] == [
        WalkedSession(T0, T0 + 750 * MINUTE_MS, T0 + 740 * MINUTE_MS, 45_000, False)
    ]
    assert result.sessions["reconnect"] == [
        WalkedSession(T0, T0 + 240_000, T0 + 180_000, 240, False)
    ]


def test_oracle_lunch_break_and_a_webhook_after_midnight() -> None:
    """A lunch break of 45 minutes splits play in two sessions; a payment webhook
    (passive) after midnight makes no session and no active player, while the same
    call tracked as activity does both."""
    lunch = marks(
        (0, "login"),
        (20 * MINUTE_MS, "event"),
        (65 * MINUTE_MS, "event"),
        (70 * MINUTE_MS, "logout"),
    )
    midnight = to_ms(datetime(2025, 3, 15, tzinfo=UTC))
    webhook = [Mark(midnight - 10 * MINUTE_MS, "login"), Mark(midnight + 5 * MINUTE_MS, "passive")]
    tracked = [Mark(midnight - 10 * MINUTE_MS, "login"), Mark(midnight + 5 * MINUTE_MS, "event")]
    result = walk({"lunch": lunch, "webhook": webhook, "tracked": tracked})
    assert [s.duration_s for s in result.sessions["lunch"]] == [1200, 300]
    assert [s.duration_s for s in result.sessions["webhook"]] == [0]
    assert [s.duration_s for s in result.sessions["tracked"]] == [900]
    assert result.days["2025-03-15"].users == {"tracked"}
    assert result.days["2025-03-14"].session_count == 4  # lunch's two, both midnights'


def test_oracle_the_idle_timeout_is_inclusive_and_ties() -> None:
    """A mark exactly ``idle_timeout`` after the last one extends the session; a
    millisecond later it starts a new one. At one millisecond, a tracked call comes
    before a logout whatever the order of the calls; a login after a logout starts a
    new session."""
    result = walk(
        {
            "exact": marks((0, "event"), (IDLE_MS, "event")),
            "late": marks((0, "event"), (IDLE_MS + 1, "event")),
            "tie": marks((0, "event"), (1_000, "logout"), (1_000, "event")),
            "relogin": marks((0, "login"), (1_000, "logout"), (1_000, "login")),
        }
    )
    assert [(s.start - T0, s.duration_s) for s in result.sessions["exact"]] == [(0, 1800)]
    assert [(s.start - T0, s.duration_s) for s in result.sessions["late"]] == [
        (0, 0),
        (IDLE_MS + 1, 0),
    ]
    assert result.sessions["tie"] == [WalkedSession(T0, T0 + 1_000, T0 + 1_000, 1, False)]
    assert result.sessions["relogin"] == [
        WalkedSession(T0, T0 + 1_000, T0, 1, False),
        WalkedSession(T0 + 1_000, None, T0 + 1_000, 0, False),
    ]


def test_oracle_login_only_is_the_seeds_for_pairs() -> None:
    """With ``active_on="login"`` and a long timeout, login/logout pairs give 0.2's
    sessions; tracked events are no marks."""
    script = marks((0, "login"), (60_000, "event"), (90_500, "logout"), (100_000, "event"))
    result = walk({"p": script}, LONG_IDLE_MS, "login")
    assert result.sessions["p"] == [WalkedSession(T0, T0 + 90_500, T0, 91, False)]
    assert result.months["2025-03"] == MonthFigures({"p"}, 1, 91)


# -- reading the store ---------------------------------------------------------------------


def stamp(moment: datetime | None) -> str | None:
    """A stored or expected time, readable in a failure's diff."""
    return None if moment is None else f"{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S.%f}"[:-3]


def session_row(record: SessionRecord) -> tuple[Any, ...]:
    """A stored session as :meth:`WalkedSession.row`."""
    return (
        stamp(record.login_at),
        stamp(record.logout_at),
        stamp(record.last_at),
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
    seen: dict[str, Any] = {}
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
            "sessions": stats.timed_sessions,
            "sessionS": stats.timed_session_s,
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
    wanted: dict[str, Any] = {}
    for day in sorted({day_key(t) for t in moments}):
        figures = result.days.get(day, DayFigures())
        wanted[f"day {day}"] = {
            "sessionCount": figures.session_count,
            "totalSessionS": figures.total_session_s,
            "dau": len(figures.users),
        }
    last_in_month = {month_key(t): t for t in sorted(moments)}
    for month in sorted(last_in_month):
        figures = result.months.get(month, MonthFigures())
        wanted[f"month {month}"] = {
            "mau": len(figures.users),
            "sessions": figures.sessions,
            "sessionS": figures.session_s,
            "metrics.mau": len(figures.users),
            "avgSessionMin": figures.avg_session_min,
            "activeSessions": result.active_sessions(last_in_month[month]),
        }
    for player in players:
        rows = [s.row() for s in result.sessions.get(player, [])]
        wanted[f"sessions of {player}"] = sorted(rows, key=lambda row: tuple(map(str, row)))
    return wanted


def worker(
    store: Store, clock: Callable[[], datetime], idle_ms: int = IDLE_MS, active_on: str = "any"
) -> Analytics:
    """One worker process: never started (flushed by hand only), forwarding nothing."""
    return Analytics(
        store,
        clock=clock,
        flush_interval=3600,
        idle_timeout=timedelta(milliseconds=idle_ms),
        active_on=active_on,
        passive_events=[PASSIVE],
        forwarders=[],
    )


def call(analytics: Analytics, kind: str, player: str) -> None:
    """One call of ``kind`` (see :class:`Mark`)."""
    if kind == "login":
        analytics.on_login(player, f"name-{player}")
    elif kind == "logout":
        analytics.on_logout(player)
    elif kind == "touch":
        analytics.touch(player)
    elif kind == "passive":
        analytics.track(PASSIVE, player)
    else:
        analytics.track("dungeon.complete", player)


# -- the property -----------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    t: int  # milliseconds since the epoch; the clock is set there for the call
    player: str
    kind: str
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
    idle_ms: int
    active_on: str

    def marks(self) -> dict[str, list[Mark]]:
        """Every call that reached the store, as the oracle's marks (the crashed
        worker's calls never did)."""
        found: dict[str, list[Mark]] = {}
        for order, call in enumerate(self.calls):
            found.setdefault(call.player, [])
            if call.worker != self.workers:
                found[call.player].append(Mark(call.t, call.kind, order))
        return found


def pauses(idle_ms: int) -> st.SearchStrategy[int]:
    """From one mark to the next: play, a pause around ``idle_timeout``, a long break."""
    return st.one_of(
        st.integers(1, 20).map(lambda halves: halves * 500),  # x.5 s: half up, not to even
        st.sampled_from([1, 499, 500, 1_499]),
        st.integers(1, 10 * MINUTE_MS),
        st.sampled_from([idle_ms - 1, idle_ms, idle_ms + 1]),
        st.integers(idle_ms + 1, 3 * idle_ms),
    )


@st.composite
def timeline(draw: st.DrawFn, idle_ms: int) -> list[tuple[int, str]]:
    """One player's calls, 1 ms apart at least: 1-4 visits, each a login or not, some
    play, and a logout, a crash (nothing) or a reconnect; sometimes a logout first."""
    t = to_ms(MONTH_END) + draw(st.integers(-HOUR_MS, HOUR_MS))
    found: list[tuple[int, str]] = []
    if draw(st.integers(0, 5)) == 0:
        found.append((t, "logout"))
        t += draw(pauses(idle_ms))
    for _ in range(draw(st.integers(1, 4))):
        if draw(st.booleans()):
            found.append((t, "login"))
            t += draw(pauses(idle_ms))
        for _ in range(draw(st.integers(0, 4))):
            found.append((t, draw(st.sampled_from(["event", "event", "touch", "passive"]))))
            t += draw(pauses(idle_ms))
        end = draw(st.sampled_from(["logout", "logout", "crash", "reconnect", "two logouts"]))
        if end in ("logout", "two logouts"):
            found.append((t, "logout"))
            t += draw(st.integers(1, MINUTE_MS))
        if end == "two logouts":
            found.append((t, "logout"))
        t += draw(pauses(idle_ms))
    return found


FAULTS = [None, None, None, "before", "after"]


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    idle_ms, active_on = draw(
        st.sampled_from([(IDLE_MS, "any"), (IDLE_MS, "any"), (LONG_IDLE_MS, "login")])
    )
    workers = draw(st.integers(2, 4))
    crashed = draw(st.booleans())
    picks = [*range(workers)] * 4 + ([workers] if crashed else [])
    calls = []
    for player in range(draw(st.integers(2, 6))):
        for t, kind in draw(timeline(idle_ms)):
            calls.append(Call(t, f"p{player}", kind, draw(st.sampled_from(picks))))
    calls.sort(key=lambda call: call.t)  # stable: a player's own marks never tie
    # Within 5 days: a batch failing older than the retry window (6 days) is set aside
    # by design (docs/failures.md), which this oracle does not model.
    calls = [call for call in calls if call.t < calls[0].t + 5 * DAY_MS]
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
        idle_ms,
        active_on,
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
    hypothesis.event(f"definitions: {scenario.active_on}")
    hypothesis.event(f"most sessions of a player: {max(map(len, result.sessions.values()))}")
    hypothesis.event(f"a session ended idle: {any(s.timed_out for s in sessions)}")
    hypothesis.event(f"months with marks: {len(result.months)}")
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
        fleet = [worker(store, clock, scenario.idle_ms, scenario.active_on) for store in faulty]
        plans = list(scenario.flushes)
        for done in range(len(scenario.calls) + 1):
            while plans and plans[0].after == done:
                plan = plans.pop(0)
                note(f"flush w{plan.worker}" + (f", failing {plan.fault}" if plan.fault else ""))
                flush(fleet[plan.worker], faulty[plan.worker], plan)
            if done < len(scenario.calls):
                made = scenario.calls[done]
                clock.set(at(made.t))
                name = "crashed" if made.worker == scenario.workers else f"w{made.worker}"
                note(f"{stamp(at(made.t))} {made.player} {made.kind} on {name}")
                call(fleet[made.worker], made.kind, made.player)
        note(f"final flushes: {scenario.final_order}")
        for index in scenario.final_order:
            fleet[index].flush()
        result = walk(scenario.marks(), scenario.idle_ms, scenario.active_on)
        note_coverage(scenario, result)
        players = sorted(result.sessions)
        moments = [made.t for made in scenario.calls]
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


@pytest.mark.parametrize(
    "backend", [b for b in BACKENDS if b.name in ("memory", "sqlite")], ids=["memory", "sqlite"]
)
def test_sessions_written_a_player_at_a_time_store_the_walk(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store may write a batch's sessions a part of its players at a time
    (``Transaction.session_part``, SQLite 256): with parts of one player, every
    interleaving still stores exactly the walk."""
    monkeypatch.setattr(Transaction, "session_part", 1)
    monkeypatch.setattr(_SQLiteTransaction, "session_part", 1)

    @settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(scenario=scenarios())
    def check(scenario: Scenario) -> None:
        run_scenario(backend, scenario)

    check()


# -- a logout flushed late inside a stored session ------------------------------------------


@backends
def test_a_late_logout_splits_a_stored_session(
    backend: Backend, store: Store, other_store: Store, clock: FakeClock
) -> None:
    """A plays from 0 to 10 min and again at 12 and 14 min (one session, flushed); B's
    logout at 11 min, flushed after, ends the first session at 11 min, and the marks
    at 12 and 14 min are a second session (read back from the stored activity)."""
    a = worker(store, clock)
    b = worker(other_store, clock)
    script = [(0, "login"), (5 * MINUTE_MS, "event"), (10 * MINUTE_MS, "event")]
    script += [(12 * MINUTE_MS, "touch"), (14 * MINUTE_MS, "event")]
    for dt, kind in script:
        clock.set(at(T0 + dt))
        call(a, kind, "p")
        if dt == 5 * MINUTE_MS:
            a.flush()  # the session is stored in two runs
    a.flush()
    clock.set(at(T0 + 11 * MINUTE_MS))
    b.on_logout("p")
    b.flush()
    clock.set(at(T0 + 14 * MINUTE_MS))
    result = walk({"p": marks(*script, (11 * MINUTE_MS, "logout"))})
    assert [s.duration_s for s in result.sessions["p"]] == [660, 120]
    moments = [T0, T0 + 14 * MINUTE_MS]
    assert observe(store, a, clock, ["p"], moments) == expect(result, ["p"], moments)


@backends
def test_the_pieces_of_a_split_session_keep_their_logins_names(
    backend: Backend, store: Store, other_store: Store, clock: FakeClock
) -> None:
    """A tracks at 0, logs in at 5 min (name-p) and tracks at 10 min: one session,
    named. B's logout at 3 min, flushed after, splits it: the piece before the logout
    has tracked calls only (no name), the piece after holds the login (its name)."""
    a = worker(store, clock)
    b = worker(other_store, clock)
    script = [(0, "event"), (5 * MINUTE_MS, "login"), (10 * MINUTE_MS, "event")]
    for dt, kind in script:
        clock.set(at(T0 + dt))
        call(a, kind, "p")
    a.flush()
    assert [s.username for s in store.get_sessions("p")] == ["name-p"]
    clock.set(at(T0 + 3 * MINUTE_MS))
    b.on_logout("p")
    b.flush()
    found = sorted(store.get_sessions("p"), key=lambda s: s.login_at)
    assert [(s.login_at, s.logout_at, s.username) for s in found] == [
        (at(T0), at(T0 + 3 * MINUTE_MS), None),
        (at(T0 + 5 * MINUTE_MS), None, "name-p"),
    ]


#: A's calls (origin "2"), in minutes: a tracked call at 12 min after the second login,
#: or A's own logout at 11, which makes that login the stored session's last mark.
TRACKED_AFTER = ((0, "login"), (5, "event"), (10, "login"), (12, "event"))
LOGGED_OUT_AFTER = ((0, "login"), (5, "event"), (10, "login"), (11, "logout"))


@backends
@pytest.mark.parametrize(
    ("script", "logout_origin", "expected"),
    [
        # B's logout first in the millisecond: it ends the session, A's login starts one.
        (TRACKED_AFTER, "1", [(0, 10), (10, None)]),
        # A's login first: it goes on with the session, which B's logout then ends; the
        # tracked call at 12 min starts a session of its own.
        (TRACKED_AFTER, "3", [(0, 10), (12, None)]),
        # The login is the stored session's last mark: B's logout first ends the session
        # at 10, A's login starts one there, which A's own logout at 11 ends (found by
        # the state machine: the session from 10 to 11 was lost).
        (LOGGED_OUT_AFTER, "1", [(0, 10), (10, 11)]),
        # A's login first: the session goes on to B's logout; A's ends nothing.
        (LOGGED_OUT_AFTER, "3", [(0, 10)]),
    ],
    ids=["logout first", "login first", "last mark, logout first", "last mark, login first"],
)
def test_a_logout_and_another_process_login_of_one_millisecond(
    backend: Backend,
    store: Store,
    other_store: Store,
    clock: FakeClock,
    script: tuple[tuple[int, str], ...],
    logout_origin: str,
    expected: list[tuple[int, int | None]],
) -> None:
    """A (origin "2") plays ``script``, with a second login at 10 min, and flushes; B
    logs the player out at 10 min, in the same millisecond as A's second login, and
    flushes after. Marks of one millisecond from two processes go by the processes'
    origins, also when the logout reaches the store after the login, and when that
    login is the stored session's last mark (a span knows its last mark's millisecond,
    not its place in it)."""
    a = worker(store, clock)
    b = worker(other_store, clock)
    a._aggregator.origin, b._aggregator.origin = "2", logout_origin
    for minute, kind in script:
        clock.set(at(T0 + minute * MINUTE_MS))
        call(a, kind, "p")
    a.flush()
    clock.set(at(T0 + 10 * MINUTE_MS))
    b.on_logout("p")
    b.flush()

    def minute(moment: datetime | None) -> int | None:
        return None if moment is None else (to_ms(moment) - T0) // MINUTE_MS

    found = sorted(store.get_sessions("p"), key=lambda s: s.login_at)
    assert [(minute(s.login_at), minute(s.logout_at)) for s in found] == expected


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

    script = marks((0, "login"), (60_500, "logout"))
    fake = FakeClock()  # observe() moves a clock through the months
    reader = worker(store, fake)
    assert observe(store, reader, fake, ["p"], [T0]) == expect(walk({"p": script}), ["p"], [T0])


# -- prune, then a late mark ------------------------------------------------------------


@backends
@pytest.mark.parametrize(
    "late_ms",
    [IDLE_MS - MINUTE_MS, IDLE_MS, IDLE_MS + MINUTE_MS],
    ids=["inside the timeout", "at the timeout", "past the timeout"],
)
def test_a_mark_flushed_after_a_prune(
    backend: Backend, store: Store, other_store: Store, clock: FakeClock, late_ms: int
) -> None:
    """A prune past ``idle_timeout`` closes the session at its last mark, changing no
    figure and leaving no active session. B's event, made before the prune and
    flushed after it, then extends that session when it lies within the timeout;
    past it, it starts a new one."""
    a = worker(store, clock)
    b = worker(other_store, clock)
    a.on_login("p")
    clock.advance(60)
    a.track("dungeon.complete", "p")
    a.flush()
    before = store.get_day(day_key(T0))
    clock.set(at(T0 + 60_000 + late_ms))
    b.track("dungeon.complete", "p")
    clock.set(at(T0 + 60_000 + IDLE_MS + 5 * MINUTE_MS))
    assert a.prune().sessions_timed_out == 1
    assert store.get_day(day_key(T0)) == before
    assert a.get_metrics().active_sessions == 0
    b.flush()

    script = marks((0, "login"), (60_000, "event"), (60_000 + late_ms, "event"))
    moments = [T0, T0 + 60_000 + late_ms]
    assert observe(store, a, clock, ["p"], moments) == expect(walk({"p": script}), ["p"], moments)
