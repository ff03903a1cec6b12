"""The report's tables as CSV files: ``gso-analytics report --csv DIR``.

Why CSV as well as HTML: a game team pastes numbers into a spreadsheet to chart them
against their own plans. So each file holds one table with raw numbers (cents, seconds,
0-1 rates, exactly the values of ``report --json``), every day of the range oldest first
(sortable, nothing collapsed), a header of the JSON field names, and an empty cell for
an unknown value (a retention day not over yet), never a 0.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from .private_files import open_private
from .report import KPI_SECTIONS, KpiDoc

HEADLINE_FILE = "headline.csv"


def _cell(value: Any) -> Any:
    return "" if value is None else value


def write_csv(doc: KpiDoc, directory: Path) -> list[Path]:
    """Write ``headline.csv`` and one ``<section>.csv`` per KPI table of ``doc`` (from
    :func:`~gso_analytics.report.collect_kpis`) into ``directory``; return the files."""
    directory.mkdir(parents=True, exist_ok=True)
    headline = doc["headline"]
    tables: dict[str, tuple[list[str], list[list[Any]]]] = {
        HEADLINE_FILE: (
            ["figure", "value", "previous", "change", "start", "end"],
            [
                [
                    name,
                    *(_cell(figure[k]) for k in ("value", "previous", "change")),
                    headline["start"],
                    headline["end"],
                ]
                for name, figure in headline["figures"].items()
            ],
        )
    }
    for section in KPI_SECTIONS:
        fields = [column.field for column in section.columns]
        rows = [[_cell(row[field]) for field in fields] for row in doc[section.key]]
        tables[f"{section.key}.csv"] = (fields, rows)
    written = []
    for name, (header, rows) in tables.items():
        path = directory / name
        with open_private(path, "w", encoding="utf-8", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(header)
            writer.writerows(rows)
        written.append(path)
    return written
