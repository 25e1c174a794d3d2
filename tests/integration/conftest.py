"""Integration fixtures: ONE real Tansu broker over TCP and ONE chDB database for the session
(chDB opens one path per process), faust workers as real subprocesses. Each test isolates itself
with its own topic prefix, consumer groups and account ids."""

import asyncio
import itertools
import time
import warnings
from decimal import Decimal
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer

from streams.ingest.codec import registry
from streams.kafka_admin import create_topics
from streams.kafka_client import client_kwargs
from streams.local.pipeline import LocalPipeline, sink_until
from streams.local.tansu import start_broker
from streams.sink.clickhouse import ClickHouseSink, connect, migrate

_n = itertools.count(1)


@pytest.fixture(scope="session")
def broker(tmp_path_factory):
    log = tmp_path_factory.mktemp("broker") / "broker.log"
    with start_broker(log_path=log) as b:
        yield b


@pytest.fixture(scope="session")
def chdb_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("chdb") / "db"


@pytest.fixture(scope="session")
def ch(chdb_dir):
    from streams.config import Settings

    client = connect(Settings(chdb_path=chdb_dir))
    migrate(client)
    return client


class Harness:
    """One test's slice of the pipeline."""

    def __init__(self, tmp: Path, broker, ch, **env):
        n = next(_n)
        self.tag = f"it{n}"
        self.pipeline = LocalPipeline(
            tmp,
            env_overrides={
                "KAFKA_TOPIC_PREFIX": f"{self.tag}.",
                "WORKER_APP_ID": f"{self.tag}-rating",
                "SINK_GROUP_ID": f"{self.tag}-sink",
                "KAFKA_PARTITIONS": "4",
                "WORKER_TICK_INTERVAL_MS": "1000",
                "SETTLEMENT_ALLOWED_LATENESS_S": "300",
                "WORKER_STALL_TIMEOUT_S": "30",
                # stream time from events only, as `rating simulate` without --until; the idle
                # watermark has a test of its own
                "WORKER_IDLE_ADVANCE_S": "0",
                **env,
            },
        )
        self.settings = self.pipeline.start_broker(broker.bootstrap)
        asyncio.run(create_topics(self.settings))
        self.ch = ch
        self.sink = ClickHouseSink(self.settings, client=ch)

    def start_worker(self):
        return self.pipeline.start_worker()

    async def produce(self, lines, batch_size=1):
        from streams.ingest.producer import EventProducer

        async with EventProducer(self.settings) as p:
            return await p.send_lines(lines, batch_size=batch_size)

    def land(self, done, timeout=120.0):
        async def go():
            await self.sink.start()
            try:
                return await sink_until(self.sink, done, timeout, on_progress=self.restart_stalled)
            finally:
                await self.sink.stop()

        return asyncio.run(go())

    def restart_stalled(self):
        """As a supervisor would; said out loud, since a stall is worth knowing about even when
        the restart makes the test pass."""
        for w in self.pipeline.restart_stalled():
            warnings.warn(
                f"{self.tag}: a worker stalled and exited; restarted ({w.log_path.name})",
                stacklevel=1,
            )

    def scalar(self, sql):
        return self.ch.query(sql).result_rows[0][0]

    def count(self, table, accounts_like):
        return self.scalar(
            f"SELECT count() FROM {table} FINAL WHERE main_account_id LIKE '{accounts_like}'"
        )

    def consume(self, topic, n, timeout=60.0):
        """Read a whole output topic from the start: (key, decoded record) pairs."""

        async def go():
            c = AIOKafkaConsumer(
                topic,
                **client_kwargs(self.settings),
                auto_offset_reset="earliest",
                enable_auto_commit=False,
                group_id=None,
            )
            await c.start()
            out = []
            deadline = time.monotonic() + timeout
            try:
                while len(out) < n and time.monotonic() < deadline:
                    batch = await c.getmany(timeout_ms=500)
                    for msgs in batch.values():
                        out.extend((m.key, registry().decode(m.value)[1]) for m in msgs)
            finally:
                await c.stop()
            return out

        return asyncio.run(go())

    def consume_sizes(self, topic, timeout=10.0):
        """Sizes in bytes of every message
        value of a topic, read from the start until it is quiet."""

        async def go():
            c = AIOKafkaConsumer(
                topic,
                **client_kwargs(self.settings),
                auto_offset_reset="earliest",
                enable_auto_commit=False,
                group_id=None,
            )
            await c.start()
            sizes: list[int] = []
            deadline = time.monotonic() + timeout
            try:
                while time.monotonic() < deadline:
                    batch = await c.getmany(timeout_ms=1000)
                    if not batch and sizes:
                        break
                    sizes.extend(len(m.value or b"") for msgs in batch.values() for m in msgs)
            finally:
                await c.stop()
            return sizes

        return asyncio.run(go())

    def stop(self):
        self.pipeline.stop()


@pytest.fixture
def harness(tmp_path, broker, ch):
    h = Harness(tmp_path, broker, ch)
    yield h
    h.stop()


@pytest.fixture
def rocksdb_harness(tmp_path, broker, ch):
    """Workers on the production table store (one RocksDB database per table partition)."""
    h = Harness(tmp_path, broker, ch, WORKER_STORE="rocksdb://")
    yield h
    h.stop()


@pytest.fixture
def one_partition_harness(tmp_path, broker, ch):
    h = Harness(tmp_path, broker, ch, KAFKA_PARTITIONS="1")
    yield h
    h.stop()


def normalize(deduction: dict) -> dict:
    """A deduction decoded from Avro, shaped like the simulator's (times as epoch ms)."""
    d = dict(deduction)
    t = d["event_time"]
    if not isinstance(t, int):
        from streams.ingest.events import to_millis

        d["event_time"] = to_millis(t, "event_time")
    return d


D = Decimal
