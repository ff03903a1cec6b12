"""Fault injection for tests: a :class:`Store` wrapper that fails, hangs or slows on demand.

Why a wrapper and not a monkeypatched backend: :class:`FaultyStore` is itself a
``Store`` that delegates to any other one, so every fault test runs unchanged on
every backend in ``conftest.BACKENDS`` (memory, SQLite, MongoDB, and whatever store
is added there), and ``Analytics`` needs no test hook.

Faults are armed per operation and consumed in the order they were armed:

- ``apply`` (a flush): :meth:`fail_before` (nothing written), :meth:`fail_after`
  (the batch is committed, then the call raises: a timeout after the write),
  :meth:`hang` (blocks until released), :meth:`slow` (sleeps, then applies),
  :meth:`fail_during` / :meth:`hang_during` (inside the transaction, after one of its
  statements ran: a crash between two writes of one batch; only for backends that
  apply through :meth:`Store.transaction`, i.e. that keep the base ``apply``);
- ``prune`` and ``read``: the same actions, for the housekeeping job and the reads;
- :meth:`down` / :meth:`up`: every operation fails until the store is back.

Every attempt is recorded in :attr:`FaultyStore.attempts`, so a test can say exactly
what the library asked of the store.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from gso_analytics import FlushBatch, Store, StoreError, open_store
from gso_analytics.model import (
    ApplyResult,
    DailyStats,
    EventRecord,
    Heartbeat,
    MonthStats,
    Number,
    PruneResult,
    SessionRecord,
)
from gso_analytics.store import Transaction, apply_batch

#: A hang never outlives this, so a test that forgets to release cannot stall the run.
HANG_SAFETY_S = 60.0

ErrorFactory = Callable[[str], BaseException]


def store_error(message: str) -> BaseException:
    return StoreError(message)


class Gate:
    """Where a hanging operation waits: ``entered`` is set when it arrives, and it
    proceeds once :meth:`release` is called (it fails after :data:`HANG_SAFETY_S`)."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.released = threading.Event()
        self.count = 0  # operations that reached the gate

    def arrive(self, on_enter: Callable[[], None] | None = None) -> None:
        self.count += 1
        self.entered.set()
        if on_enter is not None:
            on_enter()
        if not self.released.wait(HANG_SAFETY_S):
            raise StoreError(f"injected hang was never released ({HANG_SAFETY_S}s)")

    def release(self) -> None:
        self.released.set()

    def wait_entered(self, timeout: float = 10.0) -> bool:
        return self.entered.wait(timeout)


@dataclass
class Fault:
    """One armed fault: ``kind`` for the next ``times`` operations (None: for ever)."""

    kind: str  # "before" | "after" | "hang" | "slow" | "during"
    times: int | None = 1
    error: ErrorFactory = store_error
    gate: Gate | None = None
    delay: float = 0.0
    statement: str | None = None  # for "during": the Transaction method it follows
    hang: bool = False  # for "during": hang there instead of raising
    on_enter: Callable[[], None] | None = None  # for hangs: called when one arrives


@dataclass
class Attempt:
    """One operation the library asked for, and what the wrapper did with it."""

    op: str
    fault: str | None
    batch_id: str | None = None
    result: ApplyResult | None = None
    error: str | None = None
    at: float = field(default_factory=time.monotonic)


class _FaultyTransaction:
    """Delegates to a real transaction; fires ``hook`` after each statement."""

    def __init__(self, tx: Transaction, hook: Callable[[str], None]) -> None:
        self._tx = tx
        self._hook = hook

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._tx, name)
        if not callable(real):  # a setting (session_part), not a statement
            return real

        def call(*args: Any, **kwargs: Any) -> Any:
            result = real(*args, **kwargs)
            self._hook(name)
            return result

        return call


class FaultyStore(Store):
    """Wraps ``inner`` (any Store) and injects the faults armed on it."""

    schemes = ()

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.reserved_fields = inner.reserved_fields  # type: ignore[misc]
        self._lock = threading.Lock()
        self._faults: dict[str, list[Fault]] = {
            "apply": [],
            "prune": [],
            "read": [],
            "heartbeat": [],
        }
        self._down: ErrorFactory | None = None
        self.attempts: list[Attempt] = []

    @classmethod
    def from_url(cls, url: str, **options: Any) -> FaultyStore:
        return cls(open_store(url, **options))

    def __getattr__(self, name: str) -> Any:  # backend extras (``path``...), read-only
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    # -- arming ---------------------------------------------------------------------

    def arm(self, op: str, fault: Fault) -> Fault:
        with self._lock:
            self._faults[op].append(fault)
        return fault

    def fail_before(
        self, times: int | None = 1, *, op: str = "apply", error: ErrorFactory = store_error
    ) -> Fault:
        """The next ``times`` operations raise before touching the store."""
        return self.arm(op, Fault("before", times, error))

    def fail_after(self, times: int | None = 1, *, error: ErrorFactory = store_error) -> Fault:
        """The next ``times`` applies commit, then raise (the outcome looks unknown)."""
        return self.arm("apply", Fault("after", times, error))

    def hang(
        self,
        times: int | None = 1,
        *,
        op: str = "apply",
        on_enter: Callable[[], None] | None = None,
    ) -> Gate:
        """The next ``times`` operations block at the returned gate until released."""
        gate = Gate()
        self.arm(op, Fault("hang", times, gate=gate, on_enter=on_enter))
        return gate

    def slow(self, seconds: float, times: int | None = None, *, op: str = "apply") -> Fault:
        """Operations sleep ``seconds`` first, then run normally."""
        return self.arm(op, Fault("slow", times, delay=seconds))

    def fail_during(
        self, statement: str, times: int | None = 1, *, error: ErrorFactory = store_error
    ) -> Fault:
        """The next apply raises inside its transaction, right after ``statement``."""
        return self.arm("apply", Fault("during", times, error, statement=statement))

    def hang_during(self, statement: str, *, on_enter: Callable[[], None] | None = None) -> Gate:
        """The next apply blocks inside its transaction, right after ``statement``."""
        gate = Gate()
        self.arm(
            "apply",
            Fault("during", 1, gate=gate, statement=statement, hang=True, on_enter=on_enter),
        )
        return gate

    def down(self, error: ErrorFactory = store_error) -> None:
        """Every operation fails until :meth:`up` (the server is stopped)."""
        self._down = error

    def up(self) -> None:
        self._down = None

    def disarm(self) -> None:
        """Forget every armed fault (hangs already waiting are not released)."""
        with self._lock:
            for faults in self._faults.values():
                faults.clear()
        self._down = None

    def _take(self, op: str) -> Fault | None:
        with self._lock:
            faults = self._faults[op]
            if not faults:
                return None
            fault = faults[0]
            if fault.times is not None:
                fault.times -= 1
                if fault.times <= 0:
                    faults.pop(0)
            return fault

    def applies(self, fault: str | None = "any") -> list[Attempt]:
        """The recorded apply attempts (with ``fault`` given: of that kind only)."""
        return [
            a for a in self.attempts if a.op == "apply" and (fault == "any" or a.fault == fault)
        ]

    # -- the faults around one operation ---------------------------------------------

    def _run(
        self, op: str, real: Callable[[Fault | None], Any], batch_id: str | None = None
    ) -> Any:
        attempt = Attempt(op, None, batch_id)
        with self._lock:
            self.attempts.append(attempt)
        down = self._down
        if down is not None:
            attempt.fault = "down"
            attempt.error = f"injected outage: {op}"
            raise down(attempt.error)
        fault = self._take(op)
        attempt.fault = None if fault is None else fault.kind
        if fault is not None:
            if fault.kind == "before":
                attempt.error = f"injected failure before {op}"
                raise fault.error(attempt.error)
            if fault.kind == "hang":
                assert fault.gate is not None
                fault.gate.arrive(fault.on_enter)
            elif fault.kind == "slow":
                time.sleep(fault.delay)
        try:
            result = real(fault)
        except BaseException as exc:
            attempt.error = f"{type(exc).__name__}: {exc}"
            raise
        if isinstance(result, ApplyResult):
            attempt.result = result
        if fault is not None and fault.kind == "after":
            attempt.error = f"injected failure after {op} (the write happened)"
            raise fault.error(attempt.error)
        return result

    # -- writes -----------------------------------------------------------------------

    def transaction(self) -> contextlib.AbstractContextManager[Transaction]:
        return self.inner.transaction()

    def apply(self, batch: FlushBatch) -> ApplyResult:
        def real(fault: Fault | None) -> ApplyResult:
            if fault is None or fault.kind != "during":
                return self.inner.apply(batch)
            return self._apply_during(batch, fault)

        return self._run("apply", real, batch.id)

    def _apply_during(self, batch: FlushBatch, fault: Fault) -> ApplyResult:
        """The base ``Store.apply`` on the inner store, with ``fault`` fired inside the
        transaction after the first ``fault.statement``."""
        fired = False

        def hook(statement: str) -> None:
            nonlocal fired
            if statement != fault.statement or fired:
                return
            fired = True
            if fault.hang:
                assert fault.gate is not None
                fault.gate.arrive(fault.on_enter)
            else:
                raise fault.error(f"injected failure inside the transaction after {statement}")

        key = self.inner.erasure_key()
        with self.inner.transaction() as tx:
            result = apply_batch(_FaultyTransaction(tx, hook), batch, key)  # type: ignore[arg-type]
        if not fired:
            raise AssertionError(f"the batch never called {fault.statement}: bad test setup")
        return result

    def prune(self, now: datetime, event_ttl: timedelta, idle_timeout: timedelta) -> PruneResult:
        return self._run("prune", lambda _: self.inner.prune(now, event_ttl, idle_timeout))

    # -- reads ------------------------------------------------------------------------

    def get_day(self, day: str) -> DailyStats | None:
        return self._run("read", lambda _: self.inner.get_day(day))

    def recent_days(self, limit: int = 30) -> list[DailyStats]:
        return self._run("read", lambda _: self.inner.recent_days(limit))

    def get_month(self, month: str) -> MonthStats:
        return self._run("read", lambda _: self.inner.get_month(month))

    def count_active_sessions(self, since_ms: int) -> int:
        return self._run("read", lambda _: self.inner.count_active_sessions(since_ms))

    def get_totals(self) -> dict[str, Number]:
        return self._run("read", lambda _: self.inner.get_totals())

    def live_heartbeats(self, now: datetime) -> list[Heartbeat]:
        return self._run("read", lambda _: self.inner.live_heartbeats(now))

    def save_heartbeat(self, heartbeat: Heartbeat) -> None:
        self._run("heartbeat", lambda _: self.inner.save_heartbeat(heartbeat))

    def forget_heartbeats(self, expired_before: datetime) -> None:
        self._run("prune", lambda _: self.inner.forget_heartbeats(expired_before))

    def withdraw_heartbeat(self, process: str) -> None:
        self._run("heartbeat", lambda _: self.inner.withdraw_heartbeat(process))

    def get_sessions(self, user_id: str) -> list[SessionRecord]:
        return self._run("read", lambda _: self.inner.get_sessions(user_id))

    def get_events(self, user_id: str | None = None, limit: int = 1000) -> list[EventRecord]:
        return self._run("read", lambda _: self.inner.get_events(user_id, limit))

    def close(self) -> None:
        self.inner.close()
