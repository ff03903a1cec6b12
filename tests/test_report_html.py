"""``gso-analytics report`` with KPIs: the date range, the headline, the text tables,
``--json``'s ``headline`` and ``kpis``, ``--csv`` and the self-contained ``--html`` page.

The page is checked three ways: it parses as well-formed HTML, it names no URL and
loads nothing, and the numbers it embeds (each card's and cell's ``data-value``) equal
the JSON report of the same store and range. The last check is repeated on the DOM a
real headless Chromium builds from the file, which also takes the screenshots at a
laptop's width (1,200 px) and a phone's (390 px).
"""

from __future__ import annotations

import contextlib
import csv
import io
import itertools
import json
import math
import re
from datetime import UTC, date, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from browser import png_size
from hypothesis import given
from hypothesis import strategies as st

from gso_analytics import Analytics, open_store
from gso_analytics.cli import kpi_range, main
from gso_analytics.html_report import (
    CENTS,
    COMPACT,
    COUNT,
    LABEL_SPACING,
    PERCENT,
    Axis,
    Series,
    _stickiness,
    chart,
    duration_scale,
    label_days,
    read_html_numbers,
    render_html,
)
from gso_analytics.report import (
    HEADLINE_CARDS,
    KPI_SECTIONS,
    KpiSection,
    QuietRun,
    collect_kpis,
    render_kpi_table,
    table_rows,
)

if TYPE_CHECKING:
    from browser import Chromium

TODAY = "2026-03-12"
FIRST_DAY = "2026-03-03"  # the demo's first day (10 days ending TODAY)
END_OF_TODAY = datetime(2026, 3, 12, 23, 0, tzinfo=UTC)
SECTIONS = [section.key for section in KPI_SECTIONS]
EXPLICIT = ("--start", "2026-02-11")  # 30 days, 20 of them before the first player


def run_cli(*argv: str) -> tuple[int, str, str]:
    """``main(argv)`` in-process, with its stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def store_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 10-day demo (first day 2026-03-03), shared by the module: it only reads it."""
    url = f"sqlite:///{tmp_path_factory.mktemp('report') / 'demo.db'}"
    code, _, err = run_cli(
        "demo", "--players", "80", "--days", "10", "--today", TODAY, "--store", url
    )
    assert code == 0, err
    return url


def _report(store_url: str, directory: Path, *options: str) -> dict[str, Any]:
    page, tables = directory / "report.html", directory / "csv"
    code, out, err = run_cli(
        "report", "--json", "--store", store_url, "--today", TODAY,
        "--html", str(page), "--csv", str(tables), *options,
    )  # fmt: skip
    assert code == 0, err
    return {
        "json": json.loads(out),
        "path": page,
        "html": page.read_text(encoding="utf-8"),
        "csv": tables,
    }


@pytest.fixture(scope="module")
def report(store_url: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One ``report --json --html --csv`` run with the default range: its JSON, page, CSV."""
    return _report(store_url, tmp_path_factory.mktemp("default"))


@pytest.fixture(scope="module")
def explicit(store_url: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The same with ``--start 2026-02-11``: 20 days without a player, then the demo."""
    return _report(store_url, tmp_path_factory.mktemp("explicit"), *EXPLICIT)


def expected_numbers(doc: dict[str, Any]) -> dict[str, Any]:
    """What a page must embed, from ``report --json``: every section's rows, the totals
    rows, and each headline figure's value and previous value."""
    kpis = doc["kpis"]
    numbers: dict[str, Any] = {key: kpis[key] for key in SECTIONS if kpis[key]}
    numbers["totals"] = kpis["totals"]
    numbers["headline"] = {
        name: {"value": figure["value"], "previous": figure["previous"]}
        for name, figure in doc["headline"]["figures"].items()
    }
    return numbers


# -- the range and the JSON ----------------------------------------------------------------


def test_kpi_range_starts_at_the_first_day_with_data() -> None:
    today = date(2026, 3, 12)
    asked: list[tuple[date, date]] = []

    def first_data(lo: date, hi: date) -> date | None:
        asked.append((lo, hi))
        return date(2026, 3, 6) if lo <= date(2026, 3, 6) <= hi else None

    assert kpi_range(None, None, today, first_data) == (date(2026, 3, 6), today)
    assert asked == [(date(2026, 2, 11), today)]  # never before the 30 days ending today
    assert kpi_range(None, date(2026, 3, 8), today, first_data) == (
        date(2026, 3, 6),
        date(2026, 3, 8),
    )
    # No data in the window: the range is the last day alone, not 30 days of zeros.
    assert kpi_range(None, date(2026, 3, 5), today, first_data) == (date(2026, 3, 5),) * 2
    assert kpi_range(None, None, today) == (today, today)
    # An explicit --start is honoured as given, before the data or not.
    asked.clear()
    assert kpi_range(date(2026, 3, 1), None, today, first_data) == (date(2026, 3, 1), today)
    assert kpi_range(date(2026, 1, 1), None, today, first_data) == (
        date(2026, 1, 1),
        date(2026, 1, 30),
    )
    assert kpi_range(date(2026, 4, 1), None, today, first_data) == (date(2026, 4, 1),) * 2
    assert kpi_range(date(2026, 3, 5), date(2026, 3, 5), today, first_data) == (
        date(2026, 3, 5),
        date(2026, 3, 5),
    )
    assert asked == []


def test_json_equals_the_api(report: dict[str, Any], store_url: str) -> None:
    doc = report["json"]
    kpis = doc["kpis"]
    assert (kpis["start"], kpis["end"], kpis["today"]) == (FIRST_DAY, TODAY, TODAY)
    with open_store(store_url) as store:
        analytics = Analytics(store, clock=lambda: END_OF_TODAY)
        expected = collect_kpis(analytics.kpis, date(2026, 3, 3), date(2026, 3, 12))
        headline = analytics.kpis.headline(FIRST_DAY, TODAY).to_dict()
        analytics.stop()
    assert doc["headline"] == expected.pop("headline") == headline
    assert kpis == expected
    assert kpis["activeUsers"][0]["day"] == FIRST_DAY
    assert len(kpis["activeUsers"]) == len(kpis["economy"]) == 10
    assert kpis["firstDataDay"] == FIRST_DAY
    assert kpis["retention"][0]["cohort"] == FIRST_DAY
    assert sum(row["users"] for row in kpis["retention"]) == 80
    assert kpis["retention"][-1]["d1"] is None  # today's cohort: day 1 is tomorrow
    assert list(doc["headline"]["figures"]) == [card.name for card in HEADLINE_CARDS]
    assert (doc["headline"]["previousStart"], doc["headline"]["previousEnd"]) == (
        "2026-02-21",
        "2026-03-02",
    )


def test_explicit_range_is_honoured(explicit: dict[str, Any]) -> None:
    kpis = explicit["json"]["kpis"]
    assert (kpis["start"], kpis["end"]) == ("2026-02-11", TODAY)
    assert len(kpis["activeUsers"]) == 30
    assert kpis["firstDataDay"] == FIRST_DAY


def test_totals_sum_up_the_rows(report: dict[str, Any]) -> None:
    """Each totals row from the rows themselves (and distinct payers from the store)."""
    kpis = report["json"]["kpis"]
    totals = kpis["totals"]
    for field in ("creditsEarned", "creditsSpent", "gemsNet"):
        assert totals["economy"][field] == sum(row[field] for row in kpis["economy"])
    assert totals["sessions"]["sessions"] == sum(row["sessions"] for row in kpis["sessions"])
    user_days = sum(row["dau"] for row in kpis["activeUsers"])
    assert totals["sessions"]["sessionsPerUser"] == pytest.approx(
        totals["sessions"]["sessions"] / user_days
    )
    assert totals["activeUsers"]["dau"] == pytest.approx(user_days / len(kpis["activeUsers"]))
    revenue = sum(row["revenueCents"] for row in kpis["revenue"])
    payers = report["json"]["headline"]["figures"]["payingUsers"]["value"]
    assert totals["revenue"]["revenueCents"] == revenue
    assert totals["revenue"]["payingUsers"] == payers
    assert 0 < payers <= sum(row["payingUsers"] for row in kpis["revenue"])  # distinct
    assert totals["revenue"]["arpdauCents"] == pytest.approx(revenue / user_days)
    known = [row for row in kpis["retention"] if row["d1"] is not None]
    assert totals["retention"]["d1Rate"] == pytest.approx(
        sum(row["d1"] for row in known) / sum(row["users"] for row in known)
    )
    assert totals["retention"]["d30"] is None and totals["retention"]["d30Rate"] is None


def test_start_and_end_choose_the_range(store_url: str) -> None:
    code, out, err = run_cli(
        "report", "--json", "--store", store_url, "--today", TODAY,
        "--start", "2026-03-05", "--end", "2026-03-07",
    )  # fmt: skip
    assert code == 0, err
    doc = json.loads(out)
    kpis = doc["kpis"]
    assert [row["day"] for row in kpis["revenue"]] == ["2026-03-05", "2026-03-06", "2026-03-07"]
    assert [row["cohort"] for row in kpis["retention"]] == [
        "2026-03-05",
        "2026-03-06",
        "2026-03-07",
    ]
    assert (doc["headline"]["start"], doc["headline"]["previousEnd"]) == (
        "2026-03-05",
        "2026-03-04",
    )


def test_start_after_end_is_exit_2(store_url: str) -> None:
    code, _, err = run_cli(
        "report", "--store", store_url, "--start", "2026-03-07", "--end", "2026-03-05"
    )
    assert code == 2
    assert "--start 2026-03-07 is after --end 2026-03-05" in err


@pytest.mark.parametrize("option", ["--html", "--csv"])
def test_unwritable_output_is_exit_2(store_url: str, tmp_path: Path, option: str) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    code, _, err = run_cli(
        "report", "--store", store_url, "--today", TODAY, option, str(blocker / "out")
    )
    assert code == 2
    assert err.startswith("gso-analytics: error: cannot write") and "Traceback" not in err


# -- CSV -------------------------------------------------------------------------------------


def _csv_cell(value: Any) -> str:
    """How a JSON value reads back from a CSV cell: empty for unknown, else its text."""
    return "" if value is None else str(value)


@pytest.mark.parametrize("which", ["report", "explicit"])
def test_csv_files_hold_the_json_numbers(which: str, request: pytest.FixtureRequest) -> None:
    report = request.getfixturevalue(which)
    doc, directory = report["json"], report["csv"]
    names = sorted(path.name for path in directory.iterdir())
    assert names == sorted(["headline.csv", *(f"{key}.csv" for key in SECTIONS)])
    for section in KPI_SECTIONS:
        with (directory / f"{section.key}.csv").open(encoding="utf-8", newline="") as file:
            header, *rows = list(csv.reader(file))
        assert header == [column.field for column in section.columns]
        # Every day, oldest first, nothing folded and no totals: the JSON rows exactly.
        assert rows == [[_csv_cell(row[f]) for f in header] for row in doc["kpis"][section.key]]
    with (directory / "headline.csv").open(encoding="utf-8", newline="") as file:
        read = list(csv.DictReader(file))
    figures = doc["headline"]["figures"]
    assert [line["figure"] for line in read] == list(figures)
    for line in read:
        figure = figures[line["figure"]]
        assert [line[k] for k in ("value", "previous", "change")] == [
            _csv_cell(figure[k]) for k in ("value", "previous", "change")
        ]
        assert (line["start"], line["end"]) == (doc["headline"]["start"], doc["headline"]["end"])


# -- the text report -----------------------------------------------------------------------


def test_text_report_opens_with_the_headline(store_url: str, report: dict[str, Any]) -> None:
    code, out, _ = run_cli("report", "--store", store_url, "--today", TODAY)
    assert code == 0
    headline = out.split("\n\n", 1)[0].splitlines()
    assert headline[0] == (f"Headline {FIRST_DAY} to {TODAY} (change vs 2026-02-21 to 2026-03-02)")
    figures = report["json"]["headline"]["figures"]
    body = "\n".join(headline[1:])
    for card in HEADLINE_CARDS:
        shown = card.fmt(figures[card.name]["value"])
        assert re.search(rf"{re.escape(card.label)}\s+{re.escape(shown)}\s", body + " "), card


def test_text_report_prints_the_kpi_tables_after_the_metrics(store_url: str) -> None:
    code, out, _ = run_cli("report", "--store", store_url, "--today", TODAY)
    assert code == 0
    metrics, kpis = out.split(f"\nKPIs {FIRST_DAY} to 2026-03-12 (today 2026-03-12)\n", 1)
    assert "\nToday 2026-03-12" in metrics and "Last 10 days" in metrics
    for section in KPI_SECTIONS:
        assert f"\n{section.title}\n" in f"\n{kpis}"
    assert re.search(r"Cohort\s+Users\s+D1\s+D1 %\s+D7\s+D7 %\s+D30\s+D30 %", kpis)
    assert re.search(r"Day\s+DAU\s+WAU\s+MAU30\s+DAU/MAU30", kpis)
    assert re.search(r"Day\s+Revenue\s+Payers\s+New payers\s+DAU\s+ARPDAU\s+ARPPU", kpis)
    # A cohort row: its users, then D1 count and rate; D30 unknown ("-"), never 0.
    row = re.search(r"^2026-03-03\s+(\d+)\s+(\d+)\s+([\d.]+)%.*\s-\s+-$", kpis, re.MULTILINE)
    assert row is not None, kpis
    assert float(row[3]) == pytest.approx(100 * int(row[2]) / int(row[1]), abs=0.05)
    # Newest first, like the days above, and a totals row at the bottom.
    table = kpis.split("\nActive users")[1].split("\n\n")[0]
    days = re.findall(r"^(2026-03-\d\d)  ", table, re.MULTILINE)
    assert days == sorted(days, reverse=True) and days[0] == TODAY
    assert re.search(r"^All cohorts\s+80\s", kpis, re.MULTILINE)
    assert max(len(line) for line in out.splitlines()) <= 100


@pytest.mark.parametrize("section", KPI_SECTIONS, ids=SECTIONS)
def test_a_wide_kpi_table_wraps_into_tables_of_100_columns(
    section: KpiSection, explicit: dict[str, Any]
) -> None:
    """With a big game's numbers (100,000 times the demo's) a table is split into
    several, each repeating the day column, every column in exactly one of them."""
    doc = inflated(explicit["json"]["kpis"])
    text = render_kpi_table(section, doc[section.key], doc["totals"].get(section.key))
    assert max(len(line) for line in text.splitlines()) <= 100
    tables = text.split("\n", 1)[1].split("\n\n")
    labels = [re.split(r"\s{2,}", table.splitlines()[0].strip()) for table in tables]
    first = section.columns[0].label
    assert all(shown[0] == first for shown in labels)
    assert [x for shown in labels for x in shown[1:]] == [c.label for c in section.columns[1:]]


def test_text_report_folds_days_without_activity(store_url: str) -> None:
    code, out, _ = run_cli("report", "--store", store_url, "--today", TODAY, *EXPLICIT)
    assert code == 0
    kpis = out.split("\nKPIs ", 1)[1]
    # Every day table but retention (cohorts have players by definition) folds them.
    assert kpis.count("(2026-02-11 to 2026-03-02: 20 days, no activity)") == 4
    assert "\n2026-02-20  " not in kpis


def test_text_report_of_an_empty_store_says_so() -> None:
    code, out, _ = run_cli("report", "--store", "memory://", "--today", TODAY)
    assert code == 0
    assert "Retention by cohort (first active day)\n  (none in this range)" in out
    assert re.search(r"D7 retention\s+-  not measurable yet", out)


# -- newest first, quiet days folded ---------------------------------------------------------

ACTIVITY = next(section for section in KPI_SECTIONS if section.key == "sessions")


@given(st.lists(st.booleans(), max_size=40))
def test_table_rows_fold_every_quiet_run_and_keep_every_row(active: list[bool]) -> None:
    rows = [{"day": f"d{i:02d}", "sessions": int(on)} for i, on in enumerate(active)]
    shown = table_rows(ACTIVITY, rows)
    flat = [r for item in shown for r in (item.rows if isinstance(item, QuietRun) else [item])]
    assert flat == rows[::-1]  # all of them, newest first
    for item in shown:
        if isinstance(item, QuietRun):
            assert len(item.rows) >= 2 and not any(r["sessions"] for r in item.rows)
    for before, after in itertools.pairwise(shown):
        quiet = [not isinstance(x, QuietRun) and not x["sessions"] for x in (before, after)]
        assert not all(quiet)  # two quiet days side by side are always folded
        assert not (isinstance(before, QuietRun) and isinstance(after, QuietRun))


# -- charts ------------------------------------------------------------------------------------


@given(st.integers(1, 400), st.floats(80, 1000))
def test_day_labels_never_overlap_and_the_newest_is_labelled(count: int, width: float) -> None:
    chosen = label_days(count, width)
    slot = width / count
    assert chosen[-1] == count - 1
    assert all((b - a) * slot >= LABEL_SPACING - 1e-9 for a, b in itertools.pairwise(chosen))
    # Not sparser than needed: one step less would bring two labels too close.
    if len(chosen) > 1:
        assert (chosen[1] - chosen[0] - 1) * slot < LABEL_SPACING - 1e-9


@given(
    st.one_of(st.just(0.0), st.floats(1e-6, 1e9)),
    st.one_of(st.none(), st.just(1.0)),
)
def test_axis_covers_the_peak_with_round_steps(peak: float, cap: float | None) -> None:
    axis = Axis.over(peak, cap)
    assert 1 <= axis.steps <= 5
    mantissa = axis.step / 10 ** math.floor(math.log10(axis.step))
    assert round(mantissa, 6) in (1, 2, 2.5, 5, 10)  # 10: log10 rounding of 10^k
    if cap is None or peak <= cap:
        assert axis.top >= peak or axis.top == pytest.approx(peak)
    if cap is not None:
        assert axis.top <= cap + 1e-9


SCALES = {"count": COUNT, "compact": COMPACT, "percent": PERCENT, "cents": CENTS}


@given(st.sampled_from(sorted(SCALES)), st.one_of(st.just(0.0), st.floats(1e-4, 1e12)))
def test_tick_labels_are_distinct_and_start_at_zero(name: str, peak: float) -> None:
    scale = SCALES[name]
    cap = 1.0 if name == "percent" else None
    axis = Axis.over(min(peak, cap or peak), cap, scale.least_step)
    labels = axis.labels(scale)
    assert len(set(labels)) == len(labels), labels
    assert float(re.sub(r"[^\d.]", "", labels[0])) == 0


@given(st.floats(0, 30 * 86400))
def test_duration_ticks_are_distinct_and_in_one_unit(peak_s: float) -> None:
    scale, size = duration_scale(peak_s)
    axis = Axis.over(peak_s / size, None, scale.least_step)
    labels = axis.labels(scale)
    assert len(set(labels)) == len(labels), labels
    assert len({label.split()[-1] for label in labels}) == 1
    assert axis.top * size >= peak_s - 1e-6


def test_ticks_of_a_half_minute_are_seconds_and_of_zeros_counts() -> None:
    """The issue's cases: 32 s per player read "0 min, 0 min, 1 min"; an all-zero
    chart "0, 0, 1, 1"."""
    scale, size = duration_scale(32)
    assert Axis.over(32 / size, None, scale.least_step).labels(scale) == [
        "0 s", "10 s", "20 s", "30 s", "40 s",
    ]  # fmt: skip
    scale, size = duration_scale(25 * 60)
    assert Axis.over(25, None, scale.least_step).labels(scale) == [
        "0 min", "10 min", "20 min", "30 min",
    ]  # fmt: skip
    assert Axis.over(0, None, COUNT.least_step).labels(COUNT) == ["0", "1", "2", "3", "4"]
    assert Axis.over(2, None, COUNT.least_step).labels(COUNT) == ["0", "1", "2"]


class AxisLabels(HTMLParser):
    """Each drawing's value-axis labels (right-aligned texts), in order."""

    def __init__(self) -> None:
        super().__init__()
        self.axes: list[list[str]] = []
        self._in: bool = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "svg":
            self.axes.append([])
        self._in = tag == "text" and ("text-anchor", "end") in attrs

    def handle_data(self, data: str) -> None:
        if self._in:
            self.axes[-1].append(data)
            self._in = False


@pytest.mark.parametrize("which", ["report", "explicit"])
def test_every_chart_axis_has_distinct_labels(which: str, request: pytest.FixtureRequest) -> None:
    parser = AxisLabels()
    parser.feed(request.getfixturevalue(which)["html"])
    assert len(parser.axes) == 14
    for labels in parser.axes:
        assert len(labels) >= 2 and len(set(labels)) == len(labels), labels


def test_a_chart_with_nothing_to_draw_says_why() -> None:
    days = [f"2026-01-{d:02d}" for d in range(1, 4)]
    for values in ([None, None, None], [0.0, 0.0, 0.0]):
        page = chart("Revenue", days, [Series("r", values)], empty="No payments yet.")
        assert "<svg" not in page and "No payments yet." in page


def test_stickiness_before_a_week_of_data_is_an_explanation(
    explicit: dict[str, Any],
) -> None:
    report = explicit["json"]
    doc = {**report["kpis"], "headline": report["headline"], "firstDataDay": "2026-03-10"}
    page = render_html(doc)
    assert page.count("<svg") == 12  # six charts drawn, stickiness explained
    figure = page.split("Stickiness (DAU / MAU30)")[1].split("</figure>")[0]
    assert "2026-03-16" in figure and "<svg" not in figure


def test_stickiness_is_a_gap_before_a_week_of_data(explicit: dict[str, Any]) -> None:
    kpis = explicit["json"]["kpis"]
    values = _stickiness(kpis)
    defined_from = date(2026, 3, 3) + timedelta(days=6)
    for row, value in zip(kpis["activeUsers"], values, strict=True):
        if date.fromisoformat(row["day"]) < defined_from:
            assert value is None  # launch day's 100% is not drawn
        else:
            assert value == row["stickiness"]
    assert kpis["activeUsers"][20]["stickiness"] == 1.0  # what the gap hides


def test_a_chart_draws_gaps_and_a_legend_entry_per_series() -> None:
    days = [f"2026-01-{d:02d}" for d in range(1, 8)]
    page = chart(
        "t",
        days,
        [Series("a", [1.0, 2.0, None, None, 3.0, 4.0, 5.0]), Series("b", [0.0] * 7)],
    )
    wide = page.split('<svg class="narrow"')[0]
    assert wide.count("<polyline") == 3  # a: two runs around the gap; b: one
    assert page.count("<span><i") == 2
    assert "nan" not in page.lower()


# -- the HTML page -------------------------------------------------------------------------

VOID = {"meta", "br", "hr", "img", "input", "link", "col", "area", "base", "wbr", "source"}
SVG_EMPTY = {"line", "rect", "polyline", "path", "circle"}


class StrictParser(HTMLParser):
    """Fails on what a sloppy page would get away with: an end tag that closes
    anything but the innermost open element, or elements left open at the end."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.doctype = ""

    def handle_decl(self, decl: str) -> None:
        self.doctype = decl

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        assert tag in VOID | SVG_EMPTY, f"self-closing <{tag}/>"
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag: str) -> None:
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes {self.stack[-1:]}"
        self.stack.pop()


def test_html_is_well_formed(report: dict[str, Any]) -> None:
    parser = StrictParser()
    parser.feed(report["html"])
    parser.close()
    assert parser.doctype.lower() == "doctype html"
    assert parser.stack == []
    names = [tag for tag, _ in parser.tags]
    assert names[:2] == ["html", "head"]
    # Seven charts (players, stickiness, revenue, sessions, play time, credits, gems),
    # each drawn for a wide and a narrow screen.
    assert names.count("figure") == 7 and names.count("svg") == 14
    assert {"polyline", "rect", "circle", "table", "tfoot", "style", "title"} <= set(names)
    cards = [attrs["data-kpi"] for tag, attrs in parser.tags if attrs.get("class") == "card"]
    assert cards == [card.name for card in HEADLINE_CARDS]


@pytest.mark.parametrize("which", ["report", "explicit"])
def test_html_is_self_contained(which: str, request: pytest.FixtureRequest) -> None:
    page = request.getfixturevalue(which)["html"]
    lowered = page.lower()
    for needle in ("http://", "https://", "//cdn", "<script", "<link", "@import", "url(", "src="):
        assert needle not in lowered, needle
    parser = StrictParser()
    parser.feed(page)
    for tag, attrs in parser.tags:
        for name, value in attrs.items():
            assert name not in {"src", "href", "srcset", "action"}, (tag, name, value)
            assert not name.startswith("on"), (tag, name, value)  # no script in attributes


@pytest.mark.parametrize("which", ["report", "explicit"])
def test_html_numbers_equal_the_json(which: str, request: pytest.FixtureRequest) -> None:
    report = request.getfixturevalue(which)
    assert read_html_numbers(report["html"]) == expected_numbers(report["json"])


class CellTexts(HTMLParser):
    """What a reader sees: each table's visible cell texts, row by row (the rows of days
    and cohorts, in page order), and the fold lines."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.folds: list[str] = []
        self._table: list[list[str]] | None = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "table" and found.get("data-kpi"):
            self._table = self.tables.setdefault(found["data-kpi"] or "", [])
        elif tag == "tr" and self._table is not None:
            self._row = [] if "data-key" in found else None
            if self._row is not None:
                self._table.append(self._row)
            if found.get("class") == "fold":
                self._cell = []
        elif tag == "td" and self._row is not None:
            self._cell = []

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell))
            self._cell = None
        elif tag == "tr" and self._cell is not None:
            self.folds.append("".join(self._cell))
            self._cell = None
        elif tag == "table":
            self._table = None


def test_html_tables_show_the_json_numbers_newest_first(report: dict[str, Any]) -> None:
    """Not only the data attributes: the text a person reads says the same, newest first."""
    parser = CellTexts()
    parser.feed(report["html"])
    doc = report["json"]["kpis"]
    rows = parser.tables["activeUsers"]
    assert [[int(cell.replace(",", "")) for cell in row[1:4]] for row in rows] == [
        [day["dau"], day["wau"], day["mau30"]] for day in reversed(doc["activeUsers"])
    ]
    assert [row[0] for row in rows] == [day["day"] for day in reversed(doc["activeUsers"])]
    assert [row[1] for row in parser.tables["revenue"]] == [
        f"${day['revenueCents'] / 100:,.2f}" for day in reversed(doc["revenue"])
    ]
    assert parser.folds == []  # the default range begins with the data: nothing to fold


def test_html_folds_days_without_activity(explicit: dict[str, Any]) -> None:
    parser = CellTexts()
    parser.feed(explicit["html"])
    assert parser.folds == ["2026-02-11 to 2026-03-02: 20 days, no activity show"] * 4
    page = explicit["html"]
    # Folded, not removed: the rows are in the page (hidden by CSS), a checkbox shows them.
    assert page.count('<tr class="quiet"') == 4 * 20
    assert page.count('class="unfold"') == 4
    assert len(parser.tables["activeUsers"]) == 30


def test_html_of_an_empty_store() -> None:
    with open_store("memory://") as store:
        analytics = Analytics(store, clock=lambda: END_OF_TODAY)
        doc = collect_kpis(analytics.kpis, date(2026, 3, 12), date(2026, 3, 12))
        analytics.stop()
    page = render_html(doc)
    assert "None in this range." in page
    numbers = read_html_numbers(page)
    assert numbers["activeUsers"] == doc["activeUsers"]
    assert numbers["headline"]["d1Rate"] == {"value": None, "previous": None}
    assert "nan" not in page.lower()


# -- a real browser ------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("which", ["report", "explicit"])
def test_chromium_renders_the_page_with_the_json_numbers(
    which: str, request: pytest.FixtureRequest, chromium: Chromium, tmp_path: Path
) -> None:
    """The DOM Chromium builds holds the JSON's numbers; screenshots at a laptop's and a
    phone's width (kept in the test's tmp directory; the docs say how to look)."""
    report = request.getfixturevalue(which)
    dom = chromium.dump_dom(report["path"])
    assert read_html_numbers(dom) == expected_numbers(report["json"])
    assert dom.count("<svg") == 14
    for width, height in ((1200, 2600), (390, 5200)):
        shot = chromium.screenshot(report["path"], width, height, tmp_path / f"page-{width}.png")
        assert png_size(shot) == (width, height)
        assert shot.stat().st_size > 40_000  # a blank page is a few KB


def inflated(doc: dict[str, Any], factor: int = 100_000) -> dict[str, Any]:
    """The KPI document with every count, amount and duration ``factor`` times larger
    (rates kept): a big game's widest cells, from a small store."""

    def grow(key: str, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return value
        return value if key.endswith("Rate") or key == "stickiness" else value * factor

    grown = dict(doc)
    for key in SECTIONS:
        grown[key] = [{k: grow(k, v) for k, v in row.items()} for row in doc[key]]
    grown["totals"] = {
        key: {k: grow(k, v) for k, v in totals.items()} for key, totals in doc["totals"].items()
    }
    return grown


@pytest.mark.slow
@pytest.mark.parametrize("which", ["report", "explicit"])
def test_no_table_is_clipped_at_a_laptops_or_a_phones_width(
    which: str, request: pytest.FixtureRequest, chromium: Chromium
) -> None:
    """Chromium lays the page out 1,200 and 390 px wide, with this store's numbers and
    with numbers 100,000 times larger: no table is wider than its box (which would clip
    it or scroll it), no cell narrower than its text, and the page itself never scrolls
    sideways."""
    report = request.getfixturevalue(which)["json"]
    doc = {**report["kpis"], "headline": report["headline"]}
    for page in (render_html(doc), render_html(inflated(doc))):
        for width, boxes in chromium.table_widths(page, (1200, 390)).items():
            assert set(boxes) == {*SECTIONS, "page"}
            for name, (scroll, client, clipped) in boxes.items():
                assert scroll <= client, f"{name} at {width} px: {scroll} px in {client} px"
                assert clipped == 0, f"{name} at {width} px: {clipped} cells overflow"
