"""The tables, created and upgraded by the store (or by ``gso-analytics pg-init``).

Every statement is idempotent (``IF NOT EXISTS``), and the whole runs under a
transaction-level advisory lock, so workers starting together create the schema once
and an up-to-date schema costs one read of its version. The version, in ``meta``,
says which upgrade steps a schema has had: a later version of the library adds its
steps to :data:`UPGRADES`.
"""

from __future__ import annotations

from typing import Any

#: The schema version this library writes (``meta.schemaVersion``).
SCHEMA_VERSION = 1

#: ``{s}`` is the schema name. Types: text keys (the seed's day, month and ids),
#: ``timestamptz`` times, ``jsonb`` figures (a counter keeps its JSON type: integers
#: stay exact at any size, floats add as Python adds them, as on the other stores).
#: A session's last activity mark and the activity runs' bounds are epoch
#: milliseconds (``bigint``), the values the session walk compares; a run's marks are
#: :func:`~gso_analytics.sessions.encode_marks`'s bytes (``bytea``), its logins
#: :func:`~gso_analytics.sessions.encode_logins`'s text (NULL: none). ``frozen``: a
#: session closed by version 0.2 (kept as it was, see :mod:`gso_analytics.sessions`);
#: a PostgreSQL store never holds one, but the column keeps the vocabulary whole.
#: ``fences`` pages are kept half empty (``fillfactor``): every batch part updates each
#: of its players' fence, and an update that finds room on its row's page is a
#: heap-only one (HOT), which writes no new index entry; on full pages three updates in
#: four were not (a flush of 500 known players: 1.6-3.1 ms of the server's time for the
#: fences and tombstones statement instead of 4.6-5.1 ms).
#: ``sessions`` likewise: between two flushes an open session's row changes only in
#: its last mark (and seconds), which no index holds, so with room on its page that
#: update is HOT too. Its indexes are on what a session keeps from its start (player,
#: login time, day) and on whether it is open, which changes once; the walk finds a
#: player's sessions from a moment on through ``(user_id, login_at)`` (see
#: :func:`.sessions.sessions_since`).
TABLES = """
CREATE SCHEMA IF NOT EXISTS {s};
CREATE TABLE IF NOT EXISTS {s}.meta (key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE IF NOT EXISTS {s}.batches (
    id text PRIMARY KEY, applied_at timestamptz NOT NULL,
    folded boolean NOT NULL DEFAULT true, delta jsonb);
CREATE INDEX IF NOT EXISTS batches_unfolded ON {s}.batches (applied_at) WHERE NOT folded;
CREATE INDEX IF NOT EXISTS batches_applied ON {s}.batches (applied_at);
CREATE TABLE IF NOT EXISTS {s}.daily (
    day text PRIMARY KEY, month text NOT NULL, counters jsonb NOT NULL);
CREATE TABLE IF NOT EXISTS {s}.monthly (month text PRIMARY KEY, counters jsonb NOT NULL);
CREATE TABLE IF NOT EXISTS {s}.totals (id text PRIMARY KEY, counters jsonb NOT NULL);
CREATE TABLE IF NOT EXISTS {s}.fences (hash text PRIMARY KEY, ops bigint NOT NULL DEFAULT 1)
    WITH (fillfactor = 50);
CREATE TABLE IF NOT EXISTS {s}.day_users (
    day text NOT NULL, user_id text NOT NULL, PRIMARY KEY (day, user_id));
CREATE INDEX IF NOT EXISTS day_users_user ON {s}.day_users (user_id);
CREATE TABLE IF NOT EXISTS {s}.month_users (
    month text NOT NULL, user_id text NOT NULL, PRIMARY KEY (month, user_id));
CREATE INDEX IF NOT EXISTS month_users_user ON {s}.month_users (user_id);
CREATE TABLE IF NOT EXISTS {s}.new_users (user_id text PRIMARY KEY, day text NOT NULL);
CREATE TABLE IF NOT EXISTS {s}.first_seen (user_id text PRIMARY KEY, day text NOT NULL);
CREATE INDEX IF NOT EXISTS first_seen_day ON {s}.first_seen (day);
CREATE TABLE IF NOT EXISTS {s}.first_payments (user_id text PRIMARY KEY, day text NOT NULL);
CREATE INDEX IF NOT EXISTS first_payments_day ON {s}.first_payments (day);
CREATE TABLE IF NOT EXISTS {s}.user_revenue (
    day text NOT NULL, user_id text NOT NULL, revenue_cents bigint NOT NULL,
    PRIMARY KEY (day, user_id));
CREATE INDEX IF NOT EXISTS user_revenue_user ON {s}.user_revenue (user_id);
CREATE TABLE IF NOT EXISTS {s}.sessions (
    id text PRIMARY KEY, user_id text NOT NULL, username text,
    login_at timestamptz NOT NULL, logout_at timestamptz,
    duration_s bigint NOT NULL DEFAULT 0, day text NOT NULL, month text NOT NULL,
    timed_out boolean NOT NULL DEFAULT false, origin text NOT NULL, seq bigint NOT NULL,
    last_ms bigint NOT NULL, frozen boolean NOT NULL DEFAULT false)
    WITH (fillfactor = 70);
CREATE INDEX IF NOT EXISTS sessions_user ON {s}.sessions (user_id, login_at);
CREATE INDEX IF NOT EXISTS sessions_open ON {s}.sessions (login_at) WHERE logout_at IS NULL;
CREATE INDEX IF NOT EXISTS sessions_day ON {s}.sessions (day);
CREATE TABLE IF NOT EXISTS {s}.activity (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, user_id text NOT NULL,
    first_ms bigint NOT NULL, last_ms bigint NOT NULL, marks bytea NOT NULL, logins text);
CREATE INDEX IF NOT EXISTS activity_user ON {s}.activity (user_id, last_ms);
CREATE INDEX IF NOT EXISTS activity_last ON {s}.activity (last_ms);
CREATE TABLE IF NOT EXISTS {s}.logouts (
    id text PRIMARY KEY, user_id text NOT NULL, at timestamptz NOT NULL,
    origin text NOT NULL, seq bigint NOT NULL);
CREATE INDEX IF NOT EXISTS logouts_user ON {s}.logouts (user_id, at);
CREATE INDEX IF NOT EXISTS logouts_at ON {s}.logouts (at);
CREATE SEQUENCE IF NOT EXISTS {s}.events_id;
CREATE TABLE IF NOT EXISTS {s}.events (
    id bigint NOT NULL DEFAULT nextval('{s}.events_id'), ts timestamptz NOT NULL,
    user_id text NOT NULL, event text NOT NULL, data text NOT NULL, day text NOT NULL)
    PARTITION BY RANGE (ts);
CREATE INDEX IF NOT EXISTS events_ts ON {s}.events (ts, id);
CREATE INDEX IF NOT EXISTS events_user ON {s}.events (user_id, ts, id);
CREATE INDEX IF NOT EXISTS events_event_day ON {s}.events (event, day);
CREATE TABLE IF NOT EXISTS {s}.tombstones (
    hash text PRIMARY KEY, token text NOT NULL, erased_at timestamptz NOT NULL);
CREATE TABLE IF NOT EXISTS {s}.heartbeats (
    process text PRIMARY KEY, host text NOT NULL, pid integer NOT NULL,
    at timestamptz NOT NULL, expires_at timestamptz NOT NULL, payload text NOT NULL);
"""

#: version -> the statements that bring a schema of the version before to it.
UPGRADES: dict[int, str] = {1: TABLES}


def lock_key(schema: str, purpose: str) -> str:
    """The text whose ``hashtext`` keys an advisory lock of one schema's ``purpose``."""
    return f"gso_analytics:{schema}:{purpose}"


def stored_version(cur: Any, schema: str) -> int:
    """The schema's version, 0 when it has no tables yet."""
    found = cur.execute("SELECT to_regclass(%s)", (f"{schema}.meta",)).fetchone()
    if found is None or found[0] is None:
        return 0
    row = cur.execute(f"SELECT value FROM {schema}.meta WHERE key = 'schemaVersion'").fetchone()
    return 0 if row is None else int(row[0])


def create_or_upgrade(conn: Any, schema: str) -> int:
    """Bring ``schema`` to :data:`SCHEMA_VERSION` in one transaction, under an advisory
    lock (the others wait, then find it done); return the version found before."""
    with conn.transaction():
        cur = conn.cursor()
        found = stored_version(cur, schema)
        if found >= SCHEMA_VERSION:
            return found
        cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (lock_key(schema, "schema"),))
        found = stored_version(cur, schema)
        for version in range(found + 1, SCHEMA_VERSION + 1):
            cur.execute(UPGRADES[version].format(s=schema))
        cur.execute(
            f"INSERT INTO {schema}.meta (key, value) VALUES ('schemaVersion', %s)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (str(SCHEMA_VERSION),),
        )
        return found
