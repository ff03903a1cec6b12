"""Sharing the GIL: the flush thread's Python work runs in short slices.

A request thread that wakes (its socket is readable, its sleep is over) while the
flush thread runs Python waits for the GIL: the interpreter only forces a switch after
``sys.getswitchinterval()`` (5 ms by default). At 1,000 requests a second and a flush
holding the GIL about 1% of the time, about 1% of the requests meet it: exactly the
99th percentile. So the flush's loops call :meth:`Pacer.tick` every
:data:`CHECK_EVERY` items (every item where each costs tens of µs), and once a slice
has run :data:`SLICE_S`, the pacer pauses with ``time.sleep(0)``. A request thread
then waits about a slice, 0.1 ms, instead of up to 5 ms.

The pause must last long enough for the waiting thread to wake and take the GIL: to
a thread blocked on the GIL (on another CPU), a release that returns at once
(``os.sched_yield()``, a ``select`` with no timeout, a C call that drops the GIL for a
few µs) hands nothing over, the releasing thread takes the GIL back first, and the
waiter, signalled but too late each time, starved for 0.2-0.6 s in a 2 s loop
measured here. ``time.sleep(0)`` on Linux sleeps for the timer slack (about 50 µs
since Python 3.11, which uses ``clock_nanosleep``), and the waiter takes the GIL at
nearly every pause (``python -m bench.tail`` probes it). With no waiter the pause
costs that wall time and a system call: measured here, in a virtual machine where
setting a timer traps to the hypervisor, 80 µs and 24 µs of CPU,
about 13 pauses per 1,000 events flushed (a few µs of CPU on bare metal). No pause is
taken when no other thread exists (a script flushing by hand).

Only when someone is there to let in. A pause costs the same whether a thread is
waiting or not, and most of the time none is: a server worker's threads sleep between
requests, and a flush beside idle threads paused 13 times per 1,000 events for
nothing (35% of its throughput, 17% of its CPU). A thread that wakes to want the GIL
spends CPU doing so (the return from its sleep or ``recv``, the GIL's mutex and
condition variable: 5-25 µs here), and the kernel counts it by the time it blocks on
the GIL. So at the end of a slice the pacer reads the CPU time of the process's other
threads (:func:`others_cpu_ns`, the process's minus this thread's): a pause only when
it moved by more than :data:`MOVED_NS` since the last look. The last look's reading is
kept per thread, across pacers, and is not taken again after a pause: what the other
threads did during a pause counts toward the next look, so a waiter that woke during a
pause but did not get the GIL (it woke, found the GIL taken back, and waits again) is
let in at the next slice, and a request that ran during a pause costs one more pause
after it (then nobody moves: no more). Threads that use CPU without the GIL (C code
that releases it) read as wanting it: the flush then pauses every slice, as it did
before it looked. The two clock reads are system calls, 1-3 µs here, once per slice
(``python -m bench.tail`` and ``bench/persist.py`` measure the whole).

A thread that has not run yet cannot be seen. When a request thread wakes, the
kernel may queue it on the CPU where the flush thread runs (it packs threads onto
fewer CPUs; a busy server has no idle CPU), and there it waits for the flush thread's
time slice to end: on a kernel with the EEVDF scheduler (Linux 6.6 and later) a woken
thread no longer preempts at once, and a slice is 0.7-3 ms (1.4 ms on this 2-CPU
machine). Such a thread has neither run nor wanted the GIL, its CPU time has not
moved, and a pacer that only looked let it wait: the slowest 1% of requests beside a
flush waited about 1 ms, while the flush looked every 0.1 ms and saw nobody. So at a
look that sees nobody move, the pacer lends its CPU with ``os.sched_yield()``: the
call releases the GIL and lets the kernel run a thread queued for this CPU, which
takes the GIL at once, runs its request, and gives the CPU back when it sleeps again.
With nobody queued it returns in 0.6 µs (no timer is set: nothing traps to the
hypervisor), against the 17-24 µs of CPU a pause takes here. It cannot replace the
pause: a thread on another CPU, waiting for the GIL, wakes too slowly to take it in
0.6 µs.

Store calls that release the GIL for long (socket I/O, SQLite's commit) are left
whole; SQLite, which drops it for a few µs per row, pulls every row it writes from a
paced generator (:func:`paced`) and hands over every row it reads through a pacer too
(the SQLite store's write connection): a thousand players' rows in one ``executemany``
or ``SELECT`` otherwise held a waiting thread off for 5-20 ms. Between its store calls,
:func:`~gso_analytics.store.apply_batch` ticks too, so steps of a few hundred µs each
do not add up to one long stretch. Freeing is work as well: a list of 200,000 rows
dropped at once is freed in one stretch of C code holding the GIL for 10-20 ms;
:func:`release` frees it a slice at a time. The application's own settings (switch
interval, the collector's thresholds, enabled or not) are left as they are.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, TypeVar

T = TypeVar("T")

#: Longest stretch of flush-thread Python between two chances for other threads.
SLICE_S = 0.0001

#: Items between two looks at the clock: one ``perf_counter()`` per this many items
#: keeps the pacing's own cost out of the per-event figures.
CHECK_EVERY = 32

#: Other threads' CPU time since the last look, in ns, above which someone may be
#: waiting for the GIL. A thread waking to take it spends 5-25 µs here; the two
#: clock reads differ by the few hundred ns between them (as they are ordered, only
#: ever upward) and by an interrupt counted on either side, rarely.
MOVED_NS = 2_000


#: Gives this thread's CPU to a thread queued for it, the GIL released meanwhile
#: (not on Windows, where Python has no ``sched_yield``).
_lend_cpu = getattr(os, "sched_yield", lambda: None)


def others_cpu_ns() -> int:
    """CPU time of the process's threads but this one, in ns. This thread's clock is
    read first, so the time between the two reads counts for the others (a pause too
    many, at worst), never against them (a waiter missed)."""
    own = time.thread_time_ns()
    return time.process_time_ns() - own


#: Per thread: :func:`others_cpu_ns` at that thread's last look, whichever pacer
#: looked (a loop's pacer starts where the last loop's left off).
_looked = threading.local()


class Pacer:
    """Yields the GIL once per :data:`SLICE_S` of work when another thread may want it;
    one per loop, not shared between threads."""

    __slots__ = ("_since",)

    def __init__(self) -> None:
        self._since = time.perf_counter()

    def tick(self) -> None:
        """Called between items (every item where each is costly, else every
        :data:`CHECK_EVERY`): once this slice has run long enough, let a thread waiting
        for the GIL in (a pause), or else one waiting for this CPU (a lend)."""
        now = time.perf_counter()
        if now - self._since >= SLICE_S:
            # No other thread, nobody to let in: a flush() called with the flush thread
            # not started (a script, a test) is not slowed by pauses it does not need.
            if threading.active_count() > 1:
                others = others_cpu_ns()
                last = getattr(_looked, "others", None)
                _looked.others = others  # not read again after the pause: see above
                if last is None or others - last > MOVED_NS:
                    time.sleep(0)  # releases the GIL: a waiting thread takes it now
                else:
                    _lend_cpu()  # a thread queued for this CPU runs now: see above
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


def paced(items: Iterable[T], every: int = 1) -> Iterator[T]:
    """``items`` one by one, waiting threads let in every ``every`` items: for a loop
    whose items each cost tens of µs (a player's session walk, a player's queries)."""
    pacer = Pacer()
    for index, item in enumerate(items):
        if not index % every:
            pacer.tick()
        yield item
