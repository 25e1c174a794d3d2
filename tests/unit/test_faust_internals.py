"""The faust internals the worker relies on (streams/worker/faust_internals.py) still exist with
the shape it expects: an upgrade of faust-streaming that moves one fails here."""

import inspect
import weakref

import faust.streams
from faust.transport.consumer import Consumer

from streams.worker import faust_internals


def test_add_gap_exists_and_takes_a_partition_and_a_range():
    params = list(inspect.signature(faust_internals._FAUST_ADD_GAP).parameters)
    assert params == ["self", "tp", "offset_from", "offset_to"]
    assert inspect.iscoroutinefunction(faust_internals._FAUST_ADD_GAP)


def test_implicit_gaps_are_disabled_once_the_worker_module_is_loaded():
    import streams.worker.app  # noqa: F401 - importing it installs the guard

    assert Consumer._add_gap is faust_internals._no_implicit_gap


def test_current_event_is_the_context_variable_tables_read():
    from faust.tables import base

    assert isinstance(faust.streams._current_event, type(faust_internals._current_event))
    assert "current_event" in inspect.getsource(base.Collection.partition_for_key)
    marker = object.__new__(type("Ev", (), {}))
    faust_internals.on_partition_of(marker)
    assert faust.streams._current_event.get()() is marker
    assert isinstance(faust.streams._current_event.get(), weakref.ref)


def test_the_worker_consumer_is_built_with_the_configured_fetch_wait(monkeypatch):
    """faust hard-codes fetch_max_wait_ms=1500 in the factory it calls; the override replaces it."""
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    assert "fetch_max_wait_ms=1500" in inspect.getsource(
        faust_internals._FAUST_CREATE_WORKER_CONSUMER
    )
    made = type("Made", (), {"_fetch_max_wait_ms": 1500})()
    monkeypatch.setattr(
        faust_internals, "_FAUST_CREATE_WORKER_CONSUMER", lambda self, transport: made
    )
    monkeypatch.setattr(
        AIOKafkaConsumerThread,
        "_create_worker_consumer",
        AIOKafkaConsumerThread._create_worker_consumer,
    )
    faust_internals.set_fetch_max_wait(37)
    assert AIOKafkaConsumerThread._create_worker_consumer(None, None) is made
    assert made._fetch_max_wait_ms == 37


def test_committed_offsets_are_kept_per_partition_by_the_consumer():
    assert "self._committed_offset = defaultdict(lambda: None)" in inspect.getsource(
        Consumer.__init__
    )
    consumer = type("C", (), {"_committed_offset": {"tp": 41}})()
    assert faust_internals.committed_offset(consumer, "tp") == 41
    assert faust_internals.committed_offset(consumer, "other") is None


def test_a_table_write_asks_send_changelog_for_its_future_and_faust_flush_may_return_early():
    """Why ChangelogAcks exists: a table assignment calls ``self.send_changelog`` (an instance
    attribute wins) and drops the future it returns, and faust's buffer flush gives up after a
    0.1 s pause with messages still buffered."""
    from faust.tables.table import Table
    from faust.transport.producer import ProducerBuffer

    assert "self.send_changelog(" in inspect.getsource(Table.on_key_set)
    assert "self.send_changelog(" in inspect.getsource(Table.on_key_del)
    flush = inspect.getsource(ProducerBuffer.flush_atmost)
    assert "except asyncio.TimeoutError" in flush and "return flushed_messages" in flush


def test_changelog_acks_wait_for_every_write_and_raise_its_error():
    import asyncio

    class FakeTable:
        def __init__(self) -> None:
            self.sent: list[asyncio.Future] = []

        def send_changelog(self, *args: object, **kwargs: object) -> asyncio.Future:
            fut = asyncio.get_running_loop().create_future()
            self.sent.append(fut)
            return fut

    async def go() -> None:
        table = FakeTable()
        acks = faust_internals.ChangelogAcks(table, timeout_s=0.2)
        table.send_changelog("p", b"k", b"v")
        table.send_changelog("p", b"k2", b"v")
        waiter = asyncio.ensure_future(acks.durable())
        await asyncio.sleep(0.01)
        assert not waiter.done()  # one write is not acknowledged yet
        table.sent[0].set_result(None)
        await asyncio.sleep(0.01)
        assert not waiter.done()
        table.sent[1].set_result(None)
        await waiter
        assert acks.pending == []
        table.send_changelog("p", b"k3", b"v")
        table.sent[2].set_exception(RuntimeError("broker said no"))
        try:
            await acks.durable()
        except RuntimeError as exc:
            assert "broker said no" in str(exc)
        else:
            raise AssertionError("a failed write must fail the round")
        table.send_changelog("p", b"k4", b"v")  # never acknowledged
        try:
            await acks.durable()
        except TimeoutError:
            pass
        else:
            raise AssertionError("an unacknowledged write must time out, not hang")

    asyncio.run(go())


def test_take_events_acks_a_round_in_a_finally_so_a_cancelled_round_must_exit():
    """Why the worker exits when a round is cancelled half-way: faust acks the events it handed
    out in a ``finally`` around the ``yield``, applied or not."""
    from faust.streams import Stream

    source = inspect.getsource(Stream.take_events)
    after_yield = source[source.index("yield list(events)") :]
    assert after_yield.lstrip().startswith("finally:") or "finally:" in after_yield[:200]
    assert "await self.ack(event)" in after_yield[:400]
    worker_source = inspect.getsource(__import__("streams.worker.app", fromlist=["x"]))
    assert "except asyncio.CancelledError:" in worker_source


def fake_consumer(acked: list[int], committed: int | None = None):
    from collections import defaultdict

    from faust.types import TP
    from intervaltree import IntervalTree

    c = type("FakeConsumer", (), {})()
    tp = TP("in", 0)
    c._acked = defaultdict(list, {tp: list(acked)})
    c._acked_index = defaultdict(set, {tp: set(acked)})
    c._committed_offset = defaultdict(lambda: None, {tp: committed})
    c._gap = defaultdict(IntervalTree)
    return c, tp


def test_faust_commits_only_below_the_ceiling_and_keeps_the_rest_acked():
    c, tp = fake_consumer([5, 6, 7, 8, 9, 10], committed=5)
    ceilings = {0: 8}
    faust_internals.cap_commits(c, "in", ceilings)
    new_offset = faust_internals._capped_new_offset
    assert new_offset(c, tp) == 8  # 5..7 applied: commit up to them, not 8..10
    c._committed_offset[tp] = 8  # as faust's commit records it
    assert sorted(c._acked[tp]) == [8, 9, 10] and {8, 9, 10} <= c._acked_index[tp]
    assert new_offset(c, tp) is None  # nothing more until the ceiling moves
    ceilings[0] = 11
    assert new_offset(c, tp) == 11 and c._acked[tp] == []


def test_a_partition_without_a_ceiling_commits_nothing_and_other_topics_are_untouched():
    from faust.types import TP

    c, tp = fake_consumer([3, 4])
    faust_internals.cap_commits(c, "in", {})
    assert faust_internals._capped_new_offset(c, tp) is None and sorted(c._acked[tp]) == [3, 4]
    other = TP("elsewhere", 0)
    c._acked[other] = [1, 2]
    assert faust_internals._capped_new_offset(c, other) == 3


def test_the_worker_commit_cap_is_installed_on_faust_s_consumer_class():
    from faust.transport.consumer import Consumer as FaustConsumer

    source = inspect.getsource(faust_internals._FAUST_NEW_OFFSET)
    assert "acked = self._acked[tp]" in source and "consecutive_numbers(acked)" in source
    c, _ = fake_consumer([])
    faust_internals.cap_commits(c, "in", {})
    assert FaustConsumer._new_offset is faust_internals._capped_new_offset


def test_the_rocksdb_store_reads_the_database_of_the_current_events_partition():
    """Why the worker calls on_partition_of before it reads a key (not only before it writes)."""
    from faust.stores.rocksdb import Store

    for method in (Store._get, Store._set, Store._contains):
        source = inspect.getsource(method)
        assert "current_event()" in source and "event.message.partition" in source


def test_the_changelog_buffer_is_sized_to_a_round_and_warns_only_past_it(caplog):
    import asyncio
    import contextlib
    import logging
    from types import SimpleNamespace

    from faust.transport.producer import ProducerBuffer

    async def go():
        buffer = ProducerBuffer()
        buffer.app = SimpleNamespace(conf=SimpleNamespace(producer_threaded=False))
        assert buffer.max_messages == 100  # faust's fixed default, too small for a round
        faust_internals.size_changelog_buffer(SimpleNamespace(buffer=buffer), 1_500)
        for _ in range(1_200):
            buffer.pending.put_nowait(object())
        with caplog.at_level(logging.WARNING):
            await buffer.wait_until_ebb()
        assert "producer buffer full" not in caplog.text
        assert buffer.size == 1_200  # within its size: left for the round to await
        faust_internals.size_changelog_buffer(SimpleNamespace(buffer=buffer), 1_000)
        with caplog.at_level(logging.WARNING), contextlib.suppress(RuntimeError):
            await buffer.wait_until_ebb()  # then drains, which needs a running producer
        assert "producer buffer full size 1200" in caplog.text

    asyncio.run(go())


def test_partition_keys_lists_one_rocksdb_partition_and_leaves_the_memory_store_alone(tmp_path):
    """The due index rebuild reads a partition's keys from its RocksDB database alone."""
    from faust.stores.rocksdb import Store

    assert "_dbs" in inspect.getsource(Store.__init__)
    assert list(inspect.signature(Store._visible_keys).parameters) == ["self", "db"]

    class FakeRocks:
        _dbs = {3: ["k1", "k2"]}

        def _visible_keys(self, db):
            return iter(db)

    table = type("T", (), {"data": FakeRocks()})()
    assert list(faust_internals.partition_keys(table, 3)) == ["k1", "k2"]
    assert list(faust_internals.partition_keys(table, 4)) == []
    memory = type("T", (), {"data": {}})()
    assert faust_internals.partition_keys(memory, 3) is None


def test_on_no_partition_clears_the_current_event():
    marker = object.__new__(type("Ev", (), {}))
    faust_internals.on_partition_of(marker)
    faust_internals.on_no_partition()
    assert faust.streams.current_event() is None


def test_recovery_reads_each_changelog_up_to_the_last_offset_of_its_last_batch(monkeypatch):
    """faust takes a changelog's end from ListOffsets (minus one); the correction replaces it
    with the last offset read from there when that is later (Tansu answers the last batch's first
    offset + 1), and leaves empty partitions and correct answers alone."""
    import asyncio
    import logging
    from collections import Counter

    from faust.tables.recovery import Recovery
    from faust.types import TP

    source = inspect.getsource(faust_internals._FAUST_BUILD_HIGHWATERS)
    assert "consumer.highwaters(" in source and "value - 1" in source
    params = list(inspect.signature(faust_internals._FAUST_BUILD_HIGHWATERS).parameters)
    assert params == ["self", "consumer", "tps", "destination", "title"]

    a, b, empty = TP("t-changelog", 0), TP("t-changelog", 1), TP("t-changelog", 2)

    class Consumer:
        async def highwaters(self, *tps):
            return {a: 41, b: 8, empty: 0}  # a: batch 40..44 holds the last records

    asked = {}

    async def last_offsets_from(starts):
        asked.update(starts)
        return {("t-changelog", 0): 44, ("t-changelog", 1): 7}

    monkeypatch.setattr(Recovery, "_build_highwaters", faust_internals._FAUST_BUILD_HIGHWATERS)
    faust_internals.correct_recovery_highwaters(last_offsets_from)
    recovery = object.__new__(Recovery)
    monkeypatch.setattr(Recovery, "log", logging.getLogger("test"), raising=False)
    destination: Counter = Counter()
    asyncio.run(recovery._build_highwaters(Consumer(), {a, b, empty}, destination, "active"))
    assert asked == {("t-changelog", 0): 40, ("t-changelog", 1): 7}
    assert destination == {a: 44, b: 7, empty: -1}


def test_take_rounds_starts_a_round_once_the_queue_is_in_and_never_exceeds_max():
    """The worker's rounds (faust_internals.take_rounds): every event once, in order, at most
    ``max_`` per round, and a round starts as soon as no event has come for ``idle_s``, long
    before ``within_s`` (5 s here) has passed."""
    import asyncio

    import faust

    from streams.worker.faust_internals import take_rounds

    app = faust.App("test-take-rounds", broker="kafka://localhost:1", web_enabled=False)
    rounds: list[list[int]] = []

    @app.agent()
    async def agent(stream):
        async for r in take_rounds(stream, 4, 5.0, 0.001):
            rounds.append([e.value for e in r])

    async def go() -> None:
        async with agent.test_context() as ctx:
            for i in range(6):
                await ctx.put(i)
            await asyncio.sleep(0.3)
            taken_before_within = sum(map(len, rounds))
            for i in range(6, 9):
                await ctx.put(i)
            await asyncio.sleep(0.3)
        assert taken_before_within == 6

    asyncio.run(go())
    assert [v for r in rounds for v in r] == list(range(9))
    assert all(1 <= len(r) <= 4 for r in rounds)
    source = inspect.getsource(faust_internals.take_rounds)
    after_yield = source[source.index("yield list(events)") :]
    assert "finally:" in after_yield[:100] and "await stream.ack(event)" in after_yield[:300]
