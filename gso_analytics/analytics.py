"""``Analytics``: the facade a game backend talks to (the seed's ``AnalyticsSystem``).

Caller threads only validate and buffer (see :mod:`.aggregator`); the flush thread
(:mod:`.flusher`) does every store write. Lenient by default, as a library on a
request path must be: bad input is counted and logged, never raised, unless
``strict=True``.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta, tzinfo
from decimal import Decimal
from math import isfinite
from typing import Any

import attrs

from .aggregator import ACTIVE_ON, CALL_BYTES, FLAT_EVENT, Aggregator, BufferFull
from .clock import Clock, DayKeys, from_ms, resolve_tz, round_half_up, to_ms, utc_now
from .counters import DAILY_FIELDS, CounterRule, CounterSpec, build_counter_map
from .dead_letters import DeadLetters
from .erasure import ErasureReceipt, configured_erasure_secret, keyed_hash, pseudonymize
from .errors import ConfigurationError, StoreError, ValidationError
from .flusher import Flusher
from .forwarding import Forwarder
from .heartbeats import make_heartbeat, process_identity
from .http_forwarders import default_forwarders
from .kpis import KPIs
from .model import DailyStats, FlushBatch, Heartbeat, Metrics, Number, PruneResult
from .outbox import ForwardingHub
from .store import PSEUDONYM_CHECK, Store, open_store
from .validation import (
    CENTS_KEY,
    FAST_LEN,
    FAST_WORST_BYTES,
    MAX_AMOUNT,
    PLAIN_KEYS,
    FlatData,
    Limits,
    check_amount,
    check_cents,
    check_decimal_amount,
    check_name,
    plain_key,
    snapshot_data,
)

log = logging.getLogger("gso_analytics")

_instances: weakref.WeakSet[Analytics] = weakref.WeakSet()
_NO_COUNTER: tuple[None, None, bool] = (None, None, False)

#: Event names :meth:`Analytics.track` remembers as checked (with their counter rule):
#: a game has a few dozen; names beyond these are checked at every call.
MAX_KNOWN_EVENTS = 4096

#: Distinct (event, field, reason) rejections logged per instance; then only counted.
MAX_LOGGED_REJECTIONS = 64
_TOO_MANY_REJECTIONS: tuple[str | None, str] = (None, "")


def _after_fork_in_child() -> None:
    for instance in list(_instances):
        instance._after_fork_in_child()
        if instance._started:
            _stop_at_multiprocessing_exit(instance)


def _stop_at_multiprocessing_exit(instance: Analytics) -> None:
    """A ``multiprocessing`` fork child ends with ``os._exit``, which skips atexit, so
    its own exit hook (a ``Finalize``) must call ``stop()`` too. The child clears those
    hooks when it starts, after this fork hook: register from its after-fork hook."""
    mp_util = sys.modules.get("multiprocessing.util")
    if mp_util is not None:  # not loaded: not a multiprocessing child
        mp_util.register_after_fork(
            instance, lambda obj: mp_util.Finalize(None, obj.stop, exitpriority=0)
        )


os.register_at_fork(after_in_child=_after_fork_in_child)


def _idle_timeout(value: timedelta | float) -> timedelta:
    """``idle_timeout`` as a positive timedelta (seconds accepted)."""
    if isinstance(value, bool) or not isinstance(value, timedelta | int | float):
        raise ConfigurationError(f"idle_timeout must be a timedelta or seconds, got {value!r}")
    idle = value if isinstance(value, timedelta) else timedelta(seconds=value)
    if idle <= timedelta(0):
        raise ConfigurationError(f"idle_timeout must be positive, got {value!r}")
    return idle


def _check_reserved(counters: Mapping[str, CounterRule], store: Store) -> None:
    """A counter field the store cannot hold would fail every flush: refuse it now."""
    for event, rule in counters.items():
        if rule.field in store.reserved_fields:
            raise ConfigurationError(
                f"counters[{event!r}]: field {rule.field!r} is reserved by"
                f" {type(store).__name__} (reserved: {', '.join(sorted(store.reserved_fields))})"
            )


def _store_leftovers_at_exit() -> None:
    """Registered at import, so it runs after every started instance's own stop hook."""
    for instance in list(_instances):
        instance._store_leftovers()


atexit.register(_store_leftovers_at_exit)


#: ``max_buffered_bytes`` by default: with the interpreter and the library, a worker
#: whose store is down stays under ~100 MB whatever its calls carry.
DEFAULT_MAX_BUFFERED_BYTES = 64 * 1024 * 1024


class Analytics:
    """Counts players, sessions and the economy; flushes to a :class:`Store`.

    ``store`` is a :class:`Store` or a URL for :func:`open_store` (then closed by
    :meth:`stop`). ``clock`` returns aware datetimes and drives every timestamp.

    :param store: where the numbers live: a :class:`Store`, or a URL such as
        ``"sqlite:///gso_analytics.db"``, ``"memory://"``, ``"mongodb://host/db"``.
    :param flush_interval: seconds between background flushes.
    :param counters: extra or overriding counter rules, ``{"quest.complete":
        "questsCompleted"}`` (+1) or ``{"gold.loot": ("goldLooted", "amount")}``.
    :param tz: timezone of the day and month keys (an IANA name or a ``tzinfo``).
    :param event_ttl: how long the event stream keeps an event (expired once
        ``ts + event_ttl <= now``).
    :param idle_timeout: a play session ends at its player's last mark once this much
        time passes with no mark (30 minutes by default, as GA4 and Amplitude): a
        ``timedelta`` or seconds. Give every worker the same value.
    :param active_on: ``"any"`` (default): every mark (tracked call, ``touch()``,
        login, logout) makes its player active that day and month, and tracked calls
        are activity that starts and extends sessions; ``"login"``: only logins, the
        seed's definitions (tracked calls are neither).
    :param passive_events: event names the server sends on a player's behalf (a payment
        webhook, a scheduled reward): counted toward their counters and kept in the
        event stream, but not activity (they neither make the player active nor start
        or extend a session).
    :param session_timeout: deprecated and ignored (sessions end after ``idle_timeout``
        without a mark); passing it warns.
    :param clock: zero-argument callable returning an aware ``datetime`` (UTC now by
        default).
    :param strict: raise on bad input instead of counting it as rejected.
    :param max_buffered_events: calls held in memory while the store is failing; beyond
        it new calls are dropped and counted.
    :param max_buffered_bytes: about the bytes those calls may hold (64 MiB by default:
        a worker stays under ~100 MB whatever its calls carry); beyond it new calls
        are dropped and counted, as beyond ``max_buffered_events``.
    :param stop_timeout: seconds :meth:`stop` waits for the final flush.
    :param prune_interval: seconds between prune jobs on the flush thread.
    :param limits: id and event name length, ``data`` size and depth.
    :param forwarders: where tracked events are also sent; by default a webhook when
        ``ANALYTICS_WEBHOOK_URL`` is set, ``[]`` for none.
    :param forward_stop_timeout: seconds :meth:`stop` gives the forwarders to drain,
        after the final flush.
    :param test_users: user ids (or a predicate on an id) left out of the KPIs.
    :param quarantine_after: a batch failing permanently this many times in a row is set
        aside, so the batches behind it are stored.
    :param dead_letter_dir: directory where set-aside batches are written as JSON lines.
    :param pseudonymize_key: a secret (16 characters or bytes at least): the store then
        keeps ``HMAC-SHA256(key, user id)`` instead of each id, and no username (see the
        data rights page); lookups such as :meth:`export_user` take the real id.
    :param erasure_secret: the key of the erasure tombstones (16 characters at least),
        kept outside the store; by default from ``GSO_ANALYTICS_ERASURE_SECRET`` or the
        file ``GSO_ANALYTICS_ERASURE_SECRET_FILE`` names, else the store makes and keeps
        its own. Every process of one store needs the same (see the data rights page).
    :raises ConfigurationError: an option out of range, a naive clock, a counter field
        the store reserves.
    """

    def __init__(
        self,
        store: Store | str,
        *,
        flush_interval: float = 60.0,
        counters: Mapping[str, CounterSpec] | None = None,
        tz: str | tzinfo = "UTC",
        event_ttl: timedelta = timedelta(days=7),
        idle_timeout: timedelta | float = timedelta(minutes=30),
        active_on: str = "any",
        passive_events: Iterable[str] = (),
        session_timeout: timedelta | None = None,
        clock: Clock | None = None,
        strict: bool = False,
        max_buffered_events: int = 100_000,
        max_buffered_bytes: int = DEFAULT_MAX_BUFFERED_BYTES,
        stop_timeout: float = 10.0,
        prune_interval: float = 600.0,
        limits: Limits | None = None,
        forwarders: Sequence[Forwarder] | None = None,
        forward_stop_timeout: float = 10.0,
        test_users: Iterable[str] | Callable[[str], bool] | None = None,
        quarantine_after: int = 5,
        dead_letter_dir: str | os.PathLike[str] | None = None,
        pseudonymize_key: str | bytes | None = None,
        erasure_secret: str | None = None,
    ) -> None:
        if flush_interval <= 0:
            raise ConfigurationError(f"flush_interval must be positive, got {flush_interval!r}")
        if max_buffered_events < 1:
            raise ConfigurationError("max_buffered_events must be at least 1")
        if max_buffered_bytes < CALL_BYTES:
            raise ConfigurationError(f"max_buffered_bytes must be at least {CALL_BYTES}")
        if quarantine_after < 1:
            raise ConfigurationError(f"quarantine_after must be at least 1, got {quarantine_after}")
        if pseudonymize_key is not None and not (
            isinstance(pseudonymize_key, str | bytes) and len(pseudonymize_key) >= 16
        ):
            raise ConfigurationError(
                "pseudonymize_key must be a secret of at least 16 characters or bytes"
            )
        self._pseudonym_key = (
            pseudonymize_key.encode() if isinstance(pseudonymize_key, str) else pseudonymize_key
        )
        if clock is not None:
            to_ms(clock())  # a naive clock fails here, at start-up, not in every track()
        self._owns_store = isinstance(store, str)
        self.store: Store = open_store(store) if isinstance(store, str) else store
        try:
            self.store.check_event_ttl(event_ttl)
            self.counters = build_counter_map(counters)
            _check_reserved(self.counters, self.store)
        except BaseException:
            if self._owns_store:
                self.store.close()
            raise
        self._pseudonym_check = (
            None
            if self._pseudonym_key is None
            else keyed_hash(self._pseudonym_key, PSEUDONYM_CHECK)
        )
        if self._pseudonym_check is not None:
            self.store.pseudonym_check = self._pseudonym_check
        external = configured_erasure_secret(erasure_secret, os.environ)
        if external is not None:
            self.store.external_secret = external
        # event -> (stored field, amount key, decimal) as plain tuples: one dict lookup on
        # the hot path.
        self._rules = {
            event: (rule.stored_field, rule.amount_key, rule.decimal)
            for event, rule in self.counters.items()
        }
        # The event names seen valid, with their rule: one lookup checks the name and
        # finds its counter (bounded by MAX_KNOWN_EVENTS, names may come from clients).
        self._known_events: dict[str, tuple[str | None, str | None, bool]] = {}
        self._zeros: dict[str, Number | Decimal] = {
            rule.field: Decimal(0) if rule.decimal else 0
            for rule in sorted(self.counters.values(), key=lambda rule: rule.field)
            if rule.field not in DAILY_FIELDS
        }
        self.tz = resolve_tz(tz)
        self.event_ttl = event_ttl
        # Users left out of the KPIs (ids, or a predicate); an iterable is read once.
        if isinstance(test_users, str):
            raise ConfigurationError(f"test_users must be a list of user ids, not {test_users!r}")
        self.test_users = (
            test_users if test_users is None or callable(test_users) else frozenset(test_users)
        )
        if session_timeout is not None:
            warnings.warn(
                "session_timeout is deprecated and ignored: a session ends after"
                " idle_timeout (30 minutes by default) without a mark of its player",
                DeprecationWarning,
                stacklevel=2,
            )
        self.idle_timeout = _idle_timeout(idle_timeout)
        if active_on not in ACTIVE_ON:
            raise ConfigurationError(f"active_on must be one of {ACTIVE_ON}, got {active_on!r}")
        self.active_on = active_on
        if isinstance(passive_events, str):
            raise ConfigurationError(
                f"passive_events must be a list of event names, not {passive_events!r}"
            )
        self.passive_events = frozenset(passive_events)
        self.clock: Clock = clock or utc_now
        self.strict = strict
        self.stop_timeout = stop_timeout
        self.prune_interval = prune_interval
        self.limits = limits or Limits()
        self._max_id = self.limits.max_id_length
        self._max_event = self.limits.max_event_length
        # A small flat dict's JSON fits max_data_bytes whatever it holds: no size to count.
        self._fast_data = self.limits.max_data_bytes >= FAST_WORST_BYTES
        self._day_keys = DayKeys(self.tz)
        self._aggregator = Aggregator(
            clock,
            self._day_keys,
            max_buffered_events,
            self.idle_timeout // timedelta(milliseconds=1),
            active_on,
            self.passive_events,
            max_buffered_bytes,
        )
        self._flusher = Flusher(
            self.store,
            self._aggregator,
            interval=flush_interval,
            now=self._now,
            housekeeping=self._housekeeping,
            quarantine_after=quarantine_after,
            dead_letters=None if dead_letter_dir is None else DeadLetters(dead_letter_dir),
            heartbeat=self._heartbeat,
            prepare=None if self._pseudonym_key is None else self._pseudonymize,
        )
        # None: the seed's ANALYTICS_WEBHOOK_URL, read now (not at import); [] turns it off.
        forwarders = default_forwarders() if forwarders is None else list(forwarders)
        self._hub = (
            ForwardingHub(forwarders, stop_timeout=forward_stop_timeout) if forwarders else None
        )
        self._started = False
        self._stopped = False
        self._reset_counts()
        _instances.add(self)

    def _reset_counts(self) -> None:
        self._count_lock = threading.Lock()
        self._rejected = 0
        self._dropped = 0
        self._logged_rejections: set[tuple[str | None, str]] = set()
        self._last_prune = float("-inf")

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> Analytics:
        """Start the flush thread (every ``flush_interval`` seconds) and the exit hook.

        A started instance is a *worker*: its flushes write this process's heartbeat
        (see :mod:`.heartbeats`), so the metrics endpoint counts it among the workers.
        An instance never started (the ``gso-analytics`` commands, a script that
        reads or flushes by hand) writes none, and so never shows as a worker.
        """
        if not self._started:
            self._started = True
            self._flusher.start()
            if self._hub is not None:
                self._hub.start()
            atexit.register(self.stop)
        return self

    def stop(self) -> bool:
        """Final flush, bounded by ``stop_timeout``; safe to call twice.

        Then the forwarders drain their queues, bounded by ``forward_stop_timeout``
        (what they could not deliver is in ``stats()["forwarding"]``).
        Returns True when everything buffered reached the store.

        A worker (started) then withdraws its heartbeat, so that it leaves the metrics
        at once (a gunicorn reload retires every worker) instead of showing as a stale
        worker until the record expires. Only after a final flush that succeeded:
        with the store failing, the record is left to expire.
        """
        worker = self._started
        if self._started:
            self._started = False  # the final flush below writes no heartbeat
            atexit.unregister(self.stop)
        self._stopped = True
        stored = self._flusher.stop(self.stop_timeout)
        if worker and stored:
            self._withdraw_heartbeat()
        if self._hub is not None:  # after the store's final flush, in its own bound
            self._hub.stop()
        if self._owns_store:
            self.store.close()
        return stored

    def _store_leftovers(self) -> None:
        """At interpreter exit: calls nobody will flush are stored, or counted aloud.

        Calls made before :meth:`start` (never called) are accepted into the buffer;
        without this they would vanish at exit without a word. They get the final
        flush ``stop()`` would give them, which logs how many could not be stored.
        Calls made after :meth:`stop` are not stored (the store may be closed): they
        are counted in the log.
        """
        held = self._aggregator.size + self._flusher.pending
        if self._started or not held:
            return
        if self._stopped:
            log.error("gso_analytics: %d calls made after stop() were not stored", held)
            return
        log.warning(
            "gso_analytics: %d calls were made but start() was never called; storing them at exit",
            held,
        )
        self.stop()

    def __enter__(self) -> Analytics:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _after_fork_in_child(self) -> None:
        # The parent flushes what it buffered; the child starts empty, with new locks.
        self._reset_counts()
        self._aggregator.backlog = 0
        self._aggregator.backlog_extra = 0
        self._aggregator.reset()  # the bound computed again, without the parent's batches
        self._flusher.after_fork_in_child(restart=self._started)
        if self._hub is not None:
            self._hub.after_fork_in_child(restart=self._started)

    # -- recording (caller threads: validation and one deque append, no lock, no I/O) ---

    def on_login(self, user_id: str, username: str | None = None) -> None:
        """A player logged in: activity that starts a session unless one is open, and
        makes the player active today (counted once toward the dau and the mau)."""
        try:
            if not (
                type(user_id) is str and 0 < len(user_id) <= self._max_id and user_id.isprintable()
            ):
                user_id = check_name(user_id, "user_id", self._max_id)
            if username is not None:
                username = check_name(username, "username", self.limits.max_id_length)
            self._aggregator.login(user_id, username)
        except ValidationError as exc:
            self._reject(exc)
        except BufferFull:
            self._drop()

    def touch(self, user_id: str) -> None:
        """The player did something worth no event (a request that tracks nothing):
        activity, as a tracked call is, with ``active_on="any"``; nothing otherwise."""
        try:
            if not (
                type(user_id) is str and 0 < len(user_id) <= self._max_id and user_id.isprintable()
            ):
                user_id = check_name(user_id, "user_id", self._max_id)
            self._aggregator.touch(user_id)
        except ValidationError as exc:
            self._reject(exc)
        except BufferFull:
            self._drop()

    def on_logout(self, user_id: str) -> None:
        """A player logged out: ends their open session, whichever process holds its
        other marks."""
        try:
            if not (
                type(user_id) is str and 0 < len(user_id) <= self._max_id and user_id.isprintable()
            ):
                user_id = check_name(user_id, "user_id", self._max_id)
            self._aggregator.logout(user_id)
        except ValidationError as exc:
            self._reject(exc)
        except BufferFull:
            self._drop()

    def track(self, event: str, user_id: str, data: dict[str, Any] | None = None) -> None:
        """Record an event in the stream and add to its daily counter, if it has one.

        The checks are inlined for the valid case (``check_name`` names the problem
        otherwise): this is the request path, and every call here costs the caller.
        """
        try:
            # A known name is a checked one (the type first: a str subclass is equal).
            rule = self._known_events.get(event) if type(event) is str else None
            if rule is None:
                event = check_name(event, "event", self._max_event)
                rule = self._known(event)
            if not (
                type(user_id) is str and 0 < len(user_id) <= self._max_id and user_id.isprintable()
            ):
                user_id = check_name(user_id, "user_id", self._max_id)
            snapshot: FlatData | str | None = None
            if data is not None:
                pairs = 0  # a one- or two-key data taken inline (below), else its snapshot
                if type(data) is dict and 0 < len(data) <= 2 and self._fast_data:
                    # validation.snapshot_data's check written out for one or two pairs
                    # (its call and loop were a third of the cost here): the keys and
                    # their values read once, which is the snapshot, and checked as read.
                    try:
                        if len(data) == 1:
                            (key,) = data  # the keys, then the values: no item tuples
                            pairs = 1
                        else:
                            key, key2 = data
                            pairs = 2
                        # Exact str keys hash and compare in C: no caller code runs in
                        # the lookups below.
                        if type(key) is not str or (pairs == 2 and type(key2) is not str):
                            pairs = 0
                        elif pairs == 1:
                            value = data[key]
                        else:
                            value, value2 = data[key], data[key2]
                    except (ValueError, KeyError):  # changed by another thread: snapshot below
                        pairs = 0
                    if pairs == 2 and not (
                        (key2 in PLAIN_KEYS or plain_key(key2))
                        and (
                            ((kind := type(value2)) is int and -(2**63) < value2 < 2**63)
                            or (kind is str and len(value2) <= FAST_LEN and value2.isascii())
                            or (kind is float and isfinite(value2))
                            or kind is bool
                            or value2 is None
                        )
                    ):
                        pairs = 0
                    if pairs and not (
                        (key in PLAIN_KEYS or plain_key(key))
                        and (
                            ((kind := type(value)) is int and -(2**63) < value < 2**63)
                            or (kind is str and len(value) <= FAST_LEN and value.isascii())
                            or (kind is float and isfinite(value))
                            or kind is bool
                            or value is None
                        )
                    ):
                        pairs = 0
                if not pairs:
                    snapshot = snapshot_data(data, self.limits)
            field, amount_key, decimal = rule
            amount: Number = 1
            if amount_key is not None:
                amount = data.get(amount_key) if data is not None else None  # type: ignore[assignment]
                if decimal or not (type(amount) is int and 0 <= amount <= MAX_AMOUNT):
                    amount = self._amount(event, amount_key, data, field, decimal)
            buffer = self._aggregator
            if data is None:  # the event without data: no look at its type at all
                ns = buffer.event(event, user_id, field, amount)
            elif pairs:
                # Aggregator.data_event, inline: the same bound and the same call, the
                # keys and values flat in it.
                calls = buffer._calls
                if len(calls) + buffer.backlog >= buffer._limit:
                    raise BufferFull
                ns = buffer.now_ns()
                if pairs == 1:
                    calls.append((FLAT_EVENT, ns, user_id, event, field, amount, key, value))
                else:
                    calls.append(
                        (FLAT_EVENT, ns, user_id, event, field, amount, key, value, key2, value2)
                    )
                if self._hub is not None:
                    snapshot = ((key, value),) if pairs == 1 else ((key, value), (key2, value2))
            else:
                ns = buffer.data_event(event, user_id, snapshot, field, amount)  # type: ignore[arg-type]
            if self._hub is not None:
                self._hub.submit(ns // 1_000_000, event, user_id, snapshot)
        except ValidationError as exc:
            self._reject(exc, event if exc.field != "event" else None)
        except BufferFull:
            self._drop()

    def _known(self, event: str) -> tuple[str | None, str | None, bool]:
        """The counter rule of ``event``, a checked name, remembered while there is room."""
        rule = self._rules.get(event, _NO_COUNTER)
        if len(self._known_events) < MAX_KNOWN_EVENTS:
            self._known_events[event] = rule
        return rule

    @staticmethod
    def _amount(
        event: str, key: str, data: dict[str, Any] | None, field: str | None, decimal: bool
    ) -> int:
        """The amount a counter adds, as it is stored: whole units, or millionths for a
        decimal counter (see :mod:`.counters`)."""
        if data is None or key not in data:
            raise ValidationError(f"data.{key}", f"is required by {event!r}")
        amount = data[key]
        if decimal:
            return check_decimal_amount(amount, f"data.{key}")
        if type(amount) is int and 0 <= amount <= MAX_AMOUNT:
            return amount
        if key == CENTS_KEY:
            return check_cents(amount, f"data.{key}")
        return check_amount(amount, f"data.{key}", str(field))

    def _reject(self, exc: ValidationError, event: str | None = None) -> None:
        """Count a rejected call; log it once per (event, field, reason).

        Per reason, not per kind: after one NaN, a payload too large is a different
        problem worth a line. The keys are bounded by :data:`MAX_LOGGED_REJECTIONS`,
        because event names and ``data`` paths come from callers and could flood the log.
        """
        if self.strict:
            raise exc
        key = (event, str(exc))
        with self._count_lock:
            self._rejected += 1
            logged = self._logged_rejections
            if key in logged or len(logged) > MAX_LOGGED_REJECTIONS:
                return
            logged.add(key if len(logged) < MAX_LOGGED_REJECTIONS else _TOO_MANY_REJECTIONS)
            capped = len(logged) > MAX_LOGGED_REJECTIONS
        if capped:
            log.warning(
                "gso_analytics: %d different rejections logged; further ones are only"
                " counted in stats()['rejected']",
                MAX_LOGGED_REJECTIONS,
            )
        else:
            log.warning(
                "gso_analytics: rejected %s (%s); the same rejection again is only counted",
                "a login or logout" if event is None else f"track({event!r})",
                exc,
            )

    def _drop(self) -> None:
        with self._count_lock:
            self._dropped += 1
            dropped = self._dropped
        if dropped & (dropped - 1) == 0:  # 1, 2, 4, 8...: loud, never a flood
            log.error(
                "gso_analytics: buffer full (max_buffered_events=%d, max_buffered_bytes=%d,"
                " store failing?); %d calls dropped so far",
                self._aggregator.max_buffered,
                self._aggregator.max_bytes,
                dropped,
            )

    # -- flushing and reading -------------------------------------------------------------

    def flush(self) -> None:
        """Store everything buffered now. Raises :class:`StoreError` when the store fails,
        and an internal error (a bug: anything else) as it is, counted in
        ``stats()["internal_errors"]``; nothing is lost then (see :mod:`.flusher` for
        the batches set aside)."""
        self._flusher.flush()

    def heartbeat(self) -> Heartbeat:
        """This process's health now, as each flush writes it to the store (see
        :mod:`.heartbeats`)."""
        return make_heartbeat(self.stats(), self._now(), self._flusher.interval)

    def _heartbeat(self) -> None:
        """After each flush: a worker's record; nothing for an instance never started."""
        if self._started:
            self.store.save_heartbeat(self.heartbeat())

    def _withdraw_heartbeat(self) -> None:
        process, _, _ = process_identity()
        try:
            self.store.withdraw_heartbeat(process)
        except StoreError as exc:
            log.warning("gso_analytics: heartbeat not withdrawn, it will expire: %s", exc)

    def _housekeeping(self) -> None:
        if time.monotonic() - self._last_prune < self.prune_interval:
            return
        self._last_prune = time.monotonic()
        try:
            result = self.prune()
        except StoreError as exc:
            log.warning("gso_analytics: prune failed: %s", exc)
            return
        if result.events_deleted or result.sessions_timed_out:
            log.info(
                "gso_analytics: pruned %d expired events, timed out %d sessions",
                result.events_deleted,
                result.sessions_timed_out,
            )

    # -- players' data rights (see :mod:`.erasure`) ------------------------------------

    def _pseudonymize(self, batch: FlushBatch) -> FlushBatch:
        assert self._pseudonym_key is not None
        return pseudonymize(batch, self._pseudonym_key)

    def stored_id(self, user_id: str) -> str:
        """The id the store keeps for ``user_id``: its keyed hash with
        ``pseudonymize_key``, the id itself otherwise."""
        user_id = check_name(user_id, "user_id", self._max_id)
        if self._pseudonym_key is None:
            return user_id
        return keyed_hash(self._pseudonym_key, user_id)

    def _real_ids(self, user_id: str, stored: str) -> tuple[str, ...]:
        """What other players' event data names the player by besides the stored id:
        a pseudonymized store keeps ``data`` as given, with the real id."""
        return () if stored == user_id else (user_id,)

    def export_user(self, user_id: str, *, after_erase: bool = False) -> dict[str, Any]:
        """Everything stored about one player (GDPR access and portability), as
        JSON-ready data; this process's buffered calls are flushed first. ``mentions``
        are other players' events whose data names the player.

        After an erase the records under the id are gone, and ``erased`` is true; a
        returning player's calls are stored under the erase's token. ``after_erase``
        returns what the token holds instead (it includes the erased history, kept
        for the figures: give it to the player, not to anyone who only has the id)."""
        stored = self.stored_id(user_id)
        self.store.check_pseudonym_key(self._pseudonym_check)
        self.flush()
        token = self.store.erased_token(stored)
        if after_erase and token is not None:
            export = self.store.export_user(token)
            export["storedAs"] = token
        else:
            export = self.store.export_user(stored, also=self._real_ids(user_id, stored))
            if stored != user_id:
                export["storedAs"] = stored
        export["userId"] = user_id
        export["erased"] = token is not None
        return export

    def erase_user(self, user_id: str) -> ErasureReceipt:
        """Erase one player (GDPR erasure): the id and username leave every record and
        every other player's event data, the aggregates stay exact (see
        :mod:`.erasure`), and calls of the player still buffered anywhere are renamed
        when they are stored. Each forwarder hears of it (``Forwarder.on_erase``); an
        ``Analytics`` not started (a one-off command) delivers that before returning.
        Idempotent.

        :raises ConfigurationError: the store was written with ``pseudonymize_key`` and
            this ``Analytics`` has none, or another one."""
        stored = self.stored_id(user_id)
        self.store.check_pseudonym_key(self._pseudonym_check)
        also = self._real_ids(user_id, stored)
        dead_letters = self._flusher.dead_letters
        names = None if dead_letters is None else self.store.mention_names(stored, also)
        receipt = self.store.erase_user(stored, self._now(), also=also)
        if dead_letters is not None and names is not None:
            token = self.store.erased_token(stored)
            assert token is not None  # the erase wrote the tombstone
            try:
                rewritten = dead_letters.erase(stored, names, token)
            except OSError as exc:
                raise StoreError(
                    f"the player was erased from the store, but not from the dead letters"
                    f" in {dead_letters.directory}: {exc}; erase again once it is fixed"
                ) from exc
            receipt = attrs.evolve(receipt, dead_letters=rewritten)
        if self._hub is not None:
            self._hub.erase(user_id, self._aggregator.now_ms())
            if not self._started:
                # A one-off command (the CLI, manage.py) exits right after: its
                # forwarders deliver now, within forward_stop_timeout.
                self._hub.stop()
        return receipt

    def prune(self) -> PruneResult:
        """Delete events older than ``event_ttl``; close sessions idle past ``idle_timeout``."""
        return self.store.prune(self._now(), self.event_ttl, self.idle_timeout)

    def _now(self) -> datetime:
        return from_ms(self._aggregator.now_ms())

    def get_metrics(self) -> Metrics:
        """The seed's ``getMetrics()``: flushes this process's buffer, then reads."""
        self.flush()
        day, month = self._day_keys(self._aggregator.now_ms())
        stored = self.store.get_day(day)
        # Every field, zeros included (custom counters too), whether or not it moved yet.
        today = DailyStats(
            day, month, {**self._zeros, **(stored.counters if stored is not None else {})}
        )
        figures = self.store.get_month(month)
        avg_min = (
            round_half_up(figures.timed_session_s / figures.timed_sessions / 60)
            if figures.timed_sessions
            else 0
        )
        return Metrics(
            today=today,
            dau=int(today["dau"]),
            mau=figures.mau,
            avg_session_min=avg_min,
            active_sessions=self.store.count_active_sessions(
                to_ms(self._now() - self.idle_timeout)
            ),
        )

    def get_last_30_days(self) -> list[DailyStats]:
        """The newest 30 daily documents, newest first (flushes first)."""
        self.flush()
        return self.store.recent_days(30)

    # -- the same reads for an event loop ---------------------------------------------
    # Why: a flush and a read are store I/O, which must not run on an asyncio event
    # loop (every other connection of the worker would wait); these run them in the
    # loop's default thread pool. ``track()`` and the other recording calls need no
    # such wrapper: they do no I/O and take no lock a flush holds for long.

    async def aflush(self) -> None:
        """:meth:`flush` in a worker thread, for ``await`` on an asyncio event loop."""
        await asyncio.to_thread(self.flush)

    async def aget_metrics(self) -> Metrics:
        """:meth:`get_metrics` in a worker thread, for ``await`` on an asyncio event loop."""
        return await asyncio.to_thread(self.get_metrics)

    async def aget_last_30_days(self) -> list[DailyStats]:
        """:meth:`get_last_30_days` in a worker thread, for an asyncio event loop."""
        return await asyncio.to_thread(self.get_last_30_days)

    @property
    def kpis(self) -> KPIs:
        """The KPI queries (:class:`~gso_analytics.kpis.KPIs`) on this store, with this
        instance's timezone, clock and event TTL. Flushes this process's buffer first,
        as :meth:`get_metrics` does, so the answers include its own calls."""
        self.flush()
        return KPIs(
            self.store,
            tz=self.tz,
            clock=self.clock,
            event_ttl=self.event_ttl,
            test_users=self.test_users,
        )

    @property
    def buffer_room(self) -> int:
        """How many more calls this process can buffer before it drops them (both
        ``max_buffered_events`` and ``max_buffered_bytes`` counted): a replay or an
        import that outruns the flush thread flushes when it reaches 0."""
        return self._aggregator.room

    def stats(self) -> dict[str, Any]:
        """This process's health: what is buffered, stored, retried, dropped, rejected."""
        flusher = self._flusher
        return {
            # The same count the bound uses: calls being aggregated into a batch
            # right now are in the backlog, not yet in a pending batch.
            "buffered": self._aggregator.size + self._aggregator.backlog,
            "buffered_bytes": self._aggregator.buffered_bytes,
            "flushed": flusher.flushed,
            "batches": flusher.batches,
            "retried": flusher.retried,
            "flush_failures": flusher.failures,
            # Failures that were not StoreError (bugs, untranslated driver errors), and
            # batches set aside (see docs/failures.md).
            "internal_errors": flusher.internal_errors,
            "quarantined": flusher.quarantined,
            "dropped": self._dropped,
            "rejected": self._rejected + self._aggregator.overflowed,
            "last_error": flusher.last_error,
            "last_flush_age_s": None
            if flusher.last_flush is None
            else max(0.0, time.time() - flusher.last_flush),
            # Logouts of this process that ended no session when stored (no login of
            # the player before them, in any process, as far as the store knew then).
            "logouts_without_session": flusher.unmatched_logouts,
            # Increments cut at the counters' ceiling of 2**61 by this process's writes
            # (see counters.MAX_COUNTER): not 0 means a figure reads "at least".
            "counters_saturated": self.store.saturated,
            "forwarding": ForwardingHub.empty_stats() if self._hub is None else self._hub.stats(),
        }
