"""``python -m bench.mongo_commands [--before-python PATH] [--warmup N] [--json FILE]``:
what one flush sends to a MongoDB server, command by command, and how large the
documents it writes are, for the store installed in this interpreter and, with
``--before-python``, for the one installed in another (e.g. a venv of 0.2).

One flush of :data:`EVENTS` ``track("credits.earn", user, {"amount": 5})`` calls over
:data:`PLAYERS` players plus :data:`SESSIONS` login/logout pairs, all on one day, after
``--warmup`` small flushes (a new player's login, one event, logout) on the same day:
in 0.2 the ``daily``, ``monthly`` and ``totals`` documents keep the ids of the last
1,000 batches that wrote them (``appliedBatches``), so 1,000 warm-up flushes show the
steady state, where each batch updates documents that hold 1,000 ids.

Per flush, from a ``pymongo.monitoring.CommandListener`` given to
``MongoStore.from_url(url, event_listeners=[...])``:

- the commands sent, by name (``insert``, ``update``, ``find``, ``commitTransaction``...),
  and their total size (``len(bson.encode(event.command))``, documents included);
- the largest document a write carries (each document of an ``insert``, the ``u`` of
  each ``update`` statement): over the batch's own writes, over the batch's own writes
  into the shared documents (``daily``, ``monthly``, ``totals``), and over the writes
  of a transaction that writes those documents (the new store's roll-up of deltas,
  which its ``apply`` runs after the batch: its commands are the flush's too);
- then the size of the ``daily``, ``monthly`` and ``totals`` documents, read back: a
  batch that updates one of them (0.2) updates a document that large, whatever the
  size of its ``u``.

The measuring side (:func:`measure`, ``--child``) uses only pymongo, bson and what both
versions have (``gso_analytics.Analytics``, ``MongoStore.from_url``), and imports
nothing from ``bench``: the other interpreter runs this file by its path (``-I``, from
a temporary directory, so no checkout's ``gso_analytics`` shadows its own install).
The parent starts one ``nx-27017`` (transactions on with ``?transactions=true``; it
says it is standalone) and gives every run a database of its own.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

EVENTS = 3_000
PLAYERS = 500
SESSIONS = 100
AMOUNT = 5
WARMUP = 1_000
#: The documents every batch's counters end up in.
HOT = ("daily", "monthly", "totals")
#: The default collection prefix of both versions.
PREFIX = "gso_analytics_"
#: Store URL options per variant: ``transactions=true`` makes the store use
#: transactions on nx-27017; 0.2 had a standalone path (``transactions=false``).
VARIANTS = {
    "transactions": "ttlIndex=false&transactions=true",
    "standalone": "ttlIndex=false&transactions=false",
}
#: The table's rows after the per-name ones: (key of a result, label).
METRICS = (
    ("flush_commands", "commands, all"),
    ("flush_command_bytes", "command bytes, all"),
    ("transactions", "transactions committed"),
    ("largest_txn_write_bytes", "largest doc in the batch transaction's writes, B"),
    ("largest_outside_write_bytes", "largest doc in writes outside transactions, B"),
    ("hot_update_statements", "batch's own updates of daily/monthly/totals"),
    ("largest_hot_write_bytes", "largest u of those, B"),
    ("hot_doc_updated_bytes", "largest hot doc the batch updates, B"),
    ("rollup_commands", "roll-up commands (of 'commands, all')"),
    ("largest_rollup_write_bytes", "largest doc in the roll-up's writes, B"),
    ("daily_doc_bytes", "daily doc after the flush, B"),
    ("monthly_doc_bytes", "monthly doc after the flush, B"),
    ("totals_doc_bytes", "totals doc after the flush, B"),
    ("daily_guard_ids", "appliedBatches ids in daily doc"),
    ("monthly_guard_ids", "appliedBatches ids in monthly doc"),
    ("totals_guard_ids", "appliedBatches ids in totals doc"),
    ("flush_ms", "flush wall time, ms (indicative)"),
)


# -- measuring (runs under either version: stdlib, pymongo, gso_analytics only) -----------


def _doc_size(doc: Any) -> int:
    import bson

    if isinstance(doc, Mapping):
        return len(bson.encode(doc))
    # An update pipeline (a list of stages): its size as a one-field document.
    return len(bson.encode({"u": doc}))


def _written_docs(command_name: str, command: Mapping[str, Any]) -> list[Any]:
    """The documents a write command carries: an insert's documents, each update
    statement's ``u``, a findAndModify's ``update``."""
    if command_name == "insert":
        return list(command.get("documents", ()))
    if command_name == "update":
        return [statement["u"] for statement in command.get("updates", ())]
    if command_name == "findAndModify" and "update" in command:
        return [command["update"]]
    return []


def _recorder() -> Any:
    """A ``CommandListener`` that keeps, while ``on``, one summary per command started."""
    import bson
    from pymongo import monitoring

    class Recorder(monitoring.CommandListener):
        def __init__(self) -> None:
            self.on = False
            self.commands: list[dict[str, Any]] = []
            self.failures: Counter[str] = Counter()
            self._lock = threading.Lock()

        def started(self, event: monitoring.CommandStartedEvent) -> None:
            if not self.on:
                return
            command = event.command
            name = event.command_name
            collection = command.get(name) if isinstance(command.get(name), str) else None
            lsid = command.get("lsid", {}).get("id")
            txn = command.get("txnNumber")
            in_txn = txn is not None and command.get("autocommit") is False
            summary = {
                "name": name,
                "bytes": len(bson.encode(command)),
                "collection": collection,
                "txn": (bytes(lsid) if lsid is not None else None, txn) if in_txn else None,
                "written": [_doc_size(doc) for doc in _written_docs(name, command)],
            }
            with self._lock:
                self.commands.append(summary)

        def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
            pass

        def failed(self, event: monitoring.CommandFailedEvent) -> None:
            if self.on:
                with self._lock:
                    self.failures[event.command_name] += 1

    return Recorder()


def _summarize(commands: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts and sizes of one flush's commands. A write is the roll-up's when its
    transaction writes a shared document (the new store), the batch transaction's in
    any other transaction, or outside transactions (the heartbeat; 0.2's guarded
    counter upserts after the commit; all of 0.2's standalone path)."""
    hot = {f"{PREFIX}{name}" for name in HOT}
    rollup_txns = {
        c["txn"]
        for c in commands
        if c["txn"] is not None and c["collection"] in hot and c["written"]
    }
    by_name: Counter[str] = Counter()
    bytes_by_name: Counter[str] = Counter()
    by_collection: Counter[str] = Counter()
    written: dict[str, list[tuple[int, str]]] = {"txn": [], "outside": [], "rollup": []}
    own_hot: list[int] = []
    own_hot_written: set[str] = set()
    hot_statements = 0
    rollup_commands = 0
    for c in commands:
        by_name[c["name"]] += 1
        bytes_by_name[c["name"]] += c["bytes"]
        where = (c["collection"] or "-").removeprefix(PREFIX)
        by_collection[f"{c['name']} {where}"] += 1
        kind = "outside" if c["txn"] is None else "rollup" if c["txn"] in rollup_txns else "txn"
        written[kind] += [(size, f"{c['name']} {where}") for size in c["written"]]
        if kind == "rollup":
            rollup_commands += 1
        elif c["collection"] in hot and c["written"]:
            own_hot += c["written"]
            own_hot_written.add(where)
            hot_statements += len(c["written"]) if c["name"] == "update" else 0
    result = {
        "commands": dict(sorted(by_name.items())),
        "command_bytes": dict(sorted(bytes_by_name.items())),
        "by_collection": dict(sorted(by_collection.items())),
        "flush_commands": len(commands),
        "flush_command_bytes": sum(c["bytes"] for c in commands),
        "transactions": len({c["txn"] for c in commands if c["txn"] is not None}),
        "largest_hot_write_bytes": max(own_hot, default=0),
        "hot_update_statements": hot_statements,
        "own_hot_written": sorted(own_hot_written),
        "rollup_commands": rollup_commands,
    }
    for kind, docs in written.items():  # None: no such write (no transaction, no roll-up)
        size, where = max(docs, default=(None, ""))
        result[f"largest_{kind}_write_bytes"] = size
        result[f"largest_{kind}_write_in"] = where
    return result


def _database_url(base: str, name: str, query: str) -> str:
    parts = urlsplit(base)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", query, ""))


def measure(base: str, variant: str, warmup: int = WARMUP) -> dict[str, Any]:
    """One variant on a fresh database of the server at ``base``: ``warmup`` small
    flushes, then the measured flush with the listener on, then the shared documents
    read back. Raises when the figures are not what the flushes stored."""
    import bson
    import pymongo
    from gso_analytics.backends.mongo import MongoStore

    import gso_analytics
    from gso_analytics import Analytics

    name = f"bench_cmds_{uuid.uuid4().hex[:12]}"
    url = _database_url(base, name, VARIANTS[variant])
    recorder = _recorder()
    # All on one day (today, UTC), a millisecond per call from 00:00:01.
    start = datetime.now(UTC).replace(hour=0, minute=0, second=1, microsecond=0)
    now = [start]

    def clock() -> datetime:
        now[0] += timedelta(milliseconds=1)
        return now[0]

    day, month = start.date().isoformat(), start.strftime("%Y-%m")
    store = MongoStore.from_url(url, event_listeners=[recorder])
    client: Any = pymongo.MongoClient(base, serverSelectionTimeoutMS=5000)
    try:
        analytics = Analytics(store, flush_interval=3600, prune_interval=1e9, clock=clock)
        try:
            started = time.perf_counter()
            for i in range(warmup):
                analytics.on_login(f"warm{i}")
                analytics.track("credits.earn", f"warm{i}", {"amount": 1})
                analytics.on_logout(f"warm{i}")
                analytics.flush()
            warmup_s = time.perf_counter() - started
            for i in range(SESSIONS):
                analytics.on_login(f"user{i}")
            for i in range(EVENTS):
                analytics.track("credits.earn", f"user{i % PLAYERS}", {"amount": AMOUNT})
            for i in range(SESSIONS):
                analytics.on_logout(f"user{i}")
            recorder.on = True
            started = time.perf_counter()
            analytics.flush()
            flush_s = time.perf_counter() - started
            recorder.on = False
        finally:
            analytics.stop()
        db = client[name]
        docs = {
            "daily": db[f"{PREFIX}daily"].find_one({"day": day}),
            "monthly": db[f"{PREFIX}monthly"].find_one({"month": month}),
            "totals": db[f"{PREFIX}totals"].find_one({}),
        }
        stats = store.get_day(day)
        events = db[f"{PREFIX}events"].count_documents({"day": day})
    finally:
        store.close()
        client.drop_database(name)
        client.close()
    # The work was done: every event stored and counted once (reads add deltas not
    # folded yet, so these hold whatever the roll-up did).
    credits = warmup + EVENTS * AMOUNT
    players = warmup + max(SESSIONS, PLAYERS)  # dau: every player with a mark
    got = (events, stats["creditsEarned"] if stats else None, stats["dau"] if stats else None)
    if got != (warmup + EVENTS, credits, players):
        raise AssertionError(
            f"{variant}: stored (events, creditsEarned, dau) = {got},"
            f" expected {(warmup + EVENTS, credits, players)}"
        )
    if recorder.failures:
        raise AssertionError(f"{variant}: commands failed during the flush: {recorder.failures}")
    result = _summarize(recorder.commands)
    for key, doc in docs.items():
        result[f"{key}_doc_bytes"] = len(bson.encode(doc)) if doc is not None else None
    # The largest shared document the batch's own writes updated, however small their
    # u (0.2; in the new store only the roll-up updates them).
    result["hot_doc_updated_bytes"] = max(
        (result[f"{key}_doc_bytes"] or 0 for key in result.pop("own_hot_written")), default=0
    )
    for key, doc in docs.items():
        result[f"{key}_guard_ids"] = len((doc or {}).get("appliedBatches", ()))
    module = sys.modules[MongoStore.__module__]
    result.update(
        variant=variant,
        version=gso_analytics.__version__,
        store_module=str(module.__file__),
        warmup_flushes=warmup,
        warmup_s=round(warmup_s, 1),
        flush_ms=round(flush_s * 1000, 1),
        stored={"events": events, "creditsEarned": credits, "dau": players},
    )
    return result


# -- the comparison (the parent: starts the server, runs the other interpreter) ----------


def run_child(python: str, base: str, variants: list[str], warmup: int) -> list[dict[str, Any]]:
    """:func:`measure` under another interpreter, by this file's path, from a
    directory that holds no ``gso_analytics``."""
    done = subprocess.run(
        [
            *(python, "-I", str(Path(__file__).resolve()), "--child", base),
            *("--variants", ",".join(variants), "--warmup", str(warmup)),
        ],
        cwd=tempfile.gettempdir(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{python} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    results: list[dict[str, Any]] = json.loads(done.stdout)
    return results


def rows(columns: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per metric, one column per measured store (label, result)."""
    names = sorted({n for _, result in columns for n in result["commands"]})
    table: list[dict[str, Any]] = []
    for key, label in [(n, f"{n} commands") for n in names] + [
        (f"{n}:bytes", f"{n} bytes") for n in names
    ]:
        row: dict[str, Any] = {"per flush": label}
        for column, result in columns:
            name, _, of_bytes = key.partition(":")
            row[column] = result["command_bytes" if of_bytes else "commands"].get(name, 0)
        table.append(row)
    for key, label in METRICS:
        row = {"per flush": label}
        row.update((column, result.get(key)) for column, result in columns)
        table.append(row)
    return table


def compare(before_python: str | None, warmup: int, standalone: bool = True) -> dict[str, Any]:
    """Start nx-27017, measure this interpreter's store (``after``) and, with
    ``before_python``, that one's, on the same server; the table's rows and notes."""
    from bench import mongo_flush

    columns: list[tuple[str, dict[str, Any]]] = []
    notes = [
        f"one flush of {EVENTS:,} track('credits.earn', user, {{'amount': {AMOUNT}}}) over"
        f" {PLAYERS} players + {SESSIONS} login/logout pairs, all on one day, after"
        f" {warmup:,} small flushes (a new player's login, one event, logout) on that day"
        " (warm-up: 0.2's appliedBatches guard arrays hold up to 1,000 ids, full after"
        " 1,000 batches)",
        "bytes: len(bson.encode(...)) of each command, documents included; a write's"
        " documents: each insert document, each update statement's u",
        "hot documents: daily, monthly, totals; 'roll-up': transactions that write them"
        " (the new store folds the batches' deltas into them after the batch, in the same flush)",
    ]
    with mongo_flush.nx_27017() as base:
        if before_python:
            variants = ["transactions", *(["standalone"] if standalone else [])]
            for result in run_child(before_python, base, variants, warmup):
                label = f"before ({result['variant']})"
                columns.append((label, result))
                notes.append(
                    f"{label}: gso_analytics {result['version']}, {result['store_module']}"
                    f" ({before_python})"
                )
        else:
            notes.append(
                "before: check out 0.2 (git worktree add /tmp/gso-before 657cabe), make a venv"
                " there (python3 -m venv /tmp/gso-before/.venv && /tmp/gso-before/.venv/bin/pip"
                ' install -e "/tmp/gso-before[dev]"), and pass --before-python'
                " /tmp/gso-before/.venv/bin/python to python -m bench.mongo_commands or"
                " python -m bench"
            )
        after = measure(base, "transactions", warmup)
        columns.append(("after (transactions)", after))
        notes.append(
            f"after: gso_analytics {after['version']}, {after['store_module']} ({sys.executable})"
        )
    kinds = (
        ("txn", "batch transaction"),
        ("outside", "outside transactions"),
        ("rollup", "roll-up"),
    )
    for label, result in columns:
        largest = [
            f"{kind} {result[f'largest_{key}_write_bytes']:,} B"
            f" ({result[f'largest_{key}_write_in']})"
            for key, kind in kinds
            if result[f"largest_{key}_write_bytes"]
        ]
        notes.append(f"{label}, largest written docs: {'; '.join(largest)}")
    notes.append(
        "warm-up took " + ", ".join(f"{label} {result['warmup_s']} s" for label, result in columns)
    )
    return {
        "rows": rows(columns),
        "results": {label: result for label, result in columns},
        "notes": notes,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.mongo_commands", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--before-python", help="a python whose store is the 'before' column")
    parser.add_argument("--warmup", type=int, default=WARMUP, help="small flushes first")
    parser.add_argument("--no-standalone", action="store_true", help="skip 0.2's standalone")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--child", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--variants", default="transactions", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        results = [measure(args.child, v, args.warmup) for v in args.variants.split(",")]
        json.dump(results, sys.stdout)
        return 0
    from bench.__main__ import table

    result = compare(args.before_python, args.warmup, standalone=not args.no_standalone)
    print(table("MongoDB: commands and written documents per flush", result["rows"]))
    for note in result["notes"]:
        print(f"  ({note})")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
