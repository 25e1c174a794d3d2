"""Size limits of every record the pipeline writes, stated once and enforced where it writes.

64 KiB is far under any broker's default message limit (Kafka's ``max.message.bytes`` and
aiokafka's ``max_request_size`` are 1 MiB), so no record can fail its send for its size. The
inputs are bounded (streams/ingest/events.py: ids, strings, decimals, batch sizes) and no record
holds a list that grows with an account's traffic, so a record over the limit is a bug: the
writer stops with ``RecordTooLarge`` instead of skipping the round (the worker exits and is
restarted from its last commit, losing nothing; offline, the run fails with the record named).
"""

from __future__ import annotations

MAX_RECORD_BYTES = 64 * 1024  # any output record, dedupe entry or partition-clock record
# One account's state: its live vouchers and packs (at most 100 each) and linked sub-accounts (at
# most 200), each with ids of up to 256 characters, fit in this with room to spare; typical
# accounts are 1 to 3 KB. Still half of Kafka's default message limit.
MAX_STATE_BYTES = 512 * 1024


class RecordTooLarge(RuntimeError):
    def __init__(self, kind: str, key: str, size_bytes: int, limit_bytes: int):
        super().__init__(
            f"{kind} record for {key!r} is {size_bytes:,} bytes, over the limit of "
            f"{limit_bytes:,} (streams/limits.py): a bug, not bad input"
        )
        self.kind, self.key, self.size_bytes = kind, key, size_bytes


def check_record_size(
    kind: str, key: str, data: bytes, limit_bytes: int = MAX_RECORD_BYTES
) -> bytes:
    if len(data) > limit_bytes:
        raise RecordTooLarge(kind, key, len(data), limit_bytes)
    return data
