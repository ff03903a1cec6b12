"""The Prometheus exposition of the metrics endpoint, built with ``prometheus_client``.

Why a collector over a snapshot instead of module-level ``Gauge`` objects: the numbers
live in the store and are shared by every worker process, so each scrape reads them
once and a fresh :class:`~prometheus_client.CollectorRegistry` renders them. Nothing is
registered globally and an app's own ``prometheus_client`` metrics are untouched.

Every series of a scrape comes from the store, so any worker answering a scrape gives
the same, whole answer:

- business numbers: today's counters as ``gso_analytics_today_*`` gauges (they restart
  at midnight), the same counters as all-time ``gso_analytics_<field>_total`` counters
  (:meth:`~gso_analytics.Store.get_totals`, never reset, so ``increase()`` and
  ``rate()`` work over any range), DAU, MAU, the rolling 30-day MAU, and the closed
  sessions as a summary in seconds (``_sum`` and ``_count``);
- health: every live worker's :class:`~gso_analytics.model.Heartbeat`, labelled with
  ``host`` and ``pid`` (not the pid alone: two hosts may share one), so every scrape
  holds every worker's series instead of the one that answered.

The ``/stats`` view renders this process's health alone, without the store.
This module imports ``prometheus_client`` (the ``prometheus`` extra); the endpoint
imports it only when the Prometheus format is asked for.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from datetime import timedelta
from typing import Any

import attrs
from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from .. import __version__
from ..analytics import Analytics
from ..counters import decode_counters
from ..kpis import MAU30_DAYS
from ..model import Heartbeat, Number
from ..store import WITHDRAWN

PREFIX = "gso_analytics_"

#: ``getMetrics()`` keys -> (metric, help). Read from the store: the whole cluster.
METRICS_GAUGES: Mapping[str, tuple[str, str]] = {
    "dau": ("gso_analytics_dau", "Distinct users with a session today."),
    "mau": ("gso_analytics_mau", "Distinct users with a session this calendar month."),
    "activeSessions": (
        "gso_analytics_active_sessions",
        "Sessions with a mark within idle_timeout, in all processes.",
    ),
}

INFO = ("gso_analytics_info", "The library's version, its store and its timezone (always 1).")
MAU30 = ("gso_analytics_mau30", "Distinct users active in the 30 days ending today.")

#: Daily fields whose metric name is not simply the field in snake case (the unit, or a
#: clearer noun). Every other field, a game's own counters too, is snake-cased.
FIELD_NAMES: Mapping[str, str] = {
    "stripeRevenue": "stripe_revenue_cents",
    "totalSessionS": "session_seconds",
    "sessionCount": "sessions",
}

#: Daily fields that are not counters of their own (``dau`` is a distinct count: its
#: sum over days means nothing to a game team).
NOT_COUNTERS = frozenset({"day", "month", "dau"})

#: The sessions as a summary: all-time count and sum of their seconds (so far), the
#: average of every session figure (``_sum / _count``, see docs/concepts.md).
SESSION_SUMMARY = (
    "gso_analytics_session_duration_seconds",
    "Play sessions: their count and the sum of their seconds (so far).",
)
TIMED_SESSIONS, TIMED_SESSION_S = "timedSessions", "timedSessionS"
#: The seconds the summary's ``_sum`` has taken back (see :func:`.store.total_increments`):
#: closed sessions' exact seconds are ``_sum`` minus this.
SESSION_WITHDRAWN = (
    "gso_analytics_session_duration_seconds_withdrawn",
    "Seconds taken back from the summary's _sum by sessions recomputed from a late mark.",
)
#: The same for the summary's ``_count``: sessions merged by a late mark.
SESSIONS_WITHDRAWN = (
    "gso_analytics_session_duration_seconds_count_withdrawn",
    "Sessions taken back from the summary's _count (merged into another by a late mark).",
)
#: Daily fields a late arrival can take back from, exposed with a ``_withdrawn_total``:
#: seconds of a session a late mark ended earlier, and a player's registration moved
#: to an earlier day (another worker flushed it late).
WITHDRAWABLE = frozenset({"totalSessionS", "sessionCount", "newUsers"})

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def metric_base(field: str) -> str:
    """``creditsEarned`` -> ``credits_earned`` (see :data:`FIELD_NAMES`)."""
    return FIELD_NAMES.get(field) or _CAMEL.sub("_", field).lower()


def today_gauge(field: str) -> str:
    return f"{PREFIX}today_{metric_base(field)}"


def total_counter(field: str) -> str:
    """The counter's name without ``_total``, which ``prometheus_client`` appends."""
    return f"{PREFIX}{metric_base(field)}"


GAUGE, COUNTER = "gauge", "counter"

#: Heartbeat ``stats`` keys -> (metric, type, help). Per process, labelled with
#: ``host`` and ``pid``; a counter is exposed with the ``_total`` suffix.
HEALTH: Mapping[str, tuple[str, str, str]] = {
    "buffered": (
        "gso_analytics_buffered_calls",
        GAUGE,
        "Calls held in this process's memory, not stored yet.",
    ),
    "flushed": ("gso_analytics_flushed_calls", COUNTER, "Calls this process stored."),
    "batches": ("gso_analytics_flush_batches", COUNTER, "Batches this process stored."),
    "retried": (
        "gso_analytics_flush_retries",
        COUNTER,
        "Attempts to store a batch that had failed before.",
    ),
    "flush_failures": ("gso_analytics_flush_failures", COUNTER, "Failed attempts to store."),
    "internal_errors": (
        "gso_analytics_internal_errors",
        COUNTER,
        "Failed attempts that were not store errors (a bug, an untranslated driver error).",
    ),
    "quarantined": (
        "gso_analytics_quarantined_batches",
        COUNTER,
        "Batches set aside (failing permanently, or too old to retry exactly once).",
    ),
    "dropped": (
        "gso_analytics_dropped_calls",
        COUNTER,
        "Calls dropped because the buffer was full (store failing for long).",
    ),
    "rejected": ("gso_analytics_rejected_calls", COUNTER, "Calls rejected as bad input."),
    "logouts_without_session": (
        "gso_analytics_logouts_without_session",
        COUNTER,
        "Logouts of this process that ended no session when stored.",
    ),
    "counters_saturated": (
        "gso_analytics_counters_saturated",
        COUNTER,
        "Increments this process's writes cut at the counters' ceiling of 2**61.",
    ),
    "flush_interval_s": (
        "gso_analytics_flush_interval_seconds",
        GAUGE,
        "This process's flush interval (a flush older than 2 of them is stale).",
    ),
}

LAST_FLUSH = (
    "gso_analytics_last_flush_timestamp_seconds",
    "When this process last finished a flush (an empty one too), in Unix seconds.",
)


#: Heartbeat ``forwarders[name]`` keys -> (metric, type, help). Per process and
#: forwarder, labelled with ``host``, ``pid`` and ``forwarder``.
FORWARDING: Mapping[str, tuple[str, str, str]] = {
    "queued": (
        "gso_analytics_forward_queued_events",
        GAUGE,
        "Events waiting in this forwarder's queue (sent or being sent: not yet).",
    ),
    "delivered": (
        "gso_analytics_forward_delivered_events",
        COUNTER,
        "Events the forwarder's endpoint accepted.",
    ),
    "retried": (
        "gso_analytics_forward_retries",
        COUNTER,
        "Attempts to send a batch that had failed before.",
    ),
    "dropped_overflow": (
        "gso_analytics_forward_dropped_overflow_events",
        COUNTER,
        "Oldest events dropped because the queue was full (endpoint failing for long).",
    ),
    "dropped_rejected": (
        "gso_analytics_forward_rejected_events",
        COUNTER,
        "Events the endpoint refused for good (or that could not be encoded).",
    ),
    "undelivered_at_stop": (
        "gso_analytics_forward_undelivered_at_stop_events",
        COUNTER,
        "Events still queued when stop() ran out of forward_stop_timeout.",
    ),
}


@attrs.frozen
class Scrape:
    """What one scrape shows: ``business`` None for the health-only ``/stats`` view."""

    info: Mapping[str, str]
    heartbeats: Sequence[Heartbeat]
    business: Business | None = None


@attrs.frozen
class Business:
    metrics: Mapping[str, Any]  # ``Metrics.to_dict()``, the JSON view's numbers
    totals: Mapping[str, Number]
    mau30: int


def take_scrape(analytics: Analytics, business: bool) -> Scrape:
    """Read one scrape: with ``business``, the store's numbers and every live worker's
    heartbeat (this process's is written by the flush ``get_metrics()`` makes first);
    without, this process's health alone, from memory."""
    info = {
        "version": __version__,
        "store": (type(analytics.store).schemes or (type(analytics.store).__name__,))[0],
        "tz": str(analytics.tz),
    }
    if not business:
        return Scrape(info, [analytics.heartbeat()])
    metrics = analytics.get_metrics().to_dict()
    store = analytics.store
    kpis = analytics.kpis
    today = kpis.today()
    # Counted in the store, like dau and mau (test users included, unlike the KPIs).
    first = today - timedelta(days=MAU30_DAYS - 1)
    mau30 = store.count_day_users(first.isoformat(), today.isoformat())
    numbers = Business(metrics, decode_counters(store.get_totals()), mau30)
    return Scrape(info, store.live_heartbeats(kpis.clock()), numbers)


class ScrapeCollector(Collector):
    """Yields one :class:`Scrape`'s series."""

    def __init__(self, scrape: Scrape) -> None:
        self.scrape = scrape

    def collect(self) -> Iterator[Metric]:
        # A gauge of 1, not an OpenMetrics info family: promtool and classic-format
        # tools know the gauge, and both formats then carry the same series.
        info = GaugeMetricFamily(*INFO, labels=list(self.scrape.info))
        info.add_metric(list(self.scrape.info.values()), 1)
        yield info
        if self.scrape.business is not None:
            yield from self._business(self.scrape.business)
        yield from self._health()

    def _business(self, numbers: Business) -> Iterator[Metric]:
        metrics = numbers.metrics
        for key, (name, doc) in METRICS_GAUGES.items():
            yield GaugeMetricFamily(name, doc, value=metrics[key])
        yield GaugeMetricFamily(*MAU30, value=numbers.mau30)
        today: Mapping[str, Any] = metrics["today"]
        seen: set[str] = set()
        for field in today:
            if field in NOT_COUNTERS or today_gauge(field) in seen:
                continue  # a custom field whose name clashes is shown once
            seen.add(today_gauge(field))
            yield GaugeMetricFamily(
                today_gauge(field),
                f"Today's {field} (restarts at 0 at midnight; see {total_counter(field)}_total).",
                value=today[field],
            )
            yield CounterMetricFamily(
                total_counter(field),
                f"All-time {field}, every worker of the store (never restarts).",
                value=numbers.totals.get(field, 0),
            )
            if field in WITHDRAWABLE:
                yield CounterMetricFamily(
                    f"{total_counter(field)}_withdrawn",
                    f"All-time {field} taken back by a late arrival (a session recomputed"
                    " from a late mark, a registration moved to an earlier day): the exact"
                    f" figure is {total_counter(field)}_total minus this.",
                    value=numbers.totals.get(field + WITHDRAWN, 0),
                )
        yield SummaryMetricFamily(
            *SESSION_SUMMARY,
            count_value=int(numbers.totals.get(TIMED_SESSIONS, 0)),
            sum_value=numbers.totals.get(TIMED_SESSION_S, 0),
        )
        yield CounterMetricFamily(
            *SESSION_WITHDRAWN,
            value=numbers.totals.get(TIMED_SESSION_S + WITHDRAWN, 0),
        )
        yield CounterMetricFamily(
            *SESSIONS_WITHDRAWN,
            value=numbers.totals.get(TIMED_SESSIONS + WITHDRAWN, 0),
        )

    def _health(self) -> Iterator[Metric]:
        beats = self.scrape.heartbeats
        for key, (name, kind, doc) in HEALTH.items():
            family_type = CounterMetricFamily if kind == COUNTER else GaugeMetricFamily
            family = family_type(name, doc, labels=["host", "pid"])
            for beat in beats:
                family.add_metric([beat.host, str(beat.pid)], beat.stats.get(key, 0))
            yield family
        last = GaugeMetricFamily(*LAST_FLUSH, labels=["host", "pid"])
        for beat in beats:
            last.add_metric([beat.host, str(beat.pid)], beat.at.timestamp())
        yield last
        if not any(beat.forwarders for beat in beats):
            return
        for key, (name, kind, doc) in FORWARDING.items():
            family_type = CounterMetricFamily if kind == COUNTER else GaugeMetricFamily
            family = family_type(name, doc, labels=["host", "pid", "forwarder"])
            for beat in beats:
                for forwarder, counts in beat.forwarders.items():
                    family.add_metric([beat.host, str(beat.pid), forwarder], counts.get(key, 0))
            yield family


def render(scrape: Scrape, accept: str | None) -> tuple[bytes, str]:
    """The exposition body and its content type.

    ``prometheus_client`` picks the encoding from ``Accept``, as its own handlers do:
    OpenMetrics for a scraper that prefers it, otherwise the classic text format.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ScrapeCollector(scrape))
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type
