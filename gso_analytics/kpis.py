"""KPIs for game teams, computed from the team's own store: retention, rolling active
users and stickiness, monetization, sessions and the economy.

Every figure is read from facts the flush maintains exactly (see
:func:`gso_analytics.store.apply_batch`): the (day, user) activity records, each
user's first-seen and first-payment day, revenue per (day, user), the sessions and the
daily counters. Each query reads only the days it reports (plus the 29 days before
``start`` that rolling windows reach back to, or the days after a cohort that
retention measures), through the store's range reads: its cost follows the range
asked for, never the length of the history.

Days are ``YYYY-MM-DD`` keys in the configured timezone, as the flush writes them;
"today" comes from the clock, so a replayed clock gives replayed answers. A user is
active on a day with a mark that day (any tracked call, touch, login or logout; logins
only with ``active_on="login"``); their cohort is the first day they were active.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import date, datetime, time, timedelta, tzinfo
from typing import Any, cast

import attrs

from .clock import Clock, resolve_tz, utc_now
from .model import Number
from .store import Store, last_expired

#: The rolling windows of :meth:`KPIs.active_users`, in days ending on the day reported.
WAU_DAYS = 7
MAU30_DAYS = 30

DayLike = date | str


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


class _Row:
    """``to_dict()`` with the camelCase keys of the public API, in field order."""

    def to_dict(self) -> dict[str, Any]:
        fields = attrs.fields(cast("type[attrs.AttrsInstance]", type(self)))
        return {_camel(field.name): getattr(self, field.name) for field in fields}


def ratio(numerator: Number, denominator: Number) -> float:
    """``numerator / denominator`` as a float; 0.0 when there is nothing to divide by,
    so a day without players reads as zero, not as an error."""
    return float(numerator) / denominator if denominator else 0.0


@attrs.frozen
class RetentionRow:
    """One cohort: ``counts[N]`` users active exactly N days after their first-seen
    day, None until that day is over in the store's timezone: players still have the
    rest of the day to come back, so a count read during it is not yet the figure
    (unknown, never 0)."""

    cohort: str
    users: int
    counts: Mapping[int, int | None]

    def rate(self, n: int) -> float | None:
        count = self.counts[n]
        return None if count is None else ratio(count, self.users)

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"cohort": self.cohort, "users": self.users}
        for n in self.counts:
            doc[f"d{n}"] = self.counts[n]
            doc[f"d{n}Rate"] = self.rate(n)
        return doc


@attrs.frozen
class ActiveUsersRow(_Row):
    day: str
    dau: int
    wau: int
    mau30: int
    stickiness: float


@attrs.frozen
class RevenueRow(_Row):
    day: str
    revenue_cents: Number
    paying_users: int
    first_time_payers: int
    dau: int
    arpdau_cents: float
    arppu_cents: float


@attrs.frozen
class SessionsRow(_Row):
    day: str
    sessions: int
    sessions_per_user: float
    play_time_per_dau_s: float
    median_session_s: float | None
    orphaned_sessions: int


@attrs.frozen
class FunnelStep(_Row):
    step: str
    users: int
    pct_of_first: float
    pct_of_previous: float
    median_time_from_previous_s: float | None


@attrs.frozen
class Funnel:
    """An ordered funnel: ``steps`` rows, and ``truncated`` when the range reaches past
    the events the store still keeps (so early entries may be missing)."""

    steps: list[FunnelStep]
    truncated: bool

    def to_dict(self) -> dict[str, Any]:
        return {"steps": [step.to_dict() for step in self.steps], "truncated": self.truncated}


@attrs.frozen
class EconomyRow(_Row):
    day: str
    credits_earned: Number
    credits_spent: Number
    credits_net: Number
    gems_earned: Number
    gems_purchased: Number
    gems_spent: Number
    gems_net: Number


#: The headline figures, in the order a report shows them (see :meth:`KPIs.headline`).
HEADLINE_FIGURES = (
    "dau",
    "mau30",
    "d1Rate",
    "d7Rate",
    "revenueCents",
    "payingUsers",
    "arpdauCents",
    "avgSessionS",
)


@attrs.frozen
class HeadlineFigure(_Row):
    """One headline number and the same number over the previous period; ``change``
    is the relative change (0.25 = +25%), None when either is unknown or the previous
    one is 0 (nothing to compare with)."""

    value: Number | None
    previous: Number | None

    @property
    def change(self) -> float | None:
        if self.value is None or not self.previous:
            return None
        return self.value / self.previous - 1

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "previous": self.previous, "change": self.change}


@attrs.frozen
class Headline:
    """The figures a report opens with, for [start, end] against the period of the
    same length just before it ([previous_start, previous_end])."""

    start: str
    end: str
    previous_start: str
    previous_end: str
    figures: Mapping[str, HeadlineFigure]

    def to_dict(self) -> dict[str, Any]:
        return {
            "start": self.start,
            "end": self.end,
            "previousStart": self.previous_start,
            "previousEnd": self.previous_end,
            "figures": {name: figure.to_dict() for name, figure in self.figures.items()},
        }


def pooled_rate(cohorts: Iterable[tuple[int, int | None]]) -> float | None:
    """Day-N retention of several cohorts taken together, from ``(users, returned)``
    pairs: returning users over cohort users, counting only the cohorts whose day N is
    over (``returned`` not None); None if none is."""
    known = [(users, returned) for users, returned in cohorts if returned is not None]
    users = sum(users for users, _ in known)
    return ratio(sum(returned for _, returned in known), users) if users else None


def parse_day(value: DayLike, name: str = "day") -> date:
    """A ``date`` (a ``datetime`` gives its date) or a ``"YYYY-MM-DD"`` string."""
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if isinstance(value, str) and len(value) == 10:
        try:
            return date.fromisoformat(value)
        except ValueError:
            pass
    raise ValueError(f"{name} must be a date or 'YYYY-MM-DD', got {value!r}")


def _key(day: date) -> str:
    return day.isoformat()


def _days(start: date, end: date) -> Iterator[date]:
    day = start
    while day <= end:
        yield day
        day += timedelta(days=1)


class KPIs:
    """The KPI queries over one store (``analytics.kpis``, or built from a store).

    ``tz`` and ``clock`` must be those the data was recorded with (they name the days
    and "today"); ``event_ttl`` is how long the event stream keeps events.
    ``test_users`` (ids, or a predicate on an id) are left out of every per-user
    figure; the economy comes from daily totals, which include them.
    """

    def __init__(
        self,
        store: Store,
        *,
        tz: str | tzinfo = "UTC",
        clock: Clock | None = None,
        event_ttl: timedelta = timedelta(days=7),
        test_users: Iterable[str] | Callable[[str], bool] | None = None,
    ) -> None:
        self.store = store
        if test_users is None:
            self._is_test: Callable[[str], bool] | None = None
        elif callable(test_users):
            self._is_test = test_users
        elif isinstance(test_users, str):
            raise ValueError(f"test_users must be a list of user ids, got the str {test_users!r}")
        else:
            ids = frozenset(test_users)
            self._is_test = ids.__contains__
        self.tz = resolve_tz(tz)
        self.clock: Clock = clock or utc_now
        self.event_ttl = event_ttl

    def today(self) -> date:
        """Today in the configured timezone, by the clock."""
        return self.clock().astimezone(self.tz).date()

    @staticmethod
    def _range(start: DayLike, end: DayLike) -> tuple[date, date]:
        first, last = parse_day(start, "start"), parse_day(end, "end")
        if first > last:
            raise ValueError(f"start {first} is after end {last}")
        return first, last

    def _real(self, by_day: dict[str, set[str]]) -> dict[str, set[str]]:
        """Without the test users."""
        is_test = self._is_test
        if is_test is None:
            return by_day
        real = {day: {u for u in users if not is_test(u)} for day, users in by_day.items()}
        return {day: users for day, users in real.items() if users}

    def _active(self, start: date, end: date) -> dict[str, set[str]]:
        if start > end:
            return {}
        return self._real(self.store.day_users_between(_key(start), _key(end)))

    def _revenue(self, first: date, last: date) -> dict[str, dict[str, Number]]:
        """Revenue of [first, last] as day -> paying user -> cents, without test users."""
        revenue = self.store.user_revenue_between(_key(first), _key(last))
        is_test = self._is_test
        if is_test is None:
            return revenue
        return {
            day: {u: c for u, c in payers.items() if not is_test(u)}
            for day, payers in revenue.items()
        }

    def _sessions(self, first: date, last: date) -> list[Any]:
        """The sessions of login days [first, last], without test users."""
        sessions = self.store.sessions_between(_key(first), _key(last))
        is_test = self._is_test
        return sessions if is_test is None else [s for s in sessions if not is_test(s.user_id)]

    def first_day_with_data(self, start: DayLike, end: DayLike) -> date | None:
        """The first day of [start, end] with anything recorded, None if there is none:
        where a report's default range begins, so it never opens on days of zeros."""
        first, last = self._range(start, end)
        days = self.store.days_between(_key(first), _key(last))
        return date.fromisoformat(min(day.day for day in days)) if days else None

    # -- the KPIs ------------------------------------------------------------------------

    def retention(
        self, start: DayLike, end: DayLike, days: Iterable[int] = (1, 7, 30)
    ) -> list[RetentionRow]:
        """One row per cohort (first-seen day in [start, end]) with at least one user:
        ``dN`` = how many of them were active exactly N days after their first-seen day
        (classic, "day N" retention), ``dNRate`` = dN / users; both None until day N
        is over (see :class:`RetentionRow`)."""
        first, last = self._range(start, end)
        offsets = list(dict.fromkeys(days))  # the caller's order, once each
        if not offsets or any(type(n) is not int or n < 0 for n in offsets):
            raise ValueError(f"days must be non-negative ints, got {days!r}")
        measured_until = self.today() - timedelta(days=1)  # the last day that is over
        cohorts = self._real(self.store.first_seen_between(_key(first), _key(last)))
        reach = min(last + timedelta(days=max(offsets)), measured_until)
        active = self._active(first + timedelta(days=min(offsets)), reach)
        rows = []
        for cohort in sorted(cohorts):
            users = cohorts[cohort]
            counts: dict[int, int | None] = {}
            for n in offsets:
                target = date.fromisoformat(cohort) + timedelta(days=n)
                counts[n] = (
                    None
                    if target > measured_until
                    else len(users & active.get(_key(target), set()))
                )
            rows.append(RetentionRow(cohort, len(users), counts))
        return rows

    def active_users(self, start: DayLike, end: DayLike) -> list[ActiveUsersRow]:
        """Per day: ``dau``; ``wau`` and ``mau30``, distinct users active in the 7 and 30
        days ending that day (activity before ``start`` counts); ``stickiness`` =
        dau / mau30."""
        first, last = self._range(start, end)
        active = self._active(first - timedelta(days=MAU30_DAYS - 1), last)
        wau = _rolling_distinct(active, first, last, WAU_DAYS)
        mau30 = _rolling_distinct(active, first, last, MAU30_DAYS)
        rows = []
        for day in _days(first, last):
            dau = len(active.get(_key(day), ()))
            rows.append(
                ActiveUsersRow(_key(day), dau, wau[day], mau30[day], ratio(dau, mau30[day]))
            )
        return rows

    def revenue(self, start: DayLike, end: DayLike) -> list[RevenueRow]:
        """Per day: ``stripe.payment`` revenue, payers, first-time payers, ARPDAU, ARPPU."""
        first, last = self._range(start, end)
        lo, hi = _key(first), _key(last)
        revenue = self._revenue(first, last)
        first_payers = self._real(self.store.first_payments_between(lo, hi))
        active = self._active(first, last)
        rows = []
        for day in map(_key, _days(first, last)):
            payers = revenue.get(day, {})
            cents = sum(payers.values())
            dau = len(active.get(day, ()))
            rows.append(
                RevenueRow(
                    day,
                    cents,
                    len(payers),
                    len(first_payers.get(day, ())),
                    dau,
                    ratio(cents, dau),
                    ratio(cents, len(payers)),
                )
            )
        return rows

    def sessions(self, start: DayLike, end: DayLike) -> list[SessionsRow]:
        """Per start day: sessions, sessions per DAU, play time per DAU, the median of
        the sessions' seconds (so far; 0-second ones included, as in every average of
        a session), and the sessions that ended without a logout (orphaned: ended by
        ``idle_timeout`` at their last mark)."""
        first, last = self._range(start, end)
        active = self._active(first, last)
        by_day: dict[str, list[Any]] = {}
        for session in self._sessions(first, last):
            by_day.setdefault(session.day, []).append(session)
        rows = []
        for day in map(_key, _days(first, last)):
            sessions = by_day.get(day, [])
            durations = _play_durations(sessions)
            dau = len(active.get(day, ()))
            rows.append(
                SessionsRow(
                    day,
                    len(sessions),
                    ratio(len(sessions), dau),
                    ratio(sum(durations), dau),
                    statistics.median(durations) if durations else None,
                    sum(1 for s in sessions if s.timed_out),
                )
            )
        return rows

    def economy(self, start: DayLike, end: DayLike) -> list[EconomyRow]:
        """Per day: credits and gems in and out, from the daily counters."""
        first, last = self._range(start, end)
        stored = {stats.day: stats for stats in self.store.days_between(_key(first), _key(last))}
        rows = []
        for day in map(_key, _days(first, last)):
            stats = stored.get(day)
            get: Callable[[str], Number] = (lambda _f: 0) if stats is None else stats.__getitem__
            earned, spent = get("creditsEarned"), get("creditsSpent")
            gems = get("gemsEarned"), get("gemsPurchased"), get("gemsSpent")
            rows.append(
                EconomyRow(day, earned, spent, earned - spent, *gems, gems[0] + gems[1] - gems[2])
            )
        return rows

    def headline(self, start: DayLike, end: DayLike) -> Headline:
        """The figures a game team reads first, each against the previous period of the
        same length: DAU and MAU30 of the last day; D1 and D7 retention of the latest
        cohorts measurable in the range (those whose day 1, day 7, is one of its days),
        taken together; revenue, distinct paying
        users and ARPDAU (revenue over the sum of the days' DAU) over the range; and the
        mean of the seconds of the sessions started in the range (see :meth:`sessions`)."""
        first, last = self._range(start, end)
        length = last - first + timedelta(days=1)
        now = self._period(first, last)
        before = self._period(first - length, last - length)
        return Headline(
            _key(first),
            _key(last),
            _key(first - length),
            _key(last - length),
            {name: HeadlineFigure(now[name], before[name]) for name in HEADLINE_FIGURES},
        )

    def _period(self, first: date, last: date) -> dict[str, Number | None]:
        """The headline figures of one period (see :meth:`headline`)."""
        closing = self.active_users(last, last)[0]
        revenue = self._revenue(first, last)
        cents = sum(sum(payers.values()) for payers in revenue.values())
        user_days = sum(len(users) for users in self._active(first, last).values())
        durations = _play_durations(self._sessions(first, last))
        return {
            "dau": closing.dau,
            "mau30": closing.mau30,
            "d1Rate": self._returning(first, last, 1),
            "d7Rate": self._returning(first, last, 7),
            "revenueCents": cents,
            "payingUsers": len(set[str]().union(*revenue.values())),
            "arpdauCents": ratio(cents, user_days),
            "avgSessionS": sum(durations) / len(durations) if durations else None,
        }

    def _returning(self, first: date, last: date, n: int) -> float | None:
        """Day-``n`` retention measured on the days of [first, last]: of the cohorts of
        [first - n, last - n] (the latest whose day n falls in the period), the share
        active on their day n; None when no such cohort has users (or its day n is
        not over yet)."""
        offset = timedelta(days=n)
        cohorts = self.retention(first - offset, last - offset, (n,))
        return pooled_rate((cohort.users, cohort.counts[n]) for cohort in cohorts)

    def funnel(
        self,
        steps: Iterable[str],
        within: timedelta = timedelta(days=1),
        start: DayLike | None = None,
        end: DayLike | None = None,
    ) -> Funnel:
        """An ordered funnel over the event stream, with only events whose day is in
        [start, end] (None: unbounded). A user enters at their earliest in-range event
        of step 1; step k is the earliest event named step k at or after the time of
        step k-1 and at most ``within`` after the entry. ``pctOfFirst`` and
        ``pctOfPrevious`` are percentages (0-100); ``medianTimeFromPreviousS`` is the
        median of the seconds from the previous step of the users who reached it."""
        names = list(steps)
        if not names:
            raise ValueError("a funnel needs at least one step")
        if len(set(names)) != len(names):
            raise ValueError(f"funnel steps must be distinct, got {names!r}")
        first = None if start is None else parse_day(start, "start")
        last = None if end is None else parse_day(end, "end")
        if first is not None and last is not None and first > last:
            raise ValueError(f"start {first} is after end {last}")
        events = self.store.events_between(
            None if first is None else _key(first), None if last is None else _key(last), names
        )
        by_user: dict[str, list[Any]] = {}
        for event in events:  # in time order
            if self._is_test is None or not self._is_test(event.user_id):
                by_user.setdefault(event.user_id, []).append(event)
        reached = [0] * len(names)
        gaps: list[list[float]] = [[] for _ in names]
        for user_events in by_user.values():
            _walk(user_events, names, within, reached, gaps)
        rows = []
        for k, name in enumerate(names):
            rows.append(
                FunnelStep(
                    name,
                    reached[k],
                    ratio(100 * reached[k], reached[0]),
                    100.0 if k == 0 else ratio(100 * reached[k], reached[k - 1]),
                    None if k == 0 or not gaps[k] else statistics.median(gaps[k]),
                )
            )
        return Funnel(rows, truncated=first is None or self._pruned_on(first))

    def _pruned_on(self, day: date) -> bool:
        """Whether events of ``day`` may already be pruned: its first instant (local
        midnight) is expired now by the prune's own rule (:func:`~.store.last_expired`,
        ``ts + event_ttl <= now``), so the day, and a range starting on it, is no
        longer whole."""
        midnight = datetime.combine(day, time.min, self.tz)
        return midnight <= last_expired(self.clock(), self.event_ttl)


def _play_durations(sessions: Iterable[Any]) -> list[int]:
    """Every session's seconds so far (end, or last mark, minus start; 0-second ones
    included): the one rule behind every average and median of a session, the same
    as ``totalSessionS / sessionCount`` (see docs/concepts.md)."""
    return [s.duration_s for s in sessions]


def _walk(
    events: list[Any],
    names: list[str],
    within: timedelta,
    reached: list[int],
    gaps: list[list[float]],
) -> None:
    """One user's path through the steps (``events`` in time order): count each step
    reached in ``reached`` and the seconds from the previous step in ``gaps``."""
    entry = next((e.ts for e in events if e.event == names[0]), None)
    if entry is None:
        return
    reached[0] += 1
    deadline = entry + within
    previous = entry
    for k in range(1, len(names)):
        match = next(
            (e.ts for e in events if e.event == names[k] and previous <= e.ts <= deadline), None
        )
        if match is None:
            return
        reached[k] += 1
        gaps[k].append((match - previous).total_seconds())
        previous = match


def _rolling_distinct(
    active: Mapping[str, set[str]], first: date, last: date, width: int
) -> dict[date, int]:
    """Distinct users active in the ``width`` days ending on each day of [first, last]:
    one pass, adding the day entering the window and removing the one leaving it."""
    in_window: Counter[str] = Counter()
    counts: dict[date, int] = {}
    opening = first - timedelta(days=width - 1)
    for day in _days(opening, last):
        in_window.update(active.get(_key(day), ()))
        left = day - timedelta(days=width)
        leaving = active.get(_key(left), ()) if left >= opening else ()
        in_window.subtract(leaving)
        for user in leaving:
            if in_window[user] <= 0:
                del in_window[user]
        if day >= first:
            counts[day] = len(in_window)
    return counts
