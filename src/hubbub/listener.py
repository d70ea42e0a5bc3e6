"""A listening TCP socket whose accept loop hubbub owns: :class:`Listener`.

It replaces CPython 3.11's ``BaseSelectorEventLoop._accept_connection``
(``Lib/asyncio/selector_events.py``), which spins at the file-descriptor limit.
It imports nothing from hubbub (nor websockets or h11).

See ``docs/design.md``, "The accept loop".
"""

from __future__ import annotations

import asyncio
import errno
import inspect
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["Listener", "ACCEPT_BATCH", "BACKOFF_INITIAL", "BACKOFF_MAX", "LOG_INTERVAL"]

log = logging.getLogger("hubbub.listener")

#: Most connections accepted per wake-up of one listening socket.
ACCEPT_BATCH = 64
#: First back-off (seconds) after a resource refusal; doubles on each refusal
#: in a row, up to :data:`BACKOFF_MAX`; a successful accept resets it.
BACKOFF_INITIAL = 0.1
#: Longest back-off (seconds) before accepting is tried again.
BACKOFF_MAX = 1.0
#: At most one log line per this many seconds for each kind of failure.
LOG_INTERVAL = 10.0

#: accept() errnos meaning "out of a resource": pause (rule 2).
RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
#: accept() errnos that concern one pending connection only: skip it (rule 4).
#: accept(2) says to treat the network errors "like EAGAIN by retrying".
SKIP_ERRNOS = frozenset(
    getattr(errno, name)
    for name in (
        "ECONNABORTED", "EINTR", "EPROTO", "ENOPROTOOPT", "ENETDOWN", "ENETUNREACH",
        "EHOSTDOWN", "EHOSTUNREACH", "ENONET", "EOPNOTSUPP", "EPERM",
    )
    if hasattr(errno, name)
)

ProtocolFactory = Callable[[], asyncio.BaseProtocol]


class _Throttle:
    """At most one report per ``interval`` seconds; counts the events in between."""

    __slots__ = ("interval", "next_at", "count")

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.next_at = float("-inf")
        self.count = 0

    def event(self) -> int:
        """Count one event. Returns how many events the report should cover
        (this one included), or 0 if it is too early to report."""
        self.count += 1
        now = time.monotonic()
        if now < self.next_at:
            return 0
        self.next_at = now + self.interval
        count, self.count = self.count, 0
        return count


class Listener:
    """Accept TCP connections and hand them to ``protocol_factory`` transports.

    Create one with :meth:`start`. The attributes are read-only.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        protocol_factory: ProtocolFactory,
        sockets: list[socket.socket],
        *,
        accept_batch: int = ACCEPT_BATCH,
    ) -> None:
        """Wrap already bound, listening, non-blocking ``sockets``; use :meth:`start`."""
        self._loop = loop
        self._protocol_factory = protocol_factory
        self._sockets = sockets
        self._fds = [s.fileno() for s in sockets]
        self._names = ", ".join(_format_address(s) for s in sockets)
        self._batch = accept_batch
        self._armed = False
        self._closed = False
        self._closed_event = asyncio.Event()
        #: the back-off timer; not None exactly while paused (and not closed)
        self._timer: asyncio.TimerHandle | None = None
        self._backoff = BACKOFF_INITIAL
        #: pending hand-offs: task -> the accepted socket it owns until a transport takes it
        self._tasks: dict[asyncio.Task[None], socket.socket] = {}
        self._refusal_log = _Throttle(LOG_INTERVAL)
        self._error_log = _Throttle(LOG_INTERVAL)
        self._handoff_log = _Throttle(LOG_INTERVAL)
        #: total resource refusals (EMFILE etc.) since start
        self.refused = 0
        #: total connections accepted since start
        self.accepted = 0

    # -- construction ---------------------------------------------------------------------

    @classmethod
    async def start(
        cls,
        loop: asyncio.AbstractEventLoop,
        protocol_factory: ProtocolFactory,
        *,
        host: str | Iterable[str] | None = None,
        port: int | str | None = None,
        sock: socket.socket | None = None,
        backlog: int = 4096,
        reuse_port: bool = False,
        accept_batch: int = ACCEPT_BATCH,
    ) -> Listener:
        """Bind, listen and start accepting; return the :class:`Listener`.

        Args:
            loop: the running event loop (it must support ``add_reader``).
            protocol_factory: called with no argument once per accepted
                connection; returns the :class:`asyncio.Protocol` that
                ``loop.connect_accepted_socket`` connects to the transport.
            host: what to bind, as ``loop.create_server`` reads it: an IP
                address (``"127.0.0.1"``, ``"::1"``, ``"0.0.0.0"``; IPv6 when it
                contains ``":"``), a host name (resolved; one socket per
                address), ``""`` or ``None`` for all interfaces (IPv4 and IPv6,
                one socket each, IPv6 sockets are V6ONLY), or several of these.
            port: the TCP port; 0 picks a free one (per socket: read it from
                ``sockets[i].getsockname()[1]``). Required unless ``sock`` is
                given.
            sock: an already bound ``SOCK_STREAM`` socket to listen on instead
                of ``host``/``port``; the listener owns and closes it.
            backlog: the ``listen()`` backlog (connections; the kernel caps it
                at ``net.core.somaxconn``).
            reuse_port: set ``SO_REUSEPORT`` (several processes on one port).
                ``SO_REUSEADDR`` is always set on POSIX (neither is touched
                on a given ``sock``).
            accept_batch: most connections accepted per wake-up of a socket
                (at least 1).

        Raises:
            OSError: the address cannot be bound (e.g. ``EADDRINUSE`` when the
                port is taken; the message names the address, as
                ``create_server``'s does), the host does not resolve
                (``socket.gaierror``), or no socket could be created.
            ValueError: both or neither of ``sock`` and ``port`` given,
                ``sock`` is not a stream socket, or ``accept_batch`` < 1.
        """
        if accept_batch < 1:
            raise ValueError(f"accept_batch must be at least 1, not {accept_batch}")
        if sock is not None:
            if host is not None or port is not None:
                raise ValueError("host/port and sock can not be specified at the same time")
            if sock.type != socket.SOCK_STREAM:
                raise ValueError(f"a stream socket was expected, got {sock!r}")
            sockets = [sock]
            owned: list[socket.socket] = []
        else:
            if port is None:
                raise ValueError("neither port nor sock was specified")
            sockets = await _bind(loop, host, port, reuse_port)
            owned = sockets
        try:
            for s in sockets:
                s.setblocking(False)
                s.listen(backlog)
        except BaseException:
            for s in owned:
                s.close()
            raise
        listener = cls(loop, protocol_factory, sockets, accept_batch=accept_batch)
        listener._arm()
        return listener

    # -- public ---------------------------------------------------------------------------

    @property
    def sockets(self) -> list[socket.socket]:
        """The listening sockets (a copy of the list; empty once closed)."""
        return [] if self._closed else list(self._sockets)

    @property
    def paused(self) -> bool:
        """Whether accepting is paused after a resource refusal."""
        return self._timer is not None

    def is_serving(self) -> bool:
        """Whether the listener is open (accepting, or paused and about to)."""
        return not self._closed

    def resume(self) -> None:
        """Accept again from the next event-loop iteration, if paused.

        Call it whenever a connection closes: the descriptor it frees is then
        used for the oldest connection waiting in the backlog. Calling it from
        ``Protocol.connection_lost`` is right: the transport closes its socket
        as soon as that returns, before the next iteration accepts. Cheap (one
        attribute test) when not paused; a no-op once closed.
        """
        timer = self._timer
        if timer is None:
            return
        timer.cancel()
        self._timer = None
        self._arm()

    def close(self) -> None:
        """Stop accepting and close the listening sockets.

        Cancels the back-off timer and the hand-offs still pending (a socket no
        transport has taken yet is closed). Connections already handed over are
        not touched. Idempotent.
        """
        if self._closed:
            return
        self._closed = True
        self._disarm()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for s in self._sockets:
            s.close()
        for task, conn in self._tasks.items():
            coro = task.get_coro()
            if inspect.iscoroutine(coro) and inspect.getcoroutinestate(coro) == inspect.CORO_CREATED:
                # cancelled before its first step, the coroutine never runs
                conn.close()
            task.cancel()
        self._closed_event.set()

    async def wait_closed(self) -> None:
        """Wait until :meth:`close` has been called and the cancelled
        hand-offs have finished. Does not wait for the connections."""
        await self._closed_event.wait()
        while self._tasks:
            await asyncio.wait(list(self._tasks))

    def __repr__(self) -> str:
        state = "closed" if self._closed else "paused" if self.paused else "serving"
        return f"<Listener {self._names} {state}>"

    # -- accepting ------------------------------------------------------------------------

    def _arm(self) -> None:
        if self._armed or self._closed:
            return
        for fd, s in zip(self._fds, self._sockets, strict=True):
            self._loop.add_reader(fd, self._on_readable, s)
        self._armed = True

    def _disarm(self) -> None:
        if not self._armed:
            return
        for fd in self._fds:
            self._loop.remove_reader(fd)
        self._armed = False

    def _on_readable(self, sock: socket.socket) -> None:
        loop = self._loop
        for _ in range(self._batch):
            try:
                conn, _addr = sock.accept()
            except BlockingIOError:
                return  # the backlog is empty
            except OSError as exc:
                if exc.errno in SKIP_ERRNOS:
                    continue  # that connection is gone, or an interrupted call
                self._pause(exc)
                return
            try:
                conn.setblocking(False)
            except OSError:
                conn.close()
                continue
            self.accepted += 1
            self._backoff = BACKOFF_INITIAL
            task = loop.create_task(self._handoff(conn))
            self._tasks[task] = conn
            task.add_done_callback(self._handoff_done)

    def _pause(self, exc: OSError) -> None:
        """Stop accepting until :meth:`resume` or the back-off timer; log (throttled)."""
        self._disarm()
        delay = self._backoff
        if self._timer is None:
            self._timer = self._loop.call_later(delay, self._on_timer)
            self._backoff = min(delay * 2, BACKOFF_MAX)
        if exc.errno in RESOURCE_ERRNOS:
            self.refused += 1
            count = self._refusal_log.event()
            if count:
                log.warning(
                    "accept() on %s refused: %s%s; %d refusal%s since the last report; "
                    "accepting again when a connection closes, or in %.1f s",
                    self._names, _describe(exc), _fd_limit(exc), count,
                    "" if count == 1 else "s", delay,
                )
        else:
            count = self._error_log.event()
            if count:
                log.error(
                    "accept() on %s failed (%d failure%s since the last report); retrying in %.1f s",
                    self._names, count, "" if count == 1 else "s", delay,
                    exc_info=exc,
                )

    def _on_timer(self) -> None:
        self._timer = None
        self._arm()

    async def _handoff(self, conn: socket.socket) -> None:
        try:
            await self._loop.connect_accepted_socket(self._protocol_factory, conn)
        except Exception as exc:
            # Raised by the protocol factory or while building the transport:
            # no transport holds the socket (after the transport exists the
            # coroutine only awaits its ready future, which only cancellation
            # fails; asyncio then closes the transport itself).
            conn.close()
            count = self._handoff_log.event()
            if count:
                log.error(
                    "setting up an accepted connection failed (%d failure%s since the last report)",
                    count, "" if count == 1 else "s", exc_info=exc,
                )

    def _handoff_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.pop(task, None)


async def _bind(
    loop: asyncio.AbstractEventLoop,
    host: str | Iterable[str] | None,
    port: int | str,
    reuse_port: bool,
) -> list[socket.socket]:
    """Resolve ``host`` and bind one socket per address, as ``create_server`` does."""
    if host is None or host == "":
        hosts: list[str | None] = [None]
    elif isinstance(host, str):
        hosts = [host]
    else:
        hosts = [h or None for h in host]
    infos: list[tuple[int, int, int, tuple[Any, ...]]] = []
    for h in hosts:
        try:
            # numeric hosts (and None) resolve without DNS: no executor thread
            found = socket.getaddrinfo(
                h, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE | socket.AI_NUMERICHOST
            )
        except socket.gaierror:
            found = await loop.getaddrinfo(
                h, port, family=socket.AF_UNSPEC, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )
        for family, kind, protocol, _canon, address in found:
            info = (family, kind, protocol, address)
            if info not in infos:
                infos.append(info)
    sockets: list[socket.socket] = []
    errors: list[OSError] = []
    done = False
    try:
        for af, socktype, proto, sa in infos:
            try:
                sock = socket.socket(af, socktype, proto)
            except OSError as exc:  # e.g. no IPv6 in this kernel: skip, as create_server does
                errors.append(exc)
                continue
            sockets.append(sock)
            if os.name == "posix" and sys.platform != "cygwin":  # as create_server
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                if not hasattr(socket, "SO_REUSEPORT"):
                    raise ValueError("reuse_port not supported by socket module")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if af == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                # no dual stack: "::" and "0.0.0.0" are bound by separate sockets
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(sa)
            except OSError as err:
                raise OSError(
                    err.errno,
                    f"error while attempting to bind on address {sa!r}: {(err.strerror or str(err)).lower()}",
                ) from None
        if not sockets:
            if errors:
                raise errors[0]
            raise OSError(errno.EADDRNOTAVAIL, f"no address to bind for host {host!r}")
        done = True
    finally:
        if not done:
            for sock in sockets:
                sock.close()
    return sockets


def _format_address(sock: socket.socket) -> str:
    try:
        name = sock.getsockname()
    except OSError:
        return "?"
    if isinstance(name, tuple):
        host, port = name[0], name[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return str(name)


def _describe(exc: OSError) -> str:
    name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
    return f"{name} ({exc.strerror or exc})"


def _fd_limit(exc: OSError) -> str:
    """For EMFILE, the process's descriptor limit (the usual fix is raising it)."""
    if exc.errno != errno.EMFILE:
        return ""
    try:
        import resource
    except ImportError:  # not on Windows
        return ""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return f", RLIMIT_NOFILE soft limit {soft}"
