#!/usr/bin/env python3
"""Run the hubbub benchmark workloads against several servers.

Each server runs alone, in its own process (and process group): it is
started on a free port on 127.0.0.1, the runner waits until the port
accepts TCP connections, runs ``bench/loadgen.py`` in separate processes
against it, then kills the server.  Results are printed as a table, with
deliveries/s relative to the ``websockets`` baseline of the same run.

Workload 1, burst fan-out: ``--subscribers`` subscribers (1000 by default,
try ``--subscribers 10000``) on one channel; one producer publishes
``--messages`` (500) messages of ``--size`` (100) bytes as fast as it can.

Servers (``--servers``, comma separated, default all):

``websockets``
    ``bench/servers/websockets_broadcast.py``: the seed design, baseline.
``trivial``
    ``bench/servers/trivial.py``: the load generator's ceiling.
``hubbub``
    ``python -m hubbub serve`` on the relay endpoint ``/ws/bench``.  Skipped
    with a message when ``python -c "import hubbub"`` fails.  The repository's
    ``src`` directory is put on PYTHONPATH, so the working tree is measured
    even when hubbub is not installed.

``--python`` selects the interpreter of every server process (default: the
one running this script); the load generator always uses this one.

Examples::

    python bench/run.py --quick
    python bench/run.py --servers websockets,trivial
    python bench/run.py --subscribers 10000 --repeat 3 --json-out results.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
HOST = "127.0.0.1"
BASELINE = "websockets"


@dataclass(frozen=True)
class ServerSpec:
    """How to start one server and how to talk to it."""

    name: str
    argv: Callable[[str, int], list[str]]  # (python, port) -> command line
    path: str
    mode: str
    requires: str | None = None  # module that must be importable


SERVERS: dict[str, ServerSpec] = {
    spec.name: spec
    for spec in (
        ServerSpec(
            name="websockets",
            argv=lambda py, port: [
                py,
                str(BENCH / "servers" / "websockets_broadcast.py"),
                "--host",
                HOST,
                "--port",
                str(port),
            ],
            path="/",
            mode="raw",
            requires="websockets",
        ),
        ServerSpec(
            name="trivial",
            argv=lambda py, port: [
                py,
                str(BENCH / "servers" / "trivial.py"),
                "--host",
                HOST,
                "--port",
                str(port),
            ],
            path="/",
            mode="raw",
        ),
        ServerSpec(
            name="hubbub",
            argv=lambda py, port: [py, "-m", "hubbub", "serve", "--host", HOST, "--port", str(port)],
            path="/ws/bench",
            mode="raw",
            requires="hubbub",
        ),
    )
}


@dataclass(frozen=True)
class Workload:
    """Parameters handed to the load generator."""

    name: str
    subscribers: int
    messages: int
    size: int
    procs: int
    timeout: float


def raise_nofile_limit() -> None:
    """Raise this process's RLIMIT_NOFILE soft limit to its hard limit.

    Servers and load generators inherit the raised limit (and raise their
    own as well).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass


def server_env() -> dict[str, str]:
    """Environment for server processes: the repo's ``src`` on PYTHONPATH."""
    env = dict(os.environ)
    src = REPO / "src"
    if src.is_dir():
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src), env.get("PYTHONPATH")]))
    return env


def free_port() -> int:
    """A TCP port that is free on HOST right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def missing_requirement(spec: ServerSpec, python: str) -> str | None:
    """Return why ``spec`` cannot run with ``python``, or None if it can."""
    if spec.requires is None:
        return None
    proc = subprocess.run(
        [python, "-c", f"import {spec.requires}"],
        env=server_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if proc.returncode == 0:
        return None
    last = (proc.stderr.strip().splitlines() or ["?"])[-1]
    return f"`{python} -c 'import {spec.requires}'` failed: {last}"


class ServerProcess:
    """A server running in its own process group, with its output in a log."""

    def __init__(self, spec: ServerSpec, python: str, log_dir: Path) -> None:
        self.spec = spec
        self.port = free_port()
        self.log_path = log_dir / f"{spec.name}-{self.port}.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            spec.argv(python, self.port),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env=server_env(),
            start_new_session=True,
        )

    def wait_listening(self, timeout: float = 20.0) -> None:
        """Return once the port accepts TCP connections; raise otherwise."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"exited with code {self.proc.returncode}")
            try:
                with socket.create_connection((HOST, self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"not listening on {HOST}:{self.port} after {timeout:.0f}s")

    def peak_rss_mb(self) -> float | None:
        """Peak resident memory of the server's main process (VmHWM)."""
        try:
            with open(f"/proc/{self.proc.pid}/status") as status:
                for line in status:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            pass
        return None

    def stop(self) -> None:
        """SIGTERM the server's process group, SIGKILL it if it lingers."""
        for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            if self.proc.poll() is not None:
                break
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                continue
        # Reap any straggler left in the group after the leader exited.
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self._log.close()

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace").rstrip().splitlines()
        except OSError:
            return ""
        return "\n".join("    | " + line for line in text[-lines:])


def run_loadgen(spec: ServerSpec, port: int, workload: Workload) -> dict:
    """Run bench/loadgen.py against a listening server; return its report."""
    argv = [
        sys.executable,
        str(BENCH / "loadgen.py"),
        "--host",
        HOST,
        "--port",
        str(port),
        "--path",
        spec.path,
        "--mode",
        spec.mode,
        "--subscribers",
        str(workload.subscribers),
        "--messages",
        str(workload.messages),
        "--size",
        str(workload.size),
        "--procs",
        str(workload.procs),
        "--timeout",
        str(workload.timeout),
        "--json",
    ]
    budget = workload.timeout + 60 + 60  # delivery + connect phase + slack
    proc = subprocess.run(argv, stdout=subprocess.PIPE, text=True, timeout=budget, cwd=REPO)
    lines = proc.stdout.strip().splitlines()
    if not lines:
        raise RuntimeError(f"loadgen produced no report (exit code {proc.returncode})")
    return json.loads(lines[-1])


def run_one(spec: ServerSpec, python: str, workload: Workload, log_dir: Path) -> dict:
    """Start ``spec``, measure it, stop it.  Never raises for server trouble."""
    server = ServerProcess(spec, python, log_dir)
    outcome: dict = {"server": spec.name, "log": str(server.log_path)}
    try:
        server.wait_listening()
        outcome["report"] = run_loadgen(spec, server.port, workload)
        outcome["peak_rss_mb"] = server.peak_rss_mb()
        if server.proc.poll() is not None:
            outcome["error"] = f"server exited with code {server.proc.returncode} during the run"
    except (RuntimeError, subprocess.TimeoutExpired, ValueError) as exc:
        outcome["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        server.stop()
    if "error" in outcome:
        tail = server.log_tail()
        print(f"  {spec.name}: {outcome['error']}" + (f"\n{tail}" if tail else ""), file=sys.stderr)
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
        description="Benchmark WebSocket fan-out servers (burst fan-out workload).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--servers", default=",".join(SERVERS), help="comma-separated subset of: " + ", ".join(SERVERS)
    )
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument(
        "--messages", type=int, default=None, help="publications (default 500, 200 with --quick)"
    )
    parser.add_argument("--size", type=int, default=100, help="payload bytes")
    parser.add_argument("--procs", type=int, default=1, help="subscriber processes of the load generator")
    parser.add_argument("--repeat", type=int, default=1, help="runs per server; the median is reported")
    parser.add_argument("--timeout", type=float, default=120.0, help="delivery phase limit per run, s")
    parser.add_argument("--quick", action="store_true", help="small run, under a minute in total")
    parser.add_argument("--python", default=sys.executable, help="interpreter for the server processes")
    parser.add_argument("--json-out", type=Path, help="also write all results to this JSON file")
    args = parser.parse_args(argv)
    args.servers = [name.strip() for name in args.servers.split(",") if name.strip()]
    unknown = [name for name in args.servers if name not in SERVERS]
    if unknown:
        parser.error(f"unknown server(s) {', '.join(unknown)}; known: {', '.join(SERVERS)}")
    if args.messages is None:
        args.messages = 200 if args.quick else 500
    if args.quick:
        args.repeat = 1
        args.timeout = min(args.timeout, 20.0)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    raise_nofile_limit()
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

    specs = [SERVERS[name] for name in args.servers]
    skipped: dict[str, str] = {}
    for spec in specs:
        reason = missing_requirement(spec, args.python)
        if reason:
            skipped[spec.name] = f"skipped: {reason}"
            print(f"  {spec.name}: {skipped[spec.name]}", file=sys.stderr)
    runnable = [spec for spec in specs if spec.name not in skipped]

    outcomes: dict[str, list[dict]] = {spec.name: [] for spec in runnable}
    with tempfile.TemporaryDirectory(prefix="hubbub-bench-") as tmp:
        log_dir = Path(tmp)
        for round_no in range(args.repeat):  # interleave servers across rounds
            for spec in runnable:
                label = f" (run {round_no + 1}/{args.repeat})" if args.repeat > 1 else ""
                print(f"- {spec.name}{label}", file=sys.stderr, flush=True)
                outcomes[spec.name].append(run_one(spec, args.python, workload, log_dir))

    rows = []
    for spec in specs:
        if spec.name in skipped:
            rows.append({"server": spec.name, "skipped": skipped[spec.name]})
        else:
            rows.append(summarise(spec.name, outcomes[spec.name]))
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
