"""``memory://``: an in-process store for unit tests and demos.

Thread-safe: one lock is held for a whole transaction. Its writes are plain dict and
set updates that cannot fail part-way, so it needs no rollback journal.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import attrs

from gso_analytics.model import (
    DailyStats,
    EventRecord,
    MonthStats,
    Number,
    OpenSession,
    SessionOpen,
    SessionRecord,
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
    sessions: dict[str, SessionRecord] = attrs.field(factory=dict)
    open_ids: set[str] = attrs.field(factory=set)
    pending_logouts: list[tuple[str, datetime, str]] = attrs.field(factory=list)
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

    def increment_daily(self, day: str, month: str, increments: dict[str, Number]) -> None:
        counters = self.state.daily.setdefault(day, {})
        self.state.months_of_day[day] = month
        for field, amount in increments.items():
            counters[field] = counters.get(field, 0) + amount

    def increment_monthly(self, month: str, increments: dict[str, int]) -> None:
        figures = self.state.monthly.setdefault(month, {})
        for field, amount in increments.items():
            figures[field] = figures.get(field, 0) + amount

    def insert_session(self, op: SessionOpen) -> None:
        self.state.sessions[op.session_id] = SessionRecord(
            op.session_id, op.user_id, op.username, op.login_at, None, 0, op.day, op.month
        )
        self.state.open_ids.add(op.session_id)

    def find_open_session(
        self, user_id: str, session_id: str | None, before: datetime
    ) -> OpenSession | None:
        sessions = self.state.sessions
        if session_id is not None:
            candidates = [sessions[session_id]] if session_id in self.state.open_ids else []
        else:
            candidates = [
                sessions[open_id]
                for open_id in self.state.open_ids
                if sessions[open_id].user_id == user_id and sessions[open_id].login_at <= before
            ]
        if not candidates:
            return None
        s = max(candidates, key=lambda record: record.login_at)
        return OpenSession(s.session_id, s.login_at, s.day, s.month)

    def end_session(
        self, session_id: str, logout_at: datetime, duration: int, timed_out: bool
    ) -> None:
        record = self.state.sessions[session_id]
        self.state.sessions[session_id] = attrs.evolve(
            record, logout_at=logout_at, duration_s=duration, timed_out=timed_out
        )
        self.state.open_ids.discard(session_id)

    def add_pending_logout(self, user_id: str, logout_at: datetime, origin: str) -> None:
        self.state.pending_logouts.append((user_id, logout_at, origin))

    def take_pending_logout(self, user_id: str, login_at: datetime, origin: str) -> datetime | None:
        matches = [
            p
            for p in self.state.pending_logouts
            if p[0] == user_id and p[1] >= login_at and p[2] != origin
        ]
        if not matches:
            return None
        earliest = min(matches, key=lambda pending: pending[1])
        self.state.pending_logouts.remove(earliest)
        return earliest[1]

    def insert_events(self, events: list[EventRecord]) -> None:
        self.state.events.extend(events)

    def delete_events_before(self, cutoff: datetime) -> int:
        kept = [e for e in self.state.events if e.ts >= cutoff]
        deleted = len(self.state.events) - len(kept)
        self.state.events = kept
        return deleted

    def open_sessions_before(self, cutoff: datetime) -> list[OpenSession]:
        stale = (self.state.sessions[open_id] for open_id in self.state.open_ids)
        return [
            OpenSession(s.session_id, s.login_at, s.day, s.month)
            for s in stale
            if s.login_at < cutoff
        ]

    def delete_pending_logouts_before(self, cutoff: datetime) -> None:
        self.state.pending_logouts = [p for p in self.state.pending_logouts if p[1] >= cutoff]

    def delete_batches_before(self, cutoff: datetime) -> None:
        self.state.batches = {k: at for k, at in self.state.batches.items() if at >= cutoff}


class MemoryStore(Store):
    """Everything in dicts, guarded by one lock. Nothing survives the process."""

    schemes = ("memory",)

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._state = _State()

    @classmethod
    def from_url(cls, url: str, **options: Any) -> MemoryStore:
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
            return len(self._state.open_ids)

    def get_sessions(self, user_id: str) -> list[SessionRecord]:
        with self._lock:
            found = [s for s in self._state.sessions.values() if s.user_id == user_id]
        return sorted(found, key=lambda s: s.login_at)

    def get_events(self, user_id: str | None = None, limit: int = 1000) -> list[EventRecord]:
        with self._lock:
            found = [e for e in self._state.events if user_id is None or e.user_id == user_id]
        return found[-limit:]
