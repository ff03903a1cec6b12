"""Forwarding to a webhook and to Mixpanel, against real HTTP servers on 127.0.0.1.

Why real servers: what matters is what goes over the wire (body bytes, headers,
gzip, auth) and how the library behaves when the other side is slow, blocked, down
or answers 4xx/5xx/429/413/400, which a mocked ``requests`` would only restate. Each
:class:`Endpoint` is an ``http.server.ThreadingHTTPServer`` in a thread that records
every request and answers what the test tells it to. Nothing sleeps a guessed
amount: waits poll a condition with a deadline, and "does not slow ``track()``" is
proved while the server is blocked on a ``threading.Event``.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import hmac
import json
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import pytest

from gso_analytics import (
    Analytics,
    Backoff,
    ConfigurationError,
    Delivery,
    EncodedEvent,
    ForwardedEvent,
    Forwarder,
    MixpanelForwarder,
    WebhookForwarder,
)
from gso_analytics.forwarding import parse_retry_after
from gso_analytics.http_forwarders import WEBHOOK_URL_ENV

if TYPE_CHECKING:
    from conftest import AnalyticsFactory, FakeClock

#: Retries in milliseconds, so a test of the retry path takes no real time.
FAST = Backoff(initial=0.01, maximum=0.05)
ID = re.compile(r"^[0-9a-f]{16}-[0-9]+$")


# -- a real HTTP endpoint ---------------------------------------------------------------


@dataclass
class Received:
    """One request as the endpoint saw it."""

    path: str
    query: dict[str, list[str]]
    headers: Message
    body: bytes  # as sent (gzip included)
    at: float  # time.monotonic() when it arrived
    client_port: int

    def payload(self) -> Any:
        raw = self.body
        if self.headers.get("Content-Encoding") == "gzip":
            raw = gzip.decompress(raw)
        return json.loads(raw)


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


def json_reply(status: int, doc: Any, **headers: str) -> Reply:
    return Reply(status, {"Content-Type": "application/json", **headers}, json.dumps(doc).encode())


class Endpoint:
    """An HTTP/1.1 server (keep-alive, like a real one) recording every POST.

    ``respond`` decides each answer and may block; ``release`` is set at teardown so
    a test may leave handlers blocked on it.
    """

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.answered: list[tuple[Received, Reply]] = []
        self.lock = threading.Lock()
        self.respond: Callable[[Received], Reply] = lambda request: Reply()
        self.release = threading.Event()
        self.entered = threading.Event()  # a request reached respond()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                parts = urlsplit(self.path)
                request = Received(
                    parts.path,
                    parse_qs(parts.query),
                    self.headers,
                    body,
                    time.monotonic(),
                    self.client_address[1],
                )
                with endpoint.lock:
                    endpoint.received.append(request)
                endpoint.entered.set()
                reply = endpoint.respond(request)
                with endpoint.lock:  # before answering: a test that saw the answer sees it
                    endpoint.answered.append((request, reply))
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.block_on_close = False
        self.server.handle_error = lambda request, address: None  # a client gone at teardown
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    def hold(self, request: Received) -> Reply:
        """A ``respond`` that never answers (until teardown)."""
        self.release.wait(60)
        return Reply()

    def accepted(self) -> list[Received]:
        with self.lock:
            return [r for r, reply in self.answered if 200 <= reply.status < 300]

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    server = Endpoint()
    yield server
    server.close()


@pytest.fixture
def make(make_analytics: AnalyticsFactory) -> Callable[..., Analytics]:
    """An ``Analytics`` on the memory store and the fake clock, stopped at teardown."""

    def build(forwarders: Sequence[Forwarder] | None, **options: Any) -> Analytics:
        options.setdefault("flush_interval", 3600)
        options.setdefault("forward_stop_timeout", 10.0)
        return make_analytics("memory://", forwarders=forwarders, **options)

    return build


def wait_until(condition: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what or condition}"
        time.sleep(0.005)


def forwarding(analytics: Analytics) -> dict[str, Any]:
    return analytics.stats()["forwarding"]


def free_port() -> int:
    """A port nothing listens on: connections to it are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def epoch_ms(moment: datetime) -> int:
    return int(moment.timestamp()) * 1000 + moment.microsecond // 1000


# -- the webhook: the seed's format ----------------------------------------------------------


def test_webhook_sends_each_event_in_the_seed_format(
    endpoint: Endpoint, make: Callable[..., Analytics], clock: FakeClock
) -> None:
    """One POST per event, body exactly the seed's ``{event, userId, data, ts}``, ``data``
    ``{}`` when none was given, ``ts`` the call's time from the library's clock."""
    analytics = make([WebhookForwarder(endpoint.url + "/hook")]).start()
    calls = [
        ("credits.earn", "u1", {"amount": 50}),
        ("dungeon.complete", "u2", None),
        ("guild.joined", "pläyer-ü", {"guild": {"name": "Ørn", "tags": [1, 2.5, "x"]}, "ok": True}),
        ("stripe.payment", "u1", {"amountCents": 499, "currency": None}),
    ]
    for event, user, data in calls:
        clock.advance(1.2345)
        analytics.track(event, user, data)
    analytics.stop()

    expected_ts = [
        "2025-03-14T12:00:01.234Z",
        "2025-03-14T12:00:02.469Z",
        "2025-03-14T12:00:03.703Z",
        "2025-03-14T12:00:04.938Z",
    ]
    assert len(endpoint.received) == len(calls)
    keys = set()
    for request, (event, user, data), ts in zip(endpoint.received, calls, expected_ts, strict=True):
        assert request.path == "/hook"
        assert request.headers["Content-Type"] == "application/json"
        body = request.payload()
        assert list(body) == ["event", "userId", "data", "ts"]
        assert body == {"event": event, "userId": user, "data": data or {}, "ts": ts}
        assert b"\\u" not in request.body  # UTF-8 on the wire, as JSON.stringify
        key = request.headers["Idempotency-Key"]
        assert ID.match(key) and len(key) <= 36
        keys.add(key)
    assert len(keys) == len(calls)
    stats = forwarding(analytics)
    assert stats["delivered"] == len(calls)
    assert (stats["queued"], stats["dropped_rejected"], stats["undelivered_at_stop"]) == (0, 0, 0)


def test_events_tracked_just_before_stop_are_delivered_when_it_returns(
    endpoint: Endpoint, make: Callable[..., Analytics]
) -> None:
    """stop() drains the queue; the connection is reused (one ``requests.Session``)."""
    analytics = make([WebhookForwarder(endpoint.url)]).start()
    for i in range(150):
        analytics.track("market.sale", f"u{i}")
    assert analytics.stop() is True
    assert sorted(r.payload()["userId"] for r in endpoint.received) == sorted(
        f"u{i}" for i in range(150)
    )
    assert len({r.client_port for r in endpoint.received}) == 1  # keep-alive
    assert forwarding(analytics)["delivered"] == 150


def test_rejected_calls_are_not_forwarded(
    endpoint: Endpoint, make: Callable[..., Analytics]
) -> None:
    analytics = make([WebhookForwarder(endpoint.url)]).start()
    analytics.track("credits.earn", "u1", {"amount": "10"})
    analytics.track("credits.earn", {"$ne": None}, {"amount": 1})  # type: ignore[arg-type]
    analytics.track("gems.spend", "u1", {"amount": float("nan")})
    analytics.track("", "u1")
    analytics.track("quest.done", "u1", {"bad": {1, 2}})
    analytics.track("credits.earn", "u1", {"amount": 5})
    analytics.track("quest.done", "u2")
    analytics.stop()
    assert analytics.stats()["rejected"] == 5
    assert [(r.payload()["event"], r.payload()["userId"]) for r in endpoint.received] == [
        ("credits.earn", "u1"),
        ("quest.done", "u2"),
    ]


def test_data_changed_by_the_caller_after_track_is_forwarded_as_tracked(
    endpoint: Endpoint, make: Callable[..., Analytics]
) -> None:
    analytics = make([WebhookForwarder(endpoint.url)])  # not started: the queue holds them
    flat = {"amount": 5}
    nested = {"loot": {"gold": 3}}
    analytics.track("credits.earn", "u1", flat)
    analytics.track("loot.found", "u1", nested)
    flat["amount"] = 999
    flat["extra"] = 1
    nested["loot"]["gold"] = 999
    analytics.stop()
    assert [r.payload()["data"] for r in endpoint.received] == [
        {"amount": 5},
        {"loot": {"gold": 3}},
    ]


# -- never slowing the caller ----------------------------------------------------------------


def test_a_blocked_endpoint_never_blocks_track(
    endpoint: Endpoint, make: Callable[..., Analytics]
) -> None:
    """Proof without timing: every track() returns while the endpoint holds the first
    request unanswered; once it answers, every event arrives."""
    release = threading.Event()
    endpoint.respond = lambda request: (release.wait(30), Reply())[1]
    analytics = make([WebhookForwarder(endpoint.url, max_queue=5000)]).start()
    analytics.track("first", "u1")
    assert endpoint.entered.wait(10)
    for i in range(500):
        analytics.track("market.sale", "u1", {"i": i})
    assert not release.is_set() and len(endpoint.answered) == 0  # all returned, none answered
    assert forwarding(analytics)["queued"] == 501
    release.set()
    assert analytics.stop()
    assert len(endpoint.accepted()) == 501


def test_a_50ms_endpoint_does_not_slow_track(
    endpoint: Endpoint, make: Callable[..., Analytics]
) -> None:
    def slow(request: Received) -> Reply:
        time.sleep(0.05)
        return Reply()

    endpoint.respond = slow
    analytics = make([WebhookForwarder(endpoint.url)]).start()
    started = time.perf_counter()
    for i in range(20):
        analytics.track("pvp.battle", f"u{i}")
    elapsed = time.perf_counter() - started
    # Waiting for the endpoint would take 20 * 50 ms = 1 s; half of it leaves room for a
    # busy machine's scheduling.
    assert elapsed < 0.5, elapsed
    assert analytics.stop()
    assert len(endpoint.accepted()) == 20


# -- failures, retries and bounds -----------------------------------------------------------------


def test_500_and_429_then_recovery_delivers_every_event_once_by_id(
    endpoint: Endpoint, make: Callable[..., Analytics]
) -> None:
    """Failed answers are retried with the same Idempotency-Key, including a 503
    sent after the receiver already processed the request (a lost answer): the
    receiver gets duplicates only under a key it has already seen."""
    script = iter([500, 502, 429, 503, 503, 500])

    def flaky(request: Received) -> Reply:
        status = next(script, 200)
        return Reply(status, {"Retry-After": "0"} if status == 429 else {})

    endpoint.respond = flaky
    analytics = make([WebhookForwarder(endpoint.url, backoff=FAST)]).start()
    for i in range(20):
        analytics.track("craft.complete", "u1", {"i": i})
    assert analytics.stop()
    keys = [r.headers["Idempotency-Key"] for r in endpoint.accepted()]
    assert len(keys) == len(set(keys)) == 20
    assert [r.payload()["data"]["i"] for r in endpoint.accepted()] == list(range(20))
    stats = forwarding(analytics)
    assert (stats["delivered"], stats["retried"], stats["dropped_rejected"]) == (20, 6, 0)
    assert len(endpoint.received) == 26


def test_retry_after_is_honoured(endpoint: Endpoint, make: Callable[..., Analytics]) -> None:
    script = iter([Reply(429, {"Retry-After": "1"})])
    endpoint.respond = lambda request: next(script, Reply())
    analytics = make([WebhookForwarder(endpoint.url, backoff=FAST)]).start()
    analytics.track("raid.complete", "u1")
    wait_until(lambda: len(endpoint.accepted()) == 1, what="the retried request")
    first, second = endpoint.received
    assert first.headers["Idempotency-Key"] == second.headers["Idempotency-Key"]
    assert second.at - first.at >= 0.99  # FAST alone would retry after ~10 ms


def test_parse_retry_after() -> None:
    now = datetime(2025, 3, 14, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after("Fri, 14 Mar 2025 12:00:07 GMT", now) == 7.0
    assert parse_retry_after("Fri, 14 Mar 2025 11:00:00 GMT", now) == 0.0
    assert parse_retry_after("-4") == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None
    assert Backoff(max_retry_after=60).delay(1, 3600) == 60


@pytest.mark.parametrize("status", [400, 401, 404, 422])
def test_other_4xx_is_dropped_counted_and_logged_not_retried(
    status: int,
    endpoint: Endpoint,
    make: Callable[..., Analytics],
    caplog: pytest.LogCaptureFixture,
) -> None:
    endpoint.respond = lambda r: Reply(status) if r.payload()["data"].get("bad") else Reply()
    analytics = make([WebhookForwarder(endpoint.url, backoff=FAST)]).start()
    for i in range(6):
        analytics.track("market.sale", "u1", {"bad": i % 3 == 0})
    assert analytics.stop()
    assert len(endpoint.received) == 6  # no retries
    stats = forwarding(analytics)
    assert (stats["delivered"], stats["dropped_rejected"], stats["retried"]) == (4, 2, 0)
    assert stats["forwarders"]["webhook"]["last_error"].startswith(f"HTTP {status}")
    assert any(
        r.name == "gso_analytics.forwarding" and "refused" in r.getMessage() for r in caplog.records
    )


def test_a_down_endpoint_is_retried_then_counted_undelivered_within_the_stop_bound(
    make: Callable[..., Analytics], caplog: pytest.LogCaptureFixture
) -> None:
    analytics = make(
        [WebhookForwarder(f"http://127.0.0.1:{free_port()}/hook", backoff=FAST)],
        forward_stop_timeout=0.5,
    ).start()
    for i in range(5):
        analytics.track("pvp.battle", f"u{i}")
    wait_until(lambda: forwarding(analytics)["retried"] >= 3, what="connection retries")
    started = time.monotonic()
    analytics.stop()
    assert time.monotonic() - started < 3.0  # 0.5 s bound, generous slack
    stats = forwarding(analytics)
    assert (stats["delivered"], stats["undelivered_at_stop"], stats["queued"]) == (0, 5, 0)
    assert "ConnectionError" in stats["forwarders"]["webhook"]["last_error"]
    assert any("5 events not delivered" in r.getMessage() for r in caplog.records)


def test_an_endpoint_that_never_answers_delays_neither_track_nor_stop(
    endpoint: Endpoint, make: Callable[..., Analytics]
) -> None:
    """The read timeout (10 s) is longer than stop's bound: stop() returns at its bound
    anyway, and the late answer changes no count."""
    endpoint.respond = endpoint.hold
    analytics = make([WebhookForwarder(endpoint.url)], forward_stop_timeout=0.5).start()
    analytics.track("raid.complete", "u1")
    assert endpoint.entered.wait(10)
    for _ in range(5):
        analytics.track("raid.complete", "u1")  # returns: the endpoint holds the first
    started = time.monotonic()
    analytics.stop()
    assert time.monotonic() - started < 3.0
    assert forwarding(analytics)["undelivered_at_stop"] == 6
    endpoint.release.set()  # the stuck request now succeeds, too late to count
    wait_until(
        lambda: not any(t.name.startswith("gso-analytics-forward") for t in threading.enumerate()),
        what="the stuck forwarder thread to end",
    )
    stats = forwarding(analytics)
    assert (stats["delivered"], stats["undelivered_at_stop"], stats["queued"]) == (0, 6, 0)


def test_a_full_queue_drops_the_oldest_and_counts_them(
    endpoint: Endpoint, make: Callable[..., Analytics], caplog: pytest.LogCaptureFixture
) -> None:
    analytics = make([WebhookForwarder(endpoint.url, max_queue=5)])  # not started yet
    for i in range(12):
        analytics.track("market.sale", "u1", {"i": i})
    stats = forwarding(analytics)
    assert (stats["queued"], stats["dropped_overflow"]) == (5, 7)
    analytics.start()
    assert analytics.stop()
    assert [r.payload()["data"]["i"] for r in endpoint.received] == [7, 8, 9, 10, 11]
    assert forwarding(analytics)["delivered"] == 5
    assert any("queue full" in r.getMessage() for r in caplog.records)


# -- webhook options -------------------------------------------------------------------------


def test_batch_mode_sends_arrays_bounded_by_count(
    endpoint: Endpoint, make: Callable[..., Analytics], clock: FakeClock
) -> None:
    analytics = make([WebhookForwarder(endpoint.url, batch=True, max_batch_events=10)])
    for i in range(25):
        analytics.track("dungeon.complete", f"u{i}")
    analytics.start()
    assert analytics.stop()
    bodies = [r.payload() for r in endpoint.received]
    assert [len(b) for b in bodies] == [10, 10, 5]
    items = [item for body in bodies for item in body]
    assert [list(item) for item in items] == [["event", "userId", "data", "ts", "id"]] * 25
    assert [item["userId"] for item in items] == [f"u{i}" for i in range(25)]
    assert all(item["ts"] == "2025-03-14T12:00:00.000Z" and item["data"] == {} for item in items)
    assert len({item["id"] for item in items}) == 25
    keys = {r.headers["Idempotency-Key"] for r in endpoint.received}
    assert len(keys) == 3 and all(k.startswith("batch-") for k in keys)


def test_batch_mode_bounds_bytes(endpoint: Endpoint, make: Callable[..., Analytics]) -> None:
    analytics = make([WebhookForwarder(endpoint.url, batch=True, max_batch_bytes=600)])
    for i in range(30):
        analytics.track("chat.sent", "u1", {"text": "x" * 80, "i": i})
    analytics.start()
    assert analytics.stop()
    assert all(len(r.body) <= 600 for r in endpoint.received)
    assert len(endpoint.received) > 5
    assert [item["data"]["i"] for r in endpoint.received for item in r.payload()] == list(range(30))


def test_hmac_signature_is_verified_by_the_receiver(
    endpoint: Endpoint, make: Callable[..., Analytics]
) -> None:
    """Two webhooks on one Analytics: the right secret passes the receiver's check, the
    wrong one is refused (401: dropped and counted); both carry the same event ids."""

    def verify(request: Received) -> Reply:
        expected = "sha256=" + hmac.new(b"s3cret", request.body, hashlib.sha256).hexdigest()
        valid = hmac.compare_digest(request.headers.get("X-GSO-Signature", ""), expected)
        return Reply(200 if valid else 401)

    endpoint.respond = verify
    good = WebhookForwarder(endpoint.url + "/good", secret="s3cret")
    bad = WebhookForwarder(endpoint.url + "/bad", secret=b"wrong", batch=True)
    analytics = make([good, bad]).start()
    for i in range(4):
        analytics.track("credits.spend", "u1", {"amount": i})
    assert analytics.stop()
    per = forwarding(analytics)["forwarders"]
    assert (per["webhook-0"]["delivered"], per["webhook-0"]["dropped_rejected"]) == (4, 0)
    assert (per["webhook-1"]["delivered"], per["webhook-1"]["dropped_rejected"]) == (0, 4)
    good_ids = [r.headers["Idempotency-Key"] for r in endpoint.accepted()]
    bad_ids = [item["id"] for r in endpoint.received if r.path == "/bad" for item in r.payload()]
    assert good_ids == bad_ids


def test_webhook_url_env_enables_the_seed_webhook_and_an_empty_list_disables_it(
    endpoint: Endpoint, make: Callable[..., Analytics], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(WEBHOOK_URL_ENV, endpoint.url + "/from-env")
    seeded = make(None).start()
    silent = make([]).start()
    seeded.track("user.register", "u1")
    silent.track("user.register", "u2")
    seeded.stop()
    silent.stop()
    assert [(r.path, r.payload()["userId"]) for r in endpoint.received] == [("/from-env", "u1")]
    assert forwarding(silent) == {
        "queued": 0,
        "delivered": 0,
        "retried": 0,
        "dropped_overflow": 0,
        "dropped_rejected": 0,
        "undelivered_at_stop": 0,
        "forwarders": {},
    }
    monkeypatch.setenv(WEBHOOK_URL_ENV, "")
    assert forwarding(make(None))["forwarders"] == {}
    monkeypatch.setenv(WEBHOOK_URL_ENV, "not a url")
    with pytest.raises(ConfigurationError, match=WEBHOOK_URL_ENV):
        make(None)


def test_bad_configuration_is_refused() -> None:
    with pytest.raises(ConfigurationError):
        WebhookForwarder("ftp://example.com/hook")
    with pytest.raises(ConfigurationError):
        WebhookForwarder("http://127.0.0.1/", timeout=0)
    with pytest.raises(ConfigurationError):
        WebhookForwarder("http://127.0.0.1/", max_queue=0)
    with pytest.raises(ConfigurationError):
        WebhookForwarder("http://127.0.0.1/", batch=True, max_batch_events=2.5)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        MixpanelForwarder()
    with pytest.raises(ConfigurationError):
        MixpanelForwarder(project_token="t", service_account_user="u")
    with pytest.raises(ConfigurationError):
        MixpanelForwarder(service_account_user="u", service_account_secret="s")
    with pytest.raises(ConfigurationError):
        MixpanelForwarder(project_token="t", max_batch_events=2001)
    with pytest.raises(ConfigurationError):
        MixpanelForwarder(project_token="t", max_batch_bytes=10_000_001)
    with pytest.raises(ConfigurationError):
        Analytics("memory://", forwarders=["http://127.0.0.1/"])  # type: ignore[list-item]
    assert "s3cret" not in repr(WebhookForwarder("http://h/", secret="s3cret"))


def test_a_webhook_urls_secret_stays_out_of_logs_stats_and_repr(
    make: Callable[..., Analytics], caplog: pytest.LogCaptureFixture
) -> None:
    """A Slack-style webhook URL carries its secret in the path (and a token in the
    query, a password in userinfo): a down endpoint's errors, ``stats()["last_error"]``
    (served by /metrics/stats), the warnings and ``repr()`` show the host only."""
    url = f"http://user:pw@127.0.0.1:{free_port()}/services/T0SECRET/B0SECRET?token=QSECRET"
    forwarder = WebhookForwarder(url, backoff=FAST)
    analytics = make([forwarder], forward_stop_timeout=0.3).start()
    with caplog.at_level(logging.INFO):
        analytics.track("pvp.battle", "u1")
        wait_until(lambda: forwarding(analytics)["retried"] >= 2, what="connection retries")
        analytics.stop()
    last_error = forwarding(analytics)["forwarders"]["webhook"]["last_error"]
    assert "ConnectionError" in last_error and "127.0.0.1" in last_error
    shown = [last_error, repr(forwarder), *(r.getMessage() for r in caplog.records)]
    for secret in ("T0SECRET", "B0SECRET", "QSECRET", "pw@"):
        assert not [text for text in shown if secret in text], secret
    with pytest.raises(ConfigurationError) as caught:
        WebhookForwarder("hxxp://host/services/T0SECRET")
    assert "T0SECRET" not in str(caught.value)


def test_mixpanel_refuses_plain_http_beyond_this_machine() -> None:
    """Over ``http://`` the project token would cross the network in clear."""
    with pytest.raises(ConfigurationError, match="in clear"):
        MixpanelForwarder(project_token="t", api_host="http://api.mixpanel.com")
    MixpanelForwarder(project_token="t", api_host="http://api.mixpanel.com", allow_http=True)
    MixpanelForwarder(project_token="t", api_host="http://127.0.0.1:9")  # loopback: a test
    MixpanelForwarder(project_token="t", api_host="https://api-eu.mixpanel.com")


# -- Mixpanel ----------------------------------------------------------------------------------


@pytest.mark.parametrize("auth", ["project_token", "service_account"])
def test_mixpanel_import_format(
    auth: str, endpoint: Endpoint, make: Callable[..., Analytics], clock: FakeClock
) -> None:
    if auth == "project_token":
        forwarder = MixpanelForwarder(project_token="tok123", api_host=endpoint.url)
        user, password, project = "tok123", "", None
    else:
        forwarder = MixpanelForwarder(
            service_account_user="sa.user",
            service_account_secret="sa-secret",
            project_id=4242,
            api_host=endpoint.url,
        )
        user, password, project = "sa.user", "sa-secret", ["4242"]
    analytics = make([forwarder]).start()
    clock.advance(0.0075)
    analytics.track("gems.purchase", "player-1", {"gems": 100, "sku": "pack_s"})
    clock.advance(60)
    analytics.track("dungeon.complete", "player-2")
    assert analytics.stop()

    (request,) = endpoint.received
    assert request.path == "/import"
    assert request.query.get("strict") == ["1"]
    assert request.query.get("project_id") == project
    assert request.headers["Content-Encoding"] == "gzip"
    assert request.headers["Content-Type"] == "application/json"
    expected_auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    assert request.headers["Authorization"] == f"Basic {expected_auth}"
    first, second = request.payload()
    start_ms = epoch_ms(datetime(2025, 3, 14, 12, 0, 0, tzinfo=UTC))
    assert first["event"] == "gems.purchase"
    props = dict(first["properties"])
    insert_id = props.pop("$insert_id")
    assert props == {"gems": 100, "sku": "pack_s", "time": start_ms + 7, "distinct_id": "player-1"}
    assert second == {
        "event": "dungeon.complete",
        "properties": {
            "time": start_ms + 60_007,
            "distinct_id": "player-2",
            "$insert_id": second["properties"]["$insert_id"],
        },
    }
    for iid in (insert_id, second["properties"]["$insert_id"]):
        assert ID.match(iid) and len(iid) <= 36
    assert insert_id != second["properties"]["$insert_id"]


def test_mixpanel_requests_hold_at_most_2000_events(
    endpoint: Endpoint, make: Callable[..., Analytics]
) -> None:
    forwarder = MixpanelForwarder(project_token="t", api_host=endpoint.url)
    assert forwarder.batch_limits() == (2000, 10_000_000)
    analytics = make([forwarder])
    for i in range(4500):
        analytics.track("pvp.battle", f"u{i}")
    analytics.start()
    assert analytics.stop()
    batches = [r.payload() for r in endpoint.received]
    assert [len(b) for b in batches] == [2000, 2000, 500]
    assert [e["properties"]["distinct_id"] for b in batches for e in b] == [
        f"u{i}" for i in range(4500)
    ]


def test_mixpanel_requests_are_bounded_in_uncompressed_bytes(
    endpoint: Endpoint, make: Callable[..., Analytics]
) -> None:
    analytics = make(
        [MixpanelForwarder(project_token="t", api_host=endpoint.url, max_batch_bytes=2000)]
    )
    for i in range(40):
        analytics.track("chat.sent", "u1", {"text": "y" * 150, "i": i})
    analytics.start()
    assert analytics.stop()
    assert all(len(gzip.decompress(r.body)) <= 2000 for r in endpoint.received)
    assert [e["properties"]["i"] for r in endpoint.received for e in r.payload()] == list(range(40))


def test_mixpanel_413_splits_the_batch(endpoint: Endpoint, make: Callable[..., Analytics]) -> None:
    """More than 3 events, or the one event marked huge, is "too large": the batch is
    halved until it fits; the event too large alone is dropped and counted."""

    def limited(request: Received) -> Reply:
        events = request.payload()
        if len(events) > 3 or any(e["properties"].get("huge") for e in events):
            return json_reply(413, {"code": 413, "error": "request exceeds max limit"})
        return json_reply(200, {"code": 200, "num_records_imported": len(events)})

    endpoint.respond = limited
    analytics = make([MixpanelForwarder(project_token="t", api_host=endpoint.url)])
    for i in range(10):
        analytics.track("craft.complete", "u1", {"i": i, "huge": i == 6})
    analytics.start()
    assert analytics.stop()
    imported = [e["properties"]["i"] for r in endpoint.accepted() for e in r.payload()]
    assert imported == [0, 1, 2, 3, 4, 5, 7, 8, 9]
    stats = forwarding(analytics)
    assert (stats["delivered"], stats["dropped_rejected"], stats["retried"]) == (9, 1, 0)


def test_mixpanel_400_partial_failure_is_logged_and_not_retried(
    endpoint: Endpoint, make: Callable[..., Analytics], caplog: pytest.LogCaptureFixture
) -> None:
    def strict(request: Received) -> Reply:
        events = request.payload()
        failed = [
            {
                "index": i,
                "insert_id": e["properties"]["$insert_id"],
                "field": "properties.distinct_id",
                "message": "'properties.distinct_id' is invalid",
            }
            for i, e in enumerate(events)
            if e["properties"]["distinct_id"] == "anon"
        ]
        if not failed:
            return json_reply(200, {"code": 200, "num_records_imported": len(events)})
        return json_reply(
            400,
            {
                "code": 400,
                "error": "some data points in the request failed validation",
                "num_records_imported": len(events) - len(failed),
                "failed_records": failed,
                "status": "Bad Request",
            },
        )

    endpoint.respond = strict
    analytics = make([MixpanelForwarder(project_token="t", api_host=endpoint.url, backoff=FAST)])
    users = ["u1", "anon", "u2", "u3", "anon", "u4"]
    for user in users:
        analytics.track("market.sale", user)
    analytics.start()
    assert analytics.stop()
    (request,) = endpoint.received  # not retried
    failed_ids = [e["properties"]["$insert_id"] for e in request.payload()[1::3]]
    stats = forwarding(analytics)
    assert (stats["delivered"], stats["dropped_rejected"], stats["retried"]) == (4, 2, 0)
    (message,) = [r.getMessage() for r in caplog.records if "mixpanel refused" in r.getMessage()]
    assert "2 of 6" in message and "market.sale" in message
    assert all(iid in message for iid in failed_ids)


def test_mixpanel_5xx_and_429_are_retried_with_the_same_insert_ids(
    endpoint: Endpoint, make: Callable[..., Analytics]
) -> None:
    script = iter([json_reply(503, {}), json_reply(429, {}, **{"Retry-After": "0"})])
    endpoint.respond = lambda request: next(script, json_reply(200, {"code": 200}))
    analytics = make([MixpanelForwarder(project_token="t", api_host=endpoint.url, backoff=FAST)])
    for i in range(5):
        analytics.track("raid.complete", f"u{i}")
    analytics.start()
    assert analytics.stop()
    assert len(endpoint.received) == 3
    bodies = [r.payload() for r in endpoint.received]
    assert bodies[0] == bodies[1] == bodies[2]  # same batch, same $insert_id, every time
    assert forwarding(analytics)["retried"] == 2


# -- the interface, for other destinations --------------------------------------------------------


class FlakyListForwarder(Forwarder):
    """A forwarder that is not HTTP: appends to a list, failing twice first."""

    name = "list"
    backoff = FAST

    def __init__(self) -> None:
        self.got: list[dict[str, Any]] = []
        self.calls = 0

    def batch_limits(self) -> tuple[int, int]:
        return 3, 10_000

    def encode(self, event: ForwardedEvent) -> bytes:
        return json.dumps([event.id, event.event, event.user_id, dict(event.data)]).encode()

    def send(self, batch: Sequence[EncodedEvent], timeout: object) -> Delivery:
        self.calls += 1
        if self.calls <= 2:
            raise OSError("disk full")  # any exception: retried, never lost
        self.got.extend(json.loads(e.body) for e in batch)
        return Delivery.delivered()


def test_a_custom_forwarder_gets_the_shared_queue_retries_and_counts(
    make: Callable[..., Analytics], caplog: pytest.LogCaptureFixture
) -> None:
    forwarder = FlakyListForwarder()
    analytics = make([forwarder])
    for i in range(7):
        analytics.track("quest.done", "u1", {"i": i})
    analytics.start()
    assert analytics.stop()
    assert [item[3]["i"] for item in forwarder.got] == list(range(7))
    assert forwarder.calls == 5  # 2 failures, then batches of 3, 3, 1
    stats = forwarding(analytics)["forwarders"]["list"]
    assert (stats["delivered"], stats["retried"], stats["last_error"]) == (
        7,
        2,
        "OSError: disk full",
    )


def test_stop_twice_and_restart(endpoint: Endpoint, make: Callable[..., Analytics]) -> None:
    analytics = make([WebhookForwarder(endpoint.url)]).start()
    analytics.track("a", "u1")
    assert analytics.stop()
    assert analytics.stop()
    analytics.start()
    analytics.track("b", "u1")
    assert analytics.stop()
    assert [r.payload()["event"] for r in endpoint.received] == ["a", "b"]


# -- fork --------------------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_fork_child_forwards_only_its_own_events(
    endpoint: Endpoint, make: Callable[..., Analytics]
) -> None:
    """A forked worker starts with an empty queue, a new id origin and its own thread;
    the parent's queued events are delivered once, by the parent."""
    release = threading.Event()

    def parent_blocked(request: Received) -> Reply:
        if request.payload()["userId"] == "parent":
            release.wait(30)
        return Reply()

    endpoint.respond = parent_blocked
    parent = make([WebhookForwarder(endpoint.url)]).start()
    for i in range(3):
        parent.track("before.fork", "parent", {"i": i})
    assert endpoint.entered.wait(10)  # one in flight, two queued behind it
    pid = os.fork()
    if pid == 0:  # the child: report through the exit code only
        code = 1
        try:
            if forwarding(parent)["queued"] == 0:
                code = 2
                for i in range(3):
                    parent.track("in.child", "child", {"i": i})
                # Delivered by the child's own thread, before stop() is even called.
                deadline = time.monotonic() + 10
                while forwarding(parent)["delivered"] < 3 and time.monotonic() < deadline:
                    time.sleep(0.005)
                if forwarding(parent)["delivered"] == 3 and parent.stop():
                    code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "child saw the parent's queue or failed"
    assert forwarding(parent)["queued"] == 3
    release.set()
    assert parent.stop()
    seen = [(r.payload()["userId"], r.payload()["data"]["i"]) for r in endpoint.accepted()]
    assert sorted(seen) == [("child", i) for i in range(3)] + [("parent", i) for i in range(3)]
    origins = {
        r.payload()["userId"]: r.headers["Idempotency-Key"].split("-")[0]
        for r in endpoint.accepted()
    }
    assert origins["child"] != origins["parent"]


def test_an_erase_reaches_the_webhook_as_user_erased_after_the_players_events(
    endpoint: Endpoint, make: Callable[..., Analytics], caplog: pytest.LogCaptureFixture
) -> None:
    """The webhook's ``on_erase`` queues a ``user.erased`` event behind the player's
    events, through the same outbox (retries, idempotency key); Mixpanel, which keeps
    data we cannot delete, sends nothing and warns without naming the player."""
    mixpanel = MixpanelForwarder(project_token="t", api_host=endpoint.url + "/mp")
    analytics = make([WebhookForwarder(endpoint.url + "/hook"), mixpanel]).start()
    analytics.track("credits.earn", "u-erase-me", {"amount": 1})
    with caplog.at_level(logging.WARNING, logger="gso_analytics.forwarding"):
        analytics.erase_user("u-erase-me")
    hook = lambda: [r for r in endpoint.accepted() if r.path == "/hook"]  # noqa: E731
    wait_until(lambda: len(hook()) == 2, what="the event and the erase")
    bodies = [json.loads(r.body) for r in hook()]
    assert [(b["event"], b["userId"], b["data"]) for b in bodies] == [
        ("credits.earn", "u-erase-me", {"amount": 1}),
        ("user.erased", "u-erase-me", {}),
    ]
    assert "file a deletion request with Mixpanel" in caplog.text
    assert "u-erase-me" not in caplog.text
