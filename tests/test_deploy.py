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
import re
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import websockets

from hubbub.config import Config

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


# -- systemd ------------------------------------------------------------------------------------

UNIT = DEPLOY / "systemd" / "hubbub.service"


def unit_settings(path: Path) -> dict[str, dict[str, list[str]]]:
    """A unit file as {section: {key: [values, in order]}} (a key may repeat, as systemd allows)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    pending = ""
    for raw in path.read_text().splitlines():
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        assert current is not None, f"{line!r} before any section"
        key, sep, value = line.partition("=")
        assert sep, f"not a setting: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def seconds(value: str) -> float:
    """A systemd time span (``30s``, ``1min 30s``, ``90``) in seconds."""
    units = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value):
        total += float(number) * units[unit or "s"]
    return total


def test_systemd_unit_has_the_hardening_and_the_stop_settings() -> None:
    service = unit_settings(UNIT)["Service"]

    def one(key: str) -> str:
        assert len(service.get(key, [])) == 1, f"{key} should be set once in {UNIT.name}"
        return service[key][0]

    for key, value in {"DynamicUser": "yes", "NoNewPrivileges": "yes", "ProtectSystem": "strict",
                       "ProtectHome": "yes", "PrivateTmp": "yes", "Restart": "on-failure",
                       "KillSignal": "SIGTERM", "KillMode": "mixed"}.items():
        assert one(key) == value, key
    assert int(one("LimitNOFILE")) >= 200_000  # 100,000 connections and more
    assert one("EnvironmentFile").lstrip("-").startswith("/etc/hubbub/")  # the secrets
    assert one("CapabilityBoundingSet") == ""  # no capabilities at all
    # systemd waits longer than hubbub's drain (close_timeout, then leaving the broker) before SIGKILL
    assert seconds(one("TimeoutStopSec")) >= 2 * Config().close_timeout + 10
    command = shlex.split(one("ExecStart"))
    assert command[1:3] == ["serve", "--config"] and command[0].endswith("/bin/hubbub")


def test_systemd_analyze_verify_and_security(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not on this machine (it comes with systemd)")
    hubbub = Path(sys.executable).with_name("hubbub")  # verify wants ExecStart's program to exist
    assert hubbub.exists(), hubbub
    text = UNIT.read_text()
    assert text.count("/opt/hubbub/bin/hubbub ") == 1
    unit = tmp_path / "hubbub.service"
    unit.write_text(text.replace("/opt/hubbub/bin/hubbub ", f"{hubbub} "))
    verify = subprocess.run([analyze, "verify", "--man=no", str(unit)], capture_output=True, text=True,
                            timeout=60, cwd=tmp_path)
    complaints = [line for line in (verify.stdout + verify.stderr).splitlines() if "hubbub.service" in line]
    assert verify.returncode == 0 and not complaints, verify.stdout + verify.stderr  # unknown keys are warnings
    security = subprocess.run([analyze, "security", "--offline=yes", "--no-pager", str(unit)],
                              capture_output=True, text=True, timeout=60, cwd=tmp_path)
    found = re.search(r"Overall exposure level for hubbub\.service: (\d+\.\d+)", security.stdout + security.stderr)
    if found is None and "offline" in security.stderr:  # systemd < 250: no offline security report
        pytest.skip("systemd-analyze verify passed; this systemd has no `security --offline`")
    assert found is not None, security.stdout + security.stderr
    assert float(found.group(1)) <= 2.0, security.stdout  # systemd calls up to 3.9 "OK"


# -- the container recipe -----------------------------------------------------------------------

DOCKERFILE = DEPLOY / "docker" / "Dockerfile"


@dataclass
class Stage:
    """One stage of a Dockerfile: its base and its instructions, in order."""

    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, name: str) -> list[str]:
        return [arg for instruction, arg in self.instructions if instruction == name]

    def env(self) -> dict[str, str]:
        """The stage's ENV, in the ``KEY=VALUE ...`` form (shell-quoted values)."""
        found: dict[str, str] = {}
        for arg in self.all("ENV"):
            for word in shlex.split(arg):
                key, sep, value = word.partition("=")
                assert sep, f"ENV {arg!r}: use the KEY=VALUE form"
                found[key] = value
        return found


def dockerfile_stages(path: Path) -> list[Stage]:
    stages: list[Stage] = []
    pending = ""
    for raw in path.read_text().splitlines():
        if raw.lstrip().startswith("#"):  # docker drops comment lines, inside a continuation too
            continue
        line = pending + raw.strip()
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        if not line or line.startswith("#"):
            continue
        instruction, _, arg = line.partition(" ")
        if instruction.upper() == "FROM":
            stages.append(Stage(arg.split()[0]))
        else:
            assert stages, f"{line!r} before FROM"
            stages[-1].instructions.append((instruction.upper(), arg.strip()))
    return stages


def test_dockerfile_is_small_non_root_and_checks_its_health() -> None:
    stages = dockerfile_stages(DOCKERFILE)
    image = stages[-1]
    assert all(stage.base == "python:3.11-slim" for stage in stages)
    users = image.all("USER")
    assert users and users[-1] not in ("root", "0", "0:0")
    port = image.env()["HUBBUB_PORT"]
    assert image.all("EXPOSE") == [port]
    healthcheck = image.all("HEALTHCHECK")
    assert len(healthcheck) == 1 and "/health" in healthcheck[0] and " CMD [" in f" {healthcheck[0]}"
    assert json.loads(image.all("CMD")[0])[:2] == ["hubbub", "serve"]
    # the final image takes only the built environment from the build stage: no source, no pip cache
    assert [arg for arg in image.all("COPY")] == ["--from=build /opt/hubbub /opt/hubbub"]


@pytest.mark.slow
async def test_dockerfile_install_and_start_commands_work_in_a_clean_venv(tmp_path: Path) -> None:
    """What ``docker build`` and ``docker run`` would do, without docker: the build stage's COPY
    and RUN lines into a directory that stands for the image's root, then the image's CMD with
    its ENV (and a free port, as ``docker run -p`` maps one), /health, and the HEALTHCHECK."""
    build, image = dockerfile_stages(DOCKERFILE)
    root = tmp_path / "root"  # the container's / : /src and /opt/hubbub are under it

    def here(text: str) -> str:
        return re.sub(r"(?<![\w.])(/src|/opt/hubbub)(?![\w.-])", lambda m: f"{root}{m.group(1)}", text)

    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")  # Dockerfile.dockerignore
    for arg in build.all("COPY"):
        *sources, destination = shlex.split(arg)
        target = Path(here(destination))
        for source in sources:
            if (ROOT / source).is_dir():
                shutil.copytree(ROOT / source, target, ignore=ignore)
            else:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / source, target / source)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HUBBUB_", "VIRTUAL_ENV", "PYTHON"))}
    env.update(build.env())
    for command in build.all("RUN"):
        assert not command.startswith("["), "RUN in shell form"
        command = here(re.sub(r"^python ", f"{shlex.quote(sys.executable)} ", command))
        done = await asyncio.to_thread(subprocess.run, ["sh", "-c", command], env=env, cwd=tmp_path,
                                       capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, f"RUN {command}\n{done.stdout}\n{done.stderr}"
    # what COPY brought in reached the package: its README as the description, its licence file
    metadata = subprocess.run(
        [str(root / "opt/hubbub/bin/python"), "-c", "import importlib.metadata as m, json; d = m.distribution('hubbub'); "
         "print(json.dumps([d.metadata.get_payload() or '', [f.name for f in d.files or ()]]))"],
        capture_output=True, text=True, timeout=TIMEOUT, cwd=tmp_path, env=env, check=True)
    description, files = json.loads(metadata.stdout)
    assert description.startswith("# hubbub") and "LICENSE" in files, metadata.stdout[:300]

    # docker run -p PORT:8000 -e HUBBUB_TOKEN_HMAC_SECRET=... -e HUBBUB_API_KEY=... (the Dockerfile's comment)
    run_env = {k: v for k, v in os.environ.items() if not k.startswith(("HUBBUB_", "VIRTUAL_ENV", "PYTHON"))}
    for key, value in image.env().items():
        run_env[key] = here(value).replace("$PATH", os.environ["PATH"])
    port = free_port()
    run_env.update(HUBBUB_PORT=str(port), HUBBUB_TOKEN_HMAC_SECRET="docker-test-secret-of-at-least-32-bytes",
                   HUBBUB_API_KEY="docker-test-key")
    cmd = json.loads(image.all("CMD")[0])
    program = shutil.which(cmd[0], path=run_env["PATH"])
    assert program == str(root / "opt/hubbub/bin" / cmd[0]), program  # the environment's, not the checkout's
    server = subprocess.Popen([program, *cmd[1:]], env=run_env, cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    healthcheck = json.loads(image.all("HEALTHCHECK")[0].split(" CMD ", 1)[1])
    try:
        async def healthy() -> bool:
            assert server.poll() is None, "hubbub serve exited"
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                return False
            writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            answer = await reader.read()
            writer.close()
            return answer.startswith(b"HTTP/1.1 200")

        await until(healthy, "/health of the image's command", timeout=3 * TIMEOUT)
        check = await asyncio.to_thread(subprocess.run, [shutil.which(healthcheck[0], path=run_env["PATH"]),
                                                         *healthcheck[1:]], env=run_env, capture_output=True,
                                        timeout=TIMEOUT)
        assert check.returncode == 0, check.stderr  # docker would call the container healthy
        server.send_signal(signal.SIGTERM)  # docker stop
        assert await asyncio.to_thread(server.wait, TIMEOUT) == 0
        check = await asyncio.to_thread(subprocess.run, [shutil.which(healthcheck[0], path=run_env["PATH"]),
                                                         *healthcheck[1:]], env=run_env, capture_output=True,
                                        timeout=TIMEOUT)
        assert check.returncode != 0  # and unhealthy once it is gone
    finally:
        if server.poll() is None:
            server.kill()
        out = server.communicate(timeout=TIMEOUT)[0]
    assert "listening on http://0.0.0.0:" in out, out
