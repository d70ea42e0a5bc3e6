"""GET /metrics after a known workload: the counters say what happened."""

from __future__ import annotations

import asyncio
import re
import urllib.request

import websockets

from hubbub.server import Server

from .conftest import TIMEOUT, proto_client, ws_url


def scrape(server: Server) -> dict[str, float]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=TIMEOUT).read().decode()
    samples = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[re.sub(r',?worker="\d+"', "", name).replace("{}", "")] = float(value)
    return samples


async def test_metrics_count_a_known_workload(start_server, clients: list) -> None:
    server = await start_server(max_message_size=1000)
    sub, pub = await proto_client(server), await proto_client(server)
    relay = await websockets.connect(ws_url(server, "/ws/m"), ping_interval=None)
    clients += [sub, pub, relay]
    await sub.call("subscribe", {"channel": "m"})
    async with asyncio.timeout(TIMEOUT):
        while server.hub.channels().get("m", 0) < 2:
            await asyncio.sleep(0.01)
    for i in range(5):
        await pub.call("publish", {"channel": "m", "data": i})
    await relay.send("from relay")
    for _ in range(6):
        await sub.next_push()
    too_big = await proto_client(server)
    await too_big.ws.send("x" * 2000)
    assert (await too_big.closed())[0] == 1009
    await sub.call("ping")  # make sure everything before it was flushed

    m = await asyncio.to_thread(scrape, server)
    assert m['hubbub_connections{kind="protocol"}'] == 2
    assert m['hubbub_connections{kind="relay"}'] == 1
    assert m["hubbub_subscriptions"] == 2 and m["hubbub_channels"] == 1
    assert m['hubbub_publications_total{source="client"}'] == 5
    assert m['hubbub_publications_total{source="relay"}'] == 1
    assert m['hubbub_publications_total{source="api"}'] == 0
    assert m['hubbub_command_duration_seconds_count{method="publish"}'] == 5
    assert m['hubbub_command_duration_seconds_count{method="subscribe"}'] == 1
    assert m["hubbub_messages_received_total"] >= 2 + 1 + 5 + 1 + 1 + 1
    assert m["hubbub_bytes_received_total"] > 2000
    assert m["hubbub_bytes_sent_total"] > 0 and m["hubbub_messages_sent_total"] > 0
    assert m["hubbub_broker_up"] == 1 and m["hubbub_broker_errors_total"] == 0
    assert m["hubbub_pending_output_bytes"] >= 0
    assert m['hubbub_disconnects_total{code="1009"}'] == 1
    # a server-initiated disconnect is counted by code
    bad = await proto_client(server, connect=False)
    await bad.ws.send("not json")
    assert (await bad.closed())[0] == 3501
    m = await asyncio.to_thread(scrape, server)
    assert m['hubbub_disconnects_total{code="3501"}'] == 1


async def test_metrics_count_socketio_sessions_on_either_transport(start_server, clients: list) -> None:
    server = await start_server()
    m = await asyncio.to_thread(scrape, server)
    assert m['hubbub_connections{kind="socketio"}'] == 0
    on_ws = await websockets.connect(ws_url(server, "/socket.io/?EIO=4&transport=websocket"), ping_interval=None)
    clients.append(on_ws)
    assert (await on_ws.recv()).startswith("0{")
    polling = f"http://127.0.0.1:{server.port}/socket.io/?EIO=4&transport=polling"
    opened = await asyncio.to_thread(lambda: urllib.request.urlopen(polling, timeout=TIMEOUT).read())
    assert opened.startswith(b"0{")
    m = await asyncio.to_thread(scrape, server)
    assert m['hubbub_connections{kind="socketio"}'] == 2
    assert m['hubbub_connections{kind="protocol"}'] == 0  # a Socket.IO WebSocket is not a protocol one
