"""One targeted test per rule of billing-rules.md that had no test of its own (issue 20). Each
test names its rule; the expected values are worked out by hand in the comments from the rule and
the shipped price books.

Prices used: jiekou (USD per 1M tokens) claude-sonnet-4.5 input 3 / cache hit 0.3, gemini-2.5-pro
tier (0, 200000] input 1.25 output 10 cache hit 0.31, tier above input 2.5 output 15 cache hit
0.625 (no cache-write, no reasoning price), claude-opus-4.5 input 5; tokenhub (CNY per 1M) kimi-k2.5
input 4, 3D credits 0.12 CNY (HY-3D calls carrying 20 credits, HY-3D-Express 15);
coze-pro (points per 1k tokens, 1 CNY = 1000 points) Doubao-pro-32k 0.8 / 2,
Doubao-pro-32k fine-tuned (example row) 1.6 / 4, agent_call 2 points, kb_storage 1.5 points per
GB-hour above 10 GB; ark doubao-embedding input 0.5 CNY per 1M.
"""

from __future__ import annotations

from decimal import Decimal

import pytest

from streams.deduction.record import present, settlement_period
from streams.ingest.events import parse_json_event
from streams.rating.rate import rate
from tests.unit.engine_driver import PROFILES, Account, D, ms, splits
from tests.unit.helpers import account, usage

DAY = 86_400_000


def codes(a: Account) -> list[str]:
    return [o.rejected.code for o in a.outcomes if o.rejected is not None]


# ---------------------------------------------------------------- §1 units and money


def test_1_an_account_is_bound_to_its_price_books_currency():
    a = Account()
    a.send(account("j", "account_opened", profile="jiekou", currency="CNY", amount="1"))
    assert codes(a) == ["currency_mismatch"] and a.state is None
    a.send(account("j", "account_opened", profile="jiekou", currency="USD", amount="1"))
    d = a.send(
        usage("j", "tokens", model="claude-sonnet-4.5", input_tokens=10_000)
    ).deduction.to_record()
    assert d["currency"] == "USD" and d["rated_amount"] == "0.03"


def test_1_amounts_are_not_rounded_while_rating_or_deducting():
    # one cache-hit token of claude-sonnet-4.5: 0.3 USD / 1M = 0.0000003, seven decimals, kept
    a = Account()
    a.send(account("j", "account_opened", profile="jiekou", amount="1"))
    d = a.send(
        usage("j", "tokens", model="claude-sonnet-4.5", input_tokens=1, cache_hit_tokens=1)
    ).deduction.to_record()
    assert d["rated_amount"] == "0.0000003"
    assert splits(d) == [("cash", "cash", D("0.0000003"))]
    assert a.cash == D("0.9999997") and d["balance_after"] == "0.9999997"


@pytest.mark.parametrize(
    "value,shown",
    [
        ("0.0000005", "0.000000"),  # half-even: a tie goes to the even digit 0
        ("0.0000015", "0.000002"),  # ... and to the even digit 2
        ("0.0000025", "0.000002"),
        ("1.2345675", "1.234568"),
        ("0.00000051", "0.000001"),  # above the tie: up
        ("-0.0000015", "-0.000002"),
    ],
)
def test_1_bills_round_half_even_to_6_decimals_only_when_presented(value, shown):
    assert str(present(Decimal(value))) == shown


# ---------------------------------------------------------------- §2 what is metered


def test_2_cache_write_without_its_own_price_is_billed_at_the_input_price_and_reasoning_at_output():
    # gemini-2.5-pro, tier 1: 600 other input x 1.25 = 0.00075; 400 cache writes x 1.25 = 0.0005;
    # 60 other output x 10 = 0.0006; 40 reasoning x 10 = 0.0004 (per 1M) -> 0.00225 USD
    e = parse_json_event(
        usage(
            "j",
            "tokens",
            model="gemini-2.5-pro",
            input_tokens=1000,
            cache_write_tokens=400,
            output_tokens=100,
            reasoning_tokens=40,
        )
    )
    r = rate(PROFILES["jiekou"], e)
    assert [(ln.component, ln.units, ln.amount) for ln in r.lines] == [
        ("input", D(600), D("0.00075")),
        ("cache_write", D(400), D("0.0005")),
        ("output", D(60), D("0.0006")),
        ("reasoning", D(40), D("0.0004")),
    ]
    assert r.amount == D("0.00225")


def test_2_the_tier_is_chosen_by_total_input_including_cached_tokens():
    # 200,001 input tokens of which 200,000 cache hits: above 200k, so tier 2 for every token:
    # 200,000 x 0.625 = 0.125, 1 x 2.5 = 0.0000025 (per 1M) -> 0.1250025 USD
    e = parse_json_event(
        usage("j", "tokens", model="gemini-2.5-pro", input_tokens=200_001, cache_hit_tokens=200_000)
    )
    r = rate(PROFILES["jiekou"], e)
    assert [(ln.component, ln.amount) for ln in r.lines] == [
        ("cache_hit", D("0.125")),
        ("input", D("0.0000025")),
    ]
    at_bound = rate(
        PROFILES["jiekou"],
        parse_json_event(
            usage(
                "j",
                "tokens",
                model="gemini-2.5-pro",
                input_tokens=200_000,
                cache_hit_tokens=200_000,
            )
        ),
    )
    assert at_bound.amount == D("0.062")  # 200,000 x 0.31 / 1M, tier 1


def test_2_coze_records_an_ark_model_with_zero_charge_billed_elsewhere():
    a = Account()
    a.send(account("c", "account_opened", profile="coze-pro", amount="10"))
    d = a.send(
        usage("c", "tokens", model="ark/doubao-seed-1.6", input_tokens=10_000, output_tokens=1000)
    ).deduction.to_record()
    assert (d["rated_amount"], d["splits"], d["billed_elsewhere"], d["flags"]) == (
        "0",
        [],
        True,
        ["billed_elsewhere"],
    )
    assert a.cash == 10
    # the day's free points were not touched: 250 agent calls = 500 points still all free
    d = a.send(usage("c", "agent_call", quantity="250")).deduction.to_record()
    assert splits(d) == [("free", "daily:2026-05-01", D("0.5"))]


# ---------------------------------------------------------------- §3.1 daily free points


def test_3_1_free_points_do_not_cover_fine_tuned_models():
    # Doubao-pro-32k-ft-example: 1k input x 1.6 + 1k output x 4 = 5.6 points = 0.0056 CNY, from cash
    # although the day's 500 free points are untouched; the base model's 2.8 points come from them
    a = Account()
    a.send(account("c", "account_opened", profile="coze-pro", amount="1"))
    ft = a.send(
        usage(
            "c",
            "tokens",
            model="Doubao-pro-32k",
            fine_tuned=True,
            input_tokens=1000,
            output_tokens=1000,
        )
    ).deduction.to_record()
    assert splits(ft) == [("cash", "cash", D("0.0056"))]
    base = a.send(
        usage("c", "tokens", model="Doubao-pro-32k", input_tokens=1000, output_tokens=1000)
    ).deduction.to_record()
    assert splits(base) == [("free", "daily:2026-05-01", D("0.0028"))]
    assert base["splits"][0]["units"] == "2.8" and base["splits"][0]["unit"] == "points"


def test_3_1_free_quota_exhausted_alert_exactly_when_500_points_are_used():
    a = Account()
    a.send(account("c", "account_opened", profile="coze-pro", amount="1"))
    # 498 points
    assert (
        a.send(usage("c", "agent_call", quantity="249", t="2026-05-01T10:00:00+08:00")).alerts == []
    )
    alerts = a.send(
        usage("c", "agent_call", quantity="1", t="2026-05-01T10:01:00+08:00")
    ).alerts  # 500: used up
    assert [x["kind"] for x in alerts] == ["free_quota_exhausted"]
    d = a.send(usage("c", "agent_call", quantity="1", t="2026-05-01T10:02:00+08:00"))
    assert splits(d.deduction.to_record()) == [("cash", "cash", D("0.002"))] and d.alerts == []


# ---------------------------------------------------------------- §3.2 trials


def test_3_2_trial_validity_counts_from_an_explicit_claim_not_the_first_use():
    # claimed 2026-04-10 10:00 (+08:00), 90 days: valid until 2026-07-09 10:00; first use later
    a = Account()
    a.send(
        account(
            "t",
            "account_opened",
            profile="tokenhub",
            post_paid=True,
            amount="10",
            t="2026-04-10T09:00:00+08:00",
        )
    )
    a.send(account("t", "trial_claimed", model="kimi-k2.5", t="2026-04-10T10:00:00+08:00"))
    # 1,000 input tokens x 4 CNY / 1M = 0.004 CNY
    inside = a.send(
        usage("t", "tokens", model="kimi-k2.5", input_tokens=1000, t="2026-07-09T09:59:59+08:00")
    ).deduction.to_record()
    assert splits(inside) == [("trial", "kimi-k2.5", D("0.004"))]
    after = a.send(
        usage("t", "tokens", model="kimi-k2.5", input_tokens=1000, t="2026-07-09T10:00:00+08:00")
    ).deduction.to_record()
    assert splits(after) == [("cash", "cash", D("0.004"))]


def test_3_2_a_model_without_a_trial_cannot_be_claimed():
    a = Account()
    a.send(account("t", "account_opened", profile="tokenhub"))
    a.send(account("t", "trial_claimed", model="Deepseek-r1-0528"))
    assert codes(a) == ["no_trial_for_model"]


def test_3_2_ark_free_quota_covers_inference_tokens_only():
    # doubao-embedding has no free quota: 1M tokens x 0.5 CNY / 1M = 0.5 CNY from cash
    a = Account()
    a.send(account("a", "account_opened", profile="ark", amount="10"))
    d = a.send(
        usage("a", "embedding", model="doubao-embedding", input_tokens=1_000_000)
    ).deduction.to_record()
    assert splits(d) == [("cash", "cash", D("0.5"))]
    # an inference model right after: its 500k free tokens cover it
    d = a.send(usage("a", "tokens", model="deepseek-v3", input_tokens=1000)).deduction.to_record()
    assert [s[0] for s in splits(d)] == ["trial"]


def test_3_2_the_3d_pack_is_one_allowance_for_three_models_covering_whole_calls():
    # 100 credits: 4 x HY-3D-3.0 text_to_3d (20 credits) = 80 -> 9.6 CNY covered; then 2 x
    # HY-3D-Express (15 credits): 20 credits left cover 1 call (1.8), the other is charged (1.8);
    # then HY-3D-3.1 finds 5 credits, less than its 20 a call: all charged (2.4)
    a = Account()
    a.send(account("t", "account_opened", profile="tokenhub", post_paid=True, amount="100"))
    d1 = a.send(
        usage("t", "3d", model="HY-3D-3.0", variant="text_to_3d", credits="20", quantity="4")
    ).deduction.to_record()
    d2 = a.send(
        usage("t", "3d", model="HY-3D-Express", variant="text_to_3d", credits="15", quantity="2")
    ).deduction.to_record()
    d3 = a.send(
        usage("t", "3d", model="HY-3D-3.1", variant="text_to_3d", credits="20", quantity="1")
    ).deduction.to_record()
    assert splits(d1) == [("trial", "3d-pack", D("9.6"))]
    assert splits(d2) == [("trial", "3d-pack", D("1.8")), ("cash", "cash", D("1.8"))]
    assert d2["splits"][0]["units"] == "15" and d2["splits"][0]["unit"] == "credits"
    assert splits(d3) == [("cash", "cash", D("2.4"))]
    assert a.cash == D("95.8")


# ---------------------------------------------------------------- §3.3 packs


def test_3_3_legacy_agent_pack_covers_agent_calls_and_knowledge_base_only():
    a = Account()
    a.send(
        account(
            "c", "account_opened", profile="coze-pro", amount="10", t="2025-02-01T08:00:00+08:00"
        )
    )
    # before the withdrawal
    a.send(
        account(
            "c",
            "pack_purchased",
            pack_id="agent",
            pack_kind="legacy_agent",
            amount="1000",
            expires_at="2026-12-01T00:00:00+08:00",
            t="2025-02-12T23:59:59+08:00",
        )
    )
    assert codes(a) == []
    # 300 calls = 600 points: 500 free, 100 from the pack (0.1 CNY)
    d = a.send(
        usage("c", "agent_call", quantity="300", t="2026-05-01T10:00:00+08:00")
    ).deduction.to_record()
    assert splits(d) == [("free", "daily:2026-05-01", D("0.5")), ("pack", "agent", D("0.1"))]
    # 12 GB for 1 hour: 2 GB above the free 10 x 1.5 points = 3 points = 0.003 CNY from the pack
    d = a.send(
        usage("c", "kb_storage", quantity="12", hours="1", t="2026-05-01T10:01:00+08:00")
    ).deduction.to_record()
    assert splits(d) == [("pack", "agent", D("0.003"))]
    # Doubao-pro-32k tokens: 2.8 points, not in the agent pack's scope: cash
    d = a.send(
        usage(
            "c",
            "tokens",
            model="Doubao-pro-32k",
            input_tokens=1000,
            output_tokens=1000,
            t="2026-05-01T10:02:00+08:00",
        )
    ).deduction.to_record()
    assert splits(d) == [("cash", "cash", D("0.0028"))]


def test_3_3_legacy_pack_bought_at_the_withdrawal_time_is_rejected():
    a = Account()
    a.send(account("c", "account_opened", profile="coze-pro", t="2025-02-01T08:00:00+08:00"))
    a.send(
        account(
            "c",
            "pack_purchased",
            pack_id="late",
            pack_kind="legacy_agent",
            amount="1000",
            expires_at="2026-12-01T00:00:00+08:00",
            t="2025-02-13T00:00:00+08:00",
        )
    )
    assert codes(a) == ["legacy_pack_withdrawn"]


def test_3_3_an_expired_pack_is_not_used():
    a = Account()
    a.send(account("c", "account_opened", profile="coze-pro", amount="10"))
    a.send(
        account(
            "c",
            "pack_purchased",
            pack_id="p",
            pack_kind="coze_unified",
            amount="1000",
            expires_at="2026-05-01T10:00:00+08:00",
        )
    )
    # 300 calls = 600 points at the pack's expiry instant: 500 free, 100 points from cash
    d = a.send(
        usage("c", "agent_call", quantity="300", t="2026-05-01T10:00:00+08:00")
    ).deduction.to_record()
    assert splits(d) == [("free", "daily:2026-05-01", D("0.5")), ("cash", "cash", D("0.1"))]


# ---------------------------------------------------------------- §4 controls


def test_4_safe_trial_pauses_only_below_the_margin_not_at_it():
    # margin 1% of 500,000 = 5,000 free tokens: 495,000 used leaves exactly 5,000, not below
    a = Account()
    a.send(account("a", "account_opened", profile="ark", amount="100", safe_trial_mode=True))
    first = a.send(usage("a", "tokens", model="deepseek-v3", input_tokens=0, output_tokens=495_000))
    assert first.alerts == []
    # 4,999 left
    second = a.send(usage("a", "tokens", model="deepseek-v3", input_tokens=0, output_tokens=1))
    assert [x["kind"] for x in second.alerts] == ["model_paused"]
    assert second.alerts[0]["details"]["reason"] == "safe_trial_mode"
    assert [s[0] for s in splits(second.deduction.to_record())] == ["trial"]
    third = a.send(usage("a", "tokens", model="deepseek-v3", input_tokens=0, output_tokens=1))
    assert (
        third.deduction.to_record()["splits"] == []
        and third.deduction.to_record()["unbilled_reason"] == "safe_trial_mode"
    )
    assert a.cash == 100


def test_4_safe_trial_mode_only_where_the_profile_offers_it():
    a = Account()
    a.send(account("t", "account_opened", profile="tokenhub", safe_trial_mode=True))
    assert codes(a) == ["safe_trial_not_offered"] and a.state is None


def test_4_inference_limit_counts_from_its_effective_time_and_pauses_at_the_limit():
    a = Account()
    a.send(account("a", "account_opened", profile="ark", amount="100"))
    a.send(account("a", "model_activated", model="deepseek-v3"))
    a.send(
        account(
            "a",
            "inference_limit_set",
            model="deepseek-v3",
            limit_tokens=2000,
            effective_time="2026-05-01T10:00:00+08:00",
            t="2026-05-01T09:00:00+08:00",
        )
    )
    outs = [
        a.send(usage("a", "tokens", model="deepseek-v3", input_tokens=1000, t=t))
        for t in (
            "2026-05-01T09:59:59+08:00",  # before the effective time: not counted
            "2026-05-01T10:00:00+08:00",  # 1,000
            "2026-05-01T10:01:00+08:00",  # 2,000: reached exactly at the limit
            "2026-05-01T10:02:00+08:00",  # paused model: still rated and recorded, flagged
        )
    ]
    assert [[x["kind"] for x in o.alerts] for o in outs] == [[], [], ["model_paused"], []]
    assert outs[2].alerts[0]["details"] == {"reason": "inference_limit", "used_tokens": "2000"}
    assert [o.deduction.to_record()["flags"] for o in outs] == [
        [],
        [],
        [],
        ["inference_limit_reached"],
    ]


def test_4_inference_limit_needs_a_token_model_and_a_profile_that_offers_it():
    a = Account()
    a.send(account("a", "account_opened", profile="ark", amount="100"))
    a.send(account("a", "model_activated", model="doubao-embedding"))
    a.send(account("a", "inference_limit_set", model="doubao-embedding", limit_tokens=1000))
    a.send(account("a", "inference_limit_removed", model="deepseek-v3"))
    t = Account()
    t.send(account("t", "account_opened", profile="tokenhub", post_paid=True))
    t.send(account("t", "inference_limit_set", model="kimi-k2.5", limit_tokens=1000))
    assert codes(a) == ["inference_limit_model_type", "no_inference_limit"]
    # a profile without inference limits refuses the setting (its own code, or the profile's list
    # of account event types it takes)
    assert len(codes(t)) == 1 and codes(t)[0] in (
        "inference_limit_not_offered",
        "not_supported_by_profile",
    )
    assert t.state.limits == {}


# ---------------------------------------------------------------- §5 settlement, arrears, alerts


def test_5_3d_generation_settles_daily_in_the_platform_time_zone():
    assert [settlement_period(i) for i in ("video", "3d", "image", "tokens", "media_call")] == [
        "day",
        "day",
        "hour",
        "hour",
        "hour",
    ]
    a = Account()  # default allowed lateness: 5 minutes
    a.send(
        account(
            "t",
            "account_opened",
            profile="tokenhub",
            post_paid=True,
            amount="100",
            t="2026-05-01T00:00:00+08:00",
        )
    )
    # 9.6 trial
    a.send(
        usage(
            "t",
            "3d",
            model="HY-3D-3.0",
            variant="text_to_3d",
            credits="20",
            quantity="4",
            t="2026-05-01T01:00:00+08:00",
        )
    )
    # 2.4: 20 credits left
    a.send(
        usage(
            "t",
            "3d",
            model="HY-3D-3.0",
            variant="text_to_3d",
            credits="20",
            quantity="1",
            t="2026-05-01T23:00:00+08:00",
        )
    )
    a.advance("2026-05-02T00:04:59+08:00")
    assert a.settlements == []
    a.advance("2026-05-02T00:05:00+08:00")
    (line,) = a.settlements
    assert (line["granularity"], line["period_start"], line["period_end"]) == (
        "day",
        ms("2026-05-01T00:00:00+08:00"),
        ms("2026-05-02T00:00:00+08:00"),
    )
    assert (
        line["gross_amount"],
        line["trial_amount"],
        line["cash_amount"],
        line["event_count"],
    ) == ("12", "12", "0", 2)


def test_5_settlement_lines_are_per_model_per_hour():
    a = Account()
    a.send(account("j", "account_opened", profile="jiekou", amount="10", t="2026-05-01T00:00:00Z"))
    # 0.03
    a.send(
        usage(
            "j", "tokens", model="claude-sonnet-4.5", input_tokens=10_000, t="2026-05-01T10:00:00Z"
        )
    )
    # 0.05
    a.send(
        usage("j", "tokens", model="claude-opus-4.5", input_tokens=10_000, t="2026-05-01T10:30:00Z")
    )
    # 0.03
    a.send(
        usage(
            "j", "tokens", model="claude-sonnet-4.5", input_tokens=10_000, t="2026-05-01T10:59:59Z"
        )
    )
    # next hour
    a.send(
        usage(
            "j", "tokens", model="claude-sonnet-4.5", input_tokens=10_000, t="2026-05-01T11:00:00Z"
        )
    )
    a.advance("2026-05-01T11:05:00Z")
    got = sorted(
        (s["model"], s["period_start"], s["gross_amount"], s["event_count"]) for s in a.settlements
    )
    assert got == [
        ("claude-opus-4.5", ms("2026-05-01T10:00:00Z"), "0.05", 1),
        ("claude-sonnet-4.5", ms("2026-05-01T10:00:00Z"), "0.06", 2),
    ]


def test_5_coze_suspends_in_arrears_once_the_free_points_are_used_up_despite_legacy_packs():
    a = Account()
    a.send(
        account(
            "c", "account_opened", profile="coze-pro", amount="0.001", t="2025-02-01T08:00:00+08:00"
        )
    )
    a.send(
        account(
            "c",
            "pack_purchased",
            pack_id="old",
            pack_kind="legacy_doubao",
            amount="100000",
            expires_at="2026-12-01T00:00:00+08:00",
            t="2025-02-01T09:00:00+08:00",
        )
    )
    # the fine-tuned model is outside the free points and the Doubao pack: 5.6 points = 0.0056 CNY
    # from cash, 0.001 - 0.0056 = -0.0046: arrears, but the day's free points are still there
    out = a.send(
        usage(
            "c",
            "tokens",
            model="Doubao-pro-32k",
            fine_tuned=True,
            input_tokens=1000,
            output_tokens=1000,
            t="2026-05-01T10:00:00+08:00",
        )
    )
    assert [x["kind"] for x in out.alerts] == ["arrears_started"] and out.status is None
    # 250 calls = the day's 500 free points: used up, so suspended although the legacy pack remains
    out = a.send(usage("c", "agent_call", quantity="250", t="2026-05-01T10:01:00+08:00"))
    assert splits(out.deduction.to_record()) == [("free", "daily:2026-05-01", D("0.5"))]
    assert (out.status["status"], out.status["reason"]) == ("suspended", "arrears")


def test_5_trial_expiring_notice_once_at_the_notice_time_and_not_for_a_used_up_trial():
    # kimi-k2.5 claimed 2026-04-10 10:00 +08:00, 90 days: expires 2026-07-09 10:00, notice 7 days
    # before
    a = Account()
    a.send(
        account(
            "t",
            "account_opened",
            profile="tokenhub",
            post_paid=True,
            amount="10",
            t="2026-04-10T09:00:00+08:00",
        )
    )
    # auto-claim
    a.send(
        usage("t", "tokens", model="kimi-k2.5", input_tokens=1000, t="2026-04-10T10:00:00+08:00")
    )
    a.advance("2026-07-02T09:59:59+08:00")
    assert "trial_expiring" not in a.kinds()
    a.advance("2026-07-02T10:00:00+08:00")
    a.advance("2026-07-05T10:00:00+08:00")
    expiring = [x for x in a.alerts if x["kind"] == "trial_expiring"]
    assert [(x["event_time"], x["details"]["remaining"]) for x in expiring] == [
        (ms("2026-07-02T10:00:00+08:00"), "499000")
    ]
    # a trial used up before its notice time gets no notice
    b = Account()
    b.send(
        account(
            "u",
            "account_opened",
            profile="tokenhub",
            post_paid=True,
            amount="10",
            t="2026-04-10T09:00:00+08:00",
        )
    )
    b.send(
        usage("u", "tokens", model="kimi-k2.5", input_tokens=500_000, t="2026-04-10T10:00:00+08:00")
    )
    b.advance("2026-07-09T10:00:00+08:00")
    assert "trial_expiring" not in b.kinds() and "trial_exhausted" in b.kinds()


def test_5_alerts_and_deductions_lead_back_to_the_event_and_its_trace():
    a = Account()
    a.send(
        account(
            "t",
            "account_opened",
            profile="tokenhub",
            post_paid=True,
            amount="0.04",
            balance_threshold="1",
        )
    )
    raw = usage(
        "t",
        "tokens",
        model="Deepseek-r1-0528",
        input_tokens=10_000,
        event_id="u-traced",
        trace_id="tr-xyz",
    )
    out = a.send(raw)
    assert (out.deduction.to_record()["event_id"], out.deduction.to_record()["trace_id"]) == (
        "u-traced",
        "tr-xyz",
    )
    assert sorted(x["kind"] for x in out.alerts) == ["arrears_started", "balance_below_threshold"]
    assert all(
        x["source_event_ids"] == ["u-traced"] and x["trace_id"] == "tr-xyz" for x in out.alerts
    )
    assert out.status["source_event_id"] == "u-traced"


# ---------------------------------------------------------------- account events that must be
# refused


@pytest.mark.parametrize(
    "event,code",
    [
        (dict(type="account_opened", profile="jiekou"), "account_exists"),
        (
            dict(
                type="voucher_granted",
                voucher_id="v",
                amount="1",
                expires_at="2026-12-01T00:00:00Z",
            ),
            "duplicate_bucket",
        ),
        (
            dict(
                type="voucher_granted",
                voucher_id="w",
                amount="1",
                expires_at="2026-05-01T08:00:00+08:00",
            ),
            "invalid_expiry",
        ),
        (
            dict(
                type="voucher_granted",
                voucher_id="w",
                amount="0",
                expires_at="2026-12-01T00:00:00Z",
            ),
            "invalid_amount",
        ),
        (dict(type="top_up", amount="0"), "negative_top_up"),
        (dict(type="sub_account_linked", sub_account_id="j"), "invalid_field"),
    ],
)
def test_invalid_account_events_are_rejected_with_their_reason(event, code):
    a = Account()
    a.send(account("j", "account_opened", profile="jiekou", amount="1"))
    a.send(
        account(
            "j", "voucher_granted", voucher_id="v", amount="1", expires_at="2026-12-01T00:00:00Z"
        )
    )
    fields = dict(event)  # the parameter is shared between runs: never change it
    kind = fields.pop("type")
    out = a.send(account("j", kind, **fields))
    assert out.result == "rejected" and out.rejected.code == code
    assert a.cash == 1 and len(a.state.vouchers) == 1


def test_opening_needs_a_main_account_and_an_event_for_another_account_is_refused():
    a = Account()
    a.send(account("j", "account_opened", profile="jiekou", account_id="j-sub"))
    assert codes(a) == ["not_a_main_account"]
    a.send(account("j", "account_opened", profile="jiekou", amount="1"))
    out = a.engine.apply(
        a.state, parse_json_event(usage("k", "tokens", model="claude-sonnet-4.5", input_tokens=1))
    )
    assert out.rejected.code == "wrong_account" and out.state.cash == 1
