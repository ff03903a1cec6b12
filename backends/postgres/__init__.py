"""``postgresql://`` and ``postgres://``: the store in the PostgreSQL database a team
already runs, on psycopg 3 and a bounded psycopg-pool, in a schema of its own
(``gso_analytics`` by default, ``?schema=`` to change it).

Tables (:mod:`.schema`): ``daily``, ``monthly`` and ``totals`` (the folded figures, a
``jsonb`` object of counters per row, written only by the roll-up, :mod:`.rollup`);
``batches`` (one row per applied batch part: its exactly-once guard, holding the
part's increments as a delta until they are folded); ``day_users``, ``month_users``
(``dau`` and ``mau`` count the rows newly inserted), ``new_users``, ``first_seen``,
``first_payments``, ``user_revenue``; ``sessions`` and ``logouts`` (:mod:`.sessions`);
``events``, range-partitioned by day (:mod:`.events`); ``fences`` (one row per player,
see below); ``tombstones``, ``meta`` (the schema version, the erasure secret),
``heartbeats``.

Isolation: REPEATABLE READ, for every batch part, prune chunk and erase, and for
reads of the figures. Why not READ COMMITTED: a part reads what it then writes from
(the player's stored marks for the session walk, the registration day, the
tombstones), and under READ COMMITTED each statement sees a newer snapshot than the
one before, so two parts of one player could each compute from a view that misses the
other's commit, and both commit (a lost update no error reports). Under REPEATABLE
READ the whole part sees one snapshot, and a row another transaction changed after
that snapshot cannot be written: PostgreSQL raises a serialization failure (SQLSTATE
40001, first-updater-wins, MongoDB's WriteConflict) and the part runs again from a
fresh snapshot. What REPEATABLE READ does not catch is write skew, two parts that read
the same player's rows and write different ones; so every part first writes the
*fence* row of each of its players (keyed by the player's keyed hash, the tombstones'
key, so no player id is kept there and an erase writes the same row): two parts of one
player always write a common row and conflict, two parts of different players never
do. Why not SERIALIZABLE: its predicate locks are kept per index page, so parts of
different players inserting into the same pages would abort each other at random
under load, and the fence gives the same guarantee for what is shared, per player.

Parts of different players share no row (the figures are insert-only deltas, see
:mod:`gso_analytics.deltas`), so they never wait for each other. Serialization
failures and deadlocks (40P01) are retried with backoff for ten seconds
(:mod:`gso_analytics.conflicts`), then the flusher keeps the batch. Every connection
has ``statement_timeout`` and ``lock_timeout`` (a lock timeout is retried as a
conflict), ``TimeZone=UTC`` and ``target_session_attrs=read-write``; the pool is
bounded (``pool_size``) and never crosses a fork (a child opens its own).
"""

from .options import DEFAULT_SCHEMA, INSTALL_HINT
from .schema import SCHEMA_VERSION
from .store import PostgresStore, pg_init

__all__ = ["DEFAULT_SCHEMA", "INSTALL_HINT", "SCHEMA_VERSION", "PostgresStore", "pg_init"]
