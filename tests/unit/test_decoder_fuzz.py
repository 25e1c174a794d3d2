"""Fuzzing the input decoders: whatever bytes or objects arrive, the answer is a typed event or a
specific rejection, never an unexpected exception (which would stop a worker)."""

import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.engine import BillingEngine
from streams.ingest.codec import registry
from streams.ingest.events import Rejected, parse_json_event
from streams.ingest.messages import decode_message
from streams.rating.profiles import Profiles

REG = registry()
ENGINE = BillingEngine(Profiles())
VALID = REG.encode(
    "usage_event",
    {
        "event_id": "e1",
        "trace_id": "t",
        "account_id": "a",
        "main_account_id": "a",
        "event_time": 1777600000000,
        "item": "tokens",
        "model": "kimi-k2.5",
        "input_tokens": 10,
        "output_tokens": 5,
    },
)
# Cheap examples: at least 400 whatever the profile, more under HYPOTHESIS_PROFILE=thorough.
_PROFILE = settings.default
assert _PROFILE is not None  # conftest loaded one
FUZZ = settings(
    max_examples=max(400, _PROFILE.max_examples),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def check(decoded):
    assert decoded, "every message yields at least one result"
    for d in decoded:
        assert (d.event is None) != (d.rejected is None)
        if d.rejected is not None:
            assert d.rejected.code and d.rejected.message
        else:
            outcome = ENGINE.apply(None, d.event)  # unknown account, or opened: never an exception
            assert outcome.rejected is None or outcome.rejected.code != "internal_error"


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes(data):
    check(decode_message(REG, b"a", data))


@FUZZ
@given(st.data())
def test_mutated_valid_avro(data):
    raw = bytearray(VALID)
    for _ in range(data.draw(st.integers(1, 6))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(1, len(raw)))
    check(decode_message(REG, b"a", bytes(raw[:cut])))


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**20), 10**20)
    | st.floats(allow_nan=True)
    | st.text(string.printable, max_size=40),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3)
    ),
    max_leaves=8,
)
FIELDS = [
    "kind",
    "event_id",
    "trace_id",
    "account_id",
    "main_account_id",
    "event_time",
    "item",
    "model",
    "variant",
    "status",
    "mode",
    "input_tokens",
    "cache_hit_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
    "quantity",
    "hours",
    "type",
    "profile",
    "amount",
    "expires_at",
    "pack_kind",
    "limit_tokens",
    "post_paid",
]


@FUZZ
@given(
    st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=12),
    st.sampled_from(["usage", "account"]),
)
def test_arbitrary_json_objects(obj, kind):
    obj = {**obj, "kind": obj.get("kind", kind)}
    try:
        event = parse_json_event(obj)
    except Rejected as exc:
        assert exc.code and exc.message
        return
    outcome = ENGINE.apply(None, event)
    assert outcome.rejected is None or outcome.rejected.code != "internal_error"
