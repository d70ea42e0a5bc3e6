#!/usr/bin/env python3
"""Generate docs/api.md, the API reference, from hubbub's docstrings.

    .venv/bin/python tools/gen_api_docs.py          # writes docs/api.md
    .venv/bin/python tools/gen_api_docs.py --check  # exits 1 if docs/api.md is stale

Only the standard library: ``inspect`` walks the public names of each module.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "api.md"

#: module -> the public names to document, in order
MODULES = {
    "hubbub.app": ["App", "AppHooks", "load_app"],
    "hubbub.endpoint": ["WebSocket", "EndpointOut", "Connections", "Registry", "broadcast"],
    "hubbub.endpoint_errors": ["ConnectionClosedOK", "ConnectionClosedError", "closed_error"],
    "hubbub.core": ["ClientCore", "ClientContext", "CommandRate", "SessionHooks", "ConnectRequest", "ConnectResult"],
    "hubbub.session": ["ClientSession"],
    "hubbub.relay": ["RelaySession", "RelayWire", "relay_publication", "handshake_token", "REFUSAL_STATUS"],
    "hubbub.codec": ["Codec", "JSONCodec", "ProtocolWire"],
    "hubbub.formats": ["negotiate", "for_body", "SUBPROTOCOLS", "FORMATS"],
    "hubbub.protobuf_codec": ["ProtobufCodec", "publication_from_bytes"],
    "hubbub.validation": ["channel_name", "text", "Params"],
    "hubbub.strictjson": ["loads", "dumps", "encode_data", "one_line", "MAX_DEPTH"],
    "hubbub.config": ["Config", "NamespaceOptions", "check_file", "env_settings"],
    "hubbub.hub": ["Hub", "Subscriber", "SubscribeResult", "Wire"],
    "hubbub.outbox": ["Outbox", "FrameBatch", "FrameEncoder"],
    "hubbub.brokers.base": ["Broker", "BrokerEventHandler", "Publication", "ClientInfo", "StreamPosition",
                            "HistoryResult"],
    "hubbub.brokers.memory": ["MemoryBroker"],
    "hubbub.brokers.redis": ["RedisBroker"],
    "hubbub.brokers.sharded": ["ShardedRedisBroker", "RedisClusterBroker", "create_redis_broker"],
    "hubbub.writer": ["Writer", "Flusher"],
    "hubbub.transport": ["ClientTransport", "WebSocketTransport", "WebSocketSession", "Host"],
    "hubbub.listener": ["Listener"],
    "hubbub.server": ["Server"],
    "hubbub.cluster": ["Cluster", "node_info", "apply_user_command"],
    "hubbub.errors": ["HubbubError", "ConfigError", "RouteCollision", "ProtocolError", "BadRequest", "Disconnect",
                      "TokenError", "TokenExpired", "InvalidToken", "BrokerError", "BrokerUnavailable", "ClusterError",
                      "NodeUnavailable", "RemoteError", "ClientError", "ReplyError", "EndpointError", "NotStarted",
                      "SocketIOError", "ConnectRefused", "SocketIOConnectionError", "ConnectionRefusedError",
                      "SocketIOTimeoutError", "BadNamespaceError", "DisconnectedError"],
    "hubbub.asgi": ["ASGIAdapter", "ASGIFrames"],
    "hubbub.hosting": ["HostedApp"],
    "hubbub.api": ["ServerAPI"],
    "hubbub.auth": ["TokenVerifier", "Claims"],
    "hubbub.client": ["Client", "RelayClient", "protocol_url", "endpoint"],
    "hubbub.codes": ["ErrorCode", "DisconnectCode", "should_reconnect"],
    "hubbub.metrics": [],
    "hubbub.consumers": ["configured"],
    "hubbub.consumers.base": ["Consumer", "CommandDispatcher", "APIDispatcher", "Outcome", "Result", "backoff"],
    "hubbub.consumers.postgresql": ["PostgresConsumer"],
    "hubbub.socketio.server": ["AsyncServer", "AsyncNamespace", "ASGIApp", "static_file"],
    "hubbub.sio.session": ["SocketIOSession", "SocketIOHandlers", "HubHandlers", "SocketIOWire", "PollingOut",
                                "room_channel", "publication_data"],
    "hubbub.sio.service": ["SocketIOService", "UpgradeProbe"],
    "hubbub.sio.engineio": ["encode_payload", "decode_payload", "error_body", "EngineError"],
    "hubbub.sio.packets": ["PacketType", "SocketIOPacket", "Decoder", "encode", "decode_text"],
}


def _doc(obj: object) -> str:
    return inspect.cleandoc(obj.__doc__) if obj.__doc__ else ""


def _signature(obj: object) -> str:
    try:
        text = str(inspect.signature(obj))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return ""
    return re.sub(r"<([\w.]+) object at 0x[0-9a-f]+>", r"\1()", text)  # stable across runs


def render() -> str:
    out = ["# API reference", "", "Generated from the docstrings by `tools/gen_api_docs.py`; do not edit.", ""]
    for module_name, names in MODULES.items():
        module = importlib.import_module(module_name)
        out += [f"## `{module_name}`", "", _doc(module), ""]
        for name in names:
            obj = getattr(module, name)
            if inspect.isclass(obj):
                out += [f"### class `{name}{_signature(obj) if not issubclass(obj, BaseException) else ''}`", "",
                        _doc(obj), ""]
                for attr, member in obj.__dict__.items():
                    if attr.startswith("_") or not (inspect.isfunction(member) or isinstance(member, property)):
                        continue
                    target = member.fget if isinstance(member, property) else member
                    doc = _doc(target)
                    if not doc:
                        continue
                    kind = "property" if isinstance(member, property) else "method"
                    sig = "" if kind == "property" else _signature(member)
                    out += [f"#### {kind} `{name}.{attr}{sig}`", "", doc, ""]
            else:
                out += [f"### `{name}{_signature(obj)}`", "", _doc(obj), ""]
    return "\n".join(out).rstrip() + "\n"


def main() -> int:
    text = render()
    if "--check" in sys.argv:
        if not OUT.exists() or OUT.read_text() != text:
            print("docs/api.md is stale: run tools/gen_api_docs.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT.relative_to(ROOT)} ({len(text.splitlines())} lines)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
