"""A local stand-in for the PostHog, Segment and Mixpanel ingestion APIs, and a guard
that keeps the benchmark off the internet.

``python -m bench.stub`` serves on a free port of 127.0.0.1, prints the port on its
first line and runs until its stdin closes (so it dies with the benchmark). It runs in
its own process on purpose: in production the SaaS endpoint is not in your process,
so parsing requests must not take the GIL from the SDK being measured. It is an
``http.server.ThreadingHTTPServer`` speaking HTTP/1.1 keep-alive (the SDKs reuse
connections) and answers 200 with what each SDK checks:

- PostHog ``POST /batch/`` → ``{"status": 1}`` (the SDK only checks the status);
- Segment ``POST /v1/batch`` → ``{"success": true}``;
- Mixpanel ``POST /track`` (and ``/engage``, ``/groups``, ``/import``) →
  ``{"status": 1, "error": null}`` (the SDK raises unless ``status`` is 1).

It counts requests and the events in them per path; ``GET /__stats`` returns those
counts, so the benchmark can check that every call it timed was delivered (an SDK that
dropped events would look cheaper than it is) and that no other path was called.

:func:`loopback_only` makes any connection or name lookup to a host other than the
loopback an error, in this process, for the rest of the run.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import threading
import urllib.request
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

ANSWERS: dict[str, bytes] = {
    "/batch/": b'{"status": 1}',
    "/v1/batch": b'{"success": true}',
    "/track": b'{"status": 1, "error": null}',
    "/engage": b'{"status": 1, "error": null}',
    "/groups": b'{"status": 1, "error": null}',
    "/import": b'{"status": 1, "error": null}',
}

_LOOPBACK = {"127.0.0.1", "::1", "localhost"}
_violations: list[str] = []


def _count_events(path: str, body: bytes) -> int:
    """Events in one request body, in each SDK's wire format."""
    try:
        if path in ("/batch/", "/v1/batch"):  # PostHog, Segment: {"batch": [...]}
            return len(json.loads(body)["batch"])
        # Mixpanel: form-encoded data=<JSON list>
        data = parse_qs(body.decode())["data"][0]
        parsed = json.loads(data)
        return len(parsed) if isinstance(parsed, list) else 1
    except (ValueError, KeyError, TypeError):
        return 0


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # the answer's headers and body go out at once
    requests: Counter[str] = Counter()
    events: Counter[str] = Counter()
    lock = threading.Lock()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        path = self.path.split("?", 1)[0]
        events = _count_events(path, body) if path in ANSWERS else 0
        with self.lock:
            self.requests[path] += 1
            self.events[path] += events
        self._answer(ANSWERS.get(path, b"{}"))

    def do_GET(self) -> None:
        if self.path == "/__stats":
            with self.lock:
                stats = {"requests": dict(self.requests), "events": dict(self.events)}
            self._answer(json.dumps(stats).encode())
            return
        with self.lock:
            self.requests[self.path] += 1
        self._answer(b"{}")

    def _answer(self, payload: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:
        pass


def serve() -> None:
    """Serve until stdin closes; print the port first."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(server.server_port, flush=True)
    sys.stdin.read()  # EOF when the parent exits or closes the pipe
    server.shutdown()


class Stub:
    """A running stub in a child process: its base URL and its counts."""

    def __init__(self, process: subprocess.Popen[str], port: int) -> None:
        self.process = process
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    def stats(self) -> dict[str, dict[str, int]]:
        with urllib.request.urlopen(f"{self.url}/__stats", timeout=10) as answer:
            return json.loads(answer.read())


@contextlib.contextmanager
def stub_server() -> Iterator[Stub]:
    """Start ``python -m bench.stub`` in a child process; stop it at the end."""
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.stub"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())
        yield Stub(process, port)
    finally:
        assert process.stdin is not None
        process.stdin.close()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _host_of(address: Any) -> str | None:
    if isinstance(address, tuple) and address:
        return str(address[0])
    return None  # a Unix socket path, not the network


def _check(host: str | None, what: str) -> None:
    if host is not None and host not in _LOOPBACK:
        _violations.append(f"{what} {host}")
        raise ConnectionRefusedError(f"bench: {what} {host!r} refused, loopback only")


def loopback_only() -> None:
    """Refuse, in this process, every name lookup and connection off 127.0.0.1.

    Patches ``socket.getaddrinfo`` and ``socket.socket.connect``/``connect_ex``
    (what ``requests``/``urllib3``, ``httpx`` and ``pymongo`` call); costs nothing on
    any call path but opening a connection. :func:`violations` lists refusals.
    """
    if getattr(socket, "_bench_loopback_only", False):
        return
    getaddrinfo = socket.getaddrinfo
    connect = socket.socket.connect
    connect_ex = socket.socket.connect_ex

    def guarded_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        _check(None if host is None else str(host), "name lookup of")
        return getaddrinfo(host, *args, **kwargs)

    def guarded_connect(self: socket.socket, address: Any) -> None:
        _check(_host_of(address), "connection to")
        connect(self, address)

    def guarded_connect_ex(self: socket.socket, address: Any) -> int:
        _check(_host_of(address), "connection to")
        return connect_ex(self, address)

    socket.getaddrinfo = guarded_getaddrinfo  # type: ignore[assignment]
    socket.socket.connect = guarded_connect  # type: ignore[method-assign]
    socket.socket.connect_ex = guarded_connect_ex  # type: ignore[method-assign]
    socket._bench_loopback_only = True  # type: ignore[attr-defined]


def violations() -> list[str]:
    """Connections :func:`loopback_only` refused (empty when none was attempted)."""
    return list(_violations)


if __name__ == "__main__":
    serve()
