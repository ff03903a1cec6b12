"""``python -m bench.forwarding [--quick]``: what a webhook forwarder adds to ``track()``.

The issue's bar: ``track()`` with one webhook forwarder stays within 1.5x of without.
Subjects alternate round by round (see :func:`bench.hotpath.measure`), each on its own
``Analytics`` (memory store, flush thread running):

- ``no forwarder``: the baseline;
- ``webhook batch, live endpoint`` and ``webhook (seed format), live endpoint``: the
  forwarder thread POSTs at the same time, in this process;
- ``webhook, endpoint blocked``: the endpoint holds the first request forever, so the
  forwarder thread sleeps in a socket read and the number is the caller's own cost
  (``ForwardingHub.submit``: one tuple, one ``deque.append``); the default
  ``max_queue`` (10000) fills in the first rounds, then every call also drops the
  oldest event (the steady state of a dead endpoint);

Two runs: bursts of 1000 calls 50 ms apart (between bursts a batching forwarder
catches up, as on a server between requests; one POST per event never does at this
rate), and flat out, where every forwarder is overloaded: queue full, thread always
busy.

Two figures per subject: ``wall`` (what the loop took, including waiting for the GIL
while the forwarder and flush threads run) and ``cpu`` (the calling thread's own CPU
time, ``time.thread_time_ns``: what ``track()`` itself costs). The gap between the
two is the forwarder thread's work (encoding, HTTP) competing for the GIL; it grows
with the event rate, and batching cuts it (one POST per event costs the thread
hundreds of microseconds, a batch a few per event).
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from bench.hotpath import Subject
from gso_analytics import Analytics, WebhookForwarder


@contextmanager
def _endpoint(blocked: bool) -> Iterator[str]:
    release = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if blocked:
                release.wait()
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.block_on_close = False
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/hook"
    finally:
        release.set()
        server.shutdown()
        server.server_close()


def _track(analytics: Analytics) -> Subject:
    track = analytics.track
    amount = {"amount": 50}

    def run(n: int) -> None:
        for _ in range(n):
            track("credits.earn", "u1", amount)

    return run


def run(rounds: int = 200, calls: int = 1000, pause: float = 0.0) -> list[dict[str, object]]:
    """Median ns per ``track()`` call per subject; ``pause`` seconds after each round
    let the forwarder threads catch up (a server between bursts of requests)."""
    with ExitStack() as stack:
        blocked = stack.enter_context(_endpoint(blocked=True))
        live = stack.enter_context(_endpoint(blocked=False))
        configs = {
            "no forwarder": [],
            "webhook batch, live endpoint": [WebhookForwarder(live, batch=True)],
            "webhook (seed format), live endpoint": [WebhookForwarder(live)],
            "webhook, endpoint blocked": [WebhookForwarder(blocked)],
        }
        subjects = {}
        for name, forwarders in configs.items():
            analytics = Analytics(
                "memory://",
                flush_interval=0.05,
                max_buffered_events=10**7,
                forwarders=forwarders,
                forward_stop_timeout=0.5,
            ).start()
            stack.callback(analytics.stop)
            subjects[name] = _track(analytics)
        wall: dict[str, list[float]] = {name: [] for name in subjects}
        cpu: dict[str, list[float]] = {name: [] for name in subjects}
        for _ in range(rounds):  # subjects alternate, so noise hits them alike
            for name, subject in subjects.items():
                start_wall, start_cpu = time.perf_counter_ns(), time.thread_time_ns()
                subject(calls)
                cpu[name].append((time.thread_time_ns() - start_cpu) / calls)
                wall[name].append((time.perf_counter_ns() - start_wall) / calls)
            time.sleep(pause)
    base_wall = statistics.median(wall["no forwarder"])
    base_cpu = statistics.median(cpu["no forwarder"])
    return [
        {
            "subject": name,
            "wall_ns": round(statistics.median(wall[name])),
            "wall_ratio": round(statistics.median(wall[name]) / base_wall, 2),
            "cpu_ns": round(statistics.median(cpu[name])),
            "cpu_ratio": round(statistics.median(cpu[name]) / base_cpu, 2),
        }
        for name in subjects
    ]


def _print(title: str, rows: list[dict[str, object]]) -> None:
    width = max(len(title), *(len(str(row["subject"])) for row in rows))
    print(f"{title:<{width}}  wall_ns  ratio  cpu_ns  ratio")
    for row in rows:
        print(
            f"{row['subject']!s:<{width}}  {row['wall_ns']!s:>7}  {row['wall_ratio']!s:>5}"
            f"  {row['cpu_ns']!s:>6}  {row['cpu_ratio']!s:>5}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.forwarding", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    args = parser.parse_args(argv)
    rounds = 40 if args.quick else 200
    _print("track(), bursts of 1000, 50 ms apart", run(rounds, pause=0.05))
    print()
    _print("track(), flat out (forwarders overloaded)", run(rounds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
