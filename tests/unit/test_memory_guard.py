"""`rating run` stops cleanly before the embedded broker (which keeps every record in memory)
exhausts the machine (streams/local/memory_guard.py)."""

import os

from streams.local.memory_guard import MIB, MemoryGuard, machine_bytes, meminfo_bytes, rss_bytes


def test_the_broker_at_its_limit_stops_the_run_and_says_why():
    guard = MemoryGuard(max_broker_bytes=4096 * MIB)
    assert guard.verdict(4095 * MIB, available_bytes=8192 * MIB) is None
    reason = guard.verdict(4096 * MIB, available_bytes=8192 * MIB)
    assert reason is not None
    assert "4,096 MB" in reason and "LOCAL_BROKER_MAX_MEMORY_MB" in reason


def test_a_machine_running_out_stops_the_run_whatever_the_broker_holds():
    guard = MemoryGuard(max_broker_bytes=64 * 1024 * MIB)
    reason = guard.verdict(300 * MIB, available_bytes=900 * MIB)
    assert reason is not None and "900 MB" in reason and "300 MB" in reason
    assert guard.verdict(300 * MIB, available_bytes=1025 * MIB) is None
    assert guard.verdict(300 * MIB, available_bytes=0) is None  # unknown: only the broker limit


def test_no_limit_set_means_half_of_the_machine():
    total = machine_bytes()
    assert 0 < total <= meminfo_bytes("MemTotal")  # Linux, as CI; a container limit is lower
    guard = MemoryGuard(max_broker_bytes=0)
    assert guard.limit_bytes() == total // 2
    assert guard.verdict(total // 2 - MIB, available_bytes=total) is None
    assert guard.verdict(total // 2, available_bytes=total) is not None


def test_resident_memory_is_read_for_a_live_process_and_zero_for_a_gone_one():
    assert 1 * MIB < rss_bytes(os.getpid()) < 64 * 1024 * MIB
    assert rss_bytes(2**22 + 12345) == 0
