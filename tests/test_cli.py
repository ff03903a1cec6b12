"""The ``gso-analytics`` CLI: demo, report, prune, errors, and the console script.

Most tests call ``main([...])`` in-process on a ``tmp_path`` SQLite file and check
the output against what the store says when read through the public API; a few run
the installed console script and ``python -m gso_analytics`` as a user would.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gso_analytics import DAILY_FIELDS, Analytics, ConfigurationError, CounterRule, open_store
from gso_analytics.cli import main
from gso_analytics.counters import MAX_COUNTER
from gso_analytics.demo import plan_demo
from gso_analytics.report import COLUMNS, fmt_cents, fmt_duration, fmt_int, render_days

ZEROS = dict.fromkeys(DAILY_FIELDS, 0)
TODAY = "2026-03-12"  # three demo days, all in March: every player is in the MAU
END_OF_TODAY = datetime(2026, 3, 12, 23, 0, tzinfo=UTC)
#: Where the demo stops, and reads the metrics it prints (players are online then).
DEMO_END = datetime(2026, 3, 12, 21, 0, tzinfo=UTC)
SMALL_DEMO = ["demo", "--players", "40", "--days", "3", "--today", TODAY]

RunCli = Callable[..., tuple[int, str, str]]


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> RunCli:
    """``run("report", ...)`` → (exit code, stdout, stderr) of an in-process ``main``."""

    def run_cli(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return run_cli


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'demo.db'}"


def read_store(url: str, days: int = 30, at: datetime = END_OF_TODAY) -> dict[str, object]:
    """What the store says, read through the public API at the demo's "today" (``at``)."""
    with open_store(url) as store:
        analytics = Analytics(store, clock=lambda: at)
        doc = {
            "metrics": analytics.get_metrics().to_dict(),
            "days": [day.to_dict() for day in analytics.get_last_30_days()[:days]],
        }
        analytics.stop()
    return doc


def today_figures(output: str) -> dict[str, str]:
    """The ``label  value`` pairs of the "Today" block of a text report."""
    block = output.split("Today ", 1)[1].split("\n", 1)[1].split("\n\n", 1)[0]
    pairs = re.findall(r"(\S(?:\S| (?=\S))*) {2,}(\S+(?: \S+)?)", block)
    return dict(pairs)


def number(text: str) -> float:
    return float(text.replace(",", "").replace("$", "").replace(" min", ""))


def assert_lively(figures: dict[str, str]) -> None:
    """The demo's promise: every headline figure of "today" is non-zero."""
    for label in (
        "DAU",
        "MAU",
        "Avg session, month",
        "Active sessions",
        "Sessions today",
        "New players",
        "Revenue",
        "Credits earned",
        "Credits spent",
        "Gems earned",
        "Gems spent",
        "Gems bought",
        "Dungeons",
        "Crafts",
        "PvP battles",
        "Raids",
        "Market sales",
    ):
        assert number(figures[label]) > 0, (label, figures)
    assert re.fullmatch(r"\d+m \d\ds", figures["Avg session today"]), figures


# -- demo ---------------------------------------------------------------------------------


def test_demo_prints_lively_metrics_read_from_the_store(run: RunCli, store_url: str) -> None:
    code, out, err = run(*SMALL_DEMO, "--store", store_url)
    assert code == 0, err
    figures = today_figures(out)
    assert_lively(figures)
    stored = read_store(store_url, at=DEMO_END)["metrics"]
    assert number(figures["DAU"]) == stored["dau"]
    assert number(figures["MAU"]) == stored["mau"] == 40  # all registered this month
    assert number(figures["Active sessions"]) == stored["activeSessions"]
    assert f"Today {TODAY}" in out
    assert "Last 3 days" in out
    assert err == ""  # the progress line is drawn on a terminal only (tests/test_progress.py)


def test_demo_report_equals_a_later_report_of_the_store(run: RunCli, store_url: str) -> None:
    _, demo_out, _ = run(*SMALL_DEMO, "--store", store_url)
    code, report_out, _ = run("report", "--store", store_url, "--today", TODAY, "--days", "3")
    assert code == 0
    headline, rest = report_out.split("\n\n", 1)  # the report opens with the headline
    assert headline.startswith("Headline 2026-03-10 to 2026-03-12")
    assert f"\n\n{headline}\n\n" in demo_out  # and so does the demo, after its summary
    metrics_part, kpis_part = rest.split("\nKPIs ", 1)  # and adds the KPIs
    # The demo printed the store's numbers, not its own. Active sessions are as of the
    # moment read: the demo's end (21:00, players online), the report's end of the day.
    active = re.compile(r"(Active sessions +)\d+")
    assert active.sub(r"\1-", metrics_part) in active.sub(r"\1-", demo_out)
    assert int(active.search(metrics_part).group(0).split()[-1]) == 0  # type: ignore[union-attr]
    assert kpis_part.startswith("2026-03-10 to 2026-03-12 (today 2026-03-12)")


def test_demo_events_fall_on_the_simulated_days(run: RunCli, store_url: str) -> None:
    run(*SMALL_DEMO, "--store", store_url)
    days = {"2026-03-10", "2026-03-11", "2026-03-12"}
    with open_store(store_url) as store:
        events = store.get_events(limit=1_000_000)
        assert {event.day for event in events} == days
        assert all(event.ts.strftime("%Y-%m-%d") == event.day for event in events)
        assert max(event.ts for event in events) < END_OF_TODAY
        stored = store.recent_days(30)
    assert [day.day for day in stored] == sorted(days, reverse=True)
    assert sum(day["newUsers"] for day in stored) == 40  # each player registers once
    assert stored[0]["dau"] < stored[-1]["dau"]  # retention: fewer players later


def test_demo_is_reproducible_with_a_seed(run: RunCli, tmp_path: Path) -> None:
    first, second, other = (f"sqlite:///{tmp_path / name}" for name in ("a.db", "b.db", "c.db"))
    run(*SMALL_DEMO, "--store", first)
    run(*SMALL_DEMO, "--store", second)
    run(*SMALL_DEMO, "--store", other, "--seed", "8")
    assert read_store(first) == read_store(second)
    assert read_store(first) != read_store(other)


def test_demo_refuses_a_store_with_data_unless_reset_or_append(run: RunCli, store_url: str) -> None:
    """Running the demo twice (or into a game's real store) must not mix simulated
    players into existing numbers without being asked."""
    run(*SMALL_DEMO, "--store", store_url)
    once = read_store(store_url)
    code, out, err = run(*SMALL_DEMO, "--store", store_url)
    assert code == 2 and out == ""
    assert "already holds data" in err and "--reset" in err and "--append" in err
    assert read_store(store_url) == once  # untouched
    code, _, _ = run(*SMALL_DEMO, "--store", store_url, "--append")
    assert code == 0
    assert read_store(store_url)["days"] != once["days"]  # counters added up
    code, _, _ = run(*SMALL_DEMO, "--store", store_url, "--reset")
    assert code == 0
    assert read_store(store_url) == once
    with pytest.raises(SystemExit, match="2"):
        run(*SMALL_DEMO, "--store", store_url, "--reset", "--append")  # argparse: usage error


def test_demo_defaults_to_its_own_file(
    run: RunCli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, _ = run(*SMALL_DEMO)
    assert code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gso_demo.db"]
    assert "--store sqlite:///gso_demo.db" in out


def test_demo_and_report_in_the_games_timezone(run: RunCli, store_url: str) -> None:
    """Day keys follow --tz, as they follow the game's Analytics(tz=...): a Tokyo
    report of the demo's last day has the Tokyo day's players."""
    code, out, err = run(*SMALL_DEMO, "--store", store_url, "--tz", "Asia/Tokyo")
    assert code == 0, err
    assert "--tz Asia/Tokyo" in out
    _, utc_out, _ = run("report", "--json", "--store", store_url, "--today", TODAY)
    _, tokyo_out, _ = run(
        "report", "--json", "--store", store_url, "--today", TODAY, "--tz", "Asia/Tokyo"
    )
    tokyo = json.loads(tokyo_out)
    assert tokyo["metrics"]["today"]["day"] == TODAY
    assert tokyo["days"][0]["day"] == TODAY
    assert tokyo["metrics"] == json.loads(utc_out)["metrics"]  # the stored day asked for
    tokyo_tz = ZoneInfo("Asia/Tokyo")
    with open_store(store_url) as store:
        events = store.get_events(limit=1_000_000)
    assert all(e.ts.astimezone(tokyo_tz).date().isoformat() == e.day for e in events)
    assert any(e.ts.date().isoformat() != e.day for e in events)  # not the UTC day
    with pytest.raises(SystemExit, match="2"):
        run("report", "--store", store_url, "--tz", "Mars/Olympus")


def test_report_into_a_closed_pipe_ends_quietly(run: RunCli, store_url: str) -> None:
    """``gso-analytics report | head`` prints its lines and no BrokenPipeError."""
    run(*SMALL_DEMO, "--store", store_url)
    command = (
        f"{sys.executable} -m gso_analytics report --store {store_url} --today {TODAY} | head -n 2"
    )
    done = subprocess.run(
        ["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True, timeout=120
    )
    assert done.stdout.startswith("Headline 2026-03-10 to 2026-03-12")
    assert len(done.stdout.splitlines()) == 2
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr
    assert done.returncode == 0


def test_demo_reset_refuses_other_stores(run: RunCli) -> None:
    code, out, err = run(*SMALL_DEMO, "--store", "mongodb://localhost/game", "--reset")
    assert code == 2
    assert "--reset only deletes SQLite files" in err
    assert out == ""


def test_demo_on_a_memory_store(run: RunCli) -> None:
    code, out, _ = run(*SMALL_DEMO, "--store", "memory://")
    assert code == 0
    assert_lively(today_figures(out))
    assert "Show it again" not in out  # nothing left to show once the process exits


def test_demo_plan_keeps_sessions_open_at_the_end() -> None:
    plan = plan_demo(players=50, days=3, seed=7, today=datetime(2026, 3, 12).date())
    days = list(plan.each_day())
    last_day = days[-1]
    logins = sum(action.kind == "login" for action in last_day)
    logouts = sum(action.kind == "logout" for action in last_day)
    assert logins > logouts  # a few players are still online at the end
    assert all(action.at < plan.end for day in days for action in day)


# -- report -------------------------------------------------------------------------------


def test_report_json_equals_what_the_store_says(run: RunCli, store_url: str) -> None:
    run(*SMALL_DEMO, "--store", store_url)
    code, out, _ = run("report", "--json", "--store", store_url, "--today", TODAY)
    assert code == 0
    doc = json.loads(out)
    assert doc.pop("kpis")["start"] == "2026-03-10"  # the first day with data
    assert doc.pop("headline")["start"] == "2026-03-10"  # both checked in test_report_html.py
    assert doc == read_store(store_url)


def test_report_days_limits_the_table(run: RunCli, store_url: str) -> None:
    run(*SMALL_DEMO, "--store", store_url)
    _, out, _ = run("report", "--json", "--days", "2", "--store", store_url, "--today", TODAY)
    assert [day["day"] for day in json.loads(out)["days"]] == ["2026-03-12", "2026-03-11"]
    _, text, _ = run("report", "--days", "1", "--store", store_url, "--today", TODAY)
    assert "Last day\n" in text
    history = text.split("\nKPIs ", 1)[0]  # the KPI tables list every day of their range
    assert "2026-03-12" in history and "2026-03-11" not in history


def test_report_of_another_day_shows_that_day(run: RunCli, store_url: str) -> None:
    run(*SMALL_DEMO, "--store", store_url)
    _, out, _ = run("report", "--json", "--store", store_url, "--today", "2026-03-20")
    metrics = json.loads(out)["metrics"]
    assert metrics["today"] == {"day": "2026-03-20", "month": "2026-03", **ZEROS}
    assert metrics["dau"] == 0
    assert metrics["mau"] == 40  # same month


def test_report_of_an_empty_store(run: RunCli) -> None:
    code, out, _ = run("report", "--store", "memory://", "--today", TODAY)
    assert code == 0
    assert "No days recorded" in out
    assert today_figures(out)["DAU"] == "0"


@pytest.mark.parametrize("days", ["0", "31", "x"])
def test_report_rejects_bad_days(days: str, store_url: str) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["report", "--days", days, "--store", store_url])
    assert exc.value.code == 2


# -- prune --------------------------------------------------------------------------------


def test_prune_deletes_old_events_and_closes_idle_sessions(run: RunCli, store_url: str) -> None:
    long_ago = datetime(2020, 1, 1, 12, tzinfo=UTC)
    with Analytics(store_url, clock=lambda: long_ago) as analytics:
        analytics.on_login("u1", "alice")
        analytics.track("credits.earn", "u1", {"amount": 5})
        analytics.track("dungeon.complete", "u1")
    code, out, _ = run("prune", "--store", store_url)
    assert code == 0
    assert out == ("Deleted 2 events older than 7 days; closed 1 sessions idle for 30 minutes.\n")
    with open_store(store_url) as store:
        assert store.get_events() == []
        assert store.count_open_sessions() == 0
        assert store.get_sessions("u1")[0].timed_out
    _, again, _ = run("prune", "--store", store_url, "--event-ttl-days", "1.5")
    assert again.startswith("Deleted 0 events older than 1.5 days; closed 0 sessions")


# -- errors -------------------------------------------------------------------------------


def test_commands_are_not_workers_they_write_no_heartbeat(run: RunCli, store_url: str) -> None:
    """After the commands, the metrics count the workers only: no command writes a
    heartbeat (each would have shown as one more worker, and a stale one once gone)."""
    for argv in (
        SMALL_DEMO,
        ["report"],
        ["report", "--json", "--today", TODAY],
        ["prune"],
        ["export-user", "u1"],
        ["erase", "u1"],
    ):
        code, _, err = run(*argv, "--store", store_url)
        assert code == 0, (argv, err)
    with open_store(store_url) as store:
        assert store.live_heartbeats(datetime(2000, 1, 1, tzinfo=UTC)) == []


def test_unknown_scheme_is_one_line_and_exit_2(run: RunCli) -> None:
    code, out, err = run("report", "--store", "redis://localhost:6379/0")
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1
    assert "unknown store scheme 'redis'" in err and "sqlite" in err


def test_missing_database_is_an_error_not_a_new_file(run: RunCli, tmp_path: Path) -> None:
    code, _, err = run("report", "--store", f"sqlite:///{tmp_path / 'typo.db'}")
    assert code == 2
    assert "no database at" in err
    assert not (tmp_path / "typo.db").exists()


def test_unreachable_store_is_exit_2(run: RunCli, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'no' / 'such' / 'dir.db'}"
    code, _, err = run(*SMALL_DEMO, "--store", url)
    assert code == 2
    assert err.startswith("gso-analytics: error: cannot open SQLite database")


def test_bad_store_option_is_exit_2(run: RunCli, store_url: str) -> None:
    run(*SMALL_DEMO, "--store", store_url)
    code, _, err = run("report", "--store", f"{store_url}?busy_timeout=soon")
    assert code == 2
    assert "busy_timeout" in err and "Traceback" not in err


def test_help_works(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--help"], ["demo", "--help"], ["report", "--help"], ["prune", "--help"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 0
    assert "--players" in capsys.readouterr().out


# -- rendering ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "0s"), (45, "45s"), (725, "12m 05s"), (3720, "1h 02m")]
)
def test_fmt_duration(seconds: int, text: str) -> None:
    assert fmt_duration(seconds) == text


def test_fmt_cents() -> None:
    assert fmt_cents(0) == "$0.00"
    assert fmt_cents(123456) == "$1,234.56"
    assert fmt_cents(-5) == "-$0.05"
    assert fmt_cents(1234.5) == "$12.35"  # a mean, rounded


@given(st.integers(0, MAX_COUNTER - 1))
def test_whole_cents_are_shown_exactly(cents: int) -> None:
    """Past 2**53 cents a float division would round them; Decimal is the oracle."""
    assert fmt_cents(cents) == f"${Decimal(cents) / 100:,.2f}"


def test_saturated_figures_read_at_least() -> None:
    """A counter at the ceiling has lost what went past it: the report says ">=" it."""
    assert fmt_int(MAX_COUNTER) == f">={MAX_COUNTER:,}"
    assert fmt_cents(MAX_COUNTER) == f">=${MAX_COUNTER // 100:,}.{MAX_COUNTER % 100:02d}"
    assert fmt_int(MAX_COUNTER - 1) == f"{MAX_COUNTER - 1:,}"


def test_days_table_fits_100_columns_by_wrapping_whole_sections(
    store_url: str, run: RunCli
) -> None:
    run(*SMALL_DEMO, "--store", store_url)
    with open_store(store_url) as store:
        days = store.recent_days(30)
    table = render_days(days)
    sections = [section.splitlines() for section in table.split("\n\n")]
    assert len(sections) == 2 and max(len(line) for line in table.splitlines()) <= 100
    # Every column once, in order, each section after the day; the same days in each.
    labels = [lines[1].split() for lines in sections]
    assert all(shown[0] == "Day" for shown in labels)
    assert [label for shown in labels for label in shown[1:]] == [c.label for c in COLUMNS[1:]]
    assert sections[1][0].strip().startswith("-") and "Gameplay" in sections[1][0]
    for lines in sections:
        assert [line[:10] for line in lines[2:]] == [day.day for day in days]
        assert len({len(line) for line in lines[2:]}) == 1  # rows line up
    wide = render_days(days, width=200)
    assert "\n\n" not in wide and wide.splitlines()[1].split() == [c.label for c in COLUMNS]


def test_report_and_demo_fit_100_columns(run: RunCli, store_url: str) -> None:
    _, demo_out, _ = run(*SMALL_DEMO, "--store", store_url)
    code, report_out, _ = run("report", "--store", store_url, "--today", TODAY)
    assert code == 0
    for line in (demo_out + report_out).splitlines():
        assert len(line.replace(store_url, "URL")) <= 100, line


# -- as a user runs it ----------------------------------------------------------------------


def _console_script() -> list[str]:
    """The installed ``gso-analytics`` beside this interpreter, else ``python -m``."""
    script = Path(sys.executable).parent / "gso-analytics"
    return [str(script)] if script.exists() else [sys.executable, "-m", "gso_analytics"]


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONWARNINGS": "error::ResourceWarning"}
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_console_script_demo_then_python_m_report(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    demo = _run(
        [*_console_script(), "demo", "--players", "50", "--days", "3", "--store", url], tmp_path
    )
    assert demo.returncode == 0, demo.stderr
    assert "Traceback" not in demo.stderr
    assert_lively(today_figures(demo.stdout))
    today = re.search(r"Today (\d{4}-\d\d-\d\d)", demo.stdout)
    assert today is not None

    report = _run(
        [
            sys.executable,
            "-m",
            "gso_analytics",
            "report",
            "--json",
            "--store",
            url,
            "--today",
            today[1],
        ],
        tmp_path,
    )
    assert report.returncode == 0, report.stderr
    doc = json.loads(report.stdout)
    assert doc["metrics"]["dau"] == number(today_figures(demo.stdout)["DAU"])
    assert len(doc["days"]) == 3


@pytest.mark.slow
def test_console_script_default_store_and_bad_scheme(tmp_path: Path) -> None:
    demo = _run([*_console_script(), "demo", "--players", "20", "--days", "2"], tmp_path)
    assert demo.returncode == 0, demo.stderr
    assert (tmp_path / "gso_demo.db").exists()  # the demo's own default, in the cwd
    assert not (tmp_path / "gso_analytics.db").exists()  # never the game's store
    again = _run([*_console_script(), "demo", "--players", "20", "--days", "2"], tmp_path)
    assert again.returncode == 2 and "already holds data" in again.stderr
    report = _run([*_console_script(), "report", "--store", "sqlite:///gso_demo.db"], tmp_path)
    assert report.returncode == 0 and "DAU" in report.stdout
    bad = _run([sys.executable, "-m", "gso_analytics", "report", "--store", "nosql://x"], tmp_path)
    assert bad.returncode == 2
    assert bad.stderr.startswith("gso-analytics: error: unknown store scheme 'nosql'")
    assert "Traceback" not in bad.stderr


def test_report_reads_a_decimal_counter_it_was_never_told_of(run: RunCli, store_url: str) -> None:
    """The CLI knows only the built-in counters; a game's decimal counter still reads
    as its exact number (JSON ``0.3``, not 300000 millionths nor 0.30000000000000004)."""
    rule = CounterRule("goldLooted", "amount", decimal=True)
    clock = lambda: datetime(2026, 3, 12, 12, 0, tzinfo=UTC)  # noqa: E731
    with Analytics(store_url, counters={"gold.loot": rule}, clock=clock) as analytics:
        analytics.track("gold.loot", "u1", {"amount": 0.1})
        analytics.track("gold.loot", "u1", {"amount": 0.2})
    code, out, _ = run("report", "--json", "--store", store_url, "--today", TODAY)
    assert code == 0
    (day,) = json.loads(out)["days"]
    assert day["goldLooted"] == 0.3 and "goldLooted@micro" not in day
    assert re.search(r'"goldLooted": 0\.3\s', out)  # the JSON text itself


@pytest.mark.parametrize(
    ("counters", "message"),
    [
        ({"gold.loot": CounterRule("goldLooted", decimal=True)}, "give its amount_key"),
        (
            {"credits.earn": CounterRule("creditsEarned", "amount", decimal=True)},
            "one of the library's integer fields",
        ),
        (
            {
                "gold.loot": CounterRule("gold", "amount", decimal=True),
                "gold.find": CounterRule("gold", "amount"),
            },
            "'gold' is decimal for 'gold.loot' but not for 'gold.find'",
        ),
    ],
)
def test_a_decimal_counter_is_declared_whole(counters: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        Analytics(open_store("memory://"), counters=counters)
