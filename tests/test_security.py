"""Tokens, anonymous access, origins and limits."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from typing import Any

import jwt
import pytest
import websockets

from hubbub.config import Config, NamespaceOptions
from hubbub.errors import ConfigError
from hubbub.server import Server

from .conftest import ROOT, TIMEOUT, make_config, proto_client, ws_url

SECRET = "a-test-secret-of-at-least-32-bytes!!"


def hs256(sub: str = "alice", ttl: float | None = 3600, **claims: Any) -> str:
    if ttl is not None:
        claims["exp"] = int(time.time() + ttl)
    return jwt.encode({"sub": sub, **claims}, SECRET, algorithm="HS256")


@pytest.fixture
async def token_server(start_server) -> Server:
    return await start_server(
        token_hmac_secret=SECRET,
        namespaces={
            "private": NamespaceOptions(require_subscription_token=True),
            "public": NamespaceOptions(allow_anonymous=True),
        },
    )


# -- connection tokens ----------------------------------------------------------------


async def test_centrifuge_python_connects_with_hs256_token(token_server: Server) -> None:
    from centrifuge import Client

    client = Client(ws_url(token_server), token=hs256("alice", info={"name": "Alice"}))
    await client.connect()
    try:
        await asyncio.wait_for(client.ready(), TIMEOUT)
        (session,) = token_server.hub.user_sessions("alice")
        assert session.conn_info == b'{"name":"Alice"}'
    finally:
        await client.disconnect()


async def test_centrifuge_python_connects_with_rs256_token(start_server, tmp_path) -> None:
    from centrifuge import Client
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "pub.pem").write_bytes(public_pem)
    server = await start_server(token_rsa_public_key=str(tmp_path / "pub.pem"))
    token = jwt.encode({"sub": "bob", "exp": int(time.time()) + 60}, key, algorithm="RS256")
    client = Client(ws_url(server), token=token)
    await client.connect()
    try:
        await asyncio.wait_for(client.ready(), TIMEOUT)
        assert [s.user for s in server.hub.user_sessions("bob")] == ["bob"]
    finally:
        await client.disconnect()
    # a token signed with another key is invalid: 3500
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    c = await proto_client(server, connect=False)
    await c.send({"id": 1, "connect": {"token": jwt.encode({"sub": "eve"}, other, algorithm="RS256")}})
    assert (await c.closed())[0] == 3500


@pytest.mark.slow
async def test_centrifuge_python_refreshes_an_expiring_token(token_server: Server) -> None:
    from centrifuge import Client

    issued: asyncio.Queue[str] = asyncio.Queue()

    async def get_token() -> str:
        token = hs256("carol", ttl=2)
        issued.put_nowait(token)
        return token

    client = Client(ws_url(token_server), get_token=get_token)
    await client.connect()
    try:
        await asyncio.wait_for(client.ready(), TIMEOUT)
        await asyncio.wait_for(issued.get(), TIMEOUT)  # the connect token
        await asyncio.wait_for(issued.get(), TIMEOUT)  # a refresh before it expires
        await asyncio.wait_for(issued.get(), TIMEOUT)  # and another: the session was extended
        (session,) = token_server.hub.user_sessions("carol")
        assert session.expire_at > time.time()
        assert not session.closed
    finally:
        await client.disconnect()


async def test_expired_token_at_connect_is_error_109(token_server: Server, clients: list) -> None:
    c = await proto_client(token_server, connect=False)
    clients.append(c)
    reply = await c.call("connect", {"token": hs256(ttl=-10)})
    assert reply["error"]["code"] == 109


async def test_session_expiring_without_refresh_is_closed_3005(token_server: Server, clients: list) -> None:
    c = await proto_client(token_server, connect=False)
    clients.append(c)
    reply = await c.call("connect", {"token": hs256(ttl=1)})
    assert reply["connect"]["expires"] is True and reply["connect"]["ttl"] <= 1
    assert (await c.closed())[0] == 3005


async def test_refresh_command_extends_the_session(token_server: Server, clients: list) -> None:
    c = await proto_client(token_server, connect=False)
    clients.append(c)
    await c.call("connect", {"token": hs256(ttl=1)})
    reply = await c.call("refresh", {"token": hs256(ttl=60)})
    assert reply["refresh"]["expires"] is True and reply["refresh"]["ttl"] > 50
    (session,) = token_server.hub.user_sessions("alice")
    assert session.expire_at > time.time() + 50
    await c.send({"id": 99, "refresh": {"token": hs256("mallory", ttl=60)}})
    assert (await c.closed())[0] == 3500  # a token for another user


@pytest.mark.parametrize("token", ["garbage", jwt.encode({"sub": "x"}, "wrong-secret-wrong-secret-wrong!!", algorithm="HS256")])
async def test_invalid_token_is_3500(token_server: Server, clients: list, token: str) -> None:
    c = await proto_client(token_server, connect=False)
    clients.append(c)
    await c.send({"id": 1, "connect": {"token": token}})
    assert (await c.closed()) == (3500, "invalid token")


async def test_token_channels_claim_subscribes_on_connect(token_server: Server, clients: list) -> None:
    c = await proto_client(token_server, connect=False)
    clients.append(c)
    reply = await c.call("connect", {"token": hs256(channels=["news"])})
    assert reply["connect"]["subs"] == {"news": {}}
    assert token_server.hub.channels() == {"news": 1}


# -- anonymous access ----------------------------------------------------------------------


async def test_anonymous_needs_permission_when_tokens_are_configured(token_server: Server, clients: list) -> None:
    anon = await proto_client(token_server, connect=False)
    clients.append(anon)
    await anon.send({"id": 1, "connect": {}})
    assert (await anon.closed())[0] == 3500


async def test_namespace_allow_anonymous(start_server, clients: list) -> None:
    server = await start_server(token_hmac_secret=SECRET, allow_anonymous=True,
                                channels=NamespaceOptions(allow_anonymous=False),
                                namespaces={"public": NamespaceOptions()})
    anon = await proto_client(server)
    clients.append(anon)
    assert (await anon.call("subscribe", {"channel": "public:x"}))["subscribe"] == {}
    assert (await anon.call("subscribe", {"channel": "members"}))["error"]["code"] == 103
    assert (await anon.call("publish", {"channel": "members", "data": 1}))["error"]["code"] == 103


# -- subscription tokens --------------------------------------------------------------------


async def test_private_channel_needs_a_subscription_token(token_server: Server, clients: list) -> None:
    c = await proto_client(token_server, connect=False)
    clients.append(c)
    await c.call("connect", {"token": hs256("alice")})
    assert (await c.call("subscribe", {"channel": "private:room"}))["error"]["code"] == 103
    wrong_channel = hs256("alice", channel="private:other")
    assert (await c.call("subscribe", {"channel": "private:room", "token": wrong_channel}))["error"]["code"] == 103
    wrong_user = hs256("bob", channel="private:room")
    assert (await c.call("subscribe", {"channel": "private:room", "token": wrong_user}))["error"]["code"] == 103
    expired = hs256("alice", ttl=-5, channel="private:room")
    assert (await c.call("subscribe", {"channel": "private:room", "token": expired}))["error"]["code"] == 109
    good = hs256("alice", channel="private:room", info={"role": "owner"})
    reply = (await c.call("subscribe", {"channel": "private:room", "token": good}))["subscribe"]
    assert reply["expires"] is True and 3590 <= reply["ttl"] <= 3600, reply


# -- origins -------------------------------------------------------------------------------------


async def test_foreign_origin_gets_403(start_server, clients: list) -> None:
    server = await start_server(allowed_origins=["https://app.example"])
    with pytest.raises(websockets.InvalidStatus) as info:
        await websockets.connect(ws_url(server), origin="https://evil.example")
    assert info.value.response.status_code == 403
    # a listed origin, and no origin at all (not a browser) are fine
    listed = await websockets.connect(ws_url(server), origin="https://app.example")
    none = await websockets.connect(ws_url(server))
    clients += [listed, none]
    # with a list configured, only the list counts: Host is the client's to choose
    with pytest.raises(websockets.InvalidStatus) as info:
        await websockets.connect(ws_url(server), origin=f"http://127.0.0.1:{server.port}")
    assert info.value.response.status_code == 403


async def test_same_origin_allowed_without_a_list(start_server, clients: list) -> None:
    server = await start_server()
    same = await websockets.connect(ws_url(server), origin=f"http://127.0.0.1:{server.port}")
    clients.append(same)
    with pytest.raises(websockets.InvalidStatus) as info:
        await websockets.connect(ws_url(server), origin="https://evil.example")
    assert info.value.response.status_code == 403


# -- limits -----------------------------------------------------------------------------------------


async def test_channel_limit_is_error_106(start_server, clients: list) -> None:
    server = await start_server(client_channel_limit=2)
    c = await proto_client(server)
    clients.append(c)
    await c.call("subscribe", {"channel": "a"})
    await c.call("subscribe", {"channel": "b"})
    assert (await c.call("subscribe", {"channel": "c"}))["error"]["code"] == 106
    await c.call("unsubscribe", {"channel": "a"})
    assert (await c.call("subscribe", {"channel": "c"}))["subscribe"] == {}


async def test_command_rate_limit_111_then_3013(start_server, clients: list) -> None:
    server = await start_server(client_command_rate=5, client_command_burst=5)
    flood, calm = await proto_client(server), await proto_client(server)
    clients += [flood, calm]
    commands = [{"id": 10 + i, "ping": {}} for i in range(6)]
    await flood.send(*commands)
    replies = [await flood.recv() for _ in range(6)]
    assert any(r.get("error", {}).get("code") == 111 for r in replies)
    await flood.send(*[{"id": 100 + i, "ping": {}} for i in range(20)])
    assert (await flood.closed())[0] == 3013
    assert (await calm.call("ping"))["ping"] == {}


async def test_connections_per_user_limit_is_3504(start_server, clients: list) -> None:
    server = await start_server(token_hmac_secret=SECRET, client_user_connection_limit=2)
    first = [await proto_client(server, connect=False) for _ in range(3)]
    clients.extend(first)
    for c in first[:2]:
        assert "connect" in await c.call("connect", {"token": hs256("dave")})
    await first[2].send({"id": 1, "connect": {"token": hs256("dave")}})
    assert (await first[2].closed())[0] == 3504
    assert (await first[0].call("ping"))["ping"] == {}


async def _raw_request(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    try:
        return await asyncio.wait_for(reader.read(65536), TIMEOUT)
    finally:
        writer.close()


async def test_oversized_handshake_gets_431_and_long_url_414(server: Server, clients: list) -> None:
    bystander = await proto_client(server)
    clients.append(bystander)
    huge_headers = b"GET /connection/websocket HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"a" * 20000 + b"\r\n\r\n"
    assert (await _raw_request(server.port, huge_headers)).startswith(b"HTTP/1.1 431")
    long_url = b"GET /" + b"a" * 10000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    assert (await _raw_request(server.port, long_url)).startswith(b"HTTP/1.1 414")
    assert (await bystander.call("ping"))["ping"] == {}


# -- secure by default --------------------------------------------------------------------------


def test_refuses_public_bind_without_auth() -> None:
    out = subprocess.run([sys.executable, "-m", "hubbub", "serve", "--host", "0.0.0.0", "--port", "0"],
                         capture_output=True, text=True, timeout=TIMEOUT, cwd=ROOT)
    assert out.returncode == 2
    assert "token_hmac_secret" in out.stderr and "allow_anonymous" in out.stderr
    with pytest.raises(ConfigError):
        Config(host="0.0.0.0").check_exposure()
    Config(host="0.0.0.0", token_hmac_secret="s").check_exposure()
    Config(host="0.0.0.0", allow_anonymous=True).check_exposure()
    Config(host="127.0.0.1").check_exposure()


def test_public_bind_with_token_secret_starts(serve_process) -> None:
    server = serve_process("--host", "0.0.0.0", env={"HUBBUB_TOKEN_HMAC_SECRET": SECRET})
    assert any("tokens required" in line for line in server.lines) or server.port
    assert server.stop() == 0


def test_settings_precedence_flags_env_file(tmp_path) -> None:
    path = tmp_path / "hub.toml"
    path.write_text('port = 1111\napi_key = "from-file"\nping_interval = 50\n')
    config = Config.load(path, env={"HUBBUB_PORT": "2222", "HUBBUB_API_KEY": "from-env"}, port=3333)
    assert (config.port, config.api_key, config.ping_interval) == (3333, "from-env", 50.0)
    with pytest.raises(ConfigError, match="HUBBUB_NOPE"):
        Config.load(None, env={"HUBBUB_NOPE": "1"})
    with pytest.raises(ConfigError, match="HUBBUB_PORT"):
        Config.load(None, env={"HUBBUB_PORT": "eighty"})


def test_check_config_names_keys_and_lines(tmp_path) -> None:
    path = tmp_path / "hub.toml"
    path.write_text('port = 8000\nbogus = 1\n\n[namespaces.chat]\nhistory_size = "ten"\npresence = true\n')
    out = subprocess.run([sys.executable, "-m", "hubbub", "check-config", str(path)], capture_output=True,
                         text=True, timeout=TIMEOUT, cwd=ROOT)
    assert out.returncode == 2
    assert f"{path}:2: unknown setting 'bogus'" in out.stderr
    assert f"{path}:5: namespaces.chat.history_size must be a non-negative integer" in out.stderr
    path.write_text('port = 8000\n[namespaces.chat]\npresence = true\n')
    out = subprocess.run([sys.executable, "-m", "hubbub", "check-config", str(path)], capture_output=True,
                         text=True, timeout=TIMEOUT, cwd=ROOT)
    assert out.returncode == 0 and "ok" in out.stdout


async def test_es256_token_verified_through_a_jwks_url(start_server, clients: list) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec
    from jwt.algorithms import ECAlgorithm

    from hubbub.http import HTTPRequest, HTTPResponse

    key = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(ECAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid="k1", alg="ES256", use="sig")
    keys = await start_server()  # any HTTP server will do to publish the key set

    async def jwks(request: HTTPRequest) -> HTTPResponse:
        return HTTPResponse.json({"keys": [jwk]})

    keys.add_http("/.well-known/jwks.json", jwks)
    server = await start_server(token_jwks_url=f"http://127.0.0.1:{keys.port}/.well-known/jwks.json")
    good = jwt.encode({"sub": "erin", "exp": int(time.time()) + 60}, key, algorithm="ES256", headers={"kid": "k1"})
    c = await proto_client(server, connect=False)
    clients.append(c)
    assert "connect" in await c.call("connect", {"token": good})
    assert [s.user for s in server.hub.user_sessions("erin")] == ["erin"]
    other = ec.generate_private_key(ec.SECP256R1())
    forged = jwt.encode({"sub": "erin"}, other, algorithm="ES256", headers={"kid": "k1"})
    bad = await proto_client(server, connect=False)
    clients.append(bad)
    await bad.send({"id": 1, "connect": {"token": forged}})
    assert (await bad.closed())[0] == 3500


async def test_settings_changed_before_start_are_read_at_start(clients: list) -> None:
    """App.serve(host=...) and `hubbub run --host` change the host after the server
    exists: anonymous access is decided by the address actually served."""
    from hubbub.server import Server

    server = Server(make_config(host="0.0.0.0"))  # a public address: anonymous clients refused
    server.config.host = "127.0.0.1"  # as App.serve(host="127.0.0.1") does
    await server.start()
    try:
        c = await proto_client(server, connect=False)
        clients.append(c)
        assert "connect" in await c.call("connect", {})
    finally:
        await server.close()
