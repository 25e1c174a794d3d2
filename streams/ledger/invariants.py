"""What must hold after every charge, checked at run time (not stripped by ``python -O``).

A violation raises ``InvariantViolated`` inside the engine's apply, which rolls the account back
and turns the event into an ``internal_error`` dead letter (counted, alerted on): a bug costs
one event's charge in the dead-letter topic, never a wrong balance.
"""

from __future__ import annotations

from decimal import Decimal

from streams.deduction.record import Deduction, money
from streams.ledger.state import ZERO, AccountState


class InvariantViolated(AssertionError):
    pass


def _fail(state: AccountState, what: str) -> None:
    raise InvariantViolated(f"account {state.main_account_id!r}: {what}")


def check_charge(state: AccountState, deduction: Deduction, cash_before: Decimal) -> None:
    rated, unbilled = deduction.rated_amount, deduction.unbilled_amount
    paid = [s.amount for s in deduction.splits]
    if rated < 0 or unbilled < 0 or any(p < 0 for p in paid):
        _fail(state, f"negative amount in deduction {deduction.deduction_id}")
    if sum(paid, ZERO) + unbilled != rated:
        total = money(sum(paid, ZERO))
        _fail(state, f"splits {total} + unbilled {money(unbilled)} != rated {money(rated)}")
    check_buckets(state)
    # post-paid here: the account's setting, or a model activated on a token-post-paid platform
    # (Ark)
    post_paid = state.post_paid or deduction.model in state.activated_models
    if not post_paid and state.cash < 0 and state.cash < cash_before:
        _fail(state, f"pre-paid cash went from {cash_before} to {state.cash}")


def check_buckets(state: AccountState) -> None:
    for bucket in (*state.vouchers, *state.packs):
        if bucket.remaining < 0 or bucket.remaining > bucket.granted:
            _fail(state, f"bucket {bucket.id!r} holds {bucket.remaining} of {bucket.granted}")
    for trial in state.trials.values():
        if trial.remaining < 0 or trial.remaining > trial.granted:
            _fail(state, f"trial {trial.id!r} holds {trial.remaining} of {trial.granted}")
    for day, used in state.free_used.items():
        if used < 0:
            _fail(state, f"free points of {day} used {used}")
