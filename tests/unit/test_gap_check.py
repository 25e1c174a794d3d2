"""A jump in the input offsets is committed past only when the broker shows nothing lies there."""

from __future__ import annotations

import asyncio

from streams.worker.gap_check import offsets_absent


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
