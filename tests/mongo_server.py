"""MongoDB servers for the tests: nx-27017 (a real wire-protocol server), mongomock, and
a real MongoDB when ``MONGODB_URI`` is set.

No mongod can be installed from the registries this project uses, so the Mongo store
is tested against ``nx-27017`` (PyPI; a MongoDB wire-protocol server on SQLite): pymongo
talks to it over TCP exactly as in production. One server is started per test
session, on a free 127.0.0.1 port, with its own ``--pid-file``, ``--log-file`` and data
directory in a temporary directory, and stopped by its pid at the end; each test gets
a database of its own.

nx-27017 is in the ``dev`` extra, so CI always has it: a missing or broken server is a
skip on a developer's machine and a failure under CI (``CI`` set).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import mongo_harness
import pytest

#: Starting a Python server takes about a second; this only stops a hang.
START_TIMEOUT_S = 30.0
#: Host name the mongomock parameter's URLs use; ``.invalid`` never resolves for real.
MONGOMOCK_HOST = "mongomock.invalid"


def fresh_db_name() -> str:
    """A database name no other test uses."""
    return f"t_{uuid.uuid4().hex[:16]}"


def _unavailable(reason: str) -> None:
    """Skip on a developer's machine without the dev extra; fail in CI, which has it."""
    if os.environ.get("CI"):
        pytest.fail(f"the Mongo test servers must run in CI: {reason}")
    pytest.skip(f"Mongo test server unavailable ({reason}); pip install -e '.[dev]'")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class NxServer:
    """One running nx-27017 process."""

    port: int
    directory: Path
    process: subprocess.Popen[bytes]
    pid: int
    dropped: list[str] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def url(self, database: str | None = None, query: str = "") -> str:
        """``mongodb://127.0.0.1:PORT/<database>?<query>`` (a fresh database by default).

        With ``transactions=true`` unless ``query`` sets it: nx-27017 runs transactions
        but its ``hello`` says it is a standalone server, which the store refuses."""
        url = f"mongodb://{self.address}/{database or fresh_db_name()}"
        return with_query(url, _with_transactions(query))

    @property
    def log(self) -> str:
        parts = []
        for name in ("server.log", "server.out"):
            path = self.directory / name
            if path.exists():
                parts.append(path.read_text(errors="replace")[-4000:])
        return "\n".join(parts)

    @classmethod
    def start(cls, port: int | None = None, directory: Path | None = None) -> NxServer:
        """A new server; with ``port`` and ``directory``, the same one started again."""
        executable = Path(sys.executable).with_name("nx-27017")
        command = [str(executable)] if executable.exists() else [shutil.which("nx-27017") or ""]
        if not command[0]:
            _unavailable("the nx-27017 command is not installed")
        if directory is None:
            directory = Path(tempfile.mkdtemp(prefix="gso-nx-27017-"))
            (directory / "data").mkdir()
        port = port or _free_port()
        pid_file = directory / "server.pid"
        with open(directory / "server.out", "wb") as out:
            process = subprocess.Popen(
                [
                    *command,
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--data-dir",
                    str(directory / "data"),
                    "--pid-file",
                    str(pid_file),
                    "--log-file",
                    str(directory / "server.log"),
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=directory,
            )
        server = cls(port, directory, process, process.pid)
        try:
            server._wait_ready(pid_file)
        except BaseException:
            server.stop()
            raise
        return server

    def _wait_ready(self, pid_file: Path) -> None:
        """Until ``ping`` answers over TCP (and the pid file names our process)."""
        import pymongo

        deadline = time.monotonic() + START_TIMEOUT_S
        client = pymongo.MongoClient(
            f"mongodb://{self.address}/", serverSelectionTimeoutMS=250, connectTimeoutMS=250
        )
        try:
            while True:
                if self.process.poll() is not None:
                    _unavailable(f"nx-27017 exited with {self.process.returncode}: {self.log}")
                try:
                    client.admin.command("ping")
                    break
                except pymongo.errors.PyMongoError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(
                            f"nx-27017 did not answer ping within {START_TIMEOUT_S}s: {self.log}"
                        ) from None
        finally:
            client.close()
        if pid_file.exists():
            self.pid = int(pid_file.read_text().strip() or self.process.pid)

    def restart(self) -> NxServer:
        """The server stopped and started again on the same port and data (an outage)."""
        self.stop(keep_data=True)
        return NxServer.start(self.port, self.directory)

    def stop(self, keep_data: bool = False) -> None:
        """SIGTERM to the server's pid, SIGKILL if it lingers; remove its directory."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        if not keep_data:
            shutil.rmtree(self.directory, ignore_errors=True)


_server: NxServer | None = None


def nx_server() -> NxServer:
    """The session's nx-27017, started on first use (stopped by :func:`shutdown`)."""
    global _server
    if _server is None or _server.process.poll() is not None:
        try:
            import pymongo  # noqa: F401
        except ImportError:
            _unavailable("pymongo is not installed")
        _server = NxServer.start()
    return _server


# -- a real MongoDB, when MONGODB_URI is set ----------------------------------------------

_real_databases: list[str] = []


def real_mongodb_uri() -> str | None:
    return os.environ.get("MONGODB_URI") or None


def with_database(uri: str, database: str) -> str:
    """``uri`` with its database path replaced (options kept)."""
    parts = urlsplit(uri)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, ""))


def with_query(url: str, query: str) -> str:
    """``url`` with ``query`` (``name=value&...``) added to the options it has."""
    return url + ("&" if "?" in url else "?") + query if query else url


def real_mongodb_url(ttl_index: bool = False) -> str:
    """A fresh database on the ``MONGODB_URI`` server (dropped by :func:`shutdown`).

    ``ttlIndex=false`` unless ``ttl_index``: the contract tests replay days of 2025 on
    a fake clock, whose events a real TTL monitor (on real time) would delete under
    them within a minute; the TTL tests of tests/test_mongo.py keep the index.
    """
    uri = real_mongodb_uri()
    if uri is None:
        pytest.skip("MONGODB_URI is not set")
    name = fresh_db_name()
    _real_databases.append(name)
    url = with_database(uri, name)
    return url if ttl_index else with_query(url, "ttlIndex=false")


def shutdown() -> None:
    """Stop nx-27017 if this session started it; drop the real server's test databases."""
    global _server
    if _server is not None:
        _server.stop()
        _server = None
    uri = real_mongodb_uri()
    if uri and _real_databases:
        import pymongo

        with contextlib.closing(pymongo.MongoClient(uri, serverSelectionTimeoutMS=5000)) as c:
            for name in _real_databases:
                c.drop_database(name)
        _real_databases.clear()


# -- mongomock --------------------------------------------------------------------------------


def _patch_mongomock_gaps() -> None:
    """Fill three gaps of mongomock 4.3 the store relies on, in the stand-in only:

    - pymongo >= 4.11 passes ``sort=`` to the bulk builder's ``add_update`` and
      ``add_replace``, which mongomock does not accept (mongomock issue #912);
    - ``hello`` is not implemented: answer as a standalone server does;
    - ``collMod`` is not implemented: change the index's ``expireAfterSeconds``.
    """
    import mongomock.collection
    import mongomock.database

    builder = mongomock.collection.BulkOperationBuilder
    if getattr(builder, "_gso_patched", False):
        return
    add_update = builder.add_update

    def add_update_with_sort(self: Any, *args: Any, sort: Any = None, **kwargs: Any) -> Any:
        if sort is not None:
            raise NotImplementedError("mongomock: sort in a bulk update")
        return add_update(self, *args, **kwargs)

    builder.add_update = add_update_with_sort
    add_replace = builder.add_replace

    def add_replace_with_sort(self: Any, *args: Any, sort: Any = None, **kwargs: Any) -> Any:
        if sort is not None:
            raise NotImplementedError("mongomock: sort in a bulk replace")
        return add_replace(self, *args, **kwargs)

    builder.add_replace = add_replace_with_sort
    builder._gso_patched = True
    command = mongomock.database.Database.command

    def command_with_more(self: Any, cmd: Any, value: Any = 1, **kwargs: Any) -> Any:
        name = cmd if isinstance(cmd, str) else next(iter(cmd))
        if name == "hello":
            return {"ok": 1.0, "isWritablePrimary": True, "maxWireVersion": 21}
        if name == "collMod":
            target = value if isinstance(cmd, str) else cmd["collMod"]
            spec = kwargs.get("index") or (cmd.get("index") if isinstance(cmd, dict) else None)
            store = self[target]._store
            for info in store.indexes.values():
                if dict(info["key"]) == dict(spec["keyPattern"]):
                    info["expireAfterSeconds"] = spec["expireAfterSeconds"]
                    return {"ok": 1.0}
            raise mongomock.OperationFailure("cannot find index for collMod", code=27)
        return command(self, cmd)

    mongomock.database.Database.command = command_with_more


def _with_transactions(query: str) -> str:
    if "transactions=" in query.lower():
        return query
    return f"{query}&transactions=true" if query else "transactions=true"


def mongomock_url(query: str = "") -> str:
    """A fresh database on the mongomock "server" (see :func:`mongomock_patched`), with
    ``transactions=true`` as :meth:`NxServer.url` has it (the harness gives mongomock
    its sessions)."""
    url = f"mongodb://{MONGOMOCK_HOST}:27017/{fresh_db_name()}"
    return with_query(url, _with_transactions(query))


@contextlib.contextmanager
def mongomock_patched() -> Iterator[None]:
    """While active, ``pymongo.MongoClient`` for :data:`MONGOMOCK_HOST` is mongomock
    (clients of the same host share data, as two processes on one server would)."""
    try:
        import mongomock
    except ImportError:
        _unavailable("mongomock is not installed")
    _patch_mongomock_gaps()
    with mongomock.patch(servers=((MONGOMOCK_HOST, 27017),), on_new="pymongo"):
        harness = mongo_harness.current()
        if harness is None:
            yield
        else:  # mongomock has no sessions: the harness gives it some
            with harness.patched():
                yield
