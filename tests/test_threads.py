"""Sixteen request threads on one ``Analytics``: exact totals against an oracle.

Why: a threaded WSGI server (gunicorn ``--threads``, Django's runserver, uWSGI
threads) calls the library from many threads at once, while the flush thread swaps
the buffer under them, while some requests call ``flush()`` or ``get_metrics()`` and
a health check polls ``stats()``. The seed had no threads to worry about; we append
to a deque without a lock, so this shows nothing is lost, duplicated or mis-dated.

Each thread plays its own users (one thread serves a user, as one request at a time
serves a player), logs in, tracks counted and uncounted events with amounts, advances
*its own* clock (a thread-local clock, so every call's timestamp is known whatever
the interleaving), logs out, flushes and reads. Threads start at 22:30 on 31 January,
so most sessions and events cross midnight and the month end. The oracle computes
every daily document, month figure and session from the threads' own logs, with
the seed's rules written out here, and the store must match it exactly, on every
backend. ``tests/test_analytics.py`` has the small version (6 threads, tracks only).
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from gso_analytics import Analytics, Store, StoreError

if TYPE_CHECKING:
    from conftest import AnalyticsFactory

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
BASE = datetime(2025, 1, 31, 22, 30, tzinfo=UTC)
THREADS = 16
OPS = 80
DEADLINE_S = 60.0

#: event -> (field, amount key or None for +1); unknown events count nothing.
RULES: dict[str, tuple[str, str | None]] = {
    "dungeon.complete": ("dungeonsRun", None),
    "pvp.ranked.battle": ("pvpBattles", None),
    "user.register": ("newUsers", None),
    "credits.earn": ("creditsEarned", "amount"),
    "gems.purchase": ("gemsPurchased", "gems"),
    "stripe.payment": ("stripeRevenue", "amountCents"),
}
EVENTS = [*RULES, "tutorial.step"]


class ThreadClock:
    """A clock per thread: each request thread sets its own time before a call; any
    other thread (the flush thread) sees ``BASE``."""

    def __init__(self) -> None:
        self._local = threading.local()

    def __call__(self) -> datetime:
        return EPOCH + timedelta(milliseconds=getattr(self._local, "ms", to_ms(BASE)))

    def set_ms(self, ms: int) -> None:
        self._local.ms = ms


def to_ms(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(milliseconds=1)


def day_of(ms: int) -> str:
    return (EPOCH + timedelta(milliseconds=ms)).strftime("%Y-%m-%d")


@dataclass
class Log:
    """What one thread did, with the millisecond timestamp of every call."""

    calls: list[tuple[Any, ...]] = field(default_factory=list)
    reads: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    refused: int = 0  # flushes the store refused (StoreError)


def play(analytics: Analytics, clock: ThreadClock, t: int, log: Log) -> None:
    """Thread ``t``'s script, from its own seed; records every call in ``log``."""
    rng = random.Random(t)
    ms = to_ms(BASE) + t * 1000
    users = [f"t{t}-u{k}" for k in range(3)]
    online: set[str] = set()
    for _ in range(OPS):
        clock.set_ms(ms)
        action = rng.choice(["login", "logout", "track", "track", "track", "advance", "sync"])
        user = rng.choice(users)
        if action == "login" and user not in online:
            analytics.on_login(user, f"name-{user}")
            online.add(user)
            log.calls.append(("login", ms, user))
        elif action == "logout" and user in online:
            analytics.on_logout(user)
            online.discard(user)
            log.calls.append(("logout", ms, user))
        elif action == "track":
            event = rng.choice(EVENTS)
            key = RULES.get(event, ("", None))[1]
            data: dict[str, Any] = {"t": t}
            if key is not None:
                data[key] = rng.choice(
                    [rng.randint(0, 500), float(rng.randint(0, 40))]
                )  # 3.0 counts 3
                if key == "amountCents":
                    data[key] = int(data[key])  # real money is whole cents
            analytics.track(event, user, data)
            log.calls.append(("track", ms, user, event, data))
        elif action == "advance":
            ms += rng.choice([rng.randint(1, 30 * 60_000), rng.randint(0, 9) * 500])
        elif action == "sync":
            # A store may refuse a flush now and then (a transient error; nx-27017
            # with transactions refuses a flush beside the prune job's transaction):
            # the caller sees StoreError, the batch is kept, the totals stay exact.
            try:
                if rng.random() < 0.5:
                    analytics.flush()
                else:
                    log.reads.append((day_of(ms), analytics.get_metrics().to_dict()))
            except StoreError:
                log.refused += 1
    for user in sorted(online):
        ms += 1500
        clock.set_ms(ms)
        analytics.on_logout(user)
        log.calls.append(("logout", ms, user))


@dataclass
class Oracle:
    """The store's expected content, from the logs alone (the seed's rules: with
    ``active_on="login"``, each login/logout pair of the script is a session)."""

    days: defaultdict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    day_users: set[tuple[str, str]] = field(default_factory=set)
    registered: dict[str, str] = field(default_factory=dict)  # user -> first registration
    month_users: set[tuple[str, str]] = field(default_factory=set)
    sessions: defaultdict[str, list[tuple[int, int, int, str]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    timed: defaultdict[str, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))
    events: list[tuple[int, str, str, dict[str, Any], str]] = field(default_factory=list)

    @classmethod
    def of(cls, logs: list[Log]) -> Oracle:
        oracle = cls()
        for log in logs:
            open_at: dict[str, int] = {}
            for call in log.calls:
                kind, ms, user = call[:3]
                day = day_of(ms)
                if kind == "login":
                    open_at[user] = ms
                    oracle.days[day]["sessionCount"] += 1
                    oracle.day_users.add((day, user))
                    oracle.month_users.add((day[:7], user))
                elif kind == "logout":
                    login = open_at.pop(user)
                    seconds = max(0, (ms - login + 500) // 1000)  # Math.round, halves up
                    login_day = day_of(login)
                    oracle.days[login_day]["totalSessionS"] += seconds
                    oracle.sessions[user].append((login, ms, seconds, login_day))
                    oracle.timed[login_day[:7]][0] += 1  # 0-second sessions too
                    oracle.timed[login_day[:7]][1] += seconds
                else:
                    _, _, _, event, data = call
                    if event in RULES:
                        name, key = RULES[event]
                        if name == "newUsers":  # the day of the first registration
                            first = oracle.registered.setdefault(user, day)
                            oracle.registered[user] = min(first, day)
                        else:
                            oracle.days[day][name] += 1 if key is None else data[key]
                    oracle.events.append((ms, user, event, data, day))
        for day, _ in oracle.day_users:
            oracle.days[day]["dau"] += 1
        for day in oracle.registered.values():
            oracle.days[day]["newUsers"] += 1
        return oracle

    def last_days(self) -> list[dict[str, Any]]:
        from gso_analytics import DAILY_FIELDS

        docs = []
        for day in sorted(self.days, reverse=True)[:30]:
            doc: dict[str, Any] = {"day": day, "month": day[:7]}
            doc.update({name: self.days[day].get(name, 0) for name in DAILY_FIELDS})
            docs.append(doc)
        return docs


def test_sixteen_threads_match_the_oracle(store: Store, make_analytics: AnalyticsFactory) -> None:
    """Logins, tracks and logouts from 16 threads, with flushes (the thread's and the
    callers'), reads and ``stats()`` polling in between: every figure is exact."""
    clock = ThreadClock()
    # The seed's definitions (logins only, an idle timeout longer than the script), under
    # which the script's login/logout pairs are the sessions the oracle pairs.
    analytics = make_analytics(
        store,
        clock=clock,
        flush_interval=0.005,
        strict=True,
        active_on="login",
        idle_timeout=timedelta(days=30),
    )
    analytics.start()
    logs = [Log() for _ in range(THREADS)]
    errors: list[BaseException] = []
    polling = threading.Event()
    polling.set()

    def guarded(target: Any, *args: Any) -> None:
        try:
            target(*args)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    def poll_stats() -> None:
        while polling.is_set():
            stats = analytics.stats()
            assert stats["dropped"] == stats["rejected"] == 0
            time.sleep(0.0005)  # a busy health check, not a GIL hog that slows everyone

    threads = [
        threading.Thread(target=guarded, args=(play, analytics, clock, t, logs[t]))
        for t in range(THREADS)
    ]
    poller = threading.Thread(target=guarded, args=(poll_stats,))
    poller.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE_S)
    polling.clear()
    poller.join(DEADLINE_S)
    assert not any(thread.is_alive() for thread in threads), "a request thread hung"
    assert not errors, repr(errors[0])
    assert analytics.stop() is True

    oracle = Oracle.of(logs)
    assert len(oracle.days) >= 2 and {day[:7] for day in oracle.days} == {"2025-01", "2025-02"}
    assert [d.to_dict() for d in store.recent_days()] == oracle.last_days()
    for month in ("2025-01", "2025-02"):
        figures = store.get_month(month)
        mau = sum(1 for m, _ in oracle.month_users if m == month)
        count, seconds = oracle.timed[month]
        assert (figures.mau, figures.timed_sessions, figures.timed_session_s) == (
            mau,
            count,
            seconds,
        ), month
    assert store.count_open_sessions() == 0
    for user, sessions in oracle.sessions.items():
        got = [
            (to_ms(s.login_at), to_ms(s.logout_at), s.duration_s, s.day)  # type: ignore[arg-type]
            for s in store.get_sessions(user)
        ]
        assert got == sorted(sessions), user

    def order(event: tuple[Any, ...]) -> tuple[Any, ...]:
        return (*event[:3], json.dumps(event[3], sort_keys=True))

    stored = [
        (to_ms(e.ts), e.user_id, e.event, json.loads(e.data), e.day)
        for e in store.get_events(limit=100_000)
    ]
    assert sorted(stored, key=order) == sorted(oracle.events, key=order)

    # Reads taken while the others were writing never exceed the final figures.
    final = {doc["day"]: doc for doc in oracle.last_days()}
    for log in logs:
        for day, metrics in log.reads:
            today = metrics["today"]
            if today["day"] in final:
                assert today["dau"] <= final[day]["dau"]
                assert today["creditsEarned"] <= final[day]["creditsEarned"]
    calls = sum(len(log.calls) for log in logs)
    stats = analytics.stats()
    assert (stats["flushed"], stats["buffered"], stats["dropped"]) == (calls, 0, 0)
