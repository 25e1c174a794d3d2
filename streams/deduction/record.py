"""Deduction records: the one output of every rated usage event, with a deterministic id."""

from __future__ import annotations

import uuid
from decimal import ROUND_HALF_EVEN, Context, Decimal, DivisionByZero, InvalidOperation, Overflow
from typing import Any

import msgspec

from streams.ids import derived_id

DEDUCTION_NAMESPACE = uuid.UUID("2b0e8c52-95b9-4a55-8d6e-51f0d8b7c3a4")
DEAD_LETTER_NAMESPACE = uuid.UUID("9d3c0b7e-3f53-4c38-b2b5-0e7f58f0f1d2")
PRESENTATION = Decimal("0.000001")
AMOUNT_SCALE = Decimal("1E-12")  # the scale of every Decimal128(12) column in ClickHouse
# Decimal arithmetic of the core runs in this context: with the bounded inputs (at most 10^9 and
# 12 decimals per quantity, 744 hours, prices of a few decimals) no product needs more than 40
# significant digits, so nothing is rounded implicitly; the one rounding is ``quantize_amount``.
MONEY_CONTEXT = Context(
    prec=60, rounding=ROUND_HALF_EVEN, traps=[InvalidOperation, DivisionByZero, Overflow]
)


def quantize_amount(value: Decimal) -> Decimal:
    """The one quantization of the core: a rating line's units and amount, half-even to the
    12 decimals ClickHouse stores, when the line is rated. Everything after (splits, sums,
    balances) adds and subtracts values of at most 12 decimals, so it stays exact; what a
    deduction says equals what ClickHouse holds, digit for digit."""
    return value.quantize(AMOUNT_SCALE, rounding=ROUND_HALF_EVEN, context=MONEY_CONTEXT)


def deduction_id(main_account_id: str, event_id: str) -> str:
    return derived_id(DEDUCTION_NAMESPACE, main_account_id, event_id)


def dead_letter_id(
    reason_code: str, event_id: str | None, fallback: str, main_account_id: str | None = None
) -> str:
    """Same input, same reason -> same id, so a redelivered bad message is one dead letter; the
    main account is a part, so two tenants' letters for one event id stay two rows."""
    if event_id:
        return derived_id(DEAD_LETTER_NAMESPACE, reason_code, main_account_id, "event", event_id)
    return derived_id(DEAD_LETTER_NAMESPACE, reason_code, main_account_id, "position", fallback)


def money(value: Decimal) -> str:
    """Canonical exact decimal string: no exponent, no trailing zeros (0.698, 68, 0.00002).
    A function of the value alone (1.50, 1.5 and 15E-1 print alike), so equal Decimals may share
    a cache entry: prices, zeros and round sums repeat on almost every event."""
    text = _MONEY_CACHE.get(value)
    if text is None:
        text = _money(value)
        if len(_MONEY_CACHE) >= _MONEY_CACHE_SIZE:
            _MONEY_CACHE.clear()  # bounded; refilled by the values that keep recurring
        _MONEY_CACHE[value] = text
    return text


_MONEY_CACHE: dict[Decimal, str] = {}
_MONEY_CACHE_SIZE = 8192


def _money(value: Decimal) -> str:
    if value == 0:
        return "0"
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def present(value: Decimal) -> Decimal:
    """Bills round half-even to 6 decimals, only when presented."""
    return value.quantize(PRESENTATION, rounding=ROUND_HALF_EVEN)


class Split(msgspec.Struct, frozen=True):
    """One bucket's share of a charge."""

    bucket_kind: str  # free, trial, pack, voucher, cash
    bucket_id: str
    amount: Decimal
    units: Decimal
    unit: str

    def to_record(self) -> dict[str, Any]:
        return {
            "bucket_kind": self.bucket_kind,
            "bucket_id": self.bucket_id,
            "amount": money(self.amount),
            "units": money(self.units),
            "unit": self.unit,
        }


class DeductionLine(msgspec.Struct, frozen=True):
    """A rating line as a deduction carries it."""

    component: str
    units: Decimal
    unit_price: Decimal
    amount: Decimal

    def to_record(self) -> dict[str, str]:
        return {
            "component": self.component,
            "units": money(self.units),
            "unit_price": money(self.unit_price),
            "amount": money(self.amount),
        }


class Deduction(msgspec.Struct, kw_only=True):
    """The one output of a rated usage event. Amounts are exact Decimals until ``to_record``
    writes the wire form (schemas/deduction.avsc: money as canonical decimal strings); the core
    reads them as numbers, so nothing is formatted and parsed back on the way (invariants,
    settlement sums, metrics)."""

    deduction_id: str
    event_id: str
    trace_id: str
    account_id: str
    main_account_id: str
    event_time: int
    profile: str
    currency: str
    price_version: str
    item: str
    model: str | None
    variant: str | None
    quantities: dict[str, str]
    lines: tuple[DeductionLine, ...]
    rated_amount: Decimal
    splits: tuple[Split, ...]
    unbilled_amount: Decimal
    unbilled_reason: str | None
    billed_elsewhere: bool
    flags: list[str]
    balance_after: Decimal
    settlement_period: str  # "hour" or "day"
    sequence: int = 0  # set by number_records, in processing order
    settlement_id: str | None = None  # the settlement line the deduction is summed into

    def to_record(self) -> dict[str, Any]:
        """The wire form, keys in the order every earlier version wrote them."""
        return {
            "deduction_id": self.deduction_id,
            "event_id": self.event_id,
            "trace_id": self.trace_id,
            "account_id": self.account_id,
            "main_account_id": self.main_account_id,
            "event_time": self.event_time,
            "profile": self.profile,
            "currency": self.currency,
            "price_version": self.price_version,
            "item": self.item,
            "model": self.model,
            "variant": self.variant,
            "quantities": self.quantities,
            "lines": [ln.to_record() for ln in self.lines],
            "rated_amount": money(self.rated_amount),
            "splits": [sp.to_record() for sp in self.splits],
            "unbilled_amount": money(self.unbilled_amount),
            "unbilled_reason": self.unbilled_reason,
            "billed_elsewhere": self.billed_elsewhere,
            "flags": self.flags,
            "balance_after": money(self.balance_after),
            "settlement_period": self.settlement_period,
            "kind": "usage",
            "adjusts_deduction_id": None,
            "rerate_id": None,
            "sequence": self.sequence,
            "settlement_id": self.settlement_id,
        }


def settlement_period(item: str) -> str:
    """Credit-based video and 3D generation settle daily, everything else hourly (rules §5)."""
    return "day" if item in ("video", "3d") else "hour"
