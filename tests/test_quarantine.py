"""Poison batches, bugs against outages, and how long a retry may come (every backend).

A batch that fails for good is set aside so the batches behind it are stored, kept in
a dead-letter file and replayed from it exactly once; a store error that is an outage
keeps today's retry-in-order; a bug is counted apart from outages; and batch ids
outlive the longest retry, even when another process prunes meanwhile.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from faults import FaultyStore

from gso_analytics import Analytics, ConfigurationError, Store, StoreError
from gso_analytics.cli import main
from gso_analytics.dead_letters import read_dead_letters, replay
from gso_analytics.store import MAX_RETRY_AGE, MIN_BATCH_RETENTION

if TYPE_CHECKING:
    from conftest import AnalyticsFactory, Backend, FakeClock


def credits(store: Store) -> float:
    today = store.get_day("2025-03-14")
    return today["creditsEarned"] if today else 0


def test_reserved_counter_fields_are_refused_when_analytics_is_built(
    backend: Backend, store: Store
) -> None:
    """A counter field the store reserves would fail every flush (and block every
    later batch): ``Analytics`` refuses it at once, naming the field."""
    if backend.name.startswith("mongo"):
        assert {"_id", "appliedBatches"} <= store.reserved_fields
    for field in store.reserved_fields:
        with pytest.raises(ConfigurationError, match=repr(field)):
            Analytics(store, counters={"quest.done": field})


def test_a_batch_failing_with_a_bug_is_set_aside_and_replayed_once(
    backend: Backend,
    store: Store,
    store_url: str,
    make_analytics: AnalyticsFactory,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A batch failing with an internal error ``quarantine_after`` times in a row is set
    aside (counted, logged, written to the dead-letter file); the batches behind it
    are stored; the CLI replays the file exactly once (its batch id is kept)."""
    faulty = FaultyStore(store)
    analytics = make_analytics(faulty, quarantine_after=3, dead_letter_dir=tmp_path / "dead")
    analytics.track("credits.earn", "u1", {"amount": 7})
    faulty.fail_before(times=3, error=RuntimeError)
    for _ in range(2):
        with pytest.raises(RuntimeError):  # a bug is raised as it is, never a StoreError
            analytics.flush()
    with caplog.at_level(logging.ERROR, logger="gso_analytics"):
        analytics.flush()  # the third failure: set aside, and flush() goes on
    assert "set aside" in caplog.text
    assert "RuntimeError" in caplog.text
    analytics.track("credits.earn", "u2", {"amount": 5})
    analytics.flush()
    assert credits(store) == 5
    stats = analytics.stats()
    assert (stats["quarantined"], stats["internal_errors"], stats["buffered"]) == (1, 3, 0)

    (path,) = (tmp_path / "dead").iterdir()
    (letter,) = read_dead_letters(path)
    assert "RuntimeError" in letter.reason
    assert [user for _, user, *_ in letter.batch.events] == ["u1"]
    if backend.shared_by_url:  # the CLI opens the store by URL, as another process
        assert main(["replay-dead-letters", str(path), "--store", store_url]) == 0
        assert "Applied 1 batches" in capsys.readouterr().out
        assert main(["replay-dead-letters", str(path), "--store", store_url]) == 0
        assert "1 were applied already" in capsys.readouterr().out
    else:
        assert replay(path, store).applied == 1
        assert replay(path, store).duplicates == 1
    assert credits(store) == 12


def test_permanent_store_errors_are_set_aside_outages_are_retried_in_order(
    store: Store, make_analytics: AnalyticsFactory
) -> None:
    """An outage (a plain ``StoreError``) is retried for as long as it lasts, however
    often; a store error the backend marks permanent is set aside like a bug, and
    an outage in between restarts the count (N failures *in a row*)."""
    faulty = FaultyStore(store)
    analytics = make_analytics(faulty, quarantine_after=2)
    analytics.track("credits.earn", "u1", {"amount": 1})
    faulty.fail_before(times=6, error=StoreError)
    for _ in range(6):
        with pytest.raises(StoreError):
            analytics.flush()
    analytics.flush()
    assert credits(store) == 1
    assert analytics.stats()["quarantined"] == 0

    def permanent(message: str) -> StoreError:
        return StoreError(message, permanent=True)

    analytics.track("credits.earn", "u1", {"amount": 10})
    faulty.fail_before(error=permanent)
    faulty.fail_before(error=StoreError)  # an outage between: the count starts again
    faulty.fail_before(error=permanent)
    for _ in range(3):
        with pytest.raises(StoreError):
            analytics.flush()
    faulty.fail_before(error=permanent)
    analytics.flush()  # second permanent failure in a row: set aside
    stats = analytics.stats()
    assert (stats["quarantined"], stats["internal_errors"]) == (1, 0)
    assert credits(store) == 1


def test_a_retry_after_an_outage_and_a_prune_elsewhere_is_still_a_duplicate(
    store: Store, other_store: Store, make_analytics: AnalyticsFactory, clock: FakeClock
) -> None:
    """Batch ids outlive the longest retry. A batch is written but its answer lost,
    the store is then down for almost ``MAX_RETRY_AGE``, and meanwhile another
    process prunes with a short event TTL: the retry still finds the id and counts
    nothing twice. (Fails if a prune forgets batch ids before a retry may come.)"""
    assert MAX_RETRY_AGE < MIN_BATCH_RETENTION
    faulty = FaultyStore(store)
    worker = make_analytics(faulty, event_ttl=timedelta(minutes=1))
    worker.track("credits.earn", "u1", {"amount": 10})
    faulty.fail_after()
    with pytest.raises(StoreError):
        worker.flush()
    faulty.down()
    clock.advance((MAX_RETRY_AGE - timedelta(minutes=1)).total_seconds())
    with pytest.raises(StoreError):
        worker.flush()
    cron = make_analytics(other_store, event_ttl=timedelta(minutes=1))
    cron.prune()
    faulty.up()
    worker.flush()
    assert faulty.applies()[-1].result is not None
    assert faulty.applies()[-1].result.duplicate
    assert credits(store) == 10
    assert worker.stats()["quarantined"] == 0


def test_a_batch_too_old_to_retry_exactly_once_is_set_aside(
    store: Store,
    other_store: Store,
    make_analytics: AnalyticsFactory,
    clock: FakeClock,
    tmp_path: Path,
) -> None:
    """Past ``MAX_RETRY_AGE`` a prune may have forgotten the id of a batch whose
    outcome is unknown: it is set aside (to the dead-letter file), never applied a
    second time, and the batches behind it are stored."""
    faulty = FaultyStore(store)
    worker = make_analytics(faulty, dead_letter_dir=tmp_path / "dead")
    worker.track("credits.earn", "u1", {"amount": 10})
    faulty.fail_after()
    with pytest.raises(StoreError):
        worker.flush()
    clock.advance((MAX_RETRY_AGE + timedelta(minutes=1)).total_seconds())
    make_analytics(other_store, event_ttl=timedelta(minutes=1)).prune()
    worker.track("credits.earn", "u1", {"amount": 1})
    worker.flush()
    assert worker.stats()["quarantined"] == 1
    (path,) = (tmp_path / "dead").iterdir()
    (letter,) = read_dead_letters(path)
    assert "count it twice" in letter.reason
    assert credits(store) == 10
    assert store.get_day(clock.now.strftime("%Y-%m-%d"))["creditsEarned"] == 1
