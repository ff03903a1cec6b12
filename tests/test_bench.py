"""The benchmarks measure what they say they measure.

Why: a benchmark is only a claim about the library if the work it times was done. The
SQLite figure refuses a run whose events or counters are not all stored; the
instruction counter's child processes must run each subject's real calls. Timings
themselves are never asserted here (the machines are shared and noisy).
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from bench import icount, persist

ROOT = Path(__file__).resolve().parent.parent


def test_sqlite_section_runs_and_writes_its_ratios(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", "sqlite", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "gso / raw" in done.stdout
    rows = json.loads(out.read_text())["sections"]["sqlite"]["rows"]
    ratios = {row["subject"]: row["ratio"] for row in rows if "ratio" in row}
    assert set(ratios) == {"gso / raw", "gso / executemany alone"}
    assert all(ratio > 0 for ratio in ratios.values())


def test_the_sqlite_figure_checks_every_event_and_the_counter(tmp_path: Path) -> None:
    path = tmp_path / "gso.db"
    persist._gso(path, 300)  # checks itself; the rest shows the check can fail
    table = f"{persist.PREFIX}events"
    conn = sqlite3.connect(path)
    conn.execute(f"DELETE FROM {table} WHERE id = (SELECT max(id) FROM {table})")
    conn.commit()
    conn.close()
    with pytest.raises(AssertionError, match="stored 299 events"):
        persist._check_stored(path, 300)


def test_the_raw_side_writes_into_the_librarys_own_table(tmp_path: Path) -> None:
    path = tmp_path / "raw.db"
    persist._insert(path, 50, prebuilt=False)
    conn = sqlite3.connect(path)
    indexes = conn.execute(
        "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND tbl_name = ?"
        " AND sql IS NOT NULL",
        (f"{persist.PREFIX}events",),
    ).fetchone()[0]
    (count,) = conn.execute(f"SELECT count(*) FROM {persist.PREFIX}events").fetchone()
    conn.close()
    assert (count, indexes) == (50, 3)


@pytest.mark.parametrize("subject", icount.SUBJECTS)
def test_instruction_count_children_run_their_subject(subject: str) -> None:
    """Without valgrind: the child each count is taken from runs and exits cleanly."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.icount", "--child", subject, "200"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr


def test_tail_section_runs_every_arm_and_the_probe() -> None:
    """The tail bench serves requests in each arm (with analytics, it refuses a figure
    unless every event was stored) and probes a flush; its figures are not asserted,
    only that they were produced."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.tail",
            "--stores",
            "memory,sqlite",
            "--rate",
            "200",
            "--seconds",
            "0.3",
            "--rounds",
            "1",
            "--probe-events",
            "3000",
            "--probe-rounds",
            "1",
            "--floor",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    for row in ("none B / none A", "with / none A", "other process / none A", "GIL probe"):
        assert row in done.stdout
    assert "Garbage" in done.stdout
    assert done.stdout.count("sqlite") >= 8  # 4 arms + 3 ratios + the probe row
