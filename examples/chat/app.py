"""Chat: rooms with a small browser page.

    .venv/bin/hubbub run examples.chat.app:app --port 8000
    # open http://127.0.0.1:8000/chat in two browser tabs

Each room is channel ``chat:{room}`` with history (the last 50 messages) and
presence. The page speaks to the app's own endpoint ``/chat/{room}/ws``: the
first message a client sends is its name, every later one is a line of chat.
"""

from pathlib import Path

import hubbub
from hubbub.http import HTTPRequest, HTTPResponse

PAGE = (Path(__file__).parent / "index.html").read_bytes()

app = hubbub.App(namespaces={"chat": {"history_size": 50, "history_ttl": 3600, "presence": True}})


@app.websocket("/chat/{room}/ws")
class ChatRoom:
    async def connect(self, ws: hubbub.WebSocket) -> None:
        self.channel = f"chat:{ws.params['room']}"
        self.name = ""
        await ws.subscribe(self.channel)

    async def handle_message(self, ws: hubbub.WebSocket, message: str | bytes) -> None:
        if isinstance(message, bytes):
            raise hubbub.Disconnect(4003, "text only")
        text = message.strip()[:500]
        if not text:
            return
        if not self.name:
            self.name = text[:40]
            await ws.publish(self.channel, {"system": f"{self.name} joined"})
        else:
            await ws.publish(self.channel, {"from": self.name, "text": text})

    async def disconnect(self, ws: hubbub.WebSocket) -> None:
        if self.name:
            await ws.hub.publish(self.channel, {"system": f"{self.name} left"})


async def page(request: HTTPRequest) -> HTTPResponse:
    return HTTPResponse(200, PAGE, "text/html; charset=utf-8")


app.server.add_http("/chat", page)

if __name__ == "__main__":
    app.serve()
