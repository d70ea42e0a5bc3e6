"""RSS of `hubbub serve` under connect/close churn (docs: issue "One core", finding 13).

    python bench/churn_rss.py [--cycles 50000] [--step 5000] [--concurrency 50] [--src src]

Each cycle is a protocol client (``websockets``) that connects, sends ``connect`` and
``subscribe``, waits for both replies and closes cleanly. The server's VmRSS is printed
every ``--step`` cycles: it must plateau (a closed connection leaves no reference cycle).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import websockets

ROOT = Path(__file__).resolve().parent.parent


def rss_kib(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1])
    return 0


async def cycle(url: str) -> None:
    async with websockets.connect(url, ping_interval=None) as ws:
        await ws.send('{"id":1,"connect":{}}\n{"id":2,"subscribe":{"channel":"churn"}}')
        replies = 0
        while replies < 2:
            replies += (await asyncio.wait_for(ws.recv(), 10)).count('"id":')


async def run(args: argparse.Namespace, port: int, pid: int) -> None:
    url = f"ws://127.0.0.1:{port}/connection/websocket"
    print(f"{0:7d} cycles  VmRSS {rss_kib(pid) / 1024:6.1f} MiB", flush=True)
    done, started = 0, time.time()
    while done < args.cycles:
        batch = min(args.step, args.cycles - done)
        left = batch
        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                await cycle(url)
        await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(args.concurrency))), 600)
        done += batch
        await asyncio.sleep(0.5)  # let the server finish closing (its close timers, not a wait for an event)
        print(f"{done:7d} cycles  VmRSS {rss_kib(pid) / 1024:6.1f} MiB", flush=True)
    print(f"{done} cycles in {time.time() - started:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=50_000)
    parser.add_argument("--step", type=int, default=5_000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--src", default=str(ROOT / "src"), help="hubbub source tree to measure")
    args = parser.parse_args()
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    server = subprocess.Popen([sys.executable, "-m", "hubbub", "serve", "--port", str(port), "--no-page",
                               "--log-level", "warning"], env=dict(os.environ, PYTHONPATH=args.src))
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port)).close()
                break
            except OSError:
                time.sleep(0.1)
        asyncio.run(run(args, port, server.pid))
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main()
