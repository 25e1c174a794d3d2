"""All configuration, in one place, from environment variables with documented defaults.

Each setting is declared once, as a field of ``Settings`` with its type, default and
documentation (``setting(...)``); the variable's name is the field's name in capitals. What is
read from the environment, what a child process is given (``to_env``) and README's table
(``SETTINGS``, checked by a test) all come from those declarations.

The defaults are the *embedded* setup: a local Tansu broker the project starts itself and an
embedded chDB directory. Production sets ``KAFKA_BOOTSTRAP_SERVERS`` and ``CLICKHOUSE_URL``;
no other code changes. Settings that only exist to work around the local broker's quirks
(``KAFKA_PRODUCER_MAX_BATCH_SIZE``) are applied by the embedded launcher, never by default.
"""

from __future__ import annotations

import os
import re
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit


def setting(
    default: Any,
    doc: str,
    *,
    minimum: int = 1,
    maximum: int | None = None,
    choices: tuple[str, ...] = (),
    upper: bool = False,
    secret: bool = False,
    file_doc: str = "",
    zero: str = "",
) -> Any:
    """One setting: its default, its documentation and how its value is checked. ``file_doc``
    also declares NAME_FILE, a file holding the value (a mounted secret); ``zero`` says what 0
    means where 0 is allowed."""
    meta = {
        "doc": doc,
        "minimum": minimum,
        "maximum": maximum,
        "choices": choices,
        "upper": upper,
        "file_doc": file_doc,
        "zero": zero,
    }
    return field(default=default, repr=not secret, metadata=meta)


@dataclass(frozen=True)
class Topics:
    """Topic names; every one starts with the configured prefix."""

    prefix: str = "billing."

    @property
    def events(self) -> str:  # usage + account events, keyed by main account id
        return f"{self.prefix}events"

    @property
    def deductions(self) -> str:
        return f"{self.prefix}deductions"

    @property
    def settlements(self) -> str:
        return f"{self.prefix}settlements"

    @property
    def alerts(self) -> str:
        return f"{self.prefix}alerts"

    @property
    def arrears_alerts(self) -> str:
        return f"{self.prefix}alerts.arrears"

    @property
    def account_status(self) -> str:  # compacted
        return f"{self.prefix}account-status"

    @property
    def account_balances(self) -> str:
        return f"{self.prefix}account-balances"

    @property
    def dead_letters(self) -> str:
        return f"{self.prefix}dead-letters"

    @property
    def dead_letters_redriven(self) -> str:  # compacted: what `rating dlq redrive` has sent again
        return f"{self.prefix}dead-letters.redriven"

    @property
    def usage_per_minute(self) -> str:
        return f"{self.prefix}usage-per-minute"

    def all(self) -> list[str]:
        return [
            self.events,
            self.deductions,
            self.settlements,
            self.alerts,
            self.arrears_alerts,
            self.account_status,
            self.account_balances,
            self.dead_letters,
            self.dead_letters_redriven,
            self.usage_per_minute,
        ]


@dataclass(frozen=True)
class Settings:
    kafka_bootstrap_servers: str = setting(
        "", "host:port list of the Kafka cluster; empty = start an embedded Tansu broker"
    )
    kafka_security_protocol: str = setting(
        "PLAINTEXT", "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL"
    )
    kafka_sasl_mechanism: str = setting(
        "", "SCRAM-SHA-256, SCRAM-SHA-512 or PLAIN when SASL is used"
    )
    kafka_sasl_username: str = setting("", "SASL user name")
    kafka_sasl_password: str = setting(
        "",
        "SASL password (secret: never logged)",
        secret=True,
        file_doc=(
            "path of a file holding the SASL password (a mounted credentials file), instead "
            "of KAFKA_SASL_PASSWORD"
        ),
    )
    kafka_ssl_cafile: str = setting("", "CA bundle for TLS to the brokers")
    kafka_topic_prefix: str = setting("billing.", "prefix of every topic name")
    kafka_partitions: int = setting(
        4, "partitions of the input and output topics (created at start)"
    )
    kafka_replication_factor: int = setting(1, "replication factor of created topics")
    kafka_min_insync_replicas: int = setting(
        1,
        "min.insync.replicas of created topics: an acks=all write is acknowledged once this many "
        "replicas hold it (production: 2 with replication 3)",
    )
    kafka_fetch_max_wait_ms: int = setting(
        20,
        "longest a fetch of the worker and the sink waits at the broker for data (faust "
        "hard-codes 1500, aiokafka 500; a broker that holds every fetch that long, as the "
        "embedded one does, adds it to each event's latency); lower means more idle fetch requests",
    )
    kafka_producer_max_batch_size: int | None = setting(
        None, "batch bytes of the worker's changelog producer (16: one record per batch)"
    )
    kafka_end_offsets_from_last_batch: bool = setting(
        False,
        "table recovery takes each changelog's end from a read of its last record batch, not "
        "from ListOffsets alone (the embedded broker sets it: Tansu answers the last batch's "
        "first offset + 1)",
    )
    local_broker_max_memory_mb: int = setting(
        0,
        "embedded broker only: `rating run` stops cleanly once the broker's resident memory "
        "reaches this many MB (0: half of the machine's memory), or the machine has less than "
        "1 GiB available; the embedded broker keeps every record in memory",
        minimum=0,
        zero="half of the machine's memory",
    )
    worker_app_id: str = setting(
        "billing-rating", "faust application id (consumer group and changelog names)"
    )
    worker_data_dir: Path = setting(Path(".run/worker"), "faust data directory (table stores)")
    worker_store: str = setting("memory://", "faust table store: memory:// or rocksdb://")
    worker_batch_max: int = setting(500, "max events handled per state write round")
    worker_batch_within_ms: int = setting(
        20,
        "longest a round keeps taking events after its first one, milliseconds (it starts "
        "earlier once WORKER_BATCH_IDLE_MS pass without a new event, or at WORKER_BATCH_MAX)",
    )
    worker_batch_idle_ms: int = setting(
        1,
        "a round starts once no event has come for this long, milliseconds: the events queued "
        "behind the last round are in",
        minimum=1,
    )
    worker_tick_interval_ms: int = setting(
        5000, "how often idle partitions are ticked so periods close and deadlines fire"
    )
    worker_standby_replicas: int = setting(
        0,
        "standby copies of each table partition kept warm on other workers (faust "
        "table_standby_replicas); production: 1",
        minimum=0,
        zero="no standby",
    )
    worker_session_timeout_ms: int = setting(
        6000,
        "consumer-group session timeout: a worker silent this long is dropped from the group "
        "(local: 6000; production: 45000)",
    )
    worker_heartbeat_interval_ms: int = setting(
        1000,
        "consumer-group heartbeat interval, at most a third of the session timeout (local: 1000; "
        "production: 3000)",
    )
    worker_rebalance_timeout_ms: int = setting(
        5000,
        "how long the group waits for members to rejoin in a rebalance (local: 5000; production: "
        "60000)",
    )
    worker_rocksdb_cache_mb: int = setting(
        16, "RocksDB block cache per table partition store, MiB (faust's default is 2048)"
    )
    worker_rocksdb_write_buffer_mb: int = setting(
        8,
        "RocksDB write buffer per table partition store, MiB, two of them at most (faust's "
        "default is 3 x 64)",
    )
    worker_stall_timeout_s: int = setting(
        120,
        "a worker that owns partitions with messages waiting and makes no progress for this long "
        "exits (code 4) to be restarted; 0 = never",
        minimum=0,
        zero="never",
    )
    settlement_allowed_lateness_s: int = setting(
        300, "a period closes when stream time passes its end plus this"
    )
    max_event_ahead_s: int = setting(
        600,
        "an event dated more than this past the wall clock is dead-lettered (event_time_in_future)",
    )
    worker_idle_advance_s: int = setting(
        60,
        "a partition that accepted nothing for this long (wall clock) has its stream time "
        "advanced with the wall clock, so its last hour settles; 0 = never",
        minimum=0,
        zero="never",
    )
    dedupe_horizon_s: int = setting(
        3_024_000,
        "event ids are remembered this long in event time (35 days); an older event is "
        "dead-lettered (event_too_old)",
    )
    clickhouse_url: str = setting(
        "", "http(s)://user@host:8123/db of a ClickHouse server; empty = embedded chDB", secret=True
    )
    clickhouse_password: str = setting(
        "",
        "ClickHouse password (secret: never logged)",
        secret=True,
        file_doc=(
            "path of a file holding the ClickHouse password (a mounted credentials file), "
            "instead of CLICKHOUSE_PASSWORD"
        ),
    )
    chdb_path: Path = setting(Path(".run/chdb"), "directory of the embedded chDB database")
    clickhouse_cluster: str = setting(
        "",
        "name of a ClickHouse cluster (remote_servers): `rating migrate` creates Replicated "
        "tables sharded by main account behind Distributed ones, ON CLUSTER, and the sink "
        "inserts synchronously; empty = one server or embedded chDB, the DDL as written",
    )
    sink_batch_max: int = setting(
        20000,
        "records per ClickHouse insert: a batch is inserted when it holds this many or "
        "SINK_BATCH_WITHIN_MS have passed",
    )
    sink_batch_within_ms: int = setting(
        200,
        "time bound of an insert batch, milliseconds (production: 1000, so light traffic makes "
        "fewer, larger parts)",
    )
    sink_group_id: str = setting("billing-clickhouse-sink", "consumer group of the ClickHouse sink")
    sink_apply_migrations: bool = setting(
        True,
        "apply pending ClickHouse migrations when the sink starts (needs DDL rights); false: only "
        "check schema_migrations and stop (exit 3) if one is missing, for a sink user without DDL "
        "rights while the init step runs `rating migrate` (production)",
    )
    sink_archive_events: bool = setting(
        True,
        "also keep every input message in ClickHouse (events_archive), for re-rating beyond Kafka "
        "retention",
    )
    profiles_dir: Path | None = setting(
        None, "folder of price-book profiles; empty = the profiles shipped in streams/profiles"
    )
    metrics_host: str = setting(
        "127.0.0.1", "address of the /metrics, /healthz and /readyz endpoints (loopback unless set)"
    )
    metrics_port: int = setting(
        9464, "port of those endpoints; 0 = none", minimum=0, zero="no endpoint", maximum=65535
    )
    log_format: str = setting("text", "text or json", choices=("text", "json"))
    log_level: str = setting("INFO", "logging level", upper=True)

    @property
    def topics(self) -> Topics:
        return Topics(prefix=self.kafka_topic_prefix)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        # Only the declared settings are read: other variables (KAFKA_HOME of a Kafka install,
        # CLICKHOUSE_USER of a client, ...) belong to other programs and are no error here.
        source = os.environ if env is None else env
        hints = typing.get_type_hints(cls)
        values = {
            f.name: _read(f.name.upper(), hints[f.name], f.metadata, source) for f in fields(cls)
        }
        if values["worker_heartbeat_interval_ms"] * 3 > values["worker_session_timeout_ms"]:
            raise ConfigError(
                "WORKER_HEARTBEAT_INTERVAL_MS must be at most a third of WORKER_SESSION_TIMEOUT_MS"
            )
        if values["kafka_min_insync_replicas"] > values["kafka_replication_factor"]:
            raise ConfigError(
                "KAFKA_MIN_INSYNC_REPLICAS must not exceed KAFKA_REPLICATION_FACTOR: acks=all "
                "writes would all fail"
            )
        if values["clickhouse_cluster"] and not values["clickhouse_url"]:
            raise ConfigError("CLICKHOUSE_CLUSTER needs CLICKHOUSE_URL: embedded chDB is one node")
        if values["clickhouse_cluster"] and not re.fullmatch(
            r"[A-Za-z0-9_][A-Za-z0-9_.-]*", values["clickhouse_cluster"]
        ):
            raise ConfigError(
                f"CLICKHOUSE_CLUSTER={values['clickhouse_cluster']!r} must be a cluster name "
                "(letters, digits, _ . -)"
            )
        return cls(**values)

    @property
    def embedded_broker(self) -> bool:
        return not self.kafka_bootstrap_servers

    @property
    def embedded_clickhouse(self) -> bool:
        return not self.clickhouse_url

    def to_env(self) -> dict[str, str]:
        """The environment that reproduces these settings in a child process."""
        out = {}
        for f in fields(self):
            out[f.name.upper()] = _text(getattr(self, f.name))
            if f.metadata["file_doc"]:
                out[f"{f.name.upper()}_FILE"] = ""  # the value itself is passed on
        return out

    def secrets(self) -> list[str]:
        """Every form a secret may take in a message: as configured, and URL-decoded."""
        url_password = None
        if self.clickhouse_url:
            try:
                url_password = urlsplit(self.clickhouse_url).password
            except ValueError:
                url_password = None
        found = [s for s in (self.kafka_sasl_password, self.clickhouse_password, url_password) if s]
        return sorted({*found, *(unquote(s) for s in found)}, key=len, reverse=True)

    def clickhouse_dsn_for_display(self) -> str:
        if self.embedded_clickhouse:
            return f"chdb://{self.chdb_path.resolve()}"
        parts = urlsplit(self.clickhouse_url)
        netloc = parts.hostname or ""
        if parts.port:
            netloc += f":{parts.port}"
        if parts.username:
            netloc = f"{parts.username}@{netloc}"
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the variable and the fix."""


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _read(name: str, kind: Any, meta: Any, env: Any) -> Any:
    """The value of one declared setting from ``env``, checked against its declaration."""
    raw = env.get(name)
    if meta["file_doc"]:
        raw = _from_file(name, raw, env.get(f"{name}_FILE"))
    if raw is None or (raw == "" and kind in (int | None, Path | None)):
        return _default_of(name)
    if kind is bool:
        text = raw.strip().lower()
        if text not in ("true", "false", "1", "0", "yes", "no"):
            raise ConfigError(f"{name}={raw!r} must be true or false")
        return text in ("true", "1", "yes")
    if kind in (int, int | None):
        return _integer(name, raw, meta)
    if kind in (Path, Path | None):
        return Path(raw)
    if meta["choices"] and raw not in meta["choices"]:
        raise ConfigError(
            f"{name}={raw!r} must be one of {', '.join(repr(c) for c in meta['choices'])}"
        )
    return raw.upper() if meta["upper"] else raw


def _integer(name: str, raw: str, meta: Any) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None
    minimum, maximum = meta["minimum"], meta["maximum"]
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"from {minimum} to {maximum}" if maximum is not None else f"at least {minimum}"
        zero = f" (0 = {meta['zero']})" if meta["zero"] else ""
        raise ConfigError(f"{name}={raw!r} must be {bound}{zero}")
    return value


def _from_file(name: str, raw: str | None, path: str | None) -> str | None:
    """NAME, or the content of the file NAME_FILE names (one trailing newline dropped)."""
    if not path:
        return raw
    if raw:
        raise ConfigError(f"set {name} or {name}_FILE, not both")
    try:
        return Path(path).read_text(encoding="utf-8").removesuffix("\n").removesuffix("\r")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"{name}_FILE={path!r} cannot be read: {getattr(exc, 'strerror', None) or exc}"
        ) from None


def _default_of(name: str) -> Any:
    return next(f.default for f in fields(Settings) if f.name.upper() == name)


def _declared() -> dict[str, tuple[str, str]]:
    out: dict[str, tuple[str, str]] = {}
    for f in fields(Settings):
        out[f.name.upper()] = (_text(f.default), f.metadata["doc"])
        if f.metadata["file_doc"]:
            out[f"{f.name.upper()}_FILE"] = ("", f.metadata["file_doc"])
    return out


# name -> (default as the variable would hold it, documentation): README's table is checked against
# it.
SETTINGS: dict[str, tuple[str, str]] = _declared()
