"""The protocol's Protobuf format: :class:`ProtobufCodec`.

Wire format: centrifugal.dev ``docs/transports/client_protocol.md``; schema
``src/hubbub/proto/client.proto``, field numbers as in centrifugal/protocol
``client.proto``. What JSON and Protobuf subscribers of one channel receive
from each other: ``docs/protobuf.md``.

See ``docs/design.md``, "The codec seam (codec.py, formats.py)".
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message

from .brokers.base import ClientInfo, Publication
from .codes import DisconnectCode
from .errors import BadRequest, Disconnect, ProtocolError
from .proto import client_pb2 as pb
from .strictjson import dumps, loads, one_line

__all__ = ["PROTOBUF", "ProtobufCodec", "publication_from_bytes"]

_TYPE_BYTES = FieldDescriptor.TYPE_BYTES
#: the longest varint a length may take (a uint64: 10 bytes)
_MAX_VARINT = 10


def publication_from_bytes(data: bytes) -> Publication:
    """The publication for ``data`` that a Protobuf client published.

    Strict JSON bytes are the publication's ``data`` as they are; other bytes
    make a binary publication (``data`` a JSON string of their base64,
    ``raw`` the bytes), as the server API's ``b64data`` does. See the module
    docstring for what each kind of subscriber receives.
    """
    data = bytes(data)
    try:
        loads(data)
    except ValueError:
        return Publication(dumps(base64.b64encode(data).decode("ascii")), raw=data, binary=True)
    return Publication(one_line(data))


#: method -> the serialized ``Reply`` with only that method's empty result (a bounded cache)
_EMPTY_RESULTS: dict[str, bytes] = {}
_MAX_EMPTY_RESULTS = 64


def _delimited(payload: bytes) -> bytes:
    """``payload`` preceded by its length as a varint."""
    n = len(payload)
    if n < 0x80:
        return bytes((n,)) + payload
    head = bytearray()
    while n >= 0x80:
        head.append((n & 0x7F) | 0x80)
        n >>= 7
    head.append(n)
    return bytes(head) + payload


def _read_varint(payload: bytes, pos: int) -> tuple[int, int]:
    """The varint at ``pos`` and the position after it.

    Raises:
        Disconnect: 3501 for a varint cut short or longer than 10 bytes.
    """
    result = 0
    shift = 0
    end = len(payload)
    for _ in range(_MAX_VARINT):
        if pos >= end:
            raise Disconnect(DisconnectCode.BAD_REQUEST, "truncated length prefix")
        byte = payload[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
    raise Disconnect(DisconnectCode.BAD_REQUEST, "malformed length prefix")


def _data_value(data: bytes) -> Any:
    """Data for the application's hooks: its JSON value if it is strict JSON, else the bytes."""
    try:
        return loads(data)
    except ValueError:
        return data


def _message_dict(msg: Message, keep_data: bool = False) -> dict[str, Any]:
    """A decoded request as the JSON codec's dict (set fields only)."""
    out: dict[str, Any] = {}
    for field, value in msg.ListFields():
        name = field.name
        if field.message_type is not None:
            if field.message_type.GetOptions().map_entry:
                value_field = field.message_type.fields_by_name["value"]
                if value_field.message_type is not None:
                    out[name] = {k: _message_dict(v) for k, v in value.items()}
                else:
                    out[name] = dict(value)
            elif field.is_repeated:
                out[name] = [_message_dict(item) for item in value]
            else:
                out[name] = _message_dict(value)
        elif field.type == _TYPE_BYTES and not keep_data:
            out[name] = _data_value(value)
        elif field.is_repeated:
            out[name] = list(value)
        else:
            out[name] = value
    return out


def _set_info(msg: Any, info: ClientInfo) -> None:
    msg.user = info.user
    msg.client = info.client
    if info.conn_info is not None:
        msg.conn_info = info.conn_info
    if info.chan_info is not None:
        msg.chan_info = info.chan_info


def _set_publication(msg: Any, pub: Publication) -> None:
    """A stored publication into a ``Publication`` message (bytes as sent: ``raw`` when set)."""
    msg.data = pub.data if pub.raw is None else pub.raw
    if pub.offset:
        msg.offset = pub.offset
    if pub.info is not None:
        _set_info(msg.info, pub.info)
    if pub.tags:
        msg.tags.update(pub.tags)


def _fill(msg: Any, values: Any) -> None:
    """Set the fields of ``msg`` from a result dict (or a :class:`Publication` /
    :class:`ClientInfo`). Keys the schema does not have are left out."""
    if isinstance(values, Publication):
        _set_publication(msg, values)
        return
    if isinstance(values, ClientInfo):
        _set_info(msg, values)
        return
    msg.SetInParent()
    fields = msg.DESCRIPTOR.fields_by_name
    for key, value in values.items():
        field = fields.get(key)
        if field is None or value is None:
            continue
        if field.message_type is not None:
            container = getattr(msg, key)
            if field.message_type.GetOptions().map_entry:
                value_field = field.message_type.fields_by_name["value"]
                for k, v in value.items():
                    if value_field.message_type is not None:
                        _fill(container[k], v)
                    else:
                        container[k] = v
            elif field.is_repeated:
                for item in value:
                    _fill(container.add(), item)
            else:
                _fill(container, value)
        elif field.type == _TYPE_BYTES:
            setattr(msg, key, value if isinstance(value, (bytes, bytearray)) else dumps(value))
        else:
            setattr(msg, key, value)


class ProtobufCodec:
    """The protocol's Protobuf format (see the module docstring).

    Stateless: one instance (:data:`PROTOBUF`) serves every connection.
    """

    __slots__ = ()

    name = "protobuf"
    binary = True
    #: :meth:`encode_reply` takes :class:`Publication` objects in results
    #: (history, recovery), so binary publications keep their bytes
    publication_objects = True
    #: the server's ping: an empty Reply, length-prefixed
    ping = b"\x00"

    def decode_emulation_request(self, body: bytes) -> tuple[str, str, bytes]:
        """An ``EmulationRequest`` (``node = 1``, ``session = 2``, ``data = 3`` in
        centrifugal/protocol ``client.proto``).

        Raises:
            BadRequest: a body that does not parse.
        """
        message = pb.EmulationRequest()
        try:
            message.ParseFromString(body)
        except DecodeError:
            raise BadRequest("malformed Protobuf emulation request") from None
        return message.node, message.session, bytes(message.data)

    def publication(self, data: Any) -> Publication:
        """A Protobuf client's ``data`` bytes: :func:`publication_from_bytes`."""
        return publication_from_bytes(data)

    def decode_commands(self, payload: bytes) -> Iterator[dict[str, Any]]:
        """The commands in one binary message, in order.

        Raises:
            Disconnect: 3501 for a truncated or malformed length prefix, a
                length past the message's end, or bytes that are not a
                ``Command``.
        """
        pos = 0
        end = len(payload)
        view = memoryview(payload)
        while pos < end:
            length, pos = _read_varint(payload, pos)
            stop = pos + length
            if stop > end:
                raise Disconnect(DisconnectCode.BAD_REQUEST, "truncated command")
            command = pb.Command()
            try:
                # protobuf's ParseFromString takes any buffer (no copy); types-protobuf says bytes.
                command.ParseFromString(view[pos:stop])  # type: ignore[arg-type]
            except DecodeError:
                raise Disconnect(DisconnectCode.BAD_REQUEST, "malformed Protobuf command") from None
            pos = stop
            out: dict[str, Any] = {}
            for field, value in command.ListFields():
                if field.name == "id":
                    out["id"] = value
                else:
                    out[field.name] = _message_dict(value, keep_data=field.name == "publish")
            yield out

    def encode_reply(self, command_id: int, method: str, result: dict[str, Any]) -> bytes:
        if not result and type(command_id) is int and 0 < command_id < 0x80:
            # an empty result (subscribe, unsubscribe, ping...): ``id`` (field 1, serialized
            # first) in one byte, then the method's empty message, made once per method
            tail = _EMPTY_RESULTS.get(method)
            if tail is None:
                empty = pb.Reply()
                getattr(empty, method).SetInParent()
                tail = empty.SerializeToString()
                if len(_EMPTY_RESULTS) < _MAX_EMPTY_RESULTS:
                    _EMPTY_RESULTS[method] = tail
            return _delimited(b"\x08%c%s" % (command_id, tail))
        reply = pb.Reply(id=command_id)
        _fill(getattr(reply, method), result)
        return _delimited(reply.SerializeToString())

    def encode_error(self, command_id: int, error: ProtocolError) -> bytes:
        reply = pb.Reply(id=command_id, error=pb.Error(code=error.code, message=error.message,
                                                       temporary=error.temporary))
        return _delimited(reply.SerializeToString())

    def join(self, replies: list[bytes]) -> bytes:
        """Several length-prefixed replies as one message."""
        return replies[0] if len(replies) == 1 else b"".join(replies)

    def encode_push(self, channel: str, kind: str, body: dict[str, Any]) -> bytes:
        reply = pb.Reply()
        push = reply.push
        push.channel = channel
        _fill(getattr(push, kind), body)
        return _delimited(reply.SerializeToString())

    def encode_publication(self, channel: str, pub: Publication) -> bytes:
        """A ``pub`` push; ``data`` is the publication's bytes as stored (``raw``
        for binary and relay text, else its JSON)."""
        reply = pb.Reply()
        push = reply.push
        push.channel = channel
        _set_publication(push.pub, pub)
        return _delimited(reply.SerializeToString())

    def publication_bytes(self, pub: Publication) -> bytes:
        return pub.data if pub.raw is None else pub.raw

    def encode_publication_delta(self, channel: str, pub: Publication, data: bytes, delta: bool) -> bytes:
        """As :meth:`encode_publication` with ``data`` (bytes) and ``delta``."""
        reply = pb.Reply()
        push = reply.push
        push.channel = channel
        msg = push.pub
        _set_publication(msg, pub)
        msg.data = data
        if delta:
            msg.delta = True
        return _delimited(reply.SerializeToString())

    def delta_reply_publication(self, pub: Publication) -> Any:
        return pub

    def encode_join(self, channel: str, info: ClientInfo) -> bytes:
        reply = pb.Reply()
        reply.push.channel = channel
        _set_info(reply.push.join.info, info)
        return _delimited(reply.SerializeToString())

    def encode_leave(self, channel: str, info: ClientInfo) -> bytes:
        reply = pb.Reply()
        reply.push.channel = channel
        _set_info(reply.push.leave.info, info)
        return _delimited(reply.SerializeToString())


#: The Protobuf codec (stateless: one for the process).
PROTOBUF = ProtobufCodec()
