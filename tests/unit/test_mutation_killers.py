"""Tests written against the mutants that survived `make mutate` (issue 20).

Rejections: every account event the ledger refuses, with its stable reason code and its message.
The message is part of the dead letter a person reads (billing-rules §4: "rejected with a clear
reason"), so it is pinned here whole: a change of wording is a deliberate change of this table.
Behaviour: post-paid switching, the stop reason, the service-stopped alert's fields, the
inference-limit spacing after a removal, the late-event window of the daily free points.
Expected amounts are worked out by hand in the comments, from the price books.
"""

from __future__ import annotations

import pytest

from streams.deduction.record import dead_letter_id
from streams.ingest.events import Rejected, parse_json_event
from tests.unit.engine_driver import Account, D, splits
from tests.unit.helpers import account, usage

FAR = "2027-01-01T00:00:00+08:00"


def rejection(a: Account, raw) -> Rejected:
    """The rejection of ``raw``, from the parser or the engine (both are dead letters)."""
    try:
        event = parse_json_event(raw)
    except Rejected as exc:
        return exc
    out = a.send(event)
    assert out.rejected is not None, f"{raw} was accepted"
    return out.rejected


def jiekou() -> Account:
    a = Account()
    a.send(account("j", "account_opened", profile="jiekou", amount="1"))
    a.send(account("j", "voucher_granted", voucher_id="v", amount="1", expires_at=FAR))
    return a


def coze() -> Account:
    a = Account()
    a.send(
        account(
            "c", "account_opened", profile="coze-pro", amount="1", t="2025-02-01T08:00:00+08:00"
        )
    )
    a.send(
        account(
            "c",
            "pack_purchased",
            pack_id="p",
            pack_kind="coze_unified",
            amount="1000",
            expires_at=FAR,
            t="2025-02-01T08:00:00+08:00",
        )
    )
    return a


def ark() -> Account:
    a = Account()
    a.send(account("a", "account_opened", profile="ark", amount="1"))
    a.send(account("a", "model_activated", model="deepseek-v3"))
    return a


def tokenhub() -> Account:
    a = Account()
    a.send(account("t", "account_opened", profile="tokenhub", amount="1"))
    a.send(account("t", "trial_claimed", model="kimi-k2.5"))
    return a


T = "2025-02-01T09:00:00+08:00"  # for coze: before the legacy packs were withdrawn
ACCOUNT_REJECTIONS = [
    (
        jiekou,
        account("j", "account_opened", profile="jiekou"),
        "account_exists",
        "main account 'j' is already open",
    ),
    (jiekou, account("j", "top_up"), "missing_field", "top_up requires amount"),
    (
        jiekou,
        account("j", "top_up", amount="0"),
        "negative_top_up",
        "a top-up must be positive, got 0",
    ),
    (
        jiekou,
        account("j", "voucher_granted", voucher_id="w", expires_at=FAR),
        "invalid_amount",
        "voucher_granted requires a positive amount",
    ),
    (
        jiekou,
        account(
            "j",
            "voucher_granted",
            voucher_id="w",
            amount="1",
            t="2026-05-01T08:00:00+08:00",
            expires_at="2026-05-01T08:00:00+08:00",
        ),
        "invalid_expiry",
        "voucher_granted requires expires_at after the event time",
    ),
    (
        jiekou,
        account("j", "voucher_granted", voucher_id="v", amount="1", expires_at=FAR),
        "duplicate_bucket",
        "voucher 'v' was already granted",
    ),
    (
        jiekou,
        account("j", "post_paid_switched"),
        "missing_field",
        "post_paid_switched requires post_paid",
    ),
    (
        jiekou,
        account("j", "balance_threshold_set"),
        "missing_field",
        "balance_threshold_set requires balance_threshold",
    ),
    (
        jiekou,
        account("j", "sub_account_linked"),
        "missing_field",
        "sub_account_linked requires sub_account_id",
    ),
    (
        jiekou,
        account("j", "sub_account_linked", sub_account_id="j"),
        "invalid_field",
        "a main account cannot be its own sub-account",
    ),
    (
        jiekou,
        account("j", "pack_purchased", pack_kind="coze_unified", amount="1", expires_at=FAR),
        "not_supported_by_profile",
        "pack_purchased is not an account event of profile 'jiekou' (it takes account_opened, "
        "top_up, voucher_granted, "
        "post_paid_switched, balance_threshold_set, sub_account_linked)",
    ),
    (
        coze,
        account("c", "pack_purchased", amount="1", expires_at=FAR, t=T),
        "missing_field",
        "pack_purchased requires pack_kind",
    ),
    (
        coze,
        account("c", "pack_purchased", pack_kind="gold", amount="1", expires_at=FAR, t=T),
        "unknown_pack_kind",
        "profile 'coze-pro' sells no pack 'gold' (offered: coze_unified, legacy_agent, "
        "legacy_doubao)",
    ),
    (
        coze,
        account("c", "pack_purchased", pack_kind="coze_unified", expires_at=FAR, t=T),
        "invalid_amount",
        "pack_purchased requires a positive amount (in points)",
    ),
    (
        coze,
        account("c", "pack_purchased", pack_kind="coze_unified", amount="0", expires_at=FAR, t=T),
        "invalid_amount",
        "pack_purchased requires a positive amount (in points)",
    ),
    (
        coze,
        account("c", "pack_purchased", pack_kind="coze_unified", amount="1", expires_at=T, t=T),
        "invalid_expiry",
        "pack_purchased requires expires_at after the purchase time",
    ),
    (
        coze,
        account("c", "pack_purchased", pack_kind="coze_unified", amount="1", t=T),
        "invalid_expiry",
        "pack_purchased requires expires_at after the purchase time",
    ),
    (
        coze,
        account(
            "c",
            "pack_purchased",
            pack_id="p",
            pack_kind="coze_unified",
            amount="1",
            expires_at=FAR,
            t=T,
        ),
        "duplicate_bucket",
        "pack 'p' was already purchased",
    ),
    (
        coze,
        account(
            "c",
            "pack_purchased",
            pack_kind="legacy_agent",
            amount="1",
            expires_at=FAR,
            t="2025-02-13T00:00:00+08:00",
        ),
        "legacy_pack_withdrawn",
        "legacy_agent packs can no longer be bought or renewed since 2025-02-12T16:00:00.000Z "
        "(billing-rules §3)",
    ),
    (
        ark,
        account("a", "inference_limit_set", limit_tokens=10),
        "missing_field",
        "inference_limit_set requires model",
    ),
    (
        ark,
        account("a", "inference_limit_set", model="nope", limit_tokens=10),
        "unknown_model",
        "model 'nope' has no price in profile 'ark'",
    ),
    (
        ark,
        account("a", "model_activated", model="nope"),
        "unknown_model",
        "model 'nope' has no price in profile 'ark'",
    ),
    (ark, account("a", "model_activated"), "missing_field", "model_activated requires model"),
    (
        ark,
        account("a", "inference_limit_set", model="deepseek-v3"),
        "invalid_amount",
        "inference_limit_set requires a positive limit_tokens",
    ),
    (
        ark,
        account("a", "inference_limit_set", model="deepseek-v3", limit_tokens=0),
        "invalid_amount",
        "inference_limit_set requires a positive limit_tokens",
    ),
    (
        ark,
        account(
            "a", "inference_limit_set", model="deepseek-v3", limit_tokens=10, inference_mode="batch"
        ),
        "inference_limit_online_only",
        "inference limits apply to online inference only, not batch (billing-rules §4)",
    ),
    (
        ark,
        account(
            "a", "inference_limit_set", model="deepseek-v3", limit_tokens=10, prefix_caching=True
        ),
        "inference_limit_with_prefix_caching",
        "an inference limit cannot be used together with prefix caching (billing-rules §4)",
    ),
    (
        ark,
        account(
            "a", "inference_limit_set", model="deepseek-v3", limit_tokens=10, tpm_guarantee=True
        ),
        "inference_limit_with_tpm_guarantee",
        "an inference limit cannot be set on an endpoint with a TPM guarantee pack or model units "
        "(billing-rules §4)",
    ),
    (
        ark,
        account("a", "inference_limit_set", model="deepseek-r1", limit_tokens=10),
        "inference_limit_model_not_activated",
        "deepseek-r1 is not activated; inference limits need an activated, token post-paid model "
        "(billing-rules §4)",
    ),
    (
        ark,
        account("a", "inference_limit_removed", model="deepseek-v3"),
        "no_inference_limit",
        "deepseek-v3 has no inference limit to remove",
    ),
    (ark, account("a", "trial_claimed"), "missing_field", "trial_claimed requires model"),
    (
        tokenhub,
        account("t", "trial_claimed", model="Deepseek-r1-0528"),
        "no_trial_for_model",
        "Deepseek-r1-0528 offers no free trial in profile 'tokenhub'",
    ),
    (
        tokenhub,
        account("t", "trial_claimed", model="kimi-k2.5"),
        "trial_already_claimed",
        "trial 'kimi-k2.5' was already claimed; one claim per main account per model, ever",
    ),
]


@pytest.mark.parametrize(
    "setup,raw,code,message",
    ACCOUNT_REJECTIONS,
    ids=[f"{c[0].__name__}-{c[1]['type']}-{c[2]}-{i}" for i, c in enumerate(ACCOUNT_REJECTIONS)],
)
def test_account_event_rejections_name_the_problem(setup, raw, code, message):
    a = setup()
    cash = a.cash
    exc = rejection(a, dict(raw))
    assert (exc.code, exc.message) == (code, message)
    assert str(exc) == f"{code}: {message}"
    assert a.cash == cash


def test_model_type_rejection_names_the_model():
    a = ark()
    a.send(account("a", "model_activated", model="doubao-embedding"))
    exc = rejection(
        a, account("a", "inference_limit_set", model="doubao-embedding", limit_tokens=10)
    )
    assert (exc.code, exc.message) == (
        "inference_limit_model_type",
        "doubao-embedding is not billed by tokens; inference limits need a token post-paid model "
        "(billing-rules §4)",
    )


OPENING_REJECTIONS = [
    (dict(), "missing_field", "account_opened requires profile"),
    (
        dict(profile="nope"),
        "unknown_profile",
        "profile 'nope' is not one of ark, coze-pro, jiekou, tokenhub",
    ),
    (
        dict(profile="jiekou", currency="CNY"),
        "currency_mismatch",
        "profile 'jiekou' bills in USD, not CNY; there is no implicit exchange",
    ),
    (
        dict(profile="jiekou", account_id="x-sub"),
        "not_a_main_account",
        "account_opened must name a main account (account_id == main_account_id)",
    ),
    (dict(profile="jiekou", amount="-1"), "negative_amount", "opening cash -1 is negative"),
    (
        dict(profile="tokenhub", safe_trial_mode=True),
        "safe_trial_not_offered",
        "profile 'tokenhub' has no safe trial mode (billing-rules §4)",
    ),
]


@pytest.mark.parametrize(
    "fields,code,message", OPENING_REJECTIONS, ids=[c[1] for c in OPENING_REJECTIONS]
)
def test_account_opening_rejections_name_the_problem(fields, code, message):
    a = Account()
    exc = rejection(a, account("x", "account_opened", **fields))
    assert (exc.code, exc.message) == (code, message)
    assert a.state is None


def test_boundary_amounts_that_are_accepted():
    # a 1-point pack is positive (0.001 CNY); a 1-token limit is positive; a voucher expiring 1 ms
    # after its grant is after the event time
    c = coze()
    assert (
        c.send(
            account(
                "c",
                "pack_purchased",
                pack_id="tiny",
                pack_kind="coze_unified",
                amount="1",
                expires_at=FAR,
                t=T,
            )
        ).rejected
        is None
    )
    assert [(p.id, p.remaining) for p in c.state.packs if p.id == "tiny"] == [("tiny", D("0.001"))]
    a = ark()
    assert (
        a.send(account("a", "inference_limit_set", model="deepseek-v3", limit_tokens=1)).rejected
        is None
    )
    j = jiekou()
    assert (
        j.send(
            account(
                "j",
                "voucher_granted",
                voucher_id="w",
                amount="0.5",
                t="2026-05-01T08:00:00+08:00",
                expires_at="2026-05-01T08:00:00.001+08:00",
            )
        ).rejected
        is None
    )
    assert j.send(account("j", "top_up", amount="0.000001")).rejected is None
    assert j.cash == D("1.000001")


# ---------------------------------------------------------------- behaviour


def test_post_paid_switch_decides_between_charging_and_stopping():
    # tokenhub kimi-k2.5: 500k free tokens, then 4 CNY / 1M input: 100k more tokens = 0.4 CNY
    a = Account()
    a.send(account("t", "account_opened", profile="tokenhub", amount="1"))  # pre-paid by default
    a.send(account("t", "post_paid_switched", post_paid=True))
    d = a.send(
        usage("t", "tokens", model="kimi-k2.5", input_tokens=600_000, t="2026-05-01T10:00:00+08:00")
    ).deduction.to_record()
    assert splits(d) == [("trial", "kimi-k2.5", D(2)), ("cash", "cash", D("0.4"))]
    a.send(account("t", "post_paid_switched", post_paid=False, t="2026-05-01T10:01:00+08:00"))
    out = a.send(
        usage("t", "tokens", model="kimi-k2.5", input_tokens=1000, t="2026-05-01T10:02:00+08:00")
    )
    assert (
        out.deduction.to_record()["splits"] == []
        and out.deduction.to_record()["unbilled_amount"] == "0.004"
    )
    assert [x["kind"] for x in out.alerts] == ["service_stopped"]


def test_service_stopped_alert_names_the_sub_account_model_event_and_trace():
    a = Account()
    a.send(account("t", "account_opened", profile="tokenhub", amount="1"))
    a.send(account("t", "sub_account_linked", sub_account_id="t-dev"))
    raw = usage(
        "t",
        "image",
        model="HY-Image-V3.0",
        quantity="51",
        account_id="t-dev",
        event_id="u-img",
        trace_id="tr-img",
        t="2026-05-01T10:00:00+08:00",
    )
    out = a.send(raw)
    # 50 free images (0.2 CNY each = 10), the 51st is unbilled: pre-paid, quota used up
    assert (
        out.deduction.to_record()["unbilled_amount"],
        out.deduction.to_record()["unbilled_reason"],
    ) == (
        "0.2",
        "service_stopped",
    )
    stopped = [x for x in out.alerts if x["kind"] == "service_stopped"]
    assert len(stopped) == 1
    (x,) = stopped
    assert (
        x["account_id"],
        x["main_account_id"],
        x["event_time"],
        x["model"],
        x["source_event_ids"],
        x["trace_id"],
    ) == (
        "t-dev",
        "t",
        out.deduction.to_record()["event_time"],
        "HY-Image-V3.0",
        ["u-img"],
        "tr-img",
    )
    assert x["episode"] == "HY-Image-V3.0:u-img"
    assert x["message"] == (
        "HY-Image-V3.0 stopped: the free quota is used up and post-paid is not enabled; "
        "usage is recorded unbilled"
    )


def test_an_ark_account_not_in_safe_trial_mode_is_stopped_not_paused():
    # ark offers safe trial mode, but this account did not choose it: past the 500k free tokens a
    # pre-paid, never-activated account is stopped (service_stopped), not safe-trial paused
    a = Account()
    a.send(account("a", "account_opened", profile="ark", amount="10"))
    d = a.send(
        usage("a", "tokens", model="deepseek-v3", input_tokens=0, output_tokens=600_000)
    ).deduction.to_record()
    # 500k output free (8 CNY / 1M -> 4 CNY covered), 100k unbilled = 0.8 CNY
    assert splits(d) == [("trial", "deepseek-v3", D(4))]
    assert (d["unbilled_amount"], d["unbilled_reason"]) == ("0.8", "service_stopped")
    assert a.cash == 10


def test_inference_limit_spacing_counts_from_the_removal_too():
    a = ark()
    a.send(
        account(
            "a",
            "inference_limit_set",
            model="deepseek-v3",
            limit_tokens=10,
            t="2026-05-01T09:00:00+08:00",
        )
    )
    a.send(
        account("a", "inference_limit_removed", model="deepseek-v3", t="2026-05-01T11:00:00+08:00")
    )
    exc = rejection(
        a,
        account(
            "a",
            "inference_limit_set",
            model="deepseek-v3",
            limit_tokens=10,
            t="2026-05-01T12:59:59+08:00",
        ),
    )
    assert exc.code == "inference_limit_too_soon"
    assert exc.message == (
        "the inference limit of deepseek-v3 was changed at 2026-05-01T03:00:00.000Z; it can be "
        "changed "
        "again from 2026-05-01T05:00:00.000Z (at least 2 hours apart, billing-rules §4)"
    )
    assert (
        a.send(
            account(
                "a",
                "inference_limit_set",
                model="deepseek-v3",
                limit_tokens=10,
                t="2026-05-01T13:00:00+08:00",
            )
        ).rejected
        is None
    )


def test_late_event_within_the_last_three_days_uses_its_own_days_points():
    # README decision: late events within the last 3 days use their own day's points. Four days of
    # 250 agent calls (500 points each, all free); then late events for the kept days find their
    # day's points used up (cash), and a fresh day still gets its 500
    days = ["2026-05-01", "2026-05-02", "2026-05-03", "2026-05-04"]
    a = Account()
    a.send(account("c", "account_opened", profile="coze-pro", amount="10"))
    for day in days:
        d = a.send(
            usage("c", "agent_call", quantity="250", t=f"{day}T10:00:00+08:00")
        ).deduction.to_record()
        assert splits(d) == [("free", f"daily:{day}", D("0.5"))]
    for day in ("2026-05-03", "2026-05-02"):
        d = a.send(
            usage("c", "agent_call", quantity="1", t=f"{day}T11:00:00+08:00")
        ).deduction.to_record()
        assert splits(d) == [("cash", "cash", D("0.002"))], day


def test_late_free_points_window_is_three_calendar_days_not_three_days_with_usage():
    # Issue 18 item 10: this test used to assert that 05-01, never used, still got its points
    # behind three used days; the rule (README 'Decisions') counts calendar days up to stream time,
    # so with stream time on 05-04 the window is 05-02..05-04 whatever days had usage.
    a = Account()
    a.send(account("c", "account_opened", profile="coze-pro", amount="10"))
    for day in ("2026-05-02", "2026-05-03", "2026-05-04"):
        a.send(usage("c", "agent_call", quantity="250", t=f"{day}T10:00:00+08:00"))
    d = a.send(
        usage("c", "agent_call", quantity="1", t="2026-05-01T11:00:00+08:00")
    ).deduction.to_record()
    assert splits(d) == [("cash", "cash", D("0.002"))]


def test_dead_letter_ids_are_deterministic_per_reason_and_event():
    first = dead_letter_id("unknown_item", "e1", "p0@5")
    # the event id decides, not the position
    assert first == dead_letter_id("unknown_item", "e1", "p9@9")
    assert (
        len(
            {
                first,
                dead_letter_id("unknown_model", "e1", "p0@5"),
                dead_letter_id("unknown_item", "e2", "p0@5"),
                dead_letter_id("undecodable", None, "p0@5"),
                dead_letter_id("undecodable", None, "p0@6"),
            }
        )
        == 5
    )
    assert dead_letter_id("undecodable", "", "p0@5") == dead_letter_id("undecodable", None, "p0@5")
