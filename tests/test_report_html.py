"""``gso-analytics report`` with KPIs: the date range, the text tables, ``--json``'s
``kpis`` and the self-contained ``--html`` page.

The page is checked three ways: it parses as well-formed HTML, it names no URL and
loads nothing, and the numbers it embeds (each cell's ``data-value``) equal the JSON
report of the same store and range. The last check is repeated on the DOM a real
headless Chromium builds from the file, when Chromium is installed (CI does not
install it; docs/reports.md gives the same command to run by hand).
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import subprocess
from datetime import UTC, date, datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from gso_analytics import Analytics, open_store
from gso_analytics.cli import kpi_range, main
from gso_analytics.html_report import bar_chart, line_chart, read_html_numbers, render_html
from gso_analytics.report import KPI_SECTIONS, collect_kpis

TODAY = "2026-03-12"
END_OF_TODAY = datetime(2026, 3, 12, 23, 0, tzinfo=UTC)
SECTIONS = [section.key for section in KPI_SECTIONS]


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


@pytest.fixture(scope="module")
def report(store_url: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One ``report --json --html`` run: its JSON and the page it wrote."""
    page = tmp_path_factory.mktemp("html") / "report.html"
    code, out, err = run_cli(
        "report", "--json", "--store", store_url, "--today", TODAY, "--html", str(page)
    )
    assert code == 0, err
    return {"json": json.loads(out), "path": page, "html": page.read_text(encoding="utf-8")}


def kpis_of(doc: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    return {key: doc["kpis"][key] for key in SECTIONS}


# -- the range and the JSON ----------------------------------------------------------------


def test_kpi_range_defaults_to_the_30_days_ending_today() -> None:
    today = date(2026, 3, 12)
    assert kpi_range(None, None, today) == (date(2026, 2, 11), today)
    assert kpi_range(date(2026, 3, 1), None, today) == (date(2026, 3, 1), today)  # not ahead
    assert kpi_range(date(2026, 1, 1), None, today) == (date(2026, 1, 1), date(2026, 1, 30))
    assert kpi_range(date(2026, 4, 1), None, today) == (date(2026, 4, 1), date(2026, 4, 1))
    assert kpi_range(None, date(2026, 1, 31), today) == (date(2026, 1, 2), date(2026, 1, 31))
    assert kpi_range(date(2026, 3, 5), date(2026, 3, 5), today) == (
        date(2026, 3, 5),
        date(2026, 3, 5),
    )


def test_json_kpis_equal_the_api(report: dict[str, Any], store_url: str) -> None:
    doc = report["json"]["kpis"]
    assert (doc["start"], doc["end"], doc["today"]) == ("2026-02-11", TODAY, TODAY)
    with open_store(store_url) as store:
        analytics = Analytics(store, clock=lambda: END_OF_TODAY)
        expected = collect_kpis(analytics.kpis, date(2026, 2, 11), date(2026, 3, 12))
        days = analytics.kpis.active_users("2026-02-11", TODAY)
        analytics.stop()
    assert doc == expected
    assert [row["day"] for row in doc["activeUsers"]] == [row.day for row in days]
    assert len(doc["activeUsers"]) == len(doc["economy"]) == 30
    assert doc["retention"][0]["cohort"] == "2026-03-03"  # the demo's first
    assert sum(row["users"] for row in doc["retention"]) == 80
    assert doc["retention"][-1]["d1"] is None  # today's cohort: day 1 is tomorrow


def test_start_and_end_choose_the_range(store_url: str) -> None:
    code, out, err = run_cli(
        "report", "--json", "--store", store_url, "--today", TODAY,
        "--start", "2026-03-05", "--end", "2026-03-07",
    )  # fmt: skip
    assert code == 0, err
    kpis = json.loads(out)["kpis"]
    assert [row["day"] for row in kpis["revenue"]] == ["2026-03-05", "2026-03-06", "2026-03-07"]
    assert [row["cohort"] for row in kpis["retention"]] == [
        "2026-03-05",
        "2026-03-06",
        "2026-03-07",
    ]


def test_start_after_end_is_exit_2(store_url: str) -> None:
    code, _, err = run_cli(
        "report", "--store", store_url, "--start", "2026-03-07", "--end", "2026-03-05"
    )
    assert code == 2
    assert "--start 2026-03-07 is after --end 2026-03-05" in err


def test_unwritable_html_is_exit_2(store_url: str, tmp_path: Path) -> None:
    target = tmp_path / "missing-dir" / "out.html"
    code, _, err = run_cli("report", "--store", store_url, "--today", TODAY, "--html", str(target))
    assert code == 2
    assert err.startswith("gso-analytics: error: cannot write") and "Traceback" not in err


# -- the text report -----------------------------------------------------------------------


def test_text_report_prints_the_kpi_tables_after_the_metrics(store_url: str) -> None:
    code, out, _ = run_cli("report", "--store", store_url, "--today", TODAY)
    assert code == 0
    metrics, kpis = out.split("\nKPIs 2026-02-11 to 2026-03-12 (today 2026-03-12)\n", 1)
    assert "Today 2026-03-12" in metrics and "Last 10 days" in metrics
    for section in KPI_SECTIONS:
        assert f"\n{section.title}\n" in f"\n{kpis}"
    assert re.search(r"Cohort\s+Users\s+D1\s+D1 %\s+D7\s+D7 %\s+D30\s+D30 %", kpis)
    assert re.search(r"Day\s+DAU\s+WAU\s+MAU30\s+DAU/MAU30", kpis)
    assert re.search(r"Day\s+Revenue\s+Payers\s+New payers\s+DAU\s+ARPDAU\s+ARPPU", kpis)
    # A cohort row: its users, then D1 count and rate; D30 unknown ("-"), never 0.
    row = re.search(r"^2026-03-03\s+(\d+)\s+(\d+)\s+([\d.]+)%.*\s-\s+-$", kpis, re.MULTILINE)
    assert row is not None, kpis
    assert float(row[3]) == pytest.approx(100 * int(row[2]) / int(row[1]), abs=0.05)
    assert max(len(line) for line in kpis.splitlines()) <= 120


def test_text_report_of_an_empty_store_says_so() -> None:
    code, out, _ = run_cli("report", "--store", "memory://", "--today", TODAY)
    assert code == 0
    assert "Retention by cohort (first login day)\n  (none in this range)" in out


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
    assert names.count("svg") == 3  # active users, stickiness, revenue
    assert {"polyline", "rect", "table", "style", "title"} <= set(names)


def test_html_is_self_contained(report: dict[str, Any]) -> None:
    page = report["html"]
    lowered = page.lower()
    for needle in ("http://", "https://", "//cdn", "<script", "<link", "@import", "url(", "src="):
        assert needle not in lowered, needle
    parser = StrictParser()
    parser.feed(page)
    for tag, attrs in parser.tags:
        for name, value in attrs.items():
            assert name not in {"src", "href", "srcset", "action"}, (tag, name, value)


def test_html_numbers_equal_the_json(report: dict[str, Any]) -> None:
    assert read_html_numbers(report["html"]) == kpis_of(report["json"])


class CellTexts(HTMLParser):
    """What a reader sees: each table's visible cell texts, row by row."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self._table: list[list[str]] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        kpi = dict(attrs).get("data-kpi")
        if tag == "table" and kpi:
            self._table = self.tables.setdefault(kpi, [])
        elif tag == "tr" and self._table is not None:
            self._table.append([])
        elif tag == "td" and self._table is not None:
            self._cell = []

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None and self._table is not None:
            self._table[-1].append("".join(self._cell))
            self._cell = None
        elif tag == "table":
            self._table = None


def test_html_visible_cells_show_the_json_numbers(report: dict[str, Any]) -> None:
    """Not only the data attributes: the text a person reads says the same."""
    parser = CellTexts()
    parser.feed(report["html"])
    rows = [row for row in parser.tables["activeUsers"] if row]
    doc = report["json"]["kpis"]["activeUsers"]
    assert [[int(cell.replace(",", "")) for cell in row[1:4]] for row in rows] == [
        [day["dau"], day["wau"], day["mau30"]] for day in doc
    ]
    revenue = [row for row in parser.tables["revenue"] if row]
    assert [row[1] for row in revenue] == [
        f"${day['revenueCents'] / 100:,.2f}" for day in report["json"]["kpis"]["revenue"]
    ]


def test_html_of_an_empty_range_and_flat_charts() -> None:
    doc = {
        "start": "2026-01-01",
        "end": "2026-01-02",
        "today": "2026-01-02",
        "retention": [],
        "activeUsers": [
            {"day": d, "dau": 0, "wau": 0, "mau30": 0, "stickiness": 0.0}
            for d in ("2026-01-01", "2026-01-02")
        ],
        "revenue": [],
        "sessions": [],
        "economy": [],
    }
    page = render_html(doc)
    assert "None in this range." in page
    assert read_html_numbers(page) == {"activeUsers": doc["activeUsers"]}
    assert "nan" not in line_chart("t", ["2026-01-01"], [("a", [0.0])]).lower()
    assert "<rect" in bar_chart("t", ["2026-01-01", "2026-01-02"], [0, 250])


# -- a real browser ------------------------------------------------------------------------


def _chromium() -> str | None:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and Path("/usr/bin/chromium").exists():
        found = "/usr/bin/chromium"
    return found


CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


@pytest.mark.slow
def test_chromium_renders_the_page_with_the_json_numbers(
    report: dict[str, Any], tmp_path: Path
) -> None:
    browser = _chromium()
    if browser is None:
        pytest.skip("chromium is not installed (apt-get install chromium); see docs/reports.md")
    base = [browser, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    url = report["path"].resolve().as_uri()
    dom = subprocess.run(
        [*base, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=False
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert read_html_numbers(dom.stdout) == kpis_of(report["json"])
    assert dom.stdout.count("<svg") == 3
    shot = tmp_path / "page.png"
    done = subprocess.run(
        [*base, "--window-size=1200,1600", f"--screenshot={shot}", url],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 10_000  # a blank page is a few KB
