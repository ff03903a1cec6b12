"""A real headless Chromium for the tests: the DOM it builds from a page, and
screenshots of it at a given window size.

Whether Chromium is there is decided by the ``chromium`` fixture in conftest.py, with the
rule every real tool follows there: missing, a test skips on a laptop and fails under
``CI=true``.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

#: A clean, quiet browser: no sandbox (containers), no GPU, no profile, no network of its own.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)
TIMEOUT_S = 120


class Chromium:
    """Runs one headless Chromium per call, each with a fresh profile under ``workdir``."""

    def __init__(self, executable: str, workdir: Path) -> None:
        self.executable = executable
        self.workdir = workdir
        self._runs = 0

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        self._runs += 1
        profile = self.workdir / f"profile-{self._runs}"
        done = subprocess.run(
            [self.executable, *FLAGS, f"--user-data-dir={profile}", *args],
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        return done

    def dump_dom(self, page: Path) -> str:
        """The DOM Chromium built from ``page``, serialized."""
        return self._run("--dump-dom", page.resolve().as_uri()).stdout

    def screenshot(self, page: Path, width: int, height: int, target: Path) -> Path:
        """A PNG of ``page`` in a ``width`` x ``height`` window (CSS pixels)."""
        self._run(
            f"--window-size={width},{height}", f"--screenshot={target}", page.resolve().as_uri()
        )
        return target


def png_size(path: Path) -> tuple[int, int]:
    """A PNG's width and height, from its IHDR chunk (no imaging library needed)."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
