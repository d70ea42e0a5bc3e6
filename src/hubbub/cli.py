"""The ``hubbub`` command: argument parsing and dispatch, and ``consume``/``produce``
(``serve`` and ``run`` live in :mod:`hubbub.serving`).

Exit codes: 0 success, 1 runtime error (server refused, connection lost),
2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
import threading
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

from . import serving
from ._version import __version__
from .client import (
    Client,
    Endpoint,
    RelayClient,
    backoff,
    display_url,
    endpoint,
    namespace_hint,
)
from .codes import ErrorCode
from .config import check_file
from .errors import ClientError, ConfigError, EndpointError, ReplyError


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
