"""Stores written by earlier versions, brought to this one when opened."""

from __future__ import annotations

import logging

from .connection import DUPLICATE_KEY
from .indexes import Indexes
from .options import pymongo

log = logging.getLogger("gso_analytics")


def upgrade_pairing_sessions(store: Indexes) -> None:
    """Stores written before sessions were computed from marks (up to 0.1 of
    2026-11-25) get a logout mark for each session a logout closed and for each
    logout still waiting for its login, and lose the pairing fields those versions
    kept. Idempotent (marks are keyed by the session or pending logout), so
    processes opening the store at once may all run it."""
    driver = pymongo()
    pending = f"{store.prefix}pending_logouts"
    if pending not in store._db().list_collection_names():
        return
    log.info("gso_analytics: upgrading %s sessions to login/logout marks", store.where)
    sessions = store._collection("sessions")
    marks = [
        {
            "_id": f"{doc['_id']}-logout",
            "userId": doc["userId"],
            "at": doc["logoutAt"],
            "origin": doc["_id"],
            "seq": 1,
        }
        for doc in sessions.find(
            {"open": False, "timedOut": False, "reloginBy": None},
            {"userId": 1, "logoutAt": 1},
        )
    ]
    marks += [
        {
            "_id": f"pending-{doc['_id']}",
            "userId": doc["userId"],
            "at": doc["logoutAt"],
            "origin": "pending",
            "seq": 0,
        }
        for doc in store._db()[pending].find({"takenBy": ""})
    ]
    if marks:
        try:
            store._collection("logouts").insert_many(marks, ordered=False)
        except driver.errors.BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if exc.details.get("writeConcernErrors") or any(
                e.get("code") != DUPLICATE_KEY for e in errors
            ):
                raise
            # Duplicates only: another process upgrading at the same time.
    sessions.update_many(
        {},
        {
            "$unset": {
                field: ""
                for field in (
                    "closedBy",
                    "reloginBy",
                    "correctedBy",
                    "reloginLogoutAt",
                    "reloginDurationS",
                )
            }
        },
    )
    store._db().drop_collection(pending)


def upgrade_sessions_to_activity(store: Indexes) -> None:
    """Sessions of 0.2 get their last mark (``lastAt``): an open one its login (it goes
    on under the activity rules), a closed one its end, and ``frozen`` (kept as it is,
    see :mod:`gso_analytics.sessions`). Idempotent: only sessions without ``lastAt``
    are touched, each with values of its own fields. Each document is replaced whole,
    as the batches write them (a ``$set`` turns dates into strings on nx-27017)."""
    driver = pymongo()
    sessions = store._collection("sessions")
    ops = [
        driver.ReplaceOne(
            {"_id": doc["_id"], "userId": doc["userId"]},
            {
                **doc,
                "lastAt": doc["logoutAt"] if doc.get("logoutAt") else doc["loginAt"],
                "frozen": doc.get("logoutAt") is not None,
            },
        )
        for doc in sessions.find({"lastAt": {"$exists": False}})
    ]
    if ops:
        log.info("gso_analytics: upgrading %d sessions of %s", len(ops), store.where)
        sessions.bulk_write(ops, ordered=False)
