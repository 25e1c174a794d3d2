"""The worker's stall verdict (streams/worker/stall.py) and the supervisor side of it."""

import subprocess
import sys

from streams.local.pipeline import LocalPipeline, WorkerProcess
from streams.worker.stall import (
    EXIT_ROUND_FAILED,
    EXIT_STALLED,
    StallWatch,
    exit_code_after_crash,
)


def test_waiting_without_progress_past_the_timeout_is_a_stall():
    w = StallWatch(timeout_s=30)
    assert w.observe(0, {0: (100, True), 1: (200, True)}) == []
    assert w.observe(29, {0: (100, True), 1: (205, True)}) == []
    assert w.observe(31, {0: (100, True), 1: (205, True)}) == [0]
    assert w.stuck_for(31, 0) == 31
    # partition 1 moved at 29: its clock started again there
    assert w.observe(60, {0: (100, True), 1: (205, True)}) == [0, 1]


def test_progress_or_nothing_waiting_restarts_the_clock():
    w = StallWatch(timeout_s=10)
    w.observe(0, {0: (None, True)})
    assert w.observe(8, {0: (7, True)}) == []  # first message handled
    assert w.observe(17, {0: (7, False)}) == []  # caught up: idle is not stalled
    assert w.observe(26, {0: (7, True)}) == []  # new messages: the clock starts now
    assert w.observe(37, {0: (7, True)}) == [0]


def test_recovery_progress_counts_as_progress():
    w = StallWatch(timeout_s=10)
    w.observe(0, {0: (("recovery", 100), True)})
    assert w.observe(9, {0: (("recovery", 5000), True)}) == []
    assert w.observe(18, {0: (("recovery", 9000), True)}) == []
    assert w.observe(29, {0: (("recovery", 9000), True)}) == [0]


def test_partitions_lost_in_a_rebalance_are_forgotten_and_new_ones_start_fresh():
    w = StallWatch(timeout_s=10)
    w.observe(0, {0: (5, True), 1: (6, True)})
    assert w.observe(11, {1: (6, True), 2: (1, True)}) == [1]
    assert set(w.progress) == {1, 2}
    assert w.observe(12, {0: (5, True)}) == []  # owned again: a fresh start, not the old clock
    assert w.observe(23, {}) == []
    assert w.progress == {}


def test_a_worker_that_exited_stalled_is_replaced_once_and_others_are_not(tmp_path, monkeypatch):
    pipeline = LocalPipeline(tmp_path)
    started = []
    stores = []

    def start_worker(data_dir=None):
        stores.append(data_dir)
        w = WorkerProcess(
            subprocess.Popen([sys.executable, "-c", "pass"]),
            tmp_path / f"worker-{len(started)}.log",
        )
        started.append(w)
        return w

    monkeypatch.setattr(pipeline, "start_worker", start_worker)
    stalled = WorkerProcess(
        subprocess.Popen([sys.executable, "-c", f"raise SystemExit({EXIT_STALLED})"]),
        tmp_path / "a.log",
        data_dir=tmp_path / "worker-a",
    )
    crashed = WorkerProcess(
        subprocess.Popen([sys.executable, "-c", "raise SystemExit(1)"]), tmp_path / "b.log"
    )
    pipeline.workers = [stalled, crashed]
    stalled.process.wait()
    crashed.process.wait()
    assert pipeline.restart_stalled() == started and len(started) == 1
    assert stalled.replaced and not crashed.replaced
    assert stores == [tmp_path / "worker-a"]  # the replacement keeps the store, as a pod its volume
    assert pipeline.restart_stalled() == []
    assert pipeline.stall_restarts == [tmp_path / "a.log"]


def test_a_service_crash_under_a_rating_worker_asks_to_be_restarted():
    crash = KeyError("events-3")
    assert exit_code_after_crash(1, crash, rating=True) == EXIT_ROUND_FAILED
    # at start (bad settings, no broker) a restart would only repeat: faust's code stands
    assert exit_code_after_crash(1, crash, rating=False) == 1
    # a clean stop, or an exit without a crash, keeps its code
    assert exit_code_after_crash(0, None, rating=True) == 0
    assert exit_code_after_crash(None, None, rating=True) is None
    assert exit_code_after_crash(1, None, rating=True) == 1
