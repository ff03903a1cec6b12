"""Erasing a player on MongoDB, replica set or sharded cluster.

Where a player's id is part of a shard key (``userId`` leads the keys of the per-user
collections), changing it in place is refused on a sharded cluster, so a record is
*moved*: the token's record is upserted (merged into one that exists, as the other
stores merge) and the player's deleted, in one transaction. An erase runs in bounded
transactions: first the tombstone alone, then chunks of at most :data:`ERASE_CHUNK`
records per collection until a chunk finds nothing; each chunk is idempotent.

The fence against a batch of the same player applied meanwhile costs the batches
nothing shared: a part reads the tombstones of its players in its snapshot (an erase
committed before is always seen, and the part renames its writes), and, after its
commit, looks once more for tombstones of the players it wrote under their real ids.
An erase whose tombstone committed while the part ran is found there, and the part's
process moves the records itself. Either the part committed before the erase's
chunks began (they see its records) or after the tombstone committed (its check sees
the tombstone), so no record is left under the real id. One window stays: a process
killed between its commit and its check leaves that part's records under the real id;
a retry of the batch (the same process after a lost connection) runs the check again,
and erasing the player again finds what is left.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gso_analytics.deltas import capped_increments

from .documents import FIRST_DAYS
from .options import READ_TIMEOUT_MS, pymongo

if TYPE_CHECKING:
    from .connection import Connection

#: Records moved per collection in one erase transaction.
ERASE_CHUNK = 1000
#: The (user, key) records: collection -> the key beside ``userId``.
_KEYED = {"day_users": "day", "month_users": "month"}
#: Records keyed by their own ``_id`` that carry ``userId`` (moved with the same id).
_MARKS = ("sessions", "logouts", "activity")


def rename_chunk(store: Connection, s: Any, user: str, token: str) -> dict[str, int]:
    """Move at most :data:`ERASE_CHUNK` records of each collection from ``user`` to
    ``token``, in the transaction of session ``s``; per collection, how many moved."""
    driver = pymongo()

    def mine(name: str, fields: Any = None) -> list[Any]:
        cursor = store._collection(name).find(
            {"userId": user}, fields, session=s, max_time_ms=READ_TIMEOUT_MS
        )
        return list(cursor.limit(ERASE_CHUNK))

    def send(name: str, ops: list[Any]) -> None:
        if ops:
            store._collection(name).bulk_write(ops, ordered=True, session=s)

    counts: dict[str, int] = {}
    for name, key in _KEYED.items():
        docs = mine(name, {key: 1, "batchId": 1})
        ops: list[Any] = []
        for doc in docs:
            ops.append(driver.DeleteOne({"_id": doc["_id"]}))
            ops.append(
                driver.UpdateOne(
                    {"userId": token, key: doc[key]},
                    {"$setOnInsert": {"batchId": doc.get("batchId")}},
                    upsert=True,
                )
            )
        send(name, ops)
        counts[name] = len(docs)
    docs = mine("user_revenue", {"day": 1, "revenueCents": 1})
    found = store._collection("user_revenue").find(
        {"userId": token, "day": {"$in": [doc["day"] for doc in docs]}},
        session=s,
        max_time_ms=READ_TIMEOUT_MS,
    )
    tokens = {doc["day"]: doc for doc in found}
    ops = []
    for doc in docs:
        merged, _ = capped_increments(
            tokens.get(doc["day"]), {"revenueCents": doc.get("revenueCents", 0)}
        )
        ops.append(driver.DeleteOne({"_id": doc["_id"]}))
        ops.append(
            driver.UpdateOne({"userId": token, "day": doc["day"]}, {"$inc": merged}, upsert=True)
        )
    send("user_revenue", ops)
    counts["user_revenue"] = len(docs)
    for name, player in FIRST_DAYS.items():  # the earliest day kept, as the other stores
        facts = store._collection(name)
        found = facts.find_one({player: user}, session=s, max_time_ms=READ_TIMEOUT_MS)
        counts[name] = 0
        if found is not None:
            facts.delete_one({"_id": found["_id"]}, session=s)
            facts.update_one(
                {player: token}, {"$min": {"day": found["day"]}}, upsert=True, session=s
            )
            counts[name] = 1
    for name in _MARKS:
        docs = mine(name)
        ops = []
        for doc in docs:
            moved = {**doc, "userId": token}
            moved.pop("username", None)
            ops.append(driver.DeleteOne({"_id": doc["_id"], "userId": user}))
            ops.append(driver.ReplaceOne({"_id": doc["_id"], "userId": token}, moved, upsert=True))
        send(name, ops)
        counts[name] = len(docs)
    gone = store._collection("session_users").delete_one({"_id": user}, session=s)
    counts["session_users"] = int(gone.deleted_count)
    return counts
