"""The sink's two mappings of a deduction agree: the Avro bodies ClickHouse decodes and maps itself
(migration 009) land the same column values as the Python column map (a direct insert); older
schema versions land too; a permanent insert error stops the sink, a transient one is retried."""

import asyncio
from types import SimpleNamespace

import pytest
from aiokafka import TopicPartition

from streams.config import Settings
from streams.engine import BillingEngine
from streams.ingest.codec import registry
from streams.local.synthetic import generate
from streams.rating.profiles import Profiles
from streams.simulate import simulate
from streams.sink.clickhouse import (
    DEDUCTION_COLUMNS,
    INSERT_SETTINGS,
    ClickHouseSink,
    InsertRejected,
    TableBatch,
    deduction_values,
)

pytestmark = pytest.mark.integration
TP = TopicPartition("t.deductions", 0)


def deductions(tag, n=300):
    lines = generate(seed=5, accounts=6, usage_events=n, prefix=tag)
    return simulate(list(enumerate(lines, 1)), BillingEngine(Profiles()), partitions=1).deductions


def messages(values):
    return [
        SimpleNamespace(topic=TP.topic, partition=0, offset=i, key=b"k", value=v, timestamp=0)
        for i, v in enumerate(values)
    ]


def land(sink, msgs, token):
    table = TableBatch(sink.routes[sink.settings.topics.deductions])
    for m in msgs:
        sink._add(table, TP, m)
    table.token_parts.append(token)
    asyncio.run(sink._insert_with_retry(table, None))


def rows(ch, where):
    cols = ", ".join(DEDUCTION_COLUMNS)
    return {
        r[0]: r for r in ch.query(f"SELECT {cols} FROM deductions FINAL WHERE {where}").result_rows
    }


def test_clickhouse_maps_the_avro_bodies_as_the_python_column_map(ch):
    reg = registry()
    records = deductions("sc1")
    assert {d["item"] for d in records} - {"tokens", "embedding", "rerank"}, (
        "needs non-token items too"
    )
    sink = ClickHouseSink(Settings(), client=ch)
    land(sink, messages([reg.encode("deduction", d) for d in records]), "sc1-native")
    direct = [dict(d, deduction_id=d["deduction_id"] + "-py") for d in records]
    values = [deduction_values(d) for d in direct]
    ch.insert(
        "deductions",
        [[v[c] for v in values] for c in DEDUCTION_COLUMNS],
        column_names=DEDUCTION_COLUMNS,
        column_oriented=True,
        settings=INSERT_SETTINGS,
    )
    ids = {d["deduction_id"] for d in records}
    native = {k: r for k, r in rows(ch, "main_account_id LIKE 'sc1-%'").items() if k in ids}
    python = {
        k.removesuffix("-py"): r
        for k, r in rows(ch, "main_account_id LIKE 'sc1-%'").items()
        if k.endswith("-py")
    }
    assert len(native) == len(records) == len(python)
    lines_at = DEDUCTION_COLUMNS.index("lines_json")
    import orjson

    for k, r in native.items():
        p = python[k]
        assert orjson.loads(r[lines_at]) == orjson.loads(p[lines_at]), k
        assert r[1:lines_at] + r[lines_at + 1 :] == p[1:lines_at] + p[lines_at + 1 :], k


def test_an_old_deduction_version_lands_through_the_avro_path(ch):
    reg = registry()
    v1_id = min(sid for sid, sv in reg.by_id.items() if sv.name == "deduction")
    d = dict(deductions("sc2", 40)[0])
    for f in ("kind", "adjusts_deduction_id", "rerate_id", "settlement_id"):
        d.pop(f, None)
    sink = ClickHouseSink(Settings(), client=ch)
    land(sink, messages([reg.encode("deduction", d, schema_id=v1_id)]), "sc2-old")
    got = ch.query(
        "SELECT kind, settlement_id FROM deductions FINAL WHERE deduction_id = "
        f"'{d['deduction_id']}'"
    ).result_rows
    assert got == [("usage", "")]


def test_a_bad_value_stops_the_sink_and_a_lost_connection_is_retried(ch):
    reg = registry()
    d = dict(deductions("sc3", 40)[0], rated_amount="not-a-number")
    sink = ClickHouseSink(Settings(), client=ch)
    with pytest.raises(InsertRejected, match="rejected the insert"):
        land(sink, messages([reg.encode("deduction", d)]), "sc3-bad")
    assert sink.metrics.sink_halted.labels("deductions", "insert_rejected")._value.get() == 1
    assert ch.query(
        f"SELECT count() FROM deductions WHERE deduction_id = '{d['deduction_id']}'"
    ).result_rows == [(0,)]

    class Flaky:
        failures = 0

        def raw_insert(self, *a, **kw):
            if self.failures < 2:
                self.failures += 1
                raise ConnectionError("down (injected)")
            return ch.raw_insert(*a, **kw)

    good = deductions("sc3", 40)[1]
    sink.client = Flaky()
    land(sink, messages([reg.encode("deduction", good)]), "sc3-good")
    assert sink.client.failures == 2 and sink.stats.insert_failures == 3
    assert ch.query(
        f"SELECT count() FROM deductions FINAL WHERE deduction_id = '{good['deduction_id']}'"
    ).result_rows == [(1,)]
