#!/usr/bin/env python3
"""WebSocket fan-out load generator for the hubbub benchmarks.

The load generator measures how fast a server fans messages out to many
WebSocket subscribers.  It is deliberately independent of any WebSocket
library on its hot path, so that it can outrun the servers it measures:

* Subscribers live in one or more worker processes (``--procs``), separate
  from the server and from the producer.  Each worker opens its share of the
  subscriber connections with plain :class:`asyncio.Protocol` objects,
  performs the opening handshake by hand, optionally sends subscribe messages
  and waits for a reply (``--sub-send`` / ``--sub-ready``), and then counts
  incoming messages by parsing frame headers only.  Server frames are
  unmasked, so counting needs no per-byte work.  Every ``--sample-every``-th
  delivery is decoded to check the payload marker and to compute the
  publish-to-receive latency.  WebSocket pings (opcode 0x9) are answered
  with masked pongs; application-level pings (Centrifugo's ``{}``, Engine.IO's
  ``2``) are answered too.

* The producer runs in the coordinating (main) process.  It connects once,
  then publishes ``--messages`` payloads of ``--size`` bytes, either as fast
  as it can or at ``--rate`` messages per second.  Each payload embeds a
  sequence number and a wall-clock timestamp (:func:`time.time_ns`, because
  the receiving processes are different processes)::

      HB|<seq: 10 digits>|<time_ns: 19 digits>|xxxxxxxx...   (size bytes)

Modes (``--mode``), i.e. how subscribers subscribe and the producer publishes:

``raw``
    The payload is sent as a text message.  For the baseline broadcast
    server, socketify and hubbub's relay endpoint ``/ws/{channel}``, where
    every message a client sends is delivered to every client on that path.
    A subscriber is ready once the opening handshake is done (the servers
    subscribe it on connect), or after ``--sub-send`` / ``--sub-ready``.

``centrifugo``
    Centrifugo's JSON protocol: the producer sends ``{"id":1,"connect":{}}``
    and then ``{"id":N,"publish":{"channel":...,"data":{"p":"<payload>"}}}``
    with at most ``--window`` publications awaiting a reply.  Subscribers
    send connect and one subscribe command per channel, and are ready on the
    reply to the last one.  As Centrifugo may batch several pushes into one
    frame (newline separated), deliveries are counted by payload marker.
    Server pings (``{}``) are answered with ``{}`` (hubbub closes a client
    that does not answer with 3012).

    With ``--sub-format protobuf`` the subscribers speak the Protobuf
    protocol instead: they ask for the ``centrifuge-protobuf`` subprotocol,
    send connect and subscribe as varint-length-delimited ``Command``
    messages in one binary frame (encoded here by hand, a few bytes), are
    ready on the ``Reply`` to the last one, and answer the server's ping (an
    empty ``Reply``, the binary frame ``00``) with an empty ``Command``. The
    producer still publishes JSON, so a JSON run and a Protobuf run publish
    the same bytes and the Protobuf subscribers find the payload marker in
    ``pub.data`` (hubbub sends a JSON publication's bytes as they are).

``socketio``
    Engine.IO v4 / Socket.IO v5 over a raw WebSocket
    (``/socket.io/?EIO=4&transport=websocket``): the server's open packet
    ``0{...}`` is answered with ``40`` (connect to ``/``); the connect
    acknowledgement ``40{...}`` makes a subscriber ready (the bench server
    joins every client to the room ``bench``); Engine.IO pings ``2`` are
    answered with ``3``.  With ``--groups``, subscribers emit
    ``42["sub",[rooms]]`` and wait for ``42["subok"]``.  The producer emits
    ``42["pub","<payload>"]`` (or ``42["pub","<room>","<payload>"]``) and
    deliveries arrive as ``42["msg","<payload>"]``; counted by marker.

``pubsub``
    A tiny text protocol spoken by the bench servers for the many-channels
    workload: ``sub <channel> ...`` answered by ``subok``, and
    ``pub <channel> <payload>``.

``uni_sse``
    hubbub's one-way SSE transport: each subscriber is a plain HTTP client
    (no WebSocket) that sends ``GET /connection/uni_sse?cf_connect=
    {"subs": {"<channel>": {}}}`` and is ready at the ``connect`` push; it
    counts deliveries by payload marker in the raw body (chunks of SSE
    events). The producer is a relay client on ``--path`` (``/ws/bench``), as
    in ``raw`` mode, so the same publications reach relay and uni_sse
    subscribers and the two runs compare like for like.

Many channels (``--groups G``): subscriber ``i`` (numbered across all
worker processes) subscribes to its personal channel ``u<i>`` and to the
group channel ``g<i % G>``.  Publication ``k`` goes to a channel drawn with
a seeded RNG (``--seed``): a random personal channel with probability
``--personal-share``, otherwise a random group channel.  Each subscriber
knows how many publications it must receive.

Other runs: ``--idle`` opens the subscribers and holds them without
publishing; with ``--rss-pid`` it reads that process's resident memory after
``--warmup`` connections and again after all of them (memory per
connection).  ``--reconnect`` (with ``--idle``) prints a line
``{"event": "ready"}`` on stdout once every subscriber is ready, then waits
until every subscriber has lost its connection and connected (and
subscribed) again: the caller restarts the server in between.

Result: deliveries/s is the number of payload deliveries received by all
subscribers divided by the time from the first publication to the last
delivery received.  When not everything arrives before ``--timeout`` the
run is reported as incomplete, with what was received.

Example::

    python bench/loadgen.py --port 8000 --path /ws/bench --subscribers 1000 \\
        --messages 500 --size 100
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import hashlib
import json
import math
import multiprocessing
import os
import random
import resource
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

#: Payload layout: MARKER, sequence number, "|", timestamp in ns, "|", padding.
MARKER = b"HB|"
SEQ_DIGITS = 10
TS_DIGITS = 19
SEQ_OFFSET = len(MARKER)
TS_OFFSET = SEQ_OFFSET + SEQ_DIGITS + 1
PAYLOAD_HEADER_LEN = TS_OFFSET + TS_DIGITS + 1  # 34 bytes

MAX_HANDSHAKE_RESPONSE = 16 * 1024


# ---------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------


def raise_nofile_limit() -> None:
    """Raise this process's RLIMIT_NOFILE soft limit to its hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):  # e.g. hard == RLIM_INFINITY
            pass


def log(message: str) -> None:
    """Progress messages go to stderr so stdout can carry the result."""
    print(f"[loadgen] {message}", file=sys.stderr, flush=True)


def make_payload(seq: int, size: int) -> bytes:
    """Build a payload of ``size`` bytes carrying ``seq`` and the current time."""
    head = b"%s%0*d|%0*d|" % (MARKER, SEQ_DIGITS, seq, TS_DIGITS, time.time_ns())
    return head + b"x" * (size - len(head))


def parse_payload(data: bytes, start: int, end: int) -> tuple[int, int] | None:
    """Find the first payload in ``data[start:end]``; return ``(seq, time_ns)``.

    Returns None when no well-formed payload header is found.
    """
    i = data.find(MARKER, start, end)
    if i < 0 or end - i < PAYLOAD_HEADER_LEN:
        return None
    if data[i + TS_OFFSET - 1] != 0x7C or data[i + PAYLOAD_HEADER_LEN - 1] != 0x7C:
        return None  # the "|" separators are missing
    try:
        seq = int(data[i + SEQ_OFFSET : i + SEQ_OFFSET + SEQ_DIGITS])
        ts = int(data[i + TS_OFFSET : i + TS_OFFSET + TS_DIGITS])
    except ValueError:
        return None
    return seq, ts


def pb_varint(n: int) -> bytes:
    """``n`` as a Protobuf varint."""
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def pb_string(field: int, value: bytes) -> bytes:
    """A length-delimited field (string, bytes or message)."""
    return pb_varint(field << 3 | 2) + pb_varint(len(value)) + value


def pb_command(command_id: int, method_field: int, request: bytes) -> bytes:
    """A length-prefixed ``Command``: ``id`` (field 1) and one request message."""
    body = b"\x08" + pb_varint(command_id) + pb_string(method_field, request)
    return pb_varint(len(body)) + body


def pb_replies(payload: bytes) -> list[tuple[int, bool, int]]:
    """``(id, has_error, size)`` of each length-prefixed ``Reply`` in ``payload``
    (only the top-level fields are walked)."""
    out = []
    pos, n = 0, len(payload)

    def varint(at: int) -> tuple[int, int]:
        value, shift = 0, 0
        while True:
            byte = payload[at]
            at += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value, at

    while pos < n:
        size, pos = varint(pos)
        end = pos + size
        reply_id, has_error = 0, False
        while pos < end:
            key, pos = varint(pos)
            field, wire = key >> 3, key & 7
            if wire == 0:
                value, pos = varint(pos)
                if field == 1:
                    reply_id = value
            elif wire == 2:
                length, pos = varint(pos)
                pos += length
                if field == 2:
                    has_error = True
            else:
                break  # not in a Reply's top level
        out.append((reply_id, has_error, size))
        pos = end
    return out


def mask(payload: bytes, key: bytes) -> bytes:
    """XOR ``payload`` with the 4-byte masking ``key`` (RFC 6455, 5.3)."""
    n = len(payload)
    if n == 0:
        return b""
    repeated = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(n, "big")


def client_frame(payload: bytes, opcode: int = OP_TEXT) -> bytes:
    """Encode a single, final, masked client-to-server frame."""
    n = len(payload)
    b0 = 0x80 | opcode
    if n < 126:
        header = bytes((b0, 0x80 | n))
    elif n < 1 << 16:
        header = struct.pack("!BBH", b0, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", b0, 0x80 | 127, n)
    key = os.urandom(4)
    return header + key + mask(payload, key)


def percentile(sorted_values: list[int], pct: float) -> int | None:
    """Nearest-rank percentile of an already sorted list (None if empty)."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(pct / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def read_cpu_s(pid: int) -> float | None:
    """User + system CPU time of process ``pid`` (and its reaped children), s."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return sum(int(f) for f in fields[11:15]) / ticks  # utime stime cutime cstime


def read_rss_kib(pid: int) -> int | None:
    """Resident memory (VmRSS) of process ``pid`` in KiB, or None."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def subscriber_channels(cfg: Config, index: int) -> list[str]:
    """Channels of subscriber ``index`` (numbered across all workers)."""
    if cfg.groups > 0:
        return [f"u{index}", f"g{index % cfg.groups}"]
    return [cfg.channel]


def publication_plan(cfg: Config) -> list[str]:
    """The channel of each publication (many-channels mode), seeded."""
    rng = random.Random(cfg.seed)
    plan = []
    for _ in range(cfg.messages):
        if rng.random() < cfg.personal_share:
            plan.append(f"u{rng.randrange(cfg.subscribers)}")
        else:
            plan.append(f"g{rng.randrange(cfg.groups)}")
    return plan


def expected_counts(cfg: Config) -> collections.Counter[str] | None:
    """Publications per channel in many-channels mode (None otherwise)."""
    if cfg.groups <= 0 or cfg.idle:
        return None
    return collections.Counter(publication_plan(cfg))


class HandshakeError(Exception):
    """The server did not accept the WebSocket connection or subscription."""


# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------


@dataclass
class Config:
    """Everything a run needs; picklable so it can be sent to workers."""

    host: str = "127.0.0.1"
    port: int = 8000  # the producer's (and every subscriber's, unless `ports`)
    ports: tuple[int, ...] = ()  # subscriber i connects to ports[i % len(ports)]
    path: str = "/"
    mode: str = "raw"  # "raw", "centrifugo", "socketio", "pubsub" or "uni_sse"
    sub_format: str = "json"  # centrifugo subscribers: "json" or "protobuf"
    subscribers: int = 1000
    procs: int = 1
    messages: int = 500
    size: int = 100
    rate: float = 0.0  # messages/s; 0 means as fast as possible
    window: int = 100  # centrifugo: publications awaiting a reply
    channel: str = "bench"
    sub_send: list[str] | None = None  # None: the mode's default
    sub_ready: str | None = None  # substring of the reply that means ready
    sub_ready_id: int | None = None  # or: id of the JSON reply that means ready
    count: str = "frames"  # "frames" or "marker"
    sample_every: int = 100
    timeout: float = 30.0
    connect_timeout: float = 60.0
    connect_concurrency: int = 100
    settle: float = 0.5
    groups: int = 0  # many channels: personal channel + one of `groups` groups
    personal_share: float = 0.5
    seed: int = 1
    idle: bool = False
    rss_pid: int | None = None
    cpu_pid: int | None = None
    warmup: int = 0
    hold: float = 1.0
    reconnect: bool = False
    reconnect_delay: float = 0.1
    ready_file: str | None = None
    done_file: str | None = None
    linger: float = 0.0


# ---------------------------------------------------------------------------
# WebSocket client plumbing shared by subscribers and the producer
# ---------------------------------------------------------------------------


class WSClient(asyncio.Protocol):
    """Minimal WebSocket client: handshake, control frames, flow control.

    Subclasses implement :meth:`frames_received`, which gets every chunk of
    bytes received after the opening handshake, and may override
    :meth:`handshake_done`.  ``self.ready`` resolves when the client is
    ready for the benchmark (after the handshake by default).
    """

    #: a WebSocket subprotocol to ask for in the handshake
    subprotocol: str | None = None

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.loop = asyncio.get_running_loop()
        self.ready: asyncio.Future[None] = self.loop.create_future()
        self.lost: asyncio.Future[None] = self.loop.create_future()
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._close_sent = False
        self._handshaking = True
        self._handshake_buf = b""
        self._accept = b""
        self._writable: asyncio.Future[None] | None = None

    # -- asyncio.Protocol ---------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        key = base64.b64encode(os.urandom(16))
        self._accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
        request = (
            f"GET {self.cfg.path} HTTP/1.1\r\n"
            f"Host: {self.cfg.host}:{self.cfg.port}\r\n"
            "Upgrade: websocket\r\n"
            "Connection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key.decode()}\r\n"
            "Sec-WebSocket-Version: 13\r\n"
            + (f"Sec-WebSocket-Protocol: {self.subprotocol}\r\n" if self.subprotocol else "")
            + "\r\n"
        )
        transport.write(request.encode())  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if self._handshaking:
            data = self._handshake_received(data)
            if not data:
                return
        self.frames_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.lost.set_result(None)
        if not self.ready.done():
            self.ready.set_exception(HandshakeError(f"connection lost: {exc!r}"))
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    def pause_writing(self) -> None:
        if self._writable is None or self._writable.done():
            self._writable = self.loop.create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    # -- handshake ----------------------------------------------------------

    def _handshake_received(self, data: bytes) -> bytes:
        """Consume the HTTP response; return the bytes that follow it."""
        buf = self._handshake_buf + data
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > MAX_HANDSHAKE_RESPONSE:
                self.fail("handshake response too large")
            self._handshake_buf = buf
            return b""
        head, rest = buf[:end], buf[end + 4 :]
        self._handshake_buf = b""
        self._handshaking = False
        lines = head.split(b"\r\n")
        status = lines[0].split(None, 2)
        if len(status) < 2 or status[1] != b"101":
            self.fail(f"expected 101, got {lines[0].decode(errors='replace')!r}")
            return b""
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        if headers.get(b"sec-websocket-accept") != self._accept:
            self.fail("bad Sec-WebSocket-Accept")
            return b""
        self.handshake_done()
        return rest

    def handshake_done(self) -> None:
        """Called after a successful handshake; default: ready at once."""
        self.set_ready()

    def set_ready(self) -> None:
        if not self.ready.done():
            self.ready.set_result(None)

    def fail(self, reason: str) -> None:
        """Abort the connection; makes ``ready`` fail if still pending."""
        if not self.ready.done():
            self.ready.set_exception(HandshakeError(reason))
        if self.transport is not None:
            self.transport.abort()

    # -- sending ------------------------------------------------------------

    def send(self, payload: bytes, opcode: int = OP_TEXT) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(client_frame(payload, opcode))

    async def drain(self) -> None:
        """Wait while the transport's write buffer is above its high mark."""
        if self._writable is not None and not self._writable.done():
            await self._writable

    def send_close(self, code: int = 1000) -> None:
        """Start (or answer) the closing handshake."""
        if not self._close_sent:
            self._close_sent = True
            self.send(struct.pack("!H", code), OP_CLOSE)

    def control_frame(self, opcode: int, payload: bytes) -> None:
        """Handle a control frame: answer pings, echo close then disconnect."""
        if opcode == OP_PING:
            self.send(payload, OP_PONG)
        elif opcode == OP_CLOSE:
            self.send_close(int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1000)
            if self.transport is not None:
                self.transport.close()

    def frames_received(self, data: bytes) -> None:  # pragma: no cover
        raise NotImplementedError


async def close_all(clients: list[WSClient], grace: float) -> None:
    """Close connections cleanly: send a close frame, let the server close
    the TCP connection (so that TIME_WAIT stays on the server side), and
    abort whatever is still open after ``grace`` seconds."""
    for client in clients:
        client.send_close()
    pending = [client.lost for client in clients if not client.lost.done()]
    if pending:
        await asyncio.wait(pending, timeout=grace)
    for client in clients:
        if not client.lost.done() and client.transport is not None:
            client.transport.abort()


def split_frames(data: bytes) -> tuple[list[tuple[int, int, bytes, int]], bytes]:
    """Split server frames: returns ``[(fin, opcode, payload, end)], leftover``.

    ``end`` is the offset in ``data`` just after the frame.
    The general-purpose (slower) parser, used by the producer and by
    subscribers before they are ready.
    """
    frames = []
    pos, n = 0, len(data)
    while n - pos >= 2:
        b0, length = data[pos], data[pos + 1] & 0x7F
        start = pos + 2
        if length == 126:
            if n - pos < 4:
                break
            length = int.from_bytes(data[pos + 2 : pos + 4], "big")
            start = pos + 4
        elif length == 127:
            if n - pos < 10:
                break
            length = int.from_bytes(data[pos + 2 : pos + 10], "big")
            start = pos + 10
        end = start + length
        if end > n:
            break
        frames.append((b0 >> 7, b0 & 0x0F, data[start:end], end))
        pos = end
    return frames, data[pos:]


# ---------------------------------------------------------------------------
# Subscribers (worker processes)
# ---------------------------------------------------------------------------


class SubscriberStats:
    """Counters shared by all subscribers of one worker process."""

    def __init__(self, cfg: Config) -> None:
        self.sample_every = cfg.sample_every
        self.countdown = cfg.sample_every
        self.delivered = 0
        self.last_ns = 0
        self.latencies_ns: list[int] = []
        self.bad_samples = 0
        self.complete = 0  # subscribers that received everything expected
        self.lost = 0  # subscribers disconnected before that
        self.active: int | None = None  # set once all connections are open
        self.done = asyncio.Event()
        # --reconnect
        self.first_lost_ns = 0
        self.reconnected = 0
        self.last_ready_ns = 0
        self.reconnect_errors: collections.Counter[str] = collections.Counter()
        self.on_lost: Callable[[Subscriber], None] | None = None

    def check_done(self) -> None:
        if self.active is None:
            return
        if self.on_lost is not None:
            if self.reconnected >= self.active:
                self.done.set()
        elif self.complete + self.lost >= self.active:
            self.done.set()


class Subscriber(WSClient):
    """A subscriber that counts deliveries from frame headers only."""

    def __init__(
        self, cfg: Config, stats: SubscriberStats, index: int = 0, expected: int | None = None
    ) -> None:
        super().__init__(cfg)
        self.stats = stats
        self.index = index
        self.channels = subscriber_channels(cfg, index)
        self.expected = cfg.messages if expected is None else expected
        self.count_marker = cfg.count == "marker"
        self.engineio = cfg.mode == "socketio"
        self.centrifugo = cfg.mode == "centrifugo"
        self.protobuf = self.centrifugo and cfg.sub_format == "protobuf"
        if self.protobuf:
            self.subprotocol = "centrifuge-protobuf"
        self.received = 0
        self.is_complete = False
        self.benchmarking = False  # counting starts once ready
        self._ready_marker = cfg.sub_ready.encode() if cfg.sub_ready else None
        self._ready_id = cfg.sub_ready_id
        self._rest = b""

    def handshake_done(self) -> None:
        cfg = self.cfg
        mode = cfg.mode
        if mode == "centrifugo" and self.protobuf:
            commands = [pb_command(1, 4, b"")] + [
                pb_command(2 + k, 5, pb_string(1, ch.encode())) for k, ch in enumerate(self.channels)]
            self.send(b"".join(commands), OP_BINARY)
            if self._ready_marker is None and self._ready_id is None:
                self._ready_id = 1 + len(self.channels)
            return
        if mode == "centrifugo":
            sends = ['{"id":1,"connect":{}}'] + [
                json.dumps({"id": 2 + k, "subscribe": {"channel": ch}}, separators=(",", ":"))
                for k, ch in enumerate(self.channels)
            ]
            if cfg.sub_send is not None:
                sends = cfg.sub_send
            if self._ready_marker is None and self._ready_id is None:
                self._ready_id = 1 + len(self.channels)
        elif mode == "pubsub":
            sends = ["sub " + " ".join(self.channels)]
            self._ready_marker = b"subok"
        elif mode == "socketio":
            return  # wait for the Engine.IO open packet
        else:
            sends = cfg.sub_send or []
        for text in sends:
            self.send(text.encode())
        if self._ready_marker is None and self._ready_id is None:
            self._become_ready()

    def _become_ready(self) -> None:
        self.benchmarking = True
        self.set_ready()

    def _is_ready_reply(self, payload: bytes) -> bool:
        """Whether a message before readiness is the awaited reply.

        Raises HandshakeError if that reply reports an error.
        """
        if self.engineio:
            return self._engineio_pre_ready(payload)
        if self.protobuf:
            return self._protobuf_pre_ready(payload)
        if self._ready_marker is not None:
            if self._ready_marker not in payload:
                return False
            if b'"error"' in payload:
                raise HandshakeError(f"subscription refused: {payload[:200]!r}")
            return True
        for line in payload.split(b"\n"):  # JSON replies, maybe batched
            if line.strip() == b"{}":  # a ping
                self.send(b"{}")
                continue
            try:
                reply = json.loads(line)
            except ValueError:
                continue
            if isinstance(reply, dict) and "error" in reply and isinstance(reply.get("id"), int):
                raise HandshakeError(f"command refused: {line[:200]!r}")
            if isinstance(reply, dict) and reply.get("id") == self._ready_id:
                return True
        return False

    def _protobuf_pre_ready(self, payload: bytes) -> bool:
        """Protobuf replies before readiness: answer pings, find the ready id."""
        ready = False
        for reply_id, has_error, size in pb_replies(payload):
            if size == 0:  # the server's ping
                self.send(b"\x00", OP_BINARY)
            elif has_error and reply_id:
                raise HandshakeError(f"command {reply_id} refused: {payload[:200]!r}")
            elif reply_id == self._ready_id:
                ready = True
        return ready

    def _engineio_pre_ready(self, payload: bytes) -> bool:
        """Engine.IO / Socket.IO opening: open -> connect -> (subscribe)."""
        if payload[:2] == b"0{":  # Engine.IO open packet
            self.send(b"40")
        elif payload[:3] == b"40{":  # Socket.IO connect acknowledgement
            if self.cfg.groups <= 0:
                return True
            self.send(b'42["sub",%s]' % json.dumps(self.channels).encode())
        elif payload == b"2":  # Engine.IO ping
            self.send(b"3")
        elif payload[:9] == b'42["subok':
            return True
        elif payload[:2] == b"44":  # connect error
            raise HandshakeError(f"connect refused: {payload[:200]!r}")
        return False

    def _pre_ready(self, data: bytes) -> bytes:
        """Look for the ready reply; return unparsed bytes after it."""
        frames, rest = split_frames(data)
        for _fin, opcode, payload, end in frames:
            if opcode >= 0x8:
                self.control_frame(opcode, payload)
                continue
            try:
                ready = self._is_ready_reply(payload)
            except HandshakeError as exc:
                self.fail(str(exc))
                return b""
            if ready:
                self._become_ready()
                return data[end:]  # deliveries may follow in the same chunk
        self._rest = rest
        return b""

    def frames_received(self, data: bytes) -> None:
        if self._rest:
            data = self._rest + data
            self._rest = b""
        if not self.benchmarking:
            data = self._pre_ready(data)
            if not data:
                return
        # Hot path: walk frame headers, count deliveries, sample a few.
        stats = self.stats
        countdown = stats.countdown
        count_marker = self.count_marker
        got = 0
        pos, n = 0, len(data)
        while n - pos >= 2:
            b0 = data[pos]
            length = data[pos + 1] & 0x7F
            if length < 126:
                start = pos + 2
            elif length == 126:
                if n - pos < 4:
                    break
                length = (data[pos + 2] << 8) | data[pos + 3]
                start = pos + 4
            else:
                if n - pos < 10:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 10], "big")
                start = pos + 10
            end = start + length
            if end > n:
                break
            pos = end
            if b0 & 0x0F <= OP_BINARY:  # data frame
                if count_marker:
                    k = data.count(MARKER, start, end)
                    if self.protobuf:
                        if not k and length == 1 and data[start] == 0:  # ping: an empty Reply
                            self.send(b"\x00", OP_BINARY)
                    elif self.centrifugo:
                        if data.find(b"{}", start, end) >= 0:
                            self._centrifugo_pings(data[start:end])
                    elif not k and length == 1 and self.engineio and data[start] == 0x32:
                        self.send(b"3")  # Engine.IO ping
                else:
                    k = b0 >> 7
                if k:
                    got += k
                    countdown -= k
                    if countdown <= 0:
                        countdown = stats.sample_every
                        self._sample(data, start, end)
            else:
                self.control_frame(b0 & 0x0F, data[start:end])
        if pos < n:
            self._rest = data[pos:]
        stats.countdown = countdown
        if got:
            stats.last_ns = time.time_ns()
            stats.delivered += got
            self.received += got
            if not self.is_complete and self.received >= self.expected:
                self.is_complete = True
                stats.complete += 1
                stats.check_done()

    def _centrifugo_pings(self, payload: bytes) -> None:
        """Answer the server's pings (``{}``, maybe batched with pushes) with ``{}``."""
        for line in payload.split(b"\n"):
            if line.strip() == b"{}":
                self.send(b"{}")

    def _sample(self, data: bytes, start: int, end: int) -> None:
        now = time.time_ns()
        parsed = parse_payload(data, start, end)
        if parsed is None:
            self.stats.bad_samples += 1
        else:
            self.stats.latencies_ns.append(now - parsed[1])

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        stats = self.stats
        if stats.on_lost is not None and self.benchmarking:
            stats.on_lost(self)
        elif self.benchmarking and not self.is_complete:
            stats.lost += 1
            stats.check_done()


class SSESubscriber(Subscriber):
    """``--mode uni_sse``: a plain HTTP GET whose streamed body is counted by
    payload marker (a marker split across reads is found with the next one)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        cf_connect = json.dumps({"subs": {ch: {} for ch in self.channels}}, separators=(",", ":"))
        from urllib.parse import quote

        request = (
            f"GET /connection/uni_sse?cf_connect={quote(cf_connect)} HTTP/1.1\r\n"
            f"Host: {self.cfg.host}:{self.cfg.port}\r\n"
            "Accept: text/event-stream\r\n"
            "\r\n"
        )
        transport.write(request.encode())  # type: ignore[attr-defined]

    def _handshake_received(self, data: bytes) -> bytes:
        buf = self._handshake_buf + data
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > MAX_HANDSHAKE_RESPONSE:
                self.fail("response head too large")
            self._handshake_buf = buf
            return b""
        head, rest = buf[:end], buf[end + 4 :]
        self._handshake_buf = b""
        self._handshaking = False
        status = head.split(b"\r\n", 1)[0].split(None, 2)
        if len(status) < 2 or status[1] != b"200":
            self.fail(f"expected 200, got {head[:80].decode(errors='replace')!r}")
            return b""
        return rest

    def frames_received(self, data: bytes) -> None:
        if self._rest:
            data = self._rest + data
            self._rest = b""
        if not self.benchmarking:
            at = data.find(b'"connect"')
            if at < 0:
                self._rest = data[-16:]
                return
            self._become_ready()
            data = data[at:]
        got = data.count(MARKER)
        self._rest = data[-(len(MARKER) - 1):]  # a marker cut in two is counted with the next read
        if self._rest.count(MARKER):
            self._rest = b""
        stats = self.stats
        if got:
            stats.countdown -= got
            if stats.countdown <= 0:
                stats.countdown = stats.sample_every
                at = data.rfind(MARKER)
                if len(data) - at >= PAYLOAD_HEADER_LEN:
                    self._sample(data, at, len(data))
            stats.last_ns = time.time_ns()
            stats.delivered += got
            self.received += got
            if not self.is_complete and self.received >= self.expected:
                self.is_complete = True
                stats.complete += 1
                stats.check_done()


async def _connect_subscriber(
    cfg: Config, stats: SubscriberStats, index: int, expected: int | None, timeout: float
) -> Subscriber:
    """Open one subscriber and wait until it is ready (raises on failure)."""
    loop = asyncio.get_running_loop()
    proto: Subscriber | None = None
    try:
        _, proto = await asyncio.wait_for(
            loop.create_connection(
                lambda: (SSESubscriber if cfg.mode == "uni_sse" else Subscriber)(cfg, stats, index, expected),
                cfg.host,
                cfg.ports[index % len(cfg.ports)] if cfg.ports else cfg.port,
            ),
            timeout,
        )
        await asyncio.wait_for(proto.ready, timeout)
        return proto
    except BaseException:
        if proto is not None:  # failed after connecting: discard it
            proto.ready.cancel()
            if proto.transport is not None:
                proto.transport.abort()
        raise


async def _open_subscribers(
    cfg: Config,
    count: int,
    stats: SubscriberStats,
    first_index: int = 0,
    counts: collections.Counter[str] | None = None,
    gate: asyncio.Semaphore | None = None,
) -> tuple[list[Subscriber], collections.Counter[str]]:
    """Open ``count`` subscribers, a bounded number at a time, with retries."""
    gate = gate or asyncio.Semaphore(cfg.connect_concurrency)
    opened: list[Subscriber] = []
    errors: collections.Counter[str] = collections.Counter()
    per_attempt = min(10.0, cfg.connect_timeout)

    async def open_one(index: int) -> None:
        expected = None
        if counts is not None:
            expected = sum(counts.get(ch, 0) for ch in subscriber_channels(cfg, index))
        for attempt in range(3):
            async with gate:
                try:
                    opened.append(await _connect_subscriber(cfg, stats, index, expected, per_attempt))
                    return
                except TimeoutError:
                    errors[f"no handshake/ready reply within {per_attempt:.0f}s"] += 1
                except (OSError, HandshakeError) as exc:
                    errors[f"{type(exc).__name__}: {exc}"[:120]] += 1
            await asyncio.sleep(0.2 * (attempt + 1))

    tasks = [asyncio.ensure_future(open_one(first_index + k)) for k in range(count)]
    _, pending = await asyncio.wait(tasks, timeout=cfg.connect_timeout)
    for task in pending:
        task.cancel()
    if pending:
        errors["connect phase timed out"] += len(pending)
        await asyncio.gather(*pending, return_exceptions=True)
    return opened, errors


def _arm_reconnect(
    cfg: Config, stats: SubscriberStats, subscribers: list[Subscriber], gate: asyncio.Semaphore
) -> set[asyncio.Task[None]]:
    """--reconnect: a subscriber that loses its connection connects again.

    Retries after ``reconnect_delay`` (jittered, doubling up to 0.5 s), at
    most ``connect_concurrency`` attempts at a time, for ``timeout`` seconds.
    """
    tasks: set[asyncio.Task[None]] = set()
    per_attempt = min(10.0, cfg.connect_timeout)

    async def reconnect(old: Subscriber) -> None:
        deadline = time.monotonic() + cfg.timeout
        backoff = cfg.reconnect_delay
        await asyncio.sleep(random.uniform(0, cfg.reconnect_delay))
        while time.monotonic() < deadline:
            async with gate:
                try:
                    new = await _connect_subscriber(cfg, stats, old.index, old.expected, per_attempt)
                except TimeoutError:
                    stats.reconnect_errors["timeout"] += 1
                except (OSError, HandshakeError) as exc:
                    stats.reconnect_errors[type(exc).__name__] += 1
                else:
                    subscribers.append(new)
                    stats.reconnected += 1
                    stats.last_ready_ns = time.time_ns()
                    stats.check_done()
                    return
            await asyncio.sleep(backoff * random.uniform(0.5, 1.5))
            backoff = min(backoff * 2, 0.5)

    def on_lost(sub: Subscriber) -> None:
        if not stats.first_lost_ns:
            stats.first_lost_ns = time.time_ns()
        if sub in subscribers:
            subscribers.remove(sub)
        task = asyncio.ensure_future(reconnect(sub))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    stats.on_lost = on_lost
    return tasks


async def _subscriber_worker(cfg: Config, count: int, first_index: int, pipe: Connection) -> None:
    loop = asyncio.get_running_loop()
    stats = SubscriberStats(cfg)
    counts = expected_counts(cfg)
    gate = asyncio.Semaphore(cfg.connect_concurrency)
    started = time.perf_counter()
    subscribers, errors = await _open_subscribers(cfg, count, stats, first_index, counts, gate)
    pipe.send(
        (
            "ready",
            len(subscribers),
            dict(errors),
            time.perf_counter() - started,
            sum(max(0, sub.expected) for sub in subscribers),
        )
    )
    opened = len(subscribers)
    reconnect_tasks: set[asyncio.Task[None]] = set()
    if cfg.reconnect:
        reconnect_tasks = _arm_reconnect(cfg, stats, subscribers, gate)

    message = await loop.run_in_executor(None, pipe.recv)
    if message[0] == "go":
        deadline_ns = message[1]
        # --reconnect: the list changes as connections drop and come back
        stats.active = opened if cfg.reconnect else len(subscribers)
        for sub in subscribers:  # nothing to receive: complete already
            if not cfg.reconnect and sub.expected <= 0 and not sub.is_complete:
                sub.is_complete = True
                stats.complete += 1
        stats.check_done()
        remaining = max(0.0, (deadline_ns - time.time_ns()) / 1e9)
        try:
            await asyncio.wait_for(stats.done.wait(), remaining)
        except TimeoutError:
            pass
    stats.on_lost = None if not cfg.reconnect else (lambda sub: None)
    for task in list(reconnect_tasks):
        task.cancel()
    result = {
        "subscribers": len(subscribers),
        "delivered": stats.delivered,
        "complete": stats.complete,
        "lost": stats.lost,
        "last_ns": stats.last_ns,
        "latencies_ns": stats.latencies_ns,
        "bad_samples": stats.bad_samples,
        "first_lost_ns": stats.first_lost_ns,
        "reconnected": stats.reconnected,
        "last_ready_ns": stats.last_ready_ns,
        "reconnect_errors": dict(stats.reconnect_errors),
    }
    pipe.send(("result", result))
    if cfg.linger:
        await asyncio.sleep(cfg.linger)
    await close_all(subscribers, grace=3.0)


def subscriber_worker(cfg: Config, count: int, first_index: int, pipe: Connection) -> None:
    """Entry point of a subscriber worker process.

    Protocol with the coordinator over ``pipe``: send ``("ready", opened,
    errors, seconds)``; receive ``("go", deadline_ns)`` or ``("stop",)``;
    send ``("result", dict)``.  Any failure is sent as ``("error", text)``.
    """
    raise_nofile_limit()
    try:
        asyncio.run(_subscriber_worker(cfg, count, first_index, pipe))
    except BaseException as exc:  # report, never hang the coordinator
        try:
            pipe.send(("error", f"{type(exc).__name__}: {exc}"))
        except OSError:
            pass
        raise


# ---------------------------------------------------------------------------
# Producer (coordinator process)
# ---------------------------------------------------------------------------


class Producer(WSClient):
    """Publishes the benchmark messages over a single connection."""

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        self.centrifugo = cfg.mode == "centrifugo"
        self.engineio = cfg.mode == "socketio"
        self._rest = b""
        self._window = asyncio.Semaphore(cfg.window)
        self.replies = 0
        self.reply_errors = 0
        self.all_replied = asyncio.Event()
        self.last_reply_ns = 0

    def handshake_done(self) -> None:
        if self.centrifugo:
            self.send(b'{"id":1,"connect":{}}')  # ready on the reply
        elif not self.engineio:  # Engine.IO: ready on the connect acknowledgement
            self.set_ready()

    def frames_received(self, data: bytes) -> None:
        frames, self._rest = split_frames(self._rest + data)
        for _fin, opcode, payload, _end in frames:
            if opcode >= 0x8:
                self.control_frame(opcode, payload)
            elif self.centrifugo:
                for line in payload.split(b"\n"):
                    if line.strip() == b"{}":  # a ping
                        self.send(b"{}")
                    elif line.strip():
                        self._centrifugo_reply(line)
            elif self.engineio:
                if payload == b"2":
                    self.send(b"3")
                elif payload[:2] == b"0{":
                    self.send(b"40")
                elif payload[:3] == b"40{":
                    self.set_ready()
                elif payload[:2] == b"44":
                    self.fail(f"connect refused: {payload[:200]!r}")
            # otherwise the server echoes our own messages back; drop them.

    def _centrifugo_reply(self, line: bytes) -> None:
        try:
            reply = json.loads(line)
        except ValueError:
            return
        if not isinstance(reply, dict):
            return
        reply_id = reply.get("id")
        if reply_id == 1:
            if "error" in reply:
                self.fail(f"connect refused: {line[:200]!r}")
            else:
                self.set_ready()
        elif isinstance(reply_id, int) and reply_id > 1:
            self.replies += 1
            self.last_reply_ns = time.time_ns()
            if "error" in reply:
                self.reply_errors += 1
            self._window.release()
            if self.replies >= self.cfg.messages:
                self.all_replied.set()

    async def publish_all(self) -> tuple[int, int]:
        """Publish every message; return (first, last) publish time in ns."""
        cfg = self.cfg
        mode = cfg.mode
        plan = publication_plan(cfg) if cfg.groups > 0 else None
        single = cfg.channel.encode()
        interval = 1.0 / cfg.rate if cfg.rate > 0 else 0.0
        start = self.loop.time()
        first_ns = 0
        for seq in range(cfg.messages):
            if interval:
                delay = start + seq * interval - self.loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            channel = plan[seq].encode() if plan is not None else single
            if self.centrifugo:
                await self._window.acquire()
                payload = make_payload(seq, cfg.size)
                message = b'{"id":%d,"publish":{"channel":%s,"data":{"p":"%s"}}}' % (
                    seq + 2,
                    json.dumps(channel.decode()).encode(),
                    payload,
                )
            elif mode == "socketio":
                payload = make_payload(seq, cfg.size)
                if plan is not None:
                    message = b'42["pub","%s","%s"]' % (channel, payload)
                else:
                    message = b'42["pub","%s"]' % payload
            elif mode == "pubsub":
                message = b"pub %s %s" % (channel, make_payload(seq, cfg.size))
            else:
                message = make_payload(seq, cfg.size)
            if not first_ns:
                first_ns = time.time_ns()
            self.send(message)
            await self.drain()
            if self.closed:
                raise HandshakeError("producer connection lost while publishing")
        return first_ns, time.time_ns()


# ---------------------------------------------------------------------------
# Coordinator
# ---------------------------------------------------------------------------


def _recv(pipe: Connection, timeout: float) -> tuple:
    """Receive one message from a worker, or ("error", ...) on timeout/EOF."""
    try:
        if pipe.poll(timeout):
            return pipe.recv()
        return ("error", f"no answer within {timeout:.0f}s")
    except (EOFError, OSError) as exc:
        return ("error", f"worker died: {exc!r}")


async def _produce(cfg: Config, pipes: list[Connection]) -> dict:
    """Connect the producer, start the workers' clocks, publish, collect."""
    loop = asyncio.get_running_loop()
    try:
        _, producer = await asyncio.wait_for(
            loop.create_connection(lambda: Producer(cfg), cfg.host, cfg.port), 10
        )
        await asyncio.wait_for(producer.ready, 10)
    except (TimeoutError, OSError, HandshakeError) as exc:
        for pipe in pipes:
            pipe.send(("stop",))
        return {"producer_error": f"producer could not connect: {type(exc).__name__}: {exc}"}
    await asyncio.sleep(cfg.settle)

    deadline_ns = time.time_ns() + int(cfg.timeout * 1e9)
    for pipe in pipes:
        pipe.send(("go", deadline_ns))
    publish_error = None
    first_ns = last_ns = 0
    try:
        first_ns, last_ns = await asyncio.wait_for(producer.publish_all(), cfg.timeout)
        if producer.centrifugo:
            remaining = max(0.0, (deadline_ns - time.time_ns()) / 1e9)
            await asyncio.wait_for(producer.all_replied.wait(), remaining)
    except (TimeoutError, HandshakeError) as exc:
        publish_error = f"{type(exc).__name__}: {exc}"

    wait = cfg.timeout + 30
    replies = await asyncio.gather(*(loop.run_in_executor(None, _recv, p, wait) for p in pipes))
    if cfg.done_file:
        Path(cfg.done_file).write_text(str(time.time_ns()))
    await close_all([producer], grace=1.0)
    return {
        "first_publish_ns": first_ns,
        "last_publish_ns": last_ns,
        "publish_error": publish_error,
        "publish_replies": producer.replies if producer.centrifugo else None,
        "publish_reply_errors": producer.reply_errors if producer.centrifugo else None,
        "last_reply_ns": producer.last_reply_ns,
        "worker_replies": replies,
    }


def _start_workers(cfg: Config, total: int, first_index: int, procs: int) -> list[tuple]:
    """Start up to ``procs`` worker processes sharing ``total`` subscribers.

    Workers are forked where the platform can (no event loop runs in the
    coordinator at that point), which starts them in milliseconds.
    """
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    procs = max(1, min(procs, total))
    shares = [total // procs + (i < total % procs) for i in range(procs)]
    workers = []
    index = first_index
    for share in shares:
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=subscriber_worker, args=(cfg, share, index, child), daemon=True)
        proc.start()
        child.close()
        workers.append((proc, parent))
        index += share
    return workers


def _collect_ready(cfg: Config, pipes: list[Connection], phase: dict, errors: list[str]) -> None:
    """Wait for the workers' ``ready`` messages; add them up in ``phase``."""
    for reply in [_recv(pipe, cfg.connect_timeout + 30) for pipe in pipes]:
        if reply[0] == "ready":
            phase["opened"] += reply[1]
            phase["errors"].update(reply[2])
            phase["seconds"] = max(phase["seconds"], reply[3])
            phase["expected"] += reply[4]
        else:
            errors.append(str(reply[1]))


def run(cfg: Config) -> dict:
    """Run one benchmark and return the result as a JSON-friendly dict."""
    raise_nofile_limit()
    workers: list[tuple] = []
    errors: list[str] = []
    extra: dict = {}
    try:
        # 1. Subscribers connect (and subscribe); --warmup ones first.
        warm = min(cfg.warmup, cfg.subscribers - 1) if cfg.idle else 0
        if warm > 0:
            workers += _start_workers(cfg, warm, 0, 1)
            warm_phase = {"opened": 0, "errors": collections.Counter(), "seconds": 0.0, "expected": 0}
            _collect_ready(cfg, [w[1] for w in workers], warm_phase, errors)
            extra["warmup"] = warm_phase["opened"]
            time.sleep(0.2)
        if cfg.rss_pid:
            extra["rss_before_kib"] = read_rss_kib(cfg.rss_pid)
        cpu_before = read_cpu_s(cfg.cpu_pid) if cfg.cpu_pid else None
        main = _start_workers(cfg, cfg.subscribers - warm, warm, cfg.procs)
        workers += main
        phase = {"opened": 0, "errors": collections.Counter(), "seconds": 0.0, "expected": 0}
        _collect_ready(cfg, [w[1] for w in main], phase, errors)
        cpu_after = read_cpu_s(cfg.cpu_pid) if cfg.cpu_pid else None
        if cpu_before is not None and cpu_after is not None and phase["opened"]:
            extra["server_cpu_connect_s"] = round(cpu_after - cpu_before, 3)
            extra["server_cpu_per_connect_us"] = round(1e6 * (cpu_after - cpu_before) / phase["opened"], 1)
        opened = phase["opened"] + extra.get("warmup", 0)
        connect_s = phase["seconds"]
        if phase["opened"] and connect_s > 0:
            extra["connects_per_s"] = round(phase["opened"] / connect_s, 1)
        log(f"{opened}/{cfg.subscribers} subscribers ready in {connect_s:.2f}s")
        pipes = [pipe for _, pipe in workers]
        if opened == 0 or errors:
            for pipe in pipes:
                try:
                    pipe.send(("stop",))
                except OSError:
                    pass
            return _report(cfg, opened, connect_s, phase, errors, None, extra)
        if cfg.ready_file:
            Path(cfg.ready_file).write_text(str(os.getpid()))
        if cfg.idle:
            return _report(cfg, opened, connect_s, phase, errors, _hold(cfg, pipes, opened, extra), extra)
        # 2. Publish, then 3. collect the workers' results.
        cpu_before = read_cpu_s(cfg.cpu_pid) if cfg.cpu_pid else None
        produced = asyncio.run(_produce(cfg, pipes))
        cpu_after = read_cpu_s(cfg.cpu_pid) if cfg.cpu_pid else None
        if cpu_before is not None and cpu_after is not None:
            extra["server_cpu_deliver_s"] = round(cpu_after - cpu_before, 3)
        return _report(cfg, opened, connect_s, phase, errors, produced, extra)
    finally:
        for proc, pipe in workers:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join()
            pipe.close()


def _hold(cfg: Config, pipes: list[Connection], opened: int, extra: dict) -> dict:
    """--idle: hold the connections, measure memory, maybe await reconnects."""
    time.sleep(cfg.hold)
    if cfg.rss_pid:
        extra["rss_after_kib"] = read_rss_kib(cfg.rss_pid)
        before, after = extra.get("rss_before_kib"), extra["rss_after_kib"]
        counted = opened - extra.get("warmup", 0)
        if before is not None and after is not None and counted > 0:
            extra["rss_per_connection_kib"] = round((after - before) / counted, 2)
    deadline_ns = time.time_ns() + int(cfg.timeout * 1e9)
    if cfg.reconnect:
        print(json.dumps({"event": "ready", "subscribers": opened}), flush=True)
        for pipe in pipes:
            pipe.send(("go", deadline_ns))
    else:
        for pipe in pipes:
            pipe.send(("stop",))
    replies = [_recv(pipe, cfg.timeout + 30) for pipe in pipes]
    return {
        "first_publish_ns": 0,
        "last_publish_ns": 0,
        "publish_error": None,
        "publish_replies": None,
        "worker_replies": replies,
    }


def _report(
    cfg: Config,
    opened: int,
    connect_s: float,
    phase: dict,
    errors: list[str],
    produced: dict | None,
    extra: dict,
) -> dict:
    """Aggregate worker results into the final report."""
    expected = 0 if cfg.idle else phase["expected"]
    report: dict = {
        "host": cfg.host,
        "port": cfg.port,
        "ports": list(cfg.ports),
        "path": cfg.path,
        "mode": cfg.mode,
        "count": cfg.count,
        "subscribers_requested": cfg.subscribers,
        "subscribers": opened,
        "procs": cfg.procs,
        "messages": 0 if cfg.idle else cfg.messages,
        "size": cfg.size,
        "rate": cfg.rate,
        "groups": cfg.groups,
        "connect_s": round(connect_s, 3),
        "connect_errors": dict(phase["errors"]),
        "expected": expected,
        "delivered": 0,
        "complete": False,
        "deliveries_per_s": 0.0,
        "duration_s": None,
        "publish_s": None,
        "lost_connections": 0,
        "bad_samples": 0,
        "latency_ms": {},
        "errors": errors,
    }
    report.update(extra)
    if produced is None:
        return report
    if "producer_error" in produced:
        errors.append(produced["producer_error"])
        return report
    if produced["publish_error"]:
        errors.append(produced["publish_error"])
    if produced["publish_replies"] is not None:
        report["publish_replies"] = produced["publish_replies"]
        report["publish_reply_errors"] = produced["publish_reply_errors"]
        if produced["publish_reply_errors"]:
            errors.append(f"{produced['publish_reply_errors']} publish commands refused")
    latencies: list[int] = []
    last_ns = 0
    first_lost_ns = last_ready_ns = reconnected = 0
    reconnect_errors: collections.Counter[str] = collections.Counter()
    for reply in produced["worker_replies"]:
        if reply[0] != "result":
            errors.append(str(reply[1]))
            continue
        result = reply[1]
        report["delivered"] += result["delivered"]
        report["lost_connections"] += result["lost"]
        report["bad_samples"] += result["bad_samples"]
        latencies.extend(result["latencies_ns"])
        last_ns = max(last_ns, result["last_ns"])
        if result["first_lost_ns"]:
            first_lost_ns = min(first_lost_ns or result["first_lost_ns"], result["first_lost_ns"])
        last_ready_ns = max(last_ready_ns, result["last_ready_ns"])
        reconnected += result["reconnected"]
        reconnect_errors.update(result["reconnect_errors"])
    if cfg.reconnect:
        report["reconnected"] = reconnected
        report["first_lost_ns"] = first_lost_ns
        report["last_ready_ns"] = last_ready_ns
        report["reconnect_attempt_errors"] = dict(reconnect_errors)
        if first_lost_ns and last_ready_ns:
            report["reconnect_s"] = round((last_ready_ns - first_lost_ns) / 1e9, 3)
        report["complete"] = reconnected >= opened and not errors
        return report
    if cfg.idle:
        report["complete"] = not errors
        return report
    first_ns = produced["first_publish_ns"]
    if first_ns and produced["last_publish_ns"]:
        report["publish_s"] = round((produced["last_publish_ns"] - first_ns) / 1e9, 4)
    if first_ns and last_ns > first_ns:
        duration = (last_ns - first_ns) / 1e9
        report["duration_s"] = round(duration, 4)
        report["deliveries_per_s"] = round(report["delivered"] / duration, 1)
    report["complete"] = report["delivered"] >= expected and not errors
    if report.get("server_cpu_deliver_s") is not None and report["delivered"]:
        report["server_cpu_per_delivery_us"] = round(1e6 * report["server_cpu_deliver_s"] / report["delivered"], 3)
    if report.get("server_cpu_deliver_s") is not None and cfg.messages:
        report["server_cpu_per_publication_us"] = round(1e6 * report["server_cpu_deliver_s"] / cfg.messages, 1)
    latencies.sort()
    if latencies:
        report["latency_ms"] = {
            "samples": len(latencies),
            "p50": percentile(latencies, 50) / 1e6,
            "p99": percentile(latencies, 99) / 1e6,
            "p99.9": percentile(latencies, 99.9) / 1e6,
            "max": latencies[-1] / 1e6,
        }
    return report


def format_report(report: dict) -> str:
    """Human-readable summary of a report."""
    lat = report["latency_ms"]
    lines = [
        f"target          {report['host']}:{report['port']}{report['path']} ({report['mode']})",
        f"subscribers     {report['subscribers']}/{report['subscribers_requested']} "
        f"in {report['procs']} process(es), connected in {report['connect_s']}s"
        + (f" ({report['connects_per_s']:,.0f}/s)" if report.get("connects_per_s") else ""),
    ]
    if report["messages"]:
        lines += [
            f"published       {report['messages']} x {report['size']} B"
            + (f" to {report['groups']} groups + personal channels" if report["groups"] else "")
            + (f" in {report['publish_s']}s" if report["publish_s"] is not None else ""),
            f"delivered       {report['delivered']}/{report['expected']}"
            + ("" if report["complete"] else "  ** INCOMPLETE **"),
            f"duration        {report['duration_s']} s (first publish -> last delivery)",
            f"deliveries/s    {report['deliveries_per_s']:,.0f}",
        ]
    if lat:
        lines.append(
            f"latency ms      p50 {lat['p50']:.2f}  p99 {lat['p99']:.2f}  "
            f"p99.9 {lat['p99.9']:.2f}  max {lat['max']:.2f}  ({lat['samples']} samples)"
        )
    if report.get("rss_after_kib") is not None:
        lines.append(
            f"server RSS      {report.get('rss_before_kib')} KiB after {report.get('warmup', 0)} warm-up "
            f"connections, {report['rss_after_kib']} KiB after all: "
            f"{report.get('rss_per_connection_kib')} KiB per connection"
        )
    if report.get("server_cpu_per_connect_us") is not None:
        lines.append(
            f"server CPU      {report['server_cpu_connect_s']} s while connecting: "
            f"{report['server_cpu_per_connect_us']} us per connection"
        )
    if "reconnected" in report:
        lines.append(
            f"reconnected     {report['reconnected']}/{report['subscribers']} in {report.get('reconnect_s')} s "
            f"(first loss -> last ready); failed attempts {report['reconnect_attempt_errors']}"
        )
    for key in ("lost_connections", "bad_samples"):
        if report[key]:
            lines.append(f"{key:<16}{report[key]}")
    if report["connect_errors"]:
        lines.append(f"connect errors  {report['connect_errors']}")
    for error in report["errors"]:
        lines.append(f"error           {error}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> tuple[Config, bool]:
    parser = argparse.ArgumentParser(
        description="WebSocket fan-out load generator (subscribers in separate processes).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument(
        "--port",
        required=True,
        help="server port; several comma-separated ports (one server each) spread the subscribers "
        "over them round-robin, and the producer uses the first",
    )
    parser.add_argument("--path", default="/", help="WebSocket request path")
    parser.add_argument("--mode", choices=["raw", "centrifugo", "socketio", "pubsub", "uni_sse"], default="raw")
    parser.add_argument("--sub-format", choices=["json", "protobuf"], default="json",
                        help="centrifugo: the subscribers' protocol format (the producer speaks JSON)")
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--procs", type=int, default=1, help="subscriber processes")
    parser.add_argument("--messages", type=int, default=500, help="publications")
    parser.add_argument("--size", type=int, default=100, help=f"payload bytes (>= {PAYLOAD_HEADER_LEN})")
    parser.add_argument("--rate", type=float, default=0.0, help="publications/s (0: as fast as possible)")
    parser.add_argument("--window", type=int, default=100, help="centrifugo: publications in flight")
    parser.add_argument("--channel", default="bench", help="channel (centrifugo, pubsub)")
    parser.add_argument(
        "--groups",
        type=int,
        default=0,
        help="many channels: each subscriber joins its own channel and one of GROUPS group channels",
    )
    parser.add_argument("--personal-share", type=float, default=0.5,
                        help="many channels: share of publications to personal channels")
    parser.add_argument("--seed", type=int, default=1, help="many channels: RNG seed of the channel plan")
    parser.add_argument(
        "--sub-send",
        action="append",
        default=None,
        help="text message a subscriber sends after connecting (repeatable); "
        "centrifugo default: connect, then one subscribe per channel",
    )
    parser.add_argument(
        "--sub-ready",
        default=None,
        help="substring of the reply that makes a subscriber ready "
        "(centrifugo default: the JSON reply to the last subscribe, see --sub-ready-id)",
    )
    parser.add_argument(
        "--sub-ready-id",
        type=int,
        default=None,
        help="id of the JSON reply (newline-separated replies allowed) that makes a subscriber ready",
    )
    parser.add_argument(
        "--count",
        choices=["frames", "marker"],
        default=None,
        help="count data messages, or payload markers (handles batched frames); "
        "default: marker for centrifugo and socketio, frames otherwise",
    )
    parser.add_argument("--sample-every", type=int, default=100, help="decode every Nth delivery")
    parser.add_argument("--timeout", type=float, default=30.0, help="delivery (or reconnect) phase limit, s")
    parser.add_argument("--connect-timeout", type=float, default=60.0, help="connect phase limit, s")
    parser.add_argument("--connect-concurrency", type=int, default=100)
    parser.add_argument("--settle", type=float, default=0.5, help="pause between ready and publishing, s")
    parser.add_argument("--idle", action="store_true", help="connect and hold; publish nothing")
    parser.add_argument("--rss-pid", type=int, default=None, help="--idle: report this process's RSS")
    parser.add_argument("--cpu-pid", type=int, default=None,
                        help="report this process's CPU time spent while the subscribers connect, and "
                        "from the first publication to the last delivery (server CPU µs per delivery)")
    parser.add_argument("--warmup", type=int, default=0,
                        help="--idle: connections opened before the first RSS reading")
    parser.add_argument("--hold", type=float, default=1.0, help="--idle: seconds to hold before measuring")
    parser.add_argument("--reconnect", action="store_true",
                        help="--idle: print a ready event, then wait until every subscriber reconnected")
    parser.add_argument("--reconnect-delay", type=float, default=0.1,
                        help="--reconnect: first retry delay (jittered, doubles up to 0.5 s)")
    parser.add_argument("--ready-file", default=None,
                        help="write this file once every subscriber is ready (e.g. to start a profiler)")
    parser.add_argument("--done-file", default=None,
                        help="write this file once every subscriber has reported (e.g. to stop a profiler)")
    parser.add_argument("--linger", type=float, default=0.0,
                        help="seconds subscribers stay connected after reporting, before closing")
    parser.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    args = parser.parse_args(argv)

    try:
        ports = [int(p) for p in args.port.split(",") if p.strip()]
    except ValueError:
        parser.error("--port takes integers separated by commas")
    if not ports:
        parser.error("--port is empty")
    if args.size < PAYLOAD_HEADER_LEN:
        parser.error(f"--size must be at least {PAYLOAD_HEADER_LEN}")
    if args.subscribers < 1 or args.procs < 1 or args.messages < 1:
        parser.error("--subscribers, --procs and --messages must be positive")
    if args.procs > args.subscribers:
        parser.error("--procs cannot exceed --subscribers")
    if args.sample_every < 1 or args.window < 1:
        parser.error("--sample-every and --window must be positive")
    if args.reconnect and not args.idle:
        parser.error("--reconnect needs --idle")
    if args.groups and args.sub_send:
        parser.error("--groups builds the subscribe messages itself; drop --sub-send")
    count = args.count or ("marker" if args.mode in ("centrifugo", "socketio", "uni_sse") else "frames")
    cfg = Config(
        host=args.host,
        port=ports[0],
        ports=tuple(ports) if len(ports) > 1 else (),
        path=args.path,
        mode=args.mode,
        sub_format=args.sub_format,
        subscribers=args.subscribers,
        procs=args.procs,
        messages=args.messages,
        size=args.size,
        rate=args.rate,
        window=args.window,
        channel=args.channel,
        sub_send=args.sub_send,
        sub_ready=args.sub_ready,
        sub_ready_id=args.sub_ready_id,
        count=count,
        sample_every=args.sample_every,
        timeout=args.timeout,
        connect_timeout=args.connect_timeout,
        connect_concurrency=args.connect_concurrency,
        settle=args.settle,
        groups=args.groups,
        personal_share=args.personal_share,
        seed=args.seed,
        idle=args.idle,
        rss_pid=args.rss_pid,
        cpu_pid=args.cpu_pid,
        warmup=args.warmup,
        hold=args.hold,
        reconnect=args.reconnect,
        reconnect_delay=args.reconnect_delay,
        ready_file=args.ready_file,
        done_file=args.done_file,
        linger=args.linger,
    )
    return cfg, args.json


def main(argv: list[str] | None = None) -> int:
    cfg, as_json = parse_args(argv)
    report = run(cfg)
    if as_json:
        print(json.dumps(report))
    else:
        print(format_report(report))
    return 0 if report["complete"] else 1


if __name__ == "__main__":
    sys.exit(main())
