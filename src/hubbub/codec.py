"""The codec seam: how the Centrifugo protocol's messages become bytes.

JSON (centrifugal.dev ``docs/transports/client_protocol.md``): one WebSocket
text message carries one or more commands (or replies), separated by ``\\n``;
``data`` and ``info`` are embedded JSON values. Protobuf is
:mod:`hubbub.protobuf_codec`.

See ``docs/design.md``, "The codec seam (codec.py, formats.py)".
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol

from .brokers.base import ClientInfo, Publication
from .codes import DisconnectCode
from .errors import BadRequest, Disconnect, ProtocolError
from .outbox import FrameEncoder
from .strictjson import dumps, encode_data, loads


class Codec(Protocol):
    """Encodes and decodes the protocol's messages (one implementation per format).

    Attributes:
        name: the format (``"json"``, ``"protobuf"``).
        binary: whether messages go in binary WebSocket frames.
        publication_objects: whether :meth:`encode_reply` takes
            :class:`~hubbub.brokers.base.Publication` objects in results
            (history, recovery) rather than their ``to_json()`` dicts.
    """

    name: str
    binary: bool
    publication_objects: bool

    def decode_commands(self, payload: bytes) -> Iterator[dict[str, Any]]:
        """The commands in one message, in order.

        Raises:
            Disconnect: 3501 for a message that is not a sequence of commands.
        """
        ...

    def encode_reply(self, command_id: int, method: str, result: dict[str, Any]) -> bytes: ...

    def encode_error(self, command_id: int, error: ProtocolError) -> bytes: ...

    def join(self, replies: list[bytes]) -> bytes:
        """Several encoded replies or pushes as one message."""
        ...

    def encode_push(self, channel: str, kind: str, body: dict[str, Any]) -> bytes:
        """A push that is not on the hot path (subscribe, unsubscribe, ...)."""
        ...

    def encode_publication(self, channel: str, pub: Publication) -> bytes: ...

    def publication_bytes(self, pub: Publication) -> bytes:
        """The bytes this format sends as ``pub``'s data: what a Fossil delta is made of."""
        ...

    def encode_publication_delta(self, channel: str, pub: Publication, data: bytes, delta: bool) -> bytes:
        """A ``pub`` push for a subscriber that negotiated a delta: ``data`` is
        :meth:`publication_bytes` (``delta`` false) or the Fossil delta from the
        previous publication's (``delta`` true, the publication says
        ``delta: true``). JSON sends ``data`` as a JSON string of those bytes
        (UTF-8), both full and delta, as Centrifugo does (centrifuge-js parses it).

        Raises:
            UnicodeDecodeError: JSON only, ``data`` is not UTF-8.
        """
        ...

    def delta_reply_publication(self, pub: Publication) -> Any:
        """``pub`` as a subscribe reply's ``publications`` carry it to a subscriber
        that negotiated a delta (in full: JSON's data as a JSON string)."""
        ...

    def decode_emulation_request(self, body: bytes) -> tuple[str, str, bytes]:
        """``(node, session, data)`` of a ``POST /emulation`` body in this format (ids not
        yet checked; ``data`` holds the encoded commands).

        Raises:
            BadRequest: a body that is not an emulation request.
        """
        ...

    def publication(self, data: Any) -> Publication:
        """The publication for a publish command's ``data`` as :meth:`decode_commands` gave it
        (a JSON value, or the bytes of a binary format), its JSON made safe for every codec.

        Raises:
            BadRequest: 107, data that cannot be published.
        """
        ...

    def encode_join(self, channel: str, info: ClientInfo) -> bytes: ...

    def encode_leave(self, channel: str, info: ClientInfo) -> bytes: ...

    #: the server's ping: an empty reply
    ping: bytes


#: method -> ``"method":{}}``: the tail of a reply with an empty result (a bounded cache: the
#: protocol has a dozen methods)
_EMPTY_RESULTS: dict[str, bytes] = {}
_MAX_EMPTY_RESULTS = 64


class JSONCodec:
    """The protocol's JSON format (strict JSON: :mod:`hubbub.strictjson`)."""

    __slots__ = ()

    name = "json"
    binary = False
    #: history and recovery results hold Publication objects: their JSON data goes into the
    #: reply as it is (no ``loads`` + ``dumps`` per publication and client: a reconnect storm
    #: with recovery spent 23 % of its CPU there, bench/results/i24s-profile-recover5000.txt)
    publication_objects = True
    ping = b"{}"

    def decode_commands(self, payload: bytes) -> Iterator[dict[str, Any]]:
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError:
            raise Disconnect(DisconnectCode.BAD_REQUEST, "invalid UTF-8") from None
        for line in text.split("\n"):
            if not line or line.isspace():
                continue
            try:
                command = loads(line)
            except ValueError:
                raise Disconnect(DisconnectCode.BAD_REQUEST, "malformed JSON") from None
            if not isinstance(command, dict):
                raise Disconnect(DisconnectCode.BAD_REQUEST, "command must be an object")
            yield command

    def encode_reply(self, command_id: int, method: str, result: dict[str, Any]) -> bytes:
        if not result and type(command_id) is int:  # subscribe, unsubscribe, ping...: the same bytes, made once
            tail = _EMPTY_RESULTS.get(method)
            if tail is None:
                tail = dumps({method: {}})[1:]
                if len(_EMPTY_RESULTS) < _MAX_EMPTY_RESULTS:
                    _EMPTY_RESULTS[method] = tail
            return b'{"id":%d,%s' % (command_id, tail)
        pubs = result.get("publications")
        if not pubs or not isinstance(pubs[0], Publication):
            return dumps({"id": command_id, method: result})
        # {"id":N,"METHOD":{...the rest...,"publications":[...]}}: each publication built
        # from its JSON bytes, as encode_publication builds a push
        rest = dumps({key: value for key, value in result.items() if key != "publications"})
        listed = b",".join(self._publication_json(pub) for pub in pubs)
        body = b'%s%s"publications":[%s]}' % (rest[:-1], b"" if rest == b"{}" else b",", listed)
        return b'{"id":%d,%s:%s}' % (command_id, dumps(method), body)

    @staticmethod
    def _publication_json(pub: Publication, data: bytes | None = None, delta: bool = False) -> bytes:
        """``pub`` as the protocol's ``Publication`` object (``pub.to_json()`` encoded), built
        from its JSON bytes without decoding them: a push's ``pub`` and a reply's
        ``publications``. ``data``: the JSON to send as its data instead (a delta
        subscriber's string); ``delta``: mark the data as a Fossil delta."""
        parts = [b'{"data":', pub.data if data is None else data]
        if pub.offset:
            parts.append(b',"offset":%d' % pub.offset)
        if pub.info is not None:
            parts.append(b',"info":' + dumps(pub.info.to_json()))
        if pub.tags:
            parts.append(b',"tags":' + dumps(pub.tags))
        if delta:
            parts.append(b',"delta":true')
        parts.append(b"}")
        return b"".join(parts)

    def encode_error(self, command_id: int, error: ProtocolError) -> bytes:
        body: dict[str, Any] = {"code": error.code, "message": error.message}
        if error.temporary:
            body["temporary"] = True
        return dumps({"id": command_id, "error": body})

    def join(self, replies: list[bytes]) -> bytes:
        return replies[0] if len(replies) == 1 else b"\n".join(replies)

    def encode_push(self, channel: str, kind: str, body: dict[str, Any]) -> bytes:
        return dumps({"push": {"channel": channel, kind: body}})

    def encode_publication(self, channel: str, pub: Publication) -> bytes:
        """``{"push":{"channel":..,"pub":{"data":..,"offset":..,"info":..}}}``:
        built from the publication's JSON bytes without decoding them."""
        return b'{"push":{"channel":%s,"pub":%s}}' % (dumps(channel), self._publication_json(pub))

    def publication_bytes(self, pub: Publication) -> bytes:
        return pub.data

    def encode_publication_delta(self, channel: str, pub: Publication, data: bytes, delta: bool) -> bytes:
        """As :meth:`encode_publication`, with ``data`` a JSON string (and ``"delta":true``)."""
        body = self._publication_json(pub, dumps(data.decode("utf-8")), delta)
        return b'{"push":{"channel":%s,"pub":%s}}' % (dumps(channel), body)

    def delta_reply_publication(self, pub: Publication) -> Any:
        out = pub.to_json()
        out["data"] = pub.data.decode("utf-8")
        return out

    def publication(self, data: Any) -> Publication:
        return Publication(encode_data(data))

    def decode_emulation_request(self, body: bytes) -> tuple[str, str, bytes]:
        """``{"session": str, "node": str, "data": str}`` (centrifuge-js's JSON emulation request)."""
        try:
            request = loads(body)
        except ValueError as exc:
            raise BadRequest(f"malformed JSON body: {exc}") from None
        if not isinstance(request, dict):
            raise BadRequest("the body must be a JSON object {session, node, data}")
        session, node, data = request.get("session"), request.get("node", ""), request.get("data")
        if not isinstance(session, str) or not session:
            raise BadRequest("session (a string) is required")
        if not isinstance(node, str):
            raise BadRequest("node must be a string")
        if not isinstance(data, str):
            raise BadRequest("data (the encoded commands, a string) is required")
        return node, session, data.encode("utf-8")

    def encode_join(self, channel: str, info: ClientInfo) -> bytes:
        return b'{"push":{"channel":%s,"join":{"info":%s}}}' % (dumps(channel), dumps(info.to_json()))

    def encode_leave(self, channel: str, info: ClientInfo) -> bytes:
        return b'{"push":{"channel":%s,"leave":{"info":%s}}}' % (dumps(channel), dumps(info.to_json()))


class ProtocolWire:
    """Pushes for protocol clients of one codec, framed once for all of them.

    Args:
        codec: the message format.
        frames: the transport's framing (a WebSocket frame encoder).
    """

    __slots__ = ("codec", "joinable", "_frame", "ping", "_delta")

    def __init__(self, codec: Codec, frames: FrameEncoder) -> None:
        self.codec = codec
        self.joinable = frames.joinable
        self._frame = frames.binary if codec.binary else frames.text
        #: the server's ping (an empty reply), framed once for every connection
        self.ping = self._frame(codec.ping)
        self._delta: DeltaProtocolWire | None = None

    @property
    def delta(self) -> DeltaProtocolWire:
        """The wire of this codec and framing for subscribers that negotiated a
        Fossil delta (one per wire, shared by them all)."""
        wire = self._delta
        if wire is None:
            wire = self._delta = DeltaProtocolWire(self)
        return wire

    def encode_publication(self, channel: str, pub: Publication) -> bytes:
        return self._frame(self.codec.encode_publication(channel, pub))

    def encode_join(self, channel: str, info: ClientInfo) -> bytes:
        return self._frame(self.codec.encode_join(channel, info))

    def encode_leave(self, channel: str, info: ClientInfo) -> bytes:
        return self._frame(self.codec.encode_leave(channel, info))


class DeltaProtocolWire:
    """Pushes for protocol subscribers that negotiated a Fossil delta
    (:class:`hubbub.hub.DeltaWire`): publications through
    :meth:`Codec.encode_publication_delta`, joins and leaves as the plain wire's.

    Args:
        plain: the wire of the same codec and framing.
    """

    __slots__ = ("plain", "codec", "joinable", "_frame")

    def __init__(self, plain: ProtocolWire) -> None:
        self.plain = plain
        self.codec = plain.codec
        self.joinable = plain.joinable
        self._frame = plain._frame

    def encode_publication(self, channel: str, pub: Publication) -> bytes:
        """``pub`` in full, in the delta form (JSON: data as a JSON string)."""
        return self._frame(self.codec.encode_publication_delta(channel, pub, self.codec.publication_bytes(pub), False))

    def encode_delta(self, channel: str, pub: Publication, prev: Publication,
                     patch: Callable[[bytes, bytes], bytes | None]) -> bytes:
        """``pub`` as the delta from ``prev``: ``patch(prev_bytes, bytes)`` gives
        the Fossil delta (the hub's, made once per publication), or ``None``
        when it would not be smaller; then ``pub`` goes in full."""
        codec = self.codec
        data = codec.publication_bytes(pub)
        delta = patch(codec.publication_bytes(prev), data)
        if delta is not None:
            try:
                return self._frame(codec.encode_publication_delta(channel, pub, delta, True))
            except UnicodeDecodeError:  # JSON only: a delta that is no text (the data was not UTF-8)
                pass
        return self.encode_publication(channel, pub)

    def encode_join(self, channel: str, info: ClientInfo) -> bytes:
        return self.plain.encode_join(channel, info)

    def encode_leave(self, channel: str, info: ClientInfo) -> bytes:
        return self.plain.encode_leave(channel, info)


#: The JSON codec (stateless: one for the process).
JSON = JSONCodec()

__all__ = ["JSON", "Codec", "DeltaProtocolWire", "JSONCodec", "ProtocolWire"]
