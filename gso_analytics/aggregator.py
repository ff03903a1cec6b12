"""The in-process buffer: what a caller thread pays for, and what the flush thread does.

A caller thread validates its arguments (see :mod:`.validation`), reads the clock as
integer milliseconds and appends one tuple to a ``deque``: ``deque.append`` is atomic,
so the request path takes no lock at all and never waits for the flush thread.
The tuple holds only strings and numbers, never a dict: a flat ``data``'s keys and
values sit in the call's tuple itself, one after the other, rather than in tuples of
their own (see :meth:`Aggregator.data_event`). The garbage collector stops tracking a
tuple once it sees everything in it untracked, so the first young collection untracks
the call: it never reaches the old generation, and it is one object to allocate. A minute of
buffered calls then costs the full collections nothing (a call holding a dict would
stay tracked, and be traversed by each, until flushed).

The flush thread drains the deque in call order and aggregates it (day keys, counter
increments, (day,user)/(month,user) records, login and logout marks, JSON encoding) into one
:class:`~gso_analytics.model.FlushBatch`. Moving that work off the request path is
what keeps ``track()`` near a microsecond; the result is the same as aggregating at
the call, because the calls are replayed in order with the timestamps they were
made at.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import defaultdict, deque
from collections.abc import Callable
from typing import Any

from .clock import Clock, DayKeys, from_ms, to_ms, tz_name
from .counters import NEW_USERS
from .model import FlushBatch, Number, new_id
from .pacing import CHECK_EVERY, Pacer, paced, release
from .validation import MAX_AMOUNT, FlatData, encode_flat

log = logging.getLogger("gso_analytics")

#: The event whose amount (``amountCents`` by its counter rule) is real-money revenue:
#: besides its daily counter it is kept per (day, user) for the KPIs.
PAYMENT_EVENT = "stripe.payment"
#: The most a batch adds to one counter of one day. Every amount is at most 2**53, but
#: 1,025 of them in one batch passed the stores' 64-bit integers (SQLite's bind raised
#: OverflowError) and took every honest player's calls of the batch down with them; at
#: 2**53 no store overflows within a batch and float sums stay exact to the unit.
MAX_BATCH_SUM = MAX_AMOUNT

# Kinds of buffered call: (kind, ns, user_id, ...), see Aggregator.event/login/logout.
# An event is (kind, ns, user_id, event, field, amount, ...): _EVENT then holds its
# data's JSON text (or None), FLAT_EVENT the keys and values of its flat data, inline
# (key, value, key, value, ...).
_EVENT, FLAT_EVENT, _LOGIN, _LOGOUT, _TOUCH = 0, 1, 2, 3, 4

#: ``active_on``: any mark makes a player active (and tracked calls are activity), or
#: only logins (the seed's definitions).
ACTIVE_ON = ("any", "login")


#: What a buffered call weighs in the byte bound (``max_buffered_bytes``) before its
#: data: its tuple, stamp, ids and a small flat ``data`` (measured with tracemalloc:
#: 200 bytes without data, 256 with ``{"amount": 50}``). Counted per call from the
#: number of calls, so ``track()`` pays nothing for it.
CALL_BYTES = 256
#: Flat ``data`` pairs a call carries within :data:`CALL_BYTES`; each one beyond
#: weighs :data:`PAIR_BYTES` (a pair and a string of up to 64 characters: 230 bytes
#: measured), so 16 long strings cannot pass as a small call.
FREE_PAIRS = 2
PAIR_BYTES = 232


def text_bytes(text: str) -> int:
    """About what a JSON text weighs: its length, 4 bytes a character when it is not
    ASCII (``str.isascii`` reads a flag, it does not scan)."""
    return len(text) if text.isascii() else 4 * len(text)


class BufferFull(Exception):
    """The call would exceed ``max_buffered_events`` or ``max_buffered_bytes``; it was
    not buffered."""


class Aggregator:
    """Buffers calls until the next flush.

    ``backlog`` counts calls taken out of the deque but not yet stored: those being
    aggregated by :meth:`swap`, and (set by the flusher) those in batches waiting to
    be applied, so the bound and ``stats()["buffered"]`` cover everything held in
    memory (give or take one call per thread racing past the check at once).

    The byte bound (``max_bytes``) costs the request path nothing for most calls:
    every call weighs :data:`CALL_BYTES`, counted from the number of calls, and only
    what weighs more (a JSON text, a flat ``data`` of many pairs) adds its extra to
    ``_extra``; the two bounds are folded into one number of calls, ``_limit``,
    computed again when an extra changes, so the check stays one comparison.
    """

    def __init__(
        self,
        clock: Clock | None,
        day_keys: DayKeys,
        max_buffered: int,
        idle_timeout_ms: int = 30 * 60 * 1000,
        active_on: str = "any",
        passive_events: frozenset[str] = frozenset(),
        max_bytes: int = 2**62,
    ) -> None:
        # The default clock reads integer milliseconds directly: no datetime on the
        # request path. An injected clock (tests, replays) is converted exactly.
        # Calls are stamped in nanoseconds: the default clock is then the C function
        # time.time_ns itself, with no Python frame or division on the request path.
        self.now_ns: Callable[[], int] = (
            time.time_ns if clock is None else (lambda: to_ms(clock()) * 1_000_000)
        )
        self.day_keys = day_keys
        self.max_buffered = max_buffered
        self.max_bytes = max_bytes
        self.idle_timeout_ms = idle_timeout_ms
        #: Tracked calls are activity marks (``active_on="any"``), except these events.
        self.marks_activity = active_on == "any"
        self.passive_events = passive_events
        self.backlog = 0
        #: Bytes beyond :data:`CALL_BYTES` a call of the pending batches weighs.
        self.backlog_extra = 0
        #: Calls rejected at a flush because they would overflow their batch's sum.
        self.overflowed = 0
        self.reset()

    def reset(self) -> None:
        """Start empty (also in a forked child: the parent flushes its own calls)."""
        self._calls: deque[tuple[Any, ...]] = deque()
        self._extra = 0  # bytes beyond CALL_BYTES of the calls in the deque
        self.rebound()
        self.origin = new_id()
        # Marks are numbered in call order: with the random origin of the process they
        # are unique across processes and restarts (a new origin each), order two calls
        # of one millisecond, and name sessions 20x cheaper than a uuid4 per login.
        self._mark_numbers = itertools.count(1)

    @property
    def size(self) -> int:
        return len(self._calls)

    @property
    def buffered_bytes(self) -> int:
        """About the bytes the buffered calls hold, pending batches included."""
        calls = len(self._calls) + self.backlog
        return calls * CALL_BYTES + self._extra + self.backlog_extra

    @property
    def room(self) -> int:
        """How many more calls fit under both bounds with the extras held now."""
        return max(0, self._limit - len(self._calls) - self.backlog)

    def rebound(self) -> None:
        """Fold both bounds into :attr:`_limit`, the most calls (deque and backlog)
        with the extras held now."""
        room = self.max_bytes - self._extra - self.backlog_extra
        self._limit = min(self.max_buffered, max(0, room) // CALL_BYTES)

    # -- caller threads ----------------------------------------------------------------

    def _admit(self) -> None:
        if len(self._calls) + self.backlog >= self._limit:
            raise BufferFull

    def event(self, event: str, user_id: str, field: str | None, amount: Number) -> int:
        """Buffer a validated event without data; returns its timestamp in nanoseconds
        since the epoch."""
        if len(self._calls) + self.backlog >= self._limit:  # _admit, inlined
            raise BufferFull
        ns = self.now_ns()
        self._calls.append((_EVENT, ns, user_id, event, field, amount, None))
        return ns

    def data_event(
        self,
        event: str,
        user_id: str,
        data: FlatData | str,
        field: str | None,
        amount: Number,
    ) -> int:
        """As :meth:`event`, with ``data``'s snapshot: its pairs (their keys and values
        inline in the call, not nested: see the module docstring) or its JSON text.
        ``Analytics.track`` makes the calls of one- and two-key snapshots itself, the
        same way (a method call is a fifth of its cost)."""
        if len(self._calls) + self.backlog >= self._limit:  # _admit, inlined
            raise BufferFull
        ns = self.now_ns()
        if data.__class__ is str:
            self._calls.append((_EVENT, ns, user_id, event, field, amount, data))
            self._extra += text_bytes(data)
            self.rebound()
        else:
            flat = tuple(itertools.chain.from_iterable(data))
            self._calls.append((FLAT_EVENT, ns, user_id, event, field, amount, *flat))
            if len(data) > FREE_PAIRS:
                self._extra += (len(data) - FREE_PAIRS) * PAIR_BYTES
                self.rebound()
        return ns

    def login(self, user_id: str, username: str | None) -> None:
        self._admit()
        self._calls.append((_LOGIN, self.now_ns(), user_id, username))

    def logout(self, user_id: str) -> None:
        self._admit()
        self._calls.append((_LOGOUT, self.now_ns(), user_id))

    def touch(self, user_id: str) -> None:
        self._admit()
        self._calls.append((_TOUCH, self.now_ns(), user_id))

    def now_ms(self) -> int:
        """The clock, in milliseconds since the epoch (for readers, not the hot path)."""
        return self.now_ns() // 1_000_000

    # -- the flush thread ---------------------------------------------------------------

    def swap(self) -> FlushBatch:
        """Drain what is buffered, in call order, into one batch stamped with the clock.

        This loop is the flush's per-event cost, so the event case is written out here
        (no call per event, locals for what it looks up): a day's counters are looked
        up once per run of counted events of that day, and the record keeps the
        call's milliseconds as they are. It runs in slices of :data:`.pacing.CHECK_EVERY`
        calls, letting waiting threads have the GIL between slices (see :mod:`.pacing`).
        """
        batch = FlushBatch(
            created_at=from_ms(self.now_ms()),
            idle_timeout_ms=self.idle_timeout_ms,
            tz=tz_name(self.day_keys.tz),
        )
        calls, events, payments = self._calls, batch.events, batch.payments
        # The batch's activity, as tuples at the end; with no passive events (the
        # default) an event's mark is one append (a missing player's list made in C).
        activity: defaultdict[str, list[int]] = defaultdict(list)
        passive = self.passive_events
        marks = self.marks_activity
        all_marks = marks and not passive
        day_keys = self.day_keys
        counted_day = ""  # the day whose counters ``counters`` is
        counters: dict[str, Number] = {}
        pacer = Pacer()
        # The calls are kept until the batch is made, then freed in slices: freed one by
        # one as each event is made, they would keep the interpreter's allocation count
        # flat, no young collection would run, and every event would wait for one
        # collection later in the flush (28 ms for 200,000, holding the GIL). Kept,
        # the collector runs its usual small young collections along the loop.
        taken: list[tuple[Any, ...]] = []
        keep = taken.append
        extra = 0  # the extras (see rebound) of the calls taken
        remaining = len(calls)  # only what is there now; later calls wait
        while remaining:
            pacer.tick()
            step = min(CHECK_EVERY, remaining)
            remaining -= step
            # Counted before they leave the deque, so the bound never lets a call past
            # (it may refuse one a slice early); out of the deque they are still memory.
            self.backlog += step
            for _ in range(step):
                call = calls.popleft()
                keep(call)
                kind = call[0]
                if kind == _EVENT:
                    _, ns, user_id, event, field, amount, text = call
                    if text is None:
                        text = "{}"
                    else:
                        extra += text_bytes(text)
                elif kind == FLAT_EVENT:  # one unpacking takes the keys and values too
                    _, ns, user_id, event, field, amount, *flat = call
                    text = encode_flat(flat)
                    if len(flat) > 2 * FREE_PAIRS:
                        extra += (len(flat) // 2 - FREE_PAIRS) * PAIR_BYTES
                else:
                    ms = call[1] // 1_000_000
                    if kind == _LOGIN:
                        self._add_login(batch, ms, call[2], call[3])
                    elif kind == _LOGOUT:
                        self._add_logout(batch, ms, call[2])
                    elif marks:  # a touch: activity only
                        activity[call[2]].append(ms)
                    continue
                ms = ns // 1_000_000
                day, month = day_keys(ms)
                if field == NEW_USERS:  # distinct players, counted by the store
                    self._day_counters(batch, day, month)
                    batch.new_users.setdefault(day, set()).add(user_id)
                elif field is not None:
                    if day != counted_day:
                        counted_day = day
                        counters = self._day_counters(batch, day, month)
                    total = counters.get(field, 0) + amount
                    if total > MAX_BATCH_SUM:
                        self._overflow(event, field, day)
                        continue  # the whole call: no counter, payment or event of it
                    counters[field] = total
                    if event == PAYMENT_EVENT:
                        payers = payments.setdefault(day, {})
                        payers[user_id] = payers.get(user_id, 0) + amount
                if all_marks or (marks and event not in passive):
                    activity[user_id].append(ms)
                events.append((ms, user_id, event, text, day))
        release(taken)
        batch_activity = batch.activity
        today: set[str] = set()  # the active players of the last day met,
        day_start = day_end = 0  # [day_start, day_end) in milliseconds
        for user, times in paced(activity.items(), CHECK_EVERY):  # every player: paced
            times.sort()  # threads append out of order by a few microseconds
            # A tuple of ints, which the collector stops tracking (see model.Login):
            # a list would reach the old generation during the flush, one per player.
            batch_activity[user] = tuple(times)
            # Active on the days of their marks: a player's marks in a batch lie on
            # one day but around midnight, so a day per player, not per mark, and the
            # day's set found again only when a player's day differs.
            if day_start <= times[0] and times[-1] < day_end:
                today.add(user)
            elif day_keys(times[0]) == day_keys(times[-1]):
                day_start, day_end, _, _ = day_keys.bounds(times[0])
                today = self._active(batch, times[0])
                today.add(user)
            else:
                for ms in times:
                    self._active(batch, ms).add(user)
        for day, users in batch.day_users.items():
            batch.month_users.setdefault(batch.months[day], set()).update(users)
        # The extras move to the batch, which the flusher counts in backlog_extra. A
        # caller racing on += may have lost an extra: never below zero, and none left
        # when the deque is empty, so an error never outlives the next swap.
        self._extra = max(0, self._extra - extra) if calls else 0
        batch.extra_bytes = extra
        self.rebound()
        return batch

    def _overflow(self, event: str, field: str, day: str) -> None:
        """A call that would take its batch's ``field`` of ``day`` past
        :data:`MAX_BATCH_SUM` is rejected: counted, and logged the first time."""
        self.overflowed += 1
        if self.overflowed == 1:
            log.warning(
                "gso_analytics: rejected track(%r): the batch's %s of %s would pass 2**53;"
                " such calls are only counted in stats()['rejected'] from now on",
                event,
                field,
                day,
            )

    @staticmethod
    def _day_counters(batch: FlushBatch, day: str, month: str) -> dict[str, Number]:
        counters = batch.counters.get(day)
        if counters is None:
            counters = batch.counters[day] = {}
            batch.months[day] = month
        return counters

    def _active(self, batch: FlushBatch, ms: int) -> set[str]:
        """The players active on the day of ``ms`` (their month's follow at the end)."""
        day, month = self.day_keys(ms)
        batch.months.setdefault(day, month)
        return batch.day_users.setdefault(day, set())

    def _add_login(self, batch: FlushBatch, ms: int, user_id: str, username: str | None) -> None:
        # No pairing here: which session a mark starts, extends or ends is the store's
        # walk over the marks of every process (see .sessions), so this process keeps
        # no session state. A login is an activity mark that carries the username.
        day, month = self.day_keys(ms)
        seq = next(self._mark_numbers)
        origin = self.origin
        batch.logins.append((f"{origin}-{seq}", user_id, ms, origin, seq, username, day, month))
        batch.months.setdefault(day, month)  # active that day (as _active, keys known)
        batch.day_users.setdefault(day, set()).add(user_id)

    def _add_logout(self, batch: FlushBatch, ms: int, user_id: str) -> None:
        seq = next(self._mark_numbers)
        origin = self.origin
        batch.logouts.append((f"{origin}-{seq}", user_id, ms, origin, seq))
        if self.marks_activity:  # active_on="any": a logout is a mark of the day too
            self._active(batch, ms).add(user_id)
