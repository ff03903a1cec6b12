"""Three real OS processes on one SQLite file, and sixteen on one PostgreSQL database,
give exactly the numbers of one oracle.

Why: the seed wrote process-local totals with ``$set``, dropped logouts handled by
another process and counted active sessions per process. Here three interpreters
(``tests/procs.py``) replay interleaved scripts concurrently against one file:
logins on one process and logouts on the next, same-process sessions, counter
events with amounts, unknown events, day and month boundaries, durations with half
seconds. A plain-Python oracle written from the seed's semantics (not from the
library's helpers) computes every daily document, dau, mau and avgSessionMin, and
the store must match it exactly, for a normal flush interval, for the smallest
one (flushes contending all the time) and for a flush after every call.

Each player has at most one session in flight: a session's calls wait until the
player's previous session is closed in the store (tests/procs.py). Within that, a
logout may reach the store before its login, from a process that never saw the
login or holds a stale id of an older session. Two sessions of one player unflushed
at once are out of this oracle's reach: the store gets them right when the second
login is in the process that opened the first (the test at the end), not in general
(a logout without its session's id can reach the store before that session's login
while an older session is still open; docs/concepts.md, "What the numbers mean across
processes").
"""

from __future__ import annotations

import contextlib
import json
import random
import selectors
import subprocess
import sys
import threading
import time
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from fractions import Fraction
from math import floor
from pathlib import Path
from typing import Any

import pg_server
import pytest

from gso_analytics import Analytics, open_store

WORKER = Path(__file__).with_name("procs.py")
PROCESSES = 3
#: Bound on one whole run; the runs take a few seconds, this only stops a hang.
RUN_TIMEOUT_S = 120.0

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
DAY_MS = 86_400_000
HOUR_MS = 3_600_000


def ms(text: str) -> int:
    """``2026-01-30T12:00:00.000`` (UTC) as integer milliseconds since the epoch."""
    moment = datetime.fromisoformat(text).replace(tzinfo=UTC)
    return (moment - EPOCH) // timedelta(milliseconds=1)


START = ms("2026-01-30T00:00:00")
END = ms("2026-02-03T00:00:00")  # exclusive: four days, two months

# -- the oracle: the seed's semantics, written out here ---------------------------------

#: The seed's dailySchema fields, in its order.
SEED_FIELDS = (
    "dau",
    "newUsers",
    "creditsEarned",
    "creditsSpent",
    "gemsEarned",
    "gemsSpent",
    "gemsPurchased",
    "stripeRevenue",
    "dungeonsRun",
    "craftsCompleted",
    "pvpBattles",
    "raidBattles",
    "marketSales",
    "totalSessionS",
    "sessionCount",
)

#: The seed's COUNTER_MAP: event -> (field, data key of the amount or None for +1).
SEED_COUNTERS: dict[str, tuple[str, str | None]] = {
    "dungeon.complete": ("dungeonsRun", None),
    "craft.complete": ("craftsCompleted", None),
    "pvp.battle": ("pvpBattles", None),
    "pvp.ranked.battle": ("pvpBattles", None),
    "raid.complete": ("raidBattles", None),
    "market.sale": ("marketSales", None),
    "credits.earn": ("creditsEarned", "amount"),
    "credits.spend": ("creditsSpent", "amount"),
    "gems.earn": ("gemsEarned", "amount"),
    "gems.spend": ("gemsSpent", "amount"),
    "gems.purchase": ("gemsPurchased", "gems"),
    "stripe.payment": ("stripeRevenue", "amountCents"),
    "user.register": ("newUsers", None),
}


def day_key(t: int) -> str:
    """``new Date(t).toISOString().slice(0, 10)``, by day arithmetic on the epoch."""
    return (date(1970, 1, 1) + timedelta(days=t // DAY_MS)).isoformat()


def month_key(t: int) -> str:
    return day_key(t)[:7]


def js_round(value: Fraction) -> int:
    """JavaScript ``Math.round``: halves go up (Python's ``round`` goes to even)."""
    return floor(value + Fraction(1, 2))


def rounded_seconds(duration_ms: int) -> int:
    """The seed's ``Math.round((logoutAt - loginAt) / 1000)``."""
    return js_round(Fraction(duration_ms, 1000))


@dataclass(frozen=True)
class Session:
    user: str
    login: int
    logout: int
    login_proc: int
    logout_proc: int

    @property
    def seconds(self) -> int:
        return rounded_seconds(self.logout - self.login)


@dataclass(frozen=True)
class Event:
    t: int
    user: str
    event: str
    data: dict[str, Any] | None
    proc: int


@dataclass
class Scenario:
    sessions: list[Session] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)

    def users(self) -> list[str]:
        return sorted({s.user for s in self.sessions})


def expected_days(scenario: Scenario) -> dict[str, dict[str, Any]]:
    """Every daily document the seed would hold: day -> {day, month, fields...}."""
    docs: dict[str, dict[str, Any]] = {}
    dau: defaultdict[str, set[str]] = defaultdict(set)

    def doc(t: int) -> dict[str, Any]:
        key = day_key(t)
        if key not in docs:
            docs[key] = {"day": key, "month": month_key(t), **dict.fromkeys(SEED_FIELDS, 0)}
        return docs[key]

    registered: dict[str, str] = {}  # user -> the day of their first registration
    for s in scenario.sessions:
        d = doc(s.login)  # session seconds belong to the login day
        d["sessionCount"] += 1
        d["totalSessionS"] += s.seconds
        dau[d["day"]].add(s.user)
    for e in scenario.events:
        rule = SEED_COUNTERS.get(e.event)
        if rule is None:
            continue  # unknown events go to the stream only
        name, key = rule
        if name == "newUsers":  # players on the day of their first registration ever
            day = doc(e.t)["day"]
            registered[e.user] = min(day, registered.get(e.user, day))
        else:
            doc(e.t)[name] += 1 if key is None else e.data[key]
    for key in registered.values():
        docs[key]["newUsers"] += 1
    for key, users in dau.items():
        docs[key]["dau"] = len(users)
    return docs


def expected_month(scenario: Scenario, month: str) -> tuple[int, int, int, int]:
    """(mau, sessions, their seconds, avgSessionMin) as getMetrics() (0-second sessions
    count in the average)."""
    sessions = [s for s in scenario.sessions if month_key(s.login) == month]
    timed = [s.seconds for s in sessions]
    avg_min = js_round(Fraction(sum(timed), len(timed)) / 60) if timed else 0
    return len({s.user for s in sessions}), len(timed), sum(timed), avg_min


# -- the scenario ----------------------------------------------------------------------


def _duration_ms(rng: random.Random) -> int:
    kind = rng.random()
    if kind < 0.35:
        return rng.randint(1, 2400) * 1000 + 500  # x.5 s: half-up, not to even
    if kind < 0.45:
        return rng.choice([0, 1, 499, 500, 1500, 2500])  # rounds to 0, or a small half
    return rng.randint(1000, 3 * HOUR_MS)


def _sessions_in(rng: random.Random, user: str, start: int, end: int) -> list[Session]:
    """Back-to-back sessions of one user inside [start, end): logout < next login."""
    found = []
    t = start + rng.randint(0, 3 * HOUR_MS)
    while True:
        duration = _duration_ms(rng)
        if t + duration >= end:
            return found
        login_proc = rng.randrange(PROCESSES)
        # Two thirds log out on the next process (it never saw the login). A logout in
        # the login's very millisecond stays on its process: across processes the
        # order of two marks of one millisecond is the store's tie-break (process
        # origin), which a scenario written in advance cannot know.
        cross = rng.random() >= 1 / 3 and duration > 0
        logout_proc = (login_proc + 1) % PROCESSES if cross else login_proc
        found.append(Session(user, t, t + duration, login_proc, logout_proc))
        t += duration + rng.randint(1000, 14 * HOUR_MS)


def _event(rng: random.Random, t: int, user: str, name: str | None = None) -> Event:
    name = name or rng.choice([*SEED_COUNTERS, "tutorial.step", "shop.open", "chat.message"])
    amount_key = SEED_COUNTERS.get(name, ("", None))[1]
    data: dict[str, Any] | None
    if amount_key is not None:
        # Dyadic fractions add up exactly in any order, like the integers.
        amount = rng.choice([rng.randint(0, 5000), float(rng.randint(1, 40))])  # 3.0: 3
        if amount_key == "amountCents":
            amount = int(amount)  # real money is whole cents
        data = {amount_key: amount, "source": rng.choice(["quest", "shop", "pvp"])}
    elif name == "shop.open":
        data = None
    else:
        data = {"step": rng.randint(1, 9), "ranked": rng.random() < 0.5}
    return Event(t, user, name, data, rng.randrange(PROCESSES))


def build_scenario(seed: int) -> Scenario:
    """Nine players over 2026-01-30 .. 2026-02-02 UTC, with the edge cases pinned.

    u0 plays across midnight into a new day; u1's last January session starts at
    23:00 on the 31st and ends in February, and its length is chosen so January's
    mean session is exactly k+0.5 minutes with k even (JS rounds up, Python's
    ``round`` would round down); u2 plays only in February, u3 only in January.
    """
    rng = random.Random(seed)
    sc = Scenario()
    jan31_23h = ms("2026-01-31T23:00:00")
    midnight = ms("2026-01-31T00:00:00")
    sc.sessions += _sessions_in(rng, "u0", START, midnight - 2 * HOUR_MS)
    sc.sessions.append(Session("u0", midnight - 250, midnight + 1250, 2, 0))  # 1.5 s -> 2
    sc.sessions += _sessions_in(rng, "u0", midnight + HOUR_MS, END)
    sc.sessions += _sessions_in(rng, "u2", ms("2026-02-01T00:00:00"), END)
    sc.sessions += _sessions_in(rng, "u3", START, jan31_23h)
    for user in ("u4", "u5", "u6", "u7", "u8"):
        sc.sessions += _sessions_in(rng, user, START, END)
    sc.sessions += _sessions_in(rng, "u1", START, jan31_23h - 4 * HOUR_MS)
    # u1's adjusting session: January's timed seconds become n * M, M = 120j + 30.
    timed = [s.seconds for s in sc.sessions if month_key(s.login) == "2026-01"]
    n = len(timed) + 1
    mean = 30
    while n * mean - sum(timed) < 3700:  # long enough to end in February
        mean += 120
    seconds = n * mean - sum(timed)
    assert seconds * 1000 < 8 * HOUR_MS  # ends before u1's next window opens
    sc.sessions.append(Session("u1", jan31_23h, jan31_23h + seconds * 1000 - 500, 1, 2))
    sc.sessions += _sessions_in(rng, "u1", jan31_23h + 8 * HOUR_MS, END)

    pinned = ["2026-01-31T23:59:59.999", "2026-02-01T00:00:00", "2026-01-30T23:59:59.999"]
    times = [ms(text) for text in pinned] + [rng.randrange(START, END) for _ in range(150)]
    for t in times:
        sc.events.append(_event(rng, t, f"u{rng.randrange(9)}"))
    # Every counter at least once, and a register with no data at all.
    for name in SEED_COUNTERS:
        sc.events.append(_event(rng, rng.randrange(START, END), "u5", name))
    sc.events.append(Event(ms("2026-02-02T08:00:00"), "u9", "user.register", None, 0))
    return sc


def scripts(
    sc: Scenario, flush_interval: float, flush_each_op: bool, processes: int = PROCESSES
) -> list[dict[str, Any]]:
    """Each process's operations in its own clock order.

    A session's login and logout wait for the user's previous sessions to be closed
    in the store (see tests/procs.py): one session per user in flight at a time.

    With more ``processes`` than the scenario's, each player's scenario processes go to
    real ones shifted by a number of the player's (so a logout on "the next process"
    stays on another process than its login, and one on "the same process" on the same
    one), spreading the players over every process.
    """
    ops: list[list[tuple[int, int, dict[str, Any]]]] = [[] for _ in range(processes)]

    def real(proc: int, user: str) -> int:
        return (proc + PROCESSES * zlib.crc32(user.encode())) % processes

    by_user: defaultdict[str, list[Session]] = defaultdict(list)
    for s in sc.sessions:
        by_user[s.user].append(s)
    for user, sessions in by_user.items():
        sessions.sort(key=lambda s: s.login)
        for k, s in enumerate(sessions):
            wait = [user, k] if k else None
            login = {"kind": "login", "t": s.login, "user": user, "username": f"name-{user}"}
            ops[real(s.login_proc, user)].append((s.login, 0, {**login, "wait": wait}))
            logout = {"kind": "logout", "t": s.logout, "user": user, "wait": wait}
            ops[real(s.logout_proc, user)].append((s.logout, 2, logout))
    for e in sc.events:
        op = {"kind": "track", "t": e.t, "user": e.user, "event": e.event, "data": e.data}
        ops[real(e.proc, e.user)].append((e.t, 1, op))
    return [
        {
            "start_ms": START,
            "flush_interval": flush_interval,
            "flush_each_op": flush_each_op,
            "ops": [op for _, _, op in sorted(proc_ops, key=lambda item: item[:2])],
        }
        for proc_ops in ops
    ]


def coverage(sc: Scenario) -> Counter[str]:
    """What the scenario exercises, replaying each process's local session knowledge.

    A process keeps the session it saw a user open; ``stale_logout`` and
    ``stale_relogin`` count calls made while that knowledge is out of date because
    another process handled the user's logout since.
    """
    seen: Counter[str] = Counter()
    local: list[dict[str, int]] = [{} for _ in range(PROCESSES)]
    timeline = sorted(
        [(s.login, 0, s) for s in sc.sessions] + [(s.logout, 1, s) for s in sc.sessions],
        key=lambda item: item[:2],
    )
    for _, is_logout, s in timeline:
        if is_logout:
            seen["cross_process" if s.logout_proc != s.login_proc else "same_process"] += 1
            known = local[s.logout_proc].pop(s.user, None)
            if known is not None and known != s.login:
                seen["stale_logout"] += 1
        else:
            if local[s.login_proc].get(s.user) is not None:
                seen["stale_relogin"] += 1
            local[s.login_proc][s.user] = s.login
    for s in sc.sessions:
        duration = s.logout - s.login
        seen["zero_seconds"] += s.seconds == 0
        seen["half_second_even"] += duration % 1000 == 500 and (duration // 1000) % 2 == 0
        seen["day_crossing"] += day_key(s.login) != day_key(s.logout)
        seen["month_crossing"] += month_key(s.login) != month_key(s.logout)
    seen["unknown_events"] = sum(e.event not in SEED_COUNTERS for e in sc.events)
    seen["float_amounts"] = sum(
        isinstance(v, float) for e in sc.events if e.data for v in e.data.values()
    )
    return seen


# -- running the processes ----------------------------------------------------------------


def _readline(proc: subprocess.Popen[str], deadline: float) -> str:
    """One line of a worker's stdout, or fail when it does not come before ``deadline``."""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)  # type: ignore[arg-type]
        if not sel.select(max(0.0, deadline - time.monotonic())):
            raise AssertionError("a worker did not report in time")
    return proc.stdout.readline()  # type: ignore[union-attr]


def run_workers(
    tmp_path: Path,
    store: str,
    worker_scripts: list[dict[str, Any]],
    timeout_s: float = RUN_TIMEOUT_S,
) -> list[dict]:
    """Start every worker, release them together, wait for all; return their reports."""
    deadline = time.monotonic() + timeout_s
    procs: list[subprocess.Popen[str]] = []
    try:
        for i, script in enumerate(worker_scripts):
            path = tmp_path / f"script{i}.json"
            path.write_text(json.dumps(script), encoding="utf-8")
            procs.append(
                subprocess.Popen(
                    [sys.executable, str(WORKER), store, str(path)],
                    cwd=tmp_path,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
        for proc in procs:  # all have opened the store and started their flush thread
            line = _readline(proc, deadline)
            assert line == "ready\n", line + proc.communicate(timeout=5)[1]
        for proc in procs:  # the start gate: each blocks on stdin until this line
            proc.stdin.write("go\n")  # type: ignore[union-attr]
            proc.stdin.flush()  # type: ignore[union-attr]
        reports = []
        for i, proc in enumerate(procs):
            out, err = proc.communicate(timeout=max(0.1, deadline - time.monotonic()))
            assert proc.returncode == 0, f"worker {i} failed:\n{err}"
            reports.append({**json.loads(out), "stderr": err})
        return reports
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _to_ms(moment: datetime | None) -> int | None:
    return None if moment is None else (moment - EPOCH) // timedelta(milliseconds=1)


VARIANTS = [
    pytest.param(0.2, False, 11, id="interval-0.2s"),
    pytest.param(0.001, False, 12, id="interval-smallest-0.001s"),
    pytest.param(60.0, True, 13, id="flush-after-every-call"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("flush_interval", "flush_each_op", "seed"), VARIANTS)
def test_three_processes_match_the_oracle(
    tmp_path: Path, flush_interval: float, flush_each_op: bool, seed: int
) -> None:
    sc = build_scenario(seed)
    check_coverage(sc)
    db = tmp_path / "shared.db"
    open_store(f"sqlite:///{db}").close()  # create the schema once, before the race
    reports = run_workers(tmp_path, str(db), scripts(sc, flush_interval, flush_each_op))
    check_against_oracle(sc, f"sqlite:///{db}", reports)


#: Processes on one PostgreSQL database: a web tier's worth of workers.
PG_PROCESSES = 16


@pytest.mark.slow
@pytest.mark.parametrize(("flush_interval", "flush_each_op", "seed"), VARIANTS)
def test_sixteen_processes_on_postgresql_match_the_oracle(
    tmp_path: Path, flush_interval: float, flush_each_op: bool, seed: int
) -> None:
    """The same oracle, 16 processes on one real PostgreSQL database (the schema is
    created by the first worker to open it: the others wait for its advisory lock)."""
    sc = build_scenario(seed)
    check_coverage(sc)
    url = pg_server.fresh_url()
    work = scripts(sc, flush_interval, flush_each_op, PG_PROCESSES)
    reports = run_workers(tmp_path, url, work, timeout_s=4 * RUN_TIMEOUT_S)
    check_against_oracle(sc, url, reports)


def check_coverage(sc: Scenario) -> None:
    seen = coverage(sc)
    for case in (
        "cross_process",
        "same_process",
        "stale_logout",
        "stale_relogin",
        "zero_seconds",
        "half_second_even",
        "day_crossing",
        "month_crossing",
        "unknown_events",
        "float_amounts",
    ):
        assert seen[case] >= 1, f"the scenario lost its {case} case: {seen}"


def check_against_oracle(sc: Scenario, url: str, reports: list[dict[str, Any]]) -> None:
    """Every worker stored everything; the store holds exactly the oracle's numbers."""
    for report in reports:
        assert report["stored_at_stop"], report
        stats = report["stats"]
        assert (stats["dropped"], stats["rejected"]) == (0, 0), report
    store = open_store(url)
    try:
        # Sessions: every login paired with its own logout, whichever process saw it.
        for user in sc.users():
            got = [
                (_to_ms(r.login_at), _to_ms(r.logout_at), r.duration_s, r.day, r.timed_out)
                for r in store.get_sessions(user)
            ]
            want = [
                (s.login, s.logout, s.seconds, day_key(s.login), False)
                for s in sorted(sc.sessions, key=lambda s: s.login)
                if s.user == user
            ]
            assert got == want, f"sessions of {user}"
        assert store.count_open_sessions() == 0

        # The event stream: every event exactly once, with its day and data.
        stored = store.get_events(limit=10 * len(sc.events))
        got_events = sorted(
            (_to_ms(e.ts), e.user_id, e.event, e.day, json.loads(e.data)) for e in stored
        )
        want_events = sorted((e.t, e.user, e.event, day_key(e.t), e.data or {}) for e in sc.events)
        assert got_events == want_events

        # Daily documents, newest first, as getLast30Days().
        days = expected_days(sc)
        want_days = [days[key] for key in sorted(days, reverse=True)]
        reader = Analytics(store, clock=lambda: datetime(2026, 2, 2, 12, tzinfo=UTC))
        assert [d.to_dict() for d in reader.get_last_30_days()] == want_days

        # Months and getMetrics() on every day of the span.
        for month in ("2026-01", "2026-02"):
            mau, timed, timed_s, _ = expected_month(sc, month)
            figures = store.get_month(month)
            assert (figures.mau, figures.timed_sessions, figures.timed_session_s) == (
                mau,
                timed,
                timed_s,
            ), month
        for t in range(START + 12 * HOUR_MS, END, DAY_MS):
            mau, _, _, avg_min = expected_month(sc, month_key(t))
            today = days.get(day_key(t))
            metrics = Analytics(store, clock=lambda t=t: EPOCH + timedelta(milliseconds=t))
            assert metrics.get_metrics().to_dict() == {
                "today": today
                or {
                    "day": day_key(t),
                    "month": month_key(t),
                    **dict.fromkeys(SEED_FIELDS, 0),
                },
                "dau": today["dau"] if today else 0,
                "mau": mau,
                "avgSessionMin": avg_min,
                "activeSessions": 0,
            }, day_key(t)
    finally:
        store.close()


def test_oracle_rounds_like_javascript() -> None:
    """The oracle itself: halves go up (JS), which Python's ``round`` would not do."""
    assert [rounded_seconds(d) for d in (0, 499, 500, 1500, 2500, 2499)] == [0, 0, 1, 2, 3, 2]
    assert js_round(Fraction(150, 60)) == 3  # 2.5 minutes
    assert round(2.5) == 2
    assert day_key(ms("2026-01-31T23:59:59.999")) == "2026-01-31"
    assert month_key(ms("2026-02-01T00:00:00")) == "2026-02"
    sc = build_scenario(11)
    _, timed, timed_s, avg_min = expected_month(sc, "2026-01")
    mean_min = Fraction(timed_s, timed) / 60
    assert mean_min.denominator == 2 and mean_min.numerator // 2 % 2 == 0  # k + 0.5, k even
    assert avg_min == mean_min + Fraction(1, 2)


def test_a_stale_session_id_does_not_swallow_the_logout(tmp_path: Path) -> None:
    """Deterministic twin of the stale cases above: three ``Analytics`` on one file.

    Process 0 sees u log in, process 1 the logout, process 2 the next login, and
    process 0 the next logout: process 0 still holds the first session's id. That
    logout must close the second session (it was dropped before the fix), and
    process 0's own re-login must not end anything a second time.
    """
    now = [datetime(2026, 1, 30, 10, tzinfo=UTC)]
    url = f"sqlite:///{tmp_path / 'stale.db'}"
    procs = [Analytics(open_store(url), flush_interval=3600, clock=lambda: now[0]) for _ in "abc"]

    def step(seconds: int, proc: int, call: str) -> None:
        now[0] = datetime(2026, 1, 30, 10, tzinfo=UTC) + timedelta(seconds=seconds)
        getattr(procs[proc], call)("u")
        procs[proc].flush()

    step(0, 0, "on_login")
    step(60, 1, "on_logout")
    step(120, 2, "on_login")
    step(240, 0, "on_logout")  # stale id of the first session
    step(300, 0, "on_login")  # re-login: the stale id again, already closed
    step(330, 1, "on_logout")
    store = procs[0].store
    got = [(r.duration_s, r.logout_at is not None) for r in store.get_sessions("u")]
    assert got == [(60, True), (120, True), (30, True)]
    assert store.get_day("2026-01-30")["totalSessionS"] == 210
    assert store.count_open_sessions() == 0


def test_two_sessions_of_one_user_in_flight(tmp_path: Path) -> None:
    """Two processes (two ``Analytics`` on one file); both sessions unflushed at once.

    Process A records login 1 and, later, login 2 with its logout; process B records
    the logout of session 1 in between but flushes last. The store sees A's batch
    first, where A's second login is session 1's next mark; B's logout, earlier, then
    becomes its next mark, and the walk ends session 1 there.
    """
    now = [datetime(2026, 1, 30, 10, tzinfo=UTC)]
    url = f"sqlite:///{tmp_path / 'pair.db'}"
    a = Analytics(open_store(url), flush_interval=3600, clock=lambda: now[0])
    b = Analytics(open_store(url), flush_interval=3600, clock=lambda: now[0])
    a.on_login("u")
    now[0] += timedelta(seconds=60)
    b.on_logout("u")
    now[0] += timedelta(seconds=60)
    a.on_login("u")
    now[0] += timedelta(seconds=120)
    a.on_logout("u")
    a.flush()
    b.flush()
    assert [r.duration_s for r in a.store.get_sessions("u")] == [60, 120]
    assert a.store.get_day("2026-01-30")["totalSessionS"] == 180
    month = a.store.get_month("2026-01")
    assert (month.timed_sessions, month.timed_session_s) == (2, 180)


#: Batches applied before the crash: well into the run, with most of it still to come.
CRASH_AFTER_BATCHES = 40


@pytest.mark.slow
def test_sixteen_processes_through_a_postgresql_crash(tmp_path: Path) -> None:
    """``pg_ctl stop -m immediate`` (the server killed, no checkpoint, crash recovery at
    the next start) in the middle of 16 workers' flushes, then a restart on the same
    port: every worker keeps its batches while the server is gone, retries, and ends;
    the oracle's numbers hold exactly (a batch whose commit was acknowledged survived
    the crash, one whose outcome the worker never learned was applied once)."""
    psycopg = pytest.importorskip("psycopg")
    cluster = pg_server.Cluster()  # a server of its own: this test kills it
    try:
        url = cluster.url(pg_server.fresh_schema())
        sc = build_scenario(11)
        open_store(url).close()
        seen: dict[str, int] = {}

        def applied() -> tuple[int, int]:
            """Batch parts applied, and the workers' transactions open right now."""
            with contextlib.closing(psycopg.connect(cluster.url(), autocommit=True)) as conn:
                schema = url.rsplit("schema=", 1)[1]
                parts = conn.execute(f"SELECT count(*) FROM {schema}.batches").fetchone()[0]
                open_now = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE xact_start IS NOT NULL"
                    " AND application_name = 'gso_analytics'"
                ).fetchone()[0]
            return int(parts), int(open_now)

        def crash_midway() -> None:
            deadline = time.monotonic() + RUN_TIMEOUT_S
            while time.monotonic() < deadline:
                parts, open_now = applied()
                if parts >= CRASH_AFTER_BATCHES and open_now:
                    break
            seen["before"], seen["in_flight"] = parts, open_now
            cluster.stop("immediate")
            time.sleep(1.0)  # flushes fail meanwhile
            cluster.start()
            seen["restarted"] = 1

        crasher = threading.Thread(target=crash_midway)
        crasher.start()
        work = scripts(sc, 0.2, False, PG_PROCESSES)
        try:
            reports = run_workers(tmp_path, url, work, timeout_s=4 * RUN_TIMEOUT_S)
        finally:
            crasher.join(RUN_TIMEOUT_S)
        assert seen.get("restarted"), "the server was not crashed and restarted"
        assert seen["in_flight"] >= 1, "no worker's transaction was open at the crash"
        assert applied()[0] > seen["before"], "no batch was applied after the restart"
        check_against_oracle(sc, url, reports)
    finally:
        cluster.destroy()
