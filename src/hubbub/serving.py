"""``hubbub serve`` and ``hubbub run``: one server process, or workers sharing a
port (SO_REUSEPORT) through a shared broker. See ``docs/design.md``."""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
from typing import Any

from . import logs
from ._version import __version__
from .config import Config
from .errors import ConfigError
from .loops import run_loop

log = logging.getLogger("hubbub")


def config_from_args(args: argparse.Namespace) -> Config:
    """The settings of ``hubbub serve``: the config file, ``HUBBUB_*`` variables, then the flags.

    Raises:
        ConfigError: see :meth:`Config.load`.
    """
    return Config.load(
        args.config,
        host=args.host,
        port=args.port,
        broker=args.broker,
        workers=args.workers,
        event_loop=args.event_loop,
        ping_interval=args.ping_interval,
        max_message_size=args.max_message_size,
        max_pending_output=args.max_pending_output,
        allow_anonymous=args.allow_anonymous,
        page=args.page,
        api_key=args.api_key,
    )


def serve(args: argparse.Namespace) -> int:
    """``hubbub serve``: one process, or ``--workers`` processes sharing the port. Returns the exit code.

    Raises:
        ConfigError: invalid settings, or ``--workers`` with the memory broker.
    """
    logs.setup(args.log_level, args.log_format)
    config = config_from_args(args)
    config.check_exposure()
    if config.workers > 1:
        return _serve_workers(config, args)
    from .server import Server

    server = Server(config)
    worker = os.environ.get(_WORKER_ENV)

    def ready(s: Server) -> None:
        where = s.url.removeprefix("http://")
        if worker is None:
            log.info("hubbub %s listening on %s (broker: %s)", __version__, s.url, s.hub.broker.name)
        else:
            log.info("worker %s (pid %d) listening on %s (broker: %s)", worker, os.getpid(), s.url,
                     s.hub.broker.name)
        log.info("security: %s", config.security_mode)
        log.info("protocol: ws://%s/connection/websocket  relay: ws://%s/ws/{channel}  health: %s/health  "
                 "metrics: %s/metrics", where, where, s.url, s.url)
        streams = [f"{name}: {s.url}{path}" for name, path in (
            ("events", config.channel_sse_path), ("uni_sse", config.uni_sse_path),
            ("uni_http_stream", config.uni_http_stream_path), ("http_stream", config.http_stream_path),
            ("sse", config.sse_path)) if path]
        if streams:
            log.info("streams: %s", "  ".join(streams).replace("{channel:path}", "{channel}"))
        if config.socketio_path:
            log.info("socket.io: %s%s", s.url, config.socketio_path)
        if config.page:
            log.info("live page: %s/", s.url)

    try:
        run_loop(server.serve(ready=ready, reuse_port=worker is not None), config.event_loop)
    except OSError as exc:
        print(f"hubbub: cannot listen on {config.host}:{config.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    log.info("stopped")
    return 0


def run(args: argparse.Namespace) -> int:
    """``hubbub run MODULE:APP``: serve an :class:`~hubbub.App`. Returns the exit code."""
    logs.setup(args.log_level, args.log_format)
    from .app import load_app

    app = load_app(args.target)
    if args.api_key is not None:
        app.config.api_key = args.api_key
    try:
        app.serve(host=args.host, port=args.port)
    except OSError as exc:
        print(f"hubbub: cannot listen: {exc.strerror or exc}", file=sys.stderr)
        return 1
    log.info("stopped")
    return 0


_WORKER_ENV = "HUBBUB_WORKER_INDEX"


def reserve_port(host: str, port: int) -> socket.socket:
    """A bound (not listening) TCP socket that holds ``host:port`` for the workers
    (``port`` 0: a free one), with SO_REUSEPORT so that they can listen on it too,
    and SO_REUSEADDR so that connections of an earlier server still in TIME_WAIT
    on that port do not stop it (a restart during a deploy).

    Raises:
        OSError: the port is taken (``EADDRINUSE``) or ``host`` is not local.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    reserve = socket.socket(family, socket.SOCK_STREAM)
    try:
        reserve.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        reserve.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        reserve.bind((host, port))
    except BaseException:
        reserve.close()
        raise
    return reserve


def _serve_workers(config: Config, args: argparse.Namespace) -> int:
    """Run ``config.workers`` processes sharing one port with SO_REUSEPORT.

    The parent reserves the port (so ``--port 0`` gives every worker the same
    one), starts the workers, forwards SIGINT/SIGTERM to them, and exits 0 when
    they all did.
    """
    if config.broker == "memory":
        raise ConfigError(
            "--workers needs a shared broker: with the memory broker each process would have its own "
            "channels. Use --broker redis://HOST:PORT/DB (or broker = \"redis://...\" in the config file)."
        )
    try:
        reserve = reserve_port(config.host, config.port)
    except OSError as exc:
        print(f"hubbub: cannot listen on {config.host}:{config.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    port = reserve.getsockname()[1]
    argv = [sys.executable, "-m", "hubbub", "serve", "--workers", "1", "--port", str(port),
            "--host", config.host, "--broker", config.broker, "--log-level", args.log_level,
            "--log-format", args.log_format, "--event-loop", config.event_loop]
    if args.page is False:
        argv.append("--no-page")
    if args.config:
        argv += ["--config", args.config]
    for flag, value in (("--ping-interval", args.ping_interval), ("--max-message-size", args.max_message_size),
                        ("--max-pending-output", args.max_pending_output)):
        if value is not None:
            argv += [flag, str(value)]
    if args.allow_anonymous:
        argv.append("--allow-anonymous")
    env = dict(os.environ)
    if args.api_key is not None:  # to the workers through their environment, not their command lines (ps)
        env["HUBBUB_API_KEY"] = args.api_key
    if config.admin_enabled and not config.admin_secret:  # one made-up secret for every worker's /admin
        env["HUBBUB_ADMIN_SECRET"] = secrets.token_urlsafe(24)
        log.info("admin dashboard at /admin; its secret for these workers is %s (set admin_secret to choose one)",
                 env["HUBBUB_ADMIN_SECRET"])
    children = [subprocess.Popen(argv, env={**env, _WORKER_ENV: str(i)}) for i in range(config.workers)]
    log.info("hubbub %s listening on http://%s:%d (broker: %s, %d workers)", __version__, config.host, port,
             config.broker, config.workers)

    def forward(signum: int, frame: Any) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    codes = [child.wait() for child in children]
    reserve.close()
    log.info("stopped (workers exited with %s)", codes)
    return 0 if all(code == 0 for code in codes) else 1
