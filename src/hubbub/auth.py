"""Connection and subscription tokens (JWT), verified with PyJWT.

Claims, as in Centrifugo (centrifugal.dev ``docs/server/authentication.md``
and ``docs/server/channel_token_auth.md``): a connection token has ``sub``
(required, may be ``""``), ``exp``, ``info``, ``channels`` and ``subs`` (its
channels subscribed as those of ``channels``; the per-channel options are not used); a subscription
token ``sub`` (the connection's user), ``channel``, ``exp`` and ``info``.
Keys and algorithms: ``docs/security.md``.

See ``docs/design.md``, "The exception tree" (``TokenExpired``, ``InvalidToken``).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import Config
from .errors import InvalidToken, TokenExpired

if TYPE_CHECKING:
    import jwt
    from jwt.types import Options

# PyJWT (and the cryptography package it loads, ~40 ms) is imported where a token is
# verified, not with this module: a server without token keys never loads it
# (``hubbub serve`` starts faster: workload 8, the reconnect storm).

log = logging.getLogger("hubbub.auth")

HMAC_ALGORITHMS = ["HS256", "HS384", "HS512"]
RSA_ALGORITHMS = ["RS256", "RS384", "RS512"]
ECDSA_ALGORITHMS = ["ES256", "ES384", "ES512"]


@dataclass(frozen=True, slots=True)
class Claims:
    """What a verified token says.

    Attributes:
        user: the ``sub`` claim.
        expire_at: the ``exp`` claim (unix seconds), or ``None``.
        info: the ``info`` claim (any JSON value), or ``None``.
        channels: the ``channels`` claim and the keys of ``subs`` (connection tokens).
        channel: the ``channel`` claim (subscription tokens).
    """

    user: str
    expire_at: float | None = None
    info: Any = None
    channels: tuple[str, ...] = ()
    channel: str = ""


def _read_key(value: str) -> str:
    """A PEM key given inline or as a path to a file."""
    if "-----BEGIN" in value:
        return value
    try:
        return Path(value).read_text()
    except OSError as exc:
        raise InvalidToken(f"cannot read public key file {value}: {exc.strerror}") from None


class TokenVerifier:
    """Verifies tokens with the keys of a :class:`~hubbub.config.Config`.

    Raises ``ConfigError``-free: keys are read when first needed, and a
    missing key file makes every token invalid (logged once).
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self._keys: list[tuple[Any, list[str]]] = []
        if config.token_hmac_secret:
            self._keys.append((config.token_hmac_secret, HMAC_ALGORITHMS))
        if config.token_rsa_public_key:
            self._keys.append((_read_key(config.token_rsa_public_key), RSA_ALGORITHMS))
        if config.token_ecdsa_public_key:
            self._keys.append((_read_key(config.token_ecdsa_public_key), ECDSA_ALGORITHMS))
        self._jwks: jwt.PyJWKClient | None = None
        if config.token_jwks_url:
            import jwt

            self._jwks = jwt.PyJWKClient(config.token_jwks_url, cache_keys=True)

    @property
    def enabled(self) -> bool:
        return bool(self._keys or self._jwks)

    @property
    def needs_lookup(self) -> bool:
        """Whether verifying may fetch keys (JWKS), so only the async methods work."""
        return self._jwks is not None

    def _options(self) -> tuple[Options, dict[str, Any]]:
        options: Options = {"require": ["sub"], "verify_aud": bool(self.config.token_audience)}
        kwargs: dict[str, Any] = {}
        if self.config.token_audience:
            kwargs["audience"] = self.config.token_audience
        if self.config.token_issuer:
            kwargs["issuer"] = self.config.token_issuer
        return options, kwargs

    def _algorithm(self, token: str) -> str:
        if not self.enabled:
            raise InvalidToken("token authentication is not configured")
        import jwt

        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise InvalidToken("malformed token") from None
        alg = header.get("alg", "")
        return alg if isinstance(alg, str) else ""

    def _verify(self, token: str, candidates: list[tuple[Any, list[str]]], alg: str) -> dict[str, Any]:
        if not candidates:
            raise InvalidToken(f"no key for algorithm {alg!r}")
        import jwt

        options, kwargs = self._options()
        last: Exception | None = None
        for key, algorithms in candidates:
            try:
                claims: dict[str, Any] = jwt.decode(token, key, algorithms=algorithms, options=options, **kwargs)
                return claims
            except jwt.ExpiredSignatureError:
                raise TokenExpired("token expired") from None
            except jwt.PyJWTError as exc:
                last = exc
        raise InvalidToken(f"invalid token: {type(last).__name__}")

    def _decode_nowait(self, token: str) -> dict[str, Any]:
        alg = self._algorithm(token)
        return self._verify(token, [(key, algs) for key, algs in self._keys if alg in algs], alg)

    async def _decode(self, token: str) -> dict[str, Any]:
        alg = self._algorithm(token)
        candidates = [(key, algs) for key, algs in self._keys if alg in algs]
        if self._jwks is not None and alg in RSA_ALGORITHMS + ECDSA_ALGORITHMS:
            import jwt

            try:
                signing_key = await asyncio.to_thread(self._jwks.get_signing_key_from_jwt, token)
            except jwt.PyJWKClientError as exc:
                log.warning("JWKS lookup failed: %s", exc)
            else:
                candidates.append((signing_key.key, [alg]))
        return self._verify(token, candidates, alg)

    async def connection(self, token: str) -> Claims:
        """Verify a connection token.

        Raises:
            TokenExpired: ``exp`` has passed.
            InvalidToken: any other problem, including a subscription token
                (one with a ``channel`` claim) offered as a connection token.
        """
        return self._connection_claims(await self._decode(token))

    def connection_nowait(self, token: str) -> Claims:
        """:meth:`connection` without waiting; only when not :attr:`needs_lookup`
        (a JWKS key may not be cached). Same errors."""
        return self._connection_claims(self._decode_nowait(token))

    def subscription_nowait(self, token: str) -> Claims:
        """:meth:`subscription` without waiting; only when not :attr:`needs_lookup`."""
        return self._subscription_claims(self._decode_nowait(token))

    @staticmethod
    def _connection_claims(claims: dict[str, Any]) -> Claims:
        if "channel" in claims:
            # Centrifugo tells the two apart the same way: a subscription token names its channel.
            raise InvalidToken("a subscription token is not a connection token")
        channels = claims.get("channels") or ()
        if not isinstance(channels, (list, tuple)) or not all(isinstance(c, str) for c in channels):
            raise InvalidToken("channels claim must be a list of strings")
        subs = claims.get("subs") or {}
        if not isinstance(subs, dict) or not all(isinstance(v, dict) for v in subs.values()):
            raise InvalidToken("subs claim must be an object of channel: options")
        # Centrifugo's subs claim (channel -> {info, data, override}): its channels are
        # subscribed on connect like those of the channels claim; the options are not used.
        return Claims(_sub(claims), _exp(claims), claims.get("info"),
                      tuple(channels) + tuple(c for c in subs if c not in channels))

    async def subscription(self, token: str) -> Claims:
        """Verify a subscription token (same errors as :meth:`connection`)."""
        return self._subscription_claims(await self._decode(token))

    @staticmethod
    def _subscription_claims(claims: dict[str, Any]) -> Claims:
        channel = claims.get("channel")
        if not isinstance(channel, str) or not channel:
            raise InvalidToken("subscription token without channel claim")
        return Claims(_sub(claims), _exp(claims), claims.get("info"), channel=channel)


def _sub(claims: dict[str, Any]) -> str:
    sub = claims.get("sub", "")
    if not isinstance(sub, str):
        raise InvalidToken("sub claim must be a string")
    return sub


def _exp(claims: dict[str, Any]) -> float | None:
    exp = claims.get("exp")
    return float(exp) if isinstance(exp, (int, float)) else None
