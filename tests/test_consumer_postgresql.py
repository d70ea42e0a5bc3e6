"""The PostgreSQL consumer (hubbub.consumers.postgresql): a transactional outbox on a real
PostgreSQL (tests/postgres_server.py), with Centrifugo's table shape.

Rows reach subscribers in order and are deleted; NOTIFY wakes the consumer at once; malformed
rows and refused commands are skipped (logged, counted) and the consumer goes on; PostgreSQL
restarted, the consumer resumes; a command failing for a temporary reason (the broker down) is
retried, then skipped; two nodes sharing the table process each row once; hubbub killed in the
middle of a burst of 10,000 rows loses and duplicates nothing once it restarts; a Django view
publishes exactly when its transaction commits, to centrifuge-js subscribers.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from hubbub.config import Config
from hubbub.consumers.base import APIDispatcher, Outcome, backoff
from hubbub.consumers.postgresql import APPLICATION_NAME, PostgresConsumer
from hubbub.errors import ConfigError
from hubbub.metrics import render
from hubbub.server import Server

from .conftest import ROOT, TIMEOUT, ServeProcess, history_ns, proto_client, until
from .postgres_server import PostgresServer, postgres_server  # noqa: F401
from .redis_server import redis_server  # noqa: F401
from .required import in_ci

try:
    import asyncpg
except ImportError:  # the postgresql extra (in the test extra): required under CI=true
    if in_ci():
        raise
    pytest.skip("asyncpg is not installed (pip install -e '.[postgresql]')", allow_module_level=True)

#: Centrifugo's outbox table (centrifugal.dev docs/server/consumers), and its index
TABLE_DDL = """
CREATE TABLE {table} (
    id bigserial PRIMARY KEY,
    method text NOT NULL,
    payload jsonb NOT NULL,
    partition bigint NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ON {table} (partition, id);
"""
#: a trigger that NOTIFYs the row's partition on each insert
NOTIFY_DDL = """
CREATE FUNCTION {table}_notify() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('{channel}', NEW.partition::text);
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER {table}_notify AFTER INSERT ON {table} FOR EACH ROW EXECUTE FUNCTION {table}_notify();
"""

_names = itertools.count()


class Outbox:
    """A fresh outbox table in the test cluster, and a connection that writes to it."""

    def __init__(self, server: PostgresServer, connection: Any, table: str) -> None:
        self.server = server
        self.connection = connection
        self.table = table
        self.channel = f"{table}_wake"

    def settings(self, **kw: Any) -> dict[str, Any]:
        """The node's settings for a consumer of this table."""
        return {"postgresql_consumer_dsn": self.server.dsn(), "postgresql_consumer_outbox_table_name": self.table,
                **kw}

    async def insert(self, method: str, payload: Any, partition: int = 0) -> None:
        text = payload if isinstance(payload, str) else json.dumps(payload)
        await self.connection.execute(f"INSERT INTO {self.table} (method, payload, partition) VALUES ($1, $2::jsonb, $3)",
                                      method, text, partition)

    async def publish_many(self, channel: str, values: range, partitions: int = 1) -> None:
        """One row per value, ``{"n": value}`` to ``channel``, in one transaction, spread over partitions."""
        await self.connection.executemany(
            f"INSERT INTO {self.table} (method, payload, partition) VALUES ('publish', $1::jsonb, $2)",
            [(json.dumps({"channel": channel, "data": {"n": n}}), n % partitions) for n in values])

    async def count(self) -> int:
        try:
            return int(await self.connection.fetchval(f"SELECT count(*) FROM {self.table}"))
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            self.connection = await asyncpg.connect(self.server.dsn())  # PostgreSQL restarted meanwhile
            raise

    async def notify_trigger(self) -> None:
        await self.connection.execute(NOTIFY_DDL.format(table=self.table, channel=self.channel))


@pytest.fixture
async def outbox(postgres_server: PostgresServer) -> AsyncIterator[Outbox]:  # noqa: F811
    connection = await asyncpg.connect(postgres_server.dsn())
    table = f"outbox_{os.getpid()}_{next(_names)}"
    await connection.execute(TABLE_DDL.format(table=table))
    box = Outbox(postgres_server, connection, table)
    try:
        yield box
    finally:
        await box.connection.close()


def rows(server: Server, outcome: str) -> int:
    return server.stats.consumer_rows[("postgresql", outcome)]


async def subscribed(server: Server, channel: str) -> Any:
    client = await proto_client(server)
    reply = await client.call("subscribe", {"channel": channel})
    assert "subscribe" in reply, reply
    return client


async def received(client: Any, count: int) -> list[Any]:
    return [(await client.next_push())["pub"]["data"] for _ in range(count)]


# -- settings and the dispatcher ---------------------------------------------------------------------


def test_settings_are_checked() -> None:
    Config(postgresql_consumer_dsn="postgresql://u@h/db", postgresql_consumer_outbox_table_name="app.outbox").validate()
    for bad in ({"postgresql_consumer_dsn": "mysql://u@h/db"},
                {"postgresql_consumer_outbox_table_name": "outbox; DROP TABLE x"},
                {"postgresql_consumer_partition_notification_channel": "a b"},
                {"postgresql_consumer_num_partitions": 0},
                {"postgresql_consumer_partition_poll_interval": 0.0},
                {"postgresql_consumer_command_attempts": 0}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            Config(**bad).validate()


def test_backoff_doubles_up_to_five_seconds() -> None:
    assert 0.02 <= backoff(1) <= 0.04
    assert 0.08 <= backoff(3) <= 0.16
    assert backoff(30) == 5.0


async def test_dispatcher_outcomes(start_server: Any) -> None:
    """What a row's command becomes, through the server API's own validation."""
    server: Server = await start_server(namespaces={"h": history_ns()})
    dispatcher = APIDispatcher(server.api)
    cases = [
        (("publish", '{"channel": "h:a", "data": 1}'), Outcome.DONE),
        (("frobnicate", '{}'), Outcome.MALFORMED),
        (("history", '{"channel": "h:a"}'), Outcome.MALFORMED),  # reads are no commands for a consumer
        ((None, '{}'), Outcome.MALFORMED),
        (("publish", None), Outcome.MALFORMED),
        (("publish", '"text"'), Outcome.MALFORMED),
        (("publish", '{"channel": "h:a"'), Outcome.MALFORMED),
        (("publish", '{"data": 1}'), Outcome.MALFORMED),  # 400: channel is required
        (("publish", '{"channel": "nope:a", "data": 1}'), Outcome.REFUSED),  # 102 unknown namespace
        (("broadcast", '{"channels": ["h:a", "nope:b"], "data": 1}'), Outcome.REFUSED),
        (("disconnect", '{"user": "42"}'), Outcome.DONE),
    ]
    for (method, payload), expected in cases:
        assert (await dispatcher.dispatch(method, payload)).outcome is expected, (method, payload)
    # the default idempotency key: the same row twice publishes once
    for _ in range(2):
        await dispatcher.dispatch("publish", '{"channel": "h:k", "data": 1}', idempotency_key="t:1:0")
    assert len((await server.hub.history("h:k", limit=-1))["publications"]) == 1


# -- one node -------------------------------------------------------------------------------------------


async def test_rows_reach_subscribers_in_order_and_are_deleted(start_server: Any, outbox: Outbox) -> None:
    server: Server = await start_server(**outbox.settings(postgresql_consumer_partition_poll_interval=0.05))
    client = await subscribed(server, "news")
    await outbox.publish_many("news", range(250))  # more than a batch (100)
    assert await received(client, 250) == [{"n": n} for n in range(250)]
    await until(lambda: rows(server, "processed") == 250, "250 rows processed")
    await until(lambda: _count_below(outbox, 1), "the table emptied (the claim committed)")
    metrics = render(server).decode()
    assert 'hubbub_consumer_rows_total{consumer="postgresql",outcome="processed",worker="0"} 250.0' in metrics
    assert server.stats.publications["api"] == 250  # the server API's own path


async def test_notify_wakes_the_consumer_at_once(start_server: Any, outbox: Outbox) -> None:
    """With a poll interval of a minute, only the NOTIFY can deliver the second row in time."""
    await outbox.notify_trigger()
    server: Server = await start_server(**outbox.settings(
        postgresql_consumer_partition_poll_interval=60.0,
        postgresql_consumer_partition_notification_channel=outbox.channel,
        postgresql_consumer_num_partitions=2))
    client = await subscribed(server, "news")
    await outbox.insert("publish", {"channel": "news", "data": "first"}, partition=1)
    assert await received(client, 1) == ["first"]  # the partitions have read once, and now wait
    for partition in (1, 0):
        await outbox.insert("publish", {"channel": "news", "data": partition}, partition=partition)
        assert await received(client, 1) == [partition]


async def test_malformed_and_refused_rows_are_skipped_and_the_consumer_goes_on(
        start_server: Any, outbox: Outbox, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "hubbub.consumers.postgresql")
    server: Server = await start_server(**outbox.settings(postgresql_consumer_partition_poll_interval=0.05))
    client = await subscribed(server, "news")
    await outbox.insert("frobnicate", {"channel": "news"})
    await outbox.insert("publish", '"a JSON string, not an object"')
    await outbox.insert("publish", {"channel": "news"})  # no data: 400
    await outbox.insert("publish", {"channel": "nope:x", "data": 1})  # unknown namespace: 102
    await outbox.insert("publish", {"channel": "news", "data": "marker"})
    assert await received(client, 1) == ["marker"]
    await until(lambda: rows(server, "processed") == 1, "the marker counted")
    assert (rows(server, "malformed"), rows(server, "refused")) == (3, 1)
    await until(lambda: _count_below(outbox, 1), "the table emptied (the claim committed)")
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skipped) == 4 and "frobnicate" in skipped[0] and "102" in skipped[3], skipped


async def test_postgresql_restarted_the_consumer_resumes(start_server: Any, outbox: Outbox,
                                                          postgres_server: PostgresServer,  # noqa: F811
                                                          caplog: pytest.LogCaptureFixture) -> None:
    await outbox.notify_trigger()
    server: Server = await start_server(**outbox.settings(
        postgresql_consumer_partition_poll_interval=0.05,
        postgresql_consumer_partition_notification_channel=outbox.channel))
    client = await subscribed(server, "news")
    await outbox.insert("publish", {"channel": "news", "data": "before"})
    assert await received(client, 1) == ["before"]
    postgres_server.stop()
    await until(lambda: server.stats.consumer_errors[("postgresql", "source")] >= 2, "the consumer's retries")
    assert any("retrying in" in r.getMessage() for r in caplog.records)
    assert 'hubbub_consumer_errors_total{consumer="postgresql",kind="source",worker="0"}' in render(server).decode()
    postgres_server.start()
    outbox.connection = await asyncpg.connect(postgres_server.dsn())
    await outbox.insert("publish", {"channel": "news", "data": "after"})
    assert await received(client, 1) == ["after"]


async def test_a_command_failing_for_a_temporary_reason_is_retried_then_skipped(
        start_server: Any, outbox: Outbox, redis_server: Any) -> None:  # noqa: F811
    """The broker down: the publish answers 503 (temporary); the row is tried again after a
    backoff and, after ``command_attempts`` tries, skipped; the partition goes on."""
    server: Server = await start_server(broker=redis_server.url, **outbox.settings(
        postgresql_consumer_partition_poll_interval=0.05, postgresql_consumer_command_attempts=4))
    client = await subscribed(server, "news")
    redis_server.stop()
    await outbox.insert("publish", {"channel": "news", "data": "lost"})
    await until(lambda: rows(server, "failed") == 1, "the row skipped after 4 attempts", timeout=3 * TIMEOUT)
    assert server.stats.consumer_errors[("postgresql", "command")] == 3
    await until(lambda: _count_below(outbox, 1), "the table emptied (the claim committed)")
    redis_server.start()
    await until(lambda: server.hub.broker.healthy, "the broker back")
    await outbox.insert("publish", {"channel": "news", "data": "marker"})
    assert await received(client, 1) == ["marker"]


async def test_a_retried_command_succeeds_once_the_broker_is_back(
        start_server: Any, outbox: Outbox, redis_server: Any) -> None:  # noqa: F811
    server: Server = await start_server(broker=redis_server.url, **outbox.settings(
        postgresql_consumer_partition_poll_interval=0.05, postgresql_consumer_command_attempts=1000))
    client = await subscribed(server, "news")
    redis_server.stop()
    await outbox.insert("publish", {"channel": "news", "data": "late"})
    await outbox.insert("publish", {"channel": "news", "data": "later"})
    await until(lambda: server.stats.consumer_errors[("postgresql", "command")] >= 2, "retries")
    redis_server.start()
    assert await received(client, 2) == ["late", "later"]  # order kept: the partition waited at its head
    assert rows(server, "failed") == 0


async def test_close_ends_the_tasks_and_the_connections(start_server: Any, outbox: Outbox) -> None:
    """Server.close() stops the consumer: its tasks end and its connections (partitions and
    LISTEN) are gone from pg_stat_activity."""
    async def connections() -> int:
        return int(await outbox.connection.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND datname = current_database()",
            APPLICATION_NAME))

    await outbox.notify_trigger()
    server: Server = await start_server(**outbox.settings(
        postgresql_consumer_num_partitions=3, postgresql_consumer_partition_notification_channel=outbox.channel))
    client = await subscribed(server, "news")
    await outbox.insert("publish", {"channel": "news", "data": 1})
    assert await received(client, 1) == [1]
    await until(lambda: _count_equals(connections(), 4), "3 partition connections and the LISTEN one")
    consumer = server.consumers[0]
    assert isinstance(consumer, PostgresConsumer)
    tasks = consumer.tasks
    await server.close()
    assert len(tasks) == 4 and all(task.done() for task in tasks) and consumer.tasks == ()
    await until(lambda: _count_equals(connections(), 0), "the connections closed")


async def _count_equals(count: Any, n: int) -> bool:
    return bool(await count == n)


# -- several nodes ------------------------------------------------------------------------------------------


async def test_two_nodes_share_the_table_and_process_each_row_once(start_server: Any, outbox: Outbox) -> None:
    """Two nodes with their own (memory) brokers: a row processed by both would reach both
    subscribers; each row reaches exactly one, and the counts add up."""
    settings = outbox.settings(postgresql_consumer_partition_poll_interval=0.01,
                               postgresql_consumer_num_partitions=4, postgresql_consumer_partition_select_limit=20)
    nodes: list[Server] = [await start_server(**settings), await start_server(**settings)]
    clients = [await subscribed(node, "news") for node in nodes]
    await outbox.publish_many("news", range(2000), partitions=4)
    await until(lambda: sum(rows(node, "processed") for node in nodes) >= 2000, "2000 rows processed",
                timeout=6 * TIMEOUT)
    assert sum(rows(node, "processed") for node in nodes) == 2000
    got = [await received(c, rows(node, "processed")) for c, node in zip(clients, nodes, strict=True)]
    values = sorted(d["n"] for part in got for d in part)
    assert values == list(range(2000))
    for part in got:  # order holds within each partition on each node
        for p in range(4):
            mine = [d["n"] for d in part if d["n"] % 4 == p]
            assert mine == sorted(mine)
    await until(lambda: _count_below(outbox, 1), "the table emptied (the claim committed)")


BURST = 10_000


@pytest.mark.slow
async def test_hubbub_killed_in_a_burst_loses_and_duplicates_nothing(
        tmp_path: Path, outbox: Outbox, redis_server: Any) -> None:  # noqa: F811
    """``hubbub serve`` with the Redis broker reads 10,000 rows; SIGKILL while it is at it; a
    new ``hubbub serve`` finishes the table. The channel's history (in Redis) holds every row
    exactly once, in order: the rows of the batch being worked when the node died are published
    again by the new node, and the broker drops them by their idempotency key."""
    config = tmp_path / "hub.toml"
    config.write_text(f'[channels]\nhistory_size = {2 * BURST}\nhistory_ttl = 600\n')
    env = {f"HUBBUB_{k.upper()}": str(v) for k, v in outbox.settings(
        postgresql_consumer_partition_poll_interval=0.05).items()}
    env.update(HUBBUB_BROKER=redis_server.url, HUBBUB_API_KEY="k" * 32)
    await outbox.publish_many("burst", range(BURST))
    first = ServeProcess("--config", str(config), env=env)
    try:
        await until(lambda: _count_below(outbox, BURST - 1500), "a part of the burst done", timeout=6 * TIMEOUT)
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(TIMEOUT)
    finally:
        first.stop()
    left = await outbox.count()
    assert 0 < left < BURST, left
    second = ServeProcess("--config", str(config), env=env)
    try:
        await until(lambda: _count_below(outbox, 1), "the rest of the burst done", timeout=12 * TIMEOUT)
        history = await _history(second.port, "burst")
        assert second.stop() == 0, second.output()  # SIGTERM: the consumer stops cleanly with the node
    finally:
        second.stop()
    values = [p["data"]["n"] for p in history]
    assert len(values) == BURST, f"{len(values) - len(set(values))} duplicated, {BURST - len(set(values))} lost"
    assert values == list(range(BURST))


async def _count_below(outbox: Outbox, n: int) -> bool:
    return await outbox.count() < n


async def _history(port: int, channel: str) -> list[dict[str, Any]]:
    from .test_asgi import ahttp

    status, body = await ahttp("POST", f"http://127.0.0.1:{port}/api/history",
                               json.dumps({"channel": channel, "limit": -1}).encode(), {"X-API-Key": "k" * 32})
    assert status == 200, body
    publications: list[dict[str, Any]] = json.loads(body)["result"]["publications"]
    return publications


# -- a Django backend (tests/django_outbox) and centrifuge-js subscribers ------------------------------------


@pytest.mark.slow
async def test_a_django_view_publishes_to_centrifuge_js_exactly_when_it_commits(
        start_server: Any, postgres_server: PostgresServer, tmp_path: Path) -> None:  # noqa: F811
    """A Django view (under a real WSGI server) saves an order and its outbox row in one
    ``transaction.atomic()``; a centrifuge-js subscriber under Node gets the committed orders.
    The order whose transaction rolled back publishes nothing: the next committed order is the
    next publication the subscriber gets."""
    from .jsdeps import node_modules
    from .test_howtos import WSGI_RUNNER, Proc

    modules = node_modules()
    dsn = postgres_server.create_database(f"django_outbox_{os.getpid()}_{next(_names)}")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests"), "DJANGO_SETTINGS_MODULE": "django_outbox.settings",
           "OUTBOX_DSN": dsn}
    migrate = await asyncio.create_subprocess_exec(sys.executable, "-m", "django", "migrate", "--run-syncdb", env=env,
                                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(migrate.communicate(), 3 * TIMEOUT)
    assert migrate.returncode == 0, err.decode()
    server: Server = await start_server(postgresql_consumer_dsn=dsn, postgresql_consumer_partition_poll_interval=0.05)
    runner = tmp_path / "wsgi_runner.py"
    runner.write_text(WSGI_RUNNER)
    web = Proc([sys.executable, str(runner), "django"], tmp_path, env)
    node = await asyncio.create_subprocess_exec(
        "node", str(modules.parent / "outbox.cjs"), f"ws://127.0.0.1:{server.port}/connection/websocket", "orders", "2",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert node.stdout is not None
        assert await asyncio.wait_for(node.stdout.readline(), TIMEOUT) == b"subscribed\n"
        from .test_asgi import ahttp

        assert await ahttp("POST", f"{web.http}/orders", b'{"item": "tea"}') == (201, b'{"order": 1}')
        status, _ = await ahttp("POST", f"{web.http}/orders", b'{"item": "coffee", "fail": true}')
        assert status == 409
        assert await ahttp("POST", f"{web.http}/orders", b'{"item": "cake"}') == (201, b'{"order": 3}')
        out, err = await asyncio.wait_for(node.communicate(), 3 * TIMEOUT)
        assert node.returncode == 0, err.decode()
    finally:
        if node.returncode is None:
            node.kill()
            await node.wait()
        web.stop()
    assert [json.loads(line) for line in out.decode().splitlines()] == [{"id": 1, "item": "tea"},
                                                                        {"id": 3, "item": "cake"}]
    assert rows(server, "processed") == 2
