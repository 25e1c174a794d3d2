"""The ClickHouse sink keeps going through an outage: inserts fail (before or after ClickHouse
stored the rows), the sink retries with backoff, commits offsets only after an acknowledged
insert, and in the end every row is there exactly once."""

import asyncio

import pytest

from streams.engine import BillingEngine
from streams.local.synthetic import generate
from streams.rating.profiles import Profiles
from streams.simulate import simulate

pytestmark = pytest.mark.integration


class FlakyClickHouse:
    """The real chDB client, but the first inserts fail: some before reaching ClickHouse (server
    down), some after ClickHouse stored the rows (the acknowledgement is lost)."""

    def __init__(self, real, fail_before: int, fail_after: int):
        self.real = real
        self.fail_before = fail_before
        self.fail_after = fail_after
        self.failures = 0

    def insert(self, *args, **kwargs):
        if self.fail_before:
            self.fail_before -= 1
            self.failures += 1
            raise ConnectionError("ClickHouse is down (injected)")
        result = self.real.insert(*args, **kwargs)
        if self.fail_after:
            self.fail_after -= 1
            self.failures += 1
            raise TimeoutError("acknowledgement lost (injected)")
        return result

    def __getattr__(self, name):
        return getattr(self.real, name)


def test_sink_survives_clickhouse_outage_without_loss_or_double(harness):
    h = harness
    lines = generate(seed=41, accounts=20, usage_events=1200, prefix=h.tag)
    sim = simulate(
        list(enumerate(lines, 1)),
        BillingEngine(Profiles(), allowed_lateness_ms=300_000),
        partitions=4,
    )
    h.start_worker()
    asyncio.run(h.produce(lines))
    flaky = FlakyClickHouse(h.ch, fail_before=3, fail_after=2)
    h.sink.client = flaky
    acc = f"{h.tag}-%"
    # a first sink instance runs through the outage and is stopped part-way ...
    h.land(lambda: h.count("deductions", acc) >= len(sim.deductions) // 3, timeout=60)
    assert flaky.failures == 5
    # ... a second one (a restart) picks up from the committed offsets
    from streams.sink.clickhouse import ClickHouseSink

    h.sink = ClickHouseSink(h.settings, client=h.ch)
    assert h.land(lambda: h.count("deductions", acc) >= len(sim.deductions), timeout=120)
    assert h.count("deductions", acc) == len(sim.deductions)
    ids = h.ch.query(
        f"SELECT deduction_id FROM deductions FINAL WHERE main_account_id LIKE '{acc}'"
    ).result_rows
    assert {r[0] for r in ids} == {d["deduction_id"] for d in sim.deductions}
