#!/usr/bin/env python3
"""Set-up and run hubbub from a fresh checkout, with nothing but Python 3.11+.

    python3 dev.py serve [ARGS...]   create .venv, install hubbub, run `hubbub serve ARGS...`
    python3 dev.py test  [ARGS...]   create .venv, install hubbub and the test tools, run pytest ARGS...
    python3 dev.py bench [ARGS...]   create .venv, install the benchmark peers, run bench/run.py ARGS...

The virtual environment lives in .venv (override with HUBBUB_VENV). Installing is skipped when
pyproject.toml has not changed since the last install. `test` also installs what the tests need
outside Python when it can (redis-server, chromium, node, npm and nginx from Debian's packages, as root;
centrifuge-js from npm); tests that need a
missing tool are skipped, unless CI=true, where they fail.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("HUBBUB_VENV", ROOT / ".venv"))
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / "python"

EXTRAS = {"serve": "redis", "test": "test", "bench": "bench"}


def say(msg: str) -> None:
    print(f"[dev] {msg}", file=sys.stderr, flush=True)


def ensure_venv(extra: str) -> None:
    if sys.version_info < (3, 11):
        sys.exit(f"hubbub needs Python 3.11 or newer; this is {sys.version.split()[0]}")
    if not PY.exists():
        say(f"creating virtual environment in {VENV}")
        venv.EnvBuilder(with_pip=True).create(VENV)
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + extra.encode()).hexdigest()
    stamp = VENV / f".hubbub-installed-{extra}"
    if stamp.exists() and stamp.read_text() == digest:
        return
    say(f"installing hubbub[{extra}] into {VENV}")
    subprocess.run([str(PY), "-m", "pip", "install", "--quiet", "--upgrade", "pip"], check=True)
    subprocess.run([str(PY), "-m", "pip", "install", "--quiet", "-e", f"{ROOT}[{extra}]"], check=True)
    stamp.write_text(digest)


def ensure_debian_package(command: str, package: str) -> None:
    """Install a Debian package when its command is missing and we may (root + apt-get)."""
    if shutil.which(command) or Path(f"/usr/sbin/{command}").exists():
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        say(f"{command} not found and cannot install {package}; tests that need it are skipped")
        return
    say(f"installing {package} from Debian's packages")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", package], check=True, env=env)


def ensure_npm_packages(folder: Path) -> None:
    """npm install the test's JavaScript packages (centrifuge-js) from the registry."""
    if (folder / "node_modules" / "centrifuge").exists() or not shutil.which("npm"):
        return
    say(f"installing JavaScript test packages in {folder}")
    subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--silent"], cwd=folder, check=True)


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in EXTRAS:
        print(__doc__)
        return 2
    command, args = sys.argv[1], sys.argv[2:]
    ensure_venv(EXTRAS[command])
    if command == "serve":
        os.execv(str(BIN / "hubbub"), [str(BIN / "hubbub"), "serve", *args])
    if command == "test":
        ensure_debian_package("redis-server", "redis-server")
        ensure_debian_package("redis-cli", "redis-tools")  # redis-cli --cluster create (tests/redis_server.py)
        ensure_debian_package("chromium", "chromium")
        ensure_debian_package("node", "nodejs")
        ensure_debian_package("npm", "npm")
        ensure_debian_package("nginx", "nginx")  # tests/test_deploy.py runs the deploy/nginx recipe
        ensure_npm_packages(ROOT / "tests" / "js")
        return subprocess.call([str(PY), "-m", "pytest", *args], cwd=ROOT)
    return subprocess.call([str(PY), str(ROOT / "bench" / "run.py"), *args], cwd=ROOT)


if __name__ == "__main__":
    raise SystemExit(main())
