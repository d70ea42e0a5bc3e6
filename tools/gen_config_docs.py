#!/usr/bin/env python3
"""Generate docs/configuration.md, the settings reference, from ``hubbub.config``.

    .venv/bin/python tools/gen_config_docs.py          # writes docs/configuration.md
    .venv/bin/python tools/gen_config_docs.py --check  # exits 1 if docs/configuration.md is stale

Each setting's type and default come from the :class:`~hubbub.config.Config` (and
:class:`~hubbub.config.NamespaceOptions`) dataclass, its description from the ``Attributes:``
section of the class docstring, its environment variable from the rule of
:func:`~hubbub.config.env_settings` (``HUBBUB_`` + the name in capitals), and its flag from the
argument parser of ``hubbub serve`` (a flag whose destination is the setting's name). What the
code does not say, the topic a setting belongs to and its unit, is in :data:`GROUPS` and
:data:`UNITS` below: a setting missing from either (a new one) stops the generator with a
message, so the reference cannot silently leave it out.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "configuration.md"
sys.path.insert(0, str(ROOT / "src"))

from hubbub import cli, config  # noqa: E402
from hubbub.config import Config, NamespaceOptions, ProxyOptions  # noqa: E402

#: settings that are TOML tables, and how the reference writes their key
TABLE_KEYS = {"channels": "`[channels]`", "namespaces": "`[namespaces.NAME]`", "proxies": "`[proxies.NAME]`",
              "rpc_proxies": "`[rpc_proxies]`"}

#: topic -> (what the topic is about, the settings in it, in order)
GROUPS: dict[str, tuple[str, list[str]]] = {
    "Server and processes": (
        "Where `hubbub serve` listens, and how many processes share the port.",
        ["host", "port", "workers", "event_loop"],
    ),
    "Broker and cluster": (
        "What carries publications between nodes, and how nodes see each other (docs/scaling.md).",
        ["broker", "node_info_interval", "node_timeout", "node_request_timeout"],
    ),
    "Connections: sizes and timeouts": (
        "Bounds on every connection, whatever its transport: what a peer may send, what may wait "
        "for it, and how long each step may take.",
        ["max_message_size", "websocket_compression", "websocket_compression_min_size",
         "websocket_compression_level", "max_pending_output", "ping_interval", "pong_timeout", "handshake_timeout",
         "connect_timeout", "close_timeout", "max_handshake_size", "max_request_line", "max_http_body",
         "channel_max_length"],
    ),
    "Client limits": (
        "What one connection or one user may do.",
        ["client_channel_limit", "client_command_rate", "client_command_burst", "client_user_connection_limit",
         "client_expired_sub_close_delay", "idempotency_ttl", "presence_ttl"],
    ),
    "Authentication and origins": (
        "Who may connect (docs/security.md). On an address other than loopback, hubbub refuses to start "
        "with no token key and no explicit `allow_anonymous`.",
        ["token_hmac_secret", "token_rsa_public_key", "token_ecdsa_public_key", "token_jwks_url",
         "token_audience", "token_issuer", "allow_anonymous", "allowed_origins"],
    ),
    "Server HTTP API": (
        "`POST {api_path}/{method}`, compatible with Centrifugo's server API. It is off until `api_key` is set.",
        ["api_key", "api_insecure", "api_path"],
    ),
    "Operator's dashboard": (
        "`/admin`, the operator's dashboard.",
        ["admin", "admin_secret"],
    ),
    "What is served where": (
        "The path of each endpoint; `\"\"` turns a path off.",
        ["page", "protocol_path", "relay_path", "health_path", "metrics_path", "http_stream_path", "sse_path",
         "emulation_path", "uni_websocket_path", "uni_sse_path", "uni_http_stream_path", "channel_sse_path"],
    ),
    "PostgreSQL consumer (transactional outbox)": (
        "Server API commands read from a PostgreSQL table, with the shape of Centrifugo's outbox table "
        "(docs/howto/outbox.md). Off until `postgresql_consumer_dsn` is set; needs the `postgresql` extra.",
        ["postgresql_consumer_dsn", "postgresql_consumer_outbox_table_name", "postgresql_consumer_num_partitions",
         "postgresql_consumer_partition_select_limit", "postgresql_consumer_partition_poll_interval",
         "postgresql_consumer_partition_notification_channel", "postgresql_consumer_command_attempts"],
    ),
    "Proxy hooks": (
        "The backend decides over HTTP who connects, subscribes and publishes, and answers RPCs, with the "
        "requests and results of Centrifugo's HTTP proxy ([howto/proxy.md](howto/proxy.md)). Needs "
        "`pip install hubbub[proxy]`. Named proxies are `[proxies.NAME]` tables "
        "(see [Proxy options](#proxy-options)).",
        ["proxy_connect_endpoint", "proxy_refresh_endpoint", "proxy_subscribe_endpoint", "proxy_publish_endpoint",
         "proxy_sub_refresh_endpoint", "proxy_rpc_endpoint", "proxy_connect_timeout", "proxy_refresh_timeout",
         "proxy_subscribe_timeout", "proxy_publish_timeout", "proxy_sub_refresh_timeout", "proxy_rpc_timeout",
         "proxy_http_headers", "proxy_binary_encoding", "proxy_max_connections", "proxies", "rpc_proxies"],
    ),
    "Socket.IO": (
        "Socket.IO clients (socket.io-client, python-socketio) at `socketio_path`; rooms are channels of "
        "the `socketio` namespace. See [docs/howto/socketio.md](howto/socketio.md).",
        ["socketio_path", "socketio_max_attachments", "socketio_attachment_timeout", "socketio_recovery_window"],
    ),
    "Channels and namespaces": (
        "Tables, not single values: `[channels]` holds the options of channels without `:`, "
        "`[namespaces.NAME]` those of `NAME:...` (see [Namespace options](#namespace-options)). A channel "
        "whose namespace is not declared is refused with error 102.",
        ["channels", "namespaces"],
    ),
}

#: setting -> its unit ("" where a unit makes no sense: names, switches, paths)
UNITS: dict[str, str] = {
    "host": "", "port": "", "workers": "processes", "event_loop": "",
    "broker": "", "node_info_interval": "seconds", "node_timeout": "seconds", "node_request_timeout": "seconds",
    "max_message_size": "bytes", "websocket_compression": "", "websocket_compression_min_size": "bytes",
    "websocket_compression_level": "", "max_pending_output": "bytes", "ping_interval": "seconds",
    "pong_timeout": "seconds", "handshake_timeout": "seconds", "connect_timeout": "seconds",
    "close_timeout": "seconds", "max_handshake_size": "bytes", "max_request_line": "bytes",
    "max_http_body": "bytes", "channel_max_length": "bytes",
    "client_channel_limit": "channels", "client_command_rate": "commands per second",
    "client_command_burst": "commands", "client_user_connection_limit": "connections",
    "client_expired_sub_close_delay": "seconds", "idempotency_ttl": "seconds", "presence_ttl": "seconds",
    "token_hmac_secret": "", "token_rsa_public_key": "", "token_ecdsa_public_key": "", "token_jwks_url": "",
    "token_audience": "", "token_issuer": "", "allow_anonymous": "", "allowed_origins": "",
    "api_key": "", "api_insecure": "", "api_path": "",
    "admin": "", "admin_secret": "",
    "page": "", "protocol_path": "", "relay_path": "", "health_path": "", "metrics_path": "",
    "http_stream_path": "", "sse_path": "", "emulation_path": "", "uni_websocket_path": "", "uni_sse_path": "",
    "uni_http_stream_path": "", "channel_sse_path": "",
    "socketio_path": "", "socketio_max_attachments": "attachments", "socketio_attachment_timeout": "seconds",
    "socketio_recovery_window": "seconds",
    "channels": "", "namespaces": "",
    "postgresql_consumer_dsn": "", "postgresql_consumer_outbox_table_name": "",
    "postgresql_consumer_num_partitions": "partitions", "postgresql_consumer_partition_select_limit": "rows",
    "postgresql_consumer_partition_poll_interval": "seconds", "postgresql_consumer_partition_notification_channel": "",
    "postgresql_consumer_command_attempts": "attempts",
    "proxy_connect_endpoint": "", "proxy_refresh_endpoint": "", "proxy_subscribe_endpoint": "",
    "proxy_publish_endpoint": "", "proxy_sub_refresh_endpoint": "", "proxy_rpc_endpoint": "",
    "proxy_connect_timeout": "seconds", "proxy_refresh_timeout": "seconds", "proxy_subscribe_timeout": "seconds",
    "proxy_publish_timeout": "seconds", "proxy_sub_refresh_timeout": "seconds", "proxy_rpc_timeout": "seconds",
    "proxy_http_headers": "", "proxy_binary_encoding": "", "proxy_max_connections": "connections",
    "proxies": "", "rpc_proxies": "",
    # NamespaceOptions
    "history_size": "publications per channel", "history_ttl": "seconds", "force_recovery": "",
    "presence": "", "join_leave": "", "allow_publish_for_client": "", "allow_subscribe_for_client": "",
    "allow_history_for_client": "", "allow_presence_for_client": "", "require_subscription_token": "",
    "exclude_publisher": "", "force_recovery_mode": "", "allowed_delta_types": "", "delta_publish": "",
    "allow_user_limited_channels": "",
    "subscribe_proxy": "", "publish_proxy": "", "sub_refresh_proxy": "",
    # ProxyOptions
    "endpoint": "", "timeout": "seconds", "http_headers": "", "binary_encoding": "",
}

#: the dataclass field type -> how a TOML file writes it
TYPES = {
    "int": "integer",
    "float": "number",
    "bool": "boolean",
    "bool | None": "boolean",
    "str": "string",
    "list[str]": "list of strings",
    "tuple[str, ...]": "list of strings",
    "NamespaceOptions": "table",
    "dict[str, NamespaceOptions]": "table of tables",
    "dict[str, ProxyOptions]": "table of tables",
    "dict[str, str]": "table",
}


class Stop(Exception):
    """What the generator cannot document; the message says what to add."""


def attributes(cls: type) -> dict[str, tuple[tuple[str, ...], str]]:
    """The ``Attributes:`` section of ``cls``'s docstring: name -> (the names its entry
    describes, as ``a, b:`` describes both; the description on one line, in Markdown)."""
    lines = inspect.cleandoc(cls.__doc__ or "").splitlines()
    if "Attributes:" not in lines:
        raise Stop(f"{cls.__name__}'s docstring has no Attributes: section")
    entries: list[tuple[tuple[str, ...], list[str]]] = []
    for line in lines[lines.index("Attributes:") + 1:]:
        if not line.strip():
            continue
        if not line.startswith("    "):
            break
        m = re.match(r"^    (\w+(?:, \w+)*): (.*)$", line)
        if m and not line.startswith("     "):
            entries.append((tuple(m.group(1).split(", ")), [m.group(2)]))
        elif entries:
            entries[-1][1].append(line.strip())
    return {name: (names, markdown(" ".join(text))) for names, text in entries for name in names}


def markdown(text: str) -> str:
    """reStructuredText's ````code```` and ``:role:`target``` as Markdown code."""
    return re.sub(r"``(.+?)``|:\w+:`~?(.+?)`", lambda m: f"`{m.group(1) or m.group(2)}`", text)


def serve_flags() -> tuple[dict[str, str], list[tuple[str, str]]]:
    """``hubbub serve``'s flags: setting -> how the flag is written, and the other flags
    (written, help) that set no setting."""
    parser = cli._parser()  # the parser of the installed command, not a copy of it
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    serve = sub.choices["serve"]
    fields = {f.name for f in dataclasses.fields(Config)}
    settings: dict[str, str] = {}
    others: list[tuple[str, str]] = []
    for action in serve._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        flag = max(action.option_strings, key=len)
        if action.nargs != 0:
            metavar = action.metavar or ("{" + ",".join(map(str, action.choices)) + "}" if action.choices
                                         else action.dest.upper())
            flag = f"{flag} {metavar}"
        if action.dest in fields:
            settings[action.dest] = flag
        else:
            text = (action.help or "").replace("%(default)s", str(action.default))
            if action.choices and action.default is not None:
                text = f"{text}; " if text else ""
                text += f"one of {', '.join(map(str, action.choices))} (default {action.default})"
            others.append((flag, text))
    return settings, others


def toml_value(value: Any) -> str:
    if value is None:
        return "not set"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str):
        return f'`"{value}"`'
    if isinstance(value, (list, tuple)):
        return "`[]`" if not value else "`[" + ", ".join(f'"{v}"' for v in value) + "]`"
    if isinstance(value, dict):
        return "`{}`"
    if isinstance(value, NamespaceOptions):
        return "the defaults below"
    return f"`{value}`"


def with_size(value: Any, unit: str) -> str:
    """``1048576`` bytes reads ``1048576`` (1 MiB)."""
    text = toml_value(value)
    if unit == "bytes" and isinstance(value, int) and value >= 1024 and value % 1024 == 0:
        kib = value // 1024
        text += f" ({kib // 1024} MiB)" if kib % 1024 == 0 else f" ({kib} KiB)"
    return text


def describe(cls: type, names: list[str], docs: dict[str, tuple[tuple[str, ...], str]]) -> list[str]:
    """A bullet per docstring entry, in the order of ``names``; an entry that describes several
    settings (``a, b: ...``) names those of them that are in ``names``."""
    out: list[str] = []
    done: set[str] = set()
    for name in names:
        if name not in docs:
            raise Stop(f"{cls.__name__}.{name} has no entry in the Attributes: section of its docstring "
                       "(src/hubbub/config.py)")
        if name in done:
            continue
        shared, text = docs[name]
        together = [n for n in shared if n in names]
        done |= set(together)
        out.append(f"- {', '.join(f'**`{n}`**' for n in together)}: {text}")
    return out


def render() -> str:
    fields = {f.name: f for f in dataclasses.fields(Config)}
    ns_fields = {f.name: f for f in dataclasses.fields(NamespaceOptions)}
    grouped = [name for _, names in GROUPS.values() for name in names]
    missing = [n for n in fields if n not in grouped]
    if missing or len(grouped) != len(set(grouped)) or set(grouped) - set(fields):
        raise Stop(f"tools/gen_config_docs.py GROUPS must name every Config setting once: missing {missing}, "
                   f"unknown {sorted(set(grouped) - set(fields))}")
    no_unit = [n for n in [*fields, *ns_fields] if n not in UNITS]
    if no_unit:
        raise Stop(f"tools/gen_config_docs.py UNITS has no unit for {no_unit} ('' if none applies)")
    untyped = [f"{f.name}: {f.type}" for f in [*fields.values(), *ns_fields.values()] if str(f.type) not in TYPES]
    if untyped:
        raise Stop(f"tools/gen_config_docs.py TYPES does not know {untyped}")
    docs, ns_docs = attributes(Config), attributes(NamespaceOptions)
    flags, other_flags = serve_flags()
    defaults, ns_defaults = Config(), NamespaceOptions()
    env = config.ENV_PREFIX

    out = [
        "# Settings reference",
        "",
        "Generated from `hubbub.config.Config` by `tools/gen_config_docs.py`; do not edit "
        "(`tests/test_docs.py` fails when it is stale).",
        "",
        "Every setting of `hubbub serve`, grouped by topic, with its type, default, unit, TOML key, "
        "environment variable and command-line flag. A setting comes from, in order of precedence:",
        "",
        "1. a flag of `hubbub serve` (only some settings have one);",
        f"2. an environment variable `{env}<SETTING>` (the name in capitals: `{env}API_KEY`); a list is "
        "comma-separated (`a,b`), a boolean is `true`/`false` (also `1`/`0`, `yes`/`no`, `on`/`off`). "
        "A variable that names no setting stops the server with an error;",
        "3. a TOML file, `hubbub serve --config hub.toml` (check it with `hubbub check-config hub.toml`), "
        "whose top-level keys are the settings' names;",
        "4. the defaults below.",
        "",
        "In Python, `hubbub.App(...)` takes the same names as keyword arguments "
        "(`hubbub.App(ping_interval=10)`), or a TOML file (`hubbub.App(\"hub.toml\")`); an `App` reads no "
        f"`{env}*` variables itself. Units are seconds and bytes unless the table says otherwise; "
        "numbers may not be negative.",
        "",
        "```toml",
        "# hub.toml",
        'host = "0.0.0.0"',
        'broker = "redis://127.0.0.1:6379/0"',
        'token_hmac_secret = "a long random secret"',
        'api_key = "another long random secret"',
        "",
        "[channels]           # channels without ':'",
        "history_size = 100",
        "history_ttl = 300",
        "",
        "[namespaces.chat]    # channels chat:...",
        "presence = true",
        "join_leave = true",
        "```",
        "",
        "## Contents",
        "",
    ]
    out += [f"- [{title}](#{_anchor(title)})" for title in GROUPS]
    out += ["- [Namespace options](#namespace-options)", "- [Proxy options](#proxy-options)", "- [Flags that are not settings](#flags-that-are-not-settings)",
            ""]
    for title, (about, names) in GROUPS.items():
        out += [f"## {title}", "", about, "",
                "| setting (TOML key) | type | default | unit | environment variable | flag of `hubbub serve` |",
                "|---|---|---|---|---|---|"]
        for name in names:
            f = fields[name]
            table = name in TABLE_KEYS
            key = TABLE_KEYS.get(name, f"`{name}`")
            variable = "none" if table else f"`{env}{name.upper()}`"
            flag = f"`{flags[name]}`" if name in flags else "none"
            out.append(f"| {key} | {TYPES[str(f.type)]} | {with_size(getattr(defaults, name), UNITS[name])} "
                       f"| {UNITS[name]} | {variable} | {flag} |")
        out.append("")
        out += describe(Config, names, docs)
        out.append("")

    out += [
        "## Namespace options",
        "",
        "The keys of `[channels]` and of each `[namespaces.NAME]` table (`hubbub.config.NamespaceOptions`). "
        "They have no environment variables and no flags: put them in a TOML file, or pass "
        "`channels=NamespaceOptions(...)` and `namespaces={\"NAME\": NamespaceOptions(...)}` to `hubbub.App`.",
        "",
        "| key | type | default | unit |",
        "|---|---|---|---|",
    ]
    for name, f in ns_fields.items():
        out.append(f"| `{name}` | {TYPES[str(f.type)]} | {with_size(getattr(ns_defaults, name), UNITS[name])} "
                   f"| {UNITS[name]} |")
    out.append("")
    out += describe(NamespaceOptions, list(ns_fields), ns_docs)
    px_fields = {f.name: f for f in dataclasses.fields(ProxyOptions)}
    px_defaults = ProxyOptions()
    out += [
        "",
        "## Proxy options",
        "",
        "The keys of each `[proxies.NAME]` table (`hubbub.config.ProxyOptions`): a proxy that namespaces "
        "(`subscribe_proxy = \"NAME\"`, ...) and `rpc_proxies` name. The name `default` is reserved: it "
        "means the `proxy_<event>_endpoint` setting.",
        "",
        "| key | type | default | unit |",
        "|---|---|---|---|",
    ]
    for name, f in px_fields.items():
        out.append(f"| `{name}` | {TYPES[str(f.type)]} | {with_size(getattr(px_defaults, name), UNITS[name])} "
                   f"| {UNITS[name]} |")
    out.append("")
    out += describe(ProxyOptions, list(px_fields), attributes(ProxyOptions))
    out += ["", "## Flags that are not settings", "",
            "Flags of `hubbub serve` that set no setting (`hubbub serve --help` lists them all):", ""]
    out += [f"- `{flag}`: {text}" if text else f"- `{flag}`" for flag, text in other_flags]
    reserved = ", ".join(f"`{name}`" for name in sorted(config.RESERVED_ENV))
    out += ["", f"These `{env}*` environment variables are not settings, and are not refused: {reserved} "
            "(the worker index that `--workers` gives each process, and the virtual environment of `dev.py`).",
            ""]
    return "\n".join(out)


def _anchor(title: str) -> str:
    """GitHub's anchor of a heading."""
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


def main() -> int:
    try:
        text = render()
    except Stop as exc:
        print(f"gen_config_docs: {exc}", file=sys.stderr)
        return 2
    if "--check" in sys.argv:
        if not OUT.exists() or OUT.read_text() != text:
            print("docs/configuration.md is stale: run tools/gen_config_docs.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT.relative_to(ROOT)} ({len(text.splitlines())} lines)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
