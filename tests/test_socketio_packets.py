"""The Socket.IO protocol core without I/O: Engine.IO payloads (hubbub.sio.engineio) and
Socket.IO packets with binary attachments (hubbub.sio.packets), against the examples of
the protocol documents (socketio/engine.io-protocol and socket.io-protocol, README.md)."""

from __future__ import annotations

import pytest

from hubbub.sio import engineio
from hubbub.sio.packets import Decoder, PacketError, PacketType, decode_text, encode


def test_engineio_payloads_join_packets_with_the_record_separator() -> None:
    assert engineio.encode_payload([(b"4hello", False)]) == b"4hello"
    assert engineio.encode_payload([(b"4hello", False), (b"\x01\x02\x03\x04", True)]) == b"4hello\x1ebAQIDBA=="
    assert engineio.decode_payload(b"4hello\x1ebAQIDBA==\x1e2", 10) == [
        (b"4hello", False), (b"\x01\x02\x03\x04", True), (b"2", False)]


@pytest.mark.parametrize("body", [b"", b"4a\x1e", b"9x", b"bnot*base64", b"4\xff\xfe", b"\x1e".join([b"6"] * 11)])
def test_engineio_refuses_malformed_payloads(body: bytes) -> None:
    with pytest.raises(engineio.EngineError):
        engineio.decode_payload(body, 10)


def test_packets_encode_as_the_protocol_document_shows() -> None:
    assert encode(PacketType.CONNECT, "/", {"token": "123"}) == [b'0{"token":"123"}']
    assert encode(PacketType.CONNECT, "/admin", {"sid": "oSO0OpakmV4hB4gbKQFp"}) == [
        b'0/admin,{"sid":"oSO0OpakmV4hB4gbKQFp"}']
    assert encode(PacketType.DISCONNECT, "/admin") == [b"1/admin,"]
    assert encode(PacketType.EVENT, "/", ["foo"]) == [b'2["foo"]']
    assert encode(PacketType.EVENT, "/admin", ["bar"], 12) == [b'2/admin,12["bar"]']
    assert encode(PacketType.ACK, "/admin", ["bar"], 13) == [b'3/admin,13["bar"]']
    assert encode(PacketType.EVENT, "/", ["baz", b"\x01\x02\x03\x04"]) == [
        b'51-["baz",{"_placeholder":true,"num":0}]', b"\x01\x02\x03\x04"]
    assert encode(PacketType.ACK, "/admin", [b"\x03"], 456) == [
        b'61-/admin,456[{"_placeholder":true,"num":0}]', b"\x03"]


def test_binary_packets_wait_for_their_attachments() -> None:
    decoder = Decoder(max_attachments=2, max_attachment_bytes=100)
    assert decoder.text(b'52-/admin,7["up",{"_placeholder":true,"num":1},{"a":{"_placeholder":true,"num":0}}]') is None
    assert decoder.binary(b"zero") is None
    packet = decoder.binary(b"one")
    assert packet is not None
    assert (packet.type, packet.namespace, packet.id) == (PacketType.BINARY_EVENT, "/admin", 7)
    assert packet.data == ["up", b"one", {"a": b"zero"}]
    assert decoder.pending is None


@pytest.mark.parametrize("text", [
    b"", b"7", b"2", b"2{}", b"2[]", b"2[true]", b"3[1]", b"0[1]", b"1{}", b"4{}", b"2[", b"5x-[]",
    b"2/a,99999999999999999[\"x\"]", b'53-["x"]',
])
def test_malformed_packets_raise_packet_error(text: bytes) -> None:
    with pytest.raises(PacketError):
        Decoder(max_attachments=2, max_attachment_bytes=100).text(text)


def test_attachment_bounds() -> None:
    decoder = Decoder(max_attachments=2, max_attachment_bytes=5)
    decoder.text(b'51-["x",{"_placeholder":true,"num":0}]')
    with pytest.raises(PacketError, match="too large"):
        decoder.binary(b"123456")
    with pytest.raises(PacketError, match="unexpected"):
        decoder.binary(b"1")
    with pytest.raises(PacketError, match="out of range"):
        Decoder(2, 100).text(b'50-["x",{"_placeholder":true,"num":0}]')
    assert decode_text(b'2/chat,["hi"]', 2).namespace == "/chat"
