"""Play sessions as a function of each player's marks, never of the order workers flush in.

The definition (docs/concepts.md, "Play sessions"): take every mark of a player, from
every worker and thread, in time order: **activity** (a tracked call that is not
passive, a ``touch()``, a login) and **logouts**. At one millisecond, tracked calls
and touches come first, then logins and logouts in the order their process made them
(two processes by their random origin). Walking them with ``idle_timeout``:

- a session is open and the mark comes more than ``idle_timeout`` after its last mark:
  the session ended at its last mark;
- then activity with no session open starts a session (it counts in ``sessionCount``
  of its day); with a session open it only moves the session's last mark;
- a logout ends the open session at the logout (with none open it ends nothing).

A session's seconds are its end (or, while it is open, its last mark) minus its start,
rounded half up, and count in ``totalSessionS`` of its start day, so play time grows
while a player plays and never depends on when anyone looks. A session whose last mark
is more than ``idle_timeout`` ago has ended there: the prune job records it
(:func:`close_idle`), which changes no figure.

Why a batch need not walk a player's whole history: sessions never overlap, and a
stored session is a run of marks with no gap over ``idle_timeout`` and no logout inside
(one inside would have split it). So the walk treats each stored session as one span,
``[start, last mark]``, and needs only the sessions from the last one before the
batch's earliest mark minus ``idle_timeout`` on, the logouts from there on, and the
batch's own marks. Only a logout arriving late *inside* a stored span needs the marks
themselves (the last one before it, the first one after): stores keep each batch's
activity per player (:class:`~.model.ActivityRun`) for as long as a batch can be
retried. :func:`plan_sessions` yields the sessions whose state changed and the
difference they make to the day and month figures; applied exactly once per batch, those
differences make the stored figures equal to the walk over all marks, whatever the order
the batches arrive in.

Sessions closed by version 0.2 (``SessionEnd.frozen``) keep their stored seconds: marks
within such a session's login and end belong to it and change nothing; a session still
open at the upgrade goes on under these rules.
"""

from __future__ import annotations

import base64
import functools
import json
import struct
import sys
from array import array
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import count
from operator import itemgetter
from typing import Generic, TypeVar

import attrs

from .clock import round_half_up
from .model import (
    AT,
    DAY,
    DURATION,
    ID,
    LAST,
    LOGOUT_AT,
    MONTH,
    ORIGIN,
    SEQ,
    TIMED_OUT,
    USER,
    USERNAME,
    ActivityRun,
    FlushBatch,
    Login,
    Logout,
    SessionEnd,
    StoredSession,
    day_keys,
)
from .pacing import CHECK_EVERY, Pacer, paced

#: The kinds of a piece of a timeline.
_ACTIVITY, _LOGOUT = 0, 1

#: A record of a player: a login or logout mark, or a stored session.
_Mark = TypeVar("_Mark", Login, Logout, StoredSession)

#: Where a mark falls in the walk: its millisecond, then its place in it (tracked
#: calls and touches ``(0, "", 0)``, first; logins and logouts ``(1, origin, seq)``).
MarkKey = tuple[int, tuple[int, str, int]]
_FIRST: tuple[int, str, int] = (0, "", 0)
#: After every mark of its millisecond.
_LAST: tuple[int, str, int] = (2, "", 0)

#: ``marks_between(user, first_ms, last_ms)``: the player's stored activity marks in
#: that range as keys, sorted (see :meth:`~gso_analytics.store.Transaction.marks_between`).
MarksBetween = Callable[[str, int, int], list[MarkKey]]


@attrs.define
class SessionChanges:
    """What one batch (or the prune job) does to sessions: the marks to store, the
    sessions to save in their new state (new or changed), the ones merged away, and the
    increments that change makes to the days and months."""

    logouts: list[Logout] = attrs.field(factory=list)
    activity: list[ActivityRun] = attrs.field(factory=list)
    sessions: list[StoredSession] = attrs.field(factory=list)
    deleted: list[str] = attrs.field(factory=list)
    daily: defaultdict[str, defaultdict[str, int]] = attrs.field(
        factory=lambda: defaultdict(lambda: defaultdict(int))
    )
    months: dict[str, str] = attrs.field(factory=dict)  # day -> month
    monthly: defaultdict[str, defaultdict[str, int]] = attrs.field(
        factory=lambda: defaultdict(lambda: defaultdict(int))
    )
    unmatched_logouts: int = 0

    def count(self, session: StoredSession, sign: int) -> None:
        """Add (``sign`` 1) or take back (-1) what a session contributes: one session and
        its seconds on its start day, and in its month (behind ``avgSessionMin``)."""
        day, month, seconds = session[DAY], session[MONTH], session[DURATION]
        daily = self.daily[day]
        daily["sessionCount"] += sign
        daily["totalSessionS"] += sign * seconds
        self.months[day] = month
        monthly = self.monthly[month]
        monthly["timedSessions"] += sign
        monthly["timedSessionS"] += sign * seconds


#: One thing on a player's timeline, a mark or a stored session walked as a span:
#: ``(at, order, last, kind, username, stored, new)``. ``order`` sorts pieces of one
#: millisecond: tracked calls and touches (and spans) first, then logins and logouts in
#: the order their processes made them; ``stored`` is the stored session a span starts;
#: ``new`` marks a logout of this batch (counted when it ends nothing). A tuple: a
#: player's walk makes one per mark.
_Piece = tuple[int, tuple[int, str, int], int, int, str | None, StoredSession | None, bool]
_key = itemgetter(0, 1)  # a piece's MarkKey


def _order(start: Login | StoredSession) -> tuple[int, str, int]:
    """A session's first mark's place in its millisecond: a login's, or a tracked
    call's (no origin)."""
    return (1, start[ORIGIN], start[SEQ]) if start[ORIGIN] else _FIRST


def _login(mark: Login) -> _Piece:
    """A login as a piece, sorted by its process and call at its millisecond."""
    at = mark[AT]
    return (at, (1, mark[ORIGIN], mark[SEQ]), at, _ACTIVITY, mark[USERNAME], None, False)


def _logout(mark: Logout, new: bool = False) -> _Piece:
    at = mark[AT]
    return (at, (1, mark[ORIGIN], mark[SEQ]), at, _LOGOUT, None, None, new)


def _span(at: int, last: int) -> _Piece:
    """Tracked calls (or touches) from ``at`` to ``last`` with no gap over the timeout."""
    return (at, _FIRST, last, _ACTIVITY, None, None, False)


@attrs.define
class _Run:
    """A session as the walk builds it."""

    start: int
    last: int
    username: str | None
    end: int | None = None
    timed_out: bool = False
    kept: StoredSession | None = None  # a frozen (0.2) session, passed through as is
    order: tuple[int, str, int] = (0, "", 0)  # its first mark's, see _Piece


def seconds(start_ms: int, end_ms: int) -> int:
    """A session's rounded seconds (halves up, as the seed's ``Math.round``)."""
    return round_half_up((end_ms - start_ms) / 1000)


def encode_marks(marks: Sequence[int]) -> bytes:
    """Marks as little-endian 64-bit integers: how SQLite and MongoDB keep a run.
    (``struct``, a packer per length: ``array("q", marks)`` parses a format for each
    mark, three times the cost, a tenth of a player's activity record in a flush.)"""
    return _packer(len(marks))(*marks)


@functools.lru_cache(maxsize=256)
def _packer(n: int) -> Callable[..., bytes]:
    return struct.Struct(f"<{n}q").pack


#: Compact JSON (one encoder: ``json.dumps`` with options builds one per call, 4x slower).
_to_json = json.JSONEncoder(separators=(",", ":")).encode


def encode_logins(logins: tuple[tuple[int, str | int, int], ...]) -> str | None:
    """An activity run's logins as stores keep them: JSON, or None for none (a store
    may name a login's process by a number of its own, as SQLite does: then the text
    is made directly, as the encoder would make it, a few times faster)."""
    if not logins:
        return None
    if all(type(origin) is int for _, origin, _ in logins):
        return "[" + ",".join([f"[{ms},{origin},{seq}]" for ms, origin, seq in logins]) + "]"
    return _to_json(logins)


def decode_logins(text: str | None) -> tuple[tuple[int, str, int], ...]:
    return tuple((ms, origin, seq) for ms, origin, seq in json.loads(text)) if text else ()


def run_keys(run: ActivityRun) -> list[MarkKey]:
    """An activity run's marks as walk keys: its logins by their process and call,
    the other marks first in their millisecond."""
    _, _, _, marks, run_logins = run
    logins = Counter(ms for ms, _, _ in run_logins)
    keys = [(ms, (1, origin, seq)) for ms, origin, seq in run_logins]
    for ms in marks:
        if logins[ms]:
            logins[ms] -= 1  # this mark is a login, keyed above
        else:
            keys.append((ms, _FIRST))
    return keys


def decode_marks(data: bytes) -> tuple[int, ...]:
    packed = array("q")
    packed.frombytes(data)
    if sys.byteorder == "big":
        packed.byteswap()
    return tuple(packed)


class _Grouped(Generic[_Mark]):
    """Records grouped by player, each player's in their order: one list sorted by
    player and where each player's are in it (tuples of ints), not a list per player.
    The groups live for the whole walk, across young collections: a list per player,
    a tracked object each, would reach the old generation (see ``model.Login``)."""

    def __init__(self, records: Iterable[_Mark]) -> None:
        self.records: list[_Mark] = sorted(records, key=itemgetter(USER))  # stable: in order
        self.where: dict[str, tuple[int, int]] = {}
        where = self.where
        pacer = Pacer()  # thousands of records: waiting threads let in between slices
        for n, record in enumerate(self.records):
            if not n % CHECK_EVERY:
                pacer.tick()
            user = record[USER]
            found = where.get(user)
            where[user] = (n if found is None else found[0], n + 1)

    def of(self, user: str) -> list[_Mark]:
        """The player's records (a new list: a slice)."""
        first, end = self.where.get(user, (0, 0))
        return self.records[first:end]


def _activity_run(user: str, marks: tuple[int, ...], logins: list[Login]) -> ActivityRun:
    """A player's run, their activity marks and logins: what the store keeps of the
    batch's activity. (A batch's activity is sorted per player already.)"""
    if not logins:
        return (user, marks[0], marks[-1], marks, ())
    times = sorted([*marks, *(login[AT] for login in logins)])
    keys = tuple(sorted((m[AT], m[ORIGIN], m[SEQ]) for m in logins))
    return (user, times[0], times[-1], tuple(times), keys)


def _id_prefix(batch_id: str) -> str:
    """What a batch's new sessions' ids start with (then ``.`` and a number): its id,
    the 32 hex digits of :func:`~.model.new_id` as 22 base64url characters (a session's
    id is in its row and again in the id index; ``<id>:<part>`` keeps its part). An id
    of another form stays as it is (the library makes none of 22 characters), so two
    batches' prefixes differ as their ids do."""
    head, colon, part = batch_id.partition(":")
    if len(head) == 32 and head == head.lower():  # new_id's (hex has two cases)
        try:
            raw = bytes.fromhex(head)
        except ValueError:
            return batch_id
        return base64.urlsafe_b64encode(raw).decode()[:22] + colon + part
    return batch_id


def earliest_marks(batch: FlushBatch) -> dict[str, int]:
    """Per player with marks in the batch, the time of the earliest."""
    since: dict[str, int] = {}
    for user, times in paced(batch.activity.items(), CHECK_EVERY):
        since[user] = times[0]  # sorted
    marks: list[Login | Logout] = [*batch.logins, *batch.logouts]
    for mark in marks:
        user, at = mark[USER], mark[AT]
        if at < since.get(user, at + 1):
            since[user] = at
    return since


def plan_sessions(
    batch: FlushBatch,
    stored: Iterable[StoredSession],
    stored_logouts: Iterable[Logout],
    marks_between: MarksBetween,
    part: int = 0,
) -> Iterator[SessionChanges]:
    """Merge a batch's marks into the stored ones and say what changes, for ``part``
    players at a time (0: all of them in one).

    ``stored`` holds the stored sessions of the batch's players whose last mark (or
    end, for a frozen one) is at or after their earliest new mark minus
    ``idle_timeout`` (more, later ones are welcome: they are walked unchanged), and
    ``stored_logouts`` their logouts from the earliest of those sessions on. A new
    logout already stored (the same id) counts as stored. A player's changes are in one
    part and depend on no other player's, so the parts may be written one by one.
    """
    idle_ms = batch.idle_timeout_ms
    stored_logouts = list(stored_logouts)
    stored_ids = {(m[USER], m[ID]) for m in stored_logouts}
    logins = _Grouped(batch.logins)
    sessions = _Grouped(stored)
    logouts = _Grouped(stored_logouts)
    new_logouts = _Grouped(m for m in batch.logouts if (m[USER], m[ID]) not in stored_ids)
    players = sorted(set(batch.activity) | set(logins.where) | set(new_logouts.where))
    prefix = _id_prefix(batch.id)
    ids = (f"{prefix}.{n}" for n in count())  # a new session's id: unique, and cheap
    day_of = day_keys(batch.tz)
    part = part or len(players)
    for first in range(0, len(players), part):
        changes = SessionChanges()
        for user in paced(players[first : first + part]):  # a sort and a walk per player
            before = sessions.of(user)
            added = new_logouts.of(user)
            changes.logouts += added
            pieces = _spans(user, before, added, marks_between) if before else []
            times = batch.activity.get(user, ())
            its_logins = logins.of(user)
            if times or its_logins:
                changes.activity.append(_activity_run(user, times, its_logins))
            if (
                its_logins
                or user in logouts.where
                or added
                or (before and any(session[LAST] is None for session in before))  # frozen
            ):  # a mark at a time
                pieces += [_span(ms, ms) for ms in times]
                pieces += [_login(m) for m in its_logins]
                pieces += [_logout(m) for m in logouts.of(user)]
                pieces += [_logout(m, new=True) for m in added]
            elif times:  # the common case: tracked calls only, taken a run at a time
                pieces += _runs(times, idle_ms)
            runs, unmatched = _walk(pieces, idle_ms)
            changes.unmatched_logouts += unmatched
            _compare(changes, user, before, runs, day_of, ids)
        yield changes


def _spans(
    user: str,
    sessions: list[StoredSession],
    new_logouts: list[Logout],
    marks_between: MarksBetween,
) -> list[_Piece]:
    """The stored sessions as spans, each split at the new logouts that fall inside it
    (after its first mark, before its last) by its stored marks.

    A span knows its last mark's millisecond, not its place in it: a logout of that
    millisecond may come before the last mark (another process's login, by origin) or
    after it, so it is looked up among the marks like one strictly inside."""
    pieces: list[_Piece] = []
    for session in sessions:
        start, last = session[AT], session[LAST]
        if last is None:  # a frozen session is a closed one, walked as a wall
            end = session[LOGOUT_AT]
            assert end is not None
            pieces.append((start, _FIRST, end, _ACTIVITY, None, session, False))
            continue
        order = _order(session)
        inside = sorted(
            key
            for key in (_key(_logout(m)) for m in new_logouts)
            if (start, order) < key < (last, _LAST)
        )
        # The session's own marks: none before its first (a mark of its first
        # millisecond may be an earlier session's).
        stored_marks = (
            [key for key in marks_between(user, start, last) if key >= (start, order)]
            if inside
            else []
        )
        if not stored_marks:  # nothing inside, or its marks are no longer kept
            pieces.append((start, order, last, _ACTIVITY, session[USERNAME], session, False))
            continue
        segments: list[list[MarkKey]] = [[]]
        for key in stored_marks:
            while inside and key > inside[0]:
                inside.pop(0)
                segments.append([])
            segments[-1].append(key)
        for n, segment in enumerate(s for s in segments if s):
            first = n == 0 and segment[0] == (start, order)
            # A piece with a login among its marks has the session's username (its
            # logins' name); one of tracked calls only has none.
            named = any(place[0] for _, place in segment)
            pieces.append(
                (
                    segment[0][0],
                    segment[0][1],
                    segment[-1][0],
                    _ACTIVITY,
                    session[USERNAME] if named else None,
                    session if first else None,
                    False,
                )
            )
    return pieces


def _runs(times: tuple[int, ...], idle_ms: int) -> list[_Piece]:
    """A player's sorted activity marks, with no login or logout near them, as spans:
    runs with no gap over ``idle_ms``, so the walk takes a run in one step instead of
    a mark at a time (a flush carries dozens of marks per player, and this loop is what
    each costs)."""
    if times[-1] - times[0] <= idle_ms:  # sorted: no gap can be longer than the whole
        return [_span(times[0], times[-1])]
    pieces = []
    start = previous = times[0]
    for ms in times:
        if ms - previous > idle_ms:
            pieces.append(_span(start, previous))
            start = ms
        previous = ms
    pieces.append(_span(start, previous))
    return pieces


def _walk(pieces: list[_Piece], idle_ms: int) -> tuple[list[_Run], int]:
    """The definition, over one player's pieces: the sessions, and how many new
    logouts ended nothing."""
    runs: list[_Run] = []
    run: _Run | None = None
    wall = -1  # the end of the last frozen session: marks up to it belong to it
    unmatched = 0
    if len(pieces) > 1:
        pieces.sort(key=_key)  # stable: pieces of one key keep their order
    for at, order, last, kind, username, stored, new in pieces:
        if stored is not None and stored[LAST] is None:  # frozen
            if run is not None:
                run.end, run.timed_out = run.last, True
                runs.append(run)
                run = None
            runs.append(_Run(at, last, None, kept=stored))
            wall = max(wall, last)
            continue
        if at <= wall:
            continue
        if run is not None and at - run.last > idle_ms:
            run.end, run.timed_out = run.last, True
            runs.append(run)
            run = None
        if kind == _LOGOUT:
            if run is not None:
                run.end = at
                runs.append(run)
                run = None
            elif new:
                unmatched += 1
        elif run is None:
            run = _Run(at, last, username, order=order)
        else:
            run.last = max(run.last, last)
            run.username = run.username or username
    if run is not None:
        runs.append(run)
    return runs, unmatched


def _compare(
    changes: SessionChanges,
    user: str,
    before: list[StoredSession],
    runs: list[_Run],
    day_of: Callable[[int], tuple[str, str]],
    ids: Iterator[str],
) -> None:
    """Record what differs between the stored sessions and the walk's, by start."""
    # By start: a session's first mark and its place in its millisecond (a login
    # after a logout of the same millisecond starts a second session there).
    old = {(s[AT], _order(s)): s for s in before} if before else {}
    for run in runs:
        if run.kept is not None:
            old.pop((run.start, _order(run.kept)), None)
            continue
        previous = old.pop((run.start, run.order), None)
        end = _end(run, previous)
        if previous is not None:
            if previous[LOGOUT_AT:] == end and previous[USERNAME] == run.username:
                continue
            changes.count(previous, -1)
            # Its logins' name (a split may drop it).
            session = (*previous[:USERNAME], run.username, *previous[DAY:LOGOUT_AT], *end)
        else:
            day, month = day_of(run.start)
            _, origin, seq = run.order
            session = (next(ids), user, run.start, origin, seq, run.username, day, month, *end)
        changes.sessions.append(session)
        changes.count(session, 1)
    for gone in old.values():  # merged into an earlier session
        changes.deleted.append(gone[ID])
        changes.count(gone, -1)


def _end(run: _Run, previous: StoredSession | None) -> SessionEnd:
    if run.end is not None:
        return (run.end, seconds(run.start, run.end), run.timed_out, run.last)
    if previous is not None and previous[TIMED_OUT] and previous[LAST] == run.last:
        return previous[LOGOUT_AT:]  # closed by the clock already: time only moves forward
    return (None, seconds(run.start, run.last), False, run.last)


def close_idle(stale: Iterable[StoredSession]) -> SessionChanges:
    """The prune job's changes: open sessions whose last mark is more than
    ``idle_timeout`` ago ended there, as a later mark would end them. Their seconds
    were counted already: no figure changes."""
    return SessionChanges(
        sessions=[(*s[:LOGOUT_AT], s[LAST], s[DURATION], True, s[LAST]) for s in stale]
    )
