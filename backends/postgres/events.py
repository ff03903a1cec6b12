"""The event stream: a table range-partitioned by day (UTC, on ``ts``), written with
``COPY``, expired by dropping whole days.

Why partitions: the event TTL is then PostgreSQL's native equivalent of MongoDB's TTL
index. A day whose every event is expired is detached (``CONCURRENTLY``: writers are
not blocked) and dropped, at the cost of a catalogue change instead of a million-row
``DELETE`` that bloats the table and the WAL; only the day that straddles the expiry
moment is deleted row by row, a chunk per transaction (the shared prune).

Partitions are made ahead (today and :attr:`~.options.Options.partitions_ahead` days,
when the store opens and by every prune) and on demand for a batch carrying events of
a day without one (a late batch, a backfill, a test's clock): a table created apart and
attached (``ATTACH PARTITION`` takes a lock that does not conflict with writers), on a
connection of its own, under an advisory lock per day so two processes do not race.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

from gso_analytics.clock import iso_from_ms, to_ms
from gso_analytics.model import EventRow
from gso_analytics.pacing import paced_slices

from .schema import lock_key

DAY_MS = 86_400_000
#: Events written into ``COPY`` between two looks at the clock (see :mod:`.pacing`).
ROWS_PER_LOOK = 64
_EPOCH = date(1970, 1, 1)


def partition_name(day: int) -> str:
    """``events_20250314`` for day number ``day`` (days since the epoch, UTC)."""
    return f"events_{_EPOCH + timedelta(days=day):%Y%m%d}"


def day_of(name: str) -> int | None:
    """The day number a partition's name holds (None: not one of ours)."""
    try:
        found = datetime.strptime(name.removeprefix("events_"), "%Y%m%d").date()
    except ValueError:
        return None
    return (found - _EPOCH).days


def days_of(events: Iterable[EventRow]) -> set[int]:
    return {event[0] // DAY_MS for event in events}


def bound(day: int) -> str:
    return iso_from_ms(day * DAY_MS)


def existing(cur: Any, schema: str) -> dict[int, str]:
    """day number -> partition name, of the partitions attached now (detach pending
    included: such a one is still in the way)."""
    rows = cur.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = to_regclass(%s)",
        (f"{schema}.events",),
    ).fetchall()
    found = {}
    for (name,) in rows:
        day = day_of(name)
        if day is not None:
            found[day] = name
    return found


def create(conn: Any, schema: str, days: Iterable[int]) -> None:
    """Make the partitions of ``days`` that do not exist (``conn`` in autocommit)."""
    for day in sorted(set(days)):
        name = partition_name(day)
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (lock_key(schema, name),))
            if conn.execute("SELECT to_regclass(%s)", (f"{schema}.{name}",)).fetchone()[0]:
                continue
            conn.execute(f"CREATE TABLE {schema}.{name} (LIKE {schema}.events INCLUDING DEFAULTS)")
            conn.execute(
                f"ALTER TABLE {schema}.events ATTACH PARTITION {schema}.{name}"
                f" FOR VALUES FROM ('{bound(day)}') TO ('{bound(day + 1)}')"
            )


def ahead(now: datetime, count: int) -> range:
    """Today's day number (UTC) and ``count`` days after it."""
    today = to_ms(now.astimezone(UTC)) // DAY_MS
    return range(today, today + count + 1)


def copy_events(cur: Any, schema: str, events: list[EventRow]) -> None:
    """``COPY`` the events into the parent table (PostgreSQL routes each row to its
    day), rows built in paced slices so the flush shares the GIL."""
    with cur.copy(f"COPY {schema}.events (ts, user_id, event, data, day) FROM STDIN") as copy:
        for part in paced_slices(events, ROWS_PER_LOOK):
            for ts, user, name, data, day in part:
                copy.write_row((iso_from_ms(ts), user, name, data, day))


def events_after(
    cur: Any, schema: str, after: Any, needles: Sequence[str], limit: int
) -> list[tuple[Any, EventRow]]:
    """At most ``limit`` events after the position ``after`` ((ts, id), None: from the
    first) in ``(ts, id)`` order, an index range of ``events_ts``, leaving out those
    whose data text holds none of ``needles`` (an erase's look for mentions)."""
    if not needles:
        return []
    start = (datetime.min.replace(tzinfo=UTC), -1) if after is None else after
    rows = cur.execute(
        f"SELECT ts, id, user_id, event, data, day FROM {schema}.events"
        " WHERE (ts, id) > (%s, %s)"
        " AND EXISTS (SELECT 1 FROM unnest(%s::text[]) AS n WHERE strpos(data, n) > 0)"
        " ORDER BY ts, id LIMIT %s",
        (*start, list(needles), limit),
    )
    return [
        ((ts, eid), (to_ms(ts), user, name, data, day)) for ts, eid, user, name, data, day in rows
    ]


def set_event_data(cur: Any, schema: str, changes: Mapping[Any, str]) -> None:
    """One statement: each event found by its position (the ``events_ts`` index)."""
    ordered = sorted(changes.items())
    cur.execute(
        f"UPDATE {schema}.events AS e SET data = c.data"
        " FROM unnest(%s::timestamptz[], %s::bigint[], %s::text[]) AS c (ts, id, data)"
        " WHERE e.ts = c.ts AND e.id = c.id",
        (
            [position[0] for position, _ in ordered],
            [position[1] for position, _ in ordered],
            [data for _, data in ordered],
        ),
    )


def expired_days(found: dict[int, str], last: datetime) -> list[int]:
    """The days whose every event is at or before ``last`` (whole milliseconds)."""
    limit = to_ms(last) + 1
    return sorted(day for day in found if (day + 1) * DAY_MS <= limit)


def drop(conn: Any, schema: str, name: str) -> int:
    """Detach a partition without blocking writers, count what it held, drop it; 0 when
    another process dropped it first. A detach interrupted before (``detach pending``)
    is finished instead. ``conn`` in autocommit: a concurrent detach cannot run in a
    transaction block, so a session-level advisory lock keeps two pruners apart."""
    key = lock_key(schema, name)
    # Counting a day of events may outlast the statement timeout a worker's statements
    # keep; the lock timeout stays (a detach waiting for it resumes at the next prune).
    conn.execute("SET statement_timeout = 0")
    conn.execute("SELECT pg_advisory_lock(hashtext(%s))", (key,))
    try:
        if conn.execute("SELECT to_regclass(%s)", (f"{schema}.{name}",)).fetchone()[0] is None:
            return 0
        pending = conn.execute(
            "SELECT i.inhdetachpending FROM pg_inherits i WHERE i.inhrelid = to_regclass(%s)",
            (f"{schema}.{name}",),
        ).fetchone()
        if pending is not None:
            how = "FINALIZE" if pending[0] else "CONCURRENTLY"
            conn.execute(f"ALTER TABLE {schema}.events DETACH PARTITION {schema}.{name} {how}")
        counted = conn.execute(f"SELECT count(*) FROM {schema}.{name}").fetchone()[0]
        conn.execute(f"DROP TABLE {schema}.{name}")
        return int(counted)
    finally:
        conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", (key,))
