"""The Redis broker: many processes and machines share channels through Redis.

Each process (node) holds **one** pub/sub connection for all its channels and
a small pool of command connections (``redis.asyncio``). Streams (history,
offset, epoch), idempotency keys and presence live in Redis, so every node
sees the same ones.

Data layout
-----------

``P`` is the key prefix (default ``"hubbub"``), ``C`` a channel name, ``N``
the length of ``C`` in characters, ``K`` an idempotency key::

    key / topic              type      content
    -----------------------  --------  ----------------------------------------------------
    P.ch.C                   pub/sub   topic: C's encoded publications, joins and leaves
    P.meta.C                 hash      e: epoch, s: offset of the newest publication;
                                       TTL meta_ttl, refreshed by every publish
    P.history.C              list      encoded publications, oldest first, at most
                                       history_size; TTL history_ttl from the last publish.
                                       Invariant: it holds offsets s-len+1 .. s
    P.idem.N.C.K             string    "offset:epoch" of the first publish with key K;
                                       TTL idempotency_ttl
    P.presence.data.C        hash      connection id -> encoded ClientInfo
    P.presence.expire.C      zset      connection id -> expiry time (ms, Redis' clock)

Wire format
-----------

A message on ``P.ch.C`` (and an entry of ``P.history.C``) is::

    <type><offset>[@<epoch>]:<header>\\n<data>

``type`` is ``p`` (publication), ``j`` (join) or ``l`` (leave); ``offset`` a
decimal (``0`` without history); ``epoch`` the stream's epoch, present
whenever ``offset`` is (so a node never takes a new stream's offsets for the
old one's: after Redis lost its data, offsets start again from 1);
``header`` compact JSON without newlines:
``{"i": info, "r": base64 raw, "b": 1 if binary, "x": exclude_client, "g": tags}``
(absent fields are left out; ``info`` is ``{"c": client, "u": user, "ci":
conn_info, "hi": chan_info}`` with the JSON infos as strings); ``data`` is the
publication's JSON bytes, verbatim (empty for join/leave). Joins and leaves go
on the channel's topic so they keep their order with publications.

The publish script
------------------

One ``EVALSHA`` per publication with history or an idempotency key
(``KEYS``: meta, history, topic[, idempotency key]), in this order, atomically:

1. with an idempotency key: ``GET P.idem...``; if set, return the stored
   position and stop (nothing stored, nothing published);
2. ``HGET P.meta.C e``; if the meta key is missing (new stream, expired, or
   Redis restarted/evicted it): take the fresh random epoch passed by the
   caller, ``DEL P.history.C`` and ``HSET`` the epoch. A lost stream therefore
   always gets a new epoch, so recovery answers ``recovered: false``, never a
   wrong ``true``;
3. ``HINCRBY P.meta.C s 1`` (the new offset), ``PEXPIRE`` meta (``meta_ttl``);
4. ``RPUSH`` the encoded publication, ``LTRIM`` to ``history_size``,
   ``PEXPIRE`` (``history_ttl``);
5. ``PUBLISH P.ch.C`` the same bytes (``SPUBLISH`` on Redis Cluster);
6. with an idempotency key: ``SET P.idem... "offset:epoch" PX ttl``;
7. return ``{offset, epoch, 1}``.

A publication without history and without idempotency key is one plain
``PUBLISH``.

The publish pipeline
--------------------

Publications, joins and leaves are not sent one by one: each call queues its
command with a callback (:meth:`RedisBroker.publish_nowait`; ``publish``
awaits a future resolved by one). One writer task sends everything queued
during an event-loop iteration as one pipeline (one write, up to
:data:`MAX_PIPELINE` commands) on one command connection, reads the replies,
and calls the callbacks in order, in the iteration the replies were read (a
client's publish reply leaves in the next write, with no task per publish);
the next pipeline leaves only after that. So
commands reach Redis in the order they were queued (per-channel order holds
across nodes as before), a publish returns only after its reply was read
(acknowledged means stored), and under load one round trip carries many
publications (``Stats.broker_publish_round_trips`` /
``Stats.broker_publications``: ``/metrics``). A command that got ``NOSCRIPT``
never ran: it is sent once more, behind ``SCRIPT LOAD``. On the other side,
pub/sub replies already read are dispatched without yielding to the event
loop, so a burst reaches the hub in one iteration and each subscriber gets one
write for it. Replies are parsed by ``hiredis``.

Redis Cluster
-------------

With ``sharded_pubsub`` (one part of
:class:`~hubbub.brokers.sharded.RedisClusterBroker`) ``C`` is written with a
hash tag, ``{C}`` (see :func:`hash_tagged`), in every key and topic name, so a
channel's keys and its topic share one slot, and pub/sub is sharded
(``SSUBSCRIBE``/``SPUBLISH``). ``history`` is one script too (it creates the stream's epoch when
missing, so a subscriber gets an epoch before the first publication), and so
are the presence reads and writes (they use Redis' ``TIME``, so the nodes'
clocks do not matter).

Failures
--------

When Redis cannot be reached every method raises
:class:`~hubbub.errors.BrokerUnavailable` (short socket timeouts; while the
pub/sub connection is down, at once) and :attr:`RedisBroker.healthy` is
``False``. A background task owned by the broker reconnects with exponential
backoff and jitter (capped at ``reconnect_cap`` seconds), resubscribes every
channel, then calls ``handler.on_broker_reconnect()`` so the hub compares its
positions with the streams. Pub/sub delivers at most once: what was published
while this node was not subscribed is visible to the hub as an offset gap or a
changed position. ``publish`` returns only after the script stored and
published the publication; a failed call may or may not have reached Redis,
but it is never acknowledged.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import hashlib
import io
import itertools
import json
import logging
import math
import random
import secrets
import time
import urllib.parse
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any

from ..errors import BrokerError, BrokerUnavailable, ConfigError
from ..strictjson import dumps
from .base import (
    Broker,
    BrokerEventHandler,
    ClientInfo,
    HistoryResult,
    Publication,
    PublishCallback,
    StreamPosition,
)

try:
    import redis.asyncio as aioredis
    from redis import exceptions as redis_errors
    from redis.asyncio.connection import AbstractConnection
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.utils import HIREDIS_AVAILABLE
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ConfigError("the redis broker needs the 'redis' package: pip install 'hubbub[redis]'") from exc

log = logging.getLogger("hubbub.broker")

if HIREDIS_AVAILABLE:  # replies are parsed, and commands packed, in C (``pip install 'redis[hiredis]'``)
    import hiredis
    from redis._parsers import _AsyncHiredisParser

    _PARSER: dict[str, Any] = {"parser_class": _AsyncHiredisParser}
else:  # pragma: no cover - depends on the environment
    _PARSER = {}
    log.warning("hiredis is not installed: the redis broker parses replies in Python (slower)")

#: Topics per SUBSCRIBE command when resubscribing after a reconnect.
SUBSCRIBE_BATCH = 512
#: Expired presence entries removed per presence call (bounds a script's work).
PRESENCE_SWEEP = 1000
#: Commands per publish pipeline at most (a longer queue goes in several).
MAX_PIPELINE = 1024
#: Seconds :meth:`RedisBroker.close` waits for its cancelled tasks (they end at once unless a bug holds one).
CLOSE_WAIT = 2.0

#: Pub/sub messages are handed to the hub in batches, so that what Redis
#: writes in pieces (it reads a pipeline 16 KiB at a time) reaches the
#: subscribers as one write each. Messages that arrive while this node's own
#: publish pipeline is in flight go with its replies (or after
#: :data:`PIPELINE_HOLD`, should Redis be slow). Under load (the last
#: hand-off, less than :data:`BUSY_WINDOW` seconds ago, carried at least
#: :data:`BUSY_BATCH` messages) others wait up to :data:`PUBSUB_HOLD` seconds;
#: otherwise they go in the next loop iteration, so a light stream gains no
#: latency. At most :data:`MAX_INBOX` wait.
PUBSUB_HOLD = 0.002
#: Longest a pub/sub message waits for this node's pipeline (a slow Redis).
PIPELINE_HOLD = 0.05
BUSY_WINDOW = 0.05
BUSY_BATCH = 32
MAX_INBOX = 4096


class _Watch:
    """The watchdog state of one pub/sub connection."""

    __slots__ = ("handle", "pinged", "failure")

    def __init__(self) -> None:
        self.handle: asyncio.TimerHandle | None = None
        self.pinged = False
        self.failure: BaseException | None = None


#: What a pipeline calls with a command's outcome: ``(reply, None)`` or ``(None, error)``.
ReplyCallback = Callable[[Any, "BaseException | None"], None]


class _Queued:
    """A publish-path command waiting for the next pipeline, and the callback
    its outcome goes to (called in the loop iteration its reply was read)."""

    __slots__ = ("args", "done", "retried")

    def __init__(self, args: tuple[Any, ...], done: ReplyCallback) -> None:
        self.args = args
        self.done = done
        self.retried = False

    def finish(self, reply: Any, exc: BaseException | None) -> None:
        """Hand the outcome to the callback; a failing callback is logged, and
        the rest of the pipeline is still answered."""
        try:
            self.done(reply, exc)
        except Exception:
            log.exception("a redis pipeline callback failed")


def _into(future: asyncio.Future[Any]) -> ReplyCallback:
    """A :data:`ReplyCallback` that resolves ``future`` (unless its caller gave up)."""

    def done(reply: Any, exc: BaseException | None) -> None:
        if future.done():
            return  # cancelled: the command ran all the same
        if exc is None:
            future.set_result(reply)
        else:
            future.set_exception(exc)

    return done


def _publish_error(exc: BaseException) -> BaseException:
    """A publish pipeline's failure as the broker's error: unreachable ->
    ``BrokerUnavailable``, refused -> ``BrokerError`` (ours pass through)."""
    if isinstance(exc, BrokerError):
        return exc
    if isinstance(exc, (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError)):
        return BrokerUnavailable(f"redis publish failed: {_describe(exc)}")
    if isinstance(exc, redis_errors.RedisError):
        return BrokerError(f"redis publish failed: {_describe(exc)}")
    return exc

_PUBLISH_LUA = """
if KEYS[4] then
  local seen = redis.call('GET', KEYS[4])
  if seen then
    local sep = string.find(seen, ':', 1, true)
    return {tonumber(string.sub(seen, 1, sep - 1)), string.sub(seen, sep + 1), 0}
  end
end
local offset, epoch, msg = 0, '', nil
local size = tonumber(ARGV[3])
if size > 0 then
  epoch = redis.call('HGET', KEYS[1], 'e')
  if not epoch then
    epoch = ARGV[6]
    redis.call('DEL', KEYS[2])
    redis.call('HSET', KEYS[1], 'e', epoch)
  end
  offset = redis.call('HINCRBY', KEYS[1], 's', 1)
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
  msg = 'p' .. offset .. '@' .. epoch .. ':' .. ARGV[2]
  redis.call('RPUSH', KEYS[2], msg)
  redis.call('LTRIM', KEYS[2], -size, -1)
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
else
  msg = 'p0:' .. ARGV[2]
end
redis.call(ARGV[1], KEYS[3], msg)
if KEYS[4] then
  redis.call('SET', KEYS[4], offset .. ':' .. epoch, 'PX', ARGV[7])
end
return {offset, epoch, 1}
"""

_HISTORY_LUA = """
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch then
  epoch = ARGV[4]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', epoch, 's', 0)
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
  return {0, epoch}
end
local top = tonumber(redis.call('HGET', KEYS[1], 's') or 0)
local limit = tonumber(ARGV[2])
if limit == 0 then return {top, epoch} end
local len = redis.call('LLEN', KEYS[2])
local lo, hi = 0, len - 1
local since = tonumber(ARGV[1])
if since >= 0 then
  -- index 0 holds offset top - len + 1: skip the entries not after since
  lo = math.max(since - (top - len), 0)
end
if limit > 0 and hi - lo + 1 > limit then
  if ARGV[3] == '1' then lo = hi - limit + 1 else hi = lo + limit - 1 end
end
if lo > hi then return {top, epoch} end
return {top, epoch, redis.call('LRANGE', KEYS[2], lo, hi)}
"""

# Shared by the presence scripts: Redis' clock in ms, and a bounded sweep of
# expired entries (KEYS[1] data hash, KEYS[2] expiry zset).
_PRESENCE_PRELUDE = f"""
pcall(redis.replicate_commands)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, {PRESENCE_SWEEP})
if #gone > 0 then
  redis.call('ZREM', KEYS[2], unpack(gone))
  redis.call('HDEL', KEYS[1], unpack(gone))
end
local function live()
  local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. now, '+inf')
  local out = {{}}
  for i = 1, #ids, 500 do
    local chunk = {{unpack(ids, i, math.min(i + 499, #ids))}}
    local values = redis.call('HMGET', KEYS[1], unpack(chunk))
    for j = 1, #chunk do
      if values[j] then
        out[#out + 1] = chunk[j]
        out[#out + 1] = values[j]
      end
    end
  end
  return out
end
"""

_PRESENCE_ADD_LUA = _PRESENCE_PRELUDE + """
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
-- both keys live as long as their longest-lived entry
local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
local keep = tonumber(last[2]) - now
redis.call('PEXPIRE', KEYS[1], keep)
redis.call('PEXPIRE', KEYS[2], keep)
return 1
"""

_PRESENCE_GET_LUA = _PRESENCE_PRELUDE + """
return live()
"""

_PRESENCE_STATS_LUA = _PRESENCE_PRELUDE + """
local entries = live()
local users, num_users = {}, 0
for i = 2, #entries, 2 do
  local user = cjson.decode(entries[i])['u'] or ''
  if not users[user] then
    users[user] = true
    num_users = num_users + 1
  end
end
return {#entries / 2, num_users}
"""


def new_epoch() -> str:
    """A fresh random epoch (8 hex characters)."""
    return secrets.token_hex(4)


def _ms(seconds: float) -> int:
    """Seconds as whole milliseconds for ``PEXPIRE``/``PX`` (at least 1)."""
    return max(1, math.ceil(seconds * 1000))


# -- wire encoding ----------------------------------------------------------------------


def hash_tagged(channel: str) -> str:
    """``channel`` as it appears in key and topic names on Redis Cluster: with
    a hash tag, so that all of a channel's keys and its sharded pub/sub topic
    live in one slot: ``{C}``, or ``{H}C`` (``H`` a digest of ``C``) when ``C``
    holds a ``}`` (which would end the tag early)."""
    if "}" not in channel:
        return "{" + channel + "}"
    return "{" + hashlib.blake2b(channel.encode(), digest_size=8).hexdigest() + "}" + channel


def untag(name: str) -> str:
    """The inverse of :func:`hash_tagged`."""
    close = name.find("}")
    if not name.startswith("{") or close < 0:
        return name
    return name[1:-1] if close == len(name) - 1 else name[close + 1 :]


def _pack_command(args: tuple[Any, ...]) -> bytes:
    """One command in RESP (arguments: bytes, str or int), without hiredis."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if type(arg) is str:
            arg = arg.encode()
        elif type(arg) is int:
            arg = b"%d" % arg
        parts.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(parts)


#: One command in RESP: hiredis's packer (C) when installed.
pack_command: Callable[[tuple[Any, ...]], bytes] = hiredis.pack_command if HIREDIS_AVAILABLE else _pack_command


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def info_to_wire(info: ClientInfo) -> dict[str, str]:
    """``info`` as the compact JSON object used on the wire and in presence."""
    out = {"c": info.client}
    if info.user:
        out["u"] = info.user
    if info.conn_info is not None:
        out["ci"] = _text(info.conn_info)
    if info.chan_info is not None:
        out["hi"] = _text(info.chan_info)
    return out


def info_from_wire(raw: dict[str, str]) -> ClientInfo:
    """The inverse of :func:`info_to_wire`."""
    ci, hi = raw.get("ci"), raw.get("hi")
    return ClientInfo(
        raw["c"], raw.get("u", ""), None if ci is None else _bytes(ci), None if hi is None else _bytes(hi)
    )


#: Message headers encoded and decoded lately (a publisher's headers repeat):
#: at most this many of each are kept, then the caches start again.
HEADER_CACHE = 4096
_encoded_headers: dict[tuple[Any, ...], bytes] = {}
_decoded_headers: dict[bytes, tuple[ClientInfo | None, bool, str | None, bool]] = {}


def encode_body(pub: Publication) -> bytes:
    """``<header>\n<payload>`` of ``pub``: the message without its type and offset.

    The payload is ``data``, or for a relay text message (``t``: ``data`` is
    the JSON string of the text ``raw``) ``raw`` itself, so that it travels
    once. The header is compact JSON: ``i`` the publisher's info, ``r`` other
    ``raw`` in base64, ``t``, ``b`` binary, ``x`` the excluded client, ``g``
    tags. Headers without ``r`` or ``g`` are the same for every message of a
    publisher, and encoded once.
    """
    text = pub.raw is not None and not pub.binary and _is_text_of(pub.data, pub.raw)
    payload = pub.raw if text else pub.data
    if pub.tags is None and (pub.raw is None or text):
        key = (pub.info, pub.binary, pub.exclude_client, text)
        head = _encoded_headers.get(key)
        if head is None:
            head = _encode_header(pub, text)
            if len(_encoded_headers) >= HEADER_CACHE:
                _encoded_headers.clear()
            _encoded_headers[key] = head
        return head + b"\n" + payload  # type: ignore[operator]
    return _encode_header(pub, text) + b"\n" + payload  # type: ignore[operator]


def _is_text_of(data: bytes, raw: bytes) -> bool:
    """Whether ``data`` is the JSON string of the text ``raw`` (a relay text message)."""
    if data[:1] != b'"':
        return False
    try:
        return data == dumps(raw.decode("utf-8"))
    except ValueError:  # not UTF-8 (UnicodeDecodeError), or a lone surrogate
        return False


def _encode_header(pub: Publication, text: bool) -> bytes:
    header: dict[str, Any] = {}
    if pub.info is not None:
        header["i"] = info_to_wire(pub.info)
    if text:
        header["t"] = 1
    elif pub.raw is not None:
        header["r"] = base64.b64encode(pub.raw).decode("ascii")
    if pub.binary:
        header["b"] = 1
    if pub.exclude_client is not None:
        header["x"] = pub.exclude_client
    if pub.tags:
        header["g"] = pub.tags
    return json.dumps(header, separators=(",", ":")).encode() if header else b"{}"


def encode_event(kind: bytes, info: ClientInfo) -> bytes:
    """A join (``kind`` ``b"j"``) or leave (``b"l"``) message."""
    return kind + b"0:" + json.dumps({"i": info_to_wire(info)}, separators=(",", ":")).encode() + b"\n"


def decode_message(msg: bytes) -> tuple[bytes, Publication | ClientInfo]:
    """Split a wire message into its type and its :class:`Publication` (type
    ``b"p"``) or :class:`ClientInfo` (``b"j"``/``b"l"``).

    Raises:
        ValueError: ``msg`` is not in the wire format.
    """
    colon = msg.index(b":")
    newline = msg.index(b"\n", colon)
    kind = msg[:1]
    position = msg[1:colon]
    at = position.find(b"@")
    epoch = ""
    if at >= 0:
        epoch = position[at + 1 :].decode("ascii")
        position = position[:at]
    head = msg[colon + 1 : newline]
    if kind != b"p":
        return kind, info_from_wire(json.loads(head)["i"])
    payload = msg[newline + 1 :]
    known = _decoded_headers.get(head)
    if known is not None:  # a header seen lately: no JSON parse
        info, binary, exclude, text = known
        return kind, Publication(
            data=dumps(payload.decode("utf-8")) if text else payload,
            offset=int(position),
            info=info,
            raw=payload if text else None,
            binary=binary,
            exclude_client=exclude,
            epoch=epoch,
        )
    header: dict[str, Any] = json.loads(head) if head != b"{}" else {}
    raw = header.get("r")
    wire_info = header.get("i")
    info = None if wire_info is None else info_from_wire(wire_info)
    binary = bool(header.get("b"))
    exclude = header.get("x")
    text = bool(header.get("t"))
    if raw is None and "g" not in header:
        if len(_decoded_headers) >= HEADER_CACHE:
            _decoded_headers.clear()
        _decoded_headers[head] = (info, binary, exclude, text)
    return kind, Publication(
        data=dumps(payload.decode("utf-8")) if text else payload,
        offset=int(position),
        info=info,
        raw=payload if text else (None if raw is None else base64.b64decode(raw)),
        binary=binary,
        exclude_client=exclude,
        tags=header.get("g"),
        epoch=epoch,
    )


# -- the broker ----------------------------------------------------------------------------


class RedisBroker(Broker):
    """A broker backed by Redis (see the module docstring for the layout).

    Args:
        url: ``redis://[[user]:password@]host[:port][/db][?prefix=P]``,
            ``rediss://...`` or ``unix://path``; redis-py's query options
            (e.g. ``?ssl_cert_reqs=none``) pass through. Or, for a master
            found through Redis Sentinel,
            ``redis+sentinel://[[user]:password@]host:port[,host:port...]/MASTER[/DB][?prefix=P&sentinel_password=S]``
            (at most ``max_connections`` command connections, then
            commands fail instead of waiting).
        prefix: prefix of every key and pub/sub topic (default: the URL's
            ``prefix`` query option, else ``"hubbub"``), so several hubs can
            share one Redis database.
        connect_timeout: seconds to open a connection.
        timeout: seconds a command (or a subscribe confirmation) may take;
            past it the call raises :class:`BrokerUnavailable`.
        ping_interval: seconds of silence on the pub/sub connection after
            which it is pinged; without an answer within as long again it is
            considered lost and reopened.
        meta_ttl: seconds a stream's position (offset and epoch) outlives its
            last publication (never less than the publication's history_ttl).
        max_connections: command connections at most.
        pool_timeout: seconds a command waits for a free connection when all
            ``max_connections`` are busy (Redis is up but saturated, e.g. the
            position checks of many channels after a reconnect); then it
            raises :class:`BrokerUnavailable`.
        reconnect_cap: longest pause between reconnect attempts (seconds).
        sharded_pubsub: this is one master of a Redis Cluster (used by
            :class:`~hubbub.brokers.sharded.RedisClusterBroker`): names carry
            a hash tag (see :func:`hash_tagged`) and pub/sub is sharded
            (``SSUBSCRIBE``/``SPUBLISH``, Redis 7).

    Raises:
        ConfigError: ``url`` cannot be parsed or an option is invalid.
    """

    name = "redis"
    pipelined = True

    def __init__(
        self,
        url: str,
        *,
        prefix: str | None = None,
        connect_timeout: float = 2.0,
        timeout: float = 2.0,
        ping_interval: float = 2.0,
        meta_ttl: float = 86400.0,
        max_connections: int = 32,
        pool_timeout: float = 10.0,
        reconnect_cap: float = 2.0,
        sharded_pubsub: bool = False,
    ) -> None:
        url, url_prefix = _split_prefix(url)
        prefix = prefix if prefix is not None else url_prefix if url_prefix is not None else "hubbub"
        if not prefix:
            raise ConfigError("redis broker: prefix must not be empty")
        for option, value in (("connect_timeout", connect_timeout), ("timeout", timeout),
                              ("ping_interval", ping_interval), ("meta_ttl", meta_ttl),
                              ("reconnect_cap", reconnect_cap), ("max_connections", max_connections),
                              ("pool_timeout", pool_timeout)):
            if not value > 0:
                raise ConfigError(f"redis broker: {option} must be > 0, got {value!r}")
        options: dict[str, Any] = dict(
            max_connections=max_connections,
            socket_connect_timeout=connect_timeout,
            socket_timeout=timeout,
            socket_keepalive=True,
            retry=Retry(NoBackoff(), 0),  # never resend: a publish must not run twice
            client_name="hubbub",
            protocol=2,  # RESP2: pub/sub messages are plain replies, read by this broker
            **_PARSER,
        )
        sentinel = None
        try:
            if url.startswith(("redis+sentinel://", "rediss+sentinel://")):
                sentinel = _sentinel_pool(url, options)
                self._pool = sentinel[0]
            else:
                self._pool = aioredis.BlockingConnectionPool.from_url(url, timeout=pool_timeout, **options)
        except ValueError as exc:
            raise ConfigError(f"broker: invalid redis URL: {exc}") from None  # the URL may hold a password
        self._redis = aioredis.Redis.from_pool(self._pool)
        kw = self._pool.connection_kwargs
        if sentinel is not None:
            self._where = sentinel[1]
            kw = {"host": sentinel[2][0], "port": sentinel[2][1]}
        else:
            self._where = kw.get("path") or f"{kw.get('host', 'localhost')}:{kw.get('port', 6379)}/{kw.get('db', 0)}"
        #: the server's address: ``host:port/db`` (or a socket path)
        self.address = self._where
        #: the prefix of every key and topic
        self.prefix = prefix
        self.host: str = kw.get("host", "localhost")
        self.port: int = int(kw.get("port", 6379))
        self._prefix = prefix
        self._topic_prefix = f"{prefix}.ch.".encode()
        self._connect_timeout = connect_timeout
        self._timeout = timeout
        self._ping_interval = ping_interval
        self._meta_ttl = meta_ttl
        self._reconnect_cap = reconnect_cap
        self._publish_script = self._redis.register_script(_PUBLISH_LUA)
        self._history_script = self._redis.register_script(_HISTORY_LUA)
        self._presence_add_script = self._redis.register_script(_PRESENCE_ADD_LUA)
        self._presence_get_script = self._redis.register_script(_PRESENCE_GET_LUA)
        self._presence_stats_script = self._redis.register_script(_PRESENCE_STATS_LUA)

        #: Redis Cluster node: hash-tagged names, sharded pub/sub (SSUBSCRIBE, SPUBLISH)
        self._tagged = sharded_pubsub
        if sharded_pubsub:
            self._commands = {b"subscribe": "SSUBSCRIBE", b"unsubscribe": "SUNSUBSCRIBE"}
            self._confirm_kinds = {b"ssubscribe": b"subscribe", b"sunsubscribe": b"unsubscribe"}
            self._message_kind = b"smessage"
            self._publish_command = "SPUBLISH"
        else:
            self._commands = {b"subscribe": "SUBSCRIBE", b"unsubscribe": "UNSUBSCRIBE"}
            self._confirm_kinds = {b"subscribe": b"subscribe", b"unsubscribe": b"unsubscribe"}
            self._message_kind = b"message"
            self._publish_command = "PUBLISH"
        #: called with a channel whose sharded subscription Redis Cluster dropped
        self.on_lost_subscription: Callable[[str], None] | None = None

        self._handler: BrokerEventHandler | None = None
        self._healthy = False
        self._closed = False
        self._down_logged = False  # the "lost" line was logged; the "back" line is due
        #: the live pub/sub connection (``None`` while down)
        self._conn: AbstractConnection | None = None
        #: channels this node wants, each with the token of the subscribe call that asked
        self._wanted: dict[str, int] = {}
        #: channels subscribed (or being subscribed) on ``_conn``
        self._subscribed: set[str] = set()
        #: confirmations awaited, per (b"subscribe"|b"unsubscribe", topic), oldest first;
        #: at most one per channel outside a reconnect (commands are serialized)
        self._pending: dict[tuple[bytes, bytes], collections.deque[asyncio.Future[bool]]] = {}
        self._sub_lock = asyncio.Lock()
        self._tokens = itertools.count(1)
        self._task: asyncio.Task[None] | None = None  # owns the pub/sub connection
        self._tasks: set[asyncio.Task[None]] = set()  # background clean-ups
        self._started: asyncio.Event | None = None
        #: publish-path commands (publications, joins, leaves) for the next pipeline, in order
        self._outbox: list[_Queued] = []
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None  # sends the outbox, one pipeline at a time
        self._heard = False  # the pub/sub connection said something since the watchdog last looked
        #: pub/sub messages read and not yet handed to the hub: (kind, channel, value), in order
        self._inbox: list[tuple[bytes, str, Any]] = []
        self._inbox_timer: asyncio.Handle | None = None
        self._busy_until = -math.inf  # loop time until which pub/sub messages are held (under load)
        self._in_flight = False  # a publish pipeline awaits its replies
        self._reload_scripts = False  # Redis answered NOSCRIPT: load them in front of the next pipeline

    # -- keys --------------------------------------------------------------------

    def _topic(self, channel: str) -> bytes:
        return self._topic_prefix + (hash_tagged(channel) if self._tagged else channel).encode()

    def _channel(self, topic: bytes) -> str:
        """The channel of a topic name (the inverse of :meth:`_topic`)."""
        name = topic[len(self._topic_prefix) :].decode("utf-8", "replace")
        return untag(name) if self._tagged else name

    def _meta_key(self, channel: str) -> str:
        return f"{self._prefix}.meta.{hash_tagged(channel) if self._tagged else channel}"

    def _history_key(self, channel: str) -> str:
        return f"{self._prefix}.history.{hash_tagged(channel) if self._tagged else channel}"

    def _idempotency_key(self, channel: str, key: str) -> str:
        return f"{self._prefix}.idem.{len(channel)}.{hash_tagged(channel) if self._tagged else channel}.{key}"

    def _presence_keys(self, channel: str) -> list[str]:
        name = hash_tagged(channel) if self._tagged else channel
        return [f"{self._prefix}.presence.data.{name}", f"{self._prefix}.presence.expire.{name}"]

    # -- life cycle ----------------------------------------------------------------

    async def start(self, handler: BrokerEventHandler) -> None:
        """Open the pub/sub connection and start delivering to ``handler``.

        Waits for the first connection attempt (at most about
        ``connect_timeout + 2 * timeout`` seconds). If Redis is unreachable
        this does not raise: the broker starts unhealthy, logs it, and keeps
        reconnecting in the background.

        Raises:
            RuntimeError: the broker was already started or closed.
        """
        if self._task is not None or self._closed:
            raise RuntimeError("RedisBroker.start() may be called once")
        self._handler = handler
        self._started = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._maintain(), name="hubbub redis pub/sub")
        try:
            await asyncio.wait_for(self._started.wait(), self._connect_timeout + 2 * self._timeout)
        except TimeoutError:
            pass

    async def close(self) -> None:
        """Stop delivering, cancel the broker's tasks, close every connection. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._inbox_timer is not None:
            self._inbox_timer.cancel()
            self._inbox_timer = None
        tasks = [t for t in (self._task, self._writer, *self._tasks) if t is not None]
        self._task = self._writer = None
        for task in tasks:
            task.cancel()
        self._wake.set()  # a writer whose cancellation was lost below it wakes up and finds the broker closed
        # asyncio.wait, not `await task`: a cancellation of close() itself must reach its caller
        done, stuck = await asyncio.wait(tasks, timeout=CLOSE_WAIT) if tasks else (set(), set())
        for task in done:
            if not task.cancelled() and task.exception() is not None:  # pragma: no cover - they log their own
                log.error("redis broker task %r failed", task.get_name(), exc_info=task.exception())
        for task in stuck:  # pragma: no cover - a bug: say where it hangs, and do not wait for it
            where = io.StringIO()
            task.print_stack(file=where)
            log.error("redis broker task %r did not stop within %s s; left behind:\n%s",
                      task.get_name(), CLOSE_WAIT, where.getvalue())
        outbox, self._outbox = self._outbox, []
        for queued in outbox:
            queued.finish(None, BrokerUnavailable("the redis broker is closed"))
        conn = self._conn
        self._drop(conn)
        if conn is not None:
            await self._disconnect(conn)
        self._handler = None
        await self._redis.aclose()

    @property
    def healthy(self) -> bool:
        """Whether the pub/sub connection to Redis is up (``/health``)."""
        return self._healthy

    async def round_trip(self) -> float:
        """Seconds a Redis ``PING`` takes on a command connection.

        Raises:
            BrokerUnavailable: Redis is unreachable or did not answer within ``timeout``.
        """
        self._check()
        with self._errors("ping"):
            started = time.perf_counter()
            await self._redis.ping()
            return time.perf_counter() - started

    # -- the pub/sub connection -------------------------------------------------------------

    async def _maintain(self) -> None:
        """Open the pub/sub connection, read it until it fails, reopen it, forever."""
        attempt = 0
        due = False  # a connection failed: on_broker_reconnect is due once one is up
        assert self._started is not None
        while True:
            try:
                conn = await self._open()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure means "retry later"
                if not self._down_logged:
                    log.warning("redis broker unavailable at %s: %s; reconnecting in the background",
                                self._where, _describe(exc))
                    self._down_logged = True
                else:
                    log.debug("redis reconnect attempt %d failed: %s", attempt + 1, _describe(exc))
                due = True
                self._started.set()
                await asyncio.sleep(self._backoff(attempt))
                attempt += 1
                continue
            attempt = 0
            self._healthy = True
            self._started.set()
            if self._down_logged:
                log.info("redis broker is back at %s (%d channels resubscribed)", self._where, len(self._subscribed))
                self._down_logged = False
            else:
                log.info("redis broker connected to %s", self._where)
            if due and self._handler is not None:
                try:
                    self._handler.on_broker_reconnect()
                except Exception:
                    log.exception("on_broker_reconnect failed")
            due = True
            try:
                reason = await self._read(conn)
            finally:
                self._hand_over()  # what was read before the loss comes before anything after it
                self._drop(conn)
                await self._disconnect(conn)
            log.warning("redis broker lost at %s: %s; reconnecting", self._where, _describe(reason))
            self._down_logged = True

    def _backoff(self, attempt: int) -> float:
        """Seconds before reconnect attempt ``attempt + 1``: exponential, with jitter, capped."""
        return min(self._reconnect_cap, 0.05 * 2 ** min(attempt, 16)) * random.uniform(0.5, 1.0)

    async def _open(self) -> AbstractConnection:
        """Connect, load the scripts, subscribe every wanted channel; return the connection.

        Raises:
            redis.exceptions.RedisError, OSError: Redis is unreachable or failed.
        """
        conn = self._pool.make_connection()
        try:
            async with asyncio.timeout(self._connect_timeout + self._timeout):
                await conn.connect()
            await self._load_scripts()
            async with self._sub_lock:
                channels = list(self._wanted)
                last: asyncio.Future[bool] | None = None
                step = 1 if self._tagged else SUBSCRIBE_BATCH  # SSUBSCRIBE: one slot per command
                for i in range(0, len(channels), step):
                    topics = [self._topic(c) for c in channels[i : i + step]]
                    for topic in topics:
                        last = self._expect(b"subscribe", topic)
                    await conn.send_command(self._commands[b"subscribe"], *topics, check_health=False)
                # confirmations come in order: when the last one is in, all are
                async with asyncio.timeout(self._timeout + len(channels) / 1000):
                    while last is not None and not last.done():
                        reply = await conn.read_response(timeout=math.inf, disconnect_on_error=False)
                        self._dispatch(reply)
                self._subscribed = set(channels)
                self._conn = conn
            return conn
        except BaseException:
            self._drop(None)
            await self._disconnect(conn)
            raise

    async def _load_scripts(self) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            for script in self._scripts():
                pipe.script_load(script.script)
            await pipe.execute()

    async def _read(self, conn: AbstractConnection) -> BaseException:
        """Read and dispatch pub/sub messages until the connection fails; return why.

        Reads carry no timer of their own (a timer per message would cost more
        than the message): a watchdog looks every ``ping_interval`` seconds,
        pings a connection that was silent, and closes it when the ping got
        no answer either, which ends the read.
        """
        loop = asyncio.get_running_loop()
        watch = _Watch()
        self._heard = True
        handle = loop.call_later(self._ping_interval, self._watchdog, conn, watch)
        watch.handle = handle
        try:
            while True:
                reply = await conn.read_response(timeout=math.inf, disconnect_on_error=False)
                self._heard = True
                self._dispatch(reply)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure ends this connection
            return watch.failure or exc
        finally:
            if watch.handle is not None:
                watch.handle.cancel()

    def _watchdog(self, conn: AbstractConnection, watch: _Watch) -> None:
        """Every ``ping_interval``: ping a silent connection; close it if the
        previous ping got no answer."""
        if self._heard:
            self._heard = False
            watch.pinged = False
        elif watch.pinged:
            watch.failure = TimeoutError(f"no answer to PING within {self._ping_interval} s")
            self._background(self._disconnect(conn), "close a silent pub/sub connection")
            return
        else:
            watch.pinged = True
            self._background(self._ping(conn), "ping the pub/sub connection")
        watch.handle = asyncio.get_running_loop().call_later(self._ping_interval, self._watchdog, conn, watch)

    async def _ping(self, conn: AbstractConnection) -> None:
        if not conn.is_connected or self._conn is not conn:  # closed: never let redis-py reopen it
            return
        try:
            await conn.send_command("PING", check_health=False)
        except Exception:  # noqa: BLE001 - the read fails too, and says why
            await self._disconnect(conn)

    def _background(self, coro: Coroutine[Any, Any, None], what: str) -> None:
        """Run ``coro`` in a task owned by the broker (cancelled by :meth:`close`)."""
        task = asyncio.get_running_loop().create_task(coro, name=f"hubbub redis: {what}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _dispatch(self, reply: Any) -> None:
        """Handle one pub/sub reply: a message, a (un)subscribe confirmation or a pong."""
        if not isinstance(reply, list) or len(reply) < 3:
            return  # pong
        kind = reply[0]
        if kind == self._message_kind:
            self._on_message(reply[1], reply[2])
        elif kind in self._confirm_kinds:
            kind = self._confirm_kinds[kind]
            waiters = self._pending.get((kind, reply[1]))
            if waiters:
                fut = waiters.popleft()
                if not waiters:
                    del self._pending[(kind, reply[1])]
                if not fut.done():
                    fut.set_result(True)
            elif kind == b"unsubscribe" and self._tagged:
                # Redis Cluster dropped a sharded subscription by itself (its slot moved
                # to another node): whatever comes next for it comes elsewhere
                self._lost_subscription(self._channel(reply[1]))

    def _on_message(self, topic: bytes, msg: bytes) -> None:
        """Decode one pub/sub message into the inbox; hand the inbox to the hub
        now (idle), after :data:`PUBSUB_HOLD` or with this node's pipeline
        replies (busy), or at once when it is full."""
        if self._handler is None or not topic.startswith(self._topic_prefix):
            return
        channel = self._channel(topic)
        try:
            kind, value = decode_message(msg)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("ignored a malformed message on %r: %s", topic, exc)
            return
        inbox = self._inbox
        inbox.append((kind, channel, value))
        if len(inbox) >= MAX_INBOX:
            self._hand_over()
        elif len(inbox) == 1:
            loop = asyncio.get_running_loop()
            if self._in_flight:  # with the pipeline's replies (_write_loop), or after PIPELINE_HOLD
                self._inbox_timer = loop.call_later(PIPELINE_HOLD, self._hand_over)
            elif loop.time() < self._busy_until:
                self._inbox_timer = loop.call_later(PUBSUB_HOLD, self._hand_over)
            else:
                self._inbox_timer = loop.call_soon(self._hand_over)

    def _hand_over(self) -> None:
        """Hand every message of the inbox to the hub, in order (one loop
        iteration: one write per subscriber for all of them)."""
        if self._inbox_timer is not None:
            self._inbox_timer.cancel()
            self._inbox_timer = None
        inbox = self._inbox
        if not inbox:
            return
        self._inbox = []
        if len(inbox) >= BUSY_BATCH:
            self._busy_until = asyncio.get_running_loop().time() + BUSY_WINDOW
        handler = self._handler
        if handler is None:
            return
        for kind, channel, value in inbox:
            try:
                if kind == b"p":
                    handler.on_publication(channel, value)
                elif kind == b"j":
                    handler.on_join(channel, value)
                elif kind == b"l":
                    handler.on_leave(channel, value)
            except Exception:
                log.exception("broker event handler failed for channel %r", channel)

    def _lost_subscription(self, channel: str) -> None:
        self._subscribed.discard(channel)
        if self._wanted.pop(channel, None) is not None:
            log.info("redis cluster moved channel %r away from %s", channel, self._where)
            if self.on_lost_subscription is not None:
                self.on_lost_subscription(channel)

    def _expect(self, kind: bytes, topic: bytes) -> asyncio.Future[bool]:
        """A future resolved ``True`` by the confirmation of a (un)subscribe, or
        ``False`` if the connection is lost first."""
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.setdefault((kind, topic), collections.deque()).append(fut)
        return fut

    def _drop(self, conn: AbstractConnection | None) -> None:
        """Forget the pub/sub connection's state (it failed or the broker closes)."""
        if conn is not None and self._conn is conn:
            self._conn = None
        if self._conn is None:
            self._healthy = False
            self._subscribed.clear()
            pending, self._pending = self._pending, {}
            for waiters in pending.values():
                for fut in waiters:
                    if not fut.done():
                        fut.set_result(False)

    async def _disconnect(self, conn: AbstractConnection) -> None:
        try:
            await conn.disconnect(nowait=True)
        except Exception as exc:  # noqa: BLE001 # pragma: no cover - closing a broken socket
            log.debug("closing the pub/sub connection: %s", _describe(exc))

    # -- subscriptions -------------------------------------------------------------------------

    def subscribe(self, channel: str) -> Coroutine[Any, Any, None]:
        """Start delivering ``channel`` to this node.

        The wish is recorded when this is *called* (not when the coroutine
        runs), and SUBSCRIBE/UNSUBSCRIBE commands are sent one at a time, each
        matching the latest wish: so an unsubscribe called (and scheduled)
        before a subscribe always ends subscribed. The coroutine returns once
        Redis confirmed the subscription.

        Raises:
            BrokerUnavailable: the pub/sub connection is down, or Redis did
                not confirm within ``timeout`` seconds.
        """
        token = next(self._tokens)
        self._wanted[channel] = token
        return self._apply(channel, token)

    def wants(self, channel: str) -> bool:
        """Whether this node wants ``channel`` delivered (subscribed, or being subscribed)."""
        return channel in self._wanted

    def unsubscribe(self, channel: str) -> Coroutine[Any, Any, None]:
        """Stop delivering ``channel`` to this node (the wish is recorded at
        call time, see :meth:`subscribe`). Never raises for an outage: a
        subscription dies with its connection and is not renewed."""
        self._wanted.pop(channel, None)
        return self._apply(channel, None)

    async def _apply(self, channel: str, token: int | None) -> None:
        """Bring ``channel``'s subscription in line with ``_wanted``. ``token``:
        the subscribe call this runs for (``None`` for unsubscribe)."""
        try:
            async with self._sub_lock:
                await self._apply_locked(channel, token)
        except BaseException:
            if token is not None and self._wanted.get(channel) == token:
                # the caller was told it failed: forget the wish, undo what was sent
                del self._wanted[channel]
                if not self._closed:
                    task = asyncio.get_running_loop().create_task(
                        self._apply(channel, None), name=f"hubbub redis unsubscribe {channel!r}"
                    )
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
            raise

    async def _apply_locked(self, channel: str, token: int | None) -> None:
        conn = self._conn
        want = channel in self._wanted
        if conn is None or not conn.is_connected:
            if token is not None and want:
                raise BrokerUnavailable(f"redis at {self._where} is unreachable")
            return
        if want == (channel in self._subscribed):
            return
        kind = b"subscribe" if want else b"unsubscribe"
        fut = self._expect(kind, self._topic(channel))
        error: BaseException | None = None
        try:
            async with asyncio.timeout(self._timeout):
                await conn.send_command(self._commands[kind], self._topic(channel), check_health=False)
                # sent: Redis will act on it unless the connection dies (which resets everything)
                if want:
                    self._subscribed.add(channel)
                else:
                    self._subscribed.discard(channel)
                confirmed = await fut
        except (OSError, redis_errors.RedisError) as exc:  # TimeoutError is an OSError
            confirmed, error = False, exc
        if not confirmed:
            if self._conn is conn:  # make the reader fail: the maintainer reconnects
                await self._disconnect(conn)
            if want and token is not None:
                why = _describe(error) if error is not None else "connection lost"
                raise BrokerUnavailable(f"redis {kind.decode()} of {channel!r} failed: {why}")

    # -- the publish pipeline ----------------------------------------------------------------

    def _send(self, *args: Any) -> asyncio.Future[Any]:
        """:meth:`_queue` ``args``; the future resolves with the reply (or the error)."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue(args, _into(future))
        return future

    def _queue(self, args: tuple[Any, ...], done: ReplyCallback) -> None:
        """Queue one publish-path command for the next pipeline; ``done`` gets
        its reply (or the error) as soon as the reply was read, in command order.

        Everything queued during one event-loop iteration goes to Redis as one
        pipeline, sent by one writer task after the previous pipeline's
        replies were read: so commands reach Redis in the order they were
        queued (per-channel order), and a reply means the command ran.

        Raises:
            BrokerUnavailable: the broker is closed.
        """
        if self._closed:
            raise BrokerUnavailable("the redis broker is closed")
        self._outbox.append(_Queued(args, done))
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._write_loop(), name="hubbub redis publish")
        self._wake.set()

    async def _write_loop(self) -> None:
        """Send the outbox as pipelines, one at a time, until the broker closes.

        A cancellation always ends it, even one that the Redis driver turned
        into an error on its way up (the task still says it is cancelling).
        """
        task = asyncio.current_task()
        while not self._closed:
            await self._wake.wait()
            self._wake.clear()
            while self._outbox and not self._closed:
                batch = self._outbox[:MAX_PIPELINE]
                del self._outbox[:MAX_PIPELINE]
                self._in_flight = True
                try:
                    await self._run_pipeline(batch)
                except asyncio.CancelledError:
                    for queued in batch:
                        queued.finish(None, BrokerUnavailable("the redis broker is closed"))
                    raise
                except Exception as exc:  # a bug, not an outage: fail this batch, keep the writer alive
                    log.exception("redis publish pipeline failed")
                    for queued in batch:
                        queued.finish(None, BrokerError(f"redis publish failed: {_describe(exc)}"))
                finally:
                    self._in_flight = False
                if task is not None and task.cancelling():
                    raise asyncio.CancelledError("the redis publish writer was cancelled")
                if self._inbox:
                    # the pub/sub messages held for this pipeline (and those read in this
                    # iteration, which the reader parses before the next one) go together
                    if self._inbox_timer is not None:
                        self._inbox_timer.cancel()
                    self._inbox_timer = asyncio.get_running_loop().call_soon(self._hand_over)

    async def _run_pipeline(self, batch: list[_Queued]) -> None:
        """One round trip: send ``batch`` as a pipeline (no transaction, no
        retry: a command must never run twice) and resolve its futures."""
        scripts = self._scripts() if self._reload_scripts else ()
        commands = [("SCRIPT", "LOAD", script.script) for script in scripts]
        commands += [queued.args for queued in batch]
        try:
            replies = await self._round_trip(self._pool, commands)
        except (OSError, redis_errors.RedisError) as exc:  # unreachable: nothing is acknowledged
            for queued in batch:
                queued.finish(None, exc)
            return
        stats = self.stats
        stats.broker_round_trips += 1
        stats.broker_publish_round_trips += 1
        stats.broker_publications += len(batch)
        if scripts:
            self._reload_scripts = False
        retry: list[_Queued] = []
        for queued, reply in zip(batch, replies[len(scripts):]):
            if isinstance(reply, redis_errors.NoScriptError) and not queued.retried:
                # the script never ran (Redis restarted, or SCRIPT FLUSH): safe to send again
                queued.retried = True
                retry.append(queued)
            elif isinstance(reply, Exception):
                queued.finish(None, reply)
            else:
                queued.finish(reply, None)
        if retry:
            self._reload_scripts = True
            self._outbox[:0] = retry

    async def _round_trip(self, pool: Any, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Send ``commands`` on one connection of ``pool`` in one write and read
        their replies (an error reply is returned as its exception), all within
        ``timeout`` seconds.

        Raises:
            redis.exceptions.ConnectionError, TimeoutError, OSError: the
                connection failed; it is closed (replies not read are lost,
                and the commands may or may not have run).
        """
        conn = await pool.get_connection()
        try:
            replies: list[Any] = []
            try:
                async with asyncio.timeout(self._timeout):
                    await conn.send_packed_command(b"".join(map(pack_command, commands)), check_health=False)
                    for _ in commands:
                        try:
                            replies.append(await conn.read_response(timeout=math.inf))
                        except redis_errors.ResponseError as exc:
                            replies.append(exc)
            except TimeoutError as exc:
                await conn.disconnect(nowait=True)
                raise redis_errors.TimeoutError(f"no answer within {self._timeout} s") from exc
            except BaseException:
                await conn.disconnect(nowait=True)
                raise
            return replies
        finally:
            await pool.release(conn)

    def _scripts(self) -> tuple[Any, ...]:
        return (self._publish_script, self._history_script, self._presence_add_script,
                self._presence_get_script, self._presence_stats_script)

    # -- commands ------------------------------------------------------------------------------

    def _check(self) -> None:
        if not self._healthy:
            raise BrokerUnavailable(f"redis at {self._where} is unreachable")

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """Map redis-py's errors: unreachable -> BrokerUnavailable, others -> BrokerError."""
        self.stats.broker_round_trips += 1
        try:
            yield
        except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError) as exc:
            raise BrokerUnavailable(f"redis {what} failed: {_describe(exc)}") from exc
        except redis_errors.RedisError as exc:
            raise BrokerError(f"redis {what} failed: {_describe(exc)}") from exc

    @contextmanager
    def _pipelined(self, what: str) -> Iterator[None]:
        """Like :meth:`_errors`, for commands of the publish pipeline (which
        counts its own round trips)."""
        try:
            yield
        except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError) as exc:
            raise BrokerUnavailable(f"redis {what} failed: {_describe(exc)}") from exc
        except redis_errors.RedisError as exc:
            raise BrokerError(f"redis {what} failed: {_describe(exc)}") from exc

    async def publish(
        self,
        channel: str,
        pub: Publication,
        *,
        history_size: int = 0,
        history_ttl: float = 0.0,
        idempotency_key: str | None = None,
        idempotency_ttl: float = 300.0,
    ) -> StreamPosition:
        """Publish ``pub`` (see :meth:`Broker.publish`) through
        :meth:`publish_nowait`; returns once its reply was read.

        Raises:
            BrokerUnavailable: Redis is unreachable (nothing is acknowledged;
                the publication may or may not have been stored).
            BrokerError: Redis refused the script (e.g. out of memory).
        """
        future: asyncio.Future[StreamPosition] = asyncio.get_running_loop().create_future()
        self.publish_nowait(channel, pub, _into(future), history_size=history_size, history_ttl=history_ttl,
                            idempotency_key=idempotency_key, idempotency_ttl=idempotency_ttl)
        return await future

    def publish_nowait(
        self,
        channel: str,
        pub: Publication,
        done: PublishCallback,
        *,
        history_size: int = 0,
        history_ttl: float = 0.0,
        idempotency_key: str | None = None,
        idempotency_ttl: float = 300.0,
    ) -> None:
        """Start publishing ``pub`` (see :meth:`Broker.publish_nowait`): one
        ``EVALSHA`` of the publish script, or one ``PUBLISH`` without history
        and idempotency key, sent in the pipeline of this loop iteration (see
        :meth:`_queue`). ``done`` is called in the iteration its reply is read,
        with the position, or with ``BrokerUnavailable`` (unreachable: nothing
        is acknowledged, the publication may or may not have been stored) or
        ``BrokerError`` (Redis refused the script, e.g. out of memory).

        Raises:
            BrokerUnavailable: Redis is known to be unreachable, or the broker
                is closed (``done`` is not called).
        """
        self._check()
        body = encode_body(pub)
        with_history = history_size > 0 and history_ttl > 0
        if not with_history and idempotency_key is None:

            def published(reply: Any, exc: BaseException | None) -> None:
                if exc is None:
                    done(StreamPosition(), None)
                else:
                    done(None, _publish_error(exc))

            self._queue((self._publish_command, self._topic(channel), b"p0:" + body), published)
            return
        keys = [self._meta_key(channel), self._history_key(channel), self._topic(channel)]
        if idempotency_key is not None:
            keys.append(self._idempotency_key(channel, idempotency_key))

        def stored(reply: Any, exc: BaseException | None) -> None:
            if exc is not None:
                done(None, _publish_error(exc))
                return
            offset, epoch, fresh = reply
            epoch = epoch.decode()
            if fresh and with_history:
                pub.offset = offset
                pub.epoch = epoch
            done(StreamPosition(offset, epoch), None)

        self._queue(
            (
                "EVALSHA", self._publish_script.sha, len(keys), *keys,
                self._publish_command,
                body,
                history_size if with_history else 0,
                _ms(history_ttl),
                _ms(max(self._meta_ttl, history_ttl)),
                new_epoch(),
                _ms(idempotency_ttl),
            ),
            stored,
        )

    async def history(
        self,
        channel: str,
        *,
        since: StreamPosition | None = None,
        limit: int | None = None,
        reverse: bool = False,
        history_ttl: float = 0.0,
    ) -> HistoryResult:
        """Read ``channel``'s stream with one script call (see :meth:`Broker.history`).

        Creates the stream's epoch when it has none. ``history_ttl`` is not
        needed here (publish sets the TTLs).

        Raises:
            BrokerUnavailable: Redis is unreachable.
            BrokerError: Redis failed otherwise.
        """
        self._check()
        with self._errors("history"):
            reply = await self._history_script(
                keys=[self._meta_key(channel), self._history_key(channel)],
                args=[
                    -1 if since is None else since.offset,
                    -1 if limit is None else max(limit, 0),
                    1 if reverse else 0,
                    new_epoch(),
                    _ms(self._meta_ttl),
                ],
            )
        position = StreamPosition(int(reply[0]), reply[1].decode())
        pubs: list[Publication] = []
        for entry in reply[2] if len(reply) > 2 else ():
            try:
                kind, pub = decode_message(entry)
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("ignored a malformed history entry of %r: %s", channel, exc)
                continue
            if kind == b"p":
                pubs.append(pub)  # type: ignore[arg-type]
        if since is not None:
            pubs = [p for p in pubs if p.offset > since.offset]
        if reverse:
            pubs.reverse()
        return HistoryResult(pubs, position)

    async def remove_history(self, channel: str) -> None:
        """Delete ``channel``'s publications; its position stays.

        Raises:
            BrokerUnavailable: Redis is unreachable.
        """
        self._check()
        with self._errors("remove history"):
            await self._redis.delete(self._history_key(channel))

    async def publish_join(self, channel: str, info: ClientInfo) -> None:
        """``PUBLISH`` a join on ``channel``'s topic.

        Raises:
            BrokerUnavailable: Redis is unreachable.
        """
        self._check()
        with self._pipelined("join"):
            await self._send(self._publish_command, self._topic(channel), encode_event(b"j", info))

    async def publish_leave(self, channel: str, info: ClientInfo) -> None:
        """``PUBLISH`` a leave on ``channel``'s topic.

        Raises:
            BrokerUnavailable: Redis is unreachable.
        """
        self._check()
        with self._pipelined("leave"):
            await self._send(self._publish_command, self._topic(channel), encode_event(b"l", info))

    async def add_presence(self, channel: str, info: ClientInfo, *, ttl: float) -> None:
        """Add or refresh ``info`` in ``channel``'s presence for ``ttl`` seconds
        (Redis' clock); also drops up to 1000 expired entries.

        Raises:
            BrokerUnavailable: Redis is unreachable.
        """
        self._check()
        value = json.dumps(info_to_wire(info), separators=(",", ":"))
        with self._errors("presence add"):
            await self._presence_add_script(keys=self._presence_keys(channel), args=[info.client, value, _ms(ttl)])

    async def remove_presence(self, channel: str, client: str) -> None:
        """Remove connection ``client`` from ``channel``'s presence.

        Raises:
            BrokerUnavailable: Redis is unreachable.
        """
        self._check()
        data, expire = self._presence_keys(channel)
        with self._errors("presence remove"):
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.zrem(expire, client)
                pipe.hdel(data, client)
                await pipe.execute()

    async def presence(self, channel: str) -> dict[str, ClientInfo]:
        """The unexpired presence entries of ``channel`` (one script call).

        Raises:
            BrokerUnavailable: Redis is unreachable.
        """
        self._check()
        with self._errors("presence"):
            flat = await self._presence_get_script(keys=self._presence_keys(channel))
        out: dict[str, ClientInfo] = {}
        for i in range(0, len(flat) - 1, 2):
            out[flat[i].decode()] = info_from_wire(json.loads(flat[i + 1]))
        return out

    async def presence_stats(self, channel: str) -> tuple[int, int]:
        """``(num_clients, num_users)`` of ``channel``'s unexpired presence,
        counted in Redis (one script call).

        Raises:
            BrokerUnavailable: Redis is unreachable.
        """
        self._check()
        with self._errors("presence stats"):
            clients, users = await self._presence_stats_script(keys=self._presence_keys(channel))
        return int(clients), int(users)


def _sentinel_pool(url: str, options: dict[str, Any]) -> tuple[Any, str, tuple[str, int]]:
    """A connection pool to the master that Redis Sentinel names, for
    ``redis+sentinel://[[user]:password@]host:port[,host:port...]/MASTER[/DB][?sentinel_password=S]``
    (the password is the master's; ``sentinel_password`` the sentinels').

    Returns the pool, a description for logs, and the first sentinel's address.

    Raises:
        ValueError: the URL is invalid.
    """
    from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool

    parts = urllib.parse.urlsplit(url)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    seeds: list[tuple[str, int]] = []
    for host in hosts.split(","):
        name, _, port = host.rpartition(":")
        seeds.append((name or host, int(port) if name else 26379))
    path = [p for p in parts.path.split("/") if p]
    if not seeds or not 1 <= len(path) <= 2:
        raise ValueError("expected redis+sentinel://host:port[,host:port...]/MASTER[/DB]")
    master = urllib.parse.unquote(path[0])
    db = int(path[1]) if len(path) > 1 else 0
    query = dict(urllib.parse.parse_qsl(parts.query))
    username, _, password = userinfo.partition(":")
    sentinel_kwargs = {"socket_timeout": options["socket_timeout"],
                       "socket_connect_timeout": options["socket_connect_timeout"]}
    if "sentinel_password" in query:
        sentinel_kwargs["password"] = query["sentinel_password"]
    ssl = parts.scheme.startswith("rediss")
    manager = Sentinel(seeds, sentinel_kwargs=sentinel_kwargs)
    pool = SentinelConnectionPool(
        master, manager, db=db, ssl=ssl, username=urllib.parse.unquote(username) or None,
        password=urllib.parse.unquote(password) or None, **options,
    )
    where = f"sentinel master {master!r} ({','.join(f'{h}:{p}' for h, p in seeds)})/{db}"
    return pool, where, seeds[0]


def _split_prefix(url: str) -> tuple[str, str | None]:
    """Take hubbub's ``prefix`` option out of ``url``'s query (redis-py rejects it)."""
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    prefixes = [v for k, v in query if k == "prefix"]
    if not prefixes:
        return url, None
    rest = urllib.parse.urlencode([(k, v) for k, v in query if k != "prefix"])
    return urllib.parse.urlunsplit(parts._replace(query=rest)), prefixes[-1]


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown error"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
