#!/usr/bin/env python3
"""Start-up of ``hubbub serve``: wall time until the port accepts, and the process's CPU
time by then, for one or more source trees, alternated; medians.

The CPU time is steadier than the wall time on a busy machine. Workload 8 (reconnect
storm) pays the start-up inside its "all back after kill" and its server CPU.

    python bench/startup.py --variant base=/tmp/base/src --variant new=src --runs 15
    python bench/startup.py --variant new=src --env new:PYTHONDONTWRITEBYTECODE=1 ...
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import HOST, free_port, server_env  # noqa: E402


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one(env: dict[str, str], extra: list[str]) -> tuple[float, float]:
    """(seconds until listening, CPU seconds by then) of one ``hubbub serve``."""
    port = free_port()
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "hubbub", "serve", "--host", HOST, "--port", str(port), *extra],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        while time.monotonic() - start < 30:
            if proc.poll() is not None:
                raise RuntimeError(f"exited with {proc.returncode}")
            try:
                with socket.create_connection((HOST, port), timeout=0.5):
                    took = time.monotonic() - start
                    return took, _cpu_s(proc.pid)
            except OSError:
                time.sleep(0.002)
        raise RuntimeError("not listening after 30 s")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", action="append", required=True, metavar="NAME=SRC")
    parser.add_argument("--env", action="append", default=[], metavar="NAME:KEY=VALUE")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--json-out", type=Path)
    parser.add_argument("serve_args", nargs="*", help="extra arguments of hubbub serve (after --)")
    args = parser.parse_args()
    variants: list[tuple[str, dict[str, str]]] = []
    for spec in args.variant:
        name, _, src = spec.partition("=")
        env = server_env({"PYTHONPATH": str(Path(src).resolve())})
        for extra in args.env:
            who, _, kv = extra.partition(":")
            if who == name:
                key, _, value = kv.partition("=")
                env[key] = value
        variants.append((name, env))
        one(env, args.serve_args)  # warm: bytecode written, files cached
    results: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in variants}
    for r in range(args.runs):
        for name, env in (variants if r % 2 == 0 else variants[::-1]):
            results[name].append(one(env, args.serve_args))
    summary = {}
    for name, runs in results.items():
        summary[name] = {
            "listening_s": round(statistics.median(w for w, _ in runs), 3),
            "cpu_s": round(statistics.median(c for _, c in runs), 3),
            "runs": [(round(w, 3), c) for w, c in runs],
        }
        print(f"{name}: listening after {summary[name]['listening_s']} s, CPU {summary[name]['cpu_s']} s "
              f"(median of {len(runs)})")
    if args.json_out:
        args.json_out.write_text(json.dumps({"argv": sys.argv, "summary": summary}, indent=1))


if __name__ == "__main__":
    main()
