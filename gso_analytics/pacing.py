"""Sharing the GIL: the flush thread's long Python loops work in bounded slices.

A request thread that wants the GIL while the flush thread runs Python waits for it:
the interpreter only forces a switch after ``sys.getswitchinterval()`` (5 ms by
default), and a request that needs the GIL several times (after each I/O wait) pays
that more than once. So the flush's loops (aggregating the buffer, building rows)
call :meth:`Pacer.tick` every :data:`CHECK_EVERY` items, and once a slice has run for
:data:`SLICE_S`, the pacer releases the GIL with ``time.sleep(0)``: a waiting thread
takes it then, instead of at the next forced switch. The pause costs the flush wall
time (more on a busy machine, where the thread waits for a CPU again), not CPU time.
Long store calls that release the GIL themselves (an ``executemany``, socket I/O) are
left whole: other threads run while they wait.

Two stretches hold the GIL without running Python of ours, so the pacer handles them
too. A young collection: the swap frees each buffered call as it makes the call's
event, so the interpreter's allocation count stays flat, no collection runs during it,
and every event waits in generation 0 for the next one, which then traverses them all
(28 ms for 200,000). So at each pause the pacer runs that young collection
(``gc.collect(0)``), a slice's worth of objects at a time, unless the application turned
the collector off. And freeing: a list of 200,000 rows dropped at once is freed in one
stretch; :func:`release` frees it a slice at a time. The application's own settings
(switch interval, collector thresholds, enabled or not) are left as they are.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

T = TypeVar("T")

#: Longest stretch of flush-thread Python between two chances for other threads.
SLICE_S = 0.0005

#: Items between two looks at the clock: one ``perf_counter()`` per this many items
#: keeps the pacing's own cost out of the per-event figures.
CHECK_EVERY = 256


class Pacer:
    """Yields the GIL once per :data:`SLICE_S` of work; one per loop, not shared."""

    __slots__ = ("_since",)

    def __init__(self) -> None:
        self._since = time.perf_counter()

    def tick(self) -> None:
        """Called between items (every item where each is costly, else every
        :data:`CHECK_EVERY`): let waiting threads in if this slice has run long enough."""
        now = time.perf_counter()
        if now - self._since >= SLICE_S:
            # No other thread, nobody to let in: a flush() called with the flush thread
            # not started (a script, a test) is not slowed by pauses it does not need.
            if threading.active_count() > 1:
                time.sleep(0)  # releases the GIL: a waiting thread takes it now
            self._since = time.perf_counter()


def release(items: list[Any]) -> None:
    """Empty ``items`` in paced slices, from the end. Dropping a list of 200,000 rows at
    once frees them all in one stretch of C code that holds the GIL for 10-20 ms, as
    long as the work the flush paces; this frees them a slice at a time."""
    pacer = Pacer()
    while items:
        del items[-4 * CHECK_EVERY :]
        pacer.tick()


def paced_slices(items: Sequence[T], size: int = CHECK_EVERY) -> Iterator[Sequence[T]]:
    """``items`` in slices of ``size``, for a loop that builds something from each
    (rows, documents): between two slices, waiting threads may have the GIL."""
    pacer = Pacer()
    for start in range(0, len(items), size):
        pacer.tick()
        yield items[start : start + size]
