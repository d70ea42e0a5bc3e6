"""The operator's dashboard (``hubbub.admin``): the sampler and its ring buffer
with an injected clock (no sockets), the setting that turns it on, and its
HTTP endpoints over real sockets (login, refusals, actions).

The browser tests of the page are in ``tests/test_admin_browser.py``.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from hubbub.admin import (
    CAPACITY,
    COOKIE,
    Ring,
    Sampler,
    check_session,
    make_session,
)
from hubbub.config import Config, env_settings
from hubbub.http import HTTPRequest
from hubbub.server import Server

from .conftest import TIMEOUT, proto_client
from .redis_server import redis_server, redis_shards  # noqa: F401

SECRET = "correct horse battery staple"


# -- the ring buffer and the sampler (injected clock, no sockets) ------------------------------------


def node(uid: str, *, clients: int = 0, subs: int = 0, **items: float) -> dict[str, Any]:
    entry: dict[str, Any] = {"uid": uid, "name": f"node-{uid}", "version": "0.1.0", "num_clients": clients,
                             "num_users": 0, "num_subs": subs, "num_channels": 0, "uptime": 1}
    if items:
        entry["metrics"] = {"interval": 1.0, "items": {k.replace("__", "."): v for k, v in items.items()}}
    return entry


def test_ring_keeps_the_last_900_samples_and_answers_since() -> None:
    ring = Ring()
    for t in range(1, 2001):
        ring.append({"t": float(t)})
    assert len(ring) == CAPACITY == 900
    assert ring.since(0)[0]["t"] == 1101.0 and ring.since(0)[-1]["t"] == 2000.0
    assert [s["t"] for s in ring.since(1997.0)] == [1998.0, 1999.0, 2000.0]
    assert ring.since(2000.0) == []


def test_sampler_computes_rates_from_cumulative_counters() -> None:
    sampler = Sampler(lambda: None)  # type: ignore[arg-type,return-value]
    first = sampler.record([node("a", clients=3, subs=5, publications=10, messages_out=100, bytes_out=1000)], 100.0)
    point = first["nodes"]["a"]
    assert point["clients"] == 3 and point["subs"] == 5
    assert point["pubs"] is None and point["deliveries"] is None  # no previous sample: no rate yet
    second = sampler.record([node("a", clients=4, subs=5, publications=30, messages_out=300, bytes_out=5000,
                                  disconnects__3008=2)], 102.0)
    point = second["nodes"]["a"]
    assert point["pubs"] == 10.0 and point["deliveries"] == 100.0 and point["bytes_out"] == 2000.0
    assert point["disconnects"] == {"3008": 1.0}
    # a counter that went down (a restarted node) counts from zero
    third = sampler.record([node("a", publications=4, messages_out=300, bytes_out=5000, disconnects__3008=2)], 103.0)
    assert third["nodes"]["a"]["pubs"] == 4.0 and third["nodes"]["a"]["deliveries"] == 0.0
    assert third["nodes"]["a"]["disconnects"] == {}
    assert [s["t"] for s in sampler.ring.since(0)] == [100.0, 102.0, 103.0]
    # a node that counts deliveries (publications times subscribers) reports them instead of messages out
    sampler.record([node("a", messages_out=300, deliveries=50)], 104.0)
    assert sampler.record([node("a", messages_out=310, deliveries=250)], 105.0)["nodes"]["a"]["deliveries"] == 200.0


def test_sampler_sums_the_cluster_and_keeps_nodes_without_metrics() -> None:
    sampler = Sampler(lambda: None)  # type: ignore[arg-type,return-value]
    up = {"name": "redis", "up": True, "rtt_ms": 0.5}
    a = {**node("a", clients=2, subs=2, messages_out=0), "broker": up}
    b = {**node("b", clients=3, subs=1, messages_out=0), "broker": {"name": "redis", "up": True, "rtt_ms": 2.0}}
    sampler.record([a, b, node("c", clients=1)], 10.0)
    a2 = {**node("a", clients=2, subs=2, messages_out=10, disconnects__3012=1), "broker": up}
    b2 = {**node("b", clients=3, subs=1, messages_out=30, disconnects__3012=2),
          "broker": {"name": "redis", "up": False, "rtt_ms": None}}
    sample = sampler.record([a2, b2, node("c", clients=1)], 11.0)
    cluster = sample["cluster"]
    assert cluster["clients"] == 6 and cluster["subs"] == 3
    assert cluster["deliveries"] == 40.0 and cluster["disconnects"] == {"3012": 3.0}
    assert cluster["broker_up"] == 0 and cluster["rtt_ms"] == 0.5  # the worst state; the slowest answer
    assert sample["nodes"]["c"]["deliveries"] is None  # a node without metrics (before the cluster view)
    assert sample["nodes"]["c"]["broker_up"] is None


def test_a_node_that_leaves_info_moves_to_gone_with_its_last_seen_time() -> None:
    sampler = Sampler(lambda: None)  # type: ignore[arg-type,return-value]
    sampler.record([node("a"), node("b")], 50.0)
    sampler.record([node("a"), node("b")], 51.0)
    sampler.record([node("a")], 52.0)
    assert list(sampler.nodes) == ["a"]
    assert list(sampler.gone) == ["b"] and sampler.gone["b"]["last_seen"] == 51.0
    assert "metrics" not in sampler.nodes["a"]
    sampler.record([node("a")], 51.0 + CAPACITY + 1)  # gone longer than the ring lasts: forgotten
    assert sampler.gone == {}
    sampler.record([node("a"), node("b")], 2000.0)  # back
    assert set(sampler.nodes) == {"a", "b"} and sampler.gone == {}


def test_sampler_ignores_malformed_entries() -> None:
    sampler = Sampler(lambda: None)  # type: ignore[arg-type,return-value]
    bad = {"uid": "x", "num_clients": "many", "metrics": {"items": {"messages_out": "NaN", "bytes_out": True}}}
    sample = sampler.record([{"no": "uid"}, bad, bad], 1.0)
    assert list(sample["nodes"]) == ["x"] and sample["nodes"]["x"]["clients"] is None


async def test_sampler_tick_asks_the_source_at_the_injected_clock() -> None:
    now = [1000.0]
    counters = {"messages_out": 0}

    async def source() -> list[dict[str, Any]]:
        return [node("n", **counters)]

    sampler = Sampler(source, clock=lambda: now[0])
    await sampler.tick()
    counters["messages_out"] = 500
    now[0] += 0.5
    sample = await sampler.tick()
    assert sample["t"] == 1000.5 and sample["nodes"]["n"]["deliveries"] == 1000.0


def test_sessions_are_signed_and_expire() -> None:
    value = make_session(SECRET, now=1000.0, ttl=60.0)
    assert check_session(SECRET, value, 1059.0)
    assert not check_session(SECRET, value, 1060.0)  # expired
    assert not check_session("another secret", value, 1000.0)
    expires, nonce, signature = value.split(".")
    assert not check_session(SECRET, f"{int(expires) + 3600}.{nonce}.{signature}", 1000.0)  # extended by hand
    assert not check_session(SECRET, "", 1000.0) and not check_session(SECRET, "a.b", 1000.0)


# -- the setting ------------------------------------------------------------------------------------


def test_admin_is_off_beyond_loopback_without_a_secret() -> None:
    assert Config(host="127.0.0.1").admin_enabled
    assert Config(host="::1").admin_enabled
    assert not Config(host="0.0.0.0").admin_enabled
    assert not Config(host="10.1.2.3").admin_enabled
    assert Config(host="0.0.0.0", admin_secret="s").admin_enabled
    assert not Config(host="127.0.0.1", admin=False).admin_enabled
    assert env_settings({"HUBBUB_ADMIN_SECRET": "s", "HUBBUB_ADMIN": "false"}) == {"admin_secret": "s", "admin": False}


async def test_admin_answers_404_on_a_public_bind_without_a_secret() -> None:
    server = Server(Config(host="0.0.0.0", port=0, allow_anonymous=True))
    assert server.admin is not None and not server.admin.enabled
    for path in ("/admin", "/admin/login", "/admin/api/stats"):
        response = await server.handle_http(HTTPRequest("GET", path, headers={"authorization": "Bearer x"}))
        assert response.status == 404, path
        assert b"admin_secret" in response.body
    assert Server(Config(admin=False)).http_routes.match("/admin") is None


# -- HTTP over real sockets ----------------------------------------------------------------------------


async def http(server: Server, method: str, path: str, body: bytes = b"",
               headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request on a fresh connection: (status, headers lower-cased, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    head = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{server.port}", f"Content-Length: {len(body)}",
            "Connection: close"]
    head += [f"{k}: {v}" for k, v in (headers or {}).items()]
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
    raw = await asyncio.wait_for(reader.read(), TIMEOUT)
    writer.close()
    top, _, payload = raw.partition(b"\r\n\r\n")
    lines = top.decode().split("\r\n")
    found = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        found[k.strip().lower()] = v.strip()
    return int(lines[0].split()[1]), found, payload


async def login(server: Server, secret: str = SECRET) -> tuple[int, dict[str, str]]:
    status, headers, _ = await http(server, "POST", "/admin/login", f"secret={secret}".encode(),
                                    {"Content-Type": "application/x-www-form-urlencoded"})
    return status, headers


def cookie_of(headers: dict[str, str]) -> str:
    return headers["set-cookie"].split(";")[0]


async def test_every_admin_route_refuses_a_request_without_the_secret(start_server) -> None:
    server = await start_server(admin_secret=SECRET, api_key="the-api-key")
    status, headers, _ = await http(server, "GET", "/admin")
    assert status == 303 and headers["location"] == "/admin/login"
    for method, path in (("GET", "/admin/api/stats"), ("GET", "/admin/api/channels"),
                         ("POST", "/admin/api/publish"), ("POST", "/admin/api/disconnect"),
                         ("POST", "/admin/api/history")):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Cookie": f"{COOKIE}=1.2.3"},
                        {"X-API-Key": "the-api-key"}, {"Authorization": "apikey the-api-key"},
                        {"Cookie": f"{COOKIE}=" + make_session("another secret", 0, 1e12)}):
            status, _, body = await http(server, method, path, b'{"channel": "x", "data": 1}', headers)
            assert status == 401, (method, path, headers, body)
    status, headers = await login(server, "wrong")
    assert status == 401 and "set-cookie" not in headers
    status, headers = await login(server, "")
    assert status == 401


async def test_login_sets_a_strict_http_only_expiring_session_cookie(start_server) -> None:
    server = await start_server(admin_secret=SECRET)
    status, headers = await login(server)
    assert status == 303 and headers["location"] == "/admin"
    attributes = [part.strip() for part in headers["set-cookie"].split(";")]
    assert {"HttpOnly", "SameSite=Strict", "Path=/admin"} <= set(attributes)
    assert any(a.startswith("Max-Age=") and int(a[8:]) > 0 for a in attributes)
    assert SECRET not in headers["set-cookie"]
    cookie = cookie_of(headers)
    status, _, page = await http(server, "GET", "/admin", headers={"Cookie": cookie})
    assert status == 200 and b"admin.js" in page and SECRET.encode() not in page
    status, _, body = await http(server, "GET", "/admin/api/stats", headers={"Cookie": cookie})
    assert status == 200 and json.loads(body)["node"] == server.admin.uid
    status, headers, _ = await http(server, "POST", "/admin/logout", headers={"Cookie": cookie})
    assert status == 303 and "Max-Age=0" in headers["set-cookie"]
    status, _, _ = await http(server, "GET", "/admin/login")
    assert status == 200


async def test_actions_call_the_server_api_without_the_api_key(start_server, clients: list) -> None:
    server = await start_server(admin_secret=SECRET)  # no api_key: /api itself is off
    bearer = {"Authorization": f"Bearer {SECRET}", "Content-Type": "application/json"}
    client = await proto_client(server)
    clients.append(client)
    await client.call("subscribe", {"channel": "news"})
    status, _, body = await http(server, "POST", "/admin/api/publish", b'{"channel": "news", "data": {"n": 1}}', bearer)
    assert status == 200 and json.loads(body) == {"result": {}}
    push = await client.next_push()
    assert push["channel"] == "news" and push["pub"]["data"] == {"n": 1}
    status, _, body = await http(server, "GET", "/admin/api/channels?q=ew", headers=bearer)
    assert json.loads(body) == {"total": 1, "channels": [{"channel": "news", "num_clients": 1}]}
    status, _, body = await http(server, "GET", "/admin/api/channels?q=zzz", headers=bearer)
    assert json.loads(body) == {"total": 0, "channels": []}
    # bad input is a 4xx with a reason, as in the server API
    status, _, body = await http(server, "POST", "/admin/api/publish", b'{"channel": ""}', bearer)
    assert status == 400
    status, _, body = await http(server, "POST", "/admin/api/publish", b"{not json", bearer)
    assert status == 400 and b"malformed" in body
    status, _, _ = await http(server, "POST", "/admin/api/history_remove", b"{}", bearer)
    assert status == 404  # only the dashboard's actions
    status, _, _ = await http(server, "GET", "/admin/api/publish", headers=bearer)
    assert status == 405
    status, _, _ = await http(server, "GET", "/admin/api/channels?limit=x", headers=bearer)
    assert status == 400
    status, _, _ = await http(server, "GET", "/admin/api/stats?since=x", headers=bearer)
    assert status == 400
    status, _, _ = await http(server, "POST", "/admin/api/publish", b'{"channel": "news", "data": 1}',
                              {**bearer, "Origin": "http://evil.example"})
    assert status == 403  # a foreign page cannot act even with a session
    # disconnect the (anonymous) user: the client is closed with 3503
    status, _, _ = await http(server, "POST", "/admin/api/disconnect", b'{"user": ""}', bearer)
    assert status == 200
    assert (await client.closed())[0] == 3503


async def test_stats_carry_the_sampled_counters_of_this_node(start_server, clients: list) -> None:
    server = await start_server(admin_secret=SECRET)
    bearer = {"Authorization": f"Bearer {SECRET}"}
    sampler = server.admin.sampler
    await sampler.tick()
    for _ in range(3):
        client = await proto_client(server)
        clients.append(client)
        await client.call("subscribe", {"channel": "a"})
    await http(server, "POST", "/admin/api/publish", b'{"channel": "a", "data": 1}',
               {**bearer, "Content-Type": "application/json"})
    for client in clients:
        await client.next_push()
    last = await sampler.tick()
    _, _, body = await http(server, "GET", f"/admin/api/stats?since={last['t'] - 0.001}", headers=bearer)
    reply = json.loads(body)
    assert [s["t"] for s in reply["samples"]] == [last["t"]]
    point = reply["samples"][0]["nodes"][server.admin.uid]
    assert point["clients"] == 3 and point["subs"] == 3
    assert point["pubs"] > 0 and point["deliveries"] > 0 and point["bytes_out"] > 0
    assert point["broker_up"] == 1 and point["rtt_ms"] is None  # the memory broker has no round trip
    assert reply["nodes"][0]["num_clients"] == 3 and reply["gone"] == []


async def test_the_sampler_measures_the_redis_round_trip(start_server, redis_server) -> None:  # noqa: F811
    server = await start_server(admin_secret=SECRET, broker=redis_server.url)
    sample = await server.admin.sampler.tick()
    point = sample["nodes"][server.admin.uid]
    assert point["broker_up"] == 1 and 0 < point["rtt_ms"] < 1000
    redis_server.stop()
    sample = await server.admin.sampler.tick()
    assert sample["nodes"][server.admin.uid]["broker_up"] == 0
    assert sample["nodes"][server.admin.uid]["rtt_ms"] is None


@pytest.mark.parametrize("path", ["/admin", "/admin/api/stats"])
async def test_a_generated_secret_guards_a_loopback_hub_without_admin_secret(start_server, path: str) -> None:
    server = await start_server()
    status, _, _ = await http(server, "GET", path)
    assert status in (303, 401)
    status, headers = await login(server, server.admin.secret)
    assert status == 303
    status, _, _ = await http(server, "GET", path, headers={"Cookie": cookie_of(headers)})
    assert status == 200


def test_the_grafana_dashboard_uses_only_exposed_metrics() -> None:
    import re

    from hubbub.metrics import render

    from .conftest import ROOT

    dashboard = json.loads((ROOT / "docs" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = set(re.findall(r"hubbub_[a-z_]+", " ".join(exprs)))
    server = Server(Config(port=0))
    server.stats.disconnects[3008] += 1
    server.stats.commands["subscribe"].observe(0.001)
    exposed = set(re.findall(r"^(hubbub_[a-z_]+)", render(server).decode(), re.MULTILINE))
    assert used and used <= exposed, used - exposed
    assert {"hubbub_connections", "hubbub_disconnects_total", "hubbub_broker_up",
            "hubbub_publications_total", "hubbub_bytes_sent_total"} <= used


async def test_workers_share_one_made_up_admin_secret(redis_server, serve_process) -> None:  # noqa: F811
    import re

    hub = serve_process("--workers", "2", "--broker", redis_server.url)
    async with asyncio.timeout(TIMEOUT):
        while sum("(pid " in line and "listening" in line for line in hub.lines) < 2:
            await asyncio.sleep(0.05)
    found = re.search(r"its secret for these workers is (\S+)", hub.output())
    assert found, hub.output()
    assert "for this process" not in hub.output()  # the workers do not make secrets of their own

    class Port:  # what http() reads
        port = hub.port

    # fresh connections are spread over both workers by the kernel: each one takes the secret
    for _ in range(8):
        status, _, _ = await http(Port, "GET", "/admin/api/stats",  # type: ignore[arg-type]
                                  headers={"Authorization": f"Bearer {found.group(1)}"})
        assert status == 200
    assert hub.stop() == 0


async def test_wrong_secrets_are_throttled_per_address(start_server) -> None:
    from hubbub.admin import LOGIN_FAILURES, LOGIN_WINDOW

    server = await start_server(admin_secret=SECRET)
    now = [1000.0]
    server.admin.clock = lambda: now[0]
    for _ in range(LOGIN_FAILURES):
        assert (await login(server, "guess"))[0] == 401
    assert (await login(server, "guess"))[0] == 429
    assert (await login(server))[0] == 429  # even the right one, until the window ends
    now[0] += LOGIN_WINDOW + 1
    status, headers = await login(server)
    assert status == 303
    status, headers, _ = await http(server, "GET", "/admin/login", headers={"Cookie": cookie_of(headers)})
    assert status == 303 and headers["location"] == "/admin"  # already logged in


async def test_the_round_trip_of_shards_is_the_slowest_ones(start_server, redis_shards) -> None:  # noqa: F811
    server = await start_server(admin_secret=SECRET, broker=redis_shards.url)
    point = (await server.admin.sampler.tick())["nodes"][server.admin.uid]
    assert point["broker_up"] == 1 and 0 < point["rtt_ms"] < 1000
    redis_shards.nodes[1].stop()
    point = (await server.admin.sampler.tick())["nodes"][server.admin.uid]
    assert point["broker_up"] == 0 and point["rtt_ms"] is None


async def test_deliveries_are_counted_once_per_subscriber(start_server: Any) -> None:
    """The node counts deliveries (publications times local subscribers), so the
    dashboard's deliveries/s is exact, not writes out."""
    import websockets

    server = await start_server()
    clients = [await websockets.connect(f"ws://127.0.0.1:{server.port}/ws/count") for _ in range(3)]
    try:
        for _ in range(2):
            await server.hub.publish("count", "x")
        for ws in clients:
            assert [await asyncio.wait_for(ws.recv(), TIMEOUT) for _ in range(2)] == ['"x"', '"x"']
        assert server.hub.stats.deliveries == 6
        (node,) = (await server.api.call("info", {}))[1]["result"]["nodes"]
        assert node["metrics"]["items"]["deliveries"] == 6 and node["broker"]["up"] is True
    finally:
        for ws in clients:
            await ws.close()


async def test_wrong_bearer_secrets_share_the_login_throttle(start_server, caplog) -> None:
    """Issue 23, defect 8: wrong ``Authorization: Bearer`` secrets count as wrong logins of their
    address (logged, without the secret); once locked out, the right one gets 429 too."""
    from hubbub.admin import LOGIN_FAILURES, LOGIN_WINDOW

    server = await start_server(admin_secret=SECRET)
    now = [1000.0]
    server.admin.clock = lambda: now[0]
    caplog.set_level("WARNING", logger="hubbub.admin")
    statuses = []
    for i in range(LOGIN_FAILURES + 2):
        status, _, _ = await http(server, "GET", "/admin/api/stats", headers={"Authorization": f"Bearer guess-{i}"})
        statuses.append(status)
    assert statuses == [401] * LOGIN_FAILURES + [429, 429]
    refused = [r for r in caplog.records if r.name == "hubbub.admin" and "refused" in r.getMessage()]
    assert len(refused) == LOGIN_FAILURES
    assert not any("guess-" in r.getMessage() for r in caplog.records)  # the secret is not logged
    right = {"Authorization": f"Bearer {SECRET}"}
    assert (await http(server, "GET", "/admin/api/stats", headers=right))[0] == 429
    assert (await login(server))[0] == 429  # the login form shares the lockout
    now[0] += LOGIN_WINDOW + 1
    assert (await http(server, "GET", "/admin/api/stats", headers=right))[0] == 200


async def test_a_login_form_lockout_refuses_the_right_bearer_secret(start_server) -> None:
    """Issue 23, defect 8: wrong logins from the form lock the address out of Bearer requests too."""
    from hubbub.admin import LOGIN_FAILURES

    server = await start_server(admin_secret=SECRET)
    server.admin.clock = lambda: 1000.0
    for _ in range(LOGIN_FAILURES):
        assert (await login(server, "guess"))[0] == 401
    status, _, _ = await http(server, "GET", "/admin/api/stats", headers={"Authorization": f"Bearer {SECRET}"})
    assert status == 429
