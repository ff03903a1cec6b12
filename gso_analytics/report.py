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
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any

import attrs

from .counters import MAX_COUNTER
from .kpis import MAU30_DAYS, pooled_rate, ratio
from .model import DailyStats, Metrics, Number

if TYPE_CHECKING:
    from .kpis import KPIs

GAP = "  "


def fmt_int(value: Number) -> str:
    """``1234567`` → ``1,234,567``; amounts may be floats, shown rounded. A figure at
    the counters' ceiling reads ``>=`` it: it saturated, its true sum is not stored."""
    text = f"{round(value):,}"
    return f">={text}" if value >= MAX_COUNTER else text


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
    """USD cents as dollars: ``123456`` → ``$1,234.56``; whole cents exactly (past 2**53
    a float would round them), a figure at the counters' ceiling as ``>=`` it."""
    if not isinstance(cents, int):
        return f"${cents / 100:,.2f}"  # a mean (ARPDAU, ARPPU)
    dollars, rest = divmod(abs(cents), 100)
    text = f"{'-' if cents < 0 else ''}${dollars:,}.{rest:02d}"
    return f">={text}" if cents >= MAX_COUNTER else text


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


#: The widest line the terminal report prints: a terminal of 100 columns, or a chat.
WIDTH = 100


def _groups(columns: Sequence[Column]) -> list[tuple[str, int, int]]:
    """``(group, first, end)`` column ranges of consecutive columns sharing a group."""
    spans: list[tuple[str, int, int]] = []
    for index, column in enumerate(columns):
        if spans and spans[-1][0] == column.group:
            spans[-1] = (column.group, spans[-1][1], index + 1)
        else:
            spans.append((column.group, index, index + 1))
    return spans


def _span_width(widths: Sequence[int], first: int, end: int) -> int:
    return sum(widths[first:end]) + len(GAP) * (end - first - 1)


def _fit_groups(columns: Sequence[Column], widths: list[int]) -> None:
    """Widen a group's first column until ``-- Name --`` fits over the group."""
    for group, first, end in _groups(columns):
        if group:
            widths[first] += max(0, len(group) + 4 - _span_width(widths, first, end))


def _group_line(columns: Sequence[Column], widths: Sequence[int]) -> str:
    """The row above the labels: ``-- Name --`` over the columns each group spans."""
    cells = [
        f" {group} ".center(_span_width(widths, first, end), "-")
        if group
        else " " * _span_width(widths, first, end)
        for group, first, end in _groups(columns)
    ]
    return GAP.join(cells).rstrip()


def _sections(widths: Sequence[int], width: int) -> list[list[int]]:
    """The column indexes of each table the days are shown in: the first (``Day``)
    column, then as many whole groups as fit ``width``, in order; the rest in the next
    table, which starts with ``Day`` again. Every column is in exactly one section."""
    sections: list[list[int]] = []
    for group, first, end in _groups(COLUMNS):
        if group:
            block = [range(first, end)]
        else:  # an ungrouped column stands alone; Day is in every section
            block = [range(index, index + 1) for index in range(max(first, 1), end)]
        for indexes in block:
            needed = len(GAP) + _span_width(widths, indexes.start, indexes.stop)
            if sections and _section_width(sections[-1], widths) + needed <= width:
                sections[-1] += indexes
            else:
                sections.append([0, *indexes])
    return sections


def _section_width(indexes: Sequence[int], widths: Sequence[int]) -> int:
    return sum(widths[i] for i in indexes) + len(GAP) * (len(indexes) - 1)


def render_days(days: Sequence[DailyStats], width: int = WIDTH) -> str:
    """The daily counters as tables, one row per day in the order given: one table
    when every column fits ``width``, else as many as needed, each a run of whole
    column groups after the ``Day`` column, separated by a blank line."""
    rows = [[column.value(day) for column in COLUMNS] for day in days]
    widths = [
        max([len(column.label)] + [len(row[i]) for row in rows]) for i, column in enumerate(COLUMNS)
    ]
    _fit_groups(COLUMNS, widths)
    tables = []
    for indexes in _sections(widths, width):
        columns = [COLUMNS[i] for i in indexes]
        shown = [widths[i] for i in indexes]
        lines = [_group_line(columns, shown)]
        for cells in ([c.label for c in COLUMNS], *rows):
            aligned = (_align(cells[i], widths[i], COLUMNS[i].left) for i in indexes)
            lines.append(GAP.join(aligned).rstrip())
        tables.append("\n".join(lines))
    return "\n\n".join(tables)


def _pairs(*items: tuple[str, str]) -> str:
    """``label value`` pairs on one line, padded so the pairs of every line line up."""
    return "  " + "    ".join(f"{label:<19}{value:>9}" for label, value in items)


def render_today(metrics: Metrics, today: str) -> str:
    """The ``get_metrics()`` snapshot, headed by the day it is about.

    "Avg session, month" is ``avgSessionMin`` (this month's seconds over its sessions,
    named so beside the day's figures); "Avg session today" the day's
    ``totalSessionS / sessionCount``, as in the table: one rule over two periods
    (docs/concepts.md, "Play sessions").
    """
    day = metrics.today or DailyStats(today, today[:7])
    rows = [
        (("DAU", fmt_int(metrics.dau)), ("MAU", fmt_int(metrics.mau))),
        (
            ("Avg session, month", f"{metrics.avg_session_min} min"),
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


def fmt_rate(value: float | None) -> str:
    """A 0-1 ratio as a percentage, ``-`` for unknown (a retention day not over yet)."""
    return "-" if value is None else f"{100 * value:.1f}%"


def fmt_ratio(value: float) -> str:
    return f"{value:.2f}"


def fmt_maybe_duration(value: Number | None) -> str:
    return "-" if value is None else fmt_duration(value)


def fmt_maybe_int(value: Number | None) -> str:
    return "-" if value is None else fmt_int(value)


Row = dict[str, Any]
#: How a table's totals row sums up one column: from the section's rows and the whole
#: KPI document (for what the rows cannot give, such as distinct payers over the range).
Total = Callable[[Sequence[Row], KpiDoc], Any]


def _sum(field: str) -> Total:
    return lambda rows, _doc: sum(row[field] for row in rows)


def _mean(field: str) -> Total:
    return lambda rows, _doc: ratio(sum(row[field] for row in rows), len(rows))


def _ratio(numerator: str, denominator: str) -> Total:
    return lambda rows, _doc: ratio(
        sum(row[numerator] for row in rows), sum(row[denominator] for row in rows)
    )


def _none(_rows: Sequence[Row], _doc: KpiDoc) -> None:
    """A column with no meaningful total (a median, a rolling count)."""


def _headline(name: str) -> Total:
    return lambda _rows, doc: doc["headline"]["figures"][name]["value"]


def _known_sum(field: str) -> Total:
    """The sum over the cohorts whose day is over (unknown days are not zeros); None
    when that day is over for none of them."""

    def total(rows: Sequence[Row], _doc: KpiDoc) -> int | None:
        known = [row[field] for row in rows if row[field] is not None]
        return sum(known) if known else None

    return total


def _pooled(n: int) -> Total:
    return lambda rows, _doc: pooled_rate((row["users"], row[f"d{n}"]) for row in rows)


def _dau_by_day(doc: KpiDoc) -> dict[str, int]:
    return {row["day"]: row["dau"] for row in doc["activeUsers"]}


def _per_dau(rows: Sequence[Row], doc: KpiDoc, play: bool) -> float:
    """Sessions (or play time) per DAU over the range: the sum over the sum of DAU."""
    dau = _dau_by_day(doc)
    user_days = sum(dau.get(row["day"], 0) for row in rows)
    if play:
        total = sum(row["playTimePerDauS"] * dau.get(row["day"], 0) for row in rows)
    else:
        total = sum(row["sessions"] for row in rows)
    return ratio(total, user_days)


@attrs.frozen
class KpiColumn:
    """One column of a KPI table: the row's ``field``, its header, its formatting and
    how the totals row sums it up."""

    field: str
    label: str
    fmt: Callable[[Any], str] = fmt_int
    left: bool = False
    total: Total = _none


@attrs.frozen
class KpiSection:
    """A KPI table: its key in the KPI document, a title, its columns (the first is the
    row's key, ``day`` or ``cohort``), the label of its totals row, and the fields
    whose zeros make a day "without activity" (runs of such days are collapsed)."""

    key: str
    title: str
    columns: tuple[KpiColumn, ...]
    total_label: str = "Total"
    activity: tuple[str, ...] = ()


def _retention_columns() -> tuple[KpiColumn, ...]:
    columns = [
        KpiColumn("cohort", "Cohort", str, left=True),
        KpiColumn("users", "Users", total=_sum("users")),
    ]
    for n in RETENTION_DAYS:
        columns.append(KpiColumn(f"d{n}", f"D{n}", fmt_maybe_int, total=_known_sum(f"d{n}")))
        columns.append(KpiColumn(f"d{n}Rate", f"D{n} %", fmt_rate, total=_pooled(n)))
    return tuple(columns)


def _day() -> KpiColumn:
    return KpiColumn("day", "Day", str, left=True)


def _counter_column(field: str, label: str) -> KpiColumn:
    return KpiColumn(field, label, total=_sum(field))


KPI_SECTIONS: tuple[KpiSection, ...] = (
    KpiSection(
        "retention",
        "Retention by cohort (first active day)",
        _retention_columns(),
        total_label="All cohorts",
    ),
    KpiSection(
        "activeUsers",
        "Active users (WAU: 7 days, MAU30: 30 days ending that day)",
        (
            _day(),
            KpiColumn("dau", "DAU", total=_mean("dau")),
            KpiColumn("wau", "WAU", total=_mean("wau")),
            KpiColumn("mau30", "MAU30", total=_mean("mau30")),
            KpiColumn("stickiness", "DAU/MAU30", fmt_rate, total=_ratio("dau", "mau30")),
        ),
        total_label="Average",
        activity=("dau",),
    ),
    KpiSection(
        "revenue",
        "Revenue (stripe.payment)",
        (
            _day(),
            KpiColumn("revenueCents", "Revenue", fmt_cents, total=_sum("revenueCents")),
            KpiColumn("payingUsers", "Payers", total=_headline("payingUsers")),
            _counter_column("firstTimePayers", "New payers"),
            KpiColumn("dau", "DAU", total=_mean("dau")),
            KpiColumn("arpdauCents", "ARPDAU", fmt_cents, total=_ratio("revenueCents", "dau")),
            KpiColumn(
                "arppuCents",
                "ARPPU",
                fmt_cents,
                total=lambda rows, doc: ratio(
                    sum(row["revenueCents"] for row in rows),
                    doc["headline"]["figures"]["payingUsers"]["value"],
                ),
            ),
        ),
        total_label="Total",
        activity=("revenueCents", "dau"),
    ),
    KpiSection(
        "sessions",
        "Sessions (by start day; ended by a logout or after idle_timeout, all in the durations)",
        (
            _day(),
            _counter_column("sessions", "Sessions"),
            KpiColumn(
                "sessionsPerUser",
                "Per DAU",
                fmt_ratio,
                total=lambda rows, doc: _per_dau(rows, doc, play=False),
            ),
            KpiColumn(
                "playTimePerDauS",
                "Play/DAU",
                fmt_duration,
                total=lambda rows, doc: _per_dau(rows, doc, play=True),
            ),
            KpiColumn("medianSessionS", "Median", fmt_maybe_duration),
            _counter_column("orphanedSessions", "Ended idle"),
        ),
        activity=("sessions",),
    ),
    KpiSection(
        "economy",
        "Economy",
        (
            _day(),
            _counter_column("creditsEarned", "Credits in"),
            _counter_column("creditsSpent", "Credits out"),
            _counter_column("creditsNet", "Credits net"),
            _counter_column("gemsEarned", "Gems earned"),
            _counter_column("gemsPurchased", "Gems bought"),
            _counter_column("gemsSpent", "Gems spent"),
            _counter_column("gemsNet", "Gems net"),
        ),
        activity=("creditsEarned", "creditsSpent", "gemsEarned", "gemsPurchased", "gemsSpent"),
    ),
)


def collect_kpis(kpis: KPIs, start: date, end: date) -> KpiDoc:
    """Every KPI of [start, end] as plain JSON-ready dicts: the headline, each section's
    rows (oldest first) and totals, and the first day with data that the rolling windows
    of ``start`` can see. One read per KPI, shared by the text, JSON, CSV and HTML
    reports so they can never disagree. The ranges are read from the store once each
    (see :meth:`KPIs.sharing_reads`)."""
    kpis = kpis.sharing_reads()
    first = kpis.first_day_with_data(start - timedelta(days=MAU30_DAYS - 1), end)
    doc: KpiDoc = {
        "start": start.isoformat(),
        "end": end.isoformat(),
        "today": kpis.today().isoformat(),
        "firstDataDay": None if first is None else first.isoformat(),
        "headline": kpis.headline(start, end).to_dict(),
        "retention": [r.to_dict() for r in kpis.retention(start, end, RETENTION_DAYS)],
        "activeUsers": [r.to_dict() for r in kpis.active_users(start, end)],
        "revenue": [r.to_dict() for r in kpis.revenue(start, end)],
        "sessions": [r.to_dict() for r in kpis.sessions(start, end)],
        "economy": [r.to_dict() for r in kpis.economy(start, end)],
    }
    doc["totals"] = {
        section.key: {c.field: c.total(doc[section.key], doc) for c in section.columns[1:]}
        for section in KPI_SECTIONS
        if doc[section.key]
    }
    return doc


# -- newest first, quiet days collapsed -------------------------------------------------


@attrs.frozen
class QuietRun:
    """Consecutive days without activity, newest first: shown as one line."""

    rows: tuple[Row, ...]

    @property
    def label(self) -> str:
        return (
            f"{self.rows[-1]['day']} to {self.rows[0]['day']}: {len(self.rows)} days, no activity"
        )


def table_rows(section: KpiSection, rows: Sequence[Row]) -> list[Row | QuietRun]:
    """A section's rows as a table shows them: newest first, like the terminal report's
    days, with each run of two or more days without activity collapsed into one."""
    shown: list[Row | QuietRun] = []
    run: list[Row] = []

    def close_run() -> None:
        shown.extend(run if len(run) < 2 else [QuietRun(tuple(run))])
        run.clear()

    for row in reversed(rows):
        if section.activity and not any(row[field] for field in section.activity):
            run.append(row)
        else:
            close_run()
            shown.append(row)
    close_run()
    return shown


def _fitting(widths: Sequence[int], width: int) -> list[list[int]]:
    """Column indexes split into runs that fit ``width`` side by side, each run after
    the first (key) column, which every run repeats."""
    runs: list[list[int]] = []
    for index in range(1, len(widths)):
        if runs and _section_width([*runs[-1], index], widths) <= width:
            runs[-1].append(index)
        else:
            runs.append([0, index])
    return runs or [[0]]


def render_kpi_table(
    section: KpiSection, rows: Sequence[Row], totals: Row | None, width: int = WIDTH
) -> str:
    """One KPI section as an aligned table (newest first, quiet days collapsed, a totals
    row), or a line saying it is empty. A table wider than ``width`` is shown as several,
    each repeating the day (or cohort) column."""
    if not rows:
        return f"{section.title}\n  (none in this range)"
    items = table_rows(section, rows)
    lines_of = [
        [column.fmt(item[column.field]) for column in section.columns]
        for item in items
        if not isinstance(item, QuietRun)
    ]
    total_cells = [section.total_label] + [
        column.fmt(totals[column.field]) if totals and totals[column.field] is not None else "-"
        for column in section.columns[1:]
    ]
    labels = [c.label for c in section.columns]
    widths = [
        max(len(line[i]) for line in (labels, total_cells, *lines_of))
        for i in range(len(section.columns))
    ]
    tables = []
    for indexes in _fitting(widths, width):

        def aligned(cells: Sequence[str], indexes: list[int] = indexes) -> str:
            return GAP.join(
                _align(cells[i], widths[i], section.columns[i].left) for i in indexes
            ).rstrip()

        lines = [aligned(labels)]
        cells = iter(lines_of)
        for item in items:
            lines.append(
                f"  ({item.label})" if isinstance(item, QuietRun) else aligned(next(cells))
            )
        lines.append("-" * len(aligned(labels)))
        lines.append(aligned(total_cells))
        tables.append("\n".join(lines))
    return section.title + "\n" + "\n\n".join(tables)


# -- the headline -------------------------------------------------------------------------


@attrs.frozen
class HeadlineCard:
    """How a headline figure is shown: label, formatting, and whether it is a rate
    (its change is then in percentage points, not a percentage of a percentage)."""

    name: str
    label: str
    fmt: Callable[[Any], str]
    rate: bool = False


HEADLINE_CARDS: tuple[HeadlineCard, ...] = (
    HeadlineCard("dau", "DAU (last day)", fmt_maybe_int),
    HeadlineCard("mau30", "MAU30 (last day)", fmt_maybe_int),
    HeadlineCard("d1Rate", "D1 retention", fmt_rate, rate=True),
    HeadlineCard("d7Rate", "D7 retention", fmt_rate, rate=True),
    HeadlineCard("revenueCents", "Revenue", fmt_cents),
    HeadlineCard("payingUsers", "Paying players", fmt_maybe_int),
    HeadlineCard("arpdauCents", "ARPDAU", fmt_cents),
    HeadlineCard("avgSessionS", "Avg session", fmt_maybe_duration),
)


def headline_change(card: HeadlineCard, figure: Row) -> tuple[str, int]:
    """The change against the previous period, as words and a direction (-1, 0, 1)."""
    value, previous = figure["value"], figure["previous"]
    if value is None:
        return "not measurable yet", 0
    if previous is None or (previous == 0 and not card.rate):
        return "no earlier data", 0
    direction = (value > previous) - (value < previous)
    if card.rate:
        return f"{100 * (value - previous):+.1f} pt", direction
    return f"{100 * figure['change']:+.0f}%", direction


def headline_period(headline: Row) -> str:
    return f"{headline['start']} to {headline['end']}"


def render_headline(headline: Row) -> str:
    """The headline figures, two a line, each with its change."""
    cells = []
    for card in HEADLINE_CARDS:
        figure = headline["figures"][card.name]
        change, _ = headline_change(card, figure)
        cells.append(f"{card.label:<17}{card.fmt(figure['value']):>10}  {change:<18}")
    lines = [
        f"Headline {headline_period(headline)}"
        f" (change vs {headline['previousStart']} to {headline['previousEnd']})"
    ]
    lines += ["  " + "  ".join(cells[i : i + 2]).rstrip() for i in range(0, len(cells), 2)]
    return "\n".join(lines)


def render_kpis(doc: KpiDoc) -> str:
    """The KPI tables of :func:`collect_kpis`, headed by the range they cover."""
    head = f"KPIs {doc['start']} to {doc['end']} (today {doc['today']})"
    tables = [
        render_kpi_table(section, doc[section.key], doc["totals"].get(section.key))
        for section in KPI_SECTIONS
    ]
    return "\n\n".join([head, *tables]) + "\n"
