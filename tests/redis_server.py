"""A real ``redis-server`` for tests: 127.0.0.1, a free port, no persistence.

Use the fixture in a test module with::

    from .redis_server import redis_server  # noqa: F401

``redis_server.stop()`` and ``redis_server.start()`` restart it on the same
port (with an empty data set: nothing is persisted), for outage tests. When
``redis-server`` is not installed the tests that use the fixture are skipped,
unless the environment says ``CI=true``: then they fail.

``redis_cluster`` (module scope) is a local Redis Cluster of three masters
without replicas (``redis-server --cluster-enabled yes`` three times, then
``redis-cli --cluster create``); ``redis_shards`` three independent servers;
``redis_sentinel`` one master watched by one ``redis-server --sentinel``.
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

from .required import missing

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


def _free_port(bus: bool = False) -> int:
    """A free port; with ``bus``, one whose cluster bus port (+10000) is free too."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if not bus:
            return port
        if port + 10000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair")


class RedisServer:
    """One ``redis-server`` process that can be stopped and started again.

    Args:
        binary: path of ``redis-server``.
        directory: its working directory (its log goes to ``redis.log`` there).
    """

    def __init__(self, binary: str, directory: Path, extra: tuple[str, ...] = (),
                 config_file: Path | None = None, bus: bool = False) -> None:
        self.binary = binary
        self.directory = directory
        self.extra = extra  # more options
        self.config_file = config_file  # a configuration file (sentinel: rewritten by the server)
        self.bus = bus  # cluster node: port + 10000 must be free too
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
                self.port = _free_port(bus=self.bus)
            if self._spawn():
                return
        raise RuntimeError("redis-server did not start:\n" + self.log())

    def _spawn(self) -> bool:
        with open(self.directory / "redis.log", "ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, *([str(self.config_file)] if self.config_file else []), "--port", str(self.port),
                 "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(self.directory),
                 "--daemonize", "no", *self.extra],
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


def _binary() -> str:
    """``redis-server``'s path; skips the test (fails it under ``CI=true``) without it."""
    binary = find_redis_server()
    if binary is None:
        message = "redis-server is not installed (apt-get install redis-server)"
        missing(message)
    return binary


def _redis_cli(binary: str) -> str:
    found = shutil.which("redis-cli") or str(Path(binary).parent / "redis-cli")
    if not os.access(found, os.X_OK):
        message = "redis-cli is not installed (apt-get install redis-tools)"
        missing(message)
    return found


class RedisCluster:
    """A local Redis Cluster: ``size`` masters, no replicas, slots split evenly.

    ``stop()``/``start()`` stop and restart every node (same ports, no data,
    the cluster configuration kept), ``nodes[i]`` is one node.
    """

    def __init__(self, binary: str, directory: Path, size: int = 3, replicas: int = 0) -> None:
        self.binary = binary
        self.replicas = replicas
        self.nodes = []
        for i in range(size * (1 + replicas)):
            node_dir = directory / f"node{i}"
            node_dir.mkdir(parents=True)
            self.nodes.append(RedisServer(binary, node_dir, (
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", "2000",
            ), bus=True))

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def create(self) -> None:
        for node in self.nodes:
            node.start()
        cli = _redis_cli(self.binary)
        out = subprocess.run(
            [cli, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes), "--cluster-replicas",
             str(self.replicas), "--cluster-yes"],
            check=False, capture_output=True, timeout=TIMEOUT * 3, stdin=subprocess.DEVNULL,
        )
        if out.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {out.stdout!r} {out.stderr!r}")
        self.wait_ok()
        deadline = time.monotonic() + TIMEOUT * 2
        for node in self.nodes:  # replicas: synced with their master
            while True:
                info = node.command("INFO", "replication")
                if b"role:master" in info or b"master_link_status:up" in info:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError("a cluster replica did not sync")
                time.sleep(0.05)

    def wait_ok(self) -> None:
        """Wait until every node says ``cluster_state:ok``."""
        deadline = time.monotonic() + TIMEOUT * 3
        while time.monotonic() < deadline:
            try:
                if all(b"cluster_state:ok" in n.command("CLUSTER", "INFO") for n in self.nodes if n.running):
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("the cluster did not reach cluster_state:ok")

    def start(self) -> None:
        for node in self.nodes:
            if not node.running:
                node.proc = None
                node.start()
        self.wait_ok()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def flushall(self) -> None:
        for node in self.nodes:
            node.flushall()

    @property
    def running(self) -> bool:
        return all(n.running for n in self.nodes)


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """A running 3-master :class:`RedisCluster` shared by a test module."""
    binary = _binary()
    _redis_cli(binary)
    cluster = RedisCluster(binary, tmp_path_factory.mktemp("redis-cluster"))
    try:
        cluster.create()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def redis_cluster_replicated(tmp_path: Path) -> Iterator[RedisCluster]:
    """A running cluster of 3 masters with a replica each, stopped after the test."""
    binary = _binary()
    _redis_cli(binary)
    cluster = RedisCluster(binary, tmp_path / "redis-cluster", replicas=1)
    try:
        cluster.create()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A running :class:`RedisServer`, stopped after the test."""
    binary = _binary()
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(binary, directory)
    server.start()
    try:
        yield server
    finally:
        server.stop()


class RedisGroup:
    """Several independent :class:`RedisServer` (shards), stopped and started together."""

    def __init__(self, servers: list[RedisServer]) -> None:
        self.nodes = servers

    @property
    def url(self) -> str:
        return ",".join(n.url for n in self.nodes)

    def start(self) -> None:
        for node in self.nodes:
            if not node.running:
                node.proc = None
                node.start()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def flushall(self) -> None:
        for node in self.nodes:
            node.flushall()


@pytest.fixture
def redis_shards(tmp_path: Path) -> Iterator[RedisGroup]:
    """Three independent running servers, stopped after the test."""
    binary = _binary()
    servers = []
    for i in range(3):
        directory = tmp_path / f"shard{i}"
        directory.mkdir()
        servers.append(RedisServer(binary, directory))
    group = RedisGroup(servers)
    try:
        for server in servers:
            server.start()
        yield group
    finally:
        group.stop()


class RedisSentinel:
    """A master, a replica and one sentinel watching them (quorum 1, a master
    is down after 1 s). ``stop()``/``start()`` stop and start the master only
    (without the replica the sentinel does not fail over: for outage tests);
    ``fail_over()`` kills the master and waits until the sentinel promoted
    the replica."""

    MASTER = "hubbub"

    def __init__(self, binary: str, directory: Path) -> None:
        self.binary = binary
        self.directory = directory
        dirs = [directory / name for name in ("master", "replica", "sentinel")]
        for d in dirs:
            d.mkdir(parents=True)
        self.master = RedisServer(binary, dirs[0])
        self.replica: RedisServer | None = None
        self._dirs = dirs
        self.sentinel: RedisServer | None = None

    @property
    def url(self) -> str:
        assert self.sentinel is not None
        return f"redis+sentinel://127.0.0.1:{self.sentinel.port}/{self.MASTER}/0"

    def create(self, replica: bool = False) -> None:
        self.master.start()
        if replica:
            self.replica = RedisServer(self.binary, self._dirs[1], ("--replicaof", "127.0.0.1", str(self.master.port)))
            self.replica.start()
            deadline = time.monotonic() + TIMEOUT
            while b"master_link_status:up" not in self.replica.command("INFO", "replication"):
                if time.monotonic() > deadline:
                    raise RuntimeError("the replica did not sync")
                time.sleep(0.02)
        conf = self._dirs[2] / "sentinel.conf"
        conf.write_text(
            f"sentinel monitor {self.MASTER} 127.0.0.1 {self.master.port} 1\n"
            f"sentinel down-after-milliseconds {self.MASTER} 1000\n"
            f"sentinel failover-timeout {self.MASTER} 3000\n"
        )
        self.sentinel = RedisServer(self.binary, self._dirs[2], ("--sentinel",), config_file=conf)
        self.sentinel.start()

    def master_port(self) -> int:
        assert self.sentinel is not None
        reply = self.sentinel.command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.MASTER)
        return int(reply.split(b"\r\n")[4])

    def fail_over(self) -> None:
        """Kill the master; wait until the sentinel names the replica."""
        assert self.replica is not None
        old = self.master.port
        self.master.stop()
        deadline = time.monotonic() + TIMEOUT * 2
        while time.monotonic() < deadline:
            try:
                if self.master_port() == self.replica.port and b"role:master" in self.replica.command("INFO", "replication"):
                    return
            except (OSError, ValueError, IndexError):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"the sentinel did not fail over from {old}")

    def start(self) -> None:
        self.master.proc = None
        self.master.start()

    def stop(self) -> None:
        self.master.stop()

    def flushall(self) -> None:
        self.master.flushall()

    def close(self) -> None:
        for server in (self.sentinel, self.replica, self.master):
            if server is not None:
                server.stop()


@pytest.fixture
def redis_sentinel(tmp_path: Path) -> Iterator[RedisSentinel]:
    """A master watched by a sentinel (no replica), stopped after the test."""
    setup = RedisSentinel(_binary(), tmp_path / "sentinel")
    try:
        setup.create()
        yield setup
    finally:
        setup.close()


@pytest.fixture
def redis_sentinel_replicated(tmp_path: Path) -> Iterator[RedisSentinel]:
    """A master, its replica and a sentinel, stopped after the test."""
    setup = RedisSentinel(_binary(), tmp_path / "sentinel")
    try:
        setup.create(replica=True)
        yield setup
    finally:
        setup.close()
