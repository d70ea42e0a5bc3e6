"""The plain relay at ``/ws/{channel}``, as a sans-I/O session.

Every text or binary message a relay client sends is published to
``{channel}``; every publication in ``{channel}`` reaches every relay client
of that channel (the sender too, unless it connected with ``?echo=false``) as
one WebSocket message:

* a relay message arrives as it was sent: text stays text, binary stays binary;
* a publication from a protocol client or the HTTP API arrives as its JSON
  ``data``, in a text message.

Protocol subscribers of the same channel see relay text as its JSON value when
it is valid JSON and as a JSON string otherwise; binary messages reach them as
a JSON string holding the bytes in base64.
"""

from __future__ import annotations

import base64
import json
import uuid

from .brokers.base import ClientInfo, Publication
from .config import NamespaceOptions
from .errors import Disconnect, ProtocolError
from .hub import Hub, Subscriber
from .outbox import FrameEncoder, Outbox
from .session import loads
from .codes import DisconnectCode


class RelayWire:
    """Encodes publications for relay clients: the payload alone, one frame."""

    __slots__ = ("frames",)

    def __init__(self, frames: FrameEncoder) -> None:
        self.frames = frames

    def encode_publication(self, channel: str, pub: Publication) -> bytes:
        if pub.raw is None:
            return self.frames.text(pub.data)
        if pub.binary:
            return self.frames.binary(pub.raw)
        return self.frames.text(pub.raw)

    def encode_join(self, channel: str, info: ClientInfo) -> None:
        return None

    def encode_leave(self, channel: str, info: ClientInfo) -> None:
        return None


def relay_publication(payload: bytes, *, binary: bool) -> Publication:
    """The publication for one relay message (see the module docstring)."""
    if binary:
        return Publication(
            json.dumps(base64.b64encode(payload).decode()).encode(), raw=payload, binary=True
        )
    text = payload.decode()  # the connection checked UTF-8
    try:
        loads(text)
    except ValueError:
        return Publication(json.dumps(text, ensure_ascii=False).encode(), raw=payload)
    return Publication(payload)


class RelaySession:
    """One relay client on ``/ws/{channel}``.

    Args:
        hub: the node's hub.
        out: the connection's output.
        wire: the relay wire (shared by every relay connection).
        channel: the channel of the path.
        echo: whether the client receives its own messages.
    """

    def __init__(self, hub: Hub, out: Outbox, wire: RelayWire, channel: str, *, echo: bool = True) -> None:
        self.hub = hub
        self.out = out
        self.channel = channel
        self.echo = echo
        self.client_id = str(uuid.uuid4())
        self.closed = False
        self.subscribed = False
        self.pong_expected = False
        self._subscriber = Subscriber(self.client_id, wire, out.deliver, self._disconnect_code)

    def _disconnect_code(self, code: int) -> None:
        self.disconnect(code)

    async def open(self) -> None:
        """Subscribe to the channel. Closes the connection if that fails."""
        try:
            ns = self._namespace()
            await self.hub.subscribe(self.channel, self._subscriber, ns=ns)
        except (ProtocolError, Disconnect) as exc:
            self._refused(exc)
            return
        self._subscribed()

    def open_nowait(self) -> bool:
        """:meth:`open` without waiting, if the hub can subscribe at once
        (:meth:`Hub.subscribe_nowait`); False means :meth:`open` must run."""
        try:
            ns = self._namespace()
            if self.hub.subscribe_nowait(self.channel, self._subscriber, ns=ns) is None:
                return False
        except (ProtocolError, Disconnect) as exc:
            self._refused(exc)
            return True
        self._subscribed()
        return True

    def _namespace(self) -> NamespaceOptions:
        ns = self.hub.namespace(self.channel)
        if not ns.allow_subscribe_for_client:
            raise Disconnect(DisconnectCode.PERMISSION_DENIED)
        return ns

    def _refused(self, exc: ProtocolError | Disconnect) -> None:
        if isinstance(exc, ProtocolError):
            self.disconnect(1013 if exc.temporary else DisconnectCode.BAD_REQUEST, exc.message)
        else:
            self.disconnect(exc.code, exc.reason)

    def _subscribed(self) -> None:
        if self.closed:
            self.hub.unsubscribe(self.channel, self.client_id)
        else:
            self.subscribed = True

    async def handle_message(self, payload: bytes, binary: bool) -> None:
        """Publish one message to the channel. A failed publish closes the
        connection with 1011 (the client cannot tell which message was lost
        otherwise)."""
        if self.closed:
            return
        ns = self.hub.config.namespace(self.channel)
        if ns is not None and not ns.allow_publish_for_client:
            self.disconnect(DisconnectCode.PERMISSION_DENIED)
            return
        pub = relay_publication(payload, binary=binary)
        if not self.echo:
            pub.exclude_client = self.client_id
        try:
            await self.hub.publish(self.channel, pub, source="relay")
        except ProtocolError as exc:
            self.disconnect(1013 if exc.temporary else DisconnectCode.BAD_REQUEST, exc.message)

    def ping(self) -> None:
        """Send a WebSocket ping (called by the server's shared ping timer)."""
        if not self.closed:
            self.pong_expected = True
            self.out.send_ping()

    def check_pong(self) -> None:
        """Close with 1011 if the last ping went unanswered."""
        if self.pong_expected and not self.closed:
            self.disconnect(1011, "keepalive ping timeout")

    def disconnect(self, code: int, reason: str = "") -> None:
        if not self.closed:
            self.closed = True
            self.out.close(code, reason)

    def on_closed(self) -> None:
        self.closed = True
        if self.subscribed:
            self.subscribed = False
            self.hub.unsubscribe(self.channel, self.client_id)
