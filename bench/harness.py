"""Shared plumbing of the benchmark runners: servers in their own process
groups, free ports, the load generator as a subprocess.

Used by ``run.py`` (one workload, many servers) and ``suite.py`` (every
workload).  Nothing here measures anything by itself.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
HOST = "127.0.0.1"
#: protocol publications awaiting a reply, at most (burst workloads)
PUBLISH_WINDOW = 1000


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


def server_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for server processes: the repo's ``src`` on PYTHONPATH."""
    env = dict(os.environ)
    # a deployed hubbub runs from compiled bytecode (pip writes the .pyc files at install);
    # without it every start compiles hubbub's sources again (~0.2 s of CPU, 0.3-0.5 s before
    # listening on a busy machine: workload 8's restart)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    src = REPO / "src"
    if src.is_dir():
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src), env.get("PYTHONPATH")]))
    env.update(extra or {})
    return env


def free_port() -> int:
    """A TCP port that is free on HOST right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def missing_module(modules: Sequence[str], python: str) -> str | None:
    """Return why ``modules`` cannot be imported by ``python``, or None."""
    if not modules:
        return None
    code = "; ".join(f"import {m}" for m in modules)
    proc = subprocess.run(
        [python, "-c", code],
        env=server_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if proc.returncode == 0:
        return None
    last = (proc.stderr.strip().splitlines() or ["?"])[-1]
    return f"`{python} -c '{code}'` failed: {last}"


def read_rss_kib(pid: int) -> int | None:
    """Resident memory (VmRSS) of process ``pid`` in KiB, or None."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


class ServerProcess:
    """A server running in its own process group, with its output in a log.

    ``argv(python, port)`` gives the command line.  :meth:`restart` kills the
    group with SIGKILL and starts the same command on the same port.
    """

    def __init__(
        self,
        name: str,
        argv: Callable[[str, int], list[str]],
        python: str,
        log_dir: Path,
        *,
        env: dict[str, str] | None = None,
        port: int | None = None,
    ) -> None:
        self.name = name
        self._argv = argv
        self._python = python
        self._env = env
        self.port = port or free_port()
        self.log_path = log_dir / f"{name}-{self.port}.log"
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = self._spawn()

    def _spawn(self) -> subprocess.Popen:
        return subprocess.Popen(
            self._argv(self._python, self.port),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env=server_env(self._env),
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_listening(self, timeout: float = 30.0) -> float:
        """Return the seconds it took until the port accepted a TCP
        connection; raise RuntimeError otherwise."""
        start = time.monotonic()
        deadline = start + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"exited with code {self.proc.returncode}")
            try:
                with socket.create_connection((HOST, self.port), timeout=0.5):
                    return time.monotonic() - start
            except OSError:
                time.sleep(0.02)
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

    def kill(self) -> None:
        """SIGKILL the whole process group at once (a crash, for restarts)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass

    def restart(self) -> None:
        """Kill the server and start it again on the same port."""
        self.kill()
        self.proc = self._spawn()

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


#: The load generator the runners use: ``fastgen.py`` (epoll subscribers, C frame
#: scanner); ``HUBBUB_BENCH_GENERATOR=loadgen`` selects the asyncio one.
GENERATOR = os.environ.get("HUBBUB_BENCH_GENERATOR", "fastgen")


def mode_args(mode: str) -> list[str]:
    """The generator's mode flags for a peer's mode: ``centrifugo+protobuf`` is
    ``--mode centrifugo --sub-format protobuf`` (Protobuf subscribers, JSON producer)."""
    if mode == "centrifugo+protobuf":
        return ["--mode", "centrifugo", "--sub-format", "protobuf"]
    return ["--mode", mode]


def loadgen_argv(port: int | Sequence[int], path: str, mode: str, args: Sequence[str]) -> list[str]:
    """The command line of the load generator against ``HOST:port`` (or several ports)."""
    ports = [port] if isinstance(port, int) else list(port)
    return [
        sys.executable,
        str(BENCH / f"{GENERATOR}.py"),
        "--host",
        HOST,
        "--port",
        ",".join(map(str, ports)),
        "--path",
        path,
        *mode_args(mode),
        *args,
        "--json",
    ]


def run_loadgen(argv: list[str], budget: float) -> dict:
    """Run the load generator; return its JSON report (its last stdout line)."""
    proc = subprocess.run(argv, stdout=subprocess.PIPE, text=True, timeout=budget, cwd=REPO, check=False)
    lines = proc.stdout.strip().splitlines()
    if not lines:
        raise RuntimeError(f"loadgen produced no report (exit code {proc.returncode})")
    return json.loads(lines[-1])
