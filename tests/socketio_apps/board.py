"""A python-socketio application written for hubbub's tests (not taken from python-socketio).

It is written against python-socketio's documented server API (``import socketio``) and uses the
surface its examples use: ``AsyncServer``/``ASGIApp`` with static files, ``@sio.event`` and
``@sio.on``, ``connect(sid, environ, auth)`` with ``ConnectionRefusedError``,
``disconnect(sid, reason)``, ``emit`` to a sid, a room, everyone and with ``skip_sid``, acks
(a handler's return value), ``call``, rooms, sessions, a class-based ``AsyncNamespace``,
``start_background_task``/``sleep`` and a server-side ``disconnect``.

tests/test_howtos.py serves it unchanged with python-socketio under uvicorn, and with the one line
``import socketio`` changed to ``import hubbub.socketio as socketio`` under uvicorn and under
``hubbub run``, and checks that one client script sees the same transcript from all three.
"""

import socketio

sio = socketio.AsyncServer(async_mode="asgi")
app = socketio.ASGIApp(sio, static_files={"/": "board.html", "/static": "static"})
members = {}


@sio.event
async def connect(sid, environ, auth):
    name = (auth or {}).get("name")
    if not name:
        raise socketio.exceptions.ConnectionRefusedError("who are you?")
    await sio.save_session(sid, {"name": name, "notes": 0})
    members[sid] = name
    await sio.emit("status", {"text": "welcome " + name}, to=sid)


@sio.event
async def disconnect(sid, reason):
    members.pop(sid, None)


@sio.on("note")
async def note(sid, data):
    async with sio.session(sid) as session:
        session["notes"] += 1
        count = session["notes"]
    await sio.emit("status", {"text": f"note {count}: {data['text']}"}, to=sid)


@sio.on("shout")
async def shout(sid, data):
    name = (await sio.get_session(sid))["name"]
    await sio.emit("heard", {"from": name, "text": data["text"]}, skip_sid=sid)


@sio.on("join")
async def join(sid, data):
    await sio.enter_room(sid, data["room"])
    return sorted(r for r in sio.rooms(sid) if r != sid)


@sio.on("leave")
async def leave(sid, data):
    await sio.leave_room(sid, data["room"])
    return sorted(r for r in sio.rooms(sid) if r != sid)


@sio.on("post")
async def post(sid, data):
    await sio.emit("posted", {"room": data["room"], "text": data["text"]}, room=data["room"])


@sio.on("close")
async def close(sid, data):
    await sio.emit("posted", {"room": data["room"], "text": "closing"}, room=data["room"])
    await sio.close_room(data["room"])


@sio.on("ask")
async def ask(sid, data):
    answer = await sio.call("question", {"q": data["q"]}, to=sid, timeout=10)
    return {"you said": answer}


@sio.on("countdown")
async def countdown(sid, data):
    async def tick():
        for n in range(data["from"], 0, -1):
            await sio.emit("tick", n, to=sid)
            await sio.sleep(0.01)

    sio.start_background_task(tick)


@sio.on("bye")
async def bye(sid):
    await sio.disconnect(sid)


class Admin(socketio.AsyncNamespace):
    async def on_connect(self, sid, environ, auth):
        if (auth or {}).get("key") != "k":
            raise socketio.exceptions.ConnectionRefusedError("admins only")

    async def on_count(self, sid):
        return len(members)


sio.register_namespace(Admin("/admin"))
