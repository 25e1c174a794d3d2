"""Which accounts of a partition have something to close or fire, and from what stream time.

The index is derived state: after a start or a rebalance it is rebuilt from the accounts table.
Decoding every account of every owned partition in one go blocked the event loop for seconds at
scale (no rounds, no health answers, commits late). So the rebuild is incremental: ``start`` takes
the partition's keys (no decoding), and ``build_step`` decodes a bounded number of them, called by
a background task that yields to the loop between steps.

Rounds keep running meanwhile and ``set`` what they learn about the accounts they touch; a key a
round has set is never overwritten by the rebuild's older reading of the table. The sweep visits
what is known so far; an account the rebuild has not reached yet is swept at a later tick, and a
later sweep closes exactly what an earlier one would have (the records carry their own times).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

NextDue = Callable[[bytes], int | None]  # account key -> next due stream time (None: nothing due)


class DueIndex:
    """Per partition: account key -> the stream time from which ``advance`` has work for it.

    A rebuild goes ``start`` -> ``add_keys`` (any number of times) -> ``listed`` -> ``build_step``
    until nothing is pending. Keys a round ``set`` since the last ``forget`` and before the
    partition's rebuild completed are ``touched``: the rebuild neither lists nor reads them."""

    def __init__(self, next_due: NextDue):
        self._next_due = next_due
        self.known: dict[int, dict[bytes, int]] = {}  # partition -> account -> due stream time
        self._pending: dict[int, dict[bytes, None]] = {}  # listed, not read yet
        self._listing: set[int] = set()  # partitions whose keys are still being listed
        self._touched: dict[int, set[bytes]] = {}
        self.generation = 0  # moves on at every ``forget``: a stale rebuild stops

    def forget(self) -> None:
        """A rebalance: every partition's index is rebuilt from the table again."""
        self.known.clear()
        self._pending.clear()
        self._listing.clear()
        self._touched.clear()
        self.generation += 1

    def started(self, part: int) -> bool:
        return part in self._pending

    def start(self, part: int) -> None:
        self.known.setdefault(part, {})
        self._pending[part] = {}
        self._listing.add(part)

    def add_keys(self, part: int, keys: Iterable[bytes]) -> None:
        """Keys of the partition's accounts in the table, to be read."""
        touched, pending = self._touched.get(part, set()), self._pending[part]
        pending.update((key, None) for key in keys if key not in touched)

    def listed(self, part: int) -> None:
        self._listing.discard(part)

    def complete(self, part: int) -> bool:
        if part not in self._pending or part in self._listing or self._pending[part]:
            return False
        self._touched.pop(part, None)  # from now on nothing can overwrite a round's entry
        return True

    def build_step(self, part: int, budget: int) -> int:
        """Read up to ``budget`` pending accounts of ``part``; returns how many are left."""
        pending = self._pending.get(part)
        if not pending:
            return 0
        index = self.known[part]
        for _ in range(min(budget, len(pending))):
            key = next(iter(pending))
            del pending[key]
            when = self._next_due(key)
            if when is not None:
                index[key] = when
        return len(pending)

    def set(self, part: int, key: bytes, when: int | None) -> None:
        """What a round learned: fresher than anything the rebuild would read."""
        if not self.complete(part):
            self._touched.setdefault(part, set()).add(key)
            pending = self._pending.get(part)
            if pending:
                pending.pop(key, None)
        index = self.known.setdefault(part, {})
        if when is None:
            index.pop(key, None)
        else:
            index[key] = when

    def due(self, part: int, clock_ms: int) -> list[bytes]:
        """Accounts of ``part`` known to have work at stream time ``clock_ms``."""
        return [key for key, when in self.known.get(part, {}).items() if when <= clock_ms]

    def pending_count(self) -> int:
        return sum(len(p) for p in self._pending.values())
