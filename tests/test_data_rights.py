"""Players' data rights beyond the store contract: the SQLite file's bytes after an
erase, pseudonymized stores against plain ones, and the CLI commands."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gso_analytics import open_store
from gso_analytics.cli import main
from gso_analytics.clock import utc_now
from gso_analytics.erasure import keyed_hash
from gso_analytics.errors import ConfigurationError

if TYPE_CHECKING:
    from conftest import AnalyticsFactory, FakeClock

SECRET_ID, SECRET_NAME = "zz-player-secret-9931", "QuiteUniqueUsername"


def _file_bytes(db: Path) -> bytes:
    """The database file and its -wal/-shm companions, as a reader of the disk sees them."""
    return b"".join(p.read_bytes() for p in db.parent.glob(db.name + "*"))


@pytest.fixture
def secure_delete_off_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """Connections open as with a build of SQLite without ``SQLITE_SECURE_DELETE`` (the
    upstream default; Debian's Python turns it on, which would hide a missing pragma)."""
    from gso_analytics.backends import sqlite as sqlite_backend

    connect = sqlite3.connect

    def plain_connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn = connect(*args, **kwargs)
        conn.execute("PRAGMA secure_delete = OFF")
        return conn

    monkeypatch.setattr(sqlite_backend.sqlite3, "connect", plain_connect)


def _fill_and_erase(db: Path, make_analytics: AnalyticsFactory, clock: FakeClock) -> bytes:
    """Three days of 300 players and the one to erase; the erase; the file's bytes."""
    store = open_store(f"sqlite:///{db}")
    a = make_analytics(store, forwarders=[])
    for _day in range(3):
        for n in range(300):
            a.on_login(f"player-{n:04d}", f"name-{n}")
            a.track("credits.earn", f"player-{n:04d}", {"amount": n})
        a.on_login(SECRET_ID, SECRET_NAME)
        a.track("stripe.payment", SECRET_ID, {"amountCents": 100, "by": SECRET_NAME})
        # Another player's events naming the player (finding 2 of issue 28).
        a.track("pvp.battle", "player-0007", {"opponent": SECRET_ID, "n": [{"to": SECRET_NAME}]})
        a.flush()
        # Rows rewritten before the erase (sessions closed, revenue added to), whose
        # old versions SQLite may have left in free space with secure_delete off.
        clock.advance(minutes=5)
        for n in range(0, 300, 2):
            a.on_logout(f"player-{n:04d}")
        a.on_logout(SECRET_ID)
        a.track("stripe.payment", SECRET_ID, {"amountCents": 100})
        a.flush()
        clock.advance(days=1)
    a.prune()
    assert SECRET_ID.encode() in _file_bytes(db)
    receipt = a.erase_user(SECRET_ID)
    assert receipt.wal_truncated is not False
    a.stop()
    store.close()
    return _file_bytes(db)


@pytest.mark.usefixtures("secure_delete_off_by_default")
def test_sqlite_erase_leaves_no_readable_copy_in_the_files(
    tmp_path: Path, make_analytics: AnalyticsFactory, clock: FakeClock
) -> None:
    """Enough other players that the player's rows share pages (and index pages, and
    pages that split) with theirs; after the erase and close, neither the id nor the
    username is anywhere in the file's bytes, free pages and WAL included, without a
    ``VACUUM``."""
    raw = _fill_and_erase(tmp_path / "rights.db", make_analytics, clock)
    assert SECRET_ID.encode() not in raw
    assert SECRET_NAME.encode() not in raw
    assert b"player-0042" in raw  # the scan reads what is there
    assert raw.count(b'"opponent":"erased-') >= 3  # the mentions kept, with the token


@pytest.mark.usefixtures("secure_delete_off_by_default")
def test_without_secure_delete_the_erased_text_stays_in_the_file(
    tmp_path: Path,
    make_analytics: AnalyticsFactory,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The control: the same play and erase on connections left without
    ``secure_delete`` leaves the id readable in free space (old versions of rewritten
    rows), so the test above can fail."""
    from gso_analytics.backends.sqlite import SQLiteStore

    original = SQLiteStore._open

    def without(self: SQLiteStore, *factory: type[sqlite3.Connection]) -> sqlite3.Connection:
        conn = original(self, *factory)
        conn.execute("PRAGMA secure_delete = OFF")
        return conn

    monkeypatch.setattr(SQLiteStore, "_open", without)
    raw = _fill_and_erase(tmp_path / "control.db", make_analytics, clock)
    assert SECRET_ID.encode() in raw


WORKER = """
import sys
from gso_analytics import Analytics
analytics = Analytics(sys.argv[1], forwarders=[], flush_interval=3600)
analytics.on_login(sys.argv[2], sys.argv[3])
analytics.track("stripe.payment", sys.argv[2], {"amountCents": 70})
print("buffered", flush=True)
sys.stdin.readline()
analytics.stop()
print("stored", flush=True)
"""


def test_a_call_buffered_in_another_process_during_the_erase_stays_erased(
    tmp_path: Path, make_analytics: AnalyticsFactory
) -> None:
    """A real second process holds a login and a payment of the player in its buffer
    while this one erases the player; it stores them after the erase: they land under
    the token, and the file never holds the id again."""
    db = tmp_path / "procs.db"
    url = f"sqlite:///{db}"
    a = make_analytics(url, forwarders=[], clock=utc_now)
    a.on_login(SECRET_ID, SECRET_NAME)
    a.flush()
    worker = subprocess.Popen(
        [sys.executable, "-c", WORKER, url, SECRET_ID, SECRET_NAME],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert worker.stdout is not None and worker.stdin is not None
        assert worker.stdout.readline().strip() == "buffered"
        assert a.erase_user(SECRET_ID).pseudonymized["sessions"] == 1
        worker.stdin.write("go\n")
        worker.stdin.flush()
        assert worker.stdout.readline().strip() == "stored"
        assert worker.wait(timeout=60) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
    users = {s.user_id for s in a.store.sessions_between("2000-01-01", "2999-12-31")}
    assert len(users) == 1 and users.pop().startswith("erased-")
    assert sum(d["stripeRevenue"] for d in a.store.recent_days()) == 70
    assert len(a.store.user_revenue_between("2000-01-01", "2999-12-31")) == 1
    a.stop()  # closes the store it opened
    raw = _file_bytes(db)
    assert SECRET_ID.encode() not in raw and SECRET_NAME.encode() not in raw


@st.composite
def _calls(draw: st.DrawFn) -> list[tuple[str, str, int]]:
    users = [f"u{n}" for n in range(draw(st.integers(1, 6)))]
    kinds = st.sampled_from(["login", "logout", "earn", "pay", "day"])
    return draw(
        st.lists(st.tuples(kinds, st.sampled_from(users), st.integers(0, 500)), max_size=40)
    )


def _replay(a: Any, calls: list[tuple[str, str, int]], clock: FakeClock) -> None:
    for kind, user, n in calls:
        clock.advance(minutes=1)
        if kind == "login":
            a.on_login(user, f"name-{user}")
        elif kind == "logout":
            a.on_logout(user)
        elif kind == "earn":
            a.track("credits.earn", user, {"amount": n})
        elif kind == "pay":
            a.track("stripe.payment", user, {"amountCents": n})
        else:
            a.flush()
            clock.advance(days=1)
    a.flush()


def _kpis(a: Any, clock: FakeClock) -> dict[str, Any]:
    kpis = a.kpis
    start, end = "2025-03-01", (clock() + timedelta(days=1)).date().isoformat()
    return {
        "days": [d.to_dict() for d in a.store.days_between(start, end)],
        "month": a.get_metrics().to_dict(),
        "retention": [r.to_dict() for r in kpis.retention(start, end)],
        "active": [r.to_dict() for r in kpis.active_users(start, end)],
        "revenue": [r.to_dict() for r in kpis.revenue(start, end)],
        "sessions": [r.to_dict() for r in kpis.sessions(start, end)],
    }


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(calls=_calls())
def test_a_pseudonymized_store_gives_the_kpis_of_a_plain_one(
    make_analytics: AnalyticsFactory, clock: FakeClock, calls: list[tuple[str, str, int]]
) -> None:
    """The same calls into a plain store and a pseudonymized one (each on its own
    clock from the same start): every KPI is the same, the pseudonymized store holds
    no id and no username, and its lookups take the real id."""
    start = clock()
    plain = make_analytics("memory://", forwarders=[])
    _replay(plain, calls, clock)
    expected = _kpis(plain, clock)
    clock.set(start)
    key = "k" * 32
    hidden = make_analytics("memory://", forwarders=[], pseudonymize_key=key)
    _replay(hidden, calls, clock)
    assert _kpis(hidden, clock) == expected
    dump = repr(hidden.store._state)  # type: ignore[attr-defined]
    for _, user, _ in calls:
        assert f"'{user}'" not in dump and f"name-{user}" not in dump
        export = hidden.export_user(user)
        assert export["storedAs"] == keyed_hash(key.encode(), user)
        assert export["daysActive"] == plain.export_user(user)["daysActive"]


def test_pseudonymized_erase_takes_the_real_id(
    make_analytics: AnalyticsFactory, clock: FakeClock
) -> None:
    a = make_analytics("memory://", forwarders=[], pseudonymize_key=b"0123456789abcdef")
    a.on_login("alice", "Alice")
    a.flush()
    a.track("pvp.battle", "bob", {"opponent": "alice"})  # data is stored as given
    assert [m["data"] for m in a.export_user("alice")["mentions"]] == [{"opponent": "alice"}]
    receipt = a.erase_user("alice")
    assert receipt.pseudonymized["sessions"] == 1 and receipt.mentions == 1
    assert a.export_user("alice")["sessions"] == []
    assert "'alice'" not in repr(a.store._state)  # type: ignore[attr-defined]


def test_a_short_pseudonymize_key_is_refused() -> None:
    from gso_analytics import Analytics
    from gso_analytics.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="pseudonymize_key"):
        Analytics("memory://", pseudonymize_key="short")


def test_cli_export_user_and_erase(
    tmp_path: Path,
    make_analytics: AnalyticsFactory,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = f"sqlite:///{tmp_path}/cli.db"
    monkeypatch.setenv("GSO_KEY", "a-key-of-sixteen-or-more")
    a = make_analytics(url, forwarders=[], pseudonymize_key="a-key-of-sixteen-or-more")
    a.on_login(SECRET_ID, SECRET_NAME)
    a.track("stripe.payment", SECRET_ID, {"amountCents": 250})
    a.stop()
    key_env = ["--pseudonymize-key-env", "GSO_KEY"]
    assert main(["export-user", SECRET_ID, "--store", url, *key_env]) == 0
    export = json.loads(capsys.readouterr().out)
    assert export["userId"] == SECRET_ID and export["revenueCents"] == {"2025-03-14": 250}
    assert main(["erase", SECRET_ID, "--store", url, *key_env]) == 0
    receipt = json.loads(capsys.readouterr().out)
    assert receipt["pseudonymized"]["sessions"] == 1 and receipt["deleted"]["events"] == 1
    assert main(["erase", SECRET_ID, "--store", url, *key_env]) == 0
    assert json.loads(capsys.readouterr().out)["alreadyErased"] is True


# -- issue 28, finding 3: erase and export refuse the wrong store -------------------------


def _tables(db: Path) -> list[str]:
    with contextlib.closing(sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)) as conn:
        return sorted(row[0] for row in conn.execute("SELECT name FROM sqlite_master"))


@pytest.mark.parametrize("command", ["erase", "export-user"])
def test_a_mistyped_prefix_or_a_foreign_file_is_refused_and_nothing_is_created(
    tmp_path: Path,
    make_analytics: AnalyticsFactory,
    capsys: pytest.CaptureFixture[str],
    command: str,
) -> None:
    db = tmp_path / "game.db"
    a = make_analytics(f"sqlite:///{db}", forwarders=[])
    a.on_login(SECRET_ID, SECRET_NAME)
    a.stop()
    before = _tables(db)
    assert main([command, SECRET_ID, "--store", f"sqlite:///{db}?prefix=typo_"]) != 0
    err = capsys.readouterr().err
    assert "no gso_analytics store with prefix 'typo_'" in err
    assert "'gso_analytics_'" in err  # the prefix that is there
    assert _tables(db) == before
    # The game's own database, without any of our tables.
    own = tmp_path / "own.db"
    with contextlib.closing(sqlite3.connect(own)) as conn:
        conn.execute("CREATE TABLE players (id TEXT)")
    assert main([command, SECRET_ID, "--store", f"sqlite:///{own}"]) != 0
    assert "holds no gso_analytics store" in capsys.readouterr().err
    assert _tables(own) == ["players"]


@pytest.mark.parametrize("command", ["erase", "export-user"])
def test_a_missing_file_is_refused_and_not_created(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    command: str,
) -> None:
    """A relative path from another directory: the message says where it looked."""
    monkeypatch.chdir(tmp_path)
    assert main([command, SECRET_ID, "--store", "sqlite:///data/gso.db"]) != 0
    assert str(tmp_path / "data" / "gso.db") in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_pseudonymized_store_refuses_an_erase_without_its_key(
    tmp_path: Path,
    make_analytics: AnalyticsFactory,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = f"sqlite:///{tmp_path}/hidden.db"
    a = make_analytics(url, forwarders=[], pseudonymize_key="the-right-key-0123")
    a.on_login(SECRET_ID)
    a.stop()
    assert main(["erase", SECRET_ID, "--store", url]) != 0
    assert "written with pseudonymize_key" in capsys.readouterr().err
    assert main(["export-user", SECRET_ID, "--store", url]) != 0
    monkeypatch.setenv("GSO_KEY", "a-wrong-key-456789")
    assert main(["erase", SECRET_ID, "--store", url, "--pseudonymize-key-env", "GSO_KEY"]) != 0
    assert "not the one this store was written with" in capsys.readouterr().err
    monkeypatch.setenv("GSO_KEY", "the-right-key-0123")
    assert main(["erase", SECRET_ID, "--store", url, "--pseudonymize-key-env", "GSO_KEY"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "erased"
    # A worker started with another key refuses to write into the store.
    b = make_analytics(url, forwarders=[], pseudonymize_key="a-wrong-key-456789")
    b.on_login("someone")
    with pytest.raises(ConfigurationError, match="another pseudonymize_key"):
        b.store.apply(b._aggregator.swap())


def test_an_id_the_store_never_saw_is_not_found(
    tmp_path: Path, make_analytics: AnalyticsFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path}/cli.db"
    a = make_analytics(url, forwarders=[])
    a.on_login(SECRET_ID, SECRET_NAME)
    a.stop()
    assert main(["erase", "zz-mistyped-id", "--store", url]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["status"] == "not found"
    assert "not found" in captured.err


# -- issue 28, finding 4: the forwarders hear of an erase made from the command line -------


def test_cli_erase_sends_user_erased_to_the_webhook_of_the_environment(
    tmp_path: Path, make_analytics: AnalyticsFactory
) -> None:
    """``gso-analytics erase`` in a process of its own configures its forwarders as a
    worker does (``ANALYTICS_WEBHOOK_URL``), and a receiver on 127.0.0.1 gets
    ``user.erased`` before the command exits."""
    import os

    from test_forwarding import Endpoint

    url = f"sqlite:///{tmp_path}/hooked.db"
    a = make_analytics(url, forwarders=[])
    a.on_login(SECRET_ID, SECRET_NAME)
    a.stop()
    receiver = Endpoint()
    try:
        env = {**os.environ, "ANALYTICS_WEBHOOK_URL": receiver.url + "/gso"}
        done = subprocess.run(
            [sys.executable, "-m", "gso_analytics", "erase", SECRET_ID, "--store", url],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        payloads = [r.payload() for r in receiver.accepted()]
    finally:
        receiver.close()
    assert [(p["event"], p["userId"]) for p in payloads] == [("user.erased", SECRET_ID)]
    assert json.loads(done.stdout)["status"] == "erased"


def test_an_erase_in_a_process_not_started_delivers_before_returning(
    make_analytics: AnalyticsFactory,
) -> None:
    """``manage.py gso_analytics erase`` builds the project's Analytics without starting
    it (a one-off command): the erase itself drains the forwarders."""
    from test_forwarding import Endpoint

    from gso_analytics import WebhookForwarder

    receiver = Endpoint()
    try:
        a = make_analytics("memory://", forwarders=[WebhookForwarder(receiver.url + "/gso")])
        a.erase_user("u-gone")
        payloads = [r.payload() for r in receiver.accepted()]
    finally:
        receiver.close()
    assert [(p["event"], p["userId"]) for p in payloads] == [("user.erased", "u-gone")]


# -- issue 28, finding 5: the erasure secret kept apart from the data it protects ---------


def _meta(db: Path) -> dict[str, str]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return dict(conn.execute("SELECT key, value FROM gso_analytics_meta"))


def test_an_erasure_secret_from_a_key_file_never_reaches_the_store(
    tmp_path: Path,
    make_analytics: AnalyticsFactory,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the secret in a key file, the database holds only a keyed check of it: a
    backup and a list of candidate ids no longer tell who an erased player was. A
    process without the secret (or with another) is refused, not left to write
    tombstones under a key of its own."""
    db = tmp_path / "apart.db"
    secret = "a-secret-kept-elsewhere-0042"
    key_file = tmp_path / "erasure.key"
    key_file.write_text(secret + "\n")
    monkeypatch.setenv("GSO_ANALYTICS_ERASURE_SECRET_FILE", str(key_file))
    a = make_analytics(f"sqlite:///{db}", forwarders=[])
    a.on_login(SECRET_ID, SECRET_NAME)
    a.flush()
    assert main(["erase", SECRET_ID, "--store", f"sqlite:///{db}"]) == 0
    capsys.readouterr()
    a.on_login(SECRET_ID)  # a late call still goes to the token
    a.stop()
    raw = _file_bytes(db)
    assert secret.encode() not in raw and SECRET_ID.encode() not in raw
    stored = _meta(db)["erasureSecret"]
    assert stored.startswith("outside:") and secret not in stored
    with contextlib.closing(sqlite3.connect(db)) as conn:
        hashes = [row[0] for row in conn.execute("SELECT hash FROM gso_analytics_tombstones")]
    assert hashes == [keyed_hash(secret, SECRET_ID)]  # only the secret finds the player

    monkeypatch.delenv("GSO_ANALYTICS_ERASURE_SECRET_FILE")
    assert main(["erase", "someone", "--store", f"sqlite:///{db}"]) != 0
    assert "kept outside it" in capsys.readouterr().err
    monkeypatch.setenv("GSO_ANALYTICS_ERASURE_SECRET", "another-secret-of-16+")
    assert main(["erase", "someone", "--store", f"sqlite:///{db}"]) != 0
    assert "not this store's" in capsys.readouterr().err


def test_the_secret_a_store_keeps_can_be_moved_out_of_it(
    tmp_path: Path,
    make_analytics: AnalyticsFactory,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A store that made its own secret: its operator copies it into the environment,
    and the first process given it keeps only the check in the store; the tombstones
    made before still match."""
    db = tmp_path / "moved.db"
    a = make_analytics(f"sqlite:///{db}", forwarders=[])
    a.on_login(SECRET_ID, SECRET_NAME)
    a.erase_user(SECRET_ID)
    a.stop()
    secret = _meta(db)["erasureSecret"]
    monkeypatch.setenv("GSO_ANALYTICS_ERASURE_SECRET", secret)
    assert main(["erase", SECRET_ID, "--store", f"sqlite:///{db}"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "already erased"
    assert _meta(db)["erasureSecret"].startswith("outside:")
    assert secret.encode() not in _file_bytes(db)


def test_a_short_erasure_secret_is_refused() -> None:
    from gso_analytics import Analytics

    with pytest.raises(ConfigurationError, match="erasure secret"):
        Analytics("memory://", forwarders=[], erasure_secret="short")


# -- issue 28, finding 7: dead letters hold no erased player ------------------------------


def _set_aside(a: Any, faulty: Any) -> None:
    """The buffered calls failing twice (quarantine_after=2): set aside as a dead letter."""
    faulty.fail_before(times=2, error=RuntimeError)
    with pytest.raises(RuntimeError):
        a.flush()
    a.flush()


def test_an_erase_rewrites_the_dead_letters_written_before_and_after_it(
    tmp_path: Path, make_analytics: AnalyticsFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: the dead-letter files of the directory (this worker's and another's) are
    rewritten by the CLI erase as the store was; after: a batch of the player set aside
    once the erase committed is written under the token. A replay stores no id."""
    from faults import FaultyStore

    from gso_analytics.dead_letters import read_dead_letters

    url = f"sqlite:///{tmp_path}/letters.db"
    dead = tmp_path / "dead"
    faulty = FaultyStore(open_store(url))
    a = make_analytics(faulty, forwarders=[], quarantine_after=2, dead_letter_dir=dead)
    a.on_login(SECRET_ID, SECRET_NAME)
    a.track("stripe.payment", SECRET_ID, {"amountCents": 100})
    a.track("pvp.battle", "bob", {"opponent": SECRET_ID, "names": [SECRET_NAME]})
    a.on_login("bob", "Bob")
    _set_aside(a, faulty)
    (mine,) = dead.iterdir()
    other = dead / "dead-letters-otherhost-1.jsonl"  # another worker's file, seen too
    other.write_bytes(mine.read_bytes())
    a.on_login(SECRET_ID, SECRET_NAME)  # buffered in the worker during the erase
    a.flush()

    erase = ["erase", SECRET_ID, "--store", url, "--dead-letter-dir", str(dead)]
    assert main(erase) == 0
    assert json.loads(capsys.readouterr().out)["deadLetters"] == 2
    a.on_logout(SECRET_ID)  # a call of the player after the erase, set aside
    _set_aside(a, faulty)
    for path in dead.iterdir():
        raw = path.read_bytes()
        assert SECRET_ID.encode() not in raw and SECRET_NAME.encode() not in raw, path
    letters = [letter for path in sorted(dead.iterdir()) for letter in read_dead_letters(path)]
    assert len(letters) == 3
    battle = [e for e in letters[0].batch.events if e[2] == "pvp.battle"]
    assert json.loads(battle[0][3])["opponent"].startswith("erased-")
    assert main(["replay-dead-letters", str(sorted(dead.iterdir())[0]), "--store", url]) == 0
    a.stop()
    assert SECRET_ID.encode() not in _file_bytes(tmp_path / "letters.db")
