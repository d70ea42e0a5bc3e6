"""The ``event_loop`` setting: ``hubbub serve --event-loop uvloop`` serves protocol and relay
clients on a uvloop loop; a bad value is refused before serving."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import websockets

from hubbub.config import Config
from hubbub.errors import ConfigError
from hubbub.loops import run_loop

from .conftest import TIMEOUT

ROOT = Path(__file__).resolve().parent.parent
uvloop = pytest.importorskip("uvloop")


def test_run_loop_runs_on_the_named_loop():
    async def kind() -> str:
        return type(asyncio.get_running_loop()).__module__.split(".")[0]

    assert run_loop(kind(), "uvloop") == "uvloop"
    assert run_loop(kind(), "asyncio") == "asyncio"


def test_bad_event_loop_is_refused():
    with pytest.raises(ConfigError, match="event_loop"):
        Config(event_loop="trio").validate()
    proc = subprocess.run([sys.executable, "-m", "hubbub", "serve", "--port", "0"], cwd=ROOT,
                          env={**__import__("os").environ, "HUBBUB_EVENT_LOOP": "trio"},
                          capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert proc.returncode != 0
    assert "event_loop" in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr


def test_serve_on_uvloop_delivers_protocol_and_relay_messages():
    proc = subprocess.Popen([sys.executable, "-m", "hubbub", "serve", "--port", "0", "--event-loop", "uvloop"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert proc.stdout is not None
        port = 0
        for line in proc.stdout:
            m = re.search(rb"listening on http://[^ ]+:(\d+)", line)
            if m:
                port = int(m.group(1))
                break
        assert port

        async def exchange() -> tuple[dict, bytes | str]:
            async with websockets.connect(f"ws://127.0.0.1:{port}/connection/websocket") as sub, \
                    websockets.connect(f"ws://127.0.0.1:{port}/ws/room") as relay:
                await sub.send('{"id":1,"connect":{}}\n{"id":2,"subscribe":{"channel":"room"}}')
                replies: list[dict] = []
                while len(replies) < 2:
                    replies += [json.loads(x) for x in (await asyncio.wait_for(sub.recv(), TIMEOUT)).split("\n")]
                assert [r["id"] for r in replies] == [1, 2]
                await relay.send('{"text":"hi"}')
                push = json.loads(await asyncio.wait_for(sub.recv(), TIMEOUT))
                echo = await asyncio.wait_for(relay.recv(), TIMEOUT)
                return push, echo

        push, echo = asyncio.run(exchange())
        assert push["push"]["channel"] == "room"
        assert push["push"]["pub"]["data"] == {"text": "hi"}
        assert json.loads(echo) == {"text": "hi"}
    finally:
        proc.terminate()
        proc.wait(TIMEOUT)
