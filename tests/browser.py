"""A real headless Chromium for the tests: the DOM it builds from a page, and
screenshots of it at a given window size.

Whether Chromium is there is decided by the ``chromium`` fixture in conftest.py, with the
rule every real tool follows there: missing, a test skips on a laptop and fails under
``CI=true``.
"""

from __future__ import annotations

import html
import json
import re
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

    def table_widths(self, page: str, widths: tuple[int, ...]) -> dict[int, dict[str, list[int]]]:
        """How ``page``'s tables lay out in a viewport of each of ``widths`` CSS pixels:
        per table (its ``data-kpi``), its box's scroll width and client width (a table
        wider than its box is clipped or scrolls) and how many of its cells are narrower
        than their text (clipped or overflowing); ``page``, the document's widths.

        The page is laid out in an iframe of that width inside a measuring page (headless
        Chromium's own window is never narrower than 500 px), so its media queries see
        exactly that width; the report has no script, the measuring page brings one."""
        frames = "".join(
            f'<iframe id="w{w}" style="width:{w}px;height:1500px;border:0"'
            f' srcdoc="{html.escape(page)}"></iframe>'
            for w in widths
        )
        probe = (
            "<script>addEventListener('load', () => { const out = {};"
            " for (const f of document.querySelectorAll('iframe')) {"
            " const d = f.contentDocument; const found = {};"
            " for (const t of d.querySelectorAll('table[data-kpi]')) {"
            " const box = t.parentElement; const cells = [...t.querySelectorAll('td, th')];"
            " const over = cells.filter(c => c.scrollWidth > c.clientWidth + 1).length;"
            " found[t.dataset.kpi] = [box.scrollWidth, box.clientWidth, over]; }"
            " const root = d.documentElement;"
            " found.page = [root.scrollWidth, root.clientWidth, 0];"
            " out[f.id.slice(1)] = found; }"
            " document.body.setAttribute('data-measured', JSON.stringify(out)); });</script>"
        )
        target = self.workdir / f"measure-{self._runs}.html"
        target.write_text(f"<!DOCTYPE html><html><body>{frames}{probe}</body></html>", "utf-8")
        dom = self.dump_dom(target)
        found = re.search(r'data-measured="([^"]*)"', dom)
        assert found is not None, dom[-2000:]
        return {int(w): tables for w, tables in json.loads(html.unescape(found[1])).items()}

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
