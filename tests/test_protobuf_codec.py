"""The Protobuf codec (hubbub.protobuf_codec) and codec negotiation, without sockets.

Frames are built and read with the SDK's own generated schema
(centrifuge-python's ``centrifuge.protocol.client_pb2``), so hubbub's schema is
checked against an independent one, not against itself.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest

from hubbub.brokers.base import ClientInfo, Publication
from hubbub.codec import JSON, ProtocolWire
from hubbub.codes import DisconnectCode, ErrorCode
from hubbub.errors import BadRequest, Disconnect, ProtocolError
from hubbub.formats import negotiate
from hubbub.proto import client_pb2 as ours
from hubbub.protobuf_codec import PROTOBUF, publication_from_bytes
from hubbub.relay import relay_publication

from . import pbframes
from .pbframes import frame

sdk = pytest.importorskip("centrifuge.protocol.client_pb2")


def read_replies(payload: bytes) -> list[Any]:
    return pbframes.read_replies(payload, sdk.Reply)


def one_reply(payload: bytes) -> Any:
    [reply] = read_replies(payload)
    return reply


def command(cid: int, _method: str, **fields: Any) -> Any:
    c = sdk.Command(id=cid)
    request = getattr(c, _method)
    request.SetInParent()
    for key, value in fields.items():
        if isinstance(value, dict):
            value = dict(value)
            getattr(request, key).CopyFrom(getattr(sdk, value.pop("_type"))(**value))
        else:
            setattr(request, key, value)
    return c


def decode(payload: bytes) -> list[dict[str, Any]]:
    return list(PROTOBUF.decode_commands(payload))


# -- the schema --------------------------------------------------------------------------------------


def test_schema_numbers_and_types_match_the_sdks() -> None:
    """Every field of hubbub's schema has the number, type and name of the SDK's schema."""
    checked = 0
    for name, message in ours.DESCRIPTOR.message_types_by_name.items():
        theirs = sdk.DESCRIPTOR.message_types_by_name[name]
        for field in message.fields:
            other = theirs.fields_by_number[field.number]
            assert (other.name, other.type, other.is_repeated) == (field.name, field.type, field.is_repeated), \
                f"{name}.{field.name}"
            checked += 1
    assert checked > 100


# -- decoding commands -------------------------------------------------------------------------------


def test_several_commands_per_frame_in_order() -> None:
    payload = frame(command(1, "connect", token="t", name="js"), command(2, "subscribe", channel="a", recover=True,
                                                                            offset=7, epoch="e"),
                    command(3, "ping"), sdk.Command())
    assert decode(payload) == [
        {"id": 1, "connect": {"token": "t", "name": "js"}},
        {"id": 2, "subscribe": {"channel": "a", "recover": True, "epoch": "e", "offset": 7}},
        {"id": 3, "ping": {}},
        {},  # an empty Command: the pong
    ]


@pytest.mark.parametrize("method,fields,expected", [
    ("unsubscribe", {"channel": "c"}, {"channel": "c"}),
    ("presence", {"channel": "c"}, {"channel": "c"}),
    ("presence_stats", {"channel": "c"}, {"channel": "c"}),
    ("history", {"channel": "c", "limit": -1, "reverse": True,
                 "since": {"_type": "StreamPosition", "offset": 3, "epoch": "x"}},
     {"channel": "c", "limit": -1, "reverse": True, "since": {"offset": 3, "epoch": "x"}}),
    ("refresh", {"token": "tok"}, {"token": "tok"}),
    ("sub_refresh", {"channel": "c", "token": "tok"}, {"channel": "c", "token": "tok"}),
    ("rpc", {"method": "m", "data": b'{"a":1}'}, {"method": "m", "data": {"a": 1}}),
    ("rpc", {"method": "m", "data": b"\xff\x00"}, {"method": "m", "data": b"\xff\x00"}),
    ("send", {"data": b'"hi"'}, {"data": "hi"}),
    ("subscribe", {"channel": "c", "data": b"[1]", "flag": 2}, {"channel": "c", "data": [1], "flag": 2}),
    ("publish", {"channel": "c", "data": b'{"a": 1}'}, {"channel": "c", "data": b'{"a": 1}'}),
], ids=["unsubscribe", "presence", "presence_stats", "history", "refresh", "sub_refresh", "rpc-json", "rpc-binary",
        "send", "subscribe-data", "publish-keeps-bytes"])
def test_every_request_decodes_to_the_json_codecs_dict(method: str, fields: dict[str, Any],
                                                      expected: dict[str, Any]) -> None:
    assert decode(frame(command(5, method, **fields))) == [{"id": 5, method: expected}]


def test_large_command_with_a_multibyte_length() -> None:
    data = b'"' + b"x" * 100_000 + b'"'
    [decoded] = decode(frame(command(1, "publish", channel="c", data=data)))
    assert decoded["publish"]["data"] == data


@pytest.mark.parametrize("payload,reason", [
    (b"\x80", "truncated length prefix"),
    (b"\xff" * 11, "malformed length prefix"),
    (b"\x05\x08\x01", "truncated command"),
    (frame(command(1, "ping"))[:-1], "truncated command"),
    (b"\x03\xff\xff\xff", "malformed Protobuf command"),
    (frame(command(1, "ping")) + b"\x09", "truncated command"),
], ids=["cut-varint", "long-varint", "short-body", "cut-frame", "garbage", "trailing-garbage"])
def test_malformed_frames_are_3501(payload: bytes, reason: str) -> None:
    with pytest.raises(Disconnect) as exc:
        decode(payload)
    assert exc.value.code == DisconnectCode.BAD_REQUEST == 3501
    assert exc.value.reason == reason


# -- encoding replies and pushes ---------------------------------------------------------------------


def test_connect_reply_with_server_side_subscription_and_data() -> None:
    pub = Publication(b'{"x":1}', offset=2, info=ClientInfo("c1", "u1", b'{"name":"n"}'))
    reply = one_reply(PROTOBUF.encode_reply(1, "connect", {
        "client": "abc", "version": "1.0", "ping": 25, "pong": True, "expires": True, "ttl": 60,
        "data": {"welcome": True},
        "subs": {"news": {"epoch": "e", "offset": 2, "recoverable": True, "publications": [pub]}},
    }))
    assert reply.id == 1
    c = reply.connect
    assert (c.client, c.version, c.ping, c.pong, c.expires, c.ttl) == ("abc", "1.0", 25, True, True, 60)
    assert c.data == b'{"welcome":true}'
    news = c.subs["news"]
    assert (news.epoch, news.offset, news.recoverable) == ("e", 2, True)
    assert news.publications[0].data == b'{"x":1}' and news.publications[0].offset == 2
    assert news.publications[0].info.conn_info == b'{"name":"n"}'


def test_empty_results_are_present_and_unknown_keys_left_out() -> None:
    reply = one_reply(PROTOBUF.encode_reply(4, "publish", {"offset": 3, "epoch": "e"}))
    assert reply.HasField("publish") and reply.id == 4
    reply = one_reply(PROTOBUF.encode_reply(5, "ping", {}))
    assert reply.HasField("ping")


def test_rpc_data_bytes_as_they_are_other_values_as_json() -> None:
    assert one_reply(PROTOBUF.encode_reply(1, "rpc", {"data": b"\x00\x01"})).rpc.data == b"\x00\x01"
    assert one_reply(PROTOBUF.encode_reply(1, "rpc", {"data": [1, "a"]})).rpc.data == b'[1,"a"]'


def test_history_and_presence_replies() -> None:
    binary = relay_publication(b"\xfe\xff", binary=True)
    binary.offset = 2
    history = one_reply(PROTOBUF.encode_reply(2, "history", {
        "publications": [Publication(b'"a"', offset=1), binary], "epoch": "ep", "offset": 2})).history
    assert [p.data for p in history.publications] == [b'"a"', b"\xfe\xff"]
    assert (history.epoch, history.offset) == ("ep", 2)
    presence = one_reply(PROTOBUF.encode_reply(3, "presence", {"presence": {
        "c1": ClientInfo("c1", "u1", b'{"a":1}').to_json(), "c2": {"client": "c2", "user": ""}}})).presence
    assert presence.presence["c1"].conn_info == b'{"a":1}' and presence.presence["c1"].user == "u1"
    assert presence.presence["c2"].client == "c2"
    stats = one_reply(PROTOBUF.encode_reply(4, "presence_stats", {"num_clients": 3, "num_users": 2}))
    assert (stats.presence_stats.num_clients, stats.presence_stats.num_users) == (3, 2)


def test_error_reply() -> None:
    reply = one_reply(PROTOBUF.encode_error(9, ProtocolError(ErrorCode.INTERNAL, "boom", temporary=True)))
    assert reply.id == 9
    assert (reply.error.code, reply.error.message, reply.error.temporary) == (100, "boom", True)


def test_pushes() -> None:
    sub = one_reply(PROTOBUF.encode_push("c", "subscribe", {"epoch": "e", "offset": 1, "recoverable": True}))
    assert sub.id == 0 and sub.push.channel == "c" and sub.push.subscribe.epoch == "e"
    unsub = one_reply(PROTOBUF.encode_push("c", "unsubscribe", {"code": 2000, "reason": "server unsubscribe"}))
    assert (unsub.push.unsubscribe.code, unsub.push.unsubscribe.reason) == (2000, "server unsubscribe")
    join = one_reply(PROTOBUF.encode_join("c", ClientInfo("id", "u", None, b'"ch"')))
    assert (join.push.join.info.client, join.push.join.info.user, join.push.join.info.chan_info) == ("id", "u", b'"ch"')
    leave = one_reply(PROTOBUF.encode_leave("c", ClientInfo("id")))
    assert leave.push.leave.info.client == "id"


def test_join_of_replies_and_the_ping() -> None:
    joined = PROTOBUF.join([PROTOBUF.encode_reply(1, "ping", {}), PROTOBUF.encode_reply(2, "ping", {})])
    assert [r.id for r in read_replies(joined)] == [1, 2]
    assert read_replies(PROTOBUF.ping)[0].ByteSize() == 0  # an empty Reply


# -- what each format's subscribers receive --------------------------------------------------------------


def test_json_publication_reaches_protobuf_as_its_json_bytes() -> None:
    pub = Publication(b'{"n":1}', offset=7, info=ClientInfo("c", "u"), tags={"k": "v"})
    push = one_reply(PROTOBUF.encode_publication("news", pub)).push
    assert push.channel == "news"
    assert (push.pub.data, push.pub.offset, push.pub.info.client, dict(push.pub.tags)) == (
        b'{"n":1}', 7, "c", {"k": "v"})


def test_protobuf_json_data_is_stored_as_it_is() -> None:
    pub = publication_from_bytes(b'{"a": [1, 2]}')
    assert pub.data == b'{"a": [1, 2]}' and pub.raw is None and not pub.binary
    assert pub.value() == {"a": [1, 2]}
    assert b'"data":{"a": [1, 2]}' in JSON.encode_publication("c", pub)


@pytest.mark.parametrize("data", [b"\xff\xfe", b"plain text", b"NaN", b"[" * 100 + b"]" * 100, b""],
                         ids=["not-utf8", "text", "nan", "too-deep", "empty"])
def test_protobuf_data_that_is_not_json_is_binary(data: bytes) -> None:
    pub = publication_from_bytes(data)
    assert pub.binary and pub.raw == data
    assert pub.value() == base64.b64encode(data).decode()  # what JSON subscribers and hooks see
    assert one_reply(PROTOBUF.encode_publication("c", pub)).push.pub.data == data
    assert f'"data":"{base64.b64encode(data).decode()}"'.encode() in JSON.encode_publication("c", pub)


def test_relay_text_reaches_protobuf_as_its_bytes() -> None:
    pub = relay_publication(b"hello", binary=False)
    assert one_reply(PROTOBUF.encode_publication("c", pub)).push.pub.data == b"hello"


# -- the wire ----------------------------------------------------------------------------------------


class Frames:
    joinable = True

    def __init__(self) -> None:
        self.calls: list[tuple[str, bytes]] = []

    def text(self, payload: bytes) -> bytes:
        self.calls.append(("text", payload))
        return b"T" + payload

    def binary(self, payload: bytes) -> bytes:
        self.calls.append(("binary", payload))
        return b"B" + payload


def test_protobuf_wire_frames_binary() -> None:
    frames = Frames()
    wire = ProtocolWire(PROTOBUF, frames)
    assert wire.ping == b"B\x00"
    out = wire.encode_publication("c", Publication(b"1"))
    assert out.startswith(b"B") and frames.calls[-1][0] == "binary"


# -- negotiation -------------------------------------------------------------------------------------


@pytest.mark.parametrize("query,headers,codec,subprotocol", [
    ({}, {}, "json", None),
    ({}, {"sec-websocket-protocol": "centrifuge-protobuf"}, "protobuf", "centrifuge-protobuf"),
    ({}, {"sec-websocket-protocol": "centrifuge-json"}, "json", "centrifuge-json"),
    ({}, {"sec-websocket-protocol": "foo, centrifuge-protobuf"}, "protobuf", "centrifuge-protobuf"),
    ({"format": "protobuf"}, {}, "protobuf", None),
    ({"cf_protocol": "protobuf"}, {}, "protobuf", None),
    ({"format": "JSON"}, {}, "json", None),
    ({"format": "protobuf"}, {"sec-websocket-protocol": "centrifuge-protobuf"}, "protobuf", "centrifuge-protobuf"),
])
def test_negotiate(query: dict[str, str], headers: dict[str, str], codec: str, subprotocol: str | None) -> None:
    chosen, sub = negotiate(query, headers)
    assert (chosen.name, sub) == (codec, subprotocol)


@pytest.mark.parametrize("query,headers,text", [
    ({}, {"sec-websocket-protocol": "mqtt, wamp"}, "unsupported WebSocket subprotocol mqtt, wamp"),
    ({"format": "xml"}, {}, "unknown format='xml'"),
    ({"cf_protocol": ""}, {}, "unknown cf_protocol=''"),
    ({"format": "json", "cf_protocol": "protobuf"}, {}, "contradicts"),
    ({"format": "json"}, {"sec-websocket-protocol": "centrifuge-protobuf"}, "contradicts"),
])
def test_negotiate_refuses(query: dict[str, str], headers: dict[str, str], text: str) -> None:
    with pytest.raises(BadRequest) as exc:
        negotiate(query, headers)
    assert text in exc.value.message


@pytest.mark.parametrize("method", ("connect", "subscribe", "unsubscribe", "publish", "presence", "presence_stats",
                                    "history", "ping", "rpc", "refresh", "sub_refresh"))
def test_a_reply_with_an_empty_result_is_the_bytes_protobuf_makes(method: str) -> None:
    """Empty results are answered from bytes made once per method: the same
    bytes the SDK's schema serializes, for one-byte ids and past them."""
    for cid in (1, 2, 100, 127, 128, 300, 2**31):
        expected = sdk.Reply(id=cid)
        getattr(expected, method).SetInParent()
        payload = expected.SerializeToString()
        assert PROTOBUF.encode_reply(cid, method, {}) == bytes((len(payload),)) + payload
        [reply] = read_replies(PROTOBUF.encode_reply(cid, method, {}))
        assert reply.id == cid and reply.HasField(method)
