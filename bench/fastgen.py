#!/usr/bin/env python3
"""Fan-out load generator whose subscribers are never the limit.

Same command line, same producer and the same JSON report as
``loadgen.py`` (it *is* ``loadgen.py`` with another subscriber worker); only
the subscriber processes differ:

* No asyncio, no protocol objects: one ``select.epoll`` loop per process over
  non-blocking sockets, in the manner of ``connectgen.py``.  The connect and
  subscribe exchange of every mode (raw, ``pubsub``, ``centrifugo`` with JSON
  or Protobuf subscribers, ``socketio``) is a small state machine per client;
  it runs only until the client is ready.
* Once ready, every ``recv_into`` lands in one buffer per process and a
  frame scanner walks the WebSocket frame headers in it: a few lines of C
  compiled on first use with the system C compiler and called through
  ``ctypes`` once per chunk (``scanner: "c"`` in the report), or, where no
  compiler is found, the same walk in Python (``scanner: "python"``).  It
  counts deliveries (data frames, or payload markers ``HB|`` where pushes
  may be batched: centrifugo, socketio), and stops only at what Python must
  see: a sample (every ``--sample-every``-th delivery; the timestamp sits at a
  fixed offset after the marker), a control frame (ping, close), or a data
  frame without a payload marker (application pings ``{}``, ``2``, the
  empty Protobuf ``Reply``, which are answered).
* Nothing is decoded per delivery: no JSON, no Protobuf, no ``bytes`` object
  per frame.

The report adds ``generator`` (``"fastgen"``), ``scanner``,
``subscriber_cpu_s`` (user + system CPU of the subscriber processes from the
first publication to the end of the delivery phase),
``subscriber_cpu_share`` (that CPU divided by the delivery phase and by the
number of processes: near 1.0 means the subscribers were busy all the time,
so the figure may be theirs) and ``generator_capacity_per_cpu_s``
(deliveries per CPU-second of the subscriber processes: what this generator
can take per core in this mode; a server figure well below it measures the
server).

``--reconnect`` runs and the HTTP streaming modes (``uni_sse``) are handed
to ``loadgen.py``'s asyncio subscribers (the suite uses ``connectgen.py`` for
restarts).

Example::

    python bench/fastgen.py --port 8000 --path /connection/websocket --mode centrifugo \\
        --sub-format protobuf --subscribers 1000 --messages 500 --window 1000
"""

from __future__ import annotations

import base64
import collections
import ctypes
import errno
import hashlib
import heapq
import json
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from multiprocessing.connection import Connection

import loadgen
from loadgen import (
    MARKER,
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    WS_GUID,
    Config,
    client_frame,
    expected_counts,
    parse_payload,
    pb_command,
    pb_replies,
    pb_string,
    raise_nofile_limit,
    split_frames,
    subscriber_channels,
)

RECV_SIZE = 256 * 1024
MAX_PARTIAL = 1 << 20  # a frame still incomplete after this many bytes fails the client
MAX_RESPONSE = 16 * 1024
ATTEMPTS = 3
SWEEP_S = 0.05

EPOLLIN, EPOLLOUT = select.EPOLLIN, select.EPOLLOUT
CONNECTING, HANDSHAKE, SUBSCRIBING, READY, DEAD = range(5)

# scanner modes
COUNT_FRAMES, COUNT_MARKER, COUNT_MARKER_JSON = 0, 1, 2
# scanner events
EV_NONE, EV_SAMPLE, EV_CONTROL, EV_CHECK = 0, 1, 2, 3

SCAN_C = r"""
#include <string.h>
/* Walk the complete WebSocket server frames in d[pos:n].
   out[0] event: 0 none (more data needed), 1 sample, 2 control frame,
          3 data frame Python must look at (no marker, or a JSON ping "{}")
   out[1], out[2]: payload start and end of the frame of the event
   out[3]: its first header byte; out[4]: deliveries counted by this call
   out[5]: sample countdown (in and out)
   Returns the offset after the last frame consumed. */
long scan(const unsigned char *d, long pos, long n, long mode, long every, long *out) {
    long delivered = 0, countdown = out[5];
    out[0] = 0;
    while (n - pos >= 2) {
        unsigned b0 = d[pos];
        long len = d[pos + 1] & 0x7f, start;
        if (len < 126) start = pos + 2;
        else if (len == 126) {
            if (n - pos < 4) break;
            len = ((long)d[pos + 2] << 8) | d[pos + 3];
            start = pos + 4;
        } else {
            if (n - pos < 10) break;
            len = 0;
            for (int i = 0; i < 8; i++) len = (len << 8) | d[pos + 2 + i];
            start = pos + 10;
        }
        long end = start + len;
        if (len < 0 || end > n) break;
        unsigned op = b0 & 0x0f;
        int event = 0;
        long k;
        if (op >= 8) {
            event = 2;
            k = 0;
        } else if (mode == 0) {
            k = b0 >> 7;
        } else {
            k = 0;
            const unsigned char *p = d + start, *e = d + end;
            while (e - p >= 3) {
                p = memchr(p, 'H', (size_t)(e - p - 2));
                if (!p) break;
                if (p[1] == 'B' && p[2] == '|') { k++; p += 3; } else p++;
            }
            if (!k) event = 3;
            else if (mode == 2) {
                /* a JSON ping is a line "{}" of its own: look at line starts only
                   (one memchr per line; every '{' of every push cost one each) */
                p = d + start;
                if (e - p >= 2 && p[0] == '{' && p[1] == '}') event = 3;
                while (!event && e - p >= 3) {
                    p = memchr(p, '\n', (size_t)(e - p - 2));
                    if (!p) break;
                    if (p[1] == '{' && p[2] == '}') event = 3;
                    p++;
                }
            }
        }
        delivered += k;
        countdown -= k;
        pos = end;
        if (k && countdown <= 0 && !event) {
            countdown = every;
            event = 1;
        }
        if (event) {
            out[0] = event; out[1] = start; out[2] = end; out[3] = b0;
            break;
        }
    }
    out[4] = delivered;
    out[5] = countdown;
    return pos;
}
"""


def _scan_py(d: bytearray, pos: int, n: int, mode: int, every: int, out: list[int]) -> int:
    """The scanner in Python, with the C version's contract (see SCAN_C)."""
    delivered, countdown = 0, out[5]
    out[0] = 0
    while n - pos >= 2:
        b0 = d[pos]
        length = d[pos + 1] & 0x7F
        if length < 126:
            start = pos + 2
        elif length == 126:
            if n - pos < 4:
                break
            length = (d[pos + 2] << 8) | d[pos + 3]
            start = pos + 4
        else:
            if n - pos < 10:
                break
            length = int.from_bytes(d[pos + 2 : pos + 10], "big")
            start = pos + 10
        end = start + length
        if end > n:
            break
        event = 0
        if b0 & 0x0F >= 8:
            event, k = EV_CONTROL, 0
        elif mode == COUNT_FRAMES:
            k = b0 >> 7
        else:
            k = d.count(MARKER, start, end)
            if not k or (mode == COUNT_MARKER_JSON and (d[start : start + 2] == b"{}" or d.find(b"\n{}", start, end) >= 0)):
                event = EV_CHECK
        delivered += k
        countdown -= k
        pos = end
        if k and countdown <= 0 and not event:
            countdown = every
            event = EV_SAMPLE
        if event:
            out[0], out[1], out[2], out[3] = event, start, end, b0
            break
    out[4] = delivered
    out[5] = countdown
    return pos


def load_scanner() -> tuple[object | None, str]:
    """Compile (once per source version) and load the C scanner; (None, reason) if impossible."""
    if os.environ.get("FASTGEN_SCANNER") == "python":
        return None, "python (FASTGEN_SCANNER=python)"
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        return None, "python (no C compiler found)"
    digest = hashlib.sha1(SCAN_C.encode()).hexdigest()[:12]
    cache = os.path.join(tempfile.gettempdir(), f"hubbub-fastgen-{os.getuid()}")
    lib_path = os.path.join(cache, f"scan-{digest}.so")
    try:
        if not os.path.exists(lib_path):
            os.makedirs(cache, exist_ok=True)
            src = os.path.join(cache, f"scan-{digest}.c")
            with open(src, "w") as f:
                f.write(SCAN_C)
            tmp = f"{lib_path}.{os.getpid()}"
            subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", tmp, src], check=True,
                           capture_output=True, timeout=60)
            os.replace(tmp, lib_path)
        lib = ctypes.CDLL(lib_path)
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"python (C scanner unavailable: {exc})"
    fn = lib.scan
    fn.restype = ctypes.c_long
    fn.argtypes = [ctypes.c_void_p, ctypes.c_long, ctypes.c_long, ctypes.c_long, ctypes.c_long,
                   ctypes.POINTER(ctypes.c_long)]
    return fn, "c"


_SCANNER: tuple[object | None, str] | None = None


def scanner() -> tuple[object | None, str]:
    global _SCANNER
    if _SCANNER is None:
        _SCANNER = load_scanner()
    return _SCANNER


def own_cpu_s() -> float:
    """User + system CPU of this process, at nanosecond resolution (os.times ticks 10 ms)."""
    return time.process_time()


class Client:
    __slots__ = (
        "channels",
        "deadline",
        "done",
        "expected",
        "fd",
        "index",
        "out",
        "ready_id",
        "received",
        "rest",
        "sock",
        "state",
        "tries",
    )

    def __init__(self, index: int, expected: int, channels: list[str]) -> None:
        self.index = index
        self.sock: socket.socket | None = None
        self.fd = -1
        self.state = DEAD
        self.rest = b""
        self.out = b""
        self.expected = expected
        self.received = 0
        self.done = False
        self.tries = 0
        self.deadline = 0.0
        self.channels = channels
        self.ready_id = 0


class FastWorker:
    """``count`` subscribers in one epoll loop; the pipe protocol of loadgen's workers."""

    def __init__(self, cfg: Config, count: int, first: int, pipe: Connection) -> None:
        self.cfg = cfg
        self.pipe = pipe
        self.mode = cfg.mode
        self.protobuf = cfg.mode == "centrifugo" and cfg.sub_format == "protobuf"
        self.json = cfg.mode == "centrifugo" and not self.protobuf
        if cfg.count == "frames":
            self.scan_mode = COUNT_FRAMES
        else:
            self.scan_mode = COUNT_MARKER_JSON if self.json else COUNT_MARKER
        counts = expected_counts(cfg)
        self.clients = []
        for k in range(count):
            channels = subscriber_channels(cfg, first + k)
            expected = cfg.messages if counts is None else sum(counts.get(ch, 0) for ch in channels)
            self.clients.append(Client(first + k, expected, channels))
        key = base64.b64encode(os.urandom(16))
        self.accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
        proto = "Sec-WebSocket-Protocol: centrifuge-protobuf\r\n" if self.protobuf else ""
        self.request = (
            f"GET {cfg.path} HTTP/1.1\r\nHost: {cfg.host}:{cfg.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key.decode()}\r\n"
            f"Sec-WebSocket-Version: 13\r\n{proto}\r\n"
        ).encode()
        host_ip = socket.getaddrinfo(cfg.host, cfg.port, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
        self.addrs = [(host_ip, p) for p in (cfg.ports or (cfg.port,))]
        self.ep = select.epoll()
        self.by_fd: dict[int, Client] = {}
        self.errors: collections.Counter[str] = collections.Counter()
        self.timers: list[tuple[float, int, Client]] = []
        self.queue: collections.deque[Client] = collections.deque()
        self.inflight = 0
        self.ready = 0
        self.gave_up = 0
        # delivery counters
        self.delivered = 0
        self.last_ns = 0
        self.latencies: list[int] = []
        self.bad_samples = 0
        self.complete = 0
        self.lost = 0
        self.countdown = cfg.sample_every
        self.buf = bytearray(RECV_SIZE + MAX_PARTIAL + 16)
        self.view = memoryview(self.buf)
        self.scan_fn, self.scanner = scanner()
        if self.scan_fn is not None:
            self.cbuf = (ctypes.c_char * len(self.buf)).from_buffer(self.buf)
            self.addr = ctypes.addressof(self.cbuf)
            self.out = (ctypes.c_long * 6)()
        else:
            self.out = [0] * 6
        self.go = False
        self.stop = False

    # -- sending --------------------------------------------------------------

    def send(self, c: Client, data: bytes) -> None:
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
            self.fail(c, type(exc).__name__)
            return
        if sent < len(data):
            c.out = data[sent:]
            self.ep.modify(c.fd, EPOLLIN | EPOLLOUT)

    def flush(self, c: Client) -> None:
        try:
            sent = c.sock.send(c.out)
        except BlockingIOError:
            return
        except OSError as exc:
            self.fail(c, type(exc).__name__)
            return
        c.out = c.out[sent:]
        if not c.out:
            self.ep.modify(c.fd, EPOLLIN)

    # -- connecting -----------------------------------------------------------

    def admit(self, now: float) -> None:
        while self.queue and self.inflight < self.cfg.connect_concurrency:
            c = self.queue.popleft()
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
            c.sock, c.fd, c.rest, c.out = sock, sock.fileno(), b"", b""
            c.deadline = now + min(10.0, self.cfg.connect_timeout)
            c.state = CONNECTING
            self.by_fd[c.fd] = c
            self.inflight += 1
            err = sock.connect_ex(self.addrs[c.index % len(self.addrs)])
            if err and err != errno.EINPROGRESS:
                self.fail(c, os.strerror(err))
                continue
            self.ep.register(c.fd, EPOLLOUT)

    def on_connected(self, c: Client) -> None:
        err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self.fail(c, os.strerror(err))
            return
        c.state = HANDSHAKE
        self.ep.modify(c.fd, EPOLLIN)
        self.send(c, self.request)

    def on_handshake(self, c: Client, data: bytes) -> None:
        buf = c.rest + data
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > MAX_RESPONSE:
                self.fail(c, "handshake response too large")
            else:
                c.rest = buf
            return
        c.rest = b""
        if buf[9:12] != b"101":
            line = buf[: buf.find(b"\r\n")][:60].decode("latin-1")
            self.fail(c, f"expected 101, got {line!r}")
            return
        i = buf.lower().find(b"\r\nsec-websocket-accept:", 0, end)
        if i < 0 or buf[i + 23 : buf.find(b"\r\n", i + 2)].strip() != self.accept:
            self.fail(c, "bad Sec-WebSocket-Accept")
            return
        c.state = SUBSCRIBING
        cfg, mode = self.cfg, self.mode
        marker: bytes | None = None
        if self.protobuf:
            commands = [pb_command(1, 4, b"")] + [
                pb_command(2 + k, 5, pb_string(1, ch.encode())) for k, ch in enumerate(c.channels)]
            self.send(c, client_frame(b"".join(commands), OP_BINARY))
            c.ready_id = 1 + len(c.channels)
        elif mode == "centrifugo":
            sends = cfg.sub_send or ['{"id":1,"connect":{}}'] + [
                json.dumps({"id": 2 + k, "subscribe": {"channel": ch}}, separators=(",", ":"))
                for k, ch in enumerate(c.channels)]
            self.send(c, b"".join(client_frame(s.encode()) for s in sends))
            c.ready_id = cfg.sub_ready_id or (1 + len(c.channels))
            if cfg.sub_ready:
                c.ready_id = -1
        elif mode == "pubsub":
            self.send(c, client_frame(("sub " + " ".join(c.channels)).encode()))
            marker = b"subok"
        elif mode == "raw":
            if cfg.sub_send:
                self.send(c, b"".join(client_frame(s.encode()) for s in cfg.sub_send))
            marker = cfg.sub_ready.encode() if cfg.sub_ready else None
            if marker is None and cfg.sub_ready_id is None:
                self.become_ready(c)
        rest = buf[end + 4 :]
        if rest and c.sock is not None:
            if c.state == READY:
                self.deliveries(c, rest)
            else:
                self.pre_ready(c, rest)

    def pre_ready(self, c: Client, data: bytes) -> None:
        """Frames before the subscriber is ready: the subscribe exchange."""
        joined = c.rest + data if c.rest else data
        frames, c.rest = split_frames(joined)
        for _fin, opcode, payload, end in frames:
            if opcode >= 0x8:
                self.control(c, opcode, payload)
            else:
                try:
                    ready = self.is_ready_reply(c, payload)
                except loadgen.HandshakeError as exc:
                    self.fail(c, str(exc)[:120])
                    return
                if ready:
                    self.become_ready(c)
                    c.rest = b""
                    if end < len(joined):  # deliveries may follow in the same chunk
                        self.deliveries(c, joined[end:])
                    return
            if c.sock is None:
                return
        if len(c.rest) > MAX_PARTIAL:
            self.fail(c, "server frame too large")

    def is_ready_reply(self, c: Client, payload: bytes) -> bool:
        mode, cfg = self.mode, self.cfg
        if self.protobuf:
            ready = False
            for reply_id, has_error, size in pb_replies(payload):
                if size == 0:
                    self.send(c, PB_PONG)
                elif has_error and reply_id:
                    raise loadgen.HandshakeError(f"command {reply_id} refused: {payload[:100]!r}")
                elif reply_id == c.ready_id:
                    ready = True
            return ready
        if mode == "socketio":
            if payload[:2] == b"0{":
                self.send(c, EIO_CONNECT)
            elif payload[:3] == b"40{":
                if cfg.groups <= 0:
                    return True
                self.send(c, client_frame(b'42["sub",%s]' % json.dumps(c.channels).encode()))
            elif payload == b"2":
                self.send(c, EIO_PONG)
            elif payload[:9] == b'42["subok':
                return True
            elif payload[:2] == b"44":
                raise loadgen.HandshakeError(f"connect refused: {payload[:100]!r}")
            return False
        marker = b"subok" if mode == "pubsub" else (cfg.sub_ready.encode() if cfg.sub_ready else None)
        if marker is not None:
            if marker not in payload:
                return False
            if b'"error"' in payload:
                raise loadgen.HandshakeError(f"subscription refused: {payload[:100]!r}")
            return True
        for line in payload.split(b"\n"):
            if line.strip() == b"{}":
                self.send(c, JSON_PONG)
                continue
            try:
                reply = json.loads(line)
            except ValueError:
                continue
            if isinstance(reply, dict) and "error" in reply and isinstance(reply.get("id"), int):
                raise loadgen.HandshakeError(f"command refused: {line[:100]!r}")
            if isinstance(reply, dict) and reply.get("id") == c.ready_id:
                return True
        return False

    def become_ready(self, c: Client) -> None:
        if c.state == READY:
            return
        c.state = READY
        self.inflight -= 1
        self.ready += 1

    # -- failures -------------------------------------------------------------

    def drop(self, c: Client) -> None:
        if c.sock is not None:
            self.by_fd.pop(c.fd, None)
            c.sock.close()
            c.sock, c.fd = None, -1
        c.rest, c.out = b"", b""

    def fail(self, c: Client, kind: str) -> None:
        if c.state == READY:
            self.lose(c)
            return
        if c.state == DEAD:
            return
        self.drop(c)
        c.state = DEAD
        self.inflight -= 1
        self.errors[kind] += 1
        c.tries += 1
        if self.go or c.tries >= ATTEMPTS or self.stop:
            self.gave_up += 1
        else:
            heapq.heappush(self.timers, (time.monotonic() + 0.2 * c.tries, c.index, c))

    def lose(self, c: Client) -> None:
        self.drop(c)
        c.state = DEAD
        self.ready -= 1
        if not c.done:
            self.lost += 1

    # -- frames ---------------------------------------------------------------

    def control(self, c: Client, opcode: int, payload: bytes) -> None:
        if opcode == OP_PING:
            self.send(c, client_frame(payload, OP_PONG))
        elif opcode == OP_CLOSE:
            self.send(c, CLOSE_FRAME)
            self.lose(c) if c.state == READY else self.fail(c, "close frame")

    def check(self, c: Client, payload: bytes) -> None:
        """A data frame the scanner could not count alone: answer application pings."""
        if self.json:
            for line in payload.split(b"\n"):
                if line.strip() == b"{}":
                    self.send(c, JSON_PONG)
        elif self.protobuf:
            for _reply_id, _has_error, size in pb_replies(payload):
                if size == 0:
                    self.send(c, PB_PONG)
        elif self.mode == "socketio" and payload == b"2":
            self.send(c, EIO_PONG)

    def deliveries(self, c: Client, data: bytes) -> None:
        """Bytes that are not in the receive buffer (the tail of a pre-ready chunk)."""
        n = len(data)
        self.buf[:n] = data
        self.scan_buffer(c, n)

    def on_readable(self, c: Client) -> None:
        rest = c.rest
        off = len(rest)
        if off:
            self.buf[:off] = rest
        try:
            got = c.sock.recv_into(self.view[off : off + RECV_SIZE])
        except BlockingIOError:
            return
        except OSError as exc:
            self.fail(c, type(exc).__name__)
            return
        if not got:
            if c.state == READY:
                self.lose(c)
            else:
                self.fail(c, "closed by server")
            return
        if c.state != READY:  # c.rest is at the start of the buffer already
            c.rest = b""
            data = bytes(self.view[: off + got])
            if c.state == HANDSHAKE:
                self.on_handshake(c, data)
            else:
                self.pre_ready(c, data)
            return
        self.scan_buffer(c, off + got)

    def scan_buffer(self, c: Client, n: int) -> None:
        buf, out, mode, every = self.buf, self.out, self.scan_mode, self.cfg.sample_every
        fn = self.scan_fn
        pos = 0
        got = 0
        out[5] = self.countdown
        while True:
            if fn is not None:
                pos = fn(self.addr, pos, n, mode, every, out)
            else:
                pos = _scan_py(buf, pos, n, mode, every, out)
            got += out[4]
            event = out[0]
            if not event:
                break
            start, end = out[1], out[2]
            if event == EV_SAMPLE:
                now = time.time_ns()
                parsed = parse_payload(buf, start, end)
                if parsed is None:
                    self.bad_samples += 1
                else:
                    self.latencies.append(now - parsed[1])
            elif event == EV_CONTROL:
                self.control(c, out[3] & 0x0F, bytes(buf[start:end]))
                if c.sock is None:
                    break
            else:
                self.check(c, bytes(buf[start:end]))
                if c.sock is None:
                    break
        self.countdown = out[5]
        if c.sock is not None:
            if pos < n:
                if n - pos > MAX_PARTIAL:
                    self.lose(c)
                else:
                    c.rest = bytes(buf[pos:n])
            else:
                c.rest = b""
        if got:
            self.last_ns = time.time_ns()
            self.delivered += got
            c.received += got
            if not c.done and c.received >= c.expected:
                c.done = True
                self.complete += 1

    # -- the loop -------------------------------------------------------------

    def poll_once(self, timeout: float) -> None:
        by_fd = self.by_fd
        for fd, ev in self.ep.poll(timeout):
            c = by_fd.get(fd)
            if c is None:
                if fd == self.pipe_fd:
                    self.control_message()
                continue
            if c.state == CONNECTING:
                self.on_connected(c)
                continue
            if ev & EPOLLIN or ev & (select.EPOLLHUP | select.EPOLLERR):
                self.on_readable(c)
            if c.out and ev & EPOLLOUT and c.sock is not None:
                self.flush(c)

    def control_message(self) -> None:
        try:
            message = self.pipe.recv()
        except (EOFError, OSError):
            self.stop = True
            return
        if message[0] == "go":
            self.go = True
            self.deadline = time.monotonic() + max(0.0, (message[1] - time.time_ns()) / 1e9)
        else:
            self.stop = True

    def run(self) -> None:
        cfg = self.cfg
        started = time.perf_counter()
        self.queue.extend(self.clients)
        phase_end = time.monotonic() + cfg.connect_timeout
        self.pipe_fd = -1
        next_sweep = time.monotonic() + SWEEP_S
        while self.ready + self.gave_up < len(self.clients):
            now = time.monotonic()
            if now >= phase_end:
                self.errors["connect phase timed out"] += len(self.clients) - self.ready - self.gave_up
                break
            while self.timers and self.timers[0][0] <= now:
                self.queue.append(heapq.heappop(self.timers)[2])
            self.admit(now)
            self.poll_once(SWEEP_S)
            if now >= next_sweep:
                next_sweep = now + SWEEP_S
                for c in [c for c in self.by_fd.values() if c.state != READY and c.deadline <= now]:
                    self.fail(c, "no handshake/ready reply within 10s")
        opened = [c for c in self.clients if c.state == READY]
        for c in self.clients:  # give up on the rest
            if c.state != READY and c.sock is not None:
                self.drop(c)
                c.state = DEAD
        self.pipe.send(("ready", len(opened), dict(self.errors), time.perf_counter() - started,
                        sum(max(0, c.expected) for c in opened)))
        self.pipe_fd = self.pipe.fileno()
        self.ep.register(self.pipe_fd, EPOLLIN)
        active = len(opened)
        cpu0 = None
        while not self.stop:
            if self.go:
                if cpu0 is None:
                    cpu0 = own_cpu_s()
                    for c in opened:
                        if c.expected <= 0 and not c.done:
                            c.done = True
                            self.complete += 1
                if self.complete + self.lost >= active or time.monotonic() >= self.deadline:
                    break
            self.poll_once(0.05)
        cpu_s = own_cpu_s() - cpu0 if cpu0 is not None else 0.0
        self.pipe.send(("result", {
            "subscribers": active,
            "delivered": self.delivered,
            "complete": self.complete,
            "lost": self.lost,
            "last_ns": self.last_ns,
            "latencies_ns": self.latencies,
            "bad_samples": self.bad_samples,
            "first_lost_ns": 0,
            "reconnected": 0,
            "last_ready_ns": 0,
            "reconnect_errors": {},
            "cpu_s": cpu_s,
            "scanner": self.scanner,
        }))
        self.stop = True
        if cfg.linger:
            end = time.monotonic() + cfg.linger
            while time.monotonic() < end:
                self.poll_once(0.05)
        self.close_all(3.0)

    def close_all(self, grace: float) -> None:
        """A close frame each; the server closes TCP (TIME_WAIT stays there); abort the rest."""
        for c in self.clients:
            if c.sock is not None:
                self.send(c, CLOSE_FRAME)
        end = time.monotonic() + grace
        while self.by_fd and time.monotonic() < end:
            for fd, _ev in self.ep.poll(0.05):
                c = self.by_fd.get(fd)
                if c is None:
                    continue
                try:
                    data = c.sock.recv(RECV_SIZE)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    self.drop(c)
        for c in list(self.by_fd.values()):
            self.drop(c)
        self.ep.close()


def client_frame_raw(fin: int, opcode: int, payload: bytes) -> bytes:
    """An unmasked frame as the server sent it (to hand a pre-ready tail to the scanner)."""
    n = len(payload)
    b0 = (0x80 if fin else 0) | opcode
    if n < 126:
        return bytes((b0, n)) + payload
    if n < 1 << 16:
        return bytes((b0, 126)) + n.to_bytes(2, "big") + payload
    return bytes((b0, 127)) + n.to_bytes(8, "big") + payload


JSON_PONG = client_frame(b"{}")
PB_PONG = client_frame(b"\x00", OP_BINARY)
EIO_CONNECT = client_frame(b"40")
EIO_PONG = client_frame(b"3")
CLOSE_FRAME = client_frame((1000).to_bytes(2, "big"), OP_CLOSE)

_asyncio_worker = loadgen.subscriber_worker
#: modes with epoll subscribers; others (HTTP streaming: uni_sse) use loadgen's asyncio ones
FAST_MODES = ("raw", "pubsub", "centrifugo", "socketio")
_loadgen_report = loadgen._report


def fast_subscriber_worker(cfg: Config, count: int, first_index: int, pipe: Connection) -> None:
    """Entry point of a subscriber process (loadgen's worker pipe protocol)."""
    if cfg.reconnect or cfg.mode not in FAST_MODES:
        _asyncio_worker(cfg, count, first_index, pipe)
        return
    raise_nofile_limit()
    try:
        FastWorker(cfg, count, first_index, pipe).run()
    except BaseException as exc:
        try:
            pipe.send(("error", f"{type(exc).__name__}: {exc}"))
        except OSError:
            pass
        raise


def _report(cfg: Config, opened: int, connect_s: float, phase: dict, errors: list[str],
            produced: dict | None, extra: dict) -> dict:
    report = _loadgen_report(cfg, opened, connect_s, phase, errors, produced, extra)
    report["generator"] = "fastgen"
    report["scanner"] = scanner()[1]
    if produced and "worker_replies" in produced:
        results = [r[1] for r in produced["worker_replies"] if r[0] == "result"]
        if not results or any("cpu_s" not in r for r in results):  # loadgen's asyncio workers
            report["generator"] = "loadgen"
            return report
        cpu = sum(r["cpu_s"] for r in results)
        report["subscriber_cpu_s"] = round(cpu, 3)
        duration = report.get("duration_s")
        if duration:
            report["subscriber_cpu_share"] = round(cpu / duration / max(1, len(results)), 3)
        if cpu > 0 and report["delivered"]:
            report["generator_capacity_per_cpu_s"] = round(report["delivered"] / cpu)
    return report


def main(argv: list[str] | None = None) -> int:
    scanner()  # compile and load before the workers fork
    loadgen.subscriber_worker = fast_subscriber_worker
    loadgen._report = _report
    return loadgen.main(argv)


if __name__ == "__main__":
    sys.exit(main())
