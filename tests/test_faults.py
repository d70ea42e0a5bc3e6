"""Faults with real processes: slow readers, vanished clients, handshake floods,
slowloris, compression bombs, SIGTERM and Redis outages under load.

The server runs in its own process (``python -m tests.faultkit serve``, the
same :class:`~hubbub.server.Server` as ``hubbub serve`` plus a ``/_probe``
route, or ``hubbub serve`` itself), the load in another (``python -m
tests.faultkit fanout|flood``), so neither shares an event loop with the test.
Every wait has a timeout; every load loop is bounded in count and in time.
Speed is asserted only with generous bounds (2 shared cores); the figures are
printed (``pytest -s``) and recorded in ``docs/reliability.md``.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets

from .conftest import ROOT, TIMEOUT, ProtoClient, ServeProcess
from .faultkit import client_frame, close_code, handshake, parse_frames, percentile
from .redis_server import RedisServer, redis_server  # noqa: F401

pytestmark = [pytest.mark.timeout(180),
              pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc (Linux)")]


def needs_fds(n: int) -> Any:
    """Skip a test that opens ``n`` sockets in one process when the fd limit is lower."""
    import resource

    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return pytest.mark.skipif(soft < n + 100, reason=f"needs {n + 100} file descriptors (ulimit -n is {soft})")


# -- the server process with a probe -----------------------------------------------------------


class KitServer:
    """``python -m tests.faultkit serve CONFIG`` with its port read from its output."""

    def __init__(self, **config: Any) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.faultkit", "serve", json.dumps(config)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
        )
        self.lines: list[str] = []
        self.port = 0
        found = threading.Event()

        def read() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                self.lines.append(line)
                m = re.search(r"listening on http://[^ ]+:(\d+)", line)
                if m and not self.port:
                    self.port = int(m.group(1))
                    found.set()
            found.set()

        threading.Thread(target=read, daemon=True).start()
        if not found.wait(TIMEOUT) or not self.port:
            self.kill()
            raise RuntimeError("server did not start:\n" + "".join(self.lines))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def url(self, path: str = "/connection/websocket") -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def probe_sync(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/_probe", timeout=TIMEOUT) as response:
            return json.loads(response.read())

    async def probe(self) -> dict[str, Any]:
        return await asyncio.to_thread(self.probe_sync)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def output(self) -> str:
        return "".join(self.lines)


@pytest.fixture
def kit_server() -> Iterator[Any]:
    servers: list[KitServer] = []

    def start(**config: Any) -> KitServer:
        server = KitServer(**config)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.kill()


async def until(condition: Any, what: str, timeout: float = TIMEOUT, interval: float = 0.02) -> float:
    """Poll ``condition()`` (sync or async) until true; return when it became
    true (monotonic); fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return time.monotonic()
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(interval)


class Kit:
    """A ``python -m tests.faultkit fanout|flood`` process: JSON lines on stdout."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.events: list[dict[str, Any]] = []

    @classmethod
    async def start(cls, command: str, params: dict[str, Any]) -> Kit:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.faultkit", command, json.dumps(params),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd=ROOT)
        return cls(proc)

    async def event(self, name: str, timeout: float) -> dict[str, Any]:
        """The next line with ``"event": name`` (or the result line: ``name="result"``)."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            line = await asyncio.wait_for(self.proc.stdout.readline(), max(0.1, deadline - time.monotonic()))
            if not line:
                raise AssertionError(f"load generator exited (code {await self.proc.wait()}) before {name!r}")
            obj = json.loads(line)
            self.events.append(obj)
            if obj.get("event") == name or (name == "result" and obj.get("result")):
                return obj

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"go\n")

    async def close(self) -> None:
        if self.proc.returncode is None:
            try:
                await asyncio.wait_for(self.proc.wait(), TIMEOUT)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


def report(name: str, **figures: Any) -> None:
    """Print the figures of a test (``pytest -s``), for docs/reliability.md."""
    print(f"\n[faults] {name}: " + json.dumps(figures, default=str))


# -- 1. slow readers among 1,000 subscribers -------------------------------------------------------

#: 990 subscribers get a steady stream; 10 "slow" subscribers get it too, plus a bulk
#: stream that makes them reach the output limit within seconds (the kernel's socket
#: buffers absorb about 3 MB per connection first, on loopback).
FANOUT = {
    "normal": 990, "slow": 10, "pubs": 80, "rate": 10, "size": 1000, "latency_every": 10,
    "bulk": {"rate": 25, "size": 40000, "count": 200}, "timeout": 90, "slow_wait": 25, "wait_for_go": True,
}
FANOUT_SERVER = {"ping_interval": 0, "max_message_size": 131072, "close_timeout": 25}


async def run_fanout(server: KitServer, **params: Any) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(result, probe when the subscribers were ready, probe at the end)."""
    kit = await Kit.start("fanout", {**FANOUT, "port": server.port, **params})
    try:
        await kit.event("ready", 60)
        before = await server.probe()
        kit.go()
        result = await kit.event("result", 120)
        after = await server.probe()
    finally:
        await kit.close()
    return result, before, after


@needs_fds(1100)
async def test_slow_readers_among_1000_subscribers(kit_server: Any) -> None:
    # baseline: the 10 read like everyone else
    base_server = kit_server(**FANOUT_SERVER)
    base, base_before, base_after = await run_fanout(base_server, slow_stop_reading=False)
    base_server.proc.send_signal(signal.SIGTERM)
    # the same load, but the 10 stop reading once subscribed
    server = kit_server(**FANOUT_SERVER)
    slow, before, after = await run_fanout(server, slow_stop_reading=True)
    limit = after["max_pending_output"]
    growth = after["rss"] - before["rss"]
    report("slow readers", baseline_p50_ms=base["p50_ms"], baseline_p99_ms=base["p99_ms"],
           baseline_max_ms=base["max_ms"], slow_p50_ms=slow["p50_ms"], slow_p99_ms=slow["p99_ms"],
           slow_max_ms=slow["max_ms"], latency_samples=slow["latency_samples"],
           max_pending=after["max_pending"], limit=limit, rss_before=before["rss"], rss_after=after["rss"],
           rss_growth=growth, baseline_rss_growth=base_after["rss"] - base_before["rss"],
           slow_codes=slow["slow_codes"], disconnects=after["disconnects"], bulk_acked=slow["bulk_acked"])

    for run in (base, slow):
        assert run["acked"] == run["published"] == FANOUT["pubs"]
        assert run["complete"], run["missing"]  # every normal subscriber got every publication...
        assert run["misordered"] == 0  # ... in order
        assert run["normal_closed"] == 0
    # the slow ones were closed with 3008 "slow", and the server says so
    assert slow["slow_codes"] == [3008] * FANOUT["slow"]
    assert after["slow"] == FANOUT["slow"] and after["disconnects"].get("3008") == FANOUT["slow"]
    # the server never held more than the limit (plus the frame that crossed it) for a connection
    assert after["max_pending"] <= limit + FANOUT["bulk"]["size"] + 1024, after["max_pending"]
    # ... so its memory stayed bounded: 10 x 1 MiB at most, plus allocator slack
    assert growth < 48 * 2**20, growth
    # the others' latency did not suffer (generous: 2 shared cores)
    assert slow["p99_ms"] <= 3 * base["p99_ms"] + 100, (slow["p99_ms"], base["p99_ms"])


@needs_fds(5000)
async def test_keepalive_pings_do_not_stall_delivery(kit_server: Any) -> None:
    server = kit_server(ping_interval=2.0, pong_timeout=1.5)
    kit = await Kit.start("fanout", {"port": server.port, "normal": 5000, "channels": 50, "seconds": 6, "rate": 20,
                                     "size": 200, "latency_every": 5, "connect_concurrency": 500, "timeout": 60,
                                     "wait_for_go": True})
    try:
        await kit.event("ready", 60)
        kit.go()
        result = await kit.event("result", 60)
    finally:
        await kit.close()
    report("keepalive pings, 5000 connections, ping every 2 s", p50_ms=result["p50_ms"], p99_ms=result["p99_ms"],
           max_ms=result["max_ms"], complete=result["complete"], missing=result["missing"],
           closed=result["normal_closed"], codes=result["normal_close_codes"], misordered=result["misordered"])
    assert result["complete"] and result["normal_closed"] == 0  # pings are answered: nobody is dropped
    # a ping round used to stall the loop 0.4-1 s; sliced, pre-encoded pings keep it to tens of ms
    assert result["max_ms"] < 300, result["max_ms"]


async def test_pongs_within_pong_timeout_keep_the_connection(start_server: Any) -> None:
    from hubbub.errors import ConfigError

    try:
        server = await start_server(ping_interval=0.4, pong_timeout=0.6)
    except ConfigError:
        return  # refusing this configuration is a fix too
    ws = await websockets.connect(f"ws://127.0.0.1:{server.port}/connection/websocket", ping_interval=None)
    try:
        await ws.send('{"id":1,"connect":{}}')
        assert json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))["connect"]["pong"] is True
        pings = 0
        deadline = time.monotonic() + 2.5
        with pytest.raises(TimeoutError):  # the connection must outlive the 2.5 s
            while True:
                message = await asyncio.wait_for(ws.recv(), max(0.01, deadline - time.monotonic()))
                if message == "{}":
                    pings += 1
                    await asyncio.sleep(0.3)  # answer each ping after 0.3 s: within pong_timeout (0.6 s)
                    await ws.send("{}")
        assert pings >= 3
    except websockets.ConnectionClosed as exc:
        raise AssertionError(f"closed with {exc.rcvd.code if exc.rcvd else None} after {pings} pings") from None
    finally:
        await ws.close()


# -- 2. a client that vanishes without a close ----------------------------------------------------


class RawClient(asyncio.Protocol):
    """A WebSocket client over a raw socket that can stop answering and reading."""

    def __init__(self, path: str, first: bytes | None) -> None:
        self.path = path
        self.first = first
        self.buf = bytearray()
        self.upgraded = asyncio.get_running_loop().create_future()
        self.texts: list[bytes] = []
        self.close: int | None = None
        self.lost = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.silent = False
        self.response = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(handshake(self.path))

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.upgraded.done():
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            self.response = bytes(self.buf[: end + 4])
            del self.buf[: end + 4]
            self.upgraded.set_result(self.response.startswith(b"HTTP/1.1 101"))
            if self.first is not None and self.transport is not None:
                self.transport.write(client_frame(self.first))
        frames, used = parse_frames(self.buf)
        del self.buf[:used]
        for opcode, payload in frames:
            if opcode == 1:
                self.texts.append(payload)
            elif opcode == 8:
                self.close = close_code(payload)
            elif opcode == 9 and not self.silent and self.transport is not None:
                self.transport.write(client_frame(payload, 0xA))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.upgraded.done():
            self.upgraded.set_result(False)
        if not self.lost.done():
            self.lost.set_result(None)

    def go_silent(self) -> None:
        """Vanish: never answer, never read again (as a peer whose host died)."""
        self.silent = True
        assert self.transport is not None
        self.transport.pause_reading()


async def raw_client(port: int, path: str, first: bytes | None = None) -> RawClient:
    loop = asyncio.get_running_loop()
    _, client = await loop.create_connection(lambda: RawClient(path, first), "127.0.0.1", port)
    assert await asyncio.wait_for(client.upgraded, TIMEOUT), client.response
    return client


async def test_vanished_clients_are_detected_by_ping(kit_server: Any) -> None:
    ping_interval, pong_timeout, close_timeout = 0.6, 0.5, 1.0
    server = kit_server(ping_interval=ping_interval, pong_timeout=pong_timeout, close_timeout=close_timeout)
    # a protocol client that announced nothing special: the connect reply asks for pongs
    proto = await raw_client(server.port, "/connection/websocket", b'{"id":1,"connect":{}}')
    await until(lambda: proto.texts, "the connect reply")
    reply = json.loads(proto.texts[0])
    assert reply["connect"]["pong"] is True
    relay = await raw_client(server.port, "/ws/half-open")
    # a healthy client of each kind answers pings and must stay connected throughout
    healthy_relay = await websockets.connect(server.url("/ws/half-open"), ping_interval=None)
    healthy = await websockets.connect(server.url(), ping_interval=None)
    await healthy.send('{"id":1,"connect":{}}')
    assert "connect" in json.loads(await asyncio.wait_for(healthy.recv(), TIMEOUT))

    async def answer_pings() -> None:
        async for message in healthy:
            if message == "{}":
                await healthy.send("{}")

    answering = asyncio.get_running_loop().create_task(answer_pings())
    try:
        silent_at = time.monotonic()
        proto.go_silent()
        relay.go_silent()

        async def codes() -> dict[str, int]:
            return (await server.probe())["disconnects"]

        proto_detected = relay_detected = None
        deadline = time.monotonic() + TIMEOUT
        while (proto_detected is None or relay_detected is None) and time.monotonic() < deadline:
            found = await codes()
            now = time.monotonic()
            if proto_detected is None and found.get("3012"):
                proto_detected = now - silent_at
            if relay_detected is None and found.get("1011"):
                relay_detected = now - silent_at
            await asyncio.sleep(0.02)
        # the TCP connections are dropped close_timeout later (they never answer the close)
        gone = await until(lambda: _ws_count(server, 2), "the vanished connections dropped") - silent_at
        report("vanished clients", ping_interval=ping_interval, pong_timeout=pong_timeout,
               protocol_detected_s=proto_detected, relay_detected_s=relay_detected, dropped_s=gone)
        bound = ping_interval + pong_timeout + 0.5  # + polling and timer slack
        assert proto_detected is not None and proto_detected <= bound, proto_detected
        assert relay_detected is not None and relay_detected <= bound, relay_detected
        assert gone <= bound + close_timeout + 0.5, gone
        # when they read again they find why: 3012 "no pong" and 1011 (keepalive ping timeout)
        for client, code in ((proto, 3012), (relay, 1011)):
            assert client.transport is not None
            client.transport.resume_reading()
            await asyncio.wait_for(client.lost, TIMEOUT)
            assert client.close == code
        # the healthy ones are still there and still served
        assert healthy_relay.state is websockets.State.OPEN and healthy.state is websockets.State.OPEN
        await healthy_relay.send("still here")
        assert await asyncio.wait_for(healthy_relay.recv(), TIMEOUT) == "still here"
    finally:
        answering.cancel()
        await healthy_relay.close()
        await healthy.close()


async def _ws_count(server: KitServer, n: int) -> bool:
    return (await server.probe())["websockets"] == n


# -- 3. handshake flood and slowloris -----------------------------------------------------------------


async def test_handshake_flood_and_slowloris_do_not_starve_subscribers(kit_server: Any) -> None:
    handshake_timeout = 1.0
    server = kit_server(handshake_timeout=handshake_timeout, ping_interval=0)
    idle = await server.probe()
    sub = ProtoClient(await websockets.connect(server.url(), ping_interval=None))
    sub._buffer = []
    pub = ProtoClient(await websockets.connect(server.url(), ping_interval=None))
    pub._buffer = []
    try:
        for client in (sub, pub):
            assert "connect" in await client.call("connect", {})
        await sub.call("subscribe", {"channel": "calm"})
        kit = await Kit.start("flood", {"port": server.port, "concurrent": 500, "waves": 6, "slowloris": 200,
                                        "interval": 0.25, "hold": 6, "timeout": 30})
        latencies: list[float] = []
        during = None
        try:
            flood_done = asyncio.get_running_loop().create_task(kit.event("result", 60))
            for i in range(400):  # one publication every 20 ms while the flood lasts (at most 8 s)
                sent = time.monotonic()
                await pub.call("publish", {"channel": "calm", "data": i})
                push = await sub.next_push()
                latencies.append(time.monotonic() - sent)
                assert push["pub"]["data"] == i
                if i == 10:
                    during = await server.probe()
                if flood_done.done():
                    break
                await asyncio.sleep(0.02)  # pacing the publications
            result = await flood_done
        finally:
            await kit.close()
        await until(lambda: _connections(server, 3), "the flood's connections gone")  # 2 clients + the probe
        after = await server.probe()
        closed = result["slowloris_closed_after"]
        report("handshake flood + slowloris", handshakes=result["handshakes"], upgraded=result["upgraded"],
               handshake_p50_ms=result["handshake_p50_ms"], handshake_p99_ms=result["handshake_p99_ms"],
               slowloris=len(closed), slowloris_closed_min_s=min(c for c in closed if c) if any(closed) else None,
               slowloris_closed_max_s=max(c for c in closed if c) if any(closed) else None,
               publications=len(latencies), pub_p50_ms=round(percentile(latencies, 50) * 1000, 1),
               pub_p99_ms=round(percentile(latencies, 99) * 1000, 1), pub_max_ms=round(max(latencies) * 1000, 1),
               connections_during=during and during["connections"], rss_idle=idle["rss"], rss_after=after["rss"],
               fds_idle=idle["fds"], fds_after=after["fds"])
        assert result["upgraded"] == result["handshakes"] == 3000
        # every half-finished request was cut at its deadline (checked by the 1 s housekeeping sweep)
        assert all(c is not None and handshake_timeout - 0.1 <= c <= handshake_timeout + 2.0 for c in closed), closed
        # the subscriber was served all along, promptly
        assert len(latencies) >= 20  # publications all through the flood (about 1 every 25 ms)
        assert percentile(latencies, 50) < 0.1 and max(latencies) < 2.0, latencies
        # nothing left behind
        assert after["fds"] <= idle["fds"] + 4
        assert after["rss"] - idle["rss"] < 32 * 2**20
    finally:
        await sub.ws.close()
        await pub.ws.close()


async def _connections(server: KitServer, n: int) -> bool:
    return (await server.probe())["connections"] <= n


# -- 4. permessage-deflate: not negotiated, RSV1 refused, no bomb inflated ----------------------------


async def test_compression_is_not_negotiated_and_rsv1_is_refused(kit_server: Any) -> None:
    server = kit_server()
    idle = await server.probe()
    # websockets offers permessage-deflate by default; the answer has no extension
    ws = await websockets.connect(server.url(), compression="deflate", ping_interval=None)
    try:
        assert ws.response.headers.get("Sec-WebSocket-Extensions") is None
        assert ws.protocol.extensions == []
        await ws.send('{"id":1,"connect":{}}')
        assert "connect" in json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
    finally:
        await ws.close()
    offer = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits; server_no_context_takeover\r\n"

    # a bomb: 16 MiB of zeros deflated to about 16 KiB, sent compressed (RSV1) as if it had been negotiated
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    bomb = deflate.compress(b"\x00" * (16 * 2**20)) + deflate.flush(zlib.Z_SYNC_FLUSH)[:-4]
    assert len(bomb) < 32 * 1024

    async def one(path: str) -> tuple[bytes, int | None]:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            key_line = handshake(path, offer)
            writer.write(key_line)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
            writer.write(client_frame(bomb, 1, rsv1=True))
            data = await asyncio.wait_for(reader.read(), TIMEOUT)  # until the server closes
            frames, _ = parse_frames(bytearray(data))
            codes = [close_code(p) for op, p in frames if op == 8]
            return head, codes[0] if codes else None
        finally:
            writer.close()

    results = await asyncio.gather(*(one("/connection/websocket" if i % 2 else f"/ws/bomb{i}") for i in range(50)))
    after = await server.probe()
    report("compression", bombs=len(results), bomb_bytes=len(bomb), inflated_would_be=16 * 2**20,
           rss_idle=idle["rss"], rss_after=after["rss"], disconnects=after["disconnects"])
    for head, code in results:
        assert head.startswith(b"HTTP/1.1 101")
        assert b"sec-websocket-extensions" not in head.lower()
        assert code == 1002  # "reserved bits must be 0": the frame is refused, never inflated
    assert after["rss"] - idle["rss"] < 16 * 2**20  # one inflated bomb alone would be 16 MiB


# -- 5. SIGTERM and Redis outages under load (real redis-server) ---------------------------------------

CHAT_TOML = """
[namespaces.chat]
history_size = 5000
history_ttl = 300
force_recovery = true
"""


@pytest.fixture
def redis_pair(serve_process: Any, redis_server: RedisServer, tmp_path: Path) -> tuple[ServeProcess, ServeProcess]:  # noqa: F811
    config = tmp_path / "hub.toml"
    config.write_text(CHAT_TOML)
    args = ("--broker", redis_server.url, "--config", str(config), "--ping-interval", "0")
    return serve_process(*args), serve_process(*args)


async def connect_client(port: int) -> ProtoClient:
    client = ProtoClient(await websockets.connect(f"ws://127.0.0.1:{port}/connection/websocket",
                                                  ping_interval=None, max_queue=None))
    client._buffer = []
    reply = await client.call("connect", {})
    assert "connect" in reply, reply
    return client


class Producer:
    """Publishes 1..count to a channel at a steady rate through one client,
    several publications in flight; records what was acknowledged and refused."""

    def __init__(self, client: ProtoClient, channel: str, count: int, rate: float) -> None:
        self.client, self.channel, self.count, self.rate = client, channel, count, rate
        self.acked: list[int] = []
        self.refused: list[int] = []
        self.ids: dict[int, int] = {}

    async def run(self) -> None:
        ws = self.client.ws
        start = time.monotonic()
        reader = asyncio.get_running_loop().create_task(self._read())
        try:
            for n in range(1, self.count + 1):
                delay = start + n / self.rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)  # pacing
                self.ids[n] = n
                await ws.send(json.dumps({"id": n, "publish": {"channel": self.channel, "data": n}}))
            await until(lambda: len(self.acked) + len(self.refused) >= self.count, "every publish answered", 30)
        finally:
            reader.cancel()

    async def _read(self) -> None:
        while True:
            for line in (await self.client.ws.recv()).split("\n"):
                msg = json.loads(line)
                if "id" in msg:
                    (self.refused if "error" in msg else self.acked).append(msg["id"])


async def collect(client: ProtoClient, into: list[dict[str, Any]]) -> int:
    """Append publication pushes until the server closes; return the close code."""
    try:
        while True:
            push = await client.next_push()
            if "pub" in push:
                into.append(push["pub"])
    except websockets.ConnectionClosed:
        pass
    rcvd = client.ws.protocol.close_rcvd
    return rcvd.code if rcvd is not None else 1006


async def test_sigterm_under_load_loses_nothing(redis_pair: tuple[ServeProcess, ServeProcess]) -> None:
    """100 recoverable subscribers on A, a producer on B at 200/s; A gets SIGTERM
    mid-stream: it closes everyone with 3001 and exits 0; each subscriber
    recovers on B from its last offset and ends with exactly 1..N."""
    a, b = redis_pair
    n_subs, count = 100, 800
    subs = [await connect_client(a.port) for _ in range(n_subs)]
    epochs = {(await s.call("subscribe", {"channel": "chat:load"}))["subscribe"]["epoch"] for s in subs}
    (epoch,) = epochs
    producer = Producer(await connect_client(b.port), "chat:load", count, rate=200)
    got: list[list[dict[str, Any]]] = [[] for _ in subs]
    collectors = [asyncio.get_running_loop().create_task(collect(s, got[i])) for i, s in enumerate(subs)]
    producing = asyncio.get_running_loop().create_task(producer.run())
    try:
        await until(lambda: len(producer.acked) >= count // 4, "a quarter of the stream acknowledged", 30)
        sent_at = time.monotonic()
        a.proc.send_signal(signal.SIGTERM)
        codes = await asyncio.wait_for(asyncio.gather(*collectors), TIMEOUT)
        closed_s = time.monotonic() - sent_at
        exit_code = await asyncio.to_thread(a.proc.wait, TIMEOUT)
        exited_s = time.monotonic() - sent_at
        at_close = [len(g) for g in got]
        # each subscriber comes back on B, recovering from its last offset
        again = []
        for i in range(n_subs):
            offset = got[i][-1]["offset"] if got[i] else 0
            client = await connect_client(b.port)
            reply = (await client.call("subscribe", {"channel": "chat:load", "recover": True, "epoch": epoch,
                                                     "offset": offset}))["subscribe"]
            assert reply["recovered"] is True, reply
            got[i] += reply.get("publications", [])
            again.append(client)
        await asyncio.wait_for(producing, 30)
        for i, client in enumerate(again):
            while not got[i] or got[i][-1]["offset"] < count:
                push = await client.next_push()
                if "pub" in push:
                    got[i].append(push["pub"])
        report("SIGTERM under load (redis)", subscribers=n_subs, publications=count,
               acked=len(producer.acked), refused=len(producer.refused), closed_all_s=round(closed_s, 3),
               exited_s=round(exited_s, 3), exit_code=exit_code,
               delivered_before_sigterm_min=min(at_close), delivered_before_sigterm_max=max(at_close))
        assert exit_code == 0
        assert set(codes) == {3001}
        assert "Traceback" not in a.output()
        assert sorted(producer.acked) == list(range(1, count + 1)) and not producer.refused
        for g in got:
            offsets = [p["offset"] for p in g]
            # nothing lost, in order, and nothing twice (see test_no_duplicate_when_pubsub_lags_the_stream)
            assert offsets == list(range(1, count + 1))
            assert [p["data"] for p in g if p["offset"]] == offsets
        for client in again:
            await client.ws.close()
    finally:
        producing.cancel()
        for task in collectors:
            task.cancel()
        await producer.client.ws.close()


async def test_redis_killed_and_restarted_under_load(serve_process: Any, redis_server: RedisServer,  # noqa: F811
                                                     tmp_path: Path) -> None:
    """Redis dies while a producer publishes at 100/s to 50 subscribers: publishes
    are refused (never falsely acknowledged), /health says 503, the server stays
    up; when Redis is back (empty), publishing resumes, plain subscribers keep
    receiving without reconnecting, recoverable ones are told 3010 and resubscribe."""
    config = tmp_path / "hub.toml"
    config.write_text(CHAT_TOML)
    server = serve_process("--broker", redis_server.url, "--config", str(config), "--ping-interval", "0")
    plain = [await connect_client(server.port) for _ in range(40)]
    for c in plain:
        await c.call("subscribe", {"channel": "load"})
    recoverable = [await connect_client(server.port) for _ in range(10)]
    for c in recoverable:
        await c.call("subscribe", {"channel": "chat:load"})
    count, rate = 600, 100
    producer = Producer(await connect_client(server.port), "load", count, rate)
    chat_producer = Producer(await connect_client(server.port), "chat:load", count, rate)
    got_plain: list[list[dict[str, Any]]] = [[] for _ in plain]
    got_chat: list[list[dict[str, Any]]] = [[] for _ in recoverable]
    loop = asyncio.get_running_loop()
    plain_tasks = [loop.create_task(collect(c, got_plain[i])) for i, c in enumerate(plain)]
    chat_tasks = [loop.create_task(collect(c, got_chat[i])) for i, c in enumerate(recoverable)]
    producing = [loop.create_task(producer.run()), loop.create_task(chat_producer.run())]
    try:
        await until(lambda: len(producer.acked) >= 100, "100 publications acknowledged", 30)
        acked_before = len(producer.acked)
        down_at = time.monotonic()
        redis_server.stop()
        await until(lambda: _health(server.port, 503), "/health 503", TIMEOUT)
        health_503_s = time.monotonic() - down_at
        await until(lambda: len(producer.refused) >= 20, "publishes refused during the outage", TIMEOUT)
        acked_during = len(producer.acked)
        await asyncio.sleep(0.3)  # keep Redis down a little longer: more publishes are refused meanwhile
        assert len(producer.acked) == acked_during, "a publish was acknowledged while Redis was down"
        up_at = time.monotonic()
        redis_server.start()
        await until(lambda: _health(server.port, 200), "/health 200", 30)
        health_200_s = time.monotonic() - up_at
        resumed = await until(lambda: len(producer.acked) > acked_during, "publishing resumed", 30) - up_at
        # recoverable subscribers are told to recover (the stream was lost with Redis' data): 3010
        chat_codes = await asyncio.wait_for(asyncio.gather(*chat_tasks), TIMEOUT)
        await asyncio.wait_for(asyncio.gather(*producing), 60)
        acked = sorted(producer.acked)
        # plain subscribers never reconnected and got every acknowledged publication after the
        # outage; before it, every one; refused ones at most once (a refused publish may still
        # have reached Redis: at-most-once pub/sub cannot say)
        await until(lambda: all(set(acked) <= {p["data"] for p in g} for g in got_plain),
                    "every acknowledged publication delivered to every plain subscriber", 30)
        for g in got_plain:
            data = [p["data"] for p in g]
            assert data == sorted(set(data)), "in order, never twice"
        report("Redis killed and restarted under load", subscribers=len(plain) + len(recoverable),
               publications=count * 2, acked_before_outage=acked_before, refused=len(producer.refused),
               refused_chat=len(chat_producer.refused), health_503_after_s=round(health_503_s, 3),
               health_200_after_s=round(health_200_s, 3), publishing_resumed_after_s=round(resumed, 3),
               recoverable_close_codes=sorted(set(chat_codes)))
        assert set(chat_codes) == {3010}
        assert len(producer.acked) + len(producer.refused) == count
        assert server.proc.poll() is None
        assert "Traceback" not in server.output()
    finally:
        for task in [*plain_tasks, *chat_tasks, *producing]:
            task.cancel()
        for c in [*plain, *recoverable, producer.client, chat_producer.client]:
            await c.ws.close()


async def _health(port: int, status: int) -> bool:
    def get() -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=TIMEOUT) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return 0

    return await asyncio.to_thread(get) == status


async def test_no_duplicate_when_pubsub_lags_the_stream() -> None:
    from hubbub.brokers.base import Publication
    from hubbub.brokers.memory import MemoryBroker
    from hubbub.codec import JSON as JSON_CODEC
    from hubbub.codec import ProtocolWire
    from hubbub.config import Config, NamespaceOptions
    from hubbub.connection import WebSocketFrames
    from hubbub.core import ClientContext
    from hubbub.hub import Hub
    from hubbub.session import ClientSession

    from .test_fuzz import FakeOutbox, check_protocol_output

    class LaggingBroker(MemoryBroker):
        """Stores at once (history, offset) but delivers to the node only on ``catch_up()``."""

        def __init__(self) -> None:
            super().__init__()
            self.in_transit: list[tuple[str, Publication]] = []

        async def publish(self, channel: str, pub: Publication, **kw: Any) -> Any:
            handler, self._handler = self._handler, None
            try:
                return await super().publish(channel, pub, **kw)
            finally:
                self._handler = handler
                self.in_transit.append((channel, pub))

        def catch_up(self) -> None:
            for channel, pub in self.in_transit:
                assert self._handler is not None
                self._handler.on_publication(channel, pub)
            self.in_transit.clear()

    config = Config(namespaces={"chat": NamespaceOptions(history_size=10, history_ttl=60, force_recovery=True)})
    broker = LaggingBroker()
    hub = Hub(config, broker)
    await hub.start()
    wire = ProtocolWire(JSON_CODEC, WebSocketFrames())
    try:
        first, second = FakeOutbox(), FakeOutbox()
        old = ClientSession(ClientContext(hub), first, wire)
        await old.handle_message(b'{"id":1,"connect":{}}\n{"id":2,"subscribe":{"channel":"chat:x"}}', False)
        epoch = next(m for m in check_protocol_output(first.take()) if m.get("id") == 2)["subscribe"]["epoch"]
        await hub.publish("chat:x", {"n": 1})
        await hub.publish("chat:x", {"n": 2})  # both stored; pub/sub has not delivered them yet
        new = ClientSession(ClientContext(hub), second, wire)
        await new.handle_message(b'{"id":1,"connect":{}}\n{"id":2,"subscribe":{"channel":"chat:x",'
                                 b'"recover":true,"offset":0,"epoch":"%s"}}' % epoch.encode(), False)
        reply = next(m for m in check_protocol_output(second.take()) if m.get("id") == 2)["subscribe"]
        assert reply["recovered"] is True and [p["offset"] for p in reply["publications"]] == [1, 2]
        broker.catch_up()
        assert [m["push"]["pub"]["offset"] for m in check_protocol_output(first.take())] == [1, 2]
        again = [m["push"]["pub"]["offset"] for m in check_protocol_output(second.take())]
        assert again == [], f"delivered twice: {again}"
    finally:
        await hub.close()
