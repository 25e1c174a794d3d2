"""The busiest customer through the real broker, worker and sink: 20,000 requests of one account
in one hour (past the old failure point, where its settlement line listed every id and grew to
~1.5 MB, beyond the broker's limit). Every record stays under the limit, live equals simulate
row for row, the worker never restarts, and requests re-sent after thousands of others are not
charged again."""

from datetime import timedelta
from decimal import Decimal

import orjson
import pytest

from streams.engine import BillingEngine
from streams.limits import MAX_RECORD_BYTES
from streams.local.synthetic import START, heavy_account, iso
from streams.rating.profiles import Profiles
from streams.simulate import simulate
from tests.integration.test_pipeline_e2e import (
    asyncio_run,
    live_equals_simulated,
    settlements_equal_simulated,
)

pytestmark = pytest.mark.integration
REQUESTS = 20_000


def test_one_account_twenty_thousand_requests_in_an_hour(harness):
    h = harness
    main = f"{h.tag}-busy"
    lines = heavy_account(main, REQUESTS, span_s=3600, seed=9)
    later = orjson.loads(lines[-1])
    later.update(event_id=f"{main}-later", event_time=iso(START + timedelta(hours=2)))
    resent = [lines[1], lines[2], lines[REQUESTS // 2]]  # after 10,000 to 20,000 other events
    all_lines = lines + [orjson.dumps(later)] + resent
    expected = simulate(
        list(enumerate(all_lines, 1)),
        BillingEngine(Profiles(), allowed_lateness_ms=300_000),
        partitions=4,
    )
    assert expected.counts["rated"] == REQUESTS + 1 and expected.counts["duplicate"] == 3

    worker = h.start_worker()
    assert asyncio_run(h.produce(all_lines, batch_size=100)) == len(all_lines)
    assert h.land(
        lambda: (
            h.count("deductions", main) >= REQUESTS + 1
            and h.count("settlements", main) >= len(expected.settlements)
        ),
        timeout=240,
    )
    live_equals_simulated(h, expected)
    settlements_equal_simulated(h, expected)
    assert h.count("deductions", main) == REQUESTS + 1
    line = next(s for s in expected.settlements if s["event_count"] == REQUESTS)
    got = h.scalar(
        "SELECT sum(rated_amount) FROM deductions FINAL WHERE settlement_id = "
        f"'{line['settlement_id']}'"
    )
    assert got == Decimal(line["gross_amount"])
    assert worker.alive() and len(h.pipeline.workers) == 1, "the worker must not have restarted"

    # every record the worker wrote is under the limit, the account's changelog value too
    for topic in (
        h.settings.topics.deductions,
        h.settings.topics.settlements,
        h.settings.topics.alerts,
    ):
        sizes = h.consume_sizes(topic)
        assert sizes and max(sizes) <= MAX_RECORD_BYTES, topic
    sizes = h.consume_sizes(f"{h.settings.worker_app_id}-accounts-changelog")
    assert sizes and max(sizes) < 8 * 1024
