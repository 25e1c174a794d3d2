"""Migrations 031-034 on a database that already holds rows (issue 16, ClickHouse at scale): every
row is kept, the sink's view writes into the re-keyed table, and trace_request reads the deductions
through id_lookup (a granule or two of the table, not all of them). chDB opens one path per process,
so the database of this test lives in a child process."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]

CHILD = r"""
import json, sys
from pathlib import Path
from streams.bench.finance_queries import explain, fill
from streams.config import Settings
from streams.sink.clickhouse import connect, migrate
from streams.sink.queries import load_queries

TABLES = ("deductions", "settlements", "alerts", "account_status", "dead_letters")

def digest(c, table):
    # every row under FINAL, every column but ingested_at (the copy keeps it; FINAL may keep
    # either of two copies of a row, which differ in it only)
    return list(c.query(
        f"SELECT count(), toString(groupBitXor(cityHash64(*))) "
        f"FROM (SELECT * EXCEPT (ingested_at) FROM {table} FINAL)"
    ).result_rows[0])

c = connect(Settings(chdb_path=Path(sys.argv[1])))
one = lambda sql: c.query(sql).result_rows[0][0]
migrate(c, until="030")
fill(c, rows=200_000, accounts=50, chunks=6)
before = {t: digest(c, t) for t in TABLES}
raw_before = one("SELECT count() FROM deductions")
applied = migrate(c, until="034")
after = {t: digest(c, t) for t in TABLES}
applied += migrate(c)  # the later ones too (040 adds a column and replaces the sink's view)
# a deduction landing through the sink's landing table and view after the swap
c.command(
    "INSERT INTO deductions_avro_in (deduction_id, event_id, trace_id, account_id, "
    "main_account_id, event_time, currency, item, rated_amount, unbilled_amount, balance_after, "
    "settlement_period, kind, splits) VALUES ('d-late', 'ev-late', 'tr-late', 'acct-1', 'acct-1', "
    "'2026-04-20 10:00:00', 'CNY', 'tokens', '1.5', '0', '0', 'hour', 'usage', "
    "[('cash', 'cash-1', '1.5', '1.5', 'CNY')])"
)
q = load_queries()["trace_request"]
found = [list(r) for r in c.query(q, parameters={"id": "tr-late"}).result_rows]
sample = c.query(
    "SELECT trace_id FROM deductions WHERE main_account_id = 'acct-0' LIMIT 1 OFFSET 5000"
).result_rows[0][0]
print(json.dumps({
    "applied": applied,
    "before": before,
    "after": after,
    "raw_before": raw_before,
    "pre031": one("SELECT count() FROM deductions_pre031"),
    "late_in_new": one("SELECT count() FROM deductions WHERE deduction_id = 'd-late'"),
    "late_in_old": one("SELECT count() FROM deductions_pre031 WHERE deduction_id = 'd-late'"),
    "lookup": one("SELECT count() FROM id_lookup WHERE id IN ('d-late', 'ev-late', 'tr-late')"),
    "found": found,
    "reads": explain(c, q, {"id": sample}),
    "sample_rows": len(c.query(q, parameters={"id": sample}).result_rows),
}, default=str))
"""


def test_migrations_keep_every_row_and_trace_request_reads_through_the_lookup(tmp_path):
    r = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path / "chdb")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["applied"][:4] == [
        "031_deductions_by_account_and_time.sql",
        "032_settlements_by_account_and_period.sql",
        "033_id_lookup.sql",
        "034_retention.sql",
    ]
    # every row of every table, column for column; the old tables are kept as they were
    assert out["after"] == out["before"]
    assert out["before"]["deductions"][0] >= 200_000
    assert out["pre031"] == out["raw_before"]
    # the sink's view writes into the new table (it follows the name), and the lookup learns it
    assert (out["late_in_new"], out["late_in_old"]) == (1, 0)
    assert out["lookup"] == 3
    assert [row[:2] for row in out["found"]] == [["deduction", "d-late"]]
    # trace_request reads a granule or two per partition of the deductions, not the table
    parts, _, granules, total = out["reads"]["deductions"]
    assert out["sample_rows"] >= 1
    assert total >= 20 and granules <= 2, out["reads"]
    s_parts, _, s_granules, s_total = out["reads"]["settlements"]
    assert s_granules < s_total, out["reads"]
