"""Whether offsets the worker's consumer jumped over are really absent from the log.

A jump in the offsets faust hands over is usually a stale prefetch after a rebalance's seek, and a
re-read fixes it. It can also be a real gap: transaction markers or aborted records, compaction.
Before this check, a jump that outlived re-reads for 10 s was taken for a real gap and committed
past; the fault suite once saw 370 messages skipped that way while they were in the log. Now the
worker asks the broker with a consumer of its own (no group, nothing committed): the gap is real
only when a fetch at its first offset returns nothing before the jump's target.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from streams.config import Settings
from streams.kafka_client import client_kwargs

FETCH_TIMEOUT_MS = 2_000
ATTEMPTS = 3

FirstOffset = Callable[[str, int, int], Awaitable[int | None]]


async def first_offset_at(
    settings: Settings, topic: str, partition: int, offset: int
) -> int | None:
    """The offset of the first record a plain consumer gets when it reads from ``offset`` (None:
    nothing came back in the attempts)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    tp = TopicPartition(topic, partition)
    consumer = AIOKafkaConsumer(**client_kwargs(settings), enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign([tp])
        consumer.seek(tp, offset)
        for _ in range(ATTEMPTS):
            batch = await consumer.getmany(tp, timeout_ms=FETCH_TIMEOUT_MS)
            records: list[Any] = batch.get(tp, [])
            if records:
                return int(records[0].offset)
        return None
    finally:
        await consumer.stop()


async def offsets_absent(
    first_offset: FirstOffset, topic: str, partition: int, first: int, target: int
) -> bool:
    """True when nothing lies in ``first..target-1``: the first record read from ``first`` is at
    ``target`` or later. No answer is not taken for absence."""
    got = await first_offset(topic, partition, first)
    return got is not None and got >= target


RESEEK_AFTER_S = 1.0


def seek_due(
    issued: dict[int, tuple[int, float]],
    partition: int,
    offset: int,
    now_s: float,
    reseek_after_s: float = RESEEK_AFTER_S,
) -> bool:
    """Whether to seek ``partition`` back to ``offset`` now, recording the seek when it is due.

    Not again within ``reseek_after_s`` of a seek to the same offset: messages fetched before it
    keep arriving for a moment, and seeking on each of them restarts the fetch every round. A seek
    can still be lost: faust's drain loop drops any message below the highest offset it has handed
    over, so a stale message passed after the seek hides the re-read. Hence a repeat after the
    pause, once the stale messages have drained."""
    last = issued.get(partition)
    if last is not None and last[0] == offset and now_s - last[1] < reseek_after_s:
        return False
    issued[partition] = (offset, now_s)
    return True


async def last_offsets_from(
    settings: Settings, starts: dict[tuple[str, int], int]
) -> dict[tuple[str, int], int]:
    """The last offset a plain consumer reads in its first fetch from each ``(topic, partition)``
    at its start offset; partitions that return nothing in the attempts are left out. Read from
    the base offset of a partition's last record batch, that is the partition's last offset (see
    streams/worker/faust_internals.py, ``correct_recovery_highwaters``)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    if not starts:
        return {}
    consumer = AIOKafkaConsumer(**client_kwargs(settings), enable_auto_commit=False)
    await consumer.start()
    try:
        tps = {TopicPartition(t, p): o for (t, p), o in starts.items()}
        consumer.assign(list(tps))
        for tp, offset in tps.items():
            consumer.seek(tp, offset)
        found: dict[tuple[str, int], int] = {}
        for _ in range(ATTEMPTS):
            batch = await consumer.getmany(*tps, timeout_ms=FETCH_TIMEOUT_MS)
            for tp, records in batch.items():
                if records and (tp.topic, tp.partition) not in found:
                    found[(tp.topic, tp.partition)] = max(int(r.offset) for r in records)
                    consumer.pause(tp)
            if len(found) == len(tps):
                break
        return found
    finally:
        await consumer.stop()
