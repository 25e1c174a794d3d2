"""Targeted tests for the regressions issue 20 found unguarded: hand-made mutations of the core that
the unit tests did not notice. Each expected value is computed by hand from billing-rules.md and the
shipped price books (the arithmetic is in the comments), never copied from an output.

Prices used (per 1M tokens): tokenhub Deepseek-r1-0528 input 4 CNY (no trial); jiekou
claude-sonnet-4.5 input 3, cache hit 0.3, cache write 3.75 USD; jiekou claude-opus-4.5 cache hit
0.5, cache write 6.25 USD. coze-pro: agent_call 2 points, 1 CNY = 1000 points, 500 free points a
day.
"""

from __future__ import annotations

import pytest

from streams.ingest.events import Rejected, parse_json_event
from streams.rating.rate import rate
from tests.unit.engine_driver import PROFILES, Account, D, snapshot, splits
from tests.unit.helpers import account, usage

SONNET = "claude-sonnet-4.5"


def r1(main, **kw):
    """Deepseek-r1-0528 on tokenhub: 10,000 input tokens x 4 CNY / 1M = 0.04 CNY."""
    return usage(main, "tokens", model="Deepseek-r1-0528", input_tokens=10_000, **kw)


def sonnet(main, **kw):
    """claude-sonnet-4.5 on jiekou: 10,000 input tokens x 3 USD / 1M = 0.03 USD."""
    return usage(main, "tokens", model=SONNET, input_tokens=10_000, **kw)


# ---------------------------------------------------------------- arrears start at <= 0 (§5)


def test_post_paid_account_charged_down_to_exactly_zero_is_in_arrears():
    a = Account()
    a.send(account("z", "account_opened", profile="tokenhub", post_paid=True, amount="0.04"))
    out = a.send(r1("z"))
    assert splits(out.deduction.to_record()) == [("cash", "cash", D("0.04"))]
    assert out.deduction.to_record()["balance_after"] == "0"
    assert [al["kind"] for al in out.alerts] == ["arrears_started"]
    assert out.status is not None and (out.status["status"], out.status["reason"]) == (
        "suspended",
        "arrears",
    )
    # the next request is still rated and recorded, flagged as coming from a suspended account
    assert a.send(r1("z")).deduction.to_record()["flags"] == ["suspended"]


def test_post_paid_account_left_above_zero_is_not_in_arrears():
    a = Account()
    a.send(account("z", "account_opened", profile="tokenhub", post_paid=True, amount="0.05"))
    out = a.send(r1("z"))
    assert out.deduction.to_record()["balance_after"] == "0.01"
    assert out.alerts == [] and out.status is None


def test_vouchers_count_in_the_available_balance_and_a_voucher_spent_to_zero_is_arrears():
    # available = cash + live vouchers; cash 0, one voucher of 0.04 paying the whole 0.04
    a = Account()
    a.send(account("z", "account_opened", profile="tokenhub", post_paid=True))
    a.send(
        account(
            "z",
            "voucher_granted",
            voucher_id="v",
            amount="0.04",
            expires_at="2026-12-01T00:00:00+08:00",
        )
    )
    out = a.send(r1("z"))
    assert splits(out.deduction.to_record()) == [("voucher", "v", D("0.04"))]
    assert [al["kind"] for al in out.alerts] == ["arrears_started"]


def test_top_up_to_exactly_zero_does_not_clear_arrears_a_positive_one_does():
    a = Account()
    a.send(account("z", "account_opened", profile="tokenhub", post_paid=True, amount="0.01"))
    a.send(r1("z"))  # 0.01 - 0.04 = -0.03
    assert a.status() == "suspended"
    # -0.03 + 0.03 = 0
    out = a.send(account("z", "top_up", amount="0.03", t="2026-05-01T11:00:00+08:00"))
    assert out.alerts == [] and out.status is None
    out = a.send(account("z", "top_up", amount="0.000001", t="2026-05-01T11:01:00+08:00"))
    assert [al["kind"] for al in out.alerts] == ["arrears_cleared"]
    assert out.status["status"] == "active"
    assert a.cash == D("0.000001")


# ---------------------------------------------------------------- balance threshold re-armed (§5)


def test_balance_threshold_alerts_again_after_a_top_up_above_it():
    a = Account()
    a.send(account("j", "account_opened", profile="jiekou", amount="1", balance_threshold="0.95"))
    assert a.send(sonnet("j", t="2026-05-01T10:00:00+08:00")).alerts == []  # 0.97 >= 0.95
    first = a.send(sonnet("j", t="2026-05-01T10:01:00+08:00")).alerts  # 0.94 < 0.95: alert
    assert a.send(sonnet("j", t="2026-05-01T10:02:00+08:00")).alerts == []  # 0.91: already alerted
    # a top-up to exactly the threshold (0.91 + 0.04 = 0.95) is no longer below it: re-armed
    assert a.send(account("j", "top_up", amount="0.04", t="2026-05-01T10:03:00+08:00")).alerts == []
    second = a.send(sonnet("j", t="2026-05-01T10:04:00+08:00")).alerts  # 0.92 < 0.95: alert again
    assert [x["kind"] for x in first + second] == [
        "balance_below_threshold",
        "balance_below_threshold",
    ]
    assert [x["details"] for x in first + second] == [
        {"available": "0.94", "threshold": "0.95"},
        {"available": "0.92", "threshold": "0.95"},
    ]
    assert first[0]["alert_id"] != second[0]["alert_id"]
    assert a.kinds() == ["balance_below_threshold", "balance_below_threshold"]


def test_a_top_up_that_stays_below_the_threshold_does_not_re_arm_it():
    a = Account()
    a.send(account("j", "account_opened", profile="jiekou", amount="1", balance_threshold="0.95"))
    a.send(sonnet("j", t="2026-05-01T10:00:00+08:00"))  # 0.97
    a.send(sonnet("j", t="2026-05-01T10:01:00+08:00"))  # 0.94: the alert
    a.send(account("j", "top_up", amount="0.009", t="2026-05-01T10:02:00+08:00"))  # 0.949 < 0.95
    a.send(sonnet("j", t="2026-05-01T10:03:00+08:00"))  # 0.919: still the same episode
    assert a.kinds() == ["balance_below_threshold"]


def test_balance_exactly_at_the_threshold_is_not_below_it():
    a = Account()
    a.send(account("j", "account_opened", profile="jiekou", amount="1", balance_threshold="0.97"))
    assert a.send(sonnet("j", t="2026-05-01T10:00:00+08:00")).alerts == []  # 0.97 is not below 0.97
    assert [x["kind"] for x in a.send(sonnet("j", t="2026-05-01T10:01:00+08:00")).alerts] == [
        "balance_below_threshold"
    ]


def test_setting_a_new_threshold_re_arms_it():
    a = Account()
    a.send(account("j", "account_opened", profile="jiekou", amount="1", balance_threshold="0.95"))
    a.send(sonnet("j", t="2026-05-01T10:00:00+08:00"))  # 0.97
    a.send(sonnet("j", t="2026-05-01T10:01:00+08:00"))  # 0.94: alert 1
    # a new threshold is armed at once: 0.94 is below 0.99, so it alerts on the setting itself
    out = a.send(
        account(
            "j", "balance_threshold_set", balance_threshold="0.99", t="2026-05-01T10:01:30+08:00"
        )
    )
    assert [(x["kind"], x["details"]) for x in out.alerts] == [
        ("balance_below_threshold", {"available": "0.94", "threshold": "0.99"})
    ]
    out = a.send(
        account(
            "j", "balance_threshold_set", balance_threshold="0.5", t="2026-05-01T10:02:00+08:00"
        )
    )
    assert out.alerts == []  # 0.94 is above the new threshold
    for minute in range(3, 17):  # 14 x 0.03 = 0.42: 0.94 -> 0.52, still >= 0.5
        assert a.send(sonnet("j", t=f"2026-05-01T10:{minute:02d}:00+08:00")).alerts == []
    assert a.cash == D("0.52")
    alerts = a.send(sonnet("j", t="2026-05-01T10:17:00+08:00")).alerts  # 0.49 < 0.5
    assert [(x["kind"], x["details"]["threshold"]) for x in alerts] == [
        ("balance_below_threshold", "0.5")
    ]


# ---------------------------------------------------------------- cache_hit + cache_write <= input


@pytest.mark.parametrize("hit,write", [(0, 101), (60, 41), (100, 1)])
def test_cache_tokens_above_input_tokens_are_rejected_even_only_through_cache_write(hit, write):
    raw = usage(
        "j",
        "tokens",
        model="claude-opus-4.5",
        input_tokens=100,
        cache_hit_tokens=hit,
        cache_write_tokens=write,
    )
    with pytest.raises(Rejected) as info:
        parse_json_event(raw)
    assert info.value.code == "quantities_do_not_add_up"
    assert "cache_write_tokens" in info.value.message


def test_cache_tokens_equal_to_input_tokens_leave_no_negative_line():
    # 60 cache hits x 0.5 + 40 cache writes x 6.25, per 1M: 0.00003 + 0.00025 = 0.00028 USD
    event = parse_json_event(
        usage(
            "j",
            "tokens",
            model="claude-opus-4.5",
            input_tokens=100,
            cache_hit_tokens=60,
            cache_write_tokens=40,
        )
    )
    rating = rate(PROFILES["jiekou"], event)
    assert [(ln.component, ln.units, ln.amount) for ln in rating.lines] == [
        ("cache_hit", D(60), D("0.00003")),
        ("cache_write", D(40), D("0.00025")),
    ]
    assert rating.amount == D("0.00028")


def test_a_cache_write_overflow_never_reaches_the_ledger_as_a_negative_charge():
    a = Account()
    a.send(account("j", "account_opened", profile="jiekou", amount="1"))
    with pytest.raises(Rejected):
        a.send(usage("j", "tokens", model=SONNET, input_tokens=10, cache_write_tokens=11))
    assert a.deductions == [] and a.cash == 1


# ---------------------------------------------------------------- the state is unchanged after a
# rejection


def _coze_account() -> Account:
    a = Account()
    a.send(
        account(
            "c", "account_opened", profile="coze-pro", amount="10", t="2026-05-01T08:00:00+08:00"
        )
    )
    a.send(
        account(
            "c",
            "pack_purchased",
            pack_id="p",
            pack_kind="coze_unified",
            amount="1000",
            expires_at="2026-12-01T00:00:00+08:00",
            t="2026-05-01T08:01:00+08:00",
        )
    )
    return a


def _fail_after(real, exc):
    """``real`` runs to the end (every bucket drawn, every flag set), then ``exc`` is raised."""

    def wrapper(*args, **kw):
        real(*args, **kw)
        raise exc

    return wrapper


# 1,600 points of agent calls (800 calls x 2 points): 500 free points, then 1,000 from the pack,
# then 100 points = 0.1 CNY of cash. Every kind of bucket changes if the event is applied.
BIG = dict(item="agent_call", quantity="800", t="2026-05-01T10:00:00+08:00")


@pytest.mark.parametrize(
    "exc,code",
    [
        (RuntimeError("boom"), "internal_error"),
        (
            Rejected("injected_late_rejection", "rejected after the buckets were drawn"),
            "injected_late_rejection",
        ),
    ],
)
def test_usage_failing_part_way_leaves_the_full_state_unchanged(exc, code):
    a = _coze_account()
    a.advance(BIG["t"])  # the clock moves before the event is applied; compare from there
    before = snapshot(a.state)
    engine = a.engine
    real = engine.ledger.apply_usage
    engine.ledger.apply_usage = _fail_after(real, exc)
    raw = usage("c", event_id="u-big", **BIG)
    out = a.send(raw)
    assert out.result == "rejected" and out.rejected.code == code
    if code == "internal_error":
        assert "RuntimeError: boom" in out.rejected.message
    assert out.deduction is None and out.alerts == [] and out.status is None
    assert snapshot(out.state) == before
    # the failed event was not remembered as applied: once the fault is gone it is applied, once
    engine.ledger.apply_usage = real
    again = a.send(raw)
    assert again.result == "rated"
    assert splits(again.deduction.to_record()) == [
        ("free", "daily:2026-05-01", D("0.5")),
        ("pack", "p", D("1")),
        ("cash", "cash", D("0.1")),
    ]
    assert a.send(raw).result == "duplicate"
    assert a.cash == D("9.9")


def test_account_event_failing_part_way_leaves_the_full_state_unchanged():
    a = _coze_account()
    a.advance("2026-05-01T09:00:00+08:00")
    before = snapshot(a.state)
    real = a.engine.ledger.apply_account_event
    a.engine.ledger.apply_account_event = _fail_after(real, KeyError("late"))
    out = a.send(
        account("c", "top_up", event_id="a-top", amount="5", t="2026-05-01T09:00:00+08:00")
    )
    assert out.rejected.code == "internal_error"
    assert snapshot(out.state) == before
    a.engine.ledger.apply_account_event = real
    assert (
        a.send(
            account("c", "top_up", event_id="a-top", amount="5", t="2026-05-01T09:00:00+08:00")
        ).result
        == "applied"
    )
    assert a.cash == D(15)


def test_rejected_events_change_no_balance_and_no_later_charge():
    a = _coze_account()
    a.advance("2026-05-01T10:00:00+08:00")  # the latest time of the events below
    before = snapshot(a.state)
    for raw in (
        account("c", "top_up", amount="-1"),  # negative_top_up
        account(
            "c",
            "pack_purchased",
            pack_id="p",
            pack_kind="coze_unified",
            amount="5",
            expires_at="2026-12-01T00:00:00+08:00",
        ),
        usage("c", "tokens", model="nope", input_tokens=1),  # unknown_model
        usage("c", "agent_call", quantity="1", account_id="stranger"),  # unknown_sub_account
    ):
        out = a.send(raw)
        assert out.result == "rejected", raw
        assert snapshot(out.state) == before, out.rejected.code
    # 250 calls = 500 points: exactly the day's free points, nothing from the pack or cash
    out = a.send(usage("c", "agent_call", quantity="250", t="2026-05-01T10:00:00+08:00"))
    assert splits(out.deduction.to_record()) == [("free", "daily:2026-05-01", D("0.5"))]


# ---------------------------------------------------------------- the same event twice charges once


def test_same_usage_event_applied_twice_through_the_engine_charges_once():
    a = Account()
    a.send(account("j", "account_opened", profile="jiekou", amount="1"))
    event = parse_json_event(sonnet("j", event_id="u-same", t="2026-05-01T10:00:00+08:00"))
    first = a.send(event)
    assert first.result == "rated" and a.cash == D("0.97")
    second = a.send(event)
    assert second.result == "duplicate"
    assert (
        second.deduction is None
        and second.alerts == []
        and second.settlements == []
        and second.status is None
    )
    assert a.cash == D("0.97")
    a.send(sonnet("j", t="2026-05-01T10:01:00+08:00"))  # another event in between: 0.94
    assert a.send(event).result == "duplicate"
    assert a.cash == D("0.94")
    assert [d["event_id"] for d in a.deductions].count("u-same") == 1


def test_same_account_event_applied_twice_tops_up_once():
    a = Account()
    a.send(account("j", "account_opened", profile="jiekou", amount="1"))
    top_up = account("j", "top_up", event_id="a-same", amount="2")
    assert [a.send(top_up).result for _ in range(3)] == ["applied", "duplicate", "duplicate"]
    assert a.cash == D(3)


def test_duplicate_after_the_state_is_restored_from_its_dict_still_charges_once():
    a = Account()
    a.send(account("j", "account_opened", profile="jiekou", amount="1"))
    event = parse_json_event(sonnet("j", event_id="u-same"))
    a.send(event)
    from streams.ledger.state import AccountState

    restored = AccountState.from_dict(snapshot(a.state))  # a changelog restore
    out = a.engine.apply(restored, event)
    assert out.result == "duplicate" and out.state.cash == D("0.97")
