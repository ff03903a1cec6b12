"""Dead letters: batches the flusher set aside, as JSON lines, and their replay.

Why a file: a batch the store refuses for good must not block the batches behind it
(they would never be stored), nor vanish. With ``dead_letter_dir=`` each process
appends what it sets aside to its own file there (``dead-letters-<host>-<pid>.jsonl``:
one writer per file, so lines never interleave), one JSON object a line: the batch
(:mod:`.batch_json`), why it was set aside, and when. ``gso-analytics
replay-dead-letters FILE --store URL`` applies them once the cause is fixed; each keeps
its batch id, so a replay, or a second one, never counts a batch twice while the store
still remembers the id (see ``MIN_BATCH_RETENTION``).
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import attrs

from .batch_json import batch_from_dict, batch_to_dict
from .model import FlushBatch
from .private_files import open_private
from .store import Store


@attrs.frozen
class DeadLetter:
    batch: FlushBatch
    reason: str
    set_aside_at: str  # ISO 8601, UTC


class DeadLetters:
    """Appends set-aside batches to this process's file under ``directory``."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def path(self) -> Path:
        """This process's file (the pid is read now: a forked child gets its own)."""
        return self.directory / f"dead-letters-{socket.gethostname()}-{os.getpid()}.jsonl"

    def write(self, batch: FlushBatch, reason: str) -> Path:
        """Append ``batch``; raises ``OSError`` when the file cannot be written."""
        line = json.dumps(
            {
                "batch": batch_to_dict(batch),
                "reason": reason,
                "setAsideAt": datetime.now(UTC).isoformat(),
            },
            separators=(",", ":"),
        )
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.path()
        with open_private(path, "a", encoding="ascii") as file:
            file.write(line + "\n")
            file.flush()
            os.fsync(file.fileno())
        return path


def read_dead_letters(path: str | os.PathLike[str]) -> Iterator[DeadLetter]:
    """The dead letters of a file, in the order they were set aside."""
    with Path(path).open(encoding="ascii") as file:
        for number, line in enumerate(file, 1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
                yield DeadLetter(batch_from_dict(data["batch"]), data["reason"], data["setAsideAt"])
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{number}: not a dead letter: {exc}") from exc


@attrs.frozen
class ReplayResult:
    applied: int = 0
    duplicates: int = 0


def replay(path: str | os.PathLike[str], store: Store) -> ReplayResult:
    """Apply every batch of ``path`` to ``store``, in order, each exactly once.

    Stops at the first error (the ones before it are applied, and a run again skips
    them as duplicates)."""
    applied = duplicates = 0
    for letter in read_dead_letters(path):
        if store.apply(letter.batch).duplicate:
            duplicates += 1
        else:
            applied += 1
    return ReplayResult(applied, duplicates)
