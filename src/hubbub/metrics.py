"""Counters of a node and their Prometheus exposition at ``GET /metrics``.

The hot path only adds to plain integers in :class:`Stats`; a custom collector
reads them at scrape time, so metrics cost nothing per delivery. Every worker
exposes the same names with a ``worker`` label. Metrics (all prefixed ``hubbub_``):

=====================================  ===========================================
connections{kind}                       open connections: WebSocket ones (protocol, relay,
                                        endpoint) and Socket.IO sessions on either transport
                                        (socketio)
subscriptions / channels                local subscriptions and active channels
messages_received_total / _sent_total   WebSocket messages in / frames out
bytes_received_total / bytes_sent_total bytes read from / written to sockets
publications_total{source}              publications made here (client, api, relay, app)
disconnects_total{code}                 connections closed by the server, by close code
command_duration_seconds{method}        protocol command latency (histogram)
broker_errors_total                     failed broker operations
broker_reconnects_total                 times the broker came back
broker_up                               1 while the broker is reachable
broker_round_trips_total                requests to the broker's backend (a pipeline counts once)
broker_publications_total               publications, joins and leaves sent to the backend
broker_publish_round_trips_total        the pipelines that carried them (ratio: round trips
                                        per publication)
pending_output_bytes                    output queued in user space and transports
slow_disconnects_total                  connections closed with 3008
consumer_rows_total{consumer,outcome}   rows an async consumer took (processed, malformed,
                                        failed: skipped after its attempts)
consumer_errors_total{consumer,kind}    its errors: source (the database failed) and command
                                        (a temporary failure, retried)
proxy_call_duration_seconds{event}      backend proxy call latency (histogram; hubbub.proxy)
proxy_errors_total{event}               backend proxy calls that failed (the client got error 100)
=====================================  ===========================================

See ``docs/design.md``, "Layers" (transports).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any, Protocol

from .hub import Hub
from .stats import BUCKETS, Stats


class Node(Protocol):
    """What the exposition reads from a serving node."""

    stats: Stats
    hub: Hub

    def session_kinds(self) -> dict[str, int]:
        """Open connections by kind: WebSocket ones (protocol, relay, endpoint) and Socket.IO
        sessions on WebSocket or long-polling (socketio)."""
        ...

    def pending_output(self) -> int:
        """Bytes queued for clients (user space and transports)."""
        ...

class _Collector:
    def __init__(self, node: Node, worker: str) -> None:
        self.node = node
        self.worker = worker

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        node, stats, w = self.node, self.node.stats, self.worker
        hub = node.hub

        def gauge(name: str, doc: str, value: float, **labels: str) -> Any:
            g = GaugeMetricFamily(f"hubbub_{name}", doc, labels=["worker", *labels])
            g.add_metric([w, *labels.values()], value)
            return g

        def counter(name: str, doc: str, value: float) -> Any:
            c = CounterMetricFamily(f"hubbub_{name}", doc, labels=["worker"])
            c.add_metric([w], value)
            return c

        kinds = node.session_kinds()
        conns = GaugeMetricFamily("hubbub_connections", "Open connections (socketio: Socket.IO sessions)",
                                  labels=["worker", "kind"])
        for kind in ("protocol", "relay", "endpoint", "socketio"):
            conns.add_metric([w, kind], kinds.get(kind, 0))
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
            for bound, n in zip((*BUCKETS, float("inf")), h.counts, strict=True):
                running += n
                cumulative.append(("+Inf" if bound == float("inf") else str(bound), running))
            hist.add_metric([w, method], cumulative, h.total)
        yield hist
        calls = HistogramMetricFamily("hubbub_proxy_call_duration_seconds", "Backend proxy call latency",
                                      labels=["worker", "event"])
        for event, h in sorted(stats.proxy_calls.items()):
            cumulative, running = [], 0
            for bound, n in zip((*BUCKETS, float("inf")), h.counts, strict=True):
                running += n
                cumulative.append(("+Inf" if bound == float("inf") else str(bound), running))
            calls.add_metric([w, event], cumulative, h.total)
        yield calls
        proxy_errors = CounterMetricFamily("hubbub_proxy_errors", "Backend proxy calls that failed (error 100)",
                                           labels=["worker", "event"])
        for event, n in sorted(stats.proxy_errors.items()):
            proxy_errors.add_metric([w, event], n)
        yield proxy_errors
        yield counter("broker_errors", "Failed broker operations", stats.broker_errors)
        yield counter("broker_reconnects", "Times the broker came back", stats.broker_reconnects)
        yield gauge("broker_up", "1 while the broker is reachable", 1 if hub.broker.healthy else 0)
        yield counter("broker_round_trips", "Requests to the broker's backend (a pipeline counts once)",
                      stats.broker_round_trips)
        yield counter("broker_publications", "Publications, joins and leaves sent to the broker's backend",
                      stats.broker_publications)
        yield counter("broker_publish_round_trips", "Pipelines that carried publications to the backend",
                      stats.broker_publish_round_trips)
        yield gauge("pending_output_bytes", "Output queued for clients", node.pending_output())
        yield counter("slow_disconnects", "Connections closed with 3008 slow", stats.slow)
        rows = CounterMetricFamily("hubbub_consumer_rows", "Rows (commands) an async consumer took",
                                   labels=["worker", "consumer", "outcome"])
        for (consumer, outcome), n in sorted(stats.consumer_rows.items()):
            rows.add_metric([w, consumer, outcome], n)
        yield rows
        errors = CounterMetricFamily("hubbub_consumer_errors", "Errors of an async consumer (retried)",
                                     labels=["worker", "consumer", "kind"])
        for (consumer, kind), n in sorted(stats.consumer_errors.items()):
            errors.add_metric([w, consumer, kind], n)
        yield errors


def render(node: Node) -> bytes:
    """The Prometheus text exposition of ``node``'s metrics."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(node, os.environ.get("HUBBUB_WORKER_INDEX", "0")))
    return generate_latest(registry)
