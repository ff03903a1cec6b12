"""A FlushBatch survives JSON exactly: what a dead-letter file keeps is what replays."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from gso_analytics.batch_json import batch_from_dict, batch_to_dict
from gso_analytics.dead_letters import DeadLetters, read_dead_letters
from gso_analytics.model import EventRecord, FlushBatch


def batch_to_json(batch: FlushBatch) -> str:
    """As a dead-letter line holds it."""
    return json.dumps(batch_to_dict(batch), separators=(",", ":"))


def batch_from_json(text: str) -> FlushBatch:
    return batch_from_dict(json.loads(text))


def rich_batch() -> FlushBatch:
    return FlushBatch(
        created_at=datetime(2025, 3, 14, 12, 0, 0, 123456, tzinfo=timezone(timedelta(hours=2))),
        counters={"2025-03-14": {"creditsEarned": 50, "gemsEarned": 2.5, "big": 2**62}},
        months={"2025-03-14": "2025-03", "2025-03-15": "2025-03"},
        day_users={"2025-03-14": {"u1", "Grüße 🎮", "u\udc80x"}, "2025-03-15": set()},
        month_users={"2025-03": {"u1"}},
        new_users={"2025-03-14": {"u1", "Grüße 🎮"}},  # registrations: lost in a replay before
        logins=[("s1", "u1", 1741953600000, "host:1", 3, None, "2025-03-14", "2025-03")],
        logouts=[("s1-out", "u1", 1741953690000, "host:1", 4)],
        activity={"u1": (1_000, 2_000)},
        idle_timeout_ms=3_600_000,
        tz="Europe/Paris",
        events=[EventRecord(1741953600000, "u1", "credits.earn", '{"amount":50,"n":"é"}', "d").row],
        payments={"2025-03-14": {"u1": 1499, "u2": 0.5}},
    )


@pytest.mark.parametrize("batch", [rich_batch(), FlushBatch()], ids=["rich", "empty"])
def test_round_trip_is_exact(batch: FlushBatch) -> None:
    text = batch_to_json(batch)
    assert "\n" not in text and text.isascii()
    back = batch_from_json(text)
    assert back == batch  # attrs equality: every field, the id and created_at included


def test_numbers_keep_their_type() -> None:
    """An int amount stays an int (an SQLite counter would turn REAL otherwise)."""
    back = batch_from_json(batch_to_json(rich_batch()))
    counters = back.counters["2025-03-14"]
    assert [type(counters[f]) for f in ("creditsEarned", "gemsEarned", "big")] == [
        int,
        float,
        int,
    ]
    assert back.created_at is not None and back.created_at.utcoffset() == timedelta(hours=2)


def test_an_unknown_format_is_refused() -> None:
    doc = json.loads(batch_to_json(FlushBatch()))
    doc["format"] = 99
    with pytest.raises(ValueError, match="format 99"):
        batch_from_json(json.dumps(doc))


def test_a_dead_letter_file_reads_back_what_was_written(tmp_path: str) -> None:
    letters = DeadLetters(tmp_path)
    batches = [rich_batch(), FlushBatch(created_at=datetime.now(UTC))]
    for batch in batches:
        path = letters.write(batch, "RuntimeError('boom')")
    read = list(read_dead_letters(path))
    assert [letter.batch for letter in read] == batches
    assert read[0].reason == "RuntimeError('boom')"
