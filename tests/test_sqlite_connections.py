"""SQLite connections are bounded: request threads share a pool, none keeps its own.

Why: servers that run each request on a new thread (Django ``runserver``, waitress,
Flask's threaded server) used to leave one open connection per finished thread, so a
process grew by a file descriptor per request until ``close()``.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

import pytest
from gso_analytics.backends.sqlite import SQLiteStore, _store_error

from gso_analytics import Analytics


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def analytics(tmp_path: Path) -> Analytics:
    store = SQLiteStore(tmp_path / "fds.db")
    made = Analytics(store)
    made.track("dungeon.complete", "u1")
    made.flush()
    made.get_metrics()  # the write and a read connection are open now
    yield made
    made.stop()
    store.close()


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
def test_300_short_lived_request_threads_open_no_connection_each(analytics: Analytics) -> None:
    before = open_fds()
    for _ in range(300):
        thread = threading.Thread(target=analytics.get_metrics)
        thread.start()
        thread.join()
    assert open_fds() - before <= 2, "finished threads keep connections open"


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
def test_bursts_of_concurrent_readers_do_not_grow_the_process(analytics: Analytics) -> None:
    """Readers at once open what they need; afterwards at most ``read_pool`` idle
    connections stay, and ten bursts leave no more open than one burst's readers.
    (SQLite itself may keep a closed connection's descriptor while other connections
    of the process hold locks on the file, and reuses it for the next one: the bound is
    the peak number of readers, never the number of threads that ever read.)"""
    store = analytics.store
    assert isinstance(store, SQLiteStore)

    readers = 20
    before = open_fds()

    def burst() -> int:
        barrier = threading.Barrier(readers)

        def read() -> None:
            barrier.wait()
            for _ in range(20):
                analytics.get_metrics()

        threads = [threading.Thread(target=read) for _ in range(readers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(store._idle) <= store.read_pool
        return open_fds()

    peaks = [burst() - before for _ in range(10)]  # 200 threads in all
    assert max(peaks) <= 3 * readers, peaks
    assert analytics.get_metrics().to_dict()["today"]["dungeonsRun"] == 1


def test_errors_about_the_data_are_permanent_about_the_file_are_not() -> None:
    assert _store_error("x.db", sqlite3.IntegrityError("UNIQUE constraint")).permanent
    assert _store_error("x.db", sqlite3.InterfaceError("Error binding parameter")).permanent
    assert not _store_error("x.db", sqlite3.OperationalError("database is locked")).permanent
