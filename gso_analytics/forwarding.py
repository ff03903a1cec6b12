"""Event forwarding: the seed's webhook and Mixpanel, off the request thread.

The seed POSTed every tracked event to ``ANALYTICS_WEBHOOK_URL`` from the request
path, with no timeout, retry or bound. Here a caller's whole cost is
:meth:`ForwardingHub.submit`: one tuple and one ``deque.append`` per forwarder, no
lock held, no I/O, no formatting. Each forwarder has its own bounded queue and
its own thread (an :class:`_Outbox`), so a slow or dead endpoint delays neither
``track()``, nor the store flush, nor the other forwarders.

What is shared by every forwarder lives once, in the outbox: batching by count and
bytes, retries with exponential backoff and jitter (``Retry-After`` honoured),
splitting a batch the endpoint found too large, the bound on ``stop()``, the counts
in ``stats()`` and fork safety. A forwarder only says how one event looks on the
wire (:meth:`Forwarder.encode`) and how one batch is sent and what the answer means
(:meth:`Forwarder.send` returning a :class:`Delivery`).

Delivery is at least once: a request whose answer was lost is sent again. Every
event carries a stable id (``<process origin>-<sequence>``), sent as the webhook's
``Idempotency-Key`` and as Mixpanel's ``$insert_id``, so a receiver can drop the
duplicates.
"""

from __future__ import annotations

import abc
import enum
import gzip
import hashlib
import hmac
import itertools
import json
import logging
import os
import random
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import attrs
import requests

from .clock import from_ms, iso_from_ms
from .errors import ConfigurationError

log = logging.getLogger("gso_analytics.forwarding")

WEBHOOK_URL_ENV = "ANALYTICS_WEBHOOK_URL"

#: An idle outbox thread re-checks its queue this often even without a wake-up: a
#: safety net only, submit() wakes it (see :meth:`ForwardingHub.submit`).
_IDLE_WAIT_S = 1.0
#: Below this much time left before stop()'s deadline, another attempt is pointless.
_MIN_ATTEMPT_S = 0.05

Timeout = float | tuple[float, float]


# -- what forwarders see and say -----------------------------------------------------------


@attrs.define(slots=True)
class ForwardedEvent:
    """One tracked event, as a forwarder sees it (read-only by convention: not frozen,
    because a frozen attrs class costs several times more to build, for every event).

    ``id`` is stable for the event's whole life (every retry, every forwarder):
    ``<origin>-<n>`` with a random per-process origin, at most 36 characters of
    ``[0-9a-f-]`` (Mixpanel's ``$insert_id`` rules). ``time_ms`` is the time of the
    ``track()`` call from the library's clock, in milliseconds since the epoch.
    """

    id: str
    time_ms: int
    event: str
    user_id: str
    data: Mapping[str, Any]

    @property
    def ts(self) -> datetime:
        """``time_ms`` as an aware UTC datetime."""
        return from_ms(self.time_ms)

    @property
    def iso_ts(self) -> str:
        """``2026-11-25T16:01:30.123Z``, as the seed's ``Date.toISOString()``."""
        return iso_from_ms(self.time_ms)


@attrs.define(slots=True)
class EncodedEvent:
    """An event and its wire form; ``len(body)`` counts toward a batch's byte bound."""

    event: ForwardedEvent
    body: bytes


class Outcome(enum.Enum):
    DELIVERED = "delivered"  # accepted (maybe with some events rejected: Delivery.rejected)
    RETRY = "retry"  # transient: send the same batch again later
    REJECTED = "rejected"  # the endpoint refused the batch for good: drop and count
    TOO_LARGE = "too_large"  # split the batch in halves and send each


@attrs.frozen
class Delivery:
    """What one attempt to send a batch achieved; the outbox acts on it."""

    outcome: Outcome
    reason: str = ""
    #: With DELIVERED: positions in the batch of events the endpoint refused.
    rejected: Sequence[int] = ()
    #: With RETRY: the endpoint's ``Retry-After``, in seconds.
    retry_after: float | None = None

    @classmethod
    def delivered(cls, rejected: Sequence[int] = (), reason: str = "") -> Delivery:
        return cls(Outcome.DELIVERED, reason, rejected=tuple(rejected))

    @classmethod
    def retry(cls, reason: str, retry_after: float | None = None) -> Delivery:
        return cls(Outcome.RETRY, reason, retry_after=retry_after)

    @classmethod
    def refused(cls, reason: str) -> Delivery:
        return cls(Outcome.REJECTED, reason)

    @classmethod
    def too_large(cls, reason: str) -> Delivery:
        return cls(Outcome.TOO_LARGE, reason)


@attrs.frozen
class Backoff:
    """Exponential backoff with jitter between attempts of one batch.

    The n-th retry waits ``min(maximum, initial * 2**(n-1))`` scaled by a random
    factor in [0.5, 1] so many processes behind one recovering endpoint do not
    retry in lockstep. A ``Retry-After`` answer is honoured instead, up to
    ``max_retry_after`` (a misconfigured endpoint must not park the queue for a day).
    """

    initial: float = 0.5
    maximum: float = 30.0
    max_retry_after: float = 300.0

    def delay(self, failures_in_row: int, retry_after: float | None = None) -> float:
        if retry_after is not None:
            return min(max(0.0, retry_after), self.max_retry_after)
        ceiling = min(self.maximum, self.initial * 2 ** max(0, failures_in_row - 1))
        return ceiling * random.uniform(0.5, 1.0)


# -- the interface ------------------------------------------------------------------------


class Forwarder(abc.ABC):
    """Sends tracked events somewhere else; runs on its own thread, never the caller's.

    Subclasses implement :meth:`encode` and :meth:`send`; the hub owns the queue, the
    thread, batching, retries and counts. ``send`` may raise: any exception counts as
    a transient failure and the batch is retried (a bug then shows in the log and in
    ``stats()["forwarding"]``, it does not lose the events).
    """

    #: The name in logs and in ``stats()["forwarding"]["forwarders"]``.
    name: str = "forwarder"
    #: Events waiting in this forwarder's queue; beyond it the oldest is dropped.
    max_queue: int = 10_000
    backoff: Backoff = Backoff()
    #: Per request (connect, read) seconds; clipped to what is left at stop().
    timeout: Timeout = (3.05, 10.0)

    def batch_limits(self) -> tuple[int, int]:
        """(events, bytes) at most in one :meth:`send`; one oversized event goes alone."""
        return 1, 1_000_000

    @abc.abstractmethod
    def encode(self, event: ForwardedEvent) -> bytes:
        """The event's wire form. Raising ``ValueError``/``TypeError`` drops it (counted)."""

    @abc.abstractmethod
    def send(self, batch: Sequence[EncodedEvent], timeout: Timeout) -> Delivery:
        """Send one batch within ``timeout`` and say what happened."""

    def after_fork_in_child(self) -> None:
        """Forget connections inherited from the parent (they are the parent's sockets)."""
        return  # nothing to forget by default

    def close(self) -> None:
        """Release connections; the forwarder stays usable (they reopen on demand)."""
        return  # nothing to release by default


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP-date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


# ensure_ascii=False: UTF-8 on the wire, as JavaScript's JSON.stringify in the seed. One
# encoder for all: json.dumps() with options builds a new one per call.
_json_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


def _json_bytes(value: Any) -> bytes:
    return _json_encode(value).encode()


def _check_count(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{attribute.name} must be a positive integer, got {value!r}")


def _check_timeout(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    parts = value if isinstance(value, tuple) else (value,)
    if len(parts) not in (1, 2) or any(
        isinstance(p, bool) or not isinstance(p, int | float) or p <= 0 for p in parts
    ):
        raise ConfigurationError(
            f"timeout must be positive seconds or a (connect, read) pair, got {value!r}"
        )


def _check_http_url(url: str, what: str) -> str:
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigurationError(f"{what} must be an http(s) URL, got {url!r}")
    return url


# -- HTTP forwarders ------------------------------------------------------------------------


@attrs.define(kw_only=True, eq=False)
class HttpForwarder(Forwarder):
    """What both HTTP forwarders share: a ``requests.Session`` reused across requests
    (keep-alive), the same timeouts, and the same reading of status codes.

    2xx delivered; 413 split; 408, 429 and 5xx retried (``Retry-After`` honoured);
    any other status (3xx included: redirects are not followed, a POST must reach
    the configured URL) refused for good. Connection errors and timeouts raise and
    are retried by the outbox.
    """

    timeout: Timeout = attrs.field(default=(3.05, 10.0), validator=_check_timeout)
    max_queue: int = attrs.field(default=10_000, validator=_check_count)
    backoff: Backoff = attrs.field(factory=Backoff)
    headers: Mapping[str, str] = attrs.field(factory=dict, repr=False)  # may hold credentials
    _session: requests.Session | None = attrs.field(default=None, init=False, repr=False)

    def session(self) -> requests.Session:
        """The forwarder thread's session, created on first use (and after a fork)."""
        if self._session is None:
            # requests' default adapter does not retry: the outbox's loop decides.
            self._session = requests.Session()
        return self._session

    def post(
        self, url: str, body: bytes, headers: Mapping[str, str], timeout: Timeout, **kw: Any
    ) -> requests.Response:
        return self.session().post(
            url,
            data=body,
            headers={**self.headers, **headers},
            timeout=timeout,
            allow_redirects=False,
            **kw,
        )

    def classify(self, response: requests.Response, batch: Sequence[EncodedEvent]) -> Delivery:
        status = response.status_code
        if 200 <= status < 300:
            return Delivery.delivered()
        reason = f"HTTP {status} {_snippet(response)}".rstrip()
        if status == 413:
            return Delivery.too_large(reason)
        if status in (408, 429) or status >= 500:
            return Delivery.retry(reason, parse_retry_after(response.headers.get("Retry-After")))
        return Delivery.refused(reason)

    def after_fork_in_child(self) -> None:
        self._session = None  # the parent's pooled sockets are not ours to use or close

    def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            session.close()


def _snippet(response: requests.Response, limit: int = 200) -> str:
    try:
        text = response.text
    except Exception:  # undecodable body: the status says enough
        return ""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


def _batch_key(batch: Sequence[EncodedEvent]) -> str:
    """A batch's Idempotency-Key: the same events give the same key on every retry."""
    digest = hashlib.sha256("\n".join(e.event.id for e in batch).encode()).hexdigest()
    return f"batch-{digest[:32]}"


@attrs.define(kw_only=True, eq=False)
class WebhookForwarder(HttpForwarder):
    """POSTs events to ``url`` as the seed did, made reliable.

    By default one POST per event, body ``{"event", "userId", "data", "ts"}`` exactly
    as the seed's ``_forwardExternal`` sent it (``data`` is ``{}`` when none was
    given; ``ts`` ISO-8601 UTC with milliseconds and ``Z``), plus an
    ``Idempotency-Key: <event id>`` header. With ``batch=True`` a POST carries a JSON
    array of up to ``max_batch_events`` such objects (each with its ``"id"`` too) and
    ``max_batch_bytes``, keyed ``batch-<sha256 of the ids>``.

    With ``secret`` set, ``signature_header`` carries
    ``sha256=<hex HMAC-SHA256(secret, raw body bytes)>``.
    """

    url: str = attrs.field(kw_only=False)
    batch: bool = False
    max_batch_events: int = attrs.field(default=100, validator=_check_count)
    max_batch_bytes: int = attrs.field(default=1_000_000, validator=_check_count)
    secret: str | bytes | None = attrs.field(default=None, repr=False)
    signature_header: str = "X-GSO-Signature"
    name: str = "webhook"

    def __attrs_post_init__(self) -> None:
        _check_http_url(self.url, "WebhookForwarder url")
        if isinstance(self.secret, str):
            self.secret = self.secret.encode()

    def batch_limits(self) -> tuple[int, int]:
        if not self.batch:
            return 1, 2**62
        return self.max_batch_events, self.max_batch_bytes

    def encode(self, event: ForwardedEvent) -> bytes:
        doc: dict[str, Any] = {
            "event": event.event,
            "userId": event.user_id,
            "data": event.data,
            "ts": event.iso_ts,
        }
        if self.batch:
            doc["id"] = event.id
        return _json_bytes(doc)

    def send(self, batch: Sequence[EncodedEvent], timeout: Timeout) -> Delivery:
        if self.batch:
            body = b"[" + b",".join(e.body for e in batch) + b"]"
            key = _batch_key(batch)
        else:
            (only,) = batch
            body, key = only.body, only.event.id
        headers = {"Content-Type": "application/json", "Idempotency-Key": key}
        if self.secret:
            assert isinstance(self.secret, bytes)
            digest = hmac.new(self.secret, body, hashlib.sha256).hexdigest()
            headers[self.signature_header] = f"sha256={digest}"
        return self.classify(self.post(self.url, body, headers, timeout), batch)


#: Mixpanel's documented limits for one /import request (uncompressed body).
MIXPANEL_MAX_EVENTS = 2000
MIXPANEL_MAX_BYTES = 10_000_000


@attrs.define(kw_only=True, eq=False)
class MixpanelForwarder(HttpForwarder):
    """Imports events into Mixpanel through ``POST {api_host}/import?strict=1``.

    Authenticate with a ``project_token`` (HTTP basic, token as user, empty password)
    or a service account (``service_account_user``, ``service_account_secret`` and
    ``project_id``). Each event becomes ``{"event": name, "properties": {...data,
    "time": <ms>, "distinct_id": <user id>, "$insert_id": <event id>}}`` (the three
    library keys win over same-named ``data`` keys); ``$insert_id`` makes a retried
    import a no-op. Requests carry at most 2000 events and 10 MB of uncompressed JSON,
    gzipped. A 400 is Mixpanel's partial success: the events it lists in
    ``failed_records`` are logged and counted as rejected, the rest were imported, and
    nothing is retried. A 413 splits the batch. ``api_host`` is configurable for EU
    or India residency (``https://api-eu.mixpanel.com``) and for tests.
    """

    project_token: str | None = attrs.field(default=None, repr=False)
    service_account_user: str | None = None
    service_account_secret: str | None = attrs.field(default=None, repr=False)
    project_id: str | int | None = None
    api_host: str = "https://api.mixpanel.com"
    max_batch_events: int = attrs.field(default=MIXPANEL_MAX_EVENTS, validator=_check_count)
    max_batch_bytes: int = attrs.field(default=MIXPANEL_MAX_BYTES, validator=_check_count)
    gzip_level: int = 6
    name: str = "mixpanel"

    def __attrs_post_init__(self) -> None:
        _check_http_url(self.api_host, "MixpanelForwarder api_host")
        service = (self.service_account_user, self.service_account_secret, self.project_id)
        if self.project_token and any(v is not None for v in service):
            raise ConfigurationError("MixpanelForwarder: give a project_token or a service account")
        if not self.project_token and any(v is None or v == "" for v in service):
            raise ConfigurationError(
                "MixpanelForwarder needs project_token=..., or service_account_user=...,"
                " service_account_secret=... and project_id=..."
            )
        if self.max_batch_events > MIXPANEL_MAX_EVENTS:
            raise ConfigurationError(f"Mixpanel accepts at most {MIXPANEL_MAX_EVENTS} events")
        if self.max_batch_bytes > MIXPANEL_MAX_BYTES:
            raise ConfigurationError(f"Mixpanel accepts at most {MIXPANEL_MAX_BYTES} bytes")

    def batch_limits(self) -> tuple[int, int]:
        return self.max_batch_events, self.max_batch_bytes

    def encode(self, event: ForwardedEvent) -> bytes:
        properties = dict(event.data)
        properties["time"] = event.time_ms
        properties["distinct_id"] = event.user_id
        properties["$insert_id"] = event.id
        return _json_bytes({"event": event.event, "properties": properties})

    def send(self, batch: Sequence[EncodedEvent], timeout: Timeout) -> Delivery:
        body = b"[" + b",".join(e.body for e in batch) + b"]"
        params: dict[str, Any] = {"strict": "1"}
        if self.project_token:
            auth = (self.project_token, "")
        else:
            auth = (self.service_account_user, self.service_account_secret)
            params["project_id"] = self.project_id
        response = self.post(
            self.api_host.rstrip("/") + "/import",
            gzip.compress(body, compresslevel=self.gzip_level),
            {"Content-Type": "application/json", "Content-Encoding": "gzip"},
            timeout,
            params=params,
            auth=auth,
        )
        if response.status_code == 400:
            return self._partial(response, batch)
        return self.classify(response, batch)

    def _partial(self, response: requests.Response, batch: Sequence[EncodedEvent]) -> Delivery:
        """A 400 from /import: the events in ``failed_records`` were refused, the rest
        imported. Retrying would only be refused again, so nothing is retried."""
        try:
            failed = response.json().get("failed_records") or []
            rejected = sorted(
                {int(r["index"]) for r in failed if 0 <= int(r["index"]) < len(batch)}
            )
        except (ValueError, TypeError, KeyError, AttributeError):
            return Delivery.refused(f"HTTP 400 {_snippet(response)}".rstrip())
        if not rejected:  # a 400 naming no event: the whole request was bad
            return Delivery.refused(f"HTTP 400 {_snippet(response)}".rstrip())
        details = []
        for record in failed[:10]:
            index = int(record["index"])
            event = batch[index].event if 0 <= index < len(batch) else None
            insert_id = record.get("insert_id") or (event.id if event else "?")
            details.append(
                f"#{index} {event.event if event else '?'} $insert_id={insert_id}"
                f" {record.get('field', '')}: {record.get('message', '')}"
            )
        more = f" (and {len(failed) - 10} more)" if len(failed) > 10 else ""
        log.warning(
            "gso_analytics: mixpanel refused %d of %d events: %s%s",
            len(rejected),
            len(batch),
            "; ".join(details),
            more,
        )
        return Delivery.delivered(rejected, reason="HTTP 400 partial")


def default_forwarders(environ: Mapping[str, str] | None = None) -> list[Forwarder]:
    """The seed's behaviour: a webhook when ``ANALYTICS_WEBHOOK_URL`` is set and non-empty."""
    url = (os.environ if environ is None else environ).get(WEBHOOK_URL_ENV, "").strip()
    if not url:
        return []
    try:
        return [WebhookForwarder(url)]
    except ConfigurationError as exc:
        raise ConfigurationError(f"{WEBHOOK_URL_ENV}: {exc}") from exc


# -- the hub and its outboxes ------------------------------------------------------------------

#: What submit() queues: (sequence number, ms, event, user id, data snapshot or None).
_Item = tuple[int, int, str, str, Any]

_COUNTS = ("delivered", "retried", "dropped_overflow", "dropped_rejected", "undelivered_at_stop")


class _Outbox:
    """One forwarder's bounded queue, thread and counts.

    The queue drops the oldest: when it holds ``max_queue`` events, a new one pushes
    out the oldest 1% (counted in ``dropped_overflow``). Dropping the oldest keeps the
    newest window when an endpoint is down for long, and the caller never waits.
    """

    def __init__(self, forwarder: Forwarder, hub: ForwardingHub) -> None:
        self.forwarder = forwarder
        self.hub = hub
        self.capacity = forwarder.max_queue
        self.room = max(1, self.capacity // 100)  # what one overflow() frees
        self.reset()

    def reset(self) -> None:
        """Empty, with new locks (also in a forked child, where the parent's thread
        may have held them and its events are the parent's to deliver)."""
        self.queue: deque[_Item] = deque()
        self.lock = threading.Lock()
        self.wake = threading.Event()  # new events (set by submit only when idle)
        self.stop_event = threading.Event()  # cuts a backoff short at stop()
        self.waiting = False
        self.stopping = False
        self.deadline = float("inf")
        self.thread: threading.Thread | None = None
        self.token: object | None = None  # the running thread's; None when none may count
        self.carry: EncodedEvent | None = None  # taken but did not fit the last batch
        self.work: deque[list[EncodedEvent]] = deque()  # the batch in flight (and its halves)
        self.in_flight = 0  # events in ``work``, kept as a number for stats()
        self.delivered = self.retried = self.dropped_overflow = 0
        self.dropped_rejected = self.undelivered_at_stop = 0
        self.last_error: str | None = None
        self._overflow_log_at = 1  # log when the drop count reaches it, then double it
        self._refusals = 0

    # -- caller threads -----------------------------------------------------------------

    def overflow(self) -> None:
        """The queue is full: push out the oldest 1% (at least one), so the next calls
        take the fast path again; the lock keeps the count exact when callers race."""
        with self.lock:
            queue = self.queue
            for _ in range(len(queue) - self.capacity + self.room):
                try:
                    queue.popleft()
                except IndexError:  # the thread took the rest meanwhile
                    return
                self.dropped_overflow += 1

    # -- lifecycle (Analytics' thread) --------------------------------------------------------

    def start(self, draining: bool = False) -> None:
        if self.thread is not None and self.thread.is_alive() and not self.stopping:
            return
        self.stopping = draining
        if not draining:
            self.deadline = float("inf")
            self.stop_event.clear()
        self.token = token = object()
        self.thread = threading.Thread(
            target=self._run,
            args=(token,),
            name=f"gso-analytics-forward-{self.forwarder.name}",
            daemon=True,
        )
        self.thread.start()

    def begin_stop(self, deadline: float) -> None:
        self.deadline = deadline
        if self.thread is None or not self.thread.is_alive():
            if self.queue or self.carry is not None:
                self.start(draining=True)
            return
        self.stopping = True
        self.stop_event.set()
        self.wake.set()

    def finish_stop(self) -> None:
        """After the join: what a thread stuck past the deadline holds is undelivered."""
        thread = self.thread
        if thread is not None and thread.is_alive():
            with self.lock:
                self.token = None  # the stuck thread may no longer count or take
                self._give_up("stop() deadline passed with a request in flight")
        self.thread = None

    # -- the forwarder thread ---------------------------------------------------------------

    def _run(self, token: object) -> None:
        try:
            while self.token is token:
                self._log_overflow()
                if self.stopping and time.monotonic() + _MIN_ATTEMPT_S >= self.deadline:
                    break
                if self._take(token):
                    if not self._deliver(token):
                        break  # gave up at stop()'s deadline, or stop() gave up on us
                    continue
                if self.stopping:
                    break
                self.waiting = True
                if not self.queue and not self.stopping:
                    self.wake.wait(_IDLE_WAIT_S)
                self.waiting = False
                self.wake.clear()
        except Exception:  # a bug must not kill forwarding silently
            log.exception("gso_analytics: %s forwarder thread failed", self.forwarder.name)
        finally:
            with self.lock:
                current = self.token is token
                if current:
                    self._log_overflow()
                    if self.stopping:
                        self._give_up("stop() deadline passed")
            if current:  # a thread stop() gave up on leaves the session to its successor
                self.forwarder.close()

    def _give_up(self, why: str) -> None:
        """Count and log everything still held as undelivered (caller holds the lock)."""
        held = len(self.queue) + self.in_flight + (self.carry is not None)
        self.queue.clear()
        self.work = deque()
        self.in_flight = 0
        self.carry = None
        if held:
            self.undelivered_at_stop += held
            log.error(
                "gso_analytics: %s forwarder: %d events not delivered (%s; last error: %s)",
                self.forwarder.name,
                held,
                why,
                self.last_error,
            )

    def _log_overflow(self) -> None:
        # Logged here, not in submit(): no logging I/O on the caller's thread. At 1, 2,
        # 4, 8... drops: loud, never a flood.
        dropped = self.dropped_overflow
        if dropped >= self._overflow_log_at:
            self._overflow_log_at = dropped * 2
            log.error(
                "gso_analytics: %s forwarder queue full (max_queue=%d); %d oldest events"
                " dropped so far",
                self.forwarder.name,
                self.capacity,
                dropped,
            )

    def _take(self, token: object) -> bool:
        """Put the next batch in ``work``: up to the forwarder's bounds, in queue order."""
        max_events, max_bytes = self.forwarder.batch_limits()
        batch: list[EncodedEvent] = []
        size = 2  # the brackets of a JSON array
        while len(batch) < max_events and self.token is token:
            encoded, self.carry = self.carry, None
            if encoded is None:
                try:
                    item = self.queue.popleft()
                except IndexError:
                    break
                encoded = self._encode(item)
                if encoded is None:
                    continue
            if batch and size + len(encoded.body) + 1 > max_bytes:
                self.carry = encoded
                break
            batch.append(encoded)
            size += len(encoded.body) + 1
        if batch:
            self.work = deque([batch])
            self.in_flight = len(batch)
        return bool(batch)

    def _encode(self, item: _Item) -> EncodedEvent | None:
        seq, ms, name, user_id, data = item
        event = ForwardedEvent(f"{self.hub.origin}-{seq}", ms, name, user_id, {})
        try:
            if data is not None:
                event.data = json.loads(data) if isinstance(data, str) else data
            return EncodedEvent(event, self.forwarder.encode(event))
        except (TypeError, ValueError, RuntimeError) as exc:
            # Validated at track(): only a forwarder that cannot represent it gets here.
            with self.lock:
                self.dropped_rejected += 1
            log.warning(
                "gso_analytics: %s forwarder could not encode %s %r: %s",
                self.forwarder.name,
                event.id,
                name,
                exc,
            )
            return None

    def _timeout(self) -> Timeout:
        timeout = self.forwarder.timeout
        if not self.stopping:
            return timeout
        left = max(_MIN_ATTEMPT_S, self.deadline - time.monotonic())
        if isinstance(timeout, tuple):
            return (min(timeout[0], left), min(timeout[1], left))
        return min(timeout, left)

    def _deliver(self, token: object) -> bool:
        """Send the batch in ``self.work`` (split on 413) until it is delivered or
        refused (True), or stop()'s deadline leaves no time for another attempt."""
        name = self.forwarder.name
        work = self.work
        failures = 0
        while work:
            current = work[0]
            try:
                result = self.forwarder.send(current, self._timeout())
            except requests.RequestException as exc:
                result = Delivery.retry(f"{type(exc).__name__}: {exc}")
            except Exception as exc:
                log.exception("gso_analytics: %s forwarder: send() raised", name)
                result = Delivery.retry(f"{type(exc).__name__}: {exc}")
            if not self._settle(work, result, token):
                return False  # stop() gave up on this thread and counted the batch
            if result.outcome is not Outcome.RETRY:
                if failures:
                    log.info("gso_analytics: %s forwarder: delivering again", name)
                failures = 0
                continue
            failures += 1
            delay = self.forwarder.backoff.delay(failures, result.retry_after)
            if failures & (failures - 1) == 0:  # 1, 2, 4, 8...: loud, never a flood
                log.warning(
                    "gso_analytics: %s forwarder: %s; %d events kept, attempt %d in %.2fs",
                    name,
                    result.reason,
                    len(current),
                    failures + 1,
                    delay,
                )
            if not self._pause(delay, from_endpoint=result.retry_after is not None):
                return False  # _run's exit counts what is left as undelivered
            with self.lock:
                if self.token is not token:
                    return False
                self.retried += 1
        return True

    def _settle(self, work: deque[list[EncodedEvent]], result: Delivery, token: object) -> bool:
        """Count one attempt's outcome; False when this thread may no longer count."""
        current = work[0]
        refused: Sequence[EncodedEvent] = ()
        with self.lock:
            if self.token is not token:
                return False
            outcome = result.outcome
            if outcome is Outcome.RETRY:
                self.last_error = result.reason
                return True
            work.popleft()
            if outcome is Outcome.DELIVERED:
                positions = set(result.rejected)
                self.delivered += len(current) - len(positions)
                self.dropped_rejected += len(positions)
            elif outcome is Outcome.TOO_LARGE and len(current) > 1:
                half = len(current) // 2
                work.appendleft(current[half:])
                work.appendleft(current[:half])
            else:  # refused, or one event too large to split
                refused = current
                self.dropped_rejected += len(current)
                self.last_error = result.reason
                self._refusals += 1
            self.in_flight = sum(len(b) for b in work)
            refusals = self._refusals
        if refused and refusals & (refusals - 1) == 0:
            log.warning(
                "gso_analytics: %s forwarder: endpoint refused %d events (%s), dropped;"
                " %d refused so far, first %s %r",
                self.forwarder.name,
                len(refused),
                result.reason,
                self.dropped_rejected,
                refused[0].event.id,
                refused[0].event.event,
            )
        elif outcome is Outcome.TOO_LARGE and not refused:
            log.info(
                "gso_analytics: %s forwarder: %s; splitting %d events in two",
                self.forwarder.name,
                result.reason,
                len(current),
            )
        return True

    def _pause(self, delay: float, from_endpoint: bool) -> bool:
        """Wait before a retry; False when stop()'s deadline leaves no room for one.

        Before stop() the wait is cut short by stop(), which wants the queue drained.
        While stop() drains, our own backoff shrinks to leave room for attempts, but
        an endpoint's ``Retry-After`` is respected: ending past the deadline, it
        means giving up now rather than hammering.
        """
        started = time.monotonic()
        if not self.stopping and not self.stop_event.wait(delay):
            return True
        now = time.monotonic()
        rest = max(0.0, delay - (now - started))
        left = self.deadline - now
        if not from_endpoint:
            rest = min(rest, left / 4)
        if rest + _MIN_ATTEMPT_S > left:
            return False
        time.sleep(rest)
        return True

    def stats(self) -> dict[str, Any]:
        held = len(self.queue) + self.in_flight + (self.carry is not None)
        counts = {name: getattr(self, name) for name in _COUNTS}
        return {"queued": held, **counts, "last_error": self.last_error}


class ForwardingHub:
    """Fans tracked events out to every forwarder's outbox; owned by ``Analytics``.

    ``submit`` runs on the caller's thread inside ``track()`` and must stay far
    below a microsecond: no lock (``deque.append`` is atomic under the GIL), no I/O,
    no formatting. Each event gets its id from a per-process random ``origin`` and an
    ``itertools.count`` (atomic too); the id string is only formatted on the
    forwarder thread.
    """

    def __init__(self, forwarders: Sequence[Forwarder], *, stop_timeout: float = 10.0) -> None:
        if stop_timeout < 0:
            raise ConfigurationError(f"forward_stop_timeout must be >= 0, got {stop_timeout!r}")
        for forwarder in forwarders:
            if not isinstance(forwarder, Forwarder):
                raise ConfigurationError(f"not a Forwarder: {forwarder!r}")
        names = [f.name for f in forwarders]
        self.forwarders = list(forwarders)
        self.stop_timeout = stop_timeout
        self._names = [
            name if names.count(name) == 1 else f"{name}-{i}" for i, name in enumerate(names)
        ]
        self._outboxes = tuple(_Outbox(f, self) for f in self.forwarders)
        self._new_origin()

    def _new_origin(self) -> None:
        self.origin = secrets.token_hex(8)
        self._seq = itertools.count()
        if len(self._outboxes) == 1:
            self.submit = self._submit_to_one(self._outboxes[0])  # type: ignore[method-assign]

    def _submit_to_one(self, box: _Outbox) -> Callable[[int, str, str, Any], None]:
        """:meth:`submit` for the common case of one forwarder, as a closure over
        locals: no loop and no attribute lookups, about a third cheaper."""
        next_seq = self._seq.__next__
        queue = box.queue
        append = queue.append
        capacity = box.capacity

        def submit(ms: int, event: str, user_id: str, data: Any) -> None:
            if len(queue) >= capacity:
                box.overflow()
            append((next_seq(), ms, event, user_id, data))
            if box.waiting:
                box.waiting = False
                box.wake.set()

        return submit

    # -- the hot path ---------------------------------------------------------------------

    def submit(
        self, ms: int, event: str, user_id: str, data: Mapping[str, Any] | str | None
    ) -> None:
        """Queue one validated event for every forwarder; never blocks.

        ``ms`` is the call's time (milliseconds since the epoch, from the library's
        clock). ``data`` must be a snapshot nobody changes afterwards: what
        ``track()`` hands the buffer is one (a private copy of a flat dict of scalars,
        or the JSON text of anything else), so it is shared here, not copied again;
        the forwarder thread only reads it.
        """
        item = (next(self._seq), ms, event, user_id, data)
        for box in self._outboxes:
            queue = box.queue
            if len(queue) >= box.capacity:
                box.overflow()
            queue.append(item)
            if box.waiting:  # the thread sleeps: wake it, once (the flag is the thread's
                box.waiting = False  # to set again; clearing it here spares later callers)
                box.wake.set()

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        for box in self._outboxes:
            box.start()

    def stop(self, timeout: float | None = None) -> bool:
        """Drain every queue, all within ``timeout`` (default ``stop_timeout``) in total.

        Returns True when every event was delivered or refused by its endpoint;
        what is left is counted in ``undelivered_at_stop`` and logged.
        """
        deadline = time.monotonic() + (self.stop_timeout if timeout is None else timeout)
        undelivered = [box.undelivered_at_stop for box in self._outboxes]
        for box in self._outboxes:
            box.begin_stop(deadline)
        for box in self._outboxes:
            if box.thread is not None:
                box.thread.join(max(0.0, deadline - time.monotonic()))
            box.finish_stop()
        return all(
            box.undelivered_at_stop == before and box.stats()["queued"] == 0
            for box, before in zip(self._outboxes, undelivered, strict=True)
        )

    def after_fork_in_child(self, restart: bool) -> None:
        """The child forwards its own events only, under a new origin, on its own threads."""
        for box in self._outboxes:
            box.forwarder.after_fork_in_child()
            box.reset()
        self._new_origin()  # after reset(): submit() binds the child's new queues
        if restart:
            self.start()

    # -- reading ------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Totals over forwarders (an event sent to two forwarders counts twice) and each
        forwarder's own counts."""
        per = {name: box.stats() for name, box in zip(self._names, self._outboxes, strict=True)}
        totals = {key: sum(s[key] for s in per.values()) for key in ("queued", *_COUNTS)}
        return {**totals, "forwarders": per}

    @staticmethod
    def empty_stats() -> dict[str, Any]:
        return {**dict.fromkeys(("queued", *_COUNTS), 0), "forwarders": {}}
