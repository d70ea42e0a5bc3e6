"""The benchmark suite: eight workloads against every peer, one after another.

Run it with ``python bench/run.py --suite`` (full) or ``--quick`` (a small
version of every workload, under a minute).  Every server runs alone in its
own process group on 127.0.0.1, started afresh for each measurement, and the
same load generator drives all of them: ``fastgen.py`` (epoll subscribers and
a C frame scanner; ``HUBBUB_BENCH_GENERATOR=loadgen`` for the older asyncio
ones) for workloads 1-4 and 6, ``connectgen.py`` (one epoll loop, no asyncio,
a few times cheaper per connection) for workload 5.

Workloads (figures at full scale; ``--quick`` shrinks them):

1. Burst fan-out: 1,000 and 10,000 subscribers on one channel; 500
   publications of 100 bytes as fast as the producer can -> deliveries/s.
2. Steady fan-out: 1,000 subscribers, publications at 50 % of the server's
   own burst rate (workload 1), and at one common rate for every server
   (50 % of the websockets baseline's burst rate) -> publish-to-receive
   latency p50/p99/p99.9 from timestamps in the payload.
3. Many channels: 10,000 clients, each in its personal channel and in one
   of 100 group channels; 10,000 publications, each to a random channel
   (half to personal channels, half to group channels) -> deliveries/s and
   latency percentiles.
4. Idle memory: server RSS growth per connection with 10,000 idle
   connections subscribed to one channel.
5. Connect rate and restart: 5,000 clients connect and subscribe (100
   handshakes in flight, ``connectgen.py``) -> handshakes/s; then the server is killed
   (SIGKILL) and started again on the same port -> time until every client
   is connected and subscribed again.
6. Redis: workload 1 against ``hubbub serve --workers 2 --broker redis://``
   (and one process with the Redis broker) vs one process with the memory
   broker.
7. Sustained load: for 1,000 and 10,000 subscribers on one channel and for
   workload 3's many channels, the highest publication rate that keeps p99
   latency at or under 50 ms for 10 s (doubling, then bisection).
8. Reconnect storm: 15,000 clients, the server SIGKILLed and restarted on the
   same port; clients reconnect as the SDKs do (first try within 0-500 ms,
   jittered backoff) -> kill to all back, server CPU, peak RSS.

Then a profile of hubbub under workload 1 (py-spy attached to the server)
gives "Where the time goes".  The results, the machine and the package
versions go to ``docs/benchmarks.md`` with a plot in ``docs/benchmarks.png``.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime
import json
import os
import platform
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from harness import (
    BENCH,
    HOST,
    PUBLISH_WINDOW,
    REPO,
    ServerProcess,
    free_port,
    loadgen_argv,
    missing_module,
    mode_args,
    read_rss_kib,
    run_loadgen,
)
from peers import BASELINE, HUBBUB, HUBBUB_PROTOCOL, PEERS, Peer, hubbub_argv

DOCS = REPO / "docs"
#: A server whose RSS passes this is killed (the run is reported as such).
RSS_LIMIT_KIB = 6 * 1024 * 1024
#: py-spy sampling rate
PROFILE_HZ = 500


@dataclass(frozen=True)
class Scale:
    """Sizes of every workload."""

    name: str
    w1_subscribers: tuple[int, ...]
    w1_messages: int
    w2_subscribers: int
    w2_seconds: float
    w3_clients: int
    w3_groups: int
    w3_messages: int
    w4_connections: int
    w5_clients: int
    w5_runs: int  # runs per server; the median connect rate is reported
    w6_subscribers: tuple[int, ...]
    timeout: float  # delivery phase limit per run, s
    profile_subscribers: int
    settle: float = 0.5  # loadgen: pause between subscribers ready and publishing
    w4_hold: float = 2.0  # idle memory: seconds between the last connection and the RSS reading
    #: workload -> servers left out at this scale (quick: fewer runs)
    skip: tuple[tuple[str, tuple[str, ...]], ...] = ()
    w2_own_for: tuple[str, ...] | None = None  # None: every server also at 50 % of its own rate
    w6_variants: tuple[str, ...] = ("hubbub-memory", "hubbub-redis-1", "hubbub-redis-2p", "hubbub-redis-2w")
    w6_timeout: float = 60.0
    #: workload 6: publications per burst (0: w1_messages; longer bursts than workload 1's,
    #: which last about 60 ms at these rates) and runs per variant, interleaved (median shown)
    w6_messages: int = 0
    w6_runs: int = 1
    #: workload 6's many-channels rows: publications (0: w3_messages)
    w6_many_messages: int = 0
    #: workload 7 (sustained load): subscriber counts on one channel, clients of the many-channels
    #: row (0: none), seconds per trial, first rate tried (publications/s), trials per search
    w7_subscribers: tuple[int, ...] = (1000, 10_000)
    w7_many_clients: int = 10_000
    w7_seconds: float = 10.0
    w7_start_rate: float = 100.0
    w7_trials: int = 9
    #: workload 8 (reconnect storm): clients, and the longest wait for all to be back (s)
    w8_clients: int = 15_000
    w8_timeout: float = 60.0
    #: workload 8 with recovery (hubbub protocol endpoint, Redis broker, a namespace with
    #: history): clients (each parses every publication: the generator's limit), publications/s
    w8_recover_clients: int = 5_000
    w8_recover_rate: float = 20.0
    #: clients per load-generator process with recovery (each process parses every
    #: publication of its clients): 15,000 clients run in 3 processes
    w8_recover_per_proc: int = 5_000

    def skips(self, workload: str, name: str) -> bool:
        return any(w == workload and name in names for w, names in self.skip)


FULL = Scale(
    name="full",
    w1_subscribers=(1000, 10_000),
    w1_messages=500,
    w2_subscribers=1000,
    w2_seconds=5.0,
    w3_clients=10_000,
    w3_groups=100,
    w3_messages=10_000,
    w4_connections=10_000,
    w5_clients=5000,
    w5_runs=3,
    w6_subscribers=(1000, 10_000),
    timeout=100.0,
    profile_subscribers=10_000,
    w6_messages=2000,
    w6_runs=3,
    w6_many_messages=30_000,
)
QUICK = Scale(
    name="quick",
    w1_subscribers=(500,),
    w1_messages=100,
    w2_subscribers=500,
    w2_seconds=1.0,
    w3_clients=1000,
    w3_groups=10,
    w3_messages=500,
    w4_connections=1000,
    w5_clients=500,
    w5_runs=1,
    w6_subscribers=(500,),
    timeout=15.0,
    profile_subscribers=1000,
    settle=0.2,
    w4_hold=1.0,
    skip=(
        ("2", ("trivial", "hubbub-protocol", "socketio")),
        ("3", ("socketio",)),
        ("4", ("hubbub-protocol",)),
        ("5", ("hubbub-protocol",)),
    ),
    w2_own_for=("hubbub",),
    w6_variants=("hubbub-memory", "hubbub-redis-2p", "hubbub-redis-2w"),
    w7_subscribers=(500,),
    w7_many_clients=1000,
    w7_seconds=1.0,
    w7_trials=4,
    w8_clients=1000,
    w8_recover_clients=500,
    w8_timeout=20.0,
)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class CpuMeter:
    """How much CPU other processes (not this suite and its children) used.

    The machine's busy time comes from /proc/stat; the suite's own from
    ``getrusage`` of this process and of its reaped children (servers, load
    generators and their workers).  Read :meth:`foreign_percent` after the
    children of the interval were reaped.
    """

    def __init__(self) -> None:
        self._busy0, self._total0 = _machine_cpu()
        self._own0 = _own_cpu()

    def foreign_percent(self) -> float | None:
        busy1, total1 = _machine_cpu()
        if busy1 is None or self._busy0 is None or total1 == self._total0:
            return None
        foreign = (busy1 - self._busy0) - (_own_cpu() - self._own0)
        return max(0.0, round(100 * foreign / (total1 - self._total0), 1))  # share of all cores


def _machine_cpu() -> tuple[float | None, float]:
    """(busy, total) CPU seconds of the whole machine, all cores."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None, 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])
    return (total - idle) / ticks, total / ticks


def _own_cpu() -> float:
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


#: a measurement during which other processes used more than this share of the machine is flagged
BUSY_PERCENT = 15.0


# ---------------------------------------------------------------------------
# Running one measurement
# ---------------------------------------------------------------------------


class RssWatchdog:
    """Kills a server whose resident memory passes ``RSS_LIMIT_KIB``."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.tripped: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> RssWatchdog:  # noqa: PYI034
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(2)

    def _watch(self) -> None:
        while not self._stop.wait(0.5):
            rss = read_rss_kib(self.server.pid)
            if rss is not None and rss > RSS_LIMIT_KIB:
                self.tripped = f"server killed: RSS {rss / 1048576:.1f} GiB > {RSS_LIMIT_KIB / 1048576:.0f} GiB"
                self.server.kill()
                return


class Suite:
    def __init__(self, args: argparse.Namespace, scale: Scale, log_dir: Path) -> None:
        self.args = args
        self.scale = scale
        self.python = args.python
        self.log_dir = log_dir
        self.peers: list[Peer] = []
        self.skipped: dict[str, str] = {}
        self.results: dict = {"scale": scale.__dict__, "workloads": {}}
        self.startup_s: dict[str, float] = {}
        if getattr(args, "render", None):
            return  # filled in by from_results()
        for name in args.servers:
            peer = PEERS[name]
            reason = missing_module(peer.requires, self.python)
            if reason is None and peer.name == "socketify":
                reason = self._socketify_problem()
            if reason is None and peer.problem is not None:
                reason = peer.problem()
            if reason:
                self.skipped[peer.name] = reason
                log(f"  {peer.name}: skipped: {reason}")
            else:
                self.peers.append(peer)

    def _socketify_problem(self) -> str | None:
        """socketify imports but may still fail to load its native library."""
        proc = subprocess.run(
            [self.python, "-c", "from socketify import App; App()"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if proc.returncode != 0:
            return (proc.stderr.strip().splitlines() or ["?"])[-1]
        return None

    # -- servers -------------------------------------------------------------

    @contextlib.contextmanager
    def server(self, peer: Peer, *, settle: float = 0.0) -> Iterator[ServerProcess]:
        with self.servers(peer, 1, settle=settle) as servers:
            yield servers[0]

    @contextlib.contextmanager
    def servers(self, peer: Peer, count: int, *, settle: float = 0.0) -> Iterator[list[ServerProcess]]:
        """``count`` processes of ``peer``, each on its own port."""
        started: list[ServerProcess] = []
        try:
            for _ in range(count):
                server = ServerProcess(peer.name, peer.argv, self.python, self.log_dir, env=peer.env)
                started.append(server)
                try:
                    took = server.wait_listening()
                except RuntimeError as exc:
                    raise RuntimeError(f"{exc}\n{server.log_tail(8)}") from None
                self.startup_s.setdefault(peer.name, round(took, 2))
            if settle:
                time.sleep(settle)
            yield started
        finally:
            for server in started:
                server.stop()

    def measure(
        self,
        peer: Peer,
        path: str,
        mode: str,
        loadgen_args: list[str],
        *,
        timeout: float,
        rss: bool = False,
        cpu: bool = False,
        settle: float = 0.0,
        replicas: int = 1,
    ) -> dict:
        """Start ``peer`` (``replicas`` processes, subscribers spread over
        them), run the load generator once, stop it.  Never raises."""
        outcome: dict = {"server": peer.name}
        servers: list[ServerProcess] = []
        started = time.monotonic()
        meter = CpuMeter()
        try:
            with self.servers(peer, replicas, settle=settle) as servers:
                server = servers[0]
                args = [*loadgen_args, "--settle", str(self.scale.settle)]
                if rss:
                    args += ["--rss-pid", str(server.pid)]
                args += ["--cpu-pid", str(server.pid)]  # server CPU per connect and per delivery
                ports = [srv.port for srv in servers]
                with RssWatchdog(server) as dog:
                    outcome["report"] = run_loadgen(loadgen_argv(ports, path, mode, args), timeout + 180)
                if dog.tripped:
                    outcome["error"] = dog.tripped
                for srv in servers:
                    if srv.proc.poll() is not None:
                        outcome["error"] = f"server exited with code {srv.proc.returncode} during the run"
                        outcome["log_tail"] = srv.log_tail(8)
        except (RuntimeError, subprocess.TimeoutExpired, ValueError, OSError) as exc:
            outcome["error"] = f"{type(exc).__name__}: {exc}"
        outcome["foreign_cpu_percent"] = meter.foreign_percent()
        if "error" in outcome:
            log(f"  {peer.name}: {outcome['error']}" + (f"\n{outcome['log_tail']}" if "log_tail" in outcome else ""))
        _log_outcome(outcome, time.monotonic() - started)
        return outcome

    def restart_measure(self, peer: Peer, clients: int, timeout: float) -> dict:
        """Workload 5: connect ``clients``, kill and restart the server, wait
        for every client to be back."""
        outcome: dict = {"server": peer.name}
        server = None
        started = time.monotonic()
        meter = CpuMeter()
        try:
            with self.server(peer) as server:
                argv = connectgen_argv(server.port, peer.fanout.path, peer.fanout.mode, clients, timeout, server.pid)
                proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, cwd=REPO)
                try:
                    line = _read_line(proc, timeout + 60)
                    if line is None or '"event"' not in line:
                        raise RuntimeError(f"no ready event from connectgen: {line!r}")
                    kill_ns = time.time_ns()
                    server.restart()
                    if profile is not None:
                        spy = _attach_pyspy(server.pid, profile)
                    outcome["restart_listening_s"] = round(server.wait_listening(), 3)
                    out, _ = proc.communicate(timeout=timeout + 60)
                finally:
                    if proc.poll() is None:
                        proc.kill()
                        proc.wait()
                lines = out.strip().splitlines()
                if not lines:
                    raise RuntimeError("connectgen produced no report")
                report = json.loads(lines[-1])
                if report.get("last_ready_ns"):
                    report["reconnect_from_kill_s"] = round((report["last_ready_ns"] - kill_ns) / 1e9, 3)
                outcome["report"] = report
        except (RuntimeError, subprocess.TimeoutExpired, ValueError, OSError) as exc:
            outcome["error"] = f"{type(exc).__name__}: {exc}"
        if "error" in outcome and server is not None:
            outcome["log_tail"] = server.log_tail(8)
            log(f"  {peer.name}: {outcome['error']}\n{outcome['log_tail']}")
        outcome["foreign_cpu_percent"] = meter.foreign_percent()
        _log_outcome(outcome, time.monotonic() - started)
        return outcome

    def runs(self, workload: str) -> list[Peer]:
        """The servers measured in ``workload`` at this scale."""
        return [p for p in self.peers if not self.scale.skips(workload, p.name)
                and (p.workloads is None or workload in p.workloads)]

    # -- workloads -----------------------------------------------------------

    def w1(self) -> None:
        s = self.scale
        section: dict = {}
        for subs in s.w1_subscribers:
            rows = {}
            for peer in self.runs("1"):
                log(f"- workload 1: {peer.name}, {subs} subscribers")
                rows[peer.name] = self.measure(
                    peer,
                    peer.fanout.path,
                    peer.fanout.mode,
                    _burst_args(subs, s.w1_messages, s.timeout) + _window(peer.fanout.mode),
                    timeout=s.timeout,
                )
            section[str(subs)] = rows
        self.results["workloads"]["1"] = section

    def w1_rate(self, name: str, subs: int) -> float | None:
        row = self.results["workloads"].get("1", {}).get(str(subs), {}).get(name)
        if row and "report" in row and row["report"]["deliveries_per_s"] > 0:
            return row["report"]["deliveries_per_s"]
        return None

    def w2(self) -> None:
        s = self.scale
        subs = s.w2_subscribers
        if str(subs) not in self.results["workloads"].get("1", {}):
            self.results["workloads"]["2"] = {"error": "needs workload 1 at the same subscriber count"}
            return
        base = self.w1_rate(BASELINE, subs)
        common = round(0.5 * base / subs, 1) if base else None
        section: dict = {"common_rate": common, "own": {}, "common": {}}
        for peer in self.runs("2"):
            burst = self.w1_rate(peer.name, subs)
            own = round(0.5 * burst / subs, 1) if burst else None
            runs = []
            if own and (s.w2_own_for is None or peer.name in s.w2_own_for) and own != common:
                runs.append(("own", own))
            elif not own:
                section["own"][peer.name] = {"server": peer.name, "error": "no workload 1 result"}
            if common:
                runs.append(("common", common))
            for kind, rate in runs:
                messages = int(min(20_000, max(30, rate * s.w2_seconds)))
                log(f"- workload 2: {peer.name}, {rate:g} publications/s ({kind})")
                row = self.measure(
                    peer,
                    peer.fanout.path,
                    peer.fanout.mode,
                    [
                        "--subscribers", str(subs),
                        "--messages", str(messages),
                        "--rate", str(rate),
                        "--sample-every", "10",
                        "--timeout", str(s.timeout + messages / rate),
                    ],
                    timeout=s.timeout + messages / rate,
                )
                row["rate"] = rate
                section[kind][peer.name] = row
            if own is not None and own == common:  # the baseline: one run serves both
                section["own"][peer.name] = section["common"].get(peer.name)
        self.results["workloads"]["2"] = section

    def w3(self) -> None:
        s = self.scale
        section: dict = {}
        for peer in self.runs("3"):
            if peer.channels is None or peer.name == "hubbub-protocol":
                continue  # hubbub already uses its protocol endpoint here
            windows = [PUBLISH_WINDOW] + ([100] if s.name == "full" and peer.name == "hubbub" else [])
            if not peer.channels.mode.startswith("centrifugo"):
                windows = [None]
            for window in windows:
                name = peer.name if window in (None, PUBLISH_WINDOW) else f"{peer.name} (window {window})"
                log(f"- workload 3: {name}, {s.w3_clients} clients, {s.w3_groups} groups")
                section[name] = self.measure(
                    peer,
                    peer.channels.path,
                    peer.channels.mode,
                    [
                        "--subscribers", str(s.w3_clients),
                        "--groups", str(s.w3_groups),
                        "--messages", str(s.w3_messages),
                        "--timeout", str(s.timeout),
                        "--sample-every", "20",
                        *(["--window", str(window)] if window else []),
                    ],
                    timeout=s.timeout,
                    cpu=True,
                )
        self.results["workloads"]["3"] = section

    @classmethod
    def from_results(cls, args: argparse.Namespace, results: dict) -> Suite:
        """A suite holding the results of an earlier run (``--render``)."""
        scale_fields = dict(results["scale"])
        for key in ("w1_subscribers", "w6_subscribers", "w6_variants", "w2_own_for", "w7_subscribers"):
            if isinstance(scale_fields.get(key), list):
                scale_fields[key] = tuple(scale_fields[key])
        scale_fields["skip"] = tuple((w, tuple(n)) for w, n in scale_fields.get("skip", ()))
        suite = cls(args, Scale(**scale_fields), Path(tempfile.gettempdir()))
        suite.results = results
        suite.peers = [PEERS[n] for n in results.get("peers", []) if n in PEERS]
        suite.skipped = dict(results.get("skipped", {}))
        return suite

    def w4(self) -> None:
        s = self.scale
        section: dict = {}
        warmup = max(10, s.w4_connections // 100)
        for peer in self.runs("4"):
            log(f"- workload 4: {peer.name}, {s.w4_connections} idle connections")
            section[peer.name] = self.measure(
                peer,
                peer.fanout.path,
                peer.fanout.mode,
                [
                    "--subscribers", str(s.w4_connections),
                    "--idle", "--warmup", str(warmup), "--hold", str(s.w4_hold),
                    "--timeout", "30",
                ],
                timeout=30,
                rss=True,
                settle=s.w4_hold / 4,
            )
        self.results["workloads"]["4"] = section

    def w5(self) -> None:
        """Workload 5, ``w5_runs`` runs per server (each a few seconds); the run with
        the median connect rate is reported, the others' rates are kept (``runs``)."""
        s = self.scale
        section: dict = {}
        for peer in self.runs("5"):
            log(f"- workload 5: {peer.name}, {s.w5_clients} clients, connect then restart, {s.w5_runs} run(s)")
            outcomes = [self.restart_measure(peer, s.w5_clients, timeout=60.0) for _ in range(s.w5_runs)]
            measured = sorted((o for o in outcomes if _connect_rate(o)), key=_connect_rate)
            chosen = measured[len(measured) // 2] if measured else outcomes[-1]
            chosen["runs"] = [_connect_rate(o) for o in outcomes]
            section[peer.name] = chosen
        self.results["workloads"]["5"] = section

    #: workload 7's servers (those not in --servers are left out)
    W7_PEERS = ("hubbub", "hubbub-protocol", "hubbub-protobuf", "hubbub-text", "socketify", "websockets",
                "trivial", "trivial-centrifugo")
    #: workload 7's latency bound (ms) on p99
    W7_P99_MS = 50.0

    def w7(self) -> None:
        """Workload 7, sustained load: for each row (``w7_subscribers`` on one channel, and
        workload 3's many channels) and server, the highest publication rate whose run of
        ``w7_seconds`` keeps p99 publish-to-receive latency at or under 50 ms, found by
        doubling from ``w7_start_rate`` until a rate fails, then bisecting (at most
        ``w7_trials`` runs per search; each run starts the server afresh)."""
        s = self.scale
        section: dict = {"p99_ms": self.W7_P99_MS, "seconds": s.w7_seconds, "rows": {}}
        self.results["workloads"]["7"] = section
        rows: list[tuple[str, str, int]] = [(str(n), "fanout", n) for n in s.w7_subscribers]
        if s.w7_many_clients:
            rows.append(("many", "channels", s.w7_many_clients))
        for row, kind, clients in rows:
            out: dict = {}
            for peer in self.runs("7"):
                if peer.name not in self.W7_PEERS:
                    continue
                target = peer.fanout if kind == "fanout" else peer.channels
                if target is None or (kind == "fanout" and peer.name == "trivial-centrifugo") \
                        or (kind == "channels" and peer.name == "hubbub-protocol"):
                    continue  # hubbub's many-channels row is already the protocol endpoint
                log(f"- workload 7: {peer.name}, {row} ({clients} clients), search for p99 <= {self.W7_P99_MS:g} ms")
                out[peer.name] = self.sustained(peer, target.path, target.mode, kind, clients)
            section["rows"][row] = out

    def sustained(self, peer: Peer, path: str, mode: str, kind: str, clients: int) -> dict:
        """One search of workload 7: the highest passing rate, and every trial."""
        s = self.scale
        trials: list[dict] = []
        passed: float | None = None
        failed: float | None = None
        rate = s.w7_start_rate
        while len(trials) < s.w7_trials:
            messages = max(10, int(rate * s.w7_seconds))
            args = ["--subscribers", str(clients), "--messages", str(messages), "--rate", f"{rate:g}",
                    "--size", "100", "--sample-every", "10", "--timeout", str(s.w7_seconds + 30)]
            if kind == "channels":
                args += ["--groups", str(max(1, clients // 100))]
            args += _window(mode)
            outcome = self.measure(peer, path, mode, args, timeout=s.w7_seconds + 30)
            rep = outcome.get("report") or {}
            p99 = (rep.get("latency_ms") or {}).get("p99")
            took = (rep.get("publish_duration_s") or rep.get("publish_s") or 0.0)
            ok = bool(rep.get("complete")) and p99 is not None and p99 <= self.W7_P99_MS
            trials.append({"rate": rate, "ok": ok, "p99_ms": p99, "complete": bool(rep.get("complete")),
                           "deliveries_per_s": rep.get("deliveries_per_s"), "publish_s": took or None,
                           "error": outcome.get("error"), "generator_busy": rep.get("subscriber_cpu_share")})
            if ok:
                passed = rate
            else:
                failed = rate
            if failed is None:
                rate *= 2
            elif passed is None:
                rate /= 4
                if rate < 1:
                    break
            else:
                if failed / passed <= 1.15:
                    break
                rate = round((passed + failed) / 2, 1)
        best = max((t for t in trials if t["ok"]), key=lambda t: t["rate"], default=None)
        return {"server": peer.name, "max_rate": passed, "first_failed": failed, "trials": trials,
                "best": best, "deliveries_per_s_at_max": best["deliveries_per_s"] if best else None}

    #: workload 8's servers
    W8_PEERS = ("hubbub", "hubbub-protocol", "socketify", "websockets", "trivial")
    #: workload 8: connection attempts in flight at once (the listen backlog of the servers is 4096 or less)
    W8_IN_FLIGHT = 2000

    def w8(self) -> None:
        """Workload 8, reconnect storm: ``w8_clients`` clients connect (and subscribe), the
        server is SIGKILLed and started again on the same port, and every client reconnects
        as the SDKs do (first try within 0-500 ms, then jittered backoff) and subscribes
        again. Kill -> all back, the new server process's CPU during the storm (from its
        start until the last client is back) and its peak RSS."""
        s = self.scale
        section: dict = {"clients": s.w8_clients}
        self.results["workloads"]["8"] = section
        for peer in self.runs("8"):
            if peer.name not in self.W8_PEERS:
                continue
            log(f"- workload 8: {peer.name}, {s.w8_clients} clients, SIGKILL and restart")
            section[peer.name] = self.storm(peer, s.w8_clients, s.w8_timeout)
        if "hubbub-protocol" in [p.name for p in self.runs("8")]:
            log(f"- workload 8: hubbub-protocol-recover, {s.w8_recover_clients} clients, Redis broker, "
                f"{s.w8_recover_rate:g} publications/s across SIGKILL and restart")
            section["hubbub-protocol-recover"] = self.storm_recover(s.w8_recover_clients, s.w8_timeout)

    #: workload 8 with recovery: the channel (its namespace keeps history), and the API key
    W8_RECOVER_CHANNEL = "rec:bench"
    W8_API_KEY = "w8-bench-key"

    def storm_recover(self, clients: int, timeout: float, *, profile: Path | None = None) -> dict:
        """Workload 8 with recovery: the protocol endpoint with the Redis broker (history
        survives the SIGKILL) and a namespace with history; clients subscribe recoverable
        and, after the restart, resubscribe with ``recover`` from their last offset and
        epoch. A publisher calls the HTTP API of a second node at ``w8_recover_rate``/s from before the kill
        until 3 s after the restarted server listens, then publishes ``{"end": true}``;
        every client's offsets must then run without a gap or a repeat up to it
        (``connectgen.py --recover-channel``: lost, duplicated, unrecovered)."""
        redis = shutil.which("redis-server")
        if redis is None:
            return {"error": "redis-server is not installed (apt-get install redis-server)"}
        port = free_port()
        url = f"redis://{HOST}:{port}/0"
        proc = subprocess.Popen(
            [redis, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        try:
            _wait_port(port, 10)
            config = Path(self.log_dir) / "w8-recover.toml"
            config.write_text(f'broker = "{url}"\napi_key = "{self.W8_API_KEY}"\n'
                              "[namespaces.rec]\nhistory_size = 100000\nhistory_ttl = 600\n")
            peer = replace(HUBBUB_PROTOCOL, name="hubbub-protocol-recover",
                           argv=hubbub_argv("--config", str(config)), workloads=("8",))
            procs = max(1, -(-clients // self.scale.w8_recover_per_proc))
            # the publications go through a second node on the same Redis: they go on while the
            # clients' node is down and busy (its own API timed out for most of them at 15,000)
            publisher_peer = replace(peer, name="hubbub-protocol-recover-publisher")
            with self.server(publisher_peer) as publisher_node:
                outcome = self.storm(peer, clients, timeout,
                                     extra=["--recover-channel", self.W8_RECOVER_CHANNEL, "--procs", str(procs)],
                                     publish_rate=self.scale.w8_recover_rate, profile=profile,
                                     publish_port=publisher_node.port)
            outcome["generator_procs"] = procs
            outcome["publisher_node"] = "a second hubbub node on the same Redis"
            outcome["broker"] = "redis"
            return outcome
        finally:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def _publisher(self, port: int, rate: float, stop: threading.Event, counts: dict) -> None:
        """Publish ``{"n": i}`` to the recovery channel through the HTTP API at ``rate``/s
        until ``stop``, then ``{"end": true}`` (retried until the server takes it)."""
        import urllib.request

        def publish(data: dict) -> bool:
            body = json.dumps({"channel": self.W8_RECOVER_CHANNEL, "data": data}).encode()
            request = urllib.request.Request(f"http://{HOST}:{port}/api/publish", data=body, method="POST",
                                             headers={"X-API-Key": self.W8_API_KEY,
                                                      "Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=2) as response:
                    ok = response.status == 200 and "error" not in json.loads(response.read())
            except (OSError, ValueError):
                ok = False
            counts["published" if ok else "failed"] += 1
            return ok

        n = 0
        next_at = time.monotonic()
        while not stop.is_set():
            n += 1
            publish({"n": n})
            next_at += 1 / rate
            stop.wait(max(0.0, next_at - time.monotonic()))
        deadline = time.monotonic() + 60
        while not publish({"end": True}) and time.monotonic() < deadline:
            time.sleep(0.1)

    def storm(self, peer: Peer, clients: int, timeout: float, *, extra: list[str] | None = None,
              publish_rate: float = 0.0, profile: Path | None = None, publish_port: int | None = None) -> dict:
        """One reconnect storm (see :meth:`w8`). With ``profile``, py-spy is attached to the
        restarted server as soon as it runs (start-up mostly included) and writes its raw
        samples there."""
        outcome: dict = {"server": peer.name}
        spy = None
        started = time.monotonic()
        meter = CpuMeter()
        server = None
        try:
            with self.server(peer) as server:
                argv = connectgen_argv(server.port, peer.fanout.path, peer.fanout.mode, clients, timeout, server.pid)
                # every client on its own, as SDKs are: up to W8_IN_FLIGHT attempts at once (not workload 5's 100)
                argv += ["--reconnect-delay", "0.5", "--connect-timeout", str(timeout + 60),
                         "--connect-concurrency", str(self.W8_IN_FLIGHT), "--linger", "1.0", *(extra or [])]
                proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, cwd=REPO)
                stop_publishing = threading.Event()
                publisher = None
                try:
                    line = _read_line(proc, timeout + 120)
                    if line is None or '"event"' not in line:
                        raise RuntimeError(f"no ready event from connectgen: {line!r}")
                    if publish_rate:
                        counts: dict = collections.Counter()
                        outcome["publisher"] = counts
                        publisher = threading.Thread(target=self._publisher, daemon=True,
                                                     args=(publish_port or server.port, publish_rate, stop_publishing,
                                                           counts))
                        publisher.start()
                        time.sleep(1.0)  # publications flow live before the kill
                    kill_ns = time.time_ns()
                    server.restart()
                    if profile is not None:
                        spy = _attach_pyspy(server.pid, profile)
                    outcome["restart_listening_s"] = round(server.wait_listening(), 3)
                    listening_ns = time.time_ns()
                    if publisher is not None:
                        time.sleep(3.0)
                        stop_publishing.set()
                    # every client back: the server's CPU from its start until now, before the
                    # clients close (--linger; their 15,000 closes cost the server ~1 s more)
                    line = _read_line(proc, timeout + 60)
                    if line is not None and '"back"' in line:
                        cpu = _proc_cpu_s(server.pid)
                        outcome["server_cpu_s"] = None if cpu is None else round(cpu, 3)
                    if spy is not None:
                        _stop_pyspy(spy)
                    out, _ = proc.communicate(timeout=timeout + 60)
                    if publisher is not None:
                        publisher.join(60)
                        outcome["publisher"] = dict(outcome["publisher"])
                    cpu = _proc_cpu_s(server.pid)
                    # with the clients' closing (close frames, 15,000 connection_lost) once all are back
                    outcome["server_cpu_with_close_s"] = None if cpu is None else round(cpu, 3)
                    outcome["peak_rss_mb"] = server.peak_rss_mb()
                finally:
                    stop_publishing.set()
                    if proc.poll() is None:
                        proc.kill()
                        proc.wait()
                    if spy is not None:
                        _stop_pyspy(spy)
                lines = out.strip().splitlines()
                if not lines:
                    raise RuntimeError("connectgen produced no report")
                report = json.loads(lines[-1])
                if report.get("last_ready_ns"):
                    report["reconnect_from_kill_s"] = round((report["last_ready_ns"] - kill_ns) / 1e9, 3)
                    report["reconnect_from_listening_s"] = round((report["last_ready_ns"] - listening_ns) / 1e9, 3)
                outcome["report"] = report
        except (RuntimeError, subprocess.TimeoutExpired, ValueError, OSError) as exc:
            outcome["error"] = f"{type(exc).__name__}: {exc}"
        if "error" in outcome and server is not None:
            outcome["log_tail"] = server.log_tail(8)
            log(f"  {peer.name}: {outcome['error']}\n{outcome['log_tail']}")
        outcome["foreign_cpu_percent"] = meter.foreign_percent()
        _log_outcome(outcome, time.monotonic() - started)
        return outcome

    def w6(self) -> None:
        s = self.scale
        section: dict = {"rows": {}}
        self.results["workloads"]["6"] = section
        if "hubbub" not in [p.name for p in self.peers]:
            section["error"] = "hubbub is not among the servers"
            return
        redis = shutil.which("redis-server")
        if redis is None:
            section["error"] = "redis-server is not installed (apt-get install redis-server)"
            return
        port = free_port()
        url = f"redis://{HOST}:{port}/0"
        section["broker_url"] = url
        proc = subprocess.Popen(
            [redis, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            _wait_port(port, 10)
            variants = [  # (peer, processes started by the suite)
                (replace(HUBBUB, name="hubbub-memory"), 1),
                (replace(HUBBUB, name="hubbub-redis-1", argv=hubbub_argv("--broker", url)), 1),
                (replace(HUBBUB, name="hubbub-redis-2p", argv=hubbub_argv("--broker", url)), 2),
                (replace(HUBBUB, name="hubbub-redis-2w", argv=hubbub_argv("--workers", "2", "--broker", url)), 1),
            ]
            variants = [v for v in variants if v[0].name in s.w6_variants]
            runs = max(1, s.w6_runs)
            messages = s.w6_messages or s.w1_messages
            section.update(runs=runs, messages=messages)
            for subs in s.w6_subscribers:
                measured: dict[str, list[dict]] = {peer.name: [] for peer, _ in variants}
                for run in range(runs):  # interleaved, so that a noisy minute hits every variant
                    for peer, replicas in variants:
                        log(f"- workload 6: {peer.name}, {subs} subscribers, {messages} publications, run {run + 1}/{runs}")
                        measured[peer.name].append(self.measure(
                            peer,
                            peer.fanout.path,
                            peer.fanout.mode,
                            _burst_args(subs, messages, min(s.timeout, s.w6_timeout)),
                            timeout=min(s.timeout, s.w6_timeout),
                            settle=1.0 if "2w" in peer.name else 0.0,
                            replicas=replicas,
                        ))
                section["rows"][str(subs)] = {name: _median_run(outcomes) for name, outcomes in measured.items()}
            # workload 3 (many channels) where the hub's CPU, not the load generator,
            # is the limit: one memory process against two workers sharing Redis
            many_variants = [(peer, replicas) for peer, replicas in variants
                             if peer.name in ("hubbub-memory", "hubbub-redis-1", "hubbub-redis-2w")
                             and peer.channels is not None]
            many_measured: dict[str, list[dict]] = {peer.name: [] for peer, _ in many_variants}
            for run in range(runs):
                for peer, replicas in many_variants:
                    log(f"- workload 6, many channels: {peer.name}, {s.w3_clients} clients, {s.w3_groups} groups, "
                        f"run {run + 1}/{runs}")
                    many_measured[peer.name].append(self.measure(
                        peer,
                        peer.channels.path,  # type: ignore[union-attr]
                        peer.channels.mode,  # type: ignore[union-attr]
                        ["--subscribers", str(s.w3_clients), "--groups", str(s.w3_groups),
                         "--messages", str(s.w6_many_messages or s.w3_messages), "--timeout", str(s.timeout),
                         "--sample-every", "20", "--window", str(PUBLISH_WINDOW)],
                        timeout=s.timeout,
                        settle=1.0 if "2w" in peer.name else 0.0,
                        replicas=replicas,
                    ))
            many = {name: _median_run(outcomes) for name, outcomes in many_measured.items()}
            if many:
                section["many_channels"] = many
        except RuntimeError as exc:
            section["error"] = str(exc)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    # -- profile -------------------------------------------------------------

    def _pyspy(self, section: dict) -> str | None:
        """The py-spy executable, or None with ``section["error"]`` saying why."""
        if "hubbub" not in [p.name for p in self.peers]:
            section["error"] = "hubbub is not among the servers"
            return None
        pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not Path(pyspy).exists():
            section["error"] = "py-spy is not installed (pip install py-spy)"
            return None
        return pyspy

    def profile_connect(self, out_dir: Path) -> None:
        """Profile hubbub during a connect storm (workload 5's clients, no restart)
        with py-spy attached to the server."""
        section: dict = {}
        self.results["profile_connect"] = section
        pyspy = self._pyspy(section)
        if pyspy is None:
            return
        clients = self.scale.w5_clients * 2
        section.update(clients=clients, tool=_version([pyspy, "--version"]))
        raw = out_dir / "profile-connect.txt"
        log(f"- profile: hubbub, {clients} clients connecting, py-spy")
        with self.server(HUBBUB) as server:
            spy = subprocess.Popen(
                [pyspy, "record", "--pid", str(server.pid), "--rate", str(PROFILE_HZ), "--format", "raw",
                 "--nonblocking", "--duration", "120", "-o", str(raw)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )
            try:
                # py-spy prints "py-spy> Sampling process ..." on stdout once it is attached
                if not select.select([spy.stdout], [], [], 30)[0] or "Sampling" not in spy.stdout.readline():
                    section["error"] = "py-spy did not start sampling"
                    return
                out = subprocess.run(
                    connectgen_argv(server.port, HUBBUB.fanout.path, HUBBUB.fanout.mode, clients, 60.0,
                                    server.pid, reconnect=False),
                    stdout=subprocess.PIPE, text=True, cwd=REPO, timeout=180, check=False,
                ).stdout
                report = json.loads(out.strip().splitlines()[-1])
                section.update(
                    connects_per_s=report.get("connects_per_s"),
                    server_cpu_per_connect_us=report.get("server_cpu_per_connect_us"),
                    connected=report.get("subscribers"),
                )
            except (subprocess.TimeoutExpired, ValueError, IndexError) as exc:
                section["error"] = f"connectgen: {type(exc).__name__}: {exc}"
            finally:
                if spy.poll() is None:
                    spy.send_signal(signal.SIGINT)
                try:
                    spy.communicate(timeout=30)
                except subprocess.TimeoutExpired:
                    spy.kill()
                    spy.communicate()
        if raw.exists():
            section.update(analyse_profile(raw.read_text(), CONNECT_LABELS))
        elif "error" not in section:
            section["error"] = "py-spy wrote no profile"

    def profile(self, out_dir: Path) -> None:
        """Profile hubbub under workload 1 with py-spy attached to the server."""
        section: dict = {}
        self.results["profile"] = section
        pyspy = self._pyspy(section)
        if pyspy is None:
            return
        s = self.scale
        subs = s.profile_subscribers
        messages = s.w1_messages * (4 if s.name == "full" else 1)
        section.update(subscribers=subs, messages=messages, tool=_version([pyspy, "--version"]))
        raw = out_dir / "profile.txt"
        ready = out_dir / "ready"
        done = out_dir / "done"
        log(f"- profile: hubbub, {subs} subscribers x {messages} messages, py-spy")
        with self.server(HUBBUB) as server:
            argv = loadgen_argv(
                server.port,
                HUBBUB.fanout.path,
                HUBBUB.fanout.mode,
                [
                    *_burst_args(subs, messages, s.timeout),
                    "--ready-file", str(ready), "--done-file", str(done), "--settle", "2", "--linger", "2",
                ],
            )
            gen = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, cwd=REPO)
            spy = None
            try:
                deadline = time.monotonic() + 120
                while not ready.exists() and gen.poll() is None and time.monotonic() < deadline:
                    time.sleep(0.05)
                spy = subprocess.Popen(
                    [pyspy, "record", "--pid", str(server.pid), "--rate", str(PROFILE_HZ), "--format", "raw",
                     "--nonblocking", "--duration", str(int(s.timeout)), "-o", str(raw)],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                deadline = time.monotonic() + s.timeout + 60
                while not done.exists() and gen.poll() is None and time.monotonic() < deadline:
                    time.sleep(0.02)
                if spy.poll() is None:  # stop sampling before the subscribers disconnect
                    spy.send_signal(signal.SIGINT)
                out, _ = gen.communicate(timeout=s.timeout + 120)
                report = json.loads(out.strip().splitlines()[-1])
                section["deliveries_per_s"] = report["deliveries_per_s"]
                section["complete"] = report["complete"]
            except (subprocess.TimeoutExpired, ValueError, IndexError) as exc:
                section["error"] = f"load generator: {type(exc).__name__}: {exc}"
            finally:
                if gen.poll() is None:
                    gen.kill()
                    gen.wait()
                if spy is not None:
                    if spy.poll() is None:
                        spy.send_signal(signal.SIGINT)
                    try:
                        _, err = spy.communicate(timeout=30)
                    except subprocess.TimeoutExpired:
                        spy.kill()
                        _, err = spy.communicate()
                    if not raw.exists():
                        section["error"] = "py-spy wrote no profile: " + (err or "").strip()[-300:]
        if raw.exists():
            section.update(analyse_profile(raw.read_text()))


def _log_outcome(outcome: dict, seconds: float) -> None:
    rep = outcome.get("report") or {}
    bits = [f"{seconds:.1f}s"]
    if rep.get("deliveries_per_s"):
        bits.append(f"{rep['deliveries_per_s']:,.0f} deliveries/s")
    if (rep.get("latency_ms") or {}).get("p99") is not None:
        bits.append(f"p99 {rep['latency_ms']['p99']:.1f} ms")
    if rep.get("rss_per_connection_kib") is not None:
        bits.append(f"{rep['rss_per_connection_kib']} KiB/conn")
    if rep.get("connects_per_s"):
        bits.append(f"{rep['connects_per_s']:,.0f} connects/s")
    if rep.get("reconnect_from_kill_s") is not None:
        bits.append(f"all back {rep['reconnect_from_kill_s']} s")
    if rep and not rep.get("complete"):
        bits.append("INCOMPLETE")
    if outcome.get("foreign_cpu_percent") is not None:
        bits.append(f"other processes {outcome['foreign_cpu_percent']:.0f} % CPU")
    log("    " + ", ".join(bits))


def _attach_pyspy(pid: int, raw: Path) -> subprocess.Popen:
    """py-spy sampling process ``pid`` (raw format, into ``raw``) until :func:`_stop_pyspy`."""
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return subprocess.Popen(
        [pyspy, "record", "--pid", str(pid), "--rate", str(PROFILE_HZ), "--format", "raw",
         "--nonblocking", "--duration", "600", "-o", str(raw)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def _stop_pyspy(spy: subprocess.Popen) -> None:
    if spy.poll() is None:
        spy.send_signal(signal.SIGINT)
    try:
        spy.wait(timeout=30)
    except subprocess.TimeoutExpired:
        spy.kill()
        spy.wait()


def _proc_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` so far (``/proc/PID/stat``)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _read_line(proc: subprocess.Popen, timeout: float) -> str | None:
    """Read one line of ``proc``'s stdout within ``timeout`` seconds."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        return None
    return proc.stdout.readline()


#: connectgen worker processes in workload 5.  One: on two cores shared with the server, a
#: second generator process did not raise the rate against `trivial` (server-bound; it does
#: against socketify, far above every Python server) and competes with the server for a core.
CONNECTGEN_PROCS = 1


def connectgen_argv(
    port: int, path: str, mode: str, clients: int, timeout: float, cpu_pid: int, *, reconnect: bool = True
) -> list[str]:
    """Workload 5's command line: ``connectgen.py`` (epoll, no asyncio) with ``clients``
    clients, 100 handshakes in flight, the server's CPU read from ``cpu_pid``; with
    ``reconnect``, clients reconnect after a server restart (see ``restart_measure``)."""
    argv = [
        sys.executable,
        str(BENCH / "connectgen.py"),
        "--host", HOST,
        "--port", str(port),
        "--path", path,
        *mode_args(mode),
        "--subscribers", str(clients),
        "--connect-concurrency", "100",
        "--procs", str(CONNECTGEN_PROCS),
        "--hold", "0.5" if reconnect else "0",
        "--timeout", str(timeout),
        "--cpu-pid", str(cpu_pid),
        "--json",
    ]
    return argv + ["--reconnect"] if reconnect else argv


def _wait_port(port: int, timeout: float) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"redis-server is not listening on {HOST}:{port} after {timeout:.0f}s")



def _window(mode: str) -> list[str]:
    """Centrifugo protocol producers keep up to PUBLISH_WINDOW publications in flight."""
    return ["--window", str(PUBLISH_WINDOW)] if mode.startswith("centrifugo") else []


def _burst_args(subscribers: int, messages: int, timeout: float) -> list[str]:
    return [
        "--subscribers", str(subscribers),
        "--messages", str(messages),
        "--size", "100",
        "--timeout", str(timeout),
    ]


def _version(argv: list[str]) -> str | None:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False).stdout
    except OSError:
        return None
    return out.strip().splitlines()[0] if out.strip() else None


# ---------------------------------------------------------------------------
# Profile analysis
# ---------------------------------------------------------------------------

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def _frame_key(frame: str) -> tuple[str, str]:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip(), "?"
    return m.group("func"), m.group("file")


#: What each kind of innermost frame means, per profile (workload 1 fan-out, workload 5 connects).
FANOUT_LABELS = {
    "write": "socket writes (transport.write/writelines: the send system call)",
    "read": "socket reads (recv system call)",
    "hubbub": "hubbub code",
    "websockets": "websockets (frame parsing and encoding)",
    "h11": "h11 (HTTP request parsing)",
}
CONNECT_LABELS = {
    "accept": "asyncio: accepting connections, creating transports (accept system call)",
    "write": "socket writes (the 101 response: send system call)",
    "read": "socket reads (the request: recv system call)",
    "hubbub": "hubbub code (routing, session, subscribe)",
    "websockets": "websockets (the handshake: request parsing, accept, response)",
    "h11": "h11",
    "stdlib": "standard library called by websockets (uuid, Date header, accept key)",
}
_ACCEPT = ("_accept_connection", "_accept_connection2", "_make_socket_transport", "__init__",
           "_call_connection_made", "set_protocol", "_add_reader")
_WRITES = ("write", "writelines", "_write_ready", "_write_send", "_write_sendmsg")
_READS = ("_read_ready", "_read_ready__data_received", "_read_ready__get_buffer")
_STDLIB = ("uuid", "email/", "base64", "hashlib")


def _category(func: str, file: str, labels: dict[str, str] = FANOUT_LABELS) -> str:
    """Where a sample's innermost Python frame was (``labels``: the profile's names)."""
    name = func.rsplit(".", 1)[-1]
    in_asyncio = "asyncio/" in file
    if in_asyncio and "accept" in labels and name in _ACCEPT:
        return labels["accept"]
    if in_asyncio and name in _WRITES:
        return labels["write"]
    if in_asyncio and name in _READS:
        return labels["read"]
    for package in ("hubbub", "websockets", "h11"):
        if f"{package}/" in file:
            return labels[package]
    if file.startswith("selectors") or "/selectors" in file:
        return "epoll wait (selectors)"
    if in_asyncio:
        return "asyncio event loop (other)"
    if "stdlib" in labels and any(part in file for part in _STDLIB):
        return labels["stdlib"]
    return "other"


def analyse_profile(text: str, labels: dict[str, str] = FANOUT_LABELS) -> dict:
    """Self and inclusive sample counts from py-spy's raw (collapsed) output."""
    self_counts: collections.Counter[tuple[str, str]] = collections.Counter()
    incl_counts: collections.Counter[tuple[str, str]] = collections.Counter()
    categories: collections.Counter[str] = collections.Counter()
    total = 0
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_frame_key(f) for f in stack.split(";") if f]
        if not frames:
            continue
        self_counts[frames[-1]] += n
        categories[_category(*frames[-1], labels)] += n
        for key in set(frames):
            incl_counts[key] += n
    if not total:
        return {"error": "empty profile"}

    def top(counter: collections.Counter, k: int) -> list[dict]:
        return [
            {"function": f, "file": _short(file), "samples": c, "percent": round(100 * c / total, 1)}
            for (f, file), c in counter.most_common(k)
        ]

    top_level = ("cli.py", "__main__.py")
    interesting = [
        k for k in incl_counts
        if ("hubbub/" in k[1] and not k[1].endswith(top_level))
        or k[0].split(".")[-1] in ("writelines", "write", "_write_ready", "_read_ready", "select")
    ]
    incl = collections.Counter({k: incl_counts[k] for k in interesting})
    return {
        "samples": total,
        "self": top(self_counts, 15),
        "inclusive": top(incl, 15),
        "categories": [
            {"category": c, "samples": n, "percent": round(100 * n / total, 1)}
            for c, n in categories.most_common()
        ],
    }


def _short(file: str) -> str:
    for marker in ("site-packages/", "lib/python3.11/", "src/"):
        if marker in file:
            return file.split(marker, 1)[1]
    return file


# ---------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------


def _num(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def _ratio(value: float | None, base: float | None, lower_is_better: bool = False) -> str:
    if not value or not base:
        return "-"
    return f"{(base / value if lower_is_better else value / base):.2f}x"


def _vs_memory_table(rows: dict[str, dict]) -> str:
    """Workload 6: one table of ``rows`` (variant -> outcome) against ``hubbub-memory``."""
    base = _rate(rows.get("hubbub-memory"))
    table = []
    for name, row in rows.items():
        rep = row.get("report") or {}
        rate = _rate(row)
        table.append([
            name, _num(rate), _ratio(rate, base),
            f"{rep.get('delivered', 0):,}/{rep.get('expected', 0):,}" if rep else "-",
            "; ".join(filter(None, [_runs_note(row), _notes(row)])),
        ])
    return md_table(["server", "deliveries/s", "vs hubbub-memory", "delivered", "notes"], table)


def _median_run(outcomes: list[dict]) -> dict:
    """The run with the median delivery rate, with every run's rate in ``runs``."""
    measured = sorted((o for o in outcomes if _rate(o)), key=lambda o: _rate(o) or 0.0)
    chosen = dict(measured[len(measured) // 2] if measured else outcomes[-1])
    chosen["runs"] = [_rate(o) for o in outcomes]
    return chosen


def _runs_note(row: dict) -> str:
    """Workloads 5 and 6: every run's rate, when there were several (the median is shown)."""
    runs = row.get("runs") or []
    if len(runs) < 2:
        return ""
    return "median of " + ", ".join(_num(r) if r else "failed" for r in runs) + " /s"


def _notes(row: dict) -> str:
    notes = []
    rep = row.get("report")
    if rep:
        if not rep["complete"]:
            notes.append("INCOMPLETE")
        if rep["subscribers"] < rep["subscribers_requested"]:
            notes.append(f"only {rep['subscribers']} connected")
        if rep.get("lost_connections"):
            notes.append(f"{rep['lost_connections']} connections lost")
        notes.extend(e[:120] for e in rep["errors"])
    if row.get("error"):
        notes.append(row["error"].splitlines()[0][:160])
    if row.get("skipped"):
        notes.append(f"skipped: {row['skipped']}")
    foreign = row.get("foreign_cpu_percent")
    if foreign is not None and foreign > BUSY_PERCENT:
        notes.append(f"machine busy: other processes used {foreign:.0f} % of the CPU")
    return "; ".join(notes).replace("|", "/")


def md_table(header: list[str], rows: list[list[str]], align: list[str] | None = None) -> str:
    """A markdown table; ``align``: one of "l", "r" per column (default: text, numbers..., text)."""
    align = align or ["l"] + ["r"] * (len(header) - 2) + ["l"]
    align = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


class Report:
    """Turns the suite's results into markdown tables and target checks."""

    def __init__(self, suite: Suite) -> None:
        self.suite = suite
        self.w = suite.results["workloads"]
        self.names = [p.name for p in suite.peers] + list(suite.skipped)

    def _row(self, section: dict, name: str) -> dict:
        if name in self.suite.skipped:
            return {"server": name, "skipped": self.suite.skipped[name]}
        return section.get(name) or {"server": name, "error": "not run"}

    def shown(self, workload: str) -> list[str]:
        """Servers with a row in ``workload``'s table: measured or skipped."""
        return [n for n in self.names
                if (n in self.suite.skipped or not self.suite.scale.skips(workload, n))
                and (n not in PEERS or PEERS[n].workloads is None or workload in PEERS[n].workloads)]

    def table_w1(self, subs: str, section: dict) -> str:
        base = _rate(section.get(BASELINE))
        rows = []
        for name in self.shown("1"):
            row = self._row(section, name)
            rep = row.get("report") or {}
            rate = _rate(row)
            lat = rep.get("latency_ms") or {}
            rows.append([
                name, _num(rate), _ratio(rate, base),
                f"{rep.get('delivered', 0):,}/{rep.get('expected', 0):,}" if rep else "-",
                _num(rep.get("duration_s"), 2) if rep else "-",
                _num(lat.get("p99"), 0), *_generator_cells(rep), _notes(row),
            ])
        return md_table(
            ["server", "deliveries/s", f"vs {BASELINE}", "delivered", "seconds", "p99 queueing ms",
             "generator busy", "generator capacity/s per core", "notes"],
            rows,
        )

    def table_w2(self) -> str:
        sec = self.w.get("2", {})
        if "error" in sec:
            return f"Not run: {sec['error']}"
        base_common = _lat(sec.get("common", {}).get(BASELINE), "p99")
        rows = []
        for name in self.shown("2"):
            for kind in ("own", "common"):
                row = sec.get(kind, {}).get(name)
                if row is None:
                    if name in self.suite.skipped and kind == "own":
                        rows.append([name, "-", "-", "-", "-", "-", "-", "-", _notes(self._row({}, name))])
                    continue
                rep = row.get("report") or {}
                lat = rep.get("latency_ms") or {}
                rate = row.get("rate")
                rows.append([
                    name,
                    f"{_num(rate, 1)}/s ({'50 % of own burst' if kind == 'own' else 'common'})",
                    _num(rate * self.suite.scale.w2_subscribers if rate else None),
                    _num(lat.get("p50"), 2), _num(lat.get("p99"), 2), _num(lat.get("p99.9"), 2),
                    _ratio(lat.get("p99"), base_common, lower_is_better=True) if kind == "common" else "",
                    str(lat.get("samples", "-")),
                    _notes(row),
                ])
        return md_table(
            ["server", "publications/s", "deliveries/s", "p50 ms", "p99 ms", "p99.9 ms",
             f"p99 vs {BASELINE} (common rate)", "samples", "notes"],
            rows,
        )

    def table_w3(self) -> str:
        sec = self.w.get("3", {})
        base = _rate(sec.get(BASELINE))
        rows = []
        names = []
        for name in self.shown("3"):
            if name == "hubbub-protocol":
                continue
            names.append(name)
            names += [k for k in sec if k.startswith(name + " (")]
        for name in names:
            row = self._row(sec, name)
            rep = row.get("report") or {}
            lat = rep.get("latency_ms") or {}
            rate = _rate(row)
            rows.append([
                name, _num(rate), _ratio(rate, base),
                f"{rep.get('delivered', 0):,}/{rep.get('expected', 0):,}" if rep else "-",
                _num(lat.get("p50"), 1), _num(lat.get("p99"), 1), _num(lat.get("p99.9"), 1),
                _num(rep.get("server_cpu_per_delivery_us"), 2), _num(rep.get("server_cpu_per_publication_us"), 0),
                _num(rep.get("connect_s"), 1) if rep else "-",
                *_generator_cells(rep),
                _notes(row),
            ])
        return md_table(
            ["server", "deliveries/s", f"vs {BASELINE}", "delivered", "p50 ms", "p99 ms", "p99.9 ms",
             "server CPU µs per delivery", "server CPU µs per publication",
             "connect+subscribe s", "generator busy", "generator capacity/s per core", "notes"],
            rows,
        )

    def table_w4(self) -> str:
        sec = self.w.get("4", {})
        base = _kib(sec.get(BASELINE))
        rows = []
        for name in self.shown("4"):
            row = self._row(sec, name)
            rep = row.get("report") or {}
            kib = _kib(row)
            rows.append([
                name,
                f"{rep.get('subscribers', 0):,}" if rep else "-",
                _num(rep.get("rss_before_kib", 0) / 1024 if rep.get("rss_before_kib") else None, 1),
                _num(rep.get("rss_after_kib", 0) / 1024 if rep.get("rss_after_kib") else None, 1),
                _num(kib, 2), _ratio(kib, base, lower_is_better=True), _notes(row),
            ])
        return md_table(
            ["server", "connections", "RSS before MiB", "RSS after MiB", "KiB per connection",
             f"vs {BASELINE} (smaller is better)", "notes"],
            rows,
        )

    def table_w5(self) -> str:
        sec = self.w.get("5", {})
        base = _connect_rate(sec.get(BASELINE))
        rows = []
        for name in self.shown("5"):
            row = self._row(sec, name)
            rep = row.get("report") or {}
            rate = _connect_rate(row)
            rows.append([
                name, _num(rate), _ratio(rate, base),
                _num(rep.get("server_cpu_per_connect_us"), 0),
                _num(rep.get("client_cpu_per_connect_us"), 0),
                _num(row.get("restart_listening_s"), 2),
                f"{rep.get('reconnected', 0):,}/{rep.get('subscribers', 0):,}" if rep else "-",
                _num(rep.get("reconnect_from_kill_s"), 2),
                "; ".join(filter(None, [_runs_note(row), _notes(row)])),
            ])
        return md_table(
            ["server", "connect+subscribe/s", f"vs {BASELINE}", "server CPU µs per connect",
             "connectgen CPU µs per connect", "restart: listening after s",
             "reconnected", "restart: all back after s", "notes"],
            rows,
        )

    def table_w6(self) -> str:
        sec = self.w.get("6", {})
        if sec.get("error") and not sec.get("rows"):
            return f"Not run: {sec['error']}"
        out = [f"{int(subs):,} subscribers:\n\n" + _vs_memory_table(rows) for subs, rows in sec.get("rows", {}).items()]
        many = sec.get("many_channels") or {}
        if many:
            sc = self.suite.scale
            out.append(f"Many channels (workload 3's load: {sc.w3_clients:,} protocol clients in "
                       f"{sc.w3_groups} group channels and their personal ones, "
                       f"{sc.w6_many_messages or sc.w3_messages:,} publications):\n\n" + _vs_memory_table(many))
        if sec.get("error"):
            out.append(f"Error: {sec['error']}")
        failures = {}
        for rows in sec.get("rows", {}).values():
            for name, row in rows.items():
                lines = (row.get("error") or "").splitlines()[1:] + (row.get("log_tail") or "").splitlines()
                why = [ln.strip(" |") for ln in lines if "error" in ln.lower()]
                if why and name not in failures:
                    failures[name] = why[0]
        for name, why in failures.items():
            out.append(f"`{name}` did not start: its log says `{why}`.")
        return "\n\n".join(out)

    def targets(self) -> list[tuple[str, str, str]]:
        """(target, figure, verdict) for each target of the issue."""
        out = []
        w1 = self.w.get("1", {})
        for subs, sec in w1.items():
            hub, base, sfy = _rate(sec.get("hubbub")), _rate(sec.get(BASELINE)), _rate(sec.get("socketify"))
            if hub and base:
                ratio = hub / base
                out.append((f"W1 {int(subs):,} subscribers: hubbub >= 10x websockets",
                            f"{ratio:.1f}x ({hub:,.0f} vs {base:,.0f}/s)", _verdict(ratio >= 10)))
            if hub and sfy:
                out.append((f"W1 {int(subs):,} subscribers: hubbub >= socketify",
                            f"{hub / sfy:.2f}x ({hub:,.0f} vs {sfy:,.0f}/s)", _verdict(hub >= sfy)))
            elif "socketify" in self.suite.skipped:
                out.append((f"W1 {int(subs):,} subscribers: hubbub >= socketify", "socketify skipped", "n/a"))
        w2 = self.w.get("2", {}).get("common", {})
        hub, base = _lat(w2.get("hubbub"), "p99"), _lat(w2.get(BASELINE), "p99")
        if hub is not None and base is not None:
            rate = self.w["2"].get("common_rate")
            out.append((f"W2 p99 lower than websockets at the same rate ({rate:g} publications/s)",
                        f"{hub:.2f} ms vs {base:.2f} ms", _verdict(hub < base)))
        kib = _kib(self.w.get("4", {}).get("hubbub"))
        if kib is not None:
            out.append(("W4 hubbub <= 6 KiB per idle connection", f"{kib:.2f} KiB", _verdict(kib <= 6)))
        w5 = self.w.get("5", {})
        hub, base = _connect_rate(w5.get("hubbub")), _connect_rate(w5.get(BASELINE))
        if hub and base:
            out.append(("W5 connect rate >= 2x websockets",
                        f"{hub / base:.2f}x ({hub:,.0f} vs {base:,.0f}/s)", _verdict(hub >= 2 * base)))
        return out + self.protocol_targets() + self.redis_targets()

    def redis_targets(self) -> list[tuple[str, str, str]]:
        """Workload 6 against one memory process in the same run (issue 15's targets)."""
        out = []
        w6 = self.w.get("6", {})
        wanted = (("hubbub-redis-1", "Redis, 1 process", 0.8), ("hubbub-redis-2w", "Redis, `--workers 2`", 0.9))
        for subs, rows in w6.get("rows", {}).items():
            base = _rate(rows.get("hubbub-memory"))
            for name, what, goal in wanted:
                rate = _rate(rows.get(name))
                if base and rate:
                    out.append((f"W6 {int(subs):,} subscribers: {what} >= {goal}x one memory process",
                                f"{rate / base:.2f}x ({rate:,.0f} vs {base:,.0f}/s)", _verdict(rate >= goal * base)))
        many = w6.get("many_channels") or {}
        base, rate = _rate(many.get("hubbub-memory")), _rate(many.get("hubbub-redis-2w"))
        if base and rate:
            out.append(("W6 many channels: Redis, `--workers 2` >= 1.2x one memory process",
                        f"{rate / base:.2f}x ({rate:,.0f} vs {base:,.0f}/s)", _verdict(rate >= 1.2 * base)))
        return out

    def protocol_targets(self) -> list[tuple[str, str, str]]:
        """The protocol endpoint's targets (JSON and Protobuf subscribers) against the relay,
        socketify and websockets in the same run."""
        out = []
        for proto in ("hubbub-protocol", "hubbub-protobuf"):
            for subs, sec in self.w.get("1", {}).items():
                p, relay, sfy = _rate(sec.get(proto)), _rate(sec.get("hubbub")), _rate(sec.get("socketify"))
                if p and relay:
                    out.append((f"W1 {int(subs):,}: {proto} >= 0.9x relay", f"{p / relay:.2f}x", _verdict(p >= 0.9 * relay)))
                if p and sfy:
                    out.append((f"W1 {int(subs):,}: {proto} ahead of socketify", f"{p / sfy:.2f}x", _verdict(p > sfy)))
            w2 = self.w.get("2", {}).get("own", {})
            p99, sfy99 = _lat(w2.get(proto), "p99"), _lat(w2.get("socketify"), "p99")
            if p99 is not None and sfy99 is not None:
                out.append((f"W2 {proto} p99 at 50 % of own burst <= socketify's", f"{p99:.2f} vs {sfy99:.2f} ms",
                            _verdict(p99 <= sfy99)))
            kib = _kib(self.w.get("4", {}).get(proto))
            if kib is not None:
                out.append((f"W4 {proto} <= 5 KiB per idle connection", f"{kib:.2f} KiB", _verdict(kib <= 5)))
            w5 = self.w.get("5", {})
            rate, base = _connect_rate(w5.get(proto)), _connect_rate(w5.get(BASELINE))
            if rate and base:
                out.append((f"W5 {proto} connect + subscribe >= 3x websockets", f"{rate / base:.2f}x",
                            _verdict(rate >= 3 * base)))
        w3 = self.w.get("3", {})
        sfy = _rate(w3.get("socketify"))
        for name in ("hubbub-text", "hubbub", "hubbub-protobuf"):
            rate = _rate(w3.get(name))
            if rate and sfy:
                out.append((f"W3 {name} ahead of socketify", f"{rate / sfy:.2f}x", _verdict(rate > sfy)))
        return out


def _generator_cells(rep: dict) -> list[str]:
    """The load generator's own load in a run (``fastgen.py``): the share of the delivery
    phase its subscriber processes were on a CPU, and deliveries per CPU-second of theirs."""
    share = rep.get("subscriber_cpu_share")
    capacity = rep.get("generator_capacity_per_cpu_s")
    return [f"{100 * share:.0f} %" if share is not None else "-", _num(capacity)]


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def _rate(row: dict | None) -> float | None:
    if row and "report" in row and row["report"]["deliveries_per_s"] > 0:
        return row["report"]["deliveries_per_s"]
    return None


def _lat(row: dict | None, key: str) -> float | None:
    if row and "report" in row:
        return (row["report"].get("latency_ms") or {}).get(key)
    return None


def _kib(row: dict | None) -> float | None:
    if row and "report" in row:
        return row["report"].get("rss_per_connection_kib")
    return None


def _connect_rate(row: dict | None) -> float | None:
    if row and "report" in row:
        return row["report"].get("connects_per_s")
    return None


# ---------------------------------------------------------------------------
# Machine, versions, plot, docs
# ---------------------------------------------------------------------------


def machine_info(python: str) -> dict:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1048576:.0f} GiB"
    except OSError:
        pass
    code = (
        "import sys, json, importlib.metadata as m\n"
        "out = {'python': sys.version.split()[0], 'implementation': sys.implementation.name}\n"
        "for d in ['hubbub', 'websockets', 'h11', 'python-socketio', 'python-engineio', 'uvicorn',"
        " 'socketify', 'redis', 'matplotlib', 'py-spy']:\n"
        "    try: out[d] = m.version(d)\n"
        "    except Exception: out[d] = None\n"
        "print(json.dumps(out))\n"
    )
    proc = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    try:
        versions = json.loads(proc.stdout)
    except ValueError:
        versions = {}
    commit = _version(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "--", "src"],
        capture_output=True, text=True, check=False,
    ).stdout.strip()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory": mem,
        "kernel": f"{platform.system()} {platform.release()}",
        "python": versions.pop("python", platform.python_version()),
        "versions": versions,
        "redis": _version(["redis-server", "--version"]) if shutil.which("redis-server") else None,
        "commit": (commit or "?") + (" (src/ has uncommitted changes)" if dirty else ""),
        "nofile": _nofile(),
    }


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def _nofile() -> str:
    import resource

    return str(resource.getrlimit(resource.RLIMIT_NOFILE))


def plot(suite: Suite, path: Path) -> str | None:
    """Draw the figures; return an error text instead of raising."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter
    except ImportError as exc:
        return f"matplotlib is not installed: {exc}"
    w = suite.results["workloads"]
    names = [p.name for p in suite.peers]
    colors = {
        "hubbub": "#1f77b4", "hubbub-protocol": "#6baed6", "hubbub-asgi": "#9467bd", "websockets": "#ff7f0e",
        "socketio": "#2ca02c", "socketify": "#d62728", "trivial": "#9a9a9a",
        "hubbub-protobuf": "#08519c", "hubbub-text": "#17becf", "trivial-centrifugo": "#bdbdbd",
        "trivial-protobuf": "#d9d9d9",
    }

    def human(value: float, _pos: object = None) -> str:
        for unit, div in (("M", 1e6), ("k", 1e3)):
            if abs(value) >= div:
                return f"{value / div:.3g}{unit}"
        return f"{value:.3g}"

    def label(ax, bars, fmt) -> None:
        for bar in bars:
            height = bar.get_height()
            if height:
                ax.annotate(fmt(height), (bar.get_x() + bar.get_width() / 2, height), ha="center",
                            va="bottom", fontsize=6.5, xytext=(0, 2), textcoords="offset points")

    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    ax = axes[0][0]
    w1 = w.get("1", {})
    shown = [n for n in names if any(_rate(w1[s].get(n)) for s in w1)]
    width = 0.8 / max(1, len(shown))
    for i, name in enumerate(shown):
        xs, ys = [], []
        for j, subs in enumerate(w1):
            rate = _rate(w1[subs].get(name))
            if rate:
                xs.append(j + i * width)
                ys.append(rate)
        label(ax, ax.bar(xs, ys, width, label=name, color=colors.get(name, "#999999")), human)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(w1))])
    ax.set_xticklabels([f"{int(s):,} subscribers" for s in w1])
    ax.set_yscale("log")
    low, high = ax.get_ylim()
    ax.set_ylim(low, high * 8)  # room for the legend above the bars
    ax.yaxis.set_major_formatter(FuncFormatter(human))
    ax.set_ylabel("deliveries/s (log scale)")
    ax.set_title(f"1. Burst fan-out: {suite.scale.w1_messages} x 100 B to one channel")
    ax.legend(fontsize=7.5, loc="upper center", ncol=3)

    ax = axes[0][1]
    w2 = w.get("2", {}).get("common", {})
    rate = w.get("2", {}).get("common_rate")
    shown = [n for n in names if _lat(w2.get(n), "p99") is not None]
    for k, key in enumerate(("p50", "p99", "p99.9")):
        bars = ax.bar([i + k * 0.27 for i in range(len(shown))], [_lat(w2.get(n), key) for n in shown], 0.27,
                      label=key, color=("#9ecae1", "#3182bd", "#08519c")[k])
        label(ax, bars, lambda v: f"{v:.0f}" if v >= 10 else f"{v:.1f}")
    ax.set_xticks([i + 0.27 for i in range(len(shown))])
    ax.set_xticklabels(shown, fontsize=8)
    ax.set_yscale("log")
    low, high = ax.get_ylim()
    ax.set_ylim(low, high * 3)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{v:g}"))
    ax.set_ylabel("publish-to-receive ms (log scale)")
    ax.set_title(f"2. Latency at {rate or '?'} publications/s to {suite.scale.w2_subscribers:,} subscribers (all servers)")
    ax.legend(fontsize=8, loc="upper left")

    ax = axes[1][0]
    w4 = w.get("4", {})
    shown = [n for n in names if _kib(w4.get(n)) is not None]
    bars = ax.bar(shown, [_kib(w4.get(n)) for n in shown], color=[colors.get(n, "#999999") for n in shown])
    label(ax, bars, lambda v: f"{v:.1f}")
    ax.axhline(6, color="black", linestyle="--", linewidth=1, label="hubbub target: 6 KiB")
    ax.set_ylabel("server RSS KiB per connection")
    ax.set_title(f"4. Idle memory, {suite.scale.w4_connections:,} connections")
    ax.tick_params(axis="x", labelsize=8)
    ax.legend(fontsize=8)

    ax = axes[1][1]
    w5 = w.get("5", {})
    shown = [n for n in names if _connect_rate(w5.get(n))]
    bars = ax.bar(shown, [_connect_rate(w5.get(n)) for n in shown], color=[colors.get(n, "#999999") for n in shown])
    label(ax, bars, lambda v: f"{v:,.0f}")
    ax.set_ylabel("connect + subscribe per second")
    ax.set_title(f"5. Connect rate, {suite.scale.w5_clients:,} clients, 100 handshakes in flight (connectgen)")
    ax.tick_params(axis="x", labelsize=8)

    fig.suptitle(f"hubbub benchmarks ({suite.scale.name} scale), {datetime.date.today().isoformat()}; "
                 "2 cores shared by server and load generator")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return None


def write_docs(suite: Suite, path: Path, command: str, machine: dict, elapsed: float, plot_error: str | None,
               png_name: str, rendered: str | None = None) -> None:
    rep = Report(suite)
    s = suite.scale
    w = suite.results["workloads"]
    v = machine["versions"]
    lines = [
        "# Benchmarks",
        "",
        (
            "Generated by `bench/run.py`; do not edit by hand, run it again. Everything ran on one machine, "
            "on 127.0.0.1, one server at a time, each in its own process, driven by the same load generator "
            "(`bench/fastgen.py`: subscribers on one `epoll` loop per process, in a separate process from the "
            "server and from the producer, counting deliveries with a frame scanner in C without decoding "
            "them; workload 5 uses `bench/connectgen.py`, a connect generator on one `epoll` loop without "
            "asyncio). The columns 'generator busy' and 'generator capacity/s per core' state the load "
            "generator's own ceiling in each run; the `trivial` rows (raw, `trivial-centrifugo`, "
            "`trivial-protobuf`) show it per mode. See `bench/README.md` for how to run and what is measured."
        ),
        "",
        (
            f"- Command: `{command}` ({s.name} scale, {elapsed / 60:.1f} minutes, finished "
            f"{suite.results.get('finished') or datetime.datetime.now().strftime('%Y-%m-%d %H:%M')})"
            + (f"; this report was rendered again from that run's results with `{rendered}`" if rendered else "")
        ),
        (
            f"- Machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory']} RAM, "
            f"{machine['kernel']}, open files limit {machine['nofile']}"
        ),
        f"- Python {machine['python']} ({v.get('implementation', '?')}) for servers and load generator",
        "- Packages: " + ", ".join(f"{k} {val}" for k, val in v.items() if k != "implementation" and val)
        + (f"; {machine['redis']}" if machine.get("redis") else ""),
        f"- hubbub commit: {machine['commit']}",
        (
            f"- Other load: processes outside the suite used {_num(suite.results.get('foreign_cpu_percent'), 0)} % "
            f"of the machine's CPU during the run (load average {suite.results['loadavg'][0]} at the start, "
            f"{suite.results['loadavg'][1]} at the end). Measurements during which they used more than "
            f"{BUSY_PERCENT:g} % are flagged in the notes."
        ),
        "",
        "Servers (each started fresh for every measurement):",
        "",
    ]
    for peer in list(suite.peers) + [PEERS[n] for n in suite.skipped]:
        note = f" **Skipped: {suite.skipped[peer.name]}**" if peer.name in suite.skipped else ""
        lines.append(f"- `{peer.name}`: {peer.what}.{note}")
    lines += ["", f"![benchmark figures]({png_name})" if not plot_error else f"(No plot: {plot_error})", ""]

    lines += ["## Targets", ""]
    targets = rep.targets()
    lines.append(md_table(["target", "measured", "verdict"], [list(t) for t in targets]) if targets
                 else "No target could be evaluated (missing results).")
    lines.append("")
    lines += target_context(suite)

    lines += ["## 1. Burst fan-out", ""]
    lines.append(
        f"One channel; {s.w1_messages} publications of 100 bytes sent by one producer as fast as it can "
        "(the producer waits only for its TCP send buffer; on hubbub's protocol endpoint it keeps up to "
        f"{PUBLISH_WINDOW} `publish` commands awaiting a reply). deliveries/s = payload messages received by "
        "all subscribers / (last delivery - first publication). p99 here is queueing time (how long the "
        "last messages waited), not latency: see workload 2. The load generator's own ceiling is in the "
        "columns 'generator busy' (share of the run its subscriber processes were on a CPU) and 'generator "
        "capacity/s per core' (deliveries per CPU-second of theirs); the `trivial` rows show a minimal "
        "server per mode (raw, Centrifugo JSON, Protobuf). A server that batches more per write than "
        "`trivial` can be measured faster than it."
    )
    for subs, sec in w.get("1", {}).items():
        lines += ["", f"**{int(subs):,} subscribers**", "", rep.table_w1(subs, sec)]
    lines += ["", "## 2. Steady fan-out latency", ""]
    lines.append(
        f"{s.w2_subscribers:,} subscribers on one channel; publications at a fixed rate for about "
        f"{s.w2_seconds:g} s (at least 30): once at 50 % of each server's own burst rate from workload 1, "
        f"and once at a common rate for all, 50 % of the `websockets` burst rate "
        f"({w.get('2', {}).get('common_rate', '?')} publications/s). Latency = receive time - the "
        "timestamp the producer put in the payload (one clock, same machine), sampled on every 10th delivery."
    )
    lines += ["", rep.table_w2(), "", "## 3. Many channels", ""]
    lines.append(
        f"{s.w3_clients:,} clients, each subscribed to its personal channel `u<i>` and to one of "
        f"{s.w3_groups} group channels `g<i % {s.w3_groups}>` ({s.w3_clients // max(1, s.w3_groups):,} "
        f"members each). {s.w3_messages:,} publications of 100 bytes as fast as the producer can, each to "
        "a channel drawn with a fixed seed: half to a random personal channel (1 delivery), half to a "
        "random group channel. The same plan for every server. hubbub: the protocol endpoint "
        "`/connection/websocket`, one connection per client with a connect and two subscribe commands, "
        f"the producer uses `publish` commands (at most {PUBLISH_WINDOW} awaiting a reply; the row "
        "'window 100' keeps at most 100, which throttles the producer to one round trip per 100 "
        "publications). websockets, socketify, "
        "trivial: a `sub <ch> <ch>` / `pub <ch> <payload>` text protocol; socket.io: rooms joined by a "
        "`sub` event, `pub` event emitted to the room. Latency is queueing-dominated (burst)."
    )
    lines += ["", rep.table_w3(), "", "## 4. Idle memory", ""]
    lines.append(
        f"{s.w4_connections:,} idle connections subscribed to one channel (hubbub: relay `/ws/bench`; "
        "`hubbub-protocol`: connect + subscribe commands). Server RSS (VmRSS) is read after the first "
        f"{max(10, s.w4_connections // 100)} connections (warm-up: lazy imports, first allocations) and "
        f"again {s.w4_hold:g} s after all are open; KiB per connection = difference / the connections opened after the "
        "warm-up. The kernel's socket buffers are not in RSS."
    )
    lines += ["", rep.table_w4(), "", "## 5. Connect rate and restart", ""]
    lines.append(
        f"{s.w5_clients:,} clients open a WebSocket and subscribe to one channel, at most 100 handshakes in "
        "flight, driven by `bench/connectgen.py`: one process, one `epoll` loop over non-blocking sockets, no "
        "asyncio; each client is a small state machine (TCP connect, upgrade request, 101 and "
        "`Sec-WebSocket-Accept` checked, the subscribe exchange). connect+subscribe/s = clients / time until "
        "the last is ready (hubbub relay and socketify subscribe on connect; socket.io on the connect "
        "acknowledgement; `hubbub-protocol` sends connect + subscribe in one frame and waits for the "
        "subscribe reply). " + w5_generator_note(w.get("5", {})) + " Then the server is killed (SIGKILL) "
        "and the same command is started on the same port; every client reconnects on its own (first try "
        "after 0-100 ms, then every 100-500 ms, jittered, 100 attempts in flight) and subscribes again. "
        "'all back' = kill -> last client connected and subscribed again, including the server's start-up time."
        + (f" Each server runs {s.w5_runs} times (a few seconds each); the table shows the run with the median "
           "connect rate, and its notes list every run's rate." if s.w5_runs > 1 else "")
    )
    lines += ["", rep.table_w5(), "", "## 6. Redis broker", ""]
    lines.append(
        "Workload 1 (relay endpoint) against hubbub with the Redis broker, every publication going through "
        "Redis: `hubbub-redis-1` is one `hubbub serve --broker redis://...` process; `hubbub-redis-2p` is two "
        "such processes on two ports started by the suite, the subscribers spread over both (half each), the "
        "producer on the first; `hubbub-redis-2w` is `hubbub serve --workers 2 --broker redis://...` (two "
        "processes sharing the port with SO_REUSEPORT). `hubbub-memory` is one process with the memory "
        "broker, for comparison. redis-server is started by the suite on a free port with "
        "`--save '' --appendonly no`. Runs are limited to "
        f"{min(s.timeout, s.w6_timeout):g} s (INCOMPLETE: the rate is what arrived by then)."
        f" Each burst is {s.w6_messages or s.w1_messages:,} publications of 100 bytes"
        + (f"; every variant runs {s.w6_runs} times, interleaved (memory, Redis, ..., then again), and the "
           "table shows the run with the median rate, its notes every run's rate: at these rates a burst "
           "lasts a fraction of a second, and single runs swing widely." if s.w6_runs > 1 else ".")
    )
    lines += ["", rep.table_w6(), ""]
    lines += sustained_section(suite)
    lines += storm_section(suite)
    lines += per_connection_section()
    lines += where_the_time_goes(suite)
    lines += compression_section()
    lines += results_section("outbox.md")
    lines += proxy_section()
    lines += socketio_section()
    lines += [
        "## Caveats",
        "",
        (
            "- Two cores are shared by the server, the subscriber process, the producer and (workload 6) "
            "Redis. A faster server leaves less CPU to the load generator, so the top figures are near the "
            "load generator's ceiling (`trivial`) and understate the difference."
        ),
        "- One run per figure; compare servers within one run. Re-run with `--workloads` to check a figure.",
        (
            "- Runs that do not finish within the time limit are marked INCOMPLETE; their rate is what "
            "arrived divided by the time it took."
        ),
        (
            "- socket.io stops delivering after about 45 s in the burst runs: its Engine.IO ping (every 25 s) "
            "waits behind the backlog of queued messages, so the client's pong cannot arrive within the 20 s "
            "ping timeout, and the server then drops that client's queued messages "
            "(`engineio.async_socket.AsyncSocket.check_ping_timeout`). Those runs are INCOMPLETE at the time "
            "limit; their rate is what arrived before."
        ),
        (
            "- socket.io uses library defaults (a task per recipient per emit); socketify's "
            "`max_backpressure` is raised to 1 MiB with `close_on_backpressure_limit` (the default 64 KiB "
            "drops messages silently), the same bound as hubbub's `max_pending_output`."
        ),
        "",
    ]
    path.write_text("\n".join(lines))


def sustained_section(suite: Suite) -> list[str]:
    """Workload 7's section of the report."""
    w7 = suite.results["workloads"].get("7")
    if not w7:
        return []
    s = suite.scale
    lines = ["## 7. Sustained load", "",
             f"The highest publication rate (publications/s, 100 B each) that keeps the p99 publish-to-receive "
             f"latency at or under {w7['p99_ms']:g} ms over a run of {w7['seconds']:g} s, found by doubling from "
             f"{s.w7_start_rate:g}/s until a rate fails, then bisecting (at most {s.w7_trials} runs per search, the "
             "server started afresh for each). Rows: subscribers on one channel, and workload 3's many channels "
             "(each client in its personal channel and one group of 100; publications to random channels). "
             "Latency is sampled on every 10th delivery. `trivial` shows the load generator's own limit: where "
             "`trivial` itself stops holding 50 ms, the generator (producer pacing, subscriber process) is the "
             "limit of that row, and a server at or above `trivial` is marked 'generator-bound'.", ""]
    for row, peers in w7.get("rows", {}).items():
        title = f"{int(row):,} subscribers on one channel" if row.isdigit() else "many channels"
        trivial_row = peers.get("trivial") or {}
        limit = trivial_row.get("max_rate")
        if trivial_row.get("trials") and limit is None:
            lines += [f"**{title}**: `trivial` missed 50 ms at every rate tried (down to "
                      f"{min(t['rate'] for t in trivial_row['trials']):g}/s): the load generator is the limit of "
                      "this row on this machine, and no server's figure here is its own.", ""]
        limit_c = (peers.get("trivial-centrifugo") or {}).get("max_rate")
        socketify = (peers.get("socketify") or {}).get("max_rate")
        table = []
        for name, res in peers.items():
            best = res.get("best") or {}
            ceiling = limit_c if name.startswith(("hubbub-protocol", "hubbub-protobuf")) and limit_c else limit
            if row == "many" and name == "hubbub":
                ceiling = limit_c or limit
            rate = res.get("max_rate")
            bound = "generator-bound" if rate and ceiling and rate >= ceiling else ""
            if rate and res.get("first_failed") is None:
                bound = (bound + "; " if bound else "") + "no run failed: a lower bound"
            tried = ", ".join(f"{t['rate']:g}{'✓' if t['ok'] else '✗'}"
                              + (f" ({t['p99_ms']:.0f} ms)" if t.get("p99_ms") is not None else "")
                              for t in res.get("trials", []))
            table.append([f"`{name}`", _num(rate), _ratio(rate, limit), _ratio(rate, socketify),
                          _num(best.get("deliveries_per_s")), _num(best.get("p99_ms"), 1), bound, tried])
        lines += [f"**{title}**", "",
                  md_table(["server", "max publications/s (p99 <= 50 ms)", "vs trivial", "vs socketify",
                            "deliveries/s at max", "p99 ms at max", "limit", "runs: rate ✓/✗ (p99)"], table), ""]
    return lines


def storm_section(suite: Suite) -> list[str]:
    """Workload 8's section of the report."""
    w8 = suite.results["workloads"].get("8")
    if not w8:
        return []
    lines = ["## 8. Reconnect storm", "",
             f"{w8['clients']:,} clients connect (`connectgen.py`, 100 in flight; hubbub relay `/ws/bench`, "
             "`hubbub-protocol`: connect + subscribe commands; the others subscribe on connect), then the server "
             "is killed with SIGKILL and the same command is started on the same port. Every client reconnects "
             "as the SDKs do: first try within 0-500 ms (uniform), then a jittered backoff (x0.5-1.5, doubling "
             "up to 0.5 s), at most 2,000 attempts in flight, and subscribes again. 'all back' is measured from "
             "the kill and from the moment the new process listens; server CPU is the new process's CPU time "
             "from its start until the last client is back (start-up included; not the clients' closing after, "
             "which `connectgen.py --linger` holds back); peak RSS is its VmHWM. "
             f"`hubbub-protocol-recover` ({w8.get('hubbub-protocol-recover', {}).get('report', {}).get('subscribers', 0):,} "
             "clients, one generator process per 5,000: each parses every publication): the protocol endpoint with the Redis "
             "broker (history survives the kill) and a namespace with history; clients subscribe recoverable and "
             "resubscribe with `recover` from their last offset and epoch. A publisher calls the HTTP API (20/s) of a "
             "second node on the same Redis (publications go on while the clients' node is down) from 1 s before the kill until 3 s after the new process listens, then publishes `{\"end\": true}`; "
             "the run ends when every client is back and has it. Lost: offsets a client skipped (live or recovered); "
             "duplicated: offsets it got twice; unrecovered: `recovered: false` replies.", ""]
    table = []
    for name, row in w8.items():
        if not isinstance(row, dict) or "server" not in row:
            continue
        rep = row.get("report") or {}
        rec = rep.get("recover")
        table.append([f"`{name}`", _num(row.get("restart_listening_s"), 2), _num(rep.get("reconnect_from_kill_s"), 2),
                      _num(rep.get("reconnect_from_listening_s"), 2),
                      f"{rep.get('reconnected', 0):,}/{rep.get('subscribers', 0):,}" if rep else "-",
                      _num(row.get("server_cpu_s"), 2), _num(row.get("peak_rss_mb"), 0),
                      "-" if rec is None else f"{rec.get('lost', 0):,} / {rec.get('duplicated', 0):,} / "
                      f"{rec.get('unrecovered', 0):,} of {rec.get('publications', 0):,} "
                      f"({(row.get('publisher') or {}).get('published', 0):,} published)",
                      row.get("error") or _notes(row)])
    lines += [md_table(["server", "listening after s", "all back after kill s", "all back after listening s",
                        "reconnected", "server CPU s", "peak RSS MiB",
                        "recovery: lost / duplicated / unrecovered of received", "notes"], table), ""]
    return lines


def w5_generator_note(w5: dict) -> str:
    """Workload 5: what connectgen itself cost, and its ceiling (the fastest rows) in this run."""
    own = sorted(
        r["report"]["client_cpu_per_connect_us"]
        for r in w5.values()
        if (r or {}).get("report", {}).get("client_cpu_per_connect_us")
    )
    text = "connectgen's own CPU per connect is in the column 'connectgen CPU µs per connect'"
    if own:
        text += f" ({own[0]:.0f}-{own[-1]:.0f} µs in this run" if own[0] != own[-1] else f" ({own[0]:.0f} µs"
        text += (
            "; lower against faster servers, where one `epoll` wakeup serves many clients; most of it is "
            "the kernel's side of the loopback TCP handshake)"
        )
    text += (
        ", against about 200 µs for `loadgen.py`'s asyncio clients, which capped this workload near "
        "5,000/s. The two cores are shared by the server and connectgen, so a server cannot be measured "
        "faster than connectgen's ceiling"
    )
    rates = {n: _connect_rate(r) for n, r in w5.items() if _connect_rate(r)}
    base = rates.get(BASELINE)
    if rates:
        fastest = max(rates, key=rates.get)
        text += (
            f"; that ceiling is at least the fastest row, `{fastest}` ({rates[fastest]:,.0f}/s"
            + (f", {rates[fastest] / base:.1f}x `{BASELINE}`" if base else "") + ")"
        )
        trivial = rates.get("trivial")
        if trivial and fastest != "trivial":
            text += (
                f". The `trivial` row ({trivial:,.0f}/s"
                + (f", {trivial / base:.1f}x `{BASELINE}`" if base else "")
                + ", a hand-rolled asyncio server that does nothing but the handshake) is bounded by that "
                "server's own CPU per handshake, not by connectgen"
            )
    return text + "."


def target_context(suite: Suite) -> list[str]:
    """What bounds the figures the targets are judged on (from the same run)."""
    w = suite.results["workloads"]
    out = []
    w2 = w.get("2", {}).get("common", {})
    floor = _lat(w2.get("trivial"), "p99")
    if floor is not None:
        out.append(
            f"- W2: at the common rate the load generator's own floor (`trivial`) is a p99 of {floor:.1f} ms: "
            "one subscriber process reads the publication from every socket one after another, so the last "
            "subscribers get it milliseconds after the first. Differences between servers smaller than that "
            "floor, or than the run-to-run noise, are not meaningful."
        )
    w5 = w.get("5", {})
    rates = {n: _connect_rate(r) for n, r in w5.items() if _connect_rate(r)}
    cpu = {n: (r or {}).get("report", {}).get("server_cpu_per_connect_us") for n, r in w5.items()}
    if rates and rates.get("hubbub") and rates.get(BASELINE):
        fastest = max(rates, key=rates.get)
        text = (
            f"- W5: connectgen opened up to {rates[fastest]:,.0f} connections/s (`{fastest}`), so it is "
            "not what limits the slower servers; the server's CPU time per handshake is, and it does not "
            "depend much on the load generator: "
            + ", ".join(f"{n} {cpu[n]:.0f} µs" for n in rates if cpu.get(n)) + "."
        )
        if cpu.get("hubbub") and cpu.get(BASELINE):
            text += (
                f" websockets/hubbub = {cpu[BASELINE] / cpu['hubbub']:.2f} (2 would meet the target on CPU cost)."
            )
        out.append(text)
    for key, title in (("1", "W1"), ("3", "W3")):
        sections = w.get(key, {})
        if key == "3":
            sections = {"": sections}
        for subs, sec in sections.items():
            busiest = max(((row.get("report") or {}).get("subscriber_cpu_share") or 0.0, name)
                          for name, row in sec.items() if isinstance(row, dict)) if sec else (0.0, "")
            if busiest[1]:
                where = f" {int(subs):,}" if subs else ""
                out.append(
                    f"- {title}{where}: the load generator's subscriber processes were busy at most "
                    f"{100 * busiest[0]:.0f} % of a run (`{busiest[1]}`; column 'generator busy'). A figure is "
                    "the generator's own only where that column nears 100 %; below it, the server is measured "
                    "(on 2 cores, server and generator share the machine either way)."
                )
    return out + [""] if out else []


def compression_section() -> list[str]:
    """The permessage-deflate figures of ``bench/compression.py --docs-section``
    (``bench/results/compression.md``) and the delta figures of ``bench/delta.py
    --docs-section`` (``bench/results/delta.md``), as they are; nothing for a missing one."""
    return results_section("compression.md") + results_section("delta.md")


def results_section(name: str) -> list[str]:
    """A section another bench script wrote with ``--docs-section bench/results/NAME``
    (``compression.py``, ``outbox.py``), as it is; nothing if there is none."""
    path = Path(__file__).resolve().parent / "results" / name
    if not path.is_file():
        return []
    return path.read_text().rstrip("\n").split("\n") + [""]


def proxy_section() -> list[str]:
    """The proxy-hook figures of ``bench/proxy.py --docs-section`` (``bench/results/proxy.md``),
    as they are; nothing if there are none."""
    path = Path(__file__).resolve().parent / "results" / "proxy.md"
    if not path.is_file():
        return []
    return path.read_text().rstrip("\n").split("\n") + [""]


def per_connection_section() -> list[str]:
    """What a connection costs (issue 24: connect CPU, idle bytes, the profiles before and
    after, every candidate tried), from ``bench/results/per-connection.md`` as it is
    (written from ``bench/connect_cpu.py`` and ``bench/idle_bytes.py`` runs); nothing if
    there is none."""
    path = Path(__file__).resolve().parent / "results" / "per-connection.md"
    if not path.is_file():
        return []
    return path.read_text().rstrip("\n").split("\n") + [""]


def socketio_section() -> list[str]:
    """The Socket.IO rows (``hubbub-socketio``, python-socketio, Node's ``socket.io``) of their own
    same-run suite (``bench/results/socketio.md``, raw results ``socketio.json``), as they are;
    nothing if there are none."""
    path = Path(__file__).resolve().parent / "results" / "socketio.md"
    if not path.is_file():
        return []
    repeats = path.with_name("socketio-repeats.md")  # bench/socketio_report.py: medians of repeated runs
    more = repeats.read_text().rstrip("\n").split("\n") + [""] if repeats.is_file() else []
    return path.read_text().rstrip("\n").split("\n") + [""] + more


def where_the_time_goes(suite: Suite) -> list[str]:
    prof = suite.results.get("profile") or {}
    lines = ["## Where the time goes", ""]
    if prof.get("error") and not prof.get("samples"):
        return lines + [f"No profile: {prof['error']}", ""] + where_a_handshake_goes(suite)
    if not prof.get("samples"):
        return lines + ["No profile (`--no-profile`).", ""] + where_a_handshake_goes(suite)
    lines.append(
        f"py-spy ({prof.get('tool') or 'py-spy'}) attached to the hubbub server (relay endpoint) while "
        f"{prof['subscribers']:,} subscribers received {prof['messages']} publications of 100 bytes "
        f"(workload 1; {_num(prof.get('deliveries_per_s'))} deliveries/s under the profiler). "
        f"{prof['samples']:,} samples at {PROFILE_HZ} Hz of CPU time (idle time in epoll is not sampled). "
        "Time spent in a C function (for example the `send` system call inside `transport.writelines`) "
        "is counted in the Python function that called it."
    )
    own = {r["function"]: r["percent"] for r in prof["self"]}
    fan_out = own.get("Connection.deliver", 0) + own.get("Hub.on_publication", 0)
    sends = sum(c["percent"] for c in prof["categories"] if c["category"].startswith("socket writes"))
    lines += [
        "",
        (
            f"In short: the per-subscriber Python loop of the fan-out (`Hub.on_publication` queuing the "
            f"channel's shared frame batch with `Connection.deliver`, once per subscriber per event-loop "
            f"iteration, later publications of the iteration being appended to the batch) took "
            f"{fan_out:.0f} % of the CPU, and "
            f"the `send` system calls {sends:.0f} % (one per subscriber per event-loop iteration, carrying "
            f"every frame queued during that iteration); everything else (reading and parsing the "
            f"producer's frames, the event loop) {max(0.0, 100 - fan_out - sends):.0f} %."
        ),
    ]
    lines += profile_tables(prof)
    lines += [
        "",
        "hubbub functions and the transport calls, by inclusive time (the function and everything it called):",
        "",
    ]
    lines.append(md_table(["function", "file", "share"],
                          [[f"`{r['function']}`", r["file"], f"{r['percent']:.1f} %"]
                           for r in prof["inclusive"]],
                          ["l", "l", "r"]))
    lines.append("")
    return lines + where_a_handshake_goes(suite)


def profile_tables(prof: dict) -> list[str]:
    """A profile's samples by category and its functions by own time, as Markdown."""
    return [
        "", "By where the CPU was (the innermost Python frame):", "",
        md_table(["where", "share of samples"],
                 [[c["category"], f"{c['percent']:.1f} %"] for c in prof["categories"]], ["l", "r"]),
        "", "Functions by own time (innermost frame):", "",
        md_table(["function", "file", "share"],
                 [[f"`{r['function']}`", r["file"], f"{r['percent']:.1f} %"] for r in prof["self"]],
                 ["l", "l", "r"]),
    ]


def where_a_handshake_goes(suite: Suite) -> list[str]:
    """The connect-storm profile (``Suite.profile_connect``), for workload 5."""
    prof = suite.results.get("profile_connect") or {}
    lines = ["### A connect storm (workload 5)", ""]
    if not prof.get("samples"):
        return lines + [f"No profile: {prof.get('error') or 'not run'}.", ""]
    lines.append(
        f"py-spy attached to the hubbub server (relay endpoint) while {prof['clients']:,} clients connected "
        f"and subscribed, 100 handshakes in flight (connectgen, no restart): "
        f"{_num(prof.get('connects_per_s'))} connects/s and "
        f"{_num(prof.get('server_cpu_per_connect_us'), 0)} µs of server CPU per connect under the profiler; "
        f"{prof['samples']:,} samples, which include the clients closing at the end (`socket._real_close`, "
        "`_SelectorTransport.close`). A WebSocket upgrade is parsed once, by websockets (h11 only sees "
        "plain HTTP); an opening relay session subscribes without a task when its channel exists; and the "
        "garbage collector is tuned for many long-lived connections (`hubbub.server.tune_gc`: before it, "
        "full collections cost 30-40 % of the handshake CPU in this storm)."
    )
    lines += profile_tables(prof)
    lines.append("")
    return lines


def print_summary(suite: Suite) -> None:
    rep = Report(suite)
    w = suite.results["workloads"]
    out = []
    for subs, sec in w.get("1", {}).items():
        out += [f"\n1. Burst fan-out, {int(subs):,} subscribers", rep.table_w1(subs, sec)]
    if "2" in w:
        out += ["\n2. Steady fan-out latency", rep.table_w2()]
    if "3" in w:
        out += ["\n3. Many channels", rep.table_w3()]
    if "4" in w:
        out += ["\n4. Idle memory", rep.table_w4()]
    if "5" in w:
        out += ["\n5. Connect rate and restart", rep.table_w5()]
    if "6" in w:
        out += ["\n6. Redis broker", rep.table_w6()]
    targets = rep.targets()
    if targets:
        out += ["\nTargets", md_table(["target", "measured", "verdict"], [list(t) for t in targets])]
    prof = suite.results.get("profile") or {}
    if prof.get("categories"):
        out += ["\nWhere the time goes (hubbub, workload 1)",
                md_table(["where", "share"], [[c["category"], f"{c['percent']:.1f} %"] for c in prof["categories"]])]
    print("\n".join(out))


def render(args: argparse.Namespace) -> int:
    """Write the report again from the JSON of an earlier run (``--json-out``)."""
    results = json.loads(Path(args.render).read_text())
    suite = Suite.from_results(args, results)
    print_summary(suite)
    docs = args.docs or DOCS / "benchmarks.md"
    docs.parent.mkdir(parents=True, exist_ok=True)
    png = docs.with_suffix(".png")
    plot_error = plot(suite, png)
    write_docs(suite, docs, results.get("command", "?"), machine_info(args.python), results.get("elapsed_s", 0.0),
               plot_error, png.name, rendered=f"python bench/run.py --render {args.render}")
    log(f"wrote {docs}" + ("" if plot_error else f" and {png}"))
    return 0


def main(args: argparse.Namespace, argv: list[str]) -> int:
    if getattr(args, "render", None):
        return render(args)
    scale = QUICK if args.quick else FULL
    if getattr(args, "w7_seconds", None):
        scale = replace(scale, w7_seconds=args.w7_seconds)
    if getattr(args, "w7_subscribers", None):
        scale = replace(scale, w7_subscribers=tuple(int(n) for n in args.w7_subscribers.split(",") if n))
    if getattr(args, "w8_clients", None):
        scale = replace(scale, w8_clients=args.w8_clients)
    if getattr(args, "w8_recover_clients", None):
        scale = replace(scale, w8_recover_clients=args.w8_recover_clients)
    chosen = {"1", "2", "3", "4", "5", "6", "7", "8"}
    if args.workloads:
        chosen = {w.strip() for w in args.workloads.split(",") if w.strip()}
    started = time.monotonic()
    meter = CpuMeter()
    load_before = _loadavg()
    command = "python " + " ".join(["bench/run.py", *argv[1:]])
    with tempfile.TemporaryDirectory(prefix="hubbub-suite-") as tmp:
        suite = Suite(args, scale, Path(tmp))
        log(f"suite ({scale.name}): servers {', '.join(p.name for p in suite.peers)}; "
            f"workloads {', '.join(sorted(chosen))}; {os.cpu_count()} CPUs")
        for key, step in (("1", suite.w1), ("2", suite.w2), ("3", suite.w3), ("4", suite.w4),
                          ("5", suite.w5), ("6", suite.w6), ("7", suite.w7), ("8", suite.w8)):
            if key in chosen:
                step()
        if not args.no_profile and "1" in chosen:
            suite.profile(Path(tmp))
        if not args.no_profile and "5" in chosen:
            suite.profile_connect(Path(tmp))
        elapsed = time.monotonic() - started
        suite.results["foreign_cpu_percent"] = meter.foreign_percent()
        suite.results["loadavg"] = (load_before, _loadavg())
        suite.results.update(
            command=command,
            elapsed_s=round(elapsed, 1),
            finished=datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
            peers=[p.name for p in suite.peers],
            skipped=suite.skipped,
        )
        print_summary(suite)
        docs = args.docs or (DOCS / "benchmarks.md" if args.suite and not args.quick else None)
        if args.json_out:
            args.json_out.write_text(json.dumps(suite.results, indent=1, default=str))
        if docs is not None:
            machine = machine_info(args.python)
            docs.parent.mkdir(parents=True, exist_ok=True)
            png = docs.with_suffix(".png")
            plot_error = plot(suite, png)
            write_docs(suite, docs, command, machine, elapsed, plot_error, png.name)
            log(f"wrote {docs}" + ("" if plot_error else f" and {png}"))
        log(f"suite took {elapsed:.0f} s")
    return 0
