"""The listener (hubbub.listener): accepting, closing, and the file-descriptor limit.

The fd-limit tests flood a server in a subprocess whose ``RLIMIT_NOFILE`` is
lowered with more TCP connections than it may hold, measure its CPU time and
log lines over a 3 s window, then free descriptors and time a canary's echo:
once for the listener alone (resumed by ``connection_lost`` only), once for
``hubbub serve`` (outside security test, finding 3: asyncio's own accept loop
logged a traceback and scheduled a retry for each of its ``backlog``
iterations, and spun).
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import select
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import connect as ws_connect

import hubbub.listener as listener_mod
from hubbub.listener import Listener

#: Upper bound for any single wait in a test (seconds).
TIMEOUT = 10.0

LINUX = sys.platform.startswith("linux")


class Echo(asyncio.Protocol):
    """Echoes what it receives."""

    #: the most recent transport set up, for tests that inspect it
    last: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = Echo.last = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


async def echo_round_trip(port: int, payload: bytes = b"hello") -> bytes:
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), TIMEOUT)
    try:
        writer.write(payload)
        return await asyncio.wait_for(reader.readexactly(len(payload)), TIMEOUT)
    finally:
        writer.close()
        await writer.wait_closed()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# -- in-process ------------------------------------------------------------------------------


async def test_echo_then_close() -> None:
    loop = asyncio.get_running_loop()
    listener = await Listener.start(loop, Echo, host="127.0.0.1", port=0)
    assert len(listener.sockets) == 1
    host, port = listener.sockets[0].getsockname()[:2]
    assert host == "127.0.0.1" and port > 0
    assert await echo_round_trip(port) == b"hello"
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), TIMEOUT)
    writer.write(b"open")
    assert await asyncio.wait_for(reader.readexactly(4), TIMEOUT) == b"open"
    # while it is open: the transport is what create_server gives (peername, TCP_NODELAY)
    transport = Echo.last
    assert transport is not None and not transport.is_closing()
    assert transport.get_extra_info("peername") == writer.get_extra_info("sockname")
    assert transport.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    writer.close()
    await writer.wait_closed()
    assert listener.accepted == 2 and not listener.paused and listener.is_serving()

    listener.close()
    await asyncio.wait_for(listener.wait_closed(), TIMEOUT)
    assert listener.sockets == [] and not listener.is_serving()
    with pytest.raises(OSError):
        await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), TIMEOUT)
    listener.close()  # idempotent
    listener.resume()  # a no-op once closed


async def test_port_taken_raises_oserror() -> None:
    loop = asyncio.get_running_loop()
    first = await Listener.start(loop, Echo, host="127.0.0.1", port=0)
    port = first.sockets[0].getsockname()[1]
    try:
        with pytest.raises(OSError) as info:
            await Listener.start(loop, Echo, host="127.0.0.1", port=port)
        assert info.value.errno == errno.EADDRINUSE
        assert "127.0.0.1" in str(info.value)
    finally:
        first.close()
        await first.wait_closed()


def _has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.parametrize("host", ["::1", None, ""])
async def test_bind_like_create_server(host: str | None) -> None:
    if host == "::1" and not _has_ipv6():
        pytest.skip("no IPv6 loopback here")
    loop = asyncio.get_running_loop()
    listener = await Listener.start(loop, Echo, host=host, port=0)
    try:
        families = {s.family for s in listener.sockets}
        if host == "::1":
            assert families == {socket.AF_INET6}
        else:  # all interfaces: 0.0.0.0 (and :: when the host has IPv6)
            assert socket.AF_INET in families
        for s in listener.sockets:
            assert s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
            assert not s.getblocking()
        v4 = [s for s in listener.sockets if s.family == socket.AF_INET]
        if v4:
            assert await echo_round_trip(v4[0].getsockname()[1]) == b"hello"
    finally:
        listener.close()
        await listener.wait_closed()


async def test_sock_argument_and_errors() -> None:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    with pytest.raises(ValueError):
        await Listener.start(loop, Echo, sock=sock, port=1)
    with pytest.raises(ValueError):
        await Listener.start(loop, Echo)
    listener = await Listener.start(loop, Echo, sock=sock)
    assert listener.sockets == [sock]
    assert await echo_round_trip(sock.getsockname()[1]) == b"hello"
    listener.close()
    await listener.wait_closed()
    assert sock.fileno() == -1, "the listener owns and closes the socket it was given"


class RefusingSocket(socket.socket):
    """A listening socket whose ``accept()`` fails with ``refuse`` while it is set."""

    refuse = 0
    calls = 0
    called: asyncio.Event

    def accept(self) -> tuple[socket.socket, Any]:
        self.calls += 1
        self.called.set()
        if self.refuse:
            raise OSError(self.refuse, os.strerror(self.refuse))
        return super().accept()


async def _refusing_listener(
    monkeypatch: pytest.MonkeyPatch, initial: float, maximum: float
) -> tuple[Listener, RefusingSocket]:
    monkeypatch.setattr(listener_mod, "BACKOFF_INITIAL", initial)
    monkeypatch.setattr(listener_mod, "BACKOFF_MAX", maximum)
    sock = RefusingSocket(socket.AF_INET, socket.SOCK_STREAM)
    sock.called = asyncio.Event()
    sock.bind(("127.0.0.1", 0))
    listener = await Listener.start(asyncio.get_running_loop(), Echo, sock=sock)
    return listener, sock


async def test_resource_refusal_pauses_until_resume(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """EMFILE: accept stops at once, one warning line without a traceback,
    no accept while paused, resume() accepts the waiting connections."""
    caplog.set_level(logging.WARNING, logger="hubbub.listener")
    # a back-off this long means only resume() can restart accepting in this test
    listener, sock = await _refusing_listener(monkeypatch, 60.0, 60.0)
    port = sock.getsockname()[1]
    sock.refuse = errno.EMFILE
    try:
        first = asyncio.create_task(echo_round_trip(port, b"one"))
        await asyncio.wait_for(sock.called.wait(), TIMEOUT)
        assert sock.calls == 1, "the accept loop must stop at the first EMFILE"
        assert listener.paused and listener.refused == 1
        second = asyncio.create_task(echo_round_trip(port, b"two"))
        for _ in range(50):  # bounded: the loop runs, the listener must not poll
            await asyncio.sleep(0)
        assert sock.calls == 1 and not first.done() and not second.done()

        records = [r for r in caplog.records if r.name == "hubbub.listener"]
        assert len(records) == 1, records
        (record,) = records
        assert record.levelno == logging.WARNING and record.exc_info is None
        message = record.getMessage()
        assert "EMFILE" in message and "1 refusal since the last report" in message
        assert "\n" not in message

        sock.refuse = 0
        listener.resume()
        assert not listener.paused
        assert await asyncio.wait_for(first, TIMEOUT) == b"one"
        assert await asyncio.wait_for(second, TIMEOUT) == b"two"
        listener.resume()  # not paused: a no-op
        assert not listener.paused
    finally:
        listener.close()
        await listener.wait_closed()


async def test_backoff_timer_retries_and_log_is_throttled(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Without resume(), the back-off timer re-arms accepting (one timer at a
    time, doubling); repeated refusals are counted, not logged."""
    caplog.set_level(logging.WARNING, logger="hubbub.listener")
    listener, sock = await _refusing_listener(monkeypatch, 0.01, 0.04)
    port = sock.getsockname()[1]
    sock.refuse = errno.ENFILE
    try:
        client = asyncio.create_task(echo_round_trip(port, b"late"))
        started = time.monotonic()
        for _ in range(100):  # bounded: wait for 5 refusals, each woken by the timer
            sock.called.clear()
            await asyncio.wait_for(sock.called.wait(), TIMEOUT)
            if sock.calls >= 5:
                break
        elapsed = time.monotonic() - started
        assert sock.calls == 5 == listener.refused
        # delays 0.01 + 0.02 + 0.04 + 0.04 between the 5 attempts: no spinning
        assert elapsed >= 0.1
        records = [r for r in caplog.records if r.name == "hubbub.listener"]
        assert len(records) == 1 and "ENFILE" in records[0].getMessage()

        sock.refuse = 0  # descriptors are back: the next timer accepts the client
        assert await asyncio.wait_for(client, TIMEOUT) == b"late"
        assert not listener.paused
    finally:
        listener.close()
        await listener.wait_closed()


async def test_unexpected_accept_error_pauses_too(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="hubbub.listener")
    listener, sock = await _refusing_listener(monkeypatch, 60.0, 60.0)
    port = sock.getsockname()[1]
    sock.refuse = errno.EINVAL
    try:
        client = asyncio.create_task(echo_round_trip(port, b"x"))
        await asyncio.wait_for(sock.called.wait(), TIMEOUT)
        for _ in range(50):
            await asyncio.sleep(0)
        assert sock.calls == 1 and listener.paused and listener.refused == 0
        (record,) = [r for r in caplog.records if r.name == "hubbub.listener"]
        assert record.levelno == logging.ERROR and record.exc_info is not None
        sock.refuse = 0
        listener.resume()
        assert await asyncio.wait_for(client, TIMEOUT) == b"x"
    finally:
        listener.close()
        await listener.wait_closed()


async def test_close_cancels_pending_handoffs_and_closes_their_sockets() -> None:
    """close() while accepted sockets wait for their hand-off task: each is
    closed (by the listener if no transport took it yet), nothing is left."""
    loop = asyncio.get_running_loop()
    before = open_fds() if LINUX else 0
    listener: Listener | None = None
    made = 0

    def factory() -> asyncio.Protocol:
        nonlocal made
        made += 1
        assert listener is not None
        listener.close()  # the other hand-offs of this batch have not started
        return Echo()

    listener = await Listener.start(loop, factory, host="127.0.0.1", port=0)
    port = listener.sockets[0].getsockname()[1]
    # connect synchronously: all five wait in the backlog for one wake-up
    clients = [socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) for _ in range(5)]
    try:
        for c in clients:
            c.setblocking(False)
        for c in clients:
            try:
                data = await asyncio.wait_for(loop.sock_recv(c, 10), TIMEOUT)
            except ConnectionResetError:
                data = b""
            assert data == b"", "the server side must be closed"
        await asyncio.wait_for(listener.wait_closed(), TIMEOUT)
        assert made == 1 and not listener._tasks
    finally:
        for c in clients:
            c.close()
    if LINUX:
        assert open_fds() == before


async def test_failing_protocol_factory_closes_socket(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="hubbub.listener")
    loop = asyncio.get_running_loop()

    def factory() -> asyncio.Protocol:
        raise RuntimeError("boom")

    listener = await Listener.start(loop, factory, host="127.0.0.1", port=0)
    port = listener.sockets[0].getsockname()[1]
    try:
        for _ in range(3):
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), TIMEOUT)
            try:
                assert await asyncio.wait_for(reader.read(10), TIMEOUT) == b""
            except ConnectionResetError:
                pass
            writer.close()
        records = [r for r in caplog.records if r.name == "hubbub.listener"]
        assert len(records) == 1, "failures are logged once per interval"
        assert records[0].exc_info is not None and "boom" in str(records[0].exc_info[1])
        assert listener.is_serving() and not listener.paused
    finally:
        listener.close()
        await listener.wait_closed()


# -- at the file-descriptor limit, in a subprocess -------------------------------------------

#: The echo server on a Listener run by the fd-limit test. argv: path of
#: listener.py, RLIMIT_NOFILE soft limit, back-off ("default" or seconds for
#: both BACKOFF_INITIAL and BACKOFF_MAX). Prints one JSON line when listening
#: and one when closed; stdin's EOF stops it.
SERVER_SCRIPT = r"""
import asyncio, importlib.util, json, logging, os, resource, sys, threading

path, limit, backoff = sys.argv[1], int(sys.argv[2]), sys.argv[3]
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
_soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))

# listener.py by path: it must not need the rest of hubbub
spec = importlib.util.spec_from_file_location("listener_under_test", path)
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
if backoff != "default":
    mod.BACKOFF_INITIAL = mod.BACKOFF_MAX = float(backoff)

listener = None
active = set()
drained = None

class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        active.add(self)
    def data_received(self, data):
        self.transport.write(data)
    def connection_lost(self, exc):
        active.discard(self)
        if listener is not None:
            listener.resume()
        if drained is not None and not active:
            drained.set()

async def main():
    global listener, drained
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    def wait_stdin():
        sys.stdin.read()
        loop.call_soon_threadsafe(stop.set)
    threading.Thread(target=wait_stdin, daemon=True).start()
    server = listener = await mod.Listener.start(loop, Echo, host="127.0.0.1", port=0, backlog=4096)
    fds_start = len(os.listdir("/proc/self/fd"))
    print(json.dumps({
        "port": server.sockets[0].getsockname()[1],
        "imported": sorted(m for m in ("hubbub", "websockets", "h11") if m in sys.modules),
    }), flush=True)
    await stop.wait()
    server.close()
    await server.wait_closed()
    drained = asyncio.Event()
    if active:
        try:
            await asyncio.wait_for(drained.wait(), 5)
        except asyncio.TimeoutError:
            pass
    print(json.dumps({
        "fds_start": fds_start,
        "fds_end": len(os.listdir("/proc/self/fd")),
        "active": len(active),
        "tasks": len(listener._tasks),
        "refused": listener.refused,
        "accepted": listener.accepted,
    }), flush=True)

asyncio.run(main())
"""

SERVER_LIMIT = 200  # RLIMIT_NOFILE soft limit of the server
FLOOD = 400  # connections held open: twice the limit
CLOSED = 250  # flood connections closed before the canary (see run_flood)
WINDOW = 3.0  # seconds of flood measured


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds (/proc/PID/stat fields 14 and 15)."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2 :].split()  # fields[0] is field 3 (state)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def count_lines(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))


def read_json_line(proc: subprocess.Popen[bytes], timeout: float) -> dict[str, Any]:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "the server printed nothing"
    line = proc.stdout.readline()
    assert line, "the server exited"
    return json.loads(line)


def echo(sock: socket.socket, payload: bytes, timeout: float) -> bytes:
    sock.settimeout(timeout)
    sock.sendall(payload)
    data = b""
    while len(data) < len(payload):
        chunk = sock.recv(len(payload) - len(data))
        if not chunk:
            break
        data += chunk
    return data


def run_flood(tmp_path: Path, *, backoff: str = "default", canary_timeout: float = TIMEOUT) -> dict[str, Any]:
    """The scenario, measured. Returns the figures.

    1. The server starts with RLIMIT_NOFILE 200 (its stderr goes to a file).
    2. FLOOD connections are opened and held: ~190 are accepted, the rest wait
       in the listen backlog. CPU time and log lines are measured for WINDOW s
       from the start of the flood.
    3. The first CLOSED flood connections are closed. The backlog is FIFO: the
       canary is accepted after every connection still waiting, so more are
       closed than wait (closing 100 of 400 would leave the canary stuck behind
       210 waiting ones, with either server).
    4. A canary connects and times its echo; the last flood connection (one
       that waited in the backlog) must echo too: nothing was lost.
    5. Everything is closed; the server reports its descriptors and tasks.
    """
    import resource  # POSIX only, as these tests are

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < FLOOD + 100:  # this process holds the flood
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    log_path = tmp_path / "listener.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-c", SERVER_SCRIPT, listener_mod.__file__, str(SERVER_LIMIT), backoff],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log_file,
        )
    flood: list[socket.socket] = []
    figures: dict[str, Any] = {"backoff": backoff}
    try:
        hello = read_json_line(proc, TIMEOUT)
        figures["imported"] = hello["imported"]
        addr = ("127.0.0.1", hello["port"])

        cpu0 = cpu_seconds(proc.pid)
        t0 = time.monotonic()
        for _ in range(FLOOD):
            flood.append(socket.create_connection(addr, timeout=TIMEOUT))
        figures["flood_connect_s"] = round(time.monotonic() - t0, 3)
        # the measurement window (not a wait for an event): hold the flood
        time.sleep(max(0.0, WINDOW - (time.monotonic() - t0)))
        figures["cpu_s"] = round(cpu_seconds(proc.pid) - cpu0, 3)
        figures["window_s"] = round(time.monotonic() - t0, 3)
        figures["log_lines"] = count_lines(log_path)
        figures["log_bytes"] = log_path.stat().st_size

        for s in flood[:CLOSED]:
            s.close()
        del flood[:CLOSED]
        t1 = time.monotonic()
        canary = socket.create_connection(addr, timeout=canary_timeout)
        flood.append(canary)
        try:
            got = echo(canary, b"canary", canary_timeout)
        except OSError:
            got = b""
        figures["canary_s"] = round(time.monotonic() - t1, 3) if got == b"canary" else None
        try:
            figures["waiting_echoed"] = echo(flood[-2], b"w", canary_timeout) == b"w"
        except OSError:
            figures["waiting_echoed"] = False
    finally:
        for s in flood:
            s.close()
        try:
            assert proc.stdin is not None
            proc.stdin.close()
            bye = read_json_line(proc, 3 * TIMEOUT)
            figures.update(bye)
            figures["exit"] = proc.wait(TIMEOUT)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    figures["log_lines_total"] = count_lines(log_path)
    with open(log_path, "rb") as f:
        figures["log_head"] = f.read(2000).decode(errors="replace")
    log_path.unlink()
    print("\nFIGURES " + json.dumps({k: v for k, v in figures.items() if k != "log_head"}))
    return figures


@pytest.mark.slow
@pytest.mark.skipif(not LINUX, reason="needs /proc and RLIMIT_NOFILE")
def test_fd_limit_listener_stays_quiet_and_resumes_on_connection_lost(tmp_path: Path) -> None:
    """With a 60 s back-off, the timer never fires during the test: the canary
    only gets in because connection_lost calls resume(). (The back-off timer
    itself: ``test_backoff_timer_retries_and_log_is_throttled``, and ``hubbub
    serve`` below.)"""
    f = run_flood(tmp_path, backoff="60", canary_timeout=2.0)
    assert f["imported"] == [], "listener.py imports nothing from hubbub, websockets or h11"
    assert f["log_lines"] < 20, f["log_head"]
    assert f["cpu_s"] < 0.5, f
    assert f["refused"] >= 1, "the flood must reach the descriptor limit"
    assert f["canary_s"] is not None and f["canary_s"] < 2.0, f
    assert f["waiting_echoed"], "connections waiting in the backlog are served once fds free up"
    assert f["accepted"] >= FLOOD + 1
    # clean: listening socket closed, every connection and hand-off task gone
    assert f["exit"] == 0 and f["active"] == 0 and f["tasks"] == 0
    assert f["fds_end"] == f["fds_start"] - 1
    assert f["log_lines_total"] < 20


@pytest.mark.slow
@pytest.mark.skipif(not LINUX, reason="needs /proc and prlimit")
def test_fd_limit_hubbub_serve_stays_quiet_and_resumes(serve_process: Any) -> None:
    """``hubbub serve`` at its descriptor limit (outside security test, finding
    3): a few log lines, little CPU, and accepting resumes (with the default
    back-off) when descriptors are free again."""
    import resource  # POSIX only, as these tests are

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1024 and hard > soft:  # this process holds the flood
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    server = serve_process()
    resource.prlimit(server.proc.pid, resource.RLIMIT_NOFILE, (256, 256))
    flood: list[socket.socket] = []
    try:
        cpu0, lines0 = cpu_seconds(server.proc.pid), len(server.lines)
        for _ in range(600):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", server.port))
            flood.append(s)
        # the measurement window (not a wait for an event): hold the connections open
        peak_fds = 0
        window = time.monotonic() + WINDOW
        while time.monotonic() < window:
            peak_fds = max(peak_fds, len(os.listdir(f"/proc/{server.proc.pid}/fd")))
            time.sleep(0.05)
        cpu, lines = cpu_seconds(server.proc.pid) - cpu0, len(server.lines) - lines0
        # free most descriptors: the server must serve a new client again soon
        for s in flood[:500]:
            s.close()
        freed = time.monotonic()
        with ws_connect(f"ws://127.0.0.1:{server.port}/ws/canary", open_timeout=4) as ws:
            ws.send("canary")
            assert ws.recv(timeout=4) == "canary"
        echo_after = time.monotonic() - freed
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/health", timeout=TIMEOUT) as resp:
            assert resp.status == 200 and json.loads(resp.read())["status"] == "ok"
        head = "".join(server.lines[lines0:lines0 + 6])
        assert peak_fds >= 200, f"the flood never brought the server near its limit ({peak_fds} fds)"
        assert lines < 200, f"{lines} log lines in 3 s at the fd limit; first ones:\n{head}"
        assert cpu < 1.0, f"{cpu:.2f} s of CPU in a 3 s window at the fd limit"
        assert echo_after < 4.0, f"relay echo only {echo_after:.1f} s after descriptors were freed"
    finally:
        for s in flood:
            s.close()
