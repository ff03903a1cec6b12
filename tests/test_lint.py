"""The tree stays ruff-clean and type-checks under ``mypy --strict``: CI runs the README's
test command only, so lint and the type checker live here."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _tool(name: str) -> str:
    beside = Path(sys.executable).parent / name  # the venv's own tool first
    return str(beside) if beside.exists() else shutil.which(name) or name


def test_ruff_check_passes() -> None:
    result = subprocess.run(
        [_tool("ruff"), "check", "."],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_passes() -> None:
    """``py.typed`` tells our users' type checkers to read our hints: they must hold.
    The files and the strictness are in pyproject.toml's ``[tool.mypy]``."""
    result = subprocess.run(
        [_tool("mypy"), "--no-incremental"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
