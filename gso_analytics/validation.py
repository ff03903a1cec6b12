"""Checks applied to every tracked call before it touches the buffer.

Why here and not in the stores: a user id or event name must be a plain string long
before it can reach a query, so an operator-looking dict (``{"$ne": None}``) or an
SQL-looking string is either stored as inert data or rejected, never interpreted.
``data`` is encoded to JSON once, at the call, so the buffer holds an immutable
snapshot and a later mutation by the caller changes nothing.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from decimal import Decimal
from json.encoder import encode_basestring as _encode_string  # C, ensure_ascii=False
from typing import Any

import attrs

from .counters import DECIMAL_PLACES, MICRO
from .errors import InvalidTypeError, ValidationError

MAX_AMOUNT = 2**53  # exact in IEEE doubles, JavaScript and BSON alike


@attrs.frozen
class Limits:
    """Bounds on what one call may carry."""

    max_id_length: int = 128
    max_event_length: int = 128
    max_data_bytes: int = 16 * 1024
    max_data_depth: int = 8


def check_name(value: object, field: str, max_length: int) -> str:
    """Return ``value`` if it is a non-empty printable string of at most ``max_length``."""
    if type(value) is not str:
        if isinstance(value, str):  # str subclass: keep only its plain value
            value = str.__str__(value)
        else:
            raise InvalidTypeError(field, f"must be a string, not {type(value).__name__}")
    if not value:
        raise ValidationError(field, "must not be empty")
    if len(value) > max_length:
        raise ValidationError(field, f"is {len(value)} characters long, the limit is {max_length}")
    if not value.isprintable():
        raise ValidationError(field, "contains control or unprintable characters")
    return value


def _check_number(value: object, field: str) -> int | float:
    """Return ``value`` if it is a finite, non-negative int or float of sane size."""
    if type(value) is bool or not isinstance(value, int | float):
        raise InvalidTypeError(field, f"must be a number, not {type(value).__name__}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValidationError(field, f"must be finite, not {value!r}")
    if value < 0:
        raise ValidationError(field, f"must not be negative, got {value!r}")
    if value > MAX_AMOUNT:
        raise ValidationError(field, f"is {value!r}, above the limit of 2**53")
    return value


def _whole(value: object, field: str, why: Callable[[float], str]) -> int:
    """``value`` as a whole number: an int, or an integral float (``50.0``, as JSON
    decoders may give) taken as the int; a fraction is refused, saying ``why(value)``."""
    amount = _check_number(value, field)
    if isinstance(amount, float):
        if not amount.is_integer():
            raise ValidationError(field, why(amount))
        return int(amount)
    return amount


def check_amount(value: object, field: str, counter: str) -> int:
    """The amount of an integer counter (every counter not declared decimal). A fraction
    is refused rather than summed in floating point, where ``0.1 + 0.2`` is
    ``0.30000000000000004``."""
    return _whole(
        value,
        field,
        lambda amount: (
            f"must be a whole number: {counter} is an integer counter, got"
            f" {amount!r} (declare CounterRule({counter!r}, ..., decimal=True) to count fractions)"
        ),
    )


#: The largest amount of a decimal counter: its millionths stay within 2**53.
MAX_DECIMAL_AMOUNT = Decimal(MAX_AMOUNT) / MICRO


def check_decimal_amount(value: object, field: str) -> int:
    """The amount of a decimal counter, in millionths (as the counter is stored): an int,
    or a float taken as the shortest decimal that reads back as it (``0.1`` is 0.1, as
    written). More than :data:`~.counters.DECIMAL_PLACES` decimals (``0.1 + 0.2``, a
    float's own error) are refused, never rounded away unseen."""
    exact = Decimal(repr(_check_number(value, field)))
    if exact > MAX_DECIMAL_AMOUNT:
        raise ValidationError(field, f"is {value!r}, above the limit of {MAX_DECIMAL_AMOUNT}")
    micro = exact * MICRO
    if micro != micro.to_integral_value():
        raise ValidationError(
            field,
            f"has more than {DECIMAL_PLACES} decimal places ({value!r}); round it first,"
            f" e.g. round(amount, {DECIMAL_PLACES})",
        )
    return int(micro)


#: The amount key of real-money events: USD cents, so an integer.
CENTS_KEY = "amountCents"


def check_cents(value: object, field: str) -> int:
    """As :func:`check_amount`, but the message says why: ``4.99`` is dollars, not cents."""
    return _whole(
        value,
        field,
        lambda amount: (
            f"must be a whole number of cents, got {amount!r}"
            f" (a price of {amount} dollars is {round(amount * 100)} cents)"
        ),
    )


def _check_tree(value: Any, path: str, depth: int, limits: Limits) -> None:
    """Walk ``data`` and reject what JSON or a document store would misread."""
    if depth > limits.max_data_depth:
        raise ValidationError(path, f"is nested deeper than {limits.max_data_depth} levels")
    if isinstance(value, dict):
        for key, item in value.items():
            if type(key) is not str:
                raise InvalidTypeError(f"{path} key {key!r}", "must be a string")
            if not key or key[0] == "$" or "." in key or "\x00" in key:
                raise ValidationError(
                    f"{path} key {key!r}",
                    "must be non-empty, not start with '$', contain no '.'",
                )
            _check_tree(item, f"{path}.{key}", depth + 1, limits)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check_tree(item, f"{path}[{index}]", depth + 1, limits)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValidationError(path, f"must be finite, not {value!r}")
    elif isinstance(value, int):  # bool included: JSON has it
        if abs(value) > 2**63 - 1:
            raise ValidationError(path, "is an integer too large for a 64-bit store")
    elif value is not None and not isinstance(value, str):
        raise InvalidTypeError(path, f"is a {type(value).__name__}, which is not JSON")


#: The fast path of :func:`snapshot_data` takes at most this many keys, each an ASCII
#: identifier of at most ``FAST_LEN`` characters, with scalar values (strings ASCII
#: and at most ``FAST_LEN`` long). Its worst JSON size, every string character
#: escaped to 6 bytes, is ``FAST_WORST_BYTES``: when that fits ``max_data_bytes``,
#: such a dict needs no size computation at all.
FAST_KEYS = 16
FAST_LEN = 64
FAST_WORST_BYTES = 2 + FAST_KEYS * ((FAST_LEN + 3) + (6 * FAST_LEN + 2))

#: Keys already seen to qualify: a game uses a handful, so the request path usually
#: checks a key with one set lookup. Bounded, never evicted.
PLAIN_KEYS: set[str] = set()
_MAX_PLAIN_KEYS = 4096


def plain_key(key: str) -> bool:
    if not (len(key) <= FAST_LEN and key.isascii() and key.isidentifier()):
        return False
    if len(PLAIN_KEYS) < _MAX_PLAIN_KEYS:
        PLAIN_KEYS.add(key)
    return True


#: A flat ``data`` as the request path snapshots it: its (key, value) pairs, in order.
FlatData = tuple[tuple[str, Any], ...]


def snapshot_data(data: dict[str, Any], limits: Limits) -> FlatData | str:
    """Validate ``data`` and return a private snapshot of it for the buffer.

    The common case, a small flat dict of short plain keys and scalar values, is
    checked in one cheap pass over its items, taken as a tuple of pairs (a full
    snapshot of scalars, made by one C call: a thread changing the dict meanwhile is
    wholly in it or out of it); its JSON is written later, on the flush thread, by
    :func:`encode_flat`, and is bounded by ``FAST_WORST_BYTES``. Anything else takes
    the full check and is snapshotted as its JSON text. ``Analytics.track`` writes
    this check out for one- and two-key dicts (a call and a loop were a third of its
    cost); ``tests/test_encoding.py`` holds every path to ``json.dumps``.

    Strings and numbers, not a copy of the dict: the cyclic garbage collector stops
    tracking a buffered call holding them, while a call holding a dict stays tracked
    until it is flushed (see :mod:`.aggregator`). A minute of buffered calls would
    otherwise be traversed by every full collection in that minute, each holding the
    GIL on whichever thread triggers it.
    """
    if type(data) is dict and len(data) <= FAST_KEYS and limits.max_data_bytes >= FAST_WORST_BYTES:
        items = tuple(data.items())
        for key, value in items:
            if type(key) is not str or (key not in PLAIN_KEYS and not plain_key(key)):
                break
            kind = type(value)
            if kind is int:
                if -(2**63) < value < 2**63:
                    continue
                break
            if kind is str:
                if len(value) <= FAST_LEN and value.isascii():
                    continue
                break  # long, or may hold a lone surrogate: the full check decides
            if kind is float:
                if math.isfinite(value):
                    continue
                break
            if kind is not bool and value is not None:
                break
        else:
            return items
    return encode_data(data, limits)


def encode_flat(flat: Sequence[Any]) -> str:
    """The compact JSON of a dict accepted by the fast path (see :data:`FlatData`),
    given as its keys and values one after the other, as a buffered call holds them.

    Its keys are ASCII identifiers (nothing to escape) and its values plain scalars, so
    the text is assembled directly: about twice as fast as ``json.dumps``, which builds
    a new C encoder for every call. Output is identical to ``json.dumps(data,
    separators=(",", ":"), ensure_ascii=False)``.
    """
    parts = []
    pairs = iter(flat)
    for key, value in zip(pairs, pairs, strict=True):
        kind = type(value)
        if kind is str:
            text = _encode_string(value)
        elif kind is int:
            text = int.__repr__(value)
        elif kind is float:
            text = float.__repr__(value)
        elif value is None:
            text = "null"
        else:
            text = "true" if value else "false"
        parts.append(f'"{key}":{text}')
    return "{" + ",".join(parts) + "}"


def encode_data(data: object, limits: Limits) -> str:
    """Validate ``data`` and return its compact JSON text."""
    if data is None:
        return "{}"
    if not isinstance(data, dict):
        raise InvalidTypeError("data", f"must be a dict or None, not {type(data).__name__}")
    _check_tree(data, "data", 1, limits)
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise ValidationError("data", "contains a lone surrogate, which is not UTF-8") from exc
    if size > limits.max_data_bytes:
        raise ValidationError(
            "data", f"is {size} bytes as JSON, the limit is {limits.max_data_bytes}"
        )
    return text
