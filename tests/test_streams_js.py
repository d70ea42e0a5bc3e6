"""centrifuge-js under Node over its HTTP transports: http_stream alone, sse alone, and
the fallback from a WebSocket endpoint that is turned off (tests/js/emulation.cjs)."""

from __future__ import annotations

import asyncio
import json
import subprocess
from typing import Any

import pytest

import hubbub

from .conftest import TIMEOUT
from .jsdeps import node_modules

SECRET = "emulation-test-secret-of-at-least-32-bytes"


def emulation_app(**settings: Any) -> hubbub.App:
    app = hubbub.App(port=0, api_key="k", token_hmac_secret=SECRET, namespaces={
        "chat": {"history_size": 100, "history_ttl": 600, "force_recovery": True, "presence": True},
        "private": {"require_subscription_token": True},
    }, **settings)

    @app.rpc("kick")
    async def kick(client: hubbub.ClientSession, data: Any) -> Any:
        client.disconnect(3011, "kicked by test")
        return {}

    @app.rpc("echo")
    async def echo(client: hubbub.ClientSession, data: Any) -> Any:
        return data

    return app


@pytest.mark.parametrize("mode", ["http_stream", "sse", "fallback", "protobuf"])
async def test_centrifuge_js_over_http_transports(mode: str) -> None:
    modules = node_modules()
    app = emulation_app(**({"protocol_path": ""} if mode == "fallback" else {}))
    await app.start()
    try:
        proc = await asyncio.create_subprocess_exec(
            "node", str(modules.parent / "emulation.cjs"), f"http://127.0.0.1:{app.server.port}", mode,
            f"chat:{mode}", SECRET, "k", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 6 * TIMEOUT)
        assert proc.returncode == 0, err.decode()
        result = json.loads(out.decode().strip().splitlines()[-1])
        streams = app.server.streams.emulation
        commands = app.server.hub.stats.commands
        sub_refreshes = commands["sub_refresh"].count if "sub_refresh" in commands else 0
    finally:
        await app.stop()
    assert result["transport"] == ("http_stream" if mode in ("fallback", "protobuf") else mode)
    assert [p["data"]["n"] for p in result["got"]] == [1, 2, 3, 4, 5]
    assert [p["offset"] for p in result["got"]] == [1, 2, 3, 4, 5]
    assert result["subscribed"] == [{"recovered": False, "wasRecovering": False},
                                    {"recovered": True, "wasRecovering": True}]
    assert 3011 in result["codes"] and 3005 not in result["codes"]
    assert result["tokenCalls"] >= 3
    assert result["subTokenCalls"] >= 3 and result["privateGot"] == [{"private": True}]
    assert sub_refreshes >= 2  # refreshed in place (sub_refresh), not by subscribing again
    assert result["presenceClients"] == 1 and result["numClients"] == 1
    assert result["history"] == [{"n": 1}, {"n": 2}]
    assert result["echo"] == {"hello": "rpc"}
    assert len(streams) == 0  # every emulated session left the registry
