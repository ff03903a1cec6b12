"""Clock trouble: a clock that steps back or jumps, sessions across midnight and month
end with flushes (and processes) in between, a batch that spans a day boundary.

Why: day and month keys, durations and the event TTL all come from the clock, and
a real server's clock is corrected by NTP, runs for days, and flushes whenever its
interval says, not at midnight. ``tests/test_store_contract.py`` pins the basics
(keys per timezone, session seconds on the login day, a logout stamped before its
login); these add the stories around them, on every backend.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pytest
from polling import wait_for

from gso_analytics import Analytics, ConfigurationError, Store, open_store

if TYPE_CHECKING:
    from conftest import AnalyticsFactory, FakeClock


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def doc(store: Store, day: str) -> dict[str, float]:
    stats = store.get_day(day)
    return stats.to_dict() if stats is not None else {}


@pytest.mark.parametrize(
    ("after", "before", "later_day", "earlier_day"),
    [
        ("2025-03-15 00:00:10", "2025-03-14 23:59:50", "2025-03-15", "2025-03-14"),
        ("2025-03-01 00:00:05", "2025-02-28 23:59:58", "2025-03-01", "2025-02-28"),
    ],
    ids=["midnight", "month-end"],
)
def test_clock_stepping_back_across_a_boundary(
    store: Store,
    make_analytics: AnalyticsFactory,
    clock: FakeClock,
    after: str,
    before: str,
    later_day: str,
    earlier_day: str,
) -> None:
    """NTP steps the clock back over midnight (or the month end) in mid-session: each
    call is filed under the day its own timestamp says. The tracked call and the logout
    stamped before the login come first in the walk: a session of 0 s on the earlier
    day, ended by that logout; the login starts another (open, 0 s so far) on the later
    day; no figure goes negative."""
    analytics = make_analytics(store)
    clock.set(at(after))
    analytics.on_login("u1")
    analytics.track("credits.earn", "u1", {"amount": 10})
    clock.set(at(before))  # the correction
    analytics.track("credits.earn", "u1", {"amount": 3})
    analytics.on_login("u2")
    analytics.on_logout("u1")
    metrics = analytics.get_metrics()

    later, earlier = doc(store, later_day), doc(store, earlier_day)
    assert (later["creditsEarned"], later["dau"], later["sessionCount"]) == (10, 1, 1)
    assert later["totalSessionS"] == 0
    assert (earlier["creditsEarned"], earlier["dau"], earlier["sessionCount"]) == (3, 2, 2)
    assert earlier["totalSessionS"] == 0
    sessions = [(s.day, s.duration_s, s.logout_at is None) for s in store.get_sessions("u1")]
    assert sessions == [(earlier_day, 0, False), (later_day, 0, True)]
    # "today" follows the clock, back to the earlier day: u1 and u2 were active there.
    assert (metrics.today and metrics.today.day) == earlier_day
    assert (metrics.dau, metrics.active_sessions, metrics.avg_session_min) == (2, 2, 0)
    assert metrics.mau == 2
    same_month = later_day[:7] == earlier_day[:7]
    assert store.get_month(later_day[:7]).timed_sessions == (3 if same_month else 1)


@pytest.mark.parametrize(
    ("login_at", "logout_at", "login_day", "next_month"),
    [
        ("2025-01-31 23:50:00", "2025-02-01 00:10:00.500", "2025-01-31", "2025-02"),
        ("2025-12-31 23:59:59", "2026-01-01 00:00:00.499", "2025-12-31", "2026-01"),
    ],
    ids=["month-end", "year-end"],
)
def test_session_across_the_month_end_closed_by_another_process(
    store: Store,
    other_store: Store,
    make_analytics: AnalyticsFactory,
    clock: FakeClock,
    login_at: str,
    logout_at: str,
    login_day: str,
    next_month: str,
) -> None:
    """Worker A flushes a login before midnight on the last day of the month (or year);
    worker B, which never saw it, handles the logout after midnight (within
    ``idle_timeout``): the session is closed with its rounded duration, counted on the
    login day and month only; the logout makes the player active in the new month."""
    a = make_analytics(store)
    b = make_analytics(other_store)
    clock.set(at(login_at))
    a.on_login("u1")
    a.flush()
    clock.set(at(logout_at))
    b.on_logout("u1")
    metrics = b.get_metrics()  # flushes B, reads the new month

    seconds = round((at(logout_at) - at(login_at)).total_seconds() + 1e-9)
    (session,) = store.get_sessions("u1")
    assert (session.duration_s, session.day, session.month) == (seconds, login_day, login_day[:7])
    assert doc(store, login_day)["totalSessionS"] == seconds
    old = store.get_month(login_day[:7])
    assert (old.mau, old.timed_sessions, old.timed_session_s) == (1, int(seconds > 0), seconds)
    new = store.get_month(next_month)
    assert (new.mau, new.timed_sessions) == (1, 0)
    today = metrics.to_dict().pop("today")
    assert today["month"] == next_month
    assert {k: v for k, v in today.items() if v and k not in ("day", "month")} == {"dau": 1}
    assert {k: v for k, v in metrics.to_dict().items() if k != "today"} == {
        "dau": 1,
        "mau": 1,
        "avgSessionMin": 0,
        "activeSessions": 0,
    }


@pytest.mark.parametrize(
    ("start", "days", "months"),
    [
        ("2025-03-14 23:59:58", ("2025-03-14", "2025-03-15"), ("2025-03", "2025-03")),
        ("2025-01-31 23:59:58", ("2025-01-31", "2025-02-01"), ("2025-01", "2025-02")),
    ],
    ids=["midnight", "month-end"],
)
def test_one_batch_spanning_midnight_splits_by_call_time(
    store: Store,
    make_analytics: AnalyticsFactory,
    clock: FakeClock,
    start: str,
    days: tuple[str, str],
    months: tuple[str, str],
) -> None:
    """A process that does not flush between 23:59:59.999 and 00:00:00.000 sends one
    batch holding both days: every counter, dau and mau record lands on the day (and
    month) of its own call, not of the flush."""
    analytics = make_analytics(store, flush_interval=3600)
    clock.set(at(start))
    analytics.on_login("u1")
    clock.set(at(start) + timedelta(milliseconds=1999))  # 23:59:59.999
    analytics.track("credits.earn", "u1", {"amount": 7})
    analytics.track("user.register", "u2")
    clock.advance(0.001)  # 00:00:00.000
    analytics.track("credits.earn", "u1", {"amount": 11})
    analytics.on_login("u1")  # the same player on the new day
    clock.advance(90)
    analytics.on_logout("u1")
    analytics.flush()
    assert analytics.stats()["batches"] == 1

    first, second = doc(store, days[0]), doc(store, days[1])
    # u2's registration is activity too: active on the first day, a session of 0 s.
    assert (first["creditsEarned"], first["newUsers"], first["dau"]) == (7, 1, 2)
    assert (second["creditsEarned"], second["newUsers"], second["dau"]) == (11, 0, 1)
    assert (first["sessionCount"], second["sessionCount"]) == (2, 0)
    # u1's session runs from 23:59:58 to the logout 90 s after midnight: 92 s, on the
    # first day (the re-login at midnight continues it).
    assert (first["totalSessionS"], second["totalSessionS"]) == (92, 0)
    assert [e.day for e in store.get_events()] == [days[0], days[0], days[1]]
    mau = {month: store.get_month(month).mau for month in months}
    # u1 and u2 in the first month, u1 in the second (one record each per month).
    assert mau == ({months[0]: 2} if months[0] == months[1] else {months[0]: 2, months[1]: 1})


def test_the_flush_thread_carries_a_day_over_midnight(
    store: Store, make_analytics: AnalyticsFactory, clock: FakeClock
) -> None:
    """With the real flush thread running, play goes on through midnight: yesterday's
    figures stay yesterday's, today's start at zero, and ``get_metrics()`` switches
    day with the clock."""
    analytics = make_analytics(store, flush_interval=0.01).start()
    clock.set(at("2025-03-14 23:59:00"))
    for minute in range(4):  # 23:59, 00:00, 00:01, 00:02
        analytics.on_login(f"u{minute}")
        analytics.track("dungeon.complete", f"u{minute}")
        assert wait_for(lambda: analytics.stats()["buffered"] == 0)
        clock.advance(60)
    yesterday, today = doc(store, "2025-03-14"), doc(store, "2025-03-15")
    assert (yesterday["dungeonsRun"], yesterday["dau"]) == (1, 1)
    assert (today["dungeonsRun"], today["dau"]) == (3, 3)
    metrics = analytics.get_metrics()
    assert (metrics.dau, metrics.mau, metrics.active_sessions) == (3, 4, 4)
    assert [d.day for d in analytics.get_last_30_days()] == ["2025-03-15", "2025-03-14"]


def test_a_clock_jump_past_the_idle_timeout_closes_sessions(
    store: Store, make_analytics: AnalyticsFactory, clock: FakeClock
) -> None:
    """A clock that jumps a day ahead and is then corrected: the prune that ran during
    the jump closed the open session at its last mark (flagged, 0 s); the logout after
    the correction, 5 minutes after the login, is the session's next mark within
    ``idle_timeout`` and ends it there - the walk's answer, and never a day of play."""
    analytics = make_analytics(store)
    analytics.on_login("u1")
    analytics.flush()
    real = clock.now
    clock.advance(days=1)  # the jump
    assert analytics.prune().sessions_timed_out == 1
    (session,) = store.get_sessions("u1")
    assert (session.timed_out, session.duration_s) == (True, 0)
    clock.set(real + timedelta(minutes=5))  # corrected
    analytics.on_logout("u1")
    metrics = analytics.get_metrics()
    (session,) = store.get_sessions("u1")
    assert (session.timed_out, session.duration_s) == (False, 300)
    assert doc(store, "2025-03-14")["totalSessionS"] == 300
    assert (metrics.active_sessions, metrics.avg_session_min) == (0, 5)


def test_a_clock_without_timezone_fails_at_construction() -> None:
    """``clock=datetime.now`` (naive) is a configuration error reported when the app
    starts, not an exception from every ``track()`` on the request path."""
    with pytest.raises(ConfigurationError, match="aware"):
        Analytics(open_store("memory://"), clock=datetime.now)
