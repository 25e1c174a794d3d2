"""Tests against surviving mutants (issue 20), part 3: the shape of the output records (deduction,
settlement line, usage minute, rating line) whose field names downstream readers depend on, the
per-request bounds at their limits, currency codes, and account events that are never charges."""

from __future__ import annotations

import pytest

from streams.deduction.record import deduction_id
from streams.ingest.events import Rejected, parse_currency, parse_json_event
from streams.rating.rate import rate
from tests.unit.engine_driver import PROFILES, Account, D, ms
from tests.unit.helpers import account, usage


def test_deduction_record_shape():
    a = Account()
    a.send(account("j", "account_opened", profile="jiekou", amount="1"))
    d = a.send(
        usage("j", "tokens", model="claude-sonnet-4.5", input_tokens=10, event_id="u-d")
    ).deduction.to_record()
    assert d["deduction_id"] == deduction_id("j", "u-d") != deduction_id("k", "u-d")
    assert (d["kind"], d["adjusts_deduction_id"], d["rerate_id"]) == ("usage", None, None)
    assert {"KIND", "XXkindXX"}.isdisjoint(d)


def test_settlement_line_names_profile_currency_variant_and_price_versions():
    a = Account()
    a.send(account("j", "account_opened", profile="jiekou", amount="10", t="2026-05-01T00:00:00Z"))
    # 0.28
    a.send(
        usage(
            "j",
            "media_call",
            model="kling-v2",
            variant="video",
            quantity="1",
            t="2026-05-01T10:00:00Z",
        )
    )
    a.advance("2026-05-01T11:05:00Z")
    (line,) = a.settlements
    assert (
        line["profile"],
        line["currency"],
        line["variant"],
        line["price_versions"],
        line["gross_amount"],
    ) == ("jiekou", "USD", "video", ["jiekou@2026-02-26-example"], "0.28")


def test_late_request_after_its_minute_closed_is_an_adjustment_record():
    # default lateness 5 min: the 10:00 minute closes at 10:06:00; a request for it arriving then
    # is counted in an adjustment record of its own
    a = Account()
    a.send(account("j", "account_opened", profile="jiekou", amount="1", t="2026-05-01T00:00:00Z"))
    a.send(
        usage("j", "tokens", model="claude-sonnet-4.5", input_tokens=10, t="2026-05-01T10:00:10Z")
    )
    a.advance("2026-05-01T10:06:00Z")
    out = a.engine.apply(
        a.state,
        parse_json_event(
            usage(
                "j",
                "tokens",
                model="claude-sonnet-4.5",
                input_tokens=7,
                event_id="u-late",
                t="2026-05-01T10:00:30Z",
            )
        ),
    )
    assert [
        (m["main_account_id"], m["line_type"], m["minute_start"], m["requests"], m["tokens"])
        for m in out.usage_minutes
    ] == [("j", "adjustment", ms("2026-05-01T10:00:00Z"), 1, 7)]


def test_rating_line_component_and_quantities_of_unit_items():
    def rated(profile, **kw):
        raw = usage("x", t="2026-05-01T10:00:00+08:00", **kw)
        return rate(PROFILES[profile], parse_json_event(raw))

    r = rated("coze-pro", item="agent_call", quantity="3")
    assert [ln.component for ln in r.lines] == ["unit"] and r.quantities == {"quantity": "3"}
    r = rated("coze-pro", item="kb_storage", quantity="12.5", hours="2")
    assert r.quantities == {"stored_gb": "12.5", "hours": "2", "free_gb": "10"}
    r = rated("tokenhub", item="video", model="HY-Video-1.5", quantity="1")
    assert [(ln.component, ln.credits_per_unit) for ln in r.lines] == [("unit", D("1.5"))]


def test_unit_item_with_one_variantless_row_takes_it_and_unknown_variants_are_listed():
    e = parse_json_event(
        usage("x", "image", model="HY-Image-V3.0", quantity="1", variant="2048x2048")
    )
    assert rate(PROFILES["tokenhub"], e).amount == D("0.2")
    with pytest.raises(Rejected) as info:
        rate(
            PROFILES["coze-pro"],
            parse_json_event(usage("x", "rtc_video", variant="8k", quantity="1")),
        )
    assert (
        info.value.message
        == "rtc_video has no price for variant '8k' (known: 1080p, 2k, 360p, 4k, 720p)"
    )
    with pytest.raises(Rejected) as info:
        rate(
            PROFILES["tokenhub"],
            parse_json_event(usage("x", "image", model="kimi-k2.5", quantity="1")),
        )
    assert (
        info.value.message
        == "item 'image' for model 'kimi-k2.5' has no price in profile 'tokenhub'"
    )
    with pytest.raises(Rejected) as info:
        rate(PROFILES["jiekou"], parse_json_event(usage("x", "agent_call", quantity="1")))
    assert info.value.message == "item 'agent_call' has no price in profile 'jiekou'"


@pytest.mark.parametrize(
    "kw,ok",
    [
        # exactly 4M
        (
            dict(
                item="tokens",
                model="claude-sonnet-4.5",
                input_tokens=3_000_000,
                output_tokens=1_000_000,
            ),
            True,
        ),
        (
            dict(
                item="tokens",
                model="claude-sonnet-4.5",
                input_tokens=3_000_000,
                output_tokens=1_000_001,
            ),
            False,
        ),
        (
            dict(
                item="tokens",
                model="claude-sonnet-4.5",
                input_tokens=3_000_000,
                output_tokens=1_500_000,
            ),
            False,
        ),
        (dict(item="media_call", model="kling-v2", variant="video", quantity="1000000"), True),
        (dict(item="media_call", model="kling-v2", variant="video", quantity="1000001"), False),
    ],
)
def test_per_request_bounds_are_inclusive(kw, ok):
    e = parse_json_event(usage("x", t="2026-05-01T10:00:00+08:00", **kw))
    if ok:
        rate(PROFILES["jiekou"], e)
    else:
        with pytest.raises(Rejected) as info:
            rate(PROFILES["jiekou"], e)
        assert info.value.code == "quantity_out_of_range"


def test_kb_storage_hours_bound_is_inclusive():
    at = parse_json_event(usage("x", "kb_storage", quantity="11", hours="744"))
    assert rate(PROFILES["coze-pro"], at).amount > 0
    with pytest.raises(Rejected) as info:
        rate(
            PROFILES["coze-pro"],
            parse_json_event(usage("x", "kb_storage", quantity="11", hours="745")),
        )
    assert info.value.code == "quantity_out_of_range"


@pytest.mark.parametrize(
    "value,expected",
    [
        (None, None),
        ("", None),
        (" usd ", "USD"),
        ("cny", "CNY"),
        (12, "currency must be a string (an ISO 4217 code), got int"),
        ("US", "currency 'US' is not an ISO 4217 code (three letters, e.g. CNY, USD)"),
        ("U$D", "currency 'U$D' is not an ISO 4217 code (three letters, e.g. CNY, USD)"),
        ("XXXX", "currency 'XXXX' is not an ISO 4217 code (three letters, e.g. CNY, USD)"),
        ("a" * 20, f"currency {'a' * 16!r} is not an ISO 4217 code (three letters, e.g. CNY, USD)"),
    ],
)
def test_currency_codes(value, expected):
    if expected is None or len(expected) == 3:
        assert parse_currency(value) == expected
    else:
        with pytest.raises(Rejected) as info:
            parse_currency(value)
        assert (info.value.code, info.value.message) == ("invalid_currency", expected)


def test_account_events_are_never_charges_and_their_alerts_name_the_account():
    # post-paid with an empty balance: an account event leaves it at 0 but is no charge, so no
    # arrears (billing-rules §5: arrears start when a charge leaves the balance at or below 0)
    a = Account()
    a.send(account("t", "account_opened", profile="tokenhub", post_paid=True))
    out = a.send(account("t", "balance_threshold_set", balance_threshold="5", event_id="a-th"))
    assert [
        (x["kind"], x["account_id"], x["trace_id"], x["source_event_ids"]) for x in out.alerts
    ] == [("balance_below_threshold", "t", "", ["a-th"])]
    out = a.send(account("t", "post_paid_switched", post_paid=True))
    assert out.alerts == [] and out.status is None


def test_currency_of_an_account_event_must_match():
    a = Account()
    a.send(account("j", "account_opened", profile="jiekou", amount="1"))
    out = a.send(account("j", "top_up", amount="1", currency="CNY"))
    assert (out.rejected.code, out.rejected.message) == (
        "currency_mismatch",
        "top_up is in CNY but account 'j' is billed in USD; there is no implicit exchange",
    )


def test_inference_limit_pause_alert_fields():
    a = Account()
    a.send(account("a", "account_opened", profile="ark", amount="100"))
    a.send(account("a", "sub_account_linked", sub_account_id="a-dev"))
    a.send(account("a", "model_activated", model="deepseek-v3"))
    a.send(
        account(
            "a",
            "inference_limit_set",
            model="deepseek-v3",
            limit_tokens=10,
            t="2026-05-01T09:00:00+08:00",
        )
    )
    out = a.send(
        usage(
            "a",
            "tokens",
            model="deepseek-v3",
            input_tokens=10,
            account_id="a-dev",
            event_id="u-l",
            trace_id="tr-l",
            t="2026-05-01T10:00:00+08:00",
        )
    )
    (x,) = [x for x in out.alerts if x["kind"] == "model_paused"]
    assert (
        x["main_account_id"],
        x["account_id"],
        x["event_time"],
        x["episode"],
        x["model"],
        x["details"],
        x["source_event_ids"],
        x["trace_id"],
    ) == (
        "a",
        "a-dev",
        ms("2026-05-01T10:00:00+08:00"),
        f"inference_limit:deepseek-v3:{ms('2026-05-01T09:00:00+08:00')}",
        "deepseek-v3",
        {"reason": "inference_limit", "used_tokens": "10"},
        ["u-l"],
        "tr-l",
    )
    assert isinstance(x["message"], str) and x["message"]


def test_next_due_is_the_earliest_of_minute_period_and_deadline():
    # the worker ticks an idle account at next_due; default lateness 5 min
    a = Account()
    a.send(
        account(
            "t",
            "account_opened",
            profile="tokenhub",
            post_paid=True,
            amount="0.01",
            t="2026-05-01T00:00:00Z",
        )
    )
    assert a.engine.next_due(a.state) is None
    # arrears
    a.send(
        usage(
            "t", "tokens", model="Deepseek-r1-0528", input_tokens=10_000, t="2026-05-01T10:00:10Z"
        )
    )
    # the 10:00 minute is due at 10:06, the 10:00 hour at 11:05, the grace reminder 15 days - 4 h on
    assert a.engine.next_due(a.state) == ms("2026-05-01T10:06:00Z")
    a.advance("2026-05-01T10:06:00Z")
    assert a.engine.next_due(a.state) == ms("2026-05-01T11:05:00Z")
    a.advance("2026-05-01T11:05:00Z")
    # arrears since 10:00:10: reminder 15 days - 4 h later, release 15 days later
    assert a.engine.next_due(a.state) == ms("2026-05-16T06:00:10Z")
    a.advance("2026-05-16T06:00:10Z")  # reminded: next is the release itself
    assert a.engine.next_due(a.state) == ms("2026-05-16T10:00:10Z")
    a.advance("2026-05-16T10:00:10Z")
    assert a.engine.next_due(a.state) is None  # released: nothing more is due


def test_next_due_includes_a_trials_expiring_notice():
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
    # claims, 365 days
    a.send(usage("t", "image", model="HY-Image-V3.0", quantity="1", t="2026-04-10T10:00:00+08:00"))
    a.advance("2026-04-10T12:00:00+08:00")  # the hour and the minute closed
    # expiry 2027-04-10 10:00 minus 7 days
    assert a.engine.next_due(a.state) == ms("2027-04-03T10:00:00+08:00")
