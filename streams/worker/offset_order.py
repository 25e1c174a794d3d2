"""Offsets applied strictly in order per input partition: the worker's guard against applying a
message ahead of one it has not applied yet.

faust may hand over messages fetched before a rebalance's seek, ahead of offsets not processed
yet. Such a message is set aside (not applied, not counted) and the partition is read again from
the gap; messages fetched before the seek keep arriving for a moment and are set aside without
seeking again (``seek_due``). A jump that outlives ``retries`` re-reads and ``confirm_s`` seconds
is either a real hole in the log (transaction markers, compaction), which the shell confirms with
the broker before moving past it, or a consumer that keeps skipping, which stops the worker.

Plain Python, no faust: the shell asks ``judge`` for each message of a round, then reports what
it applied with ``applied``; the seeks to issue after the round are in ``resync``.
"""

from __future__ import annotations

from enum import Enum

from streams.worker.gap_check import seek_due

JUMP_RETRIES = 3
GAP_CONFIRM_S = 10.0  # a jump that outlives re-reads for this long is a real gap in the log


class Verdict(Enum):
    APPLY = "apply"  # the next offset, or the partition's first message
    SET_ASIDE = "set_aside"  # ahead of the next offset: skipped, a re-read is pending
    SEEK = "seek"  # as SET_ASIDE, and a seek back to the gap is due after the round
    CONFIRM_GAP = "confirm_gap"  # the jump outlived the re-reads: ask the broker what lies there


class OffsetOrder:
    def __init__(self, retries: int = JUMP_RETRIES, confirm_s: float = GAP_CONFIRM_S):
        self.retries, self.confirm_s = retries, confirm_s
        # the last offset applied per partition (None: whatever comes first)
        self.through: dict[int, int | None] = {}
        # (partition, last offset applied) -> (seeks issued for the jump there, since when)
        self._jumps: dict[tuple[int, int], tuple[int, float]] = {}
        self._seeks: dict[int, tuple[int, float]] = {}  # partition -> (offset, when), see seek_due
        self.set_aside: set[int] = set()  # partitions waiting for a re-read in order (this round)
        self.resync: dict[int, int] = {}  # partition -> offset to seek back to after this round

    def start_round(self) -> None:
        self.set_aside.clear()
        self.resync.clear()

    def resume(self, part: int, through: int | None) -> None:
        """Where in-order processing of a newly owned partition resumes (None: anywhere)."""
        self.through[part] = through

    def attempts(self, part: int) -> int:
        """Seeks issued for the partition's current jump (for the log line)."""
        through = self.through.get(part)
        return self._jumps.get((part, through), (0, 0.0))[0] if through is not None else 0

    def judge(self, part: int, offset: int, now_s: float) -> Verdict:
        expected = self.through.get(part)
        if expected is None or offset <= expected + 1:
            return Verdict.APPLY
        attempts, since = self._jumps.get((part, expected), (0, now_s))
        if attempts >= self.retries and now_s - since >= self.confirm_s:
            return Verdict.CONFIRM_GAP
        self.set_aside.add(part)
        if not seek_due(self._seeks, part, expected + 1, now_s):
            return Verdict.SET_ASIDE
        self._jumps[(part, expected)] = (attempts + 1, since)
        self.resync[part] = expected + 1
        return Verdict.SEEK

    def applied(self, part: int, offset: int) -> None:
        """``offset`` was applied (or is a redelivery of one applied before)."""
        expected = self.through.get(part)
        if expected is not None:
            self._jumps.pop((part, expected), None)
            self._seeks.pop(part, None)
        if part in self.set_aside:
            # the re-read arrived behind the stale messages in this same round: no seek back into
            # what is applied now
            self.set_aside.discard(part)
            self.resync.pop(part, None)
        self.through[part] = max(offset, expected if expected is not None else offset)

    def forget(self) -> None:
        """After a rebalance: every partition resumes from its stored history again."""
        self.through.clear()
        self._jumps.clear()
        self._seeks.clear()
