"""Server CPU per connect (µs): hubbub's ways in against `trivial`, interleaved, medians.

    python bench/connect_cpu.py [--workloads relay,protocol,protobuf,text,trivial] [--runs 5]
    python bench/connect_cpu.py --src src --src /tmp/old/src --workloads relay   # A/B of two trees
    python bench/connect_cpu.py --runs 1 --profile bench/results/profile-before  # + py-spy per workload

Each run starts the server of a workload (``hubbub serve`` for relay/protocol/protobuf,
``bench/servers/hubbub_text.py`` for the framework endpoint ``text``, ``bench/servers/trivial.py``
for ``trivial``) and opens ``--clients`` clients with ``bench/connectgen.py --cpu-pid``
(protocol: connect + subscribe in one frame, ready on the subscribe reply; ``trivial-centrifugo`` and
``trivial-protobuf`` are ``trivial`` answering that same exchange by hand, the floor of the protocol
workloads); the figure is the server's CPU time (user + system; the system part is printed too)
during the connect phase divided by the connects. Runs are
interleaved (every workload once, then again), so noise from other processes on the machine is
shared; compare medians. With ``--profile DIR`` py-spy is attached to the server of each
workload's first run and DIR/<workload>.txt gets the top functions (self and inclusive, % of
the server's samples) and DIR/<workload>.raw the collapsed stacks.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent

#: workload -> (server kind, path, connectgen mode, sub format)
WORKLOADS = {
    "relay": ("hubbub", "/ws/bench", "raw", "json"),
    "protocol": ("hubbub", "/connection/websocket", "centrifugo", "json"),
    "protobuf": ("hubbub", "/connection/websocket", "centrifugo", "protobuf"),
    "text": ("text", "/text", "raw", "json"),
    "trivial": ("trivial", "/", "raw", "json"),
    "trivial-centrifugo": ("trivial", "/connection/websocket", "centrifugo", "json"),
    "trivial-protobuf": ("trivial", "/connection/websocket", "centrifugo", "protobuf"),
}


def _port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


#: ``--event-loop`` of the hubbub servers
EVENT_LOOP = ["asyncio"]


def _server(kind: str, src: str, port: int) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=src)
    if kind == "hubbub":
        argv = [sys.executable, "-m", "hubbub", "serve", "--port", str(port), "--no-page",
                "--ping-interval", "0", "--log-level", "warning", "--event-loop", EVENT_LOOP[0]]
    elif kind == "text":
        argv = [sys.executable, str(BENCH / "servers" / "hubbub_text.py"), "--host", "127.0.0.1", "--port", str(port)]
    else:
        argv = [sys.executable, str(BENCH / "servers" / "trivial.py"), "--host", "127.0.0.1", "--port", str(port)]
    return subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL)


def _wait_listening(port: int) -> None:
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("server did not listen")


def one(workload: str, src: str, clients: int, profile: Path | None = None) -> tuple[float, float, float]:
    kind, path, mode, fmt = WORKLOADS[workload]
    port = _port()
    server = _server(kind, src, port)
    spy = None
    try:
        _wait_listening(port)
        if kind == "hubbub":
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5).read()
        if profile is not None:
            pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
            spy = subprocess.Popen([pyspy, "record", "--pid", str(server.pid), "--rate", "500", "--format", "raw",
                                    "--nonblocking", "--duration", "120", "-o", str(profile.with_suffix(".raw"))],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            if not select.select([spy.stdout], [], [], 30)[0] or "Sampling" not in spy.stdout.readline():
                raise RuntimeError("py-spy did not start")
        out = subprocess.run([sys.executable, str(BENCH / "connectgen.py"), "--port", str(port), "--path", path,
                              "--mode", mode, "--sub-format", fmt, "--subscribers", str(clients), "--hold", "0.2",
                              "--json", "--cpu-pid", str(server.pid)],
                             capture_output=True, text=True, timeout=300).stdout
        report = json.loads(out.strip().splitlines()[-1])
        if report.get("subscribers", clients) < clients:
            print(f"  {workload}: only {report.get('subscribers')} of {clients} connected", file=sys.stderr)
        return report["server_cpu_per_connect_us"], report["connects_per_s"], report.get("server_sys_per_connect_us", 0.0)
    finally:
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            try:
                spy.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                spy.kill()
        server.terminate()
        server.wait(10)
        if profile is not None and profile.with_suffix(".raw").exists():
            profile.write_text(summarise(profile.with_suffix(".raw").read_text(), workload))


def summarise(text: str, title: str, k: int = 25) -> str:
    """Top functions by self and inclusive samples (% of the server's samples)."""
    self_c: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = []
        for f in stack.split(";"):
            name, _, where = f.partition(" (")
            where = where.rstrip(")").rsplit(":", 1)[0]
            for marker in ("site-packages/", "lib/python3.11/", "src/"):
                if marker in where:
                    where = where.split(marker, 1)[1]
                    break
            frames.append(f"{name} ({where})")
        if frames:
            self_c[frames[-1]] += n
            for key in set(frames):
                incl[key] += n
    lines = [f"# {title}: {total} samples (500 Hz, CPU time only)", "", "## self", ""]
    lines += [f"{100 * c / total:5.1f} %  {f}" for f, c in self_c.most_common(k)]
    lines += ["", "## inclusive", ""]
    lines += [f"{100 * c / total:5.1f} %  {f}" for f, c in incl.most_common(k * 2)]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", action="append", help="a source tree (give two for an A/B; default: src)")
    parser.add_argument("--workloads", default="relay,protocol,protobuf,text,trivial")
    parser.add_argument("--clients", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--profile", type=Path, help="directory for py-spy profiles (first run of each)")
    parser.add_argument("--event-loop", default="asyncio", choices=("asyncio", "uvloop"),
                        help="event loop of `hubbub serve` (relay, protocol, protobuf)")
    args = parser.parse_args()
    EVENT_LOOP[0] = args.event_loop
    srcs = args.src or [str(REPO / "src")]
    names = args.workloads.split(",")
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    results: dict[tuple[str, str], list[tuple[float, float, float]]] = collections.defaultdict(list)
    for run in range(args.runs):
        for name in names:
            for src in srcs if WORKLOADS[name][0] != "trivial" else srcs[:1]:
                prof = args.profile / f"{name}.txt" if args.profile and run == 0 and len(srcs) == 1 else None
                results[(name, src)].append(one(name, src, args.clients, prof))
    for (name, src), runs in results.items():
        cpu = statistics.median(r[0] for r in runs)
        rate = statistics.median(r[1] for r in runs)
        kernel = statistics.median(r[2] for r in runs)
        tag = f" [{src}]" if len(srcs) > 1 else ""
        print(f"{name}{tag}: median {cpu:.0f} µs of server CPU per connect (system {kernel:.0f}), {rate:,.0f} connects/s "
              f"(runs: {', '.join(f'{r[0]:.0f}' for r in runs)})", flush=True)


if __name__ == "__main__":
    main()
