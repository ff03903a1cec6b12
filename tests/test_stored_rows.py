"""The records a store remembers as stored (:mod:`gso_analytics.stored_rows`): a batch
skips the (day, user), (month, user) and first-seen records its store's committed
batches wrote, and every figure stays what it is without the skip.

Every test runs on every backend and checks the figures a skip would get wrong (``dau``,
``mau``, a player's days and first-seen day) against what the batches carried, in the
cases where a remembered record may not be stored, or a record not remembered is: the
same player on a new day or in a new month, an event of an earlier day arriving late,
an erase (through another handle on the store, as another process), a batch attempt
that failed after writing its records and ran again, a forked child.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from gso_analytics import Store
from gso_analytics.conflicts import Conflict
from gso_analytics.errors import StoreError
from gso_analytics.model import EventRow

if TYPE_CHECKING:
    from conftest import AnalyticsFactory, Backend, FakeClock

DAY = "2025-03-14"  # the fake clock's first day (conftest.START)
NEXT_DAY = "2025-03-15"


class Spy:
    """Wraps ``store``'s transactions: counts, per attempt at a batch part (the MongoDB
    harness makes some lose a write conflict and run again), the players each kind of
    record is written for, and can make the next attempt fail after it wrote its
    records (at its events)."""

    def __init__(self, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
        self.attempts: list[Counter[str]] = []
        self.fail: Exception | None = None
        real = store.transaction

        @contextlib.contextmanager
        def transaction() -> Iterator[Any]:
            with real() as tx:
                yield _SpiedTransaction(tx, self)

        monkeypatch.setattr(store, "transaction", transaction)


class _SpiedTransaction:
    def __init__(self, tx: Any, spy: Spy) -> None:
        self._tx = tx
        self._spy = spy

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tx, name)

    def claim_batch(self, batch_id: str, at: Any) -> bool:
        self._spy.attempts.append(Counter())
        return bool(self._tx.claim_batch(batch_id, at))

    def add_day_users(self, day: str, users: set[str]) -> int:
        self._spy.attempts[-1]["day"] += len(users)
        return int(self._tx.add_day_users(day, users))

    def add_month_users(self, month: str, users: set[str]) -> int:
        self._spy.attempts[-1]["month"] += len(users)
        return int(self._tx.add_month_users(month, users))

    def add_first_seen(self, first_days: dict[str, str]) -> None:
        self._spy.attempts[-1]["first"] += len(first_days)
        self._tx.add_first_seen(first_days)

    def insert_events(self, events: list[EventRow]) -> None:
        failure, self._spy.fail = self._spy.fail, None
        if failure is not None:
            raise failure
        self._tx.insert_events(events)


def dau(store: Store, day: str) -> int:
    found = store.get_day(day)
    return 0 if found is None else int(found["dau"])


def days_of(store: Store, user: str) -> list[str]:
    return sorted(store.user_records(user).days_active)


def test_a_player_seen_again_costs_no_records_and_the_figures_stay_exact(
    store: Store,
    make_analytics: AnalyticsFactory,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spy = Spy(store, monkeypatch)
    analytics = make_analytics(store)
    for user in ("a", "b"):
        analytics.track("credits.earn", user, {"amount": 1})
    analytics.flush()
    assert spy.attempts[-1] == {"day": 2, "month": 2, "first": 2}
    clock.advance(seconds=60)
    for user in ("a", "b", "c"):
        analytics.track("credits.earn", user, {"amount": 1})
    analytics.flush()
    assert spy.attempts[-1] == {"day": 1, "month": 1, "first": 1}  # only c's
    assert dau(store, DAY) == 3
    assert store.get_month("2025-03").mau == 3

    clock.advance(days=1)  # the same player on a new day: a new (day, user) record
    analytics.track("credits.earn", "a", {"amount": 1})
    analytics.flush()
    assert spy.attempts[-1] == {"day": 1}
    assert dau(store, NEXT_DAY) == 1
    assert days_of(store, "a") == [DAY, NEXT_DAY]
    assert store.user_records("a").first_seen == DAY

    clock.advance(days=17)  # a new month
    analytics.track("credits.earn", "b", {"amount": 1})
    analytics.flush()
    assert store.get_month("2025-04").mau == 1
    assert store.get_month("2025-03").mau == 3


def test_an_earlier_day_arriving_late_is_still_written(
    store: Store, make_analytics: AnalyticsFactory, clock: FakeClock
) -> None:
    """A player remembered from a later day (a worker whose clock runs ahead, or a
    batch kept by an outage): the earlier day's records and first-seen day are new."""
    analytics = make_analytics(store)
    clock.advance(days=1)
    analytics.track("credits.earn", "a", {"amount": 1})
    analytics.flush()
    assert store.user_records("a").first_seen == NEXT_DAY
    clock.advance(days=-1)
    analytics.track("credits.earn", "a", {"amount": 1})
    analytics.flush()
    assert store.user_records("a").first_seen == DAY
    assert days_of(store, "a") == [DAY, NEXT_DAY]
    assert dau(store, DAY) == 1 and dau(store, NEXT_DAY) == 1


def test_an_erase_elsewhere_leaves_no_wrong_skip(
    store: Store, other_store: Store, make_analytics: AnalyticsFactory, clock: FakeClock
) -> None:
    """``other_store`` is another process's handle (the same object on the memory
    store): it erases a player this store remembers. The player's later batches are
    renamed to the token by their tombstone lookup, before the store asks what it has
    stored, so the records asked about are the token's, and every figure stays exact."""
    analytics = make_analytics(store)
    analytics.track("credits.earn", "a", {"amount": 1})
    analytics.track("credits.earn", "b", {"amount": 1})
    analytics.flush()
    other_store.erase_user("a", clock())
    token = other_store.erased_token("a")
    assert token is not None
    clock.advance(seconds=60)
    analytics.track("credits.earn", "a", {"amount": 1})
    analytics.flush()
    assert dau(store, DAY) == 2
    clock.advance(days=1)
    analytics.track("credits.earn", "a", {"amount": 1})
    analytics.flush()
    assert dau(store, NEXT_DAY) == 1
    assert days_of(store, "a") == []
    assert days_of(store, token) == [DAY, NEXT_DAY]
    assert store.user_records(token).first_seen == DAY
    assert store.user_records(token).months_active == ["2025-03"]
    assert store.get_month("2025-03").mau == 2


@pytest.mark.parametrize("failure", ["conflict", "store_error"])
def test_an_attempt_that_failed_after_writing_its_records_writes_them_again(
    store: Store,
    make_analytics: AnalyticsFactory,
    monkeypatch: pytest.MonkeyPatch,
    failure: str,
) -> None:
    """The attempt wrote its records, then failed before its commit (a conflict the
    store runs again at once, or an error the flusher retries at the next flush): its
    records were rolled back, so the attempt that commits must write them again."""
    spy = Spy(store, monkeypatch)
    analytics = make_analytics(store)
    analytics.track("credits.earn", "a", {"amount": 1})
    spy.fail = Conflict("injected") if failure == "conflict" else StoreError("injected")
    try:
        analytics.flush()
    except StoreError:  # not retried by the store: the batch waits for the next flush
        analytics.flush()
    assert spy.fail is None, "the injected failure never fired"
    assert analytics.stats()["buffered"] == 0
    assert dau(store, DAY) == 1
    assert store.get_month("2025-03").mau == 1
    assert days_of(store, "a") == [DAY]
    assert store.user_records("a").first_seen == DAY
    assert len(spy.attempts) >= 2
    assert spy.attempts[0]["day"] == spy.attempts[-1]["day"] == 1


def test_a_forked_child_remembers_nothing(
    backend: Backend,
    store: Store,
    make_analytics: AnalyticsFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The child writes the records of a player its parent remembered: it learns what
    is stored from its own commits only."""
    if backend.name.startswith("mongo"):
        pytest.skip("the MongoDB stand-ins run in this process's harness, not across a fork")
    spy = Spy(store, monkeypatch)
    analytics = make_analytics(store)
    analytics.track("credits.earn", "a", {"amount": 1})
    analytics.flush()
    assert len(store.stored_rows) > 0
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            remembered = len(store.stored_rows)
            analytics.track("credits.earn", "a", {"amount": 1})
            analytics.flush()
            if remembered == 0 and spy.attempts[-1]["day"] == 1 and dau(store, DAY) == 1:
                code = 0
        finally:
            os._exit(code)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            break
        time.sleep(0.01)
    else:
        os.kill(pid, 9)
        pytest.fail("the child did not finish")
    assert len(store.stored_rows) > 0  # the parent's stays
    assert dau(store, DAY) == 1


def test_what_is_remembered_is_bounded(
    store: Store,
    make_analytics: AnalyticsFactory,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The newest two days are remembered; past the size bound, nothing."""
    from gso_analytics import stored_rows

    analytics = make_analytics(store)
    for _ in range(4):
        analytics.track("credits.earn", "a", {"amount": 1})
        analytics.flush()
        clock.advance(days=1)
    assert sorted(store.stored_rows.days) == ["2025-03-16", "2025-03-17"]
    monkeypatch.setattr(stored_rows, "STORED_ROWS_LIMIT", 5)
    for user in ("b", "c", "d"):
        analytics.track("credits.earn", user, {"amount": 1})
    analytics.flush()
    assert len(store.stored_rows) == 0
    assert dau(store, "2025-03-18") == 3


def test_a_failed_batch_forgets_everything(
    store: Store, make_analytics: AnalyticsFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure may be a failover to a server that lacks the last commits."""
    spy = Spy(store, monkeypatch)
    analytics = make_analytics(store)
    analytics.track("credits.earn", "a", {"amount": 1})
    analytics.flush()
    assert len(store.stored_rows) > 0
    spy.fail = StoreError("injected")
    analytics.track("credits.earn", "b", {"amount": 1})
    with pytest.raises(StoreError):
        analytics.flush()
    assert len(store.stored_rows) == 0
