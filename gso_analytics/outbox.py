"""The forwarding hub and its per-forwarder outboxes: what every forwarder shares.

The seed POSTed every tracked event to ``ANALYTICS_WEBHOOK_URL`` from the request
path, with no timeout, retry or bound. Here a caller's whole cost is
:meth:`ForwardingHub.submit`: one tuple and one ``deque.append`` per forwarder, no
lock held, no I/O, no formatting. Each forwarder has its own bounded queue and
its own thread (an :class:`_Outbox`), so a slow or dead endpoint delays neither
``track()``, nor the store flush, nor the other forwarders.

What is shared by every forwarder lives once, here: batching by count and bytes,
retries with exponential backoff and jitter (``Retry-After`` honoured), splitting a
batch the endpoint found too large, the bound on ``stop()``, the counts in
``stats()`` and fork safety. A forwarder (:mod:`.forwarding`) only encodes and sends.
"""

from __future__ import annotations

import itertools
import json
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import requests

from .errors import ConfigurationError
from .forwarding import (
    USER_ERASED,
    Delivery,
    EncodedEvent,
    ForwardedEvent,
    Forwarder,
    Outcome,
    Timeout,
    log,
)
from .pacing import Pacer
from .validation import FlatData

#: An idle outbox thread re-checks its queue this often even without a wake-up: a
#: safety net only, submit() wakes it (see :meth:`ForwardingHub.submit`).
_IDLE_WAIT_S = 1.0
#: Below this much time left before stop()'s deadline, another attempt is pointless.
_MIN_ATTEMPT_S = 0.05

#: What submit() queues: (sequence number, ms, event, user id, data snapshot or None).
_Item = tuple[int, int, str, str, Any]

_COUNTS = ("delivered", "retried", "dropped_overflow", "dropped_rejected", "undelivered_at_stop")


class _Outbox:
    """One forwarder's bounded queue, thread and counts.

    The queue drops the oldest: when it holds ``max_queue`` events, a new one pushes
    out the oldest 1% (counted in ``dropped_overflow``). Dropping the oldest keeps the
    newest window when an endpoint is down for long, and the caller never waits.
    """

    def __init__(self, forwarder: Forwarder, hub: ForwardingHub) -> None:
        self.forwarder = forwarder
        self.hub = hub
        self.capacity = forwarder.max_queue
        self.room = max(1, self.capacity // 100)  # what one overflow() frees
        self.reset()

    def reset(self) -> None:
        """Empty, with new locks (also in a forked child, where the parent's thread
        may have held them and its events are the parent's to deliver)."""
        self.queue: deque[_Item] = deque()
        self.lock = threading.Lock()
        self.wake = threading.Event()  # new events (set by submit only when idle)
        self.stop_event = threading.Event()  # cuts a backoff short at stop()
        self.waiting = False
        self.stopping = False
        self.deadline = float("inf")
        self.thread: threading.Thread | None = None
        self.token: object | None = None  # the running thread's; None when none may count
        self.carry: EncodedEvent | None = None  # taken but did not fit the last batch
        self.work: deque[list[EncodedEvent]] = deque()  # the batch in flight (and its halves)
        self.in_flight = 0  # events in ``work``, kept as a number for stats()
        self.delivered = self.retried = self.dropped_overflow = 0
        self.dropped_rejected = self.undelivered_at_stop = 0
        self.last_error: str | None = None
        self._overflow_log_at = 1  # log when the drop count reaches it, then double it
        self._refusals = 0

    # -- caller threads -----------------------------------------------------------------

    def overflow(self) -> None:
        """The queue is full: push out the oldest 1% (at least one), so the next calls
        take the fast path again; the lock keeps the count exact when callers race."""
        with self.lock:
            queue = self.queue
            for _ in range(len(queue) - self.capacity + self.room):
                try:
                    queue.popleft()
                except IndexError:  # the thread took the rest meanwhile
                    return
                self.dropped_overflow += 1

    # -- lifecycle (Analytics' thread) --------------------------------------------------------

    def start(self, draining: bool = False) -> None:
        if self.thread is not None and self.thread.is_alive() and not self.stopping:
            return
        self.stopping = draining
        if not draining:
            self.deadline = float("inf")
            self.stop_event.clear()
        self.token = token = object()
        self.thread = threading.Thread(
            target=self._run,
            args=(token,),
            name=f"gso-analytics-forward-{self.forwarder.name}",
            daemon=True,
        )
        self.thread.start()

    def begin_stop(self, deadline: float) -> None:
        self.deadline = deadline
        if self.thread is None or not self.thread.is_alive():
            if self.queue or self.carry is not None:
                self.start(draining=True)
            return
        self.stopping = True
        self.stop_event.set()
        self.wake.set()

    def finish_stop(self) -> None:
        """After the join: what a thread stuck past the deadline holds is undelivered."""
        thread = self.thread
        if thread is not None and thread.is_alive():
            with self.lock:
                self.token = None  # the stuck thread may no longer count or take
                self._give_up("stop() deadline passed with a request in flight")
        self.thread = None

    # -- the forwarder thread ---------------------------------------------------------------

    def _run(self, token: object) -> None:
        try:
            while self.token is token:
                self._log_overflow()
                if self.stopping and time.monotonic() + _MIN_ATTEMPT_S >= self.deadline:
                    break
                if self._take(token):
                    if not self._deliver(token):
                        break  # gave up at stop()'s deadline, or stop() gave up on us
                    continue
                if self.stopping:
                    break
                self.waiting = True
                if not self.queue and not self.stopping:
                    self.wake.wait(_IDLE_WAIT_S)
                self.waiting = False
                self.wake.clear()
        except Exception:  # a bug must not kill forwarding silently
            log.exception("gso_analytics: %s forwarder thread failed", self.forwarder.name)
        finally:
            with self.lock:
                current = self.token is token
                if current:
                    self._log_overflow()
                    if self.stopping:
                        self._give_up("stop() deadline passed")
            if current:  # a thread stop() gave up on leaves the session to its successor
                self.forwarder.close()

    def _give_up(self, why: str) -> None:
        """Count and log everything still held as undelivered (caller holds the lock)."""
        held = len(self.queue) + self.in_flight + (self.carry is not None)
        self.queue.clear()
        self.work = deque()
        self.in_flight = 0
        self.carry = None
        if held:
            self.undelivered_at_stop += held
            log.error(
                "gso_analytics: %s forwarder: %d events not delivered (%s; last error: %s)",
                self.forwarder.name,
                held,
                why,
                self.last_error,
            )

    def _log_overflow(self) -> None:
        # Logged here, not in submit(): no logging I/O on the caller's thread. At 1, 2,
        # 4, 8... drops: loud, never a flood.
        dropped = self.dropped_overflow
        if dropped >= self._overflow_log_at:
            self._overflow_log_at = dropped * 2
            log.error(
                "gso_analytics: %s forwarder queue full (max_queue=%d); %d oldest events"
                " dropped so far",
                self.forwarder.name,
                self.capacity,
                dropped,
            )

    def _take(self, token: object) -> bool:
        """Put the next batch in ``work``: up to the forwarder's bounds, in queue order.

        Encoding a batch (up to thousands of events) is Python work: paced, so a
        request thread waiting for the GIL gets it between slices (see :mod:`.pacing`).
        """
        max_events, max_bytes = self.forwarder.batch_limits()
        batch: list[EncodedEvent] = []
        size = 2  # the brackets of a JSON array
        pacer = Pacer()
        while len(batch) < max_events and self.token is token:
            pacer.tick()
            encoded, self.carry = self.carry, None
            if encoded is None:
                try:
                    item = self.queue.popleft()
                except IndexError:
                    break
                encoded = self._encode(item)
                if encoded is None:
                    continue
            if batch and size + len(encoded.body) + 1 > max_bytes:
                self.carry = encoded
                break
            batch.append(encoded)
            size += len(encoded.body) + 1
        if batch:
            self.work = deque([batch])
            self.in_flight = len(batch)
        return bool(batch)

    def _encode(self, item: _Item) -> EncodedEvent | None:
        seq, ms, name, user_id, data = item
        event = ForwardedEvent(f"{self.hub.origin}-{seq}", ms, name, user_id, {})
        try:
            if data is not None:
                event.data = json.loads(data) if isinstance(data, str) else dict(data)
            return EncodedEvent(event, self.forwarder.encode(event))
        except (TypeError, ValueError, RuntimeError) as exc:
            # Validated at track(): only a forwarder that cannot represent it gets here.
            with self.lock:
                self.dropped_rejected += 1
            log.warning(
                "gso_analytics: %s forwarder could not encode %s %r: %s",
                self.forwarder.name,
                event.id,
                name,
                exc,
            )
            return None

    def _timeout(self) -> Timeout:
        timeout = self.forwarder.timeout
        if not self.stopping:
            return timeout
        left = max(_MIN_ATTEMPT_S, self.deadline - time.monotonic())
        if isinstance(timeout, tuple):
            return (min(timeout[0], left), min(timeout[1], left))
        return min(timeout, left)

    def _deliver(self, token: object) -> bool:
        """Send the batch in ``self.work`` (split on 413) until it is delivered or
        refused (True), or stop()'s deadline leaves no time for another attempt."""
        name = self.forwarder.name
        work = self.work
        failures = 0
        while work:
            current = work[0]
            try:
                result = self.forwarder.send(current, self._timeout())
            except requests.RequestException as exc:
                result = Delivery.retry(self.forwarder.describe_error(exc))
            except Exception as exc:  # a bug: its traceback matters more than its text
                log.exception("gso_analytics: %s forwarder: send() raised", name)
                result = Delivery.retry(self.forwarder.describe_error(exc))
            if not self._settle(work, result, token):
                return False  # stop() gave up on this thread and counted the batch
            if result.outcome is not Outcome.RETRY:
                if failures:
                    log.info("gso_analytics: %s forwarder: delivering again", name)
                failures = 0
                continue
            failures += 1
            delay = self.forwarder.backoff.delay(failures, result.retry_after)
            if failures & (failures - 1) == 0:  # 1, 2, 4, 8...: loud, never a flood
                log.warning(
                    "gso_analytics: %s forwarder: %s; %d events kept, attempt %d in %.2fs",
                    name,
                    result.reason,
                    len(current),
                    failures + 1,
                    delay,
                )
            if not self._pause(delay, from_endpoint=result.retry_after is not None):
                return False  # _run's exit counts what is left as undelivered
            with self.lock:
                if self.token is not token:
                    return False
                self.retried += 1
        return True

    def _settle(self, work: deque[list[EncodedEvent]], result: Delivery, token: object) -> bool:
        """Count one attempt's outcome; False when this thread may no longer count."""
        current = work[0]
        refused: Sequence[EncodedEvent] = ()
        with self.lock:
            if self.token is not token:
                return False
            outcome = result.outcome
            if outcome is Outcome.RETRY:
                self.last_error = result.reason
                return True
            work.popleft()
            if outcome is Outcome.DELIVERED:
                positions = set(result.rejected)
                self.delivered += len(current) - len(positions)
                self.dropped_rejected += len(positions)
            elif outcome is Outcome.TOO_LARGE and len(current) > 1:
                half = len(current) // 2
                work.appendleft(current[half:])
                work.appendleft(current[:half])
            else:  # refused, or one event too large to split
                refused = current
                self.dropped_rejected += len(current)
                self.last_error = result.reason
                self._refusals += 1
            self.in_flight = sum(len(b) for b in work)
            refusals = self._refusals
        if refused and refusals & (refusals - 1) == 0:
            log.warning(
                "gso_analytics: %s forwarder: endpoint refused %d events (%s), dropped;"
                " %d refused so far, first %s %r",
                self.forwarder.name,
                len(refused),
                result.reason,
                self.dropped_rejected,
                refused[0].event.id,
                refused[0].event.event,
            )
        elif outcome is Outcome.TOO_LARGE and not refused:
            log.info(
                "gso_analytics: %s forwarder: %s; splitting %d events in two",
                self.forwarder.name,
                result.reason,
                len(current),
            )
        return True

    def _pause(self, delay: float, from_endpoint: bool) -> bool:
        """Wait before a retry; False when stop()'s deadline leaves no room for one.

        Before stop() the wait is cut short by stop(), which wants the queue drained.
        While stop() drains, our own backoff shrinks to leave room for attempts, but
        an endpoint's ``Retry-After`` is respected: ending past the deadline, it
        means giving up now rather than hammering.
        """
        started = time.monotonic()
        if not self.stopping and not self.stop_event.wait(delay):
            return True
        now = time.monotonic()
        rest = max(0.0, delay - (now - started))
        left = self.deadline - now
        if not from_endpoint:
            rest = min(rest, left / 4)
        if rest + _MIN_ATTEMPT_S > left:
            return False
        time.sleep(rest)
        return True

    def stats(self) -> dict[str, Any]:
        held = len(self.queue) + self.in_flight + (self.carry is not None)
        counts = {name: getattr(self, name) for name in _COUNTS}
        return {"queued": held, **counts, "last_error": self.last_error}


class ForwardingHub:
    """Fans tracked events out to every forwarder's outbox; owned by ``Analytics``.

    ``submit`` runs on the caller's thread inside ``track()`` and must stay far
    below a microsecond: no lock (``deque.append`` is atomic under the GIL), no I/O,
    no formatting. Each event gets its id from a per-process random ``origin`` and an
    ``itertools.count`` (atomic too); the id string is only formatted on the
    forwarder thread.
    """

    def __init__(self, forwarders: Sequence[Forwarder], *, stop_timeout: float = 10.0) -> None:
        if stop_timeout < 0:
            raise ConfigurationError(f"forward_stop_timeout must be >= 0, got {stop_timeout!r}")
        for forwarder in forwarders:
            if not isinstance(forwarder, Forwarder):
                raise ConfigurationError(f"not a Forwarder: {forwarder!r}")
        names = [f.name for f in forwarders]
        self.forwarders = list(forwarders)
        self.stop_timeout = stop_timeout
        self._names = [
            name if names.count(name) == 1 else f"{name}-{i}" for i, name in enumerate(names)
        ]
        self._outboxes = tuple(_Outbox(f, self) for f in self.forwarders)
        self._new_origin()

    def _new_origin(self) -> None:
        self.origin = secrets.token_hex(8)
        self._seq = itertools.count()
        if len(self._outboxes) == 1:
            self.submit = self._submit_to_one(self._outboxes[0])  # type: ignore[method-assign,assignment]

    def _submit_to_one(self, box: _Outbox) -> Callable[[int, str, str, Any], None]:
        """:meth:`submit` for the common case of one forwarder, as a closure over
        locals: no loop and no attribute lookups, about a third cheaper."""
        next_seq = self._seq.__next__
        queue = box.queue
        append = queue.append
        capacity = box.capacity

        def submit(ms: int, event: str, user_id: str, data: Any) -> None:
            if len(queue) >= capacity:
                box.overflow()
            append((next_seq(), ms, event, user_id, data))
            if box.waiting:
                box.waiting = False
                box.wake.set()

        return submit

    # -- the hot path ---------------------------------------------------------------------

    def submit(self, ms: int, event: str, user_id: str, data: FlatData | str | None) -> None:
        """Queue one validated event for every forwarder; never blocks.

        ``ms`` is the call's time (milliseconds since the epoch, from the library's
        clock). ``data`` must be a snapshot nobody changes afterwards: what
        ``track()`` hands the buffer is one (the pairs of a flat dict of scalars, as
        a tuple, or the JSON text of anything else), so it is shared here, not copied again;
        the forwarder thread only reads it.
        """
        item = (next(self._seq), ms, event, user_id, data)
        for box in self._outboxes:
            queue = box.queue
            if len(queue) >= box.capacity:
                box.overflow()
            queue.append(item)
            if box.waiting:  # the thread sleeps: wake it, once (the flag is the thread's
                box.waiting = False  # to set again; clearing it here spares later callers)
                box.wake.set()

    def erase(self, user_id: str, ms: int) -> None:
        """Ask each forwarder about an erased player (:meth:`Forwarder.on_erase`) and
        queue the ``user.erased`` event of those that send one, behind the player's
        events already queued."""
        for box in self._outboxes:
            data = box.forwarder.on_erase(user_id)
            if data is None:
                continue
            queue = box.queue
            if len(queue) >= box.capacity:
                box.overflow()
            queue.append((next(self._seq), ms, USER_ERASED, user_id, dict(data)))
            if box.waiting:
                box.waiting = False
                box.wake.set()

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        for box in self._outboxes:
            box.start()

    def stop(self, timeout: float | None = None) -> bool:
        """Drain every queue, all within ``timeout`` (default ``stop_timeout``) in total.

        Returns True when every event was delivered or refused by its endpoint;
        what is left is counted in ``undelivered_at_stop`` and logged.
        """
        deadline = time.monotonic() + (self.stop_timeout if timeout is None else timeout)
        undelivered = [box.undelivered_at_stop for box in self._outboxes]
        for box in self._outboxes:
            box.begin_stop(deadline)
        for box in self._outboxes:
            if box.thread is not None:
                box.thread.join(max(0.0, deadline - time.monotonic()))
            box.finish_stop()
        return all(
            box.undelivered_at_stop == before and box.stats()["queued"] == 0
            for box, before in zip(self._outboxes, undelivered, strict=True)
        )

    def after_fork_in_child(self, restart: bool) -> None:
        """The child forwards its own events only, under a new origin, on its own threads."""
        for box in self._outboxes:
            box.forwarder.after_fork_in_child()
            box.reset()
        self._new_origin()  # after reset(): submit() binds the child's new queues
        if restart:
            self.start()

    # -- reading ------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Totals over forwarders (an event sent to two forwarders counts twice) and each
        forwarder's own counts."""
        per = {name: box.stats() for name, box in zip(self._names, self._outboxes, strict=True)}
        totals = {key: sum(s[key] for s in per.values()) for key in ("queued", *_COUNTS)}
        return {**totals, "forwarders": per}

    @staticmethod
    def empty_stats() -> dict[str, Any]:
        return {**dict.fromkeys(("queued", *_COUNTS), 0), "forwarders": {}}
