"""Dead letters: batches the flusher set aside, as JSON lines, and their replay.

Why a file: a batch the store refuses for good must not block the batches behind it
(they would never be stored), nor vanish. With ``dead_letter_dir=`` each process
appends what it sets aside to its own file there (``dead-letters-<host>-<pid>.jsonl``:
one writer per file, so lines never interleave), one JSON object a line: the batch
(:mod:`.batch_json`), why it was set aside, and when. ``gso-analytics
replay-dead-letters FILE --store URL`` applies them once the cause is fixed; each keeps
its batch id, so a replay, or a second one, never counts a batch twice while the store
still remembers the id (see ``MIN_BATCH_RETENTION``).

An erase rewrites the files of the directory it can see (:meth:`DeadLetters.erase`):
the player's id becomes the erase's token, their username and events go, and other
players' event data naming them gets the token, as in the store. A batch set aside
after an erase is renamed before it is written (the flusher looks its players up in
the store's tombstones). Files are rewritten whole and replaced, under an exclusive
``flock`` that every writer takes too, so no line appended meanwhile is lost.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Callable, Collection, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import attrs

from .batch_json import batch_from_dict, batch_to_dict
from .erasure import rename_users, rewrite_mentions
from .model import FlushBatch
from .private_files import open_private
from .store import Store

try:
    import fcntl
except ImportError:  # Windows: no flock; one process per directory is safe there
    fcntl = None  # type: ignore[assignment]

#: The files of a directory that hold dead letters.
PATTERN = "dead-letters-*.jsonl"


@contextlib.contextmanager
def _locked(path: Path, mode: str) -> Iterator[IO[Any]]:
    """``path`` opened (created ``0600``) and exclusively locked, on the inode the path
    names once the lock is held: an erase may have replaced the file meanwhile, and a
    lock on the old inode would guard nothing."""
    while True:
        file = open_private(path, mode, encoding="ascii")
        if fcntl is None:
            break
        fcntl.flock(file.fileno(), fcntl.LOCK_EX)
        try:
            same = os.path.samestat(os.fstat(file.fileno()), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        file.close()
    try:
        yield file
    finally:
        file.close()  # releases the lock


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
        line = _line(DeadLetter(batch, reason, datetime.now(UTC).isoformat()))
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.path()
        with _locked(path, "a") as file:
            file.write(line + "\n")
            file.flush()
            os.fsync(file.fileno())
        return path

    def erase(self, user_id: str, names: Collection[str], token: str) -> int:
        """Rewrite every dead-letter file of the directory as the erase of ``user_id``
        (the id as stored) rewrote the store: the id becomes ``token``, the player's
        username and events go, strings of other players' event data equal to one of
        ``names`` become ``token``. Returns the letters changed."""
        changed = 0
        for path in sorted(self.directory.glob(PATTERN)):
            with _locked(path, "a"):
                letters = list(read_dead_letters(path))
                renamed = [_erase_from(letter, user_id, names, token) for letter in letters]
                if renamed == letters:
                    continue
                changed += sum(a != b for a, b in zip(letters, renamed, strict=True))
                part = path.with_name(path.name + ".erasing")
                with open_private(part, "w", encoding="ascii") as file:
                    file.writelines(_line(letter) + "\n" for letter in renamed)
                    file.flush()
                    os.fsync(file.fileno())
                os.replace(part, path)
        return changed


def _line(letter: DeadLetter) -> str:
    return json.dumps(
        {
            "batch": batch_to_dict(letter.batch),
            "reason": letter.reason,
            "setAsideAt": letter.set_aside_at,
        },
        separators=(",", ":"),
    )


def _erase_from(letter: DeadLetter, user_id: str, names: Collection[str], token: str) -> DeadLetter:
    batch = rename_users(letter.batch, {user_id: token}, keep_events=False)
    events = []
    for ts, user, name, data, day in batch.events:
        rewritten = rewrite_mentions(data, names, token)
        events.append((ts, user, name, data if rewritten is None else rewritten, day))
    batch = attrs.evolve(batch, events=events)
    return letter if batch == letter.batch else attrs.evolve(letter, batch=batch)


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


def replay(
    path: str | os.PathLike[str],
    store: Store,
    progress: Callable[[int, int], None] | None = None,
) -> ReplayResult:
    """Apply every batch of ``path`` to ``store``, in order, each exactly once;
    ``progress(done, total)`` after each batch, when given.

    Stops at the first error (the ones before it are applied, and a run again skips
    them as duplicates)."""
    total = _count_lines(path) if progress is not None else 0
    applied = duplicates = 0
    for letter in read_dead_letters(path):
        if store.apply(letter.batch).duplicate:
            duplicates += 1
        else:
            applied += 1
        if progress is not None:
            progress(applied + duplicates, total)
    return ReplayResult(applied, duplicates)


def _count_lines(path: str | os.PathLike[str]) -> int:
    """The letters of a file, counted without parsing them (the progress' total)."""
    with Path(path).open("rb") as file:
        return sum(1 for line in file if line.strip())
