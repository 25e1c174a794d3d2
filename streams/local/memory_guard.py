"""How much memory the embedded broker holds, and when `rating run` must stop before the machine
runs out.

The local broker (Tansu's memory engine) keeps every record it is sent until its topic is deleted
or it stops: it applies neither ``retention.*`` nor compaction, and DeleteRecords is not
implemented (the broker panics on that request). So an embedded run grows by what it writes, a few
KB per input event (see README "Limits of the embedded default"), and the only clean bound is to
stop. Production runs on Kafka, whose topics have retention.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MIB = 1024 * 1024


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (Linux /proc); 0 when it is gone or unknown."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def meminfo_bytes(field: str) -> int:
    """A field of /proc/meminfo (``MemTotal``, ``MemAvailable``); 0 where there is none."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def machine_bytes() -> int:
    """The memory this process may use: the machine's, or its container's limit (cgroup v2
    ``memory.max``) where that is lower."""
    total = meminfo_bytes("MemTotal")
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
    except OSError:
        return total
    return min(total, int(limit)) if limit.isdigit() and total else total


@dataclass(frozen=True)
class MemoryGuard:
    max_broker_bytes: int  # the broker may hold this much; 0: half of the machine's memory
    min_available_bytes: int = 1024 * MIB

    def limit_bytes(self) -> int:
        return self.max_broker_bytes or machine_bytes() // 2

    def verdict(self, broker_bytes: int, available_bytes: int) -> str | None:
        """Why the run must stop now, or None. ``available_bytes`` 0 means unknown (not Linux)."""
        limit = self.limit_bytes()
        if limit and broker_bytes >= limit:
            return (
                f"the embedded broker holds {broker_bytes / MIB:,.0f} MB, at its limit of "
                f"{limit / MIB:,.0f} MB (LOCAL_BROKER_MAX_MEMORY_MB): it keeps every record in "
                "memory. What reached ClickHouse stays there; events not yet rated or sunk are "
                "lost with the broker and must be sent again"
            )
        if available_bytes and available_bytes < self.min_available_bytes:
            return (
                f"the machine has {available_bytes / MIB:,.0f} MB of memory left (the embedded "
                f"broker holds {broker_bytes / MIB:,.0f} MB): stopping before it runs out"
            )
        return None
