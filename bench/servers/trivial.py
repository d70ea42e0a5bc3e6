#!/usr/bin/env python3
"""Trivial broadcast server: shows the load generator's ceiling.

A raw :class:`asyncio.Protocol` server that performs the WebSocket opening
handshake by hand and relays every text/binary message from any client to
all clients (including the sender), like the baseline.  Fan-out is as cheap
as it gets in Python: each message is encoded once, and everything received
during one event-loop iteration is joined into a single buffer that is
written with one ``transport.write`` per client.  If the load generator
reports much higher deliveries/s against this server than against a real
one, the load generator is not the bottleneck.

There is no backpressure, no pings, no limits: it is a measuring stick, not
a server.  The request path is ignored.

For the many-channels workload it also speaks the load generator's
``pubsub`` text protocol: ``sub <channel> ...`` joins channels (answered with
``subok``) and ``pub <channel> <payload>`` sends ``<payload>`` to that
channel's members, coalesced per client per event-loop iteration.

On ``/connection/websocket`` it plays a Centrifugo server just well enough
for the load generator, so that the generator's ceiling can be shown for the
protocol modes too: JSON commands (``connect``, ``subscribe``, ``publish``,
one per line) get empty results, and each publication's push is encoded
once per format and sent to every member of the channel: JSON
``{"push":{"channel":..,"pub":{"data":..}}}`` lines, or, for clients that
asked for the ``centrifuge-protobuf`` subprotocol, a length-prefixed
Protobuf ``Reply{push{channel, pub{data}}}`` (encoded by hand; those clients
send ``connect`` and ``subscribe`` as Protobuf ``Command`` messages).

Usage::

    python bench/servers/trivial.py --host 127.0.0.1 --port 8000
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import struct

from common import server_args  # bench/servers/common.py

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONTINUATION, OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2
OP_CLOSE, OP_PING, OP_PONG = 0x8, 0x9, 0xA
MAX_REQUEST = 16 * 1024
MAX_MESSAGE = 1 << 20


def server_frame(opcode: int, payload: bytes) -> bytes:
    """Encode a single, final, unmasked server-to-client frame."""
    n = len(payload)
    b0 = 0x80 | opcode
    if n < 126:
        return bytes((b0, n)) + payload
    if n < 1 << 16:
        return struct.pack("!BBH", b0, 126, n) + payload
    return struct.pack("!BBQ", b0, 127, n) + payload


def unmask(payload: bytes, key: bytes) -> bytes:
    """XOR ``payload`` with the 4-byte masking ``key``."""
    n = len(payload)
    if n == 0:
        return b""
    repeated = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(n, "big")


CENTRIFUGO_PATH = b"/connection/websocket"


def pb_varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def pb_field(field: int, value: bytes) -> bytes:
    """A length-delimited Protobuf field."""
    return pb_varint(field << 3 | 2) + pb_varint(len(value)) + value


def pb_read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def pb_fields(data: bytes) -> list[tuple[int, int | bytes]]:
    """The top-level fields of one message: (field, varint or bytes)."""
    out: list[tuple[int, int | bytes]] = []
    pos = 0
    while pos < len(data):
        key, pos = pb_read_varint(data, pos)
        if key & 7 == 0:
            value, pos = pb_read_varint(data, pos)
            out.append((key >> 3, value))
        elif key & 7 == 2:
            size, pos = pb_read_varint(data, pos)
            out.append((key >> 3, data[pos : pos + size]))
            pos += size
        else:
            break
    return out


class Hub:
    """The set of open connections, plus the coalescing broadcast buffer."""

    def __init__(self) -> None:
        self.clients: set[Connection] = set()
        self.channels: dict[bytes, set[Connection]] = {}
        self._pending: list[bytes] = []
        self._dirty: list[Connection] = []

    def publish_to(self, channel: bytes, frame: bytes) -> None:
        """Queue ``frame`` for the members of ``channel``; one write per client."""
        members = self.channels.get(channel)
        if not members:
            return
        if not self._dirty:
            asyncio.get_running_loop().call_soon(self._flush_dirty)
        for client in members:
            if not client.pending:
                self._dirty.append(client)
            client.pending.append(frame)

    def publish_to_members(self, members: set[Connection], json_frame: bytes, pb_frame: bytes) -> None:
        """Queue a push for ``members``, each in its own format; one write per client."""
        if not self._dirty:
            asyncio.get_running_loop().call_soon(self._flush_dirty)
        for client in members:
            if not client.pending:
                self._dirty.append(client)
            client.pending.append(pb_frame if client.protobuf else json_frame)

    def _flush_dirty(self) -> None:
        dirty, self._dirty = self._dirty, []
        for client in dirty:
            data = b"".join(client.pending)
            client.pending.clear()
            if not client.transport.is_closing():
                client.transport.write(data)

    def publish(self, frame: bytes) -> None:
        """Queue an encoded frame; flush once the current iteration is done."""
        if not self._pending:
            asyncio.get_running_loop().call_soon(self._flush)
        self._pending.append(frame)

    def _flush(self) -> None:
        data = b"".join(self._pending)
        self._pending.clear()
        for client in self.clients:
            if not client.transport.is_closing():
                client.transport.write(data)


class Connection(asyncio.Protocol):
    """One client: hand-rolled handshake, then masked client frames."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self._handshaking = True
        self._buf = b""
        self._fragments: list[bytes] = []
        self._fragment_opcode = OP_TEXT
        self.pending: list[bytes] = []
        self.joined: list[bytes] = []
        self.centrifugo = False
        self.protobuf = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.hub.clients.discard(self)
        for channel in self.joined:
            members = self.hub.channels.get(channel)
            if members is not None:
                members.discard(self)

    def data_received(self, data: bytes) -> None:
        data = self._buf + data
        self._buf = b""
        if self._handshaking:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                if len(data) > MAX_REQUEST:
                    self.transport.abort()
                else:
                    self._buf = data
                return
            if not self._handshake(data[:end]):
                return
            data = data[end + 4 :]
        pos = self._parse(data)
        if pos < len(data):
            self._buf = data[pos:]

    def _handshake(self, head: bytes) -> bool:
        key = None
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"sec-websocket-key":
                key = value.strip()
        if key is None:
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            self.transport.close()
            return False
        accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
        self.centrifugo = head.split(b" ", 2)[1:2] == [CENTRIFUGO_PATH]
        self.protobuf = self.centrifugo and b"centrifuge-protobuf" in head
        self.transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\n"
            b"Upgrade: websocket\r\n"
            b"Connection: Upgrade\r\n"
            + (b"Sec-WebSocket-Protocol: centrifuge-protobuf\r\n" if self.protobuf else b"")
            + b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )
        self._handshaking = False
        self.hub.clients.add(self)
        return True

    def _parse(self, data: bytes) -> int:
        """Handle every complete frame in ``data``; return bytes consumed."""
        pos, n = 0, len(data)
        while n - pos >= 2:
            b0, b1 = data[pos], data[pos + 1]
            length = b1 & 0x7F
            start = pos + 2
            if length == 126:
                if n - pos < 4:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 4], "big")
                start = pos + 4
            elif length == 127:
                if n - pos < 10:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 10], "big")
                start = pos + 10
            if length > MAX_MESSAGE:
                self.transport.abort()
                return n
            masked = b1 & 0x80
            end = start + (4 if masked else 0) + length
            if end > n:
                break
            payload = data[end - length : end]
            if masked:
                payload = unmask(payload, data[start : start + 4])
            pos = end
            self._frame(b0 >> 7, b0 & 0x0F, payload)
        return pos

    def _frame(self, fin: int, opcode: int, payload: bytes) -> None:
        if opcode in (OP_TEXT, OP_BINARY, OP_CONTINUATION):
            if opcode != OP_CONTINUATION:
                self._fragment_opcode = opcode
            if not fin:
                self._fragments.append(payload)
                return
            if self._fragments:
                payload = b"".join(self._fragments) + payload
                self._fragments.clear()
            head = payload[:4]
            if self.centrifugo:
                self._centrifugo(payload)
            elif head == b"sub ":
                for channel in payload[4:].split():
                    self.hub.channels.setdefault(channel, set()).add(self)
                    self.joined.append(channel)
                self.transport.write(server_frame(OP_TEXT, b"subok"))
            elif head == b"pub ":
                _, channel, data = payload.split(b" ", 2)
                self.hub.publish_to(channel, server_frame(self._fragment_opcode, data))
            else:
                self.hub.publish(server_frame(self._fragment_opcode, payload))
        elif opcode == OP_PING:
            self.transport.write(server_frame(OP_PONG, payload))
        elif opcode == OP_CLOSE:
            self.transport.write(server_frame(OP_CLOSE, payload[:2]))
            self.transport.close()


    def _join(self, channel: bytes) -> None:
        self.hub.channels.setdefault(channel, set()).add(self)
        self.joined.append(channel)

    def _centrifugo(self, payload: bytes) -> None:
        """Just enough of the Centrifugo client protocol for the load generator."""
        if self.protobuf:
            replies = []
            pos = 0
            while pos < len(payload):
                size, pos = pb_read_varint(payload, pos)
                fields = dict(pb_fields(payload[pos : pos + size]))
                pos += size
                cmd_id = fields.get(1, 0)
                if 5 in fields:  # subscribe
                    self._join(dict(pb_fields(fields[5])).get(1, b""))
                    body = b"\x08" + pb_varint(cmd_id) + b"\x32\x00"
                elif cmd_id:  # connect or anything else: an empty result
                    body = b"\x08" + pb_varint(cmd_id) + b"\x2a\x00"
                else:
                    continue  # our pong
                replies.append(pb_varint(len(body)) + body)
            if replies:
                self.transport.write(server_frame(OP_BINARY, b"".join(replies)))
            return
        replies = []
        for line in payload.split(b"\n"):
            try:
                cmd = json.loads(line)
            except ValueError:
                continue
            if not isinstance(cmd, dict) or "id" not in cmd:
                continue
            cmd_id = cmd["id"]
            if "subscribe" in cmd:
                self._join(cmd["subscribe"]["channel"].encode())
                replies.append(b'{"id":%d,"subscribe":{}}' % cmd_id)
            elif "publish" in cmd:
                pub = cmd["publish"]
                channel = pub["channel"].encode()
                data = json.dumps(pub.get("data"), separators=(",", ":")).encode()
                members = self.hub.channels.get(channel)
                if members:
                    json_frame = server_frame(OP_TEXT, b'{"push":{"channel":%s,"pub":{"data":%s}}}' % (
                        json.dumps(pub["channel"]).encode(), data))
                    reply = pb_field(4, pb_field(2, channel) + pb_field(4, pb_field(4, data)))
                    pb_frame = server_frame(OP_BINARY, pb_varint(len(reply)) + reply)
                    self.hub.publish_to_members(members, json_frame, pb_frame)
                replies.append(b'{"id":%d,"publish":{}}' % cmd_id)
            else:
                replies.append(b'{"id":%d,"connect":{"client":"trivial","version":"0"}}' % cmd_id)
        if replies:
            self.transport.write(server_frame(OP_TEXT, b"\n".join(replies)))


async def main(host: str, port: int) -> None:
    hub = Hub()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Connection(hub), host, port)
    async with server:
        await server.serve_forever()



if __name__ == "__main__":
    args = server_args(__doc__)
    try:
        asyncio.run(main(args.host, args.port))
    except KeyboardInterrupt:
        pass
