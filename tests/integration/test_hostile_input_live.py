"""Hostile and careless input, live: more than 10,000 messages mixing every class of bad input
with the ordinary traffic of 50 accounts, through the real broker, worker and sink. Nothing is
lost, no ordinary account changes (live equals simulate of the ordinary traffic alone), every
bad input is a dead letter with the reason simulate gives, counts reconcile, and the worker
never restarts."""

import random
import re
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from streams.engine import BillingEngine
from streams.local.synthetic import START, generate, iso
from streams.rating.profiles import Profiles
from streams.simulate import simulate
from tests.integration.test_pipeline_e2e import (
    asyncio_run,
    live_equals_simulated,
    settlements_equal_simulated,
)

pytestmark = pytest.mark.integration
CLASSES = (
    "invalid_id",
    "huge_ids",
    "not_json",
    "naive_time",
    "year_1970",
    "number_as_string",
    "no_event_id",
    "tiny_exponent",
    "absurd_tokens",
    "unknown_model",
    "future",
    "ghost_2099",
    "before_opened",
    "currency",
    "not_in_profile",
    "too_old",
)


def accounts_of(lines):
    out = {}
    for raw in lines:
        e = orjson.loads(raw)
        if e.get("type") == "account_opened":
            out[e["main_account_id"]] = e
    return out


def usage_of(lines):
    return [orjson.loads(r) for r in lines if b'"kind":"usage"' in r]


def hostile_line(k, i, acct, sample, rng):
    main = acct["main_account_id"]
    ev = dict(sample, event_id=f"hostile-{i}", trace_id=f"hostile-t{i}")
    if k == "invalid_id":
        ev["event_id"] = rng.choice([f"h\x00{i}", f"h {i}", f"h\u200b{i}", f"he\u0301{i}"])
    elif k == "huge_ids":
        ev["event_id"], ev["trace_id"] = f"{i}" + "e" * 400_000, f"{i}" + "t" * 400_000
    elif k == "not_json":
        return (
            bytes(rng.randrange(256) for _ in range(rng.randint(5, 60)))
            .replace(b"\n", b" ")
            .lstrip(b'{[ "0123456789-tfn')
            or b"@"
        )
    elif k == "naive_time":
        ev["event_time"] = "2026-05-01T10:00:00"
    elif k == "year_1970":
        ev["event_time"] = rng.choice(["1970-01-01T00:00:00Z", "9999-12-31T00:00:00Z"])
    elif k == "number_as_string":
        return orjson.dumps(
            {
                "kind": "usage",
                "event_id": f"hostile-{i}",
                "account_id": main,
                "main_account_id": main,
                "event_time": sample["event_time"],
                "item": "tokens",
                "model": "kimi-k2.5",
                "input_tokens": "12",
            }
        )
    elif k == "no_event_id":
        ev.pop("event_id")
    elif k == "tiny_exponent":
        return orjson.dumps(
            {
                "kind": "account",
                "event_id": f"hostile-{i}",
                "account_id": main,
                "main_account_id": main,
                "event_time": sample["event_time"],
                "type": "top_up",
                "amount": "1E-999999",
            }
        )
    elif k == "absurd_tokens":
        ev.update(item="tokens", input_tokens=10**10, cache_hit_tokens=0, cache_write_tokens=0)
    elif k == "unknown_model":
        ev.update(model=f"no-such-model-{i}")
    elif k == "future":
        ev["event_time"] = iso(datetime.now(UTC) + timedelta(days=1))
    elif k == "ghost_2099":
        ev.update(
            account_id=f"ghost-{i}", main_account_id=f"ghost-{i}", event_time="2099-01-01T00:00:00Z"
        )
    elif k == "before_opened":
        ev["event_time"] = iso(START - timedelta(days=1))
    elif k == "currency":
        return orjson.dumps(
            {
                "kind": "account",
                "event_id": f"hostile-{i}",
                "account_id": main,
                "main_account_id": main,
                "event_time": sample["event_time"],
                "type": "top_up",
                "amount": "20",
                "currency": "JPY",
            }
        )
    elif k == "not_in_profile":
        return orjson.dumps(
            {
                "kind": "account",
                "event_id": f"hostile-{i}",
                "account_id": main,
                "main_account_id": main,
                "event_time": sample["event_time"],
                "type": "model_activated",
                "model": "deepseek-v3",
            }
        )
    elif k == "too_old":
        ev["event_time"] = iso(START - timedelta(days=60))
    return orjson.dumps(ev)


def build(tag):
    rng = random.Random(41)
    ordinary = generate(seed=41, accounts=50, usage_events=5800, prefix=tag)
    accounts = accounts_of(ordinary)
    samples = {}
    for u in usage_of(ordinary):
        samples.setdefault(u["main_account_id"], u)
    non_ark = [
        a for a in accounts.values() if a["profile"] != "ark" and a["main_account_id"] in samples
    ]
    hostile = []
    for i in range(4400):
        k = CLASSES[i % len(CLASSES)]
        if k == "huge_ids" and i >= 3 * len(CLASSES):  # three 800 KB messages are enough
            k = "unknown_model"
        acct = rng.choice(non_ark)
        hostile.append(hostile_line(k, i, acct, samples[acct["main_account_id"]], rng))
    # interleave (rejected events move no clock, so where they sit changes nothing) ...
    mixed = list(ordinary)
    for line in hostile:
        mixed.insert(rng.randrange(len(mixed) + 1), line)
    # ... then, after everything, ids reused with other content, and plain retries
    tail = []
    for j, u in enumerate(rng.sample(usage_of(ordinary), 60)):
        changed = dict(
            u, trace_id=u.get("trace_id", "") + "-other", input_tokens=u.get("input_tokens", 0) + 1
        )
        tail.append(orjson.dumps(changed if j % 2 == 0 else u))
    return ordinary, mixed + tail


def live_reason(code):
    # the one difference by nature: bytes that are not JSON are not Avro either, live
    return "not_avro" if code == "invalid_json" else code


def test_ten_thousand_hostile_and_ordinary_messages(harness):
    h = harness
    ordinary, lines = build(h.tag)
    assert len(lines) > 10_000
    wall = int(time.time() * 1000)
    engine = lambda: BillingEngine(Profiles(), allowed_lateness_ms=300_000)  # noqa: E731
    alone = simulate(list(enumerate(ordinary, 1)), engine(), partitions=4, wall_ms=wall)
    mixed = simulate(list(enumerate(lines, 1)), engine(), partitions=4, wall_ms=wall)
    # offline first: the hostile input changes no ordinary account's records
    assert mixed.deductions == alone.deductions and mixed.settlements == alone.settlements
    assert mixed.alerts == alone.alerts and mixed.statuses == alone.statuses
    rejected = len(lines) - len(ordinary) - 30  # 30 of the tail are plain retries
    assert mixed.counts["rejected"] == rejected and mixed.counts["duplicate"] == 30
    codes = Counter(d["reason_code"] for d in mixed.dead_letters)
    assert {
        "invalid_id",
        "invalid_json",
        "invalid_field",
        "event_time_in_future",
        "unknown_account",
        "before_account_opened",
        "currency_mismatch",
        "not_supported_by_profile",
        "event_too_old",
        "event_id_conflict",
        "quantity_out_of_range",
        "unknown_model",
    } <= set(codes), codes

    worker = h.start_worker()
    assert asyncio_run(h.produce(lines)) == len(lines)
    topic = h.settings.topics.events
    assert h.land(
        lambda: (
            h.count("deductions", f"{h.tag}-%") >= len(alone.deductions)
            and h.scalar(f"SELECT count() FROM dead_letters FINAL WHERE source_topic = '{topic}'")
            >= rejected
        ),
        timeout=240,
    ), "not everything landed"
    live_equals_simulated(h, alone)
    assert h.land(
        lambda: h.count("settlements", f"{h.tag}-%") >= len(alone.settlements), timeout=60
    )
    settlements_equal_simulated(h, alone)
    live_codes = Counter(
        r[0]
        for r in h.ch.query(
            f"SELECT reason_code FROM dead_letters FINAL WHERE source_topic = '{topic}'"
        ).result_rows
    )
    assert live_codes == Counter(live_reason(c) for c in codes.elements())
    biggest = h.scalar(
        f"SELECT max(length(payload_base64)) FROM dead_letters FINAL WHERE source_topic = '{topic}'"
    )
    assert 0 < biggest <= 4 * 32 * 1024 // 3 + 4
    assert worker.alive() and len(h.pipeline.workers) == 1, "the worker must never restart"

    # counts reconcile: consumed = rated + applied + rejected + duplicates, as simulate counted
    deadline, line = time.monotonic() + 30, ""
    while time.monotonic() < deadline:
        found = re.findall(
            r"counts messages=\d+ consumed=(\d+) rated=(\d+) applied=(\d+) rejected=(\d+) "
            r"duplicates=(\d+)",
            worker.log_path.read_text(errors="replace"),
        )
        if found and int(found[-1][0]) == len(lines):
            line = found[-1]
            break
        time.sleep(1)
    assert line, "the worker never reported all messages consumed"
    consumed, rated, applied, rej, dup = map(int, line)
    assert consumed == rated + applied + rej + dup
    assert (rated, applied, rej, dup) == (
        mixed.counts["rated"],
        mixed.counts["applied"],
        rejected,
        30,
    )
