"""What activity marks cost a flush: the same events flushed into SQLite with tracked
calls as activity (``active_on="any"``, the default: each player's marks walked into
play sessions, one activity record per player and batch) and without
(``active_on="login"``: the flush as it was before activity sessions, events and
counters only).

``players`` players each send ``events_per_player`` events (a minute of play, one
batch); only ``flush()`` is measured, in CPU seconds of the process (the caller's
thread does the flush; the prune job, which runs every 10 minutes, is left out). Each
flush is checked: every event stored, the counter exact,
and with activity one session per player.

``python -m bench.activity --collector``: what the flushes leave to the cyclic
garbage collector (see :func:`collector`).
"""

from __future__ import annotations

import gc
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from bench.sessions import START, _Clock
from gso_analytics import Analytics, open_store


def _filled(path: Path, active_on: str, players: int, events_per_player: int) -> Analytics:
    """An ``Analytics`` on ``path`` with a minute of play of ``players`` buffered."""
    clock = _Clock(START)
    n = players * events_per_player
    analytics = Analytics(
        open_store(f"sqlite:///{path}"),
        clock=clock,
        forwarders=[],
        flush_interval=3600,
        max_buffered_events=n + 1,
        active_on=active_on,
        prune_interval=10**9,  # the prune runs every 10 minutes, not with each flush
    )
    for k in range(events_per_player):
        clock.now = START + timedelta(milliseconds=60_000 * k // events_per_player)
        for i in range(players):
            analytics.track("credits.earn", f"p{i}", {"amount": 1})
    return analytics


def flush_once(
    path: Path, active_on: str, players: int, events_per_player: int, *, check: bool = True
) -> float:
    """One flush of a filled buffer, checked unless told (``bench.icount`` counts
    every instruction of its process, the check's too); its CPU seconds."""
    analytics = _filled(path, active_on, players, events_per_player)
    try:
        started = time.process_time()
        analytics.flush()
        cpu = time.process_time() - started
        if check:
            _check(analytics, active_on, players, players * events_per_player)
        return cpu
    finally:
        analytics.stop()


def _check(analytics: Analytics, active_on: str, players: int, n: int) -> None:
    """Refuse a figure for work not done."""
    day = analytics.store.get_day(START.date().isoformat())
    sessions = players if active_on == "any" else 0
    figures = (day["creditsEarned"], day["sessionCount"]) if day else None
    stored = len(analytics.store.get_events(limit=n + 1))
    if figures != (n, sessions) or stored != n:
        raise AssertionError(f"{active_on}: stored {figures} and {stored} events for {n}")


def run(
    players: int = 2_000, events_per_player: int = 25, repeats: int = 9
) -> list[dict[str, object]]:
    """Best of ``repeats`` for each arm, alternating, each on a fresh file. Nine: with
    three, the ratio of two best CPU times moved by +-0.1 from run to run on a shared
    2-CPU machine (1.06-1.30 for the same code), with nine 1.09-1.20 (~11 s a run)."""
    best = {"login": float("inf"), "any": float("inf")}
    with tempfile.TemporaryDirectory(prefix="gso-bench-activity-") as tmp:
        for r in range(repeats):
            for arm in best:
                cpu = flush_once(Path(tmp, f"{arm}{r}.db"), arm, players, events_per_player)
                best[arm] = min(best[arm], cpu)
    n = players * events_per_player
    return [
        {"flush": 'without activity (active_on="login")', "events": n,
         "cpu_us_per_event": round(best["login"] / n * 1e6, 2), "ratio": 1.0},
        {"flush": 'with activity marks (active_on="any")', "events": n,
         "cpu_us_per_event": round(best["any"] / n * 1e6, 2),
         "ratio": round(best["any"] / best["login"], 2)},
    ]  # fmt: skip


def collector(store: str, marks: str, flushes: int = 100) -> dict[str, object]:
    """The cyclic garbage collector during ``flushes`` one-second flushes of 1,000
    players (``bench.tail``'s handler: three tracked calls each, and with ``marks``
    "logins" a login or a logout each, by turns) on a fresh ``store`` ("memory" or
    "sqlite"): collections per flush by generation, the full ones' milliseconds, and
    the objects that reached the old generation per flush (counted after each middle
    collection; a full one runs once their number passes a quarter of the old
    generation's). The same tracked calls give the same counts, run after run."""
    with tempfile.TemporaryDirectory(prefix="gso-bench-collector-") as tmp:
        url = "memory://" if store == "memory" else f"sqlite:///{Path(tmp, 'c.db')}"
        clock = _Clock(START)
        analytics = Analytics(
            open_store(url), clock=clock, forwarders=[], flush_interval=3600,
            max_buffered_events=100_000, prune_interval=10**9,
        )  # fmt: skip
        counts = [0, 0, 0]
        full_s, promoted, started, old = 0.0, 0, [0.0], [0]

        def watch(phase: str, info: dict[str, int]) -> None:
            nonlocal full_s, promoted
            generation = info["generation"]
            if phase == "start":
                started[0] = time.perf_counter()
                if generation == 1:
                    old[0] = len(gc.get_objects(2))
                return
            counts[generation] += 1
            if generation == 1:
                promoted += len(gc.get_objects(2)) - old[0]
            elif generation == 2:
                full_s += time.perf_counter() - started[0]

        def second(n: int) -> None:
            for i in range(1000):
                clock.now = START + timedelta(seconds=n, milliseconds=i)
                user = f"u{i}"
                if marks == "logins" and n % 2 == 0:
                    analytics.on_login(user)
                analytics.track("dungeon.complete", user)
                analytics.track("credits.earn", user, {"amount": 5})
                analytics.track("item.craft", user, {"item": "sword", "n": 1})
                if marks == "logins" and n % 2:
                    analytics.on_logout(user)
            analytics.flush()

        try:
            second(0)
            second(1)
            gc.collect()  # from an empty old generation's backlog
            gc.callbacks.append(watch)
            try:
                for n in range(2, 2 + flushes):
                    second(n)
            finally:
                gc.callbacks.remove(watch)
        finally:
            analytics.stop()
    return {
        "store": store, "marks": marks, "flushes": flushes,
        "young": round(counts[0] / flushes, 1), "middle": round(counts[1] / flushes, 2),
        "full": round(counts[2] / flushes, 2), "full_ms": round(full_s * 1000),
        "promoted_per_flush": promoted // flushes,
    }  # fmt: skip


if __name__ == "__main__":
    if sys.argv[1:] == ["--collector"]:  # python -m bench.activity --collector
        for store in ("memory", "sqlite"):
            for marks in ("calls", "logins"):
                print(collector(store, marks))
    else:
        for row in run():
            print(row)
