"""The optional MongoDB section of ``python -m bench``: :mod:`bench.mongo_flush` on a
private ``nx-27017`` wire server, skipped with a message when pymongo or nx-27017 is
not installed (both come with the ``dev`` extra).

Per size and round the two subjects alternate on the same server: one
``Analytics.flush()`` of N tracked events (the tracking itself is not timed: the wire
server, not the caller, is what this compares) against one raw unordered
``insert_many`` of the same N event documents into a collection with the same indexes.
``python -m bench.mongo_flush --url mongodb://...`` measures a real server.
"""

from __future__ import annotations

import shutil
import statistics
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path


def unavailable() -> str | None:
    """Why the section cannot run here, or None."""
    try:
        import pymongo  # noqa: F401
    except ImportError:
        return "pymongo is not installed (pip install -e '.[dev]')"
    if not Path(sys.executable).with_name("nx-27017").exists() and not shutil.which("nx-27017"):
        return "nx-27017 is not installed (pip install -e '.[dev]')"
    return None


def run(sizes: tuple[int, ...] = (1_000, 5_000), rounds: int = 3) -> list[dict[str, object]]:
    """Median events/s of ``flush()`` and of ``insert_many``, and their ratio, per size."""
    from bench import mongo_flush

    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    rows: list[dict[str, object]] = []
    with mongo_flush.nx_27017() as base:
        for size in sizes:
            flush_rates, raw_rates = [], []
            for _ in range(rounds):
                url = mongo_flush.database_url(base, f"bench_{uuid.uuid4().hex[:12]}")
                # ttlIndex=false: the raw collection has a plain ts index too;
                # transactions=true: nx-27017 runs them but says it is standalone.
                seconds = mongo_flush.run_flush(
                    f"{url}?ttlIndex=false&transactions=true", size, start
                )
                flush_rates.append(size / seconds)
                url = mongo_flush.database_url(base, f"bench_{uuid.uuid4().hex[:12]}")
                raw_rates.append(size / mongo_flush.run_raw(url, size, start))
            flush_rate = statistics.median(flush_rates)
            raw_rate = statistics.median(raw_rates)
            rows.append(
                {
                    "events_per_flush": size,
                    "gso_flush_events_per_s": round(flush_rate),
                    "raw_insert_many_per_s": round(raw_rate),
                    "gso_over_raw": round(flush_rate / raw_rate, 2),
                }
            )
    return rows
