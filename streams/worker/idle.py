"""A bounded-idleness watermark: a quiet partition's stream time keeps running with the wall clock.

Periods close and deadlines fire when stream time passes them, and stream time is the largest
accepted event time of the partition. When a partition goes quiet its last hour would stay open
until the next event. So once a partition has accepted nothing for ``idle_s`` seconds of wall
time, its stream time advances by the wall time elapsed since its last accepted event: an hour
then settles within its allowed lateness plus one tick of its end (``rating simulate --until``
does the same offline). Replays of history are unaffected while they flow: only a partition idle
for ``idle_s`` moves, and then only by the time it was idle. ``idle_s`` 0 turns it off.
Plain Python; the worker passes wall-clock readings in.
"""

from __future__ import annotations


class IdleWatermark:
    def __init__(self, idle_s: float):
        assert idle_s >= 0
        self.idle_s = idle_s
        self._last: dict[
            int, tuple[int, float]
        ] = {}  # partition -> (stream time, wall s) at the last accepted event

    def moved(self, partition: int, clock_ms: int, now_s: float) -> None:
        """An accepted event moved the partition's stream time to ``clock_ms``."""
        self._last[partition] = (clock_ms, now_s)

    def clock(self, partition: int, clock_ms: int, now_s: float) -> int:
        """The partition's stream time at a tick: ``clock_ms``, or later if it has been idle."""
        last = self._last.get(partition)
        if last is None:
            self._last[partition] = (clock_ms, now_s)  # a (re)start: idleness counts from here
            return clock_ms
        if self.idle_s <= 0:
            return clock_ms
        at_ms, since_s = last
        idle_for_s = now_s - since_s
        if idle_for_s < self.idle_s:
            return clock_ms
        return max(clock_ms, at_ms + int(idle_for_s * 1000))

    def forget(self) -> None:
        self._last.clear()
