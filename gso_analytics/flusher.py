"""The flush thread: hands batches to the store, keeps and retries failed ones.

Batches are applied in order, one at a time (``flush()`` from a caller and the thread
share one lock). A failed batch keeps its id, so a retry after an unknown outcome is
recognised by the store and never counted twice.

Two kinds of failure, kept apart: a :class:`StoreError` is an outage (the store is
down, locked, slow) and the batch is retried, in order, for as long as it takes; any
other exception is an *internal error* (a bug, a driver error a backend did not
translate), counted on its own. A batch that fails permanently, with an internal error
or a store error the backend marks ``permanent``, ``quarantine_after`` times in a row,
is set aside (:meth:`Flusher._set_aside`) so the batches behind it are stored; so is a
failed batch older than :data:`~.store.MAX_RETRY_AGE`, which the store may no longer
recognise (its id pruned) and would count twice.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import datetime

from .aggregator import Aggregator
from .dead_letters import DeadLetters
from .erasure import rename_users
from .errors import ConfigurationError, StoreError
from .model import FlushBatch
from .pacing import release
from .store import MAX_RETRY_AGE, Store

log = logging.getLogger("gso_analytics")


class Flusher:
    """Owns the pending batches and the background thread."""

    def __init__(
        self,
        store: Store,
        aggregator: Aggregator,
        *,
        interval: float,
        now: Callable[[], datetime],
        max_backoff: float = 30.0,
        housekeeping: Callable[[], None] | None = None,
        quarantine_after: int = 5,
        dead_letters: DeadLetters | None = None,
        heartbeat: Callable[[], None] | None = None,
        prepare: Callable[[FlushBatch], FlushBatch] | None = None,
    ) -> None:
        self.store = store
        self.aggregator = aggregator
        self.interval = interval
        self.now = now
        self.max_backoff = max_backoff
        self.housekeeping = housekeeping
        self.quarantine_after = quarantine_after
        self.dead_letters = dead_letters
        self.heartbeat = heartbeat
        #: Applied to each batch as it leaves the buffer (pseudonymous ids), here on
        #: the flush thread rather than in the caller's ``track()``.
        self.prepare = prepare
        self._reset()

    def _reset(self) -> None:
        self.flushed = 0  # calls persisted
        self.batches = 0
        self.retried = 0  # apply attempts of a batch that failed before
        self.failures = 0
        self.internal_errors = 0  # failures that were not StoreError: bugs, not outages
        self.quarantined = 0  # batches set aside
        self._permanent_in_row = 0  # of the batch at the head
        self.unmatched_logouts = 0  # logouts that ended no session when stored
        self.last_error: str | None = None
        # time.time() of the last flush that left nothing pending (an empty one too)
        self.last_flush: float | None = None
        self._apply_lock = threading.Lock()
        self._pending: deque[FlushBatch] = deque()
        self._failed_ids: set[str] = set()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._deadline = 0.0

    @property
    def pending(self) -> int:
        # A copy first: stats() reads this from other threads while the flush thread
        # pops batches, and iterating the deque itself would then raise RuntimeError.
        return sum(batch.size for batch in tuple(self._pending))

    # -- flushing ---------------------------------------------------------------------

    def flush(self) -> None:
        """Swap the buffer into a batch and apply every pending batch, oldest first.

        Raises :class:`StoreError` when the store fails, and an internal error as it
        is; the batch stays pending (unless it is set aside, see the module docstring).
        """
        with self._apply_lock:
            try:
                batch = self.aggregator.swap()
                if not batch.is_empty():
                    self._pending.append(batch if self.prepare is None else self.prepare(batch))
                # The batch in flight still counts toward max_buffered_events: a store
                # that hangs must not let a second bufferful in beside it.
                self._set_backlog()
                while self._pending:
                    self._apply(self._pending[0])
                    release(self._pending.popleft().events)
                release(batch.events)  # the buffer's own batch, when prepare made another
                self.last_flush = time.time()
                if self.heartbeat is not None:
                    # Every flush, an empty one too: an idle worker is not a stale one.
                    self.heartbeat()
            finally:
                self._set_backlog()

    def _set_backlog(self) -> None:
        """What the pending batches hold counts in the buffer's bounds (calls, bytes)."""
        pending = tuple(self._pending)
        self.aggregator.backlog = sum(batch.size for batch in pending)
        self.aggregator.backlog_extra = sum(batch.extra_bytes for batch in pending)
        self.aggregator.rebound()

    def _apply(self, batch: FlushBatch) -> None:
        """Apply ``batch``, or set it aside; raises when it stays pending."""
        if batch.id in self._failed_ids:
            assert batch.created_at is not None  # stamped by the aggregator
            age = self.now() - batch.created_at
            if age > MAX_RETRY_AGE:
                self._set_aside(
                    batch,
                    f"failed {age} ago, longer than a retry may take ({MAX_RETRY_AGE}):"
                    " its id may be pruned, so a retry could count it twice",
                )
                return
            self.retried += 1
        try:
            result = self.store.apply(batch)
        except Exception as exc:
            self.failures += 1
            self._failed_ids.add(batch.id)
            self.last_error = f"{type(exc).__name__}: {exc}"
            outage = isinstance(exc, StoreError) and not exc.permanent
            if not isinstance(exc, StoreError):
                self.internal_errors += 1
            self._permanent_in_row = 0 if outage else self._permanent_in_row + 1
            if self._permanent_in_row < self.quarantine_after:
                raise
            self._set_aside(
                batch, f"failed {self.quarantine_after} times in a row: {exc!r}", error=exc
            )
            return
        self._failed_ids.discard(batch.id)
        self._permanent_in_row = 0
        self.unmatched_logouts += result.unmatched_logouts
        self.flushed += batch.size
        self.batches += 1

    def _set_aside(
        self, batch: FlushBatch, reason: str, error: BaseException | None = None
    ) -> None:
        """Take ``batch`` out of the line: counted, logged (with ``error``'s traceback),
        written to the dead-letter file when there is one (to replay with
        ``gso-analytics replay-dead-letters``)."""
        self.quarantined += 1
        self._failed_ids.discard(batch.id)
        self._permanent_in_row = 0
        kept = "not kept (no dead_letter_dir)"
        if self.dead_letters is not None:
            try:
                batch = self._without_erased(batch)
                kept = f"written to {self.dead_letters.write(batch, reason)}"
            except OSError as exc:
                kept = f"LOST: the dead-letter file could not be written ({exc})"
        log.error(
            "gso_analytics: batch %s (%d calls) set aside, %s; later batches go on: %s",
            batch.id,
            batch.size,
            kept,
            reason,
            exc_info=error,
        )

    def _without_erased(self, batch: FlushBatch) -> FlushBatch:
        """``batch`` with the players erased meanwhile renamed to their tokens, as the
        store would store them: a dead letter written after an erase holds no erased
        id. The store failing here, the batch is written as it is (logged)."""
        try:
            erased = self.store.erased_tokens(batch.players())
        except (StoreError, ConfigurationError) as exc:
            log.warning("gso_analytics: could not look for erased players: %s", exc)
            return batch
        return rename_users(batch, erased, keep_events=False) if erased else batch

    # -- the thread ---------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="gso-analytics-flush", daemon=True)
        self._thread.start()

    def request(self) -> None:
        """Wake the thread for an early flush."""
        self._wake.set()

    def _backoff(self, failures_in_row: int) -> float:
        ceiling = min(self.max_backoff, self.interval, 0.25 * 2**failures_in_row)
        return float(ceiling * random.uniform(0.5, 1.0))

    def _run(self) -> None:
        delay = self.interval
        failures_in_row = 0
        while True:
            self._wake.wait(delay)
            self._wake.clear()
            if self._stopping.is_set():
                break
            try:
                self.flush()
                self._housekeep()
            except StoreError as exc:
                failures_in_row += 1
                delay = self._backoff(failures_in_row)
                log.warning(
                    "gso_analytics: flush failed (%s); %d buffered calls kept, retry in %.1fs",
                    exc,
                    self.pending + self.aggregator.size,
                    delay,
                )
            except Exception as exc:
                # A bug, or a driver error a backend did not translate (in a flush or in
                # housekeeping): log it and keep the thread, or nothing would be stored again.
                failures_in_row += 1
                delay = self._backoff(failures_in_row)
                log.error(
                    "gso_analytics: unexpected error in the flush thread (%r); retry in %.1fs",
                    exc,
                    delay,
                    exc_info=True,
                )
            else:
                failures_in_row = 0
                delay = self.interval
        self._drain()

    def _housekeep(self) -> None:
        if self.housekeeping is None:
            return
        try:
            self.housekeeping()
        except StoreError:
            raise
        except Exception:
            self.internal_errors += 1
            raise

    def _drain(self) -> None:
        """Final flush on stop: retry until everything is stored or the deadline passes."""
        failures_in_row = 0
        while True:
            try:
                self.flush()
                return
            except Exception as exc:  # an internal error too: it may be set aside yet
                failures_in_row += 1
                remaining = self._deadline - time.monotonic()
                if remaining <= 0:
                    log.error(
                        "gso_analytics: stopping with %d calls not stored: %s",
                        self.pending + self.aggregator.size,
                        exc,
                    )
                    return
                time.sleep(min(remaining, self._backoff(failures_in_row)))

    def stop(self, timeout: float) -> bool:
        """Stop the thread after a final flush; True when everything was stored in time."""
        self._deadline = time.monotonic() + timeout
        thread = self._thread
        if thread is None or not thread.is_alive():
            thread = threading.Thread(target=self._drain, name="gso-analytics-stop", daemon=True)
            thread.start()
        else:
            self._stopping.set()
            self._wake.set()
        thread.join(timeout)
        if thread.is_alive():
            log.error(
                "gso_analytics: store did not answer within %.1fs at stop; %d calls not stored",
                timeout,
                self.pending + self.aggregator.size,
            )
        self._thread = None
        return not thread.is_alive() and self.pending + self.aggregator.size == 0

    def after_fork_in_child(self, restart: bool) -> None:
        """The parent keeps and flushes its own batches; the child starts empty."""
        self._reset()
        if restart:
            self.start()
