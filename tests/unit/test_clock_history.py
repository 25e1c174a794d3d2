"""The stored partition-clock history keeps what a restart at the committed offset needs, and
no more (streams/worker/clock_history.py)."""

from hypothesis import given
from hypothesis import strategies as st

from streams.worker.clock_history import MAX_ROUNDS, bounded_history


def restored_clock(history, first_offset):
    before = [clock for offset, clock in history if offset < first_offset]
    return before[-1] if before else 0


def test_entries_before_the_commit_are_dropped_but_the_last_one_before_it():
    history = [(10, 1), (20, 2), (30, 3), (40, 4)]
    assert bounded_history(history, 31) == [(20, 2), (30, 3), (40, 4)]
    assert bounded_history(history, 45) == [(40, 4)]
    assert bounded_history(history, None) == history


def test_without_a_commit_the_history_is_capped():
    history = [(i, i) for i in range(MAX_ROUNDS + 50)]
    assert bounded_history(history, None) == history[-MAX_ROUNDS:]


@given(
    st.lists(st.integers(1, 50), min_size=1, max_size=60),
    st.integers(0, 3000),
    st.integers(0, 3000),
)
def test_a_restart_at_or_after_the_commit_restores_the_same_clock(steps, committed, resume_after):
    offsets, history, offset = [], [], 0
    for i, step in enumerate(steps):
        offset += step
        history.append((offset, i + 1))
        offsets.append(offset)
    first_offset = committed + resume_after % 100
    assert restored_clock(bounded_history(history, committed), first_offset) == restored_clock(
        history, first_offset
    )
