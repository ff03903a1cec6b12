"""Hostile input, one test per row of the "Bad input" table (docs/bad-input.md), on every
backend.

Why: the seed trusted its input (a dict as user id reached a MongoDB query, NaN and
negative amounts reached the totals). :data:`ROWS` is the table: each row is an
input, the behaviour the docs promise, and the call that proves it. A test per
row runs it between other players' calls - some already stored, some buffered in
the same batch, some after - on every backend, and shows that

- a rejected call is counted in ``stats()["rejected"]``, raises the named error in
  strict mode, and leaves the store exactly as a run without it (other users' data
  intact);
- an accepted odd input is stored verbatim as data (never as an operator or SQL),
  with the exact effect the row states and nothing else.

``test_docs_table_is_this_table`` keeps the docs' table and :data:`ROWS` equal,
so the table never promises what no test shows. ``tests/test_validation.py`` checks
the error field names, the log-once rule and more type variations on the memory store
(its helpers are reused here, not copied).
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from test_validation import INF, NAN, SQL_ID, _Name, _Opaque, nested

from gso_analytics import (
    Analytics,
    CounterRule,
    InvalidTypeError,
    Store,
    ValidationError,
    open_store,
)

if TYPE_CHECKING:
    from conftest import AnalyticsFactory, FakeClock

BAD_INPUT_PAGE = Path(__file__).resolve().parent.parent / "docs" / "bad-input.md"
TODAY = "2025-03-14"
MB = "x" * 1_000_000

Call = Callable[[Analytics, "FakeClock"], None]
Check = Callable[[Store, Analytics], None]
Snapshot = Callable[..., dict[str, Any]]


@dataclass(frozen=True)
class Row:
    """One row of the docs' table and its proof.

    ``error``: the row is rejected (strict mode raises this); ``parts`` are its calls,
    one per example in the ``input`` column, each rejected on its own. Otherwise it is
    accepted: ``check`` asserts what was stored, ``users`` are the odd user ids whose
    sessions the snapshot compares, and the whole store must equal a run where the
    row's call is replaced by ``equivalent`` (None: by the call itself on the memory
    store; :data:`NOTHING` for a call that must change nothing at all).
    """

    id: str
    input: str
    behaviour: str
    call: Call
    error: type[ValidationError] | None = None
    check: Check | None = None
    users: tuple[str, ...] = ()
    equivalent: Call | None = None
    parts: tuple[Call, ...] = ()


def NOTHING(analytics: Analytics, clock: FakeClock) -> None:
    """The call a no-op row is equivalent to."""


def rejected(
    id: str,
    input: str,
    *parts: Call,
    error: type[ValidationError] = ValidationError,
    why: str = "",
) -> Row:
    """A rejected row: each of ``parts`` is one bad call."""

    def call(analytics: Analytics, clock: FakeClock) -> None:
        for part in parts:
            part(analytics, clock)

    kind = " (`InvalidTypeError`)" if error is InvalidTypeError else ""
    return Row(id, input, f"rejected{kind}{why}", call, error, parts=parts)


def _circular() -> dict[str, Any]:
    data: dict[str, Any] = {"level": 1}
    data["self"] = data
    return data


# -- what accepted rows must find in the store --------------------------------------------


def _one_session(user: str, username: str | None) -> Check:
    def check(store: Store, analytics: Analytics) -> None:
        (session,) = store.get_sessions(user)
        assert session.user_id == user and type(session.user_id) is str
        assert session.username == username

    return check


def _event_data(user: str, expected: dict[str, Any]) -> Check:
    def check(store: Store, analytics: Analytics) -> None:
        (event,) = store.get_events(user)
        assert json.loads(event.data) == expected

    return check


def _credits(expected: float) -> Check:
    def check(store: Store, analytics: Analytics) -> None:
        stored = store.get_day(TODAY)["creditsEarned"]  # type: ignore[index]
        assert stored == 5 + expected  # 5: the other player's
        assert isinstance(stored, float) == isinstance(expected, float)  # 50.0 counts as 50

    return check


def _gold(expected: Decimal) -> Check:
    def check(store: Store, analytics: Analytics) -> None:
        stored = store.get_day(TODAY)["goldLooted"]  # type: ignore[index]
        assert stored == expected and type(stored) is Decimal

    return check


#: The counters of every scenario: the built-in ones and a decimal one.
COUNTERS = {"gold.loot": CounterRule("goldLooted", "amount", decimal=True)}


def _sql_strings(store: Store, analytics: Analytics) -> None:
    (session,) = store.get_sessions(SQL_ID)
    assert (session.user_id, session.username) == (SQL_ID, SQL_ID)
    (event,) = store.get_events(SQL_ID)
    assert (event.event, json.loads(event.data)) == (SQL_ID, {"note": SQL_ID})
    assert store.get_day(TODAY)["sessionCount"] == 3  # type: ignore[index]


OPERATOR_STRINGS = ("$where", "a.b", '{"$ne": null}')


def _operator_strings(store: Store, analytics: Analytics) -> None:
    for text in OPERATOR_STRINGS:
        assert [e.event for e in store.get_events(text)] == [text]
    # Five distinct players ("other", "good" and each string): none matches everyone.
    assert store.get_day(TODAY)["dau"] == 5  # type: ignore[index]


NFC = unicodedata.normalize("NFC", "José")
NFD = unicodedata.normalize("NFD", "José")


def _two_users(store: Store, analytics: Analytics) -> None:
    assert NFC != NFD
    assert [s.user_id for s in store.get_sessions(NFC)] == [NFC]
    assert [s.user_id for s in store.get_sessions(NFD)] == [NFD]
    assert store.get_day(TODAY)["dau"] == 4  # type: ignore[index]


def _unknown_event(store: Store, analytics: Analytics) -> None:
    assert [e.event for e in store.get_events("u-odd")] == ["quest.chapter.7.complete"]


def _double_login(store: Store, analytics: Analytics) -> None:
    (session,) = store.get_sessions("twice")
    assert (session.duration_s, session.logout_at) == (40, None)
    assert store.get_day(TODAY)["sessionCount"] == 3  # type: ignore[index]


def _ghost_logout(store: Store, analytics: Analytics) -> None:
    assert store.get_sessions("ghost") == []
    assert analytics.stats()["logouts_without_session"] == 1
    assert store.get_day(TODAY)["dau"] == 3  # type: ignore[index]  # "other", "good", ghost


def _timed_out(store: Store, analytics: Analytics) -> None:
    (session,) = store.get_sessions("late")
    assert session.timed_out and session.duration_s == 0
    assert session.logout_at == session.login_at  # its last mark


def _stats_only(store: Store, analytics: Analytics) -> None:
    assert analytics.stats()["rejected"] == 0


# -- the calls of rows that take several --------------------------------------------------


def _nfc_and_nfd(analytics: Analytics, clock: FakeClock) -> None:
    analytics.on_login(NFC)
    analytics.on_login(NFD)


def _sql_everywhere(analytics: Analytics, clock: FakeClock) -> None:
    analytics.on_login(SQL_ID, SQL_ID)
    analytics.track(SQL_ID, SQL_ID, {"note": SQL_ID})


def _operators_as_strings(analytics: Analytics, clock: FakeClock) -> None:
    for text in OPERATOR_STRINGS:
        analytics.track(text, text)


def _session(analytics: Analytics, clock: FakeClock) -> None:
    analytics.on_login("dbl")
    clock.advance(20)
    analytics.on_logout("dbl")


def _session_and_second_logout(analytics: Analytics, clock: FakeClock) -> None:
    _session(analytics, clock)
    analytics.on_logout("dbl")


def _login_twice(analytics: Analytics, clock: FakeClock) -> None:
    analytics.on_login("twice")
    clock.advance(40)
    analytics.on_login("twice")


def _timed_out_session(analytics: Analytics, clock: FakeClock) -> None:
    analytics.on_login("late")
    analytics.flush()
    clock.advance(hours=13)
    analytics.prune()


def _gold_loot(analytics: Analytics, clock: FakeClock) -> None:
    for amount in (12.5, 0.1, 0.2):
        analytics.track("gold.loot", "u-odd", {"amount": amount})


def _timed_out_then_logout(analytics: Analytics, clock: FakeClock) -> None:
    _timed_out_session(analytics, clock)
    analytics.on_logout("late")


# -- the table ------------------------------------------------------------------------------

ROWS: list[Row] = [
    # wrong types: nothing but a plain str reaches a query
    rejected("id-none", "user id `None`", lambda a, c: a.on_login(None), error=InvalidTypeError),
    rejected(
        "id-int",
        "user id an `int` (`42`)",
        lambda a, c: a.track("market.sale", 42),
        error=InvalidTypeError,
    ),
    rejected(
        "id-operator-dict",
        'user id a Mongo operator dict (`{"$ne": None}`)',
        lambda a, c: a.on_logout({"$ne": None}),
        error=InvalidTypeError,
    ),
    rejected(
        "id-bytes",
        'user id `bytes` (`b"u1"`)',
        lambda a, c: a.on_login(b"u1"),
        error=InvalidTypeError,
    ),
    rejected(
        "id-list",
        'user id a `list` (`["u1"]`)',
        lambda a, c: a.on_login(["u1"]),
        error=InvalidTypeError,
    ),
    rejected(
        "event-int",
        "event name not a `str` (`7`)",
        lambda a, c: a.track(7, "u1"),
        error=InvalidTypeError,
    ),
    rejected(
        "event-operator-dict",
        'event name an operator dict (`{"$gt": ""}`)',
        lambda a, c: a.track({"$gt": ""}, "u1"),
        error=InvalidTypeError,
    ),
    rejected(
        "username-int",
        "username not a `str` (`42`)",
        lambda a, c: a.on_login("u1", 42),
        error=InvalidTypeError,
    ),
    # empty, long, huge
    rejected("id-empty", 'empty user id (`""`)', lambda a, c: a.on_login("")),
    rejected("event-empty", "empty event name", lambda a, c: a.track("", "u1")),
    rejected(
        "id-129", "user id of 129 characters (the limit is 128)", lambda a, c: a.on_login("x" * 129)
    ),
    rejected("id-1mb", "user id of 1 MB", lambda a, c: a.on_login(MB)),
    rejected("event-1mb", "event name of 1 MB", lambda a, c: a.track(MB, "u1")),
    rejected(
        "data-1mb",
        "a 1 MB string in `data` (the limit is 16 KiB as JSON)",
        lambda a, c: a.track("chat.message", "u1", {"text": MB}),
    ),
    # control characters and unicode
    rejected("id-nul", 'NUL in a user id (`"a\\x00b"`)', lambda a, c: a.on_login("a\x00b")),
    rejected(
        "event-newline",
        'newline in an event name (`"quest\\n"`)',
        lambda a, c: a.track("quest\n", "u1"),
    ),
    rejected(
        "id-escape",
        'terminal escape in a user id (`"\\x1b[2J"`)',
        lambda a, c: a.on_logout("\x1b[2J"),
    ),
    rejected(
        "id-surrogate",
        'lone surrogate in a user id (`"\\ud800"`)',
        lambda a, c: a.on_login("\ud800"),
    ),
    rejected(
        "data-surrogate",
        'lone surrogate in a `data` string (`{"s": "\\udfff"}`)',
        lambda a, c: a.track("chat.message", "u1", {"s": "\udfff"}),
    ),
    rejected(
        "id-rtl-override",
        "right-to-left mark or override (U+200F, U+202E) in a user id",
        lambda a, c: a.on_login("admin\u202egpj.exe"),
        lambda a, c: a.on_logout("\u200fadmin"),
        why=": format characters are not printable",
    ),
    rejected(
        "username-zwj",
        "zero-width joiner (U+200D, as in the emoji 👩‍💻) in a username",
        lambda a, c: a.on_login("u1", "dev\U0001f469\u200d\U0001f4bb"),
        why=": format characters are not printable",
    ),
    rejected(
        "event-bom",
        "zero-width no-break space / BOM (U+FEFF) in an event name",
        lambda a, c: a.track("\ufeffdungeon.complete", "u1"),
        why=": format characters are not printable",
    ),
    Row(
        "id-emoji-cjk",
        "emoji and CJK in a user id and username (`🎮玩家一`)",
        "accepted, stored verbatim",
        lambda a, c: a.on_login("🎮玩家一", "🎮玩家一"),
        check=_one_session("🎮玩家一", "🎮玩家一"),
        users=("🎮玩家一",),
    ),
    Row(
        "id-rtl-script",
        "right-to-left script in a user id and username (`لاعب`, `שחקן`)",
        "accepted, stored verbatim",
        lambda a, c: a.on_login("لاعب", "שחקן"),
        check=_one_session("لاعب", "שחקן"),
        users=("لاعب",),
    ),
    Row(
        "nfc-nfd",
        "one name in NFC and in NFD (`José` as `é` and as `e` + U+0301)",
        "accepted as two different users: ids are not normalized",
        _nfc_and_nfd,
        check=_two_users,
        users=(NFC, NFD),
    ),
    Row(
        "data-control-chars",
        'control and format characters inside `data` values (`"\\x00"`, U+202E)',
        "accepted, stored as JSON text (`\\u0000` escaped)",
        lambda a, c: a.track("chat.message", "u-odd", {"text": "a\x00b\u202ec"}),
        check=_event_data("u-odd", {"text": "a\x00b\u202ec"}),
    ),
    # data
    rejected(
        "data-list",
        "`data` not a dict (`[1, 2]`)",
        lambda a, c: a.track("chat.message", "u1", [1, 2]),
        error=InvalidTypeError,
    ),
    rejected(
        "data-datetime",
        "`data` with a value JSON cannot hold (`datetime`, `set`, `bytes`, an object)",
        lambda a, c: a.track("chat.message", "u1", {"at": datetime.now(UTC)}),
        lambda a, c: a.track("chat.message", "u1", {"tags": {"a", "b"}}),
        lambda a, c: a.track("chat.message", "u1", {"raw": b"\x00"}),
        lambda a, c: a.track("chat.message", "u1", {"o": _Opaque()}),
        error=InvalidTypeError,
    ),
    rejected(
        "data-nan",
        'NaN anywhere in `data` (`{"score": {"x": nan}}`)',
        lambda a, c: a.track("chat.message", "u1", {"score": {"x": NAN}}),
    ),
    rejected(
        "data-inf",
        "±infinity in a `data` list",
        lambda a, c: a.track("chat.message", "u1", {"l": [1, -INF]}),
        lambda a, c: a.track("chat.message", "u1", {"l": [INF]}),
    ),
    rejected(
        "data-dollar-key",
        'Mongo operators as `data` keys (`{"$where": ...}`, nested `{"$gt": ""}`)',
        lambda a, c: a.track("chat.message", "u1", {"$where": "sleep(1000)"}),
        lambda a, c: a.track("chat.message", "u1", {"q": {"$gt": ""}}),
    ),
    rejected(
        "data-dot-key",
        'a `data` key with a dot (`{"a.b": 1}`)',
        lambda a, c: a.track("chat.message", "u1", {"a.b": 1}),
    ),
    rejected(
        "data-int-key",
        'a `data` key not a `str` (`{1: "x"}`)',
        lambda a, c: a.track("chat.message", "u1", {1: "x"}),
        error=InvalidTypeError,
    ),
    rejected(
        "data-deep",
        "`data` nested 20 levels deep (the limit is 8)",
        lambda a, c: a.track("chat.message", "u1", nested(20)),
    ),
    rejected(
        "data-circular",
        '`data` that contains itself (`d["self"] = d`)',
        lambda a, c: a.track("chat.message", "u1", _circular()),
    ),
    rejected(
        "data-bigint",
        "an integer in `data` beyond 64 bits (`2**64`)",
        lambda a, c: a.track("chat.message", "u1", {"big": 2**64}),
    ),
    # amounts
    rejected(
        "amount-missing",
        "amount missing on a counter event (`credits.earn` with `{}`)",
        lambda a, c: a.track("credits.earn", "u1", {}),
    ),
    rejected(
        "amount-bool",
        "amount a `bool` (`True`)",
        lambda a, c: a.track("credits.earn", "u1", {"amount": True}),
        error=InvalidTypeError,
    ),
    rejected(
        "amount-string",
        'amount a numeric string (`"10"`)',
        lambda a, c: a.track("credits.earn", "u1", {"amount": "10"}),
        error=InvalidTypeError,
    ),
    rejected(
        "amount-none",
        "amount `None`",
        lambda a, c: a.track("gems.purchase", "u1", {"gems": None}),
        error=InvalidTypeError,
    ),
    rejected(
        "amount-decimal",
        'amount a `Decimal` or `Fraction` (`Decimal("10")`)',
        lambda a, c: a.track("credits.earn", "u1", {"amount": Decimal("10")}),
        lambda a, c: a.track("credits.earn", "u1", {"amount": Fraction(1, 3)}),
        error=InvalidTypeError,
    ),
    rejected(
        "amount-nan",
        "amount NaN",
        lambda a, c: a.track("stripe.payment", "u1", {"amountCents": NAN}),
    ),
    rejected(
        "amount-inf",
        "amount ±infinity",
        lambda a, c: a.track("credits.earn", "u1", {"amount": INF}),
        lambda a, c: a.track("credits.earn", "u1", {"amount": -INF}),
    ),
    rejected(
        "amount-negative",
        "negative amount (`-1`, `-0.5`)",
        lambda a, c: a.track("credits.spend", "u1", {"amount": -1}),
        lambda a, c: a.track("gems.spend", "u1", {"amount": -0.5}),
    ),
    rejected(
        "amount-huge",
        "amount above 2**53 (`2**60`, `1e300`)",
        lambda a, c: a.track("credits.earn", "u1", {"amount": 2**60}),
        lambda a, c: a.track("credits.earn", "u1", {"amount": 1e300}),
    ),
    rejected(
        "amount-cents-in-dollars",
        "`amountCents` with a fraction (`4.99`, a price in dollars)",
        lambda a, c: a.track("stripe.payment", "u1", {"amountCents": 4.99}),
        why=": a whole number of cents",
    ),
    rejected(
        "amount-operator",
        'amount a Mongo operator (`{"amount": {"$inc": 1000}}`)',
        lambda a, c: a.track("credits.earn", "u1", {"amount": {"$inc": 1000}}),
    ),
    Row(
        "amount-integral-float",
        "amount an integral float (`50.0`)",
        "accepted, counted as the int 50",
        lambda a, c: a.track("credits.earn", "u-odd", {"amount": 50.0}),
        check=_credits(50),
    ),
    rejected(
        "amount-fraction",
        "a fraction (`12.5`, `0.1`) for a counter not declared decimal (every built-in one)",
        lambda a, c: a.track("credits.earn", "u1", {"amount": 12.5}),
        lambda a, c: a.track("gems.spend", "u1", {"amount": 0.1}),
        why=": floats would sum inexactly; declare the counter `decimal=True` for fractions",
    ),
    Row(
        "amount-decimal-counter",
        "a fraction (`12.5`, `0.1`, `0.2`) for a counter declared `decimal=True`",
        "accepted, summed exactly as a `Decimal` (`12.8`; floats: `12.799999999999999`)",
        _gold_loot,
        check=_gold(Decimal("12.8")),
    ),
    rejected(
        "amount-decimal-places",
        "more than 6 decimals for a decimal counter (`0.1 + 0.2`, `1e-7`)",
        lambda a, c: a.track("gold.loot", "u1", {"amount": 0.1 + 0.2}),
        lambda a, c: a.track("gold.loot", "u1", {"amount": 1e-7}),
        why=": round it first; it is never rounded unseen",
    ),
    Row(
        "amount-negative-zero",
        "amount `-0.0`",
        "accepted, counted as 0",
        lambda a, c: a.track("credits.earn", "u-odd", {"amount": -0.0}),
        check=_credits(0),
    ),
    Row(
        "amount-max",
        "amount exactly 2**53",
        "accepted",
        lambda a, c: a.track("credits.earn", "u-odd", {"amount": 2**53}),
        check=_credits(2**53),
    ),
    # strings that look like code are data
    Row(
        "sql-injection",
        "SQL injection as user id, username, event and data (`'; DROP TABLE ...; --`)",
        "accepted, stored verbatim: every query is parameterized",
        _sql_everywhere,
        check=_sql_strings,
        users=(SQL_ID,),
    ),
    Row(
        "operator-strings",
        '`"$where"`, `"a.b"`, `\'{"$ne": null}\'` as user id and event name (strings)',
        "accepted, stored as plain values, never as operators",
        _operators_as_strings,
        check=_operator_strings,
    ),
    Row(
        "str-subclass",
        "a `str` subclass as user id",
        "accepted as its plain `str` value",
        lambda a, c: a.on_login(_Name("subclassed")),
        check=_one_session("subclassed", None),
        users=("subclassed",),
    ),
    Row(
        "id-spaces",
        'a user id of spaces only (`"   "`)',
        "accepted verbatim (ids are not trimmed)",
        lambda a, c: a.on_login("   "),
        check=_one_session("   ", None),
        users=("   ",),
    ),
    # calls in an odd order
    Row(
        "unknown-event",
        "unknown event name (`quest.chapter.7.complete`)",
        "accepted: stored in the event stream, no counter",
        lambda a, c: a.track("quest.chapter.7.complete", "u-odd"),
        check=_unknown_event,
    ),
    Row(
        "logout-without-login",
        "logout without a login anywhere",
        "accepted, ends no session (kept as a mark, which makes the player active that"
        ' day; counted in `stats()["logouts_without_session"]`)',
        lambda a, c: a.on_logout("ghost"),
        check=_ghost_logout,
        users=("ghost",),
    ),
    Row(
        "double-logout",
        "a second logout after a logout",
        "accepted, counts nothing",
        _session_and_second_logout,
        check=_stats_only,
        users=("dbl",),
        equivalent=_session,
    ),
    Row(
        "double-login",
        "a second login without a logout",
        "within `idle_timeout` of the session's last mark it continues the session (a"
        " reconnect, on any worker)",
        _login_twice,
        check=_double_login,
        users=("twice",),
    ),
    Row(
        "logout-after-timeout",
        "logout more than `idle_timeout` after the session's last mark",
        "the session ended at its last mark (its seconds so far); the logout ends nothing",
        _timed_out_then_logout,
        check=_timed_out,
        users=("late",),
    ),
]


def scenario(analytics: Analytics, clock: FakeClock, call: Call | None) -> None:
    """Other players around the row's call: stored before it, buffered with it, after it."""
    analytics.on_login("other", "Other")
    analytics.track("credits.earn", "other", {"amount": 5})
    clock.advance(30)
    analytics.flush()
    analytics.on_login("good", "Good")
    analytics.track("gems.earn", "good", {"amount": 3})
    analytics.track("tutorial.step", "good", {"step": 1})
    clock.advance(1)
    if call is not None:
        call(analytics, clock)
    clock.advance(1)
    analytics.on_logout("good")
    analytics.track("dungeon.complete", "other")
    analytics.on_logout("other")
    analytics.flush()


def reference(
    call: Call | None, users: tuple[str, ...], clock: FakeClock, take_snapshot: Snapshot
) -> dict[str, Any]:
    """The store after the scenario with ``call`` on a fresh memory store and clock."""
    store = open_store("memory://")
    fresh = type(clock)()
    analytics = Analytics(store, clock=fresh, counters=COUNTERS)
    scenario(analytics, fresh, call)
    return take_snapshot(store, users)


@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
def test_bad_input_row(
    row: Row,
    store: Store,
    make_analytics: AnalyticsFactory,
    clock: FakeClock,
    take_snapshot: Snapshot,
) -> None:
    """The row's behaviour, with other users' data around it intact."""
    users = ("other", "good", *row.users)
    analytics = make_analytics(store, counters=COUNTERS)
    scenario(analytics, clock, row.call)
    found = take_snapshot(store, users)
    stats = analytics.stats()
    assert (stats["buffered"], stats["dropped"]) == (0, 0)
    if row.error is not None:
        assert stats["rejected"] == len(row.parts)
        expected = reference(None, users, clock, take_snapshot)
        assert found == expected, "a rejected call changed the store"
        strict = make_analytics(open_store("memory://"), strict=True, counters=COUNTERS)
        for part in row.parts:
            with pytest.raises(row.error):
                part(strict, clock)
        assert strict.stats()["buffered"] == 0
        return
    assert stats["rejected"] == 0
    equivalent = row.call if row.equivalent is None else row.equivalent
    assert found == reference(equivalent, users, clock, take_snapshot)
    assert row.check is not None
    row.check(store, analytics)


def test_the_table_has_at_least_30_rows_of_each_promise() -> None:
    """Issue 8 asks for at least 30 rows; both outcomes are represented."""
    assert len(ROWS) >= 30
    assert len({row.id for row in ROWS}) == len(ROWS)
    assert sum(row.error is not None for row in ROWS) >= 30
    assert sum(row.error is None for row in ROWS) >= 10


def readme_table() -> list[tuple[str, str]]:
    """The (input, behaviour) rows of the table on the docs' "Bad input" page."""
    text = BAD_INPUT_PAGE.read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if line.startswith("|")]
    rows = [tuple(cell.strip() for cell in line.strip()[1:-1].split(" | ")) for line in lines]
    assert rows[:2] == [("input", "behaviour"), ("---", "---")], rows[:2]
    return [(row[0], row[1]) for row in rows[2:]]


def test_docs_table_is_this_table() -> None:
    """The docs promise exactly the rows proven above, in the same order."""
    assert readme_table() == [(row.input, row.behaviour) for row in ROWS]


def markdown_rows() -> str:
    """The table body to paste in docs/bad-input.md (``python -c`` helper for maintainers)."""
    return "\n".join(f"| {row.input} | {row.behaviour} |" for row in ROWS)


def test_table_cells_have_no_pipe() -> None:
    """A ``|`` inside a cell would split it; the docs page parser relies on there being none."""
    for row in ROWS:
        assert "|" not in row.input + row.behaviour, row.id
