"""The hub: channels, their local subscribers, and fan-out.

The hub sits between the sessions of one node and the broker. It never touches
sockets: a subscriber is a ``deliver(frame)`` callable and a :class:`Wire` that
says how to encode a push for it.

See ``docs/design.md``, "The write path" (1 and 2: encode once, shared
:class:`~hubbub.outbox.FrameBatch` per iteration) and "Layers" (hub).
"""

from __future__ import annotations

import asyncio
import bisect
import logging
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from . import fossil
from .brokers.base import Broker, ClientInfo, HistoryResult, Publication, PublishCallback, StreamPosition
from .codes import DisconnectCode, ErrorCode
from .config import RECOVERY_MODE_CACHE, Config, NamespaceOptions
from .errors import BrokerError, NotStarted, ProtocolError
from .outbox import FrameBatch
from .stats import Stats
from .strictjson import encode_data
from .validation import channel_name

log = logging.getLogger("hubbub.hub")

#: A subscriber whose recovery buffer passes this many publications is told 3010.
MAX_RECOVERY_BUFFER = 10_000

#: What to start, in :class:`~hubbub.errors.NotStarted`'s message.
_START_HINT = (
    "start it first: serve the app (`hubbub run MODULE:APP`, `app.serve()`, or `await app.start()`), or "
    "serve it with an ASGI server that sends lifespan events (uvicorn, hypercorn; "
    "`FastAPI(lifespan=app.lifespan)`, `async with app.lifespan():`); a Hub of your own: `await hub.start()`"
)


class Wire(Hashable, Protocol):
    """How pushes are encoded for one kind of subscriber (protocol, relay, ...).

    Each method returns the bytes to hand to ``deliver`` (typically a whole
    WebSocket frame), or ``None`` when this kind of subscriber does not get
    that push.

    ``joinable``: whether encoded pushes may be joined into one bytes object
    (a :class:`~hubbub.outbox.FrameBatch`): true for WebSocket frames on a
    socket of ours, false for messages handed one by one to another server
    (ASGI).
    """

    joinable: bool

    def encode_publication(self, channel: str, pub: Publication) -> bytes | None: ...

    def encode_join(self, channel: str, info: ClientInfo) -> bytes | None: ...

    def encode_leave(self, channel: str, info: ClientInfo) -> bytes | None: ...


class DeltaWire(Wire, Protocol):
    """The wire of subscribers that negotiated a Fossil delta (the protocol's
    ``delta: "fossil"``). ``encode_publication`` gives a publication in full, in
    the form these subscribers read (``delta`` false); :meth:`encode_delta` the
    delta from the previous one.
    """

    def encode_publication(self, channel: str, pub: Publication) -> bytes: ...

    def encode_delta(self, channel: str, pub: Publication, prev: Publication,
                     patch: Callable[[bytes, bytes], bytes | None]) -> bytes:
        """``pub`` as the delta from ``prev``. ``patch(old, new)`` is the Fossil delta
        of two byte strings, or ``None`` when it is not smaller than ``new`` (then
        ``pub`` goes in full); the hub makes each delta once per publication,
        whatever the number of wires asking."""
        ...


class _Patcher:
    """``patch(old, new)`` for one publication: the Fossil delta, made once per
    pair of byte strings (a JSON and a Protobuf wire share it), ``None`` when not
    smaller than ``new`` (Centrifugo sends the publication in full then: hub.go)."""

    __slots__ = ("_made",)

    def __init__(self) -> None:
        self._made: dict[tuple[int, int], bytes | None] = {}

    def __call__(self, old: bytes, new: bytes) -> bytes | None:
        key = (id(old), id(new))  # both alive while the publication is fanned out
        try:
            return self._made[key]
        except KeyError:
            delta: bytes | None = fossil.create(old, new)
            if delta is not None and len(delta) >= len(new):
                delta = None
            self._made[key] = delta
            return delta


_W = TypeVar("_W", bound=Hashable)


def _remove(group: dict[_W, dict[str, Subscriber]] | None, client_id: str) -> bool:
    """Take ``client_id`` out of a subscriber group (and an emptied wire's entry); whether it was there."""
    if not group:
        return False
    for wire, subs in group.items():
        if subs.pop(client_id, None) is not None:
            if not subs:
                del group[wire]
            return True
    return False


@dataclass(eq=False, slots=True)
class Subscriber:
    """One local subscription: who, how to encode for it, where to queue.

    Attributes:
        client_id: connection id (used for exclude-sender and presence).
        wire: the encoder for pushes to this subscriber.
        deliver: queues encoded bytes for sending; must not block or await.
        disconnect: closes the connection with a code (used on stream gaps).
        recoverable: the subscriber tracks the stream position; if this node
            misses publications it is disconnected with 3010 to recover.
        delta: the wire of a subscriber that negotiated a Fossil delta (then
            ``wire`` is it too), ``None`` for the others.
    """

    client_id: str
    wire: Wire
    deliver: Callable[[bytes | FrameBatch], None]
    disconnect: Callable[[int], None]
    recoverable: bool = False
    delta: DeltaWire | None = None


@dataclass(slots=True)
class SubscribeResult:
    """What :meth:`Hub.subscribe` found in the channel's stream.

    Attributes:
        position: the stream's top after the subscription started.
        publications: missed publications to include in the subscribe reply
            (recovery), oldest first.
        recovered: whether ``publications`` are all that the client missed
            (cache recovery mode: whether ``publications`` hold the channel's
            latest publication, or the client's position is the top already).
        late: publications that arrived while the stream was read and that
            the client must get as pushes right after the subscribe reply.
    """

    position: StreamPosition = StreamPosition()
    publications: list[Publication] = field(default_factory=list)
    recovered: bool = False
    late: list[Publication] = field(default_factory=list)


@dataclass(slots=True, eq=False)
class _StreamRead:
    """One stream read shared by the subscribers of a channel that joined it
    before it was sent to the broker (each had its publication buffer started by
    then). ``since``: the smallest offset among its recovering joiners (``None``
    while it has none: a position-only read, ``limit=0``)."""

    done: asyncio.Future[HistoryResult]
    since: int | None = None


def _offset(pub: Publication) -> int:
    return pub.offset


@dataclass(slots=True)
class _Channel:
    by_wire: dict[Wire, dict[str, Subscriber]] = field(default_factory=dict)
    buffering: dict[str, list[Publication]] = field(default_factory=dict)
    ready: asyncio.Future[None] | None = None
    count: int = 0
    last_offset: int = 0  # last offset this node saw (detects broker gaps)
    #: last offset this node's pub/sub delivered (``last_offset`` also moves with stream
    #: reads at subscribe time, which may run ahead of delivery)
    delivered: int = 0
    epoch: str = ""  # the stream's epoch when last_offset was read ("" after a gap)
    #: client -> offset it already has from the stream read at subscribe time while
    #: this node's pub/sub delivery lagged behind; publications up to it are skipped
    skip: dict[str, int] = field(default_factory=dict)
    #: the open FrameBatch per wire: publications of this iteration are appended to it
    batches: dict[Wire, FrameBatch] = field(default_factory=dict)
    #: delta subscribers that hold the channel's previous publication: they get deltas
    #: (``None`` until the channel has delta subscribers: memory per channel)
    delta: dict[DeltaWire, dict[str, Subscriber]] | None = None
    #: delta subscribers whose next publication is sent in full (just subscribed, or missed one)
    pending: dict[DeltaWire, dict[str, Subscriber]] | None = None
    #: the last publication fanned out, kept while there are delta subscribers
    prev: Publication | None = None
    #: the stream read that subscribers may still join (not sent to the broker yet)
    open_read: _StreamRead | None = None
    #: whether the channel's reader task runs (it sends ``open_read``, one read at a time)
    reading: bool = False

    def groups(self) -> Iterator[tuple[Wire, dict[str, Subscriber]]]:
        """Every subscriber group: plain by wire, then delta, then pending delta."""
        yield from self.by_wire.items()
        if self.delta:
            yield from self.delta.items()
        if self.pending:
            yield from self.pending.items()


class Hub:
    """Channels and local subscribers of one node.

    Args:
        config: the hub's settings (namespaces decide history and presence).
        broker: the broker; the hub calls ``broker.start(self)``.
    """

    def __init__(self, config: Config, broker: Broker) -> None:
        self.config = config
        self.broker = broker
        self.stats = Stats()
        broker.stats = self.stats  # the broker counts its round trips here
        self._channels: dict[str, _Channel] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._presence: dict[str, dict[str, ClientInfo]] = {}  # local entries, refreshed by a shared timer
        self._presence_timer: asyncio.TimerHandle | None = None
        self.presence_ttl = config.presence_ttl
        #: connected client sessions by user id (for the server API)
        self.sessions: dict[str, dict[str, Any]] = {}
        #: connected clients of this node, whatever their way in
        self.clients = 0
        #: reserved internal channels (the cluster's control channels, :mod:`hubbub.cluster`):
        #: their publications go to the handler, never to subscribers
        self.internal: dict[str, Callable[[Publication], None]] = {}
        #: between :meth:`start` and :meth:`close`: publishing works only then
        self.running = False
        self._stopped = False

    # -- life cycle ---------------------------------------------------------

    async def start(self) -> None:
        """Start the broker and the shared presence refresh timer."""
        await self.broker.start(self)
        self.running, self._stopped = True, False
        self._schedule_presence_refresh()

    async def close(self) -> None:
        """Finish background work and close the broker."""
        if self.running:
            self.running, self._stopped = False, True
        if self._presence_timer is not None:
            self._presence_timer.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=5.0)
        for task in list(self._tasks):
            task.cancel()
        await self.broker.close()

    def _spawn(self, coro: object, what: str) -> None:
        """Run broker side work owned by the hub; failures are logged."""

        async def run() -> None:
            try:
                await coro  # type: ignore[misc]
            except BrokerError as exc:
                log.warning("broker error during %s: %s", what, exc)
            except Exception:
                log.exception("error during %s", what)

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _check_running(self, what: str) -> None:
        """Raise :class:`NotStarted` (what to start) unless the hub runs."""
        if not self.running:
            state = "was stopped" if self._stopped else "was never started"
            raise NotStarted(f"cannot {what}: the hub is not running (it {state}), so nothing would receive "
                             f"or store it; {_START_HINT}")

    # -- namespaces ---------------------------------------------------------

    def namespace(self, channel: Any) -> NamespaceOptions:
        """The options of ``channel``'s namespace (validating the name).

        Raises:
            BadRequest: 107 for an invalid channel name (:func:`hubbub.validation.channel_name`).
            ProtocolError: 102 for an unknown namespace.
        """
        ns = self.config.namespace(channel_name(channel, self.config.channel_max_length))
        if ns is None:
            raise ProtocolError(ErrorCode.UNKNOWN_CHANNEL)
        return ns

    # -- publishing ---------------------------------------------------------

    async def publish(
        self,
        channel: str,
        pub: Publication | Any,
        *,
        idempotency_key: str | None = None,
        source: str = "app",
    ) -> StreamPosition:
        """Publish ``pub`` to ``channel`` on every node.

        Args:
            channel: the channel name (validated).
            pub: a :class:`Publication`, or any JSON value to publish as its data.
            idempotency_key: a publish with the same key within
                ``idempotency_ttl`` seconds returns the first one's position
                and publishes nothing.
            source: client, api, relay or app; labels the publication in metrics.

        A publication marked ``delta`` (or any, in a namespace with
        ``delta_publish``) reaches subscribers that negotiated a Fossil delta as
        the delta from the channel's previous publication.

        Returns the publication's stream position (offset 0 without history).

        Raises:
            BadRequest: 107 for an invalid channel name, or data that is not
                strict JSON (NaN, Infinity, a lone surrogate).
            ProtocolError: 102 unknown namespace; 100 (temporary) when the
                broker failed, in which case the publication was not accepted.
            NotStarted: the hub is not running (never started, or stopped);
                the message says what to start.
        """
        self._check_running(f"publish to {channel!r}")
        ns = self.namespace(channel)
        if not isinstance(pub, Publication):
            pub = Publication(encode_data(pub))
        if ns.delta_publish:
            pub.delta = True
        try:
            position = await self.broker.publish(channel, pub, **self._stream_options(ns, idempotency_key))
        except BrokerError as exc:
            raise self._broker_failed(exc) from exc
        self.stats.publications[source] += 1
        return position

    def publish_nowait(self, channel: str, pub: Publication, done: PublishCallback, *, source: str = "app") -> None:
        """Start :meth:`publish` on a pipelined broker
        (:meth:`~hubbub.brokers.base.Broker.publish_nowait`) without a task:
        ``done(position, None)`` once the broker answered, or ``done(None,
        error)`` with the ``ProtocolError`` :meth:`publish` would raise (100,
        temporary, when the broker failed).

        Raises:
            BadRequest, ProtocolError, NotStarted: as :meth:`publish`, before
                anything is sent (``done`` is not called).
        """
        self._check_running(f"publish to {channel!r}")
        ns = self.namespace(channel)
        if ns.delta_publish:
            pub.delta = True
        stats = self.stats

        def finished(position: StreamPosition | None, exc: BaseException | None) -> None:
            if exc is None:
                stats.publications[source] += 1
                done(position, None)
            elif isinstance(exc, BrokerError):
                done(None, self._broker_failed(exc))
            else:
                done(None, exc)

        try:
            self.broker.publish_nowait(channel, pub, finished, **self._stream_options(ns, None))
        except BrokerError as exc:
            raise self._broker_failed(exc) from exc

    def _stream_options(self, ns: NamespaceOptions, idempotency_key: str | None) -> dict[str, Any]:
        """A publish's stream settings for the broker: the namespace's history, the node's idempotency TTL."""
        return {
            "history_size": ns.history_size,
            "history_ttl": ns.history_ttl,
            "idempotency_key": idempotency_key,
            "idempotency_ttl": self.config.idempotency_ttl,
        }

    def _broker_failed(self, exc: BrokerError) -> ProtocolError:
        """Count a broker failure; the error clients get for it (100, temporary)."""
        self.stats.broker_errors += 1
        return ProtocolError(ErrorCode.INTERNAL, f"broker error: {exc}", temporary=True)

    def position(self, channel: str) -> StreamPosition | None:
        """The last stream position of ``channel`` this node delivered (``None``: the node
        is not subscribed, or the channel has no stream)."""
        state = self._channels.get(channel)
        if state is None or not state.epoch:
            return None
        return StreamPosition(state.last_offset, state.epoch)

    async def history(
        self,
        channel: str,
        *,
        since: StreamPosition | None = None,
        limit: int = 0,
        reverse: bool = False,
        as_objects: bool = False,
    ) -> dict[str, Any]:
        """A channel's history as the protocol's ``HistoryResult``:
        ``{"publications": [...], "epoch": ..., "offset": ...}``.

        ``limit``: at most that many (0: only the position; negative: all).
        ``as_objects``: the publications as :class:`Publication` objects
        (for a codec that encodes them itself, keeping binary data) instead of
        their ``to_json()`` dicts.

        Raises:
            ProtocolError: 108 without history in the namespace; 112 when
                ``since`` names another epoch; 100 (temporary, caused by a
                ``BrokerError``) when the broker failed.
            NotStarted: the hub is not running (never started, or stopped).
        """
        self._check_running(f"read the history of {channel!r}")
        ns = self.namespace(channel)
        if not ns.history:
            raise ProtocolError(ErrorCode.NOT_AVAILABLE)
        try:
            result = await self.broker.history(
                channel, since=since, limit=None if limit < 0 else limit, reverse=reverse,
                history_ttl=ns.history_ttl,
            )
        except BrokerError as exc:
            raise self._broker_failed(exc) from exc
        if since is not None and since.epoch and since.epoch != result.position.epoch:
            raise ProtocolError(ErrorCode.UNRECOVERABLE_POSITION)
        return {
            "publications": result.publications if as_objects else [p.to_json() for p in result.publications],
            "epoch": result.position.epoch,
            "offset": result.position.offset,
        }

    # -- broker events (BrokerEventHandler) -----------------------------------

    def on_publication(self, channel: str, pub: Publication) -> None:
        state = self._channels.get(channel)
        if state is None:
            internal = self.internal.get(channel)
            if internal is not None:
                internal(pub)
            return
        if pub.offset:
            if pub.epoch and state.epoch and pub.epoch != state.epoch:
                # a new stream (Redis lost its data): its offsets say nothing about the
                # old one's; recoverable subscribers are told before anything of it
                self._gap(channel, state)
                state.skip.clear()
            elif state.last_offset and pub.offset > state.last_offset + 1:
                self._gap(channel, state)
            state.last_offset = max(state.last_offset, pub.offset)
            state.delivered = max(state.delivered, pub.offset)
            if not state.epoch:
                state.epoch = pub.epoch
        exclude = pub.exclude_client
        skipped: set[str] | None = None
        if state.skip and pub.offset:
            skipped = {client for client, upto in state.skip.items() if pub.offset <= upto}
            for client, upto in list(state.skip.items()):
                if pub.offset >= upto:  # pub/sub has caught up with what this client got
                    del state.skip[client]
            if exclude is not None:
                skipped.add(exclude)
        elif exclude is not None:
            skipped = {exclude}
        batches = state.batches
        if skipped:  # delivered one by one, after what is already batched
            batches.clear()
        stats = self.stats
        for wire, subs in state.by_wire.items():
            frame = wire.encode_publication(channel, pub)
            if frame is None:
                continue
            stats.deliveries += len(subs)  # once per publication and wire, not per subscriber
            if skipped:
                for client_id, sub in subs.items():
                    if client_id not in skipped:
                        sub.deliver(frame)
                continue
            if not wire.joinable:  # messages that must stay apart (ASGI): no shared batch
                for sub in subs.values():
                    sub.deliver(frame)
                continue
            batch = batches.get(wire)
            if batch is not None and not batch.closed:
                batch.append(frame)  # every subscriber of this wire already has the batch queued
                continue
            batch = batches[wire] = FrameBatch(frame)
            for sub in subs.values():
                sub.deliver(batch)
        if state.delta or state.pending:
            self._fan_out_delta(channel, state, pub, skipped)
        if state.buffering:
            for buffer in state.buffering.values():
                buffer.append(pub)

    def _fan_out_delta(self, channel: str, state: _Channel, pub: Publication, skipped: set[str] | None) -> None:
        """Fan ``pub`` out to the delta subscribers: one delta per publication
        (against the previous one, when the stream's offsets say it is the one
        before), one frame per wire, shared as the plain path shares them.
        A subscriber that does not get ``pub`` (excluded, or it had it from the
        stream read) is sent the next one in full; pending ones get ``pub`` in
        full and hold it from then on. Centrifugo: hub.go (getDeltaPub),
        client.go (flagDeltaAllowed)."""
        prev, state.prev = state.prev, pub
        ready_groups = state.delta
        if ready_groups is None:
            ready_groups = state.delta = {}
        pending = state.pending
        if pending is None:
            pending = state.pending = {}
        usable = (pub.delta and prev is not None and pub.offset > 0 and prev.offset == pub.offset - 1
                  and prev.epoch == pub.epoch)
        patch = _Patcher() if usable else None
        batches = state.batches
        stats = self.stats
        full: dict[DeltaWire, bytes] = {}
        for wire, subs in list(ready_groups.items()):
            if patch is not None and prev is not None:
                frame = wire.encode_delta(channel, pub, prev, patch)
            else:
                frame = full[wire] = wire.encode_publication(channel, pub)
            stats.deliveries += len(subs)
            if skipped and not skipped.isdisjoint(subs):
                batches.pop(wire, None)
                for client_id, sub in list(subs.items()):
                    if client_id in skipped:  # it misses pub: it cannot apply the next delta
                        del subs[client_id]
                        pending.setdefault(wire, {})[client_id] = sub
                    else:
                        sub.deliver(frame)
                if not subs:
                    del ready_groups[wire]
                continue
            if not wire.joinable:
                for sub in subs.values():
                    sub.deliver(frame)
                continue
            batch = batches.get(wire)
            if batch is not None and not batch.closed:
                batch.append(frame)
                continue
            batch = batches[wire] = FrameBatch(frame)
            for sub in subs.values():
                sub.deliver(batch)
        for wire, subs in list(pending.items()):
            frame = full.get(wire) or wire.encode_publication(channel, pub)
            ready = ready_groups.setdefault(wire, {})
            for client_id, sub in list(subs.items()):
                if skipped and client_id in skipped:
                    continue
                sub.deliver(frame)
                stats.deliveries += 1
                ready[client_id] = subs.pop(client_id)
            if not subs:
                del pending[wire]
            if not ready:
                del ready_groups[wire]
            batches.pop(wire, None)  # the group changed: the next publication opens a batch for all of it

    def _fan_out_event(self, channel: str, encode: Callable[[Wire], bytes | None]) -> None:
        state = self._channels.get(channel)
        if state is None:
            return
        state.batches.clear()  # after the publications already queued
        frames: dict[Wire, bytes | None] = {}  # a delta wire's ready and pending groups: one encode
        for wire, subs in state.groups():
            if wire not in frames:
                frames[wire] = encode(wire)
            frame = frames[wire]
            if frame is not None:
                for sub in subs.values():
                    sub.deliver(frame)

    def on_join(self, channel: str, info: ClientInfo) -> None:
        self._fan_out_event(channel, lambda wire: wire.encode_join(channel, info))

    def on_leave(self, channel: str, info: ClientInfo) -> None:
        self._fan_out_event(channel, lambda wire: wire.encode_leave(channel, info))

    def on_stream_gap(self, channel: str) -> None:
        state = self._channels.get(channel)
        if state is not None:
            self._gap(channel, state)

    def _gap(self, channel: str, state: _Channel) -> None:
        """This node missed publications of ``channel``: its recoverable
        subscribers must resubscribe to recover them (3010)."""
        log.warning("missed publications in channel %r; recoverable subscribers reconnect", channel)
        for _, subs in list(state.groups()):
            for sub in list(subs.values()):
                if sub.recoverable:
                    sub.disconnect(DisconnectCode.INSUFFICIENT_STATE)
        state.last_offset = 0
        state.delivered = 0
        state.epoch = ""
        state.prev = None  # the next publication goes in full to delta subscribers
        state.batches.clear()  # what follows must not reach them through a batch they hold

    def on_broker_reconnect(self) -> None:
        """The broker came back: restore this node's presence entries and check
        every channel's stream position."""
        self.stats.broker_reconnects += 1
        self._push_presence()
        for channel, state in list(self._channels.items()):
            ns = self.config.namespace(channel)
            if ns is not None and ns.history:
                self._spawn(self._check_position(channel, state), f"position check of {channel!r}")

    async def _check_position(self, channel: str, state: _Channel) -> None:
        result = await self.broker.history(channel, limit=0)
        top = result.position
        # a stream that was lost and refilled to the same offset has a new epoch
        if top.offset != state.last_offset or (state.epoch and top.epoch != state.epoch):
            self._gap(channel, state)

    # -- subscriptions --------------------------------------------------------

    async def subscribe(
        self,
        channel: str,
        sub: Subscriber,
        *,
        ns: NamespaceOptions,
        info: ClientInfo | None = None,
        recover_since: StreamPosition | None = None,
        positioned: bool = False,
    ) -> SubscribeResult:
        """Add ``sub`` to ``channel`` and, for a channel with history, read
        the stream position and (with ``recover_since``) the missed publications,
        or only the latest one when ``ns.force_recovery_mode`` is ``"cache"``.

        Raises:
            ProtocolError: 105 if ``sub.client_id`` is already subscribed; 100
                (temporary) if the broker failed (nothing was added).
        """
        state = self._channels.get(channel)
        if state is None:
            state = self._channels[channel] = _Channel()
            state.ready = asyncio.get_running_loop().create_future()
            try:
                await self.broker.subscribe(channel)
            except BaseException as exc:
                state.ready.set_exception(ProtocolError(ErrorCode.INTERNAL, "broker error", temporary=True))
                state.ready.exception()  # mark retrieved
                if self._channels.get(channel) is state and state.count == 0:
                    del self._channels[channel]
                if isinstance(exc, BrokerError):
                    raise ProtocolError(ErrorCode.INTERNAL, f"broker error: {exc}", temporary=True) from exc
                raise
            state.ready.set_result(None)
        elif state.ready is not None and not state.ready.done():
            await asyncio.shield(state.ready)
        client_id = sub.client_id
        self._check_not_subscribed(state, client_id)
        state.count += 1  # reserved: the channel stays while we read its stream
        result = SubscribeResult()
        try:
            if ns.history:
                result = await self._read_stream(channel, state, client_id, recover_since,
                                                 cache=ns.force_recovery_mode == RECOVERY_MODE_CACHE)
        except BaseException:
            state.count -= 1
            self._maybe_drop(channel, state)
            raise
        self._add_subscriber(channel, state, sub, ns, info, result)
        return result

    def subscribe_nowait(
        self, channel: str, sub: Subscriber, *, ns: NamespaceOptions, info: ClientInfo | None = None
    ) -> SubscribeResult | None:
        """:meth:`subscribe` without waiting, when nothing must be awaited: the
        broker already has ``channel`` and ``ns`` keeps no history to read.

        Returns None, having changed nothing, when :meth:`subscribe` must be
        awaited instead. Connect storms take this path: no task per subscriber.

        Raises:
            ProtocolError: 105 if ``sub.client_id`` is already subscribed.
        """
        state = self._channels.get(channel)
        if state is None or ns.history or (state.ready is not None and not state.ready.done()):
            return None
        self._check_not_subscribed(state, sub.client_id)
        state.count += 1
        result = SubscribeResult()
        self._add_subscriber(channel, state, sub, ns, info, result)
        return result

    @staticmethod
    def _check_not_subscribed(state: _Channel, client_id: str) -> None:
        # the groups of :meth:`_Channel.groups`, without its generators: once per subscribe
        if client_id in state.buffering:
            raise ProtocolError(ErrorCode.ALREADY_SUBSCRIBED)
        for groups in (state.by_wire, state.delta, state.pending):
            if groups:
                for subs in groups.values():
                    if client_id in subs:
                        raise ProtocolError(ErrorCode.ALREADY_SUBSCRIBED)

    def _add_subscriber(
        self, channel: str, state: _Channel, sub: Subscriber, ns: NamespaceOptions,
        info: ClientInfo | None, result: SubscribeResult,
    ) -> None:
        client_id = sub.client_id
        if result.position.epoch and state.epoch and result.position.epoch != state.epoch:
            self._gap(channel, state)  # a new stream: the others hold positions in the old one
        if sub.delta is not None:  # its first publication goes in full
            if state.pending is None:
                state.pending = {}
            state.pending.setdefault(sub.delta, {})[client_id] = sub
        else:
            state.by_wire.setdefault(sub.wire, {})[client_id] = sub
        state.batches.clear()  # the new subscriber is in none of them
        if result.position.offset > state.delivered:
            # The stream is ahead of this node's pub/sub delivery (Redis: history is
            # read on another connection). What the client got from the read must not
            # reach it again when pub/sub catches up; compared with what pub/sub
            # delivered, not with what other subscribers' reads saw (several
            # subscribers may read the same top before pub/sub delivers it).
            state.skip[client_id] = result.position.offset
            state.last_offset = max(state.last_offset, result.position.offset)
        if not state.epoch:
            state.epoch = result.position.epoch
        if info is not None and ns.presence:
            self._presence.setdefault(channel, {})[client_id] = info
            self._spawn(self.broker.add_presence(channel, info, ttl=self.presence_ttl), "presence add")
        if info is not None and ns.join_leave:
            self._spawn(self.broker.publish_join(channel, info), "join")

    async def _read_stream(
        self, channel: str, state: _Channel, client_id: str, since: StreamPosition | None, *, cache: bool = False
    ) -> SubscribeResult:
        buffer: list[Publication] = []
        state.buffering[client_id] = buffer
        try:
            if since is not None and cache:
                # Cache recovery: the newest publication only, whatever the client's offset.
                history = await self.broker.history(channel, limit=1, reverse=True)
            else:
                history = await self._shared_read(channel, state, since)
        except BrokerError as exc:
            raise ProtocolError(ErrorCode.INTERNAL, f"broker error: {exc}", temporary=True) from exc
        finally:
            state.buffering.pop(client_id, None)
        top = history.position
        if any(p.epoch and p.epoch != top.epoch for p in buffer):  # the stream was replaced meanwhile
            raise ProtocolError(ErrorCode.INTERNAL, "the channel's stream changed while subscribing", temporary=True)
        result = SubscribeResult(position=top)
        if since is not None and cache:
            # As Centrifugo's cache mode: the latest publication if the stream still holds
            # it (its offset is the top); none when the channel has none, recovered then
            # only if the client's position is the top already.
            latest = history.publications[0] if history.publications else None
            if latest is not None:
                result.recovered = latest.offset == top.offset
                if result.recovered:
                    result.publications = [latest]
            else:
                result.recovered = 0 < since.offset == top.offset and since.epoch == top.epoch
        elif since is not None:
            # read from the smallest offset among the read's joiners: this subscriber's own slice
            # (a list of its own; the Publication objects are shared)
            pubs = history.publications
            pubs = pubs[bisect.bisect_right(pubs, since.offset, key=_offset):]
            missed = top.offset - since.offset
            result.recovered = (
                since.epoch in ("", top.epoch)
                and missed >= 0
                and len(pubs) == missed
                and (not pubs or pubs[0].offset == since.offset + 1)
            )
            if result.recovered:
                result.publications = pubs
        late = [p for p in buffer if p.offset > top.offset]
        if len(late) > MAX_RECOVERY_BUFFER:
            raise ProtocolError(ErrorCode.INTERNAL, "too many publications while subscribing", temporary=True)
        result.late = late
        if late:
            result.position = StreamPosition(late[-1].offset, top.epoch)
        return result

    async def _shared_read(self, channel: str, state: _Channel, since: StreamPosition | None) -> HistoryResult:
        """Read ``channel``'s stream for a subscriber whose publication buffer
        is started: its position, and with ``since`` every publication after
        ``since.offset`` (possibly more, from an earlier offset: the caller
        takes its slice).

        Single flight per channel: the subscribers that come while no read is
        sent share the next one (one broker round trip, one decode, the same
        :class:`Publication` objects). A read already sent is never joined: a
        publication between it and a later buffer start would be lost.

        Raises:
            BrokerError: the read failed (every joiner of that read gets it).
        """
        read = state.open_read
        if read is None:
            read = state.open_read = _StreamRead(asyncio.get_running_loop().create_future())
        if since is not None and (read.since is None or since.offset < read.since):
            read.since = since.offset
        if not state.reading:
            state.reading = True
            self._spawn(self._send_reads(channel, state), f"stream reads of {channel!r}")
        # shielded: a joiner that goes away (cancelled) must not cancel the others' read
        return await asyncio.shield(read.done)

    async def _send_reads(self, channel: str, state: _Channel) -> None:
        """The channel's reader: sends its open read, one at a time, until
        no subscriber waits for one. Started by :meth:`_shared_read`; it runs
        first in the next loop iteration, so the subscribers of this one share
        the first read."""
        read: _StreamRead | None = None
        try:
            while (read := state.open_read) is not None:
                state.open_read = None  # sent from here on: later subscribers open the next read
                done = read.done
                try:
                    if read.since is None:
                        result = await self.broker.history(channel, limit=0)
                    else:
                        result = await self.broker.history(channel, since=StreamPosition(read.since), limit=None)
                except Exception as exc:
                    if not done.done():
                        done.set_exception(exc)
                        done.exception()  # retrieved: the joiners that are still there raise it
                else:
                    if not done.done():
                        done.set_result(result)
                read = None
        finally:
            state.reading = False
            for pending in (read, state.open_read):  # cancelled (the hub closes): nobody sends them
                if pending is not None and not pending.done.done():
                    pending.done.set_exception(BrokerError("the hub stopped while reading the stream"))
                    pending.done.exception()
            state.open_read = None

    def unsubscribe(self, channel: str, client_id: str, *, info: ClientInfo | None = None) -> bool:
        """Remove ``client_id`` from ``channel``. Returns whether it was subscribed.

        Broker side effects (presence removal, leave push, the node's broker
        unsubscribe when the last local subscriber left) run in the background.
        """
        state = self._channels.get(channel)
        if state is None:
            return False
        if not (_remove(state.by_wire, client_id) or _remove(state.delta, client_id)
                or _remove(state.pending, client_id)):
            return False
        if not state.delta and not state.pending:
            state.prev = state.delta = state.pending = None
        state.skip.pop(client_id, None)
        state.batches.clear()  # later publications must not reach it through a queued batch
        state.count -= 1
        local = self._presence.get(channel)
        if local is not None and local.pop(client_id, None) is not None:
            if not local:
                del self._presence[channel]
            self._spawn(self.broker.remove_presence(channel, client_id), "presence remove")
        ns = self.config.namespace(channel)
        if info is not None and ns is not None and ns.join_leave:
            self._spawn(self.broker.publish_leave(channel, info), "leave")
        self._maybe_drop(channel, state)
        return True

    def _maybe_drop(self, channel: str, state: _Channel) -> None:
        if state.count == 0 and self._channels.get(channel) is state:
            del self._channels[channel]
            self._spawn(self.broker.unsubscribe(channel), f"broker unsubscribe of {channel!r}")

    # -- sessions by user (server API: subscribe, unsubscribe, disconnect, refresh) --

    def add_session(self, session: Any, *, register: bool = True) -> None:
        """Count a connected client and, with ``register``, file it under its
        ``user`` and ``client_id`` for the server API's user-targeted methods."""
        self.clients += 1
        if register:
            self.sessions.setdefault(session.user, {})[session.client_id] = session

    def remove_session(self, session: Any) -> None:
        """Forget a client counted by :meth:`add_session`."""
        self.clients -= 1
        users = self.sessions.get(session.user)
        if users is not None:
            users.pop(session.client_id, None)
            if not users:
                del self.sessions[session.user]

    def user_connections(self, user: str) -> int:
        """How many connections ``user`` has on this node."""
        return len(self.sessions.get(user, ()))

    def user_sessions(self, user: str, client: str | None = None) -> list[Any]:
        """The sessions of ``user`` on this node (only ``client``'s if given)."""
        sessions = self.sessions.get(user, {})
        if client:
            return [sessions[client]] if client in sessions else []
        return list(sessions.values())

    # -- introspection --------------------------------------------------------

    def channels(self) -> dict[str, int]:
        """Active channels on this node and their local subscriber counts."""
        return {name: state.count for name, state in self._channels.items()}

    def subscribers(self, channel: str) -> list[Subscriber]:
        state = self._channels.get(channel)
        if state is None:
            return []
        return [sub for _, subs in state.groups() for sub in subs.values()]

    # -- presence refresh (one shared timer) ----------------------------------

    def _schedule_presence_refresh(self) -> None:
        loop = asyncio.get_running_loop()
        self._presence_timer = loop.call_later(self.presence_ttl / 3, self._refresh_presence)

    def _refresh_presence(self) -> None:
        self._push_presence()
        self._schedule_presence_refresh()

    def _push_presence(self) -> None:
        """Write every local presence entry to the broker again (refresh, or
        restore after the broker lost its data)."""
        if self._presence:
            entries = [(ch, info) for ch, local in self._presence.items() for info in local.values()]

            async def refresh() -> None:
                for channel, info in entries:
                    await self.broker.add_presence(channel, info, ttl=self.presence_ttl)

            self._spawn(refresh(), "presence refresh")
