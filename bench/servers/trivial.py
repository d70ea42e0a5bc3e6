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

Usage::

    python bench/servers/trivial.py --host 127.0.0.1 --port 8000
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
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
        self.transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\n"
            b"Upgrade: websocket\r\n"
            b"Connection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
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
            if head == b"sub ":
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
