"""Shared fixtures: a fake clock, the backend parameter of the store-contract suite, and
a factory of ``Analytics`` instances that are always stopped at teardown.

Adding a backend to every contract test is one more entry in :data:`BACKENDS`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import mongo_server
import pg_server
import pytest
from browser import Chromium
from mongo_harness import Harness

from gso_analytics import Analytics, Store, open_store

#: A Friday afternoon, far from midnight and month end unless a test moves there.
START = datetime(2025, 3, 14, 12, 0, 0, tzinfo=UTC)


class FakeClock:
    """An injectable ``clock=``: a zero-argument callable returning aware UTC datetimes.

    Time only moves when a test says so, so day keys and durations are exact.
    """

    def __init__(self, start: datetime = START) -> None:
        if start.tzinfo is None:
            raise ValueError("FakeClock needs an aware datetime")
        self.now = start.astimezone(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float = 0.0, **delta: float) -> datetime:
        """Move forward (or backward, with a negative value); returns the new time."""
        self.now += timedelta(seconds=seconds, **delta)
        return self.now

    def set(self, moment: datetime) -> datetime:
        self.now = moment.astimezone(UTC)
        return self.now


@dataclass(frozen=True)
class Backend:
    """One parameter of the store-contract suite.

    ``shared_by_url``: opening the URL twice gives two handles on the same data (two
    "processes"); otherwise the second handle is the same object.
    """

    name: str
    make_url: Callable[[Path], str]
    shared_by_url: bool


BACKENDS = [
    Backend("memory", lambda tmp: "memory://", shared_by_url=False),
    Backend("sqlite", lambda tmp: f"sqlite:///{tmp}/contract.db", shared_by_url=True),
    # MongoDB over the wire (nx-27017, which runs transactions though it says it is
    # standalone: its URLs carry ``transactions=true``) and mongomock in-process, both
    # through the harness (the ``mongo_harness`` fixture). Each test gets a fresh
    # database. The suite replays 2025 on a fake clock, which a server-side TTL on real
    # time would expire at once (nx-27017 and mongomock hide expired
    # documents from reads, MongoDB deletes them within a minute), so the TTL index is
    # off here, on the real server too; tests/test_mongo.py tests it on real time, on
    # every server (its ``ttl_kind`` parameter), with the index on.
    Backend(
        "mongo",
        lambda tmp: mongo_server.nx_server().url(query="ttlIndex=false"),
        shared_by_url=True,
    ),
    Backend(
        "mongomock",
        lambda tmp: mongo_server.mongomock_url(query="ttlIndex=false"),
        shared_by_url=True,
    ),
]
# A real PostgreSQL server: the cluster tests/pg_server.py starts (initdb, pg_ctl), or
# the one GSO_TEST_POSTGRES_URL names. Each test gets a schema of its own.
BACKENDS.append(Backend("postgres", lambda tmp: pg_server.fresh_url(), shared_by_url=True))
if mongo_server.real_mongodb_uri():  # a real mongod or cluster, opt-in
    BACKENDS.append(
        Backend(
            "mongodb-uri",
            lambda tmp: mongo_server.real_mongodb_url(),
            shared_by_url=True,
        )
    )


@pytest.fixture
def chromium(tmp_path_factory: pytest.TempPathFactory) -> Chromium:
    """A real headless Chromium, found by the :func:`find_real_tool` rule."""
    executable = find_real_tool("chromium", "chromium-browser", install="apt-get install chromium")
    return Chromium(executable, tmp_path_factory.mktemp("chromium"))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


RealTool = Callable[..., str]


def find_real_tool(*names: str, install: str) -> str:
    """The path of a real program a test runs (the first of ``names`` on PATH). Missing,
    the test skips on a laptop; under ``CI=true`` it fails instead, since ``.ci/run``
    installs every such tool: a CI run that skipped them would look green without having
    tested anything real."""
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    message = f"{' or '.join(names)} is not installed ({install})"
    if os.environ.get("CI", "").strip().lower() == "true":
        pytest.fail(f"{message}; CI=true: a test whose real tool is missing fails")
    pytest.skip(message)


@pytest.fixture
def real_tool() -> RealTool:
    """``real_tool("promtool", install="apt-get install prometheus")``: see
    :func:`find_real_tool`."""
    return find_real_tool


@pytest.fixture(scope="session", autouse=True)
def _mongo_servers() -> Iterator[None]:
    """Stops nx-27017 (by its pid) and the PostgreSQL cluster at the end of the session
    if a test started them."""
    yield
    mongo_server.shutdown()
    pg_server.shutdown()


@pytest.fixture(scope="session")
def nx_27017() -> mongo_server.NxServer:
    """The session's nx-27017 wire-protocol server; ``.url()`` names a fresh database."""
    return mongo_server.nx_server()


#: Share of the transactional writes in which the harness injects a write conflict on
#: the contract suite's Mongo backends, so every test also runs the retry paths.
CONFLICT_RATE = 0.03
#: Collections a batch, prune or erase may write outside a transaction: none but these.
OUTSIDE_TRANSACTIONS = frozenset({"heartbeats", "locks"})


@pytest.fixture(autouse=True)
def mongo_harness(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Harness | None]:
    """Every MongoDB client a test makes (nx-27017's, mongomock's) runs through a
    :class:`mongo_harness.Harness`: transactions one at a time, first-writer-wins write
    conflicts, every write recorded; worker processes started by the test inherit it
    (:meth:`Harness.env`). On the contract suite's Mongo parameters it also injects
    random conflicts and ends the test by checking that no write of the store was made
    outside a transaction (heartbeats and the index lease aside). A real server
    (``MONGODB_URI``) isolates and conflicts by itself and is not wrapped."""
    callspec = getattr(request.node, "callspec", None)
    backend = callspec.params.get("backend") if callspec is not None else None
    name = getattr(backend, "name", None)
    if request.node.get_closest_marker("own_harness"):
        yield None
        return
    contract = name in ("mongo", "mongomock")
    harness = Harness(
        tmp_path_factory.mktemp("harness"),
        conflict_rate=CONFLICT_RATE if contract else 0.0,
        seed=zlib.crc32(request.node.nodeid.encode()),
        ignore=OUTSIDE_TRANSACTIONS,
    )
    for variable, value in harness.env().items():
        monkeypatch.setenv(variable, value)
    with contextlib.ExitStack() as stack:
        stack.enter_context(harness.patched())
        if name == "mongomock":  # its URLs reach mongomock only while its patch is active
            stack.enter_context(mongo_server.mongomock_patched())
        yield harness
    if contract:
        outside = harness.writes_outside_transactions(harness.records)
        assert not outside, f"writes outside a transaction: {outside[:5]}"


@pytest.fixture(params=BACKENDS, ids=[b.name for b in BACKENDS])
def backend(request: pytest.FixtureRequest) -> Backend:
    return request.param


@pytest.fixture
def store_url(backend: Backend, tmp_path: Path) -> str:
    return backend.make_url(tmp_path)


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    with open_store(store_url) as opened:
        yield opened


@pytest.fixture
def other_store(backend: Backend, store_url: str, store: Store) -> Iterator[Store]:
    """A second handle on ``store``'s data, as another process would open it."""
    if not backend.shared_by_url:
        yield store
        return
    with open_store(store_url) as opened:
        assert opened is not store
        yield opened


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/analytics.db"


AnalyticsFactory = Callable[..., Analytics]


@pytest.fixture
def make_analytics(clock: FakeClock) -> Iterator[AnalyticsFactory]:
    """Build ``Analytics`` on the fake clock (not started); every one is stopped at teardown."""
    made: list[Analytics] = []

    def make(store: Store | str, **options: Any) -> Analytics:
        options.setdefault("clock", clock)
        options.setdefault("stop_timeout", 5.0)
        analytics = Analytics(store, **options)
        made.append(analytics)
        return analytics

    yield make
    for analytics in reversed(made):
        analytics.stop_timeout = min(analytics.stop_timeout, 1.0)  # a failing store must not stall
        with contextlib.suppress(Exception):
            analytics.stop()


def snapshot(store: Store, users: tuple[str, ...] = ()) -> dict[str, Any]:
    """Everything a reader can see in ``store`` (sessions of ``users``), ids left out."""
    days = [day.to_dict() for day in store.recent_days(10_000)]
    months = sorted({day["month"] for day in days})
    return {
        "days": days,
        "months": {month: store.get_month(month) for month in months},
        "totals": {field: value for field, value in store.get_totals().items() if value},
        "open_sessions": store.count_open_sessions(),
        "sessions": {
            user: [
                (
                    s.user_id,
                    s.username,
                    s.login_at,
                    s.logout_at,
                    s.duration_s,
                    s.day,
                    s.month,
                    s.timed_out,
                )
                for s in store.get_sessions(user)
            ]
            for user in users
        },
        "events": [
            (e.ts, e.user_id, e.event, e.data, e.day) for e in store.get_events(limit=10_000)
        ],
    }


@pytest.fixture
def take_snapshot() -> Callable[..., dict[str, Any]]:
    """:func:`snapshot` as a fixture, so test modules need not import conftest."""
    return snapshot
