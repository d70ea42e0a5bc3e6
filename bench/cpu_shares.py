"""Workload 3's load against one memory process and against ``--workers 2`` on
Redis, in interleaved pairs, with the CPU each side used.

    python bench/cpu_shares.py [--pairs 2] [--messages 30000] [--clients 10000] [--groups 100]

Starts its own ``redis-server`` (``--save '' --appendonly no``, a free port on
127.0.0.1) and, for each pair, ``hubbub serve`` with the memory broker, then
``hubbub serve --workers 2 --broker redis://...``, each measured by
``bench/fastgen.py`` (protocol clients in their own channel and one of
``--groups`` groups; ``--messages`` publish commands, at most 1,000 awaiting a
reply). From the moment every subscriber is ready until the generator is done
it samples ``/proc`` every 50 ms and prints, per run, the deliveries per
second and the cores used by the hubbub processes, Redis and the load
generator (its subscriber process and its producer). Every run is bounded by
the generator's ``--timeout`` (60 s).

This is the measurement behind ``docs/scaling.md`` ("Limits"): whether the
machine has a core left for a second worker.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import HOST, PUBLISH_WINDOW, REPO, free_port

TICK = os.sysconf("SC_CLK_TCK")


def _children(root: int) -> set[int]:
    """``root`` and every process below it."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    tree, grew = {root}, True
    while grew:
        grew = False
        for pid, ppid in parents.items():
            if ppid in tree and pid not in tree:
                tree.add(pid)
                grew = True
    return tree


class Meter:
    """CPU seconds of groups of processes; a process that exits keeps its last reading."""

    def __init__(self) -> None:
        self.seen: dict[int, float] = {}

    def cpu(self, pids: set[int]) -> float:
        total = 0.0
        for pid in pids:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                self.seen[pid] = (int(fields[11]) + int(fields[12])) / TICK
            except (OSError, IndexError, ValueError):
                pass
            total += self.seen.get(pid, 0.0)
        return total


def _wait_port(port: int, seconds: float) -> None:
    import socket

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            socket.create_connection((HOST, port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {HOST}:{port} after {seconds:g} s")


def run(label: str, serve_args: list[str], redis_pid: int, args: argparse.Namespace) -> dict:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "hubbub", "serve", "--host", HOST, "--port", str(port), *serve_args],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")}, start_new_session=True,
    )
    try:
        _wait_port(port, 20)
        time.sleep(1.5 if "--workers" in serve_args else 0.2)  # both workers listening
        with tempfile.TemporaryDirectory() as tmp:
            ready = Path(tmp) / "ready"
            gen = subprocess.Popen(
                [sys.executable, str(REPO / "bench" / "fastgen.py"), "--port", str(port),
                 "--path", "/connection/websocket", "--mode", "centrifugo",
                 "--subscribers", str(args.clients), "--groups", str(args.groups),
                 "--messages", str(args.messages), "--timeout", "60", "--sample-every", "20",
                 "--window", str(PUBLISH_WINDOW), "--ready-file", str(ready), "--json"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO,
            )
            deadline = time.monotonic() + 120
            while not ready.exists() and gen.poll() is None and time.monotonic() < deadline:
                time.sleep(0.01)
            meter = Meter()
            groups = {"hubbub": _children(server.pid), "redis": {redis_pid}, "generator": _children(gen.pid)}
            start = {name: meter.cpu(pids) for name, pids in groups.items()}
            began = last_at = time.monotonic()
            last = dict(start)
            while gen.poll() is None:
                groups["generator"] |= _children(gen.pid)
                now = {name: meter.cpu(pids) for name, pids in groups.items()}
                if gen.poll() is None:
                    last, last_at = now, time.monotonic()
                time.sleep(0.05)
            out = gen.stdout.read() if gen.stdout else ""
        report = json.loads(out.strip().splitlines()[-1])
        wall = max(last_at - began, 1e-9)
        return {
            "run": label,
            "deliveries_per_s": report["deliveries_per_s"],
            "complete": report.get("complete"),
            "cores": {name: round((last[name] - start[name]) / wall, 2) for name in groups},
        }
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--messages", type=int, default=30_000)
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--groups", type=int, default=100)
    args = parser.parse_args()
    redis = shutil.which("redis-server")
    if redis is None:
        sys.exit("redis-server is not installed (apt-get install redis-server)")
    redis_port = free_port()
    proc = subprocess.Popen([redis, "--port", str(redis_port), "--bind", HOST, "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_port(redis_port, 10)
        url = f"redis://{HOST}:{redis_port}/0"
        for pair in range(args.pairs):
            memory = run("memory, 1 process", [], proc.pid, args)
            workers = run("redis, --workers 2", ["--workers", "2", "--broker", url], proc.pid, args)
            for result in (memory, workers):
                print(json.dumps(result), flush=True)
            print(f"pair {pair + 1}: --workers 2 / memory = "
                  f"{workers['deliveries_per_s'] / memory['deliveries_per_s']:.2f}x", flush=True)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


if __name__ == "__main__":
    main()
