"""The benchmark load generator bench/fastgen.py: its frame scanner (C and Python
agree on every stream), and small real runs against trivial and hubbub in every mode,
where each subscriber must receive exactly what was published to its channels."""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
sys.path.insert(0, str(BENCH))

import fastgen


def _frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    return fastgen.client_frame_raw(1 if fin else 0, opcode, payload)


def _stream(rng: random.Random) -> bytes:
    """Server frames of every kind the scanner meets, in random order and sizes."""
    parts = []
    for seq in range(300):
        kind = rng.random()
        if kind < 0.6:
            payload = b"HB|%010d|%019d|" % (seq, time.time_ns()) + b"x" * rng.choice((0, 60, 200, 200, 200, 200, 200, 70000))
            parts.append(_frame(1, payload))
        elif kind < 0.7:
            batch = b"\n".join(b'{"push":{"pub":{"data":{"p":"HB|%010d|%019d|"}}}}' % (seq, 1) for _ in range(3))
            parts.append(_frame(1, batch))
        elif kind < 0.8:
            parts.append(_frame(1, b"{}"))
        elif kind < 0.9:
            parts.append(_frame(9, b"ping"))
        else:
            parts.append(_frame(2, b"\x00"))
    return b"".join(parts)


def _run_scanner(fn, data: bytes, mode: int, every: int, chunk: int) -> list[tuple]:
    """Feed ``data`` in chunks like the worker does; return every event and the total."""
    buf = bytearray(len(data) + 16)
    events = []
    rest = b""
    total = 0
    countdown = every
    pos_in = 0
    if fn is not None:
        cbuf = (fastgen.ctypes.c_char * len(buf)).from_buffer(buf)
        addr = fastgen.ctypes.addressof(cbuf)
        out = (fastgen.ctypes.c_long * 6)()
    else:
        out = [0] * 6
    while pos_in < len(data):
        piece = data[pos_in : pos_in + chunk]
        pos_in += chunk
        n = len(rest) + len(piece)
        buf[:n] = rest + piece
        pos = 0
        out[5] = countdown
        while True:
            pos = fn(addr, pos, n, mode, every, out) if fn is not None else fastgen._scan_py(buf, pos, n, mode, every, out)
            total += out[4]
            if not out[0]:
                break
            events.append((out[0], bytes(buf[out[1] : out[2]]), out[3]))
        countdown = out[5]
        rest = bytes(buf[pos:n])
    events.append(("total", total, rest))
    return events


def test_c_and_python_scanners_agree_on_every_mode_and_chunking():
    fn, kind = fastgen.load_scanner()
    if fn is None:
        pytest.skip(f"no C scanner here: {kind}")
    rng = random.Random(7)
    data = _stream(rng)
    for mode in (fastgen.COUNT_FRAMES, fastgen.COUNT_MARKER, fastgen.COUNT_MARKER_JSON):
        for chunk in (13, 1000, len(data)):
            c_events = _run_scanner(fn, data, mode, 5, chunk)
            py_events = _run_scanner(None, data, mode, 5, chunk)
            assert c_events == py_events, (mode, chunk)
            assert c_events[-1][2] == b""  # every frame consumed
    # marker mode counts the three batched pushes of a frame; frames mode counts the frame
    markers = _run_scanner(None, data, fastgen.COUNT_MARKER, 10**9, len(data))[-1][1]
    assert markers == data.count(b"HB|")
    events = _run_scanner(None, data, fastgen.COUNT_MARKER_JSON, 10**9, len(data))
    assert sum(1 for e in events if e[0] == fastgen.EV_CHECK and e[1] == b"{}") == data.count(_frame(1, b"{}"))
    assert sum(1 for e in events if e[0] == fastgen.EV_CONTROL) == data.count(_frame(9, b"ping"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serve(argv: list[str], port: int) -> subprocess.Popen:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    proc = subprocess.Popen(argv + ["--host", "127.0.0.1", "--port", str(port)], env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("server did not listen")


@pytest.fixture(scope="module")
def servers():
    trivial_port, hubbub_port, socketio_port = _free_port(), _free_port(), _free_port()
    procs = [
        _serve([sys.executable, str(BENCH / "servers" / "trivial.py")], trivial_port),
        _serve([sys.executable, "-m", "hubbub", "serve"], hubbub_port),
        _serve([sys.executable, str(BENCH / "servers" / "hubbub_socketio.py")], socketio_port),
    ]
    yield {"trivial": trivial_port, "hubbub": hubbub_port, "hubbub-socketio": socketio_port,
           "hubbub-socketio-pid": procs[2].pid}
    for proc in procs:
        proc.terminate()
        proc.wait(10)


def _fastgen(port: int, *args: str) -> dict:
    argv = [sys.executable, str(BENCH / "fastgen.py"), "--port", str(port), "--subscribers", "40",
            "--messages", "60", "--sample-every", "7", "--settle", "0.1", "--timeout", "20", *args, "--json"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=90, cwd=REPO, check=False)
    assert proc.stdout.strip(), proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    ("server", "args"),
    [
        ("trivial", ("--path", "/")),
        ("trivial", ("--mode", "pubsub", "--groups", "4")),
        ("trivial", ("--path", "/connection/websocket", "--mode", "centrifugo", "--groups", "4")),
        ("trivial", ("--path", "/connection/websocket", "--mode", "centrifugo", "--sub-format", "protobuf")),
        ("hubbub", ("--path", "/ws/bench")),
        ("hubbub", ("--path", "/connection/websocket", "--mode", "centrifugo", "--groups", "4")),
        ("hubbub", ("--path", "/connection/websocket", "--mode", "centrifugo", "--sub-format", "protobuf",
                    "--groups", "4")),
    ],
)
def test_every_subscriber_gets_exactly_its_publications(servers, server, args):
    report = _fastgen(servers[server], *args)
    assert report["generator"] == "fastgen"
    assert report["subscribers"] == 40
    assert report["complete"], report["errors"]
    assert report["delivered"] == report["expected"] > 0
    assert report["bad_samples"] == 0
    assert report["latency_ms"]["samples"] >= report["delivered"] // 7 - 1
    assert 0 < report["latency_ms"]["p50"] < 20_000
    assert report["subscriber_cpu_s"] >= 0


@pytest.mark.parametrize("args", [(), ("--groups", "4")])
def test_socketio_peer_and_server_cpu_per_delivery(servers, args):
    """The hubbub-socketio bench peer (python-socketio's bench app, the import changed) on the
    socket.io-client wire, and the server CPU the report takes from ``--cpu-pid``."""
    report = _fastgen(servers["hubbub-socketio"], "--path", "/socket.io/?EIO=4&transport=websocket",
                      "--mode", "socketio", "--cpu-pid", str(servers["hubbub-socketio-pid"]), *args)
    assert report["complete"], report["errors"]
    assert report["delivered"] == report["expected"] > 0
    assert report["server_cpu_deliver_s"] >= 0 and report["server_cpu_per_delivery_us"] >= 0
    assert report["server_cpu_per_connect_us"] >= 0


def test_idle_connections_and_memory_reading(servers):
    proc = subprocess.run(
        [sys.executable, str(BENCH / "fastgen.py"), "--port", str(servers["hubbub"]), "--path",
         "/connection/websocket", "--mode", "centrifugo", "--sub-format", "protobuf", "--idle",
         "--subscribers", "30", "--warmup", "5", "--hold", "0.2", "--rss-pid", str(os.getpid()), "--json"],
        capture_output=True, text=True, timeout=60, cwd=REPO, check=False)
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["complete"] and report["subscribers"] == 30
    assert report["rss_after_kib"] > 0
