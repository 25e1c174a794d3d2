"""The cluster form of the migrations (CLICKHOUSE_CLUSTER, streams/sink/cluster.py): every statement
of every migration is transformed, checked structurally, replayed on a model of the catalog, and
parsed by ClickHouse's own parser (chDB, EXPLAIN AST). No cluster runs here: what a cluster does
with the DDL is not tested."""

import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from streams.config import ConfigError, Settings
from streams.sink.clickhouse import MIGRATIONS_DIR, _statements, migrate
from streams.sink.cluster import SCHEMA_MIGRATIONS, SHARDED, cluster_statements

CLUSTER = "billing"
ROOT = Path(__file__).resolve().parents[2]
ENGINE = re.compile(r"ENGINE\s*=\s*(\w+)(?:\((.*?)\))?\s*(?:PARTITION|ORDER|SETTINGS|TTL|$)", re.S)


def transformed() -> list[tuple[str, str, list[str]]]:
    return [
        (path.name, statement, cluster_statements(statement, CLUSTER))
        for path in sorted(MIGRATIONS_DIR.glob("*.sql"))
        for statement in _statements(path.read_text())
    ]


def created_table(sql: str) -> str | None:
    found = re.match(r"CREATE TABLE (?:IF NOT EXISTS )?(\w+)", sql)
    return found[1] if found else None


def test_every_statement_of_every_migration_has_a_cluster_form():
    for name, original, forms in transformed():
        assert forms, (name, original[:80])
        for sql in forms:
            if sql.startswith("SELECT"):
                assert sql == original  # a check, as written
                continue
            if sql.startswith("INSERT"):
                assert sql.endswith("insert_distributed_sync = 1"), (name, sql[:80])
                continue
            assert f"ON CLUSTER '{CLUSTER}'" in sql, (name, sql[:120])
            table = created_table(sql)
            engine = ENGINE.search(sql)
            if table is None or engine is None:
                continue
            kind, args = engine[1], engine[2] or ""
            if kind.endswith("MergeTree"):
                # every MergeTree is replicated: per shard when sharded, on every node otherwise
                assert kind.startswith("Replicated"), (name, sql[:120])
                shard = "{shard}" if table.endswith("_local") else "all"
                assert args.startswith(f"'/clickhouse/tables/{shard}/{{database}}/{table}', "), args
                assert "'{replica}'" in args
            elif kind == "Distributed":
                assert args == (
                    f"'{CLUSTER}', currentDatabase(), {table}_local, cityHash64(main_account_id)"
                )


def catalog() -> dict[str, str]:
    """Replays the transformed DDL on a model of the catalog: table name -> its CREATE."""
    tables: dict[str, str] = {}
    for _, _, forms in transformed():
        for sql in forms:
            table = created_table(sql) or re.match(
                r"CREATE (?:OR REPLACE )?(?:MATERIALIZED )?VIEW (?:IF NOT EXISTS )?(\w+)", sql
            )
            if isinstance(table, re.Match):
                table = table[1]
            if table and (table not in tables or "OR REPLACE" in sql):
                tables[table] = sql
            elif sql.startswith("RENAME TABLE"):
                pairs = re.findall(r"(\w+) TO (\w+)", sql)
                moved = {b: tables.pop(a) for a, b in pairs}
                tables.update(moved)
            elif sql.startswith("DROP"):
                tables.pop(re.findall(r"(\w+) ON CLUSTER", sql)[0], None)
    return tables


def test_the_catalog_after_every_migration_is_sharded_by_account():
    tables = catalog()
    for name in SHARDED:
        # readers and the sink use NAME: a Distributed table over NAME_local, sharded by account
        assert "ENGINE = Distributed(" in tables[name], name
        assert f", {name}_local, cityHash64(main_account_id))" in tables[name]
        assert "ENGINE = Replicated" in tables[f"{name}_local"], name
    assert "ORDER BY (main_account_id, event_time, deduction_id)" in tables["deductions_local"]
    assert "ORDER BY (main_account_id, period_start, settlement_id)" in tables["settlements_local"]
    for stage in ("deductions_new031", "settlements_new032"):
        assert stage not in tables and f"{stage}_local" not in tables
    # the sink lands deductions through the Distributed table; the lookup is filled per shard
    # (migration 040 replaced the view of 009 by deductions_avro_in_mv4, with the sequence column)
    assert re.search(r"deductions_avro_in_mv4 ON CLUSTER 'billing' TO deductions AS", str(tables))
    assert "deductions_avro_in_mv" not in tables
    for view, source in (
        ("id_lookup_deductions_mv", "deductions"),
        ("id_lookup_settlements_mv", "settlements"),
    ):
        assert " TO id_lookup_local AS\n" in tables[view]
        assert f"FROM {source}_local" in tables[view]
    assert "ENGINE = Replicated" in tables["rerate_diffs"]


def test_the_cluster_statements_parse():
    forms = [sql for _, _, statements in transformed() for sql in statements]
    forms += cluster_statements(SCHEMA_MIGRATIONS, CLUSTER)
    script = (
        "import sys, chdb\n"
        "for sql in sys.stdin.read().split('\\x00'):\n"
        "    chdb.query('EXPLAIN AST ' + sql, 'CSV')\n"
        "print('parsed', len(sys.argv))\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", script],
        input="\x00".join(forms),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-2000:]


class RecordingClient:
    def __init__(self):
        self.commands: list[str] = []

    def command(self, sql):
        self.commands.append(sql)

    def query(self, sql):
        return SimpleNamespace(result_rows=[])

    def insert(self, *args, **kwargs):
        pass


def test_migrate_sends_the_files_as_written_without_a_cluster_and_their_cluster_form_with_one():
    raw = [s for p in sorted(MIGRATIONS_DIR.glob("*.sql")) for s in _statements(p.read_text())]
    single = RecordingClient()
    migrate(single)
    assert single.commands == [SCHEMA_MIGRATIONS, *raw]
    clustered = RecordingClient()
    migrate(clustered, cluster=CLUSTER)
    assert clustered.commands == [
        *cluster_statements(SCHEMA_MIGRATIONS, CLUSTER),
        *(form for s in raw for form in cluster_statements(s, CLUSTER)),
    ]
    # the migrations table is the same on every node: replicated, not sharded
    assert (
        "ReplicatedReplacingMergeTree('/clickhouse/tables/all/{database}/schema_migrations'"
        in (clustered.commands[0])
    )


@pytest.mark.parametrize(
    "env,fragment",
    [
        ({"CLICKHOUSE_CLUSTER": "billing"}, "CLICKHOUSE_CLUSTER needs CLICKHOUSE_URL"),
        (
            {"CLICKHOUSE_CLUSTER": "b'; DROP", "CLICKHOUSE_URL": "http://h:8123/db"},
            "must be a cluster name",
        ),
    ],
)
def test_a_cluster_needs_a_server_and_a_plain_name(env, fragment):
    with pytest.raises(ConfigError, match=fragment):
        Settings.from_env(env)
    ok = Settings.from_env({"CLICKHOUSE_CLUSTER": "billing", "CLICKHOUSE_URL": "http://h:8123/db"})
    assert ok.clickhouse_cluster == "billing"


def test_a_statement_without_a_cluster_form_is_refused():
    with pytest.raises(ValueError, match="no cluster form"):
        cluster_statements("OPTIMIZE TABLE deductions FINAL", CLUSTER)
