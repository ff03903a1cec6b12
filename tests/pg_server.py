"""PostgreSQL for the tests: a real server, a throwaway cluster started by the tests.

``GSO_TEST_POSTGRES_URL`` (or ``POSTGRES_URI``) names a server to use instead, e.g. a
CI service; otherwise the first test that needs one runs ``initdb`` and ``pg_ctl
start`` in a temporary directory, on a free 127.0.0.1 port (as the ``postgres`` user
when the tests run as root: PostgreSQL refuses to run as root), and the session stops
it at the end by ``pg_ctl stop``. Each test gets a schema of its own.

Without the binaries (``initdb``, ``pg_ctl``) the tests skip on a laptop and fail under
``CI=true``, as every real tool does (``find_real_tool`` in conftest), since ``.ci/run``
installs PostgreSQL.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

#: Seconds ``pg_ctl`` waits for a start or a stop; this only stops a hang.
PG_CTL_TIMEOUT_S = 60
INSTALL = "apt-get install postgresql"


def real_postgres_url() -> str | None:
    return os.environ.get("GSO_TEST_POSTGRES_URL") or os.environ.get("POSTGRES_URI") or None


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").strip().lower() == "true":
        pytest.fail(f"{reason} ({INSTALL}); CI=true: a test whose real tool is missing fails")
    pytest.skip(f"{reason} ({INSTALL})")


def _binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Cluster:
    """A cluster of its own in a temporary directory, run by ``pg_ctl``."""

    def __init__(self) -> None:
        initdb, pg_ctl = _binary("initdb"), _binary("pg_ctl")
        if initdb is None or pg_ctl is None:
            _unavailable("PostgreSQL's initdb and pg_ctl are not installed")
        assert initdb is not None and pg_ctl is not None
        self.pg_ctl = pg_ctl
        self.as_user: list[str] = []
        if os.geteuid() == 0:  # initdb and postgres refuse root
            if shutil.which("runuser") is None:
                _unavailable("running as root without runuser to start PostgreSQL as postgres")
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.dir = Path(tempfile.mkdtemp(prefix="gso-pg-"))
        if self.as_user:
            shutil.chown(self.dir, "postgres")
        self.data = self.dir / "data"
        self.port = _free_port()
        init = [initdb, "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8"]
        self._run([*init, "--no-sync", "--no-instructions"])
        self.start()

    def _run(self, command: list[str]) -> None:
        done = subprocess.run(
            self.as_user + command,
            capture_output=True,
            text=True,
            timeout=PG_CTL_TIMEOUT_S + 30,
            check=False,
        )
        if done.returncode:
            raise RuntimeError(f"{' '.join(command)} failed: {done.stdout}{done.stderr}")

    def start(self) -> None:
        # fsync off: a crash test kills the server, not the machine, so what PostgreSQL
        # wrote is in the OS's page cache; synchronous_commit stays on, so a commit is
        # acknowledged only after its WAL reached the kernel.
        settings = (
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
            " -c full_page_writes=off -c max_connections=400"
        )
        run = [self.pg_ctl, "-D", str(self.data), "-o", settings, "-l", str(self.dir / "log")]
        self._run([*run, "-w", "-t", str(PG_CTL_TIMEOUT_S), "start"])

    def stop(self, mode: str = "fast") -> None:
        """``pg_ctl stop -m mode``: ``immediate`` is a crash (recovery at next start)."""
        run = [self.pg_ctl, "-D", str(self.data), "-m", mode, "-w"]
        self._run([*run, "-t", str(PG_CTL_TIMEOUT_S), "stop"])

    def url(self, schema: str | None = None) -> str:
        query = f"?schema={schema}" if schema else ""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres{query}"

    def destroy(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


_cluster: Cluster | None = None


def fresh_schema() -> str:
    return f"t_{uuid.uuid4().hex[:16]}"


def server_url() -> str:
    """The session's server (a real one named by the environment, or the cluster the
    tests start), without a schema."""
    global _cluster
    real = real_postgres_url()
    if real:
        return real
    if _cluster is None:
        _cluster = Cluster()
    return _cluster.url()


def fresh_url() -> str:
    """A URL of the session's server naming a schema no other test uses."""
    base = server_url()
    return f"{base}{'&' if '?' in base else '?'}schema={fresh_schema()}"


def shutdown() -> None:
    """Stop the cluster if this session started one."""
    global _cluster
    if _cluster is not None:
        _cluster.destroy()
        _cluster = None
