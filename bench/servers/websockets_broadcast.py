#!/usr/bin/env python3
"""Baseline broadcast server: the "seed design" built on ``websockets``.

Every client is registered in a set; each message received from any client
is sent to every registered client (including the sender) with
:func:`websockets.asyncio.server.broadcast`.  The request path is ignored.
Library defaults are kept (compression is only negotiated if the client
offers it, which the load generator does not).

For the many-channels workload the server also speaks the load generator's
small ``pubsub`` text protocol (any other message is broadcast as above):

``sub <channel> [<channel> ...]``
    adds the client to each channel's set and answers ``subok``;
``pub <channel> <payload>``
    sends ``<payload>`` to the channel's set with ``broadcast()``.

Usage::

    python bench/servers/websockets_broadcast.py --host 127.0.0.1 --port 8000
"""

from __future__ import annotations

import asyncio

from websockets.asyncio.server import ServerConnection, broadcast, serve

from common import server_args  # bench/servers/common.py

CLIENTS: set[ServerConnection] = set()
CHANNELS: dict[str, set[ServerConnection]] = {}


async def handler(websocket: ServerConnection) -> None:
    """Register the client and relay each of its messages to everyone."""
    CLIENTS.add(websocket)
    joined: list[str] = []
    try:
        async for message in websocket:
            if isinstance(message, str) and message[:4] in ("sub ", "pub "):
                if message[0] == "s":
                    for channel in message[4:].split():
                        CHANNELS.setdefault(channel, set()).add(websocket)
                        joined.append(channel)
                    await websocket.send("subok")
                else:
                    _, channel, payload = message.split(" ", 2)
                    members = CHANNELS.get(channel)
                    if members:
                        broadcast(members, payload)
                continue
            broadcast(CLIENTS, message)
    finally:
        CLIENTS.discard(websocket)
        for channel in joined:
            members = CHANNELS.get(channel)
            if members is not None:
                members.discard(websocket)
                if not members:
                    del CHANNELS[channel]


async def main(host: str, port: int) -> None:
    async with serve(handler, host, port) as server:
        await server.serve_forever()



if __name__ == "__main__":
    args = server_args(__doc__)
    try:
        asyncio.run(main(args.host, args.port))
    except KeyboardInterrupt:
        pass
