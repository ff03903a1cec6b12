"""The Prometheus exposition of the metrics endpoint, built with ``prometheus_client``.

Why a collector over a snapshot instead of module-level ``Gauge`` objects: the numbers
live in the store and are shared by every worker process, so each scrape reads them
once (the same ``getMetrics()`` dict the JSON view serves, so both formats carry the
same numbers) and a fresh :class:`~prometheus_client.CollectorRegistry` renders them.
Nothing is registered globally, nothing needs ``prometheus_client``'s multiprocess
mode, and an app's own ``prometheus_client`` metrics are untouched.

The library's health (:meth:`~gso_analytics.Analytics.stats`) is per process: those
series carry a ``pid`` label, so the workers behind one endpoint are distinct series
rather than one counter that seems to reset whenever another worker answers. The
forwarders' counts add a ``forwarder`` label, so an endpoint that drops events shows.

This module imports ``prometheus_client`` (the ``prometheus`` extra); the endpoint
imports it only when the Prometheus format is asked for.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

PREFIX = "gso_analytics_"

#: ``getMetrics()`` keys -> (metric, help). Read from the store: the whole cluster.
METRICS_GAUGES: Mapping[str, tuple[str, str]] = {
    "dau": ("gso_analytics_dau", "Distinct users with a session today."),
    "mau": ("gso_analytics_mau", "Distinct users with a session this month."),
    "activeSessions": ("gso_analytics_active_sessions", "Sessions open now, in all processes."),
    "avgSessionMin": (
        "gso_analytics_avg_session_minutes",
        "Mean duration of this month's timed sessions, in minutes, rounded.",
    ),
}

#: Fields of today's daily document -> (metric, help). Gauges: they restart at 0 every
#: day (in the configured timezone), which a Prometheus counter must never do.
TODAY_GAUGES: Mapping[str, tuple[str, str]] = {
    "newUsers": ("gso_analytics_today_new_users", "Users registered today (user.register)."),
    "creditsEarned": ("gso_analytics_today_credits_earned", "Credits earned today."),
    "creditsSpent": ("gso_analytics_today_credits_spent", "Credits spent today."),
    "gemsEarned": ("gso_analytics_today_gems_earned", "Gems earned today."),
    "gemsSpent": ("gso_analytics_today_gems_spent", "Gems spent today."),
    "gemsPurchased": ("gso_analytics_today_gems_purchased", "Gems purchased today."),
    "stripeRevenue": (
        "gso_analytics_today_stripe_revenue_cents",
        "Real-money revenue today (stripe.payment), in USD cents.",
    ),
    "dungeonsRun": ("gso_analytics_today_dungeons_run", "Dungeons completed today."),
    "craftsCompleted": ("gso_analytics_today_crafts_completed", "Crafts completed today."),
    "pvpBattles": ("gso_analytics_today_pvp_battles", "PvP battles today (ranked or not)."),
    "raidBattles": ("gso_analytics_today_raid_battles", "Raids completed today."),
    "marketSales": ("gso_analytics_today_market_sales", "Market sales today."),
    "totalSessionS": (
        "gso_analytics_today_session_seconds",
        "Play time of the closed sessions that started today, in seconds.",
    ),
    "sessionCount": ("gso_analytics_today_sessions", "Sessions started today."),
}

#: A game's own counters (``counters={...}``), one series per field name.
CUSTOM_GAUGE = (
    "gso_analytics_today_counter",
    "Today's value of a counter the game added (label: its daily field name).",
)

#: Keys of the today document that are not counters (or are exposed elsewhere).
_NOT_COUNTERS = frozenset({"day", "month", "dau"})

GAUGE, COUNTER = "gauge", "counter"

#: ``stats()`` keys -> (metric, type, help). Per process, labelled with ``pid``; a
#: counter is exposed with the ``_total`` suffix.
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
    "last_flush_age_s": (
        "gso_analytics_last_flush_age_seconds",
        GAUGE,
        "Seconds since this process last stored a batch (absent before its first).",
    ),
}


#: ``stats()["forwarding"]["forwarders"][name]`` keys -> (metric, type, help). Per
#: process and forwarder, labelled with ``pid`` and ``forwarder``.
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


class SnapshotCollector(Collector):
    """Yields one scrape's numbers: ``metrics`` (``Metrics.to_dict()``, or None for the
    health-only view) and this process's ``stats``."""

    def __init__(
        self, metrics: Mapping[str, Any] | None, stats: Mapping[str, Any], pid: int
    ) -> None:
        self.metrics = metrics
        self.stats = stats
        self.pid = str(pid)

    def collect(self) -> Iterator[Metric]:
        if self.metrics is not None:
            yield from self._business(self.metrics)
        yield from self._health()

    def _business(self, metrics: Mapping[str, Any]) -> Iterator[Metric]:
        for key, (name, doc) in METRICS_GAUGES.items():
            yield GaugeMetricFamily(name, doc, value=metrics[key])
        today: Mapping[str, Any] = metrics["today"]  # {} before the day's first flush
        for field, (name, doc) in TODAY_GAUGES.items():
            yield GaugeMetricFamily(name, doc, value=today.get(field, 0))
        custom = GaugeMetricFamily(*CUSTOM_GAUGE, labels=["field"])
        for field, value in today.items():
            if field not in TODAY_GAUGES and field not in _NOT_COUNTERS:
                custom.add_metric([field], value)
        if custom.samples:
            yield custom

    def _health(self) -> Iterator[Metric]:
        for key, (name, kind, doc) in HEALTH.items():
            value = self.stats.get(key)
            if value is None:
                continue
            family_type = CounterMetricFamily if kind == COUNTER else GaugeMetricFamily
            family = family_type(name, doc, labels=["pid"])
            family.add_metric([self.pid], value)
            yield family
        forwarders: Mapping[str, Mapping[str, Any]] = self.stats.get("forwarding", {}).get(
            "forwarders", {}
        )
        if not forwarders:
            return
        for key, (name, kind, doc) in FORWARDING.items():
            family_type = CounterMetricFamily if kind == COUNTER else GaugeMetricFamily
            family = family_type(name, doc, labels=["pid", "forwarder"])
            for forwarder, counts in forwarders.items():
                family.add_metric([self.pid, forwarder], counts[key])
            yield family


def render(
    metrics: Mapping[str, Any] | None, stats: Mapping[str, Any], accept: str | None
) -> tuple[bytes, str]:
    """The exposition body and its content type.

    ``prometheus_client`` picks the encoding from ``Accept``, as its own handlers do:
    OpenMetrics for a scraper that prefers it, otherwise the classic text format.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(metrics, stats, os.getpid()))
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type
