"""Connection settings shared by every Kafka client (aiokafka producer, consumer, admin)."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Callable
from typing import Any

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


class TopicNotFound(LookupError):
    """The topic does not exist on the cluster."""


class ReadStalled(RuntimeError):
    """A partition stopped delivering before its end (no leader, broker gone)."""


SNAPSHOT_SLACK_MS = 5_000  # producer clocks may run a little ahead of ours
STALL_SECONDS = 60.0


async def read_topic(
    settings: Settings,
    topic: str,
    partitions: list[int] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> AsyncIterator[Any]:
    """Every message of ``topic`` (or of some of its partitions) from the start to its end as of
    the moment the read begins, without a consumer group (nothing is committed, nobody rebalances).
    ``on_progress(done, total)`` is called as messages arrive.

    The end is the end offset at the start. Some brokers (Tansu) report an end offset short of a
    multi-record batch, so past it a message is still taken while it was written before the read
    began (by its timestamp) and the partition is done when a fetch there comes back empty; on a
    busy topic the first message written after the start ends the partition, so this never runs on
    with live traffic."""
    import time

    from aiokafka import AIOKafkaConsumer, TopicPartition

    started_ms = int(time.time() * 1000)
    consumer = AIOKafkaConsumer(
        **client_kwargs(settings),
        enable_auto_commit=False,
        group_id=None,
        auto_offset_reset="none",  # retention deleting what we read: fail, never skip
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    await consumer.start()
    try:
        available = consumer.partitions_for_topic(topic)
        if available is None:
            await consumer._client.force_metadata_update()
            available = consumer.partitions_for_topic(topic)
        if not available:
            raise TopicNotFound(
                f"topic {topic!r} does not exist on {settings.kafka_bootstrap_servers}"
            )
        tps = [
            TopicPartition(topic, p)
            for p in sorted(available)
            if partitions is None or p in partitions
        ]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        start = {tp: await consumer.position(tp) for tp in tps}
        end = await consumer.end_offsets(tps)
        total = sum(end[tp] - start[tp] for tp in tps)
        done = 0
        if on_progress is not None:
            on_progress(0, total)
        pending = set(tps)
        last_progress = time.monotonic()
        while pending:
            batch = await consumer.getmany(*pending, timeout_ms=500, max_records=5000)
            for tp in list(pending):
                if tp not in batch and await consumer.position(tp) >= end[tp]:
                    # one more look, for this partition alone
                    batch.update(await consumer.getmany(tp, timeout_ms=300))
                    if tp not in batch:
                        pending.discard(tp)
            for tp, messages in batch.items():
                for m in messages:
                    if m.offset >= end[tp]:
                        if m.timestamp > started_ms + SNAPSHOT_SLACK_MS:
                            # written after the read began: the snapshot ends here
                            pending.discard(tp)
                            break
                        end[tp] = m.offset + 1
                        total += 1
                    done += 1
                    yield m
                last_progress = time.monotonic()
            if pending and time.monotonic() - last_progress > STALL_SECONDS:
                # a list: str.join cannot take the async generator an await in a genexp makes
                stuck = ", ".join(
                    [
                        f"{tp.partition}@{await consumer.position(tp)}/{end[tp]}"
                        for tp in sorted(pending)
                    ]
                )
                raise ReadStalled(
                    f"reading {topic} stalled for {STALL_SECONDS:.0f}s at partition@position/end "
                    f"{stuck}"
                )
            if on_progress is not None:
                on_progress(done, total)
    finally:
        await consumer.stop()


async def read_records(
    settings: Settings,
    topic: str,
    schema: str,
    on_progress: Callable[[int, int], None] | None = None,
) -> AsyncIterator[tuple[Any, dict[str, Any]]]:
    """(message, decoded record) of every ``schema`` record of ``topic``. Records that do not
    decode are passed over: these readers report, the sink is the one that stops on them."""
    from streams.ingest.codec import DecodeError, registry

    reg = registry()
    async for m in read_topic(settings, topic, on_progress=on_progress):
        try:
            name, record = reg.decode(m.value)
        except DecodeError:
            continue
        if name == schema:
            yield m, record
