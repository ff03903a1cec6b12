"""``manage.py gso_analytics report|prune|export-user ID|erase ID``: the CLI on the project.

Why a management command next to the ``gso-analytics`` CLI: it uses the running
library of the project (``settings.GSO_ANALYTICS``: the store, the timezone, the event
TTL and session timeout of ``OPTIONS``), so nobody repeats the store URL or the
retention settings on a command line, and cron runs ``prune`` with exactly the rules
the web workers use. ``report`` takes the CLI's options (``--json``, ``--days``,
``--today``, ``--start``/``--end`` for the KPIs, ``--html``) and prints what the CLI
prints (:func:`gso_analytics.cli.report_text`).
"""

from __future__ import annotations

import json
from argparse import ArgumentParser
from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from gso_analytics.analytics import Analytics
from gso_analytics.cli import add_report_options, fixed_clock, report_text
from gso_analytics.errors import GsoAnalyticsError
from gso_analytics.integrations.django import get_analytics
from gso_analytics.report import fmt_int


class Command(BaseCommand):
    help = (
        "report: print today's metrics, the last days and the KPIs from the store of"
        " settings.GSO_ANALYTICS; prune: delete expired events and time out stale sessions."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
        report = actions.add_parser(
            "report", help="print today's metrics, the last days and the KPIs"
        )
        add_report_options(
            report, today_help="report as of this day, in the project's timezone (default: today)"
        )
        actions.add_parser("prune", help="delete expired events, time out stale sessions")
        for name, help_text in (
            ("export-user", "print everything stored about one player, as JSON"),
            ("erase", "erase one player: id and username out, figures kept exact"),
        ):
            action = actions.add_parser(name, help=help_text)
            action.add_argument("user_id", metavar="ID", help="the player's id")
            if name == "export-user":
                action.add_argument(
                    "--after-erase",
                    action="store_true",
                    help="for an erased player: what the erase's token holds",
                )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            if options["action"] == "report":
                self._report(options)
            elif options["action"] == "export-user":
                export = get_analytics().export_user(
                    options["user_id"], after_erase=options["after_erase"]
                )
                self.stdout.write(json.dumps(export, indent=2, sort_keys=True))
            elif options["action"] == "erase":
                receipt = get_analytics().erase_user(options["user_id"])
                self.stdout.write(json.dumps(receipt.to_dict(), indent=2, sort_keys=True))
            else:
                self._prune()
        except GsoAnalyticsError as exc:  # a store down or misconfigured: one line, exit 1
            raise CommandError(str(exc)) from exc

    def _report(self, options: dict[str, Any]) -> None:
        analytics = get_analytics()
        day = options["today"]
        if day is None:
            reader, today = analytics, analytics.clock().astimezone(analytics.tz).date()
        else:  # the project's rules, on a clock standing at the end of that day
            analytics.flush()  # this process's calls first, as every read does
            reader = Analytics(
                analytics.store,
                clock=fixed_clock(day, analytics.tz),
                tz=analytics.tz,
                counters=analytics.counters,
                event_ttl=analytics.event_ttl,
                test_users=analytics.test_users,
                forwarders=[],
            )
            today = day
        try:
            text = report_text(
                reader,
                today,
                days=options["days"],
                start=options["start"],
                end=options["end"],
                html=options["html"],
                as_json=options["json"],
                csv=options["csv"],
            )
        finally:
            if reader is not analytics:
                reader.stop()
        self.stdout.write(text, ending="")

    def _prune(self) -> None:
        analytics = get_analytics()
        result = analytics.prune()
        self.stdout.write(
            f"Deleted {fmt_int(result.events_deleted)} events older than"
            f" {_span(analytics.event_ttl)}; closed {fmt_int(result.sessions_timed_out)}"
            f" sessions idle for {_span(analytics.idle_timeout)}."
        )


def _span(delta: timedelta) -> str:
    """``7 days``, ``12 hours`` or ``30 minutes``, as the CLI words its defaults."""
    hours = delta / timedelta(hours=1)
    if hours < 1:
        return f"{delta / timedelta(minutes=1):g} minutes"
    return f"{hours / 24:g} days" if hours % 24 == 0 else f"{hours:g} hours"
