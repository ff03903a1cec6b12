"""Transactions that lose to a concurrent one, and the loop that runs them again.

Stores whose transactions are snapshots (MongoDB, PostgreSQL under REPEATABLE READ)
resolve two writers of one record by first-updater-wins: the later one fails and must
start over from a fresh snapshot. A backend translates its driver's word for that
(MongoDB's ``TransientTransactionError``, PostgreSQL's SQLSTATE 40001 and 40P01) into
:class:`Conflict`; :func:`until_no_conflict` runs the attempt again with backoff.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

from .errors import StoreError

_T = TypeVar("_T")


class Conflict(StoreError):
    """A transaction lost to a concurrent one (a write conflict, a serialization
    failure, a deadlock, a unique key another transaction inserted first); running it
    again resolves it."""


class Backoff:
    """Exponential backoff with jitter inside a time budget, between the attempts of a
    retry loop: at once a few milliseconds, so a lost conflict is redone quickly, then
    up to half a second, so many workers retrying do not collide again in step."""

    def __init__(self, budget_s: float) -> None:
        self.deadline = time.monotonic() + budget_s
        self.delay = 0.005

    def sleep(self) -> bool:
        """Wait before the next attempt; False, without waiting, once the budget is spent."""
        pause = self.delay * random.uniform(0.5, 1.0)
        if time.monotonic() + pause >= self.deadline:
            return False
        time.sleep(pause)
        self.delay = min(self.delay * 2, 0.5)
        return True


def until_no_conflict(attempt: Callable[[], _T], budget_s: float) -> _T:
    """``attempt()``, run again after a short backoff while it raises :class:`Conflict`,
    within ``budget_s`` seconds (then the last conflict is raised: the flusher keeps
    the batch and tries later)."""
    backoff = Backoff(budget_s)
    while True:
        try:
            return attempt()
        except Conflict:
            if not backoff.sleep():
                raise
