"""Plain-text rendering of metrics and daily counters for a terminal.

Why plain aligned text: the reader is a game team looking at a terminal or pasting
into a chat, so no colours, no box drawing, no dependency, and under ~120 columns.
Everything here is a pure function of the library's own data model, so it is shared
by ``gso-analytics demo`` and ``gso-analytics report`` and easy to test.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import attrs

from .model import DailyStats, Metrics, Number

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
