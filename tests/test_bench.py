"""The benchmarks measure what they say they measure.

Why: a benchmark is only a claim about the library if the work it times was done. The
SQLite figure refuses a run whose events or counters are not all stored; the
instruction counter's child processes must run each subject's real calls. Timings
themselves are never asserted here (the machines are shared and noisy).
"""

from __future__ import annotations

import json
import os
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
    assert set(ratios) == {"gso / raw", "gso, thread started / raw", "gso / executemany alone"}
    assert all(ratio > 0 for ratio in ratios.values())


def test_the_sqlite_figure_checks_every_event_and_the_counter(tmp_path: Path) -> None:
    path = tmp_path / "gso.db"
    persist._gso(tmp_path / "started.db", 300, started=True)  # the flush thread beside it
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
    """The tail bench serves requests in each arm, in a thread and through uvicorn (with
    analytics, it refuses a figure unless every event was stored) and probes a flush;
    its figures are not asserted, only that they were produced."""
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
            "--runq",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    for row in (
        "none B / none A",
        "with / none A",
        "other process / none A",
        "GIL probe",
        "Event loop lag",
    ):
        assert row in done.stdout
    assert "Garbage" in done.stdout
    assert "lends" in done.stdout and "lent" in done.stdout  # the pacer's account
    assert "slow_runq_us" in done.stdout  # what the slowest requests waited for
    assert done.stdout.count("sqlite") >= 8  # 4 arms + 3 ratios + the probe row


def test_mongo_commands_counts_what_one_flush_sends(tmp_path: Path) -> None:
    """bench.mongo_commands on nx-27017, 'after' column only: it refuses a figure unless
    the flushes' events and counters were all stored; the commands it counted include
    the events' inserts and the commit."""
    from bench import mongo_section

    reason = mongo_section.unavailable()
    if reason is not None:
        pytest.skip(reason)
    out = tmp_path / "commands.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.mongo_commands", "--warmup", "5", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "pass --before-python" in done.stdout
    (result,) = json.loads(out.read_text())["results"].values()
    assert result["commands"]["insert"] >= 12  # 3,000 events, 256 per insert_many
    assert result["commands"]["commitTransaction"] >= 1
    assert result["flush_commands"] == sum(result["commands"].values())
    assert result["flush_command_bytes"] > 3_000 * 50


def test_mongo_commands_tells_the_roll_up_from_the_batch() -> None:
    """A transaction that writes daily/monthly/totals is the roll-up's; a hot write
    outside any transaction (0.2's guarded upserts) is the batch's own."""
    from bench.mongo_commands import PREFIX, _summarize

    def command(name: str, collection: str, txn: object, written: list[int]) -> dict[str, object]:
        return {
            "name": name,
            "bytes": 100,
            "collection": f"{PREFIX}{collection}",
            "txn": txn,
            "written": written,
        }

    summary = _summarize(
        [
            command("insert", "events", ("a", 1), [120, 130]),
            command("insert", "batches", ("a", 1), [300]),
            command("update", "daily", ("b", 1), [90]),  # roll-up transaction
            command("update", "batches", ("b", 1), [60]),
            command("update", "totals", None, [200]),  # outside transactions: the batch's
        ]
    )
    assert summary["flush_commands"] == 5
    assert summary["transactions"] == 2
    assert summary["rollup_commands"] == 2
    assert summary["largest_rollup_write_bytes"] == 90
    assert summary["largest_txn_write_bytes"] == 300
    assert summary["largest_txn_write_in"] == "insert batches"
    assert summary["largest_outside_write_bytes"] == 200
    assert summary["largest_hot_write_bytes"] == 200
    assert summary["hot_update_statements"] == 1
    assert summary["own_hot_written"] == ["totals"]


def test_postgres_section_compares_with_copy_and_counts_round_trips(tmp_path: Path) -> None:
    """On the session's server (the cluster the tests start, or GSO_TEST_POSTGRES_URL):
    the flush figure is only given when every event was stored (run_flush checks)."""
    import pg_server

    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", "postgres", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "GSO_BENCH_POSTGRES_URL": pg_server.server_url()},
    )
    assert done.returncode == 0, done.stderr
    section = json.loads(out.read_text())["sections"]["postgres"]
    assert "skipped" not in section, section
    assert [row["events_per_flush"] for row in section["rows"]] == [1_000, 10_000]
    assert all(row["gso_over_raw"] > 0 for row in section["rows"])
    trips = {row["statement"]: row["round_trips"] for row in section["round_trips"]}
    assert trips["copy COPY"] == 1 and 0 < trips["total"] < 60
