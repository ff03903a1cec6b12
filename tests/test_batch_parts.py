"""``FlushBatch.parts``: a batch split into parts bounded in players, events and bytes
(one MongoDB transaction each) carries everything of the batch exactly once.

Why: a part that lost a player's registration once lost ``newUsers``; parts bounded in
players only let one player's events make a transaction of any size. Checked here as
properties of random batches and bounds, against the batch itself."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from gso_analytics.model import FlushBatch, event_bytes

DAY, MONTH = "2025-03-14", "2025-03"


@st.composite
def batches(draw: st.DrawFn) -> FlushBatch:
    players = [f"p{n}" for n in range(draw(st.integers(0, 12)))]
    events = []
    for ts in range(draw(st.integers(0, 60))):
        if players:
            user = draw(st.sampled_from(players))
            data = "x" * draw(st.integers(0, 300))
            events.append((ts, user, "credits.earn", f'{{"d":"{data}"}}', DAY))
    logins = [
        (f"s{n}", user, n, "w", n, None, DAY, MONTH)
        for n, user in enumerate(
            draw(st.lists(st.sampled_from(players), max_size=8)) if players else []
        )
    ]
    logouts = [
        (f"o{n}", user, 100 + n, "w", n)
        for n, user in enumerate(
            draw(st.lists(st.sampled_from(players), max_size=8)) if players else []
        )
    ]
    active = {m[1] for m in logins}  # their players
    return FlushBatch(
        id="b",
        counters={DAY: {"creditsEarned": len(events)}},
        months={DAY: MONTH},
        day_users={DAY: active} if active else {},
        month_users={MONTH: active} if active else {},
        new_users={DAY: set(list(active)[:2])} if active else {},
        logins=logins,
        logouts=logouts,
        events=events,
        payments={DAY: {u: 100 for u in list(active)[:3]}} if active else {},
    )


@settings(max_examples=300, deadline=None)
@given(batches(), st.integers(1, 5), st.integers(1, 10), st.integers(100, 2000))
def test_parts_hold_the_batch_once_within_their_bounds(
    batch: FlushBatch, max_players: int, max_events: int, max_bytes: int
) -> None:
    parts = batch.parts(max_players, max_events, max_bytes)
    if parts == [batch]:
        assert len(batch.players()) <= max_players and len(batch.events) <= max_events
        return
    assert [p.id for p in parts] == [f"b:{n}" for n in range(len(parts))]
    # Every event once, in the batch's order within each part.
    assert Counter(e for p in parts for e in p.events) == Counter(batch.events)
    for part in parts:
        assert part.events == sorted(part.events, key=batch.events.index)
        assert len(part.events) <= max_events
        weight = sum(event_bytes(e) for e in part.events)
        assert weight <= max_bytes or len(part.events) == 1  # one event may weigh more
    # Each player's marks and records in one part only, with at most max_players each.
    owners: dict[str, int] = {}
    for n, part in enumerate(parts):
        marked = {m[1] for m in (*part.logins, *part.logouts)}  # their players
        recorded = set().union(*part.day_users.values(), *part.payments.values())
        assert len(marked | recorded) <= max_players
        for user in marked | recorded:
            assert owners.setdefault(user, n) == n, user
    assert sorted(m for p in parts for m in p.logins) == sorted(batch.logins)
    assert sorted(m for p in parts for m in p.logouts) == sorted(batch.logouts)
    assert sum(len(p.new_users.get(DAY, ())) for p in parts) == len(batch.new_users.get(DAY, ()))
    # The day counters (not per player) go with the first part only.
    assert parts[0].counters == batch.counters
    assert all(not p.counters for p in parts[1:])
