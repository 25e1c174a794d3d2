"""A jump in the input offsets is committed past only when the broker shows nothing lies there."""

from __future__ import annotations

import asyncio

from streams.worker.gap_check import offsets_absent, seek_due


def answers(first: int | None):
    async def first_offset(topic: str, partition: int, offset: int) -> int | None:
        assert (topic, partition) == ("t", 3)
        return first

    return first_offset


def check(first: int | None) -> bool:
    return asyncio.run(offsets_absent(answers(first), "t", 3, 86, 456))


def test_records_inside_the_jump_mean_it_is_not_a_gap():
    assert check(86) is False  # the first skipped offset is there
    assert check(300) is False  # some of the skipped offsets are there


def test_a_read_that_lands_at_or_past_the_target_is_a_real_gap():
    assert check(456) is True  # markers or compaction: the next record is the jump's target
    assert check(460) is True


def test_no_answer_is_not_taken_for_absence():
    assert check(None) is False


def test_a_seek_back_is_not_repeated_while_messages_fetched_before_it_drain():
    issued: dict[int, tuple[int, float]] = {}
    assert seek_due(issued, 2, 110, now_s=100.0) is True  # the first jump seeks
    assert seek_due(issued, 2, 110, now_s=100.4) is False  # stale messages: no second seek
    assert seek_due(issued, 2, 110, now_s=100.99) is False
    assert seek_due(issued, 1, 110, now_s=100.5) is True  # another partition is its own
    # the re-read did not come (faust dropped it behind a stale message): seek again
    assert seek_due(issued, 2, 110, now_s=101.0) is True
    assert seek_due(issued, 2, 110, now_s=101.5) is False
    # a different target (the partition moved on and jumped again) seeks at once
    assert seek_due(issued, 2, 140, now_s=101.6) is True
    assert issued == {2: (140, 101.6), 1: (110, 100.5)}
