"""In-process CPU per protocol connect + subscribe, without sockets: µs of process CPU time.

    PYTHONPATH=src python bench/connect_inproc.py 5000
    PYTHONPATH=src python bench/connect_inproc.py 5000 text    # the framework endpoint: upgrade only

A real ``Server`` (memory broker, ``ping_interval = 0``) and real ``Connection`` objects fed
the upgrade request and one frame with connect + subscribe through a fake transport (writes
counted, nothing sent), three loop turns each. With ``text``: the framework endpoint of
``bench/servers/hubbub_text.py`` (its ``App``; default settings), the upgrade request only. No kernel, no client in the figure: it resolves
differences of a few µs that ``connect_cpu.py`` (sockets, a loaded machine) cannot. Run it
interleaved over two trees (``PYTHONPATH=/tmp/base/src`` and ``src``) and compare medians.
"""
import asyncio
import base64
import gc
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from loadgen import client_frame  # noqa: E402  (bench/ on the path first)

from hubbub.config import Config  # noqa: E402
from hubbub.connection import Connection  # noqa: E402
from hubbub.server import Server  # noqa: E402


class FakeTransport(asyncio.Transport):
    """Counts what is written; reads are driven by the caller."""

    def __init__(self) -> None:
        super().__init__()
        self.out = 0
        self.closed = False

    def write(self, data: bytes) -> None:  # type: ignore[override]
        self.out += len(data)

    def writelines(self, chunks: list[bytes]) -> None:  # type: ignore[override]
        for data in chunks:
            self.out += len(data)

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 1234) if name == "peername" else default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True


REQUEST = (b"GET /connection/websocket HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
           b"Connection: Upgrade\r\nSec-WebSocket-Key: " + base64.b64encode(os.urandom(16))
           + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
FRAME = client_frame(b'{"id":1,"connect":{}}\n{"id":2,"subscribe":{"channel":"bench"}}')


async def main(n: int, kind: str = "protocol") -> None:
    if kind == "text":
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "servers"))
        import hubbub_text  # bench/servers/hubbub_text.py

        server = hubbub_text.build("127.0.0.1", 0).server
        request, frame = REQUEST.replace(b"/connection/websocket", hubbub_text.PATH.encode()), b""
    else:
        server = Server(Config(ping_interval=0))
        request, frame = REQUEST, FRAME
    await server.start(listen=False)
    conns: list[tuple[Connection, FakeTransport]] = []

    async def one() -> None:
        conn, transport = Connection(server), FakeTransport()
        conn.connection_made(transport)
        conn.data_received(request)
        if frame:
            conn.data_received(frame)
        for _ in range(3):
            await asyncio.sleep(0)
        conns.append((conn, transport))

    for _ in range(200):  # warm-up
        await one()
    for conn, _ in conns:
        conn.connection_lost(None)
    conns.clear()
    gc.collect()
    t0 = time.process_time()
    for _ in range(n):
        await one()
    t1 = time.process_time()
    assert all(transport.out > (200 if frame else 100) for _, transport in conns), "no 101 (+ replies) written"
    for conn, _ in conns:
        conn.connection_lost(None)
    print(f"{(t1 - t0) / n * 1e6:.1f}")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 5000, sys.argv[2] if len(sys.argv) > 2 else "protocol"))
