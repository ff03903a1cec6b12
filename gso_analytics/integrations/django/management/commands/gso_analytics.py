"""``manage.py gso_analytics report|prune``: the CLI's commands on the project's store.

Why a management command next to the ``gso-analytics`` CLI: it uses the running
library of the project (``settings.GSO_ANALYTICS``: the store, the timezone, the event
TTL and session timeout of ``OPTIONS``), so nobody repeats the store URL or the
retention settings on a command line, and cron runs ``prune`` with exactly the rules
the web workers use. The output is the CLI's.
"""

from __future__ import annotations

import json
from argparse import ArgumentParser, ArgumentTypeError
from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from gso_analytics.errors import GsoAnalyticsError
from gso_analytics.integrations.django import get_analytics
from gso_analytics.report import fmt_int, render_report

MAX_DAYS = 30


def _days(text: str) -> int:
    value = int(text) if text.isdigit() else 0
    if not 1 <= value <= MAX_DAYS:
        raise ArgumentTypeError(f"must be 1 to {MAX_DAYS}, got {text!r}")
    return value


class Command(BaseCommand):
    help = (
        "report: print today's metrics and the last days from the store of"
        " settings.GSO_ANALYTICS; prune: delete expired events and time out stale sessions."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
        report = actions.add_parser("report", help="print today's metrics and the last days")
        report.add_argument("--json", action="store_true", help="print JSON instead of tables")
        report.add_argument(
            "--days",
            type=_days,
            default=MAX_DAYS,
            help=f"how many of the newest days to show (1-{MAX_DAYS}, default: {MAX_DAYS})",
        )
        actions.add_parser("prune", help="delete expired events, time out stale sessions")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            if options["action"] == "report":
                self._report(options["json"], options["days"])
            else:
                self._prune()
        except GsoAnalyticsError as exc:  # a store down or misconfigured: one line, exit 1
            raise CommandError(str(exc)) from exc

    def _report(self, as_json: bool, days: int) -> None:
        analytics = get_analytics()
        metrics = analytics.get_metrics()
        history = analytics.get_last_30_days()[:days]
        if as_json:
            doc = {"metrics": metrics.to_dict(), "days": [day.to_dict() for day in history]}
            self.stdout.write(json.dumps(doc, indent=2))
        else:
            today = analytics.clock().astimezone(analytics.tz).strftime("%Y-%m-%d")
            self.stdout.write(render_report(metrics, today, history), ending="")

    def _prune(self) -> None:
        analytics = get_analytics()
        result = analytics.prune()
        self.stdout.write(
            f"Deleted {fmt_int(result.events_deleted)} events older than"
            f" {_span(analytics.event_ttl)}; timed out {fmt_int(result.sessions_timed_out)}"
            f" sessions open longer than {_span(analytics.session_timeout)}."
        )


def _span(delta: timedelta) -> str:
    """``7 days`` or ``12 hours``, as the CLI words its defaults."""
    hours = delta / timedelta(hours=1)
    return f"{hours / 24:g} days" if hours % 24 == 0 else f"{hours:g} hours"
