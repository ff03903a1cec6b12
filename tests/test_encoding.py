"""The request path's fast data snapshot and the flush's hand-written text writers.

``track()`` keeps small flat dicts as their keys and values and ``encode_flat`` writes
their JSON by hand for speed; ``json.dumps`` is the oracle both must agree with, read
back from the store after a flush. ``iso_from_ms`` writes event times reusing a cached
second's text; date arithmetic from the epoch, formatted field by field, is its oracle.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from gso_analytics import Analytics
from gso_analytics.clock import iso_from_ms, iso_ms
from gso_analytics.errors import ValidationError
from gso_analytics.validation import Limits

keys = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,70}", fullmatch=True)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=80),
)


def dumps(data: object) -> str:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def oracle(data: dict[str, object]) -> str | None:
    """json.dumps's text, or None where the library must reject the dict."""
    if any(type(v) is int and abs(v) >= 2**63 for v in data.values()):
        return None
    try:
        text = dumps(data)
        size = len(text.encode("utf-8"))
    except (ValueError, UnicodeEncodeError):  # NaN/infinity, lone surrogates
        return None
    return text if size <= Limits().max_data_bytes else None


def stored(data: dict[str, object], limits: Limits | None = None) -> str:
    """The data text stored for one ``track()`` with ``data``, after a flush (raises
    :class:`ValidationError` where the call is rejected)."""
    analytics = Analytics("memory://", forwarders=[], strict=True, limits=limits)
    try:
        analytics.track("item.craft", "u1", data)
        analytics.flush()
        (event,) = analytics.store.get_events()
        return event.data
    finally:
        analytics.stop()


@given(st.dictionaries(keys, scalars, max_size=20))
def test_snapshot_is_the_same_json_as_json_dumps(data: dict[str, object]) -> None:
    """Whatever path a dict takes (one or two keys, more, or the full check), the text
    stored is json.dumps's, or the call is rejected."""
    expected = oracle(data)
    try:
        text = stored(data)
    except ValidationError:
        assert expected is None
        return
    assert text == expected


def test_snapshot_is_a_copy() -> None:
    """The caller may reuse its dict after track(): the buffer must not see it change."""
    for data in ({"amount": 5}, {"amount": 5, "item": "sword"}, dict.fromkeys("abc", 5)):
        expected = dumps(data)
        analytics = Analytics("memory://", forwarders=[], strict=True)
        analytics.track("item.craft", "u1", data)
        data["amount"] = 6
        data["more"] = "x"
        analytics.flush()
        (event,) = analytics.store.get_events()
        analytics.stop()
        assert event.data == expected


def test_small_limits_take_the_exact_path() -> None:
    """With max_data_bytes below the fast path's worst case, sizes are computed exactly."""
    limits = Limits(max_data_bytes=40)
    assert stored({"a": "x" * 20}, limits) == '{"a":"' + "x" * 20 + '"}'
    try:
        stored({"a": "x" * 40}, limits)
    except ValidationError:
        return
    raise AssertionError("a dict over max_data_bytes was stored")


def iso_oracle(ms: int) -> str:
    moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)
    return (
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}T{moment.hour:02d}:"
        f"{moment.minute:02d}:{moment.second:02d}.{moment.microsecond // 1000:03d}Z"
    )


# 1900-01-01 to 9999-12-31: times before the epoch too, where divmod must floor.
moments_ms = st.integers(min_value=-2_208_988_800_000, max_value=253_402_300_799_999)


@given(st.lists(st.one_of(moments_ms, st.integers(0, 5_000)), min_size=1, max_size=50))
def test_time_text_from_a_cached_second_is_exact(times: list[int]) -> None:
    """A whole sequence: cache hits, misses, and going back in time."""
    assert [iso_from_ms(ms) for ms in times] == [iso_oracle(ms) for ms in times]


def test_time_text_within_one_second_and_across_it() -> None:
    base = 1_764_086_399_998  # 2025-11-25T15:59:59.998Z
    assert [iso_from_ms(base + k) for k in range(4)] == [
        "2025-11-25T15:59:59.998Z",
        "2025-11-25T15:59:59.999Z",
        "2025-11-25T16:00:00.000Z",
        "2025-11-25T16:00:00.001Z",
    ]
    assert iso_from_ms(base) == iso_ms(datetime(2025, 11, 25, 15, 59, 59, 998_000, tzinfo=UTC))
