"""The finance queries of docs/finance.sql on a few million synthetic rows in a fresh chDB:
median time of each query, and the parts and granules its reads select (`EXPLAIN indexes = 1`).

    python -m streams.bench.finance_queries --rows 3000000

The rows are made by ClickHouse itself (`INSERT ... SELECT FROM numbers(N)`): deductions over
`--accounts` main accounts (a few heavy ones, a long tail) and 13 weeks from 2026-03-01, inserted in
`--chunks` time-ordered inserts as the sink would over weeks, plus 1 % of them inserted a second
time (what FINAL has to collapse); settlement lines summed from them, arrears alerts, statuses and
dead letters. Merges are stopped, so every run reads the same parts: as inserted.

`--until 030` applies the migrations up to that prefix only (the schema before a change) and
`--queries FILE` takes another copy of finance.sql: with both, the same script measures the old
schema and queries against the new ones on the same machine. `--migrate-after` then applies the
remaining migrations to the filled database and measures again (a migrated database).
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from streams.config import Settings
from streams.sink.clickhouse import connect, migrate
from streams.sink.queries import FINANCE_SQL, load_queries

START = "2026-03-01 00:00:00"
DAYS = 91
MODELS = "['deepseek-v3', 'deepseek-r1', 'claude-sonnet-4.5', 'qwen3-max', 'glm-4.6', 'kimi-k2']"
BUCKETS = "['cash', 'cash', 'cash', 'cash', 'voucher', 'pack', 'free', 'trial']"

# One synthetic deduction per number n; every column derives from n, so two runs are identical.
DEDUCTION_SELECT = """
WITH
    toUInt32(pow((cityHash64(n, 1) % 1000003) / 1000003, 2.5) * {accounts}) AS acc_n,
    concat('acct-', toString(acc_n)) AS acc,
    toDateTime64('{start}', 3, 'UTC')
        + toIntervalMillisecond(intDiv(n * {span_ms}, {rows}) + cityHash64(n, 2) % 3600000) AS t,
    cityHash64(n, 3) % 50 = 0 AS is_video,
    if(is_video, 'video', 'tokens') AS it,
    {models}[1 + (cityHash64(acc) + cityHash64(n, 4) % 2) % 6] AS mdl,
    if(is_video, '720p', '') AS var,
    if(is_video, 'day', 'hour') AS sp,
    cityHash64(n, 5) % 1000 = 0 AS is_adj,
    toDecimal128(cityHash64(n, 6) % 200000, 12) / 1000000 AS amt,
    {buckets}[1 + cityHash64(n, 7) % 8] AS bucket,
    if(sp = 'day', toStartOfDay(t, 'Asia/Shanghai'), toStartOfHour(t)) AS period
SELECT
    concat('d-', hex(cityHash64(n, 'd'))) AS deduction_id,
    concat('ev-', hex(cityHash64(n, 'e'))) AS event_id,
    concat('tr-', hex(cityHash64(n, 't'))) AS trace_id,
    acc AS account_id, acc AS main_account_id, t AS event_time,
    'tokenhub' AS profile,
    if(cityHash64(acc) % 5 = 0, 'USD', 'CNY') AS currency,
    'tokenhub@2026-01' AS price_version, it AS item, mdl AS model, var AS variant,
    map('input', toString(cityHash64(n, 8) % 50000)) AS quantities,
    if(is_video, 0, cityHash64(n, 8) % 50000) AS tokens_input,
    if(is_video, 0, cityHash64(n, 9) % 5000) AS tokens_output,
    '[]' AS lines_json,
    amt AS rated_amount,
    if(bucket = 'free', amt, 0) AS free_amount,
    if(bucket = 'trial', amt, 0) AS trial_amount,
    if(bucket = 'pack', amt, 0) AS pack_amount,
    if(bucket = 'voucher', amt, 0) AS voucher_amount,
    if(bucket = 'cash', amt, 0) AS cash_amount,
    [bucket] AS split_bucket_kind, [concat(bucket, '-1')] AS split_bucket_id,
    [amt] AS split_amount, [amt] AS split_units, ['CNY'] AS split_unit,
    cityHash64(n, 10) % 50 = 0 AS billed_elsewhere,
    toDecimal128(100 - toInt64(cityHash64(n, 11) % 120), 12) AS balance_after,
    sp AS settlement_period,
    if(is_adj, 'rerate_adjustment', 'usage') AS kind,
    if(is_adj, concat('d-', hex(cityHash64(n - 1, 'd'))), '') AS adjusts_deduction_id,
    if(is_adj, 'rr-bench', '') AS rerate_id,
    concat('sl-', hex(cityHash64(acc, period, it, mdl, var))) AS settlement_id
FROM (SELECT number AS n FROM numbers({first}, {count}))
"""

SETTLEMENT_INSERT = """
INSERT INTO settlements (settlement_id, main_account_id, period_start, period_end, granularity,
    line_type, profile, currency, item, model, variant, gross_amount, free_amount, trial_amount,
    pack_amount, voucher_amount, cash_amount, unbilled_amount, event_count, closed_at)
SELECT settlement_id, main_account_id,
    if(settlement_period = 'day', toStartOfDay(event_time, 'Asia/Shanghai'),
       toStartOfHour(event_time)) AS ps,
    ps + toIntervalSecond(if(settlement_period = 'day', 86400, 3600)), settlement_period, 'regular',
    any(profile), any(currency), item, model, variant, sum(rated_amount), sum(free_amount),
    sum(trial_amount), sum(pack_amount), sum(voucher_amount), sum(cash_amount),
    sum(unbilled_amount), countIf(kind = 'usage'), max(event_time)
FROM deductions FINAL
GROUP BY settlement_id, main_account_id, ps, settlement_period, item, model, variant
"""

SIDE_INSERTS = (
    # arrears for one account in fifty, cleared again for half of them
    """INSERT INTO alerts (alert_id, kind, main_account_id, account_id, event_time, episode,
        sequence)
    SELECT concat('al-', toString(number), '-', k), k, concat('acct-', toString(number)),
        concat('acct-', toString(number)),
        toDateTime64('{start}', 3, 'UTC') + toIntervalDay(number % 80 + k2), '1', k2 + 1
    FROM numbers({accounts}) ARRAY JOIN ['arrears_started', 'arrears_cleared'] AS k, [0, 3] AS k2
    WHERE number % 50 = 0 AND (k = 'arrears_started' OR number % 100 = 0)""",
    """INSERT INTO account_status (main_account_id, status, since, source_event_id, sequence)
    SELECT concat('acct-', toString(number)), 'active', toDateTime64('{start}', 3, 'UTC'),
        concat('open-', toString(number)), 1
    FROM numbers({accounts})""",
    """INSERT INTO dead_letters (dead_letter_id, reason_code, reason, source_topic, event_id,
        main_account_id, trace_id, event_time)
    SELECT concat('dl-', toString(number)), 'invalid_field', 'bench', 'billing.events',
        concat('ev-dl-', toString(number)), concat('acct-', toString(number % {accounts})),
        concat('tr-dl-', toString(number)),
        toDateTime64('{start}', 3, 'UTC') + toIntervalSecond(number * 17)
    FROM numbers(intDiv({rows}, 1000))""",
)


def fill(client: Any, rows: int, accounts: int, chunks: int) -> None:
    """Deductions in time order in `chunks` inserts, 1 % again, then the other tables."""
    fmt = {
        "accounts": accounts,
        "start": START,
        "span_ms": DAYS * 86_400_000,
        "rows": rows,
        "models": MODELS,
        "buckets": BUCKETS,
    }
    size = -(-rows // chunks)
    for first in range(0, rows, size):
        sql = DEDUCTION_SELECT.format(**fmt, first=first, count=min(size, rows - first))
        client.command(f"INSERT INTO deductions {_columns(sql)} {sql}")
    again = DEDUCTION_SELECT.format(**fmt, first=0, count=rows)
    client.command(
        f"INSERT INTO deductions {_columns(again)} SELECT * FROM ({again}) "
        "WHERE cityHash64(deduction_id) % 100 = 0"
    )
    client.command(SETTLEMENT_INSERT)
    for sql in SIDE_INSERTS:
        client.command(sql.format(**fmt))


def _columns(select: str) -> str:
    """The column list of an INSERT: the aliases of the SELECT's outer list."""
    outer = select.split("\nSELECT", 1)[1].split("\nFROM (SELECT number", 1)[0]
    return "(" + ", ".join(re.findall(r"AS (\w+)(?=,|\s*$)", outer, flags=re.M)) + ")"


def parameters(client: Any) -> dict[str, dict[str, Any]]:
    """Realistic parameters: the busiest account and month, April, a line and a trace of it."""
    account = client.query(
        "SELECT main_account_id FROM deductions GROUP BY main_account_id "
        "ORDER BY count() DESC LIMIT 1"
    ).result_rows[0][0]
    line, trace = client.query(
        "SELECT settlement_id, trace_id FROM deductions WHERE main_account_id = {a:String} "
        "AND event_time >= '2026-04-15 00:00:00' ORDER BY event_time LIMIT 1",
        parameters={"a": account},
    ).result_rows[0]
    april = {"from": "2026-04-01 00:00:00", "to": "2026-05-01 00:00:00"}
    return {
        "account_bill_month": {"account": account, "month": 202604},
        "revenue_per_model_per_day": april,
        "accounts_in_arrears": {"as_of": datetime(2026, 6, 1, tzinfo=UTC)},
        "bucket_usage": april,
        "reconciliation": {
            "from": datetime(2026, 4, 1, tzinfo=UTC),
            "as_of": datetime(2026, 6, 1, tzinfo=UTC),
            "grace_hours": 26,
        },
        "trace_settlement_line": {"settlement_id": line},
        "trace_request": {"id": trace},
        "rerate_adjustments": {},
    }


_READ = re.compile(r"ReadFromMergeTree \(([^)]*)\)")
_COUNT = re.compile(r"(Parts|Granules): (\d+)/(\d+)")


def explain(client: Any, sql: str, params: dict[str, Any]) -> dict[str, list[int]]:
    """Per table read: [parts selected, parts, granules selected, granules]: the table's parts and
    granules before the first index of each ReadFromMergeTree step of `EXPLAIN indexes = 1`, and
    what is left after the last one."""
    text = "\n".join(
        r[0] for r in client.query(f"EXPLAIN indexes = 1 {sql}", parameters=params).result_rows
    )
    reads: dict[str, list[int]] = {}
    pieces = _READ.split(text)
    for table, body in zip(pieces[1::2], pieces[2::2], strict=True):
        first: dict[str, int] = {}
        last: dict[str, int] = {}
        for kind, selected, of in _COUNT.findall(body):
            first.setdefault(kind, int(of))
            last[kind] = int(selected)
        total = reads.setdefault(table.split(".")[-1], [0, 0, 0, 0])
        figures = (
            last.get("Parts", 0),
            first.get("Parts", 0),
            last.get("Granules", 0),
            first.get("Granules", 0),
        )
        for i, v in enumerate(figures):
            total[i] += v
    return reads


def timed(client: Any, sql: str, params: dict[str, Any], repeat: int) -> tuple[float, int]:
    """Median milliseconds of `repeat` runs after one warm-up, and the result's row count."""
    result = client.query(sql, parameters=params).result_rows
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        client.query(sql, parameters=params)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), len(result)


def measure(client: Any, queries: dict[str, str], repeat: int) -> list[dict[str, Any]]:
    params = parameters(client)
    out = []
    for name, sql in queries.items():
        ms, n = timed(client, sql, params[name], repeat)
        reads = explain(client, sql, params[name])
        out.append({"query": name, "ms": ms, "rows": n, "reads": reads})
    return out


def report(title: str, results: list[dict[str, Any]]) -> None:
    print(f"\n{title}")
    print(f"{'query':<27} {'median ms':>10} {'rows':>7}  granules selected/total (parts) per read")
    for r in results:
        reads = "; ".join(
            f"{t} {g}/{gt} ({p}/{pt})" for t, (p, pt, g, gt) in sorted(r["reads"].items())
        )
        print(f"{r['query']:<27} {r['ms']:>10.1f} {r['rows']:>7}  {reads}")


def parts(client: Any, table: str) -> str:
    n, partitions, rows = client.query(
        "SELECT count(), uniqExact(partition), sum(rows) FROM system.parts "
        "WHERE active AND database = currentDatabase() AND table = {t:String}",
        parameters={"t": table},
    ).result_rows[0]
    return f"{table}: {rows:,} rows in {n} parts, {partitions} partitions"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=3_000_000)
    ap.add_argument("--accounts", type=int, default=500)
    ap.add_argument("--chunks", type=int, default=12)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--until", default=None, help="apply migrations up to this prefix only")
    ap.add_argument("--queries", type=Path, default=FINANCE_SQL, help="a finance.sql file")
    ap.add_argument("--migrate-after", action="store_true")
    ap.add_argument("--path", type=Path, default=None, help="chDB directory (default: a temp one)")
    args = ap.parse_args(argv)
    path = args.path or Path(tempfile.mkdtemp(prefix="finance-bench-"))
    shutil.rmtree(path, ignore_errors=True)
    client = connect(Settings(chdb_path=path))
    migrate(client, until=args.until)
    client.command("SYSTEM STOP MERGES")  # the same parts in every run: as inserted
    started = time.perf_counter()
    fill(client, args.rows, args.accounts, args.chunks)
    print(f"filled in {time.perf_counter() - started:.0f} s at {path}")
    queries = load_queries(args.queries)
    for stage in ("as filled", "migrated") if args.migrate_after else ("as filled",):
        if stage == "migrated":
            started = time.perf_counter()
            client.command("SYSTEM START MERGES")  # a mutation (MODIFY TTL) waits for the pool
            print(f"\nmigrations applied: {migrate(client)}")
            client.command("SYSTEM STOP MERGES")
            print(f"in {time.perf_counter() - started:.0f} s")
            queries = load_queries(FINANCE_SQL)
        for table in ("deductions", "settlements"):
            print(parts(client, table))
        report(f"{stage}, {args.rows:,} deductions", measure(client, queries, args.repeat))


if __name__ == "__main__":
    main()
