"""Test set-up for JavaScript: centrifuge-js from npm and Chromium.

centrifuge-js is installed by the test set-up into tests/js/node_modules (never
committed). Chromium is Debian's (`/usr/bin/chromium`), driven by Playwright
with ``executable_path``. A missing tool skips its tests, unless CI=true, where
it fails them.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from . import required

JS = Path(__file__).resolve().parent / "js"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def missing(what: str) -> None:
    required.missing(f"{what} not available")


def node_modules() -> Path:
    """tests/js/node_modules with centrifuge, ws and eventsource, installed with npm if needed."""
    if not shutil.which("node") or not shutil.which("npm"):
        missing("node and npm")
    modules = JS / "node_modules"
    if (not (modules / "centrifuge" / "dist" / "centrifuge.js").exists() or not (modules / "eventsource").exists()
            or not (modules / "socket.io-client").exists()):
        out = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--silent"], cwd=JS,
                             capture_output=True, text=True, timeout=300)
        if out.returncode != 0:
            missing(f"npm install of centrifuge ({out.stderr.strip()[:200]})")
    return JS / "node_modules"


def chromium() -> str:
    if not Path(CHROMIUM).exists():
        missing("Debian's chromium")
    try:
        import playwright  # noqa: F401
    except ImportError:
        missing("playwright (pip)")
    return CHROMIUM
