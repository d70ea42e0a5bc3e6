#!/usr/bin/env python3
"""permessage-deflate: bytes and server CPU per delivery, and KiB per idle connection.

    python bench/compression.py [--subscribers 1000] [--messages 200] [--size 2048] [--runs 3]

For each mode (plain, deflate) it starts ``hubbub serve`` (``HUBBUB_WEBSOCKET_COMPRESSION``
off or on), opens ``--subscribers`` relay clients on ``/ws/bench`` in this process (raw
asyncio protocols that offer ``permessage-deflate`` in the deflate mode, and count frames
and bytes by their headers; one of them inflates and checks every message), measures the
server's RSS before and after they connect (KiB per idle connection), then a producer
publishes ``--messages`` JSON documents of about ``--size`` bytes (deterministic: a price
board whose values change per message) and the server's CPU time (``/proc/PID/stat``) is
read around the fan-out. Printed: bytes on the wire per delivery (frame headers included),
server CPU µs per delivery and KiB per idle connection, the median of ``--runs``.

``--docs-section FILE`` writes the figures as the Markdown section that ``bench/run.py``
puts into ``docs/benchmarks.md`` (it reads ``bench/results/compression.md``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TICK = os.sysconf("SC_CLK_TCK")


def document(seq: int, size: int) -> bytes:
    """A price board of about ``size`` bytes of JSON; values change with ``seq``."""
    rng = random.Random(seq)
    rows = []
    names = ["ACME", "GLOBEX", "INITECH", "UMBRELLA", "HOOLI", "STARK", "WAYNE", "WONKA", "TYRELL", "CYBERDYNE"]
    while True:
        i = len(rows)
        rows.append({"symbol": f"{names[i % len(names)]}.{i}", "bid": round(100 + rng.random() * 10, 2),
                     "ask": round(110 + rng.random() * 10, 2), "volume": rng.randrange(1000, 100000),
                     "change": round(rng.uniform(-5, 5), 3), "halted": False})
        doc = json.dumps({"seq": seq, "ts": 1700000000 + seq, "board": rows}, separators=(",", ":")).encode()
        if len(doc) >= size:
            return doc


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Subscriber(asyncio.Protocol):
    def __init__(self, offer: bool, check: list[bytes] | None) -> None:
        self.offer = offer
        self.check = check  # expected documents, in order: inflate and compare
        self.head = b""
        self.opened = asyncio.get_running_loop().create_future()
        self.buffer = bytearray()
        self.frames = 0
        self.bytes = 0
        self.compressed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        offer = "Sec-WebSocket-Extensions: permessage-deflate\r\n" if self.offer else ""
        transport.write((f"GET /ws/bench HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"  # type: ignore[attr-defined]
                         f"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                         f"Sec-WebSocket-Version: 13\r\n{offer}\r\n").encode())

    def data_received(self, data: bytes) -> None:
        if not self.opened.done():
            self.head += data
            if b"\r\n\r\n" not in self.head:
                return
            head, _, rest = self.head.partition(b"\r\n\r\n")
            self.compressed = b"permessage-deflate" in head.lower()
            self.opened.set_result(b" 101 " in head.split(b"\r\n")[0])
            data = rest
        self.bytes += len(data)
        buf = self.buffer
        buf += data
        while len(buf) >= 2:
            size, start = buf[1] & 0x7F, 2
            if size == 126:
                if len(buf) < 4:
                    return
                size, start = int.from_bytes(buf[2:4], "big"), 4
            elif size == 127:
                if len(buf) < 10:
                    return
                size, start = int.from_bytes(buf[2:10], "big"), 10
            if len(buf) < start + size:
                return
            if self.check is not None:
                payload = bytes(buf[start:start + size])
                if buf[0] & 0x40:
                    payload = zlib.decompressobj(-15).decompress(payload + b"\x00\x00\xff\xff")
                assert payload == self.check[self.frames], "a delivery differs from what was published"
            del buf[:start + size]
            self.frames += 1


async def one_run(mode: str, subscribers: int, messages: int, size: int) -> dict[str, float]:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"),
               HUBBUB_WEBSOCKET_COMPRESSION="true" if mode == "deflate" else "false")
    server = subprocess.Popen([sys.executable, "-m", "hubbub", "serve", "--port", str(port), "--no-page",
                               "--ping-interval", "0", "--log-level", "warning"], env=env)
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).read()
                break
            except OSError:
                await asyncio.sleep(0.05)
        loop = asyncio.get_running_loop()
        docs = [document(n, size) for n in range(messages)]
        rss_before = rss_kib(server.pid)
        subs = []
        for n in range(subscribers):
            _, sub = await loop.create_connection(lambda n=n: Subscriber(mode == "deflate", docs if n == 0 else None),
                                                  "127.0.0.1", port)
            subs.append(sub)
        assert all(await asyncio.gather(*(sub.opened for sub in subs)))
        assert all(sub.compressed == (mode == "deflate") for sub in subs)
        await asyncio.sleep(1.0)  # settle: the server subscribes them and frees the handshakes
        idle_kib = (rss_kib(server.pid) - rss_before) / subscribers
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /ws/bench?echo=false HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     b"Sec-WebSocket-Version: 13\r\n\r\n")
        await reader.readuntil(b"\r\n\r\n")
        cpu0, t0 = cpu_seconds(server.pid), time.monotonic()
        for n, doc in enumerate(docs):
            header = bytes((0x81, 0x80 | 126)) + len(doc).to_bytes(2, "big") if len(doc) < 65536 else b""
            writer.write(header + b"\x00\x00\x00\x00" + doc)  # mask key 0: the payload as it is
            if n % 20 == 19:  # a window: at most 20 publications ahead of the slowest subscriber
                while min(sub.frames for sub in subs) < n - 20:
                    await asyncio.sleep(0.001)
        while min(sub.frames for sub in subs) < messages:
            await asyncio.sleep(0.005)
        elapsed = time.monotonic() - t0
        cpu = cpu_seconds(server.pid) - cpu0
        deliveries = subscribers * messages
        result = {"bytes_per_delivery": sum(sub.bytes for sub in subs) / deliveries,
                  "cpu_us_per_delivery": cpu / deliveries * 1e6, "idle_kib_per_connection": idle_kib,
                  "deliveries_per_s": deliveries / elapsed, "payload": sum(map(len, docs)) / messages}
        writer.close()
        for sub in subs:
            sub.transport.close()
        return result
    finally:
        server.terminate()
        server.wait(15)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--docs-section", type=Path, metavar="FILE",
                        help="write the figures as a Markdown section (bench/results/compression.md)")
    args = parser.parse_args()
    started = time.time()
    results: dict[str, list[dict[str, float]]] = {"plain": [], "deflate": []}
    for _ in range(args.runs):
        for mode in results:  # interleaved: the machine's noise hits both alike
            results[mode].append(asyncio.run(one_run(mode, args.subscribers, args.messages, args.size)))
    payload = results["plain"][0]["payload"]
    print(f"{args.subscribers} subscribers (relay), {args.messages} publications of "
          f"{payload:.0f} bytes of JSON, median of {args.runs} runs")
    print(f"{'mode':8} {'bytes/delivery':>15} {'CPU µs/delivery':>16} {'deliveries/s':>13} {'KiB/idle conn':>14}")
    medians = {}
    for mode, runs in results.items():
        med = medians[mode] = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        print(f"{mode:8} {med['bytes_per_delivery']:15.0f} {med['cpu_us_per_delivery']:16.2f} "
              f"{med['deliveries_per_s']:13.0f} {med['idle_kib_per_connection']:14.2f}")
    if args.docs_section:
        plain, deflate = medians["plain"], medians["deflate"]
        argv = " ".join(sys.argv[1:])
        lines = [
            "## permessage-deflate",
            "",
            f"Measured by `python bench/compression.py {argv}` (finished "
            f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC, {time.time() - started:.0f} s; not part of "
            "`--suite`): `hubbub serve` with `websocket_compression` off (plain) and on (deflate, level 1, "
            f"minimum size 128 bytes), {args.subscribers:,} relay subscribers on `/ws/bench` (raw asyncio "
            "clients in one process, counting frames by their headers; one inflates and checks every "
            f"message), {args.messages} publications of a JSON price board of {payload:,.0f} bytes whose "
            "values change with every publication. Bytes per delivery are what the subscribers read "
            "(frame headers included); server CPU is the process's user + system time around the fan-out "
            "(`/proc/PID/stat`); KiB per idle connection is the server's RSS growth over the "
            f"{args.subscribers:,} connections, divided by them. Median of {args.runs} interleaved runs. With "
            "`server_no_context_takeover` every message is compressed alone, once per publication for all "
            "its subscribers, so the compression's cost is per publication, not per delivery.",
            "",
            "| mode | bytes per delivery | server CPU µs per delivery | deliveries/s | KiB per idle connection |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for mode, med in medians.items():
            lines.append(f"| {mode} | {med['bytes_per_delivery']:,.0f} | {med['cpu_us_per_delivery']:.2f} | "
                         f"{med['deliveries_per_s']:,.0f} | {med['idle_kib_per_connection']:.2f} |")
        lines += [
            "",
            f"Deflate sends {plain['bytes_per_delivery'] / deflate['bytes_per_delivery']:.1f}x fewer bytes per "
            f"delivery at {deflate['cpu_us_per_delivery'] / plain['cpu_us_per_delivery']:.2f}x the server CPU "
            "per delivery (fewer bytes to hand to the kernel make up for one compression per publication); "
            f"an idle connection that negotiated it costs {deflate['idle_kib_per_connection'] - plain['idle_kib_per_connection']:+.2f} KiB "
            "(websockets' extension object; no zlib state is kept between messages, in either direction).",
            "",
        ]
        args.docs_section.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
