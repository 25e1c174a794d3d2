"""The stored form of an account state (streams/ledger/state_codec.py): compressed with a frozen
dictionary, JSON records of earlier versions still read, and nothing that inflates past the limit
or is cut short taken for a state."""

from __future__ import annotations

import hashlib
import zlib

import pytest

from streams.engine import BillingEngine
from streams.ledger.state import AccountState
from streams.ledger.state_codec import (
    DEFLATE_V1,
    ZDICT_V1,
    StateEncodingError,
    pack_state,
    unpack_state,
)
from streams.limits import MAX_STATE_BYTES
from streams.local.synthetic import generate
from streams.rating.profiles import Profiles
from streams.simulate import simulate


@pytest.fixture(scope="module")
def states() -> list[AccountState]:
    lines = generate(seed=17, accounts=60, usage_events=900, prefix="codec")
    return list(simulate(list(enumerate(lines, 1)), BillingEngine(Profiles())).states.values())


def test_the_dictionary_is_frozen():
    """Changing it makes every stored state unreadable: a new one needs a new marker."""
    assert hashlib.sha256(ZDICT_V1).hexdigest() == (
        "f0a2aff8593b18cae5d5661a00927941230726e321cb6b8c96a6cb9752a91870"
    )


def test_every_state_round_trips_and_is_several_times_smaller(states):
    for state in states:
        stored = state.stored()
        assert stored[0] == DEFLATE_V1
        again = AccountState.loads(stored)
        assert again.dumps() == state.dumps()
    json_bytes = sum(len(s.dumps()) for s in states)
    stored_bytes = sum(len(s.stored()) for s in states)
    assert stored_bytes * 4 < json_bytes, (stored_bytes, json_bytes)


def test_json_records_of_earlier_versions_are_read_as_they_are(states):
    json_record = states[0].dumps()
    assert unpack_state(json_record, MAX_STATE_BYTES) is json_record
    assert AccountState.loads(json_record).dumps() == json_record


def test_a_record_that_inflates_past_the_limit_is_refused_before_it_is_held():
    bomb = pack_state(b"{" + b" " * 100_000 + b"}")
    assert len(bomb) < 1_000
    with pytest.raises(StateEncodingError, match="inflates past 1000 bytes"):
        unpack_state(bomb, 1_000)


@pytest.mark.parametrize(
    ("stored", "reason"),
    [
        (b"", "empty"),
        (b"\x02abc", "unknown account state encoding 0x02"),
        (b"\x01\xff\xff\xff", "corrupt"),
    ],
)
def test_what_is_not_a_stored_state_says_why(stored, reason):
    with pytest.raises(StateEncodingError, match=reason):
        unpack_state(stored, MAX_STATE_BYTES)


def test_a_truncated_or_padded_record_is_refused(states):
    stored = states[0].stored()
    with pytest.raises(StateEncodingError, match="truncated or padded"):
        unpack_state(stored[:-3], MAX_STATE_BYTES)
    with pytest.raises(StateEncodingError, match="truncated or padded"):
        unpack_state(stored + b"extra", MAX_STATE_BYTES)


def test_the_format_is_raw_deflate_with_the_dictionary():
    """Readable without this code: a marker byte, then raw deflate primed with ZDICT_V1."""
    stored = pack_state(b'{"a":1}')
    reader = zlib.decompressobj(-15, zdict=ZDICT_V1)
    assert reader.decompress(stored[1:]) == b'{"a":1}'
