"""Each example runs with one command (`hubbub run ...`) and does what it says."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import urllib.request

import pytest
import websockets

from .conftest import ROOT, TIMEOUT, ServeProcess


@pytest.fixture
def run_example():
    procs: list[ServeProcess] = []

    def start(target: str) -> ServeProcess:
        p = ServeProcess(target, command="run")
        procs.append(p)
        return p

    yield start
    for p in procs:
        if p.proc.poll() is None:
            p.proc.kill()
            p.proc.wait()


async def test_echo(run_example) -> None:
    server = run_example("examples.echo:app")
    async with websockets.connect(f"{server.url}/echo") as ws:
        await ws.send("ping")
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "ping"
        await ws.send(b"\x00bin")
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == b"\x00bin"
    assert server.stop() == 0


async def test_ticker_publishes_prices_to_both_kinds_of_client(run_example) -> None:
    server = run_example("examples.ticker:app")
    async with websockets.connect(f"{server.url}/ticker/acme") as ws:
        tick = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
        assert tick["symbol"] == "ACME" and tick["price"] > 0
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hubbub", "consume", server.url, "prices:GLOBEX", "--count", "2",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    assert proc.returncode == 0, err
    assert all(json.loads(line)["symbol"] == "GLOBEX" for line in out.decode().splitlines())
    async with websockets.connect(f"{server.url}/ticker/nope") as ws:
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), TIMEOUT)
        assert ws.close_code == 4004
    assert server.stop() == 0


async def test_chat_page_and_rooms(run_example) -> None:
    server = run_example("examples.chat.app:app")
    page = await asyncio.to_thread(
        lambda: urllib.request.urlopen(f"http://127.0.0.1:{server.port}/chat", timeout=TIMEOUT).read())
    assert b"hubbub chat" in page
    async with websockets.connect(f"{server.url}/chat/lobby/ws") as ann:
        await ann.send("ann")
        assert json.loads(await asyncio.wait_for(ann.recv(), TIMEOUT)) == {"system": "ann joined"}
        bob = await websockets.connect(f"{server.url}/chat/lobby/ws")
        await bob.send("bob")
        assert json.loads(await asyncio.wait_for(bob.recv(), TIMEOUT)) == {"system": "bob joined"}
        assert json.loads(await asyncio.wait_for(ann.recv(), TIMEOUT)) == {"system": "bob joined"}
        await ann.send("hello bob")
        assert json.loads(await asyncio.wait_for(bob.recv(), TIMEOUT)) == {"from": "ann", "text": "hello bob"}
        await bob.close()
        assert json.loads(await asyncio.wait_for(ann.recv(), TIMEOUT)) == {"from": "ann", "text": "hello bob"}
        assert json.loads(await asyncio.wait_for(ann.recv(), TIMEOUT)) == {"system": "bob left"}
    assert server.stop() == 0
