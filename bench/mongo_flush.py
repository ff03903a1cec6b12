"""``python -m bench.mongo_flush [--url URL] [--sizes 1000,10000,50000] [--rounds 5]``:
events persisted per second by one flush to a MongoDB wire server, against a raw
pymongo ``insert_many`` of the same documents, in the same run, on the same server.

Without ``--url`` it starts ``nx-27017`` (the wire-protocol test server of the dev
extra) on a free 127.0.0.1 port in a temporary directory, and stops it at the end;
with ``--url mongodb://...`` it measures that server (a fresh database per run,
dropped afterwards).

Per size N and round, alternating the two subjects:

- ``flush``: N ``track("credits.earn", ...)`` calls over 500 users (buffered, not
  timed), then ``Analytics.flush()`` timed: what the library sends for the batch
  (one transaction: its claim, (day, user) and (month, user) records, the events'
  ``insert_many``, its delta; then the roll-up's transaction folding the delta);
- ``raw insert_many``: the same N event documents (built before the clock starts),
  one unordered ``insert_many`` into a collection with the same indexes.

The table gives the median events/s of each and their ratio (flush / raw): the cost
of exact counting and exactly-once on top of writing the events themselves.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pymongo

from gso_analytics import Analytics, open_store


@contextlib.contextmanager
def nx_27017() -> Iterator[str]:
    """A private nx-27017 on a free port; yields its ``mongodb://`` address."""
    executable = Path(sys.executable).with_name("nx-27017")
    command = str(executable) if executable.exists() else shutil.which("nx-27017")
    if command is None:
        raise SystemExit("nx-27017 is not installed (pip install -e '.[dev]') and no --url")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    directory = Path(tempfile.mkdtemp(prefix="bench-nx-27017-"))
    (directory / "data").mkdir()
    with open(directory / "server.out", "wb") as out:
        process = subprocess.Popen(
            [
                command,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--data-dir",
                str(directory / "data"),
                "--pid-file",
                str(directory / "server.pid"),
                "--log-file",
                str(directory / "server.log"),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    address = f"mongodb://127.0.0.1:{port}/"
    try:
        client = pymongo.MongoClient(address, serverSelectionTimeoutMS=250)
        deadline = time.monotonic() + 30
        while True:
            try:
                client.admin.command("ping")
                break
            except pymongo.errors.PyMongoError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise SystemExit(f"nx-27017 did not start; see {directory}") from None
        client.close()
        yield address
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGTERM)
        process.wait(timeout=10)
        shutil.rmtree(directory, ignore_errors=True)


def database_url(base: str, name: str) -> str:
    """``base`` with its database replaced by ``name`` (options kept)."""
    parts = urlsplit(base)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, ""))


def run_flush(url: str, size: int, start: datetime) -> float:
    """Seconds one ``flush()`` of ``size`` tracked events takes."""
    now = [start]
    with open_store(url) as store:
        analytics = Analytics(store, flush_interval=3600, clock=lambda: now[0])
        for i in range(size):
            analytics.track("credits.earn", f"user{i % 500}", {"amount": 1 + i % 7})
        started = time.perf_counter()
        analytics.flush()
        elapsed = time.perf_counter() - started
        analytics.stop()
    return elapsed


def run_raw(url: str, size: int, start: datetime) -> float:
    """Seconds one raw ``insert_many`` of the same event documents takes."""
    client = pymongo.MongoClient(url, serverSelectionTimeoutMS=5000)
    try:
        events = client.get_default_database()["raw_events"]
        events.create_index([("ts", 1)])
        events.create_index([("userId", 1), ("ts", 1)])
        day = start.date().isoformat()
        docs = [
            {
                "ts": start,
                "userId": f"user{i % 500}",
                "event": "credits.earn",
                "data": {"amount": 1 + i % 7},
                "day": day,
            }
            for i in range(size)
        ]
        started = time.perf_counter()
        events.insert_many(docs, ordered=False)
        return time.perf_counter() - started
    finally:
        client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a MongoDB server (default: start nx-27017)")
    parser.add_argument("--sizes", default="1000,10000,50000", help="events per flush")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]

    with contextlib.ExitStack() as stack:
        base = args.url or stack.enter_context(nx_27017())
        server = "nx-27017" if not args.url else base.split("@")[-1].split("?")[0]
        created: list[str] = []
        rows = []
        start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
        for size in sizes:
            flush_rates, raw_rates = [], []
            for _ in range(args.rounds):
                for subject in ("flush", "raw"):  # alternate, so drift hits both
                    name = f"bench_{uuid.uuid4().hex[:12]}"
                    created.append(name)
                    url = database_url(base, name)
                    if subject == "flush":
                        # ttlIndex=false: the raw collection has a plain ts index too;
                        # on nx-27017, transactions=true (it runs them, says standalone).
                        sep = "&" if "?" in url else "?"
                        query = "ttlIndex=false" + ("&transactions=true" if not args.url else "")
                        seconds = run_flush(f"{url}{sep}{query}", size, start)
                        flush_rates.append(size / seconds)
                    else:
                        raw_rates.append(size / run_raw(url, size, start))
            flush_rate = statistics.median(flush_rates)
            raw_rate = statistics.median(raw_rates)
            rows.append((size, flush_rate, raw_rate, flush_rate / raw_rate))
        if args.url:
            with contextlib.closing(pymongo.MongoClient(base)) as client:
                for name in created:
                    client.drop_database(name)

    print(f"server: {server}, median of {args.rounds} rounds, one flush per round\n")
    print(f"{'events/flush':>12}  {'flush events/s':>15}  {'raw insert_many/s':>17}  ratio")
    for size, flush_rate, raw_rate, ratio in rows:
        print(f"{size:>12,}  {flush_rate:>15,.0f}  {raw_rate:>17,.0f}  {ratio:5.2f}")


if __name__ == "__main__":
    main()
