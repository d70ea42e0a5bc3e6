"""Counters of a node and their Prometheus exposition at ``GET /metrics``.

The hot path only adds to plain integers in :class:`Stats` (once per flush,
per received message, per command); ``prometheus-client`` reads them at scrape
time through a custom collector, so metrics cost nothing per delivery.

Every worker exposes the same metric names with a ``worker`` label.

Metrics (all prefixed ``hubbub_``):

=====================================  ===========================================
connections{kind}                       open WebSocket connections (protocol, relay, endpoint)
subscriptions / channels                local subscriptions and active channels
messages_received_total / _sent_total   WebSocket messages in / frames out
bytes_received_total / bytes_sent_total bytes read from / written to sockets
publications_total{source}              publications made here (client, api, relay, app)
disconnects_total{code}                 connections closed by the server, by close code
command_duration_seconds{method}        protocol command latency (histogram)
broker_errors_total                     failed broker operations
broker_reconnects_total                 times the broker came back
broker_up                               1 while the broker is reachable
pending_output_bytes                    output queued in user space and transports
slow_disconnects_total                  connections closed with 3008
=====================================  ===========================================
"""

from __future__ import annotations

import bisect
import collections
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .server import Server

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
        self.publications: collections.Counter[str] = collections.Counter()
        self.disconnects: collections.Counter[int] = collections.Counter()
        self.commands: dict[str, Histogram] = collections.defaultdict(Histogram)
        self.broker_errors = 0
        self.broker_reconnects = 0
        self.slow = 0


class _Collector:
    def __init__(self, server: Server, worker: str) -> None:
        self.server = server
        self.worker = worker

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        server, stats, w = self.server, self.server.stats, self.worker
        hub = server.hub

        def gauge(name: str, doc: str, value: float, **labels: str) -> Any:
            g = GaugeMetricFamily(f"hubbub_{name}", doc, labels=["worker", *labels])
            g.add_metric([w, *labels.values()], value)
            return g

        def counter(name: str, doc: str, value: float) -> Any:
            c = CounterMetricFamily(f"hubbub_{name}", doc, labels=["worker"])
            c.add_metric([w], value)
            return c

        kinds = collections.Counter(type(c.session).__name__ for c in server.websockets)
        conns = GaugeMetricFamily("hubbub_connections", "Open WebSocket connections", labels=["worker", "kind"])
        for cls, kind in (("ClientSession", "protocol"), ("RelaySession", "relay"), ("EndpointSession", "endpoint")):
            conns.add_metric([w, kind], kinds.get(cls, 0))
        yield conns
        channels = hub.channels()
        yield gauge("subscriptions", "Local subscriptions", sum(channels.values()))
        yield gauge("channels", "Channels with local subscribers", len(channels))
        yield counter("messages_received", "WebSocket messages received", stats.messages_in)
        yield counter("messages_sent", "WebSocket frames sent", stats.messages_out)
        yield counter("bytes_received", "Bytes read from sockets", stats.bytes_in)
        yield counter("bytes_sent", "Bytes written to sockets", stats.bytes_out)
        pubs = CounterMetricFamily("hubbub_publications", "Publications made on this node", labels=["worker", "source"])
        for source in ("client", "api", "relay", "app"):
            pubs.add_metric([w, source], stats.publications.get(source, 0))
        yield pubs
        disc = CounterMetricFamily("hubbub_disconnects", "Connections closed by the server", labels=["worker", "code"])
        for code, n in sorted(stats.disconnects.items()):
            disc.add_metric([w, str(code)], n)
        yield disc
        hist = HistogramMetricFamily("hubbub_command_duration_seconds", "Protocol command latency",
                                     labels=["worker", "method"])
        for method, h in sorted(stats.commands.items()):
            cumulative, running = [], 0
            for bound, n in zip((*BUCKETS, float("inf")), h.counts):
                running += n
                cumulative.append(("+Inf" if bound == float("inf") else str(bound), running))
            hist.add_metric([w, method], cumulative, h.total)
        yield hist
        yield counter("broker_errors", "Failed broker operations", stats.broker_errors)
        yield counter("broker_reconnects", "Times the broker came back", stats.broker_reconnects)
        yield gauge("broker_up", "1 while the broker is reachable", 1 if hub.broker.healthy else 0)
        pending = 0
        for conn in server.connections:
            pending += conn._out_size
            if conn.transport is not None and not conn.lost:
                pending += conn.transport.get_write_buffer_size()
        yield gauge("pending_output_bytes", "Output queued for clients", pending)
        yield counter("slow_disconnects", "Connections closed with 3008 slow", stats.slow)


def render(server: Server) -> bytes:
    """The Prometheus text exposition of ``server``'s metrics."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(server, os.environ.get("HUBBUB_WORKER_INDEX", "0")))
    return generate_latest(registry)
