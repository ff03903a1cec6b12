"""``python -m bench.scale`` measures what it says (timings themselves are never
asserted: the machines are shared and noisy).

The sizes it reports are checked against the plan it replayed (an independent count
of the calls and player-days), the slope fit against exact powers, and the
throughput's "keeps up" against a store too slow to keep up.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench import scale
from gso_analytics import open_store
from gso_analytics.demo import plan_demo
from gso_analytics.model import ApplyResult, FlushBatch
from gso_analytics.store import Store

ROOT = Path(__file__).resolve().parent.parent


@given(
    k=st.floats(-1, 2),
    c=st.floats(1, 1e3),
    sizes=st.lists(st.integers(1, 10**6), min_size=3, max_size=5, unique=True),
)
def test_the_exponent_of_an_exact_power_is_its_power(k: float, c: float, sizes: list[int]) -> None:
    if max(sizes) / min(sizes) < 1.5:
        sizes = [*sizes, max(sizes) * 2]
    values = [c * size**k for size in sizes]
    assert math.isclose(scale.exponent(sizes, values), k, abs_tol=1e-6)


def test_a_stored_game_is_measured_against_its_plan(tmp_path: Path) -> None:
    path = tmp_path / "game.db"
    row = scale.measure_store("sqlite", f"sqlite:///{path}", 40, 10, path, None)
    plan = plan_demo(40, 10, scale.SEED, scale.LAST_DAY)
    days = list(plan.each_day())
    assert row["calls"] == sum(len(day) for day in days)
    tracks = [a.at for day in days for a in day if a.kind == "track"]
    kept = sum(at > plan.end - timedelta(days=7) for at in tracks)  # the default event_ttl
    assert (row["events"], row["pruned_events"]) == (kept, len(tracks) - kept)
    assert 0 < kept < len(tracks)
    assert row["player_days"] == sum(len({a.user_id for a in day}) for day in days)
    sizes = scale.sqlite_bytes(path)
    assert sizes["event_bytes"] + sizes["rest"] == sizes["file"] <= path.stat().st_size
    assert 50 < row["bytes_per_event"] < 1_000
    for key in ("report_s", "kpis_s", "report_peak_mb", "get_metrics_ms", "scrape_ms"):
        assert row[key] > 0, key


class SlowStore:
    """A memory store whose every flush takes ``delay`` seconds."""

    def __init__(self, delay: float) -> None:
        self.store: Store = open_store("memory://")
        self.delay = delay

    def apply(self, batch: FlushBatch) -> ApplyResult:
        time.sleep(self.delay)
        return self.store.apply(batch)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def __enter__(self) -> SlowStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.store.close()


def test_keeping_up_means_the_buffer_does_not_grow() -> None:
    fast = scale.sustain(open_store("memory://"), 1_000, 1.5)
    slow = scale.sustain(SlowStore(3.0), 1_000, 2.0)  # type: ignore[arg-type]
    assert fast["keeps_up"], fast
    assert not slow["keeps_up"], slow
    assert slow["late_peak_buffered"] > 3 * 1_000 * scale.FLUSH_INTERVAL_S
    assert 0 < fast["cpu_share"] < 1


@pytest.mark.slow
def test_the_quick_run_writes_every_table(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.scale", "--quick", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert len(result["sqlite"]["by_players"]) == len(result["mongo"]["by_players"]) == 3
    assert set(result["sqlite"]["players_k"]) == set(scale.SLOPED)
    for heading in ("B/player-day", "sustained events/s", "Move to MongoDB"):
        assert heading in done.stdout
