"""The core computes in MONEY_CONTEXT and hands the caller's decimal context back untouched."""

from __future__ import annotations

import decimal
import threading

from streams.deduction.record import MONEY_CONTEXT
from streams.engine import BillingEngine, in_money_context
from streams.ingest.events import parse_json_event
from streams.rating.profiles import Profiles
from tests.unit.helpers import account, usage


def test_the_core_runs_in_the_money_context_and_restores_the_callers():
    seen = []

    @in_money_context
    def inner():
        seen.append(decimal.getcontext().prec)
        return outer_again()

    @in_money_context
    def outer_again():  # nested: already in the money context
        seen.append(decimal.getcontext().prec)
        return decimal.Decimal(1) / decimal.Decimal(3)

    with decimal.localcontext() as caller:
        caller.prec = 5
        third = inner()
        assert decimal.getcontext() is caller and caller.prec == 5
    assert seen == [MONEY_CONTEXT.prec, MONEY_CONTEXT.prec]
    assert len(third.as_tuple().digits) == MONEY_CONTEXT.prec  # not rounded to the caller's 5


def test_the_context_is_restored_when_the_core_raises_and_kept_per_thread():
    @in_money_context
    def fails():
        raise RuntimeError("bug")

    before = decimal.getcontext()
    try:
        fails()
    except RuntimeError:
        pass
    assert decimal.getcontext() is before
    contexts = []

    @in_money_context
    def which():
        contexts.append(decimal.getcontext())

    threads = [threading.Thread(target=which) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    which()
    assert len({id(c) for c in contexts}) == 3  # one per thread


def test_an_engine_step_leaves_the_callers_context_as_it_was():
    engine = BillingEngine(Profiles())
    with decimal.localcontext() as caller:
        caller.prec = 7
        opened = account("m", "account_opened", profile="tokenhub", amount="1")
        (out,), _ = engine.step(None, parse_json_event(opened), clock_ms=0)
        charge = usage("m", model="Deepseek-r1-0528", input_tokens=1000)
        outcomes, _ = engine.step(out.state, parse_json_event(charge), clock_ms=0)
        assert decimal.getcontext() is caller and caller.prec == 7
    assert outcomes[-1].deduction.to_record()["balance_after"] == "0.996"  # 1 - 1,000 x 4 CNY / 1M
