"""Stream time belongs to accepted events only (a hostile event moves no other account), events
from the future or from before their account are refused, a quiet partition's clock follows
the wall clock, and amounts are quantized once to ClickHouse's 12 decimals."""

from decimal import Decimal

import orjson

from streams.engine import BillingEngine
from streams.ingest.events import parse_json_event, to_millis
from streams.ingest.partitioner import partition_for
from streams.rating.profiles import Profiles
from streams.simulate import simulate
from streams.worker.idle import IdleWatermark
from tests.unit.helpers import account, usage

HOUR = 3_600_000


def run(*raws, **kw):
    return simulate(
        [(i, orjson.dumps(r)) for i, r in enumerate(raws, 1)], BillingEngine(Profiles()), **kw
    )


def two_accounts_on_one_partition():
    names = [f"st-{i}" for i in range(40)]
    first = names[0]
    second = next(n for n in names[1:] if partition_for(n, 4) == partition_for(first, 4))
    return first, second


def arrears_stream(victim):
    return [
        account(
            victim,
            "account_opened",
            profile="tokenhub",
            post_paid=True,
            amount="0",
            t="2026-05-01T08:00:00+08:00",
        ),
        usage(
            victim,
            "tokens",
            model="Deepseek-v3.2",
            input_tokens=2_000_000,
            output_tokens=100_000,
            t="2026-05-01T09:00:00+08:00",
        ),
    ]


def test_a_rejected_event_from_2099_moves_no_other_account():
    victim, attacker = two_accounts_on_one_partition()
    stream = arrears_stream(victim)
    calm = run(*stream)
    hostile = run(
        *stream,
        usage(attacker, "tokens", model="Deepseek-v3.2", input_tokens=10, t="2099-01-01T00:00:00Z"),
    )
    assert [d["reason_code"] for d in hostile.dead_letters] == ["unknown_account"]
    assert hostile.alerts == calm.alerts  # no resources_released, no grace_ending
    assert hostile.settlements == calm.settlements and hostile.statuses == calm.statuses
    assert hostile.states[victim].to_dict() == calm.states[victim].to_dict()
    assert "arrears_started" in {a["kind"] for a in calm.alerts}


def test_a_rejected_event_of_a_real_account_does_not_move_the_clock_either():
    victim, other = two_accounts_on_one_partition()
    base = [
        *arrears_stream(victim),
        account(other, "account_opened", profile="tokenhub", t="2026-05-01T08:00:00+08:00"),
    ]
    calm = run(*base)
    hostile = run(
        *base,
        usage(other, "tokens", model="no-such-model", input_tokens=10, t="2026-07-01T00:00:00Z"),
    )
    assert [d["reason_code"] for d in hostile.dead_letters] == ["unknown_model"]
    assert hostile.alerts == calm.alerts and hostile.settlements == calm.settlements


def test_an_event_too_far_past_the_wall_clock_is_refused():
    wall = to_millis("2026-05-01T10:00:00+08:00", "t")
    r = run(
        account("fut", "account_opened", profile="jiekou", amount="10"),
        usage(
            "fut",
            "tokens",
            model="claude-sonnet-4.5",
            input_tokens=10,
            t="2026-05-01T10:09:59+08:00",
        ),
        usage(
            "fut",
            "tokens",
            model="claude-sonnet-4.5",
            input_tokens=10,
            t="2026-05-01T10:10:01+08:00",
        ),
        wall_ms=wall,
    )
    assert r.counts["rated"] == 1
    assert [d["reason_code"] for d in r.dead_letters] == ["event_time_in_future"]


def test_usage_before_the_account_was_opened_is_refused():
    r = run(
        account(
            "early", "account_opened", profile="jiekou", amount="10", t="2026-05-12T08:00:00+08:00"
        ),
        usage(
            "early",
            "tokens",
            model="claude-sonnet-4.5",
            input_tokens=10,
            t="2026-05-01T10:00:00+08:00",
        ),
    )
    assert [d["reason_code"] for d in r.dead_letters] == ["before_account_opened"]
    assert r.deductions == [] and r.states["early"].cash == Decimal(10)


def test_simulate_until_closes_the_quiet_hour():
    raws = [
        account("q", "account_opened", profile="jiekou", amount="10"),
        usage(
            "q", "tokens", model="claude-sonnet-4.5", input_tokens=1000, t="2026-05-01T10:30:00Z"
        ),
    ]
    assert run(*raws).settlements == []
    until = to_millis("2026-05-01T11:05:00Z", "t")  # the hour's end plus the 5 minutes of lateness
    lines = run(*raws, until_ms=until).settlements
    assert [(s["line_type"], s["event_count"]) for s in lines] == [("regular", 1)]
    assert run(*raws, until_ms=until - 1).settlements == []


def test_idle_watermark_follows_the_wall_clock_only_when_quiet():
    w = IdleWatermark(idle_s=60)
    assert w.clock(0, 1_000_000, now_s=100.0) == 1_000_000  # first sight: idleness counts from here
    w.moved(0, 2_000_000, now_s=110.0)
    assert w.clock(0, 2_000_000, now_s=169.0) == 2_000_000  # 59 s quiet: not yet
    # 60 s quiet: the clock runs with the wall
    assert w.clock(0, 2_000_000, now_s=170.0) == 2_060_000
    assert w.clock(0, 2_060_000, now_s=200.0) == 2_090_000  # and keeps running, from the last event
    w.moved(0, 2_095_000, now_s=201.0)
    assert w.clock(0, 2_095_000, now_s=202.0) == 2_095_000
    assert IdleWatermark(idle_s=0).clock(0, 5, now_s=1e9) == 5
    w.forget()
    assert w.clock(0, 7, now_s=1e6) == 7


def test_amounts_are_quantized_once_half_even_to_twelve_decimals():
    # 0.000000000001 GB above the free 10 GB for 1.5 hours at the profile's price: far below 1e-12
    r = run(
        account("prec", "account_opened", profile="coze-pro", amount="10"),
        usage("prec", "kb_storage", quantity="10.000000000001", hours="1.5"),
    )
    d = r.deductions[0]
    for value in [
        d["rated_amount"],
        d["unbilled_amount"],
        *(s["amount"] for s in d["splits"]),
        *(line["amount"] for line in d["lines"]),
        *(line["units"] for line in d["lines"]),
    ]:
        assert len(value.partition(".")[2]) <= 12, value
    paid = sum((Decimal(s["amount"]) for s in d["splits"]), Decimal(0)) + Decimal(
        d["unbilled_amount"]
    )
    assert paid == Decimal(d["rated_amount"])


def test_no_implicit_rounding_in_the_core():
    big = parse_json_event(
        usage("big", "kb_storage", quantity="999999999.999999999999", hours="744")
    )
    from streams.deduction.record import MONEY_CONTEXT

    exact = big.quantity * big.hours  # 24 significant digits fit the 60-digit context exactly
    with __import__("decimal").localcontext(MONEY_CONTEXT):
        assert (big.quantity * big.hours) == exact
    assert MONEY_CONTEXT.prec >= 40
