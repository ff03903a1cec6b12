"""Indexes, the event TTL and the collections, made before any transaction needs them.

Opening the store lists each collection's indexes; missing ones are built by one
process under a lease in ``locks`` while the others warn and start (waiting only for a
missing unique index, which exact counting needs), or not at all with
``createIndexes=false``, where a deploy step runs ``gso-analytics mongo-init``. Builds
use ``commitQuorum: "majority"`` where the deployment has voting members. Every
collection is created before the first transaction: creating one inside a transaction
fails on MongoDB before 4.4 and in cross-shard transactions.

The per-player unique keys lead with ``userId`` (``{userId: 1, day: 1}`` enforces the
same uniqueness as ``{day: 1, userId: 1}``), so they can be shard keys that spread a
day's inserts over every shard and send each player's records to one; the KPIs' day
ranges have indexes of their own. Stores of 0.2 had the day first: ``mongo-init``
migrates them (see :meth:`Indexes._migrate_from_0_2`). Registrations are one document
per player (``{userId: 1}`` unique): a store that kept one per (day, player) keeps each
player's earliest before that index is built (:meth:`Indexes._merge_registrations`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import uuid
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs

from gso_analytics.errors import ConfigurationError, StoreError
from gso_analytics.repeating import repeating

from .connection import Connection
from .options import READ_TIMEOUT_MS, majority, pymongo

log = logging.getLogger("gso_analytics")

#: The seed's event TTL; the index follows ``Analytics(event_ttl=...)`` at each prune.
DEFAULT_EVENT_TTL = timedelta(days=7)
#: The longest ``event_ttl`` a TTL index can hold: MongoDB keeps ``expireAfterSeconds``
#: in a 32-bit signed integer (2**31 - 1 seconds, about 68 years).
MAX_EVENT_TTL = timedelta(seconds=2**31 - 1)
#: How long a process building missing indexes holds the lease on them (a ``locks``
#: document), renewed while it builds: the others carry on meanwhile, and past it (the
#: builder died) the next process to open the store builds them.
INDEX_BUILD_LEASE = timedelta(minutes=10)
#: How long a process waits for a missing unique index another process builds.
UNIQUE_INDEX_WAIT = timedelta(seconds=10)
#: ``createIndexes`` with ``commitQuorum`` needs MongoDB 4.4 (wire version 9).
_COMMIT_QUORUM_WIRE_VERSION = 9
_INDEX_LEASE_ID = "indexes"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: Every collection of the store (without the prefix).
COLLECTIONS = (
    "batches",
    "daily",
    "monthly",
    "totals",
    "day_users",
    "month_users",
    "new_users",
    "user_revenue",
    "first_seen",
    "first_payments",
    "sessions",
    "logouts",
    "activity",
    "session_users",
    "events",
    "tombstones",
    "meta",
    "heartbeats",
    "locks",
)
#: Unique keys of earlier stores that the plan replaced, dropped by ``mongo-init``
#: (:meth:`Indexes._migrate_from_0_2`): 0.2's day-first keys (user-first since: a unique
#: index on a sharded collection must begin with the shard key), and the registrations
#: by (player, day) of 0.2 and the first 0.3 stores (one per player since).
_REPLACED_UNIQUE = (
    ("day_users", ("day", "userId")),
    ("new_users", ("day", "userId")),
    ("new_users", ("userId", "day")),
    ("user_revenue", ("day", "userId")),
    ("month_users", ("month", "userId")),
)
#: The registrations' unique key: one document per player.
_ONE_REGISTRATION = ("new_users", (("userId", 1),))


def _ttl_seconds(event_ttl: timedelta, ttl_index: bool) -> int:
    """``event_ttl`` in whole seconds, the TTL index's ``expireAfterSeconds``: refused
    here, with the limit named, rather than by the server in a background prune.
    Rounded up, so the index never expires an event the prune job would keep."""
    if event_ttl < timedelta(seconds=1):
        raise ConfigurationError(f"event_ttl must be at least one second, got {event_ttl}")
    if ttl_index and event_ttl > MAX_EVENT_TTL:
        limit = int(MAX_EVENT_TTL.total_seconds())
        raise ConfigurationError(
            f"event_ttl {event_ttl} is longer than MongoDB's TTL index can hold:"
            f" expireAfterSeconds is a 32-bit integer, at most {limit} seconds"
            f" ({MAX_EVENT_TTL.days} days); use a shorter TTL or ttlIndex=false"
        )
    return math.ceil(event_ttl.total_seconds())


def _index_key(spec: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple((field, direction) for field, direction in dict(spec["key"]).items())


@attrs.frozen
class _Index:
    """One index the store needs, on the collection ``name`` (without the prefix)."""

    name: str
    keys: tuple[tuple[str, int], ...]
    options: Mapping[str, Any] = attrs.field(factory=dict, hash=False)

    @property
    def unique(self) -> bool:
        """Exact counting depends on it: the store never writes without it."""
        return bool(self.options.get("unique"))

    def describe(self, prefix: str) -> str:
        """``gso_analytics_day_users {day: 1, userId: 1} unique``, for messages."""
        keys = ", ".join(f"{field}: {direction}" for field, direction in self.keys)
        flags = [flag for flag in ("unique", "expireAfterSeconds") if flag in self.options]
        shown = " ".join("TTL" if flag == "expireAfterSeconds" else flag for flag in flags)
        return f"{prefix}{self.name} {{{keys}}}" + (f" {shown}" if shown else "")


def _commit_quorum_possible(hello: Mapping[str, Any]) -> bool:
    """``commitQuorum`` needs 4.4, and a standalone server refuses it (no members)."""
    replicated = "setName" in hello or hello.get("msg") == "isdbgrid"
    return replicated and hello.get("maxWireVersion", 0) >= _COMMIT_QUORUM_WIRE_VERSION


class Indexes(Connection):
    """The index and collection half of :class:`~.store.MongoStore`."""

    prefix: str
    ttl_index: bool
    create_indexes: bool | None
    _commit_quorum: bool
    _synced_ttl: int | None

    def _index_plan(
        self, ttl_seconds: int
    ) -> list[tuple[str, list[tuple[str, int]], dict[str, Any]]]:
        """Every index the store's queries need: each read, write and erase is an index
        lookup or range, never a collection scan."""
        ts_options: dict[str, Any] = {"expireAfterSeconds": ttl_seconds} if self.ttl_index else {}
        unique = {"unique": True}
        open_only = {"partialFilterExpression": {"open": True}}
        return [
            ("daily", [("day", 1)], unique),
            ("daily", [("month", 1)], {}),
            ("monthly", [("month", 1)], unique),
            ("day_users", [("userId", 1), ("day", 1)], unique),
            ("day_users", [("day", 1), ("userId", 1)], {}),
            ("month_users", [("userId", 1), ("month", 1)], unique),
            ("new_users", [("userId", 1)], unique),
            ("user_revenue", [("userId", 1), ("day", 1)], unique),
            ("user_revenue", [("day", 1), ("userId", 1)], {}),
            ("first_seen", [("day", 1)], {}),
            ("first_payments", [("day", 1)], {}),
            ("sessions", [("userId", 1), ("loginAt", 1)], {}),
            ("sessions", [("userId", 1), ("lastAt", 1)], {}),
            ("sessions", [("open", 1), ("lastAt", 1)], open_only),
            ("sessions", [("open", 1), ("userId", 1)], open_only),
            ("sessions", [("day", 1)], {}),
            ("logouts", [("userId", 1), ("at", 1)], {}),
            ("logouts", [("at", 1)], {}),
            ("activity", [("userId", 1), ("lastAt", 1)], {}),
            ("activity", [("lastAt", 1)], {}),
            (
                "batches",
                [("folded", 1), ("appliedAt", 1)],
                {"partialFilterExpression": {"folded": False}},
            ),
            ("batches", [("appliedAt", 1)], {}),
            ("events", [("ts", 1)], ts_options),
            # Not {.., ts, _id}, which would let the sorts below skip their last step:
            # nx-27017 (the tests' server) cannot index _id in a compound key.
            ("events", [("userId", 1), ("ts", 1)], {}),
            ("events", [("event", 1), ("ts", 1)], {}),
            ("heartbeats", [("expiresAt", 1)], {}),
        ]

    def _existing_indexes(self, name: str) -> dict[tuple[tuple[str, Any], ...], dict[str, Any]]:
        """By key, not by name: names differ between servers and tools."""
        return {_index_key(spec): dict(spec) for spec in self._collection(name).list_indexes()}

    def _missing_indexes(self, event_ttl: timedelta | None) -> list[_Index]:
        """The planned indexes the server lacks (one ``listIndexes`` per collection),
        unique ones first; an index on a key that must be unique but is not is an error:
        exact counting would silently be wrong."""
        ttl = _ttl_seconds(event_ttl or DEFAULT_EVENT_TTL, self.ttl_index)
        existing: dict[str, dict[tuple[tuple[str, Any], ...], dict[str, Any]]] = {}
        missing: list[_Index] = []
        for name, keys, options in self._index_plan(ttl):
            if name not in existing:
                existing[name] = self._existing_indexes(name)
            found = existing[name].get(tuple(keys))
            if found is None:
                missing.append(_Index(name, tuple(keys), options))
            elif options.get("unique") and not found.get("unique"):
                raise StoreError(
                    f"MongoDB {self.where}: {self.prefix}{name} has an index on"
                    f" {dict(keys)} without unique, which exact counting needs: drop it"
                    " and reopen the store (or run gso-analytics mongo-init) to have it"
                    " created unique"
                )
        return sorted(missing, key=lambda index: not index.unique)

    def _build_indexes(self, missing: list[_Index]) -> list[str]:
        """``createIndexes``, unique indexes first (the processes waiting for them go on
        sooner), with ``commitQuorum: "majority"`` where the deployment has members to
        vote (the default waits for every voting member). Returns what was changed
        besides: the registrations merged before their unique index."""
        driver = pymongo()
        changed = []
        if any((index.name, index.keys) == _ONE_REGISTRATION for index in missing):
            merged = self._merge_registrations()
            if merged:
                changed.append(
                    f"kept the earliest of {self.prefix}new_users' registrations of a player"
                    f" ({merged} later ones removed)"
                )
                log.info("gso_analytics: MongoDB %s: %s", self.where, changed[-1])
        options = {"commitQuorum": "majority"} if self._commit_quorum else {}
        groups: dict[tuple[bool, str], list[Any]] = {}
        for index in missing:
            model = driver.IndexModel(list(index.keys), **index.options)
            groups.setdefault((not index.unique, index.name), []).append(model)
        for (_, name), models in groups.items():
            self._collection(name).create_indexes(models, **options)
        return changed

    def _merge_registrations(self) -> int:
        """Keep one registration document per player, the earliest day: stores before
        one per player kept one per (day, player), and the unique ``{userId: 1}`` index
        cannot be built over them. The ``newUsers`` already counted stay as stored.
        Writers of such a version must be stopped: one could add a second document
        before the index exists. Returns how many documents went."""
        registrations = self._collection("new_users")
        repeated = registrations.aggregate(
            [
                {"$group": {"_id": "$userId", "day": {"$min": "$day"}, "n": {"$sum": 1}}},
                {"$match": {"n": {"$gt": 1}}},
            ]
        )
        return sum(
            registrations.delete_many(
                {"userId": doc["_id"], "day": {"$gt": doc["day"]}}
            ).deleted_count
            for doc in repeated
        )

    def _describe_indexes(self, indexes: list[_Index]) -> str:
        return ", ".join(index.describe(self.prefix) for index in indexes)

    def _open_indexes(self, event_ttl: timedelta | None) -> None:
        """At open: nothing to do when every index exists. Otherwise one process builds
        the missing ones under a lease, and the others carry on with a warning, unless
        a unique index is missing: without it counting is wrong, so they wait for it
        (up to :data:`UNIQUE_INDEX_WAIT`). ``create_indexes=False`` only checks (deploy steps run
        ``gso-analytics mongo-init``)."""
        missing = self._missing_indexes(event_ttl)
        if missing and not self.create_indexes:
            self._report_missing(missing, "run `gso-analytics mongo-init --store URL`")
            return
        deadline = time.monotonic() + UNIQUE_INDEX_WAIT.total_seconds()
        while missing:
            token = self._take_index_lease()
            if token is not None:
                try:
                    with self._renewing(token):
                        # Another process may have built some since we looked.
                        self._build_indexes(self._missing_indexes(event_ttl))
                finally:
                    self._release_index_lease(token)
                return
            if not any(index.unique for index in missing):
                self._report_missing(missing, "another process is creating them")
                return
            if time.monotonic() >= deadline:
                raise StoreError(
                    f"MongoDB {self.where}: unique indexes exact counting needs are still"
                    f" missing after {UNIQUE_INDEX_WAIT.total_seconds():g} s while another"
                    f" process builds them ({self._describe_indexes(missing)}; its lease"
                    f" in {self.prefix}locks ends {INDEX_BUILD_LEASE} after it began)"
                )
            time.sleep(0.05)
            missing = self._missing_indexes(event_ttl)

    def _report_missing(self, missing: list[_Index], remedy: str) -> None:
        """A missing unique index is an error; any other is a warning (its queries scan
        the collection until it exists)."""
        unique = [index for index in missing if index.unique]
        if unique:
            raise StoreError(
                f"MongoDB {self.where}: unique indexes exact counting needs are missing"
                f" ({self._describe_indexes(unique)}): {remedy}"
            )
        log.warning(
            "gso_analytics: MongoDB %s is missing indexes (%s); queries that need them"
            " scan their collection until they exist: %s",
            self.where,
            self._describe_indexes(missing),
            remedy,
        )

    def _take_index_lease(self) -> str | None:
        """The lease on building indexes (a ``locks`` document, as the session lock):
        its token if this process got it, None while another one holds it."""
        driver = pymongo()
        locks = self._collection("locks").with_options(write_concern=majority())
        token = uuid.uuid4().hex
        now = self._server_now()
        lease = {"owner": token, "until": now + INDEX_BUILD_LEASE, "since": now}
        if locks.replace_one({"_id": _INDEX_LEASE_ID, "until": {"$lt": now}}, lease).matched_count:
            return token
        try:
            locks.insert_one({"_id": _INDEX_LEASE_ID, **lease})
        except driver.errors.DuplicateKeyError:
            return None  # held, or taken just now by another process
        return token

    def _release_index_lease(self, token: str) -> None:
        driver = pymongo()
        try:
            self._collection("locks").with_options(write_concern=majority()).replace_one(
                {"_id": _INDEX_LEASE_ID, "owner": token}, {"owner": "", "until": _EPOCH}
            )
        except driver.errors.PyMongoError as exc:  # the build's own error matters more
            log.warning("gso_analytics: could not release the index lease (%s): it expires", exc)

    @contextlib.contextmanager
    def _renewing(self, token: str) -> Iterator[None]:
        """Renew the index lease every quarter of it while the block runs: a build on a
        large collection can take longer than the lease, and another process must not
        take it over (and build the same indexes again) meanwhile."""
        locks = self._collection("locks").with_options(write_concern=majority())

        def renew() -> None:
            try:
                locks.update_one(
                    {"_id": _INDEX_LEASE_ID, "owner": token},
                    {"$set": {"until": self._server_now() + INDEX_BUILD_LEASE}},
                )
            except pymongo().errors.PyMongoError as exc:
                log.warning("gso_analytics: could not renew the index lease (%s)", exc)

        period = INDEX_BUILD_LEASE.total_seconds() / 4
        with repeating(renew, period, "gso-analytics-index-lease"):
            yield

    def _create_collections(self) -> None:
        """Every collection exists before the first transaction (module docstring)."""
        driver = pymongo()
        present = set(self._db().list_collection_names())
        for name in COLLECTIONS:
            if f"{self.prefix}{name}" not in present:
                # CollectionInvalid: another process created it just now.
                with contextlib.suppress(driver.errors.CollectionInvalid):
                    self._db().create_collection(f"{self.prefix}{name}")

    def init_indexes(self, event_ttl: timedelta | None = None) -> list[str]:
        """Create every missing index now, in this process (what ``gso-analytics
        mongo-init`` runs in a deploy step, before workers open the store with
        ``createIndexes=false``); with ``event_ttl``, set the TTL index to it. Returns
        the indexes created, described as in the warnings."""
        with self._errors("creating indexes"):
            self._create_collections()
            missing = self._missing_indexes(event_ttl)
            changed = self._build_indexes(missing)
            created = changed + [index.describe(self.prefix) for index in missing]
            created += self._migrate_from_0_2()
            if event_ttl is not None:
                self._sync_event_ttl(event_ttl)
        return created

    def _check_not_mid_0_2(self) -> None:
        """Refuse a store that 0.2 left with work half done: batches whose day counters
        were still to be applied by the guarded upserts, standalone batches or session
        journals not finished. 0.3 has no code for them (it keeps no guards): 0.2's
        prune finishes them."""
        batches = self._collection("batches")
        bound = {"max_time_ms": READ_TIMEOUT_MS}
        left = batches.find_one({"countersApplied": False}, {"_id": 1}, **bound) or (
            batches.find_one({"done": False}, {"_id": 1}, **bound)
        )
        journal = self._collection("session_journal").find_one({"done": False}, {"_id": 1}, **bound)
        if left is not None or journal is not None:
            raise StoreError(
                f"MongoDB {self.where}: version 0.2 left batches half applied (e.g."
                f" {(left or journal or {}).get('_id')!r}); run `gso-analytics prune` once"
                " with gso-analytics 0.2, which completes them, then open the store with"
                " this version",
                permanent=True,
            )

    def _migrate_from_0_2(self) -> list[str]:
        """``mongo-init``'s upgrade of a 0.2 store, after the new indexes exist: the
        replaced unique indexes dropped (:data:`_REPLACED_UNIQUE`: the user-first ones,
        and one registration per player, enforce as much), the guard arrays of the day,
        month and totals documents removed, the standalone collections dropped.
        Idempotent; returns what it changed."""
        self._check_not_mid_0_2()
        changed: list[str] = []
        for name, keys in _REPLACED_UNIQUE:
            key = tuple((field, 1) for field in keys)
            found = self._existing_indexes(name).get(key)
            if found is not None and found.get("unique"):
                self._collection(name).drop_index(found["name"])
                changed.append(f"dropped the replaced unique {self.prefix}{name} {dict(key)}")
        changed += self._build_indexes(self._missing_indexes(None))  # the day ranges' own
        for name in ("daily", "monthly", "totals"):
            result = self._collection(name).update_many(
                {"appliedBatches": {"$exists": True}}, {"$unset": {"appliedBatches": ""}}
            )
            if result.modified_count:
                changed.append(f"removed 0.2's guard ids from {result.modified_count} {name}")
        present = set(self._db().list_collection_names())
        for name in ("session_journal", "batch_intents"):
            if f"{self.prefix}{name}" in present:
                self._db().drop_collection(f"{self.prefix}{name}")
                changed.append(f"dropped 0.2's {self.prefix}{name}")
        return changed

    def check_event_ttl(self, event_ttl: timedelta) -> None:
        """At least a second, and at most :data:`MAX_EVENT_TTL` with the TTL index."""
        _ttl_seconds(event_ttl, self.ttl_index)

    def event_ttl_index(self) -> dict[str, Any] | None:
        """The events' ``{ts: 1}`` index as the server describes it (None if absent)."""
        with self._errors("reading the events' indexes"):
            return self._existing_indexes("events").get((("ts", 1),))

    def _sync_event_ttl(self, event_ttl: timedelta) -> None:
        """Make the TTL index expire events after ``event_ttl``: changed in place with
        ``collMod``, never dropped and rebuilt under a live collection."""
        seconds = _ttl_seconds(event_ttl, self.ttl_index)
        if not self.ttl_index or seconds == self._synced_ttl:
            return
        driver = pymongo()
        with self._errors("setting the event TTL index"):
            index = self._existing_indexes("events").get((("ts", 1),))
            if index is None:
                return  # not built yet (by the lease holder or mongo-init): next prune
            try:
                if index.get("expireAfterSeconds") != seconds:
                    log.info(
                        "gso_analytics: TTL index of %sevents: expireAfterSeconds %s -> %d",
                        self.prefix,
                        index.get("expireAfterSeconds"),
                        seconds,
                    )
                    self._db().command(
                        "collMod",
                        f"{self.prefix}events",
                        index={"keyPattern": {"ts": 1}, "expireAfterSeconds": seconds},
                    )
            except driver.errors.OperationFailure as exc:
                # Pruning still deletes expired events; only the server-side expiry lags.
                log.warning(
                    "gso_analytics: cannot set the event TTL index to %d s on %s (%s);"
                    " events are still deleted by the prune job",
                    seconds,
                    self.where,
                    exc,
                )
        self._synced_ttl = seconds
