"""Every faust-streaming internal the worker relies on, in one place, with the reason for each.
``tests/unit/test_faust_internals.py`` checks they still exist in the installed faust, so an
upgrade that moves one fails a unit test instead of the exactly-once guarantee.

- ``Consumer._add_gap``: faust fills an offset jump in what it fetched as if those offsets had been
  acked ("gaps"), so a message prefetched before a rebalance's seek can make it commit past
  messages nobody processed (faust-streaming issues #221, #606). ``disable_implicit_gaps`` turns
  that off; the worker checks offset contiguity itself and declares a gap with ``declare_gap``
  only once the broker has shown it is real.
- ``faust.streams._current_event``: a table write goes to the changelog partition of the *current
  event*, and the RocksDB store reads and writes the database of that partition. The worker reads
  and writes states, dedupe entries and clocks for many events in one round, outside faust's
  per-event context, so it sets the event whose partition each read or write belongs to
  (``on_partition_of``). A background task with no event of the partition at hand clears it
  (``on_no_partition``): the store then looks a key up in every partition's database.
- ``RocksDB Store._dbs`` and ``_visible_keys``: the due index rebuild lists the keys of one
  partition from that partition's database instead of hashing every key of every partition
  (``partition_keys``).
- ``AIOKafkaConsumerThread._create_worker_consumer``: faust builds its aiokafka consumer with
  ``fetch_max_wait_ms=1500`` hard-coded. A broker that holds a fetch for that long before
  answering (the embedded Tansu does, even with data waiting) adds up to 1.5 s to every event's
  latency. ``set_fetch_max_wait`` replaces the value with ``KAFKA_FETCH_MAX_WAIT_MS``.
- ``Consumer._committed_offset``: the offset faust last committed per partition (None before the
  first). The stored clock history is pruned below it (``committed_offset``).
- ``Table.send_changelog`` returns the delivery future of each changelog write, which a table
  assignment drops. faust's ``ProducerBuffer.flush`` returns once 0.1 s pass without a message
  sent, with messages still in its buffer, and faust's commit relies on that flush: under load a
  commit could cover a round whose table writes were still buffered, and a kill then lost them
  (the fault suite saw a restarted worker without the accounts opened before the kill).
  ``ChangelogAcks`` keeps those futures, so a round ends only once its writes are acknowledged.
- ``Stream.take_events`` acks the events it handed out in a ``finally``, so a round cancelled
  half-way would be committed as applied; the worker exits instead (``rate_events``). The worker
  takes its rounds with ``take_rounds``, a copy of ``take_events`` (same processor, passive
  drain, acks and back-pressure: ``add_processor``, ``_enable_passive``, ``current_event``,
  ``ack``, ``wait_for_stopped``) that differs in one thing: take_events waits the whole
  ``within`` after every round, so a short ``within`` made rounds small under load (the events
  queued during a round are moved into the buffer one by one, through the stream) and a long one
  added its length to every event's latency. take_rounds starts a round once the buffer has
  stopped growing for ``idle`` (the queue behind the last round is in), or ``within`` after its
  first event, or at ``max_`` events.
- ``Consumer._new_offset`` (with ``_acked``): the offset faust commits for a partition is the end
  of the run of acked offsets. take_events also acks the messages a round set aside to re-read in
  order (after a jump), so faust could commit past messages that were never applied; a SIGKILL then
  lost them (the fault suite's restarted worker found its committed offset ~400 messages past the
  last applied round). ``cap_commits`` makes faust commit, on the input topic, only below the
  first offset the worker has not durably applied.
- ``Recovery._build_highwaters``: the end of each changelog partition that table recovery reads
  up to, from ListOffsets. The embedded Tansu answers ListOffsets with the base offset of the
  partition's last record batch plus one, so a changelog written in batches of several records
  would be recovered short (a restarted worker silently loses the newest table writes). With
  ``correct_recovery_highwaters`` (set for the embedded broker only) recovery reads the last
  batch from there and takes its last offset instead. Before it, every changelog record was
  made a batch of its own (``KAFKA_PRODUCER_MAX_BATCH_SIZE=16``), which cost one produce
  request per record and partition: most of a round's acknowledgement wait.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

from faust.streams import _current_event
from faust.tables.recovery import Recovery
from faust.transport.consumer import Consumer as FaustConsumer
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from mode.utils.aiter import aiter
from mode.utils.futures import notify

_FAUST_CREATE_WORKER_CONSUMER = AIOKafkaConsumerThread._create_worker_consumer

_FAUST_ADD_GAP = FaustConsumer._add_gap

_FAUST_NEW_OFFSET = FaustConsumer._new_offset

_FAUST_BUILD_HIGHWATERS = Recovery._build_highwaters

LastOffsets = Callable[[dict[tuple[str, int], int]], Awaitable[dict[tuple[str, int], int]]]


async def _no_implicit_gap(self: Any, tp: Any, offset_from: int, offset_to: int) -> None:
    return None


def disable_implicit_gaps() -> None:
    FaustConsumer._add_gap = _no_implicit_gap  # type: ignore[method-assign]


async def declare_gap(consumer: Any, tp: Any, first: int, last: int) -> None:
    """Offsets ``first..last`` are really absent from the log: faust may commit past them."""
    await _FAUST_ADD_GAP(consumer, tp, first, last)


def on_partition_of(event: Any) -> None:
    """Table reads and writes that follow are made on ``event``'s partition: writes go to that
    partition of the changelog, and the RocksDB store (one database per partition) reads and writes
    that partition's database. faust takes the partition from the current event, which in a round
    of many events is whichever was set last: a read of another partition's key there finds
    nothing (the soak found accounts taken for unopened ones). The memory store ignores it."""
    _current_event.set(weakref.ref(event))


def on_no_partition() -> None:
    """Table reads that follow, in this task, look the key up in every partition's database (the
    RocksDB store's behaviour without a current event): for a background task that reads keys of
    one partition with no event of it at hand (the due index rebuild)."""
    _current_event.set(None)


def partition_keys(table: Any, partition: int) -> Iterator[bytes] | None:
    """The keys of one partition of ``table``, read from that partition's database alone when the
    store is RocksDB (``_dbs``: partition -> database; ``_visible_keys``: faust's own key listing
    of one database). None for the memory store (one dict for every partition)."""
    store = table.data
    dbs = getattr(store, "_dbs", None)
    if dbs is None:
        return None
    db = dbs.get(partition)
    return iter(()) if db is None else store._visible_keys(db)


def set_fetch_max_wait(fetch_max_wait_ms: int) -> None:
    """Every worker consumer faust creates from now on waits at most ``fetch_max_wait_ms`` in a
    fetch (aiokafka reads the attribute when the consumer starts)."""

    def create(self: Any, transport: Any) -> Any:
        consumer = _FAUST_CREATE_WORKER_CONSUMER(self, transport)
        consumer._fetch_max_wait_ms = fetch_max_wait_ms
        return consumer

    AIOKafkaConsumerThread._create_worker_consumer = create  # type: ignore[method-assign]


def committed_offset(consumer: Any, tp: Any) -> int | None:
    """The offset faust last committed for ``tp``, None when it has committed none yet."""
    return consumer._committed_offset.get(tp)


def correct_recovery_highwaters(last_offsets_from: LastOffsets) -> None:
    """Table recovery reads each changelog partition up to its true last offset: faust's
    highwater (the last offset by ListOffsets) is replaced by the last offset read from there,
    when that is later. ``last_offsets_from`` maps (topic, partition) -> start offset to the
    last offset read from each start (gap_check.last_offsets_from)."""

    async def build(self: Any, consumer: Any, tps: Any, destination: Any, title: str) -> None:
        await _FAUST_BUILD_HIGHWATERS(self, consumer, tps, destination, title)
        starts = {(tp.topic, tp.partition): destination[tp] for tp in tps if destination[tp] >= 0}
        found = await last_offsets_from(starts)
        for tp in tps:
            last = found.get((tp.topic, tp.partition))
            if last is not None and last > destination[tp]:
                self.log.info(
                    "%s changelog %s[%d]: last offset %d, not %d as ListOffsets said",
                    title,
                    tp.topic,
                    tp.partition,
                    last,
                    destination[tp],
                )
                destination[tp] = last

    Recovery._build_highwaters = build  # type: ignore[method-assign]


async def take_rounds(
    stream: Any, max_: int, within_s: float, idle_s: float
) -> AsyncIterator[list[Any]]:
    """Rounds of at most ``max_`` events: each starts once its first event is in and then no
    event has come for ``idle_s``, or ``within_s`` after its first event, or at ``max_`` events.
    Events are acked after the round, in a ``finally``, as faust's ``take_events`` does (see
    above); while a round runs, nothing is added to the buffer."""
    buffer: list[Any] = []
    events: list[Any] = []
    grew, full, consumed = asyncio.Event(), asyncio.Event(), asyncio.Event()
    consuming: asyncio.Future | None = None

    async def add_to_buffer(value: Any) -> Any:
        nonlocal consuming
        try:
            if consuming is not None:
                try:
                    await consuming
                finally:
                    consuming = None
            buffer.append(value)
            event = stream.current_event
            if event is None:
                raise RuntimeError("take_rounds found current_event is None")
            events.append(event)
            grew.set()
            if len(buffer) >= max_:
                full.set()
                consumed.clear()
                await stream.wait(consumed)
        except asyncio.CancelledError:  # pragma: no cover
            raise
        except Exception as exc:
            stream.log.exception("Error adding to take buffer: %r", exc)
            await stream.crash(exc)
        return value

    stream.enable_acks = False  # acked here, after each round
    stream.add_processor(add_to_buffer)
    stream._enable_passive(aiter(stream.channel))
    loop = asyncio.get_running_loop()
    while not stream.should_stop:
        if not buffer:
            grew.clear()
            await stream.wait_for_stopped(grew, timeout=within_s)
        first_at = loop.time()
        while buffer and not full.is_set() and loop.time() - first_at < within_s:
            before = len(buffer)
            await asyncio.sleep(idle_s)
            if len(buffer) == before:
                break  # the queue behind the last round is in: go
        if buffer:
            consuming = loop.create_future()
            try:
                yield list(events)
            finally:
                buffer.clear()
                for event in events:
                    await stream.ack(event)
                events.clear()
                notify(consuming)
                full.clear()
                consumed.set()


class ChangelogAcks:
    """The delivery futures of every changelog write of ``tables`` since the last ``durable``."""

    def __init__(self, *tables: Any, timeout_s: float = 60.0):
        self.pending: list[asyncio.Future] = []
        self.timeout_s = timeout_s
        for table in tables:
            table.send_changelog = self._keeping(table.send_changelog)

    def _keeping(self, send_changelog: Any) -> Any:
        def send(*args: Any, **kwargs: Any) -> Any:
            future = send_changelog(*args, **kwargs)
            self.pending.append(future)
            return future

        return send

    async def durable(self) -> None:
        """Every write so far acknowledged by the broker (raises its error, or TimeoutError after
        ``timeout_s``: the round then fails and the worker exits to be restarted)."""
        pending, self.pending = self.pending, []
        if pending:
            await asyncio.wait_for(asyncio.gather(*pending), timeout=self.timeout_s)


def _capped_new_offset(self: Any, tp: Any) -> int | None:
    """faust's ``_new_offset`` with the acked offsets at or above the partition's ceiling held
    back (they stay acked, and are committed once the ceiling passes them)."""
    governed = getattr(self, "_billing_commit_ceilings", None)
    if governed is None or tp.topic != governed[0]:
        return _FAUST_NEW_OFFSET(self, tp)
    ceiling = governed[1].get(tp.partition)
    acked = self._acked[tp]
    held = [o for o in acked if ceiling is None or o >= ceiling]
    if held:
        acked[:] = [o for o in acked if ceiling is not None and o < ceiling]
    try:
        return _FAUST_NEW_OFFSET(self, tp)
    finally:
        if held:
            acked.extend(held)


def cap_commits(consumer: Any, topic: str, ceilings: dict[int, int]) -> None:
    """faust commits ``topic`` only below ``ceilings[partition]`` (nothing for a partition
    without one): the worker sets each to one past the last offset durably applied."""
    consumer._billing_commit_ceilings = (topic, ceilings)
    FaustConsumer._new_offset = _capped_new_offset  # type: ignore[method-assign]


def size_changelog_buffer(producer: Any, max_messages: int) -> None:
    """faust parks every table write in its ``ProducerBuffer`` and, before each event it hands
    over, warns "producer buffer full" and drains it whenever more than 100 (fixed) are waiting. A
    round writes up to two records per event plus a clock per partition and the sweep's
    deletions, and awaits them all itself (ChangelogAcks), so the buffer is sized to a round: the
    soak logged the warning 90 to 170 times a minute at half load."""
    producer.buffer.max_messages = max_messages
