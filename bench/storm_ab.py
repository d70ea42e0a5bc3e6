#!/usr/bin/env python3
"""Workload 8 (reconnect storm) A/B: two or more hubbub source trees, alternated.

Each round runs one storm per variant (``suite.Suite.storm``: clients connect,
SIGKILL, restart on the same port, every client reconnects with jittered
backoff), in turn, so that a noisy minute hits every variant. Reported per
variant: the medians of "listening after", "all back after listening", server
CPU (the restarted process, start-up included) and server CPU per reconnect.
``--profile DIR`` attaches py-spy to each restarted server and prints the
top functions of each variant's profile.

Example (base tree from ``git archive main | tar -x -C /tmp/base``)::

    python bench/storm_ab.py --variant base=/tmp/base/src --variant new=src \\
        --clients 15000 --rounds 3 --json-out bench/results/storm-ab.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from peers import HUBBUB, HUBBUB_PROTOCOL  # noqa: E402
from suite import CONNECT_LABELS, FULL, Suite, analyse_profile, log  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", action="append", required=True, metavar="NAME=SRC",
                        help="a hubbub source tree (put first on PYTHONPATH), e.g. base=/tmp/base/src")
    parser.add_argument("--endpoint", choices=("relay", "protocol"), default="relay")
    parser.add_argument("--clients", type=int, default=15_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--profile", type=Path, help="directory for py-spy raw profiles of the restarted servers")
    parser.add_argument("--env", action="append", default=[], metavar="NAME:KEY=VALUE",
                        help="extra environment for one variant's server")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()

    base_peer = HUBBUB if args.endpoint == "relay" else HUBBUB_PROTOCOL
    variants = []
    for spec in args.variant:
        name, _, src = spec.partition("=")
        env = {"PYTHONPATH": ":".join(str(Path(part).resolve()) for part in src.split(":"))}
        for extra in args.env:
            who, _, kv = extra.partition(":")
            if who == name:
                key, _, value = kv.partition("=")
                env[key] = value
        variants.append(replace(base_peer, name=name, env=env))

    log_dir = Path(tempfile.mkdtemp(prefix="storm-ab-"))
    suite_args = argparse.Namespace(servers=[], python=sys.executable, render=None)
    suite = Suite(suite_args, FULL, log_dir)
    runs: dict[str, list[dict]] = {v.name: [] for v in variants}
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    for r in range(args.rounds):
        order = variants if r % 2 == 0 else list(reversed(variants))
        for peer in order:
            log(f"- round {r + 1}/{args.rounds}: {peer.name} ({peer.env['PYTHONPATH']}), {args.clients} clients")
            raw = args.profile / f"{peer.name}-{r}.txt" if args.profile else None
            outcome = suite.storm(peer, args.clients, args.timeout, profile=raw)
            report = outcome.get("report", {})
            cpu = outcome.get("server_cpu_s")
            outcome["summary"] = {
                "listening_s": outcome.get("restart_listening_s"),
                "back_after_listening_s": report.get("reconnect_from_listening_s"),
                "reconnected": report.get("reconnected"),
                "server_cpu_s": cpu,
                "server_cpu_with_close_s": outcome.get("server_cpu_with_close_s"),
                "cpu_per_reconnect_us": round(cpu / args.clients * 1e6, 1) if cpu else None,
                "peak_rss_mb": outcome.get("peak_rss_mb"),
                "foreign_cpu_percent": outcome.get("foreign_cpu_percent"),
                "reconnect_errors": report.get("reconnect_errors"),
            }
            log(f"  {json.dumps(outcome['summary'])}")
            runs[peer.name].append(outcome)

    summary: dict = {}
    for name, outcomes in runs.items():
        row: dict = {}
        for key in ("listening_s", "back_after_listening_s", "server_cpu_s", "server_cpu_with_close_s",
                    "cpu_per_reconnect_us", "peak_rss_mb"):
            values = [o["summary"][key] for o in outcomes if o["summary"].get(key) is not None]
            row[key] = round(statistics.median(values), 3) if values else None
            row[key + "_all"] = values
        summary[name] = row
    print(json.dumps(summary, indent=1))
    if args.profile:
        for name in runs:
            text = "".join(p.read_text() for p in sorted(args.profile.glob(f"{name}-*.txt")))
            if text:
                prof = analyse_profile(text, CONNECT_LABELS)
                summary[name]["profile"] = prof
                print(f"== {name}: {prof.get('samples')} samples")
                for row in prof.get("self", []):
                    print(f"  {row['percent']:5.1f}%  {row['function']}  {row['file']}")
    if args.json_out:
        args.json_out.write_text(json.dumps({"argv": sys.argv, "summary": summary, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
