"""tools/autobahn.py's targets, without Python 2.7: what each ``--target`` serves answers as
the suite expects (the relay and the framework endpoint echo every message, with the limits
the suite needs; the protocol endpoint refuses a frame that is not a command), checked with
a websockets client."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from types import ModuleType

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedError

from .conftest import ROOT


def _load_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("hubbub_autobahn_tool", ROOT / "tools" / "autobahn.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


tool = _load_tool()


@pytest.fixture
def hub(request: pytest.FixtureRequest) -> Iterator[tuple[str, object]]:
    """The server ``--target`` starts (``request.param``: target, compression), and its case URL base."""
    target, compression = request.param
    server = tool.Hub([], {"HUBBUB_WEBSOCKET_COMPRESSION": "true" if compression else "false"}, target=target)
    try:
        yield f"ws://127.0.0.1:{server.port}{tool.CASE_PATHS[target]}", server
    finally:
        server.stop()
    assert "Traceback" not in "".join(server.lines)


@pytest.mark.parametrize("hub", [("relay", False), ("endpoint", False), ("endpoint", True)], indirect=True,
                         ids=["relay", "endpoint", "endpoint-deflate"])
async def test_target_echoes_text_and_binary_to_its_sender(hub: tuple[str, object], request: pytest.FixtureRequest) -> None:
    base, _ = hub
    compression = request.node.callspec.id.endswith("deflate")
    big = "x" * (100 * 1024)  # over the default max_message_size (64 KiB): the suite's limits are in force
    async with connect(base + "1.1.1", compression="deflate", max_size=None) as ws:
        extensions = ws.response.headers.get("Sec-WebSocket-Extensions", "")
        assert ("permessage-deflate" in extensions) is compression
        await ws.send("héllo")
        assert await ws.recv() == "héllo"
        await ws.send(b"\x00\xff\x80")
        assert await ws.recv() == b"\x00\xff\x80"
        await ws.send(big)
        assert await ws.recv() == big


@pytest.mark.parametrize("hub", [("protocol", False)], indirect=True, ids=["protocol"])
async def test_protocol_target_refuses_a_frame_that_is_no_command(hub: tuple[str, object]) -> None:
    """Why ``--target protocol`` runs only :data:`PROTOCOL_CASES`: a message that is not a
    protocol command closes the connection with 3501 instead of coming back."""
    base, _ = hub
    async with connect(base + "1.1.2") as ws:
        await ws.send("Hello, world!")
        with pytest.raises(ConnectionClosedError) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 3501


def test_protocol_cases_expect_no_echo() -> None:
    """The protocol target's cases are a subset of groups 1-7 and 10, none in the groups that
    only echo (1, 9, 10, 12, 13), each listed once."""
    cases = tool.PROTOCOL_CASES
    assert len(cases) == len(set(cases)) == 140
    assert not [case for case in cases if case.split(".")[0] in ("1", "9", "10", "12", "13")]
