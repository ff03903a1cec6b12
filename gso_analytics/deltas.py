"""Shared figures as insert-only deltas, folded later: the roll-up's arithmetic.

Why: a batch that adds to a day's counters, a month's and the all-time totals by
updating them makes those records the one thing every worker's transaction writes,
so every two workers' transactions conflict (MongoDB, PostgreSQL under REPEATABLE
READ) or wait for each other. Instead a batch part stores its increments as a
*delta* of its own, in the record that already guards it exactly once; a roll-up
folds deltas into the day, month and totals records later, in transactions of its own,
and a read adds the deltas not folded yet to the folded figures in one snapshot, so
every figure is exact however far behind the roll-up is.

A delta is ``{"daily": {day: {"month": month, "inc": {field: amount}}}, "monthly":
{month: {field: amount}}}``, JSON-ready. The backends only store, find and mark them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .conflicts import Conflict
from .counters import add_capped
from .errors import StoreError
from .model import DailyStats, Number
from .store import total_increments

log = logging.getLogger("gso_analytics")

#: day -> (month, field -> amount); month -> field -> amount; field -> amount.
Sums = tuple[
    dict[str, tuple[str, dict[str, Number]]], dict[str, dict[str, Number]], dict[str, Number]
]


class DeltaBuffer:
    """The increments one transaction makes (its :meth:`Transaction.increment_daily`
    and :meth:`~Transaction.increment_monthly` calls), kept until its commit writes
    them as one delta."""

    def __init__(self) -> None:
        self.daily: dict[str, tuple[str, dict[str, Number]]] = {}
        self.monthly: dict[str, dict[str, Number]] = {}

    def add_daily(self, day: str, month: str, increments: Mapping[str, Number]) -> None:
        add_capped(self.daily.setdefault(day, (month, {}))[1], increments)

    def add_monthly(self, month: str, increments: Mapping[str, Number]) -> None:
        add_capped(self.monthly.setdefault(month, {}), increments)

    def __bool__(self) -> bool:
        return bool(self.daily or self.monthly)

    def document(self) -> dict[str, Any]:
        """The delta as stored. Zeros are kept: a day whose only counter is a valid
        amount of 0 exists on every store."""
        daily = self.daily.items()
        return {
            "daily": {day: {"month": month, "inc": dict(f)} for day, (month, f) in daily},
            "monthly": {month: dict(f) for month, f in self.monthly.items()},
        }


def add_up(deltas: Iterable[Mapping[str, Any]]) -> Sums:
    """The day, month and all-time increments of ``deltas`` added up (the totals as
    :func:`~gso_analytics.store.total_increments` makes them: only ever growing)."""
    daily: dict[str, tuple[str, dict[str, Number]]] = {}
    monthly: dict[str, dict[str, Number]] = {}
    totals: dict[str, Number] = {}
    for delta in deltas:
        for day, entry in (delta.get("daily") or {}).items():
            add_capped(daily.setdefault(day, (entry["month"], {}))[1], entry["inc"])
            add_capped(totals, total_increments(entry["inc"]))
        for month, fields in (delta.get("monthly") or {}).items():
            add_capped(monthly.setdefault(month, {}), fields)
            add_capped(totals, total_increments(fields))
    return daily, monthly, totals


def plus(*parts: Mapping[str, Number]) -> dict[str, Number]:
    """Counters added field by field, each held at
    :data:`~gso_analytics.counters.MAX_COUNTER`: a folded record and what is pending
    for it (so a read is what the roll-up will store)."""
    return plus_counting(*parts)[0]


def plus_counting(*parts: Mapping[str, Number]) -> tuple[dict[str, Number], int]:
    """:func:`plus`, and how many positive increments the ceiling cut."""
    total: dict[str, Number] = {}
    cut = 0
    for part in parts:
        cut += add_capped(total, part)
    return total, cut


def capped_increments(
    stored: Mapping[str, Number] | None, increments: Mapping[str, Number]
) -> tuple[dict[str, Number], int]:
    """The increments (MongoDB's ``$inc``) that take the fields of ``stored`` to their
    sums with ``increments`` held at the ceiling (:func:`plus`), and how many positive
    increments the ceiling cut. For a store whose only atomic arithmetic is an
    uncapped add: the stored figures read in the same transaction, the write stays an
    add."""
    now = {field: (stored or {}).get(field, 0) for field in increments}
    capped, cut = plus_counting(now, increments)
    return {field: capped[field] - now[field] for field in increments}, cut


def days_with_pending(
    folded: Mapping[str, tuple[str, Mapping[str, Number]]],
    pending: Mapping[str, tuple[str, Mapping[str, Number]]],
    keep: Any,
    limit: int = 0,
) -> list[DailyStats]:
    """The days of ``folded`` (day -> (month, counters)) with the pending increments
    added, and the days only pending ones have that ``keep(day)`` accepts; newest first,
    at most ``limit`` (0: all)."""
    days = sorted(set(folded) | {d for d in pending if keep(d)}, reverse=True)
    if limit:
        days = days[:limit]
    found = []
    for day in days:
        month, counters = folded[day] if day in folded else (pending[day][0], {})
        extra = pending[day][1] if day in pending else {}
        found.append(DailyStats(day, month, plus(counters, extra)))
    return found


def fold_all(fold_chunk: Callable[[], int | None], chunk: int, where: str) -> int:
    """Run ``fold_chunk`` (one transaction folding at most ``chunk`` deltas; it returns
    how many, or None or :class:`~.conflicts.Conflict` when another process is folding)
    until a chunk falls short; return how many were folded. Another roller means this
    one stops, leaving the rest to it. A store error, or a sum past the 64-bit integers
    (a driver refusing it before sending, see docs/bad-input.md), is logged, not
    raised: the batch (or the prune) the roll-up follows is done, reads are exact
    without it, and the next flush or prune tries again."""
    folded = 0
    try:
        while True:
            done = fold_chunk()
            if done is None:
                return folded
            folded += done
            if done < chunk:
                return folded
    except Conflict:
        return folded
    except (StoreError, OverflowError) as exc:
        log.warning(
            "gso_analytics: folding deltas on %s failed (%s); the next flush or prune retries",
            where,
            exc,
        )
        return folded
