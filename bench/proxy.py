"""Connect + subscribe per second, and server CPU per connect, with a connect proxy against JWT.

    python bench/proxy.py [--clients 2000] [--runs 3] [--docs-section bench/results/proxy.md]

One run = three `hubbub serve` processes, one after the other, each met by
`bench/connectgen.py --mode centrifugo` (connect + subscribe in one frame, then hold):

* ``anonymous``: no authentication at all (the floor);
* ``jwt``: every client sends an HS256 connection token;
* ``proxy``: every client sends a ``Cookie`` header, and hubbub asks a backend
  (``proxy_connect_endpoint``) who it is. The backend is this script's own aiohttp
  server in another process, answering ``{"result": {"user": ...}}`` from the cookie.

Runs are interleaved (anonymous, jwt, proxy, anonymous, ...) and the medians printed:
connects/s, hubbub's CPU per connect (µs), the backend's CPU per connect, and the
proxy's share of hubbub's CPU, ``(proxy - anonymous) / proxy`` (the same for JWT).
``--docs-section FILE`` writes them as the Markdown section that ``bench/run.py`` puts into
``docs/benchmarks.md``.
On the 2-core machine the generator, hubbub and the backend share the cores: the
connect rates are bounded by that, the CPU per connect is the figure to compare.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
SECRET = "bench-secret-bench-secret-bench-secret"


def serve_backend(port: int) -> None:
    """The backend: POST /connect answers the user named by the cookie (no database: the
    hub's share is what is measured, not Django's)."""
    from aiohttp import web

    async def connect(request: web.Request) -> web.Response:
        await request.read()
        cookie = request.headers.get("Cookie", "")
        user = cookie.partition("=")[2] or "anonymous"
        return web.json_response({"result": {"user": user}})

    app = web.Application()
    app.router.add_post("/connect", connect)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_http(url: str) -> None:
    for _ in range(200):
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} never answered")


def one(kind: str, clients: int, backend_port: int, backend_pid: int) -> dict[str, float]:
    port = free_port()
    settings = ["ping_interval = 0", "page = false", "admin = false"]
    gen_args: list[str] = []
    if kind == "jwt":
        import jwt

        settings += [f'token_hmac_secret = "{SECRET}"', "allow_anonymous = false"]
        gen_args = ["--token", jwt.encode({"sub": "bench"}, SECRET)]
    elif kind == "proxy":
        settings += [f'proxy_connect_endpoint = "http://127.0.0.1:{backend_port}/connect"',
                     'proxy_http_headers = ["Cookie"]', "allow_anonymous = false", "proxy_connect_timeout = 5.0"]
        gen_args = ["--header", "Cookie: sessionid=bench"]
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write("\n".join(settings) + "\n")
    server = subprocess.Popen([sys.executable, "-m", "hubbub", "serve", "--port", str(port), "--config", f.name,
                               "--log-level", "warning"], env=dict(os.environ, PYTHONPATH=str(ROOT / "src")))
    try:
        wait_http(f"http://127.0.0.1:{port}/health")
        backend0 = cpu_s(backend_pid)
        out = subprocess.run([sys.executable, str(BENCH / "connectgen.py"), "--port", str(port),
                              "--path", "/connection/websocket", "--mode", "centrifugo", "--subscribers", str(clients),
                              "--hold", "0.2", "--json", "--cpu-pid", str(server.pid), *gen_args],
                             capture_output=True, text=True, timeout=600).stdout
        report = json.loads(out.strip().splitlines()[-1])
        ready = report.get("ready", clients) or clients
        return {"connects_per_s": report["connects_per_s"], "cpu_us": report["server_cpu_per_connect_us"],
                "backend_cpu_us": (cpu_s(backend_pid) - backend0) * 1e6 / ready if kind == "proxy" else 0.0}
    finally:
        server.terminate()
        server.wait(10)
        os.unlink(f.name)


def docs_section(args: argparse.Namespace, median: dict[str, dict[str, float]], started: float) -> str:
    """The figures as the Markdown section of docs/benchmarks.md."""
    floor = median["anonymous"]["cpu_us"]
    share = {kind: (m["cpu_us"] - floor) / m["cpu_us"] for kind, m in median.items()}
    rows = "\n".join(
        f"| {kind} | {m['connects_per_s']:,.0f} | {m['cpu_us']:.0f} | {share[kind]:.0%} | "
        + (f"{m['backend_cpu_us']:.0f} |" if kind == "proxy" else " |")
        for kind, m in median.items())
    proxy, jwt = median["proxy"], median["jwt"]
    finished = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return f"""## Proxy hooks: connect through the backend against JWT

Measured by `python bench/proxy.py --clients {args.clients} --runs {args.runs} --docs-section bench/results/proxy.md` \
(finished {finished}, {time.time() - started:.0f} s; not part of `--suite`): three `hubbub serve` processes, one after \
the other, interleaved {args.runs} times, each met by `bench/connectgen.py --mode centrifugo` (one frame with connect + \
subscribe per client, {args.clients:,} clients, 100 handshakes in flight): **anonymous** (no authentication: the \
floor), **jwt** (an HS256 connection token in every connect) and **proxy** (no token; a `Cookie` header that hubbub \
forwards to `proxy_connect_endpoint`, a minimal aiohttp backend in another process answering \
`{{"result": {{"user": ...}}}}`). Server CPU is hubbub's user + system time per ready client (`/proc/PID/stat`); the \
backend's CPU is measured the same way. Medians of the {args.runs} runs:

| authentication | connects + subscribes/s | hubbub CPU µs per connect | share of hubbub CPU spent authenticating | backend CPU µs per connect |
| --- | ---: | ---: | ---: | ---: |
{rows}

The proxy costs hubbub {proxy['cpu_us'] - floor:.0f} µs per connect, against {jwt['cpu_us'] - floor:.0f} µs for \
verifying a JWT: an HTTP request and its answer through aiohttp's client (its pool keeps the connections to the \
backend open), the JSON of both, and the await the connect waits on. The connect rate with the proxy is \
{proxy['connects_per_s'] / jwt['connects_per_s']:.2f}x JWT's on this 2-core machine, where the generator, hubbub and \
the backend share the cores; single runs move by 30 % or more, so compare the medians. The backend here does no \
work: a real one (Django reading its session from a database) adds its latency to every connect, not hubbub's CPU. \
JWT stays the cheaper way through connect storms; the proxy saves the token plumbing.
""".replace("\\\n", "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--docs-section", type=Path, metavar="FILE",
                        help="write the figures as a Markdown section (bench/results/proxy.md)")
    parser.add_argument("--serve-backend", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_backend:
        serve_backend(args.serve_backend)
        return
    started = time.time()
    backend_port = free_port()
    backend = subprocess.Popen([sys.executable, __file__, "--serve-backend", str(backend_port)])
    try:
        wait_http(f"http://127.0.0.1:{backend_port}/connect")
        kinds = ("anonymous", "jwt", "proxy")
        results: dict[str, list[dict[str, float]]] = {kind: [] for kind in kinds}
        for run in range(args.runs):
            for kind in kinds:
                result = one(kind, args.clients, backend_port, backend.pid)
                results[kind].append(result)
                print(f"run {run + 1} {kind:9}: {result['connects_per_s']:7.0f} connects/s, "
                      f"{result['cpu_us']:6.0f} µs hubbub CPU per connect"
                      + (f", {result['backend_cpu_us']:.0f} µs backend CPU" if kind == "proxy" else ""),
                      flush=True)
        median = {kind: {key: statistics.median(r[key] for r in results[kind]) for key in results[kind][0]}
                  for kind in kinds}
        floor = median["anonymous"]["cpu_us"]
        print(f"\nmedians of {args.runs} interleaved runs, {args.clients} clients each (connect + subscribe):")
        for kind in kinds:
            m = median[kind]
            share = (m["cpu_us"] - floor) / m["cpu_us"] if kind != "anonymous" else 0.0
            print(f"  {kind:9}  {m['connects_per_s']:7.0f} connects/s  {m['cpu_us']:6.0f} µs hubbub CPU/connect"
                  f"  auth share of hubbub CPU {share:5.1%}"
                  + (f"  backend {m['backend_cpu_us']:.0f} µs/connect" if kind == "proxy" else ""))
        report: dict[str, Any] = {"clients": args.clients, "runs": args.runs, "median": median}
        print(json.dumps(report))
        if args.docs_section:
            args.docs_section.write_text(docs_section(args, median, started))
    finally:
        backend.terminate()
        backend.wait(10)


if __name__ == "__main__":
    main()
