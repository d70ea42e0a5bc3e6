"""Workload 1 with the operator's dashboard open and closed, interleaved.

    python bench/admin_overhead.py [--subscribers 1000] [--messages 500] [--runs 3]

Starts ``hubbub serve`` (memory broker, an admin secret) on a free port of
127.0.0.1, then runs workload 1 (burst fan-out on the relay, ``bench/loadgen.py``)
``--runs`` times with no dashboard and ``--runs`` times with ``/admin`` open in
headless Chromium (Playwright, logged in with ``Authorization: Bearer``), in
alternation (closed, open, closed, open, ...), so machine noise falls on both
alike. Prints each run's deliveries/s and the medians, and the ratio open/closed.
Bounded: every run has the load generator's own ``--timeout``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
SECRET = "bench-admin-secret-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex((HOST, port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {HOST}:{port} after {timeout:.0f}s")


def burst(port: int, subscribers: int, messages: int) -> float:
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "loadgen.py"), "--port", str(port), "--path", "/ws/bench",
         "--subscribers", str(subscribers), "--messages", str(messages), "--timeout", "60", "--json"],
        capture_output=True, text=True, timeout=180, check=True)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    if not report.get("complete"):
        raise RuntimeError(f"incomplete run: {report.get('delivered')} delivered")
    return float(report["deliveries_per_s"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=500)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), HUBBUB_ADMIN_SECRET=SECRET)
    server = subprocess.Popen([sys.executable, "-m", "hubbub", "serve", "--host", HOST, "--port", str(port)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    closed: list[float] = []
    opened: list[float] = []
    try:
        wait_port(port)
        chromium = shutil.which("chromium") or "/usr/bin/chromium"
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=["--headless=new", "--no-sandbox"])
            for _ in range(args.runs):
                closed.append(burst(port, args.subscribers, args.messages))
                context = browser.new_context(extra_http_headers={"Authorization": f"Bearer {SECRET}"})
                page = context.new_page()
                page.goto(f"http://{HOST}:{port}/admin")
                page.wait_for_function("document.querySelector('#value-clients') && "
                                       "document.querySelector('#value-clients').textContent !== '–'",
                                       timeout=15000)
                opened.append(burst(port, args.subscribers, args.messages))
                context.close()
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=15)
    print("dashboard closed:", ", ".join(f"{r:,.0f}" for r in closed), "deliveries/s")
    print("dashboard open:  ", ", ".join(f"{r:,.0f}" for r in opened), "deliveries/s")
    c, o = statistics.median(closed), statistics.median(opened)
    print(f"medians: closed {c:,.0f}/s, open {o:,.0f}/s, open/closed {o / c:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
