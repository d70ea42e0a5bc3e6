#!/usr/bin/env python3
"""Workloads 1 and 4 against two revisions of hubbub in one run, interleaved.

Issue 23 asks that "W1 relay and protocol fan-out and W4 idle memory are within
5 % of today's, in the same run against a checkout of cc34be2".  This script
measures exactly that, with the suite's own settings (``suite.FULL``) and its
own measurement code (``Suite.measure``: a fresh server per run, the same load
generator, ``fastgen.py``, in separate processes):

* W1 burst fan-out: relay endpoint (``hubbub``, ``/ws/bench``) and protocol
  endpoint (``hubbub-protocol``, ``/connection/websocket``, up to 1000
  publications awaiting a reply), at 1,000 and 10,000 subscribers, 500
  publications of 100 bytes -> deliveries/s (higher is better);
* W4 idle memory: relay, protocol and framework endpoint (``hubbub-text``, a
  ``hubbub.App`` ``@app.websocket`` endpoint), 10,000 idle connections ->
  KiB of server RSS per connection (lower is better).

Each revision is a checkout (``--base``, ``--new``) with its own interpreter
(``--base-python``, ``--new-python``): its servers run with that interpreter and
only that checkout's ``src`` on PYTHONPATH (checked before measuring), and its
own ``bench/servers`` scripts.  The load generator is this checkout's, run by the
interpreter running this script, for both.

Every case runs ``--rounds`` times per revision, interleaved: in round 1 base
then new, in round 2 new then base, and so on (so a slow drift of the machine
does not favour one side).  Optionally (``--ceiling``) the load generator's own
ceiling is measured once per round (``trivial``, ``trivial-centrifugo`` at the
same W1 sizes).  Prints the median per revision, new/base, every run and the
spread; ``--json-out`` keeps every raw report.

Example::

    git worktree add /tmp/hubbub-base cc34be2
    python3 -m venv /tmp/hubbub-base/.venv
    /tmp/hubbub-base/.venv/bin/pip install -e '/tmp/hubbub-base[bench]'
    .venv/bin/python bench/compare_revisions.py --base /tmp/hubbub-base \\
        --base-python /tmp/hubbub-base/.venv/bin/python --rounds 5 --ceiling --quiet 20 \\
        --json-out /tmp/compare.json

On a noisy two-core machine a 500-publication burst lasts 0.05-0.5 s and single
runs swing by tens of percent; ``--w1-messages 2000`` (workload 6's burst) and
more rounds narrow that.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

from harness import BENCH, REPO, raise_nofile_limit
from peers import PEERS, Peer
from suite import FULL, Suite, _burst_args, _machine_cpu, _window, log

TOLERANCE = 0.05


@dataclass(frozen=True)
class Revision:
    label: str
    root: Path
    python: str

    @property
    def src(self) -> Path:
        return self.root / "src"


@dataclass(frozen=True)
class Case:
    workload: str  # "1" or "4"
    server: str
    size: int  # subscribers (W1) or idle connections (W4)

    @property
    def key(self) -> str:
        return f"W{self.workload} {self.server} {self.size}"

    @property
    def unit(self) -> str:
        return "deliveries/s" if self.workload == "1" else "KiB/conn"


def peer_for(peer: Peer, rev: Revision | None) -> Peer:
    """``peer`` started from ``rev``: its ``src`` alone on PYTHONPATH, its bench/servers scripts."""
    if rev is None:
        return peer
    bench = str(BENCH)

    def argv(py: str, port: int, _orig=peer.argv, _bench=str(rev.root / "bench")) -> list[str]:
        return [_bench + a[len(bench):] if a.startswith(bench + os.sep) else a for a in _orig(py, port)]

    return replace(peer, argv=argv, env={**peer.env, "PYTHONPATH": str(rev.src)})


def check_revision(rev: Revision) -> str:
    """The hubbub each revision's servers import, and its commit; fail if it is not the checkout's."""
    env = dict(os.environ, PYTHONPATH=str(rev.src))
    out = subprocess.run(
        [rev.python, "-c", "import hubbub; print(hubbub.__file__)"],
        env=env, cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.strip()
    if not Path(out).resolve().is_relative_to(rev.src.resolve()):
        raise SystemExit(f"{rev.label}: {rev.python} imports hubbub from {out}, not from {rev.src}")
    commit = subprocess.run(
        ["git", "-C", str(rev.root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(rev.root), "status", "--porcelain", "--", "src"], capture_output=True, text=True,
        check=False,
    ).stdout.strip()
    return f"{commit}{' (src modified)' if dirty else ''}"


def wait_quiet(percent: float, patience: float) -> float | None:
    """Wait (at most ``patience`` s) until other processes use under ``percent`` % of the
    machine over one second (nothing of ours runs between measurements); return their
    last share, or None if it cannot be read."""
    deadline = time.monotonic() + patience
    while True:
        busy0, total0 = _machine_cpu()
        time.sleep(1.0)
        busy1, total1 = _machine_cpu()
        if busy0 is None or busy1 is None or total1 == total0:
            return None
        share = 100 * (busy1 - busy0) / (total1 - total0)
        if share < percent or time.monotonic() > deadline:
            return share
        log(f"  waiting: other processes use {share:.0f} % of the machine")
        time.sleep(4.0)


def measure(suite: Suite, case: Case, rev: Revision | None, messages: int) -> dict:
    peer = peer_for(PEERS[case.server], rev)
    suite.python = rev.python if rev else sys.executable
    s = suite.scale
    if case.workload == "1":
        return suite.measure(
            peer, peer.fanout.path, peer.fanout.mode,
            _burst_args(case.size, messages, s.timeout) + _window(peer.fanout.mode),
            timeout=s.timeout,
        )
    warmup = max(10, case.size // 100)
    return suite.measure(
        peer, peer.fanout.path, peer.fanout.mode,
        ["--subscribers", str(case.size), "--idle", "--warmup", str(warmup), "--hold", str(s.w4_hold),
         "--timeout", "30"],
        timeout=30, rss=True, settle=s.w4_hold / 4,
    )


def figure(case: Case, outcome: dict) -> float | None:
    rep = outcome.get("report")
    if not rep or outcome.get("error"):
        return None
    if case.workload == "1":
        return rep["deliveries_per_s"] if rep.get("complete") else None
    return rep.get("rss_per_connection_kib")


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if unit == "deliveries/s" else f"{value:.2f}"


def summary(cases: list[Case], results: dict, labels: tuple[str, str]) -> list[str]:
    base_l, new_l = labels
    lines = [
        f"| case | unit | {base_l} median | {new_l} median | {new_l}/{base_l} | within 5 % | "
        f"{base_l} runs | {new_l} runs | spread {base_l} | spread {new_l} | generator busy (median) | "
        "other load > 15 % (runs) |",
        "| --- | --- | ---: | ---: | ---: | --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for case in cases:
        cells = {}
        for label in labels:
            runs = [figure(case, o) for o in results[case.key][label]]
            good = [r for r in runs if r is not None]
            med = statistics.median(good) if good else None
            spread = (max(good) - min(good)) / med if good and med else None
            busy = [o["report"].get("subscriber_cpu_share") for o in results[case.key][label]
                    if o.get("report") and o["report"].get("subscriber_cpu_share") is not None]
            cells[label] = (runs, med, spread, statistics.median(busy) if busy else None)
        b, n = cells[base_l][1], cells[new_l][1]
        ratio = n / b if b and n else None
        if ratio is None:
            verdict = "-"
        elif abs(ratio - 1) <= TOLERANCE:
            verdict = "yes"
        else:
            better = ratio > 1 if case.workload == "1" else ratio < 1
            verdict = "no (better)" if better else "NO (worse)"
        loaded = " / ".join(
            str(sum(1 for o in results[case.key][lbl] if (o.get("foreign_cpu_percent") or 0) > 15)) for lbl in labels
        )
        busy = " / ".join(f"{100 * c[3]:.0f} %" if c[3] is not None else "-" for c in cells.values())
        lines.append(
            f"| {case.key} | {case.unit} | {_fmt(b, case.unit)} | {_fmt(n, case.unit)} | "
            f"{f'{ratio:.3f}' if ratio else '-'} | {verdict} | "
            + " | ".join(", ".join(_fmt(r, case.unit) for r in cells[lbl][0]) for lbl in labels)
            + " | "
            + " | ".join(f"{100 * cells[lbl][2]:.1f} %" if cells[lbl][2] is not None else "-" for lbl in labels)
            + f" | {busy} | {loaded} |"
        )
    return lines


def ceiling_summary(results: dict) -> list[str]:
    lines = ["| load generator ceiling | runs deliveries/s | median | generator busy | capacity/s per core |",
             "| --- | --- | ---: | ---: | ---: |"]
    for key, outcomes in results.items():
        reps = [o["report"] for o in outcomes if o.get("report")]
        rates = [r["deliveries_per_s"] for r in reps]
        busy = [r.get("subscriber_cpu_share") for r in reps if r.get("subscriber_cpu_share") is not None]
        cap = [r.get("generator_capacity_per_cpu_s") for r in reps if r.get("generator_capacity_per_cpu_s")]
        lines.append(
            f"| {key} | {', '.join(f'{r:,.0f}' for r in rates)} | "
            f"{statistics.median(rates):,.0f} | "
            f"{f'{100 * statistics.median(busy):.0f} %' if busy else '-'} | "
            f"{f'{statistics.median(cap):,.0f}' if cap else '-'} |"
            if rates else f"| {key} | - | - | - | - |"
        )
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--base", type=Path, required=True, help="checkout of the baseline revision")
    p.add_argument("--base-python", required=True, help="interpreter (virtualenv) for the baseline's servers")
    p.add_argument("--new", type=Path, default=REPO, help="checkout of the new revision")
    p.add_argument("--new-python", default=sys.executable, help="interpreter for the new revision's servers")
    p.add_argument("--rounds", type=int, default=3, help="runs per revision and case, interleaved")
    p.add_argument("--w1-subscribers", default="1000,10000")
    p.add_argument("--w1-messages", type=int, default=FULL.w1_messages)
    p.add_argument("--w1-servers", default="hubbub,hubbub-protocol")
    p.add_argument("--w4-connections", type=int, default=FULL.w4_connections)
    p.add_argument("--w4-servers", default="hubbub,hubbub-protocol,hubbub-text")
    p.add_argument("--ceiling", action="store_true",
                   help="also run trivial / trivial-centrifugo (W1) once per round: the load generator's ceiling")
    p.add_argument("--quiet", type=float, default=0.0, metavar="PERCENT",
                   help="before each pair of runs wait until other processes use less than PERCENT %% "
                   "of the machine (0: do not wait)")
    p.add_argument("--quiet-patience", type=float, default=120.0, help="longest such wait, s")
    p.add_argument("--max-minutes", type=float, default=50.0, help="start no new round after this")
    p.add_argument("--json-out", type=Path)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    raise_nofile_limit()
    base = Revision("base", args.base.resolve(), args.base_python)
    new = Revision("new", args.new.resolve(), args.new_python)
    commits = {rev.label: check_revision(rev) for rev in (base, new)}
    log(f"base: {base.root} {commits['base']} ({base.python}); new: {new.root} {commits['new']} ({new.python})")

    cases = [Case("1", name, int(n)) for n in args.w1_subscribers.split(",") if n
             for name in args.w1_servers.split(",") if name]
    cases += [Case("4", name, args.w4_connections) for name in args.w4_servers.split(",") if name]
    ceilings = []
    if args.ceiling:
        ceilings = [Case("1", name, int(n)) for n in args.w1_subscribers.split(",") if n
                    for name in ("trivial", "trivial-centrifugo")]

    results: dict = {c.key: {"base": [], "new": []} for c in cases}
    ceiling_results: dict = {c.key: [] for c in ceilings}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="hubbub-compare-") as tmp:
        suite = Suite(argparse.Namespace(servers=[], python=sys.executable), FULL, Path(tmp))
        for rnd in range(args.rounds):
            if rnd and time.monotonic() - started > args.max_minutes * 60:
                log(f"stopping after {rnd} rounds: --max-minutes {args.max_minutes} passed")
                break
            order = (base, new) if rnd % 2 == 0 else (new, base)
            log(f"== round {rnd + 1}/{args.rounds}: {' then '.join(r.label for r in order)} per case")
            for case in cases:
                if args.quiet:
                    wait_quiet(args.quiet, args.quiet_patience)
                for rev in order:
                    log(f"- {case.key} [{rev.label}]")
                    results[case.key][rev.label].append(measure(suite, case, rev, args.w1_messages))
            for case in ceilings:
                log(f"- {case.key} [load generator ceiling]")
                ceiling_results[case.key].append(measure(suite, case, None, args.w1_messages))
    elapsed = time.monotonic() - started
    commits_after = {rev.label: check_revision(rev) for rev in (base, new)}

    lines = [
        f"base {commits['base']} ({base.root}), new {commits['new']} ({new.root}); "
        f"{args.rounds} rounds, {elapsed / 60:.1f} min; W1 {args.w1_messages} x 100 B publications",
        "",
        *summary(cases, results, ("base", "new")),
    ]
    if ceilings:
        lines += ["", *ceiling_summary(ceiling_results)]
    foreign = [o.get("foreign_cpu_percent") for c in results.values() for side in c.values() for o in side
               if o.get("foreign_cpu_percent") is not None]
    if foreign:
        lines += ["", f"other processes' CPU during runs: median {statistics.median(foreign):.0f} %, "
                  f"max {max(foreign):.0f} % of the machine"]
    if commits_after != commits:
        lines += ["", f"WARNING: a checkout changed during the run: {commits} -> {commits_after}"]
    print("\n".join(lines))
    if args.json_out:
        args.json_out.write_text(json.dumps({
            "commits": commits, "commits_after": commits_after, "args": {k: str(v) for k, v in vars(args).items()},
            "elapsed_s": elapsed, "results": results, "ceiling": ceiling_results,
        }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
