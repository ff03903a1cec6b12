"""Event forwarding: what a forwarder sees and says, and the interface it implements.

A forwarder sends tracked events somewhere else, off the request thread. It only
says how one event looks on the wire (:meth:`Forwarder.encode`) and how one batch is
sent and what the answer means (:meth:`Forwarder.send` returning a
:class:`Delivery`); queueing, batching, retries, the bound on ``stop()``, the counts
and fork safety live once, in the outbox (:mod:`.outbox`). This module holds that
vocabulary, all a forwarder author needs; the built-in forwarders are in
:mod:`.http_forwarders`.

Delivery is at least once: a request whose answer was lost is sent again. Every
event carries a stable id (``<process origin>-<sequence>``), sent as the webhook's
``Idempotency-Key`` and as Mixpanel's ``$insert_id``, so a receiver can drop the
duplicates.
"""

from __future__ import annotations

import abc
import enum
import logging
import random
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import attrs

from .clock import from_ms, iso_from_ms

#: Shared by the outbox and the built-in forwarders, so all of forwarding logs under one name.
log = logging.getLogger("gso_analytics.forwarding")

Timeout = float | tuple[float, float]

#: The event a forwarder's :meth:`Forwarder.on_erase` sends to say a player was erased.
USER_ERASED = "user.erased"


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
        return float(ceiling * random.uniform(0.5, 1.0))


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

    def describe_error(self, exc: BaseException) -> str:
        """``send()``'s exception as ``stats()["last_error"]`` and the logs show it; a
        forwarder whose errors may quote a secret (a webhook URL) takes it out here."""
        return f"{type(exc).__name__}: {exc}"

    def on_erase(self, user_id: str) -> Mapping[str, Any] | None:
        """Called by ``Analytics.erase_user``: return the ``data`` of a
        :data:`USER_ERASED` event to send through this forwarder's queue (after the
        player's events already queued), or None to send nothing. A forwarder whose
        receiver keeps data of its own says here, or in its documentation, how to
        erase it there."""
        return None

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
