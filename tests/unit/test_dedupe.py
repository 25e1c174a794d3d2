"""Exact deduplication over a horizon (streams/dedupe.py), its crash cases, the account-state
versions, and the run-time invariants on every charge."""

from decimal import Decimal
from pathlib import Path

import orjson

from streams.dedupe import (
    DAY_MS,
    Entry,
    MemoryEntries,
    RoundEntries,
    content_fingerprint,
    id_key,
    partition_scope,
)
from streams.engine import BillingEngine
from streams.ingest.events import parse_json_event
from streams.ledger.state import AccountState, legacy_fingerprint
from streams.rating.profiles import Profiles
from streams.worker.entry_sweep import EntrySweep
from tests.unit.helpers import account, usage

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "account_state.v1.json"


def ev(raw):
    return parse_json_event(raw)


def opened(engine, main="dd", store=None):
    out = engine.apply(
        None, ev(account(main, "account_opened", profile="jiekou", amount="10")), entries=store
    )
    assert out.rejected is None
    return out.state


def charge(main="dd", **kw):
    return ev(
        usage(
            main,
            "tokens",
            model="claude-sonnet-4.5",
            input_tokens=1000,
            t="2026-05-01T10:05:00Z",
            **kw,
        )
    )


def test_the_same_event_twice_charges_once():
    engine = BillingEngine(Profiles())
    state = opened(engine)
    e = charge()
    first = engine.apply(state, e)
    cash = state.cash
    second = engine.apply(state, e)
    assert first.deduction is not None and second.duplicate and second.deduction is None
    assert state.cash == cash and state.applied_events == 2


def test_crash_between_the_entry_and_the_state_write_applies_the_event_again():
    """The entry is durable, the state is not (the worker crashed between steps 2 and 3): the
    replay starts from the old state, finds an entry the state has not absorbed, and charges."""
    engine = BillingEngine(Profiles())
    store = MemoryEntries()
    state = opened(engine, store=store)
    saved = state.dumps()  # the last durable state
    e = charge()
    first = engine.apply(state, e, entries=store)
    replayed = engine.apply(AccountState.loads(saved), e, entries=store)
    assert not replayed.duplicate and replayed.deduction == first.deduction
    assert replayed.state.cash == state.cash


def test_crash_before_the_entry_write_applies_the_event_again():
    engine = BillingEngine(Profiles())
    state = opened(engine)
    saved = state.dumps()
    e = charge()
    first = engine.apply(state, e, entries=MemoryEntries())  # this store is lost with the crash
    again = engine.apply(AccountState.loads(saved), e, entries=MemoryEntries())
    assert again.deduction == first.deduction


def test_an_account_opened_whose_state_was_lost_is_opened_again():
    engine = BillingEngine(Profiles())
    store = MemoryEntries()
    e = ev(account("lost", "account_opened", profile="jiekou", amount="10"))
    assert engine.apply(None, e, entries=store).state is not None
    again = engine.apply(None, e, entries=store)  # entry durable, the state never written
    assert again.rejected is None and again.state is not None


def test_a_reused_id_with_other_content_is_a_conflict_and_a_true_retry_is_silent():
    engine = BillingEngine(Profiles())
    state = opened(engine)
    e = charge(event_id="x-1")
    engine.apply(state, e)
    retry = engine.apply(state, e)
    other = engine.apply(
        state, ev(account("dd", "top_up", event_id="x-1", amount="50", t="2026-05-01T10:06:00Z"))
    )
    assert retry.duplicate
    assert other.rejected is not None and other.rejected.code == "event_id_conflict"


def test_equal_decimals_are_equal_content():
    a = ev(usage("c", "kb_storage", quantity="1.50", hours="1"))
    b = ev(
        dict(
            usage("c", "kb_storage", quantity="1.5", hours="1.0"),
            event_id=a.event_id,
            trace_id=a.trace_id,
        )
    )
    assert content_fingerprint(a) == content_fingerprint(b)


def test_keys_are_unambiguous_across_accounts():
    assert id_key("p", "x|y") != id_key("p|x", "y")
    assert id_key("ab", "c") != id_key("a", "bc")


def test_memory_entries_forget_only_past_the_horizon():
    store = MemoryEntries(horizon_ms=10 * DAY_MS)
    store.put(b"a" * 16, Entry(0, 1, b"\0" * 8))
    store.put(b"b" * 16, Entry(5 * DAY_MS, 2, b"\0" * 8))
    assert store.prune(10 * DAY_MS) == 0 and len(store) == 2
    assert store.prune(10 * DAY_MS + 1) == 1 and store.get(b"a" * 16) is None
    assert store.get(b"b" * 16) is not None


def test_round_entries_read_their_own_writes_in_scope():
    durable = {partition_scope(1) + b"k" * 16: Entry(7, 1, b"c" * 8).encode()}
    r = RoundEntries(durable.get)
    r.scope = partition_scope(1)
    assert r.get(b"k" * 16) == Entry(7, 1, b"c" * 8)
    r.scope = partition_scope(2)
    assert r.get(b"k" * 16) is None
    r.anchor = "ev"
    r.put(b"k" * 16, Entry(9, 2, b"d" * 8))
    assert r.get(b"k" * 16) == Entry(9, 2, b"d" * 8)
    assert r.written == {partition_scope(2) + b"k" * 16: (Entry(9, 2, b"d" * 8), "ev")}


def test_sweep_forgets_expired_entries_of_anchored_partitions_a_bounded_number_at_a_time():
    table = {
        partition_scope(p) + bytes([i]) * 16: Entry(i * DAY_MS, 1, b"\0" * 8).encode()
        for p in (0, 1)
        for i in range(10)
    }
    now = [0.0]
    sweep = EntrySweep(5 * DAY_MS, budget=4, interval_s=60, clock=lambda: now[0])
    clocks = {0: 9 * DAY_MS, 1: 9 * DAY_MS}
    expired = []
    for _ in range(5):  # partition 1 has no anchor this round: its keys wait for the next walk
        batch = sweep.expired(table.keys, table.get, clocks, {0: "anchor0"})
        assert len(batch) <= 4
        expired += batch
    assert sorted(k[2] for k, _ in expired) == [0, 1, 2, 3]  # event times 0..3 days < 9 - 5
    assert {a for _, a in expired} == {"anchor0"}
    # walk done, not due
    assert sweep.expired(table.keys, table.get, clocks, {0: "a", 1: "b"}) == []
    now[0] = 61.0
    again = []
    for _ in range(5):
        again += sweep.expired(table.keys, table.get, clocks, {0: "a", 1: "b"})
    assert sorted((k[1], k[2]) for k, _ in again) == [(p, i) for p in (0, 1) for i in range(4)]


def test_version_1_state_is_read_and_its_id_window_still_catches_duplicates():
    record = orjson.loads(FIXTURE.read_bytes())
    assert "version" not in record and record["recent_events"]
    state = AccountState.from_dict(record)
    assert state.applied_events == 0 and state.legacy_event_ids == record["recent_events"]
    assert AccountState.loads(state.dumps()).to_dict() == state.to_dict()
    # an event applied before the upgrade (examples/demo.jsonl, which wrote this record) is still
    # a duplicate when it comes again after the upgrade, by its version-1 fingerprint
    demo = Path(__file__).resolve().parents[2] / "examples" / "demo.jsonl"
    raw = next(
        orjson.loads(line) for line in demo.read_bytes().splitlines() if b'"u-th-bob-010"' in line
    )
    assert legacy_fingerprint("u-th-bob-010") in record["recent_events"]
    engine = BillingEngine(Profiles())
    cash = state.cash
    assert engine.apply(state, ev(raw), clock_ms=state.settled_until).duplicate
    assert state.cash == cash
    # one horizon after the upgrade the window is dropped
    late = ev(
        usage(
            state.main_account_id,
            "tokens",
            event_id="after",
            model="kimi-k2.5",
            input_tokens=10,
            t="2026-05-01T10:05:00Z",
        )
    )
    engine.apply(state, late, clock_ms=state.legacy_until + 1)
    assert state.legacy_event_ids == []


def test_fields_unknown_or_missing_do_not_stop_a_deploy():
    record = orjson.loads(FIXTURE.read_bytes())
    record["added_by_a_newer_version"] = {"x": 1}
    del record["minutes"]
    state = AccountState.from_dict(record)
    assert state.minutes == {}


def test_an_invariant_violation_rolls_back_and_is_an_internal_error(monkeypatch):
    engine = BillingEngine(Profiles())
    state = opened(engine, "inv")
    before = state.to_dict()
    real = engine.ledger._deduction

    def broken(*args, **kwargs):
        d = real(*args, **kwargs)
        d.unbilled_amount = Decimal(1)  # splits + unbilled no longer equal the rated amount
        return d

    monkeypatch.setattr(engine.ledger, "_deduction", broken)
    out = engine.apply(state, charge("inv"))
    assert out.rejected is not None and out.rejected.code == "internal_error"
    assert "splits" in out.rejected.message
    assert out.state.to_dict() == before and out.deduction is None


def test_the_horizon_boundary_and_the_state_returned_with_each_verdict():
    engine = BillingEngine(Profiles(), horizon_ms=10 * DAY_MS)
    state = opened(engine, "hz")
    clock = state.opened_at + 20 * DAY_MS
    at = ev(
        usage(
            "hz",
            "tokens",
            model="claude-sonnet-4.5",
            input_tokens=10,
            t="2026-05-11T08:00:00+08:00",
        )
    )
    assert at.event_time == clock - 10 * DAY_MS
    older = ev(
        dict(
            usage("hz", "tokens", model="claude-sonnet-4.5", input_tokens=10),
            event_time=at.event_time - 1,
        )
    )
    too_old = engine.apply(state, older, clock_ms=clock)
    assert too_old.rejected.code == "event_too_old" and too_old.state is state
    ok = engine.apply(state, at, clock_ms=clock)
    assert ok.rejected is None and ok.deduction is not None  # exactly one horizon old: still in
    dup = engine.apply(state, at, clock_ms=clock)
    assert dup.duplicate and dup.state is state
    conflict = engine.apply(
        state,
        ev(
            dict(
                usage(
                    "hz",
                    "tokens",
                    model="claude-sonnet-4.5",
                    input_tokens=11,
                    t="2026-05-11T08:00:00+08:00",
                ),
                event_id=at.event_id,
            )
        ),
        clock_ms=clock,
    )
    assert conflict.rejected.code == "event_id_conflict" and conflict.state is state
