"""The operator's dashboard in a real browser (Debian's Chromium via Playwright)
against real hubbub servers on 127.0.0.1.

Screenshots of the dashboard go to docs/screenshots/admin-*.png.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from typing import Any

import pytest
import websockets

from hubbub.config import NamespaceOptions

from .conftest import TIMEOUT, proto_client, ws_url
from .redis_server import redis_server  # noqa: F401
from .test_browser import MS, SHOTS, base, browser  # noqa: F401

SECRET = "s3cret-for-the-browser-test"


async def log_in(browser: Any, url: str, secret: str = SECRET) -> Any:  # noqa: F811
    """A new browser context logged in to ``url``/admin; returns its page."""
    context = await browser.new_context(viewport={"width": 1300, "height": 1100})
    page = await context.new_page()
    page.set_default_timeout(MS)
    await page.goto(url + "/admin")
    await page.wait_for_selector("form#login")  # redirected to the login page
    await page.fill("#secret", secret)
    await page.click("#login-button")
    await page.wait_for_selector("#status.live")
    return page


async def tile(page: Any, name: str) -> float:
    value = await page.get_attribute(f"#value-{name}", "data-value")
    return float(value) if value else 0.0


async def test_log_in_and_requests_without_the_secret_are_refused(start_server, browser: Any) -> None:  # noqa: F811
    server = await start_server(admin_secret=SECRET)
    context = await browser.new_context()
    page = await context.new_page()
    page.set_default_timeout(MS)
    await page.goto(base(server) + "/admin")
    assert page.url.endswith("/admin/login")
    statuses = await page.evaluate("""async () => {
      const out = [];
      for (const [url, init] of [["/admin/api/stats", {}], ["/admin/api/channels", {}],
                                 ["/admin/api/publish", {method: "POST", body: '{"channel":"x","data":1}'}]]) {
        out.push((await fetch(url, init)).status);
      }
      return out;
    }""")
    assert statuses == [401, 401, 401]
    await page.fill("#secret", "not the secret")
    await page.click("#login-button")
    await page.wait_for_selector("#error")
    assert "Wrong secret" in await page.inner_text("#error")
    await page.screenshot(path=str(SHOTS / "admin-login.png"))
    # the cookie is HttpOnly: the page's scripts cannot read it
    page = await log_in(browser, base(server))
    assert await page.evaluate("document.cookie") == ""
    cookies = await page.context.cookies()
    assert [(c["name"], c["httpOnly"], c["sameSite"]) for c in cookies] == [("hubbub_admin", True, "Strict")]
    await page.wait_for_selector(f"#nodes tr[data-uid='{server.admin.uid}']")
    await page.click("#logout")
    await page.wait_for_selector("form#login")
    assert (await page.evaluate("fetch('/admin/api/stats').then((r) => r.status)")) == 401


async def test_the_connection_count_rises_as_100_clients_connect(start_server, browser: Any, clients: list) -> None:  # noqa: F811
    server = await start_server(admin_secret=SECRET)
    page = await log_in(browser, base(server))
    await page.wait_for_selector("#value-clients[data-value='0']")
    for i in range(100):
        client = await proto_client(server)
        clients.append(client)
        await client.call("subscribe", {"channel": f"room{i % 10}"})
    await page.wait_for_selector("#value-clients[data-value='100']")
    await page.wait_for_selector("#value-subs[data-value='100']")
    assert "100" in await page.inner_text("#chart-connections .legend")
    # the channels table lists them, searchable
    await page.wait_for_selector("#channels tbody tr[data-channel='room3']")
    assert await page.locator("#channels tbody tr").count() == 10
    await page.fill("#channel-search", "room7")
    await page.wait_for_function("document.querySelectorAll('#channels tbody tr').length === 1")
    assert await page.inner_text("#channels tbody tr") == "room7\t10"
    await page.fill("#channel-search", "")
    await page.wait_for_function("document.querySelectorAll('#channels tbody tr').length === 10")
    await page.screenshot(path=str(SHOTS / "admin-connections.png"), full_page=True)


async def test_deliveries_per_second_move_during_a_burst(start_server, browser: Any, clients: list) -> None:  # noqa: F811
    server = await start_server(admin_secret=SECRET)
    page = await log_in(browser, base(server))
    for _ in range(20):
        client = await proto_client(server)
        clients.append(client)
        await client.call("subscribe", {"channel": "burst"})

    async def read(client: Any) -> None:  # keep the clients reading, as real ones do
        try:
            while True:
                await client.ws.recv()
        except websockets.ConnectionClosed:
            pass

    readers = [asyncio.create_task(read(c)) for c in clients]
    stop = asyncio.Event()

    async def burst() -> None:
        while not stop.is_set():
            for _ in range(20):
                await server.api.call("publish", {"channel": "burst", "data": {"tick": time.time()}})
            await asyncio.sleep(0.01)  # pacing of the publisher, not a wait for a result

    publisher = asyncio.create_task(burst())
    try:
        await page.wait_for_function(
            "+document.getElementById('value-deliveries').dataset.value > 200 && "
            "+document.getElementById('value-pubs').dataset.value > 10")
        assert await tile(page, "bytes") > 0
    finally:
        stop.set()
        await publisher
    await page.screenshot(path=str(SHOTS / "admin-burst.png"), full_page=True)
    # and back to quiet (the dashboard's own polls are a few messages out per second)
    await page.wait_for_function("+document.getElementById('value-deliveries').dataset.value < 20")
    for task in readers:
        task.cancel()
    await asyncio.gather(*readers, return_exceptions=True)


async def test_publish_look_and_disconnect_from_the_page(start_server, browser: Any, clients: list) -> None:  # noqa: F811
    server = await start_server(admin_secret=SECRET, namespaces={
        "chat": NamespaceOptions(history_size=10, history_ttl=60, presence=True)})
    client = await proto_client(server)
    clients.append(client)
    await client.call("subscribe", {"channel": "chat:lobby"})
    relay = await websockets.connect(ws_url(server, "/ws/chat:lobby"))
    clients.append(relay)
    page = await log_in(browser, base(server))
    await page.fill("#pub-channel", "chat:lobby")
    await page.fill("#pub-data", '{"hello": "from the dashboard"}')
    await page.click("#pub-send")
    push = await client.next_push()
    assert push["channel"] == "chat:lobby" and push["pub"]["data"] == {"hello": "from the dashboard"}
    assert json.loads(await asyncio.wait_for(relay.recv(), TIMEOUT)) == {"hello": "from the dashboard"}
    await page.wait_for_selector("#pub-result:has-text('HTTP 200')")
    # history and presence of the channel
    await page.fill("#look-channel", "chat:lobby")
    await page.click("#look-history")
    await page.wait_for_selector("#look-result:has-text('from the dashboard')")
    await page.click("#look-presence")
    await page.wait_for_selector(f"#look-result:has-text('{client.client_id}')")
    await page.screenshot(path=str(SHOTS / "admin-actions.png"), full_page=True)
    # unsubscribe, then disconnect, the (anonymous) user
    await page.fill("#user-channel", "chat:lobby")
    await page.click("#user-unsubscribe")
    push = await client.next_push()
    assert push["channel"] == "chat:lobby" and "unsubscribe" in push
    await page.click("#user-disconnect")
    assert (await client.closed())[0] == 3503
    await page.wait_for_function("document.getElementById('chart-disconnects').textContent.includes('3503')")


def _stats(port: int) -> dict[str, Any]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/admin/api/stats?since=1e12",
                                     headers={"Authorization": f"Bearer {SECRET}"})
    with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
        return json.loads(response.read())


async def test_a_killed_node_disappears_from_the_nodes_table(browser: Any, redis_server, serve_process,  # noqa: F811
                                                             clients: list) -> None:
    env = {"HUBBUB_ADMIN_SECRET": SECRET}
    first = serve_process("--broker", redis_server.url, env=env)
    second = serve_process("--broker", redis_server.url, env=env)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5.0  # a few heartbeats (~1 s each) for the nodes to see each other
    while True:
        nodes = (await loop.run_in_executor(None, _stats, first.port))["nodes"]
        if len(nodes) >= 2 or loop.time() > deadline:
            break
        await asyncio.sleep(0.2)  # polling the other process's view, bounded by the deadline
    if len(nodes) < 2:
        pytest.skip("the server API's info lists only this node: the cluster view (heartbeats between "
                    "nodes over Redis) is not in this build")
    page = await log_in(browser, f"http://127.0.0.1:{first.port}")
    await page.wait_for_function("document.querySelectorAll('#nodes tbody tr').length === 2")
    # clients on both nodes: the cluster view counts them all
    for port, count in ((first.port, 5), (second.port, 3)):
        for _ in range(count):
            clients.append(await websockets.connect(f"ws://127.0.0.1:{port}/ws/everywhere", ping_interval=None))
    await page.wait_for_selector("#value-clients[data-value='8']", timeout=3 * MS)
    await page.screenshot(path=str(SHOTS / "admin-nodes.png"), full_page=True)
    second.proc.kill()  # no goodbye: its heartbeats stop
    second.proc.wait(TIMEOUT)
    await page.wait_for_function("document.querySelectorAll('#nodes tbody tr').length === 1", timeout=3 * MS)
    await page.wait_for_selector("#gone-box:not([hidden])")
    await page.wait_for_selector("#value-clients[data-value='5']")
    assert first.stop() == 0


async def test_a_node_missing_from_info_leaves_the_nodes_table(start_server, browser: Any) -> None:  # noqa: F811
    """The page's side of a node going away, on one process: a second node is added
    to what ``info`` answered, then dropped (what the cluster view does when a
    node's heartbeats stop). The real two-node test is the one above."""
    server = await start_server(admin_secret=SECRET)
    admin = server.admin
    real = admin.snapshot
    other: dict[str, Any] = {"uid": "other-node", "name": "node-b", "version": "0.1.0", "num_clients": 7,
                             "num_users": 2, "num_subs": 9, "num_channels": 3, "uptime": 3600,
                             "metrics": {"interval": 1.0, "items": {"messages_out": 0, "publications": 0}}}
    present = asyncio.Event()
    present.set()

    async def with_other() -> list[dict[str, Any]]:
        nodes = await real()
        if present.is_set():
            other["metrics"]["items"]["messages_out"] += 50
            nodes.append(other)
        return nodes

    admin.sampler.source = with_other
    page = await log_in(browser, base(server))
    await page.wait_for_selector("#nodes tbody tr[data-uid='other-node']")
    await page.wait_for_selector("#value-clients[data-value='7']")  # the cluster counts both
    await page.click("#nodes tbody tr[data-uid='other-node']")  # the view of that node alone
    await page.wait_for_function("Math.abs(document.getElementById('value-deliveries').dataset.value - 50) < 10")
    assert await page.input_value("#scope") == "other-node"
    present.clear()
    await page.wait_for_function("document.querySelectorAll('#nodes tbody tr').length === 1")
    await page.wait_for_selector("#gone-box:not([hidden])")
    assert "node-b" in await page.inner_text("#gone")
    assert await page.input_value("#scope") == "cluster"  # the view of a gone node falls back


async def test_the_broker_state_and_redis_round_trip_in_the_page(start_server, browser: Any,  # noqa: F811
                                                                 redis_server) -> None:  # noqa: F811
    server = await start_server(admin_secret=SECRET, broker=redis_server.url)
    page = await log_in(browser, base(server))
    await page.wait_for_selector("#value-broker[data-value='1']")
    assert (await page.inner_text("#value-broker")).endswith(" ms")  # up, with the PING's round trip
    await page.wait_for_selector("#chart-broker .legend:has-text('round trip (ms)')")
    redis_server.stop()
    await page.wait_for_selector("#value-broker[data-value='0']", timeout=3 * MS)
    assert await page.inner_text("#value-broker") == "DOWN"
    await page.wait_for_selector("#chart-broker rect.down")  # the outage is drawn red
    await page.screenshot(path=str(SHOTS / "admin-broker-down.png"), full_page=True)
    redis_server.start()
    await page.wait_for_selector("#value-broker[data-value='1']", timeout=3 * MS)
