"""The echo application that ``tools/autobahn.py --target endpoint`` serves.

One framework endpoint, ``/autobahn/{case}``, written as a user would write it
(a plain ``async def handler(ws)``, as in the tutorial): every message, text or
binary, goes back to its sender unchanged. ``{case}`` is the Autobahn case id;
it only keeps each case on its own URL in the server's log.

::

    .venv/bin/hubbub run autobahn_echo:app --port 0     # with tools/ on PYTHONPATH

Its settings come from ``HUBBUB_*`` environment variables (``Config.load()``; an
``App``'s own settings do not read them), which ``tools/autobahn.py`` sets as it
sets ``hubbub serve``'s flags for the relay: ``HUBBUB_MAX_MESSAGE_SIZE`` (case
group 9 sends messages of up to 16 MiB), ``HUBBUB_MAX_PENDING_OUTPUT`` (a 16 MiB
echo must fit in one connection's pending output), ``HUBBUB_PING_INTERVAL``
(0: no server pings) and ``HUBBUB_WEBSOCKET_COMPRESSION`` (case groups 12 and
13, permessage-deflate).
"""

from __future__ import annotations

import hubbub

app = hubbub.App(hubbub.Config.load())


@app.websocket("/autobahn/{case}")
async def echo(ws: hubbub.WebSocket) -> None:
    """Send every message back to its sender, as it came (``str`` as text, ``bytes`` as binary)."""
    async for message in ws:
        await ws.send(message)
