#!/usr/bin/env python3
"""Workload 8 with recovery (``Suite.storm_recover``: protocol endpoint, Redis broker, a second
node publishing), A/B of hubbub source trees, alternated; medians of the server CPU.

    python bench/recover_ab.py --clients 5000 --rounds 4 --json-out bench/results/x.json \\
        --variant pre=/tmp/pre/src --variant new=src
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

import suite as S  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", action="append", required=True, metavar="NAME=SRC")
    parser.add_argument("--clients", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    scale = replace(S.FULL, w8_recover_clients=args.clients)
    base_peer = S.HUBBUB_PROTOCOL
    runs: dict[str, list[dict]] = {v: [] for v in args.variant}
    for r in range(args.rounds):
        for spec in args.variant if r % 2 == 0 else args.variant[::-1]:
            name, _, src = spec.partition("=")
            # storm_recover builds its peer from suite.HUBBUB_PROTOCOL
            S.HUBBUB_PROTOCOL = replace(base_peer, env={"PYTHONPATH": str(Path(src).resolve())})
            suite = S.Suite(argparse.Namespace(servers=[], python=sys.executable, render=None), scale,
                            Path(tempfile.mkdtemp(prefix="recover-ab-")))
            outcome = suite.storm_recover(args.clients, scale.w8_timeout)
            report = outcome.get("report", {})
            row = {"cpu": outcome.get("server_cpu_s"), "back": report.get("reconnect_from_listening_s"),
                   "recover": report.get("recover"), "published": (outcome.get("publisher") or {}).get("published"),
                   "errors": report.get("reconnect_attempt_errors"), "foreign": outcome.get("foreign_cpu_percent")}
            print(name, json.dumps(row), flush=True)
            runs[spec].append(row)
    S.HUBBUB_PROTOCOL = base_peer
    for spec, rows in runs.items():
        print(spec, "median server CPU", statistics.median(r["cpu"] for r in rows if r["cpu"]),
              "median all back after listening", statistics.median(r["back"] for r in rows if r["back"]))
    if args.json_out:
        args.json_out.write_text(json.dumps({"argv": sys.argv, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
