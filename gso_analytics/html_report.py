"""A self-contained HTML page of the KPIs: ``gso-analytics report --html out.html``.

Why this shape: the page is opened by people on laptops, often offline or behind a
strict proxy, and mailed around as one file. So everything is inline (CSS and SVG
drawn here in a few lines of Python), there is no JavaScript and no URL at all, and
the standard library is enough to produce it.

Every number in a table cell also sits, unformatted, in the cell's ``data-value``
attribute (JSON), keyed by the table's ``data-kpi``, the row's ``data-key`` and the
cell's ``data-field``: the page can be checked against ``report --json`` exactly,
from the file or from what a real browser made of it (see the tests).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from html import escape
from html.parser import HTMLParser
from typing import Any

from .report import KPI_SECTIONS, RETENTION_DAYS, KpiDoc, KpiSection, fmt_cents

# Chart geometry, in SVG user units (the SVG scales to the page width).
WIDTH, HEIGHT = 720, 240
LEFT, RIGHT, TOP, BOTTOM = 56, 16, 16, 40

#: Line colours: distinguishable, and readable for the common colour blindnesses.
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd")

CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em auto; max-width: 1100px;
       padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; }
h2 { font-size: 1.15em; margin-top: 2em; border-bottom: 1px solid #ddd; }
.meta { color: #666; }
table { border-collapse: collapse; margin: 0.5em 0; font-variant-numeric: tabular-nums; }
th, td { padding: 2px 8px; text-align: right; border-bottom: 1px solid #eee; }
th { background: #f5f5f5; }
td.key, th.key { text-align: left; }
td.unknown { color: #999; }
svg { width: 100%; max-width: 720px; height: auto; display: block; }
svg text { font: 11px system-ui, sans-serif; fill: #444; }
.legend span { display: inline-block; margin-right: 1.2em; }
.legend i { display: inline-block; width: 12px; height: 3px; margin-right: 4px;
            vertical-align: middle; }
""".strip()


def _num(value: float) -> str:
    """SVG coordinates: short, and never in exponent notation."""
    return f"{value:.1f}"


def _nice_max(value: float) -> float:
    """The top of an axis: 1, 2 or 5 times a power of ten at or above ``value``."""
    if value <= 0:
        return 1.0
    step = 1.0
    while step * 10 <= value:
        step *= 10
    while step > value:
        step /= 10
    for factor in (1, 2, 5, 10):
        if step * factor >= value:
            return step * factor
    return step * 10  # pragma: no cover - the loop always returns


def _frame(days: Sequence[str], top: float, label: Any) -> tuple[list[str], float, float]:
    """Axes, grid lines and day labels; returns them with the plot's width and height."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    parts = []
    for k in range(5):
        value = top * k / 4
        y = TOP + plot_h - plot_h * k / 4
        parts.append(
            f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{_num(y)}" y2="{_num(y)}"'
            f' stroke="{"#999" if k == 0 else "#e5e5e5"}"/>'
        )
        parts.append(
            f'<text x="{LEFT - 6}" y="{_num(y + 4)}" text-anchor="end">'
            f"{escape(label(value))}</text>"
        )
    every = max(1, len(days) // 8)
    for i, day in enumerate(days):
        if i % every == 0 or i == len(days) - 1:
            x = LEFT + plot_w * (i + 0.5) / len(days)
            parts.append(
                f'<text x="{_num(x)}" y="{HEIGHT - BOTTOM + 16}" text-anchor="middle">'
                f"{escape(day[5:])}</text>"
            )
    return parts, plot_w, plot_h


def _svg(title: str, parts: list[str]) -> str:
    """An inline SVG; HTML5 needs no ``xmlns`` for it, so the page holds no URL at all."""
    return (
        f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}">'
        f"<title>{escape(title)}</title>{''.join(parts)}</svg>"
    )


def line_chart(
    title: str,
    days: Sequence[str],
    series: Sequence[tuple[str, Sequence[float]]],
    label: Any = lambda v: f"{v:,.0f}",
    top: float | None = None,
) -> str:
    """Lines over days, one per ``(name, values)`` series, with a legend."""
    peak = max((v for _, values in series for v in values), default=0.0)
    top = top if top is not None else _nice_max(peak)
    parts, plot_w, plot_h = _frame(days, top, label)
    legend = []
    for (name, values), color in zip(series, COLORS, strict=False):
        points = " ".join(
            f"{_num(LEFT + plot_w * (i + 0.5) / len(days))},"
            f"{_num(TOP + plot_h - plot_h * min(v, top) / top)}"
            for i, v in enumerate(values)
        )
        parts.append(
            f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{points}">'
            f"<title>{escape(name)}</title></polyline>"
        )
        legend.append(f'<span><i style="background:{color}"></i>{escape(name)}</span>')
    return f'<div class="legend">{"".join(legend)}</div>' + _svg(title, parts)


def bar_chart(
    title: str, days: Sequence[str], values: Sequence[float], label: Any = fmt_cents
) -> str:
    """One bar per day; each bar's tooltip gives the day and its value."""
    top = _nice_max(max(values, default=0.0))
    parts, plot_w, plot_h = _frame(days, top, label)
    slot = plot_w / max(len(days), 1)
    for i, (day, value) in enumerate(zip(days, values, strict=True)):
        h = plot_h * value / top
        parts.append(
            f'<rect x="{_num(LEFT + slot * i + slot * 0.15)}" y="{_num(TOP + plot_h - h)}"'
            f' width="{_num(slot * 0.7)}" height="{_num(h)}" fill="{COLORS[0]}">'
            f"<title>{escape(day)}: {escape(label(value))}</title></rect>"
        )
    return _svg(title, parts)


def _heat(rate: float | None) -> str:
    """A retention cell's background: white at 0% to deep green at 100%."""
    if rate is None:
        return ""
    lightness = 97 - 55 * max(0.0, min(rate, 1.0))
    color = "#fff" if lightness < 60 else "#222"
    return f' style="background:hsl(140,55%,{lightness:.0f}%);color:{color}"'


def kpi_table(section: KpiSection, rows: Sequence[dict[str, Any]]) -> str:
    """A KPI section as an HTML table; every cell carries its raw value (JSON)."""
    if not rows:
        return f'<p data-kpi="{section.key}" class="meta">None in this range.</p>'
    head = "".join(
        f'<th class="key">{escape(c.label)}</th>' if c.left else f"<th>{escape(c.label)}</th>"
        for c in section.columns
    )
    key_field = section.columns[0].field
    body = []
    for row in rows:
        cells = []
        for column in section.columns:
            value = row[column.field]
            classes = ["key"] if column.left else []
            if value is None:
                classes.append("unknown")
            style = _heat(value) if column.field.endswith("Rate") else ""
            cls = f' class="{" ".join(classes)}"' if classes else ""
            cells.append(
                f'<td{cls}{style} data-field="{escape(column.field)}"'
                f' data-value="{escape(json.dumps(value))}">{escape(column.fmt(value))}</td>'
            )
        body.append(f'<tr data-key="{escape(str(row[key_field]))}">{"".join(cells)}</tr>')
    return (
        f'<table data-kpi="{section.key}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def render_html(doc: KpiDoc, title: str = "Game KPIs") -> str:
    """The whole page for a KPI document from :func:`~gso_analytics.report.collect_kpis`."""
    active = doc["activeUsers"]
    days = [row["day"] for row in active]
    sections = {section.key: section for section in KPI_SECTIONS}
    charts = {
        "activeUsers": line_chart(
            "Daily, weekly and 30-day active users",
            days,
            [(name, [row[key] for row in active]) for key, name in _ACTIVE_SERIES],
        )
        + line_chart(
            "Stickiness (DAU / MAU30)",
            days,
            [("stickiness", [row["stickiness"] for row in active])],
            label=lambda v: f"{100 * v:.0f}%",
            top=_nice_max(max((row["stickiness"] for row in active), default=0.0)),
        ),
        "revenue": bar_chart(
            "Revenue per day",
            [row["day"] for row in doc["revenue"]],
            [row["revenueCents"] for row in doc["revenue"]],
        ),
    }
    notes = {
        "retention": f"Classic day-N retention: users of the cohort active exactly N days"
        f" after their first login (D{', D'.join(map(str, RETENTION_DAYS))}); a dash is a"
        " day still in the future.",
    }
    blocks = []
    for key, section in sections.items():
        blocks.append(f'<section id="{key}"><h2>{escape(section.title)}</h2>')
        if key in notes:
            blocks.append(f'<p class="meta">{escape(notes[key])}</p>')
        blocks.append(charts.get(key, ""))
        blocks.append(kpi_table(section, doc[key]))
        blocks.append("</section>")
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
        + "".join(blocks)
        + "</body></html>\n"
    )


_ACTIVE_SERIES = (("dau", "DAU"), ("wau", "WAU"), ("mau30", "MAU30"))


class _CellParser(HTMLParser):
    """Collects ``{kpi: {row key: {field: value}}}`` from the ``data-*`` attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, dict[str, dict[str, Any]]] = {}
        self._kpi: str | None = None
        self._row: dict[str, Any] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "table" and found.get("data-kpi"):
            self._kpi = found["data-kpi"]
            self.tables.setdefault(self._kpi or "", {})
        elif tag == "tr" and self._kpi is not None and found.get("data-key") is not None:
            self._row = self.tables[self._kpi].setdefault(found["data-key"] or "", {})
        elif tag == "td" and self._row is not None and found.get("data-field"):
            self._row[found["data-field"] or ""] = json.loads(found.get("data-value") or "null")

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._kpi = None
        elif tag == "tr":
            self._row = None


def read_html_numbers(page: str) -> dict[str, list[dict[str, Any]]]:
    """The KPI rows embedded in a page (or a browser's DOM dump of it), in the shape of
    the JSON report's ``kpis`` sections: what a check of the page compares with."""
    parser = _CellParser()
    parser.feed(page)
    parser.close()
    return {kpi: list(rows.values()) for kpi, rows in parser.tables.items()}
