"""A real PostgreSQL server for tests: a throwaway cluster on 127.0.0.1, a free port.

Use the fixture in a test module with::

    from .postgres_server import postgres_server  # noqa: F401

The cluster is made with ``initdb`` in a temporary directory (trust authentication,
no fsync: nothing here needs to survive a crash of the machine) and run with
``postgres`` from Debian's ``postgresql`` package (``/usr/lib/postgresql/*/bin``).
``initdb`` refuses to run as root: as root the cluster belongs to, and runs as, the
``postgres`` user that the package creates. ``stop()`` and
``start()`` restart it on the same port with its data kept, for outage tests.
When PostgreSQL is not installed the tests that use the fixture are skipped,
unless the environment says ``CI=true``: then they fail.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .required import missing

#: Upper bound for initdb, starting or stopping the server (seconds).
TIMEOUT = 30.0


def find_postgres_bin() -> Path | None:
    """The directory holding ``initdb`` and ``postgres`` (newest version first), or ``None``."""
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]),
                            reverse=True):
        if os.access(Path(candidate) / "initdb", os.X_OK):
            return Path(candidate)
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    """One PostgreSQL cluster that can be stopped and started again.

    Args:
        bindir: the directory of ``initdb``, ``postgres`` and ``pg_ctl``.
        directory: where the cluster's data and log go (made here).
    """

    USER = "postgres"

    def __init__(self, bindir: Path, directory: Path) -> None:
        self.bindir = bindir
        self.directory = directory
        self.data = directory / "data"
        self.sockets = directory / "sockets"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        #: initdb and postgres refuse root: as root they run as the package's user (the
        #: process is postgres itself, so that its signals reach it)
        self._as_user: dict[str, Any] = {}
        if os.geteuid() == 0:
            self._as_user = {"user": self.USER, "group": self.USER, "extra_groups": []}

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://{self.USER}@127.0.0.1:{self.port}/{database}"

    @property
    def url(self) -> str:
        return self.dsn()

    def init(self) -> None:
        """``initdb`` the cluster (trust authentication for the ``postgres`` role)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self.sockets.mkdir(exist_ok=True)
        if self._as_user:
            user = pwd.getpwnam(self.USER)
            for path in (self.directory, self.sockets):
                os.chown(path, user.pw_uid, user.pw_gid)
        out = subprocess.run([str(self.bindir / "initdb"), "-D", str(self.data), "-U", self.USER,
                              "-A", "trust", "-E", "UTF8", "--no-sync"],
                             capture_output=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL, check=False,
                             cwd=self.directory, **self._as_user)
        if out.returncode != 0:
            raise RuntimeError(f"initdb failed: {out.stdout.decode()} {out.stderr.decode()}")

    def start(self) -> None:
        """Start the server (on its previous port if it ran before) and wait until it accepts connections.

        Raises:
            RuntimeError: it did not start within :data:`TIMEOUT` seconds.
        """
        assert self.proc is None, "already running"
        fixed = bool(self.port)
        for _ in range(1 if fixed else 5):
            if not fixed:
                self.port = _free_port()
            if self._spawn():
                return
        raise RuntimeError("postgres did not start:\n" + self.log())

    def _spawn(self) -> bool:
        log = open(self.directory / "postgres.log", "ab")  # noqa: SIM115 (the child holds it)
        with log:
            self.proc = subprocess.Popen(
                [str(self.bindir / "postgres"), "-D", str(self.data), "-p", str(self.port),
                 "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.sockets}",
                 "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                 "-c", "max_connections=100"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.directory,
                **self._as_user,
            )
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.proc = None
                return False
            if self._ready():
                return True
            time.sleep(0.05)
        self.stop()
        return False

    def _ready(self) -> bool:
        out = subprocess.run([str(self.bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-U",
                              self.USER, "-d", "postgres"], capture_output=True, check=False)
        return out.returncode == 0

    def stop(self) -> None:
        """Stop the server (fast shutdown: SIGINT, then SIGKILL) and wait for it to exit."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.send_signal(2)  # SIGINT: "fast" shutdown, clients are disconnected
        try:
            proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run ``sql`` with ``psql`` (stops at the first error); its output, unaligned and bare."""
        out = subprocess.run([str(self.bindir / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                              "-d", self.dsn(database), "-c", sql],
                             capture_output=True, timeout=TIMEOUT, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"psql failed: {out.stderr.decode()}")
        return out.stdout.decode().strip()

    def create_database(self, name: str) -> str:
        """Create database ``name``; its DSN."""
        self.psql(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def log(self) -> str:
        path = self.directory / "postgres.log"
        return path.read_text(errors="replace") if path.exists() else ""


def _bindir() -> Path:
    """PostgreSQL's binaries; skips the test (fails it under ``CI=true``) without them."""
    found = find_postgres_bin()
    if found is None:
        message = "PostgreSQL is not installed (apt-get install postgresql)"
        missing(message)
    return found


def cluster_directory() -> Path:
    """A fresh directory for a cluster under the system's temporary directory (pytest's
    are private to root: the ``postgres`` user could not reach them); removed by the caller."""
    directory = Path(tempfile.mkdtemp(prefix="hubbub-postgres-"))
    directory.chmod(0o755)
    return directory


@pytest.fixture(scope="module")
def postgres_server() -> Iterator[PostgresServer]:
    """A running :class:`PostgresServer` shared by a test module (each test makes its own
    database or table), stopped and removed at the end."""
    bindir = _bindir()
    directory = cluster_directory()
    server = PostgresServer(bindir, directory / "cluster")
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)
