"""The write path (hubbub.writer) without sockets: a fake transport and a
fake flusher that is flushed by hand."""

from __future__ import annotations

from typing import Any

from hubbub.outbox import FrameBatch
from hubbub.stats import Stats
from hubbub.writer import Writer


class FakeTransport:
    """Records writes; ``buffered`` is what it reports as not yet sent, and
    ``keep`` makes it hold on to everything written (a client that never reads)."""

    def __init__(self, buffered: int = 0, keep: bool = False) -> None:
        self.buffered = buffered
        self.keep = keep
        self.calls: list[tuple[str, Any]] = []

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def write(self, data: bytes) -> None:
        self.calls.append(("write", data))
        if self.keep:
            self.buffered += len(data)

    def writelines(self, chunks: list[bytes]) -> None:
        self.calls.append(("writelines", list(chunks)))
        if self.keep:
            self.buffered += sum(len(c) for c in chunks)

    def close(self) -> None:
        self.calls.append(("close", None))

    @property
    def data(self) -> bytes:
        out = b""
        for kind, value in self.calls:
            if kind == "write":
                out += value
            elif kind == "writelines":
                out += b"".join(value)
        return out


class FakeFlusher:
    """Records ``add`` calls; the test flushes by hand."""

    def __init__(self) -> None:
        self.added: list[Writer] = []

    def add(self, writer: Writer) -> None:
        self.added.append(writer)

    def flush(self) -> None:
        dirty, self.added = self.added, []
        for writer in dirty:
            writer.flush()


class RecordingWriter(Writer):
    """Records ``_on_slow`` calls; queues a close frame there, as a connection does."""

    __slots__ = ("close_frame", "slow_calls")

    def __init__(self, flusher: FakeFlusher, limit: int, *, close_frame: bytes = b"") -> None:
        super().__init__(flusher, limit, Stats())  # type: ignore[arg-type]
        self.slow_calls: list[int] = []
        self.close_frame = close_frame

    def _on_slow(self, pending: int) -> None:
        self.slow_calls.append(pending)
        if self.close_frame:
            self.write_control(self.close_frame)


def make(limit: int = 100, transport: FakeTransport | None = None, **kw: Any) -> tuple[RecordingWriter, FakeFlusher,
                                                                                       FakeTransport]:
    flusher = FakeFlusher()
    writer = RecordingWriter(flusher, limit, **kw)
    writer.transport = transport or FakeTransport()  # type: ignore[assignment]
    writer.open = True
    return writer, flusher, writer.transport  # type: ignore[return-value]


def test_one_writelines_per_flush_in_order() -> None:
    writer, flusher, transport = make()
    writer.deliver(b"a1")
    writer.write(b"b22")
    writer.deliver(b"c333")
    writer.write_control(b"d")
    assert flusher.added == [writer]  # registered once
    assert transport.calls == []  # nothing written before the flush
    flusher.flush()
    assert transport.calls == [("writelines", [b"a1", b"b22", b"c333", b"d"])]
    assert writer._stats.messages_out == 4 and writer._stats.bytes_out == 10
    assert writer.pending == 0
    flusher.flush()
    assert len(transport.calls) == 1  # nothing more to write


def test_single_item_is_one_write() -> None:
    writer, flusher, transport = make()
    writer.deliver(b"only")
    flusher.flush()
    assert transport.calls == [("write", b"only")]


def test_registered_again_after_flush() -> None:
    writer, flusher, transport = make()
    writer.deliver(b"1")
    flusher.flush()
    writer.deliver(b"2")
    writer.deliver(b"3")
    assert flusher.added == [writer]
    flusher.flush()
    assert transport.calls == [("write", b"1"), ("writelines", [b"2", b"3"])]


def test_deliver_over_limit_is_slow_once() -> None:
    writer, flusher, transport = make(limit=10)
    writer.deliver(b"x" * 6)
    assert writer.slow_calls == []
    writer.deliver(b"y" * 6)
    assert writer.slow_calls == [12]
    assert writer.open is False
    assert writer._stats.slow == 1
    assert writer.pending == 0  # the queue is dropped
    writer.deliver(b"z")
    writer.write(b"w")
    assert writer.slow_calls == [12] and writer._stats.slow == 1
    flusher.flush()
    assert transport.calls == []


def test_deliver_counts_the_transport_buffer() -> None:
    writer, flusher, _ = make(limit=10, transport=FakeTransport(keep=True))
    writer.deliver(b"x" * 8)
    flusher.flush()  # the client does not read: 8 bytes stay in the transport
    assert writer.pending == 8
    writer.deliver(b"y" * 3)
    assert writer.slow_calls == [11] and not writer.open


def test_deliver_within_limit_after_transport_drained() -> None:
    transport = FakeTransport(keep=True)
    writer, flusher, _ = make(limit=10, transport=transport)
    writer.deliver(b"x" * 8)
    flusher.flush()
    transport.buffered = 0  # the kernel took it meanwhile
    writer.deliver(b"y" * 8)  # over by the stale figure, within by the real one
    assert writer.slow_calls == [] and writer.open
    flusher.flush()
    assert transport.calls[-1] == ("write", b"y" * 8)


def test_slow_queues_close_frame_only() -> None:
    writer, flusher, transport = make(limit=10, close_frame=b"CLOSE")
    writer.deliver(b"x" * 6)
    writer.deliver(b"y" * 6)
    flusher.flush()
    assert transport.calls == [("write", b"CLOSE")]


def test_reply_with_transport_buffer_over_limit_is_slow() -> None:
    """write() (replies, pings) is bounded too: a client that sends commands and
    never reads is closed once the answers pile up."""
    writer, flusher, transport = make(limit=10, transport=FakeTransport(keep=True))
    writer.write_control(b"H" * 12)  # a handshake the client never reads
    flusher.flush()
    assert transport.buffered == 12 and writer.open
    writer.write(b"reply")
    assert writer.slow_calls == [17]
    assert not writer.open and writer._stats.slow == 1


def test_replies_piling_up_are_slow() -> None:
    writer, _, _ = make(limit=10)
    writer.write(b"r" * 6)
    writer.write(b"r" * 6)
    assert writer.slow_calls == [12]


def test_single_reply_larger_than_limit_is_sent() -> None:
    writer, flusher, transport = make(limit=10)
    writer.write(b"R" * 50)
    assert writer.slow_calls == [] and writer.open
    flusher.flush()
    assert transport.calls == [("write", b"R" * 50)]


def test_single_push_larger_than_limit_is_sent() -> None:
    """The module docstring: "A single message larger than the bound is still
    sent when nothing else is pending". write() does so; deliver() (pushes:
    publications, recovery's late publications) closes with 3008 instead.
    See the report: bug 3."""
    writer, flusher, transport = make(limit=10)
    writer.deliver(b"P" * 50)
    assert writer.slow_calls == [] and writer.open
    flusher.flush()
    assert transport.calls == [("write", b"P" * 50)]


def test_next_write_after_oversized_message_is_slow() -> None:
    writer, flusher, _ = make(limit=10, transport=FakeTransport(keep=True))
    writer.write(b"R" * 50)
    flusher.flush()
    writer.write(b"r")
    assert writer.slow_calls == [51]


def test_write_control_is_never_refused() -> None:
    writer, flusher, transport = make(limit=10, transport=FakeTransport(buffered=1000))
    writer.write_control(b"C" * 100)  # far past the bound, transport included
    assert writer.slow_calls == [] and writer.open
    assert flusher.added == [writer]
    flusher.flush()
    assert transport.calls == [("write", b"C" * 100)]
    writer.deliver(b"x")  # a push is refused now
    assert writer.slow_calls and not writer.open
    writer.write_control(b"close")  # still accepted with output closed
    flusher.flush()
    assert transport.calls[-1] == ("write", b"close")


def test_nothing_after_lost() -> None:
    writer, flusher, transport = make()
    writer.deliver(b"x")
    writer.lost = True
    writer.write_control(b"y")
    flusher.flush()
    assert transport.calls == []


def test_nothing_queued_before_open() -> None:
    writer, flusher, _ = make()
    writer.open = False
    writer.deliver(b"x")
    writer.write(b"y")
    assert flusher.added == [] and writer.pending == 0


def test_frame_batch_shared_by_two_writers_joined_once() -> None:
    flusher = FakeFlusher()
    a, b = RecordingWriter(flusher, 100), RecordingWriter(flusher, 100)  # type: ignore[arg-type]
    ta, tb = FakeTransport(), FakeTransport()
    for writer, transport in ((a, ta), (b, tb)):
        writer.transport = transport  # type: ignore[assignment]
        writer.open = True
    batch = FrameBatch(b"f1")
    a.deliver(batch)
    b.deliver(batch)
    batch.append(b"f2")  # a later publication of the same iteration
    batch.append(b"f3")
    flusher.flush()
    assert batch.closed
    assert ta.calls == [("write", b"f1f2f3")]
    assert ta.calls[0][1] is tb.calls[0][1]  # one bytes object for both: joined once
    assert a._stats.bytes_out == 6 and b._stats.bytes_out == 6


def test_frame_batch_with_other_items_in_order() -> None:
    writer, flusher, transport = make()
    writer.write(b"reply")
    batch = FrameBatch(b"p1")
    writer.deliver(batch)
    batch.append(b"p2")
    writer.deliver(b"late")
    flusher.flush()
    assert transport.calls == [("writelines", [b"reply", b"p1p2", b"late"])]
    assert writer._stats.bytes_out == 13


def test_frame_batch_final_size_checked_at_flush() -> None:
    writer, flusher, transport = make(limit=10, close_frame=b"CLOSE")
    other, _, other_transport = make(limit=100)
    other._flusher = flusher  # type: ignore[assignment]
    batch = FrameBatch(b"x" * 4)
    writer.deliver(batch)
    other.deliver(batch)
    assert writer.slow_calls == []  # 4 bytes when queued
    batch.append(b"y" * 8)  # grows to 12 before the flush
    flusher.flush()
    assert writer.slow_calls == [12] and not writer.open and writer._stats.slow == 1
    assert transport.calls == [("write", b"CLOSE")]  # the batch is dropped, the close frame goes
    assert other_transport.calls == [("write", b"x" * 4 + b"y" * 8)]  # the other writer is unaffected


def test_finish_closes_after_writing() -> None:
    writer, flusher, transport = make()
    writer.write(b"bye")
    writer.write_control(b"close-frame")
    writer.finish()
    assert transport.calls == []
    flusher.flush()
    assert transport.calls == [("writelines", [b"bye", b"close-frame"]), ("close", None)]


def test_finish_with_empty_queue_closes() -> None:
    writer, flusher, transport = make()
    writer.finish()
    assert flusher.added == [writer]
    flusher.flush()
    assert transport.calls == [("close", None)]
