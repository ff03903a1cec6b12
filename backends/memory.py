"""``memory://``: an in-process store for unit tests and demos.

Thread-safe: one lock is held for a whole transaction. Its writes are plain dict and
set updates that cannot fail part-way, so it needs no rollback journal.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import attrs

from gso_analytics.clock import from_ms, to_ms
from gso_analytics.errors import ConfigurationError
from gso_analytics.model import (
    DailyStats,
    EventRecord,
    Logout,
    MonthStats,
    Number,
    SessionRecord,
    StoredSession,
)
from gso_analytics.store import Store, Transaction


@attrs.define
class _State:
    batches: dict[str, datetime] = attrs.field(factory=dict)
    daily: dict[str, dict[str, Number]] = attrs.field(factory=dict)
    months_of_day: dict[str, str] = attrs.field(factory=dict)
    monthly: dict[str, dict[str, int]] = attrs.field(factory=dict)
    day_users: set[tuple[str, str]] = attrs.field(factory=set)
    month_users: set[tuple[str, str]] = attrs.field(factory=set)
    new_users: set[tuple[str, str]] = attrs.field(factory=set)
    first_seen: dict[str, str] = attrs.field(factory=dict)  # user -> day
    first_payments: dict[str, str] = attrs.field(factory=dict)  # user -> day
    user_revenue: dict[tuple[str, str], Number] = attrs.field(factory=dict)  # (day, user)
    sessions: dict[str, StoredSession] = attrs.field(factory=dict)
    logouts: dict[str, Logout] = attrs.field(factory=dict)
    events: list[EventRecord] = attrs.field(factory=list)


class _MemoryTransaction(Transaction):
    def __init__(self, state: _State) -> None:
        self.state = state

    def claim_batch(self, batch_id: str, at: datetime) -> bool:
        if batch_id in self.state.batches:
            return False
        self.state.batches[batch_id] = at
        return True

    @staticmethod
    def _add(records: set[tuple[str, str]], key: str, users: set[str]) -> int:
        before = len(records)
        records.update((key, user) for user in users)
        return len(records) - before

    def add_day_users(self, day: str, users: set[str]) -> int:
        return self._add(self.state.day_users, day, users)

    def add_month_users(self, month: str, users: set[str]) -> int:
        return self._add(self.state.month_users, month, users)

    def add_new_users(self, day: str, users: set[str]) -> int:
        return self._add(self.state.new_users, day, users)

    @staticmethod
    def _keep_first(facts: dict[str, str], first_days: dict[str, str]) -> None:
        for user, day in first_days.items():
            if user not in facts or day < facts[user]:
                facts[user] = day

    def add_first_seen(self, first_days: dict[str, str]) -> None:
        self._keep_first(self.state.first_seen, first_days)

    def add_first_payments(self, first_days: dict[str, str]) -> None:
        self._keep_first(self.state.first_payments, first_days)

    def add_user_revenue(self, revenue: dict[str, dict[str, Number]]) -> None:
        records = self.state.user_revenue
        for day, payers in revenue.items():
            for user, cents in payers.items():
                records[day, user] = records.get((day, user), 0) + cents

    def increment_daily(self, day: str, month: str, increments: dict[str, Number]) -> None:
        counters = self.state.daily.setdefault(day, {})
        self.state.months_of_day[day] = month
        for field, amount in increments.items():
            counters[field] = counters.get(field, 0) + amount

    def increment_monthly(self, month: str, increments: dict[str, int]) -> None:
        figures = self.state.monthly.setdefault(month, {})
        for field, amount in increments.items():
            figures[field] = figures.get(field, 0) + amount

    def session_marks(self, since: Mapping[str, int]) -> list[StoredSession | Logout]:
        found: list[StoredSession | Logout] = [
            s
            for s in self.state.sessions.values()
            if s.login.user_id in since and (s.login.at_ms >= since[s.login.user_id] or s.end.open)
        ]
        found += [
            m
            for m in self.state.logouts.values()
            if m.user_id in since and m.at_ms >= since[m.user_id]
        ]
        return found

    def save_sessions(self, sessions: list[StoredSession]) -> None:
        for session in sessions:
            self.state.sessions[session.login.id] = session

    def insert_logouts(self, logouts: list[Logout]) -> None:
        for logout in logouts:
            self.state.logouts[logout.id] = logout

    def insert_events(self, events: list[EventRecord]) -> None:
        self.state.events.extend(events)

    def delete_events_before(self, cutoff: datetime) -> int:
        cutoff_ms = to_ms(cutoff)
        kept = [e for e in self.state.events if e.ts_ms >= cutoff_ms]
        deleted = len(self.state.events) - len(kept)
        self.state.events = kept
        return deleted

    def open_sessions_before(self, cutoff_ms: int) -> list[StoredSession]:
        return [s for s in self.state.sessions.values() if s.end.open and s.login.at_ms < cutoff_ms]

    def delete_logouts_before(self, cutoff_ms: int) -> None:
        self.state.logouts = {k: m for k, m in self.state.logouts.items() if m.at_ms >= cutoff_ms}

    def delete_batches_before(self, cutoff: datetime) -> None:
        self.state.batches = {k: at for k, at in self.state.batches.items() if at >= cutoff}


def _record(session: StoredSession) -> SessionRecord:
    login, end = session.login, session.end
    return SessionRecord(
        login.id,
        login.user_id,
        login.username,
        from_ms(login.at_ms),
        None if end.logout_ms is None else from_ms(end.logout_ms),
        end.duration_s,
        login.day,
        login.month,
        end.timed_out,
    )


#: The stores of this process and the locks a fork holds: a child must not inherit a
#: store's lock held by a thread it does not have, nor a half-applied batch.
_stores: weakref.WeakSet[MemoryStore] = weakref.WeakSet()
_held_at_fork: list[Any] = []  # RLocks


def _before_fork() -> None:
    for store in list(_stores):
        store._lock.acquire()
        _held_at_fork.append(store._lock)


def _after_fork() -> None:
    while _held_at_fork:
        _held_at_fork.pop().release()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork, after_in_child=_after_fork)


class MemoryStore(Store):
    """Everything in dicts, guarded by one lock. Nothing survives the process."""

    schemes = ("memory",)

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._state = _State()
        _stores.add(self)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> MemoryStore:
        rest = url.split("://", 1)[1]
        if rest:  # "memory://shared" would suggest a store others can open: there is none
            raise ConfigurationError(
                f"memory:// takes nothing after the scheme, got {url!r}:"
                " each memory store is private to the object that opened it"
            )
        return cls(**options)

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        with self._lock:
            yield _MemoryTransaction(self._state)

    def get_day(self, day: str) -> DailyStats | None:
        with self._lock:
            counters = self._state.daily.get(day)
            if counters is None:
                return None
            return DailyStats(day, self._state.months_of_day[day], dict(counters))

    def recent_days(self, limit: int = 30) -> list[DailyStats]:
        with self._lock:
            days = sorted(self._state.daily, reverse=True)[:limit]
            return [
                DailyStats(day, self._state.months_of_day[day], dict(self._state.daily[day]))
                for day in days
            ]

    def get_month(self, month: str) -> MonthStats:
        with self._lock:
            return MonthStats.from_fields(month, self._state.monthly.get(month, {}))

    def count_open_sessions(self) -> int:
        with self._lock:
            return sum(1 for s in self._state.sessions.values() if s.end.open)

    def get_sessions(self, user_id: str) -> list[SessionRecord]:
        with self._lock:
            found = [s for s in self._state.sessions.values() if s.login.user_id == user_id]
        return [_record(s) for s in sorted(found, key=lambda s: s.login.key)]

    def get_events(self, user_id: str | None = None, limit: int = 1000) -> list[EventRecord]:
        with self._lock:
            found = [e for e in self._state.events if user_id is None or e.user_id == user_id]
        return found[-limit:]

    # -- KPI range reads: dict scans, which is what a test store can afford ------------

    def days_between(self, start: str, end: str) -> list[DailyStats]:
        with self._lock:
            return [
                DailyStats(day, self._state.months_of_day[day], dict(counters))
                for day, counters in sorted(self._state.daily.items())
                if start <= day <= end
            ]

    def day_users_between(self, start: str, end: str) -> dict[str, set[str]]:
        found: dict[str, set[str]] = {}
        with self._lock:
            for day, user in self._state.day_users:
                if start <= day <= end:
                    found.setdefault(day, set()).add(user)
        return found

    @staticmethod
    def _by_day(facts: dict[str, str], start: str, end: str) -> dict[str, set[str]]:
        found: dict[str, set[str]] = {}
        for user, day in facts.items():
            if start <= day <= end:
                found.setdefault(day, set()).add(user)
        return found

    def first_seen_between(self, start: str, end: str) -> dict[str, set[str]]:
        with self._lock:
            return self._by_day(self._state.first_seen, start, end)

    def first_payments_between(self, start: str, end: str) -> dict[str, set[str]]:
        with self._lock:
            return self._by_day(self._state.first_payments, start, end)

    def user_revenue_between(self, start: str, end: str) -> dict[str, dict[str, Number]]:
        found: dict[str, dict[str, Number]] = {}
        with self._lock:
            for (day, user), cents in self._state.user_revenue.items():
                if start <= day <= end:
                    found.setdefault(day, {})[user] = cents
        return found

    def sessions_between(self, start: str, end: str) -> list[SessionRecord]:
        with self._lock:
            return [
                _record(s) for s in self._state.sessions.values() if start <= s.login.day <= end
            ]

    def events_between(
        self, start: str | None, end: str | None, names: list[str]
    ) -> list[EventRecord]:
        wanted = set(names)
        with self._lock:
            found = [
                e
                for e in self._state.events
                if e.event in wanted
                and (start is None or e.day >= start)
                and (end is None or e.day <= end)
            ]
        return sorted(found, key=lambda e: e.ts_ms)  # stable: flush order among equal times
