"""One cluster, not a set of strangers: the control channel between nodes.

Every node that shares a broker joins one cluster and talks to the others over
reserved internal channels (:data:`CONTROL_CHANNEL`, and
``NODE_CHANNEL_PREFIX + uid`` per node) through the broker's ordinary
contract.

See ``docs/design.md``, "The cluster" (messages, liveness, user commands,
surveys, ``send``/``register``).
"""

from __future__ import annotations

import asyncio
import collections
import fnmatch
import itertools
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ._version import __version__
from .brokers.base import Publication
from .codes import DisconnectCode, ErrorCode
from .errors import BrokerError, Disconnect, HubbubError, NodeUnavailable, ProtocolError, RemoteError
from .hub import Hub
from .strictjson import dumps, loads

log = logging.getLogger("hubbub.cluster")

#: The channel every node subscribes to (a control character first: no client may name it).
CONTROL_CHANNEL = "\x1fhubbub.control"
#: Prefix of each node's own channel (followed by its uid).
NODE_CHANNEL_PREFIX = "\x1fhubbub.node."

#: A request handler: ``await handler(payload, sender_uid)`` returns the reply (a JSON value).
RequestHandler = Callable[[Any, str], Awaitable[Any]]

#: Seconds a node waits for its ``bye`` to be published when it shuts down.
BYE_TIMEOUT = 1.0


def node_info(hub: Hub, *, uid: str, name: str, started_at: float, interval: float,
              now: float | None = None) -> dict[str, Any]:
    """The snapshot of a node, as the server API's ``info`` lists it (after
    Centrifugo's ``info`` result, centrifugal.dev ``docs/server/server_api.md``).

    One function builds it for ``info`` and for the heartbeat, so both show the
    same figures. It reads counters that already exist (no work on the hot path).

    Args:
        hub: the node's hub (clients, sessions, channels, :class:`~hubbub.stats.Stats`).
        uid: the node's unique id; name: its human-readable name.
        started_at: when the node started (unix seconds).
        interval: seconds between snapshots (``metrics.interval``).
        now: unix seconds (default: ``time.time()``).

    Returns:
        ``{"uid", "name", "version", "num_clients", "num_users", "num_subs",
        "num_channels", "uptime" (whole seconds), "broker": {"name", "up"},
        "metrics": {"interval": seconds, "items": {name: number}}}``; the items are the node's
        cumulative counters (:meth:`hubbub.stats.Stats.items`).
    """
    channels = hub.channels()
    now = time.time() if now is None else now
    return {
        "uid": uid,
        "name": name,
        "version": __version__,
        "num_clients": hub.clients,
        "num_users": sum(1 for user in hub.sessions if user),
        "num_subs": sum(channels.values()),
        "num_channels": len(channels),
        "uptime": max(0, int(now - started_at)),
        "broker": {"name": hub.broker.name, "up": hub.broker.healthy},
        "metrics": {"interval": interval, "items": hub.stats.items()},
    }


# -- the user-targeted commands of the server API -----------------------------------------------


async def apply_user_command(hub: Hub, command: dict[str, Any]) -> None:
    """Apply a server API user command to this node's sessions of ``command["user"]``.

    ``command``: ``{"method": "subscribe" | "unsubscribe" | "disconnect" |
    "refresh", "user": str, "client": str (optional: only that connection)}``
    and, per method: ``channel`` (subscribe, unsubscribe); ``code``,
    ``reason``, ``whitelist`` (list of client ids to spare) (disconnect);
    ``expired`` (bool), ``expire_at`` (unix seconds or null) (refresh).
    The parameters were validated by the node that took the API call.

    Raises:
        ProtocolError: a subscribe failed for a session (105, already
            subscribed, is not an error); a session past its channel limit is
            disconnected (3505) instead.
    """
    method = command.get("method")
    sessions = hub.user_sessions(str(command.get("user", "")), command.get("client") or None)
    if method == "subscribe":
        channel = command["channel"]
        for session in sessions:
            try:
                await session.server_subscribe(channel)
            except ProtocolError as exc:
                if exc.code != ErrorCode.ALREADY_SUBSCRIBED:
                    raise
            except Disconnect as exc:
                session.disconnect(exc.code, exc.reason)
    elif method == "unsubscribe":
        for session in sessions:
            session.server_unsubscribe(command["channel"])
    elif method == "disconnect":
        keep = set(command.get("whitelist") or ())
        code = int(command.get("code") or DisconnectCode.FORCE_DISCONNECT)
        reason = command.get("reason") or "force disconnect"
        for session in sessions:
            if session.client_id not in keep:
                session.disconnect(code, reason)
    elif method == "refresh":
        expire_at = command.get("expire_at")
        for session in sessions:
            if command.get("expired"):
                session.disconnect(DisconnectCode.EXPIRED)
            elif expire_at is not None:
                session.expire_at = expire_at
    else:
        raise ValueError(f"unknown user command {method!r}")


# -- the cluster ---------------------------------------------------------------------------------


@dataclass(slots=True)
class _Peer:
    info: dict[str, Any]
    seen_at: float  # monotonic


@dataclass(slots=True)
class _Survey:
    waiting: set[str]
    replies: dict[str, Any] = field(default_factory=dict)
    done: asyncio.Future[None] | None = None


class Cluster:
    """This node's view of the cluster, and the control channel.

    Args:
        hub: the node's hub (its broker carries the control channel).
        started_at: when the node started (unix seconds), for ``uptime``.
        name: the node's name (default ``HOSTNAME_PID``).
        interval: seconds between heartbeats (``node_info_interval``).
        timeout: seconds without a heartbeat after which a node drops out
            (``node_timeout``).
        request_timeout: seconds :meth:`send` and :meth:`survey` wait for
            answers by default (``node_request_timeout``).
        clock: monotonic clock in seconds (tests pass their own).
        wall: unix time in seconds (tests pass their own).

    Use ``await cluster.start()`` after the hub started, ``await
    cluster.close()`` before it closes. Attributes: ``uid`` (a UUID, new at
    each start of the process), ``name``.
    """

    def __init__(self, hub: Hub, *, started_at: float, name: str | None = None, interval: float = 1.0,
                 timeout: float = 3.0, request_timeout: float = 2.0,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time) -> None:
        self.hub = hub
        self.uid = str(uuid.uuid4())
        self.name = name or f"{os.uname().nodename}_{os.getpid()}"
        self.started_at = started_at
        self.interval = interval
        self.timeout = timeout
        self.request_timeout = request_timeout
        self._clock = clock
        self._wall = wall
        self.own_channel = NODE_CHANNEL_PREFIX + self.uid
        self._peers: dict[str, _Peer] = {}
        self._handlers: dict[str, tuple[RequestHandler, bool]] = {}
        self._calls: dict[str, asyncio.Future[Any]] = {}
        self._surveys: dict[str, _Survey] = {}
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ordered: collections.deque[tuple[RequestHandler, Any, str, str | None]] = collections.deque()
        self._ordered_task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._subscribed = False
        self._heartbeat_due = False
        self._publish_failing = False
        self._subscribe_failing = False
        self._closed = False
        self._announced = False  # this node logged that it joined other nodes
        self.register("user", self._on_user_command, ordered=True)
        self.register("channels", self._on_channels)

    # -- life cycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Take over the control channels in the hub, subscribe to them, send
        the first heartbeat and start the heartbeat timer. If the broker is
        unavailable, the node retries at every heartbeat."""
        self.hub.internal[CONTROL_CHANNEL] = self._on_publication
        self.hub.internal[self.own_channel] = self._on_publication
        await self._subscribe()
        self.tick()

    async def close(self) -> None:
        """Stop the timer, tell the others this node leaves (best effort,
        :data:`BYE_TIMEOUT`), fail the requests still waiting, stop the tasks."""
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        if self._subscribed:
            if self._announced:  # as for joining, the node logs its own leaving; the others at DEBUG
                log.info("node %s (%s) left the cluster", self.name, self.uid)
            try:
                async with asyncio.timeout(BYE_TIMEOUT):
                    await self._publish(CONTROL_CHANNEL, {"type": "bye"})
            except (BrokerError, TimeoutError) as exc:
                log.debug("could not say bye: %s", exc)
        for fut in self._calls.values():
            if not fut.done():
                fut.set_exception(NodeUnavailable("this node is shutting down"))
                fut.exception()
        for survey in self._surveys.values():
            if survey.done is not None and not survey.done.done():
                survey.done.set_result(None)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=1.0)
        for channel in (CONTROL_CHANNEL, self.own_channel):
            self.hub.internal.pop(channel, None)
        self._subscribed = False  # the subscriptions end with the broker, closed next by the hub

    async def _subscribe(self) -> None:
        try:
            await self.hub.broker.subscribe(CONTROL_CHANNEL)
            await self.hub.broker.subscribe(self.own_channel)
        except BrokerError as exc:
            if not self._subscribe_failing:
                log.warning("cluster control channels not subscribed, retrying at each heartbeat: %s", exc)
            self._subscribe_failing = True
            return
        if self._subscribe_failing:
            log.info("cluster control channels subscribed")
        self._subscribe_failing = False
        self._subscribed = True

    def tick(self) -> None:
        """One heartbeat: publish this node's snapshot, forget the nodes not
        heard from for ``timeout`` seconds, resubscribe if needed, and schedule
        the next tick ``interval`` seconds later (tests call it with a fake clock)."""
        if self._closed:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._heartbeat_due = False
        self._expire()
        if not self._subscribed:
            self._spawn(self._subscribe(), "control subscribe")
        self._spawn(self._heartbeat(), "heartbeat")
        self._timer = asyncio.get_running_loop().call_later(self.interval, self.tick)

    async def _heartbeat(self) -> None:
        info = self.info()
        try:
            await self._publish(CONTROL_CHANNEL, {"type": "node", "info": info})
        except BrokerError as exc:
            if not self._publish_failing:
                log.warning("cluster heartbeat failed: %s", exc)
            self._publish_failing = True
            return
        if self._publish_failing:
            log.info("cluster heartbeats go out again")
        self._publish_failing = False

    def _expire(self) -> None:
        horizon = self._clock() - self.timeout
        for uid, peer in list(self._peers.items()):
            if peer.seen_at < horizon:
                del self._peers[uid]
                log.info("node %s (%s) dropped out: no heartbeat for %.1f s", peer.info.get("name"), uid,
                         self.timeout)

    # -- what this node knows ------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """This node's snapshot (:func:`node_info`)."""
        return node_info(self.hub, uid=self.uid, name=self.name, started_at=self.started_at,
                         interval=self.interval, now=self._wall())

    def peers(self) -> list[str]:
        """The uids of the other live nodes (heard from within ``timeout`` seconds)."""
        horizon = self._clock() - self.timeout
        return [uid for uid, peer in self._peers.items() if peer.seen_at >= horizon]

    def nodes(self) -> list[dict[str, Any]]:
        """Every live node's snapshot, this one's fresh, the others' from their
        last heartbeat; sorted by name (the server API's ``info``)."""
        horizon = self._clock() - self.timeout
        out = [self.info()] + [peer.info for peer in self._peers.values() if peer.seen_at >= horizon]
        out.sort(key=lambda node: (str(node.get("name", "")), str(node.get("uid", ""))))
        return out

    # -- requests between nodes ----------------------------------------------------------------

    def register(self, kind: str, handler: RequestHandler, *, ordered: bool = False) -> None:
        """Answer requests of ``kind`` from other nodes (and from this one).

        Args:
            kind: the request's name (``user`` and ``channels`` are built in).
            handler: ``async def handler(payload, sender_uid) -> reply``;
                ``payload`` is the JSON value the sender passed; the reply
                must be a JSON value (``None`` included). An exception is sent
                back as :class:`RemoteError` with its text (and logged here
                unless it is a :class:`~hubbub.errors.HubbubError`).
            ordered: run this kind's requests one at a time, in the order they
                arrived (e.g. a subscribe then an unsubscribe of one user);
                otherwise each request runs in a task of its own at once.

        Raises:
            ValueError: ``kind`` already has a handler.
        """
        if kind in self._handlers:
            raise ValueError(f"request kind {kind!r} already has a handler")
        self._handlers[kind] = (handler, ordered)

    async def send(self, node: str, kind: str, payload: Any = None, *, timeout: float | None = None) -> Any:
        """Run request ``kind`` with ``payload`` on node ``node`` and return its reply.

        The request is published on ``node``'s own channel; the reply comes back
        on this node's. A request to this node's own uid runs the handler here
        without the broker. Use it to forward what only one node can do, e.g.
        an HTTP-emulation request to the node holding the session
        (``await cluster.send(session_node, "emulation", {...})``).

        Args:
            node: the target's uid (:attr:`uid` of that node, as ``info`` lists it).
            kind: a kind registered on the target with :meth:`register`.
            payload: any JSON value (binary data: base64 it).
            timeout: seconds to wait for the reply (default ``request_timeout``).

        Raises:
            NodeUnavailable: no reply within ``timeout`` (the node is dead or
                unknown), or this node is shutting down.
            RemoteError: the target has no handler for ``kind``, or its handler raised.
            BrokerError: the request could not be published.
            ValueError: ``payload`` is not JSON-encodable.
        """
        if node == self.uid:
            return await self._run_local(kind, payload)
        rid = f"{self.uid}:{next(self._ids)}"
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._calls[rid] = fut
        try:
            await self._publish(NODE_CHANNEL_PREFIX + node,
                                {"type": "request", "id": rid, "kind": kind, "payload": payload})
            wait = self.request_timeout if timeout is None else timeout
            try:
                return await asyncio.wait_for(fut, wait)
            except TimeoutError:
                raise NodeUnavailable(f"node {node} did not answer {kind!r} within {wait} s") from None
        finally:
            self._calls.pop(rid, None)

    async def broadcast(self, kind: str, payload: Any = None) -> None:
        """Run request ``kind`` on every other node, wanting no reply (fire and
        forget; nodes started meanwhile get it too). Returns once published.

        Raises:
            BrokerError: it could not be published.
        """
        await self._publish(CONTROL_CHANNEL, {"type": "request", "kind": kind, "payload": payload})

    async def survey(self, kind: str, payload: Any = None, *, timeout: float | None = None) -> dict[str, Any]:
        """Run request ``kind`` on every live node, this one included, and gather the replies.

        Waits until every node known when the survey starts (:meth:`peers`)
        has answered, or ``timeout`` seconds (default ``request_timeout``)
        passed. A node that does not answer in time, or whose handler fails,
        is missing from the result (logged); the others' replies are kept.
        Nodes not heard from yet are not waited for (their replies are taken
        if they come in time). With no other node known nothing is published.

        Returns:
            ``{node_uid: reply}``.

        Raises:
            BrokerError: the survey could not be published (the local reply is lost too).
            RemoteError: this node's own handler failed.
        """
        peers = self.peers()
        replies: dict[str, Any] = {}
        if peers:
            rid = f"{self.uid}:{next(self._ids)}"
            survey = _Survey(waiting=set(peers), done=asyncio.get_running_loop().create_future())
            self._surveys[rid] = survey
            try:
                await self._publish(CONTROL_CHANNEL,
                                    {"type": "request", "id": rid, "kind": kind, "payload": payload})
                replies[self.uid] = await self._run_local(kind, payload)
                wait = self.request_timeout if timeout is None else timeout
                if survey.waiting:
                    try:
                        await asyncio.wait_for(asyncio.shield(survey.done), wait)  # type: ignore[arg-type]
                    except TimeoutError:
                        log.warning("survey %r: no answer within %s s from node(s) %s", kind, wait,
                                    ", ".join(sorted(survey.waiting)))
                replies.update(survey.replies)
            finally:
                self._surveys.pop(rid, None)
        else:
            replies[self.uid] = await self._run_local(kind, payload)
        return replies

    async def _run_local(self, kind: str, payload: Any) -> Any:
        found = self._handlers.get(kind)
        if found is None:
            raise RemoteError(f"no handler for request {kind!r}")
        handler, _ = found
        try:
            return await handler(payload, self.uid)
        except HubbubError:
            raise
        except Exception as exc:
            raise RemoteError(f"{type(exc).__name__}: {exc}") from exc

    # -- the wire --------------------------------------------------------------------------------

    async def _publish(self, channel: str, message: dict[str, Any]) -> None:
        message["from"] = self.uid
        await self.hub.broker.publish(channel, Publication(dumps(message)))

    def _on_publication(self, pub: Publication) -> None:
        """A control message arrived (called by the hub; never raises)."""
        try:
            message = loads(pub.data)
            if not isinstance(message, dict):
                raise ValueError("not an object")
            sender = message.get("from")
            if not isinstance(sender, str) or sender == self.uid or self._closed:
                return
            self._dispatch(sender, message)
        except Exception as exc:  # noqa: BLE001 - a bad message must not stop the node
            log.warning("ignored a malformed control message: %s", exc)

    def _dispatch(self, sender: str, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "node":
            info = message.get("info")
            if not isinstance(info, dict):
                raise ValueError("heartbeat without info")
            new = sender not in self._peers
            self._peers[sender] = _Peer(info, self._clock())
            if new:
                # each node logs its own joining at INFO, once (N lines for N nodes, not N x N);
                # the others' at DEBUG
                log.debug("node %s (%s) joined the cluster", info.get("name"), sender)
                if not self._announced:
                    self._announced = True
                    log.info("node %s (%s) joined the cluster: %d other node(s) there", self.name, self.uid,
                             len(self._peers))
                self._heartbeat_soon()
        elif kind == "bye":
            peer = self._peers.pop(sender, None)
            if peer is not None:
                log.debug("node %s (%s) left the cluster", peer.info.get("name"), sender)
        elif kind == "request":
            self._on_request(sender, message)
        elif kind == "reply":
            self._on_reply(sender, message)
        else:
            raise ValueError(f"unknown type {kind!r}")

    def _heartbeat_soon(self) -> None:
        """A new node appeared: send it this node's snapshot now rather than
        at the next tick (once, however many appear in this iteration)."""
        if not self._heartbeat_due and self._timer is not None:
            self._heartbeat_due = True
            asyncio.get_running_loop().call_soon(self.tick)

    def _on_request(self, sender: str, message: dict[str, Any]) -> None:
        kind = message.get("kind")
        rid = message.get("id")
        rid = rid if isinstance(rid, str) else None
        found = self._handlers.get(kind) if isinstance(kind, str) else None
        if found is None:
            if rid is not None:
                self._spawn(self._reply(sender, rid, error=f"no handler for request {kind!r}"), "reply")
            return
        handler, ordered = found
        item = (handler, message.get("payload"), sender, rid)
        if ordered:
            self._ordered.append(item)
            if self._ordered_task is None:
                self._ordered_task = self._spawn(self._run_ordered(), "ordered requests")
        else:
            self._spawn(self._handle(*item), f"request {kind!r}")

    async def _run_ordered(self) -> None:
        try:
            while self._ordered:
                await self._handle(*self._ordered.popleft())
        finally:
            self._ordered_task = None

    async def _handle(self, handler: RequestHandler, payload: Any, sender: str, rid: str | None) -> None:
        try:
            result = await handler(payload, sender)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the error goes back to the sender
            if not isinstance(exc, HubbubError):
                log.exception("request handler failed")
            if rid is not None:
                await self._reply(sender, rid, error=f"{type(exc).__name__}: {exc}")
            return
        if rid is not None:
            await self._reply(sender, rid, result=result)

    async def _reply(self, to: str, rid: str, *, result: Any = None, error: str | None = None) -> None:
        message: dict[str, Any] = {"type": "reply", "id": rid}
        if error is not None:
            message["error"] = error
        else:
            message["result"] = result
        try:
            await self._publish(NODE_CHANNEL_PREFIX + to, message)
        except ValueError as exc:  # the handler returned something that is not JSON
            await self._publish(NODE_CHANNEL_PREFIX + to, {"type": "reply", "id": rid, "error": str(exc)})

    def _on_reply(self, sender: str, message: dict[str, Any]) -> None:
        rid = message.get("id")
        error = message.get("error")
        fut = self._calls.get(rid) if isinstance(rid, str) else None
        if fut is not None:
            if not fut.done():
                if error is not None:
                    fut.set_exception(RemoteError(str(error)))
                else:
                    fut.set_result(message.get("result"))
            return
        survey = self._surveys.get(rid) if isinstance(rid, str) else None
        if survey is None:
            return  # too late: the caller stopped waiting
        survey.waiting.discard(sender)
        if error is not None:
            log.warning("survey reply of node %s: %s", sender, error)
        else:
            survey.replies[sender] = message.get("result")
        if not survey.waiting and survey.done is not None and not survey.done.done():
            survey.done.set_result(None)

    def _spawn(self, coro: Awaitable[Any], what: str) -> asyncio.Task[Any]:
        async def run() -> None:
            try:
                await coro
            except asyncio.CancelledError:
                raise
            except BrokerError as exc:
                log.debug("broker error during %s: %s", what, exc)
            except Exception:
                log.exception("error during cluster %s", what)

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- built-in requests -----------------------------------------------------------------------

    async def user_command(self, command: dict[str, Any]) -> None:
        """Apply a server API user command (:func:`apply_user_command`) on
        every node: here first, then broadcast to the others, which apply it in
        the order published.

        Raises:
            ProtocolError: as :func:`apply_user_command` here (after the
                broadcast went out).
            BrokerError: the broadcast failed (the command was applied here only).
        """
        error: BaseException | None = None
        try:
            await apply_user_command(self.hub, command)
        except ProtocolError as exc:
            error = exc
        await self.broadcast("user", command)
        if error is not None:
            raise error

    async def _on_user_command(self, payload: Any, sender: str) -> None:
        if not isinstance(payload, dict):
            raise ValueError("user command must be an object")
        try:
            await apply_user_command(self.hub, payload)
        except ProtocolError as exc:
            log.info("user command %s from node %s: %s", payload.get("method"), sender, exc.message)

    async def channels(self, pattern: str = "") -> dict[str, int]:
        """Every node's channels (a :meth:`survey`), with the subscribers of
        every node added up: ``{channel: num_clients}``. ``pattern``: an
        ``fnmatch`` pattern each node applies (``""``: all).

        Raises:
            BrokerError: the survey could not be published.
        """
        merged: dict[str, int] = {}
        for reply in (await self.survey("channels", {"pattern": pattern})).values():
            if isinstance(reply, dict):
                for name, count in reply.items():
                    if isinstance(count, int):
                        merged[name] = merged.get(name, 0) + count
        return merged

    async def _on_channels(self, payload: Any, sender: str) -> dict[str, int]:
        pattern = payload.get("pattern", "") if isinstance(payload, dict) else ""
        return {name: count for name, count in self.hub.channels().items()
                if not pattern or fnmatch.fnmatchcase(name, pattern)}
