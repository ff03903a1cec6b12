"""Worker for tests/test_multiprocess.py: one real OS process replaying one script.

Run as ``python tests/procs.py STORE SCRIPT_JSON`` (STORE: a store URL, or the path of
the shared SQLite file). It opens its own store and ``Analytics``, prints ``ready``,
blocks on stdin until the parent writes a line (so every worker starts together,
whatever their import times), replays its operations under an injected clock, stops,
and prints one JSON line with its ``stats()``.

Each operation carries its own timestamp (integer milliseconds since the epoch) and
the clock returns it, so the parent knows every timestamp the library sees. A
session operation may also carry ``wait``: ``[user, n]`` means "do not start
until the store shows ``n`` closed sessions of ``user``", i.e. the user's previous
session has reached the store from whichever processes recorded it. That keeps each
user's own story in order (one session in flight at a time, as when a real player
logs in again only after the logout was handled) while the logins, logouts and
events of different users, and the flushes, race freely across the processes.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime, timedelta

from gso_analytics import Analytics, StoreError, open_store

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: A dependency never takes this long unless something is broken; then fail loudly.
WAIT_DEADLINE_S = 30.0


def at_ms(ms: int) -> datetime:
    """Exact: ``timedelta`` arithmetic, no float seconds that could lose a millisecond."""
    return EPOCH + timedelta(milliseconds=ms)


def _wait_closed(analytics: Analytics, user: str, closed: int) -> None:
    deadline = time.monotonic() + WAIT_DEADLINE_S
    while True:
        try:
            sessions = analytics.store.get_sessions(user)
        except (
            StoreError
        ):  # a PostgreSQL server restarting, or nx-27017 failing a read beside a rollback
            sessions = []
        if sum(s.logout_at is not None for s in sessions) >= closed:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"{user}: waited {WAIT_DEADLINE_S}s for {closed} closed sessions,"
                f" store has {[(s.login_at, s.logout_at) for s in sessions]}"
            )
        time.sleep(0.002)  # polling a condition, not guessing how long anything takes


def run(store: str, script: dict) -> dict:
    now = [at_ms(script["start_ms"])]
    analytics = Analytics(
        open_store(store if "://" in store else f"sqlite:///{store}"),
        flush_interval=script["flush_interval"],
        clock=lambda: now[0],
        strict=True,
        # The seed's definitions (the scripts' sessions are login/logout pairs, their
        # events no activity). The processes replay days at different speeds, so one
        # process's clock may run a day ahead of a session another process has yet to
        # close: the idle timeout must not end such sessions (nor the prune drop marks).
        active_on="login",
        idle_timeout=timedelta(days=60),
        event_ttl=timedelta(days=60),
    )
    analytics.start()
    print("ready", flush=True)
    sys.stdin.readline()
    flush_each = script["flush_each_op"]
    for op in script["ops"]:
        if op.get("wait"):
            _wait_closed(analytics, *op["wait"])
        now[0] = at_ms(op["t"])
        kind = op["kind"]
        if kind == "login":
            analytics.on_login(op["user"], op["username"])
        elif kind == "logout":
            analytics.on_logout(op["user"])
        else:
            analytics.track(op["event"], op["user"], op["data"])
        if flush_each:
            analytics.flush()
    stats = analytics.stats()
    stored = analytics.stop()
    analytics.store.close()
    return {"stored_at_stop": stored, "stats": stats}


def main() -> None:
    store, script_path = sys.argv[1], sys.argv[2]
    with open(script_path, encoding="utf-8") as handle:
        script = json.load(handle)
    print(json.dumps(run(store, script), default=str), flush=True)


if __name__ == "__main__":
    main()
