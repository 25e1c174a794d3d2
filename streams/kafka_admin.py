"""Topic definitions and idempotent creation (the same call against Tansu or Apache Kafka)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from streams.config import Settings
from streams.kafka_client import client_kwargs


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str]
    doc: str


def topic_specs(settings: Settings) -> list[TopicSpec]:
    t, n = settings.topics, settings.kafka_partitions
    week, year = str(7 * 86400_000), str(366 * 86400_000)
    return [
        TopicSpec(t.events, n, {"retention.ms": week}, "usage and account events, Avro, key = main account id"),
        TopicSpec(t.deductions, n, {"retention.ms": year}, "one deduction per rated usage event"),
        TopicSpec(t.settlements, n, {"retention.ms": year}, "hourly / daily settlement lines"),
        TopicSpec(t.alerts, n, {"retention.ms": year}, "all alerts"),
        TopicSpec(t.arrears_alerts, n, {"retention.ms": year}, "arrears alerts only"),
        TopicSpec(t.account_status, n, {"cleanup.policy": "compact"}, "latest status per main account (compacted)"),
        TopicSpec(t.dead_letters, n, {"retention.ms": year}, "inputs that could not be applied, with the reason"),
        TopicSpec(t.dead_letters_redriven, n, {"cleanup.policy": "compact"}, "dead letters re-driven by `rating dlq redrive` (compacted)"),
        TopicSpec(t.usage_per_minute, n, {"retention.ms": week}, "requests and tokens per account, model and minute"),
        # faust table changelogs, created here so they are compacted and co-partitioned with the
        # input topic whatever the broker's auto-create defaults are
        TopicSpec(f"{settings.worker_app_id}-accounts-changelog", n, {"cleanup.policy": "compact"},
                  "worker table: one AccountState per main account"),
        TopicSpec(f"{settings.worker_app_id}-partition-clocks-changelog", n, {"cleanup.policy": "compact"},
                  "worker table: stream time per input partition"),
        # faust's leader election topic: declared here because the workers never create topics
        TopicSpec(f"{settings.worker_app_id}-__assignor-__leader", 1, {}, "faust internal: leader election"),
    ]


async def create_topics(settings: Settings) -> list[str]:
    """Create missing topics; returns the names created. Existing topics are left as they are."""
    admin = AIOKafkaAdminClient(**client_kwargs(settings), request_timeout_ms=15000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [s for s in topic_specs(settings) if s.name not in existing]
        if missing:
            try:
                await admin.create_topics(
                    [NewTopic(s.name, s.partitions, settings.kafka_replication_factor, topic_configs=s.config) for s in missing]
                )
            except TopicAlreadyExistsError:
                pass  # another process created them first
        return [s.name for s in missing]
    finally:
        await admin.close()


def ensure_topics(settings: Settings) -> list[str]:
    return asyncio.run(create_topics(settings))


@dataclass(frozen=True)
class TopicState:
    partitions: int
    config: dict[str, str]


async def describe(settings: Settings, names: list[str]) -> dict[str, TopicState]:
    """What the broker has for each existing topic of ``names``: partitions and its configuration."""
    from aiokafka import AIOKafkaConsumer
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    consumer = AIOKafkaConsumer(**client_kwargs(settings), group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        existing = await consumer.topics()
        partitions = {t: len(consumer.partitions_for_topic(t) or ()) for t in names if t in existing}
    finally:
        await consumer.stop()
    configs: dict[str, dict[str, str]] = {t: {} for t in partitions}
    if partitions:
        admin = AIOKafkaAdminClient(**client_kwargs(settings), request_timeout_ms=15000)
        await admin.start()
        try:
            responses = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, t) for t in partitions])
            for response in responses:
                for resource in response.resources:
                    name, entries = resource[3], resource[4]
                    configs.setdefault(name, {}).update({e[0]: e[1] for e in entries})
        finally:
            await admin.close()
    return {t: TopicState(n, configs.get(t, {})) for t, n in partitions.items()}
