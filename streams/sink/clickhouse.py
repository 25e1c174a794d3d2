"""The ClickHouse sink: consumes the output topics in batches, inserts them, and commits the Kafka
offsets only after ClickHouse acknowledged every insert of the batch.

When ClickHouse is down the same batch is retried with backoff; nothing is committed, so nothing
is lost. A retried insert carries the same deduplication token, and every table is a
ReplacingMergeTree on the record's deterministic id, so nothing is counted twice either.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable

import clickhouse_connect
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.config import Settings
from streams.ingest.codec import DecodeError, registry
from streams.kafka_client import client_kwargs
from streams.observability.metrics import PipelineMetrics, serve

log = logging.getLogger("streams.sink")
MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "infra" / "clickhouse"
INSERT_SETTINGS = {"async_insert": 0, "wait_for_async_insert": 1}
ZERO = Decimal(0)
UTC = timezone.utc


def connect(settings: Settings):
    if settings.embedded_clickhouse:
        settings.chdb_path.mkdir(parents=True, exist_ok=True)
        return clickhouse_connect.get_client(dsn=f"chdb://{settings.chdb_path.resolve()}")
    return clickhouse_connect.get_client(dsn=settings.clickhouse_url, password=settings.clickhouse_password or None)


def migrate(client) -> list[str]:
    """Apply the DDL files of infra/clickhouse in name order, each once. Returns what was applied."""
    client.command(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version String, applied_at DateTime64(3, 'UTC') DEFAULT now64(3)) "
        "ENGINE = ReplacingMergeTree ORDER BY version"
    )
    done = {row[0] for row in client.query("SELECT version FROM schema_migrations FINAL").result_rows}
    applied = []
    for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
        if path.name in done:
            continue
        for statement in _statements(path.read_text()):
            client.command(statement)
        client.insert("schema_migrations", [(path.name,)], column_names=["version"], settings=INSERT_SETTINGS)
        applied.append(path.name)
    return applied


def _statements(sql: str) -> list[str]:
    body = "\n".join(line for line in sql.splitlines() if not line.strip().startswith("--"))
    return [s.strip() for s in body.split(";") if s.strip()]


def _ts(ms: int | datetime | None) -> datetime | None:
    if ms is None:
        return None
    if isinstance(ms, datetime):
        return ms
    return datetime.fromtimestamp(ms // 1000, UTC).replace(microsecond=(ms % 1000) * 1000)


# ---------------------------------------------------------------- record -> row mappers

DEDUCTION_COLUMNS = [
    "deduction_id", "event_id", "trace_id", "account_id", "main_account_id", "event_time", "profile", "currency",
    "price_version", "item", "model", "variant", "quantities", "tokens_cache_hit", "tokens_input",
    "tokens_cache_write", "tokens_output", "tokens_reasoning", "units", "lines_json", "rated_amount",
    "free_amount", "trial_amount", "pack_amount", "voucher_amount", "cash_amount", "unbilled_amount",
    "unbilled_reason", "split_bucket_kind", "split_bucket_id", "split_amount", "split_units", "split_unit",
    "billed_elsewhere", "flags", "balance_after", "settlement_period", "kind", "adjusts_deduction_id", "rerate_id",
    "settlement_id",
]


def deduction_row(d: dict[str, Any]) -> tuple:
    by_kind = {"free": ZERO, "trial": ZERO, "pack": ZERO, "voucher": ZERO, "cash": ZERO}
    for s in d["splits"]:
        by_kind[s["bucket_kind"]] += Decimal(s["amount"])
    q = d["quantities"]
    tokens = d["item"] in ("tokens", "embedding", "rerank")
    units = ZERO if tokens else sum((Decimal(l["units"]) for l in d["lines"]), ZERO)
    return (
        d["deduction_id"], d["event_id"], d["trace_id"], d["account_id"], d["main_account_id"], _ts(d["event_time"]),
        d["profile"], d["currency"], d["price_version"], d["item"], d["model"] or "", d["variant"] or "", q,
        int(q.get("cache_hit", 0)) if tokens else 0, int(q.get("input", 0)) if tokens else 0,
        int(q.get("cache_write", 0)) if tokens else 0, int(q.get("output", 0)) if tokens else 0,
        int(q.get("reasoning", 0)) if tokens else 0, units, orjson.dumps(d["lines"]).decode(), Decimal(d["rated_amount"]),
        by_kind["free"], by_kind["trial"], by_kind["pack"], by_kind["voucher"], by_kind["cash"],
        Decimal(d["unbilled_amount"]), d["unbilled_reason"] or "",
        [s["bucket_kind"] for s in d["splits"]], [s["bucket_id"] for s in d["splits"]],
        [Decimal(s["amount"]) for s in d["splits"]], [Decimal(s["units"]) for s in d["splits"]],
        [s["unit"] for s in d["splits"]], d["billed_elsewhere"], d["flags"], Decimal(d["balance_after"]), d["settlement_period"],
        d["kind"], d["adjusts_deduction_id"] or "", d["rerate_id"] or "", d.get("settlement_id") or "",
    )


DEAD_LETTER_COLUMNS = [
    "dead_letter_id", "reason_code", "reason", "source_topic", "source_partition", "source_offset", "event_id",
    "main_account_id", "trace_id", "event_time", "payload_base64", "payload_size_bytes", "payload_sha256",
    "payload_truncated",
]


def dead_letter_row(d: dict[str, Any]) -> tuple:
    return (
        d["dead_letter_id"], d["reason_code"], d["reason"], d["source_topic"], d["source_partition"], d["source_offset"],
        d["event_id"] or "", d["main_account_id"] or "", d["trace_id"] or "", _ts(d["event_time"]),
        base64.b64encode(d["payload"]).decode(), max(d["payload_size_bytes"], len(d["payload"])),
        d["payload_sha256"], d["payload_truncated"],
    )


ALERT_COLUMNS = ["alert_id", "kind", "main_account_id", "account_id", "event_time", "episode", "model", "message",
                 "details", "source_event_ids", "trace_id", "sequence"]


def alert_row(a: dict[str, Any]) -> tuple:
    return (a["alert_id"], a["kind"], a["main_account_id"], a["account_id"], _ts(a["event_time"]), a["episode"],
            a["model"] or "", a["message"], a["details"], a["source_event_ids"], a["trace_id"],
            a.get("sequence", 0))  # 0: written before alert v2 (the reader's default)


STATUS_COLUMNS = ["main_account_id", "status", "reason", "since", "source_event_id", "sequence"]


def status_row(s: dict[str, Any]) -> tuple:
    return (s["main_account_id"], s["status"], s["reason"] or "", _ts(s["since"]), s["source_event_id"], s.get("sequence", 0))


SETTLEMENT_COLUMNS = [
    "settlement_id", "main_account_id", "period_start", "period_end", "granularity", "line_type", "profile", "currency",
    "item", "model", "variant", "quantities", "gross_amount", "free_amount", "trial_amount", "pack_amount",
    "voucher_amount", "cash_amount", "unbilled_amount", "event_count", "price_versions", "closed_at",
]


def settlement_row(s: dict[str, Any]) -> tuple:
    return (
        s["settlement_id"], s["main_account_id"], _ts(s["period_start"]), _ts(s["period_end"]), s["granularity"],
        s["line_type"], s["profile"], s["currency"], s["item"], s["model"] or "", s["variant"] or "", s["quantities"],
        Decimal(s["gross_amount"]), Decimal(s["free_amount"]), Decimal(s["trial_amount"]), Decimal(s["pack_amount"]),
        Decimal(s["voucher_amount"]), Decimal(s["cash_amount"]), Decimal(s["unbilled_amount"]), s["event_count"],
        s["price_versions"], _ts(s["closed_at"]),
    )


USAGE_MINUTE_COLUMNS = ["usage_minute_id", "main_account_id", "model", "minute_start", "line_type", "requests", "tokens"]


def usage_minute_row(m: dict[str, Any]) -> tuple:
    return (m["usage_minute_id"], m["main_account_id"], m["model"], _ts(m["minute_start"]), m["line_type"], m["requests"], m["tokens"])


ARCHIVE_COLUMNS = ["source_topic", "source_partition", "source_offset", "main_account_id", "payload", "message_time"]


def archive_row(m: Any) -> tuple:
    return (m.topic, m.partition, m.offset, m.key.decode("utf-8", "replace") if m.key else "", m.value or b"", _ts(m.timestamp))


@dataclass(frozen=True)
class Route:
    table: str
    schema: str | None  # None: the message is stored as it is (the input archive)
    columns: list[str]
    row: Callable[[Any], tuple]


def routes(settings: Settings) -> dict[str, Route]:
    t = settings.topics
    return {
        t.deductions: Route("deductions", "deduction", DEDUCTION_COLUMNS, deduction_row),
        t.dead_letters: Route("dead_letters", "dead_letter", DEAD_LETTER_COLUMNS, dead_letter_row),
        t.alerts: Route("alerts", "alert", ALERT_COLUMNS, alert_row),
        t.account_status: Route("account_status", "account_status", STATUS_COLUMNS, status_row),
        t.settlements: Route("settlements", "settlement", SETTLEMENT_COLUMNS, settlement_row),
        t.usage_per_minute: Route("usage_per_minute", "usage_minute", USAGE_MINUTE_COLUMNS, usage_minute_row),
        **({t.events: Route("events_archive", None, ARCHIVE_COLUMNS, archive_row)} if settings.sink_archive_events else {}),
    }


class SinkHalted(RuntimeError):
    """An output record the sink cannot read: it stops without committing rather than skip it."""


@dataclass
class SinkStats:
    batches: int = 0
    rows: dict[str, int] = field(default_factory=dict)
    insert_failures: int = 0
    last_insert_seconds: float = 0.0


class ClickHouseSink:
    def __init__(self, settings: Settings, client=None, metrics: PipelineMetrics | None = None):
        self.settings = settings
        self.metrics = metrics or PipelineMetrics()
        self.client = client if client is not None else connect(settings)
        self.routes = routes(settings)
        self.registry = registry()
        self.stats = SinkStats()
        self.consumer: AIOKafkaConsumer | None = None
        self.committed: dict[TopicPartition, int] = {}

    async def start(self) -> None:
        await asyncio.to_thread(migrate, self.client)
        self.consumer = AIOKafkaConsumer(
            *self.routes,
            **client_kwargs(self.settings),
            group_id=self.settings.sink_group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=8 * 1024 * 1024,
            # as the workers': a sink that died hands its partitions over within seconds (inserts
            # run in a thread, so heartbeats keep going during a slow one)
            session_timeout_ms=6000,
            heartbeat_interval_ms=1000,
        )
        await self.consumer.start()

    async def stop(self) -> None:
        if self.consumer is not None:
            await self.consumer.stop()
            self.consumer = None

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.step(stop)

    async def step(self, stop: asyncio.Event | None = None) -> int:
        """One batch: fetch, insert (retrying until ClickHouse takes it), commit. Returns rows."""
        assert self.consumer is not None
        batch = await self.consumer.getmany(
            timeout_ms=self.settings.sink_batch_within_ms, max_records=self.settings.sink_batch_max
        )
        if not batch:
            return 0
        rows: dict[str, list[tuple]] = {}
        token_parts: dict[str, list[str]] = {}
        commit: dict[TopicPartition, int] = {}
        for tp, messages in batch.items():
            route = self.routes[tp.topic]
            for m in messages:
                if route.schema is None:
                    if not self.registry.is_clock_tick(m.value):
                        rows.setdefault(route.table, []).append(route.row(m))
                    continue
                try:
                    name, record = self.registry.decode(m.value)
                except DecodeError as exc:
                    # our own output topic: a newer schema than this sink knows (roll readers out
                    # first) or a bug. Stop before committing anything, so nothing is lost.
                    raise SinkHalted(f"cannot read {tp.topic}[{tp.partition}]@{m.offset}: {exc}; "
                                     "upgrade the sink if a newer schema version was deployed") from None
                if name != route.schema:
                    raise SinkHalted(f"{tp.topic}[{tp.partition}]@{m.offset} holds a {name} record, expected {route.schema}")
                rows.setdefault(route.table, []).append(route.row(record))
            token_parts.setdefault(route.table, []).append(f"{tp.topic}:{tp.partition}:{messages[0].offset}-{messages[-1].offset}")
            commit[tp] = messages[-1].offset + 1
        for table, table_rows in rows.items():
            token = hashlib.sha256("|".join(sorted(token_parts[table])).encode()).hexdigest()
            await self._insert_with_retry(table, table_rows, token, stop)
        await self.consumer.commit(commit)
        self.stats.batches += 1
        total = sum(len(r) for r in rows.values())
        self.metrics.sink_batch_rows.observe(total)
        self.committed.update(commit)
        self.update_lag()
        return total

    def update_lag(self) -> None:
        """Per owned partition: the end minus what is committed. Also measured while an insert is
        retried, when it grows."""
        if self.consumer is None:
            return
        lags = []
        for tp in self.consumer.assignment():
            end = self.consumer.highwater(tp)
            if end is not None and tp in self.committed:
                lags.append((tp.topic, tp.partition, end - self.committed[tp]))
        self.metrics.set_lag(self.settings.sink_group_id, lags)

    def ready(self) -> bool:
        return self.consumer is not None and bool(self.consumer.assignment())

    async def _insert_with_retry(self, table: str, table_rows: list[tuple], token: str, stop) -> None:
        route = next(r for r in self.routes.values() if r.table == table)
        delay = 0.2
        while True:
            started = time.perf_counter()
            try:
                await asyncio.to_thread(
                    self.client.insert, table, table_rows, column_names=route.columns,
                    settings={**INSERT_SETTINGS, "insert_deduplication_token": token},
                )
                self.stats.last_insert_seconds = time.perf_counter() - started
                self.stats.rows[table] = self.stats.rows.get(table, 0) + len(table_rows)
                self.metrics.sink_insert_seconds.labels(table).observe(self.stats.last_insert_seconds)
                self.metrics.sink_rows.labels(table).inc(len(table_rows))
                return
            except Exception as exc:
                self.stats.insert_failures += 1
                self.metrics.sink_insert_failures.labels(table).inc()
                self.update_lag()
                log.warning("insert of %d rows into %s failed (%s); retrying in %.1fs", len(table_rows), table, exc, delay)
                if stop is not None and stop.is_set():
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)


async def run_sink(settings: Settings, stop: asyncio.Event) -> SinkStats:
    sink = ClickHouseSink(settings)
    runner = None
    if settings.metrics_port:
        runner = await serve(settings.metrics_host, settings.metrics_port, sink.metrics, sink.ready)
    await sink.start()
    try:
        await sink.run(stop)
    finally:
        await sink.stop()
        if runner is not None:
            await runner.cleanup()
    return sink.stats
