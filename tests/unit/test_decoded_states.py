"""The worker's cache of decoded account states (streams/worker/app.py DecodedStates) returns a
state only for the bytes it was decoded from, and stays bounded."""

import orjson

from streams.ledger.state import AccountState
from streams.worker.app import DecodedStates


def state(main: str) -> AccountState:
    return AccountState.loads(
        AccountState(
            main_account_id=main, profile="coze-pro", currency="CNY", opened_at=0, post_paid=False
        ).dumps()
    )


def test_the_cached_state_is_returned_only_for_the_bytes_it_came_from():
    cache, s = DecodedStates(), state("a")
    stored = s.dumps()
    cache.keep(b"a", stored, s)
    assert cache.load(b"a", bytes(stored)) is s
    other = state("b").dumps()
    fresh = cache.load(b"a", other)
    assert fresh is not s and fresh.main_account_id == "b"
    assert cache.load(b"a", None) is None
    assert cache.hits == 1


def test_the_cache_keeps_the_most_recently_written_accounts_only(monkeypatch):
    monkeypatch.setattr(DecodedStates, "MAX_ACCOUNTS", 3)
    cache = DecodedStates()
    for name in ("a", "b", "c", "a", "d"):
        s = state(name)
        cache.keep(name.encode(), s.dumps(), s)
    assert list(cache.states) == [b"c", b"a", b"d"]


def test_a_record_with_the_older_single_alerted_day_keeps_that_day_alerted():
    record = orjson.loads(state("a").dumps())
    record["free_exhausted_alerted"] = "2026-05-01"
    assert AccountState.from_dict(record).free_exhausted_days == ["2026-05-01"]
    assert "free_exhausted_alerted" not in AccountState.from_dict(record).to_dict()
