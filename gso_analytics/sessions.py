"""Sessions as a function of each player's marks, never of the order workers flush in.

The definition (docs/concepts.md, "Sessions across workers"): take every login and logout
of a player, from every worker and thread, ordered by :attr:`~.model.Login.key` (time
in milliseconds, then process and sequence number). Each login opens a session that
ends at the player's *next* mark, a logout or another login:

- within ``session_timeout``: closed there, ``durationS`` = the rounded seconds,
  added to ``totalSessionS`` of the login's day (and, when positive, to the login
  month's timed sessions behind ``avgSessionMin``);
- later than ``session_timeout``: timed out at ``login + session_timeout``, 0 seconds;
- no next mark: open, until the prune job times it out the same way.

A logout whose previous mark is not a login ends nothing.

Because a session depends only on its login and the mark after it, a batch changes
only the sessions around its own marks: :func:`plan_sessions` merges the batch's
marks with the stored ones from the player's earliest new mark on, plus the newest
stored mark before it (the only older login whose next mark can change, and only
when it is at most ``session_timeout`` older) and the player's open session, and
returns the sessions whose end changed and the *difference* their change makes to
the day and month aggregates. Applied exactly once per batch, those
differences make the stored figures equal to the walk over all marks, whatever the
order the batches arrive in. The work is bounded by the marks since the batch's
earliest one, not by the player's history.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import attrs

from .clock import round_half_up
from .model import OPEN, Login, Logout, Mark, SessionEnd, StoredSession
from .pacing import paced


@attrs.define
class SessionChanges:
    """What one batch does to sessions: the marks to store, the sessions to save in
    their new state (new or changed), and the increments that change makes."""

    logouts: list[Logout] = attrs.field(factory=list)
    sessions: list[StoredSession] = attrs.field(factory=list)
    daily: defaultdict[str, defaultdict[str, int]] = attrs.field(
        factory=lambda: defaultdict(lambda: defaultdict(int))
    )
    months: dict[str, str] = attrs.field(factory=dict)  # day -> month
    monthly: defaultdict[str, defaultdict[str, int]] = attrs.field(
        factory=lambda: defaultdict(lambda: defaultdict(int))
    )
    unmatched_logouts: int = 0

    def is_empty(self) -> bool:
        return not (self.logouts or self.sessions)

    def count(self, login: Login, end: SessionEnd, sign: int) -> None:
        """Add (``sign`` 1) or take back (-1) what a session's end contributes."""
        self.daily[login.day]["totalSessionS"] += sign * end.duration_s
        self.months[login.day] = login.month
        if end.duration_s > 0:
            self.monthly[login.month]["timedSessions"] += sign
            self.monthly[login.month]["timedSessionS"] += sign * end.duration_s


def timed_out(login: Login, timeout_ms: int) -> SessionEnd:
    """The end of a session no mark ended within ``timeout_ms``."""
    return SessionEnd(login.at_ms + timeout_ms, 0, True)


def session_end(
    login: Login, following: Mark | None, timeout_ms: int, current: SessionEnd | None
) -> SessionEnd:
    """The end the walk gives ``login`` when ``following`` is its player's next mark.

    Without a next mark a session is open, unless the prune job has timed it out
    already (``current``): time only moves forward, so that stays true.
    """
    if following is None:
        return current if current is not None and current.timed_out else OPEN
    gap_ms = following.at_ms - login.at_ms
    if gap_ms > timeout_ms:
        return timed_out(login, timeout_ms)
    return SessionEnd(following.at_ms, round_half_up(gap_ms / 1000), False)


def earliest(marks: Iterable[Mark]) -> dict[str, int]:
    """Per player, the time (ms) of the earliest of ``marks``."""
    since: dict[str, int] = {}
    for mark in marks:
        if mark.at_ms < since.get(mark.user_id, mark.at_ms + 1):
            since[mark.user_id] = mark.at_ms
    return since


def plan_sessions(
    stored: Iterable[StoredSession | Logout],
    logins: Iterable[Login],
    logouts: Iterable[Logout],
    timeout_ms: int,
) -> SessionChanges:
    """Merge a batch's marks into the stored ones and say what changes.

    ``stored`` holds what :meth:`~gso_analytics.store.Transaction.session_marks`
    returns for the players with new marks: their stored marks from the earliest new
    one on, the newest stored mark before it, and their open session. A new mark that
    is stored already (the same id) counts as stored.
    """
    timelines: defaultdict[str, dict[str, Mark]] = defaultdict(dict)
    current: dict[str, SessionEnd] = {}
    for item in stored:
        if isinstance(item, StoredSession):
            timelines[item.login.user_id][item.login.id] = item.login
            current[item.login.id] = item.end
        else:
            timelines[item.user_id][item.id] = item
    changes = SessionChanges()
    new_logouts: set[str] = set()
    marks: tuple[Mark, ...] = (*logins, *logouts)
    for mark in marks:
        timeline = timelines[mark.user_id]
        if mark.id not in timeline:
            timeline[mark.id] = mark
            if isinstance(mark, Logout):
                changes.logouts.append(mark)
                new_logouts.add(mark.id)
    for timeline in paced(timelines.values()):  # a sort and a walk per player
        ordered = sorted(timeline.values(), key=lambda m: m.key)
        previous: Mark | None = None
        for index, mark in enumerate(ordered):
            if isinstance(mark, Login):
                following = ordered[index + 1] if index + 1 < len(ordered) else None
                old = current.get(mark.id)
                end = session_end(mark, following, timeout_ms, old)
                if end != old:
                    changes.sessions.append(StoredSession(mark, end))
                    changes.count(mark, old or OPEN, -1)
                    changes.count(mark, end, 1)
            elif mark.id in new_logouts and not isinstance(previous, Login):
                changes.unmatched_logouts += 1
            previous = mark
    return changes


def time_out(stale: Iterable[StoredSession], timeout_ms: int) -> SessionChanges:
    """The prune job's changes: open sessions older than the timeout end timed out,
    as they would at any later mark (no seconds counted either way)."""
    return SessionChanges(
        sessions=[StoredSession(s.login, timed_out(s.login, timeout_ms)) for s in stale]
    )
