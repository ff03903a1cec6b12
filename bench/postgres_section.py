"""The PostgreSQL section of ``python -m bench``: persistence against a hand-written
``COPY`` into the same table, and the round trips of one flush.

The server: ``GSO_BENCH_POSTGRES_URL`` (or the tests' ``GSO_TEST_POSTGRES_URL``), else a
throwaway cluster started as the tests start one (``tests/pg_server.py``: ``initdb``
and ``pg_ctl`` in a temporary directory, on a free port), stopped at the end.

Per size N and round, the two subjects alternate, each in a fresh schema, as the
SQLite section (:mod:`bench.persist`) compares them: from the application's calls to
stored rows, each side's per-event Python inside its clock.

- ``gso``: N ``track("credits.earn", ...)`` calls over 500 users, then
  ``Analytics.flush()``: the batch's transaction (its claim, the players' fences and
  tombstones, (day, user) and (month, user) records, their sessions and activity runs,
  the events' ``COPY``, its delta), then the roll-up's transaction. The store is open
  and has read its erasure secret before the clock starts (once per process, as a
  process that has flushed before), as the raw subject's connection is open;
- ``raw``: the same N events as a hand-written logger would keep them, one row each
  (``datetime.now(UTC).isoformat()``, the cheapest of the ways tried here to give
  ``COPY`` a time; ``data`` through ``json.dumps``; the day cut from the time), then
  one ``COPY`` of them in one transaction into the store's own events table
  (partitioned by day, indexed, created by the store).

Both take the time of the real clock. Those rows are each subject's first flush into
an empty schema, every player new; the ``warm`` rows (:func:`warm`) compare the same
two subjects flush after flush over the same players, as a worker flushing every
second sees them. ``gso_over_raw`` (the goal's figure) is the
events per second of the whole of each; ``flush_over_copy`` compares the two halves
that touch the server, ``flush()`` alone against the ``COPY`` of rows built before:
the harder figure, since ``flush()`` also aggregates and encodes what ``track()`` only
queued, while the rows given to the ``COPY`` are ready.

Each row also gives this process's CPU time per subject and per half (medians): on a
machine shared with other work the wall time mostly measures waiting for a CPU, for
the client and for the server alike, where the client's own CPU does not move with
the load.

Round trips: every statement, ``executemany`` and ``COPY`` one flush sends, counted at
the driver, for a flush of players who log in, play and log out (the heaviest kind of
batch), and how many of them were sent while a pipeline was open: there a statement
whose result nothing reads is queued and waited for together with the next statement
that is read (the roll-up's lock with its read; a batch part's fences of the walk, its
first days with its (day, user) records, its sessions, logout marks and activity runs
together before the ``COPY``), so those do not each cost a round trip. ``BEGIN`` and
``COMMIT`` are not counted.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from gso_analytics import Analytics, open_store

TESTS = Path(__file__).resolve().parent.parent / "tests"


def unavailable() -> str | None:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install -e '.[dev]')"
    return None


@contextlib.contextmanager
def server() -> Iterator[str]:
    """A server URL without a schema: the environment's, or a throwaway cluster."""
    url = os.environ.get("GSO_BENCH_POSTGRES_URL") or os.environ.get("GSO_TEST_POSTGRES_URL")
    if url:
        yield url
        return
    sys.path.insert(0, str(TESTS))
    import pg_server

    try:
        cluster = pg_server.Cluster()
    except BaseException as exc:  # pytest's skip when initdb is missing
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise SystemExit(f"no PostgreSQL server: {exc}") from None
    try:
        yield cluster.url()
    finally:
        cluster.destroy()


def _schema_url(base: str, schema: str) -> str:
    return f"{base}{'&' if '?' in base else '?'}schema={schema}"


#: (whole, half): wall and CPU seconds of the whole subject and of its half that
#: touches the server (``flush()``; the ``COPY``).
Timing = tuple[float, float, float, float]


#: Players of the benchmark's events (``u0`` ... ``u499``, one event each in turn).
PLAYERS = 500
#: Flushes of the same players before the warm rounds are timed (:func:`warm`).
WARM_FLUSHES = 3


@contextlib.contextmanager
def flushing(url: str, size: int) -> Iterator[Analytics]:
    """An ``Analytics`` on ``url`` whose store has read its erasure secret (once per
    process, as by an earlier flush), stopped and closed at the end."""
    analytics = Analytics(open_store(url), max_buffered_events=size + 1)
    try:
        analytics.store.erasure_key()
        yield analytics
    finally:
        analytics.stop()
        analytics.store.close()


def track_and_flush(analytics: Analytics, size: int, before: int = 0) -> Timing:
    """``size`` events over :data:`PLAYERS` players, then ``flush()``; checks that the
    store holds ``before + size`` events."""
    start, cpu = time.perf_counter(), time.process_time()
    for i in range(size):
        analytics.track("credits.earn", f"u{i % PLAYERS}", {"amount": i % 100})
    half, half_cpu = time.perf_counter(), time.process_time()
    analytics.flush()
    end, end_cpu = time.perf_counter(), time.process_time()
    store = analytics.store
    (count,) = store._read("SELECT count(*) FROM {s}.events")[0]  # type: ignore[attr-defined]
    if count != before + size:
        raise AssertionError(f"the flush stored {count - before} of {size} events")
    return end - start, end_cpu - cpu, end - half, end_cpu - half_cpu


def run_flush(url: str, size: int) -> Timing:
    with flushing(url, size) as analytics:
        return track_and_flush(analytics, size)


@contextlib.contextmanager
def copying(url: str) -> Iterator[tuple[Any, str]]:
    """A connection of its own and the schema of a store made on ``url`` (its events
    table, today's partition made), for the hand-written logger."""
    import psycopg
    from gso_analytics.backends.postgres import events

    store = open_store(url)
    store.make_partitions(events.ahead(datetime.now(UTC), 1))  # type: ignore[attr-defined]
    schema = store.schema  # type: ignore[attr-defined]
    store.close()
    with psycopg.connect(url.split("?")[0], autocommit=True) as conn:
        yield conn, schema


def rows_and_copy(conn: Any, schema: str, size: int) -> Timing:
    """The hand-written logger: ``size`` rows as it would build them, one ``COPY``."""
    start, cpu = time.perf_counter(), time.process_time()
    rows = []
    for i in range(size):
        ts = datetime.now(UTC).isoformat()
        rows.append(
            (ts, f"u{i % PLAYERS}", "credits.earn", json.dumps({"amount": i % 100}), ts[:10])
        )
    half, half_cpu = time.perf_counter(), time.process_time()
    with (
        conn.transaction(),
        conn.cursor().copy(
            f"COPY {schema}.events (ts, user_id, event, data, day) FROM STDIN"
        ) as copy,
    ):
        for row in rows:
            copy.write_row(row)
    end, end_cpu = time.perf_counter(), time.process_time()
    return end - start, end_cpu - cpu, end - half, end_cpu - half_cpu


def run_raw(url: str, size: int) -> Timing:
    with copying(url) as (conn, schema):
        return rows_and_copy(conn, schema, size)


def persistence(base: str, sizes: tuple[int, ...], rounds: int) -> list[dict[str, object]]:
    import uuid

    rows: list[dict[str, object]] = []
    for size in sizes:
        gso: list[Timing] = []
        raw: list[Timing] = []
        for _ in range(rounds):
            gso.append(run_flush(_schema_url(base, f"b_{uuid.uuid4().hex[:12]}"), size))
            raw.append(run_raw(_schema_url(base, f"b_{uuid.uuid4().hex[:12]}"), size))

        rows.append(compared(size, gso, raw))
    return rows


def compared(size: int, gso: list[Timing], raw: list[Timing]) -> dict[str, object]:
    """One row of the comparison: medians of the rounds of each subject."""

    def rate(runs: list[Timing], at: int) -> float:
        return statistics.median(size / run[at] for run in runs)

    def cpu_ms(runs: list[Timing], at: int) -> float:
        return round(statistics.median(run[at] for run in runs) * 1000, 1)

    return {
        "events_per_flush": size,
        "gso_events_per_s": round(rate(gso, 0)),
        "raw_events_per_s": round(rate(raw, 0)),
        "gso_over_raw": round(rate(gso, 0) / rate(raw, 0), 2),
        "flush_over_copy": round(rate(gso, 2) / rate(raw, 2), 2),
        "gso_cpu_ms": cpu_ms(gso, 1),
        "raw_cpu_ms": cpu_ms(raw, 1),
        "flush_cpu_ms": cpu_ms(gso, 3),
        "copy_cpu_ms": cpu_ms(raw, 3),
    }


def warm(base: str, sizes: tuple[int, ...], rounds: int) -> list[dict[str, object]]:
    """The same comparison flush after flush: per size, one ``Analytics`` (and one
    logger's connection) each on a schema of its own, :data:`WARM_FLUSHES` rounds of
    each first, then ``rounds`` timed ones, alternating. What a worker flushing every
    second sees: its players are mostly those of its last flush (their (day, user)
    records are stored, their sessions open, their fences there) and both tables
    already hold events. The rows of :func:`persistence` are each subject's first flush
    into an empty schema, every player new."""
    import uuid

    rows: list[dict[str, object]] = []
    for size in sizes:
        gso: list[Timing] = []
        raw: list[Timing] = []
        gso_url = _schema_url(base, f"b_{uuid.uuid4().hex[:12]}")
        raw_url = _schema_url(base, f"b_{uuid.uuid4().hex[:12]}")
        with flushing(gso_url, size) as analytics, copying(raw_url) as (conn, schema):
            for n in range(WARM_FLUSHES + rounds):
                timed = (
                    track_and_flush(analytics, size, before=n * size),
                    rows_and_copy(conn, schema, size),
                )
                if n >= WARM_FLUSHES:
                    gso.append(timed[0])
                    raw.append(timed[1])
        rows.append({**compared(size, gso, raw), "flushes_before": WARM_FLUSHES})
    return rows


@contextlib.contextmanager
def counted() -> Iterator[Counter[str]]:
    """Count what the driver sends: ``execute``, ``executemany`` and ``copy`` calls, and
    (under ``in a pipeline``) how many of them were sent while a pipeline was open:
    those do not wait for the server one by one (see :mod:`.batch`)."""
    import psycopg

    seen: Counter[str] = Counter()
    originals = {name: getattr(psycopg.Cursor, name) for name in ("execute", "executemany", "copy")}

    def wrap(name: str) -> Any:
        original = originals[name]

        def call(self: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
            words = str(query).split(None, 1)  # "": the pool's check of a connection
            seen[f"{name} {words[0].upper() if words else '(check)'}"] += 1
            if self.connection._pipeline is not None:
                seen["in a pipeline"] += 1
            return original(self, query, *args, **kwargs)

        return call

    for name in originals:
        setattr(psycopg.Cursor, name, wrap(name))
    try:
        yield seen
    finally:
        for name, original in originals.items():
            setattr(psycopg.Cursor, name, original)


def round_trips(base: str, players: int) -> list[dict[str, object]]:
    import uuid

    at = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    url = _schema_url(base, f"b_{uuid.uuid4().hex[:12]}")
    analytics = Analytics(open_store(url), clock=lambda: at)
    try:
        analytics.flush()  # the erasure secret read once per process, not per flush
        for i in range(players):
            analytics.on_login(f"u{i}", f"name{i}")
            for _ in range(5):
                analytics.track("credits.earn", f"u{i}", {"amount": 5})
            analytics.on_logout(f"u{i}")
        with counted() as seen:
            analytics.flush()
    finally:
        analytics.stop()
        analytics.store.close()
    piped = seen.pop("in a pipeline", 0)
    rows: list[dict[str, object]] = [
        {"statement": name, "round_trips": count} for name, count in sorted(seen.items())
    ]
    rows.append({"statement": "total", "round_trips": sum(seen.values())})
    rows.append({"statement": "of which in a pipeline", "round_trips": piped})
    return rows


def run(sizes: tuple[int, ...], rounds: int, players: int) -> dict[str, Any]:
    with server() as base:
        return {
            "rows": persistence(base, sizes, rounds),
            "warm": warm(base, sizes, 3 * rounds),
            "round_trips": round_trips(base, players),
        }
