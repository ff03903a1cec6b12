"""The testing kit: what a game team needs to test its own code that calls gso_analytics.

Why in the library: every team otherwise writes the same fake clock, fixtures and
helpers, and gets them subtly wrong (a naive clock, a forgotten ``stop()``, reading a
funnel to see which events a route sent). Nothing here is a fake: the store is the
real ``memory://`` store and the facade the real :class:`~gso_analytics.Analytics`;
:class:`RecordingAnalytics` only also *records* each accepted call, as ``responses``
records requests, so a test can assert on what the code under test did and a failing
assertion lists what really happened.

The pytest fixtures ``gso_clock`` and ``gso_analytics`` come from
:mod:`gso_analytics.pytest_plugin`, registered through the ``pytest11`` entry point
(``pytest -p no:gso_analytics`` turns them off). This module needs no pytest.
"""

from __future__ import annotations

import contextlib
import copy
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs

from .analytics import Analytics
from .errors import ValidationError
from .store import Store, open_store

_test_run = False  # set by the pytest plugin for the length of a pytest run


def is_test_run() -> bool:
    """True inside a pytest run that loaded the ``gso_analytics`` plugin (every run, in
    a project that installed the library, unless ``-p no:gso_analytics``).

    Why the plugin says so: an ASGI app has no test switch of its own (Flask has
    ``app.testing``, Django its test runner), and a module that merely imports pytest
    is no test run; the plugin is loaded by pytest runs only.
    """
    return _test_run


def set_test_run(value: bool) -> None:
    """Called by the pytest plugin at the start (True) and end (False) of a run."""
    global _test_run
    _test_run = value


#: Where ``FrozenClock()`` starts: a Wednesday noon (UTC), far from midnight and from
#: a month's end, so a test crosses a day only when it moves the clock there.
DEFAULT_START = datetime(2025, 1, 15, 12, 0, tzinfo=UTC)


def _moment(value: datetime | str) -> datetime:
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    if not isinstance(moment, datetime) or moment.tzinfo is None:
        raise ValueError(
            f"FrozenClock needs an aware time (e.g. '2025-01-15T12:00:00+00:00'), got {value!r}"
        )
    return moment


class FrozenClock:
    """An injectable ``clock=`` that stands still until the test moves it.

    ``FrozenClock("2025-01-15T23:59:00+00:00")`` or ``FrozenClock(aware_datetime)``;
    calling it returns the current time. Nothing global is patched: only the
    ``Analytics`` given this clock sees it.
    """

    def __init__(self, start: datetime | str = DEFAULT_START) -> None:
        self.now = _moment(start)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        """Move by ``timedelta(**delta)`` (``minutes=5``, ``days=1``); the new time."""
        self.now += timedelta(**delta)
        return self.now

    def move_to(self, moment: datetime | str) -> datetime:
        """Jump to ``moment`` (an aware datetime or an ISO-8601 string); the new time."""
        self.now = _moment(moment)
        return self.now

    def __repr__(self) -> str:
        return f"FrozenClock({self.now.isoformat()!r})"


@attrs.frozen
class Captured:
    """One accepted call: ``kind`` is ``"login"``, ``"logout"`` or ``"track"``."""

    kind: str
    event: str | None
    user_id: str
    data: dict[str, Any] | None
    at: datetime

    def __str__(self) -> str:
        if self.kind == "track":
            data = "" if self.data is None else f", {self.data!r}"
            call = f"track({self.event!r}, {self.user_id!r}{data})"
        else:
            call = f"on_{self.kind}({self.user_id!r})"
        return f"{call} at {self.at.isoformat()}"


class RecordingAnalytics(Analytics):
    """:class:`~gso_analytics.Analytics` that also lists every accepted call in
    ``captured``, in call order.

    A subclass, so recording costs the production request path nothing. A call that
    was rejected (lenient mode) or dropped is not recorded; with ``strict=True`` a
    rejected call raises, as in production.
    """

    def __init__(self, store: Store | str, **options: Any) -> None:
        super().__init__(store, **options)
        self.captured: list[Captured] = []
        self._capture_lock = threading.Lock()
        self._refused = threading.local()  # set by _reject/_drop for the calling thread

    def _record(self, kind: str, event: str | None, user_id: str, data: Any) -> None:
        if getattr(self._refused, "flag", False):
            self._refused.flag = False
            return
        record = Captured(kind, event, str(user_id), copy.deepcopy(data), self.clock())
        with self._capture_lock:
            self.captured.append(record)

    def _reject(self, exc: ValidationError, event: str | None = None) -> None:
        self._refused.flag = True
        super()._reject(exc, event)

    def _drop(self) -> None:
        self._refused.flag = True
        super()._drop()

    def on_login(self, user_id: str, username: str | None = None) -> None:
        try:
            super().on_login(user_id, username)
        except ValidationError:
            self._refused.flag = False
            raise
        self._record("login", None, user_id, None)

    def on_logout(self, user_id: str) -> None:
        try:
            super().on_logout(user_id)
        except ValidationError:
            self._refused.flag = False
            raise
        self._record("logout", None, user_id, None)

    def track(self, event: str, user_id: str, data: dict[str, Any] | None = None) -> None:
        try:
            super().track(event, user_id, data)
        except ValidationError:
            self._refused.flag = False
            raise
        self._record("track", event, user_id, data)


# -- assertions ---------------------------------------------------------------------------


def _captured(analytics: Analytics) -> list[Captured]:
    captured = getattr(analytics, "captured", None)
    if captured is None:
        raise TypeError(
            "assert_tracked needs a RecordingAnalytics: the gso_analytics fixture, one from"
            " cluster(), or the app's under Flask app.testing / a Django test run"
        )
    return list(captured)


def _matches(record: Captured, event: str, user_id: str | None, subset: dict[str, Any]) -> bool:
    if record.kind != "track" or record.event != event:
        return False
    if user_id is not None and record.user_id != user_id:
        return False
    data = record.data or {}
    return all(key in data and data[key] == value for key, value in subset.items())


def _describe(event: str, user_id: str | None, subset: dict[str, Any]) -> str:
    parts = [repr(event)]
    if user_id is not None:
        parts.append(f"user_id={user_id!r}")
    parts += [f"{key}={value!r}" for key, value in subset.items()]
    return f"track({', '.join(parts)})"


def _listing(records: list[Captured]) -> str:
    if not records:
        return "nothing was tracked"
    return "calls made, in order:\n" + "\n".join(f"  {record}" for record in records)


def tracked(
    analytics: Analytics, event: str, user_id: str | None = None, **data_subset: Any
) -> list[Captured]:
    """The recorded ``track`` calls of ``event`` (by ``user_id``, when given) whose
    ``data`` contains ``data_subset``."""
    return [r for r in _captured(analytics) if _matches(r, event, user_id, data_subset)]


def assert_tracked(
    analytics: Analytics, event: str, user_id: str | None = None, **data_subset: Any
) -> list[Captured]:
    """Fail, listing every call made, unless ``event`` was tracked (by ``user_id``, with
    at least ``data_subset`` in its data); return the matching records."""
    found = tracked(analytics, event, user_id, **data_subset)
    if not found:
        expected = _describe(event, user_id, data_subset)
        raise AssertionError(f"expected {expected}; {_listing(_captured(analytics))}")
    return found


def assert_not_tracked(
    analytics: Analytics, event: str, user_id: str | None = None, **data_subset: Any
) -> None:
    """Fail, listing the offending calls, if ``event`` was tracked (as for
    :func:`assert_tracked`)."""
    found = tracked(analytics, event, user_id, **data_subset)
    if found:
        unexpected = _describe(event, user_id, data_subset)
        raise AssertionError(f"expected no {unexpected}; {_listing(found)}")


# -- several workers ----------------------------------------------------------------------


@contextlib.contextmanager
def cluster(
    n: int, clock: FrozenClock | None = None, store: Store | str | None = None
) -> Iterator[list[RecordingAnalytics]]:
    """``n`` workers (strict :class:`RecordingAnalytics`, no forwarders) on one store,
    as ``n`` gunicorn workers would be, for testing multi-worker behaviour.

    Each has its own buffer and no flush thread: a worker's calls reach the store only
    when the test flushes it (``flush()``, or a read such as ``get_metrics()``, which
    flushes that worker only). They share ``clock`` (a new :class:`FrozenClock` when
    None) and ``store`` (a store or URL; a new ``memory://`` when None, closed at the
    end, as is a store opened from a URL). Every worker is stopped at the end.
    """
    if n < 1:
        raise ValueError(f"a cluster needs at least one worker, got {n}")
    shared = store if isinstance(store, Store) else open_store(store or "memory://")
    clock = clock if clock is not None else FrozenClock()
    workers: list[RecordingAnalytics] = []
    try:
        for _ in range(n):
            workers.append(RecordingAnalytics(shared, clock=clock, strict=True, forwarders=[]))
        yield workers
    finally:
        for worker in workers:
            worker.stop()
        if shared is not store:
            shared.close()


__all__ = [
    "DEFAULT_START",
    "Captured",
    "FrozenClock",
    "RecordingAnalytics",
    "assert_not_tracked",
    "assert_tracked",
    "cluster",
    "is_test_run",
    "tracked",
]
