"""The PostgreSQL consumer (transactional outbox), end to end: rows per second and the latency
from a backend's COMMIT to the delivery.

A throwaway PostgreSQL cluster (``tests/postgres_server.py``: Debian's ``postgresql``, fsync
off), ``hubbub serve`` (memory broker) reading the outbox table, and in this process a writer
(asyncpg) and one subscriber (``websockets``, the Centrifugo JSON protocol) on the channel.

- **Burst**: ``--burst`` rows inserted and committed in one transaction; rows/s is the rows
  divided by the time from the COMMIT to the last delivery, for 1 and ``--partitions``
  partitions. Server CPU per row is the hubbub process's user + system time over the burst
  (``/proc/PID/stat``).
- **Latency**: ``--latency-rows`` rows, each in its own transaction, at ``--rate`` per second;
  the latency is from just before the writer sends COMMIT to the subscriber reading the
  publication (one clock: both are in this process), with LISTEN/NOTIFY and with polling only
  (``partition_poll_interval`` 0.3 s, the default).

Interleaved: each variant runs ``--runs`` times in turn; the tables show medians.

    python bench/outbox.py                         # prints the tables
    python bench/outbox.py --docs-section bench/results/outbox.md   # and writes the section
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
import websockets

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.postgres_server import PostgresServer, cluster_directory, find_postgres_bin  # noqa: E402

TABLE = "bench_outbox"
CHANNEL = "bench_outbox_wake"
DDL = f"""
CREATE TABLE {TABLE} (id bigserial PRIMARY KEY, method text NOT NULL, payload jsonb NOT NULL,
                      partition bigint NOT NULL DEFAULT 0, created_at timestamptz NOT NULL DEFAULT now());
CREATE INDEX ON {TABLE} (partition, id);
CREATE FUNCTION {TABLE}_notify() RETURNS trigger AS $$
BEGIN PERFORM pg_notify('{CHANNEL}', NEW.partition::text); RETURN NEW; END; $$ LANGUAGE plpgsql;
CREATE TRIGGER {TABLE}_notify AFTER INSERT ON {TABLE} FOR EACH ROW EXECUTE FUNCTION {TABLE}_notify();
"""
TICKS = os.sysconf("SC_CLK_TCK")
API_KEY = "bench-" + "k" * 32


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


class Hub:
    """``hubbub serve`` reading the outbox, with a subscriber on ``bench`` (channel ``bench``)."""

    def __init__(self, dsn: str, partitions: int, notify: bool) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src"),
               "HUBBUB_POSTGRESQL_CONSUMER_DSN": dsn, "HUBBUB_POSTGRESQL_CONSUMER_OUTBOX_TABLE_NAME": TABLE,
               "HUBBUB_POSTGRESQL_CONSUMER_NUM_PARTITIONS": str(partitions),
               "HUBBUB_POSTGRESQL_CONSUMER_PARTITION_NOTIFICATION_CHANNEL": CHANNEL if notify else "",
               "HUBBUB_API_KEY": API_KEY}
        self.proc = subprocess.Popen([sys.executable, "-m", "hubbub", "serve", "--port", "0"], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert self.proc.stdout is not None
        self.port = 0
        for line in self.proc.stdout:
            m = re.search(r"listening on http://[^ ]+:(\d+)", line)
            if m:
                self.port = int(m.group(1))
                break
        if not self.port:
            raise RuntimeError("hubbub serve did not start")
        self.received: list[tuple[float, Any]] = []
        self.ws: Any = None
        self.reader: asyncio.Task[None] | None = None

    async def subscribe(self) -> None:
        self.ws = await websockets.connect(f"ws://127.0.0.1:{self.port}/connection/websocket", max_size=None)
        await self.ws.send('{"id":1,"connect":{}}\n{"id":2,"subscribe":{"channel":"bench"}}')
        replies = 0
        while replies < 2:
            replies += sum(1 for line in (await self.ws.recv()).split("\n") if '"id":' in line)
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for frame in self.ws:
            now = time.perf_counter()
            for line in frame.split("\n"):
                if line and line != "{}":
                    self.received.append((now, json.loads(line)["push"]["pub"]["data"]))

    async def close(self) -> None:
        if self.reader is not None:
            self.reader.cancel()
        if self.ws is not None:
            await self.ws.close()
        self.proc.terminate()
        self.proc.wait(10)


async def wait_for(hub: Hub, count: int, timeout: float) -> None:
    deadline = time.perf_counter() + timeout
    while len(hub.received) < count:
        if time.perf_counter() > deadline:
            raise RuntimeError(f"{len(hub.received)} of {count} delivered in {timeout} s")
        await asyncio.sleep(0.005)


async def burst(dsn: str, rows: int, partitions: int) -> dict[str, float]:
    conn = await asyncpg.connect(dsn)
    hub = Hub(dsn, partitions, notify=True)
    try:
        await hub.subscribe()
        records = [(json.dumps({"channel": "bench", "data": i}), i % partitions) for i in range(rows)]
        cpu0 = cpu_seconds(hub.proc.pid)
        async with conn.transaction():
            await conn.executemany(f"INSERT INTO {TABLE} (method, payload, partition) VALUES ('publish', $1::jsonb, $2)",
                                   records)
            started = time.perf_counter()
        await wait_for(hub, rows, 120)
        elapsed = hub.received[-1][0] - started
        cpu = cpu_seconds(hub.proc.pid) - cpu0
        assert sorted(d for _, d in hub.received) == list(range(rows)), "lost or duplicated rows"
        return {"rows_per_s": rows / elapsed, "cpu_us_per_row": cpu / rows * 1e6, "seconds": elapsed}
    finally:
        await hub.close()
        await conn.close()


async def latency(dsn: str, rows: int, rate: float, notify: bool) -> dict[str, float]:
    conn = await asyncpg.connect(dsn)
    hub = Hub(dsn, 1, notify=notify)
    try:
        await hub.subscribe()
        sent: list[float] = []
        start = time.perf_counter()
        for i in range(rows):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await conn.execute("BEGIN")
            await conn.execute(f"INSERT INTO {TABLE} (method, payload) VALUES ('publish', $1::jsonb)",
                               json.dumps({"channel": "bench", "data": i}))
            sent.append(time.perf_counter())
            await conn.execute("COMMIT")
        await wait_for(hub, rows, 60)
        lat = sorted((at - sent[d]) * 1000 for at, d in hub.received)
        return {"p50_ms": lat[len(lat) // 2], "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))],
                "max_ms": lat[-1]}
    finally:
        await hub.close()
        await conn.close()


async def api_latency(dsn: str, rows: int, rate: float) -> dict[str, float]:
    """The peer: the same publications through ``POST /api/publish`` (HTTP/1.1 keep-alive), timed
    from just before the request is sent."""
    hub = Hub(dsn, 1, notify=True)
    try:
        await hub.subscribe()
        reader, writer = await asyncio.open_connection("127.0.0.1", hub.port)
        sent: list[float] = []
        start = time.perf_counter()
        for i in range(rows):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            body = json.dumps({"channel": "bench", "data": i}).encode()
            sent.append(time.perf_counter())
            writer.write(b"POST /api/publish HTTP/1.1\r\nHost: bench\r\nX-API-Key: " + API_KEY.encode()
                         + b"\r\nContent-Type: application/json\r\nContent-Length: " + str(len(body)).encode()
                         + b"\r\n\r\n" + body)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
            await reader.readexactly(length)
        await wait_for(hub, rows, 60)
        writer.close()
        lat = sorted((at - sent[d]) * 1000 for at, d in hub.received)
        return {"p50_ms": lat[len(lat) // 2], "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))],
                "max_ms": lat[-1]}
    finally:
        await hub.close()


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--burst", type=int, default=20000, help="rows per burst")
    parser.add_argument("--partitions", type=int, default=4, help="partitions of the second burst variant")
    parser.add_argument("--latency-rows", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=200.0, help="rows per second in the latency runs")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--docs-section", type=Path, help="write the docs/benchmarks.md section here")
    args = parser.parse_args()
    bindir = find_postgres_bin()
    if bindir is None:
        sys.exit("PostgreSQL is not installed (apt-get install postgresql)")
    began = time.time()
    directory = cluster_directory()
    server = PostgresServer(bindir, directory / "cluster")
    bursts: dict[int, list[dict[str, float]]] = {1: [], args.partitions: []}
    lats: dict[str, list[dict[str, float]]] = {"LISTEN/NOTIFY": [], "polling (0.3 s)": [],
                                               "peer: POST /api/publish, no outbox": []}
    try:
        server.init()
        server.start()
        for run in range(args.runs):
            for partitions in bursts:
                dsn = server.create_database(f"burst_{run}_{partitions}")
                server.psql(DDL, database=dsn.rsplit("/", 1)[1])
                bursts[partitions].append(await burst(dsn, args.burst, partitions))
                print(f"burst {partitions} partitions: {bursts[partitions][-1]}", flush=True)
            for number, mode in enumerate(lats):
                dsn = server.create_database(f"latency_{run}_{number}")
                server.psql(DDL, database=dsn.rsplit("/", 1)[1])
                if mode.startswith("peer"):
                    lats[mode].append(await api_latency(dsn, args.latency_rows, args.rate))
                else:
                    lats[mode].append(await latency(dsn, args.latency_rows, args.rate, notify="NOTIFY" in mode))
                print(f"latency {mode}: {lats[mode][-1]}", flush=True)
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)

    def med(runs: list[dict[str, float]], key: str) -> float:
        return statistics.median(r[key] for r in runs)

    command = "python bench/outbox.py" + "".join(
        f" --{k.replace('_', '-')} {v}" for k, v in (("burst", args.burst), ("partitions", args.partitions),
                                                      ("latency_rows", args.latency_rows), ("rate", args.rate),
                                                      ("runs", args.runs)))
    if args.docs_section:
        command += f" --docs-section {args.docs_section}"
    lines = [
        "## Transactional outbox (PostgreSQL consumer)",
        "",
        f"Measured by `{command}` (finished {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{time.time() - began:.0f} s; not part of `--suite`): a throwaway PostgreSQL "
        f"{bindir.parent.name} cluster (Debian's package, `fsync=off`), `hubbub serve` (memory broker) reading "
        "the outbox table (`docs/howto/outbox.md`, LISTEN/NOTIFY by a trigger, 100 rows per claim), and in the "
        "bench's process the writer (asyncpg) and one subscriber (`websockets`, Centrifugo JSON protocol). "
        f"Burst: {args.burst:,} `publish` rows committed in one transaction; rows/s from the COMMIT to the last "
        "delivery; server CPU is hubbub's user + system time over the burst. Latency: "
        f"{args.latency_rows:,} rows, one transaction each, at {args.rate:g} rows/s, from just before the "
        "writer sends COMMIT to the subscriber reading the publication (one clock, one process). Median of "
        f"{args.runs} interleaved runs; every burst delivered every row once.",
        "",
        "| burst | rows/s end to end | server CPU µs per row |",
        "| --- | ---: | ---: |",
    ]
    for partitions, runs in bursts.items():
        lines.append(f"| {partitions} partition{'s' if partitions > 1 else ''} | {med(runs, 'rows_per_s'):,.0f} | "
                     f"{med(runs, 'cpu_us_per_row'):.0f} |")
    lines += ["", "| commit to delivery | p50 ms | p99 ms | max ms |", "| --- | ---: | ---: | ---: |"]
    for mode, runs in lats.items():
        lines.append(f"| {mode} | {med(runs, 'p50_ms'):.1f} | {med(runs, 'p99_ms'):.1f} | {med(runs, 'max_ms'):.1f} |")
    notify, poll, api = (med(runs, "p50_ms") for runs in lats.values())
    one, many = (med(runs, "rows_per_s") for runs in bursts.values())
    lines += ["", f"From COMMIT to delivery takes {notify / api:.1f}x the median time of a direct `POST /api/publish` "
              "(from request to delivery) in the same run: the price of the outbox's guarantee is a NOTIFY, a "
              f"claim and a delete per batch. LISTEN/NOTIFY cuts the median latency {poll / notify:.0f}x against "
              "polling every 0.3 s; "
              f"{args.partitions} partitions carry {many / one:.2f}x the rows/s of one (the 2 cores are shared by "
              "PostgreSQL, hubbub and the bench's writer and subscriber).", ""]
    text = "\n".join(lines)
    print(text)
    if args.docs_section:
        args.docs_section.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
