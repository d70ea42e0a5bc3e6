#!/usr/bin/env python3
"""Connect-rate generator for the hubbub benchmarks (workload 5).

Opens ``--subscribers`` WebSocket clients as cheaply as Python allows, so
that the connect rate it reports is the server's, not its own: no asyncio,
no per-connection objects beyond one small record, non-blocking sockets and
one ``select.epoll`` loop per process (``--procs``).  At most
``--connect-concurrency`` handshakes are in flight (split over the
processes).  Each client is a small state machine:

1. TCP connect: ``connect_ex`` (EINPROGRESS).  On loopback the kernel has
   usually finished the TCP handshake by the time ``connect`` returns, so the
   HTTP upgrade request is sent right away; if the socket is not connected
   yet (EAGAIN), the client waits for EPOLLOUT and checks ``SO_ERROR``.
2. The upgrade request (built once per process, with one random
   ``Sec-WebSocket-Key`` and its expected ``Sec-WebSocket-Accept``); the
   response must be ``101`` with that accept value.
3. The subscribe exchange of ``--mode`` (the same as ``loadgen.py``):

   ``raw``
       ready right after the 101 (the server subscribes on connect: hubbub's
       relay ``/ws/bench``, the websockets baseline, socketify, trivial).
   ``centrifugo``
       one masked text frame ``{"id":1,"connect":{}}\\n{"id":2,"subscribe":
       {"channel":"bench"}}``; ready on the reply with ``"id":2`` (replies may
       be batched, newline separated); a reply with ``"error"`` fails the
       attempt.  Server pings ``{}`` are answered with ``{}``.
       With ``--sub-format protobuf`` the client asks for the
       ``centrifuge-protobuf`` subprotocol and sends connect + subscribe as
       two length-prefixed Protobuf ``Command`` messages in one binary frame;
       ready on the ``Reply`` with id 2; the ping (an empty ``Reply``) is
       answered with an empty ``Command``.
   ``socketio``
       Engine.IO v4 open packet ``0{...}`` answered with ``40``; ready on the
       Socket.IO connect acknowledgement ``40...``; ``44`` fails the attempt;
       Engine.IO pings ``2`` are answered with ``3``.

4. Hold: ready clients stay registered for EPOLLIN; WebSocket pings are
   answered with masked pongs; EOF, a reset or a close frame means lost.

Failed attempts (refused, reset, per-attempt timeout, non-101, refused
subscription) are counted by kind and retried after a short backoff, at
most 3 attempts per client in the initial phase.

``--reconnect``: once every client is ready and ``--hold`` seconds have
passed, the line ``{"event": "ready", ...}`` is printed on stdout; the caller
then kills and restarts the server.  Every client that loses its connection
connects and subscribes again (first try after 0..``--reconnect-delay`` s,
then ``delay * U(0.5, 1.5)`` with the delay doubling up to 0.5 s, at most
``--connect-concurrency`` attempts in flight) until all are back or
``--timeout`` has passed.  The JSON report (``--json``) is the last line on
stdout.

Cost (``client_cpu_per_connect_us`` in the report; 2-core machine, server on
loopback): 30-45 µs of the generator's own CPU per connect + handshake against
fast servers (trivial, socketify, hubbub's relay), 80-90 % of it in the kernel
(socket, the loopback TCP handshake, close); more against slow servers
(socket.io: ~130 µs), where every ``epoll_wait`` returns one event and each
reply costs a wakeup.  ``loadgen.py``'s asyncio clients cost ~200 µs.  Against
``bench/servers/trivial.py`` one process reaches 8,000-14,000 connects/s
(trivial's own ~55-90 µs per handshake is the limit, so ``--procs 2`` does
not help there); against socketify (~35 µs) one process reaches
14,000-22,000/s and ``--procs 2`` 27,000-31,000/s.

Example::

    python bench/connectgen.py --port 8000 --path /ws/bench --subscribers 5000 --json
    python bench/connectgen.py --port 8000 --path /connection/websocket --mode centrifugo \\
        --subscribers 5000 --reconnect --cpu-pid SERVER_PID --json
"""

from __future__ import annotations

import argparse
import base64
import collections
import errno
import hashlib
import heapq
import json
import multiprocessing
import os
import random
import select
import socket
import struct
import sys
import time
from multiprocessing.connection import Connection, wait

from loadgen import (  # bench/loadgen.py: the same wire helpers
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    WS_GUID,
    client_frame,
    pb_command,
    pb_replies,
    pb_string,
    raise_nofile_limit,
    read_cpu_s,
    split_frames,
)

MAX_RESPONSE = 16 * 1024  # handshake response
MAX_MESSAGE = 1 << 20  # one server message, pre-ready or while holding
RECV_SIZE = 16 * 1024
INITIAL_ATTEMPTS = 3
SWEEP_S = 0.05  # how often in-flight attempts are checked for their timeout
CLOSE_GRACE_S = 2.0

EPOLLIN, EPOLLOUT = select.EPOLLIN, select.EPOLLOUT

# client states
IDLE, QUEUED, CONNECTING, HANDSHAKE, SUBSCRIBING, READY, CLOSING = range(7)


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def log(message: str) -> None:
    """Progress messages go to stderr so stdout can carry the result."""
    print(f"[connectgen] {message}", file=sys.stderr, flush=True)


def own_cpu_s() -> float:
    """CPU time (user + system) of this process alone."""
    t = os.times()
    return t.user + t.system


def own_sys_s() -> float:
    """System (kernel) CPU time of this process alone."""
    return os.times().system


def error_kind(err: int | OSError) -> str:
    """A short name for a socket error: the OSError subclass, e.g. ConnectionRefusedError."""
    if isinstance(err, int):
        err = OSError(err, os.strerror(err))
    return type(err).__name__


CENTRIFUGO_COMMANDS = (b'{"id":1,"connect":{}}', b'{"id":2,"subscribe":{"channel":"bench"}}')
CENTRIFUGO_SUBSCRIBE = client_frame(b"\n".join(CENTRIFUGO_COMMANDS))
CENTRIFUGO_PONG = client_frame(b"{}")
PROTOBUF_SUBSCRIBE = client_frame(pb_command(1, 4, b"") + pb_command(2, 5, pb_string(1, b"bench")), OP_BINARY)
PROTOBUF_PONG = client_frame(b"\x00", OP_BINARY)
ENGINEIO_CONNECT = client_frame(b"40")
ENGINEIO_PONG = client_frame(b"3")
CLOSE_FRAME = client_frame(struct.pack("!H", 1000), OP_CLOSE)


class Client:
    """One client slot; reused by every attempt of that client."""

    __slots__ = (
        "back",
        "backoff",
        "buf",
        "deadline",
        "fd",
        "frag",
        "frag_op",
        "index",
        "out",
        "pos",
        "reconnecting",
        "sock",
        "state",
        "tries",
    )

    def __init__(self, index: int) -> None:
        self.index = index
        self.sock: socket.socket | None = None
        self.fd = -1
        self.state = IDLE
        self.buf = b""
        self.out = b""  # bytes the socket did not take yet
        self.frag: list[bytes] = []
        self.frag_op = OP_TEXT
        self.deadline = 0.0
        self.tries = 0  # failed attempts in the initial phase
        self.reconnecting = False  # lost after the initial phase, not back yet
        self.back = False  # reconnected at least once
        self.backoff = 0.0
        #: --recover: [last offset, epoch, ended] of the client's stream (None until subscribed once)
        self.pos: list | None = None


# ---------------------------------------------------------------------------
# Worker: one epoll loop
# ---------------------------------------------------------------------------


class Worker:
    """Opens ``count`` clients and holds them; talks to the parent over ``ctrl``.

    Messages to the parent: ``("ready", dict)`` once the initial phase is
    over, ``("result", dict)`` at the end.  From the parent: ``("go",
    deadline_ns)`` (--reconnect: start of the reconnect phase) or
    ``("stop",)``.
    """

    def __init__(self, args: argparse.Namespace, addr: tuple[str, int], count: int, first: int,
                 concurrency: int, ctrl: Connection) -> None:
        self.args = args
        self.addr = addr
        self.mode = args.mode
        self.protobuf = args.mode == "centrifugo" and args.sub_format == "protobuf"
        self.ctrl = ctrl
        self.concurrency = max(1, concurrency)
        self.attempt_timeout = min(args.attempt_timeout, args.connect_timeout)
        key = base64.b64encode(os.urandom(16))
        self.accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
        self.request = (
            f"GET {args.path} HTTP/1.1\r\n"
            f"Host: {args.host}:{args.port}\r\n"
            "Upgrade: websocket\r\n"
            "Connection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key.decode()}\r\n"
            "Sec-WebSocket-Version: 13\r\n"
            + ("Sec-WebSocket-Protocol: centrifuge-protobuf\r\n" if self.protobuf else "")
            + "".join(f"{header}\r\n" for header in args.header)
            + "\r\n"
        ).encode()
        self.subscribe_frame = CENTRIFUGO_SUBSCRIBE
        if args.token:
            connect = json.dumps({"id": 1, "connect": {"token": args.token}}, separators=(",", ":")).encode()
            self.subscribe_frame = client_frame(connect + b"\n" + CENTRIFUGO_COMMANDS[1])
        self.recover_channel = args.recover_channel
        if self.recover_channel:
            self.subscribe_frame = self._subscribe_frame(None)
        #: --recover counts: offsets skipped, offsets seen twice, recover replies with recovered false,
        #: epoch changes, publications seen
        self.rec = collections.Counter()
        self.clients = [Client(first + k) for k in range(count)]
        self.count = count
        self.ep = select.epoll()
        self.by_fd: dict[int, Client] = {}
        self.queue: collections.deque[Client] = collections.deque()
        self.timers: list[tuple[float, int, Client]] = []
        self.inflight: set[Client] = set()
        self.rng = random.Random()
        # initial phase
        self.initial = True
        self.ready_count = 0
        self.gave_up = 0
        self.connect_errors: collections.Counter[str] = collections.Counter()
        self.start_ns = 0
        self.ready_ns = 0
        self.cpu_connect_s = 0.0
        self.sys_connect_s = 0.0
        self.sys0 = 0.0
        self.wakeups = 0  # epoll_wait calls that returned events, initial phase
        self.opened = 0
        self.phase_deadline = 0.0
        # after the initial phase
        self.go = False
        self.stop = False
        self.deadline = 0.0
        self.first_lost_ns = 0
        self.last_ready_ns = 0
        self.losses = 0
        self.reconnected = 0  # distinct clients back after a loss
        self.reconnect_errors: collections.Counter[str] = collections.Counter()
        self.lost_connections = 0  # without --reconnect
        self.cpu_hold_start = 0.0

    def _subscribe_frame(self, pos: list | None) -> bytes:
        """--recover: connect, then subscribe recoverable; after a loss with the last offset and epoch."""
        sub: dict = {"channel": self.recover_channel, "recoverable": True}
        if pos is not None:
            sub.update(recover=True, offset=pos[0], epoch=pos[1])
        connect = {"token": self.args.token} if self.args.token else {}
        return client_frame(json.dumps({"id": 1, "connect": connect}, separators=(",", ":")).encode() + b"\n"
                            + json.dumps({"id": 2, "subscribe": sub}, separators=(",", ":")).encode())

    def _ended(self) -> bool:
        return all(c.pos is not None and c.pos[2] for c in self.clients if c.state == READY)

    def _publication(self, c: Client, pub: dict) -> None:
        """--recover: one publication of the channel, live or recovered: count gaps and repeats."""
        pos = c.pos
        offset = pub.get("offset")
        if pos is None or not isinstance(offset, int):
            return
        self.rec["publications"] += 1
        if offset <= pos[0]:
            self.rec["duplicated"] += 1
            return
        if offset > pos[0] + 1:
            self.rec["lost"] += offset - pos[0] - 1
        pos[0] = offset
        data = pub.get("data")
        if isinstance(data, dict) and data.get("end"):
            pos[2] = True

    def _subscribed(self, c: Client, result: dict) -> None:
        """--recover: the subscribe reply: the stream position, and the recovered publications."""
        epoch, offset = result.get("epoch", ""), result.get("offset", 0)
        pos = c.pos
        if pos is None:
            c.pos = [offset, epoch, False]
            return
        if result.get("was_recovering") and not result.get("recovered"):
            self.rec["unrecovered"] += 1
            if epoch == pos[1] and isinstance(offset, int) and offset > pos[0]:
                self.rec["lost"] += offset - pos[0]  # the client starts again from the top
                pos[0] = offset
        if epoch != pos[1]:
            self.rec["epoch_changed"] += 1
            pos[0], pos[1] = offset, epoch
        for pub in result.get("publications") or ():
            self._publication(c, pub)

    # -- the loop ------------------------------------------------------------

    def run(self) -> None:
        ep = self.ep
        ctrl_fd = self.ctrl.fileno()
        ep.register(ctrl_fd, EPOLLIN)
        self.queue.extend(self.clients)
        for c in self.clients:
            c.state = QUEUED
        cpu0 = own_cpu_s()
        self.sys0 = own_sys_s()
        self.start_ns = time.time_ns()
        now = time.monotonic()
        self.phase_deadline = now + self.args.connect_timeout
        next_sweep = now + SWEEP_S
        by_fd = self.by_fd
        poll = ep.poll
        on_handshake, on_frames, on_connected = self._on_handshake, self._on_frames, self._on_connected
        while True:
            now = time.monotonic()
            timers = self.timers
            while timers and timers[0][0] <= now:
                c = heapq.heappop(timers)[2]
                c.state = QUEUED
                self.queue.append(c)
            if now >= next_sweep:
                next_sweep = now + SWEEP_S
                for c in [c for c in self.inflight if c.deadline <= now]:
                    self._fail(c, "timeout")
                if self._phase_check(now, cpu0):
                    break
            if self.queue and len(self.inflight) < self.concurrency:
                self._admit(now)
            wait_s = next_sweep - now
            if timers and timers[0][0] - now < wait_s:
                wait_s = timers[0][0] - now
            events = poll(max(0.0, wait_s))
            if events and self.initial:
                self.wakeups += 1
            for fd, ev in events:
                c = by_fd.get(fd)
                if c is None:
                    if fd == ctrl_fd:
                        self._control()
                    continue
                state = c.state
                if state == HANDSHAKE:
                    on_handshake(c)
                elif state == CONNECTING:
                    on_connected(c)
                else:
                    on_frames(c)
                if c.out and ev & EPOLLOUT and c.sock is not None:
                    self._flush(c)
            if self.initial and self.ready_count + self.gave_up >= self.count:
                self._initial_done(cpu0)
            if self.stop or (self.go and self._all_back() and (not self.recover_channel or self._ended())):
                break
        self._finish()

    def _phase_check(self, now: float, cpu0: float) -> bool:
        """Phase time limits; True when the loop should end."""
        if self.initial and now >= self.phase_deadline:
            # give up on everything not ready yet
            pending = [c for c in self.clients if c.state != READY and c.tries < INITIAL_ATTEMPTS]
            for c in pending:
                if c.state in (CONNECTING, HANDSHAKE, SUBSCRIBING):
                    self._drop(c)
                c.state = IDLE
            self.queue.clear()
            self.timers.clear()
            self.connect_errors["connect phase timed out"] += len(pending)
            self.gave_up += len(pending)
            self._initial_done(cpu0)
        return not self.initial and now >= self.deadline

    def _all_back(self) -> bool:
        return self.reconnected >= self.opened and self.ready_count >= self.opened

    def _initial_done(self, cpu0: float) -> None:
        self.initial = False
        self.ready_ns = time.time_ns()
        self.cpu_hold_start = own_cpu_s()
        self.cpu_connect_s = self.cpu_hold_start - cpu0
        self.sys_connect_s = own_sys_s() - self.sys0
        self.opened = self.ready_count
        # losses before the parent's "go" are handled already; bound them too
        self.deadline = time.monotonic() + self.args.hold + self.args.timeout + 30
        self.ctrl.send(("ready", {
            "opened": self.opened,
            "connect_errors": dict(self.connect_errors),
            "start_ns": self.start_ns,
            "ready_ns": self.ready_ns,
            "cpu_connect_s": self.cpu_connect_s,
            "sys_connect_s": self.sys_connect_s,
            "wakeups": self.wakeups,
        }))

    def _control(self) -> None:
        try:
            if not self.ctrl.poll():
                return
            message = self.ctrl.recv()
        except (EOFError, OSError):
            self.stop = True
            return
        if message[0] == "go":
            self.go = True
            self.deadline = time.monotonic() + max(0.0, (message[1] - time.time_ns()) / 1e9)
        else:
            self.stop = True

    # -- connecting -------------------------------------------------------------

    def _admit(self, now: float) -> None:
        queue, inflight, by_fd = self.queue, self.inflight, self.by_fd
        addr, request, register = self.addr, self.request, self.ep.register
        room = self.concurrency - len(inflight)
        while room > 0 and queue:
            c = queue.popleft()
            room -= 1
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
            fd = sock.fileno()
            c.sock, c.fd, c.buf, c.out = sock, fd, b"", b""
            c.deadline = now + self.attempt_timeout
            inflight.add(c)
            by_fd[fd] = c
            err = sock.connect_ex(addr)
            if err and err != errno.EINPROGRESS:
                self._fail(c, error_kind(err))
                continue
            try:
                sent = sock.send(request)  # loopback: usually connected already
            except BlockingIOError:  # not yet: wait until writable
                c.state = CONNECTING
                register(fd, EPOLLOUT)
                continue
            except OSError as exc:
                self._fail(c, error_kind(exc))
                continue
            c.state = HANDSHAKE
            if sent < len(request):
                c.out = request[sent:]
                register(fd, EPOLLIN | EPOLLOUT)
            else:
                register(fd, EPOLLIN)

    def _on_connected(self, c: Client) -> None:
        sock = c.sock
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._fail(c, error_kind(err))
            return
        c.state = HANDSHAKE
        try:
            sent = sock.send(self.request)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self._fail(c, error_kind(exc))
            return
        if sent < len(self.request):
            c.out = self.request[sent:]
            self.ep.modify(c.fd, EPOLLIN | EPOLLOUT)
        else:
            self.ep.modify(c.fd, EPOLLIN)

    def _recv(self, c: Client) -> bytes | None:
        """One ``recv``; None when there is nothing to read yet or the attempt failed."""
        try:
            return c.sock.recv(RECV_SIZE)
        except BlockingIOError:
            return None
        except OSError as exc:
            self._fail(c, error_kind(exc))
            return None

    def _on_handshake(self, c: Client) -> None:
        data = self._recv(c)
        if data is None:
            return
        if not data:
            self._fail(c, "closed during handshake")
            return
        buf = c.buf + data if c.buf else data
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > MAX_RESPONSE:
                self._fail(c, "handshake response too large")
            else:
                c.buf = buf
            return
        c.buf = b""
        if buf[9:12] != b"101" or buf[:7] != b"HTTP/1.":
            line = buf[: buf.find(b"\r\n")].decode("latin-1")
            self._fail(c, f"expected 101, got {line[:60]!r}")
            return
        i = buf.lower().find(b"\r\nsec-websocket-accept:", 0, end)
        if i < 0 or buf[i + 23 : buf.find(b"\r\n", i + 2)].strip() != self.accept:
            self._fail(c, "bad Sec-WebSocket-Accept")
            return
        rest = buf[end + 4 :]
        if self.mode == "raw":
            self._ready(c)
        else:
            c.state = SUBSCRIBING
            if self.mode == "centrifugo":
                if self.recover_channel and c.pos is not None:
                    self._send(c, self._subscribe_frame(c.pos))
                else:
                    self._send(c, PROTOBUF_SUBSCRIBE if self.protobuf else self.subscribe_frame)
        if rest and c.sock is not None:
            self._frames(c, rest)

    def _ready(self, c: Client) -> None:
        c.state = READY
        self.inflight.discard(c)
        self.ready_count += 1
        if c.reconnecting:
            c.reconnecting = False
            if not c.back:
                c.back = True
                self.reconnected += 1
            self.last_ready_ns = time.time_ns()

    # -- failures and losses ----------------------------------------------------

    def _drop(self, c: Client) -> None:
        """Close the client's socket (closing also removes it from epoll)."""
        self.inflight.discard(c)
        if c.sock is not None:
            self.by_fd.pop(c.fd, None)
            c.sock.close()
            c.sock, c.fd = None, -1
        c.buf, c.out = b"", b""
        c.frag.clear()
        c.state = IDLE

    def _schedule(self, c: Client, delay: float) -> None:
        c.state = IDLE
        heapq.heappush(self.timers, (time.monotonic() + delay, c.index, c))

    def _fail(self, c: Client, kind: str) -> None:
        """An attempt failed before the client was ready."""
        if c.state == READY:
            self._lost(c, kind)
            return
        self._drop(c)
        if c.reconnecting:
            self.reconnect_errors[kind] += 1
            if time.monotonic() < self.deadline:
                self._schedule(c, c.backoff * self.rng.uniform(0.5, 1.5))
                c.backoff = min(c.backoff * 2, 0.5)
            return
        if not self.initial:  # closing, or stopped
            return
        self.connect_errors[kind] += 1
        c.tries += 1
        if c.tries < INITIAL_ATTEMPTS:
            self._schedule(c, 0.2 * c.tries * self.rng.uniform(0.5, 1.5))
        else:
            self.gave_up += 1

    def _lost(self, c: Client, kind: str) -> None:
        """A ready client lost its connection."""
        self._drop(c)
        self.ready_count -= 1
        if self.initial:
            self.connect_errors[f"lost after ready ({kind})"] += 1
            c.tries += 1
            if c.tries < INITIAL_ATTEMPTS:
                self._schedule(c, 0.2 * c.tries * self.rng.uniform(0.5, 1.5))
            else:
                self.gave_up += 1
        elif self.args.reconnect and not self.stop:
            self.losses += 1
            if not self.first_lost_ns:
                self.first_lost_ns = time.time_ns()
            c.reconnecting = True
            delay = self.args.reconnect_delay
            c.backoff = delay
            self._schedule(c, self.rng.uniform(0, delay))
        else:
            self.lost_connections += 1

    # -- frames ---------------------------------------------------------------

    def _send(self, c: Client, data: bytes) -> None:
        if c.sock is None:
            return
        if c.out:
            c.out += data
            return
        try:
            sent = c.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self._fail(c, error_kind(exc))
            return
        if sent < len(data):
            c.out = data[sent:]
            self.ep.modify(c.fd, EPOLLIN | EPOLLOUT)

    def _flush(self, c: Client) -> None:
        try:
            sent = c.sock.send(c.out)
        except BlockingIOError:
            return
        except OSError as exc:
            self._fail(c, error_kind(exc))
            return
        c.out = c.out[sent:]
        if not c.out:
            self.ep.modify(c.fd, EPOLLIN)

    def _on_frames(self, c: Client) -> None:
        data = self._recv(c)
        if data is None:
            return
        if not data:
            if c.state == CLOSING:
                self._drop(c)
            else:
                self._fail(c, "closed by server" if c.state == READY else "closed during subscribe")
            return
        if c.state != CLOSING:
            self._frames(c, data)

    def _frames(self, c: Client, data: bytes) -> None:
        """Handle server frames (unmasked), several per chunk or split across chunks."""
        frames, c.buf = split_frames(c.buf + data if c.buf else data)
        if len(c.buf) > MAX_MESSAGE + 10:  # an incomplete frame larger than any message accepted
            self._fail(c, "server frame too large")
            return
        for fin, opcode, payload, _ in frames:
            if opcode >= 0x8:
                if opcode == OP_PING:
                    self._send(c, client_frame(payload, OP_PONG))
                elif opcode == OP_CLOSE:
                    code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                    self._send(c, CLOSE_FRAME)
                    self._fail(c, f"close frame {code}")
                    return
            else:
                if opcode != OP_CONTINUATION:
                    c.frag_op = opcode
                if not fin or c.frag:  # fragmented message
                    c.frag.append(payload)
                    if sum(map(len, c.frag)) > MAX_MESSAGE:
                        self._fail(c, "server message too large")
                        return
                    if not fin:
                        continue
                    payload = b"".join(c.frag)
                    c.frag.clear()
                self._message(c, payload)
            if c.sock is None:  # the message failed the attempt
                return

    def _message(self, c: Client, payload: bytes) -> None:
        """A complete data message: the subscribe exchange, or app-level pings."""
        mode = self.mode
        if self.protobuf:
            for reply_id, has_error, size in pb_replies(payload):
                if size == 0:
                    self._send(c, PROTOBUF_PONG)
                elif c.state == SUBSCRIBING and has_error and reply_id:
                    self._fail(c, f"command {reply_id} refused")
                    return
                elif c.state == SUBSCRIBING and reply_id == 2:
                    self._ready(c)
                if c.sock is None:
                    return
        elif mode == "centrifugo":
            for line in payload.split(b"\n"):
                line = line.strip()
                if line == b"{}":
                    self._send(c, CENTRIFUGO_PONG)
                elif self.recover_channel and c.state == READY and line:
                    try:
                        push = json.loads(line).get("push") or {}
                    except (ValueError, AttributeError):
                        continue
                    if isinstance(push.get("pub"), dict):
                        self._publication(c, push["pub"])
                elif c.state == SUBSCRIBING and line and line not in CENTRIFUGO_COMMANDS:  # not an echo
                    try:
                        reply = json.loads(line)
                    except ValueError:
                        continue
                    if not isinstance(reply, dict) or not isinstance(reply.get("id"), int):
                        continue
                    if "error" in reply:
                        self._fail(c, f"command refused: {line[:80].decode(errors='replace')}")
                        return
                    if reply["id"] == 2:
                        if self.recover_channel:
                            self._subscribed(c, reply.get("subscribe") or {})
                        self._ready(c)
                if c.sock is None:
                    return
        elif mode == "socketio":
            if payload == b"2":
                self._send(c, ENGINEIO_PONG)
            elif c.state == SUBSCRIBING:
                if payload[:2] == b"0{":
                    self._send(c, ENGINEIO_CONNECT)
                elif payload[:2] == b"40":
                    self._ready(c)
                elif payload[:2] == b"44":
                    self._fail(c, f"connect refused: {payload[:80].decode(errors='replace')}")

    # -- the end ----------------------------------------------------------------

    def _finish(self) -> None:
        """Report, then close: a close frame each, the server closes the TCP
        connection (TIME_WAIT stays on its side); abort the rest after a grace."""
        self.ctrl.send(("result", {
            "first_lost_ns": self.first_lost_ns,
            "last_ready_ns": self.last_ready_ns,
            "losses": self.losses,
            "reconnected": self.reconnected,
            "reconnect_errors": dict(self.reconnect_errors),
            "lost_connections": self.lost_connections,
            "ready_at_end": self.ready_count,
            "cpu_after_connect_s": own_cpu_s() - self.cpu_hold_start,
            "recover": dict(self.rec, not_ended=sum(1 for c in self.clients if c.pos is None or not c.pos[2]))
            if self.recover_channel else None,
        }))
        self.stop = True
        self.timers.clear()
        self.queue.clear()
        linger_until = time.monotonic() + self.args.linger
        while time.monotonic() < linger_until:  # --linger: still holding (pings answered)
            for fd, _ev in self.ep.poll(0.05):
                c = self.by_fd.get(fd)
                if c is not None:
                    self._on_frames(c)
        for c in self.clients:
            if c.state == READY:
                c.state = CLOSING
                self._send(c, CLOSE_FRAME)
            elif c.sock is not None:
                self._drop(c)
        deadline = time.monotonic() + CLOSE_GRACE_S
        while self.by_fd and time.monotonic() < deadline:
            for fd, ev in self.ep.poll(0.05):
                c = self.by_fd.get(fd)
                if c is not None:
                    self._on_frames(c)
                    if c.out and ev & EPOLLOUT and c.sock is not None:
                        self._flush(c)
        for c in list(self.by_fd.values()):
            self._drop(c)
        self.ep.close()


def worker_main(args: argparse.Namespace, addr: tuple[str, int], count: int, first: int,
                concurrency: int, ctrl: Connection) -> None:
    """Entry point of a worker process; failures are reported, never hang the parent."""
    raise_nofile_limit()
    try:
        Worker(args, addr, count, first, concurrency, ctrl).run()
    except BaseException as exc:
        try:
            ctrl.send(("error", f"{type(exc).__name__}: {exc}"))
        except OSError:
            pass
        raise


# ---------------------------------------------------------------------------
# Parent: start the workers, hold, print the ready event, aggregate
# ---------------------------------------------------------------------------


def _collect(pipes: list[Connection], kind: str, timeout: float) -> list[tuple]:
    """One message of ``kind`` from every pipe (or ("error", text))."""
    replies: dict[int, tuple] = {}
    deadline = time.monotonic() + timeout
    pending = list(range(len(pipes)))
    while pending:
        left = deadline - time.monotonic()
        if left <= 0:
            for i in pending:
                replies[i] = ("error", f"worker {i}: no {kind} message within {timeout:.0f}s")
            break
        for conn in wait([pipes[i] for i in pending], left):
            i = pipes.index(conn)
            try:
                message = conn.recv()
            except (EOFError, OSError) as exc:
                message = ("error", f"worker {i} died: {exc!r}")
            replies[i] = message
            pending.remove(i)
    return [replies[i] for i in range(len(pipes))]


def _read_sys_s(pid: int) -> float | None:
    """System (kernel) CPU time of process ``pid``, s: the part of :func:`read_cpu_s` spent in
    system calls (accept, reads, writes, close of the sockets)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[12]) / os.sysconf("SC_CLK_TCK")


def run(args: argparse.Namespace) -> dict:
    raise_nofile_limit()
    host_ip = socket.getaddrinfo(args.host, args.port, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
    addr = (host_ip, args.port)
    procs = max(1, min(args.procs, args.subscribers))
    shares = [args.subscribers // procs + (i < args.subscribers % procs) for i in range(procs)]
    gates = [args.connect_concurrency // procs + (i < args.connect_concurrency % procs) for i in range(procs)]
    ctx = multiprocessing.get_context("fork")
    errors: list[str] = []
    report: dict = {
        "generator": "connectgen",
        "host": args.host,
        "port": args.port,
        "path": args.path,
        "mode": args.mode + ("+protobuf" if args.mode == "centrifugo" and args.sub_format == "protobuf" else ""),
        "procs": procs,
        "subscribers_requested": args.subscribers,
        "subscribers": 0,
        "connect_concurrency": args.connect_concurrency,
        "connect_s": None,
        "connects_per_s": None,
        "connect_errors": {},
        "lost_connections": 0,
        "complete": False,
        "errors": errors,
    }
    parent_cpu0 = own_cpu_s()
    server_cpu0 = read_cpu_s(args.cpu_pid) if args.cpu_pid else None
    server_sys0 = _read_sys_s(args.cpu_pid) if args.cpu_pid else None
    workers = []
    first = 0
    for share, gate in zip(shares, gates):
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=worker_main, args=(args, addr, share, first, gate, child), daemon=True)
        proc.start()
        child.close()
        workers.append((proc, parent))
        first += share
    pipes = [pipe for _, pipe in workers]
    try:
        ready = _collect(pipes, "ready", args.connect_timeout + 30)
        server_cpu1 = read_cpu_s(args.cpu_pid) if args.cpu_pid else None
        server_sys1 = _read_sys_s(args.cpu_pid) if args.cpu_pid else None
        parent_cpu_connect = own_cpu_s() - parent_cpu0
        infos = [r[1] for r in ready if r[0] == "ready"]
        errors.extend(str(r[1]) for r in ready if r[0] != "ready")
        opened = sum(i["opened"] for i in infos)
        connect_errors: collections.Counter[str] = collections.Counter()
        for info in infos:
            connect_errors.update(info["connect_errors"])
        report["subscribers"] = opened
        report["connect_errors"] = dict(connect_errors)
        if infos:
            connect_s = (max(i["ready_ns"] for i in infos) - min(i["start_ns"] for i in infos)) / 1e9
            report["connect_s"] = round(connect_s, 3)
            if opened and connect_s > 0:
                report["connects_per_s"] = round(opened / connect_s, 1)
            cpu = sum(i["cpu_connect_s"] for i in infos) + parent_cpu_connect
            report["client_cpu_connect_s"] = round(cpu, 3)
            report["client_sys_connect_s"] = round(sum(i["sys_connect_s"] for i in infos), 3)
            report["epoll_wakeups_connect"] = sum(i["wakeups"] for i in infos)
            if opened:
                report["client_cpu_per_connect_us"] = round(1e6 * cpu / opened, 1)
        if server_cpu0 is not None and server_cpu1 is not None and opened:
            report["server_cpu_connect_s"] = round(server_cpu1 - server_cpu0, 3)
            report["server_cpu_per_connect_us"] = round(1e6 * (server_cpu1 - server_cpu0) / opened, 1)
            if server_sys0 is not None and server_sys1 is not None:  # the kernel's share of it
                report["server_sys_per_connect_us"] = round(1e6 * (server_sys1 - server_sys0) / opened, 1)
        log(f"{opened}/{args.subscribers} clients ready in {report['connect_s']} s "
            f"({report['connects_per_s']}/s, {procs} process(es))")
        if opened == 0 or errors:
            for pipe in pipes:
                _send_quietly(pipe, ("stop",))
            _collect(pipes, "result", 10)
            return report
        time.sleep(args.hold)
        if args.reconnect:
            print(json.dumps({"event": "ready", "subscribers": opened}), flush=True)
            deadline_ns = time.time_ns() + int(args.timeout * 1e9)
            for pipe in pipes:
                _send_quietly(pipe, ("go", deadline_ns))
            results = _collect(pipes, "result", args.timeout + 30)
            if args.linger:
                print(json.dumps({"event": "back"}), flush=True)
        else:
            for pipe in pipes:
                _send_quietly(pipe, ("stop",))
            results = _collect(pipes, "result", 30)
        first_lost_ns = last_ready_ns = reconnected = losses = 0
        reconnect_errors: collections.Counter[str] = collections.Counter()
        cpu_after = 0.0
        for reply in results:
            if reply[0] != "result":
                errors.append(str(reply[1]))
                continue
            result = reply[1]
            if result["first_lost_ns"]:
                first_lost_ns = min(first_lost_ns or result["first_lost_ns"], result["first_lost_ns"])
            last_ready_ns = max(last_ready_ns, result["last_ready_ns"])
            reconnected += result["reconnected"]
            losses += result["losses"]
            reconnect_errors.update(result["reconnect_errors"])
            report["lost_connections"] += result["lost_connections"]
            cpu_after += result["cpu_after_connect_s"]
            if result.get("recover") is not None:
                recover = report.setdefault("recover", collections.Counter())
                recover.update(result["recover"])
        if "recover" in report:
            report["recover"] = dict(report["recover"])
        if args.reconnect:
            report["reconnected"] = reconnected
            report["losses"] = losses
            report["first_lost_ns"] = first_lost_ns
            report["last_ready_ns"] = last_ready_ns
            report["reconnect_s"] = (
                round((last_ready_ns - first_lost_ns) / 1e9, 3) if first_lost_ns and last_ready_ns else None
            )
            report["reconnect_attempt_errors"] = dict(reconnect_errors)
            report["client_cpu_reconnect_s"] = round(cpu_after, 3)
            if reconnected:
                report["client_cpu_per_reconnect_us"] = round(1e6 * cpu_after / reconnected, 1)
            report["complete"] = reconnected >= opened and not errors
        else:
            report["complete"] = not errors
        return report
    finally:
        for proc, pipe in workers:
            proc.join(CLOSE_GRACE_S + 5)
            if proc.is_alive():
                proc.kill()
                proc.join()
            pipe.close()
        t = os.times()
        report["client_cpu_total_s"] = round(t.user + t.system + t.children_user + t.children_system
                                             - parent_cpu0, 3)


def _send_quietly(pipe: Connection, message: tuple) -> None:
    try:
        pipe.send(message)
    except OSError:
        pass


def format_report(report: dict) -> str:
    lines = [
        f"target          {report['host']}:{report['port']}{report['path']} ({report['mode']})",
        f"clients         {report['subscribers']}/{report['subscribers_requested']} in {report['procs']} "
        f"process(es), ready in {report['connect_s']} s"
        + (f" ({report['connects_per_s']:,.0f}/s)" if report.get("connects_per_s") else ""),
    ]
    if report.get("client_cpu_per_connect_us") is not None:
        lines.append(f"generator CPU   {report['client_cpu_connect_s']} s ({report['client_sys_connect_s']} s "
                     f"in the kernel): {report['client_cpu_per_connect_us']} us per connect; "
                     f"{report['epoll_wakeups_connect']} epoll wakeups")
    if report.get("server_cpu_per_connect_us") is not None:
        lines.append(f"server CPU      {report['server_cpu_connect_s']} s: "
                     f"{report['server_cpu_per_connect_us']} us per connect")
    if "reconnected" in report:
        lines.append(
            f"reconnected     {report['reconnected']}/{report['subscribers']} in {report['reconnect_s']} s "
            f"(first loss -> last ready); failed attempts {report['reconnect_attempt_errors']}"
        )
    if report["lost_connections"]:
        lines.append(f"lost            {report['lost_connections']}")
    if report["connect_errors"]:
        lines.append(f"connect errors  {report['connect_errors']}")
    for error in report["errors"]:
        lines.append(f"error           {error}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="WebSocket connect-rate generator (epoll, no asyncio).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/", help="WebSocket request path")
    parser.add_argument("--mode", choices=["raw", "centrifugo", "socketio"], default="raw",
                        help="subscribe exchange after the handshake (as in loadgen.py)")
    parser.add_argument("--token", default="", help="centrifugo mode: the connection token sent in connect")
    parser.add_argument("--header", action="append", default=[], metavar="'NAME: VALUE'",
                        help="a header added to every upgrade request (repeatable), e.g. 'Cookie: sessionid=x'")
    parser.add_argument("--sub-format", choices=["json", "protobuf"], default="json",
                        help="centrifugo: JSON or Protobuf (centrifuge-protobuf) commands")
    parser.add_argument("--subscribers", type=int, default=1000, help="clients")
    parser.add_argument("--connect-concurrency", type=int, default=100,
                        help="handshakes (and subscribe exchanges) in flight, over all processes")
    parser.add_argument("--procs", type=int, default=1, help="worker processes, one epoll loop each")
    parser.add_argument("--hold", type=float, default=1.0, help="seconds to hold once every client is ready")
    parser.add_argument("--reconnect", action="store_true",
                        help="print a ready event, then wait until every client lost its connection "
                        "and is connected and subscribed again")
    parser.add_argument("--reconnect-delay", type=float, default=0.1,
                        help="--reconnect: first retry within 0..DELAY s, then DELAY*U(0.5,1.5), "
                        "DELAY doubling up to 0.5 s")
    parser.add_argument("--timeout", type=float, default=30.0, help="reconnect phase limit, s")
    parser.add_argument("--connect-timeout", type=float, default=60.0, help="initial connect phase limit, s")
    parser.add_argument("--attempt-timeout", type=float, default=10.0,
                        help="one attempt (connect + handshake + subscribe) limit, s")
    parser.add_argument("--cpu-pid", type=int, default=None,
                        help="report this process's CPU time used while the clients connect")
    parser.add_argument("--idle", action="store_true",
                        help="accepted for loadgen.py compatibility (connectgen always holds idle clients)")
    parser.add_argument("--recover-channel", default="",
                        help="centrifugo JSON: subscribe to this channel (a namespace with history) recoverable, "
                        "resubscribe with recover from the last offset and epoch after a loss, and count "
                        "publications lost (offsets skipped), duplicated and unrecovered; with --reconnect the "
                        "phase ends once every client is back and has seen a publication with data {\"end\": true}")
    parser.add_argument("--linger", type=float, default=0.0,
                        help="--reconnect: once every client is back, print the line {\"event\": \"back\"} and "
                        "hold the clients this many seconds more before closing them (the caller reads the "
                        "server's CPU at the event, without the closing)")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON line, last on stdout")
    args = parser.parse_args(argv)
    if args.subscribers < 1 or args.procs < 1 or args.connect_concurrency < 1:
        parser.error("--subscribers, --procs and --connect-concurrency must be positive")
    if args.procs > args.subscribers or args.procs > args.connect_concurrency:
        parser.error("--procs cannot exceed --subscribers or --connect-concurrency")
    if min(args.timeout, args.connect_timeout, args.attempt_timeout) <= 0 or args.hold < 0:
        parser.error("timeouts must be positive and --hold not negative")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = run(args)
    if args.json:
        print(json.dumps(report), flush=True)
    else:
        print(format_report(report), flush=True)
    return 0 if report["complete"] else 1


if __name__ == "__main__":
    sys.exit(main())
