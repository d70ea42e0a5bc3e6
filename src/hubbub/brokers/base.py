"""The broker contract, and the values that cross it.

A broker moves publications between nodes and keeps each channel's stream
and presence; a node uses one broker, and the hub is its only caller. Every
broker passes ``tests/test_broker_contract.py``.

See ``docs/design.md``, "The broker contract".
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ..stats import Stats
from ..strictjson import dumps, loads


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """Who a connection is: the protocol's ``ClientInfo``.

    Attributes:
        client: connection id.
        user: user id (``""`` for anonymous).
        conn_info: JSON-encoded connection info (``None`` when absent).
        chan_info: JSON-encoded channel info (``None`` when absent).
    """

    client: str
    user: str = ""
    conn_info: bytes | None = None
    chan_info: bytes | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"user": self.user, "client": self.client}
        if self.conn_info is not None:
            out["conn_info"] = loads(self.conn_info)
        if self.chan_info is not None:
            out["chan_info"] = loads(self.chan_info)
        return out

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> ClientInfo:
        def enc(v: Any) -> bytes | None:
            return None if v is None else dumps(v)

        return cls(raw["client"], raw.get("user", ""), enc(raw.get("conn_info")), enc(raw.get("chan_info")))


@dataclass(slots=True)
class Publication:
    """One message published to a channel.

    Attributes:
        data: the payload as JSON text (bytes). The protocol embeds it as the
            ``data`` value (JSON mode has no base64).
        offset: position in the channel's stream (0 when the channel has no
            history).
        info: the publisher, when a client published.
        raw: the payload as a relay client sent it, when that differs from
            ``data`` (text that is not JSON, or binary). Relay clients receive
            ``raw`` when set, else ``data``.
        binary: ``raw`` came in a binary WebSocket message.
        exclude_client: id of a connection that must not receive it.
        tags: string tags, as in the protocol's ``Publication.tags``.
        epoch: the epoch of the stream ``offset`` belongs to (``""`` without
            history). Brokers carry it with every delivered publication, so a
            node can tell a new stream's offsets from the old one's (an
            offset alone cannot: a restarted Redis counts from 1 again).
        delta: the publication may reach delta subscribers as a Fossil delta
            against the channel's previous publication (the publish API's
            ``delta``, or the namespace's ``delta_publish``).
    """

    data: bytes
    offset: int = 0
    info: ClientInfo | None = None
    raw: bytes | None = None
    binary: bool = False
    exclude_client: str | None = None
    tags: dict[str, str] | None = None
    epoch: str = ""
    delta: bool = False

    def value(self) -> Any:
        """``data`` decoded (a JSON value; relay text that is not JSON is a string)."""
        return loads(self.data)

    def to_json(self) -> dict[str, Any]:
        """The protocol's ``Publication`` object (for replies, not the hot path)."""
        out: dict[str, Any] = {"data": loads(self.data)}
        if self.offset:
            out["offset"] = self.offset
        if self.info is not None:
            out["info"] = self.info.to_json()
        if self.tags:
            out["tags"] = self.tags
        return out


@dataclass(frozen=True, slots=True)
class StreamPosition:
    """A position in a channel's stream: ``offset`` within ``epoch``."""

    offset: int = 0
    epoch: str = ""


@dataclass(frozen=True, slots=True)
class HistoryResult:
    """Publications read from a stream, and the stream's current top."""

    publications: list[Publication]
    position: StreamPosition


#: What :meth:`Broker.publish_nowait` calls with the outcome: ``(position, None)`` or ``(None, error)``.
PublishCallback = Callable[["StreamPosition | None", "BaseException | None"], None]


class BrokerEventHandler(Protocol):
    """What a broker calls on its node (the hub implements it)."""

    def on_publication(self, channel: str, pub: Publication) -> None: ...

    def on_join(self, channel: str, info: ClientInfo) -> None: ...

    def on_leave(self, channel: str, info: ClientInfo) -> None: ...

    def on_stream_gap(self, channel: str) -> None: ...

    def on_broker_reconnect(self) -> None: ...


class Broker(abc.ABC):
    """A backend that fans publications out between nodes. See the module docstring."""

    #: Human-readable name for logs and ``/health``.
    name: str = "broker"

    #: Whether publishes started one after another without awaiting each (in
    #: one loop iteration) travel together, in call order (a Redis pipeline).
    #: Sessions then keep several of a client's publishes in flight instead of
    #: waiting a round trip for each; per-channel order is the call order.
    pipelined: bool = False

    _stats: Stats | None = None

    @property
    def stats(self) -> Stats:
        """The counters this broker adds to (``broker_round_trips``,
        ``broker_publications``, ...): the hub's :class:`~hubbub.stats.Stats`
        once the hub set it, else the broker's own."""
        if self._stats is None:
            self._stats = Stats()
        return self._stats

    @stats.setter
    def stats(self, value: Stats) -> None:
        self._stats = value

    @abc.abstractmethod
    async def start(self, handler: BrokerEventHandler) -> None:
        """Connect and start delivering to ``handler``."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop delivering and release connections. Idempotent."""

    @property
    def healthy(self) -> bool:
        """Whether the backend is reachable now."""
        return True

    async def round_trip(self) -> float | None:
        """Seconds one round trip to the backend takes now (the operator's
        dashboard asks once a second), or ``None`` when there is no backend
        to ask (the memory broker).

        Raises:
            BrokerUnavailable: the backend cannot be reached.
        """
        return None

    @abc.abstractmethod
    async def subscribe(self, channel: str) -> None:
        """Start delivering ``channel``'s publications to this node."""

    @abc.abstractmethod
    async def unsubscribe(self, channel: str) -> None:
        """Stop delivering ``channel``'s publications to this node."""

    @abc.abstractmethod
    async def publish(
        self,
        channel: str,
        pub: Publication,
        *,
        history_size: int = 0,
        history_ttl: float = 0.0,
        idempotency_key: str | None = None,
        idempotency_ttl: float = 300.0,
    ) -> StreamPosition:
        """Publish ``pub`` to every node subscribed to ``channel``.

        With ``history_size``/``history_ttl`` the publication is appended to
        the channel's stream first and gets the next offset (``pub.offset`` is
        set). With ``idempotency_key``, a second publish with the same key
        within ``idempotency_ttl`` seconds is not published again and returns
        the first one's position.
        """

    def publish_nowait(
        self,
        channel: str,
        pub: Publication,
        done: PublishCallback,
        *,
        history_size: int = 0,
        history_ttl: float = 0.0,
        idempotency_key: str | None = None,
        idempotency_ttl: float = 300.0,
    ) -> None:
        """Start :meth:`publish` without a task or a future: ``done(position,
        None)`` or ``done(None, error)`` is called once the backend answered
        (``BrokerError`` or ``BrokerUnavailable``), in the loop iteration the
        answer was read. Publishes started one after another keep their order.
        Only :attr:`pipelined` brokers implement it; a session uses it to keep
        many publishes of one client in flight at the cost of a callback each.

        Raises:
            BrokerUnavailable: the backend is known to be unreachable (``done``
                is not called).
            NotImplementedError: the broker is not pipelined.
        """
        raise NotImplementedError(f"{type(self).__name__} does not start publishes without awaiting them")

    @abc.abstractmethod
    async def history(
        self,
        channel: str,
        *,
        since: StreamPosition | None = None,
        limit: int | None = None,
        reverse: bool = False,
        history_ttl: float = 0.0,
    ) -> HistoryResult:
        """Read ``channel``'s stream.

        ``since``: only publications after that offset (in order, oldest first,
        unless ``reverse``). ``limit``: at most that many (``0``: none, only the
        position; ``None``: all). Without ``since`` and with ``reverse`` the
        newest come first.
        """

    @abc.abstractmethod
    async def remove_history(self, channel: str) -> None:
        """Drop ``channel``'s publications (the position is kept)."""

    @abc.abstractmethod
    async def publish_join(self, channel: str, info: ClientInfo) -> None:
        """Deliver a join event for ``channel`` to every subscribed node."""

    @abc.abstractmethod
    async def publish_leave(self, channel: str, info: ClientInfo) -> None:
        """Deliver a leave event for ``channel`` to every subscribed node."""

    @abc.abstractmethod
    async def add_presence(self, channel: str, info: ClientInfo, *, ttl: float) -> None:
        """Add or refresh ``info`` in ``channel``'s presence, expiring after ``ttl`` s."""

    @abc.abstractmethod
    async def remove_presence(self, channel: str, client: str) -> None:
        """Remove connection ``client`` from ``channel``'s presence."""

    @abc.abstractmethod
    async def presence(self, channel: str) -> dict[str, ClientInfo]:
        """The live presence of ``channel``: connection id → :class:`ClientInfo`."""

    async def presence_stats(self, channel: str) -> tuple[int, int]:
        """``(num_clients, num_users)`` of ``channel``'s presence."""
        entries = await self.presence(channel)
        return len(entries), len({info.user for info in entries.values()})
