"""Echo: every message comes back to its sender.

    .venv/bin/hubbub run examples.echo:app --port 8000
    # then: python -m websockets ws://127.0.0.1:8000/echo
"""

import hubbub

app = hubbub.App()


@app.websocket("/echo")
async def echo(ws: hubbub.WebSocket) -> None:
    async for message in ws:
        await ws.send(message)


if __name__ == "__main__":
    app.serve()
