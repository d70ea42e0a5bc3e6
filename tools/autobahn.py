#!/usr/bin/env python3
"""Autobahn|Testsuite conformance run against hubbub's WebSocket endpoints.

The suite's ``fuzzingclient`` needs a server that echoes every message to its
sender. ``--target`` chooses what it connects to:

``relay`` (the default)
    ``/ws/{channel}``: a client alone on a channel receives its own messages
    back (the relay echoes to the sender by default). Covers the h11
    handshake, websockets' sans-I/O framing, :mod:`hubbub.compression`,
    hubbub's own UTF-8 fail-fast check, the connection's inbox, and then the
    relay session (:class:`hubbub.relay.RelaySession`), the hub's fan-out and
    the flusher's write path of a push.
``endpoint``
    a framework endpoint of a ``hubbub.App`` that echoes every message, text
    and binary (``tools/autobahn_echo.py``, served by ``hubbub run`` on
    hubbub's own server, at ``/autobahn/{case}``). The same connection code
    (one :class:`hubbub.connection.Connection` class is the
    ``WebSocketTransport`` of every WebSocket route, whatever the session
    behind it: handshake, framing, compression, UTF-8 check, inbox, closing
    handshake), and then what the relay target does not reach: the endpoint
    session (:class:`hubbub.endpoint.WebSocket`): its ``handle_message`` (the
    command rate, the handler's bounded queue that pauses reading), the
    handler's own task (``recv``/``async for``), ``send`` straight to the
    connection's bounded output (an application's message, not a hub push),
    and the close state a handler sees (``ConnectionClosedOK``/``Error``,
    a client's close held until the messages before it are handled).
``protocol``
    the Centrifugo protocol endpoint ``/connection/websocket``
    (:class:`hubbub.session.ClientSession`). It is no echo server: a message
    that is not a protocol command closes the connection with 3501, and the
    suite's payloads are fixed bytes, so no RPC or publication can be made to
    echo them. This target runs only :data:`PROTOCOL_CASES`: the 140 cases of
    groups 2-7 whose expected outcomes contain no echoed message (pings,
    refused frames and fragments, invalid UTF-8, the closing handshake), with
    the protocol session behind the connection (``--quick`` does not narrow
    them: about 10 s). Cases 12 and 13 all expect an echo: not run on this target.

Usage::

    python3 tools/autobahn.py            # the relay: case groups 1-7, 9, 10 (about 30 s)
    python3 tools/autobahn.py --target endpoint                 # the same cases, on a framework endpoint
    python3 tools/autobahn.py --target protocol                 # PROTOCOL_CASES (about 10 s)
    python3 tools/autobahn.py --quick    # a subset (a few seconds)
    python3 tools/autobahn.py --cases '6.*' '7.1.*' --keep-reports reports/
    python3 tools/autobahn.py --setup ~/.cache/hubbub-autobahn   # make the Python 2.7 virtualenv

What it does:

1. finds a Python 2.7 that can ``import autobahntestsuite`` (``--python``,
   ``$AUTOBAHN_PYTHON``, the interpreter of a ``wstest`` on ``PATH``, then a few
   usual virtualenv places). If there is none it prints why and exits **0**
   (skipped): the suite needs Python 2.7, which CI machines may not have;
2. starts ``hubbub serve --port 0`` itself (``hubbub run autobahn_echo:app
   --port 0`` for ``--target endpoint``, with the same limits as ``HUBBUB_*``
   variables), with ``--max-message-size 16777216`` (case group 9 sends
   messages of up to 16 MiB; the default limit, 64 KiB, would close them with 1009) and
   ``--max-pending-output 67108864`` (the 16 MiB echo must fit in one
   connection's pending output; the default, 1 MiB, would close it with 3008)
   and ``--ping-interval 0``: the suite does not test keepalive, and on a
   loaded machine a server ping queued behind a 8 MiB echo (case 9.1.5) was
   answered later than ``pong_timeout`` and closed the case with 1011
   ("keepalive ping timeout"; seen once on the relay);
3. runs ``wstest -m fuzzingclient`` through a small Python 2 driver that gives
   every test case its own channel: case 6.4.3 connects to
   ``ws://127.0.0.1:PORT/ws/echo-6.4.3``, so a connection of an earlier case
   that is still closing can never receive a later case's messages (its own
   URL on the other targets: ``/autobahn/6.4.3``,
   ``/connection/websocket?case=6.4.3``);
4. reads the suite's JSON report and prints the counts OK / NON-STRICT /
   INFORMATIONAL / UNIMPLEMENTED / FAILED and the reason of every case that is
   not OK.

Exit status: 0 when no case FAILED (or the suite is not installed: skipped),
1 when a case FAILED, 2 when hubbub or the suite could not run. Case 7.1.5
FAILS in hubbub exactly as in the websockets project's own published results
(see ``KNOWN``); ``--allow-known`` accepts the failures listed there.

Case groups 12 and 13 test permessage-deflate (``websocket_compression``, off
by default). ``--compression-cases`` runs them, with the hub's
``HUBBUB_WEBSOCKET_COMPRESSION=true``; ``--compression-only`` runs only them
(``--cases`` narrows them to a subset; with ``--quick``, a subset of every
subgroup: :data:`COMPRESSION_QUICK_CASES`, a few minutes), on the relay or
the framework endpoint.

Setting up the suite (Python 2.7 only; ``--setup DIR`` does these steps)::

    ~/.pyenv/versions/2.7.18/bin/python -m pip install --user 'virtualenv<20.22'
    ~/.pyenv/versions/2.7.18/bin/python -m virtualenv DIR
    DIR/bin/pip install autobahntestsuite==25.10.1 autobahn==0.10.9 'Twisted<20' six==1.16.0

then pass ``--python DIR/bin/python`` or set ``AUTOBAHN_PYTHON``.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: Case groups run by default (12 and 13 need permessage-deflate: see the docstring).
DEFAULT_CASES = ["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "9.*", "10.*"]
#: ``--quick``: every group but 9 (performance) in a few seconds.
QUICK_CASES = ["1.1.*", "1.2.1", "1.2.8", "2.*", "3.*", "4.*", "5.*", "6.1.*", "6.2.*", "6.3.*", "6.4.*",
               "6.12.*", "7.1.*", "7.3.*", "7.5.1", "7.7.*", "7.9.*", "7.13.*", "9.1.1", "9.2.1", "10.1.1"]
COMPRESSION_CASES = ["12.*", "13.*"]
#: ``--compression-only --quick`` (what CI runs): of every subgroup of 12 (five kinds of data) and 13
#: (seven offers: context takeover, window bits), the cases of 1,000 messages of 16 B, 4 KiB and 64 KiB,
#: and of 32 KiB sent in 256-byte fragments (case 13): 48 cases, about 5 minutes; the whole of 12
#: and 13 (216 cases) takes about 40, most of it in the Python 2 client. The patterns are
#: regular expressions matched at the start of a case id: ``$`` keeps ``12.1.1`` from ``12.1.10``.
COMPRESSION_QUICK_CASES = [f"{group}.*.{case}$" for group in (12, 13) for case in (1, 5, 9, 13)]

#: Largest message in case group 9 (9.1.6, 9.2.6: 16 MiB).
MAX_MESSAGE_SIZE = 16 * 1024 * 1024
#: Room for a 16 MiB echo in one connection's pending output (4x, for 9.x's bursts).
MAX_PENDING_OUTPUT = 64 * 1024 * 1024

#: Cases whose non-OK result is explained (and matches the websockets project's
#: own published results, compliance/README.rst).
KNOWN = {
    "7.1.5": "a close frame in the middle of a fragmented message: websockets' sans-I/O layer "
             "(protocol.py, recv_frame) raises 'incomplete fragmented message' and answers 1002 "
             "instead of echoing 1000; websockets reports the same FAILED. RFC 6455 5.5.1 says an "
             "endpoint 'typically echos' the code, so 1002 is allowed",
    "3.2": "websockets fails the connection on the bad RSV bits before hubbub echoes the previous frame",
    "3.3": "as 3.2",
    "3.4": "as 3.2",
    "4.1.3": "websockets fails the connection on the reserved opcode before hubbub echoes the previous frame",
    "4.1.4": "as 4.1.3",
    "4.2.3": "as 4.1.3",
    "4.1.5": "as 4.1.3",
    "4.2.4": "as 4.1.3",
    "4.2.5": "as 4.1.3",
    "5.15": "websockets fails the connection on the stray continuation before hubbub echoes the previous message",
    "6.4.3": "invalid UTF-8 split inside one frame: websockets hands over whole frames only, so hubbub's "
             "incremental check sees it only when the frame is complete",
    "6.4.4": "as 6.4.3",
    "7.1.6": "INFORMATIONAL by definition (how much of a large send reaches the peer before close)",
    "7.13.1": "INFORMATIONAL: close code 5000 (out of range) is answered with 1002",
    "7.13.2": "INFORMATIONAL: close code 65535 (out of range) is answered with 1002",
}

#: What ``--target`` names, and the URL each case connects to (the case id is appended).
TARGET_NAMES = {"relay": "relay", "endpoint": "framework endpoint", "protocol": "protocol endpoint"}
TARGETS = list(TARGET_NAMES)
CASE_PATHS = {"relay": "/ws/echo-", "endpoint": "/autobahn/", "protocol": "/connection/websocket?case="}

#: ``--target protocol``: the cases of groups 1-7 and 10 whose expected outcomes (every outcome
#: a case accepts, OK or NON-STRICT) contain no echoed message: control frames (pings, pongs),
#: frames and fragments the server must refuse, invalid UTF-8, the closing handshake. Derived
#: from the suite's own expectations (autobahntestsuite 25.10.1: each case's ``expected``
#: after ``onOpen``, with no ``("message", ...)`` entry), not from which cases pass. No complete
#: valid message reaches the session in these cases, so the protocol endpoint's rule (a frame
#: that is not a protocol command closes with 3501) never comes into play.
PROTOCOL_CASES = (
    [f"2.{n}" for n in range(1, 12)] + ["3.1", "3.5", "3.6", "3.7", "4.1.1", "4.1.2", "4.2.1", "4.2.2"]
    + ["5.1", "5.2"] + [f"5.{n}" for n in range(9, 15)] + ["5.16", "5.17", "5.18"]
    + ["6.3.1", "6.3.2", "6.4.1", "6.4.2", "6.4.3", "6.4.4", "6.6.1", "6.6.3", "6.6.4", "6.6.6", "6.6.8",
       "6.6.10", "6.8.1", "6.8.2", "6.10.1", "6.10.2", "6.10.3", "6.11.5"]
    + [f"6.12.{n}" for n in range(1, 9)] + [f"6.13.{n}" for n in range(1, 6)]
    + [f"6.14.{n}" for n in range(1, 11)] + ["6.15.1"] + [f"6.16.{n}" for n in range(1, 4)]
    + [f"6.{g}.{n}" for g in (17, 18, 19) for n in range(1, 6)] + [f"6.20.{n}" for n in range(1, 8)]
    + [f"6.21.{n}" for n in range(1, 9)]
    + ["7.1.2", "7.1.3", "7.1.4", "7.1.5"] + [f"7.3.{n}" for n in range(1, 7)] + ["7.5.1"]
    + [f"7.7.{n}" for n in range(1, 14)] + [f"7.9.{n}" for n in range(1, 10)] + ["7.13.1", "7.13.2"]
)

STATUSES = ["OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED"]

#: Python 2 driver: ``wstest -m fuzzingclient`` with one channel per test case.
DRIVER = r'''
import json, sys
from autobahntestsuite import choosereactor  # installs the best reactor first
from twisted.internet import reactor
from autobahntestsuite import fuzzing

spec = json.load(open(sys.argv[1]))
base = spec.pop("hubbub_base_url")
Factory = fuzzing.FuzzingClientFactory
_next_case = Factory.nextCase

def nextCase(self):
    more = _next_case(self)
    if more:
        self.setSessionParameters(url=base + self.currentCaseId, origin=self.origin,
                                  protocols=self.protocols, useragent=self.useragent,
                                  headers=self.headers, proxy=self.proxy)
    return more

Factory.nextCase = nextCase
fuzzing.startClient(spec)
reactor.run()
'''


# -- finding the suite ---------------------------------------------------------------------


def _suite_ok(python: str) -> bool:
    try:
        out = subprocess.run([python, "-c", "import sys, autobahntestsuite; print(sys.version_info[0])"],
                             capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and out.stdout.strip() == "2"


def find_python(explicit: str | None) -> tuple[str | None, list[str]]:
    """A Python 2.7 interpreter with ``autobahntestsuite``, and what was tried."""
    candidates: list[str] = []
    if explicit:
        candidates.append(explicit)
    if os.environ.get("AUTOBAHN_PYTHON"):
        candidates.append(os.environ["AUTOBAHN_PYTHON"])
    wstest = shutil.which("wstest")
    if wstest:
        try:
            first = Path(wstest).read_text(errors="replace").splitlines()[0]
            if first.startswith("#!"):
                candidates.append(first[2:].strip().split()[0])
        except (OSError, IndexError):
            pass
    home = Path.home()
    for place in (home / ".cache/hubbub-autobahn", ROOT / ".autobahn", Path("/tmp/ab27"),
                  home / ".virtualenvs/autobahn", home / "wstest"):
        candidates.append(str(place / "bin/python"))
    candidates.append(str(home / ".pyenv/versions/2.7.18/bin/python"))
    if explicit:  # an explicit choice is the only one tried
        candidates = candidates[:1]
    tried = []
    for python in dict.fromkeys(candidates):
        if not os.access(python, os.X_OK):
            continue
        tried.append(python)
        if _suite_ok(python):
            return python, tried
    return None, tried


def find_python27() -> str | None:
    """A Python 2.7 interpreter that really runs (a pyenv shim of an inactive version does not)."""
    for candidate in (str(Path.home() / ".pyenv/versions/2.7.18/bin/python"), shutil.which("python2.7"),
                      shutil.which("python2")):
        if not candidate or not os.access(candidate, os.X_OK):
            continue
        probe = subprocess.run([candidate, "-c", "import sys; sys.exit(sys.version_info[:2] != (2, 7))"],
                               capture_output=True)
        if probe.returncode == 0:
            return candidate
    return None


def setup(directory: Path) -> int:
    """Create a Python 2.7 virtualenv with the suite in ``directory``."""
    py27 = find_python27()
    if py27 is None:
        print("autobahn: no Python 2.7 found (python2.7 on PATH or ~/.pyenv/versions/2.7.18)", file=sys.stderr)
        return 2
    steps = [
        [py27, "-m", "pip", "install", "--user", "virtualenv<20.22"],
        [py27, "-m", "virtualenv", str(directory)],
        [str(directory / "bin/pip"), "install", "autobahntestsuite==25.10.1", "autobahn==0.10.9",
         "Twisted<20", "six==1.16.0"],
    ]
    for step in steps:
        print("+", " ".join(step), flush=True)
        if subprocess.run(step, check=False).returncode != 0:
            return 2
    print(f"autobahn: ready; run with --python {directory / 'bin/python'}")
    return 0


# -- the hub ---------------------------------------------------------------------------------


def hub_command(target: str) -> tuple[list[str], dict[str, str]]:
    """The command (and environment) that serves ``target`` on a free port: ``hubbub serve``
    for the relay and the protocol endpoint; ``hubbub run autobahn_echo:app`` (tools/ is on
    ``PYTHONPATH``) for the framework endpoint, whose app reads the same limits from
    ``HUBBUB_*`` variables."""
    if target == "endpoint":
        return ([sys.executable, "-m", "hubbub", "run", "autobahn_echo:app", "--port", "0"],
                {"HUBBUB_MAX_MESSAGE_SIZE": str(MAX_MESSAGE_SIZE),
                 "HUBBUB_MAX_PENDING_OUTPUT": str(MAX_PENDING_OUTPUT), "HUBBUB_PING_INTERVAL": "0"})
    return ([sys.executable, "-m", "hubbub", "serve", "--port", "0", "--max-message-size", str(MAX_MESSAGE_SIZE),
             "--max-pending-output", str(MAX_PENDING_OUTPUT), "--ping-interval", "0"], {})


class Hub:
    """``hubbub serve --port 0`` (or another ``command``) in a subprocess; its port is read from its log."""

    def __init__(self, extra: list[str], env: dict[str, str] | None = None, *, target: str = "relay") -> None:
        args, target_env = hub_command(target)
        args += extra
        env = {**target_env, **(env or {})}
        path = os.pathsep.join(filter(None, [str(ROOT / "tools"), os.environ.get("PYTHONPATH")]))
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": path, **(env or {})})
        self.lines: list[str] = []
        self.port = 0
        deadline = time.monotonic() + 20
        assert self.proc.stdout is not None
        ready = threading.Event()

        def read() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                self.lines.append(line)
                m = re.search(r"listening on http://[^ ]+:(\d+)", line)
                if m and not self.port:
                    self.port = int(m.group(1))
                    ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        ready.wait(max(0.0, deadline - time.monotonic()))
        if not self.port:
            self.stop()
            raise RuntimeError("hubbub did not start:\n" + "".join(self.lines))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# -- report ---------------------------------------------------------------------------------


def _case_key(case: str) -> tuple[int, ...]:
    return tuple(int(p) for p in case.split("."))


def status_of(result: dict) -> str:
    """One status for a case: the worse of its behavior and its close behavior."""
    behavior = result.get("behavior", "FAILED")
    close = result.get("behaviorClose", "FAILED")
    if behavior == "FAILED" or close not in ("OK", "INFORMATIONAL", "UNIMPLEMENTED"):
        return "FAILED"
    return behavior


def summarize(index: dict, report_dir: Path) -> tuple[collections.Counter, list[tuple[str, str, str]]]:
    """Counts per status, and (case, status, reason) for every case that is not OK."""
    results = next(iter(index.values())) if index else {}
    counts: collections.Counter = collections.Counter()
    notes = []
    for case in sorted(results, key=_case_key):
        result = results[case]
        status = status_of(result)
        counts[status] += 1
        if status == "OK":
            continue
        reason = ""
        detail_file = report_dir / result.get("reportfile", "")
        if detail_file.is_file():
            detail = json.loads(detail_file.read_text())
            reason = f"{detail.get('description', '')!s} -> {detail.get('result', '')}"
            if detail.get("resultClose") and result.get("behaviorClose") != "OK":
                reason += f"; close: {detail['resultClose']}"
            reason = re.sub(r"<[^>]+>", "", reason).replace("\n", " ")
        reason += f" (server close code {result.get('remoteCloseCode')})"
        notes.append((case, status, reason))
    return counts, notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", choices=TARGETS, default="relay",
                        help="what the suite connects to: the relay (default), a framework endpoint that echoes "
                        "(tools/autobahn_echo.py), or the protocol endpoint (only the cases that need no echo)")
    parser.add_argument("--quick", action="store_true", help="a subset of the cases (a few seconds)")
    parser.add_argument("--cases", nargs="+", metavar="PATTERN", help="case patterns, e.g. '6.*' 7.1.5")
    parser.add_argument("--compression-cases", action="store_true",
                        help="also run 12.* and 13.* (permessage-deflate), with websocket_compression on")
    parser.add_argument("--compression-only", action="store_true",
                        help="run only 12.* and 13.* (or the --cases given), with websocket_compression on")
    parser.add_argument("--python", help="Python 2.7 interpreter that has autobahntestsuite")
    parser.add_argument("--setup", metavar="DIR", type=Path,
                        help="create a Python 2.7 virtualenv with the suite in DIR, then exit")
    parser.add_argument("--keep-reports", metavar="DIR", type=Path,
                        help="write the suite's HTML/JSON reports there (default: a temporary directory)")
    parser.add_argument("--allow-known", action="store_true",
                        help="exit 0 when the only FAILED cases are the known, explained ones (7.1.5)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds for the whole run (default 900)")
    args = parser.parse_args(argv)

    if args.setup:
        return setup(args.setup)

    python, tried = find_python(args.python)
    if python is None:
        print("autobahn: SKIPPED: no Python 2.7 with autobahntestsuite found "
              f"(tried: {', '.join(tried) or 'nothing executable'}). "
              "Create one with: python3 tools/autobahn.py --setup ~/.cache/hubbub-autobahn")
        return 0

    compression = args.compression_cases or args.compression_only
    if args.target == "protocol":
        if compression:
            print("autobahn: --target protocol runs no case of groups 12 and 13: each of them expects its "
                  "messages echoed, and the protocol endpoint echoes none", file=sys.stderr)
            return 2
        cases = list(args.cases or PROTOCOL_CASES)
    elif args.compression_only:
        cases = list(args.cases or (COMPRESSION_QUICK_CASES if args.quick else COMPRESSION_CASES))
    else:
        cases = list(args.cases or (QUICK_CASES if args.quick else DEFAULT_CASES))
        if args.compression_cases and not args.cases:
            cases += COMPRESSION_CASES
    compression = compression or any(c.startswith(("12.", "13.")) for c in cases)
    if not compression and args.target != "protocol":
        print("autobahn: case groups 12 and 13 (permessage-deflate) are not run "
              "(--compression-cases or --compression-only runs them)")

    tmp = tempfile.TemporaryDirectory(prefix="hubbub-autobahn-")
    work = Path(tmp.name)
    report_dir = (args.keep_reports.resolve() if args.keep_reports else work / "reports")
    report_dir.mkdir(parents=True, exist_ok=True)
    try:
        hub = Hub([], {"HUBBUB_WEBSOCKET_COMPRESSION": "true" if compression else "false"}, target=args.target)
    except RuntimeError as exc:
        print(f"autobahn: {exc}", file=sys.stderr)
        return 2
    started = time.monotonic()
    base = f"ws://127.0.0.1:{hub.port}{CASE_PATHS[args.target]}"
    try:
        spec = {
            "outdir": str(report_dir),
            "servers": [{"agent": "hubbub", "url": base + "1"}],
            "hubbub_base_url": base,
            "cases": cases,
            "exclude-cases": [],
            "exclude-agent-cases": {},
        }
        (work / "spec.json").write_text(json.dumps(spec))
        (work / "driver.py").write_text(DRIVER)
        print(f"autobahn: hubbub ({TARGET_NAMES[args.target]}) on port {hub.port}; wstest ({python}) runs cases {' '.join(cases)}", flush=True)
        with open(work / "wstest.log", "w") as log:
            try:
                run = subprocess.run([python, str(work / "driver.py"), str(work / "spec.json")],
                                     stdout=log, stderr=subprocess.STDOUT, cwd=work, timeout=args.timeout,
                                     check=False)
                code = run.returncode
            except subprocess.TimeoutExpired:
                code = -1
        index_file = report_dir / "index.json"
        if code != 0 or not index_file.is_file():
            print(f"autobahn: wstest failed (exit {code}); its log:", file=sys.stderr)
            print((work / "wstest.log").read_text()[-4000:], file=sys.stderr)
            return 2
        index = json.loads(index_file.read_text())
    finally:
        hub.stop()
        server_log = "".join(hub.lines)
    elapsed = time.monotonic() - started

    counts, notes = summarize(index, report_dir)
    total = sum(counts.values())
    print(f"\nAutobahn|Testsuite against hubbub's {TARGET_NAMES[args.target]}: {total} cases in {elapsed:.0f} s"
          + (" (websocket_compression on)" if compression else ""))
    print("  " + "  ".join(f"{s}: {counts.get(s, 0)}" for s in STATUSES))
    unimplemented = [case for case, status, _ in notes if status == "UNIMPLEMENTED"]
    if unimplemented:
        print(f"  {len(unimplemented)} cases UNIMPLEMENTED ({unimplemented[0]} .. {unimplemented[-1]}): "
              "the suite's offer of permessage-deflate was declined")
    for case, status, reason in notes:
        if status == "UNIMPLEMENTED":
            continue
        print(f"  {case:8} {status:13} {reason}")
        if case in KNOWN:
            print(f"  {'':8} {'':13} why: {KNOWN[case]}")
    tracebacks = server_log.count("Traceback")
    if tracebacks:
        print(f"\nautobahn: the server logged {tracebacks} traceback(s):\n{server_log[-4000:]}")
    if args.keep_reports:
        print(f"\nreports: {report_dir / 'index.html'}")
    tmp.cleanup()
    failed = [case for case, status, _ in notes if status == "FAILED"]
    unexplained = [case for case in failed if case not in KNOWN]
    if unexplained or (failed and not args.allow_known) or tracebacks:
        print(f"autobahn: FAILED cases: {' '.join(failed)}"
              + ("" if unexplained else " (all known; --allow-known accepts them)"))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
