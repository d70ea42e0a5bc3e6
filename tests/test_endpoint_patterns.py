"""Handlers copied from the ``websockets`` "patterns" guide work on hubbub endpoints.

https://websockets.readthedocs.io/en/stable/howto/patterns.html: the consumer,
producer and consumer+producer patterns end when the connection closes
(``send`` and ``recv`` raise ``ConnectionClosed``); the registration pattern
(``wait_closed``) and ``hubbub.broadcast`` to the connections of an endpoint.
"""

from __future__ import annotations

import asyncio
import collections.abc
import gc
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
import websockets
from websockets.exceptions import (
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
)

import hubbub
from hubbub import App

from .conftest import TIMEOUT, until

#: how often the guide's producers produce (seconds)
TICK = 0.01


@pytest.fixture
async def running() -> AsyncIterator[list[App]]:
    apps: list[App] = []
    yield apps
    for app in apps:
        await app.stop()


async def start(app: App, running: list[App]) -> str:
    await app.start()
    running.append(app)
    return f"ws://127.0.0.1:{app.server.port}"


def new_app(**settings: Any) -> App:
    return App(host="127.0.0.1", port=0, **settings)


def serve_with_view(app: App, path: str, endpoint: Any) -> collections.abc.Set[Any]:
    """Serve ``endpoint`` at ``path``; returns the live view of its open connections
    (``app.connections(path)``)."""
    app.add_websocket(path, endpoint)
    return app.connections(path)


def endpoint_errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("hubbub") and r.levelno >= logging.ERROR]


# -- send / recv after the close ---------------------------------------------------------------


@pytest.mark.parametrize(("code", "kind"), [(1000, ConnectionClosedOK), (1001, ConnectionClosedOK),
                                            (4001, ConnectionClosedError)])
async def test_send_and_recv_raise_connection_closed_after_the_server_closes(
        running: list[App], code: int, kind: type[Exception]) -> None:
    """After ``ws.close(code)``, ``send`` and ``recv`` raise websockets'
    ``ConnectionClosed`` (OK for 1000/1001, Error otherwise) with the close frame
    sent, at once; they are ``ConnectionError`` too, as ``recv`` raised before;
    ``close_code``/``close_reason`` tell the close. Fails today: ``send`` after
    the close is dropped silently and ``recv`` waits until the task is cancelled."""
    app = new_app()
    raised: list[BaseException] = []
    seen: dict[str, Any] = {}
    done = asyncio.Event()

    @app.websocket("/closer")
    async def closer(ws: hubbub.WebSocket) -> None:
        try:
            await ws.recv()
            await ws.close(code, "bye")
            for operation in (lambda: ws.send("late"), ws.recv):
                try:
                    await operation()
                except (ConnectionError, ConnectionClosed) as exc:
                    raised.append(exc)
            seen["closed"] = (ws.closed, ws.close_code, ws.close_reason)
        finally:
            done.set()

    url = await start(app, running)
    async with websockets.connect(f"{url}/closer") as client:
        await client.send("close, please")
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(client.recv(), TIMEOUT)
        assert (client.close_code, client.close_reason) == (code, "bye")
    await asyncio.wait_for(done.wait(), TIMEOUT)
    assert len(raised) == 2 and all(isinstance(exc, kind) for exc in raised), raised
    other = ConnectionClosedError if kind is ConnectionClosedOK else ConnectionClosedOK
    assert not any(isinstance(exc, other) for exc in raised)
    for exc in raised:
        assert isinstance(exc, ConnectionError)  # what recv() raised before
        assert exc.sent is not None and (exc.sent.code, exc.sent.reason) == (code, "bye")  # type: ignore[attr-defined]
    assert seen == {"closed": (True, code, "bye")}


async def test_client_close_is_seen_by_send_recv_iteration_and_wait_closed(running: list[App]) -> None:
    """A normal close by the client: ``wait_closed`` returns, the code is 1000,
    ``send``/``recv`` raise ``ConnectionClosedOK`` and ``async for`` ends quietly.
    An abnormal one (the TCP connection drops): 1006, ``ConnectionClosedError``,
    and ``async for`` raises it, as in websockets. Fails today: no ``wait_closed``."""
    app = new_app()
    sockets: asyncio.Queue[hubbub.WebSocket] = asyncio.Queue()

    @app.websocket("/watch/{name}")
    async def watch(ws: hubbub.WebSocket) -> None:
        sockets.put_nowait(ws)
        async for message in ws:
            await ws.send(message)

    url = await start(app, running)
    async with websockets.connect(f"{url}/watch/normal", additional_headers={"X-Test": "yes"}) as client:
        ws = await asyncio.wait_for(sockets.get(), TIMEOUT)
        await client.send("ping")
        assert await asyncio.wait_for(client.recv(), TIMEOUT) == "ping"
        assert not ws.closed and ws.close_code is None
        assert ws.path == "/watch/normal"
        assert ws.remote_address == client.local_address[:2]
        assert ws.request_headers["x-test"] == "yes"
    await asyncio.wait_for(ws.wait_closed(), TIMEOUT)
    assert (ws.closed, ws.close_code, ws.close_reason) == (True, 1000, "")
    with pytest.raises(ConnectionClosedOK) as info:
        await ws.send("late")
    assert info.value.rcvd is not None and info.value.rcvd.code == 1000
    with pytest.raises(ConnectionClosedOK):
        await ws.recv()
    assert [message async for message in ws] == []
    await asyncio.wait_for(ws.wait_closed(), TIMEOUT)  # returns again at once

    client = await websockets.connect(f"{url}/watch/dropped")
    ws = await asyncio.wait_for(sockets.get(), TIMEOUT)
    client.transport.abort()  # no close frame
    await asyncio.wait_for(ws.wait_closed(), TIMEOUT)
    assert (ws.close_code, ws.close_reason) == (1006, "")
    with pytest.raises(ConnectionClosedError):
        await ws.send("late")
    with pytest.raises(ConnectionClosedError):
        async for _ in ws:
            pass


# -- the guide's patterns ------------------------------------------------------------------------


async def test_consumer_and_producer_with_gather(running: list[App], caplog: pytest.LogCaptureFixture) -> None:
    """The guide's "Consumer and producer" handler, verbatim. The consumer closes
    the connection on "bye": then the producer's ``send`` raises
    ``ConnectionClosedOK`` (its loop breaks), ``async for`` ends, ``gather``
    returns and the handler returns on its own, before the client has even
    answered the close. Fails today: ``send`` never raises, so the producer
    loops until the connection is gone and the handler is cancelled."""
    app = new_app()
    ticking = asyncio.Event()
    state = {"consumed": [], "producer_exit": None, "handler_returned": False, "sent": 0}

    async def consume(message: str | bytes) -> None:
        state["consumed"].append(message)
        if message == "bye":
            await websocket_of["ws"].close(1000, "see you")

    async def produce() -> str:
        await asyncio.sleep(TICK)
        return "tick"

    websocket_of: dict[str, hubbub.WebSocket] = {}

    # -- from the guide (consumer_handler and producer_handler as printed) --
    async def consumer_handler(websocket):  # type: ignore[no-untyped-def]
        async for message in websocket:
            await consume(message)

    async def producer_handler(websocket):  # type: ignore[no-untyped-def]
        while True:
            try:
                message = await produce()
                await websocket.send(message)
            except ConnectionClosed as exc:
                state["producer_exit"] = exc
                break
            state["sent"] += 1
            ticking.set()

    async def handler(websocket):  # type: ignore[no-untyped-def]
        websocket_of["ws"] = websocket
        await asyncio.gather(
            consumer_handler(websocket),
            producer_handler(websocket),
        )
        state["handler_returned"] = True
    # --

    app.add_websocket("/pattern", handler)
    caplog.set_level(logging.ERROR)
    url = await start(app, running)
    async with websockets.connect(f"{url}/pattern") as client:
        await asyncio.wait_for(ticking.wait(), TIMEOUT)
        assert await asyncio.wait_for(client.recv(), TIMEOUT) == "tick"
        # the client answers the server's close frame only once the handler has
        # returned: it must end on its own, not be cancelled when the connection goes
        client.transport.pause_reading()
        await client.send("hello")
        await client.send("bye")
        await until(lambda: state["handler_returned"], "the handler to return")
        client.transport.resume_reading()
        with pytest.raises(ConnectionClosedOK):
            while True:
                await asyncio.wait_for(client.recv(), TIMEOUT)
        assert (client.close_code, client.close_reason) == (1000, "see you")
    assert state["consumed"] == ["hello", "bye"]
    assert isinstance(state["producer_exit"], ConnectionClosedOK), state["producer_exit"]
    sent = state["sent"]
    await asyncio.sleep(5 * TICK)
    assert state["sent"] == sent
    assert endpoint_errors(caplog) == []


async def test_handler_ending_with_connection_closed_is_a_normal_end(
        running: list[App], caplog: pytest.LogCaptureFixture) -> None:
    """A handler whose ``send`` raises ``ConnectionClosed`` after the connection
    closed ends normally: no traceback, the close code stays (not 1011), and
    ``disconnect`` runs. Fails today: ``send`` never raises."""
    app = new_app()
    raised: list[BaseException] = []
    disconnected = asyncio.Event()

    @app.websocket("/finish")
    class Finish:
        async def handle_message(self, ws: hubbub.WebSocket, message: str | bytes) -> None:
            await ws.close(4002, "done")
            try:
                await ws.send("after the close")
            except BaseException as exc:
                raised.append(exc)
                raise

        async def disconnect(self, ws: hubbub.WebSocket) -> None:
            disconnected.set()

    @app.websocket("/produce")
    class Produce:
        async def produce(self, ws: hubbub.WebSocket) -> None:
            await ws.close(4003, "enough")
            while True:  # ends with ConnectionClosed
                await ws.send("more")
                await asyncio.sleep(TICK)

    caplog.set_level(logging.ERROR)
    url = await start(app, running)
    async with websockets.connect(f"{url}/finish") as client:
        await client.send("go")
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(client.recv(), TIMEOUT)
        assert (client.close_code, client.close_reason) == (4002, "done")
    await asyncio.wait_for(disconnected.wait(), TIMEOUT)
    assert len(raised) == 1 and isinstance(raised[0], ConnectionClosedError), raised
    async with websockets.connect(f"{url}/produce") as client:
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(client.recv(), TIMEOUT)
        assert client.close_code == 4003
    assert endpoint_errors(caplog) == []


async def test_registration_pattern_with_broadcast(running: list[App]) -> None:
    """The guide's registration pattern (``connected`` set, ``wait_closed``),
    with ``hubbub.broadcast`` in place of ``websockets.broadcast``. Fails today:
    there is neither ``wait_closed`` nor ``broadcast``."""
    app = new_app()
    connected: set[hubbub.WebSocket] = set()

    @app.websocket("/register")
    async def handler(websocket):  # type: ignore[no-untyped-def]
        # Register.
        connected.add(websocket)
        try:
            # Broadcast a message to all connected clients.
            hubbub.broadcast(connected, "Hello!")
            await websocket.wait_closed()
        finally:
            # Unregister.
            connected.remove(websocket)

    url = await start(app, running)
    clients = [await websockets.connect(f"{url}/register") for _ in range(3)]
    try:
        await until(lambda: len(connected) == 3, "3 registered clients")
        hubbub.broadcast(connected, "to all")
        hubbub.broadcast(connected, b"\x00\xff")
        for i, client in enumerate(clients):
            # each got a "Hello!" for itself and every later client
            expected = ["Hello!"] * (3 - i) + ["to all", b"\x00\xff"]
            got = [await asyncio.wait_for(client.recv(), TIMEOUT) for _ in expected]
            assert got == expected
    finally:
        for client in clients:
            await client.close()
    await until(lambda: not connected, "every client unregistered")


async def test_broadcast_to_the_connections_of_an_endpoint(running: list[App],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """``hubbub.broadcast(app.connections(path), message)``: a read-only live view
    of the endpoint's open connections (any path of the pattern); the frame is
    encoded once for all; closed connections are skipped. Fails today: no
    registry, no broadcast."""
    from hubbub.connection import WebSocketFrames

    app = new_app()

    async def room(ws: hubbub.WebSocket) -> None:
        async for _ in ws:
            pass

    view = serve_with_view(app, "/rooms/{room}", room)
    assert isinstance(view, collections.abc.Set) and len(view) == 0
    assert not hasattr(view, "add") and not hasattr(view, "discard")
    url = await start(app, running)
    clients = [await websockets.connect(f"{url}/rooms/{name}") for name in ("a", "b", "c", "d")]
    try:
        await until(lambda: len(view) == 4, "4 open connections")
        assert sorted(ws.params["room"] for ws in view) == ["a", "b", "c", "d"]
        encoded: list[bytes] = []
        real_text = WebSocketFrames.text

        def counting_text(self: WebSocketFrames, payload: bytes) -> bytes:
            encoded.append(payload)
            return real_text(self, payload)

        monkeypatch.setattr(WebSocketFrames, "text", counting_text)
        assert hubbub.broadcast(view, "news") is None
        assert encoded == [b"news"]  # once, for four connections
        hubbub.broadcast(view, bytearray(b"\x01\x02"))
        with pytest.raises(TypeError):
            hubbub.broadcast(view, 42)  # type: ignore[arg-type]
        for client in clients:
            assert await asyncio.wait_for(client.recv(), TIMEOUT) == "news"
            assert await asyncio.wait_for(client.recv(), TIMEOUT) == b"\x01\x02"

        # a connection closed by the server leaves the view at once, and is skipped
        # when passed explicitly
        leaving = next(ws for ws in view if ws.params["room"] == "a")
        await leaving.close(4000, "bye")
        assert leaving not in view and len(view) == 3
        hubbub.broadcast([leaving, *view], "after")
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(clients[0].recv(), TIMEOUT)
        assert clients[0].close_code == 4000
        for client in clients[1:]:
            assert await asyncio.wait_for(client.recv(), TIMEOUT) == "after"
        # a client that leaves leaves the view
        await clients[1].close()
        await until(lambda: len(view) == 2, "the view to shrink")
    finally:
        for client in clients:
            await client.close()
    await until(lambda: len(view) == 0, "an empty view")


async def test_broadcast_is_bounded_like_any_push(running: list[App]) -> None:
    """What ``broadcast`` queues counts against ``max_pending_output``: past it
    the connection is closed with 3008 ("slow"), and later broadcasts skip it.
    Fails today: no broadcast."""
    app = new_app(max_pending_output=64 * 1024)

    async def sink(ws: hubbub.WebSocket) -> None:
        await ws.wait_closed()

    view = serve_with_view(app, "/sink", sink)
    url = await start(app, running)
    async with websockets.connect(f"{url}/sink", max_size=None) as client:
        await until(lambda: len(view) == 1, "the connection")
        (ws,) = view
        big = b"x" * (100 * 1024)
        hubbub.broadcast(view, big)  # one message alone may pass the bound
        hubbub.broadcast(view, big)  # the second finds it over the bound
        assert ws.closed and ws.close_code == 3008
        hubbub.broadcast([ws], big)  # skipped silently
        with pytest.raises(ConnectionClosed):
            while True:
                await asyncio.wait_for(client.recv(), TIMEOUT)
        assert client.close_code == 3008


# -- no task outlives its connection --------------------------------------------------------


@pytest.mark.slow
async def test_guide_handlers_leave_no_task_after_1000_connections(running: list[App]) -> None:
    """1,000 connections (50 at a time) to the guide's two consumer+producer
    handlers: ``gather``, and ``create_task`` + ``asyncio.wait``. Each client
    waits for one tick and leaves. Afterwards the number of asyncio tasks is
    back to where it was and no producer still sends. Fails today with the
    ``create_task`` handler: its tasks are not children of the endpoint task, so
    cancelling that one leaves the producer looping forever (``send`` never
    raises): the task count and the send counter keep growing."""
    app = new_app()
    counters = {"sent": 0}
    connected: set[hubbub.WebSocket] = set()

    async def consume(message: str | bytes) -> None:
        pass

    async def produce() -> str:
        await asyncio.sleep(TICK)
        return "tick"

    # -- from the guide --
    async def consumer_handler(websocket):  # type: ignore[no-untyped-def]
        async for message in websocket:
            await consume(message)

    async def producer_handler(websocket):  # type: ignore[no-untyped-def]
        while True:
            try:
                message = await produce()
                await websocket.send(message)
            except ConnectionClosed:
                break
            counters["sent"] += 1

    async def gather_handler(websocket):  # type: ignore[no-untyped-def]
        connected.add(websocket)
        try:
            await asyncio.gather(
                consumer_handler(websocket),
                producer_handler(websocket),
            )
        finally:
            connected.remove(websocket)

    async def wait_handler(websocket):  # type: ignore[no-untyped-def]
        connected.add(websocket)
        try:
            consumer_task = asyncio.create_task(consumer_handler(websocket))
            producer_task = asyncio.create_task(producer_handler(websocket))
            done, pending = await asyncio.wait(  # noqa: RUF059 (as printed)
                [consumer_task, producer_task],
                return_when=asyncio.FIRST_COMPLETED,
            )
            for task in pending:
                task.cancel()
        finally:
            connected.remove(websocket)
    # --

    app.add_websocket("/gather", gather_handler)
    app.add_websocket("/wait", wait_handler)
    url = await start(app, running)

    async def settle() -> int:
        gc.collect()
        await until(lambda: not app.server.connections, "every connection gone")
        for _ in range(3):
            await asyncio.sleep(0)
        return len(asyncio.all_tasks())

    baseline = await settle()

    async def cycle(i: int) -> None:
        path = "/gather" if i % 2 else "/wait"
        async with websockets.connect(f"{url}{path}", ping_interval=None) as client:
            assert await asyncio.wait_for(client.recv(), TIMEOUT) == "tick"

    async with asyncio.timeout(20):
        for start_at in range(0, 1000, 50):
            await asyncio.gather(*(cycle(i) for i in range(start_at, start_at + 50)))
    await settle()
    assert not connected
    try:
        await until(lambda: len(asyncio.all_tasks()) <= baseline, "the task count to fall back", timeout=5)
    except AssertionError:
        raise AssertionError(f"{len(asyncio.all_tasks()) - baseline} tasks outlived their connection") from None
    sent = counters["sent"]
    await asyncio.sleep(10 * TICK)
    assert counters["sent"] == sent, "a producer still sends with no connection"
    assert len(asyncio.all_tasks()) == baseline
