"""Stall detection for a worker: it owns partitions, messages wait in them, and nothing moves.

faust and aiokafka have known ways to sit silently after a rebalance (a partition that is never
fetched again, a table recovery that never reaches its high-water mark; faust-streaming issues
#629 and #175). No error is raised, the lag only grows. A worker that sees this exits with
EXIT_STALLED, and whatever supervises it (Kubernetes, compose, ``rating run``, the test harness)
starts a fresh one; the ledger's offsets make the restart charge nothing twice.

Plain Python: the worker feeds observations in, this decides."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field

EXIT_STALLED = 4
# a round could not complete (a produce error, a record over the limit, a faust service crashed
# under a running worker): never skipped, a restart replays it
EXIT_ROUND_FAILED = 5


def exit_code_after_crash(code: object, crash: BaseException | None, rating: bool) -> object:
    """The exit code of a worker whose faust run ended with ``code``.

    A faust or aiokafka service that crashes under a running worker (seen in CI: the fetcher on a
    KeyError just after a seek) ends faust with code 1, which supervisors such as ``rating run``
    do not restart, since a crash at start (bad settings) would only repeat. Once the worker is
    rating, nothing past its last durable round is committed and a restart replays it: such a
    crash exits with EXIT_ROUND_FAILED."""
    if code and crash is not None and rating:
        return EXIT_ROUND_FAILED
    return code


@dataclass
class PartitionProgress:
    marker: Hashable  # changes whenever the partition (or the recovery feeding it) moves
    since: float  # when the marker last changed, or the partition last had nothing waiting


@dataclass
class StallWatch:
    timeout_s: float
    progress: dict[int, PartitionProgress] = field(default_factory=dict)

    def observe(self, now: float, owned: dict[int, tuple[Hashable, bool]]) -> list[int]:
        """``owned``: partition -> (progress marker, whether messages wait to be handled).
        Returns the partitions that have had messages waiting and no progress for longer than
        the timeout. Partitions no longer owned are forgotten; newly owned ones start fresh."""
        for part in list(self.progress):
            if part not in owned:
                del self.progress[part]
        stalled = []
        for part, (marker, waiting) in owned.items():
            seen = self.progress.get(part)
            if seen is None or seen.marker != marker or not waiting:
                self.progress[part] = PartitionProgress(marker, now)
            elif now - seen.since > self.timeout_s:
                stalled.append(part)
        return sorted(stalled)

    def stuck_for(self, now: float, part: int) -> float:
        seen = self.progress.get(part)
        return now - seen.since if seen is not None else 0.0
