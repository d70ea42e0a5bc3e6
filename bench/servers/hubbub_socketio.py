#!/usr/bin/env python3
"""Peer: hubbub's python-socketio-compatible API (``hubbub.socketio``) on hubbub's own server.

This is ``socketio_server.py`` (the python-socketio peer) with the import
changed (``import hubbub.socketio as socketio``) and nothing else in the
application.  The ``ASGIApp`` it builds is a ``hubbub.App``, so it is served
by hubbub's own server (``app.serve()``, what ``hubbub run module:app`` does),
the fast path, rather than uvicorn.  Rooms are hub channels
(``socketio:/:bench``): an emit is one publication through hubbub's hub,
fan-out and bounded writer.

Every client joins the room ``bench`` when it connects (the connect
acknowledgement ``40{...}`` is sent after the handler returned, so a client
that has it is subscribed).  Events:

``pub`` (data) or ``pub`` (room, data)
    ``sio.emit("msg", data, room=room)``; ``room`` defaults to ``bench``.
``sub`` ([room, ...])
    joins each room, then emits ``subok`` to the client.

hubbub's defaults are kept (ping interval 25 s as in python-socketio; no
compression); logging is reduced to warnings, as for uvicorn in the other peer.

Usage::

    python bench/servers/hubbub_socketio.py --host 127.0.0.1 --port 8000
"""

from __future__ import annotations

import hubbub.socketio as socketio

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
    import logging

    logging.basicConfig(level=logging.WARNING)
    app.serve(host=args.host, port=args.port)
