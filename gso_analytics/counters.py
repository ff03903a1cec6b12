"""The counter map: which tracked events add to which daily counter, and by how much.

The default map is the seed's ``COUNTER_MAP``; a game extends it by passing
``counters={...}`` to :class:`~gso_analytics.Analytics` without editing the library.

Counters hold exact values. A counter counts whole units unless it is declared decimal
(``CounterRule(field, amount_key, decimal=True)``): float sums drift (``0.1 + 0.2`` is
``0.30000000000000004``), so an integer counter takes whole amounts only, and a decimal
one keeps :data:`DECIMAL_PLACES` places as an integer number of millionths. Integers
because every store already adds integers exactly and atomically (SQLite's ``value +
excluded.value``, MongoDB's ``$inc``): a decimal counter needs no backend of its own. It
is stored under its field name and :data:`MICRO_SUFFIX` (``goldLooted@micro``), so a
reader that does not know the game's counter map (the CLI, a dashboard) still reads it
right, and :func:`decode_counters` turns it back into a :class:`~decimal.Decimal`.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import attrs

from .errors import ConfigurationError

#: The decimal places a decimal counter keeps.
DECIMAL_PLACES = 6
#: A decimal counter's stored unit, per whole unit.
MICRO = 10**DECIMAL_PLACES
#: What a decimal counter's stored field name ends with: its value is in millionths.
MICRO_SUFFIX = "@micro"

#: The ceiling of every stored figure (a day's, a month's or an all-time counter, a
#: player's revenue of a day). Each call adds at most 2**53 and each batch at most
#: 2**53 to one counter of one day, but batch after batch a sum grows without bound,
#: and past 2**63 - 1 each store fails its own way: SQLite turns the value into an
#: inexact REAL, MongoDB's ``$inc`` fails on every later batch, PostgreSQL's bigint
#: raises. So a figure that would pass the ceiling stays at it (it *saturates*: read
#: it as "at least"), the cut is counted (``stats()["counters_saturated"]``) and
#: logged, and every other figure of the batch is stored as usual. 2**61 rather than
#: 2**63 - 1 so that any two stored figures and a batch's increment add up inside a
#: signed 64-bit integer: no SQL arithmetic on them can overflow before it is capped.
#: Saturating is order-independent: every amount a call adds is non-negative, so a
#: capped sum is the capped total whatever the order (the session seconds a late
#: logout takes back are bounded by real time, far below it).
MAX_COUNTER = 2**61


def add_capped(into: dict[str, Any], fields: Mapping[str, Any]) -> int:
    """Add ``fields`` to ``into`` field by field (in place), each sum held at
    :data:`MAX_COUNTER`; return how many positive increments left their figure at the
    ceiling (cut, or just reaching it: what a store that only sees the new value can
    count)."""
    cut = 0
    for field, amount in fields.items():
        total = into.get(field, 0) + amount
        if total >= MAX_COUNTER:
            total = MAX_COUNTER
            cut += amount > 0
        into[field] = total
    return cut


@attrs.frozen
class CounterRule:
    """Add to ``field`` on every ``event``: 1, or ``data[amount_key]`` when given.

    ``decimal``: amounts may have up to :data:`DECIMAL_PLACES` decimals, summed exactly
    and read back as :class:`~decimal.Decimal`; otherwise amounts must be whole numbers.
    """

    field: str
    amount_key: str | None = None
    decimal: bool = False

    @property
    def stored_field(self) -> str:
        """The field name a store keeps this counter under."""
        return self.field + MICRO_SUFFIX if self.decimal else self.field


#: The seed's daily document fields, in the seed's order. ``dau``, ``totalSessionS`` and
#: ``sessionCount`` are maintained from sessions; the rest come from the counter map.
DAILY_FIELDS: tuple[str, ...] = (
    "dau",
    "newUsers",
    "creditsEarned",
    "creditsSpent",
    "gemsEarned",
    "gemsSpent",
    "gemsPurchased",
    "stripeRevenue",
    "dungeonsRun",
    "craftsCompleted",
    "pvpBattles",
    "raidBattles",
    "marketSales",
    "totalSessionS",
    "sessionCount",
)

#: Fields the library maintains itself: a counter may not add to them. The monthly
#: ones too, since the all-time totals hold daily and monthly fields side by side.
SESSION_FIELDS = frozenset(
    {"day", "month", "dau", "totalSessionS", "sessionCount"}
    | {"mau", "timedSessions", "timedSessionS"}
)

DEFAULT_COUNTERS: Mapping[str, CounterRule] = {
    "dungeon.complete": CounterRule("dungeonsRun"),
    "craft.complete": CounterRule("craftsCompleted"),
    "pvp.battle": CounterRule("pvpBattles"),
    "pvp.ranked.battle": CounterRule("pvpBattles"),
    "raid.complete": CounterRule("raidBattles"),
    "market.sale": CounterRule("marketSales"),
    "credits.earn": CounterRule("creditsEarned", "amount"),
    "credits.spend": CounterRule("creditsSpent", "amount"),
    "gems.earn": CounterRule("gemsEarned", "amount"),
    "gems.spend": CounterRule("gemsSpent", "amount"),
    "gems.purchase": CounterRule("gemsPurchased", "gems"),
    "stripe.payment": CounterRule("stripeRevenue", "amountCents"),
    "user.register": CounterRule("newUsers"),
}

#: Fields that count distinct players per day rather than events: the aggregator keeps
#: (day, user) records for them and the store adds only the records it did not have.
NEW_USERS = "newUsers"

CounterSpec = CounterRule | str | tuple[str, str]


def build_counter_map(extra: Mapping[str, CounterSpec] | None) -> dict[str, CounterRule]:
    """Return the default map extended (or overridden) by ``extra``.

    ``extra`` maps an event name to a :class:`CounterRule`, to a field name (count
    1 per event) or to ``(field, amount_key)``.
    """
    rules = dict(DEFAULT_COUNTERS)
    for event, spec in (extra or {}).items():
        if isinstance(spec, CounterRule):
            rule = spec
        elif isinstance(spec, str):
            rule = CounterRule(spec)
        elif isinstance(spec, tuple) and len(spec) == 2:
            rule = CounterRule(*spec)
        else:
            raise ConfigurationError(
                f"counters[{event!r}] must be a field name, (field, amount_key) or CounterRule,"
                f" not {spec!r}"
            )
        if not rule.field.isidentifier():
            raise ConfigurationError(
                f"counters[{event!r}]: field {rule.field!r} is not an identifier"
            )
        if rule.field in SESSION_FIELDS:
            raise ConfigurationError(
                f"counters[{event!r}]: field {rule.field!r} is maintained by sessions"
            )
        if rule.decimal and rule.amount_key is None:
            raise ConfigurationError(
                f"counters[{event!r}]: a decimal counter adds an amount; give its amount_key"
            )
        if rule.decimal and rule.field in DAILY_FIELDS:
            raise ConfigurationError(
                f"counters[{event!r}]: {rule.field!r} is one of the library's integer fields"
                " (the KPIs read it); count decimal amounts under a field of your own"
            )
        rules[event] = rule
    _check_one_kind_per_field(rules)
    return rules


def _check_one_kind_per_field(rules: Mapping[str, CounterRule]) -> None:
    """A field is decimal for every event that adds to it, or for none."""
    kinds: dict[str, tuple[str, bool]] = {}
    for event, rule in rules.items():
        first = kinds.setdefault(rule.field, (event, rule.decimal))
        if first[1] != rule.decimal:
            decimal, whole = (first[0], event) if first[1] else (event, first[0])
            raise ConfigurationError(
                f"counters: {rule.field!r} is decimal for {decimal!r} but not for {whole!r};"
                " declare it decimal for every event that adds to it"
            )


def decode_counters(stored: Mapping[str, Any]) -> Mapping[str, Any]:
    """A day's (or the all-time) counters as a store keeps them, as readers see them:
    each decimal counter's millionths as a :class:`~decimal.Decimal` under its own name
    (added to a whole-number figure of the same name, kept from before the counter was
    declared decimal). Counters without decimals are returned as they are."""
    if not any(field.endswith(MICRO_SUFFIX) for field in stored):
        return stored
    decoded: dict[str, Any] = {}
    for field, value in stored.items():
        if field.endswith(MICRO_SUFFIX):
            field, value = field.removesuffix(MICRO_SUFFIX), Decimal(value) / MICRO
        if field in decoded:  # the two parts of a field, one of them a Decimal
            value = _exact(decoded[field]) + _exact(value)
        decoded[field] = value
    return decoded


def _exact(value: Any) -> Decimal:
    """A stored number as a Decimal: a float by its shortest text (``12.5``, ``0.1``)."""
    return value if isinstance(value, Decimal) else Decimal(repr(value))


def json_number(value: object) -> int | float:
    """``json.dumps``' ``default`` for a decimal counter: a whole Decimal as an int, any
    other as the float whose shortest text is the same number (exact as JSON text for
    the up to 15 significant digits a decimal counter's day holds in practice)."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
