#!/usr/bin/env python3
"""Soak: many connections, steady publications, for minutes; memory and fds sampled.

    python bench/soak.py                      # 10,000 connections for 10 minutes (the reference run)
    python bench/soak.py --minutes 2          # a shorter run
    python bench/soak.py --connections 2000 --minutes 1 --rate 50

Three processes: ``hubbub serve`` (the real command, default settings, so the
25 s keepalive pings run and every client must answer them), a load generator
(``python -m tests.faultkit fanout``: raw-socket protocol clients, one
publisher), and this coordinator, which samples the server's RSS and open
file descriptors from /proc every ``--sample-every`` seconds and prints one
line per sample with the load generator's figures of the same window.

Clients are spread over ``--channels`` channels (``soak0`` .. ``soakN``); the
publisher publishes ``--rate`` publications per second round-robin over them,
each carrying a per-channel sequence number and its send time. At the end,
every subscriber must have received every publication of its channel, in
order, and no subscriber may have been disconnected: otherwise the exit
status is 1.

Not part of CI (it runs for minutes). Linux only (/proc). Needs a file
descriptor limit above the connection count (``ulimit -n``).
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.faultkit import open_fds, rss_bytes


def mib(n: float) -> str:
    return f"{n / 2**20:.1f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10, help="publishing time (default 10)")
    parser.add_argument("--connections", type=int, default=10_000, help="subscribers (default 10,000)")
    parser.add_argument("--channels", type=int, default=100, help="channels they are spread over (default 100)")
    parser.add_argument("--rate", type=float, default=20, help="publications per second (default 20)")
    parser.add_argument("--size", type=int, default=200, help="payload bytes (default 200)")
    parser.add_argument("--sample-every", type=float, default=10, help="seconds between samples (default 10)")
    parser.add_argument("--broker", default="memory", help="memory (default) or a redis:// URL")
    parser.add_argument("--json-out", type=Path, help="write every sample and the result there")
    args = parser.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = args.connections + 200
    if soft < need:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(need, soft)), hard))
        except (ValueError, OSError):
            pass
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft < need:
        print(f"soak: the file descriptor limit ({soft}) is below {need}: raise it (ulimit -n)", file=sys.stderr)
        return 2

    server = subprocess.Popen(
        [sys.executable, "-m", "hubbub", "serve", "--port", "0", "--broker", args.broker, "--no-page"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
    )
    log: list[str] = []
    port_found = threading.Event()
    port = 0

    def read_server() -> None:
        nonlocal port
        assert server.stdout is not None
        for line in server.stdout:
            log.append(line)
            m = re.search(r"listening on http://[^ ]+:(\d+)", line)
            if m and not port:
                port = int(m.group(1))
                port_found.set()
        port_found.set()

    threading.Thread(target=read_server, daemon=True).start()
    if not port_found.wait(30) or not port:
        print("soak: the server did not start:\n" + "".join(log), file=sys.stderr)
        server.kill()
        return 2
    pid = server.pid
    idle_rss, idle_fds = rss_bytes(pid), open_fds(pid)
    print(f"soak: hubbub serve pid {pid} on port {port}; idle RSS {mib(idle_rss)} MiB, {idle_fds} fds")

    seconds = args.minutes * 60
    params = {
        "port": port, "normal": args.connections, "slow": 0, "channels": args.channels, "prefix": "soak",
        "seconds": seconds, "rate": args.rate, "size": args.size, "latency_every": 10,
        "report_every": args.sample_every, "connect_concurrency": 500, "timeout": seconds + 600,
        "wait_for_go": True,
    }
    load = subprocess.Popen([sys.executable, "-m", "tests.faultkit", "fanout", json.dumps(params)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert load.stdout is not None and load.stdin is not None
    samples: list[dict] = []
    result: dict = {}
    try:
        started = time.monotonic()
        ready = json.loads(load.stdout.readline() or "{}")
        if ready.get("event") != "ready":
            print(f"soak: the load generator failed: {ready}", file=sys.stderr)
            return 2
        connected_rss, connected_fds = rss_bytes(pid), open_fds(pid)
        per_conn = (connected_rss - idle_rss) / args.connections
        print(f"soak: {args.connections} connections in {ready['seconds']:.1f} s; RSS {mib(connected_rss)} MiB "
              f"({per_conn / 1024:.1f} KiB per connection), {connected_fds} fds")
        print(f"soak: publishing {args.rate:g}/s to {args.channels} channels for {args.minutes:g} min "
              f"({args.rate * args.connections / args.channels:.0f} deliveries/s)")
        print(f"{'t (s)':>7} {'RSS MiB':>8} {'fds':>6} {'published':>9} {'delivered':>10} {'deliv/s':>8} "
              f"{'p50 ms':>7} {'p99 ms':>7} {'closed':>6}")
        load.stdin.write("go\n")
        load.stdin.flush()
        for line in load.stdout:
            event = json.loads(line)
            if event.get("result"):
                result = event
                break
            sample = {**event, "rss": rss_bytes(pid), "fds": open_fds(pid)}
            samples.append(sample)
            print(f"{sample['t']:>7.0f} {mib(sample['rss']):>8} {sample['fds']:>6} {sample['published']:>9} "
                  f"{sample['delivered']:>10} {sample['deliveries_per_s']:>8} {sample['p50_ms']:>7} "
                  f"{sample['p99_ms']:>7} {sample['closed']:>6}", flush=True)
        load.wait(60)
        elapsed = time.monotonic() - started
        end_rss = rss_bytes(pid)
        deadline = time.monotonic() + 30  # the server notices the load generator's connections are gone
        while open_fds(pid) > idle_fds + 5 and time.monotonic() < deadline:
            time.sleep(0.1)
        end_fds = open_fds(pid)
    finally:
        if load.poll() is None:
            load.kill()
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()

    if not result:
        print("soak: no result from the load generator", file=sys.stderr)
        return 1
    expected = sum(result["per_channel"][i % args.channels] for i in range(args.connections))
    peak_rss = max([connected_rss, end_rss, *(s["rss"] for s in samples)])
    steady = [s["rss"] for s in samples[len(samples) // 2:]] or [end_rss]
    ok = (result["complete"] and result["misordered"] == 0 and result["normal_closed"] == 0
          and result["refused"] == 0 and result["delivered"] == expected)
    print("\nsoak result")
    print(f"  run: {elapsed:.0f} s, {args.connections} connections, {args.channels} channels, "
          f"{result['published']} publications ({result['acked']} acknowledged, {result['refused']} refused)")
    print(f"  deliveries: {result['delivered']} of {expected} expected; misordered {result['misordered']}; "
          f"subscribers disconnected {result['normal_closed']}")
    print(f"  latency (last window): p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, max {result['max_ms']} ms")
    print(f"  server RSS: idle {mib(idle_rss)} MiB, connected {mib(connected_rss)} MiB, peak {mib(peak_rss)} MiB, "
          f"end {mib(end_rss)} MiB, second-half range {mib(min(steady))}-{mib(max(steady))} MiB")
    print(f"  server fds: idle {idle_fds}, connected {connected_fds}, "
          f"during the run {min(s['fds'] for s in samples) if samples else '-'}-"
          f"{max(s['fds'] for s in samples) if samples else '-'}, after the clients left {end_fds}")
    print(f"  server exit: {server.returncode}; tracebacks in its log: {''.join(log).count('Traceback')}")
    print("  OK" if ok else "  FAILED")
    if args.json_out:
        args.json_out.write_text(json.dumps({"args": vars(args) | {"json_out": str(args.json_out)},
                                             "idle_rss": idle_rss, "connected_rss": connected_rss,
                                             "end_rss": end_rss, "samples": samples, "result": result}, indent=1))
    return 0 if ok and server.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
