"""The counter map: which tracked events add to which daily counter, and by how much.

The default map is the seed's ``COUNTER_MAP``; a game extends it by passing
``counters={...}`` to :class:`~gso_analytics.Analytics` without editing the library.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from .errors import ConfigurationError


@attrs.frozen
class CounterRule:
    """Add to ``field`` on every ``event``: 1, or ``data[amount_key]`` when given."""

    field: str
    amount_key: str | None = None


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
        rules[event] = rule
    return rules
