#!/usr/bin/env python3
"""Repeated runs of the Socket.IO servers: medians, same-run ratios, server CPU per operation, targets.

Each input is the ``--json-out`` file of one suite run of workloads 1, 3, 4 and 5
with the three Socket.IO servers (hubbub-socketio, python-socketio on uvicorn,
the reference Node socket.io server)::

    for run in 1 2 3; do
      python bench/run.py --suite --workloads 1,3,4,5 --no-profile \\
          --servers socketio,hubbub-socketio,socketio-node \\
          --docs /tmp/socketio-run$run.md --json-out /tmp/socketio-run$run.json
    done
    python bench/socketio_report.py /tmp/socketio-run*.json --out bench/results/socketio-repeats.md

``--connects-only FILE`` adds runs whose workloads 4 and 5 count but whose
workloads 1 and 3 do not (runs of an older fan-out path). Every figure is the
median over the runs (workload 5: over every run of every suite run); ratios
are taken of the medians. Server CPU per operation (the server process's user
+ system time from ``/proc``, during the delivery phase or the connect phase) is
steadier than rates on a shared machine and is shown beside them. The suite's
report (``socketio_section`` in ``bench/suite.py``) appends the file to the
Socket.IO section, and ``results/socketio-notes.md`` (the profile) to this.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

#: notes kept with the figures (the profile of hubbub-socketio's fan-out), appended as they are
NOTES = Path(__file__).resolve().parent / "results" / "socketio-notes.md"
HUBBUB = "hubbub-socketio"
PYTHON = "socketio"
NODE = "socketio-node"
SERVERS = (HUBBUB, PYTHON, NODE)
LABELS = {
    HUBBUB: "hubbub-socketio (hubbub's own server)",
    PYTHON: "python-socketio on uvicorn",
    NODE: "Node socket.io (anchor)",
}


def _median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _report(row: dict | None) -> dict:
    return (row or {}).get("report") or {}


def collect(runs: list[dict], connects_only: list[dict] = ()) -> dict[str, dict[str, list]]:
    """metric -> server -> the values of every run (``connects_only``: workloads 4 and 5 only)."""
    out: dict[str, dict[str, list]] = {}

    def add(metric: str, server: str, value: float | None) -> None:
        if value is not None:
            out.setdefault(metric, {}).setdefault(server, []).append(value)

    for run in [*runs, *connects_only]:
        w = run.get("workloads", {})
        fanout = not any(run is other for other in connects_only)
        for subs, section in ((w.get("1") or {}) if fanout else {}).items():
            for server in SERVERS:
                rep = _report(section.get(server))
                if rep.get("deliveries_per_s"):
                    add(f"w1_{subs}_rate", server, rep["deliveries_per_s"])
                    add(f"w1_{subs}_complete", server, 1.0 if rep.get("complete") else 0.0)
                add(f"w1_{subs}_cpu", server, rep.get("server_cpu_per_delivery_us"))
        for server in SERVERS:
            rep = _report((w.get("3") or {}).get(server) if fanout else None)
            if rep.get("deliveries_per_s"):
                add("w3_rate", server, rep["deliveries_per_s"])
                add("w3_complete", server, 1.0 if rep.get("complete") else 0.0)
            add("w3_cpu", server, rep.get("server_cpu_per_delivery_us"))
            add("w4_kib", server, _report((w.get("4") or {}).get(server)).get("rss_per_connection_kib"))
            row = (w.get("5") or {}).get(server) or {}
            for rate in row.get("runs") or [_report(row).get("connects_per_s")]:
                add("w5_rate", server, rate)
            add("w5_cpu", server, _report(row).get("server_cpu_per_connect_us"))
    return out


def _num(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _x(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}x"


def section(runs: list[dict], sources: list[str], connects_only: list[dict] = (),
            connects_sources: list[str] = ()) -> str:
    data = collect(runs, connects_only)
    med = {metric: {s: _median(v) for s, v in by.items()} for metric, by in data.items()}

    def m(metric: str, server: str) -> float | None:
        return med.get(metric, {}).get(server)

    def n(metric: str, server: str) -> int:
        return len(data.get(metric, {}).get(server, []))

    subs = sorted({k.split("_")[1] for k in med if k.startswith("w1_") and k.endswith("_rate")}, key=int)
    scale = runs[0].get("scale", {}) if runs else {}
    lines = ["### Repeated runs", ""]
    lines.append(
        f"{len(runs)} suite run{'s' if len(runs) != 1 else ''} ({', '.join(f'`{s}`' for s in sources)})"
        + (f", and for workloads 4 and 5 (idle memory, connects) also {', '.join(f'`{s}`' for s in connects_sources)} "
           "(runs before room events were framed once per encoder, which does not touch connects or idle "
           "connections)" if connects_sources else "")
        + "; the three servers one after another in each; every figure is the median over "
        "the runs (connects: over every run of every suite run), ratios are of the medians. Server CPU is "
        "the server process's user + system time (`/proc`) from the first publication to the last delivery "
        "(or while connecting) divided by the deliveries (or connections): on two shared cores it is steadier "
        "than the rates. "
        f"W1: {scale.get('w1_messages', '?')} publications of 100 bytes to every subscriber; "
        f"W3: {scale.get('w3_clients', '?'):,} clients, {scale.get('w3_groups', '?')} group rooms, "
        f"{scale.get('w3_messages', '?'):,} publications; W4: {scale.get('w4_connections', '?'):,} idle "
        f"connections; W5: {scale.get('w5_clients', '?'):,} clients connecting (connect + Socket.IO "
        "namespace connect), the server killed and restarted."
    )
    lines.append("")
    cpu_runs = sum(1 for r in runs if any(_report(row).get("server_cpu_per_delivery_us") is not None
                                          for section in (r.get("workloads", {}).get("1") or {}).values()
                                          for row in section.values()))
    foreign = [r["foreign_cpu_percent"] for r in [*runs, *connects_only] if r.get("foreign_cpu_percent") is not None]
    finished = ", ".join(str(r.get("finished", "?")) for r in [*runs, *connects_only])
    lines.append(
        f"Runs finished {finished}"
        + (f"; other processes used {min(foreign):.0f}-{max(foreign):.0f} % of the machine's CPU during them "
           "(the two cores were shared with other work), so every rate here is lower than on an idle machine "
           "(python-socketio did 22,122 deliveries/s in workload 1 above, on an idle machine): compare the "
           "servers by the same-run ratios and by server CPU per operation." if foreign else ".")
        + (f" Server CPU per delivery comes from the {cpu_runs} run(s) that recorded it (the load generator's "
           "`--cpu-pid` around the delivery phase came after the others)." if 0 < cpu_runs < len(runs) else "")
        + " INCOMPLETE: the run hit the suite's limit "
        f"({scale.get('timeout', '?')} s), and the rate is what arrived by then. To repeat:"
    )
    lines += [
        "",
        "```sh",
        "for run in 1 2 3; do",
        "  python bench/run.py --suite --workloads 1,3,4,5 --no-profile \\",
        "      --servers socketio,hubbub-socketio,socketio-node \\",
        "      --docs /tmp/socketio-run$run.md --json-out /tmp/socketio-run$run.json",
        "done",
        "python bench/socketio_report.py /tmp/socketio-run*.json --out bench/results/socketio-repeats.md",
        "```",
        "",
    ]
    header = ["server"]
    for s in subs:
        header += [f"W1 {int(s):,} subs: deliveries/s", f"W1 {int(s):,}: server CPU µs per delivery"]
    header += ["W3 deliveries/s", "W3 server CPU µs per delivery", "W4 KiB per idle connection",
               "W5 connects/s", "W5 server CPU µs per connect"]
    rows = []
    for server in SERVERS:
        if not any(server in by for by in data.values()):
            continue
        cells = [LABELS[server]]
        for s in subs:
            rate = m(f"w1_{s}_rate", server)
            done = data.get(f"w1_{s}_complete", {}).get(server, [])
            mark = "" if not done or all(done) else f" ({sum(1 for d in done if not d)} of {len(done)} INCOMPLETE)"
            cells += [_num(rate) + mark, _num(m(f"w1_{s}_cpu", server), 2)]
        done = data.get("w3_complete", {}).get(server, [])
        mark = "" if not done or all(done) else f" ({sum(1 for d in done if not d)} of {len(done)} INCOMPLETE)"
        cells += [_num(m("w3_rate", server)) + mark, _num(m("w3_cpu", server), 2), _num(m("w4_kib", server), 2),
                  _num(m("w5_rate", server)) + f" ({n('w5_rate', server)} runs)", _num(m("w5_cpu", server))]
        rows.append(cells)
    lines += _table(header, rows)
    lines.append("")
    lines.append("hubbub-socketio against the others (rates: hubbub's / theirs; CPU and memory: theirs / hubbub's, "
                 "so above 1x is hubbub ahead):")
    lines.append("")
    ratio_rows = []
    for other in (PYTHON, NODE):
        cells = [f"vs {LABELS[other]}"]
        for s in subs:
            cells += [_x(_ratio(m(f"w1_{s}_rate", HUBBUB), m(f"w1_{s}_rate", other))),
                      _x(_ratio(m(f"w1_{s}_cpu", other), m(f"w1_{s}_cpu", HUBBUB)))]
        cells += [_x(_ratio(m("w3_rate", HUBBUB), m("w3_rate", other))),
                  _x(_ratio(m("w3_cpu", other), m("w3_cpu", HUBBUB))),
                  _x(_ratio(m("w4_kib", other), m("w4_kib", HUBBUB))),
                  _x(_ratio(m("w5_rate", HUBBUB), m("w5_rate", other))),
                  _x(_ratio(m("w5_cpu", other), m("w5_cpu", HUBBUB)))]
        ratio_rows.append(cells)
    lines += _table(["", *header[1:]], ratio_rows)
    lines.append("")
    lines += ["Targets (issue 27):", ""]
    lines += _table(["target", "measured (medians)", "verdict"], targets(m, subs), numeric=False)
    lines.append("")
    if NOTES.is_file():  # hand-written: where the time goes (py-spy), what would change it
        lines += [NOTES.read_text().rstrip("\n"), ""]
    return "\n".join(lines)


def targets(m, subs: list[str]) -> list[list[str]]:
    rows = []
    for s in subs:
        key = f"w1_{s}_rate"
        vs_py = _ratio(m(key, HUBBUB), m(key, PYTHON))
        vs_node = _ratio(m(key, HUBBUB), m(key, NODE))
        cpu_py = _ratio(m(f"w1_{s}_cpu", PYTHON), m(f"w1_{s}_cpu", HUBBUB))
        rows.append([f"fan-out ≥ 20x python-socketio (W1, {int(s):,} subscribers)",
                     f"{_x(vs_py)} deliveries/s ({_x(cpu_py)} less server CPU per delivery)",
                     _verdict(vs_py, 20)])
        rows.append([f"fan-out ahead of Node socket.io (W1, {int(s):,} subscribers)",
                     f"{_x(vs_node, 2)} deliveries/s", _verdict(vs_node, 1)])
    kib = _ratio(m("w4_kib", HUBBUB), m("w4_kib", PYTHON))
    rows.append(["idle memory ≤ 1/5 of python-socketio's (W4)",
                 f"{_num(m('w4_kib', HUBBUB), 2)} against {_num(m('w4_kib', PYTHON), 2)} KiB per connection "
                 f"({'-' if kib is None else f'{kib:.2f}'} of it)",
                 "-" if kib is None else ("met" if kib <= 0.2 else "MISSED")])
    con = _ratio(m("w5_rate", HUBBUB), m("w5_rate", PYTHON))
    cpu = _ratio(m("w5_cpu", PYTHON), m("w5_cpu", HUBBUB))
    rows.append(["connects ≥ 3x python-socketio (W5)",
                 f"{_x(con)} connects/s ({_x(cpu)} less server CPU per connect)", _verdict(con, 3)])
    return rows


def _verdict(ratio: float | None, at_least: float) -> str:
    return "-" if ratio is None else ("met" if ratio >= at_least else "MISSED")


def _table(header: list[str], rows: list[list[str]], numeric: bool = True) -> list[str]:
    """A Markdown table: the first column left-aligned, the others right-aligned when ``numeric``."""
    out = ["| " + " | ".join(header) + " |", "| --- |" + (" ---: |" if numeric else " --- |") * (len(header) - 1)]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="suite --json-out files")
    parser.add_argument("--connects-only", type=Path, nargs="*", default=[],
                        help="suite --json-out files counted for workloads 4 and 5 only")
    parser.add_argument("--out", type=Path, default=None, help="write the section here (default: print it)")
    args = parser.parse_args()
    runs = [json.loads(path.read_text()) for path in args.runs]
    older = [json.loads(path.read_text()) for path in args.connects_only]
    text = section(runs, [str(path) for path in args.runs], older, [str(path) for path in args.connects_only])
    if args.out:
        args.out.write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
