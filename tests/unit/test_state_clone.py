"""The engine's roll-back copy of an account (``AccountState.clone``, taken once per event instead
of a serialized snapshot): equal to the original, sharing no mutable object with it, and what a
failing event leaves behind."""

from __future__ import annotations

import dataclasses
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import orjson

from streams.engine import BillingEngine
from streams.ingest.events import parse_json_event
from streams.ledger.state import AccountState
from streams.local.synthetic import generate
from streams.rating.profiles import Profiles
from streams.simulate import simulate
from tests.unit.helpers import account, usage

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "account_state.v1.json"
IMMUTABLE = (str, int, float, bool, bytes, Decimal, type(None), frozenset, tuple)


def mutable_ids(obj: Any, seen: set[int] | None = None) -> set[int]:
    """The ids of every mutable object reachable from ``obj`` (containers and dataclasses)."""
    seen = set() if seen is None else seen
    if isinstance(obj, IMMUTABLE) or id(obj) in seen:
        return seen
    seen.add(id(obj))
    if isinstance(obj, dict):
        for k, v in obj.items():
            mutable_ids(k, seen)
            mutable_ids(v, seen)
    elif isinstance(obj, (list, set)):
        for v in obj:
            mutable_ids(v, seen)
    elif isinstance(obj, msgspec.Struct):
        for name in obj.__struct_fields__:
            mutable_ids(getattr(obj, name), seen)
    elif dataclasses.is_dataclass(obj):
        for f in dataclasses.fields(obj):
            mutable_ids(getattr(obj, f.name), seen)
    else:
        for v in vars(obj).values():
            mutable_ids(v, seen)
    return seen


def busy_states() -> list[AccountState]:
    lines = list(generate(seed=3, accounts=40, usage_events=3000, prefix="cl"))
    result = simulate(list(enumerate(lines, 1)), BillingEngine(Profiles()))
    states = list(result.states.values())
    states.append(AccountState.from_dict(orjson.loads(FIXTURE.read_bytes())))  # version 1
    return states


def test_a_clone_equals_its_original_and_shares_no_mutable_object():
    states = busy_states()
    assert any(s.periods for s in states) and any(s.vouchers or s.packs for s in states)
    for state in states:
        copy = state.clone()
        assert copy.to_dict() == state.to_dict()
        assert type(copy) is AccountState
        assert not (mutable_ids(copy) & mutable_ids(state)), state.main_account_id


def fresh_dumps(state: AccountState) -> bytes:
    """The state's JSON from its fields, not from the stored form its periods keep."""
    for acc in state.periods.values():
        acc.stored = None
    return state.dumps()


def test_changing_a_clone_leaves_the_original_alone():
    for state in busy_states():
        before = fresh_dumps(state)
        copy = state.clone()
        copy.cash += 1
        for bucket in (*copy.vouchers, *copy.packs):
            bucket.remaining += 1
        for acc in copy.periods.values():
            acc.event_count += 1
            acc.quantities["x"] = Decimal(1)
            acc.price_versions.append("v-x")
        for acc in copy.minutes.values():
            acc["requests"] += 1
        copy.free_used["2099-01-01"] = Decimal(1)
        copy.sub_accounts.add("someone")
        assert fresh_dumps(state) == before


def test_a_bug_half_way_through_an_event_rolls_the_account_back(monkeypatch):
    """The ledger has already paid from the buckets when the deduction fails to build: the account
    the engine returns is the one before the event, advance included, and the event is an
    internal error, not a charge."""
    engine = BillingEngine(Profiles())
    opened = engine.apply(
        None, parse_json_event(account("rb", "account_opened", profile="jiekou", amount="10"))
    )
    state = opened.state
    assert state is not None
    before = state.to_dict()

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("injected")

    monkeypatch.setattr(engine.ledger, "_deduction", broken)
    event = parse_json_event(
        usage(
            "rb", "tokens", model="claude-sonnet-4.5", input_tokens=100_000, t="2026-05-03T10:00Z"
        )
    )
    clock_before = state.settled_until
    outcomes, clock = engine.step(state, event, clock_ms=clock_before)
    (outcome,) = outcomes
    assert outcome.rejected is not None and outcome.rejected.code == "internal_error"
    assert "injected" in outcome.rejected.message
    assert outcome.deduction is None and clock == clock_before
    assert outcome.state is not None and outcome.state.to_dict() == before
    # the object the engine worked on did change (paid, advanced): the roll-back is real
    assert state.to_dict() != before
