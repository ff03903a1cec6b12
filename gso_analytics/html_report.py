"""A self-contained HTML page of the KPIs: ``gso-analytics report --html out.html``.

Why this shape: the page is opened by people on laptops and phones, often offline or
behind a strict proxy, and mailed around as one file. So everything is inline (CSS and
SVG drawn here in a few lines of Python), there is no JavaScript and no URL at all, and
the standard library is enough to produce it. It reads top-down the way a producer
does: the headline figures first (as cards), then the trends (charts), then the detail
(tables, newest first, with totals, runs of days without activity folded away).

Each chart is drawn twice, for a wide and for a narrow screen, and CSS shows one: SVG
text scales with its picture, so one drawing cannot be readable both at 1,200 and at
390 pixels. Every number also sits, unformatted, in a ``data-value`` attribute (JSON):
headline cards under ``data-kpi`` (the figure's name), table cells keyed by the table's
``data-kpi``, the row's ``data-key`` (``data-total`` for the totals row) and the cell's
``data-field``; so the page can be checked against ``report --json`` exactly, from the
file or from what a real browser made of it (see the tests).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from datetime import date, timedelta
from html import escape
from html.parser import HTMLParser
from typing import Any

import attrs

from .report import (
    HEADLINE_CARDS,
    KPI_SECTIONS,
    RETENTION_DAYS,
    KpiDoc,
    KpiSection,
    QuietRun,
    Row,
    fmt_cents,
    headline_change,
    headline_period,
    table_rows,
)


@attrs.frozen
class Geometry:
    """A chart's drawing size and margins, in SVG user units (about CSS pixels at the
    width the page shows it)."""

    width: int
    height: int
    left: int = 52
    right: int = 12
    top: int = 12
    bottom: int = 28

    @property
    def plot_w(self) -> float:
        return self.width - self.left - self.right

    @property
    def plot_h(self) -> float:
        return self.height - self.top - self.bottom


#: The two drawings of every chart: ``wide`` for a column of a two-column grid on a
#: laptop (or the whole width of a tablet), ``narrow`` for a phone held upright.
GEOMETRIES = {"wide": Geometry(560, 230), "narrow": Geometry(340, 220, left=46)}

#: The least distance between the centres of two day labels ("Mar 12" at 11 px is about
#: 36 units wide): labels are spaced so that they never overlap.
LABEL_SPACING = 50

#: How many day points get a marker: beyond that, markers would crowd the line.
MARKERS_UP_TO = 45


@attrs.frozen
class LineStyle:
    """A series' colour, width and dash: distinct in shape as well as colour, so lines
    drawn on top of each other stay visible and tell apart in grey or colour-blind."""

    color: str
    width: float = 2.0
    dash: str = ""

    def svg(self) -> str:
        dash = f' stroke-dasharray="{self.dash}"' if self.dash else ""
        return f'stroke="{self.color}" stroke-width="{self.width}"{dash}'

    def legend(self) -> str:
        border = "dashed" if self.dash.startswith("7") else "dotted" if self.dash else "solid"
        thickness = max(2, round(self.width))
        return f"border-top:{thickness}px {border} {self.color}"


SOLID = LineStyle("#1f5fa8", 2.2)
DASHED = LineStyle("#e07b00", 2.4, "7 4")
BROAD = LineStyle("#8fb996", 5.0)
DOTTED = LineStyle("#7b3fa0", 2.4, "2 3")
BAR = "#1f5fa8"


@attrs.frozen
class Series:
    """One line (or the bars) of a chart: ``values`` per day, None where undefined
    (drawn as a gap, never as a zero)."""

    name: str
    values: Sequence[float | None]
    style: LineStyle = SOLID


def _num(value: float) -> str:
    """SVG coordinates: short, and never in exponent notation."""
    return f"{value:.1f}"


def axis_step(peak: float, ticks: int = 4) -> float:
    """The distance between grid lines: 1, 2, 2.5 or 5 times a power of ten, the least
    that covers ``peak`` in at most ``ticks`` steps (round labels: 0, 50, 100, ...)."""
    if peak / ticks <= 0:  # a subnormal peak divides to 0 too
        return 0.25
    power = 10.0 ** math.floor(math.log10(peak / ticks))
    for factor in (1, 2, 2.5, 5, 10):
        if power * factor * ticks >= peak:
            return power * factor
    return power * 10  # pragma: no cover - factor 10 always covers


def decimals(step: float) -> int:
    """How many decimals show every multiple of ``step`` exactly: 0 for 5, 1 for 2.5,
    2 for 0.25. Tick labels printed with fewer would repeat (``0, 0, 1, 1``)."""
    for places in range(12):
        if abs(round(step, places) - step) <= 1e-9 * max(1.0, abs(step)):
            return places
    return 12  # pragma: no cover - axis steps are round


def label_days(count: int, plot_w: float, spacing: float = LABEL_SPACING) -> list[int]:
    """The indexes of the days that get an axis label: the newest always, then every
    k-th one back, with k the least step that keeps labels ``spacing`` units apart."""
    if count <= 0:
        return []
    slot = plot_w / count
    step = max(1, math.ceil(spacing / slot - 1e-9))  # 1e-9: 9 steps of 50/9 are 50
    return sorted(range(count - 1, -1, -step))


def _short_day(day: str) -> str:
    """``2026-03-12`` → ``Mar 12``: short, and unambiguous across a month boundary."""
    parsed = date.fromisoformat(day)
    return f"{parsed:%b} {parsed.day}"


def _frame(geo: Geometry, days: Sequence[str], axis: Axis, scale: Scale) -> list[str]:
    """Grid lines with their value labels, and the day labels that fit."""
    parts = []
    for k, label in enumerate(axis.labels(scale)):
        y = _y(geo, axis.step * k, axis)
        parts.append(
            f'<line x1="{geo.left}" x2="{geo.width - geo.right}" y1="{_num(y)}" y2="{_num(y)}"'
            f' stroke="{"#999" if k == 0 else "#e8e8e8"}"/>'
        )
        parts.append(
            f'<text x="{geo.left - 6}" y="{_num(y + 4)}" text-anchor="end">{escape(label)}</text>'
        )
    for i in label_days(len(days), geo.plot_w):
        parts.append(
            f'<text x="{_num(_x(geo, i, len(days)))}" y="{geo.height - geo.bottom + 17}"'
            f' text-anchor="middle">{escape(_short_day(days[i]))}</text>'
        )
    return parts


@attrs.frozen
class Scale:
    """How a chart's values read. ``text`` is a value as a tooltip shows it; ``tick``
    an axis label, given the axis step (so it shows as many decimals as the step needs,
    and no two labels are alike); ``least_step`` the finest step that means anything
    (1 for counts: an axis of players never reads 0.25)."""

    text: Callable[[float], str]
    tick: Callable[[float, float], str]
    least_step: float | None = 1.0


def _plain_tick(value: float, step: float) -> str:
    return f"{value:,.{decimals(step)}f}"


def _trimmed(text: str) -> str:
    """``1.50`` → ``1.5``, ``2.0`` → ``2``: the digits that say something."""
    return text.rstrip("0").rstrip(".") if "." in text else text


def _compact(value: float, step: float | None = None) -> str:
    """Labels that fit a narrow margin: ``250k``, ``1.5M`` (as many decimals as the
    axis step needs, when given)."""
    for size, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            places = 1 if step is None else decimals(step / size)
            return _trimmed(f"{value / size:,.{places}f}") + suffix
    return _trimmed(f"{value:,.{0 if step is None else decimals(step)}f}")


def _percent(value: float) -> str:
    return f"{100 * value:.0f}%" if value >= 0.1 or value == 0 else f"{100 * value:.1f}%"


def _cents(cents: float) -> str:
    return fmt_cents(cents).removesuffix(".00")


COUNT = Scale(lambda v: f"{v:,.0f}", _plain_tick)
COMPACT = Scale(_compact, _compact)
PERCENT = Scale(_percent, lambda v, step: f"{100 * v:.{decimals(100 * step)}f}%", 0.001)
CENTS = Scale(_cents, lambda v, step: f"${v / 100:,.{decimals(step / 100)}f}")

#: Duration units, largest first: the axis reads in the largest that the peak fills
#: twice (``40 s`` rather than ``0.67 min``; ``25 min`` rather than ``1,500 s``).
DURATION_UNITS = (("h", 3600), ("min", 60), ("s", 1))


def duration_scale(peak_s: float) -> tuple[Scale, int]:
    """The scale of durations whose largest is ``peak_s`` seconds, and the seconds in its
    unit (the values to draw are seconds divided by it)."""
    name, size = next(((n, s) for n, s in DURATION_UNITS if peak_s >= 2 * s), ("s", 1))

    def text(value: float) -> str:
        return f"{_trimmed(f'{value:,.1f}')} {name}"

    def tick(value: float, step: float) -> str:
        return f"{value:,.{decimals(step)}f} {name}"

    return Scale(text, tick, 1.0 if size == 1 else None), size


@attrs.frozen
class Axis:
    """The value axis: grid lines every ``step`` from 0 up to ``steps * step``."""

    step: float
    steps: int

    @property
    def top(self) -> float:
        return self.step * self.steps

    @classmethod
    def over(cls, peak: float, cap: float | None = None, least_step: float | None = None) -> Axis:
        """Round steps up to at least ``peak``, or exactly up to ``cap`` (100%) when
        the peak comes near it; never finer than ``least_step``."""
        step = max(axis_step(min(peak, cap) if cap is not None else peak), least_step or 0.0)
        steps = max(1, math.ceil(peak / step - 1e-9)) if peak > 0 else 4
        if cap is not None and step * steps > cap:
            steps = max(1, math.floor(cap / step + 1e-9))
        return cls(step, steps)

    def labels(self, scale: Scale) -> list[str]:
        """The tick labels from 0 up, as ``scale`` writes them for this step."""
        return [scale.tick(self.step * k, self.step) for k in range(self.steps + 1)]


def _x(geo: Geometry, i: int, count: int) -> float:
    return geo.left + geo.plot_w * (i + 0.5) / count


def _y(geo: Geometry, value: float, axis: Axis) -> float:
    return geo.top + geo.plot_h - geo.plot_h * min(value, axis.top) / axis.top


def _segments(values: Sequence[float | None]) -> list[list[int]]:
    """Runs of consecutive defined values (their indexes): a gap splits the line."""
    runs: list[list[int]] = []
    for i, value in enumerate(values):
        if value is None:
            continue
        if runs and runs[-1][-1] == i - 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


def _line(
    geo: Geometry, days: Sequence[str], series: Series, axis: Axis, fmt: Callable[[float], str]
) -> list[str]:
    parts = []
    values = series.values
    for run in _segments(values):
        points = " ".join(
            f"{_num(_x(geo, i, len(days)))},{_num(_y(geo, values[i] or 0.0, axis))}" for i in run
        )
        parts.append(
            f'<polyline fill="none" {series.style.svg()} stroke-linejoin="round"'
            f' points="{points}"><title>{escape(series.name)}</title></polyline>'
        )
    if len(days) <= MARKERS_UP_TO:
        for i, value in enumerate(values):
            if value is not None:
                parts.append(
                    f'<circle cx="{_num(_x(geo, i, len(days)))}" cy="{_num(_y(geo, value, axis))}"'
                    f' r="2.6" fill="{series.style.color}"><title>{escape(series.name)}'
                    f" {escape(days[i])}: {escape(fmt(value))}</title></circle>"
                )
    return parts


def _bars(
    geo: Geometry, days: Sequence[str], series: Series, axis: Axis, fmt: Callable[[float], str]
) -> list[str]:
    slot = geo.plot_w / max(len(days), 1)
    parts = []
    for i, (day, value) in enumerate(zip(days, series.values, strict=True)):
        if value is None:
            continue
        h = geo.plot_h * min(value, axis.top) / axis.top
        parts.append(
            f'<rect x="{_num(geo.left + slot * i + slot * 0.15)}"'
            f' y="{_num(geo.top + geo.plot_h - h)}"'
            f' width="{_num(slot * 0.7)}" height="{_num(h)}" fill="{BAR}">'
            f"<title>{escape(day)}: {escape(fmt(value))}</title></rect>"
        )
    return parts


def chart(
    title: str,
    days: Sequence[str],
    series: Sequence[Series],
    scale: Scale = COUNT,
    *,
    bars: bool = False,
    cap: float | None = None,
    empty: str = "Nothing to draw in this range.",
) -> str:
    """A chart over days as a ``<figure>``: its title, a legend (one entry per series,
    with its line style) and the wide and narrow drawings. ``bars`` draws the single
    series as one bar per day; ``cap`` is the axis' greatest possible top (1.0 for a
    ratio). Series are drawn in order, the first underneath.

    A chart with no value above zero would be a frame around nothing, which reads as a
    broken page: it is the sentence ``empty`` instead, saying why there is nothing yet."""
    values = [v for s in series for v in s.values if v is not None]
    if not any(values):
        return (
            f'<figure class="chart empty"><figcaption>{escape(title)}</figcaption>'
            f'<p class="empty-note">{escape(empty)}</p></figure>'
        )
    axis = Axis.over(max(values), cap, scale.least_step)
    drawings = []
    for name, geo in GEOMETRIES.items():
        parts = _frame(geo, days, axis, scale)
        for one in series:
            parts += (_bars if bars else _line)(geo, days, one, axis, scale.text)
        drawings.append(
            f'<svg class="{name}" viewBox="0 0 {geo.width} {geo.height}" role="img"'
            f' aria-label="{escape(title)}"><title>{escape(title)}</title>{"".join(parts)}</svg>'
        )
    legend = (
        ""
        if bars
        else "".join(
            f'<span><i style="{s.style.legend()}"></i>{escape(s.name)}</span>' for s in series
        )
    )
    return (
        f'<figure class="chart"><figcaption>{escape(title)}</figcaption>'
        f'<div class="legend">{legend}</div>{"".join(drawings)}</figure>'
    )


# -- the charts of a report -----------------------------------------------------------------


def _column(rows: Sequence[Row], field: str) -> list[float | None]:
    return [row[field] for row in rows]


#: Stickiness is drawn from this day of data on (the first day with data is day 1).
STICKINESS_FROM_DAY = 7


def _stickiness_from(doc: KpiDoc) -> date | None:
    first = doc["firstDataDay"]
    return None if first is None else date.fromisoformat(first) + timedelta(STICKINESS_FROM_DAY - 1)


def _stickiness(doc: KpiDoc) -> list[float | None]:
    """DAU/MAU30 per day, None while the 30-day window holds under a week of data (from
    the first day with data): on launch day DAU = MAU30 and the ratio says 100%, which
    is arithmetic, not engagement."""
    defined_from = _stickiness_from(doc)
    return [
        row["stickiness"]
        if defined_from is not None and date.fromisoformat(row["day"]) >= defined_from
        else None
        for row in doc["activeUsers"]
    ]


def _stickiness_empty(doc: KpiDoc) -> str:
    """Why the stickiness chart has nothing to draw yet."""
    defined_from = _stickiness_from(doc)
    if defined_from is None:
        return "No players in this range yet."
    return (
        f"Drawn from the {STICKINESS_FROM_DAY}th day of data ({defined_from}) on: before"
        " that, MAU30 holds under a week of players and DAU / MAU30 is near 100% by"
        " arithmetic, not engagement. The table below has every day's ratio."
    )


def _minutes_or_seconds(rows: Sequence[Row], field: str) -> tuple[Scale, list[float | None]]:
    """A duration column in the unit its largest value reads best in."""
    seconds = [row[field] for row in rows]
    scale, size = duration_scale(max((s for s in seconds if s is not None), default=0))
    return scale, [None if s is None else s / size for s in seconds]


def charts(doc: KpiDoc) -> list[str]:
    """The report's charts: players, stickiness, revenue, sessions and the economy."""
    active, economy, sessions = doc["activeUsers"], doc["economy"], doc["sessions"]
    days = [row["day"] for row in active]
    play_scale, play_time = _minutes_or_seconds(sessions, "playTimePerDauS")
    return [
        chart(
            "Active players",
            days,
            [  # the widest underneath: early on WAU = MAU30, and both stay visible
                Series("MAU30 (30 days)", _column(active, "mau30"), BROAD),
                Series("WAU (7 days)", _column(active, "wau"), DASHED),
                Series("DAU", _column(active, "dau"), SOLID),
            ],
            empty="No players in this range.",
        ),
        chart(
            f"Stickiness (DAU / MAU30), from the {STICKINESS_FROM_DAY}th day of data",
            days,
            [Series("DAU / MAU30", _stickiness(doc), SOLID)],
            PERCENT,
            cap=1.0,
            empty=_stickiness_empty(doc),
        ),
        chart(
            "Revenue per day",
            [row["day"] for row in doc["revenue"]],
            [Series("Revenue", _column(doc["revenue"], "revenueCents"))],
            CENTS,
            bars=True,
            empty="No revenue in this range: no stripe.payment events.",
        ),
        chart(
            "Sessions per day",
            [row["day"] for row in sessions],
            [Series("Sessions", _column(sessions, "sessions"))],
            bars=True,
            empty="No sessions in this range.",
        ),
        chart(
            "Play time per DAU",
            [row["day"] for row in sessions],
            [Series("Play time per DAU", play_time, SOLID)],
            play_scale,
            empty="No play time in this range.",
        ),
        chart(
            "Credits: sources vs sinks",
            [row["day"] for row in economy],
            [
                Series("Earned", _column(economy, "creditsEarned"), SOLID),
                Series("Spent", _column(economy, "creditsSpent"), DASHED),
            ],
            COMPACT,
            empty="No credits earned or spent in this range.",
        ),
        chart(
            "Gems: sources vs sinks",
            [row["day"] for row in economy],
            [
                Series("Earned", _column(economy, "gemsEarned"), SOLID),
                Series("Bought", _column(economy, "gemsPurchased"), DOTTED),
                Series("Spent", _column(economy, "gemsSpent"), DASHED),
            ],
            COMPACT,
            empty="No gems earned, bought or spent in this range.",
        ),
    ]


# -- headline and tables ------------------------------------------------------------------


def headline_cards(headline: Row) -> str:
    """The headline figures as cards: label, value, change against the previous period."""
    cards = []
    for card in HEADLINE_CARDS:
        figure = headline["figures"][card.name]
        change, direction = headline_change(card, figure)
        trend = {1: "up", -1: "down", 0: "flat"}[direction]
        arrow = {1: "▲ ", -1: "▼ ", 0: ""}[direction]
        cards.append(
            f'<div class="card" data-kpi="{card.name}"'
            f' data-value="{escape(json.dumps(figure["value"]))}"'
            f' data-previous="{escape(json.dumps(figure["previous"]))}">'
            f'<div class="label">{escape(card.label)}</div>'
            f'<div class="value">{escape(card.fmt(figure["value"]))}</div>'
            f'<div class="change {trend}">{arrow}{escape(change)}</div></div>'
        )
    return (
        f'<div class="cards">{"".join(cards)}</div>'
        f'<p class="meta">{escape(headline_period(headline))}; changes against'
        f" {headline['previousStart']} to {headline['previousEnd']}."
        " DAU and MAU30 are the last day's; D1 (D7) retention is that of the players"
        " whose first day was 1 (7) days before a day of the period.</p>"
    )


def _heat(rate: float | None) -> str:
    """A retention cell's background: white at 0% to deep green at 100%."""
    if rate is None:
        return ""
    lightness = 97 - 55 * max(0.0, min(rate, 1.0))
    color = "#fff" if lightness < 60 else "#222"
    return f' style="background:hsl(140,55%,{lightness:.0f}%);color:{color}"'


def _cells(section: KpiSection, row: Row, key_text: str | None = None) -> str:
    cells = []
    for index, column in enumerate(section.columns):
        value = row.get(column.field)
        classes = ["key"] if column.left else []
        if value is None:
            classes.append("unknown")
        style = _heat(value) if column.field.endswith("Rate") else ""
        cls = f' class="{" ".join(classes)}"' if classes else ""
        if index == 0 and key_text is not None:
            cells.append(f'<th class="key">{escape(key_text)}</th>')
            continue
        text = "-" if value is None else column.fmt(value)
        cells.append(
            f'<td{cls}{style} data-field="{escape(column.field)}"'
            f' data-label="{escape(column.label)}"'
            f' data-value="{escape(json.dumps(value))}">{escape(text)}</td>'
        )
    return "".join(cells)


def kpi_table(section: KpiSection, rows: Sequence[Row], totals: Row | None) -> str:
    """A KPI section as an HTML table, newest first, with its totals row; each run of
    days without activity is one line that a click unfolds (a CSS checkbox, no script).
    Every cell carries its raw value (JSON)."""
    if not rows:
        return f'<p data-kpi="{section.key}" class="meta">None in this range.</p>'
    key_field = section.columns[0].field
    toggle = f"quiet-{section.key}"
    items = table_rows(section, rows)
    body = []
    for item in items:
        if isinstance(item, QuietRun):
            body.append(
                f'<tr class="fold"><td class="key" colspan="{len(section.columns)}">'
                f'<label for="{toggle}">{escape(item.label)} <u>show</u></label></td></tr>'
            )
            body += [
                f'<tr class="quiet" data-key="{escape(str(row[key_field]))}">'
                f"{_cells(section, row)}</tr>"
                for row in item.rows
            ]
        else:
            body.append(
                f'<tr data-key="{escape(str(item[key_field]))}">{_cells(section, item)}</tr>'
            )
    head = "".join(
        f'<th class="key">{escape(c.label)}</th>' if c.left else f"<th>{escape(c.label)}</th>"
        for c in section.columns
    )
    foot = (
        f'<tfoot><tr data-total="">{_cells(section, totals, section.total_label)}</tr></tfoot>'
        if totals is not None
        else ""
    )
    folds = any(isinstance(item, QuietRun) for item in items)
    checkbox = f'<input type="checkbox" id="{toggle}" class="unfold">' if folds else ""
    return (
        f'{checkbox}<div class="scroll"><table data-kpi="{section.key}"><thead><tr>{head}'
        f"</tr></thead><tbody>{''.join(body)}</tbody>{foot}</table></div>"
    )


CSS = """
* { box-sizing: border-box; }
body { font: 15px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 1240px;
       padding: 1em 1.25em 3em; color: #1d1d1f; background: #fafafa; }
h1 { font-size: 1.6em; margin: 0.3em 0 0; }
h2 { font-size: 1.2em; margin: 1.8em 0 0.5em; }
h3 { font-size: 1em; margin: 0.6em 0 0.3em; }
.meta { color: #666; margin: 0.2em 0 0.8em; font-size: 0.9em; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(240px, 1fr));
         gap: 10px; margin-top: 1em; }
.card { background: #fff; border: 1px solid #e3e3e3; border-radius: 8px; padding: 10px 14px; }
.card .label { color: #555; font-size: 0.85em; }
.card .value { font-size: 1.75em; font-weight: 600; font-variant-numeric: tabular-nums; }
.card .change { font-size: 0.85em; color: #777; }
.change.up { color: #1a7f37; } .change.down { color: #c62828; }
.charts { display: grid; gap: 12px;
          grid-template-columns: repeat(auto-fit, minmax(min(100%, 520px), 1fr)); }
.tables { display: flex; flex-wrap: wrap; column-gap: 24px; }
.tables section { flex: 1 1 auto; width: min-content; min-width: 0; max-width: 100%; }
figure.chart { margin: 0; background: #fff; border: 1px solid #e3e3e3; border-radius: 8px;
               padding: 8px 10px; min-width: 0; }
figcaption { font-weight: 600; }
.legend { font-size: 0.85em; color: #444; min-height: 1.3em; }
.legend span { display: inline-block; margin-right: 1.1em; white-space: nowrap; }
.legend i { display: inline-block; width: 22px; margin-right: 5px; vertical-align: middle; }
svg { width: 100%; height: auto; display: block; }
svg text { font: 11px system-ui, sans-serif; fill: #555; }
svg.narrow { display: none; }
@media (max-width: 600px) {
  body { padding: 0.5em 0.6em 2em; font-size: 14px; }
  .cards { grid-template-columns: 1fr 1fr; gap: 8px; }
  .card .value { font-size: 1.4em; }
  svg.wide { display: none; } svg.narrow { display: block; }
}
.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: 0.3em 0 0.6em; font-variant-numeric: tabular-nums;
        background: #fff; }
th, td { padding: 3px 7px; text-align: right; border-bottom: 1px solid #eee; white-space: nowrap; }
thead th { background: #f0f0f0; }
tfoot th, tfoot td { border-top: 2px solid #bbb; font-weight: 600; }
td.key, th.key { text-align: left; position: sticky; left: 0; background: #fff; }
thead th.key { background: #f0f0f0; }
td.unknown { color: #999; }
tr.fold td { color: #777; font-style: italic; }
tr.fold label { cursor: pointer; }
tr.quiet { display: none; }
.unfold { display: none; }
.unfold:checked + .scroll tr.quiet { display: table-row; }
.unfold:checked + .scroll tr.fold { display: none; }
thead th { white-space: normal; vertical-align: bottom; }
.empty-note { color: #666; margin: 1.2em 0.4em 1.6em; max-width: 34em; }
@media (max-width: 600px) {
  .tables section { width: 100%; }
  .scroll table, .scroll thead, .scroll tbody, .scroll tfoot, .scroll tr, .scroll th,
  .scroll td { display: block; }
  .scroll table { width: 100%; }
  .scroll thead { display: none; }
  .scroll tr { display: grid; grid-template-columns: repeat(2, minmax(0, 1fr)); column-gap: 1em;
               padding: 4px 0 6px; border-bottom: 1px solid #ddd; }
  .scroll tr.quiet { display: none; }
  .unfold:checked + .scroll tr.quiet { display: grid; }
  .scroll tr.fold { display: block; }
  .scroll td, .scroll th { display: flex; flex-wrap: wrap; justify-content: space-between;
                           column-gap: 0.6em; min-width: 0;
                           border: 0; padding: 1px 4px; white-space: normal; }
  .scroll td::before { content: attr(data-label); color: #666; text-align: left; }
  .scroll .key { grid-column: 1 / -1; position: static; font-weight: 600; background: none; }
  .scroll td.key::before, .scroll tr.fold td::before { content: none; }
  tfoot tr { border-top: 2px solid #bbb; }
  tfoot th, tfoot td { border-top: 0; }
}
""".strip()


def render_html(doc: KpiDoc, title: str = "Game KPIs") -> str:
    """The whole page for a KPI document from :func:`~gso_analytics.report.collect_kpis`."""
    notes = {
        "retention": "Classic day-N retention: users of the cohort active exactly N days"
        f" after their first active day (D{', D'.join(map(str, RETENTION_DAYS))}); a dash is a"
        " day not over yet.",
        "revenue": "Totals row: DAU is the average day's; payers are distinct players.",
        "activeUsers": "Last row: the average day.",
    }
    tables = []
    for section in KPI_SECTIONS:
        tables.append(f'<section id="{section.key}"><h3>{escape(section.title)}</h3>')
        if section.key in notes:
            tables.append(f'<p class="meta">{escape(notes[section.key])}</p>')
        tables.append(kpi_table(section, doc[section.key], doc["totals"].get(section.key)))
        tables.append("</section>")
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)} {doc['start']} to {doc['end']}</title>"
        f"<style>{CSS}</style></head><body>"
        f"<h1>{escape(title)}</h1>"
        f'<p class="meta" data-start="{doc["start"]}" data-end="{doc["end"]}"'
        f' data-today="{doc["today"]}">{doc["start"]} to {doc["end"]}, as of {doc["today"]};'
        " days in the store's timezone. Generated by gso-analytics report.</p>"
        + headline_cards(doc["headline"])
        + '<h2>Trends</h2><div class="charts">'
        + "".join(charts(doc))
        + '</div><h2>Details</h2><div class="tables">'
        + "".join(tables)
        + "</div></body></html>\n"
    )


class _NumberParser(HTMLParser):
    """Collects the ``data-*`` numbers: table rows, totals rows and headline cards."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, dict[str, dict[str, Any]]] = {}
        self.totals: dict[str, dict[str, Any]] = {}
        self.headline: dict[str, dict[str, Any]] = {}
        self._kpi: str | None = None
        self._row: dict[str, Any] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        kpi = found.get("data-kpi")
        if tag == "table" and kpi:
            self._kpi = kpi
            self.tables.setdefault(kpi, {})
        elif kpi and "data-value" in found:
            self.headline[kpi] = {
                "value": json.loads(found["data-value"] or "null"),
                "previous": json.loads(found.get("data-previous") or "null"),
            }
        elif tag == "tr" and self._kpi is not None and "data-total" in found:
            self._row = self.totals.setdefault(self._kpi, {})
        elif tag == "tr" and self._kpi is not None and found.get("data-key") is not None:
            self._row = self.tables[self._kpi].setdefault(found["data-key"] or "", {})
        elif tag == "td" and self._row is not None and found.get("data-field"):
            self._row[found["data-field"] or ""] = json.loads(found.get("data-value") or "null")

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._kpi = None
        elif tag == "tr":
            self._row = None


def read_html_numbers(page: str) -> dict[str, Any]:
    """The numbers embedded in a page (or a browser's DOM dump of it), in the shape of
    the JSON report: each KPI section's rows (oldest first, as in ``kpis``), the
    sections' ``totals``, and the ``headline`` figures' value and previous value."""
    parser = _NumberParser()
    parser.feed(page)
    parser.close()
    numbers: dict[str, Any] = {
        kpi: [rows[key] for key in sorted(rows)] for kpi, rows in parser.tables.items()
    }
    numbers["totals"] = parser.totals
    numbers["headline"] = parser.headline
    return numbers
