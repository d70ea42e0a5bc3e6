#!/usr/bin/env python3
"""Build hubbub's wheel, install it into a clean virtual environment and serve from it.

    .venv/bin/python tools/check_wheel.py                 # build, install, serve, stop
    .venv/bin/python tools/check_wheel.py --wheel W.whl   # check a wheel built elsewhere

A file the package needs at run time but the wheel does not carry (package data: the Redis
broker's Lua scripts, the static files, the .proto) works in a checkout and fails once
installed; the test suite runs from the checkout, so only this finds it. The check:

1. ``python -m build --wheel`` (the ``build`` package, in the test extra), from a clean copy of
   the sources;
2. the wheel carries every file of ``src/hubbub`` (but caches) and the licence;
3. a new virtual environment in a temporary directory gets the wheel with its ``redis`` extra
   (``pip`` fetches the dependencies), and ``hubbub`` is imported from there, not from the
   checkout (the commands run in the temporary directory, with no ``PYTHONPATH``);
4. ``hubbub --version`` and ``hubbub check-config`` on a settings file; then ``hubbub serve
   --port 0`` with the Redis broker (a ``redis-server`` of its own on a free port; with the
   memory broker when there is no ``redis-server``, except under ``CI=true``, where that fails):
   ``/health`` answers, ``/`` and every ``/static/`` file are the checkout's, and a publication
   sent to the server API comes back from its history (the Lua scripts ran);
5. SIGTERM stops the server, which must exit 0.

Exits 0 when all is well, 1 with what went wrong. Only the standard library (and ``build``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import venv
import zipfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "hubbub"
#: seconds for each wait: the server to start, to answer, to stop
TIMEOUT = 60.0
API_KEY = "check-wheel-" + "k" * 24

SETTINGS = f'''# what tools/check_wheel.py serves with
api_key = "{API_KEY}"

[channels]
history_size = 10
history_ttl = 60
presence = true
'''


class Failed(Exception):
    """What went wrong, for the last line of output."""


def say(msg: str) -> None:
    print(f"[check_wheel] {msg}", flush=True)


def run(argv: list[str], cwd: Path, env: dict[str, str], timeout: float = 600) -> str:
    out = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise Failed(f"{' '.join(argv)} exited {out.returncode}:\n{out.stdout}{out.stderr}")
    return out.stdout


#: what building needs from the checkout (pyproject.toml names the readme and the licence)
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "src")


def build(outdir: Path) -> Path:
    """Build from a copy of the sources without ``*.egg-info`` and ``build/``: setuptools adds
    the files an old ``SOURCES.txt`` lists (an editable install leaves one in ``src/``), which
    would hide a file that package-data misses."""
    tree = outdir.parent / "source"
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, tree / name,
                            ignore=shutil.ignore_patterns("*.egg-info", "__pycache__", "*.pyc"))
        else:
            tree.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, tree / name)
    say(f"building the wheel into {outdir}")
    run([sys.executable, "-m", "build", "--wheel", "--outdir", str(outdir), str(tree)], tree, dict(os.environ))
    wheels = list(outdir.glob("hubbub-*.whl"))
    if len(wheels) != 1:
        raise Failed(f"expected one wheel in {outdir}, found {wheels}")
    return wheels[0]


def check_contents(wheel: Path) -> None:
    """Every file of the package in the checkout is in the wheel, and so is the licence."""
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        metadata_name = next((n for n in names if n.endswith(".dist-info/METADATA")), "")
        metadata = zf.read(metadata_name).decode() if metadata_name else ""
    package = {f"hubbub/{p.relative_to(PACKAGE).as_posix()}" for p in PACKAGE.rglob("*")
               if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo")}
    missing = sorted(package - names)
    if missing:
        raise Failed(f"the wheel lacks files of src/hubbub (package data in pyproject.toml?): {missing}")
    if not any(n.endswith(".dist-info/licenses/LICENSE") for n in names):
        raise Failed("the wheel does not carry LICENSE (license-files in pyproject.toml)")
    if not re.search(r"^License-Expression: \S+", metadata, re.M):
        raise Failed("the wheel's METADATA names no licence (license in pyproject.toml)")
    say(f"{wheel.name}: {len(package)} package files and LICENSE are in it")


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without anything that would point Python at the checkout or set settings."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HUBBUB_", "PYTHON", "VIRTUAL_ENV", "PIP_REQUIRE"))}
    return {**env, **extra}


def install(wheel: Path, where: Path) -> Path:
    """A new virtual environment with the wheel and its redis extra; returns its bin directory."""
    say(f"installing {wheel.name}[redis] into a new virtual environment, {where}")
    venv.EnvBuilder(with_pip=True, clear=True).create(where)
    bindir = where / ("Scripts" if os.name == "nt" else "bin")
    run([str(bindir / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         f"{wheel}[redis]"], where.parent, clean_env())
    return bindir


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def find_redis_server() -> str | None:
    found = shutil.which("redis-server")
    if found:
        return found
    return next((c for c in ("/usr/sbin/redis-server", "/usr/bin/redis-server") if os.access(c, os.X_OK)), None)


class Redis:
    """A ``redis-server`` of the check's own: 127.0.0.1, a free port, no persistence."""

    def __init__(self, binary: str, directory: Path) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen([binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", str(directory)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise Failed(f"redis-server did not start on port {self.port}")
            time.sleep(0.05)  # polling a port that is not yet open: there is no event to wait on

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Server:
    """``hubbub serve`` from the installed wheel; its port is read from its log."""

    PORT = re.compile(r"listening on http://[^ ]+:(\d+)")

    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        self.lines: list[str] = []
        self.port: int | None = None
        self._found = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._found.wait(TIMEOUT) or self.port is None:
            self.stop()
            raise Failed(f"hubbub serve did not say where it listens:\n{self.output()}")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            m = self.PORT.search(line)
            if m and self.port is None:
                self.port = int(m.group(1))
                self._found.set()
        self._found.set()  # exited: stop waiting

    def output(self) -> str:
        return "".join(self.lines)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise Failed(f"hubbub serve did not stop within {TIMEOUT} s of SIGTERM:\n{self.output()}") from None
        self._reader.join(TIMEOUT)
        return code


def http(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_healthy(server: Server, base: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while True:
        try:
            status, body = http("GET", f"{base}/health")
            if status == 200:
                say(f"/health: {body.decode().strip()}")
                return
        except OSError:
            pass
        if server.proc.poll() is not None or time.monotonic() > deadline:
            raise Failed(f"/health did not answer 200:\n{server.output()}")
        time.sleep(0.1)  # the listener is up (it logged its port); this waits for the first answer


def serve_and_check(bindir: Path, work: Path) -> None:
    env = clean_env()
    where = run([str(bindir / "python"), "-c", "import hubbub; print(hubbub.__file__)"], work, env).strip()
    if not Path(where).is_relative_to(bindir.parent):
        raise Failed(f"hubbub was imported from {where}, not from the wheel's environment")
    version = run([str(bindir / "hubbub"), "--version"], work, env).strip()
    say(f"{version}, imported from {where}")

    settings = work / "hub.toml"
    settings.write_text(SETTINGS)
    run([str(bindir / "hubbub"), "check-config", str(settings)], work, env)

    argv = [str(bindir / "hubbub"), "serve", "--config", str(settings), "--port", "0"]
    redis: Redis | None = None
    binary = find_redis_server()
    if binary:
        redis = Redis(binary, work)
        argv += ["--broker", redis.url]
    elif os.environ.get("CI", "").lower() == "true":
        raise Failed("no redis-server: the Redis broker (and its Lua scripts) cannot be checked")
    else:
        say("no redis-server here: serving with the memory broker (the Lua scripts are not run)")
    try:
        server = Server(argv, work, env)
        try:
            base = f"http://127.0.0.1:{server.port}"
            wait_healthy(server, base)
            status, page = http("GET", f"{base}/")
            if status != 200 or page != (PACKAGE / "static" / "index.html").read_bytes():
                raise Failed(f"GET / answered {status}, not the checkout's static/index.html")
            for path in sorted((PACKAGE / "static").iterdir()):
                status, body = http("GET", f"{base}/static/{path.name}")
                if status != 200 or body != path.read_bytes():
                    raise Failed(f"GET /static/{path.name} answered {status}, not the checkout's file")
            headers = {"X-API-Key": API_KEY, "Content-Type": "application/json"}
            status, body = http("POST", f"{base}/api/publish", {"channel": "wheel", "data": {"built": True}}, headers)
            if status != 200 or "error" in json.loads(body):
                raise Failed(f"POST /api/publish answered {status} {body!r}")
            status, body = http("POST", f"{base}/api/history", {"channel": "wheel", "limit": 10}, headers)
            reply = json.loads(body) if status == 200 else {}
            data = [p.get("data") for p in reply.get("result", {}).get("publications", [])]
            if data != [{"built": True}]:
                raise Failed(f"POST /api/history answered {status} {body!r}")
            say(f"served from the wheel on port {server.port} (broker: {'redis' if redis else 'memory'}): "
                "/health, /, /static/*, publish and history")
        finally:
            code = server.stop()
        if code != 0:
            raise Failed(f"hubbub serve exited {code} on SIGTERM:\n{server.output()}")
    finally:
        if redis is not None:
            redis.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0] if __doc__ else None)
    parser.add_argument("--wheel", type=Path, help="check this wheel instead of building one")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="hubbub-wheel-") as tmp:
        base = Path(tmp)
        try:
            wheel = args.wheel.resolve() if args.wheel else build(base / "dist")
            check_contents(wheel)
            bindir = install(wheel, base / "venv")
            work = base / "work"
            work.mkdir()
            serve_and_check(bindir, work)
        except (Failed, subprocess.TimeoutExpired) as exc:
            print(f"[check_wheel] FAILED: {exc}", file=sys.stderr, flush=True)
            return 1
    say("ok")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
