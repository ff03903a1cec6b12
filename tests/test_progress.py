"""The CLI's progress line (:mod:`gso_analytics.progress`) and the demo that stores
every call it makes, at any size.

The progress line is checked as a user meets it: the console script runs with its
stderr on a pseudo-terminal (the line is drawn, redrawn with ``\\r``) and on a pipe
(nothing at all), and the class itself against a stream that says it is a terminal.
"""

from __future__ import annotations

import io
import os
import pty
import re
import select
import subprocess
import sys
import time
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from gso_analytics import Analytics, open_store
from gso_analytics.dead_letters import DeadLetters, replay
from gso_analytics.demo import SimClock, plan_demo
from gso_analytics.demo import replay as replay_demo
from gso_analytics.model import FlushBatch
from gso_analytics.progress import REDRAW_S, Progress

TODAY = date(2026, 3, 12)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


# -- the demo stores every call ---------------------------------------------------------


@pytest.mark.parametrize("buffer", [1, 37, 200])
def test_the_demo_stores_every_call_through_a_buffer_smaller_than_a_day(buffer: int) -> None:
    """A simulated day holds far more calls than ``max_buffered_events`` here, as a day
    of a 20,000-player game holds more than the default 100,000: the replay flushes
    when the buffer is full, so nothing is dropped and every call is stored."""
    plan = plan_demo(players=60, days=3, seed=7, today=TODAY)
    days = list(plan.each_day())
    assert list(plan.each_day()) == days  # drawn again, the same
    assert min(len(day) for day in days) > 5 * buffer  # the case that dropped
    clock = SimClock(datetime(2026, 3, 10, tzinfo=UTC))
    with open_store("memory://") as store:
        analytics = Analytics(store, clock=clock, forwarders=[], max_buffered_events=buffer)
        calls = replay_demo(plan, analytics, clock)
        stats = analytics.stats()
        analytics.stop()
    assert (stats["dropped"], stats["rejected"], stats["buffered"]) == (0, 0, 0)
    assert calls == sum(len(day) for day in days) == stats["flushed"]


def test_the_demo_summary_says_every_call_was_stored(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from gso_analytics.cli import main

    url = f"sqlite:///{tmp_path / 'demo.db'}"
    assert main(["demo", "--players", "40", "--days", "3", "--store", url]) == 0
    out, err = capsys.readouterr()
    made, stored = re.search(r"([\d,]+) API calls in [\d.]+s; ([\d,]+) stored into", out).groups()
    assert made == stored
    assert "dropped" not in err
    plan = plan_demo(40, 3, 7, datetime.now(UTC).date())
    expected = sum(len(day) for day in plan.each_day())
    assert int(made.replace(",", "")) == expected


# -- the Progress class ------------------------------------------------------------------


def test_progress_is_silent_when_not_a_terminal() -> None:
    stream = io.StringIO()
    with Progress("Working", stream, unit="calls") as progress:
        for done in range(0, 1001):
            progress(done, 1000)
        with progress.working():
            pass
    assert stream.getvalue() == ""


def test_progress_redraws_in_place_throttled_and_ends_its_line() -> None:
    stream = _Terminal()
    with Progress("Simulating", stream, unit="calls") as progress:
        started = time.monotonic()
        for done in range(0, 100_001):
            progress(done, 100_000)
        elapsed = time.monotonic() - started
    text = stream.getvalue()
    draws = text.count("\r")
    # The first call draws, then at most one draw per REDRAW_S, and the last (100%).
    assert 2 <= draws <= 2 + elapsed / REDRAW_S
    assert text.startswith("\rSimulating [")
    assert re.search(r"100% 100,000/100,000 calls 0:\d\d\x1b\[K\n$", text)
    assert text.count("\n") == 1


def test_progress_without_a_total_counts() -> None:
    stream = _Terminal()
    with Progress("Applying", stream, unit="batches") as progress:
        progress(7)
    assert stream.getvalue() == "\rApplying: 7 batches 0:00\x1b[K\n"


def test_progress_working_shows_the_elapsed_time_until_the_call_returns() -> None:
    stream = _Terminal()
    with Progress("Pruning", stream) as progress, progress.working():
        time.sleep(1.2)
    text = stream.getvalue()
    assert text.startswith("\rPruning... 0:00")
    assert "\rPruning... 0:01" in text  # redrawn while the call ran
    assert text.endswith("\n")
    drawn = text.count("\r")
    time.sleep(1.1)
    assert stream.getvalue().count("\r") == drawn  # the ticker stopped with the call


def test_replaying_dead_letters_reports_each_batch_of_the_total(tmp_path: Path) -> None:
    letters = DeadLetters(tmp_path)
    for n in range(3):
        letters.write(
            FlushBatch(id=f"b{n}", created_at=datetime(2026, 3, 12, tzinfo=UTC)), "a test"
        )
    seen: list[tuple[int, int]] = []
    with open_store("memory://") as store:
        result = replay(letters.path(), store, lambda done, total: seen.append((done, total)))
    assert result.applied == 3
    assert seen == [(1, 3), (2, 3), (3, 3)]


# -- as a user sees it ----------------------------------------------------------------------


def _cli(tmp_path: Path, *argv: str, tty: bool) -> tuple[int, str, str]:
    """Run the console script with stderr on a pseudo-terminal (``tty``) or a pipe;
    returns (exit code, stdout, stderr as the terminal or pipe received it)."""
    command = [sys.executable, "-m", "gso_analytics", *argv]
    if not tty:
        done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        return done.returncode, done.stdout, done.stderr
    controller, terminal = pty.openpty()
    with subprocess.Popen(
        command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=terminal, text=True
    ) as process:
        os.close(terminal)
        received = b""
        while True:
            ready, _, _ = select.select([controller], [], [], 120)
            if not ready:
                process.kill()
                raise AssertionError(f"no output for 120 s; so far {received!r}")
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # EIO: the child closed the terminal's last descriptor
                break
            if not chunk:
                break
            received += chunk
        out = process.stdout.read() if process.stdout else ""
        code = process.wait(timeout=60)
    os.close(controller)
    return code, out, received.decode()


@pytest.mark.slow
def test_a_terminal_shows_progress_and_a_pipe_gets_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    demo = ["demo", "--players", "300", "--days", "3", "--store", url]
    code, out, err = _cli(tmp_path, *demo, tty=True)
    assert code == 0, err
    assert "\rSimulating 300 players x 3 days [" in err
    made = re.search(r"([\d,]+) API calls", out).group(1)
    assert f"100% 3/3 days, {made} calls" in err
    assert "Traceback" not in err
    prune = ["prune", "--store", url]
    code, _, err = _cli(tmp_path, *prune, tty=True)
    assert code == 0
    assert err.startswith("\rPruning... 0:0")

    code, out, err = _cli(tmp_path, *demo, "--reset", tty=False)
    assert code == 0, err
    assert err == ""
    assert "API calls" in out
    code, out, err = _cli(tmp_path, *prune, tty=False)
    assert (code, err) == (0, "")
    assert out.startswith("Deleted ")
