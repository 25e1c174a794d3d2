"""The typed records of the core (issue 13): a deduction and an open settlement period hold exact
Decimals; strings appear only in their wire and stored forms, which are what earlier versions
wrote, key for key."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import orjson

from streams.deduction.record import Deduction, DeductionLine, Split
from streams.ingest.codec import registry
from streams.ledger.state import AccountState
from streams.settlement.periods import OpenPeriod
from tests.unit.engine_driver import Account
from tests.unit.helpers import account, usage

FIXTURE_V2 = Path(__file__).resolve().parents[1] / "fixtures" / "account_state.v2.json"
# The key order of a deduction record as every version before the typed record wrote it (a
# dict literal, then ``sequence`` from number_records and ``settlement_id`` from settle).
WIRE_KEYS = [
    "deduction_id",
    "event_id",
    "trace_id",
    "account_id",
    "main_account_id",
    "event_time",
    "profile",
    "currency",
    "price_version",
    "item",
    "model",
    "variant",
    "quantities",
    "lines",
    "rated_amount",
    "splits",
    "unbilled_amount",
    "unbilled_reason",
    "billed_elsewhere",
    "flags",
    "balance_after",
    "settlement_period",
    "kind",
    "adjusts_deduction_id",
    "rerate_id",
    "sequence",
    "settlement_id",
]


def charged() -> Deduction:
    a = Account()
    a.send(account("c", "account_opened", profile="coze-pro", amount="10"))
    a.send(usage("c", "agent_call", quantity="250"))  # the day's 500 free points
    d = a.send(usage("c", "agent_call", quantity="3", t="2026-05-01T10:30:00+08:00")).deduction
    assert d is not None
    return d


def test_a_deduction_holds_decimals_and_its_wire_form_holds_canonical_strings():
    d = charged()
    assert isinstance(d.rated_amount, Decimal) and isinstance(d.balance_after, Decimal)
    assert all(isinstance(s, Split) and isinstance(s.amount, Decimal) for s in d.splits)
    assert all(isinstance(ln, DeductionLine) for ln in d.lines)
    wire = d.to_record()
    assert list(wire) == WIRE_KEYS
    assert (wire["rated_amount"], wire["balance_after"]) == ("0.006", "9.994")
    assert wire["splits"] == [
        {"bucket_kind": "cash", "bucket_id": "cash", "amount": "0.006", "units": "0.006",
         "unit": "CNY"}
    ]  # fmt: skip
    assert wire["sequence"] == d.sequence > 0 and wire["settlement_id"] == d.settlement_id
    assert orjson.loads(orjson.dumps(wire)) == wire  # plain JSON: no Decimal left in it


def test_the_wire_form_encodes_with_the_deduction_schema_and_reads_back_equal():
    reg = registry()
    wire = charged().to_record()
    _, decoded = reg.decode(reg.encode("deduction", wire))
    when = decoded.pop("event_time")  # timestamp-millis: read back as a datetime
    assert int(when.timestamp() * 1000) == wire.pop("event_time")
    assert {k: decoded[k] for k in wire} == wire


def test_an_open_period_sums_exactly_and_stores_as_money_strings():
    d = charged()
    period = OpenPeriod(
        granularity="hour",
        period_start=0,
        period_end=3_600_000,
        item=d.item,
        model=d.model,
        variant=d.variant,
        profile=d.profile,
        currency=d.currency,
    )
    for _ in range(3):
        period.add(d)
    assert (period.gross, period.cash, period.event_count) == (
        Decimal("0.018"),
        Decimal("0.018"),
        3,
    )
    stored = period.to_dict()
    assert (stored["gross"], stored["cash"], stored["free"]) == ("0.018", "0.018", "0")
    assert OpenPeriod.from_dict(stored) == period
    assert OpenPeriod.from_dict(stored).to_dict() == stored
    assert period.to_dict() is stored  # kept until the next add
    period.add(d)
    assert period.to_dict()["gross"] == "0.024" and stored["gross"] == "0.018"
    period.name("line-1")
    assert period.to_dict()["settlement_id"] == "line-1"
    copy = period.copy()
    assert copy.stored is None and copy == period
    copy.add(d)
    copy.price_versions.append("v-x")
    assert period.event_count == 4 and "v-x" not in period.price_versions


def test_a_state_written_before_typed_periods_reads_and_writes_back_byte_for_byte():
    """``account_state.v2.json`` was written by the version before OpenPeriod (commit fbbf8ef):
    the stored format did not change, so a deploy reads it and writes the same record."""
    raw = orjson.loads(FIXTURE_V2.read_bytes())
    state = AccountState.from_dict(raw)
    assert state.periods and all(isinstance(p, OpenPeriod) for p in state.periods.values())
    assert state.to_dict() == raw
    assert state.dumps() == orjson.dumps(raw)


def test_a_version_1_period_drops_its_event_list_when_read():
    raw = orjson.loads(FIXTURE_V2.read_bytes())
    key, stored = next(iter(raw["periods"].items()))
    with_ids = {**stored, "event_ids": ["e1", "e2"]}
    assert OpenPeriod.from_dict(with_ids).to_dict() == stored
