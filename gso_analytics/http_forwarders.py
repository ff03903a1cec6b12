"""The built-in HTTP forwarders: the seed's webhook, made reliable, and Mixpanel.

:class:`HttpForwarder` holds what both share (a keep-alive session, timeouts, the
reading of status codes); :func:`default_forwarders` gives the seed's behaviour from
``ANALYTICS_WEBHOOK_URL``. They implement the :class:`~.forwarding.Forwarder`
interface like any other forwarder: queueing, batching, retries and counts are the
outbox's (:mod:`.outbox`), so this module is only about the wire.
"""

from __future__ import annotations

import gzip
import hashlib
import hmac
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import attrs
import requests

from .errors import ConfigurationError
from .forwarding import (
    Backoff,
    Delivery,
    EncodedEvent,
    ForwardedEvent,
    Forwarder,
    Timeout,
    log,
    parse_retry_after,
)

WEBHOOK_URL_ENV = "ANALYTICS_WEBHOOK_URL"


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
        shown = redact_url(url) if isinstance(url, str) else repr(url)
        raise ConfigurationError(f"{what} must be an http(s) URL, got {shown}")
    return url


#: Hosts a plain ``http://`` credential may go to: the machine itself (a local relay,
#: a test endpoint), where nothing crosses a network.
_LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})


def redact_url(url: str) -> str:
    """``scheme://host[:port]/...``: a URL as logs, errors, ``stats()`` and ``repr()``
    show it. A webhook URL's path or query is often its secret (Slack, Discord,
    Zapier put the token there), and a userinfo part is a password."""
    try:
        parts = urlsplit(url)
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<an invalid URL>"
    hidden = "/..." if parts.path not in ("", "/") or parts.query else ""
    return f"{parts.scheme}://{parts.hostname or ''}{port}{hidden}"


def scrub_url(text: str, url: str) -> str:
    """``text`` (an exception's message) with ``url``, and its path and query as
    requests' messages quote them (``... with url: /services/T0/B0/XXXX``), replaced by
    :func:`redact_url`'s form."""
    parts = urlsplit(url)
    secret_parts = [url, parts.path + (f"?{parts.query}" if parts.query else ""), parts.path]
    for secret in secret_parts:
        if len(secret) > 1:
            text = text.replace(secret, redact_url(url) if secret == url else "/...")
    return text


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

    def describe_error(self, exc: BaseException) -> str:
        """As :meth:`Forwarder.describe_error`, with this forwarder's URL secrets out."""
        text = super().describe_error(exc)
        for url in self.secret_urls():
            text = scrub_url(text, url)
        return text

    def secret_urls(self) -> list[str]:
        """URLs whose path or query may be a secret (none by default)."""
        return []

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

    url: str = attrs.field(kw_only=False, repr=redact_url)
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

    def secret_urls(self) -> list[str]:
        return [self.url]

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

    def on_erase(self, user_id: str) -> Mapping[str, Any]:
        """The receiver hears ``{"event": "user.erased", "userId": ..., "data": {}}``
        through the queue, after the player's events, and erases the player there."""
        return {}

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
    #: ``http://`` sends the project token or the service account's secret in clear:
    #: refused unless the host is this machine, or this says so.
    allow_http: bool = False
    name: str = "mixpanel"

    def __attrs_post_init__(self) -> None:
        _check_http_url(self.api_host, "MixpanelForwarder api_host")
        parts = urlsplit(self.api_host)
        if parts.scheme == "http" and parts.hostname not in _LOOPBACK and not self.allow_http:
            raise ConfigurationError(
                f"MixpanelForwarder api_host {redact_url(self.api_host)} is http://: the"
                " project token or service account secret would cross the network in"
                " clear; use https://, or allow_http=True"
            )
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

    def on_erase(self, user_id: str) -> None:
        """Mixpanel keeps what was imported: erasing it there takes Mixpanel's own GDPR
        deletion request (``POST https://mixpanel.com/api/app/data-deletions/v3.0/
        ?token=<project token>`` with ``{"distinct_ids": [...], "compliance_type":
        "GDPR"}`` and ``Authorization: Bearer <GDPR OAuth token>``), which this
        forwarder does not send: the OAuth token belongs to a person of the project,
        not to a server. The warning names no player (logs are kept too)."""
        log.warning(
            "gso_analytics: a player was erased; Mixpanel keeps the events forwarded"
            " to it: file a deletion request with Mixpanel (see docs/data-rights.md)"
        )

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
            auth = (self.service_account_user or "", self.service_account_secret or "")
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
