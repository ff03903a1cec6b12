"""``python -m bench.scale [--quick] [--json FILE] [--markdown FILE]``: what one worker,
one SQLite file and one MongoDB store carry, measured on generated games.

Why: a team sizing a game asks how many players and events the library carries and
at what cost. Every figure here comes from games drawn by the demo's seeded planner
(:mod:`gso_analytics.demo`: players joining over the month, retention decaying, 1-3
sessions a day, the economy) and replayed through the public API, so the stores hold
exactly what a game's workers would have written. From them, in one run:

- **store bytes**, split into the event stream (bytes per event: tables and indexes;
  the prune job keeps only ``event_ttl`` of it, 7 days by default) and everything else
  (bytes per player-day: sessions, activity, the (day, user) records, the counters),
  on SQLite (``dbstat``) and on MongoDB (``dbStats``/``collStats`` of the nx-27017
  wire server: BSON data and index bytes, before any compression a real server adds);
- **reads**: ``gso-analytics report`` and the KPIs of 30 days, each in a fresh process
  (wall time, and its peak RSS above the interpreter's own); ``get_metrics()`` and a
  Prometheus scrape (median of several, in process);
- **slopes**: each figure against players (days fixed) and against days (players
  fixed), as the exponent k of a least-squares fit of ``figure ~ size^k`` over three
  sizes (k = 0 flat, k = 1 linear), and the figure at 1M players extrapolated from it;
- **throughput**: the highest tracked events/s one started worker sustains (its flush
  thread keeping up: the buffer in the second half of the run never above what three
  flush intervals bring) into SQLite and into MongoDB, doubling the rate until it
  does not; and the CPU share of one core the worker spends at 1,000 events/s.

Sizes (default): SQLite 10k, 30k and 100k players over 30 days, and 10k players over
7, 14 and 30 days; MongoDB (nx-27017, a Python server, far slower than mongod) 500,
1,000 and 2,000 players over 7 days (``--only sqlite|mongo`` runs one part). 1M
players is ~140 million API calls: hours of replay on a 2-core machine, so it is
extrapolated from the slope, and labelled so.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from gso_analytics import Analytics, open_store
from gso_analytics.demo import SimClock, plan_demo, replay
from gso_analytics.store import Store

LAST_DAY = date(2026, 11, 30)
SEED = 7
PREFIX = "gso_analytics_"
#: What the extrapolation column is for.
TARGET_PLAYERS = 1_000_000
#: Flush interval of the throughput runs: short, so a run holds many flushes.
FLUSH_INTERVAL_S = 0.5


@contextlib.contextmanager
def _nx_27017() -> Iterator[str]:
    from bench import mongo_flush  # pymongo: imported only when MongoDB is measured

    with mongo_flush.nx_27017() as base:
        yield base


def _mongo_url(base: str) -> str:
    from bench import mongo_flush

    name = f"scale_{uuid.uuid4().hex[:10]}"
    # transactions=true: nx-27017 runs them but says it is standalone; no TTL index,
    # so nothing expires while a month of events is measured.
    return mongo_flush.database_url(base, name) + "?transactions=true&ttlIndex=false"


# -- a game, replayed into a store ------------------------------------------------------


def fill(url: str, players: int, days: int) -> dict[str, Any]:
    """Replay a seeded game of ``players`` over ``days`` ending on :data:`LAST_DAY`
    into ``url``, then run the prune job once, as a started worker does every
    ``prune_interval``: the store then holds what a live game's holds (7 days of
    events, the default ``event_ttl``). Its size in calls, events and player-days, the
    replay's time and the prune's."""
    plan = plan_demo(players, days, SEED, LAST_DAY)
    clock = SimClock(datetime.combine(plan.first_day, datetime.min.time(), UTC))
    started = time.perf_counter()
    with open_store(url) as store:
        analytics = Analytics(store, clock=clock, forwarders=[])
        calls = replay(plan, analytics, clock)
        stats = analytics.stats()
        history = analytics.get_last_30_days() if days <= 30 else []
        replayed = time.perf_counter()
        pruned = analytics.prune()
        prune_s = time.perf_counter() - replayed
        analytics.stop()
    if stats["dropped"] or stats["rejected"] or stats["flushed"] != calls:
        raise RuntimeError(f"the replay lost calls: {stats}")
    return {
        "players": players,
        "days": days,
        "calls": calls,
        "player_days": sum(int(day["dau"]) for day in history),
        "fill_s": round(replayed - started, 1),
        "pruned_events": pruned.events_deleted,
        "prune_s": round(prune_s, 2),
    }


def sqlite_bytes(path: Path) -> dict[str, int]:
    """Bytes in use (pages of tables and indexes, from SQLite's ``dbstat``; the file
    also holds the free pages the prune left, which new events reuse), of the event
    stream (its table and indexes) and of the rest."""
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        sizes = dict(conn.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name"))
        (events,) = conn.execute(f"SELECT COUNT(*) FROM {PREFIX}events").fetchone()
        indexes = conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ?",
            (f"{PREFIX}events",),
        ).fetchall()
    finally:
        conn.close()
    stream = sizes.get(f"{PREFIX}events", 0) + sum(sizes.get(name, 0) for (name,) in indexes)
    used = sum(sizes.values())
    return {"file": used, "events": events, "event_bytes": stream, "rest": used - stream}


def mongo_bytes(url: str) -> dict[str, int]:
    """BSON data plus index bytes (``dbStats``), the event collection's share of them
    from ``collStats`` (indexes shared out by document bytes: nx-27017 reports them
    for the database only)."""
    import pymongo

    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(url)
    try:
        db = client.get_default_database()
        stats = db.command("dbStats")
        events = db.command("collStats", f"{PREFIX}events")
    finally:
        client.close()
    data, index = int(stats["dataSize"]), int(stats["indexSize"])
    share = events["size"] / data if data else 0.0
    stream = round(events["size"] + index * share)
    return {
        "file": data + index,
        "events": int(events["count"]),
        "event_bytes": stream,
        "rest": data + index - stream,
    }


# -- reads, each in a fresh process -----------------------------------------------------


def _child(mode: str, url: str) -> dict[str, Any]:
    """Run one read in this (fresh) process: its seconds and the process' peak RSS
    (the interpreter and the library are ~35 MB of it)."""
    from gso_analytics.cli import main
    from gso_analytics.integrations import prometheus
    from gso_analytics.report import collect_kpis

    at = datetime.combine(LAST_DAY, datetime.max.time(), UTC)
    started = time.perf_counter()
    if mode == "report":
        with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
            code = main(["report", "--store", url, "--today", LAST_DAY.isoformat()])
        if code != 0:
            raise SystemExit(f"the report failed with exit code {code}")
        seconds = time.perf_counter() - started
    elif mode == "kpis":
        with open_store(url, existing=True) as store:
            analytics = Analytics(store, clock=lambda: at, forwarders=[])
            started = time.perf_counter()
            collect_kpis(analytics.kpis, LAST_DAY - timedelta(days=29), LAST_DAY)
            seconds = time.perf_counter() - started
            analytics.stop()
    else:  # "metrics": get_metrics() and a scrape, medians of a few
        with open_store(url, existing=True) as store:
            analytics = Analytics(store, clock=lambda: at, forwarders=[])
            metrics, scrape = [], []
            for _ in range(7):
                started = time.perf_counter()
                analytics.get_metrics()
                metrics.append(time.perf_counter() - started)
                started = time.perf_counter()
                prometheus.render(prometheus.take_scrape(analytics, business=True), None)
                scrape.append(time.perf_counter() - started)
            analytics.stop()
        return {
            "get_metrics_ms": statistics.median(metrics) * 1000,
            "scrape_ms": statistics.median(scrape) * 1000,
        }
    return {"seconds": seconds, "peak_mb": _peak_rss_kb() / 1024}


def _peak_rss_kb() -> int:
    """This process' peak RSS: ``VmHWM``, which a new program starts afresh (Linux's
    ``ru_maxrss`` carries the parent's peak across ``fork`` and ``exec``, so a child
    of a big process would report the parent's)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # not Linux


def measure_reads(url: str, before_python: str | None) -> dict[str, float]:
    """Each read in a fresh process of this interpreter; the report and the KPIs also
    in one of ``before_python`` (an environment with the code before this branch's
    fixes: the script is run by its path, so that interpreter's library is used)."""
    figures: dict[str, float] = {}
    runs = [("", sys.executable, mode) for mode in ("report", "kpis", "metrics")]
    if before_python:
        runs += [("_before", before_python, mode) for mode in ("report", "kpis")]
    for suffix, python, mode in runs:
        # The report and the KPIs twice, the faster kept: the machines are shared.
        tries = []
        for _ in range(1 if mode == "metrics" else 2):
            done = subprocess.run(
                [python, str(Path(__file__).resolve()), "--child", mode, url],
                capture_output=True,
                text=True,
                check=True,
                timeout=1800,
            )
            tries.append(json.loads(done.stdout.strip().splitlines()[-1]))
        result = min(tries, key=lambda figures: figures.get("seconds", 0))
        if mode == "metrics":
            figures.update(result)
        else:
            figures[f"{mode}_s{suffix}"] = result["seconds"]
            figures[f"{mode}_peak_mb{suffix}"] = result["peak_mb"]
    return {key: round(value, 3) for key, value in figures.items()}


# -- sizes and slopes -------------------------------------------------------------------


def measure_store(
    kind: str, url: str, players: int, days: int, path: Path | None, before: str | None
) -> dict[str, Any]:
    row = {"store": kind, **fill(url, players, days)}
    size = sqlite_bytes(path) if path is not None else mongo_bytes(url)
    row.update(
        {
            "file_mb": round(size["file"] / 1e6, 1),
            "bytes_per_event": round(size["event_bytes"] / max(1, size["events"]), 1),
            "bytes_per_player_day": round(size["rest"] / max(1, row["player_days"]), 1),
            "events": size["events"],
        }
    )
    row.update(measure_reads(url, before))
    return row


def exponent(sizes: Sequence[float], values: Sequence[float]) -> float:
    """k of the least-squares fit of ``log(value) = k log(size) + c`` (NaN with fewer
    than two sizes: a run of one size is half of a table, see ``--only``)."""
    if len(set(sizes)) < 2:
        return math.nan
    xs = [math.log(s) for s in sizes]
    ys = [math.log(max(v, 1e-9)) for v in values]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den


SLOPED = (
    "file_mb",
    "bytes_per_player_day",
    "bytes_per_event",
    "report_s",
    "report_peak_mb",
    "kpis_s",
    "kpis_peak_mb",
    "get_metrics_ms",
    "scrape_ms",
)


def slopes(rows: list[dict[str, Any]], axis: str) -> dict[str, float]:
    sizes = [row[axis] for row in rows]
    return {key: round(exponent(sizes, [row[key] for row in rows]), 2) for key in SLOPED}


def extrapolate(rows: list[dict[str, Any]], ks: dict[str, float]) -> dict[str, float]:
    """Each figure at :data:`TARGET_PLAYERS`, from the largest size measured and k."""
    last = rows[-1]
    factor = TARGET_PLAYERS / last["players"]
    return {key: round(last[key] * factor ** ks[key], 3) for key in SLOPED}


# -- throughput --------------------------------------------------------------------------


def _calls(count: int) -> list[tuple[str, str, dict[str, Any] | None]]:
    """Tracked calls of a demo day, as a game's workers make them."""
    plan = plan_demo(2_000, 2, SEED, LAST_DAY)
    calls = [
        (a.event, a.user_id, a.data) for day in plan.each_day() for a in day if a.kind == "track"
    ]
    random.Random(SEED).shuffle(calls)
    return (calls * (count // len(calls) + 1))[:count]


def sustain(store: Store, rate: int, seconds: float) -> dict[str, Any]:
    """Track ``rate`` events/s for ``seconds`` into a started worker on ``store`` (closed
    after); did its flush thread keep up, and what share of a core did the process
    spend."""
    calls = _calls(int(rate * seconds) + 1)
    bound = 3 * rate * FLUSH_INTERVAL_S  # at most three intervals' calls waiting
    with store:
        analytics = Analytics(store, flush_interval=FLUSH_INTERVAL_S, forwarders=[]).start()
        track = analytics.track
        sent, late_peak, next_sample = 0, 0, 0.0
        cpu, started = time.process_time(), time.monotonic()
        while (elapsed := time.monotonic() - started) < seconds:
            due = min(len(calls), int(rate * elapsed))
            while sent < due:
                event, user, data = calls[sent]
                track(event, user, data)
                sent += 1
            if elapsed >= next_sample:
                next_sample = elapsed + 0.05
                if elapsed > seconds / 2:
                    late_peak = max(late_peak, analytics.stats()["buffered"])
            time.sleep(0.001)
        cpu_s = time.process_time() - cpu
        analytics.stop()
    paced = sent >= 0.97 * rate * seconds
    return {
        "rate": rate,
        "sent": sent,
        "late_peak_buffered": late_peak,
        "keeps_up": paced and late_peak <= bound,
        "cpu_share": cpu_s / seconds,
    }


def throughput(
    new_store: Callable[[], Store], seconds: float, rates: Sequence[int]
) -> dict[str, Any]:
    """The highest of ``rates`` sustained (stopping at the first that is not), and the
    CPU share at 1,000 events/s."""
    at_1000 = sustain(new_store(), 1_000, seconds)
    best, runs = 0, []
    for rate in rates:
        run = sustain(new_store(), rate, seconds)
        runs.append(run)
        if not run["keeps_up"]:
            break
        best = rate
    return {
        "sustained_events_per_s": best,
        "cpu_share_at_1000": round(at_1000["cpu_share"], 3),
        "runs": runs,
    }


# -- the run -----------------------------------------------------------------------------


def run(
    quick: bool,
    before_python: str | None,
    parts: Sequence[str] = ("sqlite", "mongo"),
    players: Sequence[int] = (),
) -> dict[str, Any]:
    if quick:
        sqlite_players, days_series, sqlite_days = (200, 400, 800), (2, 3, 5), 5
        mongo_players, mongo_days, seconds, rates = (100, 200, 400), 3, 1.0, (2_000, 4_000)
    else:
        sqlite_players, days_series, sqlite_days = (10_000, 30_000, 100_000), (7, 14, 30), 30
        # nx-27017 stores 1,000-2,000 calls/s on a loaded 2-core machine: a week of
        # 500-2,000 players is ~6 minutes.
        mongo_players, mongo_days = (500, 1_000, 2_000), 7
        seconds, rates = 5.0, (2_000, 4_000, 8_000, 16_000, 32_000, 64_000)
    sqlite_players = tuple(players) or sqlite_players
    days_players = sqlite_players[0]
    result: dict[str, Any] = {"quick": quick, "last_day": LAST_DAY.isoformat()}
    if "sqlite" in parts:
        with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:

            def sqlite_row(players: int, days: int) -> dict[str, Any]:
                path = Path(tmp) / f"p{players}-d{days}.db"
                row = measure_store(
                    "sqlite", f"sqlite:///{path}", players, days, path, before_python
                )
                _log(row)
                path.unlink()
                return row

            by_players = [sqlite_row(p, sqlite_days) for p in sqlite_players]
            reused = [row for row in by_players if row["players"] == days_players]
            by_days = [sqlite_row(days_players, d) for d in days_series[:-1]]
            by_days += (
                reused
                if days_series[-1] == sqlite_days
                else [sqlite_row(days_players, days_series[-1])]
            )
            new_sqlite = lambda: open_store(f"sqlite:///{Path(tmp) / uuid.uuid4().hex}.db")  # noqa: E731
            players_k = slopes(by_players, "players")
            result["sqlite"] = {
                "by_players": by_players,
                "players_k": players_k,
                "at_1m_players": extrapolate(by_players, players_k),
                "by_days": by_days,
                "days_k": slopes(by_days, "days"),
                "throughput": throughput(new_sqlite, seconds, rates),
            }
            _log(result["sqlite"]["throughput"])
    if "mongo" in parts:
        with _nx_27017() as base:
            mongo = []
            for players in mongo_players:
                mongo.append(
                    measure_store("mongo", _mongo_url(base), players, mongo_days, None, None)
                )
                _log(mongo[-1])
            result["mongo"] = {
                "by_players": mongo,
                "players_k": slopes(mongo, "players"),
                "throughput": throughput(lambda: open_store(_mongo_url(base)), seconds, rates),
            }
            _log(result["mongo"]["throughput"])
    return result


# -- the tables --------------------------------------------------------------------------

COLUMNS = (
    ("store", "store", "{}"),
    ("players", "players", "{:,}"),
    ("days", "days", "{}"),
    ("calls", "API calls", "{:,}"),
    ("player_days", "player-days", "{:,}"),
    ("file_mb", "store MB", "{:,.1f}"),
    ("events", "events kept", "{:,}"),
    ("bytes_per_event", "B/event", "{:.0f}"),
    ("bytes_per_player_day", "B/player-day", "{:.0f}"),
    ("report_s", "report s", "{:.2f}"),
    ("report_peak_mb", "report MB", "{:.0f}"),
    ("kpis_s", "KPIs s", "{:.2f}"),
    ("kpis_peak_mb", "KPIs MB", "{:.0f}"),
    ("get_metrics_ms", "get_metrics ms", "{:.2f}"),
    ("scrape_ms", "scrape ms", "{:.2f}"),
    ("fill_s", "replay s", "{:.0f}"),
    ("prune_s", "prune s", "{:.1f}"),
)
LABELS = {key: label for key, label, _ in COLUMNS}


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def render(result: dict[str, Any]) -> str:
    sqlite, mongo = result["sqlite"], result["mongo"]
    sizes = [*sqlite["by_players"], *sqlite["by_days"][:-1], *mongo["by_players"]]
    parts = [
        "Stores filled by replaying seeded demo games (the last day "
        f"{result['last_day']}) through the API, then pruned once as a worker does (7"
        " days of events kept, the default `event_ttl`). Store MB: bytes in use (SQLite"
        " `dbstat`; MongoDB is the nx-27017 wire server: BSON data + index bytes,"
        " uncompressed). B/event: the event stream's table and indexes per event kept;"
        " B/player-day: everything else per player-day (kept for good).",
        _table(
            [label for _, label, _ in COLUMNS],
            [[fmt.format(row[key]) for key, _, fmt in COLUMNS] for row in sizes],
        ),
        "Slopes: k of `figure ~ size^k` fitted over the three sizes (0 flat, 1 linear),"
        f" and the SQLite figure at {TARGET_PLAYERS:,} players extrapolated from k"
        " (not measured).",
        _table(
            [
                "figure",
                "k vs players (SQLite)",
                "k vs days (SQLite)",
                "k vs players (MongoDB)",
                f"SQLite at {TARGET_PLAYERS:,} players",
            ],
            [
                [
                    LABELS[key],
                    f"{sqlite['players_k'][key]:.2f}",
                    f"{sqlite['days_k'][key]:.2f}",
                    f"{mongo['players_k'][key]:.2f}",
                    f"{sqlite['at_1m_players'][key]:,.2f}",
                ]
                for key in SLOPED
            ],
        ),
        "One worker (a started `Analytics`, flush every"
        f" {FLUSH_INTERVAL_S:g} s) tracking demo events on real time: the highest rate"
        " tried (doubling) at which the flush thread kept up, and the process' CPU at"
        " 1,000 events/s.",
        _table(
            ["store", "sustained events/s", "CPU of one core at 1,000 events/s"],
            [
                [
                    name,
                    f"{part['throughput']['sustained_events_per_s']:,}",
                    f"{100 * part['throughput']['cpu_share_at_1000']:.1f}%",
                ]
                for name, part in (("SQLite", sqlite), ("MongoDB (nx-27017)", mongo))
            ],
        ),
        advice(result),
    ]
    before = [row for row in sqlite["by_players"] if "report_s_before" in row]
    if before:
        parts.append(
            "Before/after: the report and the KPIs of the same stores with the library"
            " before this run's fixes (`--before-python`) and with them."
        )
        parts.append(
            _table(
                ["players", "report s", "report MB", "KPIs s", "KPIs MB"],
                [
                    [f"{row['players']:,}"]
                    + [
                        f"{row[f'{key}_before']:.{places}f} → {row[key]:.{places}f}"
                        for key, places in (
                            ("report_s", 2),
                            ("report_peak_mb", 0),
                            ("kpis_s", 2),
                            ("kpis_peak_mb", 0),
                        )
                    ]
                    for row in before
                ],
            )
        )
    return "\n\n".join(parts)


def advice(result: dict[str, Any]) -> str:
    """Where to move from SQLite to a server, from this run's own figures."""
    rows = result["sqlite"]["by_players"]
    last = rows[-1]
    per_pd = statistics.median(row["bytes_per_player_day"] for row in rows)
    per_event = statistics.median(row["bytes_per_event"] for row in rows)
    # Every event of the month (kept and pruned) per player-day: the rate a game makes.
    events_per_pd = (last["events"] + last["pruned_events"]) / max(1, last["player_days"])
    rate = result["sqlite"]["throughput"]["sustained_events_per_s"]
    lines = [
        f"From these figures: a player-day costs ~{per_pd:,.0f} bytes kept for good and"
        f" brings ~{events_per_pd:.0f} events of ~{per_event:,.0f} bytes each, kept for"
        " `event_ttl` (7 days by default, by the prune job). For a game of DAU D that is"
        f" ~{30 * per_pd / 1e6:.2f}·D MB a month of history plus"
        f" ~{7 * events_per_pd * per_event / 1e6:.2f}·D MB of events:",
    ]
    for dau in (1_000, 10_000, 100_000):
        month = 30 * dau * per_pd / 1e9
        window = 7 * dau * events_per_pd * per_event / 1e9
        lines.append(f"- DAU {dau:,}: +{month:,.2f} GB a month, {window:,.2f} GB of events")
    sustained = (
        f"~{rate:,} events/s sustained here"
        if rate
        else "what one worker sustains (none of the rates tried, on this run's machine)"
    )
    lines.append(
        f"One SQLite file takes every worker's writes through one lock: {sustained} is"
        " the whole game's budget, not each worker's. Move to MongoDB"
        " (or another server store) when the game's peak event rate nears half of it,"
        " when workers run on more than one machine (SQLite needs one local disk), or"
        " when the file passes a few GB (backups, `VACUUM` and the report's reads grow"
        " with it)."
    )
    return "\n".join(lines)


def _log(row: object) -> None:
    print(json.dumps(row), file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the figures")
    parser.add_argument(
        "--markdown",
        type=Path,
        metavar="FILE",
        help="also write the tables as Markdown (docs/performance.md)",
    )
    parser.add_argument(
        "--before-python",
        metavar="PYTHON",
        help="also time the report and the KPIs with this interpreter's library (e.g."
        " a checkout of main's .venv/bin/python): the before of the before/after",
    )
    parser.add_argument(
        "--sqlite-players",
        metavar="N,N,N",
        help="the SQLite sizes (default 10000,30000,100000); the first also runs 7 and 14 days",
    )
    parser.add_argument(
        "--only",
        default="sqlite,mongo",
        metavar="PARTS",
        help="sqlite, mongo or both (default); the tables need both",
    )
    parser.add_argument(
        "--render", type=Path, metavar="FILE", help="print the tables of a --json FILE"
    )
    parser.add_argument("--child", nargs=2, metavar=("MODE", "URL"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(*args.child)))
        return 0
    if args.render:
        print(render(json.loads(args.render.read_text())))
        return 0
    players = [int(n) for n in args.sqlite_players.split(",")] if args.sqlite_players else []
    result = run(args.quick, args.before_python, args.only.split(","), players)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if "sqlite" not in result or "mongo" not in result:
        return 0  # a part alone: its figures are in --json and on stderr
    text = render(result)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
