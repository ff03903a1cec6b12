"""Stores and ``os.fork()``: a fork waits, boundedly, for transactions in other threads.

Why a store cares: a child inherits the parent's memory, including a transaction
another thread had half done and, for SQLite, the locks SQLite keeps in process memory
(a child forked inside a write transaction could never write the file again). So the
fork hook takes each store's transaction locks first and releases them on both sides
(the forking thread holds them, and it is the child's only thread). Why bounded: a
transaction stuck on a hung store must not hang the fork (a gunicorn master spawning a
worker) for ever; past the store's bound the fork goes on with a warning, and the
child replaces that store's locks, which a thread it does not have holds.

Shared by the backends, which only say which locks to hold and for how long.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Sequence
from typing import Protocol

log = logging.getLogger("gso_analytics")


class ForkSafe(Protocol):
    """A store whose locks a fork holds (see the module docstring)."""

    def fork_locks(self) -> Sequence[threading.Lock | threading.RLock]:
        """The locks to take before a fork, in order (a transaction holds them)."""
        ...

    def fork_wait(self) -> float:
        """Seconds a fork waits for each lock at most."""
        ...

    def after_fork_in_child(self, new_locks: bool) -> None:
        """Forget the parent's connections; with ``new_locks``, replace the locks too
        (the fork did not get them)."""
        ...


_owners: weakref.WeakSet[ForkSafe] = weakref.WeakSet()
_held: list[threading.Lock | threading.RLock] = []
_not_held: list[ForkSafe] = []


def register(owner: ForkSafe) -> None:
    """Hold ``owner``'s locks across every fork of this process from now on."""
    _owners.add(owner)


def _before_fork() -> None:
    for owner in list(_owners):
        for lock in owner.fork_locks():
            if not lock.acquire(timeout=owner.fork_wait()):
                _not_held.append(owner)
                log.warning(
                    "gso_analytics: forking while %r has had a transaction open for over"
                    " %.1fs; the child may be unable to write to it",
                    owner,
                    owner.fork_wait(),
                )
                break
            _held.append(lock)


def _release() -> None:
    _not_held.clear()
    while _held:
        _held.pop().release()


def _after_fork_in_child() -> None:
    # Connections first: a thread the child started (a flush thread) waits on a held
    # lock until the release below, and then finds none of the parent's.
    for owner in list(_owners):
        owner.after_fork_in_child(new_locks=owner in _not_held)
    _release()


os.register_at_fork(
    before=_before_fork, after_in_parent=_release, after_in_child=_after_fork_in_child
)
