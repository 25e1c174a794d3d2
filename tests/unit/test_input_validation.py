"""Hostile and careless input (issues 14 and 18): one validation for the offline and the live path,
the id grammar, bounded decimals, currencies and platform-scoped account events, quantity bounds.

The parity test sends one corpus through ``rating simulate``'s path (JSON Lines) and through the
live path (``rating replay``'s encoder, then the worker's decoder and the same engine), and
compares the reason codes line by line.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.engine import BillingEngine
from streams.ingest.codec import registry
from streams.ingest.events import (
    MAX_DECIMAL_SCALE,
    Rejected,
    id_problem,
    parse_decimal,
    parse_json_event,
)
from streams.ingest.messages import decode_message
from streams.ingest.producer import batched_messages, encode_line
from streams.rating.profiles import Profiles
from streams.simulate import simulate

PROFILES = Profiles()
T = "2026-05-01T09:00:00+08:00"


def usage(event_id: str, main: str = "th", **fields: Any) -> dict[str, Any]:
    d = {
        "kind": "usage",
        "event_id": event_id,
        "account_id": main,
        "main_account_id": main,
        "event_time": T,
        "item": "tokens",
        "model": "kimi-k2.5",
        "input_tokens": 100,
        "output_tokens": 10,
    }
    d.update(fields)
    return {k: v for k, v in d.items() if v is not _DROP}


def account(event_id: str, type_: str, main: str = "th", **fields: Any) -> dict[str, Any]:
    d = {
        "kind": "account",
        "event_id": event_id,
        "account_id": main,
        "main_account_id": main,
        "event_time": "2026-05-01T08:00:00+08:00",
        "type": type_,
    }
    d.update(fields)
    return {k: v for k, v in d.items() if v is not _DROP}


_DROP = object()

OPENINGS = [
    account("open-th", "account_opened", profile="tokenhub", amount="100", post_paid=True),
    account("open-jk", "account_opened", main="jk", profile="jiekou", amount="10"),
    account("open-ark", "account_opened", main="ark", profile="ark", amount="10"),
    account("open-cz", "account_opened", main="cz", profile="coze-pro", amount="10"),
]

# (label, JSON object or raw line, expected reason code or None for accepted)
CORPUS: list[tuple[str, Any, str | None]] = [
    ("good usage", usage("ok-1"), None),
    ("float count", usage("b-1", input_tokens=1000.9), "invalid_field"),
    ("integral float count", usage("b-2", input_tokens=1000.0), "invalid_field"),
    ("boolean count", usage("b-3", input_tokens=True), "invalid_field"),
    ("count as a string", usage("b-4", input_tokens="1000"), "invalid_field"),
    (
        "count 10^30",
        orjson.dumps(usage("b-5", input_tokens=7)).replace(b":7", b":1" + b"0" * 30),
        "quantity_out_of_range",
    ),
    ("count above the field limit", usage("b-6", input_tokens=10**11), "quantity_out_of_range"),
    ("count above the profile bound", usage("b-7", input_tokens=10**10), "quantity_out_of_range"),
    ("negative count", usage("b-8", input_tokens=-5), "negative_quantity"),
    ("naive timestamp", usage("b-9", event_time="2026-05-01T09:00:00"), "invalid_field"),
    ("year 1970", usage("b-10", event_time="1970-01-01T00:00:00Z"), "invalid_field"),
    ("year 9999", usage("b-11", event_time="9999-12-31T23:59:59Z"), "invalid_field"),
    ("not a timestamp", usage("b-12", event_time="yesterday"), "invalid_field"),
    ("time as a boolean", usage("b-13", event_time=True), "invalid_field"),
    ("missing event_time", usage("b-14", event_time=_DROP), "invalid_field"),
    ("missing event_id", dict(usage("x"), event_id=_DROP), "missing_field"),
    ("null event_id", dict(usage("x"), event_id=None), "missing_field"),
    ("event_id as a number", dict(usage("x"), event_id=7), "invalid_field"),
    ("event_id with NUL", usage("n-3\x00"), "invalid_id"),
    ("event_id with a newline", usage("n-3\n"), "invalid_id"),
    ("event_id with a space", usage("n 3"), "invalid_id"),
    ("event_id with zero-width space", usage("n\u200b3"), "invalid_id"),
    ("event_id with a bidi override", usage("n\u202e3"), "invalid_id"),
    ("event_id with ESC", usage("n\x1b[31m3"), "invalid_id"),
    ("NFD account id", usage("b-15", main="the\u0301"), "invalid_id"),
    ("over-long id", usage("i" * 300), "invalid_id"),
    ("trace_id with a tab", usage("b-16", trace_id="t\t1"), "invalid_id"),
    ("null trace_id is absent", usage("ok-2", trace_id=None), None),
    (
        "quantity 1E-999999",
        usage(
            "b-17",
            item="image",
            model="HY-Image-V3.0",
            input_tokens=_DROP,
            output_tokens=_DROP,
            quantity="1E-999999",
        ),
        "decimal_precision_exceeded",
    ),
    (
        "quantity 1E+999999999",
        usage(
            "b-18",
            item="image",
            model="HY-Image-V3.0",
            input_tokens=_DROP,
            output_tokens=_DROP,
            quantity="1E+999999999",
        ),
        "quantity_out_of_range",
    ),
    (
        "quantity as a float",
        usage(
            "b-19",
            item="image",
            model="HY-Image-V3.0",
            input_tokens=_DROP,
            output_tokens=_DROP,
            quantity=1.5,
        ),
        "invalid_field",
    ),
    (
        "quantity as an integer",
        usage(
            "ok-3",
            item="image",
            model="HY-Image-V3.0",
            input_tokens=_DROP,
            output_tokens=_DROP,
            quantity=2,
        ),
        None,
    ),
    (
        "quantity not a decimal",
        usage(
            "b-20",
            item="image",
            model="HY-Image-V3.0",
            input_tokens=_DROP,
            output_tokens=_DROP,
            quantity="many",
        ),
        "invalid_field",
    ),
    ("unknown item", usage("b-21", item="teleport"), "unknown_item"),
    ("unknown model", usage("b-22", model="gpt-9"), "unknown_model"),
    ("status not a string", usage("b-23", status=1), "invalid_field"),
    ("unknown account", usage("b-24", main="nobody"), "unknown_account"),
    (
        "top-up in USD on CNY",
        account("b-25", "top_up", amount="20", currency="USD"),
        "currency_mismatch",
    ),
    (
        "voucher in JPY on CNY",
        account(
            "b-26",
            "voucher_granted",
            amount="1000",
            currency="JPY",
            expires_at="2026-06-01T00:00:00+08:00",
        ),
        "currency_mismatch",
    ),
    ("top-up in lower-case cny", account("ok-4", "top_up", amount="5", currency="cny"), None),
    (
        "not a currency code",
        account("b-27", "top_up", amount="5", currency="yuan"),
        "invalid_currency",
    ),
    (
        "top-up of 1E-999999",
        account("b-28", "top_up", amount="1E-999999"),
        "decimal_precision_exceeded",
    ),
    ("post_paid as 1", account("b-29", "post_paid_switched", post_paid=1), "invalid_field"),
    (
        "limit as a float",
        account("b-30", "inference_limit_set", main="ark", model="deepseek-v3", limit_tokens=1.5),
        "invalid_field",
    ),
    (
        "model_activated on tokenhub",
        account("b-31", "model_activated", model="kimi-k2.5"),
        "not_supported_by_profile",
    ),
    (
        "model_activated on jiekou",
        account("b-32", "model_activated", main="jk", model="claude-opus-4.5"),
        "not_supported_by_profile",
    ),
    (
        "model_activated on ark",
        account("ok-5", "model_activated", main="ark", model="deepseek-v3"),
        None,
    ),
    (
        "pack on tokenhub",
        account(
            "b-33",
            "pack_purchased",
            pack_kind="coze_unified",
            amount="10",
            expires_at="2026-06-01T00:00:00+08:00",
        ),
        "not_supported_by_profile",
    ),
    (
        "trial claim on jiekou",
        account("b-34", "trial_claimed", main="jk", model="claude-opus-4.5"),
        "not_supported_by_profile",
    ),
    (
        "sub-account id with a newline",
        account("b-35", "sub_account_linked", sub_account_id="x\ny"),
        "invalid_id",
    ),
    ("not a JSON object", [1, 2], "wrong_schema"),
    (
        "unknown kind",
        {"kind": "refund", "event_id": "b-36", "main_account_id": "th"},
        "wrong_schema",
    ),
]


def _line(obj: Any) -> bytes:
    if isinstance(obj, dict):
        obj = {k: v for k, v in obj.items() if v is not _DROP}
    return obj if isinstance(obj, bytes) else orjson.dumps(obj)


def _offline_reasons(lines: list[bytes]) -> list[str | None]:
    result = simulate(enumerate(lines, start=1), BillingEngine(PROFILES))
    by_line = {d["source_offset"]: d["reason_code"] for d in result.dead_letters}
    return [by_line.get(n) for n in range(1, len(lines) + 1)]


def _live_reasons(lines: list[bytes], batch: int = 1) -> list[str | None]:
    """The live path: the replay encoder, the worker's decoder, the same engine per account."""
    reg = registry()
    engine = BillingEngine(PROFILES)
    states: dict[str, Any] = {}
    reasons: list[str | None] = []
    if batch <= 1:
        messages = [(k, v) for k, v, _ in (encode_line(reg, raw) for raw in lines)]
    else:
        messages = [(k, v) for k, v, _ in batched_messages(reg, lines, batch)]
    for key, value in messages:
        for decoded in decode_message(reg, key, value):
            if decoded.rejected is not None:
                reasons.append(decoded.rejected.code)
                continue
            event = decoded.event
            assert event is not None  # not rejected: decoded
            outcome = engine.apply(states.get(event.main_account_id), event)
            if outcome.state is not None:
                states[event.main_account_id] = outcome.state
            reasons.append(outcome.rejected.code if outcome.rejected is not None else None)
    return reasons


def test_the_corpus_expectations_hold_offline():
    lines = [_line(o) for o in OPENINGS] + [_line(obj) for _, obj, _ in CORPUS]
    got = _offline_reasons(lines)[len(OPENINGS) :]
    for (label, _, want), have in zip(CORPUS, got, strict=True):
        assert have == want, f"{label}: simulate gives {have}, expected {want}"


def test_live_and_offline_give_the_same_reason_for_every_bad_input():
    lines = [_line(o) for o in OPENINGS] + [_line(obj) for _, obj, _ in CORPUS]
    offline = _offline_reasons(lines)
    live = _live_reasons(lines)
    assert len(live) == len(offline)
    for (label, _, _), off, on in zip(
        [("opening", None, None)] * len(OPENINGS) + CORPUS, offline, live, strict=True
    ):
        assert on == off, f"{label}: live gives {on}, simulate gives {off}"


def test_parity_holds_for_batched_replay_too():
    # one account only, so that batching keeps the file order
    lines = [_line(OPENINGS[0])] + [
        _line(obj)
        for _, obj, _ in CORPUS
        if isinstance(obj, dict) and obj.get("main_account_id") == "th"
    ]
    assert _live_reasons(lines, batch=7) == _offline_reasons(lines)


def test_replay_never_coerces_a_value_into_avro():
    reg = registry()
    for value in (1000.9, True, "1000"):
        key, payload, _ = encode_line(reg, orjson.dumps(usage("c-1", input_tokens=value)))
        (decoded,) = decode_message(reg, key, payload)
        assert decoded.event is None and decoded.rejected.code == "invalid_field"
    # a good line is Avro, not JSON
    key, payload, _ = encode_line(reg, orjson.dumps(usage("c-2")))
    assert payload[:1] == b"\x00"
    (decoded,) = decode_message(reg, key, payload)
    assert decoded.event is not None and decoded.event.input_tokens == 100


def test_a_valid_json_event_on_the_live_topic_is_still_not_avro():
    (decoded,) = decode_message(registry(), b"th", orjson.dumps(usage("j-1")))
    assert decoded.event is None and decoded.rejected.code == "not_avro"


# ---------------------------------------------------------------- 18.12 ids


@pytest.mark.parametrize(
    "value", ["alice", "alice-dev_01", "user@example.com", "租户-甲", "é", "a|b:c/d", "x" * 256]
)
def test_ids_of_the_grammar(value):
    assert id_problem(value) is None


@pytest.mark.parametrize(
    "value",
    [
        "",
        "a b",
        "a\x00",
        "a\n",
        "a\r",
        "\u200b",
        "a\u200d",
        "\ufeffa",
        "a\u2028b",
        "e\u0301",
        "a\u00a0b",
        "\ud800",
        "\ue000",
        "x" * 257,
    ],
)
def test_ids_outside_the_grammar(value):
    assert id_problem(value) is not None


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=st.characters(max_codepoint=0x7F), max_size=20))
def test_the_ascii_fast_path_agrees_with_the_per_character_walk(value):
    # the walk, by categories, with the fast path out of the way (a non-ASCII suffix forces it)
    slow = id_problem(value + "\u00e9") if value else "is empty"
    assert (id_problem(value) is None) == (slow is None)


def test_nfc_and_nfd_are_not_two_accounts():
    nfc, nfd = "Zo\u00eb", "Zoe\u0308"
    assert parse_json_event(usage("u", main=nfc)).main_account_id == nfc
    with pytest.raises(Rejected) as err:
        parse_json_event(usage("u", main=nfd))
    assert err.value.code == "invalid_id" and "NFC" in err.value.message


def test_n3_and_n3_nul_are_not_two_events():
    with pytest.raises(Rejected) as err:
        parse_json_event(usage("n-3\x00"))
    assert err.value.code == "invalid_id" and "U+0000" in err.value.message


# ---------------------------------------------------------------- 18.8 bounded decimals


@pytest.mark.parametrize(
    "text, code",
    [
        ("1E-999999", "decimal_precision_exceeded"),
        ("0.0000000000001", "decimal_precision_exceeded"),
        ("1E+999999999", "quantity_out_of_range"),
        ("1000000001", "quantity_out_of_range"),
        ("NaN", "invalid_field"),
        ("Infinity", "invalid_field"),
        ("1" * 65, "invalid_field"),
    ],
)
def test_decimals_outside_the_bounds(text, code):
    with pytest.raises(Rejected) as err:
        parse_decimal(text, "quantity")
    assert err.value.code == code


def test_decimals_inside_the_bounds_keep_their_value_at_a_bounded_scale():
    assert parse_decimal("12.50", "q") == Decimal("12.5")
    assert parse_decimal("0." + "0" * (MAX_DECIMAL_SCALE - 1) + "1", "q") == Decimal("1E-12")
    small = parse_decimal("0E-999999", "q")
    assert small == 0 and format(small, "f") == "0"
    trailing = parse_decimal("1." + "0" * 30, "q")
    assert trailing == 1 and len(format(trailing, "f")) < 20
    assert format(parse_decimal("1E+3", "q"), "f") == "1000"


def test_a_tiny_voucher_amount_never_becomes_a_huge_record():
    lines = [
        _line(OPENINGS[0]),
        _line(
            account(
                "v-1", "voucher_granted", amount="1E-999999", expires_at="2026-06-01T00:00:00+08:00"
            )
        ),
    ]
    result = simulate(enumerate(lines, start=1), BillingEngine(PROFILES))
    assert [d["reason_code"] for d in result.dead_letters] == ["decimal_precision_exceeded"]
    assert len(result.states["th"].dumps()) < 10_000


# ---------------------------------------------------------------- 14.8 quantity bounds


def test_ten_to_the_thirty_tokens_get_an_honest_message():
    with pytest.raises(Rejected) as err:
        parse_json_event(
            orjson.loads(
                b'{"kind":"usage","event_id":"e","account_id":"a","main_account_id":"a",'
                b'"event_time":"2026-05-01T09:00:00+08:00","item":"tokens","model":"m",'
                b'"input_tokens":1000000000000000000000000000000}'
            )
        )
    assert err.value.code == "quantity_out_of_range"
    assert "got float" not in err.value.message and "out of range" in err.value.message


def test_profile_bounds_reject_absurd_requests_and_say_which_bound():
    lines = [
        _line(OPENINGS[0]),
        _line(usage("q-1", input_tokens=10**10)),
        _line(OPENINGS[3]),
        _line(
            usage(
                "q-2",
                main="cz",
                item="agent_call",
                model=None,
                input_tokens=_DROP,
                output_tokens=_DROP,
                quantity="2000000",
            )
        ),
        _line(
            usage(
                "q-3",
                main="cz",
                item="kb_storage",
                model=None,
                input_tokens=_DROP,
                output_tokens=_DROP,
                quantity="20",
                hours="10000",
            )
        ),
    ]
    result = simulate(enumerate(lines, start=1), BillingEngine(PROFILES))
    letters = {d["event_id"]: d for d in result.dead_letters}
    assert {k: v["reason_code"] for k, v in letters.items()} == {
        "q-1": "quantity_out_of_range",
        "q-2": "quantity_out_of_range",
        "q-3": "quantity_out_of_range",
    }
    assert "4000000 tokens per request" in letters["q-1"]["reason"]
    assert not result.deductions


def test_profile_limits_are_validated(tmp_path):
    import shutil

    from streams.rating.profiles import ProfileError, load_profile

    folder = tmp_path / "tokenhub"
    shutil.copytree(PROFILES.root / "tokenhub", folder)
    policy = folder / "policy.yaml"
    policy.write_text(
        policy.read_text().replace("max_tokens_per_request: 4000000", "max_tokens_per_request: 0")
    )
    with pytest.raises(ProfileError, match=r"policy.yaml:\d+ limits.max_tokens_per_request"):
        load_profile(folder)


# ---------------------------------------------------------------- 18.1 and 18.2 account events


def _run(*objs: dict[str, Any]):
    return simulate(enumerate([_line(o) for o in objs], start=1), BillingEngine(PROFILES))


def test_model_activated_gives_no_credit_outside_ark():
    for opening, main, model in (
        (OPENINGS[0], "th", "kimi-k2.5"),
        (OPENINGS[1], "jk", "claude-opus-4.5"),
    ):
        opening = dict(opening, amount="0.01", post_paid=False)
        result = _run(
            opening,
            account("act", "model_activated", main=main, model=model),
            usage("big", main=main, model=model, input_tokens=3_000_000, output_tokens=100_000),
        )
        assert result.dead_letters[0]["reason_code"] == "not_supported_by_profile"
        assert result.states[main].cash >= 0


def test_account_events_follow_the_policy_lists():
    for name in PROFILES.names():
        events = PROFILES[name].policy.account_events
        assert "account_opened" in events and "top_up" in events
        assert ("model_activated" in events) == (name == "ark")


def test_currencies_on_account_events_must_be_the_accounts():
    result = _run(
        OPENINGS[0],
        account("t-1", "top_up", amount="20", currency="USD"),
        account(
            "t-2",
            "voucher_granted",
            amount="1000",
            currency="jpy",
            expires_at="2026-06-01T00:00:00+08:00",
        ),
        account("t-3", "top_up", amount="5", currency=" cny "),
        account("t-4", "top_up", amount="1"),
    )
    assert [d["reason_code"] for d in result.dead_letters] == [
        "currency_mismatch",
        "currency_mismatch",
    ]
    assert result.states["th"].cash == Decimal("106")
    assert "JPY" in result.dead_letters[1]["reason"]


def test_opening_currency_is_normalized():
    result = _run(
        dict(OPENINGS[1], currency="usd"),
        dict(OPENINGS[0], main_account_id="th2", account_id="th2", event_id="o2", currency="USD"),
    )
    assert "jk" in result.states and "th2" not in result.states
    assert result.dead_letters[0]["reason_code"] == "currency_mismatch"


def test_a_prepaid_account_never_goes_below_zero(monkeypatch):
    from streams.ledger import ledger as ledger_module
    from streams.ledger.ledger import Effects, Ledger

    ledger = Ledger(PROFILES)
    big = usage(
        "p-1", main="jk", model="claude-opus-4.5", input_tokens=3_000_000, output_tokens=100_000
    )
    state = ledger.open_account(parse_json_event(dict(OPENINGS[1], amount="0.5")))
    ledger.apply_usage(state, parse_json_event(big), Effects())
    assert state.cash == 0
    # a ledger bug that takes more cash than there is trips the invariant instead of charging
    state = ledger.open_account(parse_json_event(dict(OPENINGS[1], amount="0.5")))
    monkeypatch.setattr(ledger_module, "min", lambda a, b: a, raising=False)
    with pytest.raises(AssertionError, match="below zero"):
        ledger.apply_usage(state, parse_json_event(big), Effects())


@pytest.mark.parametrize("millis", [0, 253402300800000, 10**15, -(10**15), 2**62])
def test_avro_timestamps_outside_the_datetime_range_get_the_validation_reason(millis):
    # an upstream Avro producer (no JSON on the way): year 1970, 10000, 33658, negative
    reg = registry()
    record = {
        "event_id": "t",
        "account_id": "th",
        "main_account_id": "th",
        "event_time": millis,
        "item": "tokens",
        "model": "kimi-k2.5",
        "input_tokens": 5,
    }
    (decoded,) = decode_message(reg, b"th", reg.encode("usage_event", record))
    assert decoded.rejected.code == "invalid_field" and "event_time" in decoded.rejected.message
    batch = reg.encode("event_batch", {"events": [("billing.v1.UsageEvent", record)]})
    (decoded,) = decode_message(reg, b"th", batch)
    assert decoded.rejected.code == "invalid_field"


def test_a_huge_json_quantity_is_out_of_range_not_a_float():
    raw = orjson.dumps(
        usage(
            "q",
            item="image",
            model="HY-Image-V3.0",
            input_tokens=_DROP,
            output_tokens=_DROP,
            quantity=7,
        )
    )
    obj = orjson.loads(raw.replace(b'"quantity":7', b'"quantity":' + b"1" + b"0" * 30))
    obj = {k: v for k, v in obj.items()}
    with pytest.raises(Rejected) as err:
        parse_json_event(obj)
    assert err.value.code == "quantity_out_of_range" and "float" not in err.value.message
    with pytest.raises(Rejected) as err:
        parse_json_event(dict(obj, quantity=1.5))
    assert err.value.code == "invalid_field" and "as strings" in err.value.message
