"""``PostgresStore``: opening the store, the transaction of a batch part, erasing a
player, the prune job (expired days dropped whole). What a batch means lives in
:func:`gso_analytics.store.apply_batch`; :mod:`.batch` translates it."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

from gso_analytics.clock import utc_now
from gso_analytics.errors import ConfigurationError
from gso_analytics.model import ApplyResult, FlushBatch, PruneResult
from gso_analytics.store import MARK_TABLE, Store, T, Transaction

from . import events
from .batch import PgTransaction
from .connection import NoPartition
from .options import Options, split_url
from .reads import Reads
from .rollup import roll_up
from .schema import SCHEMA_VERSION, create_or_upgrade, stored_version


class PostgresStore(Reads, Store):
    """Analytics in a PostgreSQL database (14 or later; tested on 15), in one schema
    (``gso_analytics`` by default), usually opened by :func:`open_store` from a URL."""

    schemes = ("postgresql", "postgres")
    #: Bounds of one part, one transaction (see :meth:`FlushBatch.parts`): a few
    #: thousand players, whose fences and rows a part locks and a retry redoes; events
    #: lock nothing shared and one ``COPY`` takes them, so a part carries many.
    max_part_players = 5_000
    max_part_events = 50_000
    max_part_bytes = 16 * 1024 * 1024

    def __init__(
        self, conninfo: str, where: str, options: Options, replica: str | None = None
    ) -> None:
        super().__init__(conninfo, where, options, replica)
        self._partitions: set[int] = set()
        #: The schema version found at open (0: created by this store).
        self.version_found = SCHEMA_VERSION
        try:
            if options.existing:  # before anything is created
                self._check_ours()
            if options.create_schema:
                self.version_found = self.init_schema()
            else:
                self._check_schema()
        except BaseException:
            self.close()
            raise

    @classmethod
    def from_url(cls, url: str, **options: Any) -> PostgresStore:
        """``postgresql://[user[:password]@]host[:port]/database?options`` (or
        ``postgres://``); see :func:`~.options.split_url` for the options."""
        conninfo, replica, where, opts = split_url(url, options)
        return cls(conninfo, where, opts, replica)

    # -- the schema ----------------------------------------------------------------------

    def init_schema(self) -> int:
        """Create or upgrade the tables and make today's and the coming days' event
        partitions; return the schema version found before (0: none)."""
        with self._connection("creating the schema") as conn:
            found = create_or_upgrade(conn, self.schema)
        self.make_partitions(events.ahead(utc_now(), self.options.partitions_ahead))
        return found

    def _check_ours(self) -> None:
        """Refuse a schema without this library's tables, naming the schemas that hold
        them: an erase or a report of a mistyped schema must not create an empty store."""
        with self._connection("looking for the store") as conn:
            rows = conn.execute(
                "SELECT schemaname FROM pg_tables WHERE tablename = %s ORDER BY 1", (MARK_TABLE,)
            ).fetchall()
        found = [row[0] for row in rows]
        if self.schema in found:
            return
        hint = (
            f"; schemas holding one: {', '.join(repr(f) for f in found)}"
            if found
            else "; it holds no gso_analytics store"
        )
        raise ConfigurationError(
            f"no gso_analytics store in schema {self.schema!r} of {self.where}{hint}"
        )

    def _check_schema(self) -> None:
        with self._connection("checking the schema") as conn:
            found = stored_version(conn.cursor(), self.schema)
        if found < SCHEMA_VERSION:
            raise ConfigurationError(
                f"PostgreSQL {self.where}: schema version {found}, this library needs"
                f" {SCHEMA_VERSION}: run gso-analytics pg-init --store URL as the schema's"
                " owner (or open the store with create_schema=true)"
            )

    def make_partitions(self, days: Iterable[int]) -> None:
        """Make sure the event partitions of ``days`` exist (known ones cost nothing)."""
        missing = set(days) - self._partitions
        if not missing:
            return
        with self._ddl_lock, self._direct("making event partitions") as conn:
            found = events.existing(conn.cursor(), self.schema)
            events.create(conn, self.schema, missing - set(found))
            self._partitions.update(found, missing)

    # -- writes ------------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        with self._transaction("writing") as conn, PgTransaction(self, conn) as tx:
            yield tx
            tx.finish()

    def run_in_transaction(self, step: Callable[[Transaction], T]) -> T:
        """Run again while it loses to a concurrent transaction (serialization failure,
        deadlock), or meets a day whose partition another process dropped meanwhile."""

        def attempt() -> T:
            try:
                return super(PostgresStore, self).run_in_transaction(step)
            except NoPartition:
                self._partitions.clear()
                raise

        return self._retrying(attempt)

    def apply(self, batch: FlushBatch) -> ApplyResult:
        """Each part in a transaction of its own (see :mod:`.batch`), then the deltas
        folded (best effort: reads are exact without it)."""
        result = super().apply(batch)
        roll_up(self)
        return result

    # -- the prune job ---------------------------------------------------------------------

    def delete_expired_events(self, last: datetime) -> int:
        """Whole expired days dropped (detached concurrently first), then the day that
        straddles ``last`` deleted a chunk per transaction."""
        dropped = 0
        with self._ddl_lock, self._direct("dropping expired event partitions") as conn:
            found = events.existing(conn.cursor(), self.schema)
            for day in events.expired_days(found, last):
                dropped += events.drop(conn, self.schema, found[day])
                self._partitions.discard(day)
        return dropped + super().delete_expired_events(last)

    def prune(self, now: datetime, event_ttl: timedelta, idle_timeout: timedelta) -> PruneResult:
        """The deltas folded, partitions made ahead, the shared prune, the deltas its
        timeouts made folded too."""
        roll_up(self)
        self.make_partitions(events.ahead(now, self.options.partitions_ahead))
        result = super().prune(now, event_ttl, idle_timeout)
        roll_up(self)
        return result


def pg_init(url: str, **options: Any) -> int:
    """Create or upgrade the schema of ``url`` and make the coming days' partitions: a
    deploy step run as the schema's owner, for an application role that may not create
    tables. Returns the schema version found before (0: none)."""
    options["create_schema"] = True
    with PostgresStore.from_url(url, **options) as store:
        return store.version_found
