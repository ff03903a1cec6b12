"""The shared figures (``daily``, ``monthly``, ``totals``) as folded deltas.

No batch's transaction writes a document every worker writes: each part inserts its
own delta (its ``batches`` document, see :mod:`.batch`). The roll-up folds deltas into
the day, month and all-time documents, in small transactions of its own (each reads a
few hundred deltas not folded yet, adds them up, ``$inc``s the figures and marks the
deltas folded), run in the flush thread after a batch and by the prune job. Two
rollers at once conflict on those documents and one gives up: the other folds. A read
adds, in one snapshot, the folded figures and the deltas not folded yet, so every
figure is exact at any moment, however far behind the roll-up is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gso_analytics.conflicts import Conflict
from gso_analytics.deltas import add_up, capped_increments, fold_all

from .connection import Connection
from .options import READ_TIMEOUT_MS, pymongo

if TYPE_CHECKING:
    from .store import MongoStore

#: Deltas folded per roll-up transaction: a few hundred small documents, a few
#: milliseconds of work, far under any transaction limit.
FOLD_CHUNK = 200
TOTALS_ID = "all"


def unfolded(store: Connection, session: Any, fields: dict[str, int] | None = None) -> list[Any]:
    """The deltas not folded yet, in ``session``'s snapshot."""
    found = store._collection("batches").find(
        {"folded": False},
        fields or {"daily": 1, "monthly": 1},
        session=session,
        max_time_ms=READ_TIMEOUT_MS,
    )
    return list(found)


def _fold_chunk(store: MongoStore) -> int:
    """Fold up to :data:`FOLD_CHUNK` deltas, oldest first, in one transaction.

    The figures they add to are read in the same transaction and each ``$inc`` is cut
    where the sum would pass :data:`~gso_analytics.counters.MAX_COUNTER` (a read and a
    write of one snapshot: a roller that folded meanwhile makes this one conflict)."""
    driver = pymongo()
    cut = 0
    with store._session_transaction("folding deltas into the day and month figures") as s:
        batches = store._collection("batches")
        docs = list(
            batches.find(
                {"folded": False},
                {"daily": 1, "monthly": 1},
                session=s,
                max_time_ms=READ_TIMEOUT_MS,
            )
            .sort("appliedAt", 1)
            .limit(FOLD_CHUNK)
        )
        if not docs:
            return 0
        daily, monthly, totals = add_up(docs)

        def stored(name: str, key: str, keys: list[str]) -> dict[str, Any]:
            found = store._collection(name).find(
                {key: {"$in": keys}}, session=s, max_time_ms=READ_TIMEOUT_MS
            )
            return {doc[key]: doc for doc in found}

        days = stored("daily", "day", sorted(daily))
        ops = [
            driver.UpdateOne(
                {"day": day},
                {"$inc": inc, "$setOnInsert": {"month": month}},
                upsert=True,
            )
            for day, (month, fields) in sorted(daily.items())
            if fields
            for inc in [capped_increments(days.get(day), fields)[0]]
        ]
        if ops:
            store._collection("daily").bulk_write(ops, ordered=False, session=s)
        months = stored("monthly", "month", sorted(monthly))
        ops = [
            driver.UpdateOne({"month": month}, {"$inc": inc}, upsert=True)
            for month, fields in sorted(monthly.items())
            if fields
            for inc in [capped_increments(months.get(month), fields)[0]]
        ]
        if ops:
            store._collection("monthly").bulk_write(ops, ordered=False, session=s)
        if totals:
            collection = store._collection("totals")
            now = collection.find_one({"_id": TOTALS_ID}, session=s, max_time_ms=READ_TIMEOUT_MS)
            increments, cut = capped_increments(now, totals)
            collection.update_one({"_id": TOTALS_ID}, {"$inc": increments}, upsert=True, session=s)
        ids = [doc["_id"] for doc in docs]
        marked = batches.update_many(
            {"_id": {"$in": ids}, "folded": False},
            {"$set": {"folded": True}, "$unset": {"daily": "", "monthly": ""}},
            session=s,
        )
        if marked.modified_count != len(ids):  # a stand-in without isolation; never MongoDB
            raise Conflict(f"MongoDB {store.where}: deltas folded by another roller meanwhile")
    store.count_saturated(cut)
    return len(ids)


def roll_up(store: MongoStore) -> int:
    """Fold every delta not folded yet, a chunk per transaction, unless another process
    is folding (:func:`~gso_analytics.deltas.fold_all`: errors logged, not raised)."""
    return fold_all(lambda: _fold_chunk(store), FOLD_CHUNK, store.where)
