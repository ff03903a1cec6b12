"""``python -m bench [--quick] [--json FILE] [--only SECTION,...]``: every comparison,
side by side in one run, one table each.

Sections: ``hotpath`` (``track()`` against a locked dict, prometheus_client and the
PostHog, Segment and Mixpanel SDKs on a local stub), ``threads`` (8 threads at once),
``sqlite`` (persistence end to end against a raw ``executemany``, and a login-heavy
flush with and without the players' history), ``mongo`` (the same on
the nx-27017 wire server, and the commands one flush sends, before and after with
``--before-python``, see :mod:`bench.mongo_commands`; skipped when nx-27017 is not
installed), ``postgres`` (persistence against a hand-written ``COPY`` into the same
partitioned table, and the round trips of one flush, on a throwaway cluster or
``GSO_BENCH_POSTGRES_URL``, see :mod:`bench.postgres_section`), ``reads`` (reads at 1k and
1M sessions of history), ``kpis`` (each KPI query for 30 days, on 60 days vs a year
(1M sessions) of the same daily activity), ``memory`` (RSS with a stuck store),
``forwarding`` (what a webhook forwarder adds to ``track()``), ``rights`` (a flush
with erasure tombstones or pseudonymous ids, an erase against a ``VACUUM``) and ``tail``
(request latency with and without analytics, open loop, and a GIL probe during a
200,000-event flush; see :mod:`bench.tail`, whose ``python -m bench.tail`` takes the
rate, work and stores as parameters). Every figure is a ratio, or comes with the figure
it is compared with, measured in the same run: the machines are shared and noisy.
Nothing leaves 127.0.0.1: the SDKs post to a stub and any other connection is refused.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import platform
import time
from collections.abc import Callable
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from bench import (
    activity,
    data_rights,
    forwarding,
    hotpath,
    kpis,
    memory,
    mongo_commands,
    mongo_section,
    persist,
    postgres_section,
    reads,
    saas,
    sessions,
    tail,
    threads,
)
from bench.stub import loopback_only, stub_server, violations

SECTIONS = (
    "hotpath",
    "threads",
    "sqlite",
    "mongo",
    "postgres",
    "reads",
    "kpis",
    "memory",
    "forwarding",
    "rights",
    "tail",
)
PACKAGES = (
    "gso-analytics",
    "prometheus-client",
    "posthog",
    "segment-analytics-python",
    "mixpanel",
    "pymongo",
    "nx-27017",
    "psycopg",
)


def _cell(value: object) -> str:
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, int | float):
        return f"{value:,}"  # already rounded where it is computed
    return str(value)


def table(title: str, rows: list[dict[str, Any]]) -> str:
    """A plain-text table: the union of the rows' keys as columns, numbers right-aligned."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    numeric = [
        all(isinstance(row.get(c), int | float) or row.get(c) is None for row in rows)
        for c in columns
    ]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]

    def line(values: list[str]) -> str:
        return "  ".join(
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ).rstrip()

    rule = line(["-" * w for w in widths])
    return "\n".join([title, line(columns), rule, *map(line, cells)])


def header() -> dict[str, Any]:
    """The machine and the versions the figures were measured with."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "packages": versions,
    }


def _hotpath(quick: bool) -> dict[str, Any]:
    rounds, calls, single = (15, 200, 100) if quick else (60, 500, 200)
    with stub_server() as stub:
        clients, missing = saas.sdks(stub, {"amount": 50})
        try:
            rows = hotpath.run(rounds, calls, single, sdks=clients)
        finally:
            for client in clients:
                client.close()
        delivered = saas.delivery(stub, clients)
    notes = [
        f"{rounds} rounds x {calls} calls per subject, order rotating; p99 over"
        f" {rounds * single} calls timed one by one; x_*: ratio of medians",
        *missing,
    ]
    if importlib.util.find_spec("prometheus_client") is None:
        notes.append("prometheus_client skipped (not installed: pip install -e '.[bench]')")
    return {"rows": rows, "delivered": delivered, "notes": notes}


def _threads(quick: bool) -> dict[str, Any]:
    rounds, calls = (10, 1000) if quick else (40, 2000)
    return {
        "rows": threads.run(rounds, calls, threads=8),
        "notes": [f"{rounds} rounds; per round 8 threads x {calls} calls, or 1 x {8 * calls}"],
    }


def _sqlite(quick: bool) -> dict[str, Any]:
    n = 20_000 if quick else 100_000
    players, history = (1_000, 10) if quick else (5_000, 40)
    active_players, per_player = (500, 20) if quick else (2_000, 25)
    return {
        "rows": persist.run(n=n),
        "sessions": sessions.run(players=players, history=history),
        "activity": activity.run(players=active_players, events_per_player=per_player),
        "notes": [
            f"{n:,} events, best of 3, alternating",
            f"activity: flush CPU per event of {active_players:,} players x {per_player} events,"
            " with and without activity marks; best of 9",
            f"sessions: a login-heavy flush of {players:,} players x 4 marks (login, logout,"
            f" reconnect, logout); 'history': each player has {history} sessions already;"
            " best of 3",
        ],
    }


def _mongo(quick: bool, before_python: str | None = None) -> dict[str, Any]:
    reason = mongo_section.unavailable()
    if reason is not None:
        return {"skipped": reason}
    sizes, rounds = ((1_000,), 2) if quick else ((1_000, 5_000), 3)
    try:
        rows = mongo_section.run(sizes, rounds)
    except (Exception, SystemExit) as exc:  # nx_27017() ends with SystemExit if it cannot start
        return {"skipped": f"failed: {type(exc).__name__}: {exc}"}
    notes = [f"nx-27017 (?transactions=true), median of {rounds} rounds per size"]
    result: dict[str, Any] = {"rows": rows, "notes": notes}
    # What one flush sends, command by command (bench.mongo_commands); the 'before'
    # column from another interpreter's store when --before-python names one.
    warmup = 100 if quick else mongo_commands.WARMUP
    try:
        commands = mongo_commands.compare(before_python, warmup)
    except (Exception, SystemExit) as exc:
        notes.append(f"commands per flush: failed: {type(exc).__name__}: {exc}")
        return result
    result["commands"] = commands["rows"]
    result["commands_detail"] = commands["results"]
    notes += [f"commands: {note}" for note in commands["notes"]]
    return result


def _postgres(quick: bool) -> dict[str, Any]:
    reason = postgres_section.unavailable()
    if reason is not None:
        return {"skipped": reason}
    sizes, rounds, players = (
        ((1_000, 10_000), 2, 500) if quick else ((1_000, 10_000, 50_000), 3, 2_000)
    )
    try:
        result = postgres_section.run(sizes, rounds, players)
    except (Exception, SystemExit) as exc:
        return {"skipped": f"failed: {type(exc).__name__}: {exc}"}
    result["notes"] = [
        f"median of {rounds} rounds per size, subjects alternating, each in a fresh schema",
        "gso: track() x N + flush(); raw: N rows built as a logger would + one COPY of"
        " them (the SQLite section's comparison); flush_over_copy: flush() alone vs the"
        " COPY of ready rows alone",
        "*_cpu_ms: this process's CPU time per subject / per half (the server's is not in"
        " it): the part of the cost that does not wait on other load",
        f"warm: per size one Analytics and one logger's connection, each on its schema,"
        f" {postgres_section.WARM_FLUSHES} flushes of the same {postgres_section.PLAYERS}"
        f" players first, then {3 * rounds} timed rounds alternating (the rows above: each"
        " subject's first flush into an empty schema, every player new)",
        f"round_trips: one flush of {players:,} players x (login, 5 events, logout), the"
        " statements counted at the driver; 'of which in a pipeline': sent while one was"
        " open, where a write is waited for with the next statement read, not on its own"
        " (BEGIN and COMMIT are not counted)",
    ]
    return result


def _reads(quick: bool) -> dict[str, Any]:
    large, rounds = (100_000, 100) if quick else (1_000_000, 300)
    result = reads.run(large=large, small=1_000, rounds=rounds)
    history = [{"store": key, **figures} for key, figures in result["history"].items()]
    return {"rows": result["rows"], "history": history, "notes": [f"{rounds} calls each"]}


def _kpis(quick: bool) -> dict[str, Any]:
    large, rounds = (100_000, 5) if quick else (1_000_000, 15)
    result = kpis.run(large=large, rounds=rounds)
    history = [{"store": key, **figures} for key, figures in result["history"].items()]
    return {
        "rows": result["rows"],
        "history": history,
        "notes": [
            f"{result['per_day']:,} sessions a day in both stores; median of {rounds} calls"
            " each, alternating; ratio_year_range near 1: the history is not read"
        ],
    }


def _memory(quick: bool) -> dict[str, Any]:
    bound = 20_000 if quick else 100_000
    return {"rows": memory.run(bound), "notes": [f"max_buffered_events = {bound:,}"]}


def _rights(quick: bool) -> dict[str, Any]:
    players, erased, rounds, days = (1_000, 1_000, 5, 5) if quick else (5_000, 10_000, 7, 20)
    return {
        "rows": data_rights.run(players=players, erased=erased, rounds=rounds, days=days),
        "notes": [
            f"flush: {players:,} players x (login + 5 events), best of {rounds}, order rotated;"
            " ratio against the plain store",
            f"erase: one player of {players:,} x {days} days; ratio against a VACUUM of the file",
        ],
    }


def _forwarding(quick: bool) -> dict[str, Any]:
    rounds = 20 if quick else 80
    log = logging.getLogger("gso_analytics")
    level = log.level
    log.setLevel(logging.CRITICAL)  # the blocked endpoint's drops are the point, not news
    try:
        bursts = forwarding.run(rounds, pause=0.05)
        flat_out = forwarding.run(rounds)
    finally:
        log.setLevel(level)
    return {
        "rows": [{"load": "bursts", **row} for row in bursts]
        + [{"load": "flat out", **row} for row in flat_out],
        "notes": [f"{rounds} rounds x 1000 track() calls; bursts are 50 ms apart"],
    }


def _tail(quick: bool) -> dict[str, Any]:
    rounds, seconds, probe_rounds = (2, 2.0, 1) if quick else (4, 4.0, 3)
    stores = ["memory", "sqlite"]
    rows = tail.latency(
        stores, rate=1000.0, work_us=150.0, seconds=seconds, rounds=rounds, flush_interval=1.0
    )
    return {
        "rows": rows,
        "probe": tail.probe(stores, events=200_000, rounds=probe_rounds),
        "notes": [
            f"1,000 requests/s open loop, 150 us of Python + 3 track() each, flush every 1 s;"
            f" {rounds} rounds x {seconds:g} s per arm, arms alternating; quantiles per round,"
            " medians over rounds; 'none B / none A' is the A/A noise",
            f"probe: oversleep of a 100 us sleep during one flush of 200,000 events (flush_),"
            f" a GIL-free CPU burn as long (busy_), nothing (idle_); medians of {probe_rounds}",
        ],
    }


TITLES: dict[str, tuple[str, Callable[[bool], dict[str, Any]]]] = {
    "hotpath": ("Request path: ns per call, side by side", _hotpath),
    "threads": ("track() from 8 threads at once (and 1 thread for reference)", _threads),
    "sqlite": ("SQLite persistence, end to end (track + flush) vs raw executemany", _sqlite),
    "mongo": (
        "MongoDB wire server (nx-27017): flush() vs raw insert_many; commands per flush",
        _mongo,
    ),
    "postgres": (
        "PostgreSQL: track() + flush() vs a hand-written COPY into the same table; round trips",
        _postgres,
    ),
    "reads": ("Read cost vs history (SQLite), microseconds per call", _reads),
    "kpis": ("KPI queries for 30 days vs history (SQLite), milliseconds per call", _kpis),
    "memory": ("Memory with a stuck store (RSS)", _memory),
    "forwarding": ("track() with a webhook forwarder (bench.forwarding)", _forwarding),
    "rights": ("Data rights (SQLite): tombstone lookup, pseudonymous ids, erase", _rights),
    "tail": ("Request latency with and without analytics (bench.tail), us", _tail),
}


def _print_section(name: str, title: str, result: dict[str, Any], seconds: float) -> None:
    if "skipped" in result:
        print(f"{title}\n  skipped: {result['skipped']}\n", flush=True)
        return
    print(table(title, result["rows"]))
    for extra, label in (
        ("delivered", "stub received"),
        ("history", "seeded history"),
        ("sessions", "login-heavy flush, sessions from marks"),
        ("activity", "flush CPU per event, with and without activity marks"),
        ("probe", "GIL probe during one flush, us"),
        ("commands", "one flush's commands and written documents (bench.mongo_commands)"),
        ("warm", "the same players flush after flush (a worker flushing every second)"),
        ("round_trips", "one flush's round trips, by statement"),
    ):
        if result.get(extra):
            print(table(f"  {label}:", result[extra]))
    for note in result.get("notes", []):
        print(f"  ({note})")
    print(f"  [{name}: {seconds:.1f} s]\n", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog=f"sections: {', '.join(SECTIONS)}",
    )
    parser.add_argument("--quick", action="store_true", help="fewer rounds, smaller sizes")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument("--only", help="comma-separated sections to run (default: all)")
    parser.add_argument(
        "--before-python",
        help="mongo section: a python whose installed store is the 'before' column of the"
        " commands-per-flush table (e.g. a venv of 0.2; see bench.mongo_commands)",
    )
    args = parser.parse_args(argv)
    chosen = SECTIONS if not args.only else tuple(s.strip() for s in args.only.split(","))
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; known: {', '.join(SECTIONS)}")

    # Belt and braces: the SDKs are given 127.0.0.1 hosts; any other connection fails.
    os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"
    loopback_only()
    started = time.perf_counter()
    info = header()
    packages = ", ".join(f"{k} {v}" for k, v in info["packages"].items() if v)
    print(
        f"gso_analytics benchmarks{' (--quick)' if args.quick else ''}, {info['date']}\n"
        f"{info['python']} on {info['platform']}, {info['cpus']} CPUs,"
        f" load average {info['load_average_1m']}\n{packages}\n",
        flush=True,
    )
    results: dict[str, Any] = {"header": info, "quick": args.quick, "sections": {}}
    for name in chosen:
        title, section = TITLES[name]
        section_start = time.perf_counter()
        # The mongo section alone takes an option: the 'before' interpreter.
        result = _mongo(args.quick, args.before_python) if name == "mongo" else section(args.quick)
        seconds = time.perf_counter() - section_start
        result["seconds"] = round(seconds, 1)
        results["sections"][name] = result
        _print_section(name, title, result, seconds)
    results["seconds"] = round(time.perf_counter() - started, 1)
    results["refused_connections"] = violations()
    if results["refused_connections"]:
        print(f"refused connections off 127.0.0.1: {results['refused_connections']}")
    print(f"total: {results['seconds']:.1f} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
