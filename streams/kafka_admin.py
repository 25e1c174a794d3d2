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


# Input retention: re-rating (`rating rerate`) reads the events topic from its start; history older
# than this is read from ClickHouse's events_archive (`--from-clickhouse`, SINK_ARCHIVE_EVENTS).
INPUT_RETENTION_MS = 7 * 86400_000
OUTPUT_RETENTION_MS = 366 * 86400_000
# Compacted topics: the active segment is never compacted, so a short segment.ms bounds what a
# restore reads beyond the latest record per key (the partition clocks are written every round;
# with Kafka's 7-day default a restore would read a week of them). min.compaction.lag.ms keeps
# each record readable for a while, so a reader a few minutes behind (a gateway following the
# account status, `rating account show`) still sees every change.
COMPACT_SEGMENT_MS = 3600_000
COMPACT_MIN_LAG_MS = 600_000


def compacted() -> dict[str, str]:
    return {
        "cleanup.policy": "compact",
        "segment.ms": str(COMPACT_SEGMENT_MS),
        "min.compaction.lag.ms": str(COMPACT_MIN_LAG_MS),
    }


def topic_specs(settings: Settings) -> list[TopicSpec]:
    t, n = settings.topics, settings.kafka_partitions
    week, year = str(INPUT_RETENTION_MS), str(OUTPUT_RETENTION_MS)
    specs = [
        TopicSpec(
            t.events,
            n,
            {"retention.ms": week},
            "usage and account events, Avro, key = main account id",
        ),
        TopicSpec(t.deductions, n, {"retention.ms": year}, "one deduction per rated usage event"),
        TopicSpec(t.settlements, n, {"retention.ms": year}, "hourly / daily settlement lines"),
        TopicSpec(t.alerts, n, {"retention.ms": year}, "all alerts"),
        TopicSpec(t.arrears_alerts, n, {"retention.ms": year}, "arrears alerts only"),
        TopicSpec(t.account_status, n, compacted(), "latest status per main account (compacted)"),
        TopicSpec(
            t.account_balances,
            n,
            {"retention.ms": year},
            "cash balance after each account event that moved it",
        ),
        TopicSpec(
            t.dead_letters,
            n,
            {"retention.ms": year},
            "inputs that could not be applied, with the reason",
        ),
        TopicSpec(
            t.dead_letters_redriven,
            n,
            compacted(),
            "dead letters re-driven by `rating dlq redrive` (compacted)",
        ),
        TopicSpec(
            t.usage_per_minute,
            n,
            {"retention.ms": week},
            "requests and tokens per account, model and minute",
        ),
        # faust table changelogs, created here so they are compacted and co-partitioned with the
        # input topic whatever the broker's auto-create defaults are
        TopicSpec(
            f"{settings.worker_app_id}-accounts-changelog",
            n,
            compacted(),
            "worker table: one AccountState per main account",
        ),
        TopicSpec(
            f"{settings.worker_app_id}-partition-clocks-changelog",
            n,
            compacted(),
            "worker table: stream time per input partition",
        ),
        TopicSpec(
            f"{settings.worker_app_id}-event-ids-changelog",
            n,
            compacted(),
            "worker table: one dedupe entry per applied event id, within the horizon",
        ),
        # faust's leader election topic: declared here because the workers never create topics
        TopicSpec(
            f"{settings.worker_app_id}-__assignor-__leader",
            1,
            {},
            "faust internal: leader election",
        ),
    ]
    # every write is acks=all: without this, the broker's default of 1 acknowledges a changelog
    # record (a balance) that only the leader holds
    isr = {"min.insync.replicas": str(settings.kafka_min_insync_replicas)}
    return [TopicSpec(s.name, s.partitions, {**s.config, **isr}, s.doc) for s in specs]


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
                    [
                        NewTopic(
                            s.name,
                            s.partitions,
                            settings.kafka_replication_factor,
                            topic_configs=s.config,
                        )
                        for s in missing
                    ]
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
    replication_factor: int | None = (
        None  # the smallest replica count of its partitions; None if unknown
    )


async def describe(settings: Settings, names: list[str]) -> dict[str, TopicState]:
    """What the broker has for each
    existing topic of ``names``: partitions and its configuration."""
    from aiokafka import AIOKafkaConsumer
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    consumer = AIOKafkaConsumer(**client_kwargs(settings), group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        existing = await consumer.topics()
        partitions = {
            t: len(consumer.partitions_for_topic(t) or ()) for t in names if t in existing
        }
        replicas = {t: _replication_factor(consumer._client.cluster, t) for t in partitions}
    finally:
        await consumer.stop()
    configs: dict[str, dict[str, str]] = {t: {} for t in partitions}
    if partitions:
        admin = AIOKafkaAdminClient(**client_kwargs(settings), request_timeout_ms=15000)
        await admin.start()
        try:
            responses = await admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, t) for t in partitions]
            )
            for response in responses:
                for resource in response.resources:
                    name, entries = resource[3], resource[4]
                    configs.setdefault(name, {}).update({e[0]: e[1] for e in entries})
        finally:
            await admin.close()
    return {t: TopicState(n, configs.get(t, {}), replicas.get(t)) for t, n in partitions.items()}


def _replication_factor(cluster, topic: str) -> int | None:
    """The replica count of the topic's least replicated partition, from the cluster metadata."""
    counts = [
        len(meta.replicas)
        for meta in getattr(cluster, "_partitions", {}).get(topic, {}).values()
        if getattr(meta, "replicas", None)
    ]
    return min(counts) if counts else None


def differences(spec: TopicSpec, have: TopicState, replication_factor: int) -> list[str]:
    """What the broker has that differs from the definition (empty: as defined). Partitions first,
    then the replication factor, then each configured key (min.insync.replicas among them)."""
    out = []
    if have.partitions != spec.partitions:
        out.append(f"{have.partitions} partitions, expected {spec.partitions}")
    if have.replication_factor is not None and have.replication_factor != replication_factor:
        out.append(f"replication factor {have.replication_factor}, expected {replication_factor}")
    differ = [
        f"{k}={have.config.get(k)!r}" for k, v in spec.config.items() if have.config.get(k) != v
    ]
    if differ:
        out.append(f"broker has {', '.join(differ)}")
    return out
