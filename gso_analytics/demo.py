"""A seeded simulation of GSO players, replayed through the public API.

Why a simulator in the library: ``gso-analytics demo`` should show a game team real
numbers on their own machine in seconds, and prove that the path they will use
(``on_login``/``track``/``on_logout``/``flush`` with an injected clock) produces them.
The simulator only decides *what players do and when*; every number printed afterwards
is read back from the store.

The plan (who plays which day, sessions, actions) is drawn from one ``random.Random``
seeded by the caller, so the same seed, players and days give the same numbers.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Any

import attrs

from .analytics import Analytics

DAY_S = 86_400.0

#: The last simulated day stops here (the game's local time): an evening, when players
#: are online, so a few sessions are still open and ``activeSessions`` means something.
END_OF_LAST_DAY = time(21, 0)

#: Relative chance of logging in at each local hour: quiet nights, an evening peak.
HOUR_WEIGHTS = (2, 1, 1, 1, 1, 2, 3, 4, 5, 5, 5, 6, 7, 6, 6, 7, 8, 10, 12, 14, 14, 12, 8, 4)

#: Share of sessions that end without a logout (a crash, a closed tab, a lost phone
#: connection): they end at their last mark once ``idle_timeout`` has passed, and the
#: report counts them as "Ended idle".
CRASH_SHARE = 0.08

#: Gem packs a paying player buys: (gems, price in USD cents), and how often.
GEM_PACKS = ((100, 99), (550, 499), (1200, 999), (2500, 1999))
GEM_PACK_WEIGHTS = (40, 35, 18, 7)

NAME_PARTS = (
    ("Ash", "Briar", "Cinder", "Dusk", "Ember", "Frost", "Gale", "Hex", "Iron", "Jade"),
    ("blade", "fang", "ward", "runner", "caller", "smith", "shade", "wing", "heart", "spark"),
)

#: ``(days done, days, calls made)``, from :func:`replay`.
ProgressCallback = Callable[[int, int, int], None]
#: Calls between two progress reports of :func:`replay` (a progress line throttles its
#: redraws itself; this only keeps the callback off the per-call path).
PROGRESS_EVERY = 1_000


@attrs.define
class SimClock:
    """The clock injected into :class:`Analytics`: it says whatever time the replay is at."""

    now: datetime

    def __call__(self) -> datetime:
        return self.now


@attrs.frozen
class Player:
    user_id: str
    username: str
    join_day: int  # index of the simulated day the player registers on
    engagement: float  # chance of playing on a day, before retention decay
    payer: bool


@attrs.frozen
class Action:
    """One API call at ``at``; ``order`` keeps a player's calls in sequence on ties."""

    at: datetime
    order: int
    kind: str  # "login", "logout" or "track"
    user_id: str
    event: str = ""
    data: dict[str, Any] | None = None
    username: str | None = None


@attrs.frozen
class DemoPlan:
    """What the simulation will do. Its days are drawn one at a time, in time order
    (:meth:`each_day`), so a game of any size holds one day's calls in memory, not the
    month's (a 20,000-player month is ~3 million calls: about a gigabyte as a list)."""

    first_day: date
    last_day: date
    end: datetime  # the moment the simulation stops: "now" on the last day
    players: int
    days: int
    seed: int
    tz: tzinfo

    def each_day(self) -> Iterator[list[Action]]:
        """Each simulated day's calls, in time order; the same every time it is called."""
        return _Planner(self.players, self.days, self.seed, self.last_day, self.tz).each_day()


class _Planner:
    """Draws the plan. Small methods, one decision each, all from one seeded RNG."""

    def __init__(self, players: int, days: int, seed: int, today: date, tz: tzinfo) -> None:
        self.tz = tz
        self.rng = random.Random(seed)
        self.days = days
        self.first_day = today - timedelta(days=days - 1)
        self.end = datetime.combine(today, END_OF_LAST_DAY, tz)
        self.players = [self._player(n, days) for n in range(1, players + 1)]
        self._order = 0

    # -- players -------------------------------------------------------------------

    def _player(self, n: int, days: int) -> Player:
        rng = self.rng
        # Half the players arrive on launch day, the rest trickle in day by day.
        join_day = 0 if days == 1 or rng.random() < 0.5 else rng.randrange(1, days)
        name = rng.choice(NAME_PARTS[0]) + rng.choice(NAME_PARTS[1]) + str(n)
        return Player(
            user_id=f"p{n:05d}",
            username=name,
            join_day=join_day,
            engagement=rng.uniform(0.45, 1.0),
            payer=rng.random() < 0.06,
        )

    def _plays(self, player: Player, day: int) -> bool:
        """Registration day always; then a chance that decays with the player's age."""
        age = day - player.join_day
        if age < 0:
            return False
        return age == 0 or self.rng.random() < player.engagement * 0.82**age

    # -- sessions ----------------------------------------------------------------------

    def _login_offset(self, window: float) -> float:
        """Seconds after midnight of a login, weighted toward the evening."""
        hours = [h for h in range(24) if h * 3600 < window - 1800] or [0]
        hour = self.rng.choices(hours, weights=[HOUR_WEIGHTS[h] for h in hours])[0]
        return min(hour * 3600 + self.rng.uniform(0, 3600), window - 1800)

    def _session_length(self) -> float:
        """Seconds: a few minutes to an hour and a half, typically a quarter of an hour."""
        minutes = self.rng.lognormvariate(2.6, 0.55)
        return min(max(minutes, 2.0), 90.0) * 60 + self.rng.uniform(0, 59)

    def _sessions(self, window: float, last_day: bool) -> list[tuple[float, float]]:
        """1-3 non-overlapping (start, end) offsets; only the last day's may outlast it."""
        count = self.rng.choices((1, 2, 3), weights=(50, 35, 15))[0]
        starts = sorted(self._login_offset(window) for _ in range(count))
        sessions: list[tuple[float, float]] = []
        free_at = 0.0
        for start in starts:
            start = max(start, free_at)
            if start >= window - 60:
                break
            end = start + self._session_length()
            if not last_day:
                end = min(end, DAY_S - 1)  # never across midnight: seconds stay on their day
            sessions.append((start, end))
            free_at = end + self.rng.uniform(600, 3 * 3600)
        return sessions

    # -- actions -----------------------------------------------------------------------

    def _action(self, at: datetime, kind: str, player: Player, **fields: Any) -> Action:
        self._order += 1
        return Action(at, self._order, kind, player.user_id, **fields)

    def _track(self, at: datetime, player: Player, event: str, **data: int) -> Action:
        return self._action(at, "track", player, event=event, data=data or None)

    def _gameplay(self, at: datetime, player: Player) -> list[Action]:
        """One thing a player does, with the economy events it causes."""
        rng, t = self.rng, self._track
        activity = rng.choices(
            ("dungeon", "craft", "pvp", "raid", "market", "shop"),
            weights=(30, 15, 20, 5, 12, 10),
        )[0]
        if activity == "dungeon":
            actions = [t(at, player, "dungeon.complete")]
            actions.append(t(at, player, "credits.earn", amount=rng.randint(50, 300)))
            if rng.random() < 0.15:
                actions.append(t(at, player, "gems.earn", amount=rng.randint(1, 10)))
            return actions
        if activity == "craft":
            return [
                t(at, player, "credits.spend", amount=rng.randint(20, 200)),
                t(at, player, "craft.complete"),
            ]
        if activity == "pvp":
            event = "pvp.ranked.battle" if rng.random() < 0.4 else "pvp.battle"
            actions = [t(at, player, event)]
            if rng.random() < 0.5:  # won
                actions.append(t(at, player, "credits.earn", amount=rng.randint(20, 100)))
            return actions
        if activity == "raid":
            return [
                t(at, player, "raid.complete"),
                t(at, player, "credits.earn", amount=rng.randint(200, 600)),
                t(at, player, "gems.earn", amount=rng.randint(5, 25)),
            ]
        if activity == "market":
            return [
                t(at, player, "market.sale"),
                t(at, player, "credits.earn", amount=rng.randint(50, 1000)),
            ]
        actions = [t(at, player, "credits.spend", amount=rng.randint(100, 500))]
        if rng.random() < 0.3:
            actions.append(t(at, player, "gems.spend", amount=rng.randint(5, 50)))
        return actions

    def _purchase(self, at: datetime, player: Player) -> list[Action]:
        gems, cents = self.rng.choices(GEM_PACKS, weights=GEM_PACK_WEIGHTS)[0]
        return [
            self._track(at, player, "stripe.payment", amountCents=cents),
            self._track(at, player, "gems.purchase", gems=gems),
        ]

    def _session(
        self, player: Player, midnight: datetime, span: tuple[float, float], registers: bool
    ) -> Iterator[Action]:
        start, end = span
        login = midnight + timedelta(seconds=start)
        logout = midnight + timedelta(seconds=end)
        yield self._action(login, "login", player, username=player.username)
        at = login + timedelta(seconds=self.rng.uniform(1, 5))
        if registers:
            yield self._track(at, player, "user.register")
        if player.payer and self.rng.random() < 0.25:
            yield from self._purchase(at, player)
        while True:
            at += timedelta(seconds=self.rng.uniform(30, 150))
            if at >= min(logout, self.end):
                break
            yield from self._gameplay(at, player)
        if logout < self.end and self.rng.random() >= CRASH_SHARE:
            yield self._action(logout, "logout", player)

    def _day(self, day: int) -> list[Action]:
        midnight = datetime.combine(self.first_day + timedelta(days=day), time(0), self.tz)
        last_day = day == self.days - 1
        window = (self.end - midnight).total_seconds() if last_day else DAY_S
        schedule: dict[Player, list[tuple[float, float]]] = {}
        for player in self.players:
            if self._plays(player, day):
                schedule[player] = self._sessions(window, last_day) or [(0.0, 600.0)]
        actions: list[Action] = []
        for player, spans in schedule.items():
            for index, span in enumerate(spans):
                registers = index == 0 and player.join_day == day
                actions.extend(self._session(player, midnight, span, registers))
        if last_day:
            actions.extend(self._keep_some_online(schedule, midnight, window))
            actions.extend(self._first_purchase(schedule, midnight, actions))
        actions.sort(key=lambda action: (action.at, action.order))
        return actions

    def _keep_some_online(
        self, schedule: dict[Player, list[tuple[float, float]]], midnight: datetime, window: float
    ) -> list[Action]:
        """Give ~2% of today's players (at least one) a session still open at the end, so
        the report's active sessions are not zero."""
        done_early = [p for p, spans in schedule.items() if spans[-1][1] < window - 1800]
        actions: list[Action] = []
        for player in self.rng.sample(
            done_early, min(len(done_early), max(1, len(schedule) // 50))
        ):
            start = window - self.rng.uniform(180, 1500)
            actions.extend(self._session(player, midnight, (start, window + 3600), False))
        return actions

    def _first_purchase(
        self,
        schedule: dict[Player, list[tuple[float, float]]],
        midnight: datetime,
        actions: list[Action],
    ) -> list[Action]:
        """A first-time buyer today when chance gave none, so today's revenue shows."""
        if not schedule or any(action.event == "stripe.payment" for action in actions):
            return []
        player = self.rng.choice(list(schedule))
        at = midnight + timedelta(seconds=schedule[player][0][0] + self.rng.uniform(6, 30))
        return self._purchase(min(at, self.end - timedelta(seconds=1)), player)

    def each_day(self) -> Iterator[list[Action]]:
        for day in range(self.days):
            yield self._day(day)


def plan_demo(players: int, days: int, seed: int, today: date, tz: tzinfo = UTC) -> DemoPlan:
    """The simulation for ``players`` over ``days`` days ending on ``today``, with the
    players' hours in the game's timezone ``tz``."""
    if players < 1 or days < 1:
        raise ValueError("a demo needs at least one player and one day")
    end = datetime.combine(today, END_OF_LAST_DAY, tz)
    return DemoPlan(today - timedelta(days=days - 1), today, end, players, days, seed, tz)


def replay(
    plan: DemoPlan,
    analytics: Analytics,
    clock: SimClock,
    progress: ProgressCallback | None = None,
) -> int:
    """Play ``plan`` through ``analytics`` (whose clock is ``clock``); return the calls made.

    The clock is moved to each call's moment, and the buffer is flushed at the end of
    every simulated day, as the flush thread would, and whenever it is full: a replay
    runs far faster than the flush thread's interval, and a day of a large game holds
    more calls than the buffer, so waiting for the day's end would drop calls. It is
    left at ``plan.end``. ``progress(days done, days, calls made)`` is called every
    :data:`PROGRESS_EVERY` calls and after each day.
    """
    done = 0
    room = analytics.buffer_room
    for index, actions in enumerate(plan.each_day()):
        for action in actions:
            if room <= 0:  # counted down locally: reading the room per call costs more
                room = analytics.buffer_room
                if room <= 0:
                    analytics.flush()
                    room = analytics.buffer_room
            clock.now = action.at
            if action.kind == "login":
                analytics.on_login(action.user_id, action.username)
            elif action.kind == "logout":
                analytics.on_logout(action.user_id)
            else:  # demo data is one pair: a call weighs one in the bound, as counted
                analytics.track(action.event, action.user_id, action.data)
            room -= 1
            done += 1
            if progress is not None and done % PROGRESS_EVERY == 0:
                progress(index, plan.days, done)
        analytics.flush()
        room = analytics.buffer_room
        if progress is not None:
            progress(index + 1, plan.days, done)
    clock.now = plan.end
    return done
