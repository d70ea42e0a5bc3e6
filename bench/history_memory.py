"""Memory of the memory broker with many channels of full history.

    .venv/bin/python bench/history_memory.py [--channels 10000] [--history-size 100] [--payload 100]

Fills every channel's stream past ``history_size`` (twice over) and reports the
process RSS growth per channel and per stored publication, then publishes as much
again to show that memory stays flat once streams are full.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json

from hubbub.brokers.base import Publication
from hubbub.brokers.memory import MemoryBroker


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, default=10_000)
    parser.add_argument("--history-size", type=int, default=100)
    parser.add_argument("--payload", type=int, default=100, help="bytes per publication")
    args = parser.parse_args()

    broker = MemoryBroker(sweep_interval=0)
    await broker.start(None)  # type: ignore[arg-type]  # no node subscribed: storage only
    data = json.dumps("x" * (args.payload - 2)).encode()
    gc.collect()
    base = rss_kib()

    async def fill() -> None:
        for _ in range(2 * args.history_size):
            for ch in range(args.channels):
                await broker.publish(f"c{ch}", Publication(data[:-1] + b"\""), history_size=args.history_size, history_ttl=300)

    await fill()
    gc.collect()
    full = rss_kib()
    await fill()
    gc.collect()
    again = rss_kib()
    await fill()
    gc.collect()
    third = rss_kib()
    stored = args.channels * args.history_size
    print(f"channels={args.channels} history_size={args.history_size} payload={args.payload} B")
    print(f"stored publications: {stored:,} (published {6 * stored:,})")
    print(f"RSS growth when full: {(full - base) / 1024:.1f} MiB "
          f"= {(full - base) * 1024 / stored:.0f} B per stored publication")
    print(f"RSS growth after publishing as much again: {(again - full) / 1024:.1f} MiB, "
          f"and again: {(third - again) / 1024:.1f} MiB (allocator warm-up, then flat)")


if __name__ == "__main__":
    asyncio.run(main())
