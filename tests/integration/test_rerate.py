"""Re-rating through the real pipeline: a retroactive price cut on a small stream, booked with
`rating rerate --apply` (a subprocess reading the real topics), lands in ClickHouse once; applying
again books nothing; the documented trace SQL reaches the adjustment from its settlement line."""

import asyncio
import json
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from decimal import Decimal as D
from pathlib import Path

import pytest

from streams.rating.profiles import PROFILES_DIR
from streams.sink.queries import load_queries
from tests.integration.conftest import Harness

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
Q = load_queries()
CUT = """
  - version: "2026-05-cut"
    effective_from: "2027-01-01T00:00:00+08:00"
    rows:
      - {item: tokens, model: claude-sonnet-4.5, per_tokens: 1000000, input: 1.5, output: 7.5,
         cache_hit: 0.15, cache_write: 1.875, example: true}
"""


def small_stream(main):
    def usage(n, t, model="claude-sonnet-4.5"):
        return {
            "kind": "usage",
            "event_id": f"{main}-e{n}",
            "trace_id": f"{main}-t{n}",
            "account_id": main,
            "main_account_id": main,
            "event_time": t,
            "item": "tokens",
            "model": model,
            "input_tokens": 1000,
            "output_tokens": 1000,
        }

    return [
        {
            "kind": "account",
            "event_id": f"{main}-open",
            "account_id": main,
            "main_account_id": main,
            "event_time": "2026-05-01T08:00:00+08:00",
            "type": "account_opened",
            "profile": "jiekou",
            "currency": "USD",
            "post_paid": False,
            "amount": "10",
        },
        {
            "kind": "account",
            "event_id": f"{main}-v1",
            "account_id": main,
            "main_account_id": main,
            "event_time": "2026-05-01T08:00:00+08:00",
            "type": "voucher_granted",
            "voucher_id": "v1",
            "amount": "0.02",
            "expires_at": "2026-12-31T00:00:00+08:00",
        },
        usage(1, "2026-05-01T10:00:00+08:00"),
        usage(2, "2026-05-01T11:00:00+08:00"),
        usage(3, "2026-05-02T10:00:00+08:00"),
        # outside the window, another model: untouched
        usage(4, "2026-05-03T10:00:00+08:00", model="claude-opus-4.5"),
    ]


@pytest.fixture
def cut_harness(tmp_path, broker, ch):
    root = tmp_path / "profiles"
    shutil.copytree(PROFILES_DIR, root)
    book = root / "jiekou" / "price_book.yaml"
    book.write_text(book.read_text().rstrip("\n") + "\n" + CUT.lstrip("\n"))
    h = Harness(tmp_path, broker, ch, PROFILES_DIR=str(root))
    yield h
    h.stop()


def rerate(h, *args):
    env = h.pipeline.worker_env()
    env["METRICS_PORT"] = "0"
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "streams.cli.main",
            "rerate",
            "-p",
            "jiekou",
            "--prices",
            "2026-05-cut",
            "--from",
            "2026-05-01T00:00:00+08:00",
            "--to",
            "2026-05-02T00:00:00+08:00",
            *args,
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=180,
    )


def test_rerate_apply_books_the_diff_once(cut_harness, tmp_path):
    h = cut_harness
    main = f"{h.tag}-jk"
    asyncio.run(h.produce([json.dumps(x).encode() for x in small_stream(main)]))
    h.start_worker()
    where = f"main_account_id = '{main}'"
    assert h.land(lambda: h.scalar(f"SELECT count() FROM deductions FINAL WHERE {where}") == 4)
    before = h.ch.query(
        "SELECT sum(rated_amount), sum(cash_amount), sum(voucher_amount) FROM deductions FINAL "
        f"WHERE {where}"
    ).result_rows[0]

    # the sink archived the input messages: re-rating from ClickHouse sees the same events as from
    # Kafka
    from streams.cli.rerate import events_from_clickhouse, events_from_topic

    topic = h.settings.topics.events
    assert h.land(
        lambda: (
            h.scalar(f"SELECT count() FROM events_archive FINAL WHERE source_topic = '{topic}'")
            >= 6
        )
    )
    archived = events_from_clickhouse(h.ch, topic)
    assert [e.event_id for e, _ in archived] == [
        e.event_id for e, _ in asyncio.run(events_from_topic(h.settings))
    ]
    assert sorted(e.event_id for e, _ in archived) == sorted(
        x["event_id"] for x in small_stream(main)
    )

    # the report alone books nothing; the CSV has the hand-computed figures
    r = rerate(h, "--out", str(tmp_path / "diff.csv"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "total delta -0.018" in r.stdout
    import csv

    # the opus event is outside the window: no row
    [got] = list(csv.DictReader(open(tmp_path / "diff.csv")))
    assert (got["main_account_id"], got["model"], got["events"]) == (main, "claude-sonnet-4.5", "3")
    assert (
        got["old_amount"],
        got["new_amount"],
        got["delta"],
        got["old_cash"],
        got["new_cash"],
    ) == ("0.054", "0.036", "-0.018", "0.034", "0.016")

    r = rerate(h, "--apply", "--yes")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "booked 3 adjustment deductions (total -0.018)" in r.stdout
    adjusted = f"{where} AND kind = 'rerate_adjustment'"
    assert h.land(
        lambda: (
            h.scalar(f"SELECT count() FROM deductions FINAL WHERE {adjusted}") == 3
            and h.scalar(
                f"SELECT count() FROM settlements FINAL WHERE {where} AND line_type = 'rerate'"
            )
            >= 2
        )
    )
    after = h.ch.query(
        "SELECT sum(rated_amount), sum(cash_amount), sum(voucher_amount) FROM deductions FINAL "
        f"WHERE {where}"
    ).result_rows[0]
    assert (
        after[0] - before[0] == D("-0.018")
        and after[1] - before[1] == D("-0.018")
        and after[2] == before[2]
    )

    # applying again books nothing, and the totals stay
    r = rerate(h, "--apply", "--yes")
    assert r.returncode == 0 and "nothing to book" in r.stdout, r.stdout + r.stderr
    h.land(lambda: False, timeout=5)  # let anything that was sent land
    again = h.ch.query(
        "SELECT sum(rated_amount), sum(cash_amount), sum(voucher_amount) FROM deductions FINAL "
        f"WHERE {where}"
    ).result_rows[0]
    assert again == after
    assert h.scalar(f"SELECT count() FROM deductions FINAL WHERE {adjusted}") == 3

    # finance SQL: the re-rating per run, no reconciliation mismatch, and the trace from a rerate
    # line
    runs = [
        r
        for r in h.ch.query(Q["rerate_adjustments"]).named_results()
        if r["main_account_id"] == main
    ]
    assert len(runs) == 1 and runs[0]["delta"] == D("-0.018") and runs[0]["adjusted_events"] == 3
    assert h.land(
        lambda: (
            h.scalar(
                f"SELECT count() FROM settlements FINAL WHERE {where} AND line_type = 'regular'"
            )
            >= 3
        ),
        timeout=30,
    )
    mismatches = [
        r
        for r in h.ch.query(
            Q["reconciliation"],
            parameters={
                "from": datetime(2000, 1, 1, tzinfo=UTC),
                "as_of": datetime.now(UTC),
                "grace_hours": 26,
            },
        ).named_results()
        if r["main_account_id"] == main and r["state"] == "MISMATCH"
    ]
    assert mismatches == []
    line_id = h.scalar(
        f"SELECT settlement_id FROM settlements FINAL WHERE {where} AND line_type = 'rerate' "
        "ORDER BY period_start LIMIT 1"
    )
    traced = list(
        h.ch.query(
            Q["trace_settlement_line"], parameters={"settlement_id": line_id}
        ).named_results()
    )
    assert traced and {t["kind"] for t in traced} == {"rerate_adjustment"}
    assert {t["event_id"] for t in traced} == {f"{main}-e1"}
    request = list(h.ch.query(Q["trace_request"], parameters={"id": f"{main}-t2"}).named_results())
    assert {(r["row"], r["type"]) for r in request} >= {
        ("deduction", "usage"),
        ("deduction", "rerate_adjustment"),
        ("settlement", "rerate"),
    }
