"""The ``hubbub`` command: argument parsing and dispatch, ``consume``/``produce``,
``gentoken``/``genconfig`` and ``check-config`` (``serve`` and ``run`` live in
:mod:`hubbub.serving`).

Exit codes: 0 success, 1 runtime error (server refused, connection lost),
2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import secrets
import sys
import threading
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from . import serving
from ._version import __version__
from .codes import ErrorCode
from .config import Config, check_file
from .errors import ClientError, ConfigError, EndpointError, ReplyError

if TYPE_CHECKING:
    from .client import Endpoint

# The client commands (sub, pub, ...) import hubbub.client (websockets' client, urllib)
# where they run: ``hubbub serve`` does not load it (it starts faster: workload 8).


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hubbub",
        description="hubbub: a real-time messaging hub. Clients connect over WebSocket, subscribe "
        "to channels and receive what producers publish.",
    )
    parser.add_argument("--version", action="version", version=f"hubbub {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    serve = sub.add_parser(
        "serve",
        help="run the hub",
        description="Run the hub on one port: the Centrifugo client protocol (JSON and Protobuf) at "
        "/connection/websocket, its HTTP-streaming and SSE transports (/connection/http_stream, "
        "/connection/sse, /emulation) and one-way transports (/connection/uni_websocket, uni_sse, "
        "uni_http_stream), a plain relay at /ws/{channel}, channels as event streams at /sse/{channel}, "
        "the server API at /api, the operator's dashboard at /admin, /health and /metrics (README, "
        "'What runs where'). Stops cleanly on SIGINT/SIGTERM.",
    )
    serve.add_argument("--host", default=None, help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port to bind (default 8000; 0 picks a free one)")
    serve.add_argument("--config", metavar="FILE", help="TOML settings file (flags override it)")
    serve.add_argument("--broker", default=None, help="'memory' (default), redis://HOST:PORT/DB, several such URLs (shards), "
                       "redis+cluster://HOST:PORT,... or redis+sentinel://HOST:PORT,.../MASTER (docs/scaling.md)")
    serve.add_argument("--ping-interval", type=float, default=None, metavar="SECONDS",
                       help="seconds between server pings (default 25; 0 disables)")
    serve.add_argument("--max-message-size", type=int, default=None, metavar="BYTES",
                       help="largest incoming message (default 65536); larger ones close with 1009")
    serve.add_argument("--max-pending-output", type=int, default=None, metavar="BYTES",
                       help="output queued per connection before it is closed with 3008 (default 1 MiB)")
    serve.add_argument("--workers", type=int, default=None, metavar="N",
                       help="processes sharing the port (SO_REUSEPORT); needs the Redis broker")
    serve.add_argument("--event-loop", choices=["asyncio", "uvloop"], default=None,
                       help="the event loop (default asyncio; uvloop needs the uvloop package)")
    serve.add_argument("--api-key", default=None, metavar="KEY",
                       help="turn on the HTTP API (POST /api/{method}) with this key, sent as X-API-Key: KEY; "
                       "the command line is visible to other users (ps): HUBBUB_API_KEY or api_key in the "
                       "config file keep it private")
    serve.add_argument("--allow-anonymous", action="store_true", default=None,
                       help="accept clients without a token, even on a non-loopback address")
    serve.add_argument("--proxy-connect-endpoint", default=None, metavar="URL",
                       help="authenticate clients without a token by POSTing to this backend URL "
                       "(Centrifugo's connect proxy; docs/howto/proxy.md)")
    serve.add_argument("--no-page", dest="page", action="store_false", default=None,
                       help="do not serve the live demo page at /")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.add_argument("--log-format", default="text", choices=["text", "json"],
                       help="text lines for people, or one JSON object per line for machines")
    serve.epilog = ("Every setting can also come from the TOML file or from an environment variable "
                    "HUBBUB_<SETTING> (e.g. HUBBUB_API_KEY). Precedence: flags > environment > file > defaults.")

    run = sub.add_parser(
        "run",
        help="serve a hubbub.App",
        description="Import MODULE:APP (a hubbub.App) and serve it with the built-in endpoints alongside "
        "its own, until SIGINT/SIGTERM.",
    )
    run.add_argument("target", metavar="MODULE:APP", help="e.g. examples.echo:app (APP defaults to 'app')")
    run.add_argument("--host", default=None, help="override the app's host")
    run.add_argument("--port", type=int, default=None, help="override the app's port (0 picks a free one)")
    run.add_argument("--api-key", default=None, metavar="KEY",
                     help="override the app's api_key: turns on the HTTP API (POST /api/{method}) with this key")
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    run.add_argument("--log-format", default="text", choices=["text", "json"])

    check = sub.add_parser(
        "check-config",
        help="validate a settings file",
        description="Validate a TOML settings file; print every unknown or invalid key with its line.",
    )
    check.add_argument("file", metavar="FILE")

    gentoken = sub.add_parser(
        "gentoken",
        help="print a connection (or subscription) token signed with the configured key",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
Print a JWT (HS256) for USER on stdout, signed with token_hmac_secret: the settings
file given with --config, then HUBBUB_TOKEN_HMAC_SECRET (as hubbub serve reads them).
Without --channel it is a connection token (claims sub, exp); with --channel CHANNEL,
a subscription token for that channel (claims sub, channel, exp), for namespaces with
require_subscription_token; repeat --channel for several, one token per line in order.
token_audience and token_issuer, when set, become the aud and iss claims.""",
        epilog="""\
examples:
  hubbub gentoken alice --config hubbub.toml
  hubbub consume ws://127.0.0.1:8000 news --token "$(hubbub gentoken alice --config hubbub.toml)"
  hubbub gentoken alice --channel private:room --ttl 600 --config hubbub.toml

exit codes: 0 printed, 2 no token_hmac_secret configured or invalid settings.""",
    )
    gentoken.add_argument("user", metavar="USER", help="the sub claim: the user id (\"\" for an anonymous user)")
    gentoken.add_argument("--ttl", type=int, default=DEFAULT_TOKEN_TTL, metavar="SECONDS",
                          help=f"seconds until the token expires (default {DEFAULT_TOKEN_TTL}, a week; "
                          "0: no exp claim, never expires)")
    gentoken.add_argument("--channel", action="append", default=[], metavar="CHANNEL",
                          help="make a subscription token for CHANNEL instead (repeatable)")
    gentoken.add_argument("--config", metavar="FILE", help="TOML settings file holding token_hmac_secret")

    genconfig = sub.add_parser(
        "genconfig",
        help="write a commented starter hubbub.toml with fresh secrets",
        description="Write a commented starter settings file to PATH (default hubbub.toml) with fresh random "
        "token_hmac_secret, api_key and admin_secret, readable only by its owner (mode 600). An existing "
        "file is never overwritten (exit 2). Then: hubbub check-config PATH; hubbub serve --config PATH.",
    )
    genconfig.add_argument("path", metavar="PATH", nargs="?", default="hubbub.toml",
                           help="where to write it (default hubbub.toml)")

    consume = sub.add_parser(
        "consume",
        help="print what arrives on a channel",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
Print what arrives on a channel, one message per line on stdout. The URL picks the mode:

protocol  URL is ws://HOST:PORT (or .../connection/websocket). Subscribes to CHANNEL
          with the Centrifugo client protocol and prints each publication's data as
          one line of compact JSON. --recover reconnects and prints what was missed.

relay     URL is ws://HOST:PORT/ws/CHANNEL. Connects to the plain relay and prints
          each message as it arrives: text as it is (a message holding newlines
          spans several lines), binary as one line of base64, with a note on stderr
          ("hubbub: binary message, N bytes, printed as base64"). CHANNEL is taken
          from the path: it may be omitted, and if given it must be the same.
          The relay keeps no history: --recover is refused.

Any other path is refused (exit 2), unless --protocol or --relay says which it is
(a server configured with another protocol_path or relay_path). Once subscribed,
"hubbub: subscribed to CHANNEL" is printed on stderr.""",
        epilog="""\
examples:
  hubbub consume ws://127.0.0.1:8000 news             protocol: data as JSON lines
  hubbub consume ws://127.0.0.1:8000 news --recover   ... and survive reconnects
  hubbub consume ws://127.0.0.1:8000/ws/news          relay: raw messages
  hubbub consume ws://127.0.0.1:8000/ws/news --count 1 --token "$JWT"

A channel with a namespace (chat:room) needs that namespace declared on the server
([namespaces.chat] in its config file); otherwise the server answers 102 "unknown
channel" (protocol) or HTTP 404 (relay).

exit codes: 0 after --count N messages, 1 refused or connection lost (the message
names the HTTP status or close code), 2 usage error, 130 interrupted.""",
    )
    consume.add_argument("url", metavar="URL",
                         help="ws://HOST:PORT (protocol) or ws://HOST:PORT/ws/CHANNEL (relay)")
    consume.add_argument("channel", metavar="CHANNEL", nargs="?", default=None,
                         help="channel to subscribe to (relay: optional, must match the path)")
    consume.add_argument("--count", type=int, default=None, metavar="N", help="exit 0 after N messages")
    consume.add_argument("--recover", action="store_true",
                         help="protocol only: reconnect on loss (exponential backoff with jitter) and print "
                         "what was missed")
    consume.add_argument("--token", default="", metavar="JWT",
                         help="connection token: the connect command's token (protocol), "
                         "Authorization: Bearer (relay)")
    _mode_flags(consume)

    produce = sub.add_parser(
        "produce",
        help="send data to a channel",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
Send each DATA to a channel in order, or each non-blank line of stdin when no DATA is
given. The URL picks the mode:

protocol  URL is ws://HOST:PORT (or .../connection/websocket). Publishes each DATA to
          CHANNEL (text that is not JSON is sent as a JSON string) and waits for the
          server's reply to every publish: exit 0 means every one was published,
          exit 1 names the server's error.

relay     URL is ws://HOST:PORT/ws/CHANNEL. Sends each DATA as one text message, as
          it is (relay consumers get it unchanged; protocol subscribers get it as its
          JSON value, or as a JSON string if it is not JSON), with ?echo=false, then
          closes. The channel is the path's: leave CHANNEL out (hubbub produce
          ws://HOST:PORT/ws/news hello); a first argument equal to the path's channel
          is still taken as CHANNEL, as older versions required it. The
          relay does not acknowledge messages: exit 0 means the server accepted the
          connection and answered the close with 1000 after everything was sent,
          without closing first (it closes first, exit 1, when it refuses
          a message: 3507 not allowed, 3013 too many, 1009 too large). It does not
          prove that every message was published.

Any other path is refused (exit 2), unless --protocol or --relay says which it is
(a server configured with another protocol_path or relay_path).""",
        epilog="""\
examples:
  hubbub produce ws://127.0.0.1:8000 news '{"headline": "hi"}' "plain text" 42
  hubbub produce ws://127.0.0.1:8000/ws/news hello "second message"
  tail -f app.log | hubbub produce ws://127.0.0.1:8000/ws/logs --token "$JWT"

A channel with a namespace (chat:room) needs that namespace declared on the server
([namespaces.chat] in its config file); otherwise the server answers 102 "unknown
channel" (protocol) or HTTP 404 (relay).

exit codes: 0 sent (see above), 1 refused or connection lost (the message names the
HTTP status, e.g. 401 with a hint, or the close code), 2 usage error.""",
    )
    produce.add_argument("url", metavar="URL",
                         help="ws://HOST:PORT (protocol) or ws://HOST:PORT/ws/CHANNEL (relay)")
    produce.add_argument("channel", metavar="CHANNEL", nargs="?", default=None,
                         help="channel to publish to (protocol: required; relay: leave it out, the path names it)")
    produce.add_argument("data", metavar="DATA", nargs="*")
    produce.add_argument("--token", default="", metavar="JWT",
                         help="connection token: the connect command's token (protocol), "
                         "Authorization: Bearer (relay)")
    _mode_flags(produce)
    return parser


def _mode_flags(command: argparse.ArgumentParser) -> None:
    mode = command.add_mutually_exclusive_group()
    mode.add_argument("--protocol", dest="mode", action="store_const", const="protocol",
                      help="URL's path is the protocol endpoint (a server with another protocol_path)")
    mode.add_argument("--relay", dest="mode", action="store_const", const="relay",
                      help="URL's path is the relay (a server with another relay_path); CHANNEL names the channel "
                      "when the path has no /ws/CHANNEL")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            return serving.serve(args)
        if args.command == "run":
            return serving.run(args)
        if args.command == "check-config":
            return _check_config(args.file)
        if args.command == "gentoken":
            return _gentoken(args)
        if args.command == "genconfig":
            return _genconfig(args.path)
        if args.command == "consume":
            return asyncio.run(_consume(args))
        if args.command == "produce":
            return asyncio.run(_produce(args))
    except ConfigError as exc:
        print(f"hubbub: configuration error: {exc}", file=sys.stderr)
        return 2
    except ReplyError as exc:
        print(f"hubbub: {exc}", file=sys.stderr)
        return 1
    except ClientError as exc:
        print(f"hubbub: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 2


# -- serve, run, check-config ------------------------------------------------------


def _check_config(path: str) -> int:
    problems = check_file(path)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        return 2
    print(f"{path}: ok")
    return 0


# -- gentoken, genconfig ---------------------------------------------------------------

#: ``hubbub gentoken``'s default lifetime in seconds: a week, as Centrifugo's ``gentoken``.
DEFAULT_TOKEN_TTL = 7 * 24 * 3600


def make_token(config: Config, user: str, *, ttl: int = DEFAULT_TOKEN_TTL, channel: str | None = None,
               now: float | None = None) -> str:
    """A JWT (HS256) signed with ``config.token_hmac_secret``: a connection token
    for ``user``, or with ``channel`` a subscription token for that channel.

    Args:
        config: the settings (``token_hmac_secret``; ``token_audience`` and
            ``token_issuer`` become ``aud`` and ``iss`` when set).
        user: the ``sub`` claim.
        ttl: seconds until ``exp``; 0 for no ``exp`` (never expires).
        channel: the ``channel`` claim of a subscription token.
        now: the current Unix time in seconds (default: the clock).

    Raises:
        ConfigError: no ``token_hmac_secret`` is configured (the message says how to set one),
            or ``ttl`` is negative.
    """
    import jwt

    if not config.token_hmac_secret:
        raise ConfigError(
            "gentoken signs with token_hmac_secret, and none is configured: set token_hmac_secret = \"...\" in "
            "the settings file given with --config, or HUBBUB_TOKEN_HMAC_SECRET in the environment (the same "
            "setting as the server's); hubbub genconfig writes a file with a fresh one")
    if ttl < 0:
        raise ConfigError(f"--ttl must be 0 (no expiry) or more seconds, got {ttl}")
    claims: dict[str, Any] = {"sub": user}
    if ttl:
        claims["exp"] = int((time.time() if now is None else now) + ttl)
    if channel is not None:
        claims["channel"] = channel
    if config.token_audience:
        claims["aud"] = config.token_audience
    if config.token_issuer:
        claims["iss"] = config.token_issuer
    return jwt.encode(claims, config.token_hmac_secret, algorithm="HS256")


def _gentoken(args: argparse.Namespace) -> int:
    config = Config.load(args.config)
    channels: list[str | None] = list(args.channel) or [None]
    for channel in channels:
        token = make_token(config, args.user, ttl=args.ttl, channel=channel)
        kind = f"subscription token for channel {channel!r}" if channel else "connection token"
        expiry = f"expires in {args.ttl} s" if args.ttl else "never expires"
        print(f"hubbub: HS256 {kind}, user {args.user!r}, {expiry}", file=sys.stderr)
        print(token)
    return 0


#: ``hubbub genconfig``'s file; ``{...}`` are filled in.
STARTER_CONFIG = """\
# hubbub settings: hubbub serve --config {path}
# Made by `hubbub genconfig` with fresh random secrets: keep this file private (it is
# readable by its owner only). Check it with `hubbub check-config {path}`.
# Every setting, its default, unit and environment variable: docs/configuration.md.
# Precedence: command-line flags > HUBBUB_* environment variables > this file > defaults.

# Where to listen. On an address other than loopback (0.0.0.0 behind a proxy), hubbub
# serves only with a token key (below) or allow_anonymous = true.
host = "127.0.0.1"
port = 8000

# Clients connect with a JWT (HS256) signed with this secret; your backend makes them, or
#   hubbub gentoken USER --config {path}
# With a token key set, clients without a token are refused; allow_anonymous = true lets
# them in on purpose.
token_hmac_secret = "{token_hmac_secret}"
# allow_anonymous = true

# The server API, POST /api/{{method}}, for your backends; send the key as X-API-Key:
#   curl -X POST http://127.0.0.1:8000/api/publish -H "X-API-Key: KEY" -d '{{"channel": "news", "data": 1}}'
api_key = "{api_key}"

# The operator's dashboard at /admin logs in with this secret.
admin_secret = "{admin_secret}"

# Several processes or machines share channels through Redis (docs/scaling.md):
# broker = "redis://127.0.0.1:6379/0"
# workers = 4

# Publish from your backend's database transactions: a PostgreSQL outbox table (docs/howto/outbox.md).
# postgresql_consumer_dsn = "postgresql://app:secret@127.0.0.1:5432/shop"
# postgresql_consumer_partition_notification_channel = "hubbub_outbox"

# Channels without a namespace (news) use these options.
[channels]
history_size = 0                 # publications kept per channel (0: no history)

# A channel in a namespace (chat:room) needs its namespace declared, or clients get
# 102 "unknown channel". This one keeps history for recovery and presence.
[namespaces.chat]
history_size = 100               # publications kept per channel
history_ttl = 600                # seconds after the last publication
force_recovery = true            # clients resubscribe from their last offset
presence = true
join_leave = true
"""


def _genconfig(path: str) -> int:
    text = STARTER_CONFIG.format(path=path, token_hmac_secret=secrets.token_urlsafe(32),
                                 api_key=secrets.token_urlsafe(24), admin_secret=secrets.token_urlsafe(24))
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        print(f"hubbub genconfig: {path} exists: not overwritten (remove it, or name another PATH)",
              file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"hubbub genconfig: cannot write {path}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    print(f"hubbub: wrote {path} with fresh secrets (token_hmac_secret, api_key, admin_secret); "
          f"serve it with: hubbub serve --config {path}", file=sys.stderr)
    return 0


# -- consume / produce ----------------------------------------------------------------


def _print(data: Any) -> None:
    sys.stdout.write(json.dumps(data, separators=(",", ":"), ensure_ascii=False) + "\n")
    sys.stdout.flush()


class _Usage(Exception):
    """A consume/produce usage error: printed, exit 2."""


def _endpoint(args: argparse.Namespace) -> Endpoint:
    """The endpoint of ``args.url``, checked against ``args.channel``.

    Raises:
        _Usage: no hubbub endpoint, no channel, or a CHANNEL that is not the relay path's.
        ClientError: not a ``ws://`` URL (exit 1, as before).
    """
    from .client import Endpoint, display_url, endpoint

    try:
        found = endpoint(args.url, args.mode)
    except EndpointError as exc:
        raise _Usage(str(exc)) from None
    if found.kind == "relay":
        if not found.channel:  # a relay at another path: CHANNEL, if given, names it
            return Endpoint("relay", found.url, args.channel or urlsplit(found.url).path)
        if args.channel is not None and args.channel != found.channel and args.command == "produce":
            args.data = [args.channel, *args.data]  # the path names the channel: this is the first DATA
            args.channel = None
        elif args.channel is not None and args.channel != found.channel:
            raise _Usage(f"CHANNEL {args.channel!r} is not the relay URL's channel {found.channel!r}: "
                         f"with a relay URL the channel is the path's (ws://HOST:PORT/ws/CHANNEL)")
    elif not args.channel:
        raise _Usage(f"CHANNEL is required with a protocol URL: hubbub {args.command} {display_url(args.url)} "
                     "CHANNEL ...")
    return found


def _usage(args: argparse.Namespace, exc: _Usage) -> int:
    print(f"hubbub {args.command}: {exc}", file=sys.stderr)
    return 2


async def _consume(args: argparse.Namespace) -> int:
    if args.count is not None and args.count < 1:
        raise ClientError("--count must be at least 1")
    try:
        found = _endpoint(args)
        if found.kind == "relay" and args.recover:
            raise _Usage("--recover needs the protocol (ws://HOST:PORT): the relay keeps no history")
    except _Usage as exc:
        return _usage(args, exc)
    if found.kind == "relay":
        return await _consume_relay(args, found)
    return await _consume_protocol(args, found.channel or args.channel)


async def _consume_relay(args: argparse.Namespace, found: Endpoint) -> int:
    from .client import RelayClient

    client = RelayClient(found.url, token=args.token)
    await client.connect()
    seen = 0
    try:
        print(f"hubbub: subscribed to {found.channel}", file=sys.stderr, flush=True)
        async for message in client.messages():
            if isinstance(message, bytes):
                print(f"hubbub: binary message, {len(message)} bytes, printed as base64", file=sys.stderr,
                      flush=True)
                message = base64.b64encode(message).decode()
            sys.stdout.write(message + "\n")
            sys.stdout.flush()
            seen += 1
            if args.count is not None and seen >= args.count:
                return 0
    finally:
        await client.close()
    raise ClientError(f"connection closed: {client.close_code} {client.close_reason}".rstrip())


async def _consume_protocol(args: argparse.Namespace, channel: str) -> int:
    from .client import Client, backoff

    seen = 0
    offset, epoch = 0, ""
    attempt = 0
    while True:
        client = Client(args.url, token=args.token)
        try:
            await client.connect()
            params: dict[str, Any] = {}
            if args.recover:
                params["recoverable"] = True
                if epoch:
                    params.update(recover=True, offset=offset, epoch=epoch)
            try:
                reply = await client.subscribe(channel, **params)
            except ReplyError as exc:
                raise _with_namespace_hint(exc, channel) from None
            print(f"hubbub: subscribed to {channel}", file=sys.stderr, flush=True)
            attempt = 0
            if epoch and not reply.get("recovered", False):
                print(f"hubbub: could not recover publications missed since offset {offset}; "
                      "continuing with new ones", file=sys.stderr)
            epoch = reply.get("epoch", "")
            offset = reply.get("offset", 0)
            for pub in reply.get("publications", []):
                _print(pub.get("data"))
                offset = pub.get("offset", offset)
                seen += 1
                if args.count is not None and seen >= args.count:
                    return 0
            async for push in client.publications():
                if push.channel != channel:
                    continue
                _print(push.data)
                if push.offset:
                    offset = push.offset
                seen += 1
                if args.count is not None and seen >= args.count:
                    return 0
            message = f"connection closed: {client.close_code} {client.close_reason}".rstrip()
        except ClientError as exc:
            message = str(exc)
            if not args.recover or isinstance(exc, ReplyError):
                raise
        finally:
            await client.close()
        if not args.recover:
            raise ClientError(message)
        delay = backoff(attempt)
        attempt += 1
        print(f"hubbub: {message}; reconnecting in {delay:.1f}s", file=sys.stderr)
        await asyncio.sleep(delay)


def _with_namespace_hint(exc: ReplyError, channel: str) -> ReplyError:
    """``exc``, with what to do about it when it is 102 "unknown channel" in a namespace."""
    from .client import namespace_hint

    hint = namespace_hint(channel) if exc.code == ErrorCode.UNKNOWN_CHANNEL else ""
    return ReplyError(exc.code, f"{exc.message} ({hint})") if hint else exc


def _parse_data(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


#: Publishes in flight at once (the server answers in order).
PUBLISH_WINDOW = 100


async def _items(args: argparse.Namespace) -> AsyncIterator[str]:
    """Each DATA, or each non-blank line of stdin."""
    if args.data:
        for item in args.data:
            yield item
        return
    async for lines in _stdin_lines():
        for line in lines:
            if line.strip():
                yield line


async def _stdin_lines() -> AsyncIterator[list[str]]:
    """Lines of stdin (without their newline), in batches as they come.

    A daemon thread reads, so the event loop keeps answering the server's
    pings while stdin is idle (``tail -f log | hubbub produce ...``), and an
    interrupt never waits for a blocked read."""
    if sys.stdin is None:
        return
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[list[str] | None] = asyncio.Queue(4)
    encoding = sys.stdin.encoding or "utf-8"

    def hand(batch: list[str] | None) -> None:
        try:
            asyncio.run_coroutine_threadsafe(queue.put(batch), loop).result()
        except RuntimeError:  # the loop is gone (interrupted)
            pass

    def decode(raw: bytes) -> str:
        return raw.decode(encoding, "replace").removesuffix("\r")

    def read() -> None:
        rest = b""
        fd = sys.stdin.fileno()
        try:
            # os.read, not sys.stdin.buffer: a daemon thread blocked inside the
            # buffered reader holds its lock, which aborts interpreter shutdown
            while chunk := os.read(fd, 65536):
                *lines, rest = (rest + chunk).split(b"\n")
                if lines:
                    hand([decode(line) for line in lines])
            if rest:
                hand([decode(rest)])
        finally:
            hand(None)

    threading.Thread(target=read, name="hubbub-stdin", daemon=True).start()
    while (batch := await queue.get()) is not None:
        yield batch


async def _produce(args: argparse.Namespace) -> int:
    try:
        found = _endpoint(args)
    except _Usage as exc:
        return _usage(args, exc)
    if found.kind == "relay":
        return await _produce_relay(args, found)
    return await _produce_protocol(args)


async def _produce_relay(args: argparse.Namespace, found: Endpoint) -> int:
    """Send each item as one text message, then close; see ``hubbub produce --help``."""
    from .client import RelayClient

    client = RelayClient(found.url, token=args.token, echo=False)
    await client.connect()
    sent = 0

    async def discard() -> None:
        # what others publish meanwhile also arrives here: read it, or the
        # server would close this connection as a slow reader (3008)
        async for _ in client.messages():
            pass

    reader = asyncio.get_running_loop().create_task(discard())
    try:
        async for item in _items(args):
            try:
                await client.send(item)
            except ClientError as exc:
                raise ClientError(f"{exc} (after sending {sent} messages)") from None
            sent += 1
    finally:
        await client.close()
        await reader
    if not client.closed_cleanly:
        closed = f"{client.close_code} {client.close_reason}".rstrip()
        raise ClientError(f"connection closed: {closed} (after sending {sent} messages; the server may not "
                          "have published them all)")
    return 0


async def _produce_protocol(args: argparse.Namespace) -> int:
    from .client import Client

    async with Client(args.url, token=args.token) as client:
        pending: list[asyncio.Future[dict[str, Any]]] = []

        async def wait_for(futures: list[asyncio.Future[dict[str, Any]]]) -> None:
            for fut in futures:
                try:
                    await fut
                except ReplyError as exc:
                    raise _with_namespace_hint(exc, args.channel) from None

        async for item in _items(args):
            pending.append(client.send_command("publish", {"channel": args.channel, "data": _parse_data(item)}))
            if len(pending) >= PUBLISH_WINDOW:
                await wait_for(pending)
                pending = []
        await wait_for(pending)
    return 0
