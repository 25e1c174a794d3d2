"""The cluster form of the DDL in infra/clickhouse, as a pure text transform (CLICKHOUSE_CLUSTER).

The migrations are written for one server (and chDB). On a cluster each statement becomes:
- a table the pipeline writes per account (``SHARDED``): ``NAME_local`` on every node, a
  ``Replicated*MergeTree`` whose replicas share
  ``/clickhouse/tables/{shard}/{database}/NAME_local``, and ``NAME``, a ``Distributed`` table
  over them sharded by ``cityHash64(main_account_id)``.
  Readers and the sink keep using ``NAME``: every row of an account is on one shard, so ``FINAL``
  and the joins on the account, run on each shard, see every copy of a row;
- any other MergeTree table (rerate_diffs, schema_migrations): replicated on every node of the
  cluster (path ``/clickhouse/tables/all/...``), not sharded;
- every DDL statement runs ``ON CLUSTER``; an ``ALTER`` of a sharded table alters its local table,
  and, for a column, the Distributed table too; a materialized view reading a sharded table reads
  and writes the local tables of its shard; ``RENAME`` renames the local tables and leaves each
  Distributed table pointing at the local table of its name;
- ``INSERT ... SELECT`` (the copies of a re-keying migration) runs through the Distributed tables,
  synchronously (``insert_distributed_sync = 1``), so a later ``RENAME`` finds the rows in place.
"""

from __future__ import annotations

import re
from collections.abc import Callable

SHARDED = frozenset(
    {
        "deductions",
        "settlements",
        "dead_letters",
        "alerts",
        "account_status",
        "account_balances",
        "usage_per_minute",
        "events_archive",
        "id_lookup",
    }
)
SHARDING_KEY = "cityHash64(main_account_id)"
_STAGE = re.compile(r"_(?:new|pre)\d+$")  # deductions_new031, deductions_pre031: a stage of a table
_ENGINE = re.compile(r"ENGINE\s*=\s*(\w*MergeTree)(?:\(([^)]*)\))?", re.I)
_FLAGS = re.I | re.S


def is_sharded(name: str) -> bool:
    return _STAGE.sub("", name) in SHARDED


def local(name: str) -> str:
    return f"{name}_local"


def distributed(name: str, cluster: str) -> str:
    return (
        f"CREATE TABLE IF NOT EXISTS {name} ON CLUSTER '{cluster}' AS {local(name)} "
        f"ENGINE = Distributed('{cluster}', currentDatabase(), {local(name)}, {SHARDING_KEY})"
    )


def replicated(rest: str, table: str, sharded: bool) -> str:
    """``rest`` with its MergeTree engine replicated (the engine's own arguments kept last)."""
    path = f"/clickhouse/tables/{'{shard}' if sharded else 'all'}/{{database}}/{table}"

    def engine(m: re.Match[str]) -> str:
        args = f", {m[2].strip()}" if m[2] and m[2].strip() else ""
        return f"ENGINE = Replicated{m[1]}('{path}', '{{replica}}'{args})"

    return _ENGINE.sub(engine, rest, count=1)


def _create_table(m: re.Match[str], cluster: str) -> list[str]:
    if_not_exists, name, rest = m[1] or "", m[2], m[3]
    if not _ENGINE.search(rest):  # Null, Distributed, ...: the same on every node
        return [f"CREATE TABLE {if_not_exists}{name} ON CLUSTER '{cluster}' {rest}"]
    if not is_sharded(name):
        return [
            f"CREATE TABLE {if_not_exists}{name} ON CLUSTER '{cluster}' "
            f"{replicated(rest, name, sharded=False)}"
        ]
    rest = re.sub(r"^AS\s+(\w+)", lambda a: f"AS {local(a[1])}", rest, flags=re.I)
    return [
        f"CREATE TABLE {if_not_exists}{local(name)} ON CLUSTER '{cluster}' "
        f"{replicated(rest, local(name), sharded=True)}",
        distributed(name, cluster),
    ]


def _create_view(m: re.Match[str], cluster: str) -> list[str]:
    head, name, rest = m[1], m[2], m[3]
    source = re.search(r"\bFROM\s+(\w+)", rest, re.I)
    if "MATERIALIZED" in head.upper() and source and is_sharded(source[1]):
        # on each shard: its own rows of the source, into its own part of the target
        rest = re.sub(r"^TO\s+(\w+)", lambda t: f"TO {local(t[1])}", rest, flags=re.I)
        rest = re.sub(rf"\bFROM\s+{source[1]}\b", f"FROM {local(source[1])}", rest, flags=re.I)
    return [f"{head}{name} ON CLUSTER '{cluster}' {rest}"]


def _alter(m: re.Match[str], cluster: str) -> list[str]:
    name, clauses = m[1], m[2]
    if not is_sharded(name):
        return [f"ALTER TABLE {name} ON CLUSTER '{cluster}' {clauses}"]
    out = [f"ALTER TABLE {local(name)} ON CLUSTER '{cluster}' {clauses}"]
    if re.match(r"(ADD|DROP|MODIFY|RENAME|COMMENT)\s+COLUMN\b", clauses, re.I):
        out.append(f"ALTER TABLE {name} ON CLUSTER '{cluster}' {clauses}")
    return out


def _rename(m: re.Match[str], cluster: str) -> list[str]:
    pairs = re.findall(r"(\w+)\s+TO\s+(\w+)", m[1], re.I)
    if not any(is_sharded(a) for a, _ in pairs):
        return [f"RENAME TABLE {m[1]} ON CLUSTER '{cluster}'"]
    renames = ", ".join(f"{local(a)} TO {local(b)}" for a, b in pairs)
    targets = [b for _, b in pairs]
    # a Distributed table names its local table: the one named `deductions` now reads the new
    # local table; one whose local table was renamed away is dropped, one is made for each new name
    return [
        f"RENAME TABLE {renames} ON CLUSTER '{cluster}'",
        *(f"DROP TABLE IF EXISTS {a} ON CLUSTER '{cluster}'" for a, _ in pairs if a not in targets),
        *(distributed(b, cluster) for b in targets),
    ]


def _drop(m: re.Match[str], cluster: str) -> list[str]:
    kind, if_exists, name = m[1], m[2] or "", m[3]
    out = [f"DROP {kind} {if_exists}{name} ON CLUSTER '{cluster}'"]
    if kind.upper() == "TABLE" and is_sharded(name):
        out.append(f"DROP TABLE {if_exists}{local(name)} ON CLUSTER '{cluster}'")
    return out


def _insert(m: re.Match[str], cluster: str) -> list[str]:
    sql = m[0]
    tail = re.search(r"\bSETTINGS\s+[\w\s=,'.]+$", sql, re.I)
    if tail and not re.search(r"\bFROM\b|\)", tail[0], re.I):
        return [f"{sql}, insert_distributed_sync = 1"]
    return [f"{sql} SETTINGS insert_distributed_sync = 1"]


RULES: list[tuple[re.Pattern[str], Callable[[re.Match[str], str], list[str]]]] = [
    (re.compile(r"CREATE\s+TABLE\s+(IF\s+NOT\s+EXISTS\s+)?(\w+)\s*(.*)", _FLAGS), _create_table),
    (
        re.compile(
            r"(CREATE\s+(?:OR\s+REPLACE\s+)?(?:MATERIALIZED\s+)?VIEW\s+(?:IF\s+NOT\s+EXISTS\s+)?)"
            r"(\w+)\s*(.*)",
            _FLAGS,
        ),
        _create_view,
    ),
    (re.compile(r"ALTER\s+TABLE\s+(\w+)\s+(.*)", _FLAGS), _alter),
    (re.compile(r"RENAME\s+TABLE\s+(.*)", _FLAGS), _rename),
    (re.compile(r"DROP\s+(TABLE|VIEW)\s+(IF\s+EXISTS\s+)?(\w+)\s*$", _FLAGS), _drop),
    (re.compile(r"INSERT\s+INTO\s+.*", _FLAGS), _insert),
    (re.compile(r"SELECT\s+.*", _FLAGS), lambda m, _: [m[0]]),  # a check: runs as it is
]


def cluster_statements(statement: str, cluster: str) -> list[str]:
    """The statements that do on ``cluster`` what ``statement`` does on one server."""
    sql = statement.strip()
    for pattern, rewrite in RULES:
        found = pattern.fullmatch(sql)
        if found:
            return rewrite(found, cluster)
    raise ValueError(f"no cluster form for this statement: {sql[:120]}")


SCHEMA_MIGRATIONS = (
    "CREATE TABLE IF NOT EXISTS schema_migrations (version String, applied_at DateTime64(3, "
    "'UTC') DEFAULT now64(3)) ENGINE = ReplacingMergeTree ORDER BY version"
)
