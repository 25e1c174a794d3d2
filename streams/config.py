"""All configuration, in one place, from environment variables with documented defaults.

The defaults are the *embedded* setup: a local Tansu broker the project starts itself and an
embedded chDB directory. Production sets ``KAFKA_BOOTSTRAP_SERVERS`` and ``CLICKHOUSE_URL``;
no other code changes. Settings that only exist to work around the local broker's quirks
(``KAFKA_PRODUCER_MAX_BATCH_SIZE``) are applied by the embedded launcher, never by default.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

# Integer settings for which 0 is a documented value (all others are at least 1): what 0 means.
ZERO_MEANS = {"WORKER_STALL_TIMEOUT_S": "0 = never", "WORKER_IDLE_ADVANCE_S": "0 = never"}
ZERO_ALLOWED = {name: 0 for name in ZERO_MEANS}

# name -> (default, documentation). README's configuration table is checked against this.
SETTINGS: dict[str, tuple[str, str]] = {
    "KAFKA_BOOTSTRAP_SERVERS": ("", "host:port list of the Kafka cluster; empty = start an embedded Tansu broker"),
    "KAFKA_SECURITY_PROTOCOL": ("PLAINTEXT", "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL"),
    "KAFKA_SASL_MECHANISM": ("", "SCRAM-SHA-256, SCRAM-SHA-512 or PLAIN when SASL is used"),
    "KAFKA_SASL_USERNAME": ("", "SASL user name"),
    "KAFKA_SASL_PASSWORD": ("", "SASL password (secret: never logged)"),
    "KAFKA_SASL_PASSWORD_FILE": ("", "path of a file holding the SASL password (a mounted credentials file), instead of KAFKA_SASL_PASSWORD"),
    "KAFKA_SSL_CAFILE": ("", "CA bundle for TLS to the brokers"),
    "KAFKA_TOPIC_PREFIX": ("billing.", "prefix of every topic name"),
    "KAFKA_PARTITIONS": ("4", "partitions of the input and output topics (created at start)"),
    "KAFKA_REPLICATION_FACTOR": ("1", "replication factor of created topics"),
    "KAFKA_MIN_INSYNC_REPLICAS": ("1", "min.insync.replicas of created topics: an acks=all write is acknowledged once this many replicas hold it (production: 2 with replication 3)"),
    "KAFKA_PRODUCER_MAX_BATCH_SIZE": ("", "producer batch bytes; the embedded broker sets 16 (Tansu high-water-mark bug)"),
    "WORKER_APP_ID": ("billing-rating", "faust application id (consumer group and changelog names)"),
    "WORKER_DATA_DIR": (".run/worker", "faust data directory (table stores)"),
    "WORKER_STORE": ("memory://", "faust table store: memory:// or rocksdb://"),
    "WORKER_BATCH_MAX": ("500", "max events handled per state write round"),
    "WORKER_BATCH_WITHIN_MS": ("20", "max wait to fill a round, milliseconds"),
    "WORKER_TICK_INTERVAL_MS": ("5000", "how often idle partitions are ticked so periods close and deadlines fire"),
    "WORKER_STANDBY_REPLICAS": ("0", "standby copies of each table partition kept warm on other workers (faust table_standby_replicas); production: 1"),
    "WORKER_SESSION_TIMEOUT_MS": ("6000", "consumer-group session timeout: a worker silent this long is dropped from the group (local: 6000; production: 45000)"),
    "WORKER_HEARTBEAT_INTERVAL_MS": ("1000", "consumer-group heartbeat interval, at most a third of the session timeout (local: 1000; production: 3000)"),
    "WORKER_REBALANCE_TIMEOUT_MS": ("5000", "how long the group waits for members to rejoin in a rebalance (local: 5000; production: 60000)"),
    "WORKER_ROCKSDB_CACHE_MB": ("16", "RocksDB block cache per table partition store, MiB (faust's default is 2048)"),
    "WORKER_ROCKSDB_WRITE_BUFFER_MB": ("8", "RocksDB write buffer per table partition store, MiB, two of them at most (faust's default is 3 x 64)"),
    "WORKER_STALL_TIMEOUT_S": ("120", "a worker that owns partitions with messages waiting and makes no progress for this long exits (code 4) to be restarted; 0 = never"),
    "SETTLEMENT_ALLOWED_LATENESS_S": ("300", "a period closes when stream time passes its end plus this"),
    "MAX_EVENT_AHEAD_S": ("600", "an event dated more than this past the wall clock is dead-lettered (event_time_in_future)"),
    "WORKER_IDLE_ADVANCE_S": ("60", "a partition that accepted nothing for this long (wall clock) has its stream time advanced with the wall clock, so its last hour settles; 0 = never"),
    "DEDUPE_HORIZON_S": ("3024000", "event ids are remembered this long in event time (35 days); an older event is dead-lettered (event_too_old)"),
    "CLICKHOUSE_URL": ("", "http(s)://user@host:8123/db of a ClickHouse server; empty = embedded chDB"),
    "CLICKHOUSE_PASSWORD": ("", "ClickHouse password (secret: never logged)"),
    "CLICKHOUSE_PASSWORD_FILE": ("", "path of a file holding the ClickHouse password (a mounted credentials file), instead of CLICKHOUSE_PASSWORD"),
    "CHDB_PATH": (".run/chdb", "directory of the embedded chDB database"),
    "SINK_BATCH_MAX": ("5000", "max records per ClickHouse insert"),
    "SINK_BATCH_WITHIN_MS": ("200", "max wait to fill an insert batch, milliseconds"),
    "SINK_GROUP_ID": ("billing-clickhouse-sink", "consumer group of the ClickHouse sink"),
    "SINK_ARCHIVE_EVENTS": ("true", "also keep every input message in ClickHouse (events_archive), for re-rating beyond Kafka retention"),
    "PROFILES_DIR": ("", "folder of price-book profiles; empty = the profiles shipped in streams/profiles"),
    "METRICS_HOST": ("127.0.0.1", "address of the /metrics, /healthz and /readyz endpoints (loopback unless set)"),
    "METRICS_PORT": ("9464", "port of those endpoints; 0 = none"),
    "LOG_FORMAT": ("text", "text or json"),
    "LOG_LEVEL": ("INFO", "logging level"),
}


def _env(name: str, env: dict[str, str]) -> str:
    return env.get(name, SETTINGS[name][0])


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
            self.dead_letters,
            self.dead_letters_redriven,
            self.usage_per_minute,
        ]


@dataclass(frozen=True)
class Settings:
    kafka_bootstrap_servers: str = ""
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str = ""
    kafka_sasl_username: str = ""
    kafka_sasl_password: str = field(default="", repr=False)
    kafka_ssl_cafile: str = ""
    kafka_partitions: int = 4
    kafka_replication_factor: int = 1
    kafka_min_insync_replicas: int = 1
    kafka_producer_max_batch_size: int | None = None
    topics: Topics = field(default_factory=Topics)
    worker_app_id: str = "billing-rating"
    worker_data_dir: Path = Path(".run/worker")
    worker_store: str = "memory://"
    worker_batch_max: int = 500
    worker_batch_within_ms: int = 20
    worker_tick_interval_ms: int = 5000
    worker_standby_replicas: int = 0
    worker_session_timeout_ms: int = 6000
    worker_heartbeat_interval_ms: int = 1000
    worker_rebalance_timeout_ms: int = 5000
    worker_rocksdb_cache_mb: int = 16
    worker_rocksdb_write_buffer_mb: int = 8
    worker_stall_timeout_s: int = 120
    settlement_allowed_lateness_s: int = 300
    dedupe_horizon_s: int = 3_024_000
    max_event_ahead_s: int = 600
    worker_idle_advance_s: int = 60
    clickhouse_url: str = field(default="", repr=False)  # may carry user:password
    clickhouse_password: str = field(default="", repr=False)
    chdb_path: Path = Path(".run/chdb")
    sink_batch_max: int = 5000
    sink_batch_within_ms: int = 200
    sink_group_id: str = "billing-clickhouse-sink"
    sink_archive_events: bool = True
    profiles_dir: Path | None = None
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9464
    log_format: str = "text"
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "Settings":
        # Only the declared settings are read: other variables (KAFKA_HOME of a Kafka install,
        # CLICKHOUSE_USER of a client, ...) belong to other programs and are no error here.
        env = {k: v for k, v in (os.environ if env is None else env).items() if k in SETTINGS}

        def integer(name: str) -> int:
            raw = _env(name, env)
            try:
                value = int(raw)
            except ValueError:
                raise ConfigError(f"{name}={raw!r} is not an integer") from None
            minimum = ZERO_ALLOWED.get(name, 1)
            if value < minimum:
                raise ConfigError(f"{name}={raw!r} must be at least {minimum}" + (f" ({ZERO_MEANS[name]})" if minimum == 0 else ""))
            return value

        def boolean(name: str) -> bool:
            raw = _env(name, env).strip().lower()
            if raw not in ("true", "false", "1", "0", "yes", "no"):
                raise ConfigError(f"{name}={raw!r} must be true or false")
            return raw in ("true", "1", "yes")

        def password(name: str) -> str:
            """NAME, or the content of the file NAME_FILE names (one trailing newline dropped)."""
            path = _env(f"{name}_FILE", env)
            if not path:
                return _env(name, env)
            if _env(name, env):
                raise ConfigError(f"set {name} or {name}_FILE, not both")
            try:
                return Path(path).read_text(encoding="utf-8").removesuffix("\n").removesuffix("\r")
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"{name}_FILE={path!r} cannot be read: {getattr(exc, 'strerror', None) or exc}") from None

        raw_port = _env("METRICS_PORT", env)
        if not raw_port.isdigit() or int(raw_port) > 65535:
            raise ConfigError(f"METRICS_PORT={raw_port!r} must be a port number (0 = no endpoint)")
        batch = _env("KAFKA_PRODUCER_MAX_BATCH_SIZE", env)
        profiles = _env("PROFILES_DIR", env)
        log_format = _env("LOG_FORMAT", env)
        standby = _env("WORKER_STANDBY_REPLICAS", env)
        if not standby.isdigit():
            raise ConfigError(f"WORKER_STANDBY_REPLICAS={standby!r} must be 0 or more")
        if integer("WORKER_HEARTBEAT_INTERVAL_MS") * 3 > integer("WORKER_SESSION_TIMEOUT_MS"):
            raise ConfigError("WORKER_HEARTBEAT_INTERVAL_MS must be at most a third of WORKER_SESSION_TIMEOUT_MS")
        if integer("KAFKA_MIN_INSYNC_REPLICAS") > integer("KAFKA_REPLICATION_FACTOR"):
            raise ConfigError("KAFKA_MIN_INSYNC_REPLICAS must not exceed KAFKA_REPLICATION_FACTOR: acks=all writes would all fail")
        if log_format not in ("text", "json"):
            raise ConfigError(f"LOG_FORMAT={log_format!r} must be 'text' or 'json'")
        return cls(
            kafka_bootstrap_servers=_env("KAFKA_BOOTSTRAP_SERVERS", env),
            kafka_security_protocol=_env("KAFKA_SECURITY_PROTOCOL", env),
            kafka_sasl_mechanism=_env("KAFKA_SASL_MECHANISM", env),
            kafka_sasl_username=_env("KAFKA_SASL_USERNAME", env),
            kafka_sasl_password=password("KAFKA_SASL_PASSWORD"),
            kafka_ssl_cafile=_env("KAFKA_SSL_CAFILE", env),
            kafka_partitions=integer("KAFKA_PARTITIONS"),
            kafka_replication_factor=integer("KAFKA_REPLICATION_FACTOR"),
            kafka_min_insync_replicas=integer("KAFKA_MIN_INSYNC_REPLICAS"),
            kafka_producer_max_batch_size=integer("KAFKA_PRODUCER_MAX_BATCH_SIZE") if batch else None,
            topics=Topics(prefix=_env("KAFKA_TOPIC_PREFIX", env)),
            worker_app_id=_env("WORKER_APP_ID", env),
            worker_data_dir=Path(_env("WORKER_DATA_DIR", env)),
            worker_store=_env("WORKER_STORE", env),
            worker_batch_max=integer("WORKER_BATCH_MAX"),
            worker_batch_within_ms=integer("WORKER_BATCH_WITHIN_MS"),
            worker_tick_interval_ms=integer("WORKER_TICK_INTERVAL_MS"),
            worker_standby_replicas=int(standby),
            worker_session_timeout_ms=integer("WORKER_SESSION_TIMEOUT_MS"),
            worker_heartbeat_interval_ms=integer("WORKER_HEARTBEAT_INTERVAL_MS"),
            worker_rebalance_timeout_ms=integer("WORKER_REBALANCE_TIMEOUT_MS"),
            worker_rocksdb_cache_mb=integer("WORKER_ROCKSDB_CACHE_MB"),
            worker_rocksdb_write_buffer_mb=integer("WORKER_ROCKSDB_WRITE_BUFFER_MB"),
            worker_stall_timeout_s=integer("WORKER_STALL_TIMEOUT_S"),
            settlement_allowed_lateness_s=integer("SETTLEMENT_ALLOWED_LATENESS_S"),
            dedupe_horizon_s=integer("DEDUPE_HORIZON_S"),
            max_event_ahead_s=integer("MAX_EVENT_AHEAD_S"),
            worker_idle_advance_s=integer("WORKER_IDLE_ADVANCE_S"),
            clickhouse_url=_env("CLICKHOUSE_URL", env),
            clickhouse_password=password("CLICKHOUSE_PASSWORD"),
            chdb_path=Path(_env("CHDB_PATH", env)),
            sink_batch_max=integer("SINK_BATCH_MAX"),
            sink_batch_within_ms=integer("SINK_BATCH_WITHIN_MS"),
            sink_group_id=_env("SINK_GROUP_ID", env),
            sink_archive_events=boolean("SINK_ARCHIVE_EVENTS"),
            profiles_dir=Path(profiles) if profiles else None,
            metrics_host=_env("METRICS_HOST", env),
            metrics_port=int(raw_port),
            log_format=log_format,
            log_level=_env("LOG_LEVEL", env).upper(),
        )

    @property
    def embedded_broker(self) -> bool:
        return not self.kafka_bootstrap_servers

    @property
    def embedded_clickhouse(self) -> bool:
        return not self.clickhouse_url

    def to_env(self) -> dict[str, str]:
        """The environment that reproduces these settings in a child process."""
        out = {
            "KAFKA_BOOTSTRAP_SERVERS": self.kafka_bootstrap_servers,
            "KAFKA_SECURITY_PROTOCOL": self.kafka_security_protocol,
            "KAFKA_SASL_MECHANISM": self.kafka_sasl_mechanism,
            "KAFKA_SASL_USERNAME": self.kafka_sasl_username,
            "KAFKA_SASL_PASSWORD": self.kafka_sasl_password,
            "KAFKA_SASL_PASSWORD_FILE": "",  # the password itself is passed on
            "KAFKA_SSL_CAFILE": self.kafka_ssl_cafile,
            "KAFKA_TOPIC_PREFIX": self.topics.prefix,
            "KAFKA_PARTITIONS": str(self.kafka_partitions),
            "KAFKA_REPLICATION_FACTOR": str(self.kafka_replication_factor),
            "KAFKA_MIN_INSYNC_REPLICAS": str(self.kafka_min_insync_replicas),
            "KAFKA_PRODUCER_MAX_BATCH_SIZE": str(self.kafka_producer_max_batch_size or ""),
            "WORKER_APP_ID": self.worker_app_id,
            "WORKER_DATA_DIR": str(self.worker_data_dir),
            "WORKER_STORE": self.worker_store,
            "WORKER_BATCH_MAX": str(self.worker_batch_max),
            "WORKER_BATCH_WITHIN_MS": str(self.worker_batch_within_ms),
            "WORKER_TICK_INTERVAL_MS": str(self.worker_tick_interval_ms),
            "WORKER_STANDBY_REPLICAS": str(self.worker_standby_replicas),
            "WORKER_SESSION_TIMEOUT_MS": str(self.worker_session_timeout_ms),
            "WORKER_HEARTBEAT_INTERVAL_MS": str(self.worker_heartbeat_interval_ms),
            "WORKER_REBALANCE_TIMEOUT_MS": str(self.worker_rebalance_timeout_ms),
            "WORKER_ROCKSDB_CACHE_MB": str(self.worker_rocksdb_cache_mb),
            "WORKER_ROCKSDB_WRITE_BUFFER_MB": str(self.worker_rocksdb_write_buffer_mb),
            "WORKER_STALL_TIMEOUT_S": str(self.worker_stall_timeout_s),
            "SETTLEMENT_ALLOWED_LATENESS_S": str(self.settlement_allowed_lateness_s),
            "DEDUPE_HORIZON_S": str(self.dedupe_horizon_s),
            "MAX_EVENT_AHEAD_S": str(self.max_event_ahead_s),
            "WORKER_IDLE_ADVANCE_S": str(self.worker_idle_advance_s),
            "CLICKHOUSE_URL": self.clickhouse_url,
            "CLICKHOUSE_PASSWORD": self.clickhouse_password,
            "CLICKHOUSE_PASSWORD_FILE": "",
            "CHDB_PATH": str(self.chdb_path),
            "SINK_BATCH_MAX": str(self.sink_batch_max),
            "SINK_BATCH_WITHIN_MS": str(self.sink_batch_within_ms),
            "SINK_GROUP_ID": self.sink_group_id,
            "SINK_ARCHIVE_EVENTS": "true" if self.sink_archive_events else "false",
            "PROFILES_DIR": str(self.profiles_dir or ""),
            "METRICS_HOST": self.metrics_host,
            "METRICS_PORT": str(self.metrics_port),
            "LOG_FORMAT": self.log_format,
            "LOG_LEVEL": self.log_level,
        }
        assert set(out) == set(SETTINGS), "to_env out of step with SETTINGS"
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

