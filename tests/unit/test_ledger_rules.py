"""Worked examples, one per rule of billing-rules §3 (order of deduction) and §4 (controls)."""

from decimal import Decimal

import orjson

from streams.engine import BillingEngine
from streams.rating.profiles import Profiles
from streams.simulate import simulate
from tests.unit.helpers import account, usage

ENGINE = BillingEngine(Profiles())
D = Decimal


def run(*events):
    lines = [(i, orjson.dumps(e)) for i, e in enumerate(events, 1)]
    return simulate(lines, ENGINE)


def splits(d):
    return [(s["bucket_kind"], s["bucket_id"], D(s["amount"])) for s in d["splits"]]


def kinds(result):
    return [a["kind"] for a in result.alerts]


# ---------------------------------------------------------------- §3.1 daily free points


def test_free_points_then_cash_for_tts():
    # free points left 30; a TTS request of 100 characters = 50 points: 30 free, 20 points (0.02
    # CNY) cash
    r = run(
        account("c", "account_opened", profile="coze-pro", amount="10"),
        usage("c", "agent_call", quantity="235", t="2026-05-01T09:00:00+08:00"),  # 470 points
        usage("c", "tts", quantity="100", t="2026-05-01T09:01:00+08:00"),
    )
    assert splits(r.deductions[1]) == [
        ("free", "daily:2026-05-01", D("0.03")),
        ("cash", "cash", D("0.02")),
    ]
    assert r.deductions[1]["splits"][0]["units"] == "30"
    assert r.states["c"].cash == D("9.98")


def test_free_points_reset_at_local_midnight_without_carry_over():
    r = run(
        account("c", "account_opened", profile="coze-pro", amount="10"),
        # 600 points: 500 free + 100 cash
        usage("c", "agent_call", quantity="300", t="2026-05-01T23:59:00+08:00"),
        # a new day in Asia/Shanghai
        usage("c", "agent_call", quantity="1", t="2026-05-02T00:00:00+08:00"),
    )
    assert splits(r.deductions[0]) == [
        ("free", "daily:2026-05-01", D("0.5")),
        ("cash", "cash", D("0.1")),
    ]
    assert splits(r.deductions[1]) == [("free", "daily:2026-05-02", D("0.002"))]
    assert kinds(r).count("free_quota_exhausted") == 1


def test_free_points_are_used_before_packs():
    r = run(
        account("c", "account_opened", profile="coze-pro"),
        account(
            "c",
            "pack_purchased",
            pack_id="p",
            pack_kind="coze_unified",
            amount="1000",
            expires_at="2026-12-01T00:00:00+08:00",
        ),
        usage("c", "tts", quantity="10"),
    )
    assert splits(r.deductions[0]) == [("free", "daily:2026-05-01", D("0.005"))]


# ---------------------------------------------------------------- §3.3 packs


def test_pack_expiring_first_is_used_first():
    r = run(
        account("c", "account_opened", profile="coze-pro"),
        account(
            "c",
            "pack_purchased",
            pack_id="july",
            pack_kind="coze_unified",
            amount="1000",
            expires_at="2026-07-01T00:00:00+08:00",
        ),
        account(
            "c",
            "pack_purchased",
            pack_id="may",
            pack_kind="coze_unified",
            amount="100",
            expires_at="2026-05-20T00:00:00+08:00",
        ),
        # 756 points: 500 free, 100 may, 156 july
        usage("c", "rtc_video", variant="4k", quantity="3"),
    )
    assert splits(r.deductions[0]) == [
        ("free", "daily:2026-05-01", D("0.5")),
        ("pack", "may", D("0.1")),
        ("pack", "july", D("0.156")),
    ]


def test_pack_ties_break_by_purchase_time_then_id():
    exp = "2026-07-01T00:00:00+08:00"
    r = run(
        account("c", "account_opened", profile="coze-pro"),
        account(
            "c",
            "pack_purchased",
            pack_id="b",
            pack_kind="coze_unified",
            amount="10",
            expires_at=exp,
            t="2026-05-01T08:00:00+08:00",
        ),
        account(
            "c",
            "pack_purchased",
            pack_id="a",
            pack_kind="coze_unified",
            amount="10",
            expires_at=exp,
            t="2026-05-01T08:00:00+08:00",
        ),
        account(
            "c",
            "pack_purchased",
            pack_id="0-late",
            pack_kind="coze_unified",
            amount="10",
            expires_at=exp,
            t="2026-05-01T08:30:00+08:00",
        ),
        # 530 points: 500 free, then 10 a, 10 b, 10 0-late
        usage("c", "agent_call", quantity="265"),
    )
    assert [s[1] for s in splits(r.deductions[0])] == ["daily:2026-05-01", "a", "b", "0-late"]


def test_legacy_doubao_pack_covers_doubao_tokens_only():
    r = run(
        account(
            "c", "account_opened", profile="coze-pro", amount="10", t="2025-02-01T08:00:00+08:00"
        ),
        account(
            "c",
            "pack_purchased",
            pack_id="old",
            pack_kind="legacy_doubao",
            amount="100000",
            expires_at="2026-12-01T00:00:00+08:00",
            t="2025-02-01T09:00:00+08:00",
        ),
        # 600 points: 500 free, then cash (the Doubao pack does not cover agents)
        usage("c", "agent_call", quantity="300"),
        usage(
            "c",
            "tokens",
            model="Doubao-pro-32k",
            input_tokens=10000,
            output_tokens=1000,
            t="2026-05-01T10:01:00+08:00",
        ),
    )
    assert splits(r.deductions[0])[-1] == ("cash", "cash", D("0.1"))
    assert splits(r.deductions[1]) == [("pack", "old", D("0.01"))]


def test_legacy_pack_cannot_be_bought_after_withdrawal():
    r = run(
        account("c", "account_opened", profile="coze-pro"),
        account(
            "c",
            "pack_purchased",
            pack_id="old",
            pack_kind="legacy_agent",
            amount="1000",
            expires_at="2026-12-01T00:00:00+08:00",
        ),
    )
    assert [d["reason_code"] for d in r.dead_letters] == ["legacy_pack_withdrawn"]
    assert r.states["c"].packs == []


def test_unified_pack_excludes_fine_tuned_models():
    r = run(
        account("c", "account_opened", profile="coze-pro", amount="1", post_paid=True),
        account(
            "c",
            "pack_purchased",
            pack_id="p",
            pack_kind="coze_unified",
            amount="100000",
            expires_at="2026-12-01T00:00:00+08:00",
        ),
        usage("c", "agent_call", quantity="250"),  # uses up the free points
        usage(
            "c",
            "tokens",
            model="Doubao-pro-32k",
            fine_tuned=True,
            input_tokens=1000,
            output_tokens=1000,
        ),
    )
    assert [s[0] for s in splits(r.deductions[1])] == ["cash"]


# ---------------------------------------------------------------- §3.2 trials


def test_trial_auto_claimed_once_and_covers_token_kinds_in_order():
    r = run(
        account("t", "account_opened", profile="tokenhub", post_paid=True, amount="100"),
        usage(
            "t",
            "tokens",
            model="kimi-k2.5",
            input_tokens=400_000,
            cache_hit_tokens=100_000,
            output_tokens=200_000,
            t="2026-05-01T10:00:00+08:00",
        ),
    )
    d = r.deductions[0]
    # 500k: 100k cache hits, 300k other input, then 100k of the 200k output; 100k output charged
    assert d["splits"][0]["units"] == "500000"
    assert splits(d) == [
        ("trial", "kimi-k2.5", D("0.07") + D("1.2") + D("2.1")),
        ("cash", "cash", D("2.1")),
    ]
    trial = r.states["t"].trials["kimi-k2.5"]
    assert trial.remaining == 0 and trial.claimed_at == r.deductions[0]["event_time"]
    assert "trial_exhausted" in kinds(r)


def test_trial_lapses_at_expiry_and_is_never_granted_again():
    # opened before its first usage (usage dated before the opening is before_account_opened)
    r = run(
        account(
            "t",
            "account_opened",
            profile="tokenhub",
            post_paid=True,
            amount="100",
            t="2026-04-01T08:00:00+08:00",
        ),
        usage(
            "t", "tokens", model="Deepseek-v3.2", input_tokens=1000, t="2026-04-10T10:00:00+08:00"
        ),
        # 90 days later
        usage(
            "t", "tokens", model="Deepseek-v3.2", input_tokens=1000, t="2026-07-09T10:00:00+08:00"
        ),
        account("t", "trial_claimed", model="Deepseek-v3.2", t="2026-07-10T10:00:00+08:00"),
    )
    assert [s[0] for s in splits(r.deductions[0])] == ["trial"]
    assert [s[0] for s in splits(r.deductions[1])] == ["cash"]
    assert [d["reason_code"] for d in r.dead_letters] == ["trial_already_claimed"]


def test_shared_video_pack_covers_whole_units_of_several_models():
    r = run(
        account("t", "account_opened", profile="tokenhub", post_paid=True, amount="100"),
        usage("t", "video", model="YT-Video-2.0", variant="720p", quantity="9"),  # 45 credits
        # 8 credits, 5 left: 2 s covered
        usage("t", "video", model="YT-Video-HumanActor", variant="1080p", quantity="4"),
    )
    assert splits(r.deductions[0]) == [("trial", "video-pack", D("54"))]
    assert splits(r.deductions[1]) == [
        ("trial", "video-pack", D("4.8")),
        ("cash", "cash", D("4.8")),
    ]
    assert r.states["t"].trials["video-pack"].remaining == 1


def test_without_post_paid_usage_beyond_the_free_quota_is_stopped_not_charged():
    r = run(
        account("t", "account_opened", profile="tokenhub", amount="50"),
        usage("t", "image", model="HY-Image-V3.0", quantity="52"),
        usage("t", "image", model="HY-Image-V3.0", quantity="1"),
    )
    first, second = r.deductions
    assert splits(first) == [("trial", "hy-image-v3.0", D("10"))]
    assert (first["unbilled_amount"], first["unbilled_reason"]) == ("0.4", "service_stopped")
    assert (second["unbilled_amount"], second["splits"]) == ("0.2", [])
    assert kinds(r).count("service_stopped") == 1
    assert r.states["t"].cash == 50


# ---------------------------------------------------------------- §3.4-5 vouchers, cash


def test_vouchers_earliest_expiry_before_cash():
    r = run(
        account("j", "account_opened", profile="jiekou", amount="1"),
        account(
            "j",
            "voucher_granted",
            voucher_id="late",
            amount="0.01",
            expires_at="2026-09-01T00:00:00Z",
        ),
        account(
            "j",
            "voucher_granted",
            voucher_id="soon",
            amount="0.01",
            expires_at="2026-06-01T00:00:00Z",
        ),
        usage("j", "tokens", model="claude-sonnet-4.5", input_tokens=10_000),  # 0.03 USD
    )
    assert splits(r.deductions[0]) == [
        ("voucher", "soon", D("0.01")),
        ("voucher", "late", D("0.01")),
        ("cash", "cash", D("0.01")),
    ]


def test_expired_voucher_is_not_used():
    r = run(
        account("j", "account_opened", profile="jiekou", amount="1"),
        account(
            "j",
            "voucher_granted",
            voucher_id="v",
            amount="1",
            expires_at="2026-05-01T09:00:00+08:00",
        ),
        usage(
            "j",
            "tokens",
            model="claude-sonnet-4.5",
            input_tokens=10_000,
            t="2026-05-01T10:00:00+08:00",
        ),
    )
    assert [s[0] for s in splits(r.deductions[0])] == ["cash"]


def test_prepaid_cash_never_goes_negative():
    r = run(
        account("j", "account_opened", profile="jiekou", amount="0.01"),
        usage("j", "tokens", model="claude-sonnet-4.5", input_tokens=10_000),
    )
    assert splits(r.deductions[0]) == [("cash", "cash", D("0.01"))]
    assert r.deductions[0]["unbilled_amount"] == "0.02"
    assert r.states["j"].cash == 0


def test_sub_account_usage_draws_on_the_main_account():
    r = run(
        account("j", "account_opened", profile="jiekou", amount="1"),
        account("j", "sub_account_linked", sub_account_id="j-sub"),
        usage("j", "tokens", model="claude-sonnet-4.5", input_tokens=10_000, account_id="j-sub"),
        usage("j", "tokens", model="claude-sonnet-4.5", input_tokens=10_000, account_id="stranger"),
    )
    assert r.deductions[0]["account_id"] == "j-sub" and r.states["j"].cash == D("0.97")
    assert [d["reason_code"] for d in r.dead_letters] == ["unknown_sub_account"]


# ---------------------------------------------------------------- §4 controls


def test_safe_trial_mode_pauses_below_margin_and_never_charges():
    r = run(
        account("a", "account_opened", profile="ark", amount="100", safe_trial_mode=True),
        usage("a", "tokens", model="deepseek-v3", input_tokens=0, output_tokens=496_000),
        usage("a", "tokens", model="deepseek-v3", input_tokens=0, output_tokens=1_000),
    )
    first, second = r.deductions
    assert [s[0] for s in splits(first)] == ["trial"]  # 4,000 left < 1% of 500,000 -> paused
    assert "model_paused" in kinds(r)
    assert second["splits"] == [] and second["unbilled_reason"] == "safe_trial_mode"
    assert r.states["a"].cash == 100


def test_ark_activated_model_still_uses_free_quota_first():
    r = run(
        account("a", "account_opened", profile="ark", amount="100"),
        account("a", "model_activated", model="deepseek-v3"),
        usage("a", "tokens", model="deepseek-v3", input_tokens=0, output_tokens=600_000),
    )
    assert [(s[0], s[2]) for s in splits(r.deductions[0])] == [
        ("trial", D("4")),
        ("cash", D("0.8")),
    ]


def test_inference_limit_rules():
    base = [
        account("a", "account_opened", profile="ark", amount="100"),
        account("a", "model_activated", model="deepseek-v3"),
    ]
    cases = [
        (
            dict(model="deepseek-v3", limit_tokens=1000, inference_mode="batch"),
            "inference_limit_online_only",
        ),
        (
            dict(model="deepseek-v3", limit_tokens=1000, prefix_caching=True),
            "inference_limit_with_prefix_caching",
        ),
        (
            dict(model="deepseek-v3", limit_tokens=1000, tpm_guarantee=True),
            "inference_limit_with_tpm_guarantee",
        ),
        (dict(model="deepseek-r1", limit_tokens=1000), "inference_limit_model_not_activated"),
    ]
    for kw, code in cases:
        r = run(*base, account("a", "inference_limit_set", **kw))
        assert [d["reason_code"] for d in r.dead_letters] == [code]
        assert r.states["a"].limits == {}
    r = run(
        *base,
        account(
            "a",
            "inference_limit_set",
            model="deepseek-v3",
            limit_tokens=1000,
            t="2026-05-01T09:00:00+08:00",
        ),
        account(
            "a",
            "inference_limit_set",
            model="deepseek-v3",
            limit_tokens=2000,
            t="2026-05-01T10:59:59+08:00",
        ),
        account("a", "inference_limit_removed", model="deepseek-v3", t="2026-05-01T11:00:00+08:00"),
    )
    assert [d["reason_code"] for d in r.dead_letters] == ["inference_limit_too_soon"]
    assert "2026-05-01T03:00:00.000Z" in r.dead_letters[0]["reason"]
    assert r.states["a"].limits == {}


def test_inference_limit_pauses_the_model_once_reached():
    r = run(
        account("a", "account_opened", profile="ark", amount="100"),
        account("a", "model_activated", model="deepseek-v3"),
        account(
            "a",
            "inference_limit_set",
            model="deepseek-v3",
            limit_tokens=1500,
            t="2026-05-01T09:00:00+08:00",
        ),
        usage("a", "tokens", model="deepseek-v3", input_tokens=1000, t="2026-05-01T09:10:00+08:00"),
        usage("a", "tokens", model="deepseek-v3", input_tokens=1000, t="2026-05-01T09:11:00+08:00"),
        usage(
            "a",
            "tokens",
            model="deepseek-v3",
            input_tokens=1000,
            mode="batch",
            t="2026-05-01T09:12:00+08:00",
        ),
        usage("a", "tokens", model="deepseek-v3", input_tokens=1000, t="2026-05-01T09:13:00+08:00"),
    )
    assert kinds(r).count("model_paused") == 1
    assert r.deductions[3]["flags"] == ["inference_limit_reached"]
    assert r.states["a"].limits["deepseek-v3"].used_tokens == 3000  # batch is not counted


# ---------------------------------------------------------------- §5 arrears (status as seen by the
# ledger)


def test_arrears_suspend_and_top_up_resumes():
    r = run(
        account("t", "account_opened", profile="tokenhub", post_paid=True, amount="0.01"),
        usage("t", "tokens", model="Deepseek-r1-0528", input_tokens=10_000),  # 0.04
        usage("t", "tokens", model="Deepseek-r1-0528", input_tokens=10_000),
        account("t", "top_up", amount="5"),
    )
    assert kinds(r) == ["arrears_started", "arrears_cleared"]
    assert [s["status"] for s in r.statuses] == ["active", "suspended", "active"]
    assert r.deductions[1]["flags"] == ["suspended"]  # still rated and recorded, flagged
    assert r.states["t"].cash == D("4.93")


def test_negative_top_up_and_unknown_account_are_rejected():
    r = run(
        account("t", "account_opened", profile="tokenhub"),
        account("t", "top_up", amount="-5"),
        usage("ghost", "tokens", model="kimi-k2.5", input_tokens=1),
        account("x", "account_opened", profile="nope"),
    )
    assert [d["reason_code"] for d in r.dead_letters] == [
        "negative_top_up",
        "unknown_account",
        "unknown_profile",
    ]
    assert r.states["t"].cash == 0


def test_duplicate_event_changes_nothing():
    e = usage("j", "tokens", model="claude-sonnet-4.5", input_tokens=10_000)
    r = run(account("j", "account_opened", profile="jiekou", amount="1"), e, e, e)
    assert len(r.deductions) == 1 and r.counts["duplicate"] == 2
    assert r.states["j"].cash == D("0.97")


def test_late_event_for_a_forgotten_day_gets_no_second_grant():
    days = ["2026-05-01", "2026-05-02", "2026-05-03", "2026-05-04"]
    r = run(
        account("c", "account_opened", profile="coze-pro", amount="10"),
        *[
            usage("c", "agent_call", quantity="250", t=f"{d}T10:00:00+08:00") for d in days
        ],  # 500 free points each day
        # late, for a day no longer kept
        usage("c", "agent_call", quantity="250", t="2026-05-01T11:00:00+08:00"),
    )
    assert [s[0] for s in splits(r.deductions[-1])] == ["cash"]
    assert r.states["c"].free_horizon == "2026-05-02"
