"""hubbub speaking the benchmarks' one-line text protocol, on a ``hubbub.App`` endpoint.

The same protocol the other peers (``websockets``, socketify, trivial) speak in
the many-channels workload, so every peer does the same work per delivery with
the same client cost:

* ``sub <channel> <channel> ...``: the connection joins those hub channels
  (``ws.subscribe``: names validated, ``client_channel_limit`` applies) and is
  answered ``subok``;
* ``pub <channel> <payload>``: ``<payload>`` is published to ``<channel>`` as
  a relay message (``hubbub.relay.relay_publication``): every member receives
  the payload as it was sent, one text message each, through hubbub's hub,
  broker, fan-out and bounded writer like any relay delivery.

Served by hubbub's own server (``App.serve``) at ``/text``; the built-in
endpoints stay where they are.

Usage::

    python bench/servers/hubbub_text.py --host 127.0.0.1 --port 8000
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import server_args

PATH = "/text"


def build(host: str, port: int):
    import hubbub
    from hubbub.relay import relay_publication

    app = hubbub.App(host=host, port=port, page=False)

    @app.websocket(PATH)
    class Text:
        async def handle_message(self, ws, message):
            if isinstance(message, str):
                message = message.encode()
            head = message[:4]
            if head == b"sub ":
                for channel in message[4:].split():
                    await ws.subscribe(channel.decode())
                await ws.send("subok")
            elif head == b"pub ":
                _, channel, payload = message.split(b" ", 2)
                await ws.hub.publish(channel.decode(), relay_publication(payload, binary=False), source="relay")

    return app


def main() -> None:
    args = server_args(__doc__)
    build(args.host, args.port).serve()


if __name__ == "__main__":
    main()
