#!/usr/bin/env python3
"""Peer: ``hubbub-socketio``, the python-socketio peer's own application (``socketio_server.py``)
with ``import socketio`` changed to ``import hubbub.socketio as socketio``, served by hubbub's own
server (``ASGIApp`` is a ``hubbub.App``).

Every client joins the room ``bench`` when it connects.  Events:

``pub`` (data) or ``pub`` (room, data)
    ``sio.emit("msg", data, room=room)``; ``room`` defaults to ``bench``.
``sub`` ([room, ...])
    joins each room, then emits ``subok`` to the client.

Usage::

    python bench/servers/hubbub_socketio.py --host 127.0.0.1 --port 8000
"""

from __future__ import annotations

from common import server_args  # bench/servers/common.py

import hubbub.socketio as socketio

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
    app.serve(host=args.host, port=args.port)
