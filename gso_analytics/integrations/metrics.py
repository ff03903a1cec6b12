"""The metrics endpoint, framework-free: authentication, negotiation, bodies, errors.

Why framework-free: the Flask blueprint and the Django views must answer every request
the same way (the same 401, the same negotiation, the same 503), so the decisions are
made once here, on a :class:`MetricsRequest` holding the three inputs that matter, and
each framework only copies a :class:`MetricsResponse` into its own response class.
A store that fails (:class:`~gso_analytics.errors.StoreError`) is a 503 with
``Retry-After``; any other exception is a bug, a 500 logged with its traceback.

Views, relative to where the endpoint is mounted (``/metrics`` by default):

- ``""``: the seed's ``getMetrics()`` as JSON, or the Prometheus exposition;
- ``"/days"``: the seed's ``getLast30Days()`` as JSON (history does not fit a scrape);
- ``"/stats"``: this process's :meth:`~gso_analytics.Analytics.stats`, as JSON or
  Prometheus; it never touches the store, so it answers even while the store is down.

Access: with a token configured, every view and format requires ``Authorization:
Bearer <token>``, compared in constant time; a token in the query string is never
looked at (it would end up in access logs and browser history). Without a token the
endpoint answers 404, as if it did not exist, unless the settings make it public.
Every method gets that same answer: only an authorized request learns that a POST is
a 405 (``Allow: GET, HEAD``).
"""

from __future__ import annotations

import enum
import hmac
import json
import logging
import threading
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, Literal

import attrs

from ..analytics import Analytics
from ..counters import json_number
from ..errors import StoreError
from .config import EndpointSettings

log = logging.getLogger("gso_analytics")

View = Literal["metrics", "days", "stats"]
VIEWS: tuple[View, ...] = ("metrics", "days", "stats")

JSON_TYPE = "application/json"
REALM = 'Bearer realm="gso_analytics"'


class Format(enum.Enum):
    JSON = "json"
    PROMETHEUS = "prometheus"


#: Media types per format; on equal preference JSON wins (it is listed first), so a
#: browser or ``curl`` (``*/*``) gets JSON and a Prometheus scraper gets its format.
MEDIA_TYPES: Mapping[Format, tuple[str, ...]] = {
    Format.JSON: ("application/json",),
    Format.PROMETHEUS: ("application/openmetrics-text", "text/plain"),
}


@attrs.frozen
class MetricsRequest:
    """What the endpoint reads from an HTTP request, and nothing else."""

    authorization: str | None = attrs.field(default=None, repr=False)
    accept: str | None = None
    format: str | None = None  # the ``?format=`` query parameter
    method: str = "GET"


#: The methods the views serve; any other is a 405, once the caller is authorized.
SAFE_METHODS = ("GET", "HEAD")
#: The methods the frameworks route to the views, so that without a valid token every
#: one of them gets the same answer (a 405 to POST beside a 404 to GET would tell a
#: stranger the route exists).
ROUTED_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE")


@attrs.frozen
class MetricsResponse:
    status: int
    body: bytes
    content_type: str
    headers: Mapping[str, str] = attrs.field(factory=dict)


class _Refusal(Exception):
    def __init__(self, response: MetricsResponse) -> None:
        super().__init__(response.status)
        self.response = response


def _default(value: object) -> object:
    """A decimal counter as a JSON number; anything else as its text: a value some future
    ``stats()`` key holds must not turn into a 500."""
    return json_number(value) if isinstance(value, Decimal) else str(value)


def _json(status: int, data: Any, headers: Mapping[str, str] | None = None) -> MetricsResponse:
    body = json.dumps(data, separators=(",", ":"), ensure_ascii=False, default=_default).encode()
    return MetricsResponse(status, body, JSON_TYPE, dict(headers or {}))


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> _Refusal:
    return _Refusal(_json(status, {"error": message}, headers))


class MetricsEndpoint:
    """Answers metrics requests for one application, per its :class:`EndpointSettings`."""

    def __init__(self, settings: EndpointSettings) -> None:
        self.settings = settings
        self._token = settings.token.encode() if settings.token else None
        self._warned = threading.Event()

    def handle(self, analytics: Analytics, view: View, request: MetricsRequest) -> MetricsResponse:
        try:
            self._authorize(request.authorization)  # first: nothing leaks to a stranger
            if request.method.upper() not in SAFE_METHODS:
                raise _error(405, "method not allowed", {"Allow": ", ".join(SAFE_METHODS)})
            fmt = negotiate(view, request.accept, request.format)
            response = self._serve(analytics, view, fmt, request.accept)
        except _Refusal as refusal:
            response = refusal.response
        # Bodies differ by credentials and Accept, and are live numbers: never cache.
        headers = {"Cache-Control": "no-store", "Vary": "Accept, Authorization"}
        return attrs.evolve(response, headers={**headers, **response.headers})

    def _authorize(self, authorization: str | None) -> None:
        if self._token is None:
            if self.settings.public:
                return
            if not self._warned.is_set():
                self._warned.set()
                log.warning(
                    "gso_analytics: the metrics endpoint answers 404: configure"
                    " METRICS_TOKEN (or METRICS_PUBLIC = True to serve it without one)"
                )
            raise _error(404, "not found")
        scheme, _, credentials = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            raise _error(401, "a bearer token is required", {"WWW-Authenticate": REALM})
        # Bytes, because compare_digest refuses non-ASCII text; the token is ASCII, so
        # anything else (even a lone surrogate) simply does not match.
        given = credentials.strip().encode("utf-8", "surrogatepass")
        if not hmac.compare_digest(given, self._token):
            raise _error(
                401, "invalid token", {"WWW-Authenticate": f'{REALM}, error="invalid_token"'}
            )

    def _serve(
        self, analytics: Analytics, view: View, fmt: Format, accept: str | None
    ) -> MetricsResponse:
        try:
            if fmt is Format.PROMETHEUS:
                return self._prometheus(analytics, view, accept)
            if view == "metrics":
                data: Any = analytics.get_metrics().to_dict()
            elif view == "days":
                data = [day.to_dict() for day in analytics.get_last_30_days()]
            else:
                data = analytics.stats()
        except _Refusal:
            raise
        except StoreError as exc:
            # The batch stays buffered and is retried; a scraper sees a clean failure.
            log.warning("gso_analytics: metrics endpoint: store unavailable: %s", exc)
            raise _error(503, "store unavailable", {"Retry-After": "30"}) from None
        except Exception:
            # A bug is not an outage: no Retry-After, and the traceback in the log (the
            # flush counts it in stats()["internal_errors"]).
            log.exception("gso_analytics: metrics endpoint: internal error")
            raise _error(500, "internal error") from None
        return _json(200, data)

    @staticmethod
    def _prometheus(analytics: Analytics, view: View, accept: str | None) -> MetricsResponse:
        try:
            from . import prometheus
        except ImportError:
            raise _error(
                501,
                "the Prometheus format needs prometheus_client:"
                " pip install 'gso-analytics[prometheus]'",
            ) from None
        scrape = prometheus.take_scrape(analytics, business=view == "metrics")
        body, content_type = prometheus.render(scrape, accept)
        return MetricsResponse(200, body, content_type)


def negotiate(view: View, accept: str | None, format_param: str | None) -> Format:
    """``?format=`` wins; otherwise the ``Accept`` header; JSON when nothing decides."""
    if format_param is not None:
        try:
            fmt = Format(format_param.strip().lower())
        except ValueError:
            raise _error(400, "format must be 'json' or 'prometheus'") from None
        if view == "days" and fmt is not Format.JSON:
            raise _error(406, "the last 30 days are served as JSON only")
        return fmt
    if view == "days" or not accept:
        return Format.JSON
    ranges = parse_accept(accept)
    quality = {fmt: max(_quality(t, ranges) for t in types) for fmt, types in MEDIA_TYPES.items()}
    # JSON unless Prometheus is strictly preferred: JSON is the default and listed first.
    if quality[Format.PROMETHEUS] > quality[Format.JSON]:
        return Format.PROMETHEUS
    return Format.JSON


def parse_accept(header: str) -> list[tuple[str, float]]:
    """``Accept`` as (media range, q) pairs; malformed parts are skipped, not fatal."""
    ranges = []
    for part in header.split(","):
        media, *params = (piece.strip() for piece in part.split(";"))
        if media.count("/") != 1:
            continue
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = min(max(float(value), 0.0), 1.0)
                except ValueError:
                    q = 0.0
        ranges.append((media.lower(), q))
    return ranges


def _quality(media_type: str, ranges: list[tuple[str, float]]) -> float:
    """The q of the most specific range matching ``media_type`` (RFC 9110, 12.5.1)."""
    kind = media_type.split("/")[0]
    best: tuple[int, float] = (-1, 0.0)
    for media, q in ranges:
        if media == media_type:
            specificity = 2
        elif media == f"{kind}/*":
            specificity = 1
        elif media == "*/*":
            specificity = 0
        else:
            continue
        if specificity > best[0]:
            best = (specificity, q)
    return best[1]
