"""The history of a partition's stream time, as the worker stores it in the ``partition-clocks``
table: ``(last offset of a round, clock after it)`` pairs, oldest first.

A restarted worker resumes at the partition's committed offset and takes the clock of the last
round that ended before it. Entries older than that round can never be needed again, so the
stored record holds only the rounds since the last commit (a commit comes every second), not a
fixed window of 2,000 rounds: the record was about 50 KB on every round before.
"""

from __future__ import annotations

MAX_ROUNDS = 2000  # a cap for when no commit is known yet (a fresh partition)


def bounded_history(history: list[tuple[int, int]], committed: int | None) -> list[tuple[int, int]]:
    """``history`` without the entries a worker resuming at ``committed`` or later cannot use:
    every entry at or after ``committed - 1`` and the last one before it."""
    if committed is not None:
        first_kept = 0
        for i, (offset, _clock) in enumerate(history):
            if offset < committed - 1:
                first_kept = i
            else:
                break
        history = history[first_kept:]
    return history[-MAX_ROUNDS:]
