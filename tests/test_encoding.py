"""The request path's fast data snapshot and the flush thread's JSON writer.

``snapshot_data`` keeps small flat dicts as copies and ``encode_flat`` writes their
JSON by hand for speed; ``json.dumps`` is the oracle both must agree with.
"""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from gso_analytics.validation import Limits, encode_flat, snapshot_data

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


@given(st.dictionaries(keys, scalars, max_size=20))
def test_snapshot_is_the_same_json_as_json_dumps(data: dict[str, object]) -> None:
    """Whatever path a dict takes, the text stored is json.dumps's, or it is rejected."""
    expected = oracle(data)
    try:
        snapshot = snapshot_data(data, Limits())
    except ValueError:
        assert expected is None
        return
    assert expected is not None
    assert (snapshot if isinstance(snapshot, str) else encode_flat(snapshot)) == expected


def test_snapshot_is_a_copy() -> None:
    """The caller may reuse its dict after track(): the buffer must not see it change."""
    data = {"amount": 5, "item": "sword"}
    snapshot = snapshot_data(data, Limits())
    data["amount"] = 6
    assert snapshot == {"amount": 5, "item": "sword"}


def test_small_limits_take_the_exact_path() -> None:
    """With max_data_bytes below the fast path's worst case, sizes are computed exactly."""
    limits = Limits(max_data_bytes=40)
    assert snapshot_data({"a": "x" * 20}, limits) == '{"a":"' + "x" * 20 + '"}'
