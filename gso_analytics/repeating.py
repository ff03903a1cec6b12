"""A daemon thread that repeats an action while a block of code runs.

Two places wait on one long blocking call and need something done meanwhile: the
command line's progress line redraws the elapsed time, and the MongoDB store renews
its index-build lease so that no other process takes the build over. Both want the
thread gone when the block ends, whether it returned or raised.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def repeating(
    action: Callable[[], None], period: float, name: str, *, at_once: bool = False
) -> Iterator[None]:
    """Call ``action`` every ``period`` seconds on a daemon thread named ``name`` while
    the block runs (first at once with ``at_once``, else after a period); the thread
    is stopped and joined when the block ends. ``action`` handles its own errors."""
    done = threading.Event()

    def repeat() -> None:
        if at_once:
            action()
        while not done.wait(period):
            action()

    thread = threading.Thread(target=repeat, name=name, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
