#!/usr/bin/env python3
"""Peer: python-socketio (``AsyncServer``, ASGI) on uvicorn.

Every client joins the room ``bench`` when it connects (the connect
acknowledgement ``40{...}`` is sent after the handler returned, so a client
that has it is subscribed).  Events:

``pub`` (data) or ``pub`` (room, data)
    ``sio.emit("msg", data, room=room)``; ``room`` defaults to ``bench``.
``sub`` ([room, ...])
    joins each room, then emits ``subok`` to the client.

Library defaults are kept (Engine.IO ping interval 25 s, no compression for
these small messages); uvicorn's logging is reduced to warnings.

Usage::

    python bench/servers/socketio_server.py --host 127.0.0.1 --port 8000
"""

from __future__ import annotations

import socketio
import uvicorn

from common import server_args  # bench/servers/common.py

sio = socketio.AsyncServer(async_mode="asgi", cors_allowed_origins="*")
app = socketio.ASGIApp(sio)


@sio.event
async def connect(sid: str, environ: dict, auth: object = None) -> None:
    await sio.enter_room(sid, "bench")


@sio.event
async def sub(sid: str, rooms: list[str]) -> None:
    for room in rooms:
        await sio.enter_room(sid, room)
    await sio.emit("subok", to=sid)


@sio.event
async def pub(sid: str, *args: object) -> None:
    if len(args) == 2:
        room, data = args
    else:
        room, data = "bench", args[0]
    await sio.emit("msg", data, room=room)



if __name__ == "__main__":
    args = server_args(__doc__)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
