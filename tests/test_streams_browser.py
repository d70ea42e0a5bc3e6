"""EventSource in Chromium on /sse/{channel}: it resumes with Last-Event-ID after a
server restart (Redis broker) and receives what was published while it was away."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

from .conftest import TIMEOUT
from .redis_server import redis_server  # noqa: F401
from .test_browser import MS, _free_port, browser  # noqa: F401

PAGE_SCRIPT = """
window.got = []; window.events = [];
const source = new EventSource("/sse/chat:restart");
source.onmessage = (e) => window.got.push([e.lastEventId, JSON.parse(e.data)]);
for (const name of ["disconnect", "unrecoverable"]) {
  source.addEventListener(name, (e) => window.events.push([name, JSON.parse(e.data)]));
}
source.onerror = () => window.events.push(["error", source.readyState]);
"""


def api_publish(port: int, data: Any) -> dict[str, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/publish", method="POST", headers={"X-API-Key": "k"},
        data=json.dumps({"channel": "chat:restart", "data": data}).encode())
    with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
        return json.loads(response.read())["result"]


async def test_event_source_resumes_after_a_server_restart(browser: Any, redis_server, tmp_path: Path,  # noqa: F811
                                                           serve_process) -> None:
    config = tmp_path / "hub.toml"
    config.write_text('api_key = "k"\n[namespaces.chat]\nhistory_size = 100\nhistory_ttl = 600\n')
    port = _free_port()
    args = ("--broker", redis_server.url, "--config", str(config))
    first = serve_process(*args, "--port", str(port))
    other = serve_process(*args)  # the same Redis: it publishes while the first is down
    context = await browser.new_context()
    page = await context.new_page()
    page.set_default_timeout(MS)
    await page.goto(f"http://127.0.0.1:{port}/")
    await page.evaluate(PAGE_SCRIPT)
    position = None
    for attempt in range(100):  # the stream is open once a publication reaches it
        position = api_publish(other.port, f"before {attempt}")
        try:
            await page.wait_for_function("window.got.length >= 1", timeout=200)
            break
        except Exception:
            continue
    assert position is not None
    got = await page.evaluate("window.got")
    epoch = position["epoch"]
    assert got[-1][0] == f"{epoch}:{position['offset']}"  # the event id: <epoch>:<offset>
    seen = len(got)
    assert first.stop() == 0  # SIGTERM: the stream ends with a disconnect event (3001)
    await page.wait_for_function("window.events.some((e) => e[0] === 'disconnect')")
    missed = [api_publish(other.port, f"missed {n}") for n in (1, 2, 3)]
    serve_process(*args, "--port", str(port))  # the same address again
    await page.wait_for_function(f"window.got.length >= {seen + 3}", timeout=3 * MS)
    got = await page.evaluate("window.got")
    events = await page.evaluate("window.events")
    assert [g[1] for g in got[seen:seen + 3]] == ["missed 1", "missed 2", "missed 3"]
    assert [g[0] for g in got[seen:seen + 3]] == [f"{epoch}:{p['offset']}" for p in missed]
    assert ["disconnect", {"code": 3001, "reason": "shutdown"}] in events
    assert not any(e[0] == "unrecoverable" for e in events)
    api_publish(other.port, "live again")
    await page.wait_for_function(f"window.got.length >= {seen + 4}")
    assert (await page.evaluate("window.got"))[-1][1] == "live again"
    await context.close()
