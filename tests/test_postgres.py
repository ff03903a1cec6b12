"""The PostgreSQL store on a real server: what the contract suite cannot see.

The contract suite (tests/test_store_contract.py, ``postgres`` parameter) checks the
numbers; here: the event table's day partitions (COPY routes each event to its day, an
expired day is dropped whole, days are made ahead), the URL's options, a schema made by
``pg-init`` for a role that may not create tables, and the concurrency the design
promises, observed in the server's own ``pg_locks``: two workers' batches of different
players never wait for each other, two batches of one player meet at the player's fence,
the later one waits, loses (SQLSTATE 40001) and runs again, and both count once.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import pg_server
import pytest

from gso_analytics import Analytics, ConfigurationError, StoreError, open_store
from gso_analytics.clock import to_ms
from gso_analytics.conflicts import Backoff
from gso_analytics.model import FlushBatch
from gso_analytics.store import apply_batch

psycopg = pytest.importorskip("psycopg")

from gso_analytics.backends.postgres import PostgresStore, pg_init  # noqa: E402
from gso_analytics.backends.postgres import events as pg_events  # noqa: E402
from gso_analytics.backends.postgres import sessions as pg_sessions  # noqa: E402
from gso_analytics.backends.postgres.options import split_url  # noqa: E402
from gso_analytics.backends.postgres.schema import lock_key  # noqa: E402

DAY = "2025-03-14"
NOON = datetime(2025, 3, 14, 12, tzinfo=UTC)
#: Long enough for a batch that would wait for a held lock to be seen waiting.
WAIT_S = 1.0


@pytest.fixture
def url() -> str:
    return pg_server.fresh_url()


@pytest.fixture
def store(url: str) -> Iterator[PostgresStore]:
    opened = open_store(url)
    assert isinstance(opened, PostgresStore)
    with opened:
        yield opened


def partitions(store: PostgresStore) -> list[str]:
    rows = store._read(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = to_regclass(%s) ORDER BY 1",
        (f"{store.schema}.events",),
    )
    return [row[0] for row in rows]


def events_on(day: datetime, count: int, user: str = "u1") -> list[Any]:
    return [(to_ms(day) + i, user, "shop.open", "{}", day.date().isoformat()) for i in range(count)]


# -- events: COPY into day partitions, expiry by dropping days -------------------------------


def test_events_go_to_their_day_partition_and_days_are_made_ahead(store: PostgresStore) -> None:
    today = datetime.now(UTC)
    ahead = [pg_events.partition_name(d) for d in pg_events.ahead(today, 7)]
    assert set(ahead) <= set(partitions(store)), "today and 7 days ahead exist at open"
    rows = events_on(NOON, 3) + events_on(NOON + timedelta(days=1), 2)
    store.apply(FlushBatch(created_at=NOON, events=rows))
    counts = dict(
        store._read(
            "SELECT tableoid::regclass::text, count(*) FROM {s}.events GROUP BY 1",
        )
    )
    assert counts == {
        f"{store.schema}.events_20250314": 3,
        f"{store.schema}.events_20250315": 2,
    }


def test_prune_drops_expired_days_whole_and_deletes_only_the_boundary_day(
    store: PostgresStore,
) -> None:
    days = [NOON + timedelta(days=n) for n in range(4)]  # 14th .. 17th
    for day in days:
        store.apply(FlushBatch(created_at=day, events=events_on(day, 5)))
    before = set(partitions(store))
    assert {"events_20250314", "events_20250315", "events_20250316"} <= before
    # TTL 2 days at the 17th 12:00:00.002: everything up to the 15th 12:00:00.002 expires,
    # the 14th whole (dropped), the 15th in part (its first three events deleted).
    now = days[3] + timedelta(milliseconds=2)
    result = store.prune(now, timedelta(days=2), timedelta(hours=1))
    assert result.events_deleted == 5 + 3
    after = set(partitions(store))
    assert "events_20250314" not in after
    assert "events_20250315" in after, "a day with live events is kept"
    assert store._read("SELECT to_regclass(%s)", (f"{store.schema}.events_20250314",)) == [(None,)]
    left = store.get_events(limit=100)
    assert len(left) == 2 + 5 + 5
    assert min(e.ts_ms for e in left) == to_ms(days[1]) + 3


def test_a_batch_for_a_dropped_day_makes_the_partition_again(store: PostgresStore) -> None:
    """Another process dropped a day this one believes exists: the COPY meets no
    partition (23514), the store forgets what it knew, makes it again, runs again."""
    store.apply(FlushBatch(created_at=NOON, events=events_on(NOON, 1)))
    other = open_store(store_url(store))
    try:
        other.prune(NOON + timedelta(days=9), timedelta(days=2), timedelta(hours=1))
    finally:
        other.close()
    assert "events_20250314" not in partitions(store)
    store.apply(FlushBatch(created_at=NOON, events=events_on(NOON, 2, "u2")))
    assert [e.user_id for e in store.get_events()] == ["u2", "u2"]


def test_a_new_connection_forgets_the_records_remembered_as_stored(store: PostgresStore) -> None:
    """A connection replaced (its server gone: after a failover, the standby promoted may
    lack the last commits) makes the store forget what its batches stored, so the next
    batches write their (day, user) records again (see gso_analytics.stored_rows)."""
    day = {"2025-03-14": {"u1"}}
    store.apply(FlushBatch(created_at=NOON, day_users=day, month_users={"2025-03": {"u1"}}))
    assert store.stored_rows.days == day
    pool = store._pool_of_this_process()
    with contextlib.ExitStack() as held:  # every connection of the pool
        pids = [
            held.enter_context(pool.connection()).info.backend_pid
            for _ in range(pool.get_stats()["pool_size"])
        ]
    with psycopg.connect(pg_server.server_url(), autocommit=True) as killer:
        killer.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) pid", (pids,))
    store.get_day("2025-03-14")  # the pool finds its connections dead and opens another
    assert len(store.stored_rows) == 0
    store.apply(FlushBatch(created_at=NOON, day_users=day, month_users={"2025-03": {"u1"}}))
    assert store.stored_rows.days == day
    day_stats = store.get_day("2025-03-14")
    assert day_stats is not None and day_stats["dau"] == 1


def test_fence_updates_find_room_on_their_page(store: PostgresStore) -> None:
    """Half-empty fence pages: a player's fence, updated by each batch part of theirs,
    is updated in place (HOT, no new index entry) while its page has room."""
    (options,) = store._read(
        "SELECT reloptions FROM pg_class WHERE oid = %s::regclass", (f"{store.schema}.fences",)
    )[0]
    assert options == ["fillfactor=50"]


def test_an_open_sessions_updates_are_hot(url: str) -> None:
    """Flush after flush an open session's row changes only in its last mark and
    seconds, which no index holds, and its page has room: every such update is HOT (no
    new entry in any of the table's indexes). Counted by the server's statistics, which
    a connection reports when it closes."""
    now = [NOON]
    analytics = Analytics(open_store(url), clock=lambda: now[0])
    try:
        for _ in range(5):
            for player in range(20):
                analytics.track("dungeon.complete", f"u{player}")
            analytics.flush()
            now[0] += timedelta(seconds=1)
        schema = analytics.store.schema
    finally:
        analytics.stop()
        analytics.store.close()
    with psycopg.connect(pg_server.server_url(), autocommit=True) as conn:
        for _ in range(100):  # the closed connections' statistics arrive as they exit
            updated, hot = conn.execute(
                "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables"
                " WHERE schemaname = %s AND relname = 'sessions'",
                (schema,),
            ).fetchone()
            if updated >= 80:
                break
            time.sleep(0.1)
    assert (updated, hot) == (80, 80)


def store_url(store: PostgresStore) -> str:
    base = pg_server.server_url()
    return f"{base}{'&' if '?' in base else '?'}schema={store.schema}"


# -- options, schema ------------------------------------------------------------------------


def test_url_options_split_between_the_store_and_libpq() -> None:
    conninfo, replica, where, opts = split_url(
        "postgres://app:secret@db.example:6543/game?schema=analytics&sslmode=require"
        "&lock_timeout=2500&pool_size=8&replica=ro1:5433,ro2",
        {},
    )
    assert opts.schema == "analytics" and opts.pool_size == 8
    assert opts.lock_timeout == timedelta(milliseconds=2500)
    assert "sslmode=require" in conninfo and "target_session_attrs=read-write" in conninfo
    assert "lock_timeout%3D2500" in conninfo and "statement_timeout%3D30000" in conninfo
    assert "secret" not in where and where.startswith("db.example:6543/game")
    assert replica is not None and replica.startswith("postgresql://app:secret@ro1:5433,ro2/game")
    assert "target_session_attrs=any" in replica and "sslmode=require" in replica
    with pytest.raises(ConfigurationError, match="schema"):
        split_url("postgresql://h/db?schema=Bad-Name", {})
    with pytest.raises(ConfigurationError, match="pool_size"):
        split_url("postgresql://h/db?pool_size=many", {})


def test_every_connection_has_the_timeouts(store: PostgresStore) -> None:
    rows = store._read(
        "SELECT current_setting('statement_timeout'), current_setting('lock_timeout'),"
        " current_setting('TimeZone')"
    )
    assert rows == [("30s", "10s", "UTC")]


def test_a_role_without_create_opens_a_schema_made_by_pg_init(url: str) -> None:
    with pytest.raises(ConfigurationError, match="pg-init"):
        open_store(url + "&create_schema=false")
    assert pg_init(url) == 0
    assert pg_init(url) == 1, "a second run finds the schema up to date"
    schema = url.rsplit("schema=", 1)[1]
    role = f"app_{schema}"
    with psycopg.connect(pg_server.server_url(), autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {role} LOGIN")
        admin.execute(f"GRANT USAGE ON SCHEMA {schema} TO {role}")
        admin.execute(
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {role}"
        )
        admin.execute(f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA {schema} TO {role}")
    app_url = url.replace("postgres@", f"{role}@", 1) + "&create_schema=false"
    with open_store(app_url) as app:
        app.apply(
            FlushBatch(
                created_at=NOON,
                day_users={DAY: {"u1"}},
                months={DAY: "2025-03"},
                events=events_on(datetime.now(UTC), 1),
            )
        )
        assert app.get_day(DAY)["dau"] == 1
        with pytest.raises(StoreError, match="pg-init"):  # a day without a partition
            app.apply(FlushBatch(created_at=NOON, events=events_on(NOON, 1)))


# -- concurrency, observed in pg_locks -----------------------------------------------------------


def player_batch(user: str, at: datetime = NOON) -> FlushBatch:
    """A login and logout, activity and a counter: a batch that touches every per-player
    record and the day's figures."""
    login = (f"{user}-{to_ms(at)}", user, to_ms(at), "w", 1, user, DAY, "2025-03")
    logout = (f"{user}-{to_ms(at)}-out", user, to_ms(at) + 60_000, "w", 2)
    return FlushBatch(
        created_at=at,
        counters={DAY: {"creditsEarned": 5}},
        months={DAY: "2025-03"},
        day_users={DAY: {user}},
        month_users={"2025-03": {user}},
        logins=[login],
        logouts=[logout],
        events=events_on(at, 2, user),
    )


def waiting_locks(store: PostgresStore) -> int:
    return int(store._read("SELECT count(*) FROM pg_locks WHERE NOT granted")[0][0])


class Held:
    """A batch applied in a transaction kept open until :meth:`release`."""

    def __init__(self, store: PostgresStore, batch: FlushBatch) -> None:
        self.applied = threading.Event()
        self.go = threading.Event()
        key = store.erasure_key()

        def hold() -> None:
            with store.transaction() as tx:
                apply_batch(tx, batch, key)
                self.applied.set()
                self.go.wait(30)

        self.thread = threading.Thread(target=hold)
        self.thread.start()
        assert self.applied.wait(30)

    def release(self) -> None:
        self.go.set()
        self.thread.join(30)


def in_thread(work: Any) -> tuple[threading.Thread, list[Any]]:
    done: list[Any] = []
    thread = threading.Thread(target=lambda: done.append(work()))
    thread.start()
    return thread, done


def test_batches_of_different_players_never_wait(store: PostgresStore, url: str) -> None:
    with open_store(url) as other:
        other.apply(FlushBatch(created_at=NOON, events=events_on(NOON, 1, "warm")))  # key
        held = Held(store, player_batch("alice"))
        try:
            thread, done = in_thread(lambda: other.apply(player_batch("bob")))
            thread.join(WAIT_S * 5)
            assert done, "bob's batch waited for alice's open transaction"
            assert waiting_locks(store) == 0
        finally:
            held.release()
        day = other.get_day(DAY)
        assert day is not None and day["dau"] == 2 and day["creditsEarned"] == 10


def test_batches_of_one_player_meet_at_the_fence_and_retry(
    store: PostgresStore, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    retries: list[float] = []
    real_sleep = Backoff.sleep

    def counted(self: Backoff) -> bool:
        retries.append(time.monotonic())
        return real_sleep(self)

    monkeypatch.setattr(Backoff, "sleep", counted)
    with open_store(url) as other:
        other.apply(FlushBatch(created_at=NOON, events=events_on(NOON, 1, "warm")))
        held = Held(store, player_batch("carol"))
        try:
            later = player_batch("carol", NOON + timedelta(hours=1))
            thread, done = in_thread(lambda: other.apply(later))
            deadline = time.monotonic() + 10
            while waiting_locks(store) == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert waiting_locks(store) >= 1, "the second batch of carol did not wait"
            assert not done
            released = time.monotonic()
        finally:
            held.release()
        thread.join(30)
        assert done and not done[0].duplicate
        assert retries and retries[0] >= released, "it lost to the first and ran again"
        assert [s.duration_s for s in other.get_sessions("carol")] == [60, 60]
        day = other.get_day(DAY)
        assert day is not None and (day["dau"], day["creditsEarned"]) == (1, 10)
        assert day["totalSessionS"] == 120 and other.get_month("2025-03").mau == 1


def test_kpi_range_reads_go_to_the_replica_and_figures_to_the_primary(url: str) -> None:
    """``replica=``: the KPIs' range reads (which may lag) on the standbys, the figures
    on the primary. A replica that answers nothing shows which reads went where."""
    with open_store(url + "&replica=127.0.0.1:1&pool_timeout=1") as store:
        store.apply(player_batch("dave"))
        assert store.get_day(DAY)["dau"] == 1  # the primary
        assert store.days_between(DAY, DAY)[0]["dau"] == 1  # figures: the primary
        with pytest.raises(StoreError, match="unreachable"):
            store.day_users_between(DAY, DAY)
        with pytest.raises(StoreError, match="unreachable"):
            store.sessions_between(DAY, DAY)
    with open_store(url + f"&replica={urlsplit(url).netloc.split('@')[-1]}") as store:
        assert store.day_users_between(DAY, DAY) == {DAY: {"dave"}}


def test_a_login_and_its_logout_in_two_concurrent_batches_make_one_closed_session(
    store: PostgresStore, url: str
) -> None:
    """Write skew, which REPEATABLE READ alone lets through: one batch stores erin's
    logout, another her earlier login, and the two write no common row (a new logout
    mark, a new session). Each would see the other's mark missing: the login would stay
    open for ever. Both write erin's fence, so the later one waits, loses, and its walk
    then sees the logout and closes the session."""
    login = ("erin-s", "erin", to_ms(NOON), "a", 1, "erin", DAY, "2025-03")
    logout = ("erin-o", "erin", to_ms(NOON) + 90_000, "b", 1)
    with open_store(url) as other:
        other.apply(FlushBatch(created_at=NOON, events=events_on(NOON, 1, "warm")))
        held = Held(store, FlushBatch(created_at=NOON, logouts=[logout]))
        try:
            thread, done = in_thread(
                lambda: other.apply(FlushBatch(created_at=NOON, logins=[login]))
            )
            deadline = time.monotonic() + 10
            while waiting_locks(store) == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert waiting_locks(store) >= 1, "the login's batch did not wait at the fence"
        finally:
            held.release()
        thread.join(30)
        assert done
        sessions = other.get_sessions("erin")
        assert [(s.duration_s, s.logout_at is not None) for s in sessions] == [(90, True)]
        assert other.count_open_sessions() == 0


def events_batch(user: str) -> FlushBatch:
    """The player's day and month records and events, without a session or activity:
    a batch that reads no session, so only the tombstone lookup fences the player."""
    return FlushBatch(
        created_at=NOON,
        months={DAY: "2025-03"},
        day_users={DAY: {user}},
        month_users={"2025-03": {user}},
        events=events_on(NOON, 2, user),
    )


@pytest.mark.parametrize("batch", [player_batch, events_batch])
def test_an_erase_during_a_batch_of_the_player_leaves_nothing_under_the_id(
    store: PostgresStore, url: str, batch: Any
) -> None:
    """The erase writes the player's fence too: it waits for frank's open batch, loses,
    runs again and then sees (and renames) what the batch committed; nothing stays
    under the real id."""
    with open_store(url) as other:
        other.apply(FlushBatch(created_at=NOON, events=events_on(NOON, 1, "warm")))
        held = Held(store, batch("frank"))
        try:
            thread, done = in_thread(lambda: other.erase_user("frank", NOON))
            deadline = time.monotonic() + 10
            while waiting_locks(store) == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert waiting_locks(store) >= 1, "the erase did not wait for the batch"
        finally:
            held.release()
        thread.join(30)
        assert done and sum(done[0].pseudonymized.values()) > 0
        assert other.get_sessions("frank") == [] and other.get_events("frank") == []
        assert other.user_records("frank").days_active == []
        assert other.get_day(DAY)["dau"] == 1, "the figures stay"


# -- the roll-up: the deltas folded into the day, month and all-time rows ------------------


def folded(store: PostgresStore, table: str, key: str) -> dict[str, Any]:
    return dict(store._read(f"SELECT {key}, counters FROM {{s}}.{table}"))


def unfolded(store: PostgresStore) -> int:
    return int(store._read("SELECT count(*) FROM {s}.batches WHERE NOT folded")[0][0])


def test_the_roll_up_folds_each_delta_once_and_waits_for_the_holder(
    store: PostgresStore, url: str
) -> None:
    """While another process holds the roll-up, flushes leave their deltas unfolded and
    the reads add them; the next roll-up folds every one of them, once, into the day,
    month and all-time rows (read here as stored, not through the reads)."""
    with open_store(url) as other:
        with other._direct("holding the roll-up") as holder:
            holder.execute(
                "SELECT pg_advisory_lock(hashtext(%s))", (lock_key(store.schema, "rollup"),)
            )
            for user in ("ann", "ben"):
                other.apply(player_batch(user))
            assert unfolded(store) == 2, "the roll-up waited for its holder"
            assert folded(store, "daily", "day") == {}
            day = store.get_day(DAY)
            assert day is not None and (day["dau"], day["creditsEarned"]) == (2, 10)
        other.apply(player_batch("cid"))  # folds the three
        assert unfolded(store) == 0
        assert folded(store, "daily", "day")[DAY]["creditsEarned"] == 15
        other.apply(player_batch("dot"))  # onto the folded rows
        assert unfolded(store) == 0
        day = store.get_day(DAY)
        assert day is not None and (day["dau"], day["creditsEarned"]) == (4, 20)
        assert folded(store, "daily", "day") == {DAY: dict(day.counters)}
        assert folded(store, "monthly", "month")["2025-03"]["mau"] == 4
        assert folded(store, "totals", "id") == {"all": store.get_totals()}
        assert store.get_totals()["creditsEarned"] == 20


@pytest.mark.parametrize(
    ("table", "when"), [("first_seen", "INSERT"), ("sessions", "INSERT"), ("batches", "UPDATE")]
)
def test_a_queued_statement_that_loses_makes_the_whole_part_run_again(
    store: PostgresStore, table: str, when: str
) -> None:
    """A statement queued in the part's pipeline (a first day, the sessions, the part's
    delta: nothing reads their results) that loses with a serialization failure, here
    a trigger's on its first run, fails the part at the next statement read, before the
    ``COPY`` or before the commit: the part rolls back, runs again and is stored once,
    and the connection serves the next part."""
    store._write("CREATE SEQUENCE {s}.tries")  # not rolled back with the part
    store._write(
        "CREATE FUNCTION {s}.lose_once() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        " IF nextval('{s}.tries') = 1 THEN"
        " RAISE EXCEPTION 'lost' USING ERRCODE = 'serialization_failure'; END IF;"
        " RETURN NULL; END $$"
    )
    store._write(
        f"CREATE TRIGGER lose_once AFTER {when} ON {{s}}.{table}"
        " FOR EACH STATEMENT EXECUTE FUNCTION {s}.lose_once()"
    )
    store.apply(player_batch("ann"))
    assert store._read("SELECT last_value FROM {s}.tries")[0][0] >= 2, "the part ran again"
    store.apply(player_batch("ben", NOON + timedelta(minutes=5)))
    day = store.get_day(DAY)
    assert day is not None and (day["dau"], day["creditsEarned"]) == (2, 10)
    counts = store._read(
        "SELECT (SELECT count(*) FROM {s}.events), (SELECT count(*) FROM {s}.sessions),"
        " (SELECT count(*) FROM {s}.first_seen), (SELECT count(*) FROM {s}.batches)"
    )[0]
    assert counts == (4, 2, 2, 2)


# -- sessions: each of the walk's and the prune's reads is an index range ------------------


class Explaining:
    """A cursor that runs ``EXPLAIN`` of each statement instead of it and keeps the
    plans: the session module's own SQL, not a copy, is what is looked at."""

    def __init__(self, cur: Any) -> None:
        self.cur = cur
        self.plans: list[str] = []
        self.rowcount = 0

    def execute(self, sql: str, params: Any = ()) -> Explaining:
        rows = self.cur.execute("EXPLAIN " + sql, params).fetchall()
        self.plans.append("\n".join(row[0] for row in rows))
        return self

    def __iter__(self) -> Iterator[Any]:
        return iter(())

    def fetchall(self) -> list[Any]:
        return []


def test_the_session_reads_are_index_ranges(store: PostgresStore) -> None:
    """With sequential scans made dearest, each read of the walk and of the prune names
    the index meant for it: a batch reads its players' recent sessions, logout marks and
    activity runs, the prune its idle sessions and old runs, an erase the event stream
    in position order, without a scan of the table (a missing or mismatched index shows
    here as a Seq Scan or another index)."""
    store.apply(player_batch("gina"))
    s, users = store.schema, {"gina", "hal"}
    expected = [
        (lambda c: pg_sessions.sessions_since(c, s, users, 0), ["sessions_user"]),
        (lambda c: pg_sessions.logouts_since(c, s, users, 0), ["logouts_user"]),
        # A player's sessions (get_sessions, an erase): the walk's index, no other.
        (
            lambda c: pg_sessions.user_sessions(c, s, "user_id = %s ORDER BY login_at", ("gina",)),
            ["sessions_user"],
        ),
        (lambda c: pg_sessions.activity_runs(c, s, "gina", 0, 1), ["activity_user"]),
        (lambda c: pg_sessions.open_sessions_before(c, s, 1, 10), ["sessions_open"]),
        (lambda c: pg_sessions.delete_activity_before(c, s, 1, 10), ["activity_last"]),
        (lambda c: c.execute(pg_sessions.COUNT_ACTIVE.format(s=s), (1,)), ["sessions_open"]),
        # An erase's look for mentions in (ts, id) order: each day's copy of events_ts.
        (lambda c: pg_events.events_after(c, s, None, ['"gina"'], 10), ["_ts_id_idx"]),
    ]
    with store._connection("explaining") as conn, conn.transaction():
        conn.execute("SET LOCAL enable_seqscan = off")
        for read, indexes in expected:
            cur = Explaining(conn.cursor())
            read(cur)
            plan = "\n".join(cur.plans)
            assert "Seq Scan" not in plan, plan
            for index in indexes:
                assert index in plan, plan
