"""The worker's round, split into plain classes with no faust in them: the offset-order guard
(streams/worker/offset_order.py), the partition clocks (partition_clocks.py) and the output
collection (round_outputs.py)."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.config import Topics
from streams.ingest.codec import registry
from streams.limits import MAX_RECORD_BYTES, RecordTooLarge
from streams.worker.offset_order import OffsetOrder, Verdict
from streams.worker.partition_clocks import PartitionClocks
from streams.worker.round_outputs import RoundOutputs
from tests.unit.engine_driver import Account
from tests.unit.helpers import account, usage

# ------------------------------------------------------------------ offset order


def test_a_partition_resumes_anywhere_without_history_and_in_order_after_it():
    order = OffsetOrder()
    order.resume(0, None)
    assert order.judge(0, 57, 0.0) is Verdict.APPLY
    order.applied(0, 57)
    assert order.judge(0, 58, 0.0) is Verdict.APPLY
    order.resume(1, 9)
    assert order.judge(1, 10, 0.0) is Verdict.APPLY
    assert order.judge(1, 11, 0.0) is Verdict.SEEK  # 10 not applied yet


def test_a_redelivered_offset_is_handled_but_does_not_move_the_guard_back():
    order = OffsetOrder()
    order.resume(0, 20)
    assert order.judge(0, 15, 0.0) is Verdict.APPLY  # the state's offsets say it is a duplicate
    order.applied(0, 15)
    assert order.through[0] == 20


def test_a_jump_seeks_once_then_sets_aside_until_the_re_read_arrives():
    order = OffsetOrder()
    order.resume(3, 100)
    order.start_round()
    assert order.judge(3, 105, 10.0) is Verdict.SEEK
    assert order.resync == {3: 101} and order.set_aside == {3}
    assert order.attempts(3) == 1
    assert order.judge(3, 106, 10.2) is Verdict.SET_ASIDE  # fetched before the seek: no new seek
    assert order.judge(3, 101, 10.3) is Verdict.APPLY
    order.applied(3, 101)
    # the re-read came in this round, behind the stale messages: no seek back into it
    assert order.resync == {} and order.set_aside == set()
    assert order.through[3] == 101 and order.attempts(3) == 0


def test_a_jump_seeks_again_after_the_pause_and_is_confirmed_only_after_retries_and_time():
    order = OffsetOrder(retries=3, confirm_s=10.0)
    order.resume(0, 7)
    verdicts = [order.judge(0, 12, t) for t in (0.0, 0.5, 1.1, 2.2, 2.5)]
    assert verdicts == [
        Verdict.SEEK,
        Verdict.SET_ASIDE,
        Verdict.SEEK,
        Verdict.SEEK,
        Verdict.SET_ASIDE,
    ]
    assert order.attempts(0) == 3
    # retries used up, but not for long enough: it keeps re-reading
    assert order.judge(0, 12, 9.9) is Verdict.SEEK and order.attempts(0) == 4
    assert order.judge(0, 12, 10.0) is Verdict.CONFIRM_GAP
    order.applied(0, 12)  # the shell confirmed the gap with the broker
    assert order.through[0] == 12 and order.judge(0, 13, 10.1) is Verdict.APPLY


def test_start_round_clears_the_round_and_forget_clears_the_partitions():
    order = OffsetOrder()
    order.resume(0, 1)
    order.judge(0, 5, 0.0)
    order.start_round()
    assert order.resync == {} and order.set_aside == set()
    order.forget()
    assert order.through == {} and order.attempts(0) == 0


@given(
    st.integers(0, 50),
    st.lists(st.tuples(st.integers(0, 80), st.floats(0, 0.5)), max_size=200),
)
def test_no_offset_is_applied_ahead_of_the_next_one(start, deliveries):
    """Whatever order a consumer hands offsets over in, an offset is applied only when it is at
    most one past the last applied (a gap is applied only once confirmed, never here: the clock
    stays below the confirmation time)."""
    order = OffsetOrder(retries=3, confirm_s=1e9)
    order.resume(0, start)
    now = 0.0
    for offset, step in deliveries:
        now += step
        before = order.through[0]
        verdict = order.judge(0, offset, now)
        assert verdict is not Verdict.CONFIRM_GAP
        if verdict is Verdict.APPLY:
            assert before is not None and offset <= before + 1
            order.applied(0, offset)
            assert order.through[0] == max(before, offset)
        else:
            assert order.through[0] == before and offset > before + 1


# ------------------------------------------------------------------ partition clocks


def test_a_partition_without_history_starts_at_zero_and_anywhere():
    clocks = PartitionClocks()
    assert not clocks.owns(2)
    assert clocks.restore(2, 40, None) == 0
    assert clocks.owns(2) and clocks.restored_through(2) is None


def test_a_restart_takes_the_clock_of_the_last_round_before_it_and_replays_the_later_marks():
    stored = orjson.dumps([(10, 100), (20, 200), (30, 300)])
    clocks = PartitionClocks()
    assert clocks.restore(0, 21, stored) == 200
    assert clocks.restored_through(0) == 20
    clocks.passed(0, 25)
    assert clocks.now[0] == 200
    clocks.passed(0, 30)  # the first run's clock after offset 30
    assert clocks.now[0] == 300
    clocks.passed(0, 30)  # a mark is used once
    assert clocks.now[0] == 300


def test_the_clock_only_moves_forward():
    clocks = PartitionClocks()
    clocks.restore(0, 0, None)
    assert clocks.advance(0, 50) is True
    assert clocks.advance(0, 49) is False and clocks.advance(0, 50) is False
    assert clocks.now[0] == 50


def test_a_recorded_round_restores_the_same_clock_at_the_committed_offset():
    first = PartitionClocks()
    first.restore(1, 0, None)
    stored = b""
    for offset, clock in ((4, 1_000), (9, 2_000), (15, 2_500), (21, 3_000)):
        first.last_offset[1] = offset
        first.advance(1, clock)
        stored = first.record_round(1, committed=16)  # offsets below 16 are committed
    history = orjson.loads(stored)
    assert history == [[9, 2_000], [15, 2_500], [21, 3_000]]  # nothing a restart at 10 cannot use
    second = PartitionClocks()
    assert second.restore(1, 16, stored) == 2_500
    assert second.restored_through(1) == 15


def test_forget_keeps_the_last_offsets_for_the_lag_and_stall_checks():
    clocks = PartitionClocks()
    clocks.restore(0, 0, None)
    clocks.last_offset[0] = 7
    clocks.forget()
    assert not clocks.owns(0) and clocks.last_offset == {0: 7}
    assert PartitionClocks.key(12) == b"partition:12"


# ------------------------------------------------------------------ round outputs


def r1(main, **kw):
    return usage(main, "tokens", model="Deepseek-r1-0528", input_tokens=10_000, **kw)


def test_outcomes_are_encoded_in_order_and_arrears_alerts_go_to_both_alert_topics():
    a = Account()
    opened = a.send(
        account("z", "account_opened", profile="tokenhub", post_paid=True, amount="0.01")
    )
    charged = a.send(r1("z"))  # 0.01 - 0.04: arrears
    topped = a.send(account("z", "top_up", amount="0.05", t="2026-05-01T12:00:00+08:00"))
    topics, reg = Topics(prefix="t."), registry()
    outs = RoundOutputs(reg, topics)
    outs.add(opened, b"z")
    outs.add(charged, b"z")
    outs.add(topped, b"z")
    names = [t for t, _k, _v in outs.checked()]
    assert names[names.index("t.deductions") :][:3] == [
        "t.deductions",
        "t.alerts",
        "t.alerts.arrears",
    ]
    assert names.count("t.account-balances") == 1  # the top-up moved the cash
    assert {k for _t, k, _v in outs.records} == {b"z"}
    by_topic = {t: reg.decode(v)[1] for t, _k, v in outs.records}
    assert by_topic["t.deductions"]["deduction_id"] == charged.deduction.to_record()["deduction_id"]
    assert by_topic["t.alerts"]["kind"] == by_topic["t.alerts.arrears"]["kind"]


def test_a_record_over_the_limit_is_refused_before_anything_is_sent():
    outs = RoundOutputs(registry(), Topics())
    outs.records.append(("billing.deductions", b"acct", b"x" * (MAX_RECORD_BYTES + 1)))
    with pytest.raises(RecordTooLarge, match="acct"):
        outs.checked()
