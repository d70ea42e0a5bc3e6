"""The deployment recipes in deploy/, run with real parts (docs/deploy.md).

- ``deploy/nginx/hubbub.conf``: Debian's nginx, TLS with a certificate made here, in front of
  two ``hubbub serve`` nodes on a real redis-server, round-robin (no sticky sessions); relay
  clients, centrifuge-js under Node (websocket, http_stream, sse), an SSE subscriber and the
  HTTP API go through it. A missing nginx skips these tests, unless CI=true, where it fails them.
- ``deploy/systemd/hubbub.service``: ``systemd-analyze verify`` where the machine has it, and
  the hardening keys read from the file.
- ``deploy/docker/Dockerfile``: no image registry is reachable here, so it is not built; its
  install commands run in a clean virtual environment, and its start command serves /health.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import websockets

from .conftest import ROOT, TIMEOUT, ServeProcess, until
from .jsdeps import missing, node_modules
from .redis_server import RedisServer, find_redis_server

DEPLOY = ROOT / "deploy"
API_KEY = "deploy-test-api-key"
#: the settings both nodes read (a TOML file, as in production); chat: has history
NODE_SETTINGS = f"""
api_key = "{API_KEY}"

[namespaces.chat]
history_size = 100
history_ttl = 600
force_recovery = true
"""


# -- the parts: a certificate, nginx, two nodes on Redis --------------------------------------------


def make_certificate(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 and localhost signed by it.

    Returns:
        (ca.pem, server chain .pem, server key .pem) in ``directory``.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hubbub test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    ca_path, chain_path, key_path = directory / "ca.pem", directory / "fullchain.pem", directory / "privkey.pem"
    ca_path.write_bytes(ca.public_bytes(pem))
    chain_path.write_bytes(cert.public_bytes(pem) + ca.public_bytes(pem))
    key_path.write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return ca_path, chain_path, key_path


def find_nginx() -> str:
    """nginx's path (Debian: /usr/sbin/nginx); skips the test without it, fails it under CI=true."""
    found = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/bin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None)
    if found is None:
        missing("nginx (apt-get install nginx)")
    assert found is not None
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def recipe(nodes: list[int], port: int, http_port: int, chain: Path, key: Path) -> str:
    """deploy/nginx/hubbub.conf with its EDIT lines filled for this machine. Each line replaced
    must be in the recipe exactly as written here: a recipe that changes them fails the test
    rather than running something else."""
    text = (DEPLOY / "nginx" / "hubbub.conf").read_text()
    edits = [
        ("server 127.0.0.1:8000 ", f"server 127.0.0.1:{nodes[0]} "),
        ("server 127.0.0.1:8001 ", f"server 127.0.0.1:{nodes[1]} "),
        ("listen 443 ssl;", f"listen 127.0.0.1:{port} ssl;"),
        ("listen 80;", f"listen 127.0.0.1:{http_port};"),
        ("/etc/ssl/hubbub/fullchain.pem;", f"{chain};"),
        ("/etc/ssl/hubbub/privkey.pem;", f"{key};"),
    ]
    for old, new in edits:
        assert text.count(old) == 1, f"deploy/nginx/hubbub.conf should hold {old!r} once"
        text = text.replace(old, new)
    return text


#: the http {} around the recipe: what /etc/nginx/nginx.conf gives it on Debian, in a prefix of
#: the test's own; the access log names the node of each request ($upstream_addr)
NGINX_CONF = """
daemon off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
{user}
events {{ worker_connections 1024; }}
http {{
    log_format upstreams '$request_method $uri $status $upstream_addr';
    access_log {prefix}/access.log upstreams;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    include {prefix}/hubbub.conf;
}}
"""


@dataclass
class Nginx:
    """nginx in the foreground with the recipe, on 127.0.0.1:``port`` (https) and ``http_port``."""

    binary: str
    prefix: Path
    port: int = 0
    http_port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    def start(self, nodes: list[int], chain: Path, key: Path) -> None:
        """Start nginx on free ports and wait until it accepts.

        Raises:
            RuntimeError: nginx refused the configuration or did not start.
        """
        user = "user root;" if os.geteuid() == 0 else ""  # workers read the prefix, which is root's
        for _ in range(5):  # a free port may be taken meanwhile: try others
            self.port, self.http_port = free_port(), free_port()
            (self.prefix / "hubbub.conf").write_text(recipe(nodes, self.port, self.http_port, chain, key))
            (self.prefix / "nginx.conf").write_text(NGINX_CONF.format(prefix=self.prefix, user=user))
            self.proc = subprocess.Popen(
                [self.binary, "-p", str(self.prefix), "-e", str(self.prefix / "error.log"),
                 "-c", str(self.prefix / "nginx.conf")],
                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            deadline = time.monotonic() + TIMEOUT
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                    return
                except OSError:
                    time.sleep(0.01)  # polling nginx's socket, bounded by the deadline
            self.stop()
            if "Address already in use" not in self.log():
                break
        raise RuntimeError("nginx did not start:\n" + self.log())

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGQUIT)  # graceful: workers finish, then exit
            try:
                proc.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def log(self) -> str:
        path = self.prefix / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def requests(self, path: str) -> list[tuple[str, int, str]]:
        """(method, status, upstream address) of each finished request for ``path``."""
        found = []
        access = self.prefix / "access.log"
        for line in access.read_text().splitlines() if access.exists() else []:
            method, uri, status, upstream = line.split(" ", 3)
            if uri == path:
                found.append((method, int(status), upstream))
        return found


@dataclass
class Deployment:
    """Redis, two hubbub nodes on it, nginx in front with TLS."""

    redis: RedisServer
    nodes: list[ServeProcess]
    nginx: Nginx
    ca: Path
    settings: Path
    ssl: ssl.SSLContext = field(init=False)

    def __post_init__(self) -> None:
        self.ssl = ssl.create_default_context(cafile=str(self.ca))

    @property
    def https(self) -> str:
        return f"https://127.0.0.1:{self.nginx.port}"

    @property
    def wss(self) -> str:
        return f"wss://127.0.0.1:{self.nginx.port}"

    def start_node(self, port: int = 0) -> ServeProcess:
        """``hubbub serve`` on the Redis with the settings file, on ``port`` (0: a free one)."""
        return ServeProcess("--broker", self.redis.url, "--config", str(self.settings), "--port", str(port))

    def upstream(self, node: ServeProcess) -> str:
        return f"127.0.0.1:{node.port}"

    async def api(self, session: aiohttp.ClientSession, method: str, params: dict[str, Any]) -> Any:
        async with session.post(f"{self.https}/api/{method}", json=params, ssl=self.ssl,
                                headers={"X-API-Key": API_KEY}) as r:
            assert r.status == 200, await r.text()
            return await r.json()


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    nginx_binary = find_nginx()
    redis_binary = find_redis_server()
    if redis_binary is None:
        missing("redis-server (apt-get install redis-server)")
    assert redis_binary is not None
    base = tmp_path_factory.mktemp("deploy")
    (base / "redis").mkdir()
    (base / "nginx").mkdir()
    ca, chain, key = make_certificate(base)
    settings = base / "hubbub.toml"
    settings.write_text(NODE_SETTINGS)
    deployment = Deployment(RedisServer(redis_binary, base / "redis"), [], Nginx(nginx_binary, base / "nginx"),
                            ca, settings)
    try:
        deployment.redis.start()
        for _ in range(2):
            deployment.nodes.append(deployment.start_node())
        deployment.nginx.start([n.port for n in deployment.nodes], chain, key)
        yield deployment
    finally:
        deployment.nginx.stop()
        for node in deployment.nodes:
            node.stop()
        deployment.redis.stop()


@pytest.fixture
async def http() -> Any:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_read=TIMEOUT)) as s:
        yield s


async def both_nodes(deployment: Deployment, http: aiohttp.ClientSession) -> list[dict[str, Any]]:
    """The cluster's nodes once ``info`` (through nginx) lists both."""
    nodes: list[dict[str, Any]] = []

    async def listed() -> bool:
        nonlocal nodes
        nodes = (await deployment.api(http, "info", {}))["result"]["nodes"]
        return len(nodes) == 2

    await until(listed, "info lists both nodes")
    return nodes


# -- nginx in front, with TLS -------------------------------------------------------------------


@pytest.mark.slow
async def test_relay_clients_on_both_nodes_get_each_publication_through_nginx(deployment, http) -> None:
    await both_nodes(deployment, http)
    channel = "relay-through-nginx"
    clients = [await websockets.connect(f"{deployment.wss}/ws/{channel}", ssl=deployment.ssl) for _ in range(4)]
    try:
        async def spread() -> bool:  # round-robin: the four clients are on both nodes
            nodes = (await deployment.api(http, "info", {}))["result"]["nodes"]
            return len(nodes) == 2 and all(n["num_clients"] >= 2 for n in nodes)

        await until(spread, "relay clients on both nodes")

        async def subscribed() -> bool:  # every node has its clients' subscriptions in Redis
            found = (await deployment.api(http, "channels", {}))["result"]["channels"]
            return found.get(channel, {}).get("num_clients") == 4

        await until(subscribed, "four subscribers")
        for n, sender in enumerate(clients):  # each sends once: every client gets every message
            await sender.send(f"message {n}")
            for receiver in clients:
                assert await asyncio.wait_for(receiver.recv(), TIMEOUT) == f"message {n}"
    finally:
        for client in clients:
            await client.close()


@pytest.mark.slow
async def test_centrifuge_js_over_wss_http_stream_and_sse_through_nginx(deployment, http) -> None:
    modules = node_modules()
    await both_nodes(deployment, http)
    before = len(deployment.nginx.requests("/emulation"))
    proc = await asyncio.create_subprocess_exec(
        "node", str(modules.parent / "deploy.cjs"), deployment.https, "chat:js",
        env={**os.environ, "NODE_EXTRA_CA_CERTS": str(deployment.ca)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 4 * TIMEOUT)
    assert proc.returncode == 0, err.decode()
    result = json.loads(out.decode().strip().splitlines()[-1])
    assert result["transports"] == {"websocket": "websocket", "http_stream": "http_stream", "sse": "sse"}
    assert result["got"] == {name: [1, 2, 3, 4, 5, 6] for name in ("websocket", "http_stream", "sse")}
    # the emulated clients' commands (subscribe, publish) went to both nodes, round-robin, and all
    # worked: the node that did not hold a session handed its commands over Redis
    emulation = deployment.nginx.requests("/emulation")[before:]
    assert {status for _, status, _ in emulation} == {204}
    assert {upstream for _, _, upstream in emulation} == {deployment.upstream(n) for n in deployment.nodes}


async def read_event(stream: aiohttp.StreamReader) -> dict[str, str]:
    """The next SSE event's fields (comments skipped; a block without data, such as ``retry:``,
    is no event). Raises EOFError when the stream ends."""
    fields: dict[str, str] = {}
    while True:
        raw = await asyncio.wait_for(stream.readline(), TIMEOUT)
        if not raw:
            raise EOFError("the stream ended")
        line = raw.decode().rstrip("\r\n")
        if not line:
            if "data" in fields:
                return fields
            fields = {}
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        fields[name] = value.removeprefix(" ")


@pytest.mark.slow
async def test_sse_events_arrive_at_once_through_nginx(deployment, http) -> None:
    """Each event reaches the subscriber before the next is published: nothing on the way
    (nginx's buffers, gzip) holds it back."""
    await both_nodes(deployment, http)
    async with http.get(f"{deployment.https}/sse/chat:sse", ssl=deployment.ssl) as r:
        assert r.status == 200
        assert r.headers["content-type"].startswith("text/event-stream")

        async def subscribed() -> bool:
            found = (await deployment.api(http, "channels", {}))["result"]["channels"]
            return "chat:sse" in found

        await until(subscribed, "the SSE subscriber")
        for n in range(1, 6):
            await deployment.api(http, "publish", {"channel": "chat:sse", "data": {"n": n}})
            event = await read_event(r.content)  # before the next publish, within TIMEOUT
            assert json.loads(event["data"]) == {"n": n}
            assert event["id"].endswith(f":{n}")


@pytest.mark.slow
async def test_http_api_through_nginx(deployment, http) -> None:
    nodes = await both_nodes(deployment, http)
    assert {n["uid"] for n in nodes} and all(n["broker"]["up"] for n in nodes)
    reply = await deployment.api(http, "publish", {"channel": "chat:api", "data": {"via": "nginx"}})
    assert reply["result"]["offset"] == 1
    history = await deployment.api(http, "history", {"channel": "chat:api", "limit": 10})
    assert [p["data"] for p in history["result"]["publications"]] == [{"via": "nginx"}]
    async with http.post(f"{deployment.https}/api/publish", json={"channel": "chat:api", "data": 1},
                         ssl=deployment.ssl) as r:
        assert r.status == 401  # no key: hubbub's own answer, passed through
    async with http.get(f"{deployment.https}/health", ssl=deployment.ssl) as r:
        assert r.status == 200 and (await r.json())["status"] == "ok"
    async with http.get(f"http://127.0.0.1:{deployment.nginx.http_port}/health", allow_redirects=False) as r:
        assert r.status == 308 and r.headers["location"].startswith("https://")


@pytest.mark.slow
async def test_emulation_reaches_the_session_node_without_sticky_sessions(deployment, http) -> None:
    """An http_stream session on one node; its /emulation requests go round-robin to both nodes
    and every command runs on the session's node."""
    await both_nodes(deployment, http)
    before = len(deployment.nginx.requests("/emulation"))
    body = '{"id":1,"connect":{}}\n{"id":2,"subscribe":{"channel":"chat:emulation"}}'
    async with http.post(f"{deployment.https}/connection/http_stream", data=body, ssl=deployment.ssl,
                         headers={"Content-Type": "application/json"}) as r:
        assert r.status == 200

        async def line() -> dict[str, Any]:
            return json.loads(await asyncio.wait_for(r.content.readline(), TIMEOUT))

        connect = (await line())["connect"]
        subscribe = await line()
        assert subscribe["id"] == 2 and "subscribe" in subscribe, subscribe
        for n in range(3, 7):  # four requests: round-robin sends two of them to the other node
            command = {"session": connect["session"], "node": connect["node"],
                       "data": json.dumps({"id": n, "publish": {"channel": "chat:emulation", "data": {"n": n}}})}
            async with http.post(f"{deployment.https}/emulation", json=command, ssl=deployment.ssl) as e:
                assert e.status == 204, await e.text()
            got = [await line(), await line()]  # the publish reply and the publication, in either order
            assert any(m.get("id") == n and "publish" in m for m in got), got
            assert any(m.get("push", {}).get("pub", {}).get("data") == {"n": n} for m in got), got
    emulation = deployment.nginx.requests("/emulation")[before:]
    assert [status for _, status, _ in emulation] == [204] * 4
    assert {upstream for _, _, upstream in emulation} == {deployment.upstream(n) for n in deployment.nodes}



@pytest.mark.slow
async def test_rolling_restart_of_one_node_behind_nginx(deployment, http) -> None:
    """docs/deploy.md, "Rolling restart": SIGTERM to one node closes its clients with 3001 and
    the node exits; meanwhile nginx sends every request to the other node (no API call fails),
    the clients that were cut reconnect through nginx, and an SSE subscriber resumes from its
    Last-Event-ID without a gap. Then the node starts again on its port and rejoins."""
    await both_nodes(deployment, http)
    channel = "chat:restart"
    url = f"{deployment.https}/sse/{channel}"
    # opened one after the other with nothing in between: round-robin puts one of each on each node
    streams = [await http.get(url, ssl=deployment.ssl) for _ in range(2)]
    relays = [await websockets.connect(f"{deployment.wss}/ws/{channel}", ssl=deployment.ssl) for _ in range(2)]

    async def subscribers(count: int) -> None:
        async def enough() -> bool:
            found = (await deployment.api(http, "channels", {}))["result"]["channels"]
            return found.get(channel, {}).get("num_clients") == count

        await until(enough, f"{count} subscribers")

    async def publish(n: int) -> None:
        await deployment.api(http, "publish", {"channel": channel, "data": {"n": n}})

    async def relay_gets(relay: Any, *ns: int) -> None:
        assert [json.loads(await asyncio.wait_for(relay.recv(), TIMEOUT)) for _ in ns] == [{"n": n} for n in ns]

    try:
        await subscribers(4)
        await publish(1)
        last_ids = [(await read_event(s.content))["id"] for s in streams]
        for relay in relays:
            await relay_gets(relay, 1)

        old = deployment.nodes[0]
        old.proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(old.proc.wait, TIMEOUT) == 0, old.output()

        # while the node is down, every API call goes to the other node
        await publish(2)
        await publish(3)
        # the stopped node's clients were told 3001; the other node's got on with it
        await until(lambda: any(r.close_code is not None for r in relays), "a relay client closed")
        assert sorted(str(r.close_code) for r in relays) == ["3001", "None"]
        cut_relay, kept_relay = sorted(relays, key=lambda r: r.close_code is None)
        await relay_gets(kept_relay, 2, 3)
        first = [await read_event(s.content) for s in streams]
        assert sorted(e.get("event", "message") for e in first) == ["disconnect", "message"]
        cut = next(i for i, e in enumerate(first) if e.get("event") == "disconnect")
        assert json.loads(first[cut]["data"])["code"] == 3001
        kept_stream = streams[1 - cut]
        assert json.loads(first[1 - cut]["data"]) == {"n": 2}
        assert json.loads((await read_event(kept_stream.content))["data"]) == {"n": 3}

        # the cut clients reconnect through nginx (to the other node); the SSE one resumes
        relays.append(await websockets.connect(f"{deployment.wss}/ws/{channel}", ssl=deployment.ssl))
        streams.append(await http.get(url, ssl=deployment.ssl, headers={"Last-Event-ID": last_ids[cut]}))
        resumed = [json.loads((await read_event(streams[-1].content))["data"]) for _ in range(2)]
        assert resumed == [{"n": 2}, {"n": 3}]
        await subscribers(4)
        await publish(4)
        for relay in (kept_relay, relays[-1]):
            await relay_gets(relay, 4)
        for stream in (kept_stream, streams[-1]):
            assert json.loads((await read_event(stream.content))["data"]) == {"n": 4}

        # the node starts again on its port and rejoins the cluster
        deployment.nodes[0] = deployment.start_node(old.port)
        await both_nodes(deployment, http)
        assert cut_relay.close_code == 3001
    finally:
        for relay in relays:
            await relay.close()
        for stream in streams:
            stream.release()
