"""The testing kit (``gso_analytics.testing`` and its pytest fixtures), used as a game
team's tests use it: the fixtures come from the installed plugin, not from conftest.

Why: the kit is what users copy into their own suites, so its failure messages, its
clock and its isolation between tests are behaviour, tested like the rest.
``tests/test_packaging.py`` runs a sample game's test file against a plain install.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from gso_analytics import DAILY_FIELDS, Analytics, ValidationError, open_store
from gso_analytics.testing import (
    DEFAULT_START,
    FrozenClock,
    RecordingAnalytics,
    assert_not_tracked,
    assert_tracked,
    cluster,
    tracked,
)

# -- FrozenClock --------------------------------------------------------------------------


def test_frozen_clock_takes_a_datetime_or_an_iso_string() -> None:
    assert FrozenClock("2025-02-01T10:00:00+00:00")() == datetime(2025, 2, 1, 10, tzinfo=UTC)
    moment = datetime(2025, 2, 1, 10, tzinfo=UTC)
    assert FrozenClock(moment)() is moment
    with pytest.raises(ValueError, match="aware"):
        FrozenClock("2025-02-01T10:00:00")


def test_frozen_clock_moves_only_when_told() -> None:
    clock = FrozenClock()
    assert clock() == clock() == DEFAULT_START
    assert clock.advance(minutes=90) == datetime(2025, 1, 15, 13, 30, tzinfo=UTC)
    assert clock.move_to("2025-03-01T00:00:00Z") == datetime(2025, 3, 1, tzinfo=UTC)
    assert clock() == datetime(2025, 3, 1, tzinfo=UTC)


# -- the fixtures -------------------------------------------------------------------------


def test_fixture_is_a_started_strict_recording_analytics_on_the_clock(
    gso_analytics: RecordingAnalytics, gso_clock: FrozenClock
) -> None:
    assert gso_analytics._started and gso_analytics.strict
    assert gso_analytics._hub is None  # no forwarders, whatever the environment says
    assert gso_analytics.clock is gso_clock
    with pytest.raises(ValidationError):
        gso_analytics.track("credits.earn", "u1", {"amount": -1})
    gso_analytics.on_login("u1", "alice")
    gso_clock.advance(minutes=5)
    gso_analytics.track("credits.earn", "u1", {"amount": 50})
    gso_analytics.on_logout("u1")
    kinds = [(r.kind, r.event, r.user_id, r.data) for r in gso_analytics.captured]
    assert kinds == [
        ("login", None, "u1", None),
        ("track", "credits.earn", "u1", {"amount": 50}),
        ("logout", None, "u1", None),
    ]
    assert gso_analytics.captured[1].at == datetime(2025, 1, 15, 12, 5, tzinfo=UTC)
    assert gso_analytics.get_metrics().to_dict()["today"]["creditsEarned"] == 50


def test_fixture_is_empty_in_the_next_test(gso_analytics: RecordingAnalytics) -> None:
    """Runs after the test above: nothing of it is left."""
    assert gso_analytics.captured == []
    assert gso_analytics.get_metrics().dau == 0


@pytest.mark.gso_clock("2025-01-31T23:59:00+00:00")
def test_marker_sets_where_the_clock_starts(
    gso_analytics: RecordingAnalytics, gso_clock: FrozenClock
) -> None:
    gso_analytics.on_login("u1")
    gso_clock.advance(minutes=2)  # into February
    gso_analytics.on_login("u2")
    days = [day.day for day in gso_analytics.get_last_30_days()]
    assert days == ["2025-02-01", "2025-01-31"]


def test_today_has_every_field_before_anything_moved(gso_clock: FrozenClock) -> None:
    analytics = RecordingAnalytics(
        "memory://", clock=gso_clock, counters={"quest.complete": "questsCompleted"}
    )
    today = analytics.get_metrics().to_dict()["today"]
    assert today == {
        "day": "2025-01-15",
        "month": "2025-01",
        **dict.fromkeys(DAILY_FIELDS, 0),
        "questsCompleted": 0,
    }
    analytics.stop()


def test_rejected_and_dropped_calls_are_not_recorded(gso_clock: FrozenClock) -> None:
    analytics = RecordingAnalytics("memory://", clock=gso_clock, max_buffered_events=2)
    analytics.track("credits.earn", "u1", {"amount": "lots"})  # lenient: counted only
    analytics.on_login("u1")
    analytics.on_login("u2")
    analytics.on_login("u3")  # the buffer is full: dropped
    analytics.on_logout("")  # rejected
    assert [r.user_id for r in analytics.captured] == ["u1", "u2"]
    assert analytics.stats()["rejected"] == 2 and analytics.stats()["dropped"] == 1
    analytics.stop()


def test_captured_data_is_a_copy(gso_analytics: RecordingAnalytics) -> None:
    data = {"dungeon": "crypt"}
    gso_analytics.track("dungeon.complete", "u1", data)
    data["dungeon"] = "tower"
    assert_tracked(gso_analytics, "dungeon.complete", dungeon="crypt")


# -- assertions ---------------------------------------------------------------------------


def test_assert_tracked_matches_event_user_and_a_data_subset(
    gso_analytics: RecordingAnalytics,
) -> None:
    gso_analytics.track("dungeon.complete", "u1", {"dungeon": "crypt", "seconds": 70})
    gso_analytics.track("dungeon.complete", "u2", {"dungeon": "tower"})
    (found,) = assert_tracked(gso_analytics, "dungeon.complete", "u1", dungeon="crypt")
    assert found.data == {"dungeon": "crypt", "seconds": 70}
    assert len(assert_tracked(gso_analytics, "dungeon.complete")) == 2
    assert tracked(gso_analytics, "dungeon.complete", dungeon="tower")[0].user_id == "u2"
    assert_not_tracked(gso_analytics, "dungeon.complete", "u2", dungeon="crypt")
    assert_not_tracked(gso_analytics, "credits.earn")


def test_assert_tracked_failure_lists_what_was_tracked(
    gso_analytics: RecordingAnalytics,
) -> None:
    gso_analytics.on_login("u1")
    gso_analytics.track("credits.earn", "u1", {"amount": 50})
    with pytest.raises(AssertionError) as failure:
        assert_tracked(gso_analytics, "credits.earn", "u1", amount=60)
    message = str(failure.value)
    assert "expected track('credits.earn', user_id='u1', amount=60)" in message
    assert "on_login('u1') at 2025-01-15T12:00:00+00:00" in message
    assert "track('credits.earn', 'u1', {'amount': 50}) at 2025-01-15T12:00:00+00:00" in message


def test_assert_not_tracked_failure_lists_the_offending_calls(
    gso_analytics: RecordingAnalytics,
) -> None:
    gso_analytics.track("credits.earn", "u1", {"amount": 50})
    gso_analytics.track("credits.earn", "u2", {"amount": 5})
    with pytest.raises(AssertionError, match=r"expected no track\('credits.earn'\)") as failure:
        assert_not_tracked(gso_analytics, "credits.earn")
    assert "'u1'" in str(failure.value) and "'u2'" in str(failure.value)


def test_assert_tracked_with_nothing_tracked_says_so(gso_analytics: RecordingAnalytics) -> None:
    with pytest.raises(AssertionError, match="nothing was tracked"):
        assert_tracked(gso_analytics, "credits.earn")


def test_assert_tracked_on_a_plain_analytics_says_what_it_needs() -> None:
    with (
        Analytics("memory://", forwarders=[]) as analytics,
        pytest.raises(TypeError, match="RecordingAnalytics"),
    ):
        assert_tracked(analytics, "credits.earn")


# -- cluster ------------------------------------------------------------------------------


def test_cluster_workers_share_a_store_and_flush_only_when_told(gso_clock: FrozenClock) -> None:
    with cluster(2, clock=gso_clock) as (a, b):
        assert a.store is b.store and a.clock is gso_clock
        a.on_login("u1")
        b.on_login("u2")
        b.track("user.register", "u2")
        assert a.store.get_day("2025-01-15") is None  # nothing flushed yet
        a.flush()
        assert a.store.get_day("2025-01-15")["dau"] == 1
        gso_clock.advance(minutes=10)
        a.on_logout("u2")  # another worker's player: the store's walk closes the session
        a.flush()
        b.flush()
        metrics = b.get_metrics()
        assert (metrics.dau, metrics.active_sessions) == (2, 1)
        assert metrics.to_dict()["today"]["newUsers"] == 1
        assert_tracked(b, "user.register", "u2")
        assert_not_tracked(a, "user.register")
    assert not a._started and not b._started


def test_cluster_on_a_given_store_leaves_it_open() -> None:
    store = open_store("memory://")
    with cluster(3, store=store) as workers:
        assert len(workers) == 3 and all(w.store is store for w in workers)
        workers[2].on_login("u1")
    assert store.get_day(DEFAULT_START.date().isoformat())["dau"] == 1  # stopped: flushed
    with pytest.raises(ValueError, match="at least one"), cluster(0):
        pass


def test_recording_costs_production_nothing() -> None:
    """Recording lives in the subclass: Analytics itself has no capture branch."""
    assert "captured" not in Analytics.track.__code__.co_names
    assert Analytics.track is not RecordingAnalytics.track
