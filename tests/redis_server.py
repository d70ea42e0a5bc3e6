"""A real ``redis-server`` for tests: 127.0.0.1, a free port, no persistence.

Use the fixture in a test module with::

    from .redis_server import redis_server  # noqa: F401

``redis_server.stop()`` and ``redis_server.start()`` restart it on the same
port (with an empty data set: nothing is persisted), for outage tests. When
``redis-server`` is not installed the tests that use the fixture are skipped,
unless the environment says ``CI=true``: then they fail.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

#: Upper bound for starting or stopping the server (seconds).
TIMEOUT = 10.0


def find_redis_server() -> str | None:
    """The path of ``redis-server``: from ``PATH``, else the Debian locations."""
    found = shutil.which("redis-server")
    if found:
        return found
    for candidate in ("/usr/sbin/redis-server", "/usr/bin/redis-server", "/usr/local/bin/redis-server"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """One ``redis-server`` process that can be stopped and started again.

    Args:
        binary: path of ``redis-server``.
        directory: its working directory (its log goes to ``redis.log`` there).
    """

    def __init__(self, binary: str, directory: Path) -> None:
        self.binary = binary
        self.directory = directory
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server (on its previous port if it ran before) and wait
        until it answers PING.

        Raises:
            RuntimeError: it did not start within :data:`TIMEOUT` seconds.
        """
        assert self.proc is None, "already running"
        fixed = bool(self.port)
        for _ in range(1 if fixed else 5):  # a fresh port may be taken meanwhile: try another
            if not fixed:
                self.port = _free_port()
            if self._spawn():
                return
        raise RuntimeError("redis-server did not start:\n" + self.log())

    def _spawn(self) -> bool:
        with open(self.directory / "redis.log", "ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", str(self.directory), "--daemonize", "no"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.proc = None
                return False
            try:
                if self.command("PING") == b"+PONG\r\n":
                    return True
            except OSError:
                pass
            time.sleep(0.01)
        self.stop()
        return False

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and wait for it to exit."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def command(self, *args: str) -> bytes:
        """Send one command, return the raw RESP reply (one read; enough for
        short replies such as ``+OK``, ``+PONG``, an integer or a short bulk)."""
        payload = f"*{len(args)}\r\n".encode() + b"".join(
            f"${len(a.encode())}\r\n".encode() + a.encode() + b"\r\n" for a in args
        )
        with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as s:
            s.sendall(payload)
            return s.recv(65536)

    def flushall(self) -> None:
        """Drop every key (a stand-in for losing Redis' data)."""
        assert self.command("FLUSHALL") == b"+OK\r\n"

    def log(self) -> str:
        path = self.directory / "redis.log"
        return path.read_text(errors="replace") if path.exists() else ""


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A running :class:`RedisServer`, stopped after the test."""
    binary = find_redis_server()
    if binary is None:
        message = "redis-server is not installed (apt-get install redis-server)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(binary, directory)
    server.start()
    try:
        yield server
    finally:
        server.stop()
