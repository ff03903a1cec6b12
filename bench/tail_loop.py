"""``python -m bench.tail_loop [--rate 1000] [--work-us 150] [--seconds 4] [--rounds 4]
[--flush-interval 1] [--store sqlite|memory://]``: the asyncio arm of :mod:`bench.tail`,
what an event loop feels while the flush thread works, through a real uvicorn.

Why its own arm: an ASGI worker serves every connection from one thread, the event
loop's, so a flush that holds the GIL delays all of them at once, and the figure that
says so is the loop's lag, not one request's latency.

Each round starts uvicorn (one worker, a subprocess) on a Starlette app whose handler
does ``work_us`` of pure-Python work, plus three ``track()`` calls in the ``with`` arm
(``GSOAnalytics`` on a fresh SQLite file, or ``memory://``, flushing every
``flush_interval`` seconds); ``none A`` and ``none B`` serve without analytics (their
ratio is the A/A noise). Inside the server a task sleeps 1 ms in a loop and records by
how much each sleep overslept: the loop lag. This process is the client: open-loop
arrivals at ``rate`` per second on a fixed schedule over 16 keep-alive connections; a
request's latency is its finish minus its scheduled arrival. Arms alternate round by
round (rotating order); p50/p99/p99.9/max are taken per round and the table gives their
medians and the ratios to ``none A``.
On SQLite the ``with`` arm refuses a figure unless every tracked event was stored by the
time uvicorn stopped (its lifespan's final flush).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from bench.tail import NONE_A, NONE_B, QUANTILES, WITH, _quantile, _work, calibrate
from gso_analytics import open_store

ROOT = Path(__file__).resolve().parent.parent
CONNECTIONS = 16
LAG_SLEEP_S = 0.001
BOOT_TIMEOUT_S = 60.0
REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
LOOP_TITLE = "Event loop lag and request latency through uvicorn, us (medians over rounds)"


# -- the server (``python -m bench.tail_loop --serve ...``, one uvicorn worker) -------------


def build_app(arm: str, store_url: str, flush_interval: float, iterations: int) -> Any:
    """The Starlette app of one arm: the handler, and the loop-lag monitor."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse
    from starlette.routing import Route

    from gso_analytics.integrations.asgi import GSOAnalytics, get_analytics

    lags: list[int] = []
    served = [0]
    amount, item = {"amount": 50}, {"item": "sword", "tier": 3}

    async def monitor() -> None:
        clock, sleep, expected = time.perf_counter_ns, asyncio.sleep, int(LAG_SLEEP_S * 1e9)
        while True:
            before = clock()
            await sleep(LAG_SLEEP_S)
            lags.append(clock() - before - expected)

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        task = asyncio.get_running_loop().create_task(monitor())
        yield
        task.cancel()

    async def handle(request: Request) -> PlainTextResponse:
        _work(iterations)
        if arm == WITH:
            analytics = get_analytics(request)
            user = f"u{served[0] % 1000}"
            analytics.track("dungeon.complete", user)
            analytics.track("credits.earn", user, amount)
            analytics.track("item.craft", user, item)
        served[0] += 1
        return PlainTextResponse("ok")

    async def lag(request: Request) -> JSONResponse:
        """The lags since the last call, and the requests served; then both restart."""
        taken, lags[:] = list(lags), []
        count, served[0] = served[0], 0
        return JSONResponse({"lags": taken, "served": count})

    app = Starlette(routes=[Route("/", handle), Route("/lag", lag)], lifespan=lifespan)
    if arm == WITH:
        GSOAnalytics(
            app,
            settings={"STORE": store_url, "FLUSH_INTERVAL": flush_interval, "METRICS_PATH": None},
            testing=False,
            environ={},
            max_buffered_events=10**7,
            forwarders=[],
        )
    return app


def serve(arm: str, port: int, store_url: str, flush_interval: float, iterations: int) -> None:
    import gc

    import uvicorn

    app = build_app(arm, store_url, flush_interval, iterations)
    # Settled, as a server past its first seconds: the start-up's objects (the imports,
    # the store opened) make the process's first full collection due, 24-30 ms on the
    # loop's thread in the `with` arm, which otherwise fell inside every short round.
    gc.collect()
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


# -- the client (this process) ---------------------------------------------------------------


async def _get(port: int, path: str) -> Any:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode())
    body = (await reader.read()).split(b"\r\n\r\n", 1)[1]
    writer.close()
    return json.loads(body)


async def _answer(reader: asyncio.StreamReader) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            await reader.readexactly(int(value))
            return
    raise AssertionError(f"an answer without Content-Length: {head!r}")


async def load(port: int, rate: float, seconds: float) -> tuple[list[int], dict[str, Any]]:
    """Open-loop arrivals; the latencies (ns) and the server's lags over the same span."""
    idle: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    for _ in range(CONNECTIONS):
        idle.put_nowait(await asyncio.open_connection("127.0.0.1", port))
    latencies: list[int] = []
    clock = time.perf_counter_ns

    async def one(due: int) -> None:
        reader, writer = await idle.get()
        writer.write(REQUEST)
        await _answer(reader)
        latencies.append(clock() - due)
        idle.put_nowait((reader, writer))

    await _get(port, "/lag")  # restarts the server's counts
    period, count = 1e9 / rate, int(rate * seconds)
    start = clock() + 5_000_000
    tasks = []
    for i in range(count):
        due = start + int(i * period)
        ahead = due - clock()
        if ahead > 0:
            await asyncio.sleep(ahead / 1e9)
        tasks.append(asyncio.create_task(one(due)))
    await asyncio.gather(*tasks)
    server = await _get(port, "/lag")
    while not idle.empty():
        idle.get_nowait()[1].close()
    return latencies, server


def _free_port() -> int:
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _round(
    store: str,
    arm: str,
    tmp: Path,
    index: int,
    rate: float,
    seconds: float,
    flush_interval: float,
    iterations: int,
) -> tuple[list[int], list[int]]:
    """One arm's round on a fresh server (and store): (loop lags, latencies), in ns."""
    port = _free_port()
    store_url = (
        f"sqlite:///{tmp}/loop{index}_{arm.replace(' ', '')}.db" if store == "sqlite" else store
    )
    server = subprocess.Popen(
        [
            *(sys.executable, "-m", "bench.tail_loop", "--serve", arm, str(port), store_url),
            *(str(flush_interval), str(iterations)),
        ],
        cwd=ROOT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + BOOT_TIMEOUT_S
        while True:
            try:
                asyncio.run(_get(port, "/lag"))
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the {arm!r} server did not start") from None
                time.sleep(0.05)
        latencies, answered = asyncio.run(load(port, rate, seconds))
        server.send_signal(signal.SIGTERM)  # the lifespan's shutdown: the final flush
        # uvicorn shuts down, then raises the signal it caught again: -SIGTERM is a clean stop.
        if server.wait(timeout=BOOT_TIMEOUT_S) not in (0, -signal.SIGTERM):
            raise RuntimeError(f"the {arm!r} server exited with {server.returncode}")
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    if answered["served"] != len(latencies):
        raise AssertionError(f"served {answered['served']} of {len(latencies)} requests")
    if arm == WITH and store == "sqlite":  # refuse a figure for work not done
        with contextlib.closing(open_store(store_url)) as opened:
            stored = len(opened.get_events(limit=10**8))
        if stored != 3 * len(latencies):
            raise AssertionError(f"stored {stored} events of {3 * len(latencies)} tracked")
    return answered["lags"], latencies


def loop_lag(
    rate: float,
    work_us: float,
    seconds: float,
    rounds: int,
    flush_interval: float,
    store: str = "sqlite",
) -> list[dict[str, object]]:
    """One row per arm (loop lag and latency quantiles, medians over rounds, in us), and
    the ratios of ``none B`` and ``with`` to ``none A``."""
    iterations = calibrate(work_us)
    arms = [NONE_A, NONE_B, WITH]
    figures = ("lag", "latency")
    samples: dict[str, dict[str, list[int]]] = {
        arm: {f"{f}_{q}": [] for f in figures for q, _ in QUANTILES} for arm in arms
    }
    with tempfile.TemporaryDirectory() as tmp:
        for index in range(rounds):
            shift = index % len(arms)
            for arm in arms[shift:] + arms[:shift]:
                measured = _round(
                    store, arm, Path(tmp), index, rate, seconds, flush_interval, iterations
                )
                for figure, values in zip(figures, measured, strict=True):
                    ordered = sorted(values)
                    for q, at in QUANTILES:
                        samples[arm][f"{figure}_{q}"].append(_quantile(ordered, at))
    medians = {
        arm: {k: statistics.median(v) for k, v in per.items()} for arm, per in samples.items()
    }
    rows: list[dict[str, object]] = []
    for arm in arms:
        rows.append({"arm": arm, **{f"{k}_us": round(v / 1e3) for k, v in medians[arm].items()}})
    for arm in arms[1:]:
        rows.append(
            {
                "arm": f"{arm} / {NONE_A}",
                **{
                    f"x_{k}": round(v / max(medians[NONE_A][k], 1), 2)
                    for k, v in medians[arm].items()
                },
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    from bench.__main__ import table

    args_list = sys.argv[1:] if argv is None else argv
    if args_list[:1] == ["--serve"]:
        arm, port, store_url, flush_interval, iterations = args_list[1:6]
        serve(arm, int(port), store_url, float(flush_interval), int(iterations))
        return 0
    parser = argparse.ArgumentParser(prog="python -m bench.tail_loop", description=__doc__)
    parser.add_argument("--rate", type=float, default=1000.0, help="requests per second")
    parser.add_argument("--work-us", type=float, default=150.0, help="Python work per request")
    parser.add_argument("--seconds", type=float, default=4.0, help="per round and arm")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--flush-interval", type=float, default=1.0)
    parser.add_argument("--store", choices=("sqlite", "memory://"), default="sqlite")
    args = parser.parse_args(args_list)
    print(f"load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs", flush=True)
    rows = loop_lag(
        args.rate, args.work_us, args.seconds, args.rounds, args.flush_interval, args.store
    )
    print(table(f"{LOOP_TITLE}, {args.store}", rows), flush=True)
    print(f"load average {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
