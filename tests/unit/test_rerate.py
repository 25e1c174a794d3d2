"""Re-rating a period under another price version: the diff against a hand computation, knock-on
effects on later events' buckets, and idempotent adjustments."""

import shutil
from decimal import Decimal as D

import orjson
import pytest

from streams.ingest.events import parse_json_event, to_millis
from streams.ingest.messages import Decoded
from streams.rating.profiles import PROFILES_DIR, ProfileError, Profiles
from streams.rerate.diff import Rerating, adjustments, rerun, settlement_lines
from tests.unit.helpers import account, usage

CUT = """
  - version: "2026-05-cut"
    effective_from: "2027-01-01T00:00:00+08:00"
    rows:
      - {item: tokens, model: claude-sonnet-4.5, per_tokens: 1000000, input: 1.5, output: 7.5,
         cache_hit: 0.15, cache_write: 1.875, example: true}
"""


@pytest.fixture
def profiles(tmp_path) -> Profiles:
    root = tmp_path / "profiles"
    shutil.copytree(PROFILES_DIR, root)
    book = root / "jiekou" / "price_book.yaml"
    book.write_text(book.read_text().rstrip("\n") + "\n" + CUT.lstrip("\n"))
    return Profiles(root)


def stream():
    main = "jk-ann"
    return [
        account(
            main,
            "account_opened",
            profile="jiekou",
            currency="USD",
            post_paid=False,
            amount="10",
            t="2026-04-30T08:00:00+08:00",
        ),
        account(
            main,
            "voucher_granted",
            voucher_id="v1",
            amount="0.02",
            expires_at="2026-12-31T00:00:00+08:00",
        ),
        usage(
            main,
            model="claude-sonnet-4.5",
            t="2026-05-01T10:00:00+08:00",
            input_tokens=1000,
            output_tokens=1000,
            event_id="e1",
        ),
        usage(
            main,
            model="claude-sonnet-4.5",
            t="2026-05-01T11:00:00+08:00",
            input_tokens=1000,
            output_tokens=1000,
            event_id="e2",
        ),
        usage(
            main,
            model="claude-sonnet-4.5",
            t="2026-05-02T10:00:00+08:00",
            input_tokens=1000,
            output_tokens=1000,
            event_id="e3",
        ),
    ]


def decoded(lines):
    out = []
    for raw in lines:
        event = parse_json_event(raw)
        out.append((event, Decoded(event, None, orjson.dumps(raw))))
    return out


WINDOW = Rerating(
    "jiekou",
    "2026-05-cut",
    to_millis("2026-05-01T00:00:00+08:00", "from"),
    to_millis("2026-05-02T00:00:00+08:00", "to"),
)


def by_event(result):
    return {d.old["event_id"]: d for d in result.diffs}


def test_retroactive_price_cut_gives_the_hand_computed_diff(profiles):
    result = rerun(decoded(stream()), profiles, WINDOW, partitions=4, allowed_lateness_ms=300_000)
    diffs = by_event(result)
    # old: 1000 input x 3 + 1000 output x 15 per 1M = 0.018 USD per event; new: 1.5 and 7.5 ->
    # 0.009. The 0.02 voucher pays first: old e1 0.018 voucher; e2 0.002 voucher + 0.016 cash; e3
    # 0.018 cash. New: e1 0.009 voucher, e2 0.009 voucher (0.002 left), e3 (after the window, old
    # price) 0.002 voucher + 0.016 cash.
    assert set(diffs) == {"e1", "e2", "e3"}
    assert diffs["e1"].delta == {
        "rated": D("-0.009"),
        "unbilled": 0,
        "free": 0,
        "trial": 0,
        "pack": 0,
        "voucher": D("-0.009"),
        "cash": 0,
    }
    assert diffs["e2"].delta == {
        "rated": D("-0.009"),
        "unbilled": 0,
        "free": 0,
        "trial": 0,
        "pack": 0,
        "voucher": D("0.007"),
        "cash": D("-0.016"),
    }
    assert diffs["e3"].knock_on and not diffs["e1"].knock_on
    assert diffs["e3"].delta == {
        "rated": 0,
        "unbilled": 0,
        "free": 0,
        "trial": 0,
        "pack": 0,
        "voucher": D("0.002"),
        "cash": D("-0.002"),
    }
    assert (
        diffs["e1"].new["price_version"] == "jiekou@2026-05-cut"
        and diffs["e3"].new["price_version"] == "jiekou@2026-02-26-example"
    )
    [row] = result.summary()
    assert (row["main_account_id"], row["model"], row["events"]) == (
        "jk-ann",
        "claude-sonnet-4.5",
        3,
    )
    assert (row["old_amount"], row["new_amount"], row["delta"]) == (
        D("0.054"),
        D("0.036"),
        D("-0.018"),
    )
    assert row["old_split"]["cash"] == D("0.034") and row["new_split"]["cash"] == D("0.016")
    assert row["old_split"]["voucher"] == row["new_split"]["voucher"] == D("0.02")
    assert row["quantities"] == {"input": 3000, "output": 3000}
    assert result.total_delta == D("-0.018")


def test_adjustments_book_the_delta_once(profiles):
    events = decoded(stream())
    first = rerun(events, profiles, WINDOW, partitions=4, allowed_lateness_ms=300_000)
    booked = adjustments(first)
    assert len(booked) == 3
    for adj in booked:
        assert D(adj["rated_amount"]) == sum((D(s["amount"]) for s in adj["splits"]), D(0)) + D(
            adj["unbilled_amount"]
        )
        assert adj["kind"] == "rerate_adjustment" and adj["rerate_id"] == WINDOW.id
    assert sum((D(a["rated_amount"]) for a in booked), D(0)) == D("-0.018")
    lines = settlement_lines(booked, {"jiekou": "Asia/Shanghai"}, closed_at=0)
    assert sum((D(x["gross_amount"]) for x in lines), D(0)) == D("-0.018")
    assert sum((D(x["cash_amount"]) for x in lines), D(0)) == D("-0.018")
    assert {x["line_type"] for x in lines} == {"rerate"} and all(
        x["event_count"] == 0 for x in lines
    )
    # the same re-rating again, with what was booked: nothing left to book
    second = rerun(
        events, profiles, WINDOW, partitions=4, allowed_lateness_ms=300_000, booked=booked
    )
    assert adjustments(second) == [] and second.total_delta == 0
    # ids are deterministic: a concurrent second apply would write the same ids (and be
    # deduplicated)
    assert [a["deduction_id"] for a in adjustments(first)] == [a["deduction_id"] for a in booked]


def test_accounts_filter_and_unknown_version(profiles):
    only_other = Rerating(
        WINDOW.profile, WINDOW.version, WINDOW.from_ms, WINDOW.to_ms, frozenset({"someone-else"})
    )
    assert (
        rerun(
            decoded(stream()), profiles, only_other, partitions=4, allowed_lateness_ms=300_000
        ).diffs
        == []
    )
    with pytest.raises(ProfileError, match="no price version 'nope'"):
        rerun(
            decoded(stream()),
            profiles,
            Rerating("jiekou", "nope", 0, 1),
            partitions=4,
            allowed_lateness_ms=300_000,
        )


def test_a_rerating_never_undoes_another_and_an_undo_gets_ids_of_its_own(profiles):
    events = decoded(stream())

    def run(rr, booked):
        return rerun(events, profiles, rr, partitions=4, allowed_lateness_ms=300_000, booked=booked)

    a = adjustments(run(WINDOW, []))
    # another re-rating whose period holds none of these events books nothing for them
    april = Rerating(
        "jiekou",
        "2026-05-cut",
        to_millis("2026-04-01T00:00:00+08:00", "from"),
        to_millis("2026-04-02T00:00:00+08:00", "to"),
    )
    assert adjustments(run(april, a)) == []
    # undo: the published version over the same period reverses exactly what was booked
    undo = Rerating("jiekou", "2026-02-26-example", WINDOW.from_ms, WINDOW.to_ms)
    reversal = adjustments(run(undo, a))
    booked_total = lambda adjs, k: sum((D(x[k]) for x in adjs), D(0))  # noqa: E731
    assert booked_total(reversal, "rated_amount") == -booked_total(a, "rated_amount") == D("0.018")
    # ... and applying the cut again books it again, under new ids (the ids name what they follow)
    again = adjustments(run(WINDOW, a + reversal))
    assert booked_total(again, "rated_amount") == D("-0.018")
    assert not {x["deduction_id"] for x in again} & {x["deduction_id"] for x in a + reversal}
    assert adjustments(run(WINDOW, a + reversal + again)) == []


def test_a_late_event_before_the_period_whose_buckets_changed_is_included(profiles):
    lines = stream()
    late = usage(
        "jk-ann",
        model="claude-sonnet-4.5",
        t="2026-04-30T23:59:00+08:00",
        input_tokens=1000,
        output_tokens=1000,
        event_id="e0",
    )
    result = rerun(
        decoded(lines[:4] + [late] + lines[4:]),
        profiles,
        WINDOW,
        partitions=4,
        allowed_lateness_ms=300_000,
    )
    diffs = by_event(result)
    # old: e1 0.018 voucher, e2 0.002 voucher + 0.016 cash, e0 (processed after e2) 0.018 cash.
    # new: e1 0.009, e2 0.009 from the voucher; e0 at the old price finds 0.002 voucher left.
    assert diffs["e0"].knock_on and diffs["e0"].delta["rated"] == 0
    assert (diffs["e0"].delta["voucher"], diffs["e0"].delta["cash"]) == (D("0.002"), D("-0.002"))
    booked = adjustments(result)
    voucher = sum(
        (D(s["amount"]) for a in booked for s in a["splits"] if s["bucket_kind"] == "voucher"), D(0)
    )
    assert voucher == 0  # the voucher pays the same 0.02 in total, only for other events
