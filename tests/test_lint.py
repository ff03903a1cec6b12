"""The tree stays ruff-clean: CI runs the README's test command only, so lint lives here."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_check_passes() -> None:
    beside = Path(sys.executable).parent / "ruff"  # the venv's own ruff first
    ruff = str(beside) if beside.exists() else shutil.which("ruff") or "ruff"
    result = subprocess.run(
        [ruff, "check", "."],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
