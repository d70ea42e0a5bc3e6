"""The servers the benchmarks compare, and how the load generator talks to each.

Every peer is started as its own process (group) on 127.0.0.1 by
:class:`harness.ServerProcess`.  ``fanout`` is how the load generator
reaches the single channel ``bench`` (workloads 1, 2, 4, 5); ``channels`` is
how it subscribes to its personal and group channels and publishes to them
(workload 3).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from harness import BENCH, HOST

SOCKETIO_PATH = "/socket.io/?EIO=4&transport=websocket"


@dataclass(frozen=True)
class Target:
    """Where and how the load generator talks to a peer."""

    path: str
    mode: str  # loadgen --mode: raw, centrifugo, socketio, pubsub, uni_sse; centrifugo+protobuf (Protobuf subscribers)


@dataclass(frozen=True)
class Peer:
    """One server under test."""

    name: str
    argv: Callable[[str, int], list[str]]  # (python, port) -> command line
    fanout: Target
    channels: Target | None
    what: str  # one line for the docs
    requires: tuple[str, ...] = ()  # modules the server's interpreter must import
    packages: tuple[str, ...] = ()  # distributions whose versions the docs list
    env: dict[str, str] = field(default_factory=dict)
    workloads: tuple[str, ...] | None = None  # the suite's workloads it takes part in (None: all)
    problem: Callable[[], str | None] | None = None  # why it cannot run here (a non-Python peer), or None


def _script(name: str) -> Callable[[str, int], list[str]]:
    return lambda py, port: [py, str(BENCH / "servers" / name), "--host", HOST, "--port", str(port)]


def hubbub_argv(*extra: str) -> Callable[[str, int], list[str]]:
    """``python -m hubbub serve`` on ``port`` with ``extra`` flags."""
    return lambda py, port: [py, "-m", "hubbub", "serve", "--host", HOST, "--port", str(port), *extra]


HUBBUB = Peer(
    name="hubbub",
    argv=hubbub_argv(),
    fanout=Target("/ws/bench", "raw"),
    channels=Target("/connection/websocket", "centrifugo"),
    what="`hubbub serve` (memory broker): relay endpoint `/ws/bench` for one channel; "
    "protocol endpoint `/connection/websocket` (connect + 2 subscribe commands) for many channels",
    requires=("hubbub",),
    packages=("hubbub", "websockets", "h11"),
)
HUBBUB_PROTOCOL = Peer(
    name="hubbub-protocol",
    argv=hubbub_argv(),
    fanout=Target("/connection/websocket", "centrifugo"),
    channels=Target("/connection/websocket", "centrifugo"),
    what="the same server on the Centrifugo protocol endpoint: connect + subscribe commands, "
    "publish commands (up to 1000 awaiting a reply in burst workloads), pushes as JSON",
    requires=("hubbub",),
    packages=("hubbub",),
)
HUBBUB_UNI_SSE = Peer(
    name="hubbub-uni-sse",
    argv=hubbub_argv(),
    fanout=Target("/ws/bench", "uni_sse"),
    channels=None,
    what="the same server, subscribers on the one-way SSE transport (`GET /connection/uni_sse` with "
    "`cf_connect`, plain HTTP clients); the producer is a relay client on `/ws/bench`",
    requires=("hubbub",),
    packages=("hubbub",),
)
HUBBUB_ASGI = Peer(
    name="hubbub-asgi",
    argv=_script("hubbub_asgi.py"),
    fanout=Target("/rt/ws/bench", "raw"),
    channels=Target("/rt/connection/websocket", "centrifugo"),
    what="the same hub as an ASGI app: `hubbub.App` mounted at `/rt` in FastAPI, served by uvicorn "
    "(uvicorn frames; hubbub's writer hands each message to ASGI `send`)",
    requires=("hubbub", "uvicorn", "fastapi"),
    packages=("hubbub", "uvicorn", "fastapi"),
)
HUBBUB_PROTOBUF = Peer(
    name="hubbub-protobuf",
    argv=hubbub_argv(),
    fanout=Target("/connection/websocket", "centrifugo+protobuf"),
    channels=Target("/connection/websocket", "centrifugo+protobuf"),
    what="the same protocol endpoint with Protobuf subscribers (`centrifuge-protobuf`): connect + "
    "subscribe as Protobuf commands, pushes as Protobuf; the producer publishes JSON commands",
    requires=("hubbub",),
    packages=("hubbub", "protobuf"),
)
HUBBUB_TEXT = Peer(
    name="hubbub-text",
    argv=_script("hubbub_text.py"),
    fanout=Target("/text", "pubsub"),
    channels=Target("/text", "pubsub"),
    what="hubbub on equal terms: a `hubbub.App` endpoint (`bench/servers/hubbub_text.py`) speaking the "
    "one-line text protocol of the other peers (`sub <ch> <ch>`, `pub <ch> <payload>`); payloads go "
    "through the hub as relay messages",
    requires=("hubbub",),
    packages=("hubbub",),
    workloads=("1", "2", "3", "4"),
)
WEBSOCKETS = Peer(
    name="websockets",
    argv=_script("websockets_broadcast.py"),
    fanout=Target("/", "raw"),
    channels=Target("/", "pubsub"),
    what="baseline, the seed design: `websockets` server, `broadcast()` to a set of clients "
    "(one set per channel for many channels)",
    requires=("websockets",),
    packages=("websockets",),
)
SOCKETIO = Peer(
    name="socketio",
    argv=_script("socketio_server.py"),
    fanout=Target(SOCKETIO_PATH, "socketio"),
    channels=Target(SOCKETIO_PATH, "socketio"),
    what="python-socketio `AsyncServer` (ASGI) on uvicorn; clients join rooms, "
    '`sio.emit("msg", data, room=...)`',
    requires=("socketio", "uvicorn"),
    packages=("python-socketio", "python-engineio", "uvicorn"),
)
HUBBUB_SOCKETIO = Peer(
    name="hubbub-socketio",
    argv=_script("hubbub_socketio.py"),
    fanout=Target(SOCKETIO_PATH, "socketio"),
    channels=Target(SOCKETIO_PATH, "socketio"),
    what="the `socketio` peer's application with `import hubbub.socketio as socketio`, on hubbub's own "
    "server (`bench/servers/hubbub_socketio.py`); rooms are hub channels",
    requires=("hubbub",),
    packages=("hubbub",),
    workloads=("1", "3", "4", "5"),
)
def _node_socketio_problem() -> str | None:
    """Why the Node ``socket.io`` peer cannot run: no ``node``, or ``socket.io`` not installed in
    tests/js/node_modules (``npm install`` there)."""
    import shutil
    import subprocess

    if shutil.which("node") is None:
        return "node is not installed"
    script = ("require('node:module').createRequire(require('node:path').resolve('tests/js/package.json'))"
              "('socket.io')")
    proc = subprocess.run(["node", "-e", script], cwd=BENCH.parent, capture_output=True, text=True, timeout=60,
                          check=False)
    if proc.returncode != 0:
        return "socket.io (npm) is not installed in tests/js/node_modules: npm install there"
    return None


SOCKETIO_NODE = Peer(
    name="socketio-node",
    argv=lambda py, port: ["node", str(BENCH / "servers" / "socketio_node.mjs"), "--host", HOST, "--port", str(port)],
    fanout=Target(SOCKETIO_PATH, "socketio"),
    channels=Target(SOCKETIO_PATH, "socketio"),
    what="the reference Node.js `socket.io` server (npm, `bench/servers/socketio_node.mjs`): the same "
    "application, an anchor for the Socket.IO rows",
    packages=(),
    workloads=("1", "3", "4", "5"),
    problem=_node_socketio_problem,
)
SOCKETIFY = Peer(
    name="socketify",
    argv=_script("socketify_server.py"),
    fanout=Target("/", "raw"),
    channels=Target("/", "pubsub"),
    what="socketify (uWebSockets, C++): `ws.subscribe(topic)` + `app.publish(topic, msg)`",
    requires=("socketify",),
    packages=("socketify",),
)
TRIVIAL = Peer(
    name="trivial",
    argv=_script("trivial.py"),
    fanout=Target("/", "raw"),
    channels=Target("/", "pubsub"),
    what="the load generator's ceiling: hand-rolled asyncio server, frames joined into one "
    "write per client per loop iteration; no limits, no pings",
)

TRIVIAL_CENTRIFUGO = Peer(
    name="trivial-centrifugo",
    argv=_script("trivial.py"),
    fanout=Target("/connection/websocket", "centrifugo"),
    channels=Target("/connection/websocket", "centrifugo"),
    what="the load generator's ceiling in Centrifugo JSON mode: trivial answers connect/subscribe/publish "
    "commands and sends each push, encoded once, to every member",
    workloads=("1", "3"),
)
TRIVIAL_PROTOBUF = Peer(
    name="trivial-protobuf",
    argv=_script("trivial.py"),
    fanout=Target("/connection/websocket", "centrifugo+protobuf"),
    channels=Target("/connection/websocket", "centrifugo+protobuf"),
    what="the load generator's ceiling with Protobuf subscribers (trivial encodes each push once)",
    workloads=("1", "3"),
)

PEERS: dict[str, Peer] = {
    peer.name: peer
    for peer in (HUBBUB, HUBBUB_PROTOCOL, HUBBUB_PROTOBUF, HUBBUB_TEXT, HUBBUB_UNI_SSE, HUBBUB_ASGI, WEBSOCKETS,
                 SOCKETIO, HUBBUB_SOCKETIO, SOCKETIO_NODE, SOCKETIFY, TRIVIAL, TRIVIAL_CENTRIFUGO, TRIVIAL_PROTOBUF)
}
BASELINE = "websockets"
