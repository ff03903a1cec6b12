"""``pip install .``, ``pip install -e .`` and a built wheel all ship the backends.

Why: ``backends/`` sits at the top of the repository and is installed as the
subpackage ``gso_analytics.backends`` through ``package_dir`` in setup.cfg. That
mapping is easy to break in one install mode only (an editable install that finds
``gso_analytics`` but not its remapped subpackage, a wheel without ``backends``),
and an in-repo test run would not notice, because the tree itself is importable.
So each mode installs a copy of the project into a fresh virtualenv (no system
site-packages, so a missing dependency fails too) and a script run from outside
the repository imports ``gso_analytics.backends.sqlite``, opens and uses a store,
and the ``gso-analytics`` console script answers ``--help``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: pip talks to the package index for attrs, requests and the build backend.
PIP_TIMEOUT_S = 600
RUN_TIMEOUT_S = 120

#: Run by the venv's interpreter with ``-I`` (no cwd, no PYTHONPATH on sys.path).
PROBE = """
import json, sys
import gso_analytics
import gso_analytics.backends
import gso_analytics.backends.sqlite as sqlite_backend
from gso_analytics import Analytics, open_store

store = open_store("sqlite:///probe.db")
assert isinstance(store, sqlite_backend.SQLiteStore), type(store)
with Analytics(store, flush_interval=60) as analytics:
    analytics.on_login("u1", "alice")
    analytics.track("credits.earn", "u1", {"amount": 50})
    metrics = analytics.get_metrics().to_dict()
store.close()
print(json.dumps({
    "package": gso_analytics.__file__,
    "backends": gso_analytics.backends.__file__,
    "sqlite": sqlite_backend.__file__,
    "metrics": {k: metrics[k] for k in ("dau", "mau", "activeSessions")},
    "credits": metrics["today"]["creditsEarned"],
}))
"""

IGNORED = shutil.ignore_patterns(
    ".git",
    "build",
    "dist",
    "*.egg-info",
    ".venv",
    ".tox",
    "__pycache__",
    ".pytest_cache",
    ".ruff_cache",
    ".hypothesis",
    "*.db",
    "*.db-wal",
    "*.db-shm",
)


def _env() -> dict[str, str]:
    """The caller's environment without what would leak the outer install in."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.pop("VIRTUAL_ENV", None)
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    return env


def _run(args: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        args, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout
    )
    command = " ".join(args if "-c" not in args else [*args[: args.index("-c")], "-c PROBE"])
    assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clean copy of the project, so builds leave nothing in the working tree."""
    copy = tmp_path_factory.mktemp("src") / "gso_analytics_src"
    shutil.copytree(ROOT, copy, ignore=IGNORED)
    return copy


def _build_wheel(src: Path, outdir: Path) -> Path:
    if importlib.util.find_spec("build") is not None:
        args = [sys.executable, "-m", "build", "--wheel", "--outdir", str(outdir), str(src)]
    else:
        args = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps"]
        args += ["--wheel-dir", str(outdir), str(src)]
    _run(args, cwd=outdir, timeout=PIP_TIMEOUT_S)
    (wheel,) = outdir.glob("gso_analytics-*.whl")
    return wheel


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["regular", "editable", "wheel"])
def test_install_mode_imports_the_sqlite_backend(mode: str, source: Path, tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, system_site_packages=False, clear=True).create(env_dir)
    python = env_dir / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "--quiet"]
    if mode == "regular":
        _run([*pip, str(source)], cwd=tmp_path, timeout=PIP_TIMEOUT_S)
    elif mode == "editable":
        _run([*pip, "-e", str(source)], cwd=tmp_path, timeout=PIP_TIMEOUT_S)
    else:
        outdir = tmp_path / "dist"
        outdir.mkdir()
        wheel = _build_wheel(source, outdir)
        names = zipfile.ZipFile(wheel).namelist()
        assert "gso_analytics/backends/sqlite.py" in names, names
        assert "gso_analytics/py.typed" in names, "type checkers would ignore our hints"
        assert not any(n.startswith("backends/") for n in names), "backends/ at top level"
        _run([*pip, str(wheel)], cwd=tmp_path, timeout=PIP_TIMEOUT_S)

    workdir = tmp_path / "elsewhere"  # outside the repository and its copy
    workdir.mkdir()
    probe = _run([str(python), "-I", "-c", PROBE], cwd=workdir, timeout=RUN_TIMEOUT_S)
    found = json.loads(probe.stdout.strip().splitlines()[-1])
    assert found["metrics"] == {"dau": 1, "mau": 1, "activeSessions": 1}
    assert found["credits"] == 50
    package = Path(found["package"]).parent
    backends = Path(found["backends"]).parent
    if mode == "editable":  # the copy's own files, backends/ through the mapping
        assert package == source / "gso_analytics"
        assert backends == source / "backends"
    else:  # installed files, backends/ inside the package
        assert package.is_relative_to(env_dir), package
        assert backends == package / "backends"
    assert Path(found["sqlite"]).parent == backends
    assert not package.is_relative_to(ROOT) and not backends.is_relative_to(ROOT)

    script = env_dir / "bin" / "gso-analytics"
    assert script.is_file(), "the console script is not installed"
    usage = _run([str(script), "--help"], cwd=workdir, timeout=RUN_TIMEOUT_S)
    assert "usage: gso-analytics" in usage.stdout
    version = _run([str(script), "--version"], cwd=workdir, timeout=RUN_TIMEOUT_S)
    ask = "import importlib.metadata as m; print(m.version('gso-analytics'))"
    metadata = _run([str(python), "-I", "-c", ask], cwd=workdir, timeout=RUN_TIMEOUT_S)
    assert version.stdout.split() == ["gso-analytics", metadata.stdout.strip()]


# -- the testing kit, as a game team gets it -----------------------------------------------

GAME = '''
"""A tiny game's code under test: it takes the Analytics it reports to."""

DUNGEON_REWARD = {"crypt": 50}
PACKS = {"gems_100": (100, 199)}


def finish_dungeon(analytics, user_id, name):
    analytics.track("dungeon.complete", user_id, {"dungeon": name})
    analytics.track("credits.earn", user_id, {"amount": DUNGEON_REWARD[name]})


def buy_gems(analytics, user_id, pack):
    if pack not in PACKS:
        return False
    gems, cents = PACKS[pack]
    analytics.track("stripe.payment", user_id, {"amountCents": cents, "pack": pack})
    analytics.track("gems.purchase", user_id, {"gems": gems})
    return True
'''

GAME_TESTS = """
import pytest
from gso_analytics.testing import assert_not_tracked, assert_tracked, cluster

from game import buy_gems, finish_dungeon


def test_dungeon_rewards_credits(gso_analytics, gso_clock):
    gso_analytics.on_login("u1", "alice")
    gso_clock.advance(minutes=12)
    finish_dungeon(gso_analytics, "u1", "crypt")
    assert_tracked(gso_analytics, "dungeon.complete", "u1", dungeon="crypt")
    today = gso_analytics.get_metrics().to_dict()["today"]
    assert (today["dungeonsRun"], today["creditsEarned"], today["gemsSpent"]) == (1, 50, 0)


@pytest.mark.gso_clock("2025-01-31T23:59:00+00:00")
def test_a_refused_purchase_is_not_revenue(gso_analytics, gso_clock):
    assert not buy_gems(gso_analytics, "u1", pack="unknown")
    assert_not_tracked(gso_analytics, "stripe.payment")
    assert gso_clock().isoformat() == "2025-01-31T23:59:00+00:00"


def test_every_test_starts_empty(gso_analytics):
    assert gso_analytics.captured == [] and gso_analytics.get_metrics().dau == 0


def test_two_workers(gso_clock):
    with cluster(2, clock=gso_clock) as (a, b):
        a.on_login("u1")
        a.flush()
        gso_clock.advance(minutes=30)
        b.on_logout("u1")
        b.flush()
        assert a.get_metrics().active_sessions == 0


def test_a_wrong_expectation_lists_the_calls(gso_analytics):
    buy_gems(gso_analytics, "u1", pack="gems_100")
    assert_tracked(gso_analytics, "stripe.payment", "u1", amountCents=999)
"""


@pytest.mark.slow
def test_a_game_tests_itself_with_the_installed_plugin(source: Path, tmp_path: Path) -> None:
    """A plain install gives pytest the fixtures (pytest11), a sample game's test file
    passes, a wrong expectation fails listing the calls made, ``-p no:gso_analytics``
    turns the plugin off; and the README's ``gso-analytics demo`` prints real numbers
    into its own file."""
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, system_site_packages=False, clear=True).create(env_dir)
    python = str(env_dir / "bin" / "python")
    _run(
        [python, "-m", "pip", "install", "--quiet", str(source), "pytest"], tmp_path, PIP_TIMEOUT_S
    )
    game = tmp_path / "game_project"
    game.mkdir()
    (game / "game.py").write_text(GAME)
    (game / "test_game.py").write_text(GAME_TESTS)
    pytest_args = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_game.py"]
    ran = subprocess.run(
        pytest_args, cwd=game, env=_env(), capture_output=True, text=True, timeout=RUN_TIMEOUT_S
    )
    assert "1 failed, 4 passed" in ran.stdout, ran.stdout + ran.stderr
    assert "expected track('stripe.payment', user_id='u1', amountCents=999)" in ran.stdout
    assert "track('stripe.payment', 'u1', {'amountCents': 199, 'pack': 'gems_100'})" in ran.stdout
    off = subprocess.run(
        [*pytest_args, "-p", "no:gso_analytics"],
        cwd=game,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    assert "fixture 'gso_analytics' not found" in off.stdout, off.stdout

    fresh = tmp_path / "fresh"
    fresh.mkdir()
    demo = _run(
        [str(env_dir / "bin" / "gso-analytics"), "demo", "--players", "30", "--days", "2"],
        fresh,
        RUN_TIMEOUT_S,
    )
    assert "DAU" in demo.stdout and "--store sqlite:///gso_demo.db" in demo.stdout
    assert sorted(p.name for p in fresh.iterdir()) == ["gso_demo.db"]
