"""Connection settings shared by every Kafka client (aiokafka producer, consumer, admin)."""

from __future__ import annotations

import ssl
from typing import Any, AsyncIterator, Callable

from streams.config import Settings


def client_kwargs(settings: Settings) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap_servers,
        "security_protocol": settings.kafka_security_protocol,
    }
    if settings.kafka_security_protocol in ("SSL", "SASL_SSL"):
        kwargs["ssl_context"] = ssl.create_default_context(cafile=settings.kafka_ssl_cafile or None)
    if settings.kafka_security_protocol.startswith("SASL"):
        kwargs["sasl_mechanism"] = settings.kafka_sasl_mechanism or "SCRAM-SHA-512"
        kwargs["sasl_plain_username"] = settings.kafka_sasl_username
        kwargs["sasl_plain_password"] = settings.kafka_sasl_password
    return kwargs


def producer_kwargs(settings: Settings) -> dict[str, Any]:
    """Producers of events and outputs. KAFKA_PRODUCER_MAX_BATCH_SIZE is not applied here: it
    exists for faust's table changelogs on the local broker only (see streams/local/tansu.py)."""
    kwargs = client_kwargs(settings)
    kwargs["acks"] = "all"
    kwargs["linger_ms"] = 5
    return kwargs


async def read_topic(settings: Settings, topic: str, partitions: list[int] | None = None,
                     on_progress: Callable[[int, int], None] | None = None) -> AsyncIterator[Any]:
    """Every message of ``topic`` (or of some of its partitions) from the start to its end, without
    a consumer group (nothing is committed, nobody rebalances).
    ``on_progress(done, total)`` is called as messages arrive."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(**client_kwargs(settings), enable_auto_commit=False, group_id=None,
                                max_partition_fetch_bytes=8 * 1024 * 1024)
    await consumer.start()
    try:
        available = consumer.partitions_for_topic(topic)
        if available is None:
            await consumer._client.force_metadata_update()
            available = consumer.partitions_for_topic(topic)
        if not available:
            raise LookupError(f"topic {topic!r} does not exist on {settings.kafka_bootstrap_servers}")
        tps = [TopicPartition(topic, p) for p in sorted(available) if partitions is None or p in partitions]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        start = {tp: await consumer.position(tp) for tp in tps}
        end = await consumer.end_offsets(tps)
        total = sum(end[tp] - start[tp] for tp in tps)
        done = 0
        if on_progress is not None:
            on_progress(0, total)
        # A partition is done when its position has reached the end offset AND a fetch there comes
        # back empty: some brokers (Tansu) report an end offset short of a multi-record batch.
        pending = set(tps)
        while pending:
            batch = await consumer.getmany(*pending, timeout_ms=500, max_records=5000)
            for tp in list(pending):
                if tp not in batch and await consumer.position(tp) >= end[tp]:
                    batch.update(await consumer.getmany(tp, timeout_ms=300))  # one more look, for this partition alone
                    if tp not in batch:
                        pending.discard(tp)
            for tp, messages in batch.items():
                for m in messages:
                    done += 1
                    yield m
                if messages and messages[-1].offset + 1 > end[tp]:
                    total += messages[-1].offset + 1 - end[tp]
                    end[tp] = messages[-1].offset + 1
            if on_progress is not None:
                on_progress(done, total)
    finally:
        await consumer.stop()
