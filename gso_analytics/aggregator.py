"""The in-process buffer: dict increments and an event list under one lock, no I/O.

A caller thread's whole cost is here: one clock read, a cached day lookup, a few dict
updates under a lock. :meth:`Aggregator.swap` hands everything buffered to the flush
thread as one :class:`~gso_analytics.model.FlushBatch` and starts an empty one.
"""

from __future__ import annotations

import threading
from datetime import datetime

from .clock import Clock, DayKeys, to_utc_ms
from .model import EventRecord, FlushBatch, Number, SessionClose, SessionOpen, new_id


class BufferFull(Exception):
    """The call would exceed ``max_buffered_events``; it was not buffered."""


class Aggregator:
    """Buffers calls until the next flush.

    ``backlog`` is set by the flusher to the number of calls waiting in failed
    batches, so the bound covers everything held in memory.
    """

    def __init__(self, clock: Clock, day_keys: DayKeys, max_buffered: int) -> None:
        self.clock = clock
        self.day_keys = day_keys
        self.max_buffered = max_buffered
        self.backlog = 0
        self.reset()

    def reset(self) -> None:
        """Start empty with a fresh lock (also in a forked child, where the old lock
        may have been held by a thread that does not exist there)."""
        self._lock = threading.Lock()
        self.origin = new_id()
        self._batch = FlushBatch()
        self._size = 0
        self._open: dict[str, tuple[str, datetime]] = {}  # user -> (session id, login)

    @property
    def size(self) -> int:
        return self._size

    def _now(self) -> tuple[datetime, str, str]:
        now = to_utc_ms(self.clock())
        day, month = self.day_keys(now)
        return now, day, month

    def _admit(self, calls: int) -> None:
        if self._size + self.backlog + calls > self.max_buffered:
            raise BufferFull
        self._size += calls

    def _count(self, day: str, month: str, field: str, amount: Number) -> None:
        counters = self._batch.counters.get(day)
        if counters is None:
            counters = self._batch.counters[day] = {}
            self._batch.months[day] = month
        counters[field] = counters.get(field, 0) + amount

    def event(self, event: str, user_id: str, data: str, field: str | None, amount: Number) -> None:
        now, day, month = self._now()
        record = EventRecord(now, user_id, event, data, day)
        with self._lock:
            self._admit(1)
            if field is not None:
                self._count(day, month, field, amount)
            self._batch.events.append(record)

    def login(self, user_id: str, username: str | None) -> None:
        now, day, month = self._now()
        session_id = new_id()
        with self._lock:
            batch = self._batch
            previous = self._open.get(user_id)
            self._admit(2 if previous else 1)
            if previous is not None:
                # A second login without a logout ends the first session here.
                batch.session_ops.append(
                    SessionClose(user_id, now, previous[0], self.origin, relogin=True)
                )
            batch.session_ops.append(
                SessionOpen(session_id, user_id, username, now, day, month, self.origin)
            )
            self._open[user_id] = (session_id, now)
            self._count(day, month, "sessionCount", 1)
            batch.day_users.setdefault(day, set()).add(user_id)
            batch.month_users.setdefault(month, set()).add(user_id)

    def logout(self, user_id: str) -> None:
        now = to_utc_ms(self.clock())
        with self._lock:
            self._admit(1)
            previous = self._open.pop(user_id, None)
            session_id = previous[0] if previous else None
            self._batch.session_ops.append(SessionClose(user_id, now, session_id, self.origin))

    def open_sessions_here(self) -> int:
        """Sessions this process saw open (the seed's per-process ``activeSessions``)."""
        return len(self._open)

    def swap(self) -> FlushBatch:
        """Take everything buffered as one batch, stamped with the clock."""
        now = to_utc_ms(self.clock())
        with self._lock:
            batch, self._batch = self._batch, FlushBatch()
            self._size = 0
        batch.created_at = now
        return batch
