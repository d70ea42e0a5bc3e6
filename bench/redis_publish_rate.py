"""Publications per second that one process pushes into Redis through the broker.

    python bench/redis_publish_rate.py --url redis://127.0.0.1:6379/0 [--producers 200]
        [--count 200000] [--seconds 20] [--channels 100] [--history 0|1] [--size 100]

``--producers`` tasks publish concurrently, each awaiting its publication's
acknowledgement before the next (as a client session does), over ``--channels``
channels, until ``--count`` publications were acknowledged or ``--seconds``
passed (both bounds hold). With ``--history 1`` each publication goes through
the publish script (stream, offset, epoch); with ``0`` it is a plain PUBLISH.

Prints the rate, and the broker's round trips per publication (the
``broker_publish_round_trips / broker_publications`` counters): one pipeline
carries what every producer published in one loop iteration.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from hubbub.brokers.base import ClientInfo, Publication
from hubbub.brokers.redis import RedisBroker


class Ignore:
    """A broker event handler that drops everything (this bench only publishes)."""

    def on_publication(self, channel: str, pub: Publication) -> None: ...

    def on_join(self, channel: str, info: ClientInfo) -> None: ...

    def on_leave(self, channel: str, info: ClientInfo) -> None: ...

    def on_stream_gap(self, channel: str) -> None: ...

    def on_broker_reconnect(self) -> None: ...


async def main(args: argparse.Namespace) -> int:
    broker = RedisBroker(args.url, prefix=f"bench{int(time.time())}")
    await broker.start(Ignore())
    if not broker.healthy:
        print(f"redis at {args.url} is unreachable", file=sys.stderr)
        await broker.close()
        return 2
    data = b'"' + b"x" * max(args.size - 2, 0) + b'"'
    options = {"history_size": 100, "history_ttl": 60.0} if args.history else {}
    done = 0
    errors = 0
    deadline = time.monotonic() + args.seconds

    async def produce(index: int) -> None:
        nonlocal done, errors
        channel = f"ch{index % args.channels}"
        while done < args.count and time.monotonic() < deadline:
            done += 1
            try:
                await broker.publish(channel, Publication(data), **options)
            except Exception:  # noqa: BLE001 - counted, the run goes on
                errors += 1

    stats = broker.stats
    trips0, pubs0 = stats.broker_publish_round_trips, stats.broker_publications
    started = time.perf_counter()
    await asyncio.gather(*(produce(i) for i in range(args.producers)))
    elapsed = time.perf_counter() - started
    trips = stats.broker_publish_round_trips - trips0
    pubs = stats.broker_publications - pubs0
    await broker.close()
    print(f"producers={args.producers} channels={args.channels} history={args.history} size={args.size}")
    print(f"publications={done} errors={errors} seconds={elapsed:.3f} rate={done / elapsed:,.0f}/s")
    print(f"round trips per publication: {trips / max(pubs, 1):.4f} ({trips} pipelines for {pubs} publications)")
    return 1 if errors else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--producers", type=int, default=200)
    parser.add_argument("--count", type=int, default=200_000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--channels", type=int, default=100)
    parser.add_argument("--history", type=int, choices=(0, 1), default=1)
    parser.add_argument("--size", type=int, default=100)
    sys.exit(asyncio.run(main(parser.parse_args())))
