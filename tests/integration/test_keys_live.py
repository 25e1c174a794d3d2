"""Kafka keys, partitions and account membership, live (issue 18, items 5 and 6): a key that is
not UTF-8, a correct key on the wrong partition, a key naming another account, and a top-up sent
by an account that is not the main account are each a dead letter with their own reason, and the
account they aimed at is billed exactly as simulate bills the ordinary traffic alone."""

import asyncio

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from streams.engine import BillingEngine
from streams.ingest.codec import registry
from streams.ingest.partitioner import partition_for
from streams.ingest.producer import encode_line
from streams.kafka_client import producer_kwargs
from streams.local.synthetic import generate
from streams.rating.profiles import Profiles
from streams.simulate import simulate
from tests.integration.test_pipeline_e2e import asyncio_run, live_equals_simulated

pytestmark = pytest.mark.integration
PARTITIONS = 4


def crafted(target: dict, other_main: str) -> list[tuple[str, bytes | None, int, dict]]:
    """(expected reason, key, partition, event) for each class."""
    main = target["main_account_id"]
    right = partition_for(main, PARTITIONS)
    top_up = {
        "kind": "account",
        "type": "top_up",
        "event_id": "keys-stranger",
        "account_id": f"{main}-stranger",
        "main_account_id": main,
        "event_time": target["event_time"],
        "amount": "50",
        "currency": target.get("currency", "CNY"),
    }
    return [
        ("invalid_key", b"\xff" + main.encode(), right, dict(target, event_id="keys-not-utf8")),
        (
            "wrong_partition",
            main.encode(),
            (right + 1) % PARTITIONS,
            dict(target, event_id="keys-wrong-partition"),
        ),
        (
            "key_mismatch",
            other_main.encode(),
            partition_for(other_main, PARTITIONS),
            dict(target, event_id="keys-other-key"),
        ),
        ("not_a_main_account", main.encode(), right, top_up),
    ]


async def send_raw(settings, messages) -> None:
    reg = registry()
    producer = AIOKafkaProducer(**producer_kwargs(settings))
    await producer.start()
    try:
        for _, key, partition, event in messages:
            _, value, _ = encode_line(reg, orjson.dumps(event))
            await producer.send_and_wait(
                settings.topics.events, key=key, value=value, partition=partition
            )
    finally:
        await producer.stop()


def test_keys_partitions_and_membership_are_checked_live(harness):
    h = harness
    lines = generate(seed=21, accounts=6, usage_events=300, prefix=h.tag)
    events = [orjson.loads(raw) for raw in lines]
    usage = [e for e in events if e.get("kind") == "usage"]
    target = usage[len(usage) // 2]
    other_main = next(
        e["main_account_id"] for e in usage if e["main_account_id"] != target["main_account_id"]
    )
    messages = crafted(target, other_main)
    # offline, the membership rule gives the same reason (keys and partitions are live-only)
    offline = simulate(
        list(enumerate([*lines, orjson.dumps(messages[-1][3])], 1)),
        BillingEngine(Profiles(), allowed_lateness_ms=300_000),
        partitions=PARTITIONS,
    )
    assert [d["reason_code"] for d in offline.dead_letters] == ["not_a_main_account"]
    alone = simulate(
        list(enumerate(lines, 1)),
        BillingEngine(Profiles(), allowed_lateness_ms=300_000),
        partitions=PARTITIONS,
    )
    assert offline.deductions == alone.deductions

    worker = h.start_worker()
    half = len(lines) // 2
    assert asyncio_run(h.produce(lines[:half])) == half
    asyncio.run(send_raw(h.settings, messages))
    assert asyncio_run(h.produce(lines[half:])) == len(lines) - half
    topic = h.settings.topics.events
    assert h.land(
        lambda: (
            h.count("deductions", f"{h.tag}-%") >= len(alone.deductions)
            and h.scalar(f"SELECT count() FROM dead_letters FINAL WHERE source_topic = '{topic}'")
            >= len(messages)
        ),
        timeout=180,
    ), "not everything landed"
    live_equals_simulated(h, alone)
    rows = dict(
        h.ch.query(
            f"SELECT event_id, reason_code FROM dead_letters FINAL WHERE source_topic = '{topic}'"
        ).result_rows
    )
    assert rows == {event["event_id"]: reason for reason, _, _, event in messages}
    assert worker.alive()
