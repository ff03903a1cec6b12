"""Waiting for a condition in tests: poll it, never sleep a guessed time.

A background thread or another process does the work; the test waits until the
state it expects shows, and only fails after a generous deadline (the machines are
shared and slow at times), so a passing test takes as long as the work and no more.
"""

from __future__ import annotations

import time
from collections.abc import Callable

DEADLINE_S = 20.0


def wait_for(condition: Callable[[], bool], timeout: float = DEADLINE_S) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` passes; return its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.005)
    return condition()
