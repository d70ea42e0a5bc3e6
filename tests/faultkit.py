"""Processes for the fault tests (``tests/test_faults.py``) and the soak (``bench/soak.py``).

Three commands, each a separate process so that the server, the load and the
test never share an event loop or a core's time slice::

    python -m tests.faultkit serve CONFIG_JSON   # a hub with a probe
    python -m tests.faultkit fanout PARAMS_JSON  # subscribers + a publisher
    python -m tests.faultkit flood PARAMS_JSON   # handshake flood + slowloris

``serve`` runs :class:`hubbub.server.Server` (what ``hubbub serve`` runs) with
the settings given as JSON, prints ``listening on http://127.0.0.1:PORT`` and
serves, besides the usual routes, ``GET /_probe``: the process's RSS and open
fds, the close codes sent, and the largest output it ever held for one
connection (``max_pending``: measured right before every flush, i.e. at its
peak, as the bytes queued in user space plus the transport's buffer). SIGTERM
stops it as it stops ``hubbub serve``.

``fanout`` and ``flood`` print one JSON object per line on stdout: progress
lines (``{"event": ...}``) and a last line with ``"result"``. Every loop in
them is bounded in count and in time (``timeout``).

The load generator speaks WebSocket by hand (handshake, masked client frames,
frame headers) so one process can drive thousands of connections: the client
side is cheaper than the server it loads.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
import statistics
import sys
import time
from typing import Any

# -- the server with a probe -------------------------------------------------------------


def rss_bytes(pid: int | str = "self") -> int:
    """Resident memory of a process (bytes), from /proc."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def open_fds(pid: int | str = "self") -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def serve(config_json: str) -> int:
    import logging

    from hubbub.config import Config, NamespaceOptions
    from hubbub.connection import Connection
    from hubbub.http import HTTPResponse
    from hubbub.server import Server

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    raw = json.loads(config_json)
    namespaces = {k: NamespaceOptions(**v) for k, v in raw.pop("namespaces", {}).items()}
    config = Config(host="127.0.0.1", port=0, namespaces=namespaces, **raw)
    peak = {"max_pending": 0}
    original_flush = Connection.flush

    def flush(self: Connection) -> None:  # measure each connection's output at its peak
        transport = self.transport
        if transport is not None and not self.lost:
            pending = self._out_size + transport.get_write_buffer_size()
            peak["max_pending"] = max(peak["max_pending"], pending)
        original_flush(self)

    Connection.flush = flush  # type: ignore[method-assign]
    server = Server(config)

    async def probe(request: Any) -> Any:
        stats = server.stats
        return HTTPResponse.json({
            "pid": os.getpid(),
            "rss": rss_bytes(),
            "fds": open_fds(),
            "max_pending": peak["max_pending"],
            "max_pending_output": config.max_pending_output,
            "slow": stats.slow,
            "disconnects": {str(k): v for k, v in stats.disconnects.items()},
            "websockets": len(server.websockets),
            "connections": len(server.connections),
            "channels": server.hub.channels(),
            "broker_healthy": server.hub.broker.healthy,
        })

    server.add_http("/_probe", probe)

    def ready(s: Server) -> None:
        print(f"listening on {s.url}", flush=True)

    asyncio.run(server.serve(ready=ready))
    print("stopped", flush=True)
    return 0


# -- WebSocket by hand --------------------------------------------------------------------


def handshake(path: str, extra: str = "") -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n").encode()


def client_frame(payload: bytes, opcode: int = 1, *, rsv1: bool = False) -> bytes:
    """A masked client frame (mask key 0000, so the payload goes as is)."""
    first = 0x80 | (0x40 if rsv1 else 0) | opcode
    n = len(payload)
    if n < 126:
        head = bytes([first, 0x80 | n])
    elif n < 65536:
        head = bytes([first, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([first, 0x80 | 127]) + n.to_bytes(8, "big")
    return head + b"\x00\x00\x00\x00" + payload


def parse_frames(buf: bytearray) -> tuple[list[tuple[int, bytes]], int]:
    """Whole server frames at the start of ``buf``: ([(opcode, payload)], bytes used)."""
    frames = []
    pos, end = 0, len(buf)
    while end - pos >= 2:
        n = buf[pos + 1] & 0x7F
        head = 2
        if n == 126:
            if end - pos < 4:
                break
            n, head = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
        elif n == 127:
            if end - pos < 10:
                break
            n, head = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
        if end - pos < head + n:
            break
        frames.append((buf[pos] & 0x0F, bytes(buf[pos + head : pos + head + n])))
        pos += head + n
    return frames, pos


def close_code(payload: bytes) -> int:
    return int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005


def percentile(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def emit(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


class Client(asyncio.Protocol):
    """A protocol (Centrifugo JSON) client over a raw socket.

    It sends ``connect`` and one ``subscribe`` per channel, answers the
    server's pings (``{}``, and WebSocket pings), and checks that the
    publications of each channel arrive in order (``data`` is
    ``"s|<seq>|<monotonic time>|..."``, ``seq`` counting from 1 per channel).
    """

    def __init__(self, kit: Fanout, channels: list[str], *, latency: bool, slow: bool = False) -> None:
        self.kit = kit
        self.channels = channels
        self.latency = latency
        self.slow = slow
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.upgraded = False
        self.ready = asyncio.get_running_loop().create_future()
        self.lost = asyncio.get_running_loop().create_future()
        self.replies = 0
        self.errors: list[bytes] = []
        self.received = 0
        self.last: dict[bytes, int] = {}
        self.misordered = 0
        self.close: int | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(handshake("/connection/websocket"))

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if not buf.startswith(b"HTTP/1.1 101"):
                self._fail(f"handshake refused: {bytes(buf[:40])!r}")
                return
            del buf[: end + 4]
            self.upgraded = True
            commands = [b'{"id":1,"connect":{}}'] + [
                b'{"id":%d,"subscribe":{"channel":"%s"}}' % (i + 2, c.encode()) for i, c in enumerate(self.channels)]
            assert self.transport is not None
            self.transport.write(client_frame(b"\n".join(commands)))
        frames, used = parse_frames(buf)
        if used:
            del buf[:used]
        for opcode, payload in frames:
            if opcode == 1:
                for line in payload.split(b"\n"):
                    self._line(line)
            elif opcode == 8:
                self.close = close_code(payload)
                if self.transport is not None:  # answer the close: the server then drops the TCP connection
                    self.transport.write(client_frame(payload[:2], 8))
            elif opcode == 9 and self.transport is not None:
                self.transport.write(client_frame(payload, 0xA))

    def _line(self, line: bytes) -> None:
        if line.startswith(b'{"push"'):
            at = line.find(b'"data":"s|')
            if at < 0:
                return
            seq_text, t_text, _ = line[at + 10 :].split(b"|", 2)
            seq = int(seq_text)
            channel = line[line.find(b'"channel":"') + 11 : line.find(b'","pub"')]
            if seq != self.last.get(channel, 0) + 1:
                self.misordered += 1
            self.last[channel] = seq
            self.received += 1
            if self.latency:
                self.kit.latencies.append(time.monotonic() - float(t_text))
            self.kit.delivered += 1
        elif line == b"{}":
            if self.transport is not None and not self.slow:
                self.transport.write(client_frame(b"{}"))
        elif line.startswith(b'{"id"'):
            self.replies += 1
            if b'"error"' in line:
                self.errors.append(line)
            if self.replies == 1 + len(self.channels) and not self.ready.done():
                if self.errors:
                    self._fail(f"refused: {self.errors[0]!r}")
                    return
                self.ready.set_result(None)
                if self.slow and self.transport is not None:
                    self.transport.pause_reading()  # from now on it never reads

    def _fail(self, why: str) -> None:
        if not self.ready.done():
            self.ready.set_exception(RuntimeError(why))
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(RuntimeError(f"connection lost: {exc}"))
        if not self.lost.done():
            self.lost.set_result(None)


class Publisher(Client):
    """Publishes ``s|seq|t|pad`` strings; counts the acknowledgements."""

    def __init__(self, kit: Fanout) -> None:
        super().__init__(kit, [], latency=False)
        self.next_id = 100
        self.acked = 0
        self.refused = 0

    def _line(self, line: bytes) -> None:
        if line.startswith(b'{"id"'):
            self.replies += 1
            if self.replies == 1:
                self.ready.set_result(None)
            elif b'"error"' in line:
                self.refused += 1
            else:
                self.acked += 1
        elif line == b"{}" and self.transport is not None:
            self.transport.write(client_frame(b"{}"))

    def publish(self, channel: str, seq: int, pad: bytes) -> None:
        self.next_id += 1
        data = b"s|%d|%.6f|" % (seq, time.monotonic()) + pad
        assert self.transport is not None
        self.transport.write(client_frame(b'{"id":%d,"publish":{"channel":"%s","data":"%s"}}'
                                          % (self.next_id, channel.encode(), data)))


class Fanout:
    """Subscribers (``normal`` + ``slow``) on ``channels`` channels and one publisher.

    Params (JSON): port, normal, slow, channels (count), prefix, pubs (total,
    or 0 with ``seconds``), seconds, rate (publications/s), size (payload
    bytes), latency_every (every k-th subscriber records latencies),
    connect_concurrency, report_every (seconds between progress lines),
    timeout.
    """

    def __init__(self, params: dict[str, Any]) -> None:
        self.p = params
        self.latencies: list[float] = []
        self.delivered = 0

    async def _open(self, make: Any, sock_rcvbuf: int | None = None) -> Client:
        loop = asyncio.get_running_loop()
        sock = socket.socket()
        if sock_rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, sock_rcvbuf)
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", self.p["port"]))
        _, client = await loop.create_connection(make, sock=sock)
        await asyncio.wait_for(client.ready, 30)
        return client

    async def run(self) -> dict[str, Any]:
        p = self.p
        started = time.monotonic()
        deadline = started + p.get("timeout", 120)
        nch = p.get("channels", 1)
        prefix = p.get("prefix", "fan")
        every = max(1, p.get("latency_every", 10))
        gate = asyncio.Semaphore(p.get("connect_concurrency", 200))

        bulk = p.get("bulk")  # {"rate", "size"}: a second stream that only the "slow" group gets
        stops = p.get("slow_stop_reading", True)

        async def one(i: int, slow: bool) -> Client:
            channels = [f"{prefix}{i % nch}"] + (["bulk"] if slow and bulk else [])
            async with gate:
                return await self._open(
                    lambda: Client(self, channels, latency=not slow and i % every == 0, slow=slow and stops),
                    4096 if slow and stops else None)

        normal = await asyncio.gather(*(one(i, False) for i in range(p.get("normal", 0))))
        slow = await asyncio.gather(*(one(i, True) for i in range(p.get("slow", 0))))
        publisher: Publisher = await self._open(lambda: Publisher(self))  # type: ignore[assignment]
        bulk_publisher: Publisher | None = None
        if bulk:
            bulk_publisher = await self._open(lambda: Publisher(self))  # type: ignore[assignment]
        emit({"event": "ready", "normal": len(normal), "slow": len(slow), "seconds": time.monotonic() - started})
        if p.get("wait_for_go"):
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)

        pad = b"x" * max(0, p.get("size", 100) - 30)
        bulk_count = 0

        async def bulk_stream() -> None:
            nonlocal bulk_count
            assert bulk_publisher is not None
            bulk_pad = b"y" * max(0, bulk["size"] - 30)
            start = time.monotonic()
            while bulk_count < bulk["count"] and time.monotonic() < deadline:
                delay = start + bulk_count / bulk["rate"] - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)  # pacing
                bulk_count += 1
                bulk_publisher.publish("bulk", bulk_count, bulk_pad)

        bulk_task = asyncio.get_running_loop().create_task(bulk_stream()) if bulk else None
        rate = p.get("rate", 100)
        total = p.get("pubs", 0)
        seconds = p.get("seconds", 0)
        per_channel = [0] * nch
        t0 = time.monotonic()
        next_report = t0 + p.get("report_every", 10)
        window_delivered, window_t = 0, t0
        k = 0
        while (k < total if total else time.monotonic() - t0 < seconds) and time.monotonic() < deadline:
            target = t0 + k / rate
            delay = target - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)  # pacing the load, not waiting for an event
            ch = k % nch
            per_channel[ch] += 1
            publisher.publish(f"{prefix}{ch}", per_channel[ch], pad)
            k += 1
            if publisher.next_id - 100 - publisher.acked - publisher.refused > 2000:
                while publisher.next_id - 100 - publisher.acked - publisher.refused > 1000:
                    if time.monotonic() > deadline:
                        break
                    await asyncio.sleep(0.005)  # bounded backlog of unacknowledged publishes
            now = time.monotonic()
            if now >= next_report:
                lat = self.latencies
                emit({"event": "progress", "t": round(now - t0, 1), "published": k, "acked": publisher.acked,
                      "delivered": self.delivered,
                      "deliveries_per_s": round((self.delivered - window_delivered) / (now - window_t)),
                      "p50_ms": round(percentile(lat, 50) * 1000, 2), "p99_ms": round(percentile(lat, 99) * 1000, 2),
                      "closed": sum(1 for c in normal if c.lost.done())})
                self.latencies = []
                window_delivered, window_t = self.delivered, now
                next_report = now + p.get("report_every", 10)
        if bulk_task is not None:
            await bulk_task
        publish_seconds = time.monotonic() - t0

        # every acknowledged publication must reach every normal subscriber of its channel
        def complete() -> bool:
            readers = normal if stops else [*normal, *slow]
            return publisher.acked + publisher.refused >= k and all(
                c.received >= per_channel[i % nch] + (bulk_count if c in slow else 0) or c.lost.done()
                for i, c in enumerate(readers))

        while not complete() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        drained_seconds = time.monotonic() - t0 - publish_seconds

        slow_codes = []
        for c in slow:  # read what the server sent; the close frame comes after the data it held
            assert c.transport is not None
            c.transport.resume_reading()
        slow_wait = time.monotonic() + (p.get("slow_wait", 10) if stops else 0)
        for c in slow:
            try:
                await asyncio.wait_for(asyncio.shield(c.lost), max(0.01, min(slow_wait, deadline) - time.monotonic()))
            except TimeoutError:
                pass
            slow_codes.append(c.close)

        missing = [(i, per_channel[i % nch] - c.received) for i, c in enumerate(normal)
                   if c.received != per_channel[i % nch]]
        result = {
            "result": True,
            "published": k,
            "acked": publisher.acked,
            "refused": publisher.refused,
            "per_channel": per_channel,
            "publish_seconds": round(publish_seconds, 3),
            "drain_seconds": round(drained_seconds, 3),
            "delivered": self.delivered,
            "complete": not missing,
            "missing": missing[:10],
            "misordered": sum(c.misordered for c in normal),
            "normal_closed": sum(1 for c in normal if c.lost.done()),
            "normal_close_codes": sorted({c.close for c in normal if c.close is not None}),
            "latency_samples": len(self.latencies),
            "p50_ms": round(percentile(self.latencies, 50) * 1000, 3),
            "p99_ms": round(percentile(self.latencies, 99) * 1000, 3),
            "max_ms": round(max(self.latencies, default=0) * 1000, 3),
            "mean_ms": round(statistics.fmean(self.latencies) * 1000, 3) if self.latencies else 0,
            "slow_codes": slow_codes,
            "bulk_published": bulk_count,
            "bulk_acked": bulk_publisher.acked if bulk_publisher else 0,
        }
        for c in [*normal, *slow, publisher, *([bulk_publisher] if bulk_publisher else [])]:
            if c.transport is not None:
                c.transport.abort()
        return result


# -- handshake flood and slowloris -----------------------------------------------------------------


async def flood(params: dict[str, Any]) -> dict[str, Any]:
    """``concurrent`` full handshakes at once, ``waves`` times, while ``slowloris``
    connections send a header line every ``interval`` seconds and never finish.

    Result: handshakes that got 101 (and their p99 time), and for each
    slowloris connection the seconds until the server closed it (``None``:
    still open when ``hold`` seconds had passed).
    """
    loop = asyncio.get_running_loop()
    port = params["port"]
    deadline = time.monotonic() + params.get("timeout", 60)

    async def slowloris() -> float | None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        start = time.monotonic()
        writer.write(b"GET /connection/websocket HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        try:
            for i in range(int(params.get("hold", 10) / params.get("interval", 0.25))):
                try:
                    data = await asyncio.wait_for(reader.read(1024), params.get("interval", 0.25))
                except TimeoutError:
                    writer.write(b"X-Slow-%d: %d\r\n" % (i, i))  # one more header, never the blank line
                    continue
                if not data:
                    return time.monotonic() - start
                # any response (there should be none) still counts as not closed until EOF
        except (ConnectionError, OSError):
            return time.monotonic() - start
        finally:
            writer.close()
        return None

    async def one_handshake() -> float | None:
        start = time.monotonic()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return None
        try:
            writer.write(handshake("/connection/websocket"))
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), max(0.1, deadline - time.monotonic()))
            return time.monotonic() - start if head.startswith(b"HTTP/1.1 101") else None
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            return None
        finally:
            writer.transport.abort()

    loris = [loop.create_task(slowloris()) for _ in range(params.get("slowloris", 0))]
    times: list[float | None] = []
    for _ in range(params.get("waves", 1)):
        times += await asyncio.gather(*(one_handshake() for _ in range(params.get("concurrent", 0))))
    loris_times = await asyncio.gather(*loris)
    ok = [t for t in times if t is not None]
    return {
        "result": True,
        "handshakes": len(times),
        "upgraded": len(ok),
        "handshake_p50_ms": round(percentile(ok, 50) * 1000, 1),
        "handshake_p99_ms": round(percentile(ok, 99) * 1000, 1),
        "slowloris_closed_after": loris_times,
    }


def main(argv: list[str]) -> int:
    command, arg = argv[0], argv[1] if len(argv) > 1 else "{}"
    if command == "serve":
        return serve(arg)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    params = json.loads(arg)
    if command == "fanout":
        emit(asyncio.run(Fanout(params).run()))
    elif command == "flood":
        emit(asyncio.run(flood(params)))
    else:
        print(f"unknown command {command}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
