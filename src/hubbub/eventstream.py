"""A channel as a plain event stream (``GET /sse/{channel}``), sans-I/O.

Any Server-Sent Events consumer (a browser's ``EventSource``, ``curl -N``)
receives a channel's publications, one event each: the event's ``data`` is the
publication's JSON ``data``, and with history its id is ``<epoch>:<offset>``.

See ``docs/design.md``, "Streaming transports" (channel event streams); its
authentication: ``docs/security.md``.
"""

from __future__ import annotations

import weakref
from typing import Any

from .brokers.base import ClientInfo, Publication, StreamPosition
from .errors import BadRequest, Disconnect, ProtocolError
from .framing import SSEFrames
from .relay import RelaySession
from .strictjson import dumps

__all__ = ["ChannelEventWire", "ChannelStreamSession", "farewell", "parse_event_id"]


def parse_event_id(value: str) -> StreamPosition:
    """The stream position of a ``Last-Event-ID`` value ``<epoch>:<offset>``.

    Raises:
        BadRequest: any other shape.
    """
    epoch, sep, offset = value.strip().rpartition(":")
    if not sep or not offset.isdigit() or len(offset) > 20:
        raise BadRequest(f"malformed Last-Event-ID {value[:64]!r}: expected <epoch>:<offset>")
    return StreamPosition(int(offset), epoch)


def farewell(code: int, reason: str) -> bytes:
    """The data of the ``disconnect`` event that ends a channel stream (``code``: a close code)."""
    return dumps({"code": code, "reason": reason})


class ChannelEventWire:
    """Encodes one channel's publications as SSE events, once for all of its
    event-stream subscribers of one framing.

    ``epoch``: the channel stream's epoch, put in every event id (set by the
    subscribers, which learn it when they join).
    """

    __slots__ = ("frames", "joinable", "epoch", "__weakref__")

    def __init__(self, frames: SSEFrames) -> None:
        self.frames = frames
        self.joinable = frames.joinable
        self.epoch = ""

    def event_id(self, pub: Publication) -> bytes | None:
        return b"%s:%d" % (self.epoch.encode(), pub.offset) if pub.offset else None

    def encode_publication(self, channel: str, pub: Publication) -> bytes:
        return self.frames.event(pub.data, id=self.event_id(pub))

    def encode_join(self, channel: str, info: ClientInfo) -> None:
        return None

    def encode_leave(self, channel: str, info: ClientInfo) -> None:
        return None


class ChannelWires:
    """One :class:`ChannelEventWire` per channel and framing, while in use."""

    def __init__(self) -> None:
        self._wires: weakref.WeakValueDictionary[tuple[str, int], ChannelEventWire] = weakref.WeakValueDictionary()

    def get(self, channel: str, frames: SSEFrames) -> ChannelEventWire:
        key = (channel, id(frames))
        wire = self._wires.get(key)
        if wire is None:
            wire = self._wires[key] = ChannelEventWire(frames)
        return wire


class ChannelStreamSession(RelaySession):
    """One event-stream consumer of one channel.

    Decide it with :meth:`handshake` (the relay's authentication and
    permissions) before anything is sent, then :meth:`open` streams.

    Args:
        since: the position of ``Last-Event-ID``, if any.
        (others as :class:`~hubbub.relay.RelaySession`; ``wire`` is the
        channel's :class:`ChannelEventWire`.)
    """

    transport = "sse_channel"

    __slots__ = ("since",)

    def __init__(self, *args: Any, since: StreamPosition | None = None, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.since = since

    async def open(self) -> None:
        """Join the channel; send the missed publications (or the
        ``unrecoverable`` event) first. A failure ends the stream with a
        ``disconnect`` event."""
        if self._auth is None:
            refused = await self.handshake()
            if refused is not None:
                self.disconnect(3500 if refused[0] == 401 else 3507, refused[1])
                return
        assert self._auth is not None
        ns, chan_info = self._auth
        since = self.since if ns.history else None
        try:
            result = await self.join(self.channel, ns, chan_info, recover_since=since, recoverable=ns.history)
        except (ProtocolError, Disconnect) as exc:
            self._refused(exc)
            return
        if self.closed:
            self.leave(self.channel)
            return
        wire = self.wire
        assert isinstance(wire, ChannelEventWire)  # as made by the handler (Streams.channel_sse)
        if ns.history:
            wire.epoch = result.position.epoch
        out = self.out
        if since is not None:
            if result.recovered:
                for pub in result.publications:
                    out.deliver(wire.encode_publication(self.channel, pub))
            else:
                top = result.position
                if result.late:
                    top = StreamPosition(result.late[0].offset - 1, top.epoch)
                out.deliver(wire.frames.event(dumps({"epoch": top.epoch, "offset": top.offset}),
                                              event=b"unrecoverable"))
        for pub in result.late:
            out.deliver(wire.encode_publication(self.channel, pub))

    def ping(self) -> None:
        """A comment line keeps the stream alive; no answer is expected."""
        if not self.closed:
            self.out.send_ping()

    def check_pong(self) -> None:
        """Event-stream consumers do not answer pings."""

    async def handle_message(self, payload: bytes, binary: bool) -> None:
        """Nothing comes from an event-stream consumer."""
