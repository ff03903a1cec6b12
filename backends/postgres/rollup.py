"""The shared figures (``daily``, ``monthly``, ``totals``) as folded deltas (see
:mod:`gso_analytics.deltas`).

The roll-up runs in the flush thread after a batch and in the prune job, in small
READ COMMITTED transactions of its own: each takes a transaction-level advisory lock
of the schema's roll-up (without waiting: a process that does not get it leaves the
folding to the one that has it), reads a few hundred unfolded deltas, adds them to the
day, month and all-time rows in Python (so a counter adds as on every store: integers
exactly, floats as Python adds them) and marks them folded. Only the roller writes
those rows, one at a time, so no batch ever waits for them.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from gso_analytics.deltas import add_up, fold_all, plus, plus_counting

from .options import psycopg
from .schema import lock_key

if TYPE_CHECKING:
    from .store import PostgresStore


#: Deltas folded per roll-up transaction.
FOLD_CHUNK = 200
TOTALS_ID = "all"

#: The oldest unfolded deltas and the folded rows they add to, in one statement (one
#: snapshot, taken after the roll-up's lock: see :func:`_fold_chunk`).
_READ = """
WITH picked AS (
    SELECT id, delta, applied_at FROM {s}.batches
    WHERE NOT folded ORDER BY applied_at LIMIT %(chunk)s)
SELECT 'delta', id, delta, applied_at FROM picked
UNION ALL SELECT 'day', day, counters, NULL FROM {s}.daily
    WHERE day IN (SELECT jsonb_object_keys(delta->'daily') FROM picked)
UNION ALL SELECT 'month', month, counters, NULL FROM {s}.monthly
    WHERE month IN (SELECT jsonb_object_keys(delta->'monthly') FROM picked)
UNION ALL SELECT 'total', id, counters, NULL FROM {s}.totals
    WHERE id = %(totals)s AND EXISTS (SELECT FROM picked)
"""

#: The new day, month and all-time rows written and the deltas marked folded, in one
#: statement (each ``WITH`` runs to completion; the four tables are distinct).
_WRITE = """
WITH days AS (
    INSERT INTO {s}.daily (day, month, counters)
    SELECT * FROM unnest(%(days)s::text[], %(months_of_days)s::text[], %(day_counters)s::jsonb[])
    ON CONFLICT (day) DO UPDATE SET counters = excluded.counters),
months AS (
    INSERT INTO {s}.monthly (month, counters)
    SELECT * FROM unnest(%(months)s::text[], %(month_counters)s::jsonb[])
    ON CONFLICT (month) DO UPDATE SET counters = excluded.counters),
totals AS (
    INSERT INTO {s}.totals (id, counters)
    SELECT %(totals)s, %(total_counters)s::jsonb WHERE %(total_counters)s::jsonb IS NOT NULL
    ON CONFLICT (id) DO UPDATE SET counters = excluded.counters)
UPDATE {s}.batches SET folded = true, delta = NULL WHERE id = ANY(%(ids)s::text[])
"""


def _fold_chunk(store: PostgresStore) -> int | None:
    """Fold up to :data:`FOLD_CHUNK` deltas, oldest first, in one transaction; None
    when another process holds the roll-up.

    Three statements, sent in two round trips (a pipeline: the lock and the read go
    together, the write and the commit together). The lock is a statement of its own,
    before the read: under READ COMMITTED a statement's snapshot is taken when it
    starts, so a read that took the lock itself could see the figures as they were
    before the previous roller's commit, and write them back without that roller's
    deltas. When the lock is not got, the read's rows are thrown away."""
    s = store.schema
    with store._connection("folding deltas into the day and month figures") as conn:
        conn.isolation_level = psycopg().IsolationLevel.READ_COMMITTED
        with conn.pipeline(), conn.transaction():
            cur = conn.cursor()
            lock = cur.execute(
                "SELECT pg_try_advisory_xact_lock(hashtext(%s))", (lock_key(s, "rollup"),)
            )
            read = conn.cursor().execute(
                _READ.format(s=s), {"chunk": FOLD_CHUNK, "totals": TOTALS_ID}
            )
            if not lock.fetchone()[0]:
                return None
            found: dict[str, list[Any]] = {"delta": [], "day": [], "month": [], "total": []}
            for kind, key, value, at in read.fetchall():
                found[kind].append((at, key, value))
            if not found["delta"]:
                return 0
            deltas = sorted(found["delta"])
            daily, monthly, totals = add_up(delta for _, _, delta in deltas)
            now = {kind: {key: value for _, key, value in found[kind]} for kind in found}
            days, months = sorted(daily), sorted(monthly)
            total, cut = None, 0
            if totals:
                summed, cut = plus_counting(now["total"].get(TOTALS_ID, {}), totals)
                total = json.dumps(summed)
            cur.execute(
                _WRITE.format(s=s),
                {
                    "days": days,
                    "months_of_days": [daily[day][0] for day in days],
                    "day_counters": [
                        json.dumps(plus(now["day"].get(day, {}), daily[day][1])) for day in days
                    ],
                    "months": months,
                    "month_counters": [
                        json.dumps(plus(now["month"].get(m, {}), monthly[m])) for m in months
                    ],
                    "totals": TOTALS_ID,
                    "total_counters": total,
                    "ids": [key for _, key, _ in deltas],
                },
            )
        store.count_saturated(cut)
        return len(deltas)


def roll_up(store: PostgresStore) -> int:
    """Fold every delta not folded yet, a chunk per transaction, unless another process
    is folding (:func:`~gso_analytics.deltas.fold_all`: errors logged, not raised)."""
    return fold_all(lambda: _fold_chunk(store), FOLD_CHUNK, store.where)
