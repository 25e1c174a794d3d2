"""The faust settings that differ between the local setup and production, derived from
``streams.config.Settings`` in one place so that ``streams/worker/app.py`` only passes them on.

Group membership (``WORKER_SESSION_TIMEOUT_MS``, ``WORKER_HEARTBEAT_INTERVAL_MS``,
``WORKER_REBALANCE_TIMEOUT_MS``): the defaults (6 s, 1 s, 5 s) make the local tests fail over in
seconds. In production a worker's event loop can be busy for longer than 6 s (a rebalance that
rebuilds the index of due accounts decodes every account of every owned partition), the
heartbeats stop meanwhile, and the broker drops a healthy member, which starts the next rebalance:
a rebalance storm. The production manifests use 45 s, 3 s and 60 s.

RocksDB memory (``WORKER_ROCKSDB_CACHE_MB``, ``WORKER_ROCKSDB_WRITE_BUFFER_MB``): faust opens one
RocksDB database per table *partition*, each with its own block cache (2 GiB by default) and up
to three 64 MiB write buffers. A worker holding 12 partitions of three tables could in principle
grow to 36 x 2.2 GiB. With these settings one store is bounded by
``cache + 2 x write buffer`` (16 + 2 x 8 = 32 MiB by default), so a worker's RocksDB memory is at
most ``3 tables x (owned + standby partitions) x that``; see README "Worker state".
"""

from __future__ import annotations

from typing import Any

from streams.config import Settings

MIB = 1024 * 1024
# "accounts", "partition-clocks" and "event-ids" (a test counts the app.Table calls of app.py)
TABLES = 3
MAX_WRITE_BUFFERS = 2


def faust_app_settings(settings: Settings) -> dict[str, Any]:
    """Keyword arguments of ``faust.App`` for group membership and standby replicas."""
    return {
        "broker_session_timeout": settings.worker_session_timeout_ms / 1000,
        "broker_heartbeat_interval": settings.worker_heartbeat_interval_ms / 1000,
        "broker_rebalance_timeout": settings.worker_rebalance_timeout_ms / 1000,
        "table_standby_replicas": settings.worker_standby_replicas,
    }


def table_options(settings: Settings) -> dict[str, Any] | None:
    """``options=`` of ``app.Table`` for the RocksDB store (faust's ``RocksDBOptions``); None for
    the memory store. A new dict on every call: faust pops keys from the one it is given."""
    if not settings.worker_store.startswith("rocksdb"):
        return None
    return {
        "block_cache_size": settings.worker_rocksdb_cache_mb * MIB,
        "block_cache_compressed_size": settings.worker_rocksdb_cache_mb
        * MIB,  # python-rocksdb only
        "write_buffer_size": settings.worker_rocksdb_write_buffer_mb * MIB,
        "max_write_buffer_number": MAX_WRITE_BUFFERS,
        "target_file_size_base": 64 * MIB,
    }


def rocksdb_memory_bound_bytes(settings: Settings, partitions_held: int) -> int:
    """Upper bound of the block caches and write buffers of a worker holding ``partitions_held``
    partitions (active and standby) of each table. Index and filter blocks come on top."""
    per_store = (
        settings.worker_rocksdb_cache_mb
        + MAX_WRITE_BUFFERS * settings.worker_rocksdb_write_buffer_mb
    ) * MIB
    return TABLES * partitions_held * per_store
