"""`hubbub serve`, `consume` and `produce` as real processes."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable

import websockets

from .conftest import ROOT, TIMEOUT, ProtoClient
from .redis_server import RedisServer, redis_server  # noqa: F401


def hubbub(*args: str, input: str | None = None, timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hubbub", *args], input=input, capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


def consume_while(url: str, channel: str, count: int, produce: Callable[[], None]) -> str:
    """Run ``hubbub consume URL CHANNEL --count COUNT``, call ``produce`` once it has subscribed,
    and return what it printed (it must exit 0)."""
    consumer = subprocess.Popen(
        [sys.executable, "-m", "hubbub", "consume", url, channel, "--count", str(count)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )
    try:
        assert consumer.stderr is not None
        assert consumer.stderr.readline().strip() == f"hubbub: subscribed to {channel}"
        produce()
        stdout, stderr = consumer.communicate(timeout=TIMEOUT)
    finally:
        if consumer.poll() is None:
            consumer.kill()
    assert consumer.returncode == 0, stderr
    return stdout


def test_help_lists_commands() -> None:
    out = hubbub("--help")
    assert out.returncode == 0
    for command in ("serve", "consume", "produce", "gentoken", "genconfig", "check-config"):
        assert command in out.stdout
    assert "--count" in hubbub("consume", "--help").stdout


#: what a serving process without token keys must not import (each costs start-up time:
#: workload 8, a restart under a reconnect storm)
NOT_FOR_SERVING = ("jwt", "cryptography", "hubbub.client", "websockets.asyncio.client")

SERVE_AND_LIST_MODULES = """
import asyncio, json, sys
from hubbub import cli  # what `hubbub serve` imports first
from hubbub.config import Config
from hubbub.server import Server

async def main():
    server = Server(Config(host="127.0.0.1", port=0))
    await server.start()
    await server.close()

asyncio.run(main())
print(json.dumps(sorted(sys.modules)))
"""


def test_serving_without_token_keys_imports_neither_pyjwt_nor_the_client() -> None:
    out = subprocess.run([sys.executable, "-c", SERVE_AND_LIST_MODULES], capture_output=True, text=True,
                         timeout=TIMEOUT, cwd=ROOT, check=True).stdout
    loaded = set(json.loads(out))
    assert "hubbub.server" in loaded
    assert [name for name in NOT_FOR_SERVING if name in loaded] == []


def test_consume_prints_what_produce_publishes(serve_process) -> None:
    server = serve_process()

    def produce() -> None:
        out = hubbub("produce", server.url, "news", '{"a": 1}', "hello", "42", "[1, 2]")
        assert out.returncode == 0, out.stderr

    assert consume_while(server.url, "news", 4, produce).splitlines() == ['{"a":1}', '"hello"', "42", "[1,2]"]


def test_produce_reads_stdin(serve_process) -> None:
    """Each line of stdin is one publication: a consumer receives them, in order."""
    server = serve_process()

    def produce() -> None:
        out = hubbub("produce", server.url, "lines", input='{"x": 1}\nsecond line\n')
        assert out.returncode == 0, out.stderr

    assert consume_while(server.url, "lines", 2, produce).splitlines() == ['{"x":1}', '"second line"']


def test_produce_reports_server_errors(serve_process) -> None:
    server = serve_process()
    out = hubbub("produce", server.url, "unknown:ns", "1")
    assert out.returncode == 1
    assert "102" in out.stderr and "unknown channel" in out.stderr


def test_consume_reports_unreachable_server() -> None:
    out = hubbub("consume", "ws://127.0.0.1:9", "x", "--count", "1")
    assert out.returncode == 1 and "cannot connect" in out.stderr


def test_bad_url_is_a_clear_error() -> None:
    out = hubbub("produce", "http://example", "x", "1")
    assert out.returncode == 1 and "ws://host:port" in out.stderr


def test_sigterm_closes_clients_3001_and_exits_0(serve_process) -> None:
    server = serve_process()

    async def run() -> tuple[int, str]:
        async with websockets.connect(f"{server.url}/ws/room", ping_interval=None) as ws:
            await ws.send("hi")
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "hi"
            server.proc.terminate()
            try:
                await asyncio.wait_for(ws.recv(), TIMEOUT)
            except websockets.ConnectionClosed:
                pass
            rcvd = ws.protocol.close_rcvd
            assert rcvd is not None
            return rcvd.code, rcvd.reason

    assert asyncio.run(run()) == (3001, "shutdown")
    assert server.proc.wait(TIMEOUT) == 0
    assert "stopped" in server.output()


def test_port_in_use_is_a_clear_error(serve_process) -> None:
    server = serve_process()
    out = hubbub("serve", "--port", str(server.port))
    assert out.returncode == 1 and "cannot listen" in out.stderr


def test_workers_start_right_after_a_single_process_server(serve_process, redis_server: RedisServer) -> None:  # noqa: F811
    """Issue 28, defect 2: the port reservation of ``--workers`` set SO_REUSEPORT but not
    SO_REUSEADDR, so for about 60 s after a plain ``hubbub serve`` on the same port (a
    restart during a deploy) it failed with "Address already in use"."""
    single = serve_process()
    port = single.port
    # a connection that the server closes first leaves a TIME_WAIT socket on the server's port
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        while sock.recv(65536):
            pass  # until the server closed its side
    assert single.stop() == 0
    workers = serve_process("--workers", "2", "--broker", redis_server.url, "--port", str(port))
    assert workers.port == port
    deadline = time.monotonic() + TIMEOUT
    while sum("(pid " in line and "listening" in line for line in workers.lines) < 2:
        assert time.monotonic() < deadline, "".join(workers.lines)
        time.sleep(0.05)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=TIMEOUT) as response:
        assert response.status == 200
    assert workers.stop() == 0, "".join(workers.lines)


def test_bad_config_value_is_a_clear_error(tmp_path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("port = 8000\nnonsense = 1\n")
    out = hubbub("serve", "--config", str(cfg))
    assert out.returncode == 2 and "nonsense" in out.stderr


def readme_block(heading: str) -> str:
    """The first ``sh`` block after ``heading`` in the README."""
    text = (ROOT / "README.md").read_text().split(heading, 1)[1]
    return text.split("```sh\n", 1)[1].split("```", 1)[0]


def curl_publish(block: str, port: int, key: str) -> subprocess.CompletedProcess[str]:
    """Run the block's ``curl`` line as written, against ``port``, with ``HUBBUB_API_KEY=key``."""
    (line,) = [line for line in block.splitlines() if line.startswith("curl ")]
    return subprocess.run(["bash", "-c", line.replace("127.0.0.1:8000", f"127.0.0.1:{port}")], capture_output=True,
                          text=True, timeout=TIMEOUT, env={**os.environ, "HUBBUB_API_KEY": key})


def test_the_readme_curl_publish_reaches_a_consumer(serve_process) -> None:
    """Issue 28, defect 4: the README had no curl example of publishing. This runs the README's
    commands: the key as the README makes it, the hub with it in HUBBUB_API_KEY, the curl line as written."""
    block = readme_block("## Publishing with curl")
    assert "python3 dev.py serve" in block
    (export,) = [line for line in block.splitlines() if line.startswith("export HUBBUB_API_KEY=")]
    key = subprocess.run(["bash", "-c", f"{export} && printf %s \"$HUBBUB_API_KEY\""], capture_output=True,
                         text=True, timeout=TIMEOUT, check=True).stdout
    assert len(key) == 32
    server = serve_process(env={"HUBBUB_API_KEY": key})

    def produce() -> None:
        out = curl_publish(block, server.port, key)
        assert (out.returncode, out.stdout) == (0, '{"result":{}}'), out.stderr

    assert consume_while(server.url, "news", 1, produce) == '{"headline":"from curl"}\n'
    refused = curl_publish(block, server.port, "wrong")
    assert "unauthorized" in refused.stdout and "X-API-Key" in refused.stdout


def test_api_key_flag_turns_the_api_on(serve_process, tmp_path) -> None:
    """``hubbub serve --api-key KEY`` and ``hubbub run --api-key KEY`` (issue 28, defect 4); without a
    key the 401 says how to set one."""
    block = readme_block("## Publishing with curl")
    server = serve_process()
    refused = curl_publish(block, server.port, "anything")
    assert "HUBBUB_API_KEY" in refused.stdout and "--api-key" in refused.stdout, refused.stdout
    server.stop()
    for command, args in (("serve", ()), ("run", ("examples.echo:app",))):
        server = serve_process(*args, "--api-key", "flag-key-" + "k" * 20, command=command)
        assert "API key set" in server.wait_for_output("API key set")
        out = curl_publish(block, server.port, "flag-key-" + "k" * 20)
        assert (out.returncode, out.stdout) == (0, '{"result":{}}'), (command, out.stdout, out.stderr)
        assert server.stop() == 0


def test_genconfig_writes_a_private_file_that_checks_and_serves(serve_process, tmp_path) -> None:
    """``hubbub genconfig`` (issue 28): a commented starter file with fresh secrets, mode 600, never
    overwriting; check-config passes it and a server starts with it, its API key and secrets set."""
    path = tmp_path / "hubbub.toml"
    out = hubbub("genconfig", str(path))
    assert out.returncode == 0, out.stderr
    text = path.read_text()
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert text.startswith("# hubbub settings") and "[namespaces.chat]" in text
    from hubbub.config import Config

    config = Config.load(path, env={})
    assert len(config.token_hmac_secret) >= 32 and config.api_key and config.admin_secret
    other = tmp_path / "other.toml"
    assert hubbub("genconfig", str(other)).returncode == 0
    again = Config.load(other, env={})
    assert (again.token_hmac_secret, again.api_key, again.admin_secret) != (
        config.token_hmac_secret, config.api_key, config.admin_secret)  # fresh each time
    refused = hubbub("genconfig", str(path))
    assert refused.returncode == 2 and "exists" in refused.stderr and path.read_text() == text
    checked = hubbub("check-config", str(path))
    assert checked.returncode == 0 and "ok" in checked.stdout, checked.stderr
    server = serve_process("--config", str(path))
    assert "API key set" in server.wait_for_output("API key set")
    req = urllib.request.Request(f"http://127.0.0.1:{server.port}/api/publish", method="POST",
                                 data=b'{"channel": "chat:room", "data": 1}', headers={"X-API-Key": config.api_key})
    with urllib.request.urlopen(req, timeout=TIMEOUT) as response:
        reply = json.loads(response.read())
    assert reply["result"]["offset"] == 1  # the starter namespace keeps history
    assert server.stop() == 0


def test_gentoken_makes_tokens_a_real_server_accepts(serve_process, tmp_path) -> None:
    """``hubbub gentoken USER [--ttl] [--channel]`` (issue 28): signed with the configured
    token_hmac_secret; a server with the same file accepts the connection token for USER and the
    subscription token for its channel, and refuses a client without one."""
    path = tmp_path / "hubbub.toml"
    assert hubbub("genconfig", str(path)).returncode == 0
    with path.open("a") as f:
        f.write("\n[namespaces.private]\nrequire_subscription_token = true\n")
    missing = hubbub("gentoken", "alice")  # no --config and no HUBBUB_TOKEN_HMAC_SECRET
    assert missing.returncode == 2 and "token_hmac_secret" in missing.stderr and "genconfig" in missing.stderr
    made = hubbub("gentoken", "alice", "--ttl", "600", "--config", str(path))
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    made = hubbub("gentoken", "alice", "--channel", "private:room", "--config", str(path))
    assert made.returncode == 0, made.stderr
    sub_token = made.stdout.strip()
    server = serve_process("--config", str(path))

    async def check() -> None:
        url = f"ws://127.0.0.1:{server.port}/connection/websocket"
        async with websockets.connect(url, ping_interval=None) as ws:
            client = ProtoClient(ws)
            client._buffer = []
            reply = await client.call("connect", {"token": token})
            assert "connect" in reply, reply
            reply = await client.call("subscribe", {"channel": "private:room", "token": sub_token})
            assert "subscribe" in reply, reply
            reply = await client.call("subscribe", {"channel": "private:other", "token": sub_token})
            assert reply.get("error", {}).get("code") == 103, reply  # the token is for private:room only
        async with websockets.connect(url, ping_interval=None) as ws:
            anonymous = ProtoClient(ws)
            anonymous._buffer = []
            await anonymous.send({"id": 1, "connect": {}})
            code, _ = await anonymous.closed()
            assert code == 3500  # no token: refused, so the accepted one proves the signature

    asyncio.run(check())
    assert server.stop() == 0
