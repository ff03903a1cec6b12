"""What players' data rights cost: the tombstone lookup every batch makes, hashing ids
with ``pseudonymize_key``, and an erase against a ``VACUUM`` on the same SQLite file.

flush: ``players`` players each log in and track five events, in one batch, flushed to
SQLite; timed on a store nobody was erased from, on one holding ``erased`` tombstones
(other players erased before), and with ``pseudonymize_key``; in turn, the order
rotated each round, best of ``rounds``; ratios against the first. erase: one
``erase_user`` (the WAL checkpoint included) on a store of ``players`` x ``days``
sessions and events, against a ``VACUUM`` of that file, the step the erase does
without. prune: the store runs every connection with ``secure_delete`` on (deleted
content zeroed, so no old copy of an erased id lingers); a prune of ``players`` x 5 x
``days`` expired events is timed with it and with it turned off, alternating, best of
``rounds``.
"""

from __future__ import annotations

import sqlite3
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from gso_analytics import Analytics, open_store

START = datetime(2026, 3, 2, 12, tzinfo=UTC)


def _analytics(path: Path, players: int, **options: Any) -> Analytics:
    clock = lambda: START  # noqa: E731 - one fixed moment: the same day keys every round
    return Analytics(
        open_store(f"sqlite:///{path}"),
        clock=clock,
        forwarders=[],
        flush_interval=3600,
        max_buffered_events=10 * players + 10,
        **options,
    )


def _play(analytics: Analytics, players: int, tag: str) -> None:
    for i in range(players):
        user = f"{tag}{i}"
        analytics.on_login(user, f"name-{user}")
        for _ in range(5):
            analytics.track("credits.earn", user, {"amount": 1})


def _flush_seconds(path: Path, players: int, erased: int, **options: Any) -> float:
    analytics = _analytics(path, players, **options)
    try:
        if erased and not path.with_suffix(".seeded").exists():
            _play(analytics, erased, "gone")
            analytics.flush()
            for i in range(erased):
                analytics.store.erase_user(f"gone{i}", START)
            path.with_suffix(".seeded").touch()
        _play(analytics, players, f"r{time.monotonic_ns()}-")
        started = time.perf_counter()
        analytics.flush()
        elapsed = time.perf_counter() - started
        day = analytics.store.get_day(START.date().isoformat())
        if day is None or day["creditsEarned"] < 5 * players:
            raise AssertionError(f"the flush stored {day} for {players} players")
        return elapsed
    finally:
        analytics.stop()
        analytics.store.close()


def _played_days(store: Any, players: int, days: int) -> tuple[Analytics, list[datetime]]:
    """An Analytics on ``store`` whose players played ``days`` days from START, flushed
    day by day; its clock is the returned one-item list (move it to move time)."""
    now = [START]
    analytics = Analytics(
        store,
        clock=lambda: now[0],
        forwarders=[],
        flush_interval=3600,
        max_buffered_events=10 * players + 10,
    )
    for day in range(days):
        now[0] = START + timedelta(days=day)
        _play(analytics, players, "p")
        analytics.flush()
    return analytics, now


def _erase_vs_vacuum(path: Path, players: int, days: int) -> dict[str, float]:
    analytics, _ = _played_days(open_store(f"sqlite:///{path}"), players, days)
    try:
        started = time.perf_counter()
        receipt = analytics.erase_user("p7")
        erase = time.perf_counter() - started
        if receipt.pseudonymized["sessions"] != days:
            raise AssertionError(f"the erase renamed {receipt.pseudonymized}")
    finally:
        analytics.stop()
        analytics.store.close()
    with sqlite3.connect(path) as conn:
        started = time.perf_counter()
        conn.execute("VACUUM")
        vacuum = time.perf_counter() - started
    return {"erase_s": erase, "vacuum_s": vacuum, "size_mb": path.stat().st_size / 1e6}


def _prune_seconds(path: Path, players: int, days: int, secure: bool) -> float:
    store = open_store(f"sqlite:///{path}")
    with store._write_lock:  # the bench's one reach inside: the pragma under test
        store._writer().execute(f"PRAGMA secure_delete = {int(secure)}")
    analytics, now = _played_days(store, players, days)
    try:
        now[0] = START + timedelta(days=days + 30)
        started = time.perf_counter()
        result = analytics.prune()
        elapsed = time.perf_counter() - started
        if result.events_deleted != 5 * players * days:
            raise AssertionError(f"the prune deleted {result.events_deleted}")
        return elapsed
    finally:
        analytics.stop()
        store.close()


def run(players: int, erased: int, rounds: int, days: int) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        subjects: dict[str, tuple[Path, int, dict[str, Any]]] = {
            "plain": (root / "plain.db", 0, {}),
            f"{erased:,} tombstones": (root / "tombs.db", erased, {}),
            "pseudonymize_key": (root / "pseudo.db", 0, {"pseudonymize_key": "k" * 32}),
        }
        best = dict.fromkeys(subjects, float("inf"))
        names = list(subjects)
        for n in range(rounds):
            for name in names[n % len(names) :] + names[: n % len(names)]:  # rotated
                path, gone, options = subjects[name]
                best[name] = min(best[name], _flush_seconds(path, players, gone, **options))
        rows: list[dict[str, Any]] = [
            {
                "subject": f"flush: {name}",
                "ms": round(seconds * 1000, 1),
                "ratio": round(seconds / best["plain"], 2),
            }
            for name, seconds in best.items()
        ]
        prune = {True: float("inf"), False: float("inf")}
        for n in range(rounds):
            for secure in (True, False):
                path = root / f"prune-{n}-{secure}.db"
                prune[secure] = min(prune[secure], _prune_seconds(path, players, days, secure))
        rows.append(
            {
                "subject": "prune: secure_delete on / off",
                "ms": round(prune[True] * 1000, 1),
                "ratio": round(prune[True] / prune[False], 2),
            }
        )
        figures = _erase_vs_vacuum(root / "erase.db", players, days)
        rows.append(
            {
                "subject": f"erase_user vs VACUUM ({figures['size_mb']:.1f} MB file)",
                "ms": round(figures["erase_s"] * 1000, 1),
                "ratio": round(figures["erase_s"] / figures["vacuum_s"], 3),
            }
        )
        return rows
