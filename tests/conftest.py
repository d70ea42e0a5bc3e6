"""Shared fixtures: real servers on 127.0.0.1 with port 0, real clients."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from pathlib import Path
from typing import Any

import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from hubbub.config import Config, NamespaceOptions
from hubbub.core import ConnectRequest, ConnectResult, SessionHooks
from hubbub.server import Server

ROOT = Path(__file__).resolve().parent.parent
#: Upper bound for any single wait in a test (seconds).
TIMEOUT = 10.0


@pytest.hookimpl(wrapper=True)
def pytest_timeout_set_timer(item: pytest.Item, settings: Any) -> Generator[None, Any, Any]:
    """pytest-timeout bounds each test as a whole, fixtures included (pyproject.toml sets no
    ``timeout_func_only``). When the bound is hit, dump every asyncio task before the test fails,
    so that a hang in async code (a task that lost its cancellation, say) shows where each task
    waits: the plugin's own dump shows threads only."""
    result = yield
    fail = signal.getsignal(signal.SIGALRM)
    if callable(fail):  # the "signal" method (the default here); the "thread" method exits the process

        def dump_tasks_then_fail(signum: int, frame: Any) -> None:
            try:
                loop = asyncio.get_running_loop()  # the handler runs in the main thread, inside the loop
            except RuntimeError:
                loop = None
            if loop is not None:
                terminal = item.config.get_terminal_writer()
                for task in asyncio.all_tasks(loop):
                    terminal.sep("~", title=f"asyncio task {task.get_name()}")
                    stack = io.StringIO()
                    task.print_stack(file=stack)
                    terminal.write(stack.getvalue())
            fail(signum, frame)

        signal.signal(signal.SIGALRM, dump_tasks_then_fail)
    return result


#: Modules whose tests start other processes (Redis, Node, Chromium, ``hubbub serve``, pip),
#: run load or failure scenarios, or fuzz: the fast run (``-m "not slow"``) leaves them out.
SLOW_MODULES = frozenset((
    "test_api_fuzz", "test_admin_browser", "test_broker_contract", "test_browser", "test_cli", "test_cli_relay",
    "test_cluster", "test_examples", "test_fastgen", "test_faults", "test_fuzz", "test_howtos", "test_protobuf",
    "test_redis", "test_redis_scale", "test_redis_topologies", "test_socketio_browser", "test_socketio_js",
    "test_streams_browser",
    "test_streams_js",
))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test of :data:`SLOW_MODULES` ``slow`` (tests elsewhere mark themselves)."""
    for item in items:
        if item.module is not None and item.module.__name__.rpartition(".")[2] in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


def make_config(**kw: Any) -> Config:
    kw.setdefault("host", "127.0.0.1")
    kw.setdefault("port", 0)
    return Config(**kw)


@pytest.fixture
async def start_server() -> AsyncIterator[Callable[..., Awaitable[Server]]]:
    """Start in-process servers: ``server = await start_server(**config)``."""
    servers: list[Server] = []

    async def start(*, hooks: SessionHooks | None = None, **kw: Any) -> Server:
        server = Server(make_config(**kw), hooks=hooks)
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.close()


class StuckHooks(SessionHooks):
    """An ``on_connect`` hook that authenticates by itself and never decides (a hung upstream):
    the handshake stays pending for as long as the test likes."""

    handles_auth = True

    def __init__(self) -> None:
        self.calls = 0

    async def on_connect(self, request: ConnectRequest) -> ConnectResult:
        self.calls += 1
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


@pytest.fixture
async def stuck_server(start_server: Callable[..., Awaitable[Server]]) -> Callable[..., Awaitable[Server]]:
    """Start servers whose ``on_connect`` never decides: ``server = await stuck_server(**config)``."""

    async def start(**kw: Any) -> Server:
        return await start_server(hooks=StuckHooks(), **kw)

    return start


@pytest.fixture
async def server(start_server: Callable[..., Awaitable[Server]]) -> Server:
    return await start_server()


def ws_url(server: Server, path: str = "/connection/websocket") -> str:
    return f"ws://127.0.0.1:{server.port}{path}"


class ProtoClient:
    """A bare protocol client over `websockets`, for precise wire-level tests."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.next_id = 0
        self.pushes: list[dict[str, Any]] = []
        self.replies: dict[int, dict[str, Any]] = {}

    async def send(self, *commands: dict[str, Any]) -> None:
        await self.ws.send("\n".join(json.dumps(c) for c in commands))

    async def recv(self) -> dict[str, Any]:
        """Next message (reply or push), reading frames as needed."""
        while not self._buffer:
            frame = await asyncio.wait_for(self.ws.recv(), TIMEOUT)
            assert isinstance(frame, str), "protocol frames must be text"
            self._buffer.extend(json.loads(line) for line in frame.split("\n"))
        return self._buffer.pop(0)

    _buffer: list[dict[str, Any]]

    async def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send one command and return its reply (pushes met meanwhile are kept)."""
        self.next_id += 1
        cid = self.next_id
        await self.send({"id": cid, method: params or {}})
        while True:
            msg = await self.recv()
            if msg.get("id") == cid:
                return msg
            if "push" in msg:
                self.pushes.append(msg["push"])

    async def next_push(self) -> dict[str, Any]:
        if self.pushes:
            return self.pushes.pop(0)
        while True:
            msg = await self.recv()
            if "push" in msg:
                return msg["push"]

    async def closed(self) -> tuple[int, str]:
        """Wait for the server to close; return (code, reason)."""
        try:
            while True:
                await asyncio.wait_for(self.ws.recv(), TIMEOUT)
        except websockets.ConnectionClosed:
            pass
        assert self.ws.protocol.close_rcvd is not None, "closed without a close frame"
        return self.ws.protocol.close_rcvd.code, self.ws.protocol.close_rcvd.reason


async def proto_client(server: Server, *, connect: bool = True, **kw: Any) -> ProtoClient:
    ws = await websockets.connect(ws_url(server), ping_interval=None, **kw)
    client = ProtoClient(ws)
    client._buffer = []
    if connect:
        reply = await client.call("connect", {})
        assert "connect" in reply, reply
        client.client_id = reply["connect"]["client"]  # type: ignore[attr-defined]
    return client


@pytest.fixture
async def clients() -> AsyncIterator[list[Any]]:
    """A list the test appends clients to; they are closed at the end."""
    opened: list[Any] = []
    yield opened
    for c in opened:
        ws = getattr(c, "ws", c)
        try:
            await asyncio.wait_for(ws.close(), 2)
        except Exception:
            pass


class ServeProcess:
    """`hubbub serve` (or ``command``, e.g. ``run``) in a subprocess, with its real
    port read from its log."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, command: str = "serve") -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hubbub", command, "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **(env or {})},
            cwd=ROOT,
        )
        self.lines: list[str] = []
        self.port = 0
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            m = re.search(r"listening on http://[^ ]+:(\d+)", line)
            if m:
                self.port = int(m.group(1))
                break
        if not self.port:
            raise RuntimeError("server did not start:\n" + "".join(self.lines))
        # keep draining the pipe so a chatty server never blocks on its log
        self._drain = threading.Thread(target=self._read_rest, daemon=True)
        self._drain.start()

    def _read_rest(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def stop(self, timeout: float = TIMEOUT) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()

    def output(self) -> str:
        if self.proc.poll() is not None:
            self._drain.join(TIMEOUT)
        return "".join(self.lines)

    def wait_for_output(self, text: str, timeout: float = TIMEOUT) -> str:
        """The output once it holds ``text`` (the log is read by a thread; lines
        after 'listening on' may still be on their way). Raises AssertionError
        after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while text not in "".join(self.lines):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError(f"{text!r} not in the output:\n" + self.output())
            time.sleep(0.01)  # a bounded wait for another thread's pipe reads, not a timing guess
        return "".join(self.lines)


@pytest.fixture
def serve_process() -> Any:
    procs: list[ServeProcess] = []

    def start(*args: str, **kw: Any) -> ServeProcess:
        p = ServeProcess(*args, **kw)
        procs.append(p)
        return p

    yield start
    for p in procs:
        if p.proc.poll() is None:
            p.proc.kill()
            p.proc.wait()


def history_ns(**kw: Any) -> NamespaceOptions:
    kw.setdefault("history_size", 10)
    kw.setdefault("history_ttl", 300.0)
    return NamespaceOptions(**kw)


async def until(condition: Callable[[], Any], what: str = "condition", timeout: float = TIMEOUT) -> None:
    """Poll ``condition()`` (sync, or returning an awaitable) every 5 ms until
    it is true; fail the test after ``timeout`` seconds."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                value = condition()
                if asyncio.iscoroutine(value):
                    value = await value
                if value:
                    return
                await asyncio.sleep(0.005)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None
