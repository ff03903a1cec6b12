"""``memory://``: an in-process store for unit tests and demos.

Thread-safe: one lock is held for a whole transaction. Atomic as every store must be
(``Store.transaction`` promises a rollback): each write first records how to undo
itself, and a transaction that raises replays that log backwards. An undo log rather
than a staged copy, so a batch costs what it writes, not the size of the store.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import attrs

from gso_analytics import forking
from gso_analytics.clock import from_ms, to_ms
from gso_analytics.counters import MAX_COUNTER, add_capped
from gso_analytics.erasure import UserRecords, read_user_records
from gso_analytics.errors import ConfigurationError
from gso_analytics.model import (
    AT,
    DAY,
    ID,
    USER,
    USERNAME,
    ActivityRun,
    DailyStats,
    EventRecord,
    EventRow,
    Heartbeat,
    Logout,
    MonthStats,
    Number,
    SessionRecord,
    StoredSession,
    is_open,
    last_mark,
    mark_key,
)
from gso_analytics.pacing import CHECK_EVERY, paced, paced_slices, release
from gso_analytics.sessions import decode_logins, decode_marks, encode_logins, encode_marks
from gso_analytics.store import Store, Transaction, total_increments

#: A player's session or logout as their list keeps it, in order: its mark's key
#: (time, origin, seq) and its id. Records are flat tuples of scalars, which the garbage
#: collector stops tracking at its first look (a nested tuple may take a collection per
#: level, long enough to reach the old generation: see ``model.Login``).
_Placed = tuple[int, str, int, str]
#: An activity run as kept: ``(user_id, first_ms, last_ms, marks, logins)`` with the
#: marks and logins encoded as SQLite keeps them (flat, see ``_Placed``).
_Run = tuple[str, int, int, bytes, str | None]


@attrs.define
class _State:
    batches: dict[str, datetime] = attrs.field(factory=dict)
    daily: dict[str, dict[str, Number]] = attrs.field(factory=dict)
    months_of_day: dict[str, str] = attrs.field(factory=dict)
    monthly: dict[str, dict[str, int]] = attrs.field(factory=dict)
    totals: dict[str, Number] = attrs.field(factory=dict)  # field -> all-time sum
    heartbeats: dict[str, Heartbeat] = attrs.field(factory=dict)  # process -> record
    day_users: set[tuple[str, str]] = attrs.field(factory=set)
    month_users: set[tuple[str, str]] = attrs.field(factory=set)
    new_users: dict[str, str] = attrs.field(factory=dict)  # user -> registration day
    first_seen: dict[str, str] = attrs.field(factory=dict)  # user -> day
    first_payments: dict[str, str] = attrs.field(factory=dict)  # user -> day
    user_revenue: dict[tuple[str, str], Number] = attrs.field(factory=dict)  # (day, user)
    sessions: dict[str, StoredSession] = attrs.field(factory=dict)
    logouts: dict[str, Logout] = attrs.field(factory=dict)
    # Each player's sessions (by start) and logouts as (key, id), sorted: a batch reads
    # its players' recent ones by bisection, never every session of the store (nor of
    # the player).
    logins_by_user: dict[str, list[_Placed]] = attrs.field(factory=dict)
    activity: dict[str, tuple[_Run, ...]] = attrs.field(factory=dict)  # user -> runs
    logouts_by_user: dict[str, list[_Placed]] = attrs.field(factory=dict)
    open_ids: set[str] = attrs.field(factory=set)
    events: list[EventRow] = attrs.field(factory=list)  # as flushed: readers build records
    meta: dict[str, str] = attrs.field(factory=dict)  # e.g. "erasureSecret" -> the secret
    tombstones: dict[str, tuple[str, datetime]] = attrs.field(factory=dict)  # hash -> token


_MISSING = object()

#: How a per-record undo entry ``(how, name, key, value)`` restores the state's
#: container ``name``: ``value`` back at ``key`` (or no ``key``, for _MISSING), ``value``
#: out of or back into the sorted list at ``key``, ``key`` in or out of the set.
_SET, _UNSORT, _SORT, _TOGGLE = range(4)
#: A per-record entry names its container instead of holding it, and holds no closure:
#: a tuple of strings and stored records (tuples, see ``model.Login``) that the garbage
#: collector stops tracking, where a closure is three or four tracked objects. A flush
#: writes a few per player, which live until its commit: as closures they reached the
#: old generation and made a full collection due every few flushes.
_Entry = tuple[int, str, Any, Any] | Callable[[], None]


class _MemoryTransaction(Transaction):
    session_part = 256  # each write_sessions is a few dict writes (see Transaction's)

    def __init__(self, state: _State) -> None:
        self.state = state
        self._undo: list[_Entry] = []

    def rollback(self) -> None:
        """Undo every write of this transaction, newest first."""
        state = self.state
        while self._undo:
            entry = self._undo.pop()
            if callable(entry):  # a whole container's change (see _replace, _add)
                entry()
                continue
            how, name, key, value = entry
            container = getattr(state, name)
            if how == _SET:
                if value is _MISSING:
                    container.pop(key, None)
                else:
                    container[key] = value
            elif how == _UNSORT:
                container[key].remove(value)
            elif how == _SORT:
                bisect.insort(container[key], value)
            else:
                container.symmetric_difference_update({key})

    def _keep(self, name: str, key: Any) -> None:
        """Record how to restore ``state.<name>[key]`` (or its absence) before a write."""
        self._undo.append((_SET, name, key, getattr(self.state, name).get(key, _MISSING)))

    def _replace(self, name: str, value: Any) -> None:
        """Swap a whole container of the state (deletes build a new one)."""
        old = getattr(self.state, name)
        self._undo.append(lambda: setattr(self.state, name, old))
        setattr(self.state, name, value)

    def claim_batch(self, batch_id: str, at: datetime) -> bool:
        if batch_id in self.state.batches:
            return False
        self._keep("batches", batch_id)
        self.state.batches[batch_id] = at
        return True

    def _add(self, records: set[tuple[str, str]], key: str, users: set[str]) -> int:
        new = {(key, user) for user in users} - records
        records.update(new)
        self._undo.append(lambda: records.difference_update(new))
        return len(new)

    def add_day_users(self, day: str, users: set[str]) -> int:
        return self._add(self.state.day_users, day, users)

    def add_month_users(self, month: str, users: set[str]) -> int:
        return self._add(self.state.month_users, month, users)

    def registration_days(self, users: set[str]) -> dict[str, str]:
        days = self.state.new_users
        return {user: days[user] for user in users if user in days}

    def set_registration_days(self, days: dict[str, str]) -> None:
        self._keep_first("new_users", days)

    def _keep_first(self, name: str, first_days: dict[str, str]) -> None:
        facts: dict[str, str] = getattr(self.state, name)
        for user, day in paced(first_days.items(), CHECK_EVERY):
            if user not in facts or day < facts[user]:
                self._keep(name, user)
                facts[user] = day

    def add_first_seen(self, first_days: dict[str, str]) -> None:
        self._keep_first("first_seen", first_days)

    def add_first_payments(self, first_days: dict[str, str]) -> None:
        self._keep_first("first_payments", first_days)

    def add_user_revenue(self, revenue: dict[str, dict[str, Number]]) -> None:
        records = self.state.user_revenue
        for day, payers in revenue.items():
            for user, cents in payers.items():
                self._keep("user_revenue", (day, user))
                records[day, user] = min(records.get((day, user), 0) + cents, MAX_COUNTER)

    def _increment(self, name: str, key: str, increments: Mapping[str, Any]) -> None:
        figures: dict[str, Any] = getattr(self.state, name)
        self._keep(name, key)
        counters = dict(figures.get(key, {}))  # a new dict: the old one is the undo
        add_capped(counters, increments)
        figures[key] = counters

    def _add_totals(self, increments: Mapping[str, Number]) -> None:
        totals = self.state.totals
        adding = total_increments(increments)
        for field in adding:
            self._keep("totals", field)
        self.saturated += add_capped(totals, adding)

    def increment_daily(self, day: str, month: str, increments: dict[str, Number]) -> None:
        self._keep("months_of_day", day)
        self.state.months_of_day[day] = month
        self._increment("daily", day, increments)
        self._add_totals(increments)

    def increment_monthly(self, month: str, increments: dict[str, int]) -> None:
        self._increment("monthly", month, increments)
        self._add_totals(increments)

    def sessions_since(self, users: set[str], since_ms: int) -> list[StoredSession]:
        state = self.state
        found: list[StoredSession] = []
        for user in paced(users, CHECK_EVERY):
            starts = state.logins_by_user.get(user, [])
            # Sessions do not overlap: those ending at or after since_ms are the ones
            # starting at or after it, and perhaps the one before.
            first = bisect.bisect_left(starts, since_ms, key=_time_of)
            if first and last_mark(state.sessions[starts[first - 1][-1]]) >= since_ms:
                first -= 1
            found += [state.sessions[sid] for *_, sid in starts[first:]]
            found += [state.sessions[sid] for *_, sid in starts[:first] if sid in state.open_ids]
        return found

    def logouts_since(self, users: set[str], since_ms: int) -> list[Logout]:
        state = self.state
        found: list[Logout] = []
        for user in paced(users, CHECK_EVERY):
            logouts = state.logouts_by_user.get(user, [])
            first = bisect.bisect_left(logouts, since_ms, key=_time_of)
            found += [state.logouts[lid] for *_, lid in logouts[first:]]
        return found

    def activity_runs(self, user_id: str, first_ms: int, last_ms: int) -> list[ActivityRun]:
        runs = self.state.activity.get(user_id, ())
        return [
            (user, first, last, decode_marks(marks), decode_logins(logins))
            for user, first, last, marks, logins in runs
            if first <= last_ms and last >= first_ms
        ]

    def insert_activity(self, runs: list[ActivityRun]) -> None:
        activity = self.state.activity
        for user, first, last, marks, logins in paced(runs, CHECK_EVERY):  # every player
            self._keep("activity", user)
            run = (user, first, last, encode_marks(marks), encode_logins(logins))
            activity[user] = (*activity.get(user, ()), run)

    def delete_activity_before(self, cutoff_ms: int, limit: int) -> int:
        kept: dict[str, tuple[_Run, ...]] = {}
        deleted = 0
        for user, runs in self.state.activity.items():
            mine = []
            for run in runs:
                if run[2] < cutoff_ms and deleted < limit:  # its last mark
                    deleted += 1
                else:
                    mine.append(run)
            if mine:
                kept[user] = tuple(mine)
        if deleted:
            self._replace("activity", kept)
        return deleted

    def delete_sessions(self, ids: list[str]) -> None:
        state = self.state
        for sid in ids:
            session = state.sessions[sid]
            self._keep("sessions", sid)
            del state.sessions[sid]
            starts = state.logins_by_user[session[USER]]
            item = (*mark_key(session), sid)
            starts.remove(item)
            self._undo.append((_SORT, "logins_by_user", session[USER], item))
            if sid in state.open_ids:
                self._toggle_open(sid)

    def _insort(self, name: str, user: str, item: _Placed) -> None:
        by_user: dict[str, list[_Placed]] = getattr(self.state, name)
        bisect.insort(by_user.setdefault(user, []), item)
        self._undo.append((_UNSORT, name, user, item))

    def save_sessions(self, sessions: list[StoredSession]) -> None:
        state = self.state
        for session in paced(sessions, CHECK_EVERY):  # every player of a batch: paced
            sid = session[ID]
            if sid not in state.sessions:
                self._insort("logins_by_user", session[USER], (*mark_key(session), sid))
            self._keep("sessions", sid)
            state.sessions[sid] = session
            if is_open(session) != (sid in state.open_ids):
                self._toggle_open(sid)

    def _toggle_open(self, session_id: str) -> None:
        self.state.open_ids.symmetric_difference_update({session_id})
        self._undo.append((_TOGGLE, "open_ids", session_id, None))

    def insert_logouts(self, logouts: list[Logout]) -> None:
        for logout in paced(logouts, CHECK_EVERY):
            self._insort("logouts_by_user", logout[USER], (*mark_key(logout), logout[ID]))
            self._keep("logouts", logout[ID])
            self.state.logouts[logout[ID]] = logout

    def insert_events(self, events: list[EventRow]) -> None:
        stream = self.state.events
        size = len(stream)
        self._undo.append(lambda: stream.__delitem__(slice(size, None)))
        for part in paced_slices(events, 4 * CHECK_EVERY):  # a minute's: paced
            stream.extend(part)

    def delete_events_until(self, last: datetime, limit: int) -> int:
        last_ms = to_ms(last)
        kept: list[EventRow] = []
        deleted = 0
        for event in paced(self.state.events, CHECK_EVERY):  # the whole stream: paced
            if event[0] <= last_ms and deleted < limit:
                deleted += 1
            else:
                kept.append(event)
        if deleted:
            self._replace("events", kept)
        return deleted

    def open_sessions_before(self, cutoff_ms: int, limit: int) -> list[StoredSession]:
        found = (self.state.sessions[sid] for sid in self.state.open_ids)
        return [s for s in found if last_mark(s) < cutoff_ms][:limit]

    def delete_logouts_before(self, cutoff_ms: int, limit: int) -> int:
        logouts = self.state.logouts
        gone = {k for k, m in logouts.items() if m[AT] < cutoff_ms}
        gone = set(sorted(gone)[:limit]) if len(gone) > limit else gone
        kept = {k: m for k, m in logouts.items() if k not in gone}
        by_user: dict[str, list[_Placed]] = {}
        for logout in sorted(kept.values(), key=mark_key):
            by_user.setdefault(logout[USER], []).append((*mark_key(logout), logout[ID]))
        self._replace("logouts", kept)
        self._replace("logouts_by_user", by_user)
        return len(gone)

    def delete_batches_before(self, cutoff: datetime, limit: int) -> int:
        batches = self.state.batches
        gone = set(sorted(k for k, at in batches.items() if at < cutoff)[:limit])
        self._replace("batches", {k: at for k, at in batches.items() if k not in gone})
        return len(gone)

    # -- players' data rights ---------------------------------------------------------

    def claim_meta(self, key: str, candidate: str) -> str:
        if key not in self.state.meta:
            self._keep("meta", key)
            self.state.meta[key] = candidate
        return self.state.meta[key]

    def meta_value(self, key: str) -> str | None:
        return self.state.meta.get(key)

    def set_meta(self, key: str, value: str) -> None:
        self._keep("meta", key)
        self.state.meta[key] = value

    def tombstones(self, hashes: Mapping[str, str]) -> dict[str, str]:
        stones = self.state.tombstones
        return {user: stones[h][0] for user, h in hashes.items() if h in stones}

    def add_tombstone(self, key_hash: str, token: str, at: datetime) -> str | None:
        if key_hash in self.state.tombstones:
            return self.state.tombstones[key_hash][0]
        self._keep("tombstones", key_hash)
        self.state.tombstones[key_hash] = (token, at)
        return None

    def _rename_records(self, name: str, user: str, token: str) -> int:
        records: set[tuple[str, str]] = getattr(self.state, name)
        mine = {(key, u) for key, u in records if u == user}
        if mine:
            self._replace(name, (records - mine) | {(key, token) for key, _ in mine})
        return len(mine)

    def _rename_fact(self, name: str, user: str, token: str) -> int:
        facts: dict[str, str] = getattr(self.state, name)
        if user not in facts:
            return 0
        self._keep(name, user)
        self._keep(name, token)
        day = facts.pop(user)
        facts[token] = min(day, facts.get(token, day))
        return 1

    def rename_user(self, user_id: str, token: str) -> dict[str, int]:
        state = self.state
        counts = {
            name: self._rename_records(name, user_id, token)
            for name in ("day_users", "month_users")
        }
        counts["new_users"] = self._rename_fact("new_users", user_id, token)
        counts["first_seen"] = self._rename_fact("first_seen", user_id, token)
        counts["first_payments"] = self._rename_fact("first_payments", user_id, token)
        revenue = {k: c for k, c in state.user_revenue.items() if k[1] == user_id}
        for (day, user), cents in revenue.items():
            self._keep("user_revenue", (day, user))
            self._keep("user_revenue", (day, token))
            del state.user_revenue[day, user]
            merged = state.user_revenue.get((day, token), 0) + cents
            state.user_revenue[day, token] = min(merged, MAX_COUNTER)
        counts["user_revenue"] = len(revenue)
        logins = state.logins_by_user.get(user_id, [])
        for *_, sid in logins:
            session = state.sessions[sid]
            self._keep("sessions", sid)
            state.sessions[sid] = (sid, token, *session[AT:USERNAME], None, *session[DAY:])
        counts["sessions"] = len(logins)
        logouts = state.logouts_by_user.get(user_id, [])
        for *_, lid in logouts:
            self._keep("logouts", lid)
            state.logouts[lid] = (lid, token, *state.logouts[lid][AT:])
        counts["logouts"] = len(logouts)
        runs = state.activity.get(user_id, ())
        if runs:
            self._keep("activity", user_id)
            self._keep("activity", token)
            renamed = [(token, *run[1:]) for run in state.activity.pop(user_id)]
            state.activity[token] = (*state.activity.get(token, ()), *renamed)
        counts["activity"] = len(runs)
        for name in ("logins_by_user", "logouts_by_user"):
            by_user = getattr(state, name)
            if user_id in by_user:
                self._keep(name, user_id)
                self._keep(name, token)
                marks = sorted(by_user.pop(user_id) + by_user.get(token, []))
                by_user[token] = marks
        return counts

    def delete_user_events(self, user_id: str) -> int:
        kept = [e for e in self.state.events if e[1] != user_id]
        deleted = len(self.state.events) - len(kept)
        if deleted:
            self._replace("events", kept)
        return deleted

    def events_after(
        self, after: Any, needles: Sequence[str], limit: int
    ) -> list[tuple[Any, EventRow]]:
        start = 0 if after is None else after + 1  # positions in the stream
        return list(enumerate(self.state.events[start : start + limit], start))

    def set_event_data(self, changes: Mapping[Any, str]) -> None:
        stream = list(self.state.events)
        for position, data in changes.items():
            ts, user, name, _, day = stream[position]
            stream[position] = (ts, user, name, data, day)
        self._replace("events", stream)


def _time_of(mark: _Placed) -> int:
    return mark[0]


def _record(session: StoredSession) -> SessionRecord:
    sid, user, at, _, _, name, day, month, logout, duration, timed_out, last = session
    return SessionRecord(
        sid,
        user,
        name,
        from_ms(at),
        None if logout is None else from_ms(logout),
        duration,
        day,
        month,
        timed_out,
        None if last is None else from_ms(last),
    )


class MemoryStore(Store):
    """Everything in dicts, guarded by one lock. Nothing survives the process."""

    schemes = ("memory",)
    #: How long a fork waits for a transaction of another thread (see :mod:`.forking`).
    FORK_WAIT_S = 30.0

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._state = _State()
        forking.register(self)

    def fork_locks(self) -> list[threading.RLock]:
        return [self._lock]

    def fork_wait(self) -> float:
        return self.FORK_WAIT_S

    def after_fork_in_child(self, new_locks: bool) -> None:
        if new_locks:
            self._lock = threading.RLock()

    @classmethod
    def from_url(cls, url: str, **options: Any) -> MemoryStore:
        rest = url.split("://", 1)[1]
        if rest:  # "memory://shared" would suggest a store others can open: there is none
            raise ConfigurationError(
                f"memory:// takes nothing after the scheme, got {url!r}:"
                " each memory store is private to the object that opened it"
            )
        options.pop("existing", None)  # a new store is empty, as an existing one would be
        return cls(**options)

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        with self._lock:
            tx = _MemoryTransaction(self._state)
            try:
                yield tx
            except BaseException:
                tx.rollback()
                raise
            # Committed: thousands of undo entries, freed a slice at a time (all at
            # once, a flush's held the GIL for about half a millisecond).
            release(tx._undo)

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

    def get_totals(self) -> dict[str, Number]:
        with self._lock:
            return dict(self._state.totals)

    def save_heartbeat(self, heartbeat: Heartbeat) -> None:
        with self._lock:
            self._state.heartbeats[heartbeat.process] = heartbeat

    def live_heartbeats(self, now: datetime) -> list[Heartbeat]:
        with self._lock:
            beats = self._state.heartbeats
            return [beats[p] for p in sorted(beats) if beats[p].expires_at > now]

    def forget_heartbeats(self, expired_before: datetime) -> None:
        with self._lock:
            beats = self._state.heartbeats
            for process in [p for p, beat in beats.items() if beat.expires_at < expired_before]:
                del beats[process]

    def withdraw_heartbeat(self, process: str) -> None:
        with self._lock:
            self._state.heartbeats.pop(process, None)

    def count_active_sessions(self, since_ms: int) -> int:
        with self._lock:
            state = self._state
            return sum(last_mark(state.sessions[sid]) >= since_ms for sid in state.open_ids)

    def get_sessions(self, user_id: str) -> list[SessionRecord]:
        with self._lock:
            logins = self._state.logins_by_user.get(user_id, [])
            found = [self._state.sessions[sid] for *_, sid in logins]
        return [_record(s) for s in found]

    def get_logouts(self, user_id: str) -> list[Logout]:
        with self._lock:
            marks = self._state.logouts_by_user.get(user_id, [])
            return [self._state.logouts[mark_id] for *_, mark_id in marks]

    def get_events(self, user_id: str | None = None, limit: int = 1000) -> list[EventRecord]:
        with self._lock:
            found = [e for e in self._state.events if user_id is None or e[1] == user_id]
        return [EventRecord(*row) for row in found[-limit:]]

    def user_records(self, user_id: str) -> UserRecords:
        with self._lock:
            state = self._state

            def keys(name: str, _column: str) -> list[str]:
                records: set[tuple[str, str]] = getattr(state, name)
                return sorted(key for key, user in records if user == user_id)

            def first(name: str) -> str | None:
                days: dict[str, str] = getattr(state, name)
                return days.get(user_id)

            revenue = {day: c for (day, user), c in state.user_revenue.items() if user == user_id}
            return read_user_records(keys, first, revenue)

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
            return [_record(s) for s in self._state.sessions.values() if start <= s[DAY] <= end]

    def events_between(
        self, start: str | None, end: str | None, names: list[str]
    ) -> list[EventRecord]:
        wanted = set(names)
        with self._lock:
            found = [
                EventRecord(*row)
                for row in self._state.events
                if row[2] in wanted
                and (start is None or row[4] >= start)
                and (end is None or row[4] <= end)
            ]
        return sorted(found, key=lambda e: e.ts_ms)  # stable: flush order among equal times
