"""Per-process health kept in the store, so that any worker can report every worker.

A Prometheus scrape reaches one worker of a pool; health kept in that worker's memory
would make every other worker's series vanish for that scrape. So each flush (an
empty one too) writes this process's :meth:`~gso_analytics.Analytics.stats` as a
:class:`~gso_analytics.model.Heartbeat` record, and the metrics endpoint reads every
live record. Only workers write one: an :class:`~gso_analytics.Analytics` that was
started (a command or a script that never starts it is not counted among the workers),
and a worker's graceful ``stop()`` withdraws its record, so a retired worker does not
linger as a stale one. Why not ``prometheus_client``'s multiprocess mode: it needs a
directory shared by the workers (one host, set up before the server forks, wiped at
start), which neither several hosts nor a Django or Flask app started by someone
else's server give; the store is shared by every worker of every host already.

A process is ``host:pid``: stable for its life, distinct across hosts. A record
expires :data:`LIFETIME_INTERVALS` flush intervals after it was written (at least
:data:`MIN_LIFETIME`), so a worker that stopped leaves the scrape soon, but not before
a staleness alert (a flush older than 2 intervals, 30 s at least, when scraped; see
``examples/prometheus/alerts.yml``) had time to fire on a worker that hangs: with a
1 minute scrape interval, at least one scrape shows such a worker's old flush.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from .model import Heartbeat, Number

#: A record lives this many of its process's flush intervals: a worker skipping a
#: flush (a slow store, a busy machine) stays in the scrape.
LIFETIME_INTERVALS = 5
#: ...and at least this long, so that with short intervals too a hung worker stays
#: visible long enough for the staleness alert (a flush older than 30 s when scraped).
MIN_LIFETIME = timedelta(minutes=2)

#: ``stats()`` keys kept in a heartbeat (numbers; ``last_error`` and the age are not).
STATS_KEYS = (
    "buffered",
    "flushed",
    "batches",
    "retried",
    "flush_failures",
    "internal_errors",
    "quarantined",
    "dropped",
    "rejected",
    "logouts_without_session",
    "counters_saturated",
)


def process_identity(pid: int | None = None) -> tuple[str, str, int]:
    """(``host:pid``, host, pid) of this process (read again after a fork)."""
    host = socket.gethostname()
    pid = os.getpid() if pid is None else pid
    return f"{host}:{pid}", host, pid


def make_heartbeat(stats: Mapping[str, Any], at: datetime, flush_interval: float) -> Heartbeat:
    """This process's record, as of a flush that ended at ``at``."""
    process, host, pid = process_identity()
    lifetime = max(timedelta(seconds=LIFETIME_INTERVALS * flush_interval), MIN_LIFETIME)
    forwarders: Mapping[str, Mapping[str, Number]] = stats.get("forwarding", {}).get(
        "forwarders", {}
    )
    return Heartbeat(
        process=process,
        host=host,
        pid=pid,
        at=at,
        expires_at=at + lifetime,
        stats={
            **{key: stats[key] for key in STATS_KEYS if key in stats},
            "flush_interval_s": flush_interval,
        },
        forwarders={
            name: {k: v for k, v in counts.items() if isinstance(v, int | float)}
            for name, counts in forwarders.items()
        },
    )
