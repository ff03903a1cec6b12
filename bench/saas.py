"""The SaaS SDKs a user would otherwise call on the request path, pointed at the stub.

Each SDK is built the way its documentation shows for a server, with its buffering
defaults (but a queue large enough that no call is dropped: a dropped call would look
cheap), and its host set explicitly to the local stub (:mod:`bench.stub`), so no call
can reach the vendor:

- **PostHog** (``posthog.Posthog``): ``capture()`` builds the event (properties, system
  context, uuid, timestamp) and puts it on a queue; a consumer thread POSTs batches to
  ``/batch/``. No personal API key, so no feature-flag definitions are polled and
  ``capture()`` evaluates no flags.
- **Segment** (``segment.analytics.Client``): ``track()`` builds the message, measures
  its JSON size and queues it; a consumer thread POSTs batches to ``/v1/batch``.
  ``upload_interval`` is 0.05 s instead of 0.5 s so that waiting for a round's last
  partial batch (outside the clock) does not slow the run; what ``track()`` does on the
  caller's thread is the same.
- **Mixpanel** (``mixpanel.Mixpanel`` with a ``BufferedConsumer``): ``track()`` builds
  and JSON-encodes the event and appends it to a buffer; every 50th call sends the
  buffer **synchronously, on the caller's thread** (``requests`` POST to ``/track``).
  That send is the SDK's real cost and is measured as such (it makes its p99).

Every SDK gets the same ``properties`` dict as ``track()`` gets ``data``
(``{"amount": 50}``) and the same user id, through a ``functools.partial`` (a few
tens of ns, nothing next to these calls). ``drain()`` waits until everything a
subject queued has been sent; the benchmark calls it between rounds, off the clock,
so one subject's background thread does not slow the next subject.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import attrs

from bench.stub import Stub

#: The stub path each SDK posts its events to.
PATHS = {"PostHog": "/batch/", "Segment": "/v1/batch", "Mixpanel": "/track"}


@attrs.define
class Sdk:
    """One SDK client: ``one()`` makes one call; ``drain()`` waits until it sent all."""

    name: str
    one: Callable[[], Any]
    drain: Callable[[], None]
    close: Callable[[], None]
    calls: int = 0  # calls made, to compare with what the stub received
    version: str = ""


def _posthog(stub: Stub, properties: dict[str, Any]) -> Sdk:
    import posthog

    client = posthog.Posthog(
        "phc_bench",
        host=stub.url,
        max_queue_size=1_000_000,  # never full here: every call is queued and sent
    )
    return Sdk(
        "PostHog",
        functools.partial(client.capture, "credits.earn", distinct_id="u1", properties=properties),
        drain=client.flush,
        close=client.shutdown,
        version=posthog.VERSION,
    )


def _segment(stub: Stub, properties: dict[str, Any]) -> Sdk:
    from segment.analytics import Client
    from segment.analytics.version import VERSION

    client = Client(
        "bench_write_key",
        host=stub.url,
        max_queue_size=1_000_000,
        upload_interval=0.05,
    )
    return Sdk(
        "Segment",
        functools.partial(client.track, "u1", "credits.earn", properties),
        drain=client.flush,
        close=client.join,
        version=VERSION,
    )


def _mixpanel(stub: Stub, properties: dict[str, Any]) -> Sdk:
    import mixpanel

    consumer = mixpanel.BufferedConsumer(
        events_url=f"{stub.url}/track",
        people_url=f"{stub.url}/engage",
        groups_url=f"{stub.url}/groups",
        import_url=f"{stub.url}/import",
        api_host=f"127.0.0.1:{stub.port}",
    )
    client = mixpanel.Mixpanel("bench_token", consumer=consumer)
    return Sdk(
        "Mixpanel",
        functools.partial(client.track, "u1", "credits.earn", properties),
        drain=consumer.flush,
        close=consumer.flush,
        version=mixpanel.__version__,
    )


def sdks(stub: Stub, properties: dict[str, Any]) -> tuple[list[Sdk], list[str]]:
    """The SDKs that are installed, and a note for each one that is not."""
    # A failed send would be logged once per batch: keep the table readable.
    for name in ("posthog", "segment", "mixpanel", "backoff"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    found, missing = [], []
    for name, build in (("PostHog", _posthog), ("Segment", _segment), ("Mixpanel", _mixpanel)):
        try:
            found.append(build(stub, properties))
        except ImportError as exc:
            missing.append(f"{name} skipped ({exc.name} not installed: pip install -e '.[bench]')")
    return found, missing


def delivery(stub: Stub, clients: list[Sdk]) -> list[dict[str, object]]:
    """What the stub received per SDK against the calls made, and any other path."""
    stats = stub.stats()
    rows: list[dict[str, object]] = []
    for sdk in clients:
        path = PATHS[sdk.name]
        rows.append(
            {
                "sdk": f"{sdk.name} {sdk.version}",
                "calls": sdk.calls,
                "events_received": stats["events"].get(path, 0),
                "requests": stats["requests"].get(path, 0),
            }
        )
    other = {p: n for p, n in stats["requests"].items() if p not in PATHS.values()}
    if other:
        rows.append({"sdk": "other paths", "requests": other})
    return rows
