"""The codec seam: how the Centrifugo protocol's messages become bytes.

JSON (centrifugal.dev ``docs/transports/client_protocol.md``): one WebSocket
text message carries one or more commands (or replies), separated by ``\\n``;
``data`` and ``info`` are embedded JSON values. Protobuf is
:mod:`hubbub.protobuf_codec`.

See ``docs/design.md``, "The codec seam (codec.py, formats.py)".
"""

from __future__ import annotations

from collections.abc import Iterator
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


class JSONCodec:
    """The protocol's JSON format (strict JSON: :mod:`hubbub.strictjson`)."""

    __slots__ = ()

    name = "json"
    binary = False
    publication_objects = False
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
        return dumps({"id": command_id, method: result})

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
        parts = [b'{"push":{"channel":', dumps(channel), b',"pub":{"data":', pub.data]
        if pub.offset:
            parts.append(b',"offset":%d' % pub.offset)
        if pub.info is not None:
            parts.append(b',"info":' + dumps(pub.info.to_json()))
        if pub.tags:
            parts.append(b',"tags":' + dumps(pub.tags))
        parts.append(b"}}}")
        return b"".join(parts)

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

    __slots__ = ("codec", "joinable", "_frame", "ping")

    def __init__(self, codec: Codec, frames: FrameEncoder) -> None:
        self.codec = codec
        self.joinable = frames.joinable
        self._frame = frames.binary if codec.binary else frames.text
        #: the server's ping (an empty reply), framed once for every connection
        self.ping = self._frame(codec.ping)

    def encode_publication(self, channel: str, pub: Publication) -> bytes:
        return self._frame(self.codec.encode_publication(channel, pub))

    def encode_join(self, channel: str, info: ClientInfo) -> bytes:
        return self._frame(self.codec.encode_join(channel, info))

    def encode_leave(self, channel: str, info: ClientInfo) -> bytes:
        return self._frame(self.codec.encode_leave(channel, info))


#: The JSON codec (stateless: one for the process).
JSON = JSONCodec()

__all__ = ["JSON", "Codec", "JSONCodec", "ProtocolWire"]
