"""The gap check's read against the real broker: it reports where records really are."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaProducer

from streams.worker.gap_check import first_offset_at, offsets_absent


def test_first_offset_at_reads_the_log_as_it_is(harness):
    settings = harness.settings
    topic = settings.topics.events

    async def go() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers)
        await producer.start()
        try:
            for i in range(10):
                await producer.send_and_wait(topic, b"x%d" % i, key=b"k", partition=1)
        finally:
            await producer.stop()
        assert await first_offset_at(settings, topic, 1, 0) == 0
        assert await first_offset_at(settings, topic, 1, 7) == 7

        async def first(t: str, p: int, o: int) -> int | None:
            return await first_offset_at(settings, t, p, o)

        # offsets 3..8 are in the log: a jump from 2 to 9 is not a gap
        assert await offsets_absent(first, topic, 1, 3, 9) is False

    asyncio.run(go())
