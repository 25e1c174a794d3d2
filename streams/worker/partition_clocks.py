"""Stream time of each owned input partition, and the history that makes it survive a restart.

A partition's clock is the largest event time accepted there. After each round the worker stores
``(last offset of the round, clock)`` in the ``partition-clocks`` table (see clock_history.py).
faust commits an offset only after flushing the changelog, so the entry for the committed offset
is always durable: a worker that (re)starts from there restores the exact clock the first run had
at that point, whatever else of the last rounds was lost. Entries after the first offset it reads
again are *marks*: when the replay passes such an offset, the clock is what the first run had
there (a replayed round then closes the same periods as the first run did).

Plain Python, no faust: the shell passes in the stored bytes and writes back what ``record_round``
returns.
"""

from __future__ import annotations

import logging

import orjson

from streams.worker.clock_history import bounded_history

log = logging.getLogger("streams.worker")


class PartitionClocks:
    def __init__(self) -> None:
        self.now: dict[int, int] = {}  # partition -> stream time (epoch ms)
        self.history: dict[int, list[tuple[int, int]]] = {}
        self.marks: dict[int, dict[int, int]] = {}  # replayed offsets -> the clock after them
        # the last offset handled per partition (kept across rebalances: lag and stall checks)
        self.last_offset: dict[int, int] = {}

    def owns(self, part: int) -> bool:
        return part in self.now

    def restore(self, part: int, first_offset: int, stored: bytes | None) -> int:
        """The clock of a partition whose first message since (re)start is at ``first_offset``."""
        history = [(int(o), int(c)) for o, c in orjson.loads(stored)] if stored is not None else []
        kept = self.history[part] = [h for h in history if h[0] < first_offset]
        self.marks[part] = {o: c for o, c in history if o >= first_offset}
        log.info(
            "partition %d: first message at offset %d; stored clock history %s; resuming after %s",
            part,
            first_offset,
            f"{history[0][0]}..{history[-1][0]} ({len(history)} rounds)" if history else "empty",
            kept[-1][0] if kept else "nothing",
        )
        self.now[part] = kept[-1][1] if kept else 0
        return self.now[part]

    def restored_through(self, part: int) -> int | None:
        """Where in-order processing resumes: the end of the last durable round before the first
        message seen, or, with no history, whatever comes first (faust seeks to the committed
        offset)."""
        history = self.history.get(part) or []
        return history[-1][0] if history else None

    def advance(self, part: int, clock_ms: int) -> bool:
        """Moves the clock forward only; whether it moved."""
        if clock_ms > self.now[part]:
            self.now[part] = clock_ms
            return True
        return False

    def passed(self, part: int, offset: int) -> None:
        """``offset`` was handled: where the first run recorded the clock after it, that is the
        clock."""
        mark = self.marks.get(part, {}).pop(offset, None)
        if mark is not None:
            self.advance(part, mark)

    def record_round(self, part: int, committed: int | None) -> bytes:
        """The partition's history with this round's entry, bounded by the committed offset: the
        value to store under ``key(part)``."""
        history = self.history.setdefault(part, [])
        history.append((self.last_offset[part], self.now[part]))
        history[:] = bounded_history(history, committed)
        return orjson.dumps(history)

    @staticmethod
    def key(part: int) -> bytes:
        return b"partition:%d" % part

    def forget(self) -> None:
        """After a rebalance: each partition is restored from its stored history again."""
        self.now.clear()
        self.history.clear()
        self.marks.clear()
