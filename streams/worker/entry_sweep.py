"""Forgetting dedupe entries older than the horizon, a bounded number per round.

The entries live in a faust table (streams/dedupe.py says why). An entry can go once its
partition's stream time has passed its event time by the horizon: such an event is rejected as
``event_too_old`` before the store is asked. The sweep walks a snapshot of the table's keys,
``budget`` keys per round, and starts a new walk at most every ``interval_s``: how long an
expired entry lingers is bounded (one walk), and so is the work per round. Plain Python: the
worker passes the table and its partition clocks in.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from streams.dedupe import Entry, scope_partition


class EntrySweep:
    def __init__(
        self,
        horizon_ms: int,
        *,
        budget: int = 2_000,
        interval_s: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        assert horizon_ms > 0 and budget > 0
        self.horizon_ms = horizon_ms
        self.budget = budget
        self.interval_s = interval_s
        self._clock = clock
        self._keys: list[bytes] = []
        self._position = 0
        self._walk_started = float("-inf")
        self.forgotten = 0

    def expired(
        self,
        keys: Callable[[], Iterable[bytes]],
        get: Callable[[bytes], bytes | None],
        clocks: Mapping[int, int],
        anchors: Mapping[int, Any],
    ) -> list[tuple[bytes, Any]]:
        """The next keys of this walk whose entry has expired, with the anchor of their partition.
        Keys of partitions without an anchor this round (not owned, or no message) are skipped:
        the next walk sees them again."""
        if self._position >= len(self._keys):
            now = self._clock()
            if now - self._walk_started < self.interval_s:
                return []
            self._keys, self._position, self._walk_started = list(keys()), 0, now
        batch = self._keys[self._position : self._position + self.budget]
        self._position += len(batch)
        out = []
        for key in batch:
            part = scope_partition(key)
            anchor, clock = anchors.get(part), clocks.get(part)
            if anchor is None or clock is None:
                continue
            data = get(key)
            if data is not None and Entry.decode(data).event_time_ms < clock - self.horizon_ms:
                out.append((key, anchor))
        self.forgotten += len(out)
        return out
