"""`hubbub serve` at RLIMIT_NOFILE 2048; 4,000 connections flood it and stay for 10 s.

    python bench/fd_flood.py [--src src]

Prints the server CPU in the window, its log lines, and the round trips of a relay client
connected before the flood (finding 3 of the issue "One core").
"""
import argparse
import asyncio
import os
import pathlib
import resource
import socket
import subprocess
import sys
import tempfile
import time

import websockets

parser = argparse.ArgumentParser(description="hubbub serve at RLIMIT_NOFILE 2048 under a connection flood")
parser.add_argument("--src", default=str(pathlib.Path(__file__).resolve().parent.parent / "src"))
src = parser.parse_args().src
resource.setrlimit(resource.RLIMIT_NOFILE, (20000, 20000))
s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
env = dict(os.environ, PYTHONPATH=src)
log = tempfile.TemporaryFile()  # a file, not a pipe: a server that floods its log must not block on it
srv = subprocess.Popen([sys.executable, "-m", "hubbub", "serve", "--port", str(port), "--no-page"], env=env,
                       stderr=log, stdout=subprocess.DEVNULL,
                       preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (2048, 2048)))
def cpu():
    f = open(f"/proc/{srv.pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
async def main():
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port)).close(); break
        except OSError: await asyncio.sleep(0.1)
    async with websockets.connect(f"ws://127.0.0.1:{port}/ws/canary") as ws:
        rtts = []
        t0 = time.perf_counter(); await ws.send("x"); await ws.recv(); base = time.perf_counter() - t0
        flood = []
        c0, w0 = cpu(), time.time()
        for _ in range(4000):
            so = socket.socket(); so.setblocking(False)
            try: so.connect(("127.0.0.1", port))
            except BlockingIOError: pass
            flood.append(so)
        while time.time() - w0 < 10:
            t0 = time.perf_counter(); await ws.send("x")
            try:
                await asyncio.wait_for(ws.recv(), 5); rtts.append(time.perf_counter() - t0)
            except asyncio.TimeoutError: rtts.append(5.0)
            await asyncio.sleep(0.2)
        c1, w1 = cpu(), time.time()
        for so in flood: so.close()
        rtts.sort()
        print(f"bystander round trip before the flood: {base*1000:.1f} ms")
        print(f"during the flood ({len(rtts)} samples): median {rtts[len(rtts)//2]*1000:.1f} ms, max {rtts[-1]*1000:.1f} ms")
        print(f"server CPU in the {w1-w0:.1f} s window: {c1-c0:.2f} s ({(c1-c0)/(w1-w0)*100:.0f} % of a core)")
    srv.terminate()
    srv.wait(20)
    log.seek(0)
    err = log.read().decode(errors="replace")
    print(f"server log lines: {len(err.splitlines())}")
asyncio.run(main())
