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

from gso_analytics.deltas import add_up, fold_all, plus

from .options import psycopg
from .schema import lock_key

if TYPE_CHECKING:
    from .connection import Connection


#: Deltas folded per roll-up transaction.
FOLD_CHUNK = 200
TOTALS_ID = "all"


def _counters(cur: Any, sql: str, keys: list[str]) -> dict[str, Any]:
    return {key: counters for key, counters in cur.execute(sql, (keys,))}


def _fold_chunk(store: Connection) -> int | None:
    """Fold up to :data:`FOLD_CHUNK` deltas, oldest first, in one transaction; None
    when another process holds the roll-up."""
    s = store.schema
    with store._connection("folding deltas into the day and month figures") as conn:
        conn.isolation_level = psycopg().IsolationLevel.READ_COMMITTED
        with conn.transaction():
            cur = conn.cursor()
            got = cur.execute(
                "SELECT pg_try_advisory_xact_lock(hashtext(%s))", (lock_key(s, "rollup"),)
            ).fetchone()[0]
            if not got:
                return None
            rows = cur.execute(
                f"SELECT id, delta FROM {s}.batches WHERE NOT folded ORDER BY applied_at LIMIT %s",
                (FOLD_CHUNK,),
            ).fetchall()
            if not rows:
                return 0
            daily, monthly, totals = add_up(delta for _, delta in rows)
            days = sorted(daily)
            now = _counters(cur, f"SELECT day, counters FROM {s}.daily WHERE day = ANY(%s)", days)
            cur.executemany(
                f"INSERT INTO {s}.daily (day, month, counters) VALUES (%s, %s, %s)"
                " ON CONFLICT (day) DO UPDATE SET counters = excluded.counters",
                [
                    (day, daily[day][0], json.dumps(plus(now.get(day, {}), daily[day][1])))
                    for day in days
                ],
            )
            months = sorted(monthly)
            now = _counters(
                cur, f"SELECT month, counters FROM {s}.monthly WHERE month = ANY(%s)", months
            )
            cur.executemany(
                f"INSERT INTO {s}.monthly (month, counters) VALUES (%s, %s)"
                " ON CONFLICT (month) DO UPDATE SET counters = excluded.counters",
                [(m, json.dumps(plus(now.get(m, {}), monthly[m]))) for m in months],
            )
            if totals:
                now = _counters(
                    cur, f"SELECT id, counters FROM {s}.totals WHERE id = ANY(%s)", [TOTALS_ID]
                )
                cur.execute(
                    f"INSERT INTO {s}.totals (id, counters) VALUES (%s, %s)"
                    " ON CONFLICT (id) DO UPDATE SET counters = excluded.counters",
                    (TOTALS_ID, json.dumps(plus(now.get(TOTALS_ID, {}), totals))),
                )
            cur.execute(
                f"UPDATE {s}.batches SET folded = true, delta = NULL WHERE id = ANY(%s)",
                ([row[0] for row in rows],),
            )
            return len(rows)


def roll_up(store: Connection) -> int:
    """Fold every delta not folded yet, a chunk per transaction, unless another process
    is folding (:func:`~gso_analytics.deltas.fold_all`: errors logged, not raised)."""
    return fold_all(lambda: _fold_chunk(store), FOLD_CHUNK, store.where)
