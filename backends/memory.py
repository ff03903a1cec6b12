"""``memory://``: an in-process store for unit tests and demos.

Thread-safe: one lock is held for a whole transaction. Atomic as every store must be
(``Store.transaction`` promises a rollback): each write first records how to undo
itself, and a transaction that raises replays that log backwards. An undo log rather
than a staged copy, so a batch costs what it writes, not the size of the store.
"""

from __future__ import annotations

import bisect
import functools
import threading
from collections.abc import Callable, Iterator, Mapping, MutableMapping, Sequence
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
)
from gso_analytics.pacing import CHECK_EVERY, paced, paced_slices
from gso_analytics.store import Store, Transaction, total_increments


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
    logins_by_user: dict[str, list[tuple[Any, str]]] = attrs.field(factory=dict)
    activity: dict[str, list[ActivityRun]] = attrs.field(factory=dict)  # user -> runs
    logouts_by_user: dict[str, list[tuple[Any, str]]] = attrs.field(factory=dict)
    open_ids: set[str] = attrs.field(factory=set)
    events: list[EventRow] = attrs.field(factory=list)  # as flushed: readers build records
    meta: dict[str, str] = attrs.field(factory=dict)  # e.g. "erasureSecret" -> the secret
    tombstones: dict[str, tuple[str, datetime]] = attrs.field(factory=dict)  # hash -> token


_MISSING = object()


class _MemoryTransaction(Transaction):
    def __init__(self, state: _State) -> None:
        self.state = state
        self._undo: list[Callable[[], None]] = []

    def rollback(self) -> None:
        """Undo every write of this transaction, newest first."""
        while self._undo:
            self._undo.pop()()

    def _keep(self, mapping: MutableMapping[Any, Any], key: Any) -> None:
        """Record how to restore ``mapping[key]`` (or its absence) before a write."""
        old = mapping.get(key, _MISSING)
        if old is _MISSING:
            self._undo.append(lambda: mapping.pop(key, None))
        else:
            self._undo.append(lambda: mapping.__setitem__(key, old))

    def _replace(self, name: str, value: Any) -> None:
        """Swap a whole container of the state (deletes build a new one)."""
        old = getattr(self.state, name)
        self._undo.append(lambda: setattr(self.state, name, old))
        setattr(self.state, name, value)

    def claim_batch(self, batch_id: str, at: datetime) -> bool:
        if batch_id in self.state.batches:
            return False
        self._keep(self.state.batches, batch_id)
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
        self._keep_first(self.state.new_users, days)

    def _keep_first(self, facts: dict[str, str], first_days: dict[str, str]) -> None:
        for user, day in paced(first_days.items(), CHECK_EVERY):
            if user not in facts or day < facts[user]:
                self._keep(facts, user)
                facts[user] = day

    def add_first_seen(self, first_days: dict[str, str]) -> None:
        self._keep_first(self.state.first_seen, first_days)

    def add_first_payments(self, first_days: dict[str, str]) -> None:
        self._keep_first(self.state.first_payments, first_days)

    def add_user_revenue(self, revenue: dict[str, dict[str, Number]]) -> None:
        records = self.state.user_revenue
        for day, payers in revenue.items():
            for user, cents in payers.items():
                self._keep(records, (day, user))
                records[day, user] = min(records.get((day, user), 0) + cents, MAX_COUNTER)

    def _increment(self, figures: dict[str, Any], key: str, increments: Mapping[str, Any]) -> None:
        self._keep(figures, key)
        counters = dict(figures.get(key, {}))  # a new dict: the old one is the undo
        add_capped(counters, increments)
        figures[key] = counters

    def _add_totals(self, increments: Mapping[str, Number]) -> None:
        totals = self.state.totals
        adding = total_increments(increments)
        for field in adding:
            self._keep(totals, field)
        self.saturated += add_capped(totals, adding)

    def increment_daily(self, day: str, month: str, increments: dict[str, Number]) -> None:
        self._keep(self.state.months_of_day, day)
        self.state.months_of_day[day] = month
        self._increment(self.state.daily, day, increments)
        self._add_totals(increments)

    def increment_monthly(self, month: str, increments: dict[str, int]) -> None:
        self._increment(self.state.monthly, month, increments)
        self._add_totals(increments)

    def sessions_since(self, users: set[str], since_ms: int) -> list[StoredSession]:
        state = self.state
        found: list[StoredSession] = []
        for user in paced(users, CHECK_EVERY):
            starts = state.logins_by_user.get(user, [])
            # Sessions do not overlap: those ending at or after since_ms are the ones
            # starting at or after it, and perhaps the one before.
            first = bisect.bisect_left(starts, since_ms, key=_time_of)
            if first and _last_of(state.sessions[starts[first - 1][1]]) >= since_ms:
                first -= 1
            found += [state.sessions[sid] for _, sid in starts[first:]]
            found += [state.sessions[sid] for _, sid in starts[:first] if sid in state.open_ids]
        return found

    def logouts_since(self, users: set[str], since_ms: int) -> list[Logout]:
        state = self.state
        found: list[Logout] = []
        for user in paced(users, CHECK_EVERY):
            logouts = state.logouts_by_user.get(user, [])
            first = bisect.bisect_left(logouts, since_ms, key=_time_of)
            found += [state.logouts[lid] for _, lid in logouts[first:]]
        return found

    def activity_runs(self, user_id: str, first_ms: int, last_ms: int) -> list[ActivityRun]:
        runs = self.state.activity.get(user_id, [])
        return [r for r in runs if r.first_ms <= last_ms and r.last_ms >= first_ms]

    def insert_activity(self, runs: list[ActivityRun]) -> None:
        for run in paced(runs, CHECK_EVERY):  # every player of a batch: paced
            self._keep(self.state.activity, run.user_id)
            self.state.activity[run.user_id] = [*self.state.activity.get(run.user_id, []), run]

    def delete_activity_before(self, cutoff_ms: int, limit: int) -> int:
        kept: dict[str, list[ActivityRun]] = {}
        deleted = 0
        for user, runs in self.state.activity.items():
            mine = []
            for run in runs:
                if run.last_ms < cutoff_ms and deleted < limit:
                    deleted += 1
                else:
                    mine.append(run)
            if mine:
                kept[user] = mine
        if deleted:
            self._replace("activity", kept)
        return deleted

    def delete_sessions(self, ids: list[str]) -> None:
        state = self.state
        for sid in ids:
            session = state.sessions[sid]
            self._keep(state.sessions, sid)
            del state.sessions[sid]
            starts = state.logins_by_user[session.login.user_id]
            item = (session.login.key, sid)
            starts.remove(item)
            self._undo.append(functools.partial(bisect.insort, starts, item))
            if sid in state.open_ids:
                self._toggle_open(sid)

    def _insort(self, by_user: dict[str, list[tuple[Any, str]]], user: str, item: Any) -> None:
        marks = by_user.setdefault(user, [])
        bisect.insort(marks, item)
        self._undo.append(lambda: marks.remove(item))

    def save_sessions(self, sessions: list[StoredSession]) -> None:
        state = self.state
        for session in paced(sessions, CHECK_EVERY):  # every player of a batch: paced
            login = session.login
            if login.id not in state.sessions:
                self._insort(state.logins_by_user, login.user_id, (login.key, login.id))
            self._keep(state.sessions, login.id)
            state.sessions[login.id] = session
            if session.end.open != (login.id in state.open_ids):
                self._toggle_open(login.id)

    def _toggle_open(self, session_id: str) -> None:
        opened = self.state.open_ids
        opened.symmetric_difference_update({session_id})
        self._undo.append(lambda: opened.symmetric_difference_update({session_id}))

    def insert_logouts(self, logouts: list[Logout]) -> None:
        for logout in paced(logouts, CHECK_EVERY):
            self._insort(self.state.logouts_by_user, logout.user_id, (logout.key, logout.id))
            self._keep(self.state.logouts, logout.id)
            self.state.logouts[logout.id] = logout

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
        return [s for s in found if _last_of(s) < cutoff_ms][:limit]

    def delete_logouts_before(self, cutoff_ms: int, limit: int) -> int:
        logouts = self.state.logouts
        gone = {k for k, m in logouts.items() if m.at_ms < cutoff_ms}
        gone = set(sorted(gone)[:limit]) if len(gone) > limit else gone
        kept = {k: m for k, m in logouts.items() if k not in gone}
        by_user: dict[str, list[tuple[Any, str]]] = {}
        for logout in sorted(kept.values(), key=lambda m: m.key):
            by_user.setdefault(logout.user_id, []).append((logout.key, logout.id))
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
            self._keep(self.state.meta, key)
            self.state.meta[key] = candidate
        return self.state.meta[key]

    def meta_value(self, key: str) -> str | None:
        return self.state.meta.get(key)

    def set_meta(self, key: str, value: str) -> None:
        self._keep(self.state.meta, key)
        self.state.meta[key] = value

    def tombstones(self, hashes: Mapping[str, str]) -> dict[str, str]:
        stones = self.state.tombstones
        return {user: stones[h][0] for user, h in hashes.items() if h in stones}

    def add_tombstone(self, key_hash: str, token: str, at: datetime) -> str | None:
        if key_hash in self.state.tombstones:
            return self.state.tombstones[key_hash][0]
        self._keep(self.state.tombstones, key_hash)
        self.state.tombstones[key_hash] = (token, at)
        return None

    def _rename_records(self, name: str, user: str, token: str) -> int:
        records: set[tuple[str, str]] = getattr(self.state, name)
        mine = {(key, u) for key, u in records if u == user}
        if mine:
            self._replace(name, (records - mine) | {(key, token) for key, _ in mine})
        return len(mine)

    def _rename_fact(self, facts: dict[str, str], user: str, token: str) -> int:
        if user not in facts:
            return 0
        self._keep(facts, user)
        self._keep(facts, token)
        day = facts.pop(user)
        facts[token] = min(day, facts.get(token, day))
        return 1

    def rename_user(self, user_id: str, token: str) -> dict[str, int]:
        state = self.state
        counts = {
            name: self._rename_records(name, user_id, token)
            for name in ("day_users", "month_users")
        }
        counts["new_users"] = self._rename_fact(state.new_users, user_id, token)
        counts["first_seen"] = self._rename_fact(state.first_seen, user_id, token)
        counts["first_payments"] = self._rename_fact(state.first_payments, user_id, token)
        revenue = {k: c for k, c in state.user_revenue.items() if k[1] == user_id}
        for (day, user), cents in revenue.items():
            self._keep(state.user_revenue, (day, user))
            self._keep(state.user_revenue, (day, token))
            del state.user_revenue[day, user]
            merged = state.user_revenue.get((day, token), 0) + cents
            state.user_revenue[day, token] = min(merged, MAX_COUNTER)
        counts["user_revenue"] = len(revenue)
        logins = state.logins_by_user.get(user_id, [])
        for _, sid in logins:
            session = state.sessions[sid]
            self._keep(state.sessions, sid)
            login = attrs.evolve(session.login, user_id=token, username=None)
            state.sessions[sid] = attrs.evolve(session, login=login)
        counts["sessions"] = len(logins)
        logouts = state.logouts_by_user.get(user_id, [])
        for _, lid in logouts:
            self._keep(state.logouts, lid)
            state.logouts[lid] = attrs.evolve(state.logouts[lid], user_id=token)
        counts["logouts"] = len(logouts)
        runs = state.activity.get(user_id, [])
        if runs:
            self._keep(state.activity, user_id)
            self._keep(state.activity, token)
            renamed = [attrs.evolve(run, user_id=token) for run in state.activity.pop(user_id)]
            state.activity[token] = [*state.activity.get(token, []), *renamed]
        counts["activity"] = len(runs)
        for by_user in (state.logins_by_user, state.logouts_by_user):
            if user_id in by_user:
                self._keep(by_user, user_id)
                self._keep(by_user, token)
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


def _time_of(mark: tuple[Any, str]) -> int:
    return int(mark[0][0])  # (key, id), key = (at_ms, origin, seq)


def _last_of(session: StoredSession) -> int:
    return session.end.last


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
        None if end.last_ms is None else from_ms(end.last_ms),
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
            return sum(_last_of(state.sessions[sid]) >= since_ms for sid in state.open_ids)

    def get_sessions(self, user_id: str) -> list[SessionRecord]:
        with self._lock:
            logins = self._state.logins_by_user.get(user_id, [])
            found = [self._state.sessions[sid] for _, sid in logins]
        return [_record(s) for s in found]

    def get_logouts(self, user_id: str) -> list[Logout]:
        with self._lock:
            marks = self._state.logouts_by_user.get(user_id, [])
            return [self._state.logouts[mark_id] for _, mark_id in marks]

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
            return [
                _record(s) for s in self._state.sessions.values() if start <= s.login.day <= end
            ]

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
