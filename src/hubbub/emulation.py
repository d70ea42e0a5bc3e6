"""``/emulation``: the later commands of centrifuge-js's emulated sessions, on any node.

:class:`Emulation` holds this node's emulated sessions by session id;
:meth:`Emulation.deliver_local` is the one function that hands a session
of this node its commands, and requests naming another node go there over the
cluster's control channel (:meth:`Emulation.use_cluster`). See
``docs/design.md``, "Streaming transports".
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from .codes import DisconnectCode
from .errors import BadRequest
from .formats import for_body
from .http import HTTPRequest
from .uni import EmulatedSession

__all__ = ["EMULATION_KIND", "Emulation", "EmulationCluster", "parse_emulation_request", "well_formed_id"]

log = logging.getLogger("hubbub.emulation")

#: the control channel's request kind that carries ``/emulation`` to another node
EMULATION_KIND = "emulation"

#: The shape of node ids (``Cluster.uid``) and emulated session ids: a UUID, as ``str(uuid.uuid4())`` makes it.
_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")


def well_formed_id(value: str) -> bool:
    """Whether ``value`` has the shape of a node or session id (a lower-case UUID)."""
    return len(value) == 36 and _ID.match(value) is not None


class EmulationCluster(Protocol):
    """What ``/emulation`` needs from the control channel between nodes
    (:class:`hubbub.cluster.Cluster`)."""

    uid: str

    def peers(self) -> list[str]:
        """The ids of the other live nodes."""
        ...

    async def send(self, node: str, kind: str, payload: Any = None) -> Any: ...

    def register(self, kind: str, handler: Callable[[Any, str], Awaitable[Any]]) -> None: ...


class Emulation:
    """The emulated sessions of this node, by session id, and the one way in
    for their later commands.

    Args:
        node: this node's id (connect replies carry it; requests name it);
            a new random one by default.

    Attributes:
        forward: ``async (node, session, data) -> bool`` that delivers a
            request naming another node there (True: that node has the
            session). ``None`` (one node): such requests get 404. The other
            node's end calls :meth:`deliver_local`.
        known: ``() -> [node id]``, the other nodes a request may name, when
            known (``None``: any node may be tried).
    """

    def __init__(self, node: str | None = None) -> None:
        self.node = node or str(uuid.uuid4())
        self._sessions: dict[str, tuple[EmulatedSession, asyncio.Lock]] = {}
        self.forward: Callable[[str, str, bytes], Awaitable[bool]] | None = None
        self.known: Callable[[], list[str]] | None = None

    def add(self, session: EmulatedSession) -> None:
        """Register ``session`` (by its ``session`` id); it leaves when it closes."""
        self._sessions[session.session] = (session, asyncio.Lock())
        session.on_gone = self.remove

    def remove(self, session: EmulatedSession) -> None:
        found = self._sessions.get(session.session)
        if found is not None and found[0] is session:
            del self._sessions[session.session]

    def __len__(self) -> int:
        return len(self._sessions)

    def may_exist(self, node: str) -> bool:
        """Whether a request naming ``node`` (a well-formed id) may find a session:
        this node, or another that the cluster knows (or any, when it cannot tell)."""
        if node == self.node:
            return True
        if self.forward is None:
            return False
        return self.known is None or node in self.known()

    def use_cluster(self, cluster: EmulationCluster) -> None:
        """Route ``/emulation`` requests between nodes through ``cluster``, the
        control channel: this node's id becomes the cluster's uid; a request
        naming another live node is sent there as an ``emulation`` request,
        whose handler calls :meth:`deliver_local`."""
        self.node = cluster.uid
        self.known = cluster.peers

        async def forward(node: str, session: str, data: bytes) -> bool:
            try:
                reply = await cluster.send(node, EMULATION_KIND, {"session": session,
                                                                  "data": base64.b64encode(data).decode()})
            except Exception as exc:  # the node is gone: as a session that is gone
                log.info("emulation request for node %r not delivered: %s", node, exc)
                return False
            return reply is True

        async def handle(payload: Any, sender: str) -> bool:
            if not isinstance(payload, dict) or not isinstance(payload.get("session"), str):
                return False
            try:
                data = base64.b64decode(str(payload.get("data", "")), validate=True)
            except ValueError:
                return False
            return await self.deliver_local(payload["session"], data)

        cluster.register(EMULATION_KIND, handle)
        self.forward = forward

    async def deliver_local(self, session_id: str, data: bytes) -> bool:
        """Hand ``data`` (the session codec's encoded commands) to session
        ``session_id`` of this node; returns once they are handled (their
        replies are queued on the session's stream). Commands of one session
        run one request at a time, in arrival order, as a WebSocket's messages.

        Returns False when this node has no such open session.
        """
        found = self._sessions.get(session_id)
        if found is None or found[0].closed:
            return False
        session, lock = found
        async with lock:
            if session.closed:
                return True
            try:
                await session.handle_message(data)
            except Exception:
                log.exception("error handling emulated commands")
                session.disconnect(DisconnectCode.SERVER_ERROR)
        return True


def parse_emulation_request(request: HTTPRequest) -> tuple[str, str, bytes]:
    """``(node, session, data)`` of a ``POST /emulation`` body: JSON
    ``{"session": str, "node": str, "data": str}`` (``data`` holds the
    encoded commands), or a Protobuf ``EmulationRequest`` with
    ``Content-Type: application/octet-stream``. ``session`` is a well-formed
    session id, ``node`` a well-formed node id or ``""`` (this node).

    Raises:
        BadRequest: anything else (a malformed id included).
    """
    node, session, data = for_body(request.headers).decode_emulation_request(request.body or b"")
    if not well_formed_id(session):
        raise BadRequest("malformed session id (the connect reply's session)")
    if node and not well_formed_id(node):
        raise BadRequest("malformed node id (the connect reply's node)")
    return node, session, data
