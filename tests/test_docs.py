"""The documentation cannot rot: every Python block of README.md and docs/ runs here, the
site builds with ``mkdocs build --strict``, and the README stays short and points only
at files that exist.

Why a small collector rather than a plugin (sybil, pytest-examples, pytest-markdown-docs):
the blocks of a page run in order in one namespace, as a reader runs them, and the
framework snippets need more than ``exec`` (Django settings are a module that
``manage.py`` imports; a test file is run by pytest), so the rules below are ours
either way, and they fit in one file that a docs writer can read:

- a ```` ```python ```` block runs in the page's namespace, in a fresh temporary working
  directory (so ``sqlite:///...`` files land there), without ``METRICS_TOKEN``,
  ``GSO_ANALYTICS_STORE`` or ``ANALYTICS_WEBHOOK_URL`` in the environment; the names
  ``store`` (a ``memory://`` store) and ``analytics`` (a started ``Analytics`` on it,
  no forwarders) are there for snippets that continue from them; every ``Analytics``
  a page starts is stopped at the end;
- a ```` ```python title="name.py" ```` block is a file: the page's files are written
  into an empty directory and exercised as a project would, ``python -m django check``
  when there is a ``settings.py`` (with ``METRICS_TOKEN`` unset), ``pytest`` when there
  are ``test_*.py`` files; a file neither exercises fails the test;
- any other fence (``bash``, ``json``, ``text``, ``yaml``, ``ini``, ``js``) is shown, not run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import attrs
import mongo_server
import pg_server
import pytest

from gso_analytics import Analytics, open_store

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"
PAGES = [README, *sorted(DOCS.rglob("*.md"))]
README_MAX_LINES = 200

FENCE = re.compile(r"^```(?P<info>[^\n`]*)\n(?P<body>.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
TITLE = re.compile(r'title="(?P<title>[^"]+)"')
SHOWN = {"bash", "json", "text", "yaml", "ini", "js"}
#: Variables a snippet must never see from the developer's shell: with them a snippet
#: would pass here and crash for a reader (a token set, a store elsewhere).
SCRUBBED_ENV = ("METRICS_TOKEN", "GSO_ANALYTICS_STORE", "ANALYTICS_WEBHOOK_URL")
RUN_TIMEOUT_S = 300


@attrs.frozen
class Block:
    """One fenced block: where it is, its language, its file name if it is a file."""

    page: Path
    line: int  # of the block's first code line, 1-based
    lang: str
    title: str | None
    code: str

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    text = page.read_text(encoding="utf-8")
    found = []
    for match in FENCE.finditer(text):
        info = match["info"].strip()
        lang = info.split(" ", 1)[0]
        title = TITLE.search(info)
        line = text.count("\n", 0, match.start("body")) + 1
        found.append(Block(page, line, lang, title["title"] if title else None, match["body"]))
    return found


def _name(page: Path) -> str:
    return str(page.relative_to(ROOT))


def _pages_with(kind: str) -> list[Path]:
    def wanted(block: Block) -> bool:
        return block.lang == "python" and (block.title is None) == (kind == "run")

    return [page for page in PAGES if any(wanted(block) for block in blocks(page))]


#: Pages whose snippets read a deployment's store URL from GSO_ANALYTICS_STORE: here it
#: is the MongoDB wire-protocol server the suite starts (tests/mongo_server.py), or the
#: PostgreSQL cluster it starts (tests/pg_server.py).
PAGE_ENV = {
    "docs/mongodb.md": lambda: {
        "GSO_ANALYTICS_STORE": mongo_server.nx_server().url(database=mongo_server.fresh_db_name())
    },
    "docs/postgresql.md": lambda: {"GSO_ANALYTICS_STORE": pg_server.fresh_url()},
}


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Analytics]]:
    """Every ``Analytics`` started while a page runs, to stop them after it."""
    instances: list[Analytics] = []
    original = Analytics.start

    def start(self: Analytics) -> Analytics:
        instances.append(self)
        return original(self)

    monkeypatch.setattr(Analytics, "start", start)
    yield instances
    for analytics in instances:
        analytics.stop()


def _clean_env(monkeypatch: pytest.MonkeyPatch, page: Path) -> None:
    for name in SCRUBBED_ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in PAGE_ENV.get(_name(page), dict)().items():
        monkeypatch.setenv(name, value)


@pytest.mark.parametrize("page", _pages_with("run"), ids=_name)
def test_every_python_block_runs(
    page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, started: list[Analytics]
) -> None:
    monkeypatch.chdir(tmp_path)
    _clean_env(monkeypatch, page)
    module = types.ModuleType(f"docs_example_{page.stem.replace('-', '_')}")
    module.__file__ = str(tmp_path / f"{page.stem}.py")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    store = open_store("memory://")
    analytics = Analytics(store, forwarders=[])
    analytics.start()
    module.__dict__.update(store=store, analytics=analytics)
    for block in blocks(page):
        if block.lang != "python" or block.title is not None:
            continue
        # Blank lines before the code, so a traceback names the line in the Markdown file.
        code = compile("\n" * (block.line - 1) + block.code, str(page), "exec")
        try:
            exec(code, module.__dict__)
        except Exception as error:
            raise AssertionError(f"the block at {block.where} raised {error!r}") from error


def _env_without_scrubbed(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (*SCRUBBED_ENV, "PYTHONPATH")}
    env["PYTHONPATH"] = str(tmp_path)
    return env


@pytest.mark.parametrize("page", _pages_with("files"), ids=_name)
def test_every_python_file_block_works_as_a_project(page: Path, tmp_path: Path) -> None:
    files = {b.title: b for b in blocks(page) if b.lang == "python" and b.title is not None}
    for title, block in files.items():
        assert "/" not in title and title.endswith(".py"), block.where
        compile(block.code, block.where, "exec")
        (tmp_path / title).write_text(block.code, encoding="utf-8")
    env = _env_without_scrubbed(tmp_path)
    exercised: set[str] = set()
    if "settings.py" in files:
        result = subprocess.run(
            [sys.executable, "-m", "django", "check", "--settings", "settings"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "no issues" in result.stdout, result.stdout
        exercised |= {"settings.py", "urls.py", "views.py"}
    tests = sorted(title for title in files if title.startswith("test_"))
    if tests:
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert re.search(r"\b\d+ passed\b", result.stdout), result.stdout
        exercised |= set(files)  # the tests import the page's other files
    assert set(files) <= exercised, f"{_name(page)}: {set(files) - exercised} are never run"


def test_no_code_block_escapes_the_collector() -> None:
    """A Python block the collector would not see (indented under a list item, or
    spelled ``py``/``python3``) would go stale unnoticed; other fences are shown only."""
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        indented = re.search(r"^[ \t]+```", text, re.MULTILINE)
        assert indented is None, f"{_name(page)}: an indented fence at {indented}"
        for block in blocks(page):
            assert block.lang == "python" or block.lang in SHOWN, (block.where, block.lang)
    runnable = sum(block.lang == "python" for page in PAGES for block in blocks(page))
    assert runnable >= 15, runnable


def test_readme_is_short() -> None:
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move detail to docs/"


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to ``-``."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_readme_links_resolve() -> None:
    """The README is read on the repository's page and in the built wheel's metadata:
    its links go to files of the repository or to its own headings."""
    text = README.read_text(encoding="utf-8")
    anchors = {_anchor(h) for h in re.findall(r"^#+ (.+)$", text, re.MULTILINE)}
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    assert links
    for link in links:
        assert not link.startswith(("http:", "https:", "../", "/")), link
        if link.startswith("#"):
            assert link[1:] in anchors, link
        else:
            assert (ROOT / link.split("#", 1)[0]).is_file(), link


def test_readme_test_command_is_what_ci_runs() -> None:
    commands = [b.code.strip() for b in blocks(README) if b.lang == "bash"]
    ci_last_line = (ROOT / ".ci" / "run").read_text(encoding="utf-8").strip().splitlines()[-1]
    assert ci_last_line in commands, (ci_last_line, commands)
    assert "gso-analytics demo" in commands[0] and "pip install ." in commands[0], commands[0]


def test_readme_says_how_to_run_the_real_tool_tests_as_ci_does() -> None:
    """The README's test command skips the tests of the programs ``.ci/run`` installs:
    its one-line way to run them installs the same packages and sets ``CI=true``."""
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    tools = re.search(r"^TOOLS=\((.*)\)$", ci, re.MULTILINE)
    assert tools is not None and "CI=true" in ci
    line = re.search(
        r"`sudo apt-get install -y ([^`&]*) && CI=true python -m pytest`",
        README.read_text(encoding="utf-8"),
    )
    assert line is not None, "README: no one-line way to run the real-tool tests"
    assert line.group(1).split() == tools.group(1).split()
    assert "exactly what CI runs" not in README.read_text(encoding="utf-8")


def _mkdocs_build(root: Path, site: Path) -> subprocess.CompletedProcess[str]:
    """``mkdocs build --strict`` with every proxy pointing at a closed port: a build that
    fetched anything (fonts, social cards) would fail here as it would offline."""
    closed = "http://127.0.0.1:9"
    env = {**os.environ, "HTTP_PROXY": closed, "HTTPS_PROXY": closed, "NO_PROXY": ""}
    env.update(http_proxy=closed, https_proxy=closed, NO_MKDOCS_2_WARNING="1")
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    site = tmp_path / "site"
    result = _mkdocs_build(ROOT, site)
    assert result.returncode == 0, result.stderr
    reference = (site / "api" / "analytics" / "index.html").read_text(encoding="utf-8")
    assert "on_login" in reference and "get_last_30_days" in reference  # from the docstrings
    changelog = (site / "changelog" / "index.html").read_text(encoding="utf-8")
    assert "Keep a Changelog" in changelog  # CHANGELOG.md, included
    for page in sorted(DOCS.glob("*.md")):
        built = site / ("index.html" if page.stem == "index" else f"{page.stem}/index.html")
        assert built.is_file(), page


def _copy_project(tmp_path: Path) -> Path:
    copy = tmp_path / "project"
    shutil.copytree(DOCS, copy / "docs")
    shutil.copy(ROOT / "mkdocs.yml", copy)
    shutil.copy(ROOT / "CHANGELOG.md", copy)
    shutil.copytree(ROOT / "gso_analytics", copy / "gso_analytics")
    return copy


#: What a strict build must refuse: (file, text it ends with or replaces, the new text).
BREAKAGES = {
    "a broken link": ("docs/concepts.md", None, "\nSee [nowhere](no-such-page.md).\n"),
    "a broken anchor": ("docs/concepts.md", None, "\nSee [KPIs](kpis.md#no-such-heading).\n"),
    "an unresolved reference": ("docs/api/models.md", None, "\n::: gso_analytics.NoSuchModel\n"),
    "a docstring naming what does not exist": (
        "gso_analytics/analytics.py",
        '"""Counts players, sessions and the economy; flushes to a :class:`Store`.',
        '"""Counts players; see :meth:`~gso_analytics.Analytics.no_such_method`.',
    ),
    "a page missing from the nav": ("docs/orphan.md", None, "# Orphan\n"),
}


def test_the_copied_site_builds(tmp_path: Path) -> None:
    """The copy the breakages below are made in builds as it is: they fail for them."""
    result = _mkdocs_build(_copy_project(tmp_path), tmp_path / "site")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("breakage", BREAKAGES, ids=list(BREAKAGES))
def test_a_broken_site_fails_the_build(breakage: str, tmp_path: Path) -> None:
    """The strict build above is worth something only if it fails on what it guards."""
    copy = _copy_project(tmp_path)
    path, old, new = BREAKAGES[breakage]
    target = copy / path
    text = target.read_text(encoding="utf-8") if target.exists() else ""
    if old is not None:
        assert old in text, (path, old)
    target.write_text(text.replace(old, new) if old is not None else text + new, encoding="utf-8")
    result = _mkdocs_build(copy, tmp_path / "site")
    assert result.returncode != 0, f"{breakage} was not caught:\n{result.stderr}"
