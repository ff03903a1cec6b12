"""Files with players' data, created readable by their owner only (``0600``).

A process's umask usually leaves new files world-readable (``0644``): on a shared host,
every local account could read the analytics database (player ids, usernames, the
erasure secret), its ``-wal``/``-shm`` files, dead letters and reports. Files the
library creates start private; a file that already exists keeps the mode its owner gave
it (an operator may have widened it on purpose).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO, Any

#: Owner read and write, nothing for group and others.
PRIVATE_MODE = 0o600


def create_private(path: str | os.PathLike[str]) -> None:
    """Create ``path`` empty with :data:`PRIVATE_MODE` unless it exists. SQLite then
    gives its ``-wal`` and ``-shm`` files the database file's mode."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_MODE)
    except FileExistsError:
        return
    os.close(fd)


def open_private(path: str | os.PathLike[str], mode: str, **options: Any) -> IO[Any]:
    """``open(path, mode)`` for writing (``"w"`` or ``"a"``), a new file created with
    :data:`PRIVATE_MODE` (``os.open`` applies the mode at creation, so the file is never
    readable by others, not even for an instant)."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if mode.startswith("a") else os.O_TRUNC)
    return open(os.open(Path(path), flags, PRIVATE_MODE), mode, **options)
