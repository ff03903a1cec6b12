"""``python -m bench.icount``: instructions per call under valgrind, steadier than time.

On a shared machine a time moves by tens of percent from run to run; the number of
instructions a call executes does not. Each subject runs in a child process under
``valgrind --tool=callgrind`` twice, with ``small`` and ``large`` calls, and the
difference divided by ``large - small`` is its cost per call: start-up, imports and
the store's schema cancel out. It needs valgrind (``apt install valgrind``) and takes
a minute or two; it counts work, not waiting, so it complements ``python -m bench``
rather than replacing it (I/O, locks and cache misses are not in it).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import activity, persist, sessions

SUBJECTS = (
    "counter_inc",
    "track",
    "track_amount",
    "track_pair",
    "persist_gso",
    "persist_raw",
    "fill_activity",
    "flush_login",
    "flush_any",
    "fill_logins",
    "flush_logins",
)
COMPARED = {
    "track": "counter_inc",
    "track_amount": "counter_inc",
    "track_pair": "counter_inc",
    "persist_gso": "persist_raw",
    "flush_any": "flush_login",
}
#: Subjects whose count is taken after another's: the flush subjects' calls are
#: buffered as ``fill_activity`` buffers them, and only the flush is theirs.
BASELINES = {
    "flush_login": "fill_activity",
    "flush_any": "fill_activity",
    "flush_logins": "fill_logins",
}
_COLLECTED = re.compile(r"Collected : (\d+)")


def _run_subject(subject: str, n: int) -> None:
    """The child's side: ``n`` calls of ``subject`` and nothing else worth counting."""
    if subject in ("fill_activity", "flush_login", "flush_any"):
        # bench.activity's flush: a minute of play of n / 25 players, 25 events each.
        with tempfile.TemporaryDirectory() as tmp:
            path, players = Path(tmp) / "bench.db", n // 25
            if subject == "fill_activity":
                activity._filled(path, "any", players, 25)
                os._exit(0)  # the buffer only
            active_on = subject.removeprefix("flush_")
            activity.flush_once(path, active_on, players, 25, check=False)
        os._exit(0)
    if subject in ("fill_logins", "flush_logins"):
        # bench.sessions' login-heavy flush: n marks, four a player.
        with tempfile.TemporaryDirectory() as tmp:
            clock = sessions._Clock(sessions.START)
            worker = sessions.analytics_for(Path(tmp) / "bench.db", clock, n // 4)
            sessions._play(worker, clock, n // 4, sessions.START)
            if subject == "flush_logins":
                worker.flush()
        os._exit(0)
    if subject.startswith("persist_"):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "bench.db"
            if subject == "persist_gso":
                persist._gso(path, n)
            else:
                persist._insert(path, n, prebuilt=False)
        return
    if subject == "counter_inc":
        from prometheus_client import CollectorRegistry, Counter

        inc = Counter("calls", "calls", registry=CollectorRegistry()).inc
        for _ in range(n):
            inc()
        return
    from gso_analytics import Analytics

    analytics = Analytics("memory://", max_buffered_events=n + 1, flush_interval=3600)
    track, data, pair = analytics.track, {"amount": 50}, {"item": "sword", "tier": 3}
    if subject == "track":
        for _ in range(n):
            track("dungeon.complete", "u1")
    elif subject == "track_pair":
        for _ in range(n):
            track("item.craft", "u1", pair)
    else:
        for _ in range(n):
            track("credits.earn", "u1", data)
    # The request path only: the flush at exit is persist_gso's business.
    os._exit(0)


def instructions(subject: str, n: int) -> int:
    """The instructions a child process executes for ``n`` calls of ``subject``."""
    done = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            "-m",
            "bench.icount",
            "--child",
            subject,
            str(n),
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    found = _COLLECTED.search(done.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count from valgrind:\n{done.stderr[-2000:]}")
    return int(found.group(1))


def run(subjects: tuple[str, ...], small: int, large: int) -> list[dict[str, object]]:
    counted = {*subjects, *(BASELINES[s] for s in subjects if s in BASELINES)}
    per_call = {
        s: (instructions(s, large) - instructions(s, small)) / (large - small) for s in counted
    }
    for subject, baseline in BASELINES.items():
        if subject in per_call:
            per_call[subject] -= per_call[baseline]
    per_call = {s: per_call[s] for s in subjects}
    rows: list[dict[str, object]] = []
    for subject, cost in per_call.items():
        row: dict[str, object] = {"subject": subject, "instructions_per_call": round(cost)}
        base = COMPARED.get(subject)
        if base in per_call:
            row[f"x_{base}"] = round(cost / per_call[base], 2)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs=2, metavar=("SUBJECT", "N"), help=argparse.SUPPRESS)
    measured = [s for s in SUBJECTS if s not in BASELINES.values()]  # baselines: as needed
    parser.add_argument("--only", default=",".join(measured), help="subjects, comma-separated")
    parser.add_argument("--calls", default="10000,30000", help="SMALL,LARGE calls per subject")
    args = parser.parse_args()
    if args.child:
        _run_subject(args.child[0], int(args.child[1]))
        return
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (apt install valgrind)")
    subjects = tuple(s for s in args.only.split(",") if s)
    unknown = set(subjects) - set(SUBJECTS)
    if unknown:
        sys.exit(f"unknown subjects {sorted(unknown)}; known: {', '.join(SUBJECTS)}")
    small, large = (int(x) for x in args.calls.split(","))
    from bench.__main__ import table

    title = f"Instructions per call (valgrind callgrind, {large:,} minus {small:,} calls)"
    print(table(title, run(subjects, small, large)))


if __name__ == "__main__":
    main()
