"""The per-player records this process's committed batches stored, so a batch skips
writing them again: the (day, player) and (month, player) activity records and the
players' first-seen days.

Why: a worker flushing every second sees mostly the same players in flush after
flush, and each of them costs the store one (day, user) record, one (month, user)
record and one first-seen record per batch, written again and found there (a
statement per table, an index probe per row, a round trip per count). Once a batch
that wrote them has committed, they stay: what a later batch would write changes
nothing (``INSERT ... ON CONFLICT DO NOTHING`` adds no row and counts the player as
not new; an earliest first-seen day that is not earlier keeps the stored one).
Skipping them keeps every figure exact as long as the record really is stored, which
is what the rules below keep true:

- Remembered only after the transaction that wrote them committed (:meth:`Store.apply`
  calls :meth:`StoredRows.remember` with what the part's attempt wrote, an
  :class:`Attempt` made afresh for each try): a part that failed, or lost a conflict
  and ran again, or whose outcome is unknown, has remembered nothing, so its retry
  writes its records again (exactly once still comes from the batch id: a retry of a
  committed part is a duplicate and writes nothing).
- Nothing deletes these records but an erase (no prune touches them: ``dau`` and
  ``mau`` are counts of them). An erase moves the player's records to a token and
  leaves a tombstone, which stays for good. A batch looks its players' tombstones up
  in the transaction that writes their records, before it asks what is stored (its
  erased players are renamed to their tokens first, and the questions are then about
  the tokens): an erase committed before the batch's snapshot is seen, so the
  player's id is asked about no more; an erase committing while the batch runs
  conflicts with it on the player (PostgreSQL's fence, SQLite's single writer, the
  memory store's lock) and the batch runs again and sees it, or, on MongoDB, the
  batch's process moves what it wrote afterwards, and a skipped record is one it did
  not write. So a remembered record of a player erased in another process is never
  the reason a record is missing. An erase through this store forgets everything
  anyway (rare, and simpler to trust).
- Forgotten whenever the store could have lost them: a batch that failed (a
  connection lost may be a failover), a new connection of a store to a server that
  may be another one (PostgreSQL: a standby promoted may lack the last commits), a
  fork (the child's store is its own: see :func:`_forget_in_child`).
- Bounded: the newest :data:`KEPT_PERIODS` days and months, and at most
  :data:`STORED_ROWS_LIMIT` records in all; past that everything is forgotten (a
  batch then writes its records again, which is always right).

Per store object: two stores of one process (or of two) each keep their own.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Mapping

#: Days (and months) whose records are remembered: the newest ones. Two: a batch
#: around midnight (or a month's end) carries the day before and the new one.
KEPT_PERIODS = 2
#: The most records remembered in all (about 100 bytes each); past it, all forgotten.
STORED_ROWS_LIMIT = 200_000


class Attempt:
    """One attempt at a batch part: asks what is stored already, and collects what it
    writes, remembered once (and only if) its transaction commits."""

    def __init__(self, known: StoredRows | None) -> None:
        self._known = known
        self.days: dict[str, set[str]] = {}
        self.months: dict[str, set[str]] = {}
        self.first_seen: dict[str, str] = {}

    def day_users(self, day: str, users: set[str]) -> set[str]:
        """The (day, user) records of ``users`` to write (those not known stored)."""
        new = users if self._known is None else self._known.unknown("days", day, users)
        if new:
            self.days.setdefault(day, set()).update(new)
        return new

    def month_users(self, month: str, users: set[str]) -> set[str]:
        """As :meth:`day_users`, for (month, user) records."""
        new = users if self._known is None else self._known.unknown("months", month, users)
        if new:
            self.months.setdefault(month, set()).update(new)
        return new

    def first_seen_days(self, first_days: Mapping[str, str]) -> dict[str, str]:
        """The first-seen days to write: those earlier than the day known stored (the
        store keeps the earliest, so a later or equal day changes nothing)."""
        new = dict(first_days) if self._known is None else self._known.earlier(first_days)
        self.first_seen.update(new)
        return new


class StoredRows:
    """What this store's committed batches wrote (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.days: dict[str, set[str]] = {}
        self.months: dict[str, set[str]] = {}
        self.first_seen: dict[str, str] = {}
        _all.add(self)

    def attempt(self) -> Attempt:
        """A new attempt at a batch part, asking this store."""
        return Attempt(self)

    def __len__(self) -> int:
        return (
            sum(map(len, self.days.values()))
            + sum(map(len, self.months.values()))
            + len(self.first_seen)
        )

    def unknown(self, kind: str, key: str, users: set[str]) -> set[str]:
        """Those of ``users`` without a remembered (``key``, user) record of ``kind``
        (``"days"`` or ``"months"``)."""
        with self._lock:
            known = getattr(self, kind).get(key)
            return users if not known else users - known

    def earlier(self, first_days: Mapping[str, str]) -> dict[str, str]:
        """The entries of ``first_days`` earlier than the first-seen day remembered."""
        with self._lock:
            known = self.first_seen
            return {
                user: day
                for user, day in first_days.items()
                if user not in known or day < known[user]
            }

    def remember(self, written: Attempt) -> None:
        """After the commit of the transaction ``written`` was an attempt in."""
        with self._lock:
            for mine, theirs in ((self.days, written.days), (self.months, written.months)):
                for key, users in theirs.items():
                    mine.setdefault(key, set()).update(users)
                for old in sorted(mine)[:-KEPT_PERIODS]:
                    del mine[old]
            known = self.first_seen
            for user, day in written.first_seen.items():
                if user not in known or day < known[user]:
                    known[user] = day
            if len(self) > STORED_ROWS_LIMIT:
                self._clear()

    def forget(self) -> None:
        """Remember nothing: the next batches write their records again."""
        with self._lock:
            self._clear()

    def _clear(self) -> None:
        self.days, self.months, self.first_seen = {}, {}, {}


_all: weakref.WeakSet[StoredRows] = weakref.WeakSet()


def _forget_in_child() -> None:
    """A child process starts remembering nothing, with new locks (a thread of the
    parent may have held one at the fork): its stores are its own from now on (a
    memory store's copy, connections of its own), and what it writes it learns itself."""
    for rows in list(_all):
        rows._lock = threading.Lock()
        rows._clear()


os.register_at_fork(after_in_child=_forget_in_child)
