"""The codec seam (hubbub.codec): JSONCodec and ProtocolWire, without sockets."""

from __future__ import annotations

import json
from typing import Any

import pytest

from hubbub.brokers.base import ClientInfo, Publication
from hubbub.brokers.memory import MemoryBroker
from hubbub.codec import JSON, JSONCodec, ProtocolWire
from hubbub.codes import DisconnectCode, ErrorCode
from hubbub.config import Config
from hubbub.errors import Disconnect, ProtocolError
from hubbub.hub import Hub, Subscriber


class CountingFrames:
    """A FrameEncoder that tags and counts what it frames."""

    joinable = True

    def __init__(self) -> None:
        self.text_calls: list[bytes] = []
        self.binary_calls: list[bytes] = []

    def text(self, payload: bytes) -> bytes:
        self.text_calls.append(payload)
        return b"T:" + payload

    def binary(self, payload: bytes) -> bytes:
        self.binary_calls.append(payload)
        return b"B:" + payload


class BinaryJSONCodec(JSONCodec):
    """A codec that travels in binary frames (as Protobuf would)."""

    __slots__ = ()
    name = "binary-json"
    binary = True


def decode(payload: bytes) -> list[dict[str, Any]]:
    return list(JSON.decode_commands(payload))


# -- decode_commands -----------------------------------------------------------------------------


def test_decode_splits_on_newlines_in_order() -> None:
    payload = b'{"id":1,"connect":{}}\n{"id":2,"subscribe":{"channel":"a"}}\n{}'
    assert decode(payload) == [{"id": 1, "connect": {}}, {"id": 2, "subscribe": {"channel": "a"}}, {}]


def test_decode_skips_blank_lines() -> None:
    payload = b'\n{"id":1,"ping":{}}\n\n   \n\t\n{"id":2,"ping":{}}\n'
    assert [c["id"] for c in decode(payload)] == [1, 2]
    assert decode(b"") == [] and decode(b"\n\n") == []


def test_decode_tolerates_crlf() -> None:
    assert decode(b'{"id":1,"ping":{}}\r\n{"id":2,"ping":{}}\r\n') == [{"id": 1, "ping": {}}, {"id": 2, "ping": {}}]


def test_decode_utf8_strings() -> None:
    assert decode('{"id":1,"publish":{"channel":"é","data":"€"}}'.encode()) == [
        {"id": 1, "publish": {"channel": "é", "data": "€"}}]


@pytest.mark.parametrize("payload", [
    b"{", b'{"id":1', b"not json", b'{"id":1}\n{', b'{"a":NaN}', b"[" * 100 + b"]" * 100, b"{'id':1}",
], ids=["open", "truncated", "text", "second-line", "nan", "too-deep", "single-quotes"])
def test_decode_malformed_json_3501(payload: bytes) -> None:
    with pytest.raises(Disconnect) as exc:
        decode(payload)
    assert exc.value.code == DisconnectCode.BAD_REQUEST == 3501
    assert exc.value.reason == "malformed JSON"


@pytest.mark.parametrize("payload", [b"[]", b"1", b'"s"', b"null", b"true", b'{"id":1}\n[1]'])
def test_decode_non_object_3501(payload: bytes) -> None:
    with pytest.raises(Disconnect) as exc:
        decode(payload)
    assert exc.value.code == 3501
    assert exc.value.reason == "command must be an object"


@pytest.mark.parametrize("payload", [b"\xff", b'{"id":1,"x":"\xc3"}', b'{}\n\x80'])
def test_decode_invalid_utf8_3501(payload: bytes) -> None:
    with pytest.raises(Disconnect) as exc:
        decode(payload)
    assert exc.value.code == 3501
    assert exc.value.reason == "invalid UTF-8"


def test_decode_yields_commands_before_a_bad_line() -> None:
    commands = JSON.decode_commands(b'{"id":1,"ping":{}}\nbad')
    assert next(commands) == {"id": 1, "ping": {}}
    with pytest.raises(Disconnect):
        next(commands)


# -- replies ---------------------------------------------------------------------------------------


def test_encode_reply() -> None:
    out = JSON.encode_reply(7, "subscribe", {"epoch": "e", "offset": 3})
    assert out == b'{"id":7,"subscribe":{"epoch":"e","offset":3}}'


def test_encode_error_not_temporary() -> None:
    out = JSON.encode_error(3, ProtocolError(ErrorCode.PERMISSION_DENIED))
    assert json.loads(out) == {"id": 3, "error": {"code": 103, "message": "permission denied"}}
    assert b"temporary" not in out


def test_encode_error_temporary() -> None:
    out = JSON.encode_error(4, ProtocolError(ErrorCode.TOO_MANY_REQUESTS, temporary=True))
    assert json.loads(out) == {"id": 4, "error": {"code": 111, "message": "too many requests", "temporary": True}}
    internal = json.loads(JSON.encode_error(5, ProtocolError(ErrorCode.INTERNAL)))
    assert internal["error"]["temporary"] is True  # 100 is always temporary


def test_encode_error_custom_message() -> None:
    out = JSON.encode_error(1, ProtocolError(4001, "über"))
    assert out == '{"id":1,"error":{"code":4001,"message":"über"}}'.encode()


def test_join() -> None:
    assert JSON.join([b"a"]) == b"a"
    assert JSON.join([b"a", b"b", b"c"]) == b"a\nb\nc"
    replies = [JSON.encode_reply(i, "ping", {}) for i in (1, 2)]
    assert decode(JSON.join(replies)) == [{"id": 1, "ping": {}}, {"id": 2, "ping": {}}]


def test_encode_push() -> None:
    out = JSON.encode_push("a", "unsubscribe", {"code": 2000, "reason": "server unsubscribe"})
    assert json.loads(out) == {"push": {"channel": "a", "unsubscribe": {"code": 2000, "reason": "server unsubscribe"}}}


# -- publications ------------------------------------------------------------------------------------


def test_encode_publication_embeds_data_verbatim() -> None:
    data = b'{ "b" : [1,  2.50, "\\u00e9"] ,"a":1e2}'  # not how hubbub would write it
    out = JSON.encode_publication("news", Publication(data))
    assert out == b'{"push":{"channel":"news","pub":{"data":' + data + b"}}}"
    assert json.loads(out)["push"]["pub"]["data"] == {"b": [1, 2.5, "é"], "a": 100.0}


def test_encode_publication_with_offset_info_tags() -> None:
    info = ClientInfo("c1", "alice", b'{"n":"A"}', b'{"r":1}')
    pub = Publication(b'"hi"', offset=42, info=info, tags={"k": "v"})
    out = json.loads(JSON.encode_publication("chat:é", pub))
    assert out == {"push": {"channel": "chat:é", "pub": {
        "data": "hi", "offset": 42,
        "info": {"user": "alice", "client": "c1", "conn_info": {"n": "A"}, "chan_info": {"r": 1}},
        "tags": {"k": "v"},
    }}}


def test_encode_publication_omits_empty_fields() -> None:
    out = json.loads(JSON.encode_publication("a", Publication(b"null", offset=0, tags={})))
    assert out == {"push": {"channel": "a", "pub": {"data": None}}}


def test_encode_publication_matches_to_json() -> None:
    pub = Publication(b'{"x":1}', offset=3, info=ClientInfo("c", "u"), tags={"t": "1"})
    assert json.loads(JSON.encode_publication("a", pub))["push"]["pub"] == pub.to_json()


def test_encode_join_leave() -> None:
    info = ClientInfo("c1", "bob", None, b"[1]")
    assert json.loads(JSON.encode_join("a", info)) == {
        "push": {"channel": "a", "join": {"info": {"user": "bob", "client": "c1", "chan_info": [1]}}}}
    assert json.loads(JSON.encode_leave("a", info)) == {
        "push": {"channel": "a", "leave": {"info": {"user": "bob", "client": "c1", "chan_info": [1]}}}}


def test_channel_name_escaped() -> None:
    out = JSON.encode_publication('q"uote\\', Publication(b"1"))
    assert json.loads(out)["push"]["channel"] == 'q"uote\\'


# -- ProtocolWire ---------------------------------------------------------------------------------


def test_wire_frames_each_push_once_as_text() -> None:
    frames = CountingFrames()
    wire = ProtocolWire(JSON, frames)
    assert wire.ping == b"T:{}" and frames.text_calls == [b"{}"]  # framed once, at construction
    pub = Publication(b"1")
    framed = wire.encode_publication("a", pub)
    assert framed == b"T:" + JSON.encode_publication("a", pub)
    info = ClientInfo("c")
    assert wire.encode_join("a", info) == b"T:" + JSON.encode_join("a", info)
    assert wire.encode_leave("a", info) == b"T:" + JSON.encode_leave("a", info)
    assert len(frames.text_calls) == 4 and frames.binary_calls == []
    assert wire.ping is wire.ping


def test_wire_binary_codec_uses_binary_frames() -> None:
    frames = CountingFrames()
    codec = BinaryJSONCodec()
    wire = ProtocolWire(codec, frames)
    assert wire.ping == b"B:{}"
    assert wire.encode_publication("a", Publication(b"2")).startswith(b"B:")
    assert wire.encode_join("a", ClientInfo("c")).startswith(b"B:")
    assert wire.encode_leave("a", ClientInfo("c")).startswith(b"B:")
    assert frames.text_calls == [] and len(frames.binary_calls) == 4
    assert wire.codec is codec


async def test_wire_frames_once_for_every_subscriber() -> None:
    """The hub encodes and frames a publication once per wire, whatever the
    number of subscribers on it."""
    hub = Hub(Config(allow_anonymous=True), MemoryBroker())
    await hub.start()
    try:
        frames = CountingFrames()
        wire = ProtocolWire(JSON, frames)
        got: dict[str, list[Any]] = {}
        for i in range(5):
            queue = got.setdefault(f"c{i}", [])
            sub = Subscriber(f"c{i}", wire, queue.append, lambda code: None)
            await hub.subscribe("news", sub, ns=hub.config.channels)
        frames.text_calls.clear()  # the ping
        await hub.publish("news", {"n": 1})
        assert len(frames.text_calls) == 1
        assert frames.text_calls[0] == b'{"push":{"channel":"news","pub":{"data":{"n":1}}}}'
        batches = {id(q[0]) for q in got.values()}
        assert len(batches) == 1  # one shared object queued to all five
        assert next(iter(got.values()))[0].join() == b"T:" + frames.text_calls[0]
    finally:
        await hub.close()


def test_json_replies_take_publication_objects_and_keep_their_data_bytes() -> None:
    """History and recovery replies: each publication's JSON data goes into the reply as it came
    (no decode and encode per client), and the reply reads as the ``to_json()`` form would."""
    assert JSON.publication_objects
    info = ClientInfo("c1", "alice", conn_info=b'{"n":1}')
    pubs = [Publication(b'{"a": [1, 2.50]}', offset=7, info=info, tags={"k": "v"}), Publication(b'"x"', offset=8)]
    encoded = JSON.encode_reply(3, "subscribe", {"recoverable": True, "epoch": "e", "offset": 6,
                                                 "publications": pubs, "recovered": True})
    assert b'"data":{"a": [1, 2.50]}' in encoded  # the bytes as published
    assert json.loads(encoded) == {"id": 3, "subscribe": {
        "recoverable": True, "epoch": "e", "offset": 6, "recovered": True,
        "publications": [pub.to_json() for pub in pubs]}}
    only = JSON.encode_reply(4, "history", {"publications": pubs[1:]})
    assert json.loads(only) == {"id": 4, "history": {"publications": [{"data": "x", "offset": 8}]}}
    assert json.loads(JSON.encode_reply(5, "history", {"publications": [], "offset": 0})) == {
        "id": 5, "history": {"publications": [], "offset": 0}}


_REPLY_METHODS = ("connect", "subscribe", "unsubscribe", "publish", "presence", "presence_stats", "history",
                  "ping", "rpc", "refresh", "sub_refresh")


@pytest.mark.parametrize("method", _REPLY_METHODS)
def test_a_reply_with_an_empty_result_is_the_bytes_json_makes(method: str) -> None:
    """Empty results (a subscribe without history, ping, unsubscribe...) are
    answered from a tail made once per method: byte for byte what encoding the
    reply object gives, for any command id."""
    for cid in (1, 2, 9, 10, 127, 128, 65535, 2**31, 2**63 + 5):
        expected = json.dumps({"id": cid, method: {}}, separators=(",", ":")).encode()
        assert JSON.encode_reply(cid, method, {}) == expected
        assert JSON.encode_reply(cid, method, {}) == expected  # from the tail made the first time
    assert JSON.encode_reply(3, method, {"a": 1}) == b'{"id":3,"%s":{"a":1}}' % method.encode()
