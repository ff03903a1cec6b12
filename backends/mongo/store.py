"""``MongoStore``: opening the store, applying a batch part by part, erasing a player,
the prune job. What a batch means lives in :func:`gso_analytics.store.apply_batch`;
:mod:`.batch` translates it into one transaction per part."""

from __future__ import annotations

import logging
import os
import re
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, cast

from gso_analytics.erasure import ErasureReceipt, keyed_hash, new_token
from gso_analytics.errors import ConfigurationError
from gso_analytics.model import ApplyResult, FlushBatch, PruneResult
from gso_analytics.store import Store, T, Transaction, apply_batch, check_ours

from .batch import RESERVED_FIELDS, BatchTransaction, Replan
from .connection import until_no_conflict
from .indexes import Indexes, _commit_quorum_possible, _ttl_seconds
from .options import (
    DEFAULT_DATABASE,
    DEFAULT_PREFIX,
    READ_TIMEOUT_MS,
    STANDALONE_REFUSED,
    check_str,
    pymongo,
    split_url,
    transactions_possible,
)
from .reads import Reads
from .rollup import roll_up
from .upgrade import upgrade_pairing_sessions, upgrade_sessions_to_activity

log = logging.getLogger("gso_analytics")

_PREFIX_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


class MongoStore(Reads, Indexes, Store):
    """Analytics in a MongoDB replica set or sharded cluster: a pymongo ``Database`` (or
    a stand-in with the same API), usually opened by :func:`open_store` from a URL.

    ``prefix`` names the collections; ``event_ttl`` sets the TTL index when given
    (otherwise it is created with 7 days and then follows the ``event_ttl`` of the
    ``Analytics`` that prunes); ``ttl_index=False`` leaves expiry to the prune job alone.
    ``existing``: refuse a database without this library's collections under
    ``prefix`` (creating none), as the commands that read or erase open a store.
    ``transactions``: None detects a replica set or mongos and refuses a standalone
    server; True skips the check (a stand-in that runs transactions but describes
    itself as standalone). ``create_indexes``: True builds missing indexes at open in
    one process (a lease) while the others carry on; False only checks and warns (a
    missing unique index is an error), for deployments that run :meth:`init_indexes`
    (``gso-analytics mongo-init``) as a deploy step; None leaves indexes alone at open,
    for that step itself.
    """

    schemes = ("mongodb", "mongodb+srv")
    #: Bounds of one part, one transaction: far under MongoDB's 60 s transaction
    #: lifetime, its cache and the 16 MiB of one oplog entry (MongoDB 4.0), with each
    #: player's marks in one part (see :meth:`FlushBatch.parts`).
    max_part_players = 5_000
    max_part_events = 10_000
    max_part_bytes = 4 * 1024 * 1024
    reserved_fields = RESERVED_FIELDS

    def __init__(
        self,
        database: Any,
        *,
        prefix: str = DEFAULT_PREFIX,
        event_ttl: timedelta | None = None,
        ttl_index: bool = True,
        transactions: bool | None = None,
        create_indexes: bool | None = True,
        where: str | None = None,
        reconnect: Callable[[], Any] | None = None,
        existing: bool = False,
    ) -> None:
        if not isinstance(prefix, str) or not _PREFIX_RE.fullmatch(prefix):
            raise ConfigurationError(
                f"collection prefix {prefix!r} must be letters, digits, '_', '.' or '-'"
            )
        if transactions is False:
            raise ConfigurationError(
                "transactions=false: the MongoDB store writes every batch in a transaction"
                " and has no standalone mode since 0.3 (use a single-node replica set,"
                " or sqlite:/// on one machine)"
            )
        if event_ttl is not None:
            _ttl_seconds(event_ttl, ttl_index)
        super().__init__(database, where, reconnect)
        self.prefix = prefix
        self.ttl_index = ttl_index
        self.create_indexes = create_indexes
        self._synced_ttl = None
        wc = getattr(database, "write_concern", None)
        if isinstance(wc, pymongo().WriteConcern) and not wc.acknowledged:
            raise ConfigurationError(
                "the MongoDB store needs acknowledged writes (w>=1, default w=majority):"
                " exact counting reads the result of every write; remove w=0"
            )
        with self._errors("connecting"):
            database.command("ping")
            hello = self._hello()
            self._read_clock(hello)
            if transactions is None and not transactions_possible(hello):
                raise ConfigurationError(STANDALONE_REFUSED.format(where=self.where))
            self._commit_quorum = _commit_quorum_possible(hello)
            if existing:  # before anything is created (see check_ours)
                check_ours(self._db().list_collection_names(), prefix, self.where)
            self._create_collections()
            if create_indexes is not None:
                self._open_indexes(event_ttl)
            self._check_not_mid_0_2()
            if event_ttl is not None:
                self._sync_event_ttl(event_ttl)
            upgrade_pairing_sessions(self)
            upgrade_sessions_to_activity(self)

    # -- opening -------------------------------------------------------------------------

    @classmethod
    def from_url(cls, url: str, **options: Any) -> MongoStore:
        """``mongodb://[user:pass@]host[:port][,host...]/db?options``.

        Store options in the query (``prefix``, ``transactions``, ``ttlIndex``,
        ``createIndexes``) or as keyword arguments; every other keyword argument goes
        to ``MongoClient``.
        """
        connect, name, where, store_options = split_url(url, options)
        client = connect()
        try:
            return cls(
                client[name], where=where, reconnect=lambda: connect()[name], **store_options
            )
        except BaseException:
            client.close()
            raise

    @classmethod
    def from_client(cls, client: Any, name: str = DEFAULT_DATABASE, **options: Any) -> MongoStore:
        """Use a ``MongoClient`` the application already has (it keeps owning it)."""
        return cls(client[name], **options)

    def _collection(self, name: str) -> Any:
        return self._db()[f"{self.prefix}{name}"]

    # -- writes ------------------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """One transaction: a batch part's, or one of the shared code's (the erasure
        secret, the prune's chunks), whose increments (sessions timed out) become a
        delta of their own. The buffered writes go when the block ends, then the
        commit."""
        with self._session_transaction("writing") as session:
            tx = BatchTransaction(self, session)
            yield tx
            tx.flush_writes(None if tx.part_id else f"prune-{uuid.uuid4().hex}")

    def run_in_transaction(self, step: Callable[[Transaction], T]) -> T:
        """Run again while it loses a write conflict (the prune's chunks, the secret)."""
        return until_no_conflict(lambda: super(MongoStore, self).run_in_transaction(step))

    def apply(self, batch: FlushBatch) -> ApplyResult:
        """Each part in a transaction of its own (run again while it loses a conflict),
        split as an earlier attempt split it; then the deltas folded (best effort)."""
        bounds = (self.max_part_players, self.max_part_events, self.max_part_bytes)
        while True:
            try:
                result = self._apply_parts(batch, bounds)
                break
            except Replan as replan:
                log.info("gso_analytics: batch %s split as before: %s", batch.id, replan.bounds)
                bounds = replan.bounds
        roll_up(self)
        return result

    def _apply_parts(self, batch: FlushBatch, bounds: tuple[int, int, int]) -> ApplyResult:
        parts = batch.parts(*bounds)
        plan = {"_id": f"{batch.id}:plan", "bounds": list(bounds)}
        also = (batch.id,) if len(parts) > 1 else ()
        results = []
        for n, part in enumerate(parts):

            def attempt(part: FlushBatch = part, first: bool = n == 0) -> ApplyResult:
                return self._apply_part(part, also, plan if first else None, first and bool(also))

            with self.forgetting_on_failure():
                results.append(until_no_conflict(attempt))
        return ApplyResult(
            duplicate=all(r.duplicate for r in results),
            new_day_users=sum(r.new_day_users for r in results),
            unmatched_logouts=sum(r.unmatched_logouts for r in results),
        )

    def _apply_part(
        self,
        part: FlushBatch,
        also: tuple[str, ...],
        plan: dict[str, Any] | None,
        record_plan: bool,
    ) -> ApplyResult:
        unerased: dict[str, str] = {}
        with self.transaction() as tx:
            cast(BatchTransaction, tx).prepare(
                also_applied=also, plan=plan, record_plan=record_plan, unerased=unerased
            )
            key = self.first_reads(tx)
            written = self.stored_rows.attempt()
            result = apply_batch(tx, part, key, written)
        self.committed(key, written)
        if result.duplicate:  # a retry after the commit: its check may not have run
            unerased = {user: keyed_hash(key, user) for user in part.players()}
        self._catch_erasures(unerased)
        return result

    # -- players' data rights ------------------------------------------------------------------

    def _catch_erasures(self, unerased: Mapping[str, str]) -> None:
        """After a part's commit: the players it wrote under their real ids whose erase
        committed meanwhile (see :mod:`.erase`) are erased again, here."""
        if not unerased:
            return
        users = {h: user for user, h in unerased.items()}
        with self._errors("looking for erasures"):
            found = list(
                self._collection("tombstones").find(
                    {"_id": {"$in": sorted(users)}}, {"token": 1}, max_time_ms=READ_TIMEOUT_MS
                )
            )
        if found:  # the part's records moved: not needed (see .stored_rows), simpler to trust
            self.stored_rows.forget()
        for doc in found:
            log.info(
                "gso_analytics: a player was erased while a batch of theirs ran; erasing again"
            )
            self._sweep(users[doc["_id"]], str(doc["token"]))

    def _sweep(self, user_id: str, token: str) -> tuple[dict[str, int], int]:
        """Move the player's records to the token and delete their events, a bounded
        chunk per transaction, until a chunk finds nothing."""
        renamed: Counter[str] = Counter()
        deleted = 0
        while True:

            def chunk() -> tuple[dict[str, int], int]:
                with self._session_transaction("erasing a player") as session:
                    tx = BatchTransaction(self, session)
                    return tx.rename_user(user_id, token), tx.delete_user_events(user_id)

            counts, events = until_no_conflict(chunk)
            renamed.update(counts)
            deleted += events
            if not any(counts.values()) and not events:
                return dict(renamed), deleted

    def erase_user(self, user_id: str, at: Any, *, also: Iterable[str] = ()) -> ErasureReceipt:
        """The tombstone in a transaction of its own, then other players' events naming
        the player, then the player's records, each in bounded transactions (see
        :mod:`.erase`). The mentions go before the sessions lose the username: an erase
        cut short is run again, and still finds the username to look for."""
        check_str(user_id, "user_id")
        self.stored_rows.forget()  # as the shared erase
        key_hash = keyed_hash(self.erasure_key(), user_id)
        token = new_token()
        names = self.mention_names(user_id, also)

        def record() -> str | None:
            with self._session_transaction("recording a tombstone") as session:
                return BatchTransaction(self, session).add_tombstone(key_hash, token, at)

        existing = until_no_conflict(record)
        mentioned = self.rewrite_mentions(names, existing or token)
        renamed, deleted = self._sweep(user_id, existing or token)
        return ErasureReceipt(
            renamed, {"events": deleted}, already_erased=existing is not None, mentions=mentioned
        )

    # -- the prune job ----------------------------------------------------------------------------

    def prune(self, now: Any, event_ttl: timedelta, idle_timeout: timedelta) -> PruneResult:
        """The TTL index brought to ``event_ttl`` (the TTL monitor runs about once a
        minute; the prune job makes the contract exact at any moment), the deltas
        folded, the shared prune (each step a chunk per transaction), the deltas its
        timeouts made folded too. A roll-up that fails is logged and the prune goes on:
        reads are exact without it, and expired events must go whatever it meets."""
        self._sync_event_ttl(event_ttl)
        roll_up(self)
        result = super().prune(now, event_ttl, idle_timeout)
        roll_up(self)
        return result

    def close(self) -> None:
        """Close the client when the store opened it (from a URL); safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self._reconnect is not None and os.getpid() == self._pid:
            client = getattr(self._database, "client", None)
            if client is not None:
                client.close()


def mongo_init(url: str, *, event_ttl: timedelta | None = None, **options: Any) -> list[str]:
    """Create every missing index of the store ``url`` names, migrate a 0.2 store (and,
    with ``event_ttl``, set the TTL index to it): the deploy step of ``gso-analytics
    mongo-init``, after which workers open the store with ``createIndexes=false`` and
    never build any. Returns what it created or changed; options as for ``open_store``."""
    with MongoStore.from_url(url, create_indexes=None, **options) as store:
        return store.init_indexes(event_ttl)
