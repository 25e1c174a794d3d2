"""A partition that goes quiet still settles: its stream time follows the wall clock once it has
been idle (WORKER_IDLE_ADVANCE_S), so the hour's line lands without further traffic, equal to
``rating simulate --until`` at the hour's end plus the lateness."""

from datetime import UTC, datetime, timedelta

import orjson
import pytest

from streams.engine import BillingEngine
from streams.local.synthetic import iso
from streams.rating.profiles import Profiles
from streams.simulate import simulate
from tests.integration.conftest import Harness
from tests.integration.test_pipeline_e2e import asyncio_run, settlements_equal_simulated

pytestmark = pytest.mark.integration
LATENESS_S = 5


def test_the_last_hour_of_a_quiet_partition_settles(tmp_path, broker, ch):
    h = Harness(
        tmp_path,
        broker,
        ch,
        WORKER_IDLE_ADVANCE_S="2",
        SETTLEMENT_ALLOWED_LATENESS_S=str(LATENESS_S),
    )
    try:
        now = datetime.now(UTC)
        hour_end = now.replace(minute=0, second=0, microsecond=0)
        main = f"{h.tag}-quiet"
        lines = [
            orjson.dumps(x)
            for x in (
                {
                    "kind": "account",
                    "event_id": f"{main}-open",
                    "account_id": main,
                    "main_account_id": main,
                    "event_time": iso(hour_end - timedelta(minutes=10)),
                    "type": "account_opened",
                    "profile": "jiekou",
                    "amount": "10",
                },
                {
                    "kind": "usage",
                    "event_id": f"{main}-u1",
                    "trace_id": f"{main}-t1",
                    "account_id": main,
                    "main_account_id": main,
                    "event_time": iso(hour_end - timedelta(seconds=2)),
                    "item": "tokens",
                    "model": "claude-sonnet-4.5",
                    "input_tokens": 1000,
                    "output_tokens": 100,
                },
            )
        ]
        engine = BillingEngine(Profiles(), allowed_lateness_ms=LATENESS_S * 1000)
        without = simulate(list(enumerate(lines, 1)), engine, partitions=4)
        assert without.settlements == []  # by events alone, the hour never closes
        until_ms = int(hour_end.timestamp() * 1000) + LATENESS_S * 1000
        expected = simulate(
            list(enumerate(lines, 1)),
            BillingEngine(Profiles(), allowed_lateness_ms=LATENESS_S * 1000),
            partitions=4,
            until_ms=until_ms,
        )
        assert [s["line_type"] for s in expected.settlements] == ["regular"]

        h.start_worker()
        asyncio_run(h.produce(lines))
        # no further traffic: only the idle watermark can close the hour
        assert h.land(lambda: h.count("settlements", main) >= 1, timeout=90), (
            "the quiet hour never settled"
        )
        settlements_equal_simulated(h, expected)
    finally:
        h.stop()
