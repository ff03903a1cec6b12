"""``gso-analytics``: the command line (``demo``, ``report``, ``prune``, ``mongo-init``,
``pg-init``, ``replay-dead-letters``).

Why a CLI: a game team should see the library's numbers before writing any code
(``demo``), read a store without a web app (``report``), run the prune job from
cron when no process runs it (``prune``), build a MongoDB store's indexes in a
deploy step rather than when workers start (``mongo-init``), create a PostgreSQL
store's schema as its owner when the application's role may not (``pg-init``), and
store the batches a worker set aside once their cause is fixed (``replay-dead-letters``).
Every command goes through the public API, so what it prints is what the game backend
would see. Errors a user can fix (a bad URL, a missing database) are one line on stderr
and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import closing
from datetime import UTC, date, datetime, timedelta, tzinfo
from pathlib import Path

from . import __version__
from .analytics import Analytics
from .clock import Clock, resolve_tz, utc_now
from .counters import json_number
from .csv_report import write_csv
from .dead_letters import replay as replay_dead_letters
from .demo import DemoPlan, SimClock, plan_demo, replay
from .errors import ConfigurationError, GsoAnalyticsError
from .html_report import render_html
from .model import DailyStats, Metrics
from .private_files import open_private
from .progress import Progress
from .report import collect_kpis, fmt_int, render_headline, render_kpis, render_report
from .store import Store, open_store

log = logging.getLogger("gso_analytics.cli")

PROG = "gso-analytics"
DEFAULT_STORE = "sqlite:///gso_analytics.db"
#: The demo's own file: simulated players never mix into a game's real store.
DEMO_STORE = "sqlite:///gso_demo.db"
MAX_REPORT_DAYS = 30
KPI_RANGE_DAYS = 30  # the KPI range when none is given: the 30 days ending today
EXIT_ERROR = 2


# -- argument types ---------------------------------------------------------------------


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def report_days(text: str) -> int:
    value = _positive_int(text)
    if value > MAX_REPORT_DAYS:
        raise argparse.ArgumentTypeError(f"at most {MAX_REPORT_DAYS}, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def iso_date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected YYYY-MM-DD, got {text!r}") from None


# -- the parser -------------------------------------------------------------------------


def _add_store(parser: argparse.ArgumentParser, default: str = DEFAULT_STORE) -> None:
    parser.add_argument(
        "--store",
        default=default,
        metavar="URL",
        help=f"store URL: sqlite:///file.db, sqlite:////abs/file.db, memory:// ..."
        f" (default: {default}, in the current directory)",
    )


def _timezone(text: str) -> tzinfo:
    try:
        return resolve_tz(text)
    except ConfigurationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_tz(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tz",
        type=_timezone,
        default=UTC,
        metavar="ZONE",
        help="the game's timezone for day and month keys, e.g. Europe/Paris (default: UTC);"
        " give the one of the game's Analytics(tz=...)",
    )


def _add_demo(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = commands.add_parser(
        "demo",
        help="simulate players through the API, then print the report",
        description="Simulate a small game's players over several days through the public"
        " API (logins, sessions, economy, gameplay), store them, then print today's metrics"
        " and the last days, read back from the store. Seeded: the same options give the"
        " same numbers.",
    )
    _add_store(demo, DEMO_STORE)
    _add_tz(demo)
    demo.add_argument("--players", type=_positive_int, default=300, help="default: 300")
    demo.add_argument("--days", type=_positive_int, default=7, help="default: 7")
    demo.add_argument("--seed", type=int, default=7, help="random seed (default: 7)")
    demo.add_argument(
        "--today",
        type=iso_date,
        metavar="YYYY-MM-DD",
        help="the last simulated day (default: today, in --tz)",
    )
    existing = demo.add_mutually_exclusive_group()
    existing.add_argument(
        "--reset",
        action="store_true",
        help="start from an empty store: deletes the SQLite file first (sqlite:// only)",
    )
    existing.add_argument(
        "--append",
        action="store_true",
        help="add to a store that already holds data (without it, or --reset, the demo"
        " refuses a non-empty store: simulated players would mix with real ones)",
    )
    demo.set_defaults(func=cmd_demo)


def add_report_options(parser: argparse.ArgumentParser, today_help: str) -> None:
    """The report's options, shared with ``manage.py gso_analytics report``."""
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument(
        "--days",
        type=report_days,
        default=MAX_REPORT_DAYS,
        help=f"how many of the newest days to show (1-{MAX_REPORT_DAYS}, default:"
        f" {MAX_REPORT_DAYS})",
    )
    parser.add_argument(
        "--today",
        type=iso_date,
        metavar="YYYY-MM-DD",
        help=today_help,
    )
    parser.add_argument(
        "--start",
        type=iso_date,
        metavar="YYYY-MM-DD",
        help=f"first day of the KPI range (default: the first day with data among the"
        f" {KPI_RANGE_DAYS} days ending at --end)",
    )
    parser.add_argument(
        "--end",
        type=iso_date,
        metavar="YYYY-MM-DD",
        help="last day of the KPI range, included (default: today)",
    )
    parser.add_argument(
        "--html",
        type=Path,
        metavar="FILE",
        help="also write the KPIs as a self-contained HTML page (charts, no network)",
    )
    parser.add_argument(
        "--csv",
        type=Path,
        metavar="DIR",
        help="also write each KPI table as a CSV file in DIR (created if missing)",
    )


def _add_report(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    report = commands.add_parser(
        "report",
        help="print today's metrics, the last days and the KPIs",
        description="Print today's metrics (DAU, MAU, sessions, economy), the newest"
        " days recorded in the store, then the KPIs of a date range: retention by cohort,"
        " active users (WAU, MAU30, stickiness), revenue (ARPDAU, ARPPU, payers), sessions"
        " and the economy. --html also writes them as a self-contained page with charts.",
    )
    _add_store(report)
    _add_tz(report)
    add_report_options(
        report, today_help="report as of this day, e.g. a demo's last day (default: today, in --tz)"
    )
    report.set_defaults(func=cmd_report)


def _add_prune(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    prune = commands.add_parser(
        "prune",
        help="delete expired events, close idle sessions",
        description="Run the prune job once (e.g. from cron): delete events older than the"
        " event TTL and close sessions idle longer than the idle timeout (ended at their"
        " last mark, flagged timedOut; their seconds were counted already).",
    )
    _add_store(prune)
    prune.add_argument(
        "--event-ttl-days", type=_positive_float, default=7.0, metavar="N", help="default: 7"
    )
    prune.add_argument(
        "--idle-timeout-minutes",
        type=_positive_float,
        default=30.0,
        metavar="M",
        help="sessions idle this long are closed (default: 30, the workers' idle_timeout)",
    )
    prune.set_defaults(func=cmd_prune)


def _add_mongo_init(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    mongo_init = commands.add_parser(
        "mongo-init",
        help="create a MongoDB store's missing indexes (a deploy step)",
        description="Create every index a MongoDB store needs that is missing, with"
        " commitQuorum majority on a replica set, and the events' TTL index. Run it"
        " before the workers start, and open the store with ?createIndexes=false so no"
        " worker ever builds an index; safe to run again (it creates only what is missing).",
    )
    mongo_init.add_argument(
        "--store", required=True, metavar="URL", help="mongodb:// or mongodb+srv:// URL"
    )
    mongo_init.add_argument(
        "--event-ttl-days",
        type=_positive_float,
        metavar="N",
        help="set the TTL index to N days (default: created with 7, an existing one kept)",
    )
    mongo_init.set_defaults(func=cmd_mongo_init)


def _add_pg_init(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    pg_init = commands.add_parser(
        "pg-init",
        help="create or upgrade a PostgreSQL store's schema (a deploy step)",
        description="Create or upgrade the tables of a PostgreSQL store in its schema"
        " (?schema=, default gso_analytics) and the coming days' event partitions. Run"
        " it as the schema's owner before the workers start, and open the store with"
        " ?create_schema=false when the application's role may not create tables; safe"
        " to run again.",
    )
    pg_init.add_argument(
        "--store", required=True, metavar="URL", help="postgresql:// or postgres:// URL"
    )
    pg_init.set_defaults(func=cmd_pg_init)


def _add_replay_dead_letters(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    replay_cmd = commands.add_parser(
        "replay-dead-letters",
        help="apply the batches a worker set aside (a dead-letter file)",
        description="Apply every batch of a dead-letter file (written under an Analytics'"
        " dead_letter_dir) to a store, in order. Each batch keeps its id: one the store"
        " has applied already is skipped, so running it twice counts nothing twice.",
    )
    replay_cmd.add_argument("file", type=Path, metavar="FILE", help="a dead-letters-*.jsonl file")
    replay_cmd.add_argument("--store", required=True, metavar="URL", help="the store to apply to")
    replay_cmd.set_defaults(func=cmd_replay_dead_letters)


def _add_data_rights(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    for name, func, help_text in (
        ("export-user", cmd_export_user, "print everything stored about one player, as JSON"),
        ("erase", cmd_erase, "erase one player: id and username out, figures kept exact"),
    ):
        command = commands.add_parser(
            name,
            help=help_text,
            description=help_text + " (GDPR access and erasure requests; see the data rights"
            " page of the documentation).",
        )
        command.add_argument("user_id", metavar="ID", help="the player's id, as the game tracks it")
        command.add_argument("--store", required=True, metavar="URL", help="the store")
        add_pseudonymize_option(command)
        if name == "erase":
            command.add_argument(
                "--dead-letter-dir",
                type=Path,
                metavar="DIR",
                help="the workers' dead_letter_dir: its files are rewritten as the store",
            )
        if name == "export-user":
            command.add_argument(
                "--after-erase",
                action="store_true",
                help="for an erased player: what the erase's token holds (a returning"
                " player's records, and the erased history the figures keep)",
            )
        command.set_defaults(func=func)


def add_pseudonymize_option(parser: argparse.ArgumentParser) -> None:
    """``--pseudonymize-key-env NAME``: the environment variable holding the key of a
    store written with ``pseudonymize_key`` (a key never goes on a command line)."""
    parser.add_argument(
        "--pseudonymize-key-env",
        metavar="NAME",
        help="environment variable holding the pseudonymize_key the store was written with",
    )


def data_rights_analytics(
    store: Store, key_env: str | None, *, forward: bool, dead_letter_dir: Path | None = None
) -> Analytics:
    """An ``Analytics`` on ``store`` for an export or an erase (not started), with the
    pseudonymize key named by ``key_env``. ``forward``: the forwarders a worker
    configures from the environment (``ANALYTICS_WEBHOOK_URL``), so an erase tells
    them as the API's would; none otherwise."""
    key = None
    if key_env:
        key = os.environ.get(key_env)
        if not key:
            raise ConfigurationError(f"--pseudonymize-key-env: {key_env} is not set")
    return Analytics(
        store,
        forwarders=None if forward else [],
        pseudonymize_key=key,
        dead_letter_dir=dead_letter_dir,
    )


def cmd_export_user(args: argparse.Namespace) -> int:
    with closing(open_cli_store(args.store, must_exist=True)) as store:
        analytics = data_rights_analytics(store, args.pseudonymize_key_env, forward=False)
        with Progress("Exporting") as progress, progress.working():
            export = analytics.export_user(args.user_id, after_erase=args.after_erase)
        analytics.stop()
    print(json.dumps(export, indent=2, sort_keys=True))
    return 0


def cmd_erase(args: argparse.Namespace) -> int:
    with closing(open_cli_store(args.store, must_exist=True)) as store:
        analytics = data_rights_analytics(
            store, args.pseudonymize_key_env, forward=True, dead_letter_dir=args.dead_letter_dir
        )
        with Progress("Erasing") as progress, progress.working():
            receipt = analytics.erase_user(args.user_id)
        analytics.stop()
    print(json.dumps(receipt.to_dict(), indent=2, sort_keys=True))
    if receipt.status == "not found":
        print(f"{PROG}: not found: the store holds nothing under that id", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Game analytics from the command line: try the library on simulated"
        " players, read a store's metrics, run the prune job, prepare a MongoDB or"
        " PostgreSQL store.",
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)"
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_demo(commands)
    _add_report(commands)
    _add_prune(commands)
    _add_mongo_init(commands)
    _add_pg_init(commands)
    _add_replay_dead_letters(commands)
    _add_data_rights(commands)
    return parser


# -- helpers ----------------------------------------------------------------------------


def _scheme(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else ""


def _sqlite_path(url: str) -> Path:
    from .backends.sqlite import path_from_url  # sqlite is stdlib; import only when used

    return Path(path_from_url(url))


def open_cli_store(url: str, *, must_exist: bool) -> Store:
    """Open ``url``; with ``must_exist`` a missing SQLite file, or a database without
    this library's tables under the prefix, is an error and nothing is created (a typo
    in ``report --store`` or ``erase --store ...?prefix=`` must not make a new empty
    store, nor report or erase nothing with success)."""
    if must_exist and _scheme(url) == "sqlite" and not _sqlite_path(url).exists():
        raise ConfigurationError(
            f"no database at {_sqlite_path(url).resolve()} ({url});"
            f" run `{PROG} demo` first or pass --store"
        )
    try:
        return open_store(url, existing=True) if must_exist else open_store(url)
    except ImportError as exc:
        raise ConfigurationError(f"cannot open {url}: {exc}") from exc
    except ValueError as exc:  # e.g. a malformed option in the URL's query string
        raise ConfigurationError(f"invalid store URL {url!r}: {exc}") from exc


def reset_store(url: str) -> None:
    """Delete a demo's previous data: only a SQLite file, the one case that is simple."""
    scheme = _scheme(url)
    if scheme == "memory":
        return
    if scheme != "sqlite":
        raise ConfigurationError(
            f"--reset only deletes SQLite files; empty the {scheme or url!r} store yourself"
        )
    path = _sqlite_path(url)
    for file in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        if file.exists():
            file.unlink()
            log.info("removed %s", file)


def fixed_clock(day: date, tz: tzinfo = UTC) -> Clock:
    """A clock standing at the end of ``day`` in ``tz``: "today" for a report of that day."""
    moment = datetime.combine(day, datetime.max.time(), tz)
    return lambda: moment


def today_in(tz: tzinfo) -> date:
    return utc_now().astimezone(tz).date()


# -- commands ---------------------------------------------------------------------------


def _simulate(analytics: Analytics, clock: SimClock, plan: DemoPlan) -> int:
    """Replay ``plan`` behind a progress bar; return the number of API calls made."""
    label = f"Simulating {plan.players:,} players x {plan.days} days"
    with Progress(label, unit="days") as progress:
        calls = replay(
            plan,
            analytics,
            clock,
            lambda day, days, calls: progress.update(day, days, detail=f"{calls:,} calls"),
        )
    stats = analytics.stats()
    if stats["rejected"] or stats["dropped"]:  # the simulator's bug, but never hidden
        log.warning("%d calls rejected, %d dropped", stats["rejected"], stats["dropped"])
    return calls


def _read(analytics: Analytics, days: int) -> tuple[Metrics, list[DailyStats]]:
    """Today's metrics and the newest ``days`` days, read from the store."""
    return analytics.get_metrics(), analytics.get_last_30_days()[:days]


def cmd_demo(args: argparse.Namespace) -> int:
    today = args.today or today_in(args.tz)
    if args.reset:
        reset_store(args.store)
    plan = plan_demo(args.players, args.days, args.seed, today, args.tz)
    with closing(open_cli_store(args.store, must_exist=False)) as store:
        if store.recent_days(1) and not args.append:
            raise ConfigurationError(
                f"{args.store} already holds data; the demo's simulated players would mix"
                " with it. Pass --reset to start over (SQLite), --append to add to it, or"
                " --store for another store"
            )
        clock = SimClock(datetime.combine(plan.first_day, datetime.min.time(), args.tz))
        analytics = Analytics(store, clock=clock, tz=args.tz, forwarders=[])
        started = time.monotonic()
        calls = _simulate(analytics, clock, plan)
        elapsed = time.monotonic() - started
        stored = analytics.stats()["flushed"]
        metrics, days = _read(analytics, min(args.days, MAX_REPORT_DAYS))  # not the plan's
        start, end = kpi_range(None, None, today, analytics.kpis.first_day_with_data)
        headline = analytics.kpis.headline(start, end).to_dict()
        analytics.stop()
    print(
        f"Simulated {args.players} players over {args.days} days"
        f" ({plan.first_day} to {plan.last_day}, seed {args.seed}):\n"
        f"  {fmt_int(calls)} API calls in {elapsed:.1f}s; {fmt_int(stored)} stored into"
        f" {args.store}\n"
    )
    print(render_headline(headline) + "\n")
    print(render_report(metrics, today.isoformat(), days))
    if _scheme(args.store) != "memory":  # a memory store is gone when the demo exits
        tz = "" if args.tz is UTC else f" --tz {args.tz}"
        again = f"{PROG} report --store {args.store} --today {today}{tz}"
        print(f"Show it again: {again}")
        print(f"With KPIs and charts: {again} --html report.html")
    return 0


def kpi_range(
    start: date | None,
    end: date | None,
    today: date,
    first_data: Callable[[date, date], date | None] = lambda _start, _end: None,
) -> tuple[date, date]:
    """The KPI range from ``--start``/``--end``, honoured as given. Left out, ``--end``
    is today, or the last of :data:`KPI_RANGE_DAYS` days from ``--start`` (never after
    today: days ahead would only be rows of zeros); ``--start`` is the first day with
    data (``first_data(lo, hi)``) in the :data:`KPI_RANGE_DAYS` days ending at ``end``,
    so a new game's report is not 23 days of zeros and 7 of play."""
    width = timedelta(days=KPI_RANGE_DAYS - 1)
    if end is None:
        end = today if start is None else max(min(start + width, today), start)
    if start is None:
        start = first_data(end - width, end) or end
    if start > end:
        raise ConfigurationError(f"--start {start} is after --end {end}")
    return start, end


def cmd_report(args: argparse.Namespace) -> int:
    today = args.today or today_in(args.tz)
    clock = fixed_clock(args.today, args.tz) if args.today else utc_now
    with closing(open_cli_store(args.store, must_exist=True)) as store:
        analytics = Analytics(store, clock=clock, tz=args.tz, forwarders=[])
        text = report_text(
            analytics,
            today,
            days=args.days,
            start=args.start,
            end=args.end,
            html=args.html,
            as_json=args.json,
            csv=args.csv,
        )
        analytics.stop()
    print(text, end="")
    return 0


def report_text(
    analytics: Analytics,
    today: date,
    *,
    days: int,
    start: date | None,
    end: date | None,
    html: Path | None,
    as_json: bool,
    csv: Path | None = None,
) -> str:
    """The report of ``analytics``' store as of ``today``: metrics, the newest ``days``
    days and the KPIs of [start, end] (see :func:`kpi_range`), as text or JSON, with
    the HTML page written to ``html`` and the tables as CSV files into the directory
    ``csv`` when given. Shared with ``manage.py
    gso_analytics report``, so both print the same thing."""
    start, end = kpi_range(start, end, today, analytics.kpis.first_day_with_data)
    metrics, history = _read(analytics, days)
    kpis = collect_kpis(analytics.kpis, start, end)
    written = []
    try:
        if html is not None:
            with open_private(html, "w", encoding="utf-8") as page:
                page.write(render_html(kpis))
            written.append(f"Wrote {html} (open it in a browser; it needs no network)")
        if csv is not None:
            files = write_csv(kpis, csv)
            written.append(f"Wrote {len(files)} CSV files to {csv}")
    except OSError as exc:
        raise ConfigurationError(f"cannot write {exc.filename}: {exc.strerror}") from exc
    if as_json:
        headline = kpis.pop("headline")
        doc = {
            "headline": headline,
            "metrics": metrics.to_dict(),
            "days": [day.to_dict() for day in history],
            "kpis": kpis,
        }
        return json.dumps(doc, indent=2, default=json_number) + "\n"
    text = "\n\n".join(
        [
            render_headline(kpis["headline"]),
            render_report(metrics, today.isoformat(), history).rstrip("\n"),
            render_kpis(kpis),
        ]
    )
    return text + "".join(f"\n{line}\n" for line in written)


def cmd_prune(args: argparse.Namespace) -> int:
    ttl = timedelta(days=args.event_ttl_days)
    idle = timedelta(minutes=args.idle_timeout_minutes)
    with closing(open_cli_store(args.store, must_exist=True)) as store:
        analytics = Analytics(store, event_ttl=ttl, idle_timeout=idle)
        with Progress("Pruning") as progress, progress.working():
            result = analytics.prune()
        analytics.stop()
    print(
        f"Deleted {fmt_int(result.events_deleted)} events older than"
        f" {args.event_ttl_days:g} days; closed {fmt_int(result.sessions_timed_out)}"
        f" sessions idle for {args.idle_timeout_minutes:g} minutes."
    )
    return 0


def cmd_mongo_init(args: argparse.Namespace) -> int:
    if _scheme(args.store) not in ("mongodb", "mongodb+srv"):
        raise ConfigurationError(
            f"mongo-init prepares MongoDB stores (mongodb://, mongodb+srv://), not {args.store}"
        )
    from .backends.mongo import mongo_init  # pymongo is an extra: import only when used

    ttl = None
    if args.event_ttl_days is not None:
        try:
            ttl = timedelta(days=args.event_ttl_days)
        except OverflowError:
            raise ConfigurationError(
                f"--event-ttl-days {args.event_ttl_days:g} is too long"
            ) from None
    with Progress("Creating indexes") as progress, progress.working():
        created = mongo_init(args.store, event_ttl=ttl)
    if created:
        print(f"Created {len(created)} indexes:")
        for index in created:
            print(f"  {index}")
    else:
        print("Every index exists; nothing to create.")
    return 0


def cmd_pg_init(args: argparse.Namespace) -> int:
    if _scheme(args.store) not in ("postgresql", "postgres"):
        raise ConfigurationError(
            f"pg-init prepares PostgreSQL stores (postgresql://, postgres://), not {args.store}"
        )
    from .backends.postgres import SCHEMA_VERSION, pg_init  # psycopg is an extra

    found = pg_init(args.store)
    if found == SCHEMA_VERSION:
        print(f"The schema is at version {SCHEMA_VERSION}; nothing to upgrade.")
    else:
        print(f"Schema brought from version {found} to {SCHEMA_VERSION}.")
    return 0


def cmd_replay_dead_letters(args: argparse.Namespace) -> int:
    if not args.file.is_file():
        raise ConfigurationError(f"no dead-letter file at {args.file}")
    with closing(open_cli_store(args.store, must_exist=False)) as store:
        try:
            with Progress(f"Applying {args.file.name}", unit="batches") as progress:
                result = replay_dead_letters(args.file, store, progress)
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from exc
    print(
        f"Applied {fmt_int(result.applied)} batches;"
        f" {fmt_int(result.duplicates)} were applied already."
    )
    return 0


# -- entry point ------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (the console script exits with it)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=max(logging.DEBUG, logging.WARNING - 10 * args.verbose),
        format="%(levelname)s: %(message)s",
    )
    try:
        code: int = args.func(args)
        sys.stdout.flush()  # here, so a closed pipe is caught below, not at exit
        return code
    except BrokenPipeError:
        # `gso-analytics report | head`: the reader has all it wanted. Point stdout at
        # /dev/null so the interpreter's own flush at exit cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except GsoAnalyticsError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
