"""The fault suite: each scenario streams >= 20,000 usage and account events over >= 200 accounts of
the four profiles through a real Tansu broker, real faust worker processes and real chDB, injects
a fault, and then compares what landed in ClickHouse (deductions, settlements, alerts) row for row
with `rating simulate` on the same stream. Pass = identical: nothing lost, nothing doubled.

The randomness is seeded; the seed is printed (and can be set with FAULT_SEED) so a failure can be
replayed."""

import asyncio
import os
import random
import re
import time
from decimal import Decimal

import orjson
import pytest

from streams.engine import BillingEngine
from streams.ingest.codec import registry
from streams.ingest.producer import delivery_order
from streams.local.synthetic import generate
from streams.rating.profiles import Profiles
from streams.simulate import simulate
from streams.sink.clickhouse import ClickHouseSink
from tests.integration.test_sink_outage import FlakyClickHouse

pytestmark = pytest.mark.integration

SEED = int(os.environ.get("FAULT_SEED", random.SystemRandom().randrange(1, 10**6)))
ACCOUNTS, EVENTS = 220, 20_000
# Seeds 429275, 66964 and 587742 once lost messages here: faust committed past a gap that a
# prefetched message opened after a rebalance. The worker now enforces offset order itself.
REBALANCE_BATCH = int(os.environ.get("REBALANCE_BATCH", "10"))


@pytest.fixture(scope="module", autouse=True)
def announce_seed():
    print(f"\nfault suite seed: FAULT_SEED={SEED}")


def expected(lines):
    return simulate(
        list(enumerate(lines, 1)),
        BillingEngine(Profiles(), allowed_lateness_ms=300_000),
        partitions=4,
    )


def produce(h, lines, batch=1):
    return asyncio.run(h.produce(lines, batch_size=batch))


def wait_until_landed(h, sim, timeout=240):
    acc = f"{h.tag}-%"

    def done():
        return (
            h.count("deductions", acc) >= len(sim.deductions)
            and h.count("settlements", acc) >= len(sim.settlements)
            and h.count("alerts", acc) >= len(sim.alerts)
            and h.count("account_balances", acc) >= len(sim.balances)
        )

    ok = h.land(done, timeout=timeout)
    if not ok:
        landed = {
            r[0]
            for r in h.ch.query(
                f"SELECT event_id FROM deductions FINAL WHERE main_account_id LIKE '{acc}'"
            ).result_rows
        }
        missing = [
            (d["event_id"], d["main_account_id"])
            for d in sim.deductions
            if d["event_id"] not in landed
        ]
        print("MISSING", missing[:20])
        print("OFFSETS", asyncio.run(offsets_report(h)))
        for w in h.pipeline.workers:
            print(log_tail(w))
    assert ok, (
        f"seed {SEED}: deductions {h.count('deductions', acc)}/{len(sim.deductions)}, settlements "
        f"{h.count('settlements', acc)}/{len(sim.settlements)}, alerts "
        f"{h.count('alerts', acc)}/{len(sim.alerts)}"
    )


async def offsets_report(h):
    """Where each partition ends, and where the worker and sink groups committed: tells a worker
    that stopped rating from a sink that stopped landing."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from streams.kafka_client import client_kwargs

    topics = h.settings.topics
    report = {}
    for group, topic in (
        (h.settings.worker_app_id, topics.events),
        (h.settings.sink_group_id, topics.deductions),
    ):
        c = AIOKafkaConsumer(**client_kwargs(h.settings), group_id=group, enable_auto_commit=False)
        await c.start()
        try:
            tps = [TopicPartition(topic, p) for p in range(4)]
            ends = await c.end_offsets(tps)
            report[topic] = {tp.partition: (await c.committed(tp), ends[tp]) for tp in tps}
        finally:
            await c.stop()
    return report


NOISE = ("Starting...", "Stopping...", "Stopped", "buffer full", "flush took", "|", "+--")


def log_tail(worker, lines=40):
    """The end of a worker's log without faust's start/stop chatter and recovery tables."""
    text = worker.log_path.read_text(errors="replace").splitlines()
    kept = [line[:300] for line in text if not any(n in line for n in NOISE)]
    return f"LOG {worker.log_path.name} (alive={worker.alive()}):\n  " + "\n  ".join(kept[-lines:])


def assert_identical_to_simulate(h, sim):
    acc = f"{h.tag}-%"
    q = h.ch.query
    deductions = {
        r[0]: r[1:]
        for r in q(
            "SELECT deduction_id, event_id, toString(rated_amount), toString(cash_amount), "
            "toString(unbilled_amount), split_bucket_id "
            f"FROM deductions FINAL WHERE main_account_id LIKE '{acc}'"
        ).result_rows
    }
    want = {}
    for d in sim.deductions:
        cash = sum(
            (Decimal(s["amount"]) for s in d["splits"] if s["bucket_kind"] == "cash"), Decimal(0)
        )
        want[d["deduction_id"]] = (
            d["event_id"],
            Decimal(d["rated_amount"]),
            cash,
            Decimal(d["unbilled_amount"]),
            [s["bucket_id"] for s in d["splits"]],
        )
    got = {
        k: (v[0], Decimal(v[1]), Decimal(v[2]), Decimal(v[3]), list(v[4]))
        for k, v in deductions.items()
    }
    assert got == want, f"seed {SEED}: deductions differ"

    lines = {
        r[0]: (r[1], Decimal(r[2]), r[3])
        for r in q(
            "SELECT settlement_id, line_type, toString(gross_amount), event_count FROM "
            "settlements FINAL "
            f"WHERE main_account_id LIKE '{acc}'"
        ).result_rows
    }
    assert lines == {
        s["settlement_id"]: (s["line_type"], Decimal(s["gross_amount"]), s["event_count"])
        for s in sim.settlements
    }, f"seed {SEED}: settlements differ"
    # each deduction names its line, as simulate's does, and has the sequence simulate gave it:
    # a worker restarted mid-stream numbers every record as the first run would have
    named = {
        r[0]: (r[1], r[2])
        for r in q(
            "SELECT deduction_id, settlement_id, sequence FROM deductions FINAL WHERE "
            f"main_account_id LIKE '{acc}'"
        ).result_rows
    }
    assert named == {
        d["deduction_id"]: (d["settlement_id"], d["sequence"]) for d in sim.deductions
    }, f"seed {SEED}: settlement ids or sequences differ"
    balances = {
        r[0]: (Decimal(r[1]), r[2])
        for r in q(
            "SELECT source_event_id, toString(cash_balance), sequence FROM account_balances FINAL "
            f"WHERE main_account_id LIKE '{acc}'"
        ).result_rows
    }
    assert balances == {
        b["source_event_id"]: (Decimal(b["cash_balance"]), b["sequence"]) for b in sim.balances
    }, f"seed {SEED}: balance records differ"

    alerts = {
        r[0]: r[1]
        for r in q(
            f"SELECT alert_id, kind FROM alerts FINAL WHERE main_account_id LIKE '{acc}'"
        ).result_rows
    }
    assert alerts == {a["alert_id"]: a["kind"] for a in sim.alerts}, f"seed {SEED}: alerts differ"


def wait_for_log(worker, text, timeout=60.0):
    deadline = time.monotonic() + timeout
    while text not in worker.log_path.read_text(errors="replace"):
        assert worker.alive() and time.monotonic() < deadline, f"worker never logged {text!r}"
        time.sleep(0.1)


def stream(h, seed):
    lines = generate(seed=seed, accounts=ACCOUNTS, usage_events=EVENTS, prefix=h.tag)
    assert len(lines) >= 20_000
    return lines


# ------------------------------------------------------------------------------ 1. SIGKILL x5


def test_worker_sigkilled_five_times_mid_stream(harness):
    h = harness
    rng = random.Random(SEED)
    lines = stream(h, SEED)
    chunks = [lines[i * len(lines) // 6 : (i + 1) * len(lines) // 6] for i in range(6)]
    sim = expected([raw for chunk in chunks for raw in delivery_order(chunk, 10)])
    worker = h.start_worker()
    for chunk in chunks[:5]:
        produce(h, chunk, batch=10)
        # killed only once it owns partitions and is rating this chunk and the backlog: a worker
        # killed while still joining the group proves nothing
        wait_for_log(worker, "Worker ready")
        time.sleep(rng.uniform(0.2, 2.0))
        worker.kill()
        worker = h.start_worker()
    produce(h, chunks[5], batch=10)
    wait_until_landed(h, sim)
    assert_identical_to_simulate(h, sim)


# ------------------------------------------------------------------------------ 1b. RocksDB store


def test_rocksdb_store_workers_killed_and_replaced_on_their_own_store(rocksdb_harness):
    """The production store keeps one database per partition and picks it from faust's current
    event. A round reads the states of many partitions: before on_partition_of was set for reads,
    the soak saw accounts taken for unopened ones here (the memory store hides it). Replacements
    reuse the killed worker's store, as a StatefulSet pod keeps its volume."""
    h = rocksdb_harness
    rng = random.Random(SEED + 1)
    lines = generate(seed=SEED + 1, accounts=80, usage_events=6_000, prefix=h.tag)
    chunks = [lines[i * len(lines) // 3 : (i + 1) * len(lines) // 3] for i in range(3)]
    sim = expected(lines)
    worker = h.start_worker()
    for chunk in chunks[:2]:
        produce(h, chunk)
        wait_for_log(worker, "Worker ready")
        time.sleep(rng.uniform(0.5, 2.0))
        worker.kill()
        worker = h.pipeline.start_worker(worker.data_dir)
    produce(h, chunks[2])
    wait_until_landed(h, sim)
    assert_identical_to_simulate(h, sim)
    assert not any("unknown_account" in w.log_path.read_text() for w in h.pipeline.workers)


# ------------------------------------------------------------------------------ 2. duplicates


def test_every_event_delivered_two_or_three_times(harness):
    h = harness
    rng = random.Random(SEED + 2)
    lines = stream(h, SEED + 2)
    # a producer retry re-sends a message after it was sent once: each copy lands somewhere later,
    # up to a few hundred messages behind the original
    placed = []
    for i, line in enumerate(lines):
        placed.append((float(i), 0, line))
        for copy in range(rng.choice((1, 2))):
            placed.append((i + rng.uniform(0.5, 400.0), copy + 1, line))
    out = [line for _, _, line in sorted(placed, key=lambda p: (p[0], p[1]))]
    assert len(out) >= 2 * len(lines)
    sim = expected(out)
    assert sim.counts["duplicate"] == len(out) - len(lines)
    h.start_worker()
    produce(h, out)
    wait_until_landed(h, sim)
    assert_identical_to_simulate(h, sim)


# ------------------------------------------------------------------------------ 3. two workers, one
# killed, one joins


def test_two_workers_one_killed_rebalance_then_one_joins(harness):
    h = harness
    rng = random.Random(SEED + 3)
    lines = stream(h, SEED + 3)
    third = len(lines) // 3
    parts = [lines[:third], lines[third : 2 * third], lines[2 * third :]]
    sim = expected([raw for part in parts for raw in delivery_order(part, REBALANCE_BATCH)])
    a, b = h.start_worker(), h.start_worker()
    produce(h, parts[0], batch=REBALANCE_BATCH)
    time.sleep(rng.uniform(6.0, 9.0))
    a.kill()
    produce(h, parts[1], batch=REBALANCE_BATCH)
    time.sleep(rng.uniform(4.0, 6.0))
    h.start_worker()
    produce(h, parts[2], batch=REBALANCE_BATCH)
    wait_until_landed(h, sim)
    assert b.alive()
    assert_identical_to_simulate(h, sim)


# ------------------------------------------------------------------------------ 4. the sink and
# ClickHouse


def test_sink_killed_and_clickhouse_unavailable_mid_stream(harness):
    h = harness
    lines = stream(h, SEED + 4)
    sim = expected(delivery_order(lines, 10))
    h.start_worker()
    produce(h, lines, batch=10)
    acc = f"{h.tag}-%"
    h.sink.client = FlakyClickHouse(h.ch, fail_before=3, fail_after=2)
    h.land(lambda: h.count("deductions", acc) >= len(sim.deductions) // 4, timeout=120)

    # kill a sink in the middle of a batch: rows inserted, offsets not committed
    async def killed_mid_batch():
        sink = ClickHouseSink(h.settings, client=h.ch)
        await sink.start()
        task = asyncio.create_task(sink.run(asyncio.Event()))
        await asyncio.sleep(1.5)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        await sink.consumer.stop()  # no commit of the batch in flight

    asyncio.run(killed_mid_batch())
    h.sink = ClickHouseSink(h.settings, client=h.ch)
    wait_until_landed(h, sim)
    assert_identical_to_simulate(h, sim)


# ------------------------------------------------------------------------------ 5. 10,000 malformed
# messages


def malformed_messages(rng, tag, n, accounts):
    """(key, value, expected reason codes) of every kind of bad input."""
    reg = registry()
    good = {
        "event_id": "",
        "trace_id": "",
        "account_id": "",
        "main_account_id": "",
        "event_time": 1777600000000,
        "item": "tokens",
        "model": "kimi-k2.5",
        "input_tokens": 10,
    }
    out = []
    for i in range(n):
        kind = i % 8
        acct = rng.choice(accounts)
        rec = dict(good, event_id=f"{tag}-bad-{i}", account_id=acct, main_account_id=acct)
        key = acct.encode()
        if kind == 0:
            out.append(
                (
                    key,
                    bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 64))),
                    {"not_avro", "unknown_schema", "corrupt_avro", "empty_message"},
                )
            )
        elif kind == 1:
            full = reg.encode("usage_event", rec)
            out.append((key, full[: rng.randint(5, len(full) - 1)], {"corrupt_avro"}))
        elif kind == 2:
            alert = {
                "alert_id": "x",
                "kind": "k",
                "main_account_id": acct,
                "account_id": acct,
                "event_time": 0,
                "episode": "e",
                "model": None,
                "message": "m",
                "details": {},
                "source_event_ids": [],
                "trace_id": "",
            }
            out.append((key, reg.encode("alert", alert), {"wrong_schema"}))
        elif kind == 3:
            ghost = f"{tag}-ghost-{i}"
            ghost_rec = dict(rec, account_id=ghost, main_account_id=ghost)
            # a well-formed event of an unknown account: its time moves stream time, live and
            # offline
            out.append(
                (
                    ghost.encode(),
                    reg.encode("usage_event", ghost_rec),
                    {"unknown_account"},
                    orjson.dumps(dict(ghost_rec, kind="usage")),
                )
            )
            continue
        elif kind == 4:
            out.append(
                (
                    key,
                    reg.encode("usage_event", dict(rec, input_tokens=-rng.randint(1, 10**6))),
                    {"negative_quantity"},
                )
            )
        elif kind == 5:
            out.append(
                (
                    key,
                    reg.encode("usage_event", dict(rec, input_tokens=10**15)),
                    {"quantity_out_of_range"},
                )
            )
        elif kind == 6:
            out.append(
                (
                    key,
                    reg.encode("usage_event", dict(rec, model="m" * rng.randint(300, 5_000))),
                    {"invalid_field"},
                )
            )
        else:
            out.append(
                (
                    key,
                    reg.encode(
                        "usage_event", dict(rec, item="tokens", model=None, quantity="many")
                    ),
                    {"missing_field", "invalid_field"},
                )
            )
    return [m if len(m) == 4 else (*m, b"<malformed>") for m in out]


def test_ten_thousand_malformed_messages_are_dead_lettered_and_counts_reconcile(harness):
    h = harness
    rng = random.Random(SEED + 5)
    lines = stream(h, SEED + 5)
    accounts = sorted({orjson.loads(ln)["main_account_id"] for ln in lines})
    bad = malformed_messages(rng, h.tag, 10_000, accounts)
    from streams.ingest.producer import encode_line

    messages = [
        (k, v, None, raw)
        for (k, v, _), raw in zip(
            (encode_line(registry(), raw) for raw in lines), lines, strict=True
        )
    ]
    for k, v, codes, sim_line in bad:  # spread through the stream; the good events keep their order
        messages.insert(rng.randint(0, len(messages)), (k, v, codes, sim_line))
    sim = expected([m[3] for m in messages])
    assert sim.counts["rejected"] == 10_000
    worker = h.start_worker()

    async def send_mixed():
        from aiokafka import AIOKafkaProducer

        from streams.kafka_client import producer_kwargs

        p = AIOKafkaProducer(**producer_kwargs(h.settings))
        await p.start()
        try:
            sent = [
                (await p.send(h.settings.topics.events, key=k, value=v), codes)
                for k, v, codes, _ in messages
            ]
            return {
                (meta.partition, meta.offset): codes
                for meta, codes in [(await f, c) for f, c in sent]
                if codes
            }
        finally:
            await p.stop()

    expected_codes = asyncio.run(send_mixed())
    assert len(expected_codes) == 10_000
    wait_until_landed(h, sim)
    assert_identical_to_simulate(h, sim)
    topic = h.settings.topics.events
    assert h.land(
        lambda: (
            h.scalar(f"SELECT count() FROM dead_letters FINAL WHERE source_topic = '{topic}'")
            >= 10_000
        ),
        timeout=120,
    )
    got = {
        (r[0], r[1]): r[2]
        for r in h.ch.query(
            "SELECT source_partition, source_offset, reason_code FROM dead_letters FINAL WHERE "
            f"source_topic = '{topic}'"
        ).result_rows
    }
    assert len(got) == sim.counts["rejected"], f"seed {SEED}: {len(got)} dead letters"
    for position, codes in expected_codes.items():
        assert got.get(position) in codes, (
            f"seed {SEED}: message at {position} dead-lettered as {got.get(position)}, expected "
            f"{codes}"
        )
    # every code that only one outcome could give is there, and at least one more from the kinds
    # with several possible codes (which ones depends on the seed: random bytes starting with a
    # zero byte are unknown_schema, others not_avro, so counting to a fixed 8 was luck)
    forced = {next(iter(codes)) for codes in expected_codes.values() if len(codes) == 1}
    assert len(forced) >= 6 and forced <= set(got.values()), f"seed {SEED}: {set(got.values())}"
    assert len(set(got.values())) > len(forced), f"seed {SEED}: {set(got.values())}"
    assert worker.alive(), "the worker must never stop on bad input"
    # counts reconcile: consumed = rated + applied + rejected + duplicates (read from the worker)
    worker.terminate()
    text = worker.log_path.read_text()
    final = re.findall(
        r"worker stopped after [\d.]+s: messages=(\d+) consumed=(\d+) rated=(\d+) applied=(\d+) "
        r"rejected=(\d+) duplicates=(\d+)",
        text,
    )
    assert final, "the worker did not report its counts"
    messages, consumed, rated, applied, rejected, duplicates = map(int, final[-1])
    assert consumed == len(lines) + 10_000 == rated + applied + rejected + duplicates
    assert (
        rated == len(sim.deductions)
        and rejected == sim.counts["rejected"] == 10_000
        and duplicates == 0
    )


# ------------------------------------------------------------------------------ 6. a worker that
# stalls

# Loaded by the first worker's interpreter (PYTHONPATH): its first round with outputs never
# finishes, the way a worker sits after a rebalance that faust never completes. The flag file
# makes it happen once; the replacement runs the real code.
STALL_ONCE = """
import asyncio, os
flag = os.environ["BILLING_TEST_STALL_ONCE"]
if not os.path.exists(flag):
    import streams.worker.app as worker_app
    async def started(self):
        if not os.path.exists(flag):
            open(flag, "w").close()
            await asyncio.Event().wait()
    worker_app.OutputProducer.started = started
"""


def test_a_stalled_worker_exits_and_its_replacement_charges_nothing_twice(
    tmp_path, broker, ch, monkeypatch
):
    from tests.integration.conftest import Harness

    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(STALL_ONCE)
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH")]))
    )
    monkeypatch.setenv("BILLING_TEST_STALL_ONCE", str(tmp_path / "stalled-once"))
    h = Harness(tmp_path, broker, ch, WORKER_STALL_TIMEOUT_S="5")
    try:
        lines = generate(seed=SEED + 6, accounts=40, usage_events=2_000, prefix=h.tag)
        sim = expected(lines)
        first = h.start_worker()
        produce(h, lines)
        with pytest.warns(UserWarning, match="stalled"):
            wait_until_landed(h, sim, timeout=120)
        assert first.process.returncode == 4 and (tmp_path / "stalled-once").exists()
        assert "stalled: partitions" in first.log_path.read_text()
        assert h.pipeline.stall_restarts == [first.log_path]
        assert_identical_to_simulate(h, sim)
    finally:
        h.stop()
