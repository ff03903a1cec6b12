"""A progress line on stderr for the CLI's long work (``demo``, ``prune``,
``replay-dead-letters``, ``erase``, ``export-user``, ``mongo-init``).

Why its own module, and no dependency: every command wants the same thing, one line
redrawn in place with ``\\r`` on a terminal and nothing at all otherwise (cron mail, CI
logs and pipes get the command's result, not a stream of percentages), and that is a
few dozen lines, not a reason to add ``tqdm`` or ``rich`` to every install.

Two shapes of work: a loop that knows how far it is (:meth:`Progress.update`, drawn
as a bar when the total is known, a count otherwise), and one blocking call into a
store that cannot say (:meth:`Progress.working`, which redraws the elapsed time from
a daemon thread while the call runs). Redraws are throttled to :data:`REDRAW_S`, so a
caller may report every step of a tight loop for the price of a clock read.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

from .repeating import repeating

#: The shortest time between two redraws of the line.
REDRAW_S = 0.1
#: Characters of the bar drawn for work of a known total.
BAR_WIDTH = 30


class Progress:
    """One progress line on ``stream`` (stderr by default), drawn only when it is a
    terminal. Use it as a context manager, or call :meth:`close`, so the line ends.

    ``unit`` names what is counted ("calls", "batches"), shown after the count.
    """

    def __init__(self, label: str, stream: TextIO | None = None, *, unit: str = "") -> None:
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.unit = unit
        self.enabled = _is_terminal(self.stream)
        self._started = time.monotonic()
        self._last_draw = float("-inf")
        self._drawn = False
        self._lock = threading.Lock()  # the ticker thread of working() draws too

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __call__(self, done: int, total: int | None = None) -> None:
        """The same as :meth:`update`: a ``Progress`` is a ``(done, total)`` callback."""
        self.update(done, total)

    def update(self, done: int, total: int | None = None, *, detail: str = "") -> None:
        """``done`` of ``total`` (None: unknown) steps are done, with ``detail`` after
        the count; drawn at most every :data:`REDRAW_S`, and always at the end
        (``done >= total``)."""
        if not self.enabled:
            return
        now = time.monotonic()
        finished = total is not None and done >= total
        if now - self._last_draw < REDRAW_S and not finished:
            return
        self._last_draw = now
        unit = f" {self.unit}" if self.unit else ""
        if total:
            percent = min(100, 100 * done // total)
            filled = BAR_WIDTH * percent // 100
            bar = "#" * filled + "." * (BAR_WIDTH - filled)
            text = f"{self.label} [{bar}] {percent:3d}% {done:,}/{total:,}{unit}"
        else:
            text = f"{self.label}: {done:,}{unit}"
        detail = f", {detail}" if detail else ""
        self._draw(f"{text}{detail} {self._elapsed(now)}")

    @contextmanager
    def working(self) -> Iterator[None]:
        """Around one blocking call that reports nothing: the elapsed time, redrawn
        every second by a daemon thread until the call returns (or raises)."""
        if not self.enabled:
            yield
            return

        def tick() -> None:
            self._draw(f"{self.label}... {self._elapsed(time.monotonic())}")

        with repeating(tick, 1.0, "gso_analytics-progress", at_once=True):
            yield

    def close(self) -> None:
        """End the line (on a terminal, once something was drawn), so what the command
        prints next starts on a line of its own."""
        with self._lock:
            if self._drawn:
                self.stream.write("\n")
                self.stream.flush()
                self._drawn = False

    def _elapsed(self, now: float) -> str:
        seconds = int(now - self._started)
        return f"{seconds // 60}:{seconds % 60:02d}"

    def _draw(self, text: str) -> None:
        with self._lock:
            # \033[K clears what a longer previous line left to the right.
            self.stream.write(f"\r{text}\033[K")
            self.stream.flush()
            self._drawn = True


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or file-like stream without a tty
        return False
