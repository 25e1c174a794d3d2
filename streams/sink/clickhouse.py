"""The ClickHouse sink: consumes the output topics in batches, inserts them, and commits the Kafka
offsets only after ClickHouse acknowledged every insert of the batch.

A batch is inserted when it holds SINK_BATCH_MAX records or SINK_BATCH_WITHIN_MS have passed.
Deductions go to ClickHouse as an Avro container of the bodies the workers wrote; ClickHouse decodes
and maps them (migration 009). The other, smaller tables are decoded here and inserted column-wise.

When ClickHouse is down the same batch is retried with backoff; nothing is committed, so nothing is
lost. An insert ClickHouse rejects for good (a schema mismatch, a value that does not convert) stops
the sink (InsertRejected, exit code 3, billing_sink_halted_total) instead of retrying it for ever. A
retried insert carries the same deduplication token, and every table is a ReplacingMergeTree on the
record's deterministic id, so nothing is counted twice either.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import clickhouse_connect
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.config import Settings
from streams.ingest.codec import SCHEMAS_DIR, DecodeError, Registry, registry
from streams.kafka_client import client_kwargs
from streams.observability.metrics import PipelineMetrics, serve
from streams.sink.cluster import SCHEMA_MIGRATIONS, cluster_statements

log = logging.getLogger("streams.sink")
MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "infra" / "clickhouse"
INSERT_SETTINGS = {"async_insert": 0, "wait_for_async_insert": 1}
ZERO = Decimal(0)


def connect(settings: Settings):
    if settings.embedded_clickhouse:
        settings.chdb_path.mkdir(parents=True, exist_ok=True)
        return clickhouse_connect.get_client(dsn=f"chdb://{settings.chdb_path.resolve()}")
    # a password given apart from the URL; an empty one must not override the URL's
    if settings.clickhouse_password:
        return clickhouse_connect.get_client(
            dsn=settings.clickhouse_url, password=settings.clickhouse_password
        )
    return clickhouse_connect.get_client(dsn=settings.clickhouse_url)


def migration_files() -> list[Path]:
    return sorted(MIGRATIONS_DIR.glob("*.sql"))


def applied_migrations(client) -> set[str]:
    return {
        row[0] for row in client.query("SELECT version FROM schema_migrations FINAL").result_rows
    }


def migrate(client, until: str | None = None, cluster: str = "") -> list[str]:
    """Apply the DDL files of infra/clickhouse
    in name order, each once (``until``: those whose name starts at most with that prefix, e.g.
    "030", the schema before a later change). ``cluster`` (CLICKHOUSE_CLUSTER): each statement in
    its cluster form (streams/sink/cluster.py), schema_migrations replicated on every node.
    Returns what was applied."""
    for statement in _forms(SCHEMA_MIGRATIONS, cluster):
        client.command(statement)
    done = applied_migrations(client)
    applied = []
    for path in migration_files():
        if until is not None and path.name[: len(until)] > until:
            break
        if path.name in done:
            continue
        for statement in _statements(path.read_text()):
            for form in _forms(statement, cluster):
                client.command(form)
        client.insert(
            "schema_migrations", [(path.name,)], column_names=["version"], settings=INSERT_SETTINGS
        )
        applied.append(path.name)
    return applied


def _forms(statement: str, cluster: str) -> list[str]:
    return cluster_statements(statement, cluster) if cluster else [statement]


class MigrationsPending(RuntimeError):
    """The sink may not apply DDL (SINK_APPLY_MIGRATIONS=false) and the database lacks some."""


def pending_migrations(applied: set[str]) -> list[str]:
    return [path.name for path in migration_files() if path.name not in applied]


def check_migrations(client) -> None:
    """What a sink without DDL rights does at start: read schema_migrations, apply nothing."""
    try:
        applied = applied_migrations(client)
    except Exception as exc:  # noqa: BLE001 - no table yet is the same answer: nothing applied
        if "schema_migrations" not in str(exc):
            raise
        applied = set()
    pending = pending_migrations(applied)
    if pending:
        raise MigrationsPending(
            f"ClickHouse lacks {len(pending)} migration(s), first {pending[0]}: run `rating "
            "migrate` (the init step) with a user that may run DDL, or set "
            "SINK_APPLY_MIGRATIONS=true"
        )


def _statements(sql: str) -> list[str]:
    body = "\n".join(line for line in sql.splitlines() if not line.strip().startswith("--"))
    return [s.strip() for s in body.split(";") if s.strip()]


def _ts(ms: int | datetime | None) -> datetime | None:
    if ms is None:
        return None
    if isinstance(ms, datetime):
        return ms
    return datetime.fromtimestamp(ms // 1000, UTC).replace(microsecond=(ms % 1000) * 1000)


# ---------------------------------------------------------------- record -> column values
# Each mapper returns one {column: value} map; inserts name their columns from the route, so no
# value depends on its position. Deductions, the bulk of the rows, are mapped inside ClickHouse
# (infra/clickhouse/009_deductions_avro_landing.sql); deduction_values is the same mapping in
# Python, for a direct insert (the bench's baseline) and to check the two agree (a test).

DEDUCTION_COLUMNS = [
    "deduction_id",
    "event_id",
    "trace_id",
    "account_id",
    "main_account_id",
    "event_time",
    "profile",
    "currency",
    "price_version",
    "item",
    "model",
    "variant",
    "quantities",
    "tokens_cache_hit",
    "tokens_input",
    "tokens_cache_write",
    "tokens_output",
    "tokens_reasoning",
    "units",
    "lines_json",
    "rated_amount",
    "free_amount",
    "trial_amount",
    "pack_amount",
    "voucher_amount",
    "cash_amount",
    "unbilled_amount",
    "unbilled_reason",
    "split_bucket_kind",
    "split_bucket_id",
    "split_amount",
    "split_units",
    "split_unit",
    "billed_elsewhere",
    "flags",
    "balance_after",
    "settlement_period",
    "kind",
    "adjusts_deduction_id",
    "rerate_id",
    "settlement_id",
    "sequence",
]
TOKEN_ITEMS = ("tokens", "embedding", "rerank")
TOKEN_COLUMNS = {
    "tokens_cache_hit": "cache_hit",
    "tokens_input": "input",
    "tokens_cache_write": "cache_write",
    "tokens_output": "output",
    "tokens_reasoning": "reasoning",
}
SAME_NAME = (
    "deduction_id",
    "event_id",
    "trace_id",
    "account_id",
    "main_account_id",
    "profile",
    "currency",
    "price_version",
    "item",
    "quantities",
    "billed_elsewhere",
    "flags",
    "settlement_period",
    "kind",
)
OPTIONAL_STRINGS = (
    "model",
    "variant",
    "unbilled_reason",
    "adjusts_deduction_id",
    "rerate_id",
    "settlement_id",
)


def deduction_values(d: dict[str, Any]) -> dict[str, Any]:
    by_kind = {"free": ZERO, "trial": ZERO, "pack": ZERO, "voucher": ZERO, "cash": ZERO}
    splits = d["splits"]
    for s in splits:
        # an unknown kind is a KeyError: a bad record
        by_kind[s["bucket_kind"]] += Decimal(s["amount"])
    q = d["quantities"]
    tokens = d["item"] in TOKEN_ITEMS
    v: dict[str, Any] = {c: d[c] for c in SAME_NAME}
    v.update({c: d.get(c) or "" for c in OPTIONAL_STRINGS})
    v.update({c: int(q.get(k, 0)) if tokens else 0 for c, k in TOKEN_COLUMNS.items()})
    v.update({f"{kind}_amount": amount for kind, amount in by_kind.items()})
    v.update(
        event_time=_ts(d["event_time"]),
        units=ZERO if tokens else sum((Decimal(ln["units"]) for ln in d["lines"]), ZERO),
        lines_json=orjson.dumps(d["lines"]).decode(),
        rated_amount=Decimal(d["rated_amount"]),
        unbilled_amount=Decimal(d["unbilled_amount"]),
        balance_after=Decimal(d["balance_after"]),
        split_bucket_kind=[s["bucket_kind"] for s in splits],
        split_bucket_id=[s["bucket_id"] for s in splits],
        split_amount=[Decimal(s["amount"]) for s in splits],
        split_units=[Decimal(s["units"]) for s in splits],
        split_unit=[s["unit"] for s in splits],
        sequence=d.get("sequence", 0),  # 0: re-rating adjustments, records before deduction v4
    )
    return v


def deduction_row(d: dict[str, Any]) -> tuple:
    """The positional row of a direct row insert with DEDUCTION_COLUMNS (the bench's baseline)."""
    v = deduction_values(d)
    return tuple(v[c] for c in DEDUCTION_COLUMNS)


DEAD_LETTER_COLUMNS = [
    "dead_letter_id",
    "reason_code",
    "reason",
    "source_topic",
    "source_partition",
    "source_offset",
    "event_id",
    "main_account_id",
    "trace_id",
    "event_time",
    "payload_base64",
    "payload_size_bytes",
    "payload_sha256",
    "payload_truncated",
]


def dead_letter_values(d: dict[str, Any]) -> dict[str, Any]:
    v = {
        c: d[c]
        for c in (
            "dead_letter_id",
            "reason_code",
            "reason",
            "source_topic",
            "source_partition",
            "source_offset",
            "payload_sha256",
            "payload_truncated",
        )
    }
    v.update({c: d[c] or "" for c in ("event_id", "main_account_id", "trace_id")})
    v.update(
        event_time=_ts(d["event_time"]),
        payload_base64=base64.b64encode(d["payload"]).decode(),
        payload_size_bytes=max(d["payload_size_bytes"], len(d["payload"])),
    )
    return v


ALERT_COLUMNS = [
    "alert_id",
    "kind",
    "main_account_id",
    "account_id",
    "event_time",
    "episode",
    "model",
    "message",
    "details",
    "source_event_ids",
    "trace_id",
    "sequence",
]


def alert_values(a: dict[str, Any]) -> dict[str, Any]:
    v = {c: a[c] for c in ALERT_COLUMNS if c != "sequence"}
    # 0: written before alert v2 (the reader's default)
    v.update(event_time=_ts(a["event_time"]), model=a["model"] or "", sequence=a.get("sequence", 0))
    return v


STATUS_COLUMNS = [
    "main_account_id",
    "status",
    "reason",
    "since",
    "source_event_id",
    "sequence",
]


def status_values(s: dict[str, Any]) -> dict[str, Any]:
    return {
        "main_account_id": s["main_account_id"],
        "status": s["status"],
        "reason": s["reason"] or "",
        "since": _ts(s["since"]),
        "source_event_id": s["source_event_id"],
        "sequence": s.get("sequence", 0),
    }


BALANCE_COLUMNS = [
    "main_account_id",
    "currency",
    "cash_balance",
    "as_of",
    "source_event_id",
    "sequence",
]


def balance_values(b: dict[str, Any]) -> dict[str, Any]:
    return {
        "main_account_id": b["main_account_id"],
        "currency": b["currency"],
        "cash_balance": Decimal(b["cash_balance"]),
        "as_of": _ts(b["as_of"]),
        "source_event_id": b["source_event_id"],
        "sequence": b["sequence"],
    }


SETTLEMENT_COLUMNS = [
    "settlement_id",
    "main_account_id",
    "period_start",
    "period_end",
    "granularity",
    "line_type",
    "profile",
    "currency",
    "item",
    "model",
    "variant",
    "quantities",
    "gross_amount",
    "free_amount",
    "trial_amount",
    "pack_amount",
    "voucher_amount",
    "cash_amount",
    "unbilled_amount",
    "event_count",
    "price_versions",
    "closed_at",
]
SETTLEMENT_MONEY = (
    "gross_amount",
    "free_amount",
    "trial_amount",
    "pack_amount",
    "voucher_amount",
    "cash_amount",
    "unbilled_amount",
)


def settlement_values(s: dict[str, Any]) -> dict[str, Any]:
    v = {
        c: s[c]
        for c in (
            "settlement_id",
            "main_account_id",
            "granularity",
            "line_type",
            "profile",
            "currency",
            "item",
            "quantities",
            "event_count",
            "price_versions",
        )
    }
    v.update({c: _ts(s[c]) for c in ("period_start", "period_end", "closed_at")})
    v.update({c: Decimal(s[c]) for c in SETTLEMENT_MONEY})
    v.update(model=s["model"] or "", variant=s["variant"] or "")
    return v


USAGE_MINUTE_COLUMNS = [
    "usage_minute_id",
    "main_account_id",
    "model",
    "minute_start",
    "line_type",
    "requests",
    "tokens",
]


def usage_minute_values(m: dict[str, Any]) -> dict[str, Any]:
    v = {c: m[c] for c in USAGE_MINUTE_COLUMNS}
    v["minute_start"] = _ts(m["minute_start"])
    return v


ARCHIVE_COLUMNS = [
    "source_topic",
    "source_partition",
    "source_offset",
    "main_account_id",
    "payload",
    "message_time",
]


def archive_values(m: Any) -> dict[str, Any]:
    return {
        "source_topic": m.topic,
        "source_partition": m.partition,
        "source_offset": m.offset,
        "main_account_id": m.key.decode("utf-8", "replace") if m.key else "",
        "payload": m.value or b"",
        "message_time": _ts(m.timestamp),
    }


@dataclass(frozen=True)
class Route:
    table: str
    schema: str | None  # None: the message is stored as it is (the input archive)
    columns: list[str]
    values: Callable[[Any], dict[str, Any]]
    # an Avro landing table: the records' bodies go to ClickHouse as they are, and it maps them
    avro_landing: str | None = None


def routes(settings: Settings) -> dict[str, Route]:
    t = settings.topics
    return {
        t.deductions: Route(
            "deductions", "deduction", DEDUCTION_COLUMNS, deduction_values, "deductions_avro_in"
        ),
        t.dead_letters: Route(
            "dead_letters", "dead_letter", DEAD_LETTER_COLUMNS, dead_letter_values
        ),
        t.alerts: Route("alerts", "alert", ALERT_COLUMNS, alert_values),
        t.account_status: Route("account_status", "account_status", STATUS_COLUMNS, status_values),
        t.account_balances: Route(
            "account_balances", "account_balance", BALANCE_COLUMNS, balance_values
        ),
        t.settlements: Route("settlements", "settlement", SETTLEMENT_COLUMNS, settlement_values),
        t.usage_per_minute: Route(
            "usage_per_minute", "usage_minute", USAGE_MINUTE_COLUMNS, usage_minute_values
        ),
        **(
            {t.events: Route("events_archive", None, ARCHIVE_COLUMNS, archive_values)}
            if settings.sink_archive_events
            else {}
        ),
    }


# ---------------------------------------------------------------- Avro object container


def _zigzag(n: int) -> bytes:
    """An Avro long: zig-zag, then 7 bits per byte, low first."""
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while n & ~0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def avro_schema_json(reg: Registry, name: str) -> bytes:
    """The newest version of schema ``name`` as compact JSON, for an Avro container's header."""
    sv = reg.latest[name]
    filename = orjson.loads((SCHEMAS_DIR / "registry.json").read_bytes())["schemas"][
        str(sv.schema_id)
    ]
    return orjson.dumps(orjson.loads((SCHEMAS_DIR / filename).read_bytes()))


def avro_container(schema_json: bytes, bodies: list[bytes]) -> bytes:
    """An Avro object container file of one block: the header names the writer schema, the block is
    the record bodies concatenated (no per-record framing in Avro), then the sync marker."""
    sync = hashlib.sha256(schema_json).digest()[:16]  # any 16 bytes that mark the block's end
    meta = {b"avro.schema": schema_json, b"avro.codec": b"null"}
    header = bytearray(b"Obj\x01") + _zigzag(len(meta))
    for key, value in meta.items():
        header += _zigzag(len(key)) + key + _zigzag(len(value)) + value
    header += b"\x00" + sync
    block = b"".join(bodies)
    return b"".join((bytes(header), _zigzag(len(bodies)), _zigzag(len(block)), block, sync))


# ---------------------------------------------------------------- errors


class SinkHalted(RuntimeError):
    """An output record the sink cannot read or ClickHouse refuses: it stops without committing
    rather than skip it or retry it for ever (exit code 3)."""


class InsertRejected(SinkHalted):
    """ClickHouse refused an insert for a reason a retry cannot change (a schema mismatch, a value
    that does not convert), or a record could not be mapped to columns."""


# ClickHouse error codes that mean "this insert will never succeed as it is": parse and type
# errors, unknown columns or tables, overflow. Anything else (network, timeouts, too many parts,
# memory, a server restarting) is retried.
PERMANENT_CODES = frozenset(
    {
        6,
        8,
        10,
        16,
        20,
        26,
        27,
        32,
        33,
        36,
        38,
        41,
        43,
        44,
        47,
        53,
        60,
        62,
        69,
        70,
        72,
        76,
        117,
        130,
        131,
        190,
        349,
        395,
        407,
        441,
        649,
    }
)
_CODE = re.compile(r"Code: (\d+)")


def is_permanent(exc: BaseException) -> bool:
    from clickhouse_connect.driver.exceptions import (
        DatabaseError,
        DataError,
        OperationalError,
        ProgrammingError,
    )

    if isinstance(exc, OperationalError):
        return False
    if isinstance(exc, DatabaseError):
        found = _CODE.search(str(exc))
        if found:
            return int(found.group(1)) in PERMANENT_CODES
        return isinstance(exc, (DataError, ProgrammingError))  # raised by the client before sending
    # a client-side conversion of a bad value (Python rows)
    return isinstance(exc, (KeyError, TypeError, ValueError, ArithmeticError)) and not isinstance(
        exc, OSError
    )


@dataclass
class SinkStats:
    batches: int = 0
    rows: dict[str, int] = field(default_factory=dict)
    insert_failures: int = 0
    last_insert_seconds: float = 0.0


@dataclass
class TableBatch:
    """What one batch inserts into one table: column maps, or Avro bodies for a landing table."""

    route: Route
    values: list[dict[str, Any]] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    token_parts: list[str] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return len(self.values) + len(self.bodies)

    def token(self) -> str:
        return hashlib.sha256("|".join(sorted(self.token_parts)).encode()).hexdigest()


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
        self._avro_schemas: dict[str, bytes] = {
            r.schema: self._schema_json(r.schema)
            for r in self.routes.values()
            if r.avro_landing and r.schema
        }

    def _schema_json(self, name: str) -> bytes:
        return avro_schema_json(self.registry, name)

    async def start(self) -> None:
        if self.settings.sink_apply_migrations:
            cluster = self.settings.clickhouse_cluster
            await asyncio.to_thread(migrate, self.client, None, cluster)
        else:
            await asyncio.to_thread(check_migrations, self.client)
        self.consumer = AIOKafkaConsumer(
            *self.routes,
            **client_kwargs(self.settings),
            group_id=self.settings.sink_group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=8 * 1024 * 1024,
            fetch_max_wait_ms=self.settings.kafka_fetch_max_wait_ms,
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

    async def _fetch(self) -> dict[TopicPartition, list]:
        """Records until SINK_BATCH_MAX of them or SINK_BATCH_WITHIN_MS have passed, whichever is
        first: big inserts (few parts) under load, a bounded delay when traffic is light."""
        assert self.consumer is not None
        limit = self.settings.sink_batch_max
        deadline = time.monotonic() + self.settings.sink_batch_within_ms / 1000
        batch: dict[TopicPartition, list] = {}
        count = 0
        while count < limit:
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            if remaining_ms <= 0:
                break
            got = await self.consumer.getmany(timeout_ms=remaining_ms, max_records=limit - count)
            for tp, messages in got.items():
                batch.setdefault(tp, []).extend(messages)
                count += len(messages)
        return batch

    async def step(self, stop: asyncio.Event | None = None) -> int:
        """One batch: fetch, insert (retrying transient failures), commit. Returns rows."""
        batch = await self._fetch()
        if not batch:
            return 0
        tables: dict[str, TableBatch] = {}
        commit: dict[TopicPartition, int] = {}
        for tp, messages in batch.items():
            route = self.routes[tp.topic]
            table = tables.setdefault(route.table, TableBatch(route))
            for m in messages:
                self._add(table, tp, m)
            table.token_parts.append(
                f"{tp.topic}:{tp.partition}:{messages[0].offset}-{messages[-1].offset}"
            )
            commit[tp] = messages[-1].offset + 1
        for table in tables.values():
            if table.rows:
                await self._insert_with_retry(table, stop)
        assert self.consumer is not None
        await self.consumer.commit(commit)
        self.stats.batches += 1
        total = sum(t.rows for t in tables.values())
        self.metrics.sink_batch_rows.observe(total)
        self.committed.update(commit)
        self.update_lag()
        return total

    def _add(self, table: TableBatch, tp: TopicPartition, m: Any) -> None:
        route = table.route
        if route.schema is None:
            if not self.registry.is_clock_tick(m.value):
                table.values.append(route.values(m))
            return
        if route.avro_landing:
            table.bodies.append(self._avro_body(route, tp, m))
            return
        record = self._decode(route, tp, m)
        try:
            table.values.append(route.values(record))
        except (KeyError, TypeError, ValueError, ArithmeticError) as exc:
            self._halt(route.table, "bad_record")
            raise InsertRejected(
                f"{tp.topic}[{tp.partition}]@{m.offset}: cannot map the {route.schema} record to "
                f"{route.table} columns: {type(exc).__name__}: {exc}"
            ) from exc

    def _decode(self, route: Route, tp: TopicPartition, m: Any) -> dict[str, Any]:
        try:
            name, record = self.registry.decode(m.value)
        except DecodeError as exc:
            # our own output topic: a newer schema than this sink knows (roll readers out
            # first) or a bug. Stop before committing anything, so nothing is lost.
            self._halt(route.table, "unreadable_record")
            raise SinkHalted(
                f"cannot read {tp.topic}[{tp.partition}]@{m.offset}: {exc}; "
                "upgrade the sink if a newer schema version was deployed"
            ) from None
        if name != route.schema:
            self._halt(route.table, "unreadable_record")
            raise SinkHalted(
                f"{tp.topic}[{tp.partition}]@{m.offset} holds a {name} record, expected "
                f"{route.schema}"
            )
        return record

    def _avro_body(self, route: Route, tp: TopicPartition, m: Any) -> bytes:
        """The record's Avro body in the newest schema version, which the landing table has. The
        header alone tells a current record; an older one (rare: a rollout) is resolved and
        written again in the newest version."""
        assert route.schema is not None
        value = m.value
        latest = self.registry.latest[route.schema]
        if (
            value
            and len(value) > 5
            and value[0] == 0
            and int.from_bytes(value[1:5], "big") == latest.schema_id
        ):
            return value[5:]
        record = self._decode(route, tp, m)
        return self.registry.encode(route.schema, record)[5:]

    def _halt(self, table: str, reason: str) -> None:
        self.metrics.sink_halted.labels(table, reason).inc()

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

    def _insert(self, table: TableBatch, token: str) -> None:
        route = table.route
        settings = {**INSERT_SETTINGS, "insert_deduplication_token": token}
        if self.settings.clickhouse_cluster:
            # acknowledged once the shards hold the rows, not when queued on this node
            settings["insert_distributed_sync"] = 1
        if route.avro_landing:
            assert route.schema is not None
            # the token also deduplicates the block the view writes into the target table
            settings["deduplicate_blocks_in_dependent_materialized_views"] = 1
            self.client.raw_insert(
                route.avro_landing,
                None,
                avro_container(self._avro_schemas[route.schema], table.bodies),
                settings=settings,
                fmt="Avro",
            )
            return
        columns = [[v[c] for v in table.values] for c in route.columns]
        self.client.insert(
            route.table,
            columns,
            column_names=route.columns,
            column_oriented=True,
            settings=settings,
        )

    async def _insert_with_retry(self, table: TableBatch, stop) -> None:
        name, rows, token = table.route.table, table.rows, table.token()
        delay = 0.2
        while True:
            started = time.perf_counter()
            try:
                await asyncio.to_thread(self._insert, table, token)
            except Exception as exc:
                self.stats.insert_failures += 1
                self.metrics.sink_insert_failures.labels(name).inc()
                if is_permanent(exc):
                    self._halt(name, "insert_rejected")
                    log.error("insert of %d rows into %s rejected, stopping: %s", rows, name, exc)
                    raise InsertRejected(
                        f"ClickHouse rejected the insert of {rows} rows into {name} "
                        f"({token_range(table)}): {exc}"
                    ) from exc
                self.update_lag()
                log.warning(
                    "insert of %d rows into %s failed (%s); retrying in %.1fs",
                    rows,
                    name,
                    exc,
                    delay,
                )
                if stop is not None and stop.is_set():
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            self.stats.last_insert_seconds = time.perf_counter() - started
            self.stats.rows[name] = self.stats.rows.get(name, 0) + rows
            self.metrics.sink_insert_seconds.labels(name).observe(self.stats.last_insert_seconds)
            self.metrics.sink_rows.labels(name).inc(rows)
            return


def token_range(table: TableBatch) -> str:
    """The topic partitions and offsets of a batch, for the operator."""
    return ", ".join(sorted(table.token_parts))


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
