#!/usr/bin/env python3
"""Run the hubbub benchmarks.

The whole suite (six workloads, every peer, docs/benchmarks.md written)::

    python bench/run.py --suite        # full: several minutes
    python bench/run.py --quick        # small version of every workload, under a minute

See ``suite.py`` for the workloads and ``peers.py`` for the servers.

Without ``--suite`` / ``--quick`` it runs only workload 1, burst fan-out,
against the servers of ``--servers``: each server runs alone, in its own
process (and process group): it is started on a free port on 127.0.0.1, the
runner waits until the port accepts TCP connections, runs ``bench/loadgen.py``
in separate processes against it, then kills the server.  Results are printed
as a table, with deliveries/s relative to the ``websockets`` baseline of the
same run.  ``--subscribers`` subscribers (1000 by default, try
``--subscribers 10000``) on one channel; one producer publishes
``--messages`` (500) messages of ``--size`` (100) bytes as fast as it can.

Servers (``--servers``, comma separated): ``hubbub`` (relay endpoint
``/ws/bench``), ``hubbub-protocol`` (``/connection/websocket``),
``websockets`` (baseline), ``socketio``, ``socketify``, ``trivial`` (the load
generator's ceiling).  A server whose modules do not import is skipped with
a message.  The repository's ``src`` directory is put on PYTHONPATH, so the
working tree is measured even when hubbub is not installed.

``--python`` selects the interpreter of every server process (default: the
one running this script); the load generator always uses this one.

Examples::

    python bench/run.py --servers websockets,trivial
    python bench/run.py --subscribers 10000 --repeat 3 --json-out results.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from harness import (
    PUBLISH_WINDOW,
    ServerProcess,
    loadgen_argv,
    missing_module,
    raise_nofile_limit,
    run_loadgen,
)
from peers import BASELINE, PEERS, Peer

DEFAULT_SERVERS = ("websockets", "trivial", "hubbub")


@dataclass(frozen=True)
class Workload:
    """Parameters handed to the load generator."""

    name: str
    subscribers: int
    messages: int
    size: int
    procs: int
    timeout: float


def run_one(peer: Peer, python: str, workload: Workload, log_dir: Path) -> dict:
    """Start ``peer``, measure it, stop it.  Never raises for server trouble."""
    server = ServerProcess(peer.name, peer.argv, python, log_dir, env=peer.env)
    outcome: dict = {"server": peer.name, "log": str(server.log_path)}
    try:
        server.wait_listening()
        argv = loadgen_argv(
            server.port,
            peer.fanout.path,
            peer.fanout.mode,
            [
                "--subscribers", str(workload.subscribers),
                "--messages", str(workload.messages),
                "--size", str(workload.size),
                "--procs", str(workload.procs),
                "--timeout", str(workload.timeout),
                # protocol producers keep as many publishes awaiting replies as in the suite
                *(["--window", str(PUBLISH_WINDOW)] if peer.fanout.mode.startswith("centrifugo") else []),
            ],
        )
        outcome["report"] = run_loadgen(argv, workload.timeout + 120)
        outcome["peak_rss_mb"] = server.peak_rss_mb()
        if server.proc.poll() is not None:
            outcome["error"] = f"server exited with code {server.proc.returncode} during the run"
    except (RuntimeError, subprocess.TimeoutExpired, ValueError) as exc:
        outcome["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        server.stop()
    if "error" in outcome:
        tail = server.log_tail()
        print(f"  {peer.name}: {outcome['error']}" + (f"\n{tail}" if tail else ""), file=sys.stderr)
    return outcome


def summarise(name: str, outcomes: list[dict]) -> dict:
    """Pick the median run (by deliveries/s) of a server's repetitions."""
    good = [o for o in outcomes if "report" in o]
    if not good:
        return {"server": name, "error": outcomes[-1].get("error", "no result") if outcomes else "no result"}
    good.sort(key=lambda o: o["report"]["deliveries_per_s"])
    median = dict(good[(len(good) - 1) // 2])
    median["runs"] = [o["report"]["deliveries_per_s"] for o in outcomes if "report" in o]
    return median


def _ms(value: float | None) -> str:
    return f"{value:.1f}" if value is not None else "-"


def format_table(rows: list[dict], baseline_rate: float | None) -> str:
    """Render the per-server results as a plain-text table."""
    header = (
        "server",
        "deliveries/s",
        f"vs {BASELINE}",
        "delivered",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "RSS MB",
        "notes",
    )
    table = [header]
    for row in rows:
        if "report" not in row:
            table.append(
                (row["server"], "-", "-", "-", "-", "-", "-", "-", row.get("skipped") or row.get("error", ""))
            )
            continue
        rep = row["report"]
        lat = rep["latency_ms"] or {}
        rate = rep["deliveries_per_s"]
        notes = []
        if not rep["complete"]:
            notes.append("INCOMPLETE")
        if rep["subscribers"] < rep["subscribers_requested"]:
            notes.append(f"only {rep['subscribers']} subscribers connected")
        for key in ("lost_connections", "bad_samples"):
            if rep[key]:
                notes.append(f"{key}={rep[key]}")
        notes.extend(rep["errors"])
        if row.get("error"):
            notes.append(row["error"])
        if len(row.get("runs", [])) > 1:
            notes.append("runs: " + ", ".join(f"{r:,.0f}" for r in row["runs"]))
        ratio = f"{rate / baseline_rate:.2f}x" if baseline_rate else "-"
        rss = row.get("peak_rss_mb")
        table.append(
            (
                row["server"],
                f"{rate:,.0f}",
                ratio,
                f"{rep['delivered']}/{rep['expected']}",
                _ms(lat.get("p50")),
                _ms(lat.get("p99")),
                _ms(lat.get("p99.9")),
                f"{rss:.0f}" if rss else "-",
                "; ".join(notes),
            )
        )
    widths = [max(len(str(r[i])) for r in table) for i in range(len(header))]
    lines = []
    for i, r in enumerate(table):
        cells = [
            str(c).ljust(w) if j in (0, len(header) - 1) else str(c).rjust(w)
            for j, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark WebSocket fan-out servers: the whole suite (--suite, --quick) "
        "or the burst fan-out workload alone.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--suite", action="store_true",
                        help="run every workload against every peer and write docs/benchmarks.md")
    parser.add_argument("--quick", action="store_true",
                        help="a small version of the whole suite, under a minute (writes no docs "
                        "unless --docs is given)")
    parser.add_argument("--workloads", default=None,
                        help="suite: comma-separated subset of 1,2,3,4,5,6 (default all)")
    parser.add_argument("--docs", type=Path, default=None,
                        help="suite: write the report here (default docs/benchmarks.md with --suite)")
    parser.add_argument("--no-profile", action="store_true", help="suite: skip the py-spy profile of hubbub")
    parser.add_argument("--render", type=Path, default=None, metavar="JSON",
                        help="write the report (--docs, default docs/benchmarks.md) again from the --json-out "
                        "file of an earlier suite run, without measuring")
    parser.add_argument(
        "--servers",
        default=None,
        help="comma-separated subset of: " + ", ".join(PEERS)
        + f" (default: all for the suite, {','.join(DEFAULT_SERVERS)} otherwise)",
    )
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=500, help="publications")
    parser.add_argument("--size", type=int, default=100, help="payload bytes")
    parser.add_argument("--procs", type=int, default=1, help="subscriber processes of the load generator")
    parser.add_argument("--repeat", type=int, default=1, help="runs per server; the median is reported")
    parser.add_argument("--timeout", type=float, default=120.0, help="delivery phase limit per run, s")
    parser.add_argument("--python", default=sys.executable, help="interpreter for the server processes")
    parser.add_argument("--json-out", type=Path, help="also write all results to this JSON file")
    parser.add_argument("--w7-seconds", type=float, default=None,
                        help="suite: seconds per run of workload 7 (sustained load; full: 10)")
    parser.add_argument("--w7-subscribers", default=None,
                        help="suite: workload 7's subscriber counts on one channel, comma separated (full: 1000,10000)")
    parser.add_argument("--w8-clients", type=int, default=None,
                        help="suite: clients of workload 8 (reconnect storm; full: 15000)")
    parser.add_argument("--w8-recover-clients", type=int, default=None,
                        help="suite: clients of workload 8 with recovery (hubbub-protocol-recover; full: 5000)")
    args = parser.parse_args(argv)
    names = args.servers.split(",") if args.servers else (
        list(PEERS) if (args.suite or args.quick) else list(DEFAULT_SERVERS)
    )
    args.servers = [name.strip() for name in names if name.strip()]
    unknown = [name for name in args.servers if name not in PEERS]
    if unknown:
        parser.error(f"unknown server(s) {', '.join(unknown)}; known: {', '.join(PEERS)}")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    raise_nofile_limit()
    if args.suite or args.quick or args.render:
        import suite

        return suite.main(args, sys.argv if argv is None else ["bench/run.py", *argv])

    workload = Workload(
        name="burst fan-out",
        subscribers=args.subscribers,
        messages=args.messages,
        size=args.size,
        procs=args.procs,
        timeout=args.timeout,
    )
    print(
        f"workload: {workload.name}, {workload.subscribers} subscribers, "
        f"{workload.messages} x {workload.size} B publications, "
        f"{workload.procs} subscriber process(es); {os.cpu_count()} CPUs; "
        f"servers on {args.python}",
        file=sys.stderr,
    )

    peers = [PEERS[name] for name in args.servers]
    skipped: dict[str, str] = {}
    for peer in peers:
        reason = missing_module(peer.requires, args.python)
        if reason is None and peer.problem is not None:
            reason = peer.problem()
        if reason:
            skipped[peer.name] = f"skipped: {reason}"
            print(f"  {peer.name}: {skipped[peer.name]}", file=sys.stderr)
    runnable = [peer for peer in peers if peer.name not in skipped]

    outcomes: dict[str, list[dict]] = {peer.name: [] for peer in runnable}
    with tempfile.TemporaryDirectory(prefix="hubbub-bench-") as tmp:
        log_dir = Path(tmp)
        for round_no in range(args.repeat):  # interleave servers across rounds
            for peer in runnable:
                label = f" (run {round_no + 1}/{args.repeat})" if args.repeat > 1 else ""
                print(f"- {peer.name}{label}", file=sys.stderr, flush=True)
                outcomes[peer.name].append(run_one(peer, args.python, workload, log_dir))

    rows = []
    for peer in peers:
        if peer.name in skipped:
            rows.append({"server": peer.name, "skipped": skipped[peer.name]})
        else:
            rows.append(summarise(peer.name, outcomes[peer.name]))
    baseline = next((r for r in rows if r["server"] == BASELINE and "report" in r), None)
    baseline_rate = baseline["report"]["deliveries_per_s"] if baseline else None

    print()
    print(
        f"Burst fan-out: {workload.subscribers} subscribers x {workload.messages} messages "
        f"of {workload.size} B (median of {args.repeat} run(s) per server)"
    )
    print(format_table(rows, baseline_rate))
    if args.json_out:
        args.json_out.write_text(
            json.dumps({"workload": workload.__dict__, "python": args.python, "results": rows}, indent=2)
        )
    ok = all("report" in r and r["report"]["complete"] for r in rows if "skipped" not in r)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
