"""More tests against surviving mutants (issue 20): every field of every alert kind (who, when,
which episode, which model, details, the event and trace behind it), the boundaries of the
deduction order (a trial with 1 token left, a voucher expiring at the event's instant, the free
points' horizon day), split units, the internal-error log record and the parser's messages.
Expected values are worked out by hand in the comments."""

from __future__ import annotations

import logging

import pytest

from streams.ingest.events import Rejected, millis_to_iso, parse_json_event
from tests.unit.engine_driver import Account, D, ms, splits
from tests.unit.helpers import account, usage

FAR = "2027-01-01T00:00:00+08:00"


def fields(x):
    assert isinstance(x["message"], str) and x["message"], x
    return (
        x["kind"],
        x["account_id"],
        x["event_time"],
        x["episode"],
        x["model"],
        x["details"],
        x["source_event_ids"],
        x["trace_id"],
    )


def only(alerts, kind):
    found = [x for x in alerts if x["kind"] == kind]
    assert len(found) == 1, (kind, alerts)
    return found[0]


def test_free_quota_exhausted_alert_fields():
    # Doubao-pro-32k: 250k input x 0.8 + 150k output x 2 points per 1k = 200 + 300 = the day's 500
    a = Account()
    a.send(account("c", "account_opened", profile="coze-pro", amount="1"))
    a.send(account("c", "sub_account_linked", sub_account_id="c-dev"))
    out = a.send(
        usage(
            "c",
            "tokens",
            model="Doubao-pro-32k",
            input_tokens=250_000,
            output_tokens=150_000,
            account_id="c-dev",
            event_id="u-f",
            trace_id="tr-f",
            t="2026-05-01T10:00:00+08:00",
        )
    )
    assert splits(out.deduction.to_record()) == [("free", "daily:2026-05-01", D("0.5"))]
    assert fields(only(out.alerts, "free_quota_exhausted")) == (
        "free_quota_exhausted",
        "c-dev",
        ms("2026-05-01T10:00:00+08:00"),
        "2026-05-01",
        "Doubao-pro-32k",
        {},
        ["u-f"],
        "tr-f",
    )


def test_trial_exhausted_alert_fields_and_a_trial_with_one_token_left():
    a = Account()
    a.send(account("t", "account_opened", profile="tokenhub", post_paid=True, amount="10"))
    a.send(account("t", "sub_account_linked", sub_account_id="t-dev"))
    a.send(
        usage("t", "tokens", model="kimi-k2.5", input_tokens=499_999, t="2026-05-01T10:00:00+08:00")
    )
    # 1 token left: it covers 1 of the next 2 (4 CNY / 1M each = 0.000004), the other is cash
    out = a.send(
        usage(
            "t",
            "tokens",
            model="kimi-k2.5",
            input_tokens=2,
            account_id="t-dev",
            event_id="u-x",
            trace_id="tr-x",
            t="2026-05-01T10:01:00+08:00",
        )
    )
    assert splits(out.deduction.to_record()) == [
        ("trial", "kimi-k2.5", D("0.000004")),
        ("cash", "cash", D("0.000004")),
    ]
    assert [s["unit"] for s in out.deduction.to_record()["splits"]] == ["tokens", "CNY"]
    assert fields(only(out.alerts, "trial_exhausted")) == (
        "trial_exhausted",
        "t-dev",
        ms("2026-05-01T10:01:00+08:00"),
        "kimi-k2.5",
        "kimi-k2.5",
        {},
        ["u-x"],
        "tr-x",
    )
    assert "trial_exhausted" not in [
        x["kind"]
        for x in a.send(
            usage("t", "tokens", model="kimi-k2.5", input_tokens=1, t="2026-05-01T10:02:00+08:00")
        ).alerts
    ]


def test_safe_trial_pause_alert_fields():
    a = Account()
    a.send(account("a", "account_opened", profile="ark", amount="1", safe_trial_mode=True))
    a.send(account("a", "sub_account_linked", sub_account_id="a-dev"))
    out = a.send(
        usage(
            "a",
            "tokens",
            model="deepseek-v3",
            input_tokens=0,
            output_tokens=496_000,
            account_id="a-dev",
            event_id="u-s",
            trace_id="tr-s",
            t="2026-05-01T10:00:00+08:00",
        )
    )
    x = only(out.alerts, "model_paused")
    assert x["main_account_id"] == "a"
    assert fields(x) == (
        "model_paused",
        "a-dev",
        ms("2026-05-01T10:00:00+08:00"),
        "safe_trial:deepseek-v3",
        "deepseek-v3",
        {"reason": "safe_trial_mode", "trial_remaining": "4000"},
        ["u-s"],
        "tr-s",
    )


def test_safe_trial_pauses_at_the_trials_expiry_instant():
    # claimed 2026-05-01 10:00 (+08:00) with the first call; Ark: 365 days
    a = Account()
    a.send(account("a", "account_opened", profile="ark", amount="1", safe_trial_mode=True))
    a.send(
        usage("a", "tokens", model="deepseek-v3", input_tokens=10, t="2026-05-01T10:00:00+08:00")
    )
    out = a.send(
        usage("a", "tokens", model="deepseek-v3", input_tokens=10, t="2027-05-01T10:00:00+08:00")
    )
    assert (
        out.deduction.to_record()["splits"] == []
        and out.deduction.to_record()["unbilled_reason"] == "safe_trial_mode"
    )
    assert [x["kind"] for x in out.alerts if x["kind"] == "model_paused"] == ["model_paused"]


def test_an_account_not_in_safe_trial_mode_gets_no_safe_trial_pause():
    a = Account()
    a.send(account("a", "account_opened", profile="ark", amount="10"))
    out = a.send(usage("a", "tokens", model="deepseek-v3", input_tokens=0, output_tokens=496_000))
    assert [x["kind"] for x in out.alerts] == []


def test_threshold_and_arrears_alert_fields_and_episodes():
    a = Account()
    a.send(
        account(
            "t",
            "account_opened",
            profile="tokenhub",
            post_paid=True,
            amount="0.01",
            balance_threshold="0.005",
            t="2026-05-01T08:00:00+08:00",
        )
    )
    a.send(account("t", "sub_account_linked", sub_account_id="t-dev"))
    # Deepseek-r1-0528: 10,000 input x 4 CNY / 1M = 0.04: 0.01 -> -0.03
    t1 = "2026-05-01T10:00:00+08:00"
    out = a.send(
        usage(
            "t",
            "tokens",
            model="Deepseek-r1-0528",
            input_tokens=10_000,
            account_id="t-dev",
            event_id="u-1",
            trace_id="tr-1",
            t=t1,
        )
    )
    assert fields(only(out.alerts, "balance_below_threshold")) == (
        "balance_below_threshold",
        "t-dev",
        ms(t1),
        f"below:{ms(t1)}:u-1",
        None,
        {"available": "-0.03", "threshold": "0.005"},
        ["u-1"],
        "tr-1",
    )
    assert fields(only(out.alerts, "arrears_started")) == (
        "arrears_started",
        "t-dev",
        ms(t1),
        "arrears:1",
        None,
        {"available": "-0.03"},
        ["u-1"],
        "tr-1",
    )
    t2 = "2026-05-01T11:00:00+08:00"
    out = a.send(account("t", "top_up", amount="1", event_id="a-up", t=t2))  # 0.97
    assert fields(only(out.alerts, "arrears_cleared")) == (
        "arrears_cleared",
        "t",
        ms(t2),
        "arrears:1",
        None,
        {"available": "0.97"},
        ["a-up"],
        "",
    )
    # a second episode: 0.97 - 25 x 0.04 = -0.03
    out = a.send(
        usage(
            "t",
            "tokens",
            model="Deepseek-r1-0528",
            input_tokens=250_000,
            event_id="u-2",
            t="2026-05-01T12:00:00+08:00",
        )
    )
    assert only(out.alerts, "arrears_started")["episode"] == "arrears:2"
    assert only(out.alerts, "balance_below_threshold")["details"] == {
        "available": "-0.03",
        "threshold": "0.005",
    }


def test_grace_reminder_and_release_fire_exactly_at_their_deadlines_and_release_is_final():
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
    # arrears
    a.send(
        usage(
            "t", "tokens", model="Deepseek-r1-0528", input_tokens=10_000, t="2026-05-01T10:00:00Z"
        )
    )
    grace_end = ms("2026-05-16T10:00:00Z")  # 15 days
    reminder = grace_end - 4 * 3_600_000
    a.advance(reminder - 1)
    assert "grace_ending" not in a.kinds()
    a.advance(reminder)
    assert fields(only(a.alerts, "grace_ending")) == (
        "grace_ending",
        "t",
        reminder,
        "arrears:1",
        None,
        {"grace_end": "2026-05-16T10:00:00.000Z"},
        [],
        "",
    )
    a.advance(grace_end - 1)
    assert "resources_released" not in a.kinds()
    a.advance(grace_end + 3_600_000)  # found an hour late: still stamped at the deadline
    assert fields(only(a.alerts, "resources_released")) == (
        "resources_released",
        "t",
        grace_end,
        "arrears:1",
        None,
        {"arrears_since": "2026-05-01T10:00:00.000Z"},
        [],
        "",
    )
    assert (a.statuses[-1]["status"], a.statuses[-1]["reason"], a.statuses[-1]["since"]) == (
        "released",
        "arrears_grace_expired",
        grace_end,
    )
    # released is final: a later tick or a top-up changes nothing
    a.advance(grace_end + 10 * 3_600_000)
    out = a.send(account("t", "top_up", amount="100", t="2026-05-17T00:00:00Z"))
    assert out.alerts == [] and out.status is None
    assert a.kinds().count("resources_released") == 1 and a.statuses[-1]["status"] == "released"


def test_trial_expiring_alert_fields_at_the_exact_notice_time_with_one_token_left():
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
    a.send(
        usage("t", "tokens", model="kimi-k2.5", input_tokens=499_999, t="2026-04-10T10:00:00+08:00")
    )
    notice = ms("2026-07-02T10:00:00+08:00")  # expiry 2026-07-09 10:00 minus 7 days
    a.advance(notice)
    assert fields(only(a.alerts, "trial_expiring")) == (
        "trial_expiring",
        "t",
        notice,
        "kimi-k2.5",
        None,
        {"expires_at": millis_to_iso(ms("2026-07-09T10:00:00+08:00")), "remaining": "1"},
        [],
        "",
    )


def test_usage_minutes_name_their_account():
    a = Account()
    a.send(account("j", "account_opened", profile="jiekou", amount="1", t="2026-05-01T00:00:00Z"))
    a.send(
        usage("j", "tokens", model="claude-sonnet-4.5", input_tokens=10, t="2026-05-01T10:00:00Z")
    )
    out = a.advance("2026-05-01T10:10:00Z")
    assert [
        (m["main_account_id"], m["model"], m["requests"], m["tokens"]) for m in out.usage_minutes
    ] == [("j", "claude-sonnet-4.5", 1, 10)]


# ---------------------------------------------------------------- order-of-deduction boundaries


def test_a_voucher_expiring_at_the_events_instant_is_not_used_and_split_units_are_named():
    a = Account()
    a.send(account("j", "account_opened", profile="jiekou", amount="1"))
    a.send(
        account(
            "j",
            "voucher_granted",
            voucher_id="now",
            amount="1",
            expires_at="2026-05-01T10:00:00+08:00",
        )
    )
    a.send(account("j", "voucher_granted", voucher_id="later", amount="0.01", expires_at=FAR))
    d = a.send(
        usage(
            "j",
            "tokens",
            model="claude-sonnet-4.5",
            input_tokens=10_000,
            t="2026-05-01T10:00:00+08:00",
        )
    ).deduction.to_record()
    assert splits(d) == [("voucher", "later", D("0.01")), ("cash", "cash", D("0.02"))]
    assert [s["unit"] for s in d["splits"]] == ["USD", "USD"]


def test_a_pack_that_covers_everything_leaves_the_next_pack_out_of_the_splits():
    a = Account()
    a.send(account("c", "account_opened", profile="coze-pro", amount="1"))
    a.send(
        account(
            "c",
            "pack_purchased",
            pack_id="first",
            pack_kind="coze_unified",
            amount="1000",
            expires_at="2026-06-01T00:00:00+08:00",
        )
    )
    a.send(
        account(
            "c",
            "pack_purchased",
            pack_id="second",
            pack_kind="coze_unified",
            amount="1000",
            expires_at=FAR,
        )
    )
    # 300 calls = 600 points: 500 free, 100 points from the first pack, none from the second
    d = a.send(usage("c", "agent_call", quantity="300")).deduction.to_record()
    assert splits(d) == [("free", "daily:2026-05-01", D("0.5")), ("pack", "first", D("0.1"))]
    assert [(s["units"], s["unit"]) for s in d["splits"]] == [("500", "points"), ("100", "points")]


def test_a_late_event_on_the_horizon_day_still_uses_that_days_points():
    # 05-02 used 100 of its 500 points; after 05-05 the ledger keeps 05-03..05-05: 05-02 is
    # forgotten. With 05-01..05-04 the horizon is 05-02, still kept: its 400 points are there.
    a = Account()
    a.send(account("c", "account_opened", profile="coze-pro", amount="10"))
    a.send(usage("c", "agent_call", quantity="250", t="2026-05-01T10:00:00+08:00"))
    a.send(usage("c", "agent_call", quantity="50", t="2026-05-02T10:00:00+08:00"))  # 100 points
    a.send(usage("c", "agent_call", quantity="250", t="2026-05-03T10:00:00+08:00"))
    a.send(usage("c", "agent_call", quantity="250", t="2026-05-04T10:00:00+08:00"))
    d = a.send(
        usage("c", "agent_call", quantity="1", t="2026-05-02T11:00:00+08:00")
    ).deduction.to_record()
    assert splits(d) == [("free", "daily:2026-05-02", D("0.002"))]


# ---------------------------------------------------------------- the engine's rejections and logs


def test_internal_error_is_logged_with_the_event_and_its_message_is_bounded(caplog):
    a = Account()
    a.send(account("j", "account_opened", profile="jiekou", amount="1"))
    real = a.engine.ledger.apply_usage

    def broken(*args, **kw):
        raise RuntimeError("x" * 600)

    a.engine.ledger.apply_usage = broken
    with caplog.at_level(logging.ERROR, logger="streams.engine"):
        out = a.send(
            usage(
                "j",
                "tokens",
                model="claude-sonnet-4.5",
                input_tokens=1,
                event_id="u-err",
                trace_id="tr-err",
            )
        )
    a.engine.ledger.apply_usage = real
    assert out.rejected.code == "internal_error"
    assert (
        out.rejected.message == ("RuntimeError: " + "x" * 600)[:500]
        and len(out.rejected.message) == 500
    )
    (record,) = [r for r in caplog.records if r.name == "streams.engine"]
    assert record.getMessage() == "internal error applying event u-err"
    assert (record.event_id, record.trace_id, record.main_account_id) == ("u-err", "tr-err", "j")
    assert record.exc_info is not None


def test_wrong_account_message():
    a = Account()
    a.send(account("j", "account_opened", profile="jiekou", amount="1"))
    out = a.engine.apply(
        a.state, parse_json_event(usage("k", "tokens", model="claude-sonnet-4.5", input_tokens=1))
    )
    assert out.rejected.message == "event main_account_id does not match the state it was routed to"


PARSE_REJECTIONS = [
    ("not an object", "wrong_schema", "each line must be a JSON object"),
    (
        {
            "kind": "account",
            "event_id": "a",
            "account_id": "j",
            "main_account_id": "j",
            "event_time": "2026-05-01T08:00:00Z",
            "type": "explode",
        },
        "unknown_event_type",
        "account event type 'explode' is not one of account_opened, balance_threshold_set, "
        "inference_limit_removed, "
        "inference_limit_set, model_activated, pack_purchased, post_paid_switched, "
        "sub_account_linked, top_up, "
        "trial_claimed, voucher_granted",
    ),
    (
        account("j", "inference_limit_set", model="m", limit_tokens="10"),
        "invalid_field",
        "limit_tokens must be an integer",
    ),
    (
        account("j", "inference_limit_set", model="m", limit_tokens=10, inference_mode="x" * 40),
        "invalid_field",
        f"inference_mode must be 'online' or 'batch', got {'x' * 32!r}",
    ),
    (account("j", "top_up", amount="ten"), "invalid_field", "amount='ten' is not a decimal"),
    (
        account("j", "balance_threshold_set", balance_threshold="-1"),
        "negative_quantity",
        "balance_threshold=-1 is negative",
    ),
    (
        account("j", "top_up", amount="1", t="yesterday"),
        "invalid_field",
        "event_time='yesterday' is not an ISO-8601 timestamp",
    ),
]


@pytest.mark.parametrize(
    "raw,code,message",
    PARSE_REJECTIONS,
    ids=[f"{c[1]}-{i}" for i, c in enumerate(PARSE_REJECTIONS)],
)
def test_account_event_parse_rejections_name_the_field(raw, code, message):
    with pytest.raises(Rejected) as info:
        parse_json_event(raw)
    assert (info.value.code, info.value.message) == (code, message)


def test_online_inference_mode_is_accepted():
    e = parse_json_event(
        account("j", "inference_limit_set", model="m", limit_tokens=10, inference_mode="online")
    )
    assert e.inference_mode == "online"
