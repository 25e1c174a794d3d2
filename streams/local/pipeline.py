"""The whole pipeline on one machine: Tansu broker, faust worker subprocesses, the ClickHouse sink
in this process (chDB opens a database in one process only, so whoever queries must be the
process that sinks). Used by ``rating demo`` and by the integration tests.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from streams.config import Settings
from streams.local.lifecycle import child_preexec
from streams.local.tansu import LocalBroker, local_kafka_env, start_broker
from streams.worker.stall import EXIT_ROUND_FAILED, EXIT_STALLED


@dataclass
class WorkerProcess:
    process: subprocess.Popen
    log_path: Path
    metrics_port: int = 0  # 0: no endpoint
    replaced: bool = False  # by restart_stalled
    data_dir: Path | None = None  # its local table store (RocksDB), kept for its replacement

    def alive(self) -> bool:
        return self.process.poll() is None

    def terminate(self, timeout: float = 20.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        return self.process.returncode

    def exited_stalled(self) -> bool:
        """Exited asking to be replaced: a stall, or a round that could not complete."""
        return self.process.poll() in (EXIT_STALLED, EXIT_ROUND_FAILED)

    def kill(self) -> None:
        """SIGKILL: no shutdown, no flush; what a crash looks like."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


@dataclass
class LocalPipeline:
    run_dir: Path
    broker: LocalBroker | None = None
    settings: Settings | None = None
    workers: list[WorkerProcess] = field(default_factory=list)
    env_overrides: dict[str, str] = field(default_factory=dict)
    # logs of workers replaced after a stall
    stall_restarts: list[Path] = field(default_factory=list)

    def start_broker(self, bootstrap: str | None = None) -> Settings:
        """Start a local broker, or use a running one at ``bootstrap`` (tests share one)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if bootstrap is None:
            # a new embedded broker starts empty: table stores of an earlier run (RocksDB keeps
            # changelog offsets) would be taken for current state
            for old in self.run_dir.glob("worker-*"):
                if old.is_dir():
                    shutil.rmtree(old)
            self.broker = start_broker(log_path=self.run_dir / "broker.log")
            bootstrap = self.broker.bootstrap
        env = {k: v for k, v in os.environ.items()}
        env.update(local_kafka_env(bootstrap))
        env["CHDB_PATH"] = str(self.run_dir / "chdb")
        env["WORKER_DATA_DIR"] = str(self.run_dir / "worker")
        env.update(self.env_overrides)
        self.settings = Settings.from_env({k: v for k, v in env.items() if k in _known()})
        return self.settings

    def worker_env(self) -> dict[str, str]:
        assert self.settings is not None
        env = {k: v for k, v in os.environ.items() if k not in _known()}
        env.update(self.settings.to_env())
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def start_worker(self, data_dir: Path | None = None) -> WorkerProcess:
        """A worker process with a table store of its own, or ``data_dir``: the store of a worker
        it replaces, as a pod of a StatefulSet keeps its volume (RocksDB then restores only what
        the changelog holds past the store's own offsets)."""
        n = len(self.workers)
        log_path = self.run_dir / f"worker-{n}.log"
        env = self.worker_env()
        assert self.settings is not None  # worker_env checked it
        data_dir = data_dir or self.run_dir / f"worker-{n}"
        env["WORKER_DATA_DIR"] = str(data_dir)
        # several workers share this host: each gets a free port for its endpoints
        port = free_port() if self.settings.metrics_port else 0
        env["METRICS_PORT"] = str(port)
        with open(log_path, "ab") as log_file:  # the worker has its own copy of the descriptor
            proc = subprocess.Popen(
                [sys.executable, "-m", "streams.cli.main", "worker"],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                # a worker ends with its parent, however the parent ends
                preexec_fn=child_preexec(),
            )
        w = WorkerProcess(proc, log_path, port, data_dir=data_dir)
        self.workers.append(w)
        return w

    def restart_stalled(self) -> list[WorkerProcess]:
        """What any supervisor does (Kubernetes, compose ``restart:``): a worker that exited because
        it stalled is replaced by a fresh one. Other exits are left for the caller to report."""
        fresh = []
        for w in list(self.workers):
            if w.exited_stalled() and not w.replaced:
                w.replaced = True
                fresh.append(self.start_worker(w.data_dir))
                self.stall_restarts.append(w.log_path)
        return fresh

    def stop(self) -> None:
        for w in self.workers:
            w.terminate()
        if self.broker is not None:
            self.broker.stop()

    def __enter__(self) -> LocalPipeline:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _known() -> set[str]:
    from streams.config import SETTINGS

    return set(SETTINGS)


async def sink_until(
    sink, done: Callable[[], bool], timeout: float, on_progress: Callable[[], None] | None = None
) -> bool:
    """Run sink batches until ``done()`` is true or the timeout passes. Returns whether done."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        await sink.step()
        if on_progress is not None:
            on_progress()
        if done():
            return True
    return False
