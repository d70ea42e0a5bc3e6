"""Where an idle connection's bytes go: tracemalloc and live objects per type, in the server.

    python bench/idle_bytes.py [--kind relay|protocol|protobuf|text] [--connections 10000] [--out FILE]

Runs a hubbub server in this process (``hubbub serve``'s server for relay/protocol/protobuf,
``bench/servers/hubbub_text.py``'s ``App`` for ``text``, the framework endpoint) with
``tracemalloc`` on, and opens ``--connections`` idle clients from ``bench/connectgen.py`` in a
separate process (the same clients as workloads 4 and 5: relay on ``/ws/bench``, the protocol
endpoint with connect + subscribe, the text endpoint with just the upgrade). Once all are open
and every task has settled it takes a snapshot and compares it with one taken before the
first connection: bytes per connection by allocation site (top lines) and, from
``gc.get_objects()``, live objects per type (count per connection, shallow bytes per
connection: ``sys.getsizeof``; dicts, lists and sets of an object count under their own type).
The process's RSS growth per connection is printed too (tracemalloc's own bookkeeping is in it,
so use workload 4's figure for RSS). Not part of the suite.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import resource
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent / "src"))
sys.path.insert(0, str(BENCH / "servers"))

#: kind -> (path, connectgen mode, sub format)
KINDS = {"relay": ("/ws/bench", "raw", "json"), "protocol": ("/connection/websocket", "centrifugo", "json"),
         "protobuf": ("/connection/websocket", "centrifugo", "protobuf"), "text": ("/text", "raw", "json")}


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _types() -> collections.Counter[str]:
    sizes: collections.Counter[str] = collections.Counter()
    counts: collections.Counter[str] = collections.Counter()
    for obj in gc.get_objects():
        name = type(obj).__module__ + "." + type(obj).__qualname__
        counts[name] += 1
        sizes[name] += sys.getsizeof(obj)
    return counts, sizes


async def main(args: argparse.Namespace) -> str:
    from hubbub.config import Config
    from hubbub.server import Server, tune_gc

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    path, mode, fmt = KINDS[args.kind]
    if args.kind == "text":
        from hubbub_text import build

        app = build("127.0.0.1", 0)
        await app.start()
        server = app.server
    else:
        server = Server(Config(host="127.0.0.1", port=0, page=False, ping_interval=25))
        await server.start()
    port = server.port
    tune_gc()
    # warm up: the first connections import and allocate what every later one shares
    warm = subprocess.run([sys.executable, str(BENCH / "connectgen.py"), "--port", str(port), "--path", path,
                           "--mode", mode, "--sub-format", fmt, "--subscribers", "100", "--hold", "0", "--json"],
                          capture_output=True, text=True, timeout=120)
    await asyncio.sleep(0.5)
    gc.collect()
    tracemalloc.start(1)
    before = tracemalloc.take_snapshot()
    counts0, sizes0 = _types()
    rss0 = _rss_kib()
    proc = subprocess.Popen([sys.executable, str(BENCH / "connectgen.py"), "--port", str(port), "--path", path,
                             "--mode", mode, "--sub-format", fmt, "--subscribers", str(args.connections),
                             "--hold", "600", "--json"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while len(server.websockets) < args.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        await asyncio.sleep(2.0)  # idle: every task that runs on connect has ended
        n = len(server.websockets)
        gc.collect()
        after = tracemalloc.take_snapshot()
        counts1, sizes1 = _types()
        rss1 = _rss_kib()
        tasks = len(asyncio.all_tasks())
    finally:
        proc.kill()
        proc.wait()
    traced = sum(s.size_diff for s in after.compare_to(before, "filename"))
    lines = [f"# {args.kind}: {n:,} idle connections (warm-up {warm.returncode == 0 and 100} before)", "",
             f"- traced (tracemalloc) growth: {traced / n:,.0f} bytes per connection",
             f"- RSS growth (includes tracemalloc's own bookkeeping): {(rss1 - rss0) * 1024 / n:,.0f} bytes "
             "per connection",
             f"- asyncio tasks alive: {tasks}", "",
             "## by allocation site (bytes per connection, top 25)", ""]
    for stat in after.compare_to(before, "lineno")[:25]:
        frame = stat.traceback[0]
        where = frame.filename.split("site-packages/")[-1].split("src/")[-1].split("python3.11/")[-1]
        lines.append(f"{stat.size_diff / n:8.1f}  {stat.count_diff / n:5.2f} blocks  {where}:{frame.lineno}")
    lines += ["", "## live objects by type (per connection: count, shallow bytes; top 25 by bytes)", ""]
    diff = {k: (counts1[k] - counts0.get(k, 0), sizes1[k] - sizes0.get(k, 0)) for k in sizes1}
    for name, (count, size) in sorted(diff.items(), key=lambda kv: -kv[1][1])[:25]:
        lines.append(f"{size / n:8.1f} B  {count / n:5.2f}  {name}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=tuple(KINDS), default="relay")
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    text = asyncio.run(main(args))
    print(text)
    if args.out:
        args.out.write_text(text)
