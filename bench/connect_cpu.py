"""Server CPU per connect (µs) of `hubbub serve`, for A/B runs of two source trees.

    python bench/connect_cpu.py --src src --src /tmp/old/src [--path /ws/bench --mode raw] [--runs 5]

Runs are interleaved (A, B, A, B, ...): each starts `hubbub serve` from one tree and opens
5,000 clients with `bench/connectgen.py --cpu-pid`; the medians are printed. The machine's
noise moves single runs by 20 % or more, so compare medians of interleaved runs only.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

BENCH = Path(__file__).resolve().parent


def one(src: str, path: str, mode: str, clients: int) -> tuple[float, float]:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    server = subprocess.Popen([sys.executable, "-m", "hubbub", "serve", "--port", str(port), "--no-page",
                               "--ping-interval", "0", "--log-level", "warning"],
                              env=dict(os.environ, PYTHONPATH=src))
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).read()
                break
            except OSError:
                time.sleep(0.1)
        out = subprocess.run([sys.executable, str(BENCH / "connectgen.py"), "--port", str(port), "--path", path,
                              "--mode", mode, "--subscribers", str(clients), "--hold", "0.2", "--json",
                              "--cpu-pid", str(server.pid)], capture_output=True, text=True, timeout=300).stdout
        report = json.loads(out.strip().splitlines()[-1])
        return report["server_cpu_per_connect_us"], report["connects_per_s"]
    finally:
        server.terminate()
        server.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", action="append", required=True, help="a source tree (give two for an A/B)")
    parser.add_argument("--path", default="/ws/bench")
    parser.add_argument("--mode", default="raw", choices=("raw", "centrifugo"))
    parser.add_argument("--clients", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    results: dict[str, list[tuple[float, float]]] = {src: [] for src in args.src}
    for _ in range(args.runs):
        for src in args.src:
            results[src].append(one(src, args.path, args.mode, args.clients))
    for src, runs in results.items():
        cpu = statistics.median(r[0] for r in runs)
        rate = statistics.median(r[1] for r in runs)
        print(f"{src}: median {cpu:.0f} µs of server CPU per connect, {rate:,.0f} connects/s "
              f"(runs: {', '.join(f'{r[0]:.0f}' for r in runs)})")


if __name__ == "__main__":
    main()
