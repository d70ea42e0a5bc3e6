"""The Redis broker's wire format: names of keys and topics, and the messages on
a channel's topic and in its history list. Pure functions, no I/O.

The header's fields: ``{"i": info, "r": base64 raw, "t": 1 if text, "b": 1 if
binary, "x": exclude_client, "g": tags, "d": 1 if delta}``; ``info`` is ``{"c": client, "u":
user, "ci": conn_info, "hi": chan_info}`` with the JSON infos as strings, or
``"cb"``/``"hb"`` in base64 when they are not UTF-8.

See ``docs/design.md``, "The Redis broker" (the message format, the key layout).
"""

from __future__ import annotations

import base64
import hashlib
import math
import secrets
from typing import Any

from ...strictjson import dumps, loads
from ..base import ClientInfo, Publication


def new_epoch() -> str:
    """A fresh random epoch (8 hex characters)."""
    return secrets.token_hex(4)


def ms(seconds: float) -> int:
    """Seconds as whole milliseconds for ``PEXPIRE``/``PX`` (at least 1)."""
    return max(1, math.ceil(seconds * 1000))


def hash_tagged(channel: str) -> str:
    """``channel`` as it appears in key and topic names on Redis Cluster: with
    a hash tag, so that all of a channel's keys and its sharded pub/sub topic
    live in one slot: ``{C}``, or ``{H}C`` (``H`` a digest of ``C``) when ``C``
    holds a ``}`` (which would end the tag early)."""
    if "}" not in channel:
        return "{" + channel + "}"
    return "{" + hashlib.blake2b(channel.encode(), digest_size=8).hexdigest() + "}" + channel


def untag(name: str) -> str:
    """The inverse of :func:`hash_tagged`."""
    close = name.find("}")
    if not name.startswith("{") or close < 0:
        return name
    return name[1:-1] if close == len(name) - 1 else name[close + 1 :]


class Names:
    """The key and topic names of one broker: prefix ``P``, and hash-tagged
    channel names on Redis Cluster (``tagged``).

    Args:
        prefix: the prefix of every key and topic (not empty).
        tagged: write channel names with a hash tag (:func:`hash_tagged`).
    """

    __slots__ = ("prefix", "tagged", "topic_prefix")

    def __init__(self, prefix: str, tagged: bool) -> None:
        self.prefix = prefix
        self.tagged = tagged
        #: every topic name starts with these bytes
        self.topic_prefix = f"{prefix}.ch.".encode()

    def _name(self, channel: str) -> str:
        return hash_tagged(channel) if self.tagged else channel

    def topic(self, channel: str) -> bytes:
        """``P.ch.C``: the pub/sub topic of ``channel``."""
        return self.topic_prefix + self._name(channel).encode()

    def channel(self, topic: bytes) -> str:
        """The channel of a topic name (the inverse of :meth:`topic`)."""
        name = topic[len(self.topic_prefix) :].decode("utf-8", "replace")
        return untag(name) if self.tagged else name

    def meta(self, channel: str) -> str:
        """``P.meta.C``: the stream's epoch and offset."""
        return f"{self.prefix}.meta.{self._name(channel)}"

    def history(self, channel: str) -> str:
        """``P.history.C``: the stream's publications."""
        return f"{self.prefix}.history.{self._name(channel)}"

    def idempotency(self, channel: str, key: str) -> str:
        """``P.idem.N.C.K``: the position of the first publish with key ``key``."""
        return f"{self.prefix}.idem.{len(channel)}.{self._name(channel)}.{key}"

    def presence(self, channel: str) -> list[str]:
        """``[P.presence.data.C, P.presence.expire.C]``."""
        name = self._name(channel)
        return [f"{self.prefix}.presence.data.{name}", f"{self.prefix}.presence.expire.{name}"]


def _bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")  # what older nodes escaped comes back


def _put_info(out: dict[str, str], key: str, raw: bytes) -> None:
    try:
        out[key + "i"] = raw.decode("utf-8")
    except UnicodeDecodeError:  # not text: base64, so the header stays strict JSON
        out[key + "b"] = base64.b64encode(raw).decode("ascii")


def _get_info(raw: dict[str, str], key: str) -> bytes | None:
    text = raw.get(key + "i")
    if text is not None:
        return _bytes(text)
    b64 = raw.get(key + "b")
    return None if b64 is None else base64.b64decode(b64)


def info_to_wire(info: ClientInfo) -> dict[str, str]:
    """``info`` as the compact JSON object used on the wire and in presence."""
    out = {"c": info.client}
    if info.user:
        out["u"] = info.user
    if info.conn_info is not None:
        _put_info(out, "c", info.conn_info)
    if info.chan_info is not None:
        _put_info(out, "h", info.chan_info)
    return out


def info_from_wire(raw: dict[str, str]) -> ClientInfo:
    """The inverse of :func:`info_to_wire`.

    Raises:
        KeyError, TypeError, ValueError: ``raw`` is not such an object.
    """
    return ClientInfo(raw["c"], raw.get("u", ""), _get_info(raw, "c"), _get_info(raw, "h"))


#: Message headers encoded and decoded lately (a publisher's headers repeat):
#: at most this many of each are kept, then the caches start again.
HEADER_CACHE = 4096
_encoded_headers: dict[tuple[Any, ...], bytes] = {}
_decoded_headers: dict[bytes, tuple[ClientInfo | None, bool, str | None, bool, bool]] = {}


def encode_body(pub: Publication) -> bytes:
    """``<header>\\n<payload>`` of ``pub``: the message without its type and offset.

    The payload is ``data``, or for a relay text message (``t``: ``data`` is
    the JSON string of the text ``raw``) ``raw`` itself, so that it travels
    once. The header is compact JSON: ``i`` the publisher's info, ``r`` other
    ``raw`` in base64, ``t``, ``b`` binary, ``x`` the excluded client, ``g``
    tags, ``d`` marked for delta. Headers without ``r`` or ``g`` are the same for every message of a
    publisher, and encoded once.

    Raises:
        ValueError: the header cannot be strict JSON (a tag holding a lone surrogate).
    """
    text = pub.raw is not None and not pub.binary and _is_text_of(pub.data, pub.raw)
    payload = pub.raw if text and pub.raw is not None else pub.data
    if pub.tags is None and (pub.raw is None or text):
        key = (pub.info, pub.binary, pub.exclude_client, text, pub.delta)
        head = _encoded_headers.get(key)
        if head is None:
            head = _encode_header(pub, text)
            if len(_encoded_headers) >= HEADER_CACHE:
                _encoded_headers.clear()
            _encoded_headers[key] = head
        return head + b"\n" + payload
    return _encode_header(pub, text) + b"\n" + payload


def _is_text_of(data: bytes, raw: bytes) -> bool:
    """Whether ``data`` is the JSON string of the text ``raw`` (a relay text message)."""
    if data[:1] != b'"':
        return False
    try:
        return data == dumps(raw.decode("utf-8"))
    except ValueError:  # not UTF-8 (UnicodeDecodeError), or a lone surrogate
        return False


def _encode_header(pub: Publication, text: bool) -> bytes:
    header: dict[str, Any] = {}
    if pub.info is not None:
        header["i"] = info_to_wire(pub.info)
    if text:
        header["t"] = 1
    elif pub.raw is not None:
        header["r"] = base64.b64encode(pub.raw).decode("ascii")
    if pub.binary:
        header["b"] = 1
    if pub.exclude_client is not None:
        header["x"] = pub.exclude_client
    if pub.tags:
        header["g"] = pub.tags
    if pub.delta:
        header["d"] = 1
    return dumps(header) if header else b"{}"


def encode_event(kind: bytes, info: ClientInfo) -> bytes:
    """A join (``kind`` ``b"j"``) or leave (``b"l"``) message."""
    return kind + b"0:" + dumps({"i": info_to_wire(info)}) + b"\n"


def decode_message(msg: bytes) -> tuple[bytes, Publication | ClientInfo]:
    """Split a wire message into its type and its :class:`Publication` (type
    ``b"p"``) or :class:`ClientInfo` (``b"j"``/``b"l"``).

    Raises:
        ValueError, KeyError, TypeError: ``msg`` is not in the wire format.
    """
    colon = msg.index(b":")
    newline = msg.index(b"\n", colon)
    kind = msg[:1]
    position = msg[1:colon]
    at = position.find(b"@")
    epoch = ""
    if at >= 0:
        epoch = position[at + 1 :].decode("ascii")
        position = position[:at]
    head = msg[colon + 1 : newline]
    if kind != b"p":
        return kind, info_from_wire(loads(head)["i"])
    payload = msg[newline + 1 :]
    known = _decoded_headers.get(head)
    if known is not None:  # a header seen lately: no JSON parse
        info, binary, exclude, text, delta = known
        return kind, Publication(
            data=dumps(payload.decode("utf-8")) if text else payload,
            offset=int(position),
            info=info,
            raw=payload if text else None,
            binary=binary,
            exclude_client=exclude,
            epoch=epoch,
            delta=delta,
        )
    header: dict[str, Any] = loads(head) if head != b"{}" else {}
    raw = header.get("r")
    wire_info = header.get("i")
    info = None if wire_info is None else info_from_wire(wire_info)
    binary = bool(header.get("b"))
    exclude = header.get("x")
    text = bool(header.get("t"))
    delta = bool(header.get("d"))
    if raw is None and "g" not in header:
        if len(_decoded_headers) >= HEADER_CACHE:
            _decoded_headers.clear()
        _decoded_headers[head] = (info, binary, exclude, text, delta)
    return kind, Publication(
        data=dumps(payload.decode("utf-8")) if text else payload,
        offset=int(position),
        info=info,
        raw=payload if text else (None if raw is None else base64.b64decode(raw)),
        binary=binary,
        exclude_client=exclude,
        tags=header.get("g"),
        epoch=epoch,
        delta=delta,
    )
