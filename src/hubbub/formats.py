"""Which codec a client asked for: WebSocket subprotocols, the ``format`` and
``cf_protocol`` query parameters, and the body's ``Content-Type`` on the HTTP transports
(centrifugal.dev ``docs/transports/websocket.md``; docs/design.md, "The codec seam").
The codecs themselves (:mod:`hubbub.codec`, :mod:`hubbub.protobuf_codec`) do not know
each other."""

from __future__ import annotations

from collections.abc import Mapping

from .codec import JSON, Codec
from .errors import BadRequest
from .protobuf_codec import PROTOBUF

#: WebSocket subprotocols of ``/connection/websocket`` and their codecs, in the
#: order a server prefers them.
SUBPROTOCOLS: dict[str, Codec] = {"centrifuge-protobuf": PROTOBUF, "centrifuge-json": JSON}

#: Values of the ``format`` and ``cf_protocol`` query parameters.
FORMATS: dict[str, Codec] = {"json": JSON, "protobuf": PROTOBUF}

#: The ``Content-Type`` of a binary (Protobuf) request body on the HTTP transports.
BINARY_CONTENT_TYPE = "application/octet-stream"


def negotiate(query: Mapping[str, str], headers: Mapping[str, str]) -> tuple[Codec, str | None]:
    """The codec of a protocol connection and the subprotocol to answer in the ``101``.

    Args:
        query: the upgrade's query parameters (``format``, ``cf_protocol``).
        headers: its headers, lower-case names (``sec-websocket-protocol``:
            the offered subprotocols, comma-separated).

    Returns:
        ``(codec, subprotocol)``: the first offered subprotocol hubbub speaks
        (:data:`SUBPROTOCOLS`) and its codec, else the codec of the query
        parameter, else JSON; ``subprotocol`` is ``None`` when none was offered.

    Raises:
        BadRequest: subprotocols were offered and none is spoken here; an
            unknown ``format``/``cf_protocol`` value; a query parameter that
            contradicts the subprotocol or the other parameter. The server
            answers it with HTTP 400 and this message at the handshake.
    """
    offered = [p.strip() for p in headers.get("sec-websocket-protocol", "").split(",") if p.strip()]
    codec: Codec | None = None
    subprotocol: str | None = None
    if offered:
        for name in offered:
            if name in SUBPROTOCOLS:
                subprotocol, codec = name, SUBPROTOCOLS[name]
                break
        else:
            raise BadRequest(f"unsupported WebSocket subprotocol {', '.join(offered)}; "
                             f"/connection/websocket speaks {', '.join(SUBPROTOCOLS)}")
    for key in ("format", "cf_protocol"):
        value = query.get(key)
        if value is None:
            continue
        chosen = FORMATS.get(value.lower())
        if chosen is None:
            raise BadRequest(f"unknown {key}={value!r}; use {key}=json or {key}=protobuf")
        if codec is not None and chosen is not codec:
            raise BadRequest(f"{key}={value} contradicts the protocol already chosen ({codec.name})")
        codec = chosen
    return codec or JSON, subprotocol


def for_body(headers: Mapping[str, str]) -> Codec:
    """The codec of an HTTP request's body (lower-case header names): Protobuf for
    :data:`BINARY_CONTENT_TYPE`, JSON otherwise (centrifuge-js's emulation transports)."""
    if headers.get("content-type", "").startswith(BINARY_CONTENT_TYPE):
        return PROTOBUF
    return JSON


__all__ = ["BINARY_CONTENT_TYPE", "FORMATS", "SUBPROTOCOLS", "for_body", "negotiate"]
