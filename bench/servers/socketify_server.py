#!/usr/bin/env python3
"""Peer: socketify (uWebSockets) with its built-in pub/sub.

Every client subscribes to the topic ``bench`` when it opens
(``ws.subscribe("bench")``); each text message a client sends is published
to it with ``app.publish("bench", msg)``, which uWebSockets encodes once and
queues to every subscriber in C++.  For the many-channels workload it also
speaks the load generator's ``pubsub`` text protocol: ``sub <topic> ...``
subscribes (answered with ``subok``) and ``pub <topic> <payload>`` publishes
``<payload>`` to ``<topic>``.

Settings: compression off; ``max_backpressure`` 1 MiB with
``close_on_backpressure_limit`` (the same bound as hubbub's
``max_pending_output``; uWebSockets' default of 64 KiB silently drops
messages past it); automatic pings on, idle timeout 120 s.

Usage::

    python bench/servers/socketify_server.py --host 127.0.0.1 --port 8000
"""

from __future__ import annotations

from socketify import App, AppListenOptions, CompressOptions, OpCode

from common import server_args  # bench/servers/common.py

app = App()


def ws_open(ws) -> None:
    ws.subscribe("bench")


def ws_message(ws, message, opcode) -> None:
    if isinstance(message, str) and message[:4] in ("sub ", "pub "):
        if message[0] == "s":
            for topic in message[4:].split():
                ws.subscribe(topic)
            ws.send("subok", OpCode.TEXT)
        else:
            _, topic, payload = message.split(" ", 2)
            app.publish(topic, payload, OpCode.TEXT)
        return
    app.publish("bench", message, opcode)



if __name__ == "__main__":
    args = server_args(__doc__)
    app.ws(
        "/*",
        {
            "compression": CompressOptions.DISABLED,
            "max_payload_length": 64 * 1024,
            "idle_timeout": 120,
            "max_backpressure": 1024 * 1024,
            "close_on_backpressure_limit": True,
            "send_pings_automatically": True,
            "open": ws_open,
            "message": ws_message,
        },
    )
    app.any("/*", lambda res, req: res.end("socketify bench server"))
    app.listen(AppListenOptions(port=args.port, host=args.host), lambda config: None)
    app.run()
