"""Files with players' data are created readable by their owner only, whatever the
umask: the SQLite database and its -wal/-shm, dead letters, HTML and CSV reports.

Why: with the usual umask 022 every local account could read player ids, usernames
and the erasure secret from a world-readable database or its WAL."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gso_analytics import Analytics, FlushBatch, open_store
from gso_analytics.cli import main
from gso_analytics.dead_letters import DeadLetters


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(autouse=True)
def _open_umask() -> Iterator[None]:
    """The common umask: files would be 0644 without the library's care."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def test_a_new_sqlite_store_and_its_wal_are_private(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/game.db"
    with open_store(url) as store:
        analytics = Analytics(store, forwarders=[])
        analytics.on_login("u1", "alice")
        analytics.flush()
        files = sorted(tmp_path.glob("game.db*"))
        assert {f.name for f in files} >= {"game.db", "game.db-wal", "game.db-shm"}
        assert {f.name: mode(f) for f in files} == {f.name: 0o600 for f in files}
        analytics.stop()


def test_an_existing_database_keeps_the_mode_its_owner_gave_it(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    path.touch(mode=0o640)
    with open_store(f"sqlite:///{path}"):
        assert mode(path) == 0o640


def test_dead_letters_and_reports_are_private(tmp_path: Path) -> None:
    written = DeadLetters(tmp_path / "dead").write(
        FlushBatch(created_at=datetime.now(UTC)), "RuntimeError('x')"
    )
    assert mode(written) == 0o600
    url = f"sqlite:///{tmp_path}/game.db"
    with open_store(url) as store:
        analytics = Analytics(store, forwarders=[])
        analytics.on_login("u1", "alice")
        analytics.stop()
    html, csv_dir = tmp_path / "report.html", tmp_path / "csv"
    assert main(["report", "--store", url, "--html", str(html), "--csv", str(csv_dir)]) == 0
    assert mode(html) == 0o600
    assert [mode(f) for f in csv_dir.glob("*.csv")] == [0o600] * len(list(csv_dir.glob("*.csv")))
    assert list(csv_dir.glob("*.csv"))
