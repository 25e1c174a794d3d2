"""The real path: JSON lines -> Avro on a Tansu broker -> faust worker subprocess -> deductions ->
ClickHouse sink -> chDB. The live deductions equal `rating simulate` on the same lines, field by
field; bad input lands in the dead-letter topic; redelivery charges nothing twice."""

import time
from decimal import Decimal

import pytest

from streams.engine import BillingEngine
from streams.local.synthetic import generate, malformed
from streams.rating.profiles import Profiles
from streams.simulate import simulate
from tests.integration.conftest import normalize

pytestmark = pytest.mark.integration


def expected_for(lines):
    return simulate(
        list(enumerate(lines, 1)),
        BillingEngine(Profiles(), allowed_lateness_ms=LATENESS_MS),
        partitions=4,
    )


LATENESS_MS = 300_000


def settlements_equal_simulated(h, expected):
    records = h.consume(h.settings.topics.settlements, len(expected.settlements))
    live = {}
    for _, s in records:
        s = normalize_times(s)
        assert live.get(s["settlement_id"], s) == s
        live[s["settlement_id"]] = s
    want = {s["settlement_id"]: s for s in expected.settlements}
    assert set(live) == set(want)
    for key, s in want.items():
        assert live[key] == s, key


def normalize_times(record):
    from streams.ingest.events import to_millis

    return {
        k: (
            to_millis(v, k)
            if k in ("period_start", "period_end", "closed_at") and not isinstance(v, int)
            else v
        )
        for k, v in record.items()
    }


def live_equals_simulated(h, expected, extra_dups_ok=False):
    records = h.consume(h.settings.topics.deductions, len(expected.deductions))
    live = {}
    for _, d in records:
        d = normalize(d)
        if d["deduction_id"] in live:
            assert live[d["deduction_id"]] == d, "a re-emitted deduction differs from the first"
            assert extra_dups_ok
        live[d["deduction_id"]] = d
    want = {d["deduction_id"]: d for d in expected.deductions}
    assert set(live) == set(want)
    for key, d in want.items():
        assert live[key] == d, key
    return records


def test_stream_lands_exactly_and_equals_simulate(harness):
    h = harness
    good = generate(seed=11, accounts=24, usage_events=500, prefix=h.tag)
    bad = malformed(seed=11, count=12, known_account=f"{h.tag}-00001")
    lines = good[:300] + bad + good[300:]
    expected = expected_for(lines)
    assert len(expected.deductions) > 400 and expected.counts["rejected"] == 12

    h.start_worker()
    assert asyncio_run(h.produce(lines)) == len(lines)
    accounts = f"{h.tag}-%"
    dead_topic = h.settings.topics.events

    def done():
        return (
            h.count("deductions", accounts) >= len(expected.deductions)
            and h.scalar(
                f"SELECT count() FROM dead_letters FINAL WHERE source_topic = '{dead_topic}'"
            )
            >= 12
        )

    assert h.land(done), "not everything landed in time"
    live_equals_simulated(h, expected)
    assert len(expected.settlements) > 50
    assert h.land(lambda: h.count("settlements", accounts) >= len(expected.settlements), timeout=60)
    settlements_equal_simulated(h, expected)
    assert h.count("settlements", accounts) == len(expected.settlements)
    assert h.land(
        lambda: h.count("usage_per_minute", accounts) >= len(expected.usage_minutes), timeout=30
    )
    live_minutes = set(
        h.ch.query(
            "SELECT usage_minute_id, requests, tokens FROM usage_per_minute FINAL WHERE "
            f"main_account_id LIKE '{accounts}'"
        ).result_rows
    )
    assert live_minutes == {
        (m["usage_minute_id"], m["requests"], m["tokens"]) for m in expected.usage_minutes
    }

    # ClickHouse holds exactly the simulated rows and Decimal totals
    assert h.count("deductions", accounts) == len(expected.deductions)
    rated = h.scalar(
        f"SELECT sum(rated_amount) FROM deductions FINAL WHERE main_account_id LIKE '{accounts}'"
    )
    assert rated == sum((Decimal(d["rated_amount"]) for d in expected.deductions), Decimal(0))
    cash = h.scalar(
        f"SELECT sum(cash_amount) FROM deductions FINAL WHERE main_account_id LIKE '{accounts}'"
    )
    assert cash == sum(
        (
            Decimal(s["amount"])
            for d in expected.deductions
            for s in d["splits"]
            if s["bucket_kind"] == "cash"
        ),
        Decimal(0),
    )
    hourly = h.scalar(
        f"SELECT sum(gross_amount) FROM settlement_hourly_v WHERE main_account_id LIKE '{accounts}'"
    )
    assert hourly == rated

    # every bad line is a dead letter with a specific reason; events that decode keep their id and
    # code
    reasons = dict(
        h.ch.query(
            "SELECT event_id, reason_code FROM dead_letters FINAL WHERE source_topic = "
            f"'{dead_topic}' AND event_id != ''"
        ).result_rows
    )
    sim_reasons = {d["event_id"]: d["reason_code"] for d in expected.dead_letters if d["event_id"]}
    for event_id, code in reasons.items():
        assert sim_reasons[event_id] == code
    codes = {
        r[0]
        for r in h.ch.query(
            f"SELECT reason_code FROM dead_letters FINAL WHERE source_topic = '{dead_topic}'"
        ).result_rows
    }
    assert {"not_avro", "unknown_model", "negative_quantity", "unknown_account"} <= codes
    assert (
        h.scalar(f"SELECT count() FROM dead_letters FINAL WHERE source_topic = '{dead_topic}'")
        == 12
    )
    assert all(w.alive() for w in h.pipeline.workers), (
        "the worker must keep running after bad input"
    )

    # redelivering the same events (same ids) changes no total; a sentinel per account shows they
    # were processed
    assert asyncio_run(h.produce(good)) == len(good)
    names = sorted({d["main_account_id"] for d in expected.deductions})
    sentinels = [
        f'{{"kind":"usage","event_id":"sentinel-{n}","account_id":"{n}","main_account_id":"{n}",'
        f'"event_time":"2026-09-01T00:00:00Z","item":"tokens","model":"{model}","input_tokens":0}}'.encode()
        for n, model in sentinel_models(expected)
    ]
    asyncio_run(h.produce(sentinels))
    assert h.land(
        lambda: h.count("deductions", accounts) >= len(expected.deductions) + len(sentinels)
    )
    assert h.count("deductions", accounts) == len(expected.deductions) + len(sentinels)
    assert (
        h.scalar(
            "SELECT sum(rated_amount) FROM deductions FINAL WHERE main_account_id LIKE "
            f"'{accounts}'"
        )
        == rated
    )
    # and nothing was re-emitted: the topic holds each deduction once
    records = h.consume(
        h.settings.topics.deductions, len(expected.deductions) + len(sentinels), timeout=10
    )
    assert len(records) == len(expected.deductions) + len(sentinels)
    assert len(names) == len(sentinels)


def sentinel_models(expected):
    seen = {}
    for d in expected.deductions:
        if d["item"] == "tokens" and not d["billed_elsewhere"]:
            seen.setdefault(d["main_account_id"], d["model"])
    return sorted(seen.items())


def test_worker_killed_mid_stream_loses_and_doubles_nothing(harness):
    h = harness
    lines = generate(seed=23, accounts=40, usage_events=2500, prefix=h.tag)
    expected = expected_for(lines)
    asyncio_run(h.produce(lines))
    accounts = f"{h.tag}-%"
    worker = h.start_worker()
    for kill in range(2):
        # wait until it is part-way through, then SIGKILL and restart
        deadline = time.monotonic() + 60
        target = len(expected.deductions) * (kill + 1) // 4
        while (
            time.monotonic() < deadline
            and len(h.consume(h.settings.topics.deductions, target, timeout=2)) < target
        ):
            time.sleep(0.5)
        worker.kill()
        worker = h.start_worker()
    assert h.land(lambda: h.count("deductions", accounts) >= len(expected.deductions), timeout=180)
    live_equals_simulated(h, expected, extra_dups_ok=True)
    assert h.count("deductions", accounts) == len(expected.deductions)
    rated = h.scalar(
        f"SELECT sum(rated_amount) FROM deductions FINAL WHERE main_account_id LIKE '{accounts}'"
    )
    assert rated == sum((Decimal(d["rated_amount"]) for d in expected.deductions), Decimal(0))


def asyncio_run(coro):
    import asyncio

    return asyncio.run(coro)
