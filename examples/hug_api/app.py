"""A hug API and a WebSocket endpoint on one port, served by hubbub.

    .venv/bin/pip install hug
    .venv/bin/hubbub run examples.hug_api.app:app --port 8000
    curl "http://127.0.0.1:8000/hello?name=ann"                  # hug: {"hello": "ann"}
    python -m websockets ws://127.0.0.1:8000/ws                  # hubbub: the endpoint below
    curl -X POST http://127.0.0.1:8000/announce -d text=hi       # hug publishes to every /ws client

hug answers every HTTP request that no hubbub route takes (through WSGI, in worker threads);
hubbub's own server takes the WebSocket connections. See README.md in this folder.
"""

# No `from __future__ import annotations` here: hug converts arguments with the annotations
# (hug.types.number, ...) and needs them as objects, not strings.
import asyncio
import json
import logging

# hug 2.6.1, its last release, uses numpy.unicode_, which NumPy 2 removed: with NumPy 2 installed,
# `import hug` fails with AttributeError (the fix, hugapi/hug pull request #922, was never released).
# Give NumPy the old name back before hug is imported; without NumPy nothing is needed.
try:
    import numpy

    if not hasattr(numpy, "unicode_"):
        numpy.unicode_ = numpy.str_
except ImportError:
    pass

import hug  # noqa: E402

import hubbub  # noqa: E402

log = logging.getLogger("examples.hug_api")

LOBBY = "lobby"

# -- the hug API: plain HTTP routes, written as for any hug app --------------------------------


@hug.get("/hello")
def hello(name: hug.types.text = "world"):
    """Says hello."""
    return {"hello": name}


@hug.get("/add")
def add(a: hug.types.number, b: hug.types.number):
    """Adds two numbers."""
    return {"sum": a + b}


@hug.post("/announce")
def announce(text: hug.types.text):
    """Publishes ``text`` to every client of the WebSocket endpoint."""
    publish_from_thread(LOBBY, {"from": "hug", "text": text})
    return {"announced": text}


# -- hubbub: the same app on the same port, with the WebSocket endpoint -----------------------

# hug's WSGI application (its routes are all declared above); hubbub's routes come first
app = hubbub.App(http=hug.API(__name__).http.server())


@app.websocket("/ws")
class WebsocketEndpoint:
    async def connect(self, websocket):
        await websocket.subscribe(LOBBY)
        await websocket.send(json.dumps({"welcome": websocket.client_id[:8]}))

    async def disconnect(self, websocket):
        log.info("client %s left", websocket.client_id[:8])

    async def handle_message(self, websocket, message):
        await websocket.publish(LOBBY, {"from": websocket.client_id[:8], "text": message})


# hug's routes run in worker threads (WSGI); the hub lives on the server's event loop
_loop: asyncio.AbstractEventLoop | None = None


@app.on_startup
async def remember_loop() -> None:
    global _loop
    _loop = asyncio.get_running_loop()


def publish_from_thread(channel: str, data: object) -> None:
    """Publish from a hug route: run ``app.hub.publish`` on the server's loop and wait for it."""
    if _loop is None:
        raise RuntimeError("the hub is not running")
    asyncio.run_coroutine_threadsafe(app.hub.publish(channel, data), _loop).result(timeout=10)


if __name__ == "__main__":
    app.serve()
