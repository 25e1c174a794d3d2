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


def test_the_last_batch_read_gives_the_true_end_of_a_partition(harness):
    """Table recovery on the embedded broker reads each changelog's last record batch for its
    end (faust_internals.correct_recovery_highwaters): from the offset ListOffsets implies, the
    read reaches the last record, whether or not the broker's answer was short."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from streams.kafka_client import client_kwargs
    from streams.worker.gap_check import last_offsets_from

    settings = harness.settings
    topic = f"{settings.topics.prefix}last-batch-probe"  # written by this test alone

    async def go() -> tuple[int, dict[tuple[str, int], int]]:
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic

        admin = AIOKafkaAdminClient(**client_kwargs(settings))
        await admin.start()
        try:
            await admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])
        finally:
            await admin.close()
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers)
        await producer.start()
        try:
            for _round in range(3):  # three batches of 50 records each
                futures = [
                    await producer.send(topic, b"v%d" % i, key=b"k", partition=2) for i in range(50)
                ]
                await asyncio.gather(*futures)
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(**client_kwargs(settings), enable_auto_commit=False)
        await consumer.start()
        try:
            tp = TopicPartition(topic, 2)
            end = (await consumer.end_offsets([tp]))[tp]
        finally:
            await consumer.stop()
        # Tansu answers the last batch's first offset + 1 (101); Kafka the true end (150)
        assert 1 <= end <= 150
        return end, await last_offsets_from(settings, {(topic, 2): end - 1})

    end, found = asyncio.run(go())
    assert found == {(topic, 2): 149}, f"ListOffsets said {end}"
    assert asyncio.run(last_offsets_from(settings, {})) == {}
