"""The busiest customer, offline: one account with 100,000 requests in one hour. Every record
stays under the size limit, the account state does not grow with the traffic, the hour settles
into one line that sums all of them, and duplicates re-sent long after are not charged again
(the old 1,024-id window let a duplicate through after 1,100 other events)."""

from datetime import timedelta
from decimal import Decimal

import orjson
import pytest

from streams.engine import BillingEngine
from streams.ingest.events import parse_json_event
from streams.ingest.messages import Decoded
from streams.limits import MAX_RECORD_BYTES
from streams.local.synthetic import START, heavy_account, iso
from streams.rating.profiles import Profiles
from streams.simulate import Simulation, simulate, write_outputs

REQUESTS = 100_000


@pytest.fixture(scope="module")
def heavy_hour():
    lines = heavy_account("busy", REQUESTS, span_s=3600)
    # a request two hours later closes the hour; then two of the hour's requests are re-sent
    later = orjson.loads(lines[-1])
    later.update(event_id="busy-later", event_time=iso(START + timedelta(hours=2)))
    resent = [lines[1], lines[REQUESTS // 2]]
    all_lines = lines + [orjson.dumps(later)] + resent
    return lines, simulate(list(enumerate(all_lines, 1)), BillingEngine(Profiles()), source="heavy")


def test_every_request_is_charged_once_and_duplicates_are_not(heavy_hour):
    lines, r = heavy_hour
    assert r.counts["rated"] == REQUESTS + 1
    assert r.counts["duplicate"] == 2 and r.counts["rejected"] == 0
    ids = [d["deduction_id"] for d in r.deductions]
    assert len(ids) == len(set(ids)) == REQUESTS + 1


def test_the_hour_is_one_line_of_sums_under_the_limit(heavy_hour, tmp_path):
    lines, r = heavy_hour
    hour = [s for s in r.settlements if s["period_start"] == int(START.timestamp() * 1000)]
    assert len(hour) == 1 and hour[0]["line_type"] == "regular"
    line = hour[0]
    members = [d for d in r.deductions if d["settlement_id"] == line["settlement_id"]]
    assert line["event_count"] == len(members) == REQUESTS
    assert Decimal(line["gross_amount"]) == sum(
        (Decimal(d["rated_amount"]) for d in members), Decimal(0)
    )
    assert len(orjson.dumps(line)) < 2048
    write_outputs(r, tmp_path)  # enforces the record limit on every record and state
    for path in tmp_path.glob("*.jsonl"):
        with open(path, "rb") as fh:
            assert max((len(x) for x in fh), default=0) <= MAX_RECORD_BYTES, path


def test_account_state_does_not_grow_with_the_traffic():
    lines = heavy_account("grow", 20_000, span_s=3600, seed=3)
    engine = BillingEngine(Profiles())
    sim = Simulation(engine, partitions=4)
    sizes = {}
    for n, raw in enumerate(lines, 1):
        event = parse_json_event(orjson.loads(raw))
        sim.apply(event, Decoded(event, None, raw), "grow", n)
        if n in (5_001, 20_001):
            sizes[n] = len(sim.result.states["grow"].dumps())
    # steady state after 25 minutes: the same open period and minutes (bounded by the lateness),
    # buckets and counters; only the digits of the sums may lengthen
    assert sizes[20_001] <= sizes[5_001] + 256, sizes
    assert sizes[20_001] < 8 * 1024


def test_a_duplicate_after_far_more_than_1024_events_is_not_charged():
    lines = heavy_account("late-dup", 3_000, span_s=3600, seed=5)
    r = simulate(list(enumerate(lines + [lines[5]], 1)), BillingEngine(Profiles()), source="x")
    assert r.counts["duplicate"] == 1 and r.counts["rated"] == 3_000


def test_an_event_older_than_the_horizon_is_a_dead_letter_and_not_charged():
    lines = heavy_account("old", 10, span_s=60, seed=6)
    far = orjson.loads(lines[-1])
    far.update(event_id="old-far", event_time=iso(START + timedelta(days=40)))
    r = simulate(
        list(enumerate(lines + [orjson.dumps(far), lines[3]], 1)),
        BillingEngine(Profiles()),
        source="x",
    )
    assert r.counts["rated"] == 11 and r.counts["rejected:event_too_old"] == 1
    assert [d["reason_code"] for d in r.dead_letters] == ["event_too_old"]


def test_a_message_built_to_hurt_makes_a_small_dead_letter():
    """400 KB event and trace ids (and a 1 MB value that is not an event at all) become dead
    letters under the record limit, with the original size and hash."""
    import hashlib

    from streams.ingest.codec import registry
    from streams.ingest.messages import dead_letter_record, decode_message

    huge = {
        "kind": "usage",
        "event_id": "e" * 400_000,
        "trace_id": "t" * 400_000,
        "account_id": "a",
        "main_account_id": "a",
        "event_time": "2026-05-01T10:00:00Z",
        "item": "tokens",
        "model": "m",
        "input_tokens": 1,
    }
    lines = [(1, orjson.dumps(huge)), (2, b"x" * 1_000_000)]
    r = simulate(lines, BillingEngine(Profiles()), source="hostile")
    assert [d["reason_code"] for d in r.dead_letters] == ["invalid_id", "invalid_json"]
    reg = registry()
    for (_, raw), letter in zip(lines, r.dead_letters, strict=True):
        assert letter["payload_size_bytes"] == len(raw) and letter["payload_truncated"]
        assert letter["payload_sha256"] == hashlib.sha256(raw).hexdigest()
        assert len(reg.encode("dead_letter", letter)) <= MAX_RECORD_BYTES
    # the live path: the same bytes as a Kafka value
    for decoded in decode_message(reg, b"a", b"y" * 1_000_000):
        letter = dead_letter_record(
            decoded, topic="t", partition=0, offset=1, key=b"k" * 500_000, fallback_id="t:0:1"
        )
        assert len(reg.encode("dead_letter", letter)) <= MAX_RECORD_BYTES


def test_account_events_cannot_grow_the_state_past_its_limit():
    """5,000 sub-account links with long ids and 4,500 vouchers that expire: links stop at their
    limit with a clear reason, expired vouchers are forgotten after the horizon, the state stays
    under its record limit."""
    from streams.ledger.ledger import MAX_SUB_ACCOUNTS
    from streams.limits import MAX_STATE_BYTES
    from tests.unit.helpers import account

    day = timedelta(days=1)
    raws = [account("grow-ev", "account_opened", profile="jiekou", amount="10", t=iso(START))]
    raws += [
        account(
            "grow-ev", "sub_account_linked", sub_account_id=f"{i:04d}" + "s" * 250, t=iso(START)
        )
        for i in range(5_000)
    ]
    raws += [
        account(
            "grow-ev",
            "voucher_granted",
            voucher_id=f"v{i}",
            amount="1",
            t=iso(START + i * day),
            expires_at=iso(START + i * day + day),
        )
        for i in range(4_500)
    ]
    r = simulate(
        list(enumerate((orjson.dumps(x) for x in raws), 1)), BillingEngine(Profiles()), source="x"
    )
    codes = [d["reason_code"] for d in r.dead_letters]
    assert codes == ["limit_exceeded"] * (5_000 - MAX_SUB_ACCOUNTS)
    state = r.states["grow-ev"]
    assert len(state.sub_accounts) == MAX_SUB_ACCOUNTS
    assert len(state.vouchers) <= 37  # the horizon's worth of daily vouchers, not 4,500
    assert len(state.dumps()) < MAX_STATE_BYTES
