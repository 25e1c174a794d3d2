"""Finance reads an account's latest cash balance from the records the core writes: deductions
(v4) carry ``balance_after`` and every account event that moves the cash writes a balance record
(account_balance v1); both share the account's sequence with alerts and status records. Status
records keep meaning "the status changed". Expected values are computed by hand.

Prices: tokenhub Deepseek-r1-0528 input 4 CNY per 1M tokens, so 10,000 tokens = 0.04 CNY.
"""

from __future__ import annotations

from tests.unit.engine_driver import Account, D
from tests.unit.helpers import account, usage


def r1(main, **kw):
    return usage(main, "tokens", model="Deepseek-r1-0528", input_tokens=10_000, **kw)


def test_a_top_up_that_leaves_arrears_writes_the_new_balance_after_the_charge_in_sequence():
    a = Account()
    a.send(account("z", "account_opened", profile="tokenhub", post_paid=True, amount="0.01"))
    charged = a.send(r1("z"))  # 0.01 - 0.04 = -0.03: arrears
    assert charged.deduction.to_record()["balance_after"] == "-0.03" and charged.balance is None
    alerts = [al["sequence"] for al in charged.alerts]
    # the deduction is numbered first, then its alerts, then its status change
    assert charged.deduction.to_record()["sequence"] < min(alerts) < charged.status["sequence"]
    # a top-up dated before the charge, arriving after it: -0.03 + 0.01 = -0.02, still in arrears
    out = a.send(account("z", "top_up", amount="0.01", t="2026-05-01T09:00:00+08:00"))
    assert out.status is None and out.alerts == []  # no status change
    assert out.balance == {
        "main_account_id": "z",
        "currency": "CNY",
        "cash_balance": "-0.02",
        "as_of": out.balance["as_of"],
        "source_event_id": out.balance["source_event_id"],
        "sequence": charged.status["sequence"] + 1,
    }
    assert a.cash == D("-0.02")
    # -0.02 + 0.05 = 0.03: arrears cleared; the balance first, then the alert, then the status
    cleared = a.send(account("z", "top_up", amount="0.05", t="2026-05-01T12:00:00+08:00"))
    assert cleared.balance["cash_balance"] == "0.03"
    assert [al["kind"] for al in cleared.alerts] == ["arrears_cleared"]
    assert cleared.balance["sequence"] < cleared.alerts[0]["sequence"] < cleared.status["sequence"]


def test_charges_and_events_that_move_no_cash_write_no_balance_record():
    a = Account()
    opened = a.send(account("p", "account_opened", profile="tokenhub", amount="1"))
    assert opened.balance is None
    first = a.send(r1("p"))
    second = a.send(r1("p"))
    assert first.balance is None and second.balance is None
    assert (
        first.deduction.to_record()["balance_after"],
        second.deduction.to_record()["balance_after"],
    ) == ("0.96", "0.92")
    assert (
        opened.status["sequence"]
        < first.deduction.to_record()["sequence"]
        < second.deduction.to_record()["sequence"]
    )
    voucher = a.send(
        account("p", "voucher_granted", amount="5", expires_at="2026-06-01T00:00:00+08:00")
    )
    assert voucher.balance is None and voucher.status is None
    topped = a.send(account("p", "top_up", amount="2"))
    assert topped.balance["cash_balance"] == "2.92"
    assert topped.balance["sequence"] > second.deduction.to_record()["sequence"]
