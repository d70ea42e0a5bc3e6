"""A node's counters: plain integers, updated on the hot path without locks.

The hub, the sessions and the connections add to one :class:`Stats`;
:mod:`hubbub.metrics` reads it at scrape time. Nothing here allocates per
delivery.
"""

from __future__ import annotations

import bisect
import collections

#: Upper bounds of the command latency buckets (seconds).
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Histogram:
    """A fixed-bucket latency histogram (seconds)."""

    __slots__ = ("counts", "total", "count")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.total = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.total += seconds
        self.count += 1


class Stats:
    """Plain counters, updated on the hot path without locks."""

    def __init__(self) -> None:
        self.messages_in = 0
        self.bytes_in = 0
        self.messages_out = 0
        self.bytes_out = 0
        #: publications handed to local subscribers (one per subscriber per
        #: publication, counted once per publication and codec in the fan-out)
        self.deliveries = 0
        self.publications: collections.Counter[str] = collections.Counter()
        self.disconnects: collections.Counter[int] = collections.Counter()
        self.commands: dict[str, Histogram] = collections.defaultdict(Histogram)
        self.broker_errors = 0
        self.broker_reconnects = 0
        #: requests sent to the broker's backend that waited for an answer (one
        #: pipeline of many publications counts once); 0 for the memory broker
        self.broker_round_trips = 0
        #: publications, joins and leaves sent to the backend, and the round trips
        #: (pipelines) that carried them: their ratio is round trips per publication
        self.broker_publications = 0
        self.broker_publish_round_trips = 0
        self.slow = 0
        #: rows (messages) of the async consumers (hubbub.consumers) by (consumer, outcome):
        #: processed, malformed (skipped), failed (skipped after its attempts)
        self.consumer_rows: collections.Counter[tuple[str, str]] = collections.Counter()
        #: errors of the async consumers by (consumer, kind): source (the database
        #: failed: retried with backoff), command (a command failed for a temporary reason: retried)
        self.consumer_errors: collections.Counter[tuple[str, str]] = collections.Counter()
        #: backend proxy calls by event: their durations, and the calls that failed (hubbub.proxy)
        self.proxy_calls: dict[str, Histogram] = collections.defaultdict(Histogram)
        self.proxy_errors: collections.Counter[str] = collections.Counter()

    def items(self) -> dict[str, int]:
        """The cumulative counters by name, for the cluster's node snapshots
        (``info``'s ``metrics.items``): ``messages_in``, ``bytes_in``,
        ``messages_out``, ``bytes_out``, ``deliveries``, ``publications`` (total) and
        ``publications.<source>``, ``disconnects.<code>``,
        ``commands.<method>`` (protocol commands served), ``broker_errors``,
        ``broker_reconnects``, ``slow`` (3008 closes). Read at snapshot time only."""
        out = {
            "messages_in": self.messages_in,
            "bytes_in": self.bytes_in,
            "messages_out": self.messages_out,
            "bytes_out": self.bytes_out,
            "deliveries": self.deliveries,
            "publications": sum(self.publications.values()),
            "broker_errors": self.broker_errors,
            "broker_reconnects": self.broker_reconnects,
            "slow": self.slow,
        }
        for source, n in self.publications.items():
            out[f"publications.{source}"] = n
        for code, n in self.disconnects.items():
            out[f"disconnects.{code}"] = n
        for method, histogram in self.commands.items():
            out[f"commands.{method}"] = histogram.count
        return out
