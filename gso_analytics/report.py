"""Plain-text rendering of metrics and daily counters for a terminal.

Why plain aligned text: the reader is a game team looking at a terminal or pasting
into a chat, so no colours, no box drawing, no dependency, and under ~120 columns.
Everything here is a pure function of the library's own data model, so it is shared
by ``gso-analytics demo`` and ``gso-analytics report`` and easy to test. The KPI
sections are declared once (:data:`KPI_SECTIONS`) and drawn both here and in
:mod:`gso_analytics.html_report`, so the terminal and the page cannot disagree.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import date
from typing import TYPE_CHECKING, Any

import attrs

from .model import DailyStats, Metrics, Number

if TYPE_CHECKING:
    from .kpis import KPIs

GAP = "  "


def fmt_int(value: Number) -> str:
    """``1234567`` → ``1,234,567``; amounts may be floats, shown rounded."""
    return f"{round(value):,}"


def fmt_duration(seconds: Number) -> str:
    """A session length a person reads at a glance: ``45s``, ``12m 05s``, ``1h 02m``."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def fmt_cents(cents: Number) -> str:
    """USD cents as dollars: ``123456`` → ``$1,234.56``."""
    return f"${cents / 100:,.2f}"


def avg_session(day: DailyStats) -> str:
    """The day's mean session length (``totalSessionS / sessionCount``), ``-`` when none."""
    count = day["sessionCount"]
    return fmt_duration(day["totalSessionS"] / count) if count else "-"


@attrs.frozen
class Column:
    group: str
    label: str
    value: Callable[[DailyStats], str]
    left: bool = False


def _counter(field: str) -> Callable[[DailyStats], str]:
    return lambda day: fmt_int(day[field])


COLUMNS: tuple[Column, ...] = (
    Column("", "Day", lambda day: day.day, left=True),
    Column("", "DAU", _counter("dau")),
    Column("", "New", _counter("newUsers")),
    Column("Sessions", "Count", _counter("sessionCount")),
    Column("Sessions", "Avg", avg_session),
    Column("Credits", "Earned", _counter("creditsEarned")),
    Column("Credits", "Spent", _counter("creditsSpent")),
    Column("Gems", "Earned", _counter("gemsEarned")),
    Column("Gems", "Spent", _counter("gemsSpent")),
    Column("Gems", "Bought", _counter("gemsPurchased")),
    Column("", "Revenue", lambda day: fmt_cents(day["stripeRevenue"])),
    Column("Gameplay", "Dungeons", _counter("dungeonsRun")),
    Column("Gameplay", "Crafts", _counter("craftsCompleted")),
    Column("Gameplay", "PvP", _counter("pvpBattles")),
    Column("Gameplay", "Raids", _counter("raidBattles")),
    Column("Gameplay", "Market", _counter("marketSales")),
)


def _align(text: str, width: int, left: bool) -> str:
    return text.ljust(width) if left else text.rjust(width)


def _groups() -> list[tuple[str, int, int]]:
    """``(group, first, end)`` column ranges of consecutive columns sharing a group."""
    spans: list[tuple[str, int, int]] = []
    for index, column in enumerate(COLUMNS):
        if spans and spans[-1][0] == column.group:
            spans[-1] = (column.group, spans[-1][1], index + 1)
        else:
            spans.append((column.group, index, index + 1))
    return spans


def _span_width(widths: list[int], first: int, end: int) -> int:
    return sum(widths[first:end]) + len(GAP) * (end - first - 1)


def _fit_groups(widths: list[int]) -> None:
    """Widen a group's first column until ``-- Name --`` fits over the group."""
    for group, first, end in _groups():
        if group:
            widths[first] += max(0, len(group) + 4 - _span_width(widths, first, end))


def _group_line(widths: list[int]) -> str:
    """The row above the labels: ``-- Name --`` over the columns each group spans."""
    cells = [
        f" {group} ".center(_span_width(widths, first, end), "-")
        if group
        else " " * _span_width(widths, first, end)
        for group, first, end in _groups()
    ]
    return GAP.join(cells).rstrip()


def render_days(days: Sequence[DailyStats]) -> str:
    """The daily counters as a table, one row per day, in the order given."""
    rows = [[column.value(day) for column in COLUMNS] for day in days]
    widths = [
        max([len(column.label)] + [len(row[i]) for row in rows]) for i, column in enumerate(COLUMNS)
    ]
    _fit_groups(widths)
    lines = [_group_line(widths)]
    for cells in ([c.label for c in COLUMNS], *rows):
        aligned = (
            _align(cell, w, c.left) for cell, w, c in zip(cells, widths, COLUMNS, strict=True)
        )
        lines.append(GAP.join(aligned).rstrip())
    return "\n".join(lines)


def _pairs(*items: tuple[str, str]) -> str:
    """``label value`` pairs on one line, padded so the pairs of every line line up."""
    return "  " + "    ".join(f"{label:<19}{value:>9}" for label, value in items)


def render_today(metrics: Metrics, today: str) -> str:
    """The ``get_metrics()`` snapshot, headed by the day it is about.

    "Avg session" is the seed's ``avgSessionMin`` (this month's closed sessions);
    "Avg session today" is the day's ``totalSessionS / sessionCount``, as in the table.
    """
    day = metrics.today or DailyStats(today, today[:7])
    rows = [
        (("DAU", fmt_int(metrics.dau)), ("MAU", fmt_int(metrics.mau))),
        (
            ("Avg session", f"{metrics.avg_session_min} min"),
            ("Active sessions", fmt_int(metrics.active_sessions)),
        ),
        (("Sessions today", fmt_int(day["sessionCount"])), ("Avg session today", avg_session(day))),
        (("New players", fmt_int(day["newUsers"])), ("Revenue", fmt_cents(day["stripeRevenue"]))),
        (
            ("Credits earned", fmt_int(day["creditsEarned"])),
            ("Credits spent", fmt_int(day["creditsSpent"])),
        ),
        (("Gems earned", fmt_int(day["gemsEarned"])), ("Gems spent", fmt_int(day["gemsSpent"]))),
        (("Gems bought", fmt_int(day["gemsPurchased"])), ("Dungeons", fmt_int(day["dungeonsRun"]))),
        (("Crafts", fmt_int(day["craftsCompleted"])), ("PvP battles", fmt_int(day["pvpBattles"]))),
        (("Raids", fmt_int(day["raidBattles"])), ("Market sales", fmt_int(day["marketSales"]))),
    ]
    return "\n".join([f"Today {today}", *(_pairs(*row) for row in rows)])


def render_report(metrics: Metrics, today: str, days: Sequence[DailyStats]) -> str:
    """Today's snapshot, then the last days (newest first)."""
    if days:
        noun = "day" if len(days) == 1 else f"{len(days)} days"
        history = f"Last {noun}\n{render_days(days)}"
    else:
        history = "No days recorded in this store yet."
    return f"{render_today(metrics, today)}\n\n{history}\n"


# -- KPI tables ---------------------------------------------------------------------------
#
# The KPI sections are described once, as data (field, label, formatter), so the
# terminal tables here and the HTML tables of :mod:`gso_analytics.html_report` show the
# same columns with the same formatting, and a test can check both against the JSON.

#: The retention days the report shows (classic day-N retention, as the services).
RETENTION_DAYS = (1, 7, 30)

KpiDoc = dict[str, Any]


def collect_kpis(kpis: KPIs, start: date, end: date) -> KpiDoc:
    """Every KPI of [start, end] as plain JSON-ready dicts: one read per KPI, shared by
    the text, JSON and HTML reports so the three can never disagree."""
    return {
        "start": start.isoformat(),
        "end": end.isoformat(),
        "today": kpis.today().isoformat(),
        "retention": [r.to_dict() for r in kpis.retention(start, end, RETENTION_DAYS)],
        "activeUsers": [r.to_dict() for r in kpis.active_users(start, end)],
        "revenue": [r.to_dict() for r in kpis.revenue(start, end)],
        "sessions": [r.to_dict() for r in kpis.sessions(start, end)],
        "economy": [r.to_dict() for r in kpis.economy(start, end)],
    }


def fmt_rate(value: float | None) -> str:
    """A 0-1 ratio as a percentage, ``-`` for unknown (a retention day still ahead)."""
    return "-" if value is None else f"{100 * value:.1f}%"


def fmt_ratio(value: float) -> str:
    return f"{value:.2f}"


def fmt_maybe_duration(value: Number | None) -> str:
    return "-" if value is None else fmt_duration(value)


def fmt_maybe_int(value: Number | None) -> str:
    return "-" if value is None else fmt_int(value)


@attrs.frozen
class KpiColumn:
    """One column of a KPI table: the row's ``field``, its header and its formatting."""

    field: str
    label: str
    fmt: Callable[[Any], str] = fmt_int
    left: bool = False


@attrs.frozen
class KpiSection:
    """A KPI table: its key in the KPI document, a title, and its columns (the first
    column is the row's key, ``day`` or ``cohort``)."""

    key: str
    title: str
    columns: tuple[KpiColumn, ...]


def _retention_columns() -> tuple[KpiColumn, ...]:
    columns = [KpiColumn("cohort", "Cohort", str, left=True), KpiColumn("users", "Users")]
    for n in RETENTION_DAYS:
        columns.append(KpiColumn(f"d{n}", f"D{n}", fmt_maybe_int))
        columns.append(KpiColumn(f"d{n}Rate", f"D{n} %", fmt_rate))
    return tuple(columns)


def _day() -> KpiColumn:
    return KpiColumn("day", "Day", str, left=True)


KPI_SECTIONS: tuple[KpiSection, ...] = (
    KpiSection("retention", "Retention by cohort (first login day)", _retention_columns()),
    KpiSection(
        "activeUsers",
        "Active users (WAU: 7 days, MAU30: 30 days ending that day)",
        (
            _day(),
            KpiColumn("dau", "DAU"),
            KpiColumn("wau", "WAU"),
            KpiColumn("mau30", "MAU30"),
            KpiColumn("stickiness", "DAU/MAU30", fmt_rate),
        ),
    ),
    KpiSection(
        "revenue",
        "Revenue (stripe.payment)",
        (
            _day(),
            KpiColumn("revenueCents", "Revenue", fmt_cents),
            KpiColumn("payingUsers", "Payers"),
            KpiColumn("firstTimePayers", "New payers"),
            KpiColumn("dau", "DAU"),
            KpiColumn("arpdauCents", "ARPDAU", fmt_cents),
            KpiColumn("arppuCents", "ARPPU", fmt_cents),
        ),
    ),
    KpiSection(
        "sessions",
        "Sessions (by login day; timed-out sessions left out of the durations)",
        (
            _day(),
            KpiColumn("sessions", "Sessions"),
            KpiColumn("sessionsPerUser", "Per DAU", fmt_ratio),
            KpiColumn("playTimePerDauS", "Play/DAU", fmt_duration),
            KpiColumn("medianSessionS", "Median", fmt_maybe_duration),
            KpiColumn("orphanedSessions", "Timed out"),
        ),
    ),
    KpiSection(
        "economy",
        "Economy",
        (
            _day(),
            KpiColumn("creditsEarned", "Credits in"),
            KpiColumn("creditsSpent", "Credits out"),
            KpiColumn("creditsNet", "Credits net"),
            KpiColumn("gemsEarned", "Gems earned"),
            KpiColumn("gemsPurchased", "Gems bought"),
            KpiColumn("gemsSpent", "Gems spent"),
            KpiColumn("gemsNet", "Gems net"),
        ),
    ),
)


def render_kpi_table(section: KpiSection, rows: Sequence[dict[str, Any]]) -> str:
    """One KPI section as an aligned table, or a line saying it is empty."""
    if not rows:
        return f"{section.title}\n  (none in this range)"
    cells = [[column.fmt(row[column.field]) for column in section.columns] for row in rows]
    widths = [
        max([len(column.label)] + [len(line[i]) for line in cells])
        for i, column in enumerate(section.columns)
    ]
    lines = [section.title]
    for line in ([c.label for c in section.columns], *cells):
        aligned = (
            _align(cell, w, c.left)
            for cell, w, c in zip(line, widths, section.columns, strict=True)
        )
        lines.append(GAP.join(aligned).rstrip())
    return "\n".join(lines)


def render_kpis(doc: KpiDoc) -> str:
    """The KPI tables of :func:`collect_kpis`, headed by the range they cover."""
    head = f"KPIs {doc['start']} to {doc['end']} (today {doc['today']})"
    tables = [render_kpi_table(section, doc[section.key]) for section in KPI_SECTIONS]
    return "\n\n".join([head, *tables]) + "\n"
