"""Issue 17, first part: seed rules that were expressed loosely or not at all.

Prices (shipped profiles): coze-pro kb_storage 1.5 points per GB-hour above 10 GB per main account
and clock hour, 500 free points a day; Doubao-pro-32k 0.8 / 2 points per 1k tokens and its
fine-tuned EXAMPLE row 1.6 / 4; tokenhub HY-3D-3.0 15-60 credits a call, HY-3D-Express 15-25,
1 3D credit = 0.12 CNY; HY-Image-V3.0 0.2 CNY an image.
"""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.ingest.events import Rejected, parse_json_event
from streams.ingest.partitioner import partition_for
from streams.rating.rate import rate
from tests.unit.engine_driver import PROFILES, Account, D, splits
from tests.unit.helpers import account, usage


def codes(a: Account) -> list[str]:
    return [o.rejected.code for o in a.outcomes if o.rejected is not None]


def coze(cash="10", t="2026-05-01T08:00:00+08:00") -> Account:
    a = Account()
    a.send(account("c", "account_opened", profile="coze-pro", amount=cash, t=t))
    a.send(account("c", "sub_account_linked", sub_account_id="c-dev", t=t))
    return a


def use_up_free_points(a: Account, t="2026-05-01T09:00:00+08:00") -> None:
    a.send(usage("c", "agent_call", quantity="250", t=t))  # 500 points: the day's free points


# ---------------------------------------------------------------- 1. knowledge-base allowance


def test_main_and_sub_account_share_the_10_gb_of_one_hour():
    # seed 001: 10 GB free per MAIN account. 8 GB + 8 GB in the same hour: (16 - 10) x 1.5 = 9
    # points
    a = coze()
    use_up_free_points(a)
    d1 = a.send(
        usage("c", "kb_storage", quantity="8", hours="1", t="2026-05-01T10:05:00+08:00")
    ).deduction.to_record()
    d2 = a.send(
        usage(
            "c",
            "kb_storage",
            account_id="c-dev",
            quantity="8",
            hours="1",
            t="2026-05-01T10:40:00+08:00",
        )
    ).deduction.to_record()
    assert d1["rated_amount"] == "0"
    assert D(d2["rated_amount"]) == D("0.009")  # 9 points
    assert d2["quantities"]["free_gb"] == "2"


def test_each_clock_hour_has_its_own_allowance():
    a = coze()
    use_up_free_points(a)
    d1 = a.send(
        usage("c", "kb_storage", quantity="8", hours="1", t="2026-05-01T10:05:00+08:00")
    ).deduction.to_record()
    d2 = a.send(
        usage(
            "c",
            "kb_storage",
            account_id="c-dev",
            quantity="8",
            hours="1",
            t="2026-05-01T11:05:00+08:00",
        )
    ).deduction.to_record()
    assert d1["rated_amount"] == "0" and d2["rated_amount"] == "0"


def test_a_multi_hour_sample_takes_the_allowance_of_each_hour_it_covers():
    # A holds 8 GB for 2 h from 10:00; B 8 GB for 1 h from 11:00: hour 10 is free (8 GB), hour 11
    # holds 16 GB: 6 GB x 1.5 = 9 points, charged to the sample processed second (B)
    a = coze()
    use_up_free_points(a)
    d1 = a.send(
        usage("c", "kb_storage", quantity="8", hours="2", t="2026-05-01T10:00:00+08:00")
    ).deduction.to_record()
    d2 = a.send(
        usage(
            "c",
            "kb_storage",
            account_id="c-dev",
            quantity="8",
            hours="1",
            t="2026-05-01T11:10:00+08:00",
        )
    ).deduction.to_record()
    assert d1["rated_amount"] == "0" and D(d2["rated_amount"]) == D("0.009")


def test_allowance_is_consumed_in_processing_order_even_out_of_order():
    # the later-dated sample of the hour arrives first and takes the allowance first
    a = coze()
    use_up_free_points(a)
    late = a.send(
        usage("c", "kb_storage", quantity="12", hours="1", t="2026-05-01T10:50:00+08:00")
    ).deduction.to_record()
    early = a.send(
        usage(
            "c",
            "kb_storage",
            account_id="c-dev",
            quantity="4",
            hours="1",
            t="2026-05-01T10:10:00+08:00",
        )
    ).deduction.to_record()
    assert D(late["rated_amount"]) == D("0.003")  # (12 - 10) x 1.5 points
    assert D(early["rated_amount"]) == D("0.006")  # 4 GB, no allowance left: 6 points


def test_closed_hours_are_forgotten_and_get_no_second_allowance():
    a = coze()
    use_up_free_points(a)
    a.send(usage("c", "kb_storage", quantity="10", hours="1", t="2026-05-01T10:05:00+08:00"))
    assert a.state.kb_free_used  # the open hour is kept
    # stream time moves on
    a.send(usage("c", "agent_call", quantity="1", t="2026-05-01T13:00:00+08:00"))
    assert a.state.kb_free_used == {}  # bounded: only open hours are kept
    late = a.send(
        usage(
            "c",
            "kb_storage",
            account_id="c-dev",
            quantity="4",
            hours="1",
            t="2026-05-01T10:30:00+08:00",
        )
    ).deduction.to_record()
    assert D(late["rated_amount"]) == D("0.006")  # the closed hour's allowance is not granted again


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 20), min_size=1, max_size=6))
def test_one_hour_bills_the_total_above_10_gb_whatever_the_split(gbs):
    a = coze(cash="100")
    use_up_free_points(a)
    total = Decimal(0)
    for i, gb in enumerate(gbs):
        who = "c" if i % 2 == 0 else "c-dev"
        d = a.send(
            usage(
                "c",
                "kb_storage",
                account_id=who,
                quantity=str(gb),
                hours="1",
                t=f"2026-05-01T10:{10 + i:02d}:00+08:00",
            )
        ).deduction.to_record()
        total += D(d["rated_amount"])
    assert total == max(0, sum(gbs) - 10) * D("1.5") / 1000


def test_a_lone_sample_rates_as_before():
    e = parse_json_event(usage("x", "kb_storage", quantity="12.5", hours="2"))
    assert rate(PROFILES["coze-pro"], e).amount == D("0.0075")


# ---------------------------------------------------------------- 2. fine-tuned models


def test_fine_tuned_call_is_priced_from_its_row_and_paid_by_neither_free_points_nor_packs():
    a = coze()
    a.send(
        account(
            "c",
            "pack_purchased",
            pack_id="p",
            pack_kind="coze_unified",
            amount="1000",
            expires_at="2026-12-01T00:00:00+08:00",
        )
    )
    d = a.send(
        usage(
            "c",
            "tokens",
            model="Doubao-pro-32k",
            fine_tuned=True,
            input_tokens=1000,
            output_tokens=1000,
        )
    ).deduction.to_record()
    assert D(d["rated_amount"]) == D("0.0056")  # 1.6 + 4 points
    assert splits(d) == [("cash", "cash", D("0.0056"))]
    assert "fine_tuned" in d["flags"]
    base = a.send(
        usage("c", "tokens", model="Doubao-pro-32k", input_tokens=1000, output_tokens=1000)
    ).deduction.to_record()
    assert D(base["rated_amount"]) == D("0.0028") and splits(base)[0][0] == "free"


def test_fine_tuned_without_a_price_row_is_a_specific_dead_letter():
    a = coze()
    a.send(usage("c", "tokens", model="DeepSeek-V3", fine_tuned=True, input_tokens=10))
    assert codes(a) == ["no_fine_tuned_price"]


def test_tokenhub_prices_no_fine_tuned_model():
    # seed 002 lists no fine-tuned models: a fine-tuned call has no price there
    with pytest.raises(Rejected) as info:
        rate(
            PROFILES["tokenhub"],
            parse_json_event(
                usage("t", "tokens", model="kimi-k2.5", fine_tuned=True, input_tokens=1)
            ),
        )
    assert info.value.code == "no_fine_tuned_price"


def test_fine_tuned_is_only_for_token_items():
    with pytest.raises(Rejected) as info:
        parse_json_event(usage("c", "agent_call", quantity="1", fine_tuned=True))
    assert info.value.code == "invalid_field"


# ---------------------------------------------------------------- 3. credits carried by the event


@pytest.mark.parametrize(
    "model,credits,amount",
    [
        ("HY-3D-3.0", "15", "1.8"),
        ("HY-3D-3.0", "60", "7.2"),
        ("HY-3D-3.1", "37.5", "4.5"),
        ("HY-3D-Express", "25", "3"),
    ],
)
def test_3d_is_billed_by_the_credits_of_the_call(model, credits, amount):
    e = parse_json_event(usage("t", "3d", model=model, quantity="1", credits=credits))
    r = rate(PROFILES["tokenhub"], e)
    assert r.amount == D(amount) and r.lines[0].credits_per_unit == D(credits)


@pytest.mark.parametrize(
    "model,credits,code",
    [
        ("HY-3D-3.0", "14.99", "credits_out_of_range"),
        ("HY-3D-3.0", "61", "credits_out_of_range"),
        ("HY-3D-Express", "26", "credits_out_of_range"),
        ("HY-3D-3.1", None, "credits_missing"),
    ],
)
def test_credits_outside_the_range_or_missing_are_dead_letters(model, credits, code):
    a = Account()
    a.send(account("t", "account_opened", profile="tokenhub", amount="10", post_paid=True))
    extra = {} if credits is None else {"credits": credits}
    a.send(usage("t", "3d", model=model, quantity="1", **extra))
    assert codes(a) == [code]


def test_fixed_credit_rows_refuse_other_credits_and_currency_rows_refuse_credits():
    a = Account()
    a.send(account("t", "account_opened", profile="tokenhub", amount="10", post_paid=True))
    a.send(usage("t", "video", model="HY-Video-1.5", quantity="1", credits="2"))
    a.send(usage("t", "video", model="HY-Video-1.5", quantity="1", credits="1.5"))  # agrees: fine
    assert codes(a) == ["credits_out_of_range"]
    with pytest.raises(Rejected) as info:
        parse_json_event(usage("t", "image", model="HY-Image-V3.0", quantity="1", credits="1"))
    assert info.value.code == "invalid_field"


def test_3d_credits_still_settle_daily():
    a = Account()
    a.send(account("t", "account_opened", profile="tokenhub", amount="100", post_paid=True))
    d = a.send(
        usage("t", "3d", model="HY-3D-3.0", quantity="1", credits="30")
    ).deduction.to_record()
    assert d["settlement_period"] == "day"


# ---------------------------------------------------------------- 4. image batches


def test_image_batch_records_requested_and_generated_and_bills_generated():
    e = parse_json_event(
        usage("t", "image", model="HY-Image-V3.0", quantity="3", requested_images=4)
    )
    r = rate(PROFILES["tokenhub"], e)
    assert r.amount == D("0.6")
    assert r.quantities["requested_images"] == "4" and r.quantities["generated_images"] == "3"


def test_more_generated_than_requested_is_refused():
    with pytest.raises(Rejected) as info:
        parse_json_event(
            usage("t", "image", model="HY-Image-V3.0", quantity="5", requested_images=4)
        )
    assert info.value.code == "quantities_do_not_add_up"


# ---------------------------------------------------------------- 5. demo --batch: delivery order


def test_demo_expects_simulate_in_delivery_order():
    import orjson

    from streams.cli.demo import expected_for_replay
    from streams.engine import BillingEngine
    from streams.simulate import simulate

    # two accounts on one partition; with batches of 2, a's events wait for each other and go
    # first, so b's event (dated 40 days before a's second one) is past the dedupe horizon
    names = [f"acct{i}" for i in range(40)]
    a_id = names[0]
    b_id = next(n for n in names[1:] if partition_for(n, 4) == partition_for(a_id, 4))
    raws = [
        account(
            a_id, "account_opened", profile="jiekou", amount="10", t="2026-05-01T08:00:00+08:00"
        ),
        account(
            b_id, "account_opened", profile="jiekou", amount="10", t="2026-05-01T08:01:00+08:00"
        ),
        account(a_id, "top_up", amount="1", t="2026-06-10T08:00:00+08:00"),
    ]
    lines = [orjson.dumps(r) for r in raws]
    batched = expected_for_replay(lines, 2, source="f", partitions=4)
    file_order = simulate(enumerate(lines, 1), BillingEngine(PROFILES), source="f", partitions=4)
    assert [d["reason_code"] for d in batched.dead_letters] == ["event_too_old"]
    assert file_order.dead_letters == []
    assert expected_for_replay(lines, 1, source="f", partitions=4).dead_letters == []
