"""Token verification (``hubbub.auth``): HMAC, RSA from a file, JWKS fetched from a real
HTTP server, audience and issuer, and the errors of the one exception tree."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from hubbub.auth import TokenVerifier
from hubbub.config import Config
from hubbub.errors import HubbubError, InvalidToken, TokenError, TokenExpired

SECRET = "s" * 32


def hs(claims: dict[str, Any], secret: str = SECRET) -> str:
    return jwt.encode(claims, secret, algorithm="HS256")


def verifier(**settings: Any) -> TokenVerifier:
    return TokenVerifier(Config(**settings))


def test_hmac_token_claims() -> None:
    exp = int(time.time()) + 60
    claims = verifier(token_hmac_secret=SECRET).connection_nowait(
        hs({"sub": "alice", "exp": exp, "info": {"role": "admin"}, "channels": ["news"]}))
    assert (claims.user, claims.expire_at, claims.info, claims.channels) == ("alice", exp, {"role": "admin"},
                                                                            ("news",))


def test_errors_belong_to_the_one_tree() -> None:
    assert issubclass(TokenExpired, TokenError) and issubclass(InvalidToken, TokenError)
    assert issubclass(TokenError, HubbubError)


@pytest.mark.parametrize("token, error", [
    (hs({"sub": "a", "exp": int(time.time()) - 9}), TokenExpired),
    (hs({"sub": "a"}, secret="w" * 32), InvalidToken),
    (hs({"exp": int(time.time()) + 60}), InvalidToken),  # no sub
    (hs({"sub": 7}), InvalidToken),
    (hs({"sub": "a", "channel": "news"}), InvalidToken),  # a subscription token
    (hs({"sub": "a", "channels": "news"}), InvalidToken),
    ("not-a-jwt", InvalidToken),
])
def test_refused_connection_tokens(token: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        verifier(token_hmac_secret=SECRET).connection_nowait(token)


def test_subscription_token_needs_its_channel() -> None:
    v = verifier(token_hmac_secret=SECRET)
    assert v.subscription_nowait(hs({"sub": "a", "channel": "news"})).channel == "news"
    with pytest.raises(InvalidToken):
        v.subscription_nowait(hs({"sub": "a"}))


def test_audience_and_issuer_are_required_when_set() -> None:
    v = verifier(token_hmac_secret=SECRET, token_audience="hub", token_issuer="me")
    assert v.connection_nowait(hs({"sub": "a", "aud": "hub", "iss": "me"})).user == "a"
    for claims in ({"sub": "a"}, {"sub": "a", "aud": "other", "iss": "me"}, {"sub": "a", "aud": "hub", "iss": "x"}):
        with pytest.raises(InvalidToken):
            v.connection_nowait(hs(claims))


def test_no_keys_means_disabled_and_every_token_invalid() -> None:
    v = verifier()
    assert not v.enabled
    with pytest.raises(InvalidToken):
        v.connection_nowait(hs({"sub": "a"}))


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def test_rsa_public_key_from_a_file(tmp_path: Path) -> None:
    key = rsa_key()
    pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    path = tmp_path / "public.pem"
    path.write_bytes(pem)
    v = verifier(token_rsa_public_key=str(path))
    assert v.connection_nowait(jwt.encode({"sub": "r"}, key, algorithm="RS256")).user == "r"
    with pytest.raises(InvalidToken):  # an HMAC token when only RSA is configured
        v.connection_nowait(hs({"sub": "r"}))


async def serve_jwks(body: bytes, requests: list[str]) -> tuple[asyncio.Server, str]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        requests.append(head.split(b" ")[1].decode())
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                     b"Connection: close\r\n\r\n" % len(body) + body)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/jwks.json"


@pytest.fixture
async def jwks() -> AsyncIterator[tuple[rsa.RSAPrivateKey, str, list[str]]]:
    key = rsa_key()
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    public.update(kid="k1", use="sig", alg="RS256")
    requests: list[str] = []
    server, url = await serve_jwks(json.dumps({"keys": [public]}).encode(), requests)
    async with server:
        yield key, url, requests


async def test_jwks_keys_are_fetched_and_cached(jwks: tuple[rsa.RSAPrivateKey, str, list[str]]) -> None:
    key, url, requests = jwks
    v = verifier(token_jwks_url=url)
    assert v.needs_lookup  # handshakes with such a token must be awaited (core.PENDING)
    token = jwt.encode({"sub": "j"}, key, algorithm="RS256", headers={"kid": "k1"})
    assert (await v.connection(token)).user == "j"
    assert (await v.connection(token)).user == "j"
    assert requests == ["/jwks.json"]  # the key set was fetched once
    with pytest.raises(InvalidToken):
        await v.connection(jwt.encode({"sub": "j"}, rsa_key(), algorithm="RS256", headers={"kid": "k1"}))
