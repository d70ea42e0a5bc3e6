"""Write docs/grafana-dashboard.json: a Grafana dashboard of hubbub's /metrics.

The metric names are those of :mod:`hubbub.metrics` (tests/test_admin.py checks
that every name used here is exposed). Run after changing the panels:
``python tools/gen_grafana.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "docs" / "grafana-dashboard.json"
DS = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'instance=~"$instance"'
RATE = "$__rate_interval"


def target(expr: str, legend: str, ref: str) -> dict:
    return {"datasource": DS, "expr": expr, "legendFormat": legend, "refId": ref, "range": True}


def panel(pid: int, title: str, targets: list[tuple[str, str]], x: int, y: int, *, unit: str = "short",
          w: int = 12, h: int = 8, kind: str = "timeseries", description: str = "") -> dict:
    p = {
        "id": pid, "type": kind, "title": title, "description": description, "datasource": DS,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "targets": [target(expr, legend, chr(ord("A") + i)) for i, (expr, legend) in enumerate(targets)],
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                    "tooltip": {"mode": "multi", "sort": "desc"}},
    }
    if kind == "stat":
        p["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                        "colorMode": "value", "graphMode": "area", "textMode": "auto"}
    return p


def dashboard() -> dict:
    panels = [
        panel(1, "Connections", [(f"sum(hubbub_connections{{{SEL}}})", "connections")], 0, 0, w=6, h=4, kind="stat"),
        panel(2, "Publications/s", [(f"sum(rate(hubbub_publications_total{{{SEL}}}[{RATE}]))", "publications/s")],
              6, 0, w=6, h=4, kind="stat", unit="ops"),
        panel(3, "Bytes out/s", [(f"sum(rate(hubbub_bytes_sent_total{{{SEL}}}[{RATE}]))", "bytes out/s")],
              12, 0, w=6, h=4, kind="stat", unit="Bps"),
        panel(4, "Nodes with the broker down", [(f"count(hubbub_broker_up{{{SEL}}} == 0) or vector(0)", "down")],
              18, 0, w=6, h=4, kind="stat"),
        panel(5, "Connections by node and kind",
              [(f"sum by (instance, worker, kind) (hubbub_connections{{{SEL}}})", "{{instance}} w{{worker}} {{kind}}")],
              0, 4),
        panel(6, "Subscriptions and channels",
              [(f"sum by (instance, worker) (hubbub_subscriptions{{{SEL}}})", "subscriptions {{instance}} w{{worker}}"),
               (f"sum by (instance, worker) (hubbub_channels{{{SEL}}})", "channels {{instance}} w{{worker}}")], 12, 4),
        panel(7, "Publications/s by source",
              [(f"sum by (source) (rate(hubbub_publications_total{{{SEL}}}[{RATE}]))", "{{source}}")], 0, 12, unit="ops"),
        panel(8, "Messages out/s and in/s by node",
              [(f"sum by (instance, worker) (rate(hubbub_messages_sent_total{{{SEL}}}[{RATE}]))", "out {{instance}} w{{worker}}"),
               (f"sum by (instance, worker) (rate(hubbub_messages_received_total{{{SEL}}}[{RATE}]))", "in {{instance}} w{{worker}}")],
              12, 12, unit="ops",
              description="Writes of WebSocket frames and HTTP responses (a burst joined into one write counts once)."),
        panel(9, "Bytes out/s and in/s by node",
              [(f"sum by (instance, worker) (rate(hubbub_bytes_sent_total{{{SEL}}}[{RATE}]))", "out {{instance}} w{{worker}}"),
               (f"sum by (instance, worker) (rate(hubbub_bytes_received_total{{{SEL}}}[{RATE}]))", "in {{instance}} w{{worker}}")],
              0, 20, unit="Bps"),
        panel(10, "Disconnects/s by close code",
              [(f"sum by (code) (rate(hubbub_disconnects_total{{{SEL}}}[{RATE}]))", "{{code}}")], 12, 20, unit="ops",
              description="3008 slow (output bound), 3012 no pong, 3001 shutdown, 3503 force disconnect, 3502 stale, ..."),
        panel(11, "Broker up (1) / down (0) by node",
              [(f"min by (instance, worker) (hubbub_broker_up{{{SEL}}})", "{{instance}} w{{worker}}")], 0, 28),
        panel(12, "Broker errors/s and reconnects/s",
              [(f"sum by (instance) (rate(hubbub_broker_errors_total{{{SEL}}}[{RATE}]))", "errors {{instance}}"),
               (f"sum by (instance) (rate(hubbub_broker_reconnects_total{{{SEL}}}[{RATE}]))", "reconnects {{instance}}")],
              12, 28, unit="ops"),
        panel(13, "Command latency p50 / p99 by method",
              [(f"histogram_quantile(0.5, sum by (le, method) (rate(hubbub_command_duration_seconds_bucket{{{SEL}}}[{RATE}])))", "p50 {{method}}"),
               (f"histogram_quantile(0.99, sum by (le, method) (rate(hubbub_command_duration_seconds_bucket{{{SEL}}}[{RATE}])))", "p99 {{method}}")],
              0, 36, unit="s"),
        panel(14, "Output waiting for slow clients, and 3008 disconnects/s",
              [(f"sum by (instance, worker) (hubbub_pending_output_bytes{{{SEL}}})", "pending bytes {{instance}} w{{worker}}"),
               (f"sum by (instance) (rate(hubbub_slow_disconnects_total{{{SEL}}}[{RATE}]))", "3008/s {{instance}}")],
              12, 36),
    ]
    return {
        "title": "hubbub", "uid": "hubbub-overview", "tags": ["hubbub"], "timezone": "browser",
        "schemaVersion": 39, "version": 1, "editable": True, "refresh": "10s",
        "time": {"from": "now-15m", "to": "now"},
        "description": "hubbub's /metrics (hubbub.metrics): connections, flow, disconnects by code, broker state.",
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Prometheus"},
            {"name": "instance", "type": "query", "datasource": DS, "label": "node",
             "query": {"query": "label_values(hubbub_broker_up, instance)", "refId": "instance"},
             "definition": "label_values(hubbub_broker_up, instance)", "refresh": 2,
             "includeAll": True, "multi": True, "allValue": ".*",
             "current": {"text": "All", "value": "$__all"}},
        ]},
        "panels": panels,
        "annotations": {"list": []},
    }


if __name__ == "__main__":
    OUT.write_text(json.dumps(dashboard(), indent=2) + "\n")
    print(f"wrote {OUT}")
