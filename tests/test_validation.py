"""Input validation: every row of the tables below is one test.

A rejected call raises (strict) or is counted and logged once per (event, field,
reason) (lenient), and
in both modes leaves the store exactly as a run without it would: other buffered data
is untouched. Accepted odd input (SQL-looking ids, unicode) is stored verbatim as data.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import pytest

from gso_analytics import (
    Analytics,
    ConfigurationError,
    CounterRule,
    InvalidTypeError,
    Store,
    ValidationError,
    open_store,
)
from gso_analytics import analytics as analytics_module
from gso_analytics.analytics import MAX_LOGGED_REJECTIONS

if TYPE_CHECKING:
    from conftest import AnalyticsFactory, FakeClock

Snapshot = Callable[..., dict[str, Any]]
Call = Callable[[Analytics], None]

NAN = float("nan")
INF = float("inf")


def nested(levels: int) -> dict[str, Any]:
    data: dict[str, Any] = {"leaf": 1}
    for _ in range(levels):
        data = {"level": data}
    return data


def rejected_row(
    call: Call, field: str, error: type[ValidationError], row_id: str
) -> pytest.ParameterSet:
    return pytest.param(call, field, error, id=row_id)


def _user_id_rows() -> list[pytest.ParameterSet]:
    bad_ids: list[tuple[object, type[ValidationError], str]] = [
        (None, InvalidTypeError, "none"),
        (42, InvalidTypeError, "int"),
        ({"$ne": None}, InvalidTypeError, "operator-dict"),
        (["u1"], InvalidTypeError, "list"),
        (b"u1", InvalidTypeError, "bytes"),
        ("", ValidationError, "empty"),
        ("x" * 129, ValidationError, "too-long"),
        ("a\x00b", ValidationError, "nul"),
        ("line\nbreak", ValidationError, "newline"),
        ("\x1b[2J", ValidationError, "escape"),
        ("\ud800", ValidationError, "lone-surrogate"),
    ]
    rows = []
    for value, error, name in bad_ids:
        rows += [
            rejected_row(lambda a, v=value: a.on_login(v), "user_id", error, f"login-{name}"),
            rejected_row(lambda a, v=value: a.on_logout(v), "user_id", error, f"logout-{name}"),
            rejected_row(
                lambda a, v=value: a.track("dungeon.complete", v), "user_id", error, f"track-{name}"
            ),
        ]
    return rows


def _event_rows() -> list[pytest.ParameterSet]:
    bad_events: list[tuple[object, type[ValidationError], str]] = [
        (None, InvalidTypeError, "none"),
        (42, InvalidTypeError, "int"),
        ({"$ne": None}, InvalidTypeError, "operator-dict"),
        (["dungeon.complete"], InvalidTypeError, "list"),
        ("", ValidationError, "empty"),
        ("e" * 129, ValidationError, "too-long"),
        ("dungeon\x00complete", ValidationError, "nul"),
        ("quest\n", ValidationError, "newline"),
        ("\udfff", ValidationError, "lone-surrogate"),
    ]
    return [
        rejected_row(lambda a, v=value: a.track(v, "u1"), "event", error, f"event-{name}")
        for value, error, name in bad_events
    ]


def _username_rows() -> list[pytest.ParameterSet]:
    return [
        rejected_row(lambda a: a.on_login("other", 42), "username", InvalidTypeError, "name-int"),
        rejected_row(
            lambda a: a.on_login("other", "\x07bell"), "username", ValidationError, "name-bell"
        ),
    ]


def _amount_rows() -> list[pytest.ParameterSet]:
    bad_amounts: list[tuple[Any, type[ValidationError], str]] = [
        (True, InvalidTypeError, "bool-true"),
        (False, InvalidTypeError, "bool-false"),
        (NAN, ValidationError, "nan"),
        (INF, ValidationError, "inf"),
        (-INF, ValidationError, "minus-inf"),
        (-1, ValidationError, "negative"),
        (-0.5, ValidationError, "negative-float"),
        ("10", InvalidTypeError, "string"),
        (None, InvalidTypeError, "none"),
        ([5], InvalidTypeError, "list"),
        (2**60, ValidationError, "huge"),
    ]
    rows = [
        rejected_row(
            lambda a, v=value: a.track("credits.earn", "u1", {"amount": v}),
            "data.amount",
            error,
            f"amount-{name}",
        )
        for value, error, name in bad_amounts
    ]
    rows += [
        rejected_row(
            lambda a: a.track("credits.earn", "u1", {}), "data.amount", ValidationError, "missing"
        ),
        rejected_row(
            lambda a: a.track("credits.earn", "u1"), "data.amount", ValidationError, "no-data"
        ),
        rejected_row(
            lambda a: a.track("gems.purchase", "u1", {"amount": 5}),
            "data.gems",
            ValidationError,
            "wrong-key",
        ),
        rejected_row(
            lambda a: a.track("stripe.payment", "u1", {"amountCents": "499"}),
            "data.amountCents",
            InvalidTypeError,
            "cents-string",
        ),
        rejected_row(
            lambda a: a.track("stripe.payment", "u1", {"amountCents": 4.99}),
            "data.amountCents",
            ValidationError,
            "cents-dollars",
        ),
    ]
    return rows


class _Opaque:
    pass


def _data_rows() -> list[pytest.ParameterSet]:
    bad_data: list[tuple[Any, str, type[ValidationError], str]] = [
        ([1, 2], "data", InvalidTypeError, "list"),
        ("text", "data", InvalidTypeError, "string"),
        (5, "data", InvalidTypeError, "int"),
        ({"s": {1, 2}}, "data.s", InvalidTypeError, "set"),
        ({"o": _Opaque()}, "data.o", InvalidTypeError, "object"),
        ({"b": b"x"}, "data.b", InvalidTypeError, "bytes"),
        ({1: "x"}, "data", InvalidTypeError, "int-key"),
        ({"n": {"x": NAN}}, "data.n.x", ValidationError, "nested-nan"),
        ({"l": [1, INF]}, "data.l[1]", ValidationError, "inf-in-list"),
        ({"$where": "1"}, "$where", ValidationError, "dollar-key"),
        ({"inner": {"$gt": ""}}, "$gt", ValidationError, "nested-dollar-key"),
        ({"a.b": 1}, "a.b", ValidationError, "dotted-key"),
        ({"": 1}, "data", ValidationError, "empty-key"),
        (nested(20), "data", ValidationError, "too-deep"),
        ({"blob": "x" * 17_000}, "data", ValidationError, "too-big"),
        ({"s": "\ud800"}, "data", ValidationError, "lone-surrogate"),
        ({"big": 2**64}, "data.big", ValidationError, "int-overflow"),
    ]
    return [
        rejected_row(lambda a, d=data: a.track("tutorial.step", "u1", d), field, error, f"data-{n}")
        for data, field, error, n in bad_data
    ]


REJECTED = _user_id_rows() + _event_rows() + _username_rows() + _amount_rows() + _data_rows()


def good_calls_before(analytics: Analytics) -> None:
    analytics.on_login("good", "Good Player")
    analytics.track("credits.earn", "good", {"amount": 5})
    analytics.track("tutorial.step", "good", {"step": 1})


def good_calls_after(analytics: Analytics) -> None:
    analytics.track("dungeon.complete", "good")


def reference(clock: FakeClock, take_snapshot: Snapshot) -> dict[str, Any]:
    """The store after the good calls alone."""
    store = open_store("memory://")
    analytics = Analytics(store, clock=clock)
    good_calls_before(analytics)
    good_calls_after(analytics)
    analytics.flush()
    return take_snapshot(store, ("good", "other"))


def rejection_logs(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "gso_analytics" and r.levelno == logging.WARNING and "rejected" in r.message
    ]


@pytest.mark.parametrize(("call", "field", "error"), REJECTED)
def test_strict_mode_raises_naming_the_field(
    call: Call,
    field: str,
    error: type[ValidationError],
    make_analytics: AnalyticsFactory,
    clock: FakeClock,
    take_snapshot: Snapshot,
) -> None:
    """strict=True raises ValidationError (a ValueError), or InvalidTypeError (also a
    TypeError) for a wrong type, naming the field; nothing of the call is buffered."""
    store = open_store("memory://")
    analytics = make_analytics(store, strict=True)
    good_calls_before(analytics)
    buffered = analytics.stats()["buffered"]
    with pytest.raises(error) as caught:
        call(analytics)
    exc = caught.value
    assert isinstance(exc, ValueError)
    assert isinstance(exc, TypeError) == (error is InvalidTypeError)
    assert field in exc.field
    assert field in str(exc)
    assert analytics.stats()["buffered"] == buffered
    good_calls_after(analytics)
    analytics.flush()
    assert take_snapshot(store, ("good", "other")) == reference(clock, take_snapshot)


@pytest.mark.parametrize(("call", "field", "error"), REJECTED)
def test_lenient_mode_counts_logs_once_and_keeps_other_data(
    call: Call,
    field: str,
    error: type[ValidationError],
    make_analytics: AnalyticsFactory,
    clock: FakeClock,
    take_snapshot: Snapshot,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The default (lenient) mode never raises on a request path: the call is counted in
    stats()["rejected"], logged once per kind, and other buffered data is stored."""
    store = open_store("memory://")
    analytics = make_analytics(store)
    good_calls_before(analytics)
    with caplog.at_level(logging.WARNING, logger="gso_analytics"):
        call(analytics)
        call(analytics)
    good_calls_after(analytics)
    analytics.flush()
    assert analytics.stats()["rejected"] == 2
    logs = rejection_logs(caplog)
    assert len(logs) == 1
    assert field in logs[0].getMessage()
    assert take_snapshot(store, ("good", "other")) == reference(clock, take_snapshot)


def test_each_kind_of_rejection_is_logged_once(
    make_analytics: AnalyticsFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """One warning per reason, however many calls: loud, never a flood."""
    analytics = make_analytics(open_store("memory://"))
    with caplog.at_level(logging.WARNING, logger="gso_analytics"):
        for _ in range(50):
            analytics.on_login(None)  # type: ignore[arg-type]
            analytics.track("credits.earn", "u1", {"amount": -1})
    assert analytics.stats()["rejected"] == 100
    assert len(rejection_logs(caplog)) == 2


def test_a_rejection_shows_caller_text_short_and_escaped(
    make_analytics: AnalyticsFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A data key of 4 MiB once made a 4 MiB log line (and up to 64 of them stayed in
    memory for the process's life); a key with a newline or a terminal escape forged
    log lines. The message shows at most 64 characters of caller text, escaped, with
    its length; strict mode raises the same short message."""
    analytics = make_analytics(open_store("memory://"))
    huge = "k" * (4 * 1024 * 1024)
    with caplog.at_level(logging.WARNING, logger="gso_analytics"):
        analytics.track("match.end", "u1", {huge: NAN})
        analytics.track("match.end", "u1", {"x\nFAKE gso_analytics: all good\x1b[2J": NAN})
    logs = [r.getMessage() for r in rejection_logs(caplog)]
    assert len(logs) == 2
    assert all(len(line) < 400 for line in logs), [len(line) for line in logs]
    assert f"({len('data.' + huge)} characters)" in logs[0]
    assert "\n" not in logs[1] and "\x1b" not in logs[1]  # escaped, not raw
    assert "\\n" in logs[1] and "\\x1b" in logs[1]
    assert sum(len(key[1]) for key in analytics._logged_rejections) < 2000
    strict = make_analytics(open_store("memory://"), strict=True)
    with pytest.raises(ValidationError) as caught:
        strict.track("match.end", "u1", {huge: NAN})
    assert len(str(caught.value)) < 400 and len(caught.value.field) < 100


def test_each_reason_is_logged_once_per_event_and_field(
    make_analytics: AnalyticsFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """After one NaN, a payload too large is another problem, worth its own line; the
    same problem again is only counted."""
    analytics = make_analytics(open_store("memory://"))
    with caplog.at_level(logging.WARNING, logger="gso_analytics"):
        for _ in range(3):
            analytics.track("match.end", "u1", {"score": NAN})
            analytics.track("match.end", "u1", {"replay": "x" * 20_000})
            analytics.track("quest.end", "u1", {"score": NAN})
    assert analytics.stats()["rejected"] == 9
    logs = [r.getMessage() for r in rejection_logs(caplog)]
    assert len(logs) == 3
    assert "match.end" in logs[0] and "data.score" in logs[0] and "finite" in logs[0]
    assert "20" in logs[1] and "bytes" in logs[1]
    assert "quest.end" in logs[2]


def test_caller_chosen_keys_log_a_bounded_number_of_rejections(
    make_analytics: AnalyticsFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """The key names in ``data`` (and event names) come from the caller or a client:
    each new one is a new line only up to a bound, then one line says the rest is
    only counted."""
    analytics = make_analytics(open_store("memory://"))
    with caplog.at_level(logging.WARNING, logger="gso_analytics"):
        for i in range(100):
            analytics.track("tutorial.step", "u1", {f"$op{i}": 1})
            analytics.track("tutorial.step", "u1", {f"key{i}": {"x": NAN}})
            analytics.track(f"event.{i}", "u1", {"list": [_Opaque()]})
    assert analytics.stats()["rejected"] == 300
    logs = rejection_logs(caplog)
    assert len(logs) == MAX_LOGGED_REJECTIONS + 1
    assert "further ones are only counted" in logs[-1].getMessage()


#: A decimal counter, as a game declares one.
GOLD = {"gold.loot": CounterRule("goldLooted", "amount", decimal=True)}


def test_amount_cents_must_be_whole_cents(make_analytics: AnalyticsFactory) -> None:
    """``4.99`` is a price in dollars: refused, with a message that says so; a whole
    float (``499.0``, as JSON decoders may give) counts as 499. Every other integer
    counter refuses fractions too, naming the counter; a decimal one takes them."""
    analytics = make_analytics(open_store("memory://"), strict=True, counters=GOLD)
    with pytest.raises(ValidationError, match=r"whole number of cents.*4\.99 dollars is 499"):
        analytics.track("stripe.payment", "u1", {"amountCents": 4.99})
    analytics.track("stripe.payment", "u1", {"amountCents": 499.0})
    with pytest.raises(ValidationError, match=r"creditsEarned is an integer counter, got 12\.5"):
        analytics.track("credits.earn", "u1", {"amount": 12.5})
    analytics.track("gold.loot", "u1", {"amount": 12.5})
    today = analytics.get_metrics().to_dict()["today"]
    assert (today["stripeRevenue"], today["goldLooted"]) == (499, Decimal("12.5"))


@pytest.mark.parametrize("url", ["memory://shared", "memory:///tmp/x.db", "memory://?x=1"])
def test_memory_url_with_anything_after_the_scheme_is_refused(url: str) -> None:
    with pytest.raises(ConfigurationError, match="memory:// takes nothing after the scheme"):
        open_store(url)


# -- accepted input ---------------------------------------------------------------------

SQL_ID = "'; DROP TABLE gso_analytics_daily; --"


class _Name(str):
    """A str subclass whose methods could misbehave; its plain value must be stored."""

    def __str__(self) -> str:
        return "something else"


@pytest.mark.parametrize(
    "user_id",
    [
        SQL_ID,
        "robert'); DROP TABLE gso_analytics_sessions;--",
        '{"$ne": null}',
        "O'Brien",
        "玩家一",
        "🎮player",
        "x" * 128,
        _Name("subclassed"),
    ],
    ids=[
        "sql-daily",
        "sql-sessions",
        "json-operator",
        "quote",
        "cjk",
        "emoji",
        "max-len",
        "subcls",
    ],
)
def test_odd_but_valid_user_ids_are_stored_verbatim(
    user_id: str, store: Store, make_analytics: AnalyticsFactory, clock: FakeClock
) -> None:
    """Strings that look like SQL or operators are data: accepted and round-tripped."""
    analytics = make_analytics(store, strict=True)
    analytics.on_login(user_id, user_id)
    analytics.track("credits.earn", user_id, {"amount": 7, "note": user_id})
    clock.advance(61)
    analytics.on_logout(user_id)
    metrics = analytics.get_metrics()
    plain = str.__str__(user_id)
    (session,) = store.get_sessions(plain)
    assert type(session.user_id) is str
    assert (session.user_id, session.username, session.duration_s) == (plain, plain, 61)
    (event,) = store.get_events(plain)
    assert event.user_id == plain
    assert (metrics.dau, metrics.mau, metrics.to_dict()["today"]["creditsEarned"]) == (1, 1, 7)
    assert analytics.stats()["rejected"] == 0


def test_sql_looking_ids_leave_every_sqlite_table_in_place(
    sqlite_url: str, make_analytics: AnalyticsFactory
) -> None:
    """The SQL-looking id is bound as a parameter, never spliced into a statement."""
    store = open_store(sqlite_url)
    try:
        path = store.path  # type: ignore[attr-defined]
        with sqlite3.connect(path) as conn:
            tables_before = sorted(
                r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
            )
        assert "gso_analytics_daily" in tables_before
        analytics = make_analytics(store, strict=True)
        analytics.on_login(SQL_ID, SQL_ID)
        analytics.track(SQL_ID, SQL_ID, {SQL_ID.replace(".", "_"): SQL_ID})
        analytics.track("market.sale", SQL_ID)
        analytics.on_logout(SQL_ID)
        analytics.flush()
        with sqlite3.connect(path) as conn:
            tables_after = sorted(
                r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
            )
            stored_ids = {r[0] for r in conn.execute("SELECT userId FROM gso_analytics_sessions")}
        assert tables_after == tables_before
        assert stored_ids == {SQL_ID}
        assert [e.event for e in store.get_events(SQL_ID)] == [SQL_ID, "market.sale"]
        assert store.get_day("2025-03-14")["marketSales"] == 1
    finally:
        store.close()


def _moved(store: Store) -> dict[str, Any]:
    """The day's counters that moved (a store may keep a 0 it was given)."""
    (day,) = store.recent_days()
    return {field: value for field, value in day.counters.items() if value}


@pytest.mark.parametrize(
    ("event", "data", "field", "expected"),
    [
        ("credits.earn", {"amount": 0}, "creditsEarned", 0),
        ("credits.earn", {"amount": 2**53}, "creditsEarned", 2**53),
        ("gold.loot", {"amount": 12.5}, "goldLooted", Decimal("12.5")),
        ("credits.earn", {"amount": 3.0, "extra": [1, None, True]}, "creditsEarned", 3),
        ("gems.purchase", {"gems": 80, "amount": -1}, "gemsPurchased", 80),
        ("quest.chapter.1.complete", {"deep": nested(3)}, None, None),
    ],
    ids=["zero", "max", "decimal", "integral-float", "other-key-ignored", "unknown-dotted"],
)
def test_valid_amounts_and_data_are_accepted(
    event: str,
    data: dict[str, Any],
    field: str | None,
    expected: float | Decimal | None,
    store: Store,
    make_analytics: AnalyticsFactory,
) -> None:
    """The edges of valid input are not rejected, and amounts add exactly."""
    analytics = make_analytics(store, strict=True, counters=GOLD)
    analytics.track(event, "u1", data)
    analytics.flush()
    if field is None:  # activity only: the player is active, in a session of 0 s
        assert _moved(store) == {"dau": 1, "sessionCount": 1}
    else:
        assert store.get_day("2025-03-14")[field] == expected
    assert [e.event for e in store.get_events()] == [event]


def test_unknown_events_go_to_the_stream_without_a_counter(
    store: Store, make_analytics: AnalyticsFactory
) -> None:
    """An event with no counter rule is kept in the stream and moves no counter: its
    player is active (a session of 0 s), nothing more."""
    analytics = make_analytics(store, strict=True)
    analytics.track("tutorial.step", "u1", {"step": 3})
    analytics.track("shop.open", "u2")
    analytics.flush()
    assert [(e.event, e.data) for e in store.get_events()] == [
        ("tutorial.step", '{"step":3}'),
        ("shop.open", "{}"),
    ]
    assert _moved(store) == {"dau": 2, "sessionCount": 2}
    assert analytics.stats()["rejected"] == 0


def test_logout_without_login_changes_no_figure(
    store: Store, make_analytics: AnalyticsFactory, take_snapshot: Snapshot
) -> None:
    """A logout nobody logged in for is valid input that ends no session: a mark, so
    its player is active that day (``active_on="any"``), nothing more."""
    analytics = make_analytics(store, strict=True)
    analytics.on_logout("ghost")
    metrics = analytics.get_metrics()
    assert (metrics.dau, metrics.mau, metrics.active_sessions) == (1, 1, 0)
    assert take_snapshot(store, ("ghost",))["sessions"] == {"ghost": []}
    assert _moved(store) == {"dau": 1}
    assert analytics.stats()["rejected"] == 0


def test_caller_mutating_data_after_track_changes_nothing(
    store: Store, make_analytics: AnalyticsFactory
) -> None:
    """``data`` is snapshotted at the call: a later mutation by the caller is not stored."""
    analytics = make_analytics(store)
    data: dict[str, Any] = {"amount": 5, "items": ["sword"]}
    analytics.track("credits.earn", "u1", data)
    data["amount"] = 500
    data["items"].append("shield")
    analytics.flush()
    (event,) = store.get_events()
    assert event.data == '{"amount":5,"items":["sword"]}'
    assert store.get_day("2025-03-14")["creditsEarned"] == 5


class _TrappedKey(str):
    """A data key whose hash is caller code: hashed once, as the dict is built; a
    lookup by it (which hashes it again) must not happen."""

    hashed = False

    def __hash__(self) -> int:
        if self.hashed:
            raise AssertionError("the library looked a value up by a caller's key")
        self.hashed = True
        return str.__hash__(self)


@pytest.mark.parametrize(
    "data",
    [{_TrappedKey("step"): 1}, {"tier": 3, _TrappedKey("step"): 1}, {_TrappedKey("s"): 1, "t": 2}],
    ids=["one key", "second key", "first key"],
)
def test_a_str_subclass_data_key_is_refused_before_any_lookup(
    store: Store, make_analytics: AnalyticsFactory, data: dict[str, Any]
) -> None:
    """``track()`` takes one- and two-key dicts inline, by their keys then the values:
    a key that is not exactly a ``str`` is refused (as the full check refuses it) before
    any value is looked up by it, and the calls around it are stored."""
    analytics = make_analytics(store, strict=True)
    analytics.track("tutorial.step", "u1", {"step": 0, "tier": 1})
    with pytest.raises(InvalidTypeError, match="must be a string"):
        analytics.track("tutorial.step", "u1", data)
    analytics.track("tutorial.step", "u1", {"step": 2})
    analytics.flush()
    assert sorted(e.data for e in store.get_events("u1")) == ['{"step":0,"tier":1}', '{"step":2}']


@pytest.mark.parametrize(
    "options",
    [
        {"counters": {"quest.complete": "dau"}},
        {"counters": {"quest.complete": "totalSessionS"}},
        {"counters": {"quest.complete": "not an identifier"}},
        {"counters": {"quest.complete": 5}},
        {"counters": {"quest.complete": ("questsCompleted",)}},
        {"tz": "Mars/Olympus_Mons"},
        {"flush_interval": 0},
        {"max_buffered_events": 0},
    ],
    ids=lambda options: repr(options),
)
def test_bad_configuration_fails_at_construction(options: dict[str, Any]) -> None:
    """A misconfiguration is reported when the app starts, not as wrong numbers later."""
    with pytest.raises(ConfigurationError):
        Analytics(open_store("memory://"), **options)


@pytest.mark.parametrize("url", ["memory", "nosuch://x", "sqlite:///:memory:", "sqlite://"])
def test_bad_store_urls_are_configuration_errors(url: str) -> None:
    """A URL that names no usable store says so, instead of silently using another."""
    with pytest.raises(ConfigurationError):
        open_store(url)


def test_remembered_event_names_are_still_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    """``track()`` remembers the names it checked (with their counter rule), a bounded
    number: a remembered name lets no str subclass through as itself, no bad name is
    ever remembered, and names past the bound are checked at every call."""
    monkeypatch.setattr(analytics_module, "MAX_KNOWN_EVENTS", 2)
    analytics = Analytics("memory://", forwarders=[], strict=True)
    analytics.track("credits.earn", "u1", {"amount": 2})
    analytics.track(_Name("credits.earn"), "u1", {"amount": 3})  # equal to a known name
    for name in ("quest.start", "quest.end", "quest.end"):  # the second fills the bound
        analytics.track(name, "u1")
    for bad in ("", "x" * 200, "bad\x00name", 7):
        for _ in range(2):  # a second time: it was not remembered either
            with pytest.raises(ValidationError):
                analytics.track(bad, "u1")  # type: ignore[arg-type]
    assert len(analytics._known_events) == 2
    analytics.flush()
    events = analytics.store.get_events("u1")
    assert [e.event for e in events] == ["credits.earn"] * 2 + ["quest.start"] + ["quest.end"] * 2
    assert {type(e.event) for e in events} == {str}
    assert analytics.get_metrics().today["creditsEarned"] == 5
    analytics.stop()
