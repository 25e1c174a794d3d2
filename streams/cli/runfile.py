"""The run-file of an embedded ``rating run``: where its broker and chDB are.

``rating run`` on the embedded default starts Tansu on a free port. It writes
``.run/pipeline/run.json`` (its pid, the broker address, the chDB folder, and the settings that name
topics and partitions) and removes it when it stops cleanly. ``trace``, ``rerate``, ``account``,
``dlq`` and ``topics`` started in the same folder without ``KAFKA_BOOTSTRAP_SERVERS`` attach to that
run instead of failing. A run-file whose process is gone (a SIGKILLed run) is ignored.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import orjson

from streams.config import Settings

RUN_FILE = Path(".run") / "pipeline" / "run.json"

# the settings a client needs to find the run's data: broker, chDB, topic names, partitions,
# changelog (never a secret: a CLICKHOUSE_URL or password stays in the environment, not on disk)
ATTACHED_FIELDS = (
    "kafka_bootstrap_servers",
    "kafka_producer_max_batch_size",
    "chdb_path",
    "kafka_topic_prefix",
    "kafka_partitions",
    "worker_app_id",
)


def write_run_file(s: Settings, path: Path = RUN_FILE) -> Path:
    env = s.to_env()
    record: dict[str, Any] = {
        "pid": os.getpid(),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "settings": {name.upper(): env[name.upper()] for name in ATTACHED_FIELDS},
    }
    record["settings"]["chdb_path".upper()] = str(s.chdb_path.resolve())  # valid from any folder
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(orjson.dumps(record, option=orjson.OPT_INDENT_2))
    tmp.replace(path)  # a reader never sees half a file
    return path


def remove_run_file(path: Path = RUN_FILE) -> None:
    """Remove the run-file if it is this process's (a second run in the folder may have its own)."""
    record = read_run_file(path, check_alive=False)
    if record is not None and record["pid"] != os.getpid():
        return
    path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_run_file(path: Path = RUN_FILE, *, check_alive: bool = True) -> dict[str, Any] | None:
    """The run-file's record, or None when there
    is none, it is unreadable, or its process is gone."""
    try:
        record = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    if (
        not isinstance(record, dict)
        or not isinstance(record.get("pid"), int)
        or not isinstance(record.get("settings"), dict)
    ):
        return None
    if check_alive and not _alive(record["pid"]):
        return None
    return record


def attached_settings(
    environ: dict[str, str] | None = None, path: Path = RUN_FILE
) -> tuple[Settings, dict[str, Any] | None]:
    """The settings of a client command: the environment's, and when it names no Kafka cluster and
    an embedded run is alive here, that run's broker and chDB (the environment still wins for
    every variable it sets). Returns the settings and the run-file record it used, if any."""
    source = dict(os.environ if environ is None else environ)
    own = Settings.from_env(source)
    if not own.embedded_broker:
        return own, None
    record = read_run_file(path)
    if not record:
        return own, None
    merged = {
        **{k: str(v) for k, v in record["settings"].items()},
        **{k: v for k, v in source.items() if v},
    }
    return Settings.from_env(merged), record
