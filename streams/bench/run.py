"""`rating bench` / `make bench`: every figure measured in one run, next to its baseline.

Machines here are noisy, so throughput is reported as a ratio to a no-op faust agent measured on
the same broker, the same topic layout and the same input, minutes apart.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from rich.console import Console
from rich.table import Table

from streams.engine import BillingEngine
from streams.ingest.codec import registry
from streams.ingest.producer import EventProducer, delivery_order
from streams.kafka_admin import create_topics
from streams.local.pipeline import LocalPipeline
from streams.local.synthetic import generate
from streams.local.tansu import start_broker
from streams.rating.profiles import Profiles
from streams.simulate import read_lines, simulate
from streams.sink.clickhouse import ClickHouseSink, connect, migrate

EXTRA_ENV: dict[str, str] = {}


@dataclass
class Figure:
    name: str
    value: float
    unit: str
    baseline: float | None = None
    target: str = ""
    met: bool | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        return self.value / self.baseline if self.baseline else None


@dataclass
class BenchPipeline(LocalPipeline):
    """A pipeline on its own slice of the shared broker: ``tag`` prefixes its topics, groups and
    account ids."""

    tag: str = ""


@dataclass
class Bench:
    run_dir: Path
    console: Console
    events: int
    accounts: int
    figures: list[Figure] = field(default_factory=list)
    n: int = 0

    def add(self, fig: Figure) -> Figure:
        self.figures.append(fig)
        r = f" = {fig.ratio:.2f}x baseline" if fig.ratio is not None else ""
        self.console.print(f"  {fig.name}: {fig.value:,.1f} {fig.unit}{r} {fig.note}")
        return fig

    def slice(self, broker, **env) -> BenchPipeline:
        self.n += 1
        tag = f"b{self.n}"
        p = BenchPipeline(
            self.run_dir / tag,
            env_overrides={
                **EXTRA_ENV,
                "KAFKA_TOPIC_PREFIX": f"{tag}.",
                "WORKER_APP_ID": f"{tag}-rating",
                "SINK_GROUP_ID": f"{tag}-sink",
                "CHDB_PATH": str(self.run_dir / "chdb"),
                "WORKER_TICK_INTERVAL_MS": "1000",
                **env,
            },
            tag=tag,
        )
        settings = p.start_broker(broker.bootstrap)
        asyncio.run(create_topics(settings))
        return p


def wait_ready(log_path: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log_path.exists() and b"Ready" in log_path.read_bytes():
            time.sleep(1.0)  # let the first fetches settle
            return
        time.sleep(0.1)
    raise RuntimeError(f"worker not ready after {timeout:.0f}s; see {log_path}")


def percentile(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


async def produce_timed(settings, lines: list[bytes], batch: int) -> float:
    t0 = time.time()
    async with EventProducer(settings) as producer:
        await producer.send_lines(lines, batch_size=batch)
    return t0


def measure_baseline(b: Bench, broker, lines: list[bytes]) -> float:
    p = b.slice(broker)
    out = p.run_dir / "noop.out"
    env = p.worker_env() | {"BENCH_EXPECT": str(len(lines)), "BENCH_OUT": str(out)}
    log = p.run_dir / "noop.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "streams.bench.noop_app"],
        env=env,
        stdout=open(log, "ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_ready(log)
        t0 = asyncio.run(produce_timed(p.settings, lines, 1))
        deadline = time.monotonic() + 300
        while not out.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        first, last, n = out.read_text().split()
        return len(lines) / (float(last) - t0)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        p.stop()


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a process so far (Linux /proc; None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class PipelineRun:
    events_per_s: float
    worker_cpu_us_per_event: float | None  # summed over the workers
    changelog_bytes_per_event: dict[str, float] = field(default_factory=dict)  # per table


def measure_pipeline(b: Bench, broker, ch, batch: int, workers: int = 1) -> PipelineRun:
    """Events/s from the first produce to the last deduction in ClickHouse, and the workers' CPU
    microseconds per event over the same span (machine-independent, unlike events/s)."""
    p = b.slice(broker)
    settings = p.settings
    assert settings is not None  # slice started it
    lines = generate(seed=3, accounts=b.accounts, usage_events=b.events, prefix=p.tag)
    if batch > 1:
        lines = delivery_order(lines, batch)
    want = len(simulate(list(enumerate(lines, 1)), BillingEngine(Profiles())).deductions)
    pids, logs = [], []
    for _ in range(workers):
        w = p.start_worker()
        wait_ready(w.log_path)
        pids.append(w.process.pid)
        logs.append(w.log_path)
    if workers > 1:
        time.sleep(6)  # the group settles after the second member joins
    sink = ClickHouseSink(settings, client=ch)

    async def go() -> float:
        await sink.start()
        try:
            t0 = time.time()
            async with EventProducer(settings) as producer:
                await producer.send_lines(lines, batch_size=batch)
            while True:
                await sink.step()
                got = ch.query(
                    f"SELECT count() FROM deductions FINAL WHERE main_account_id LIKE '{p.tag}-%'"
                ).result_rows[0][0]
                if got >= want:
                    return time.time() - t0
        finally:
            await sink.stop()

    try:
        cpu_before = [process_cpu_s(pid) for pid in pids]
        seconds = asyncio.run(go())
        cpu_after = [process_cpu_s(pid) for pid in pids]
        before = [c for c in cpu_before if c is not None]
        after = [c for c in cpu_after if c is not None]
        known = len(before) == len(cpu_before) and len(after) == len(cpu_after)
        cpu_s = sum(a - c for a, c in zip(after, before, strict=True)) if known else None
    finally:
        p.stop()  # a worker logs its final counts, changelog bytes included, as it stops
    written: dict[str, float] = {}
    for log_path in logs:
        for table, n in changelog_bytes(log_path).items():
            written[table] = written.get(table, 0) + n / len(lines)
    return PipelineRun(
        len(lines) / seconds, cpu_s / len(lines) * 1e6 if cpu_s is not None else None, written
    )


def measure_aiokafka_loop(b: Bench, broker, lines: list[bytes]) -> float:
    """Second baseline: a plain aiokafka loop that consumes the input and produces one record per
    event to an output topic (no faust, no rating), so the bench shows what faust itself costs."""
    p = b.slice(broker)
    settings = p.settings
    assert settings is not None  # slice started it

    async def go() -> float:
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

        from streams.kafka_client import client_kwargs, producer_kwargs

        consumer = AIOKafkaConsumer(
            settings.topics.events,
            **client_kwargs(settings),
            group_id=f"{p.tag}-loop",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
        )
        producer = AIOKafkaProducer(**producer_kwargs(settings))
        await consumer.start()
        await producer.start()
        try:
            t0 = await produce_timed(settings, lines, 1)
            seen = 0
            while seen < len(lines):
                batches = await consumer.getmany(timeout_ms=100, max_records=500)
                futures = [
                    await producer.send(settings.topics.deductions, key=m.key, value=m.value)
                    for msgs in batches.values()
                    for m in msgs
                ]
                await asyncio.gather(*futures)
                seen += len(futures)
                if futures:
                    await consumer.commit()
            return len(lines) / (time.time() - t0)
        finally:
            await producer.stop()
            await consumer.stop()

    try:
        return asyncio.run(go())
    finally:
        p.stop()


def worker_round_timing(log_path: Path) -> dict[str, float]:
    """The medians the worker logs every 10 s (``age_at_start_ms``: fetch and queueing before a
    round; ``process_ms``: rating the round; ``output_ack_ms``: producing and awaiting outputs,
    dedupe entries and states), averaged over the run's report lines."""
    import re

    found: dict[str, list[float]] = {"age_at_start_ms": [], "process_ms": [], "output_ack_ms": []}
    for line in log_path.read_text(errors="replace").splitlines():
        for name, values in found.items():
            m = re.search(rf"{name} p50=([0-9.]+)", line)
            if m:
                values.append(float(m.group(1)))
    return {name: sum(v) / len(v) for name, v in found.items() if v}


def changelog_bytes(log_path: Path) -> dict[str, int]:
    """Bytes the worker wrote to each table's changelog (keys and values), from its last
    ``counts`` line (cumulative since it started)."""
    import re

    last: dict[str, int] = {}
    for line in log_path.read_text(errors="replace").splitlines():
        if "changelog_bytes:" in line:
            part = line.split("changelog_bytes:", 1)[1].split(";", 1)[0]
            last = {k: int(v) for k, v in re.findall(r"([\w-]+)=(\d+)", part)}
    return last


def measure_latency(
    b: Bench, broker, ch, lines: list[bytes], rate: float
) -> tuple[list[float], list[float], dict[str, float]]:
    p = b.slice(broker)
    assert p.settings is not None  # slice started it
    w = p.start_worker()
    wait_ready(w.log_path)
    sink = ClickHouseSink(p.settings, client=ch)
    sent_at: dict[str, float] = {}
    ids = [orjson.loads(ln)["event_id"] for ln in lines]
    lines_path, stamps_path = p.run_dir / "latency-input.jsonl", p.run_dir / "latency-sent.json"
    lines_path.write_bytes(b"\n".join(lines) + b"\n")

    async def go():
        from aiokafka import AIOKafkaConsumer

        from streams.kafka_client import client_kwargs

        await sink.start()
        consumer = AIOKafkaConsumer(
            p.settings.topics.deductions,
            **client_kwargs(p.settings),
            group_id=None,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await consumer.start()
        deduction_at: dict[str, float] = {}
        stop = asyncio.Event()

        async def sink_loop():
            while not stop.is_set():
                await sink.step()

        async def read_deductions():
            reg = registry()
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=100)
                for msgs in batch.values():
                    for m in msgs:
                        # the worker's producer stamps each deduction when it sends it (CreateTime):
                        # the measure does not depend on when this reader gets round to it
                        deduction_at[reg.decode(m.value)[1]["event_id"]] = m.timestamp / 1000

        tasks = [asyncio.create_task(sink_loop()), asyncio.create_task(read_deductions())]
        # the load comes from a process of its own: this loop is held by chDB inserts
        load = subprocess.Popen(
            [sys.executable, "-m", "streams.bench.paced_producer", str(lines_path), str(rate)]
            + [str(stamps_path)],
            env=p.worker_env(),
        )
        while load.poll() is None:
            await asyncio.sleep(0.1)
        if load.returncode != 0:
            raise RuntimeError(f"the paced producer exited with code {load.returncode}")
        sent_at.update(orjson.loads(stamps_path.read_bytes()))
        deadline = time.time() + 60
        while time.time() < deadline and len(deduction_at) < len([i for i in ids if "-u-" in i]):
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)
        stop.set()
        for t in tasks:
            await t
        await consumer.stop()
        await sink.stop()
        return deduction_at

    try:
        deduction_at = asyncio.run(go())
        rows = ch.query(
            "SELECT event_id, toUnixTimestamp64Milli(ingested_at) FROM deductions WHERE event_id "
            "IN {ids:Array(String)}",
            parameters={"ids": [i for i in ids if "-u-" in i]},
        ).result_rows
        to_deduction = [(deduction_at[e] - sent_at[e]) * 1000 for e in deduction_at if e in sent_at]
        to_clickhouse = [ms - sent_at[e] * 1000 for e, ms in rows if e in sent_at]
        return to_deduction, to_clickhouse, worker_round_timing(w.log_path)
    finally:
        p.stop()


SINK_BENCH_BATCH = 20_000  # records per sink insert in the bench (SINK_BATCH_MAX)


def measure_sink(
    b: Bench, broker, ch, deductions: list[dict], rows: int
) -> tuple[float, float, float]:
    """Rows/s of the sink from Kafka into chDB; of a direct row insert of the same rows (the
    Python mapping, the issue's baseline); and of ClickHouse alone taking the same Avro bodies in
    the sink's containers and batch size (no Kafka, no Python per row): the sink's ceiling."""
    p = b.slice(broker, SINK_BATCH_MAX=str(SINK_BENCH_BATCH))
    reg = registry()
    records = []
    for i in range(rows):
        d = dict(deductions[i % len(deductions)])
        d["deduction_id"] = f"{p.tag}-{i}"
        d["main_account_id"] = f"{p.tag}-acct-{i % 500}"
        records.append(d)

    async def fill():
        from aiokafka import AIOKafkaProducer

        from streams.kafka_client import producer_kwargs

        prod = AIOKafkaProducer(**{**producer_kwargs(p.settings), "max_batch_size": 1 << 20})
        await prod.start()
        futures = [
            await prod.send(
                p.settings.topics.deductions,
                key=r["main_account_id"].encode(),
                value=reg.encode("deduction", r),
            )
            for r in records
        ]
        for f in futures:
            await f
        await prod.stop()

    asyncio.run(fill())
    assert p.settings is not None  # slice started it
    sink = ClickHouseSink(p.settings, client=ch)

    async def drain() -> float:
        await sink.start()
        try:
            t0 = time.perf_counter()
            landed = 0
            while landed < rows:
                landed += await sink.step()
            return time.perf_counter() - t0
        finally:
            await sink.stop()

    try:
        sink_seconds = asyncio.run(drain())
        # baseline: the same rows inserted straight into the same table in one call, no Kafka
        from streams.sink.clickhouse import DEDUCTION_COLUMNS, INSERT_SETTINGS, deduction_row

        table_rows = [
            deduction_row(dict(r, deduction_id=r["deduction_id"] + "-direct")) for r in records
        ]
        t0 = time.perf_counter()
        ch.insert(
            "deductions", table_rows, column_names=DEDUCTION_COLUMNS, settings=INSERT_SETTINGS
        )
        direct_seconds = time.perf_counter() - t0
        return rows / sink_seconds, rows / direct_seconds, rows / _insert_avro_alone(ch, records)
    finally:
        p.stop()


def _insert_avro_alone(ch, records: list[dict]) -> float:
    """Seconds ClickHouse takes to land ``records`` through the sink's Avro landing table, in
    containers of ``SINK_BATCH_MAX`` as the sink sends them."""
    from streams.sink.clickhouse import INSERT_SETTINGS, avro_container, avro_schema_json

    reg = registry()
    bodies = [
        reg.encode("deduction", dict(r, deduction_id=r["deduction_id"] + "-ch"))[5:]
        for r in records
    ]
    schema_json = avro_schema_json(reg, "deduction")
    batch = SINK_BENCH_BATCH
    t0 = time.perf_counter()
    for start in range(0, len(bodies), batch):
        ch.raw_insert(
            "deductions_avro_in",
            None,
            avro_container(schema_json, bodies[start : start + batch]),
            settings={
                **INSERT_SETTINGS,
                "insert_deduplication_token": f"alone-{start}",
                "deduplicate_blocks_in_dependent_materialized_views": 1,
            },
            fmt="Avro",
        )
    return time.perf_counter() - t0


def measure_state(accounts: int) -> tuple[float, float]:
    engine = BillingEngine(Profiles())
    from streams.ingest.events import parse_json_event

    def ev(**kw):
        return parse_json_event(kw)

    states = {}
    for i in range(accounts):
        key = f"s-{i:07d}"
        if i % 2:
            s = engine.apply(
                None,
                ev(
                    kind="account",
                    event_id=f"o{i}",
                    account_id=key,
                    main_account_id=key,
                    event_time="2026-05-01T00:00:00Z",
                    type="account_opened",
                    profile="coze-pro",
                    amount="10",
                ),
            ).state
            engine.apply(
                s,
                ev(
                    kind="account",
                    event_id=f"p{i}",
                    account_id=key,
                    main_account_id=key,
                    event_time="2026-05-01T00:00:00Z",
                    type="pack_purchased",
                    pack_kind="coze_unified",
                    pack_id=f"pk{i}",
                    amount="1000",
                    expires_at="2026-08-01T00:00:00Z",
                ),
            )
            engine.apply(
                s,
                ev(
                    kind="usage",
                    event_id=f"u{i}",
                    account_id=key,
                    main_account_id=key,
                    event_time="2026-05-01T01:00:00Z",
                    item="agent_call",
                    quantity="300",
                ),
            )
        else:
            s = engine.apply(
                None,
                ev(
                    kind="account",
                    event_id=f"o{i}",
                    account_id=key,
                    main_account_id=key,
                    event_time="2026-05-01T00:00:00Z",
                    type="account_opened",
                    profile="tokenhub",
                    post_paid=True,
                ),
            ).state
            engine.apply(
                s,
                ev(
                    kind="usage",
                    event_id=f"u{i}",
                    account_id=key,
                    main_account_id=key,
                    event_time="2026-05-01T01:00:00Z",
                    item="tokens",
                    model="kimi-k2.5",
                    input_tokens=1000,
                    output_tokens=100,
                ),
            )
        states[key] = s
    # The worker's table holds each account as its serialized value (bytes) keyed by the main
    # account id: that dict is what a worker keeps in memory (memory:// store), and each value is
    # one changelog record.
    import tracemalloc

    blobs = {k.encode(): s.stored() for k, s in states.items()}  # as the worker's table holds them
    del states
    gc.collect()
    tracemalloc.start()
    table = {
        bytes(bytearray(k)): bytes(bytearray(v)) for k, v in blobs.items()
    }  # fresh copies, traced
    memory = tracemalloc.get_traced_memory()[0] / accounts * 100_000
    tracemalloc.stop()
    changelog = sum(len(k) + len(v) for k, v in table.items()) / accounts * 100_000
    return memory, changelog


def measure_simulate(run_dir: Path, events: int) -> tuple[float, float]:
    """events/s of ``rating simulate`` over a file, and CPU microseconds per event of the core."""
    path = run_dir / "simulate-input.jsonl"
    with open(path, "wb") as fh:
        for raw in generate(seed=7, accounts=2000, usage_events=events, prefix="sim"):
            fh.write(raw + b"\n")
    engine = BillingEngine(Profiles())
    t0, c0 = time.perf_counter(), time.process_time()
    result = simulate(read_lines(path), engine, source=path.name)
    seconds, cpu_s = time.perf_counter() - t0, time.process_time() - c0
    return result.counts["consumed"] / seconds, cpu_s / result.counts["consumed"] * 1e6


def measure_heavy_account(requests: int, window: int = 100_000) -> tuple[float, float, int, int]:
    """One account with ``requests`` requests in one day, through the simulate loop: events/s
    over its first and its last ``window`` events (flat when nothing grows with the traffic), the
    largest output record and the account state's size at the end, in bytes (JSON)."""
    import orjson as _orjson

    from streams.ingest.events import parse_json_event
    from streams.ingest.messages import Decoded
    from streams.local.synthetic import heavy_account
    from streams.simulate import Simulation

    lines = heavy_account("bench-heavy", requests, span_s=86_400, seed=11)
    events = [
        parse_json_event(_orjson.loads(raw)) for raw in lines
    ]  # parsing is not what is measured
    sim = Simulation(BillingEngine(Profiles()), partitions=4)
    marks = {}
    for n, (event, raw) in enumerate(zip(events, lines, strict=True)):
        if n in (1, 1 + window, len(events) - window, len(events) - 1):
            marks[n] = time.perf_counter()
        sim.apply(event, Decoded(event, None, raw), "heavy", n)
    first = window / (marks[1 + window] - marks[1])
    last = (window - 1) / (marks[len(events) - 1] - marks[len(events) - window])
    result = sim.finish()
    largest = max(
        len(_orjson.dumps(r))
        for r in (*result.deductions[-1000:], *result.settlements, *result.alerts)
    )
    return first, last, largest, len(result.states["bench-heavy"].dumps())


def run_bench(
    out: Path,
    *,
    events: int,
    accounts: int,
    simulate_events: int,
    state_accounts: int,
    console: Console,
    heavy_requests: int = 1_000_000,
) -> list[Figure]:
    run_dir = Path(".run") / "bench"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    b = Bench(run_dir, console, events, accounts)
    console.print(
        f"[bold]rating bench[/]: {events} events over {accounts} accounts; machine: "
        f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}"
    )
    lines = generate(seed=3, accounts=accounts, usage_events=events, prefix="base")
    sim = simulate(list(enumerate(lines, 1)), BillingEngine(Profiles()))
    with start_broker(log_path=run_dir / "broker.log") as broker:
        ch = connect(__import__("streams.config").config.Settings(chdb_path=run_dir / "chdb"))
        migrate(ch)
        console.print("[bold]baseline[/]: no-op faust agent, single-event messages")
        baseline = b.add(
            Figure(
                "no-op faust agent",
                measure_baseline(b, broker, lines),
                "events/s",
                note="(baseline)",
            )
        ).value

        console.print("[bold]baseline[/]: plain aiokafka consume-and-produce loop")
        loop = b.add(
            Figure(
                "plain aiokafka loop",
                measure_aiokafka_loop(b, broker, lines),
                "events/s",
                baseline,
                note="(second baseline; ratio: vs the no-op faust agent)",
            )
        )

        console.print("[bold]pipeline[/]: produce -> worker -> ClickHouse")
        run1 = measure_pipeline(b, broker, ch, 1)
        single = b.add(
            Figure(
                "end-to-end, single-event messages",
                run1.events_per_s,
                "events/s",
                baseline,
                ">= 0.8x baseline",
            )
        )
        assert single.ratio is not None  # its baseline is a measured rate
        single.met = single.ratio >= 0.8
        b.add(
            Figure(
                "end-to-end, single-event, vs the aiokafka loop",
                run1.events_per_s,
                "events/s",
                loop.value,
            )
        )
        if run1.worker_cpu_us_per_event is not None:
            b.add(Figure("worker CPU per event, single-event", run1.worker_cpu_us_per_event, "us"))
        for table, per_event in sorted(run1.changelog_bytes_per_event.items()):
            b.add(Figure(f"changelog bytes per event, {table}", per_event, "bytes"))
        run100 = measure_pipeline(b, broker, ch, 100)
        batched = b.add(
            Figure(
                "end-to-end, 100 events per message",
                run100.events_per_s,
                "events/s",
                baseline,
                ">= 3x baseline",
            )
        )
        assert batched.ratio is not None  # its baseline is a measured rate
        batched.met = batched.ratio >= 3
        if run100.worker_cpu_us_per_event is not None:
            b.add(
                Figure(
                    "worker CPU per event, 100 per message", run100.worker_cpu_us_per_event, "us"
                )
            )

        console.print("[bold]latency[/] at half the measured single-event rate")
        lat_lines = generate(
            seed=4,
            accounts=accounts,
            usage_events=max(2000, int(single.value * 10 / 2)),
            prefix="lat",
        )
        to_deduction, to_ch, hops = measure_latency(b, broker, ch, lat_lines, single.value / 2)
        for name, values, goal_ms in (
            ("event -> deduction", to_deduction, 250),
            ("event -> ClickHouse row", to_ch, 1000),
        ):
            if values:
                b.add(Figure(f"{name} p50", percentile(values, 50), "ms"))
                f = b.add(
                    Figure(
                        f"{name} p99", percentile(values, 99), "ms", target=f"p99 < {goal_ms:,} ms"
                    )
                )
                f.met = f.value < goal_ms
        for hop, label in (
            ("age_at_start_ms", "fetch + queue before a round"),
            ("process_ms", "rating a round"),
            ("output_ack_ms", "outputs, entries, states acknowledged"),
        ):
            if hop in hops:
                b.add(Figure(f"hop: {label}, p50", hops[hop], "ms"))

        console.print("[bold]sink[/]: 100,000 deductions from Kafka into chDB")
        sink_rate, direct_rate, alone_rate = measure_sink(b, broker, ch, sim.deductions, 100_000)
        f = b.add(
            Figure(
                "sink rows/s into chDB",
                sink_rate,
                "rows/s",
                direct_rate,
                ">= 100,000 rows/s",
                note="(baseline: one direct insert)",
            )
        )
        f.met = sink_rate >= 100_000
        b.add(
            Figure(
                "sink rows/s, vs ClickHouse alone",
                sink_rate,
                "rows/s",
                alone_rate,
                note="(baseline: the same Avro containers inserted with no Kafka and no Python)",
            )
        )

        console.print("[bold]scaling[/]: 2 workers vs 1 on the same partitions")
        run2 = measure_pipeline(b, broker, ch, 1, workers=2)
        two = b.add(
            Figure(
                "end-to-end, 2 workers, single-event",
                run2.events_per_s,
                "events/s",
                single.value,
                ">= 1.4x one worker",
                note="(baseline: 1 worker)",
            )
        )
        assert two.ratio is not None  # its baseline is a measured rate
        two.met = two.ratio >= 1.4
        if run2.worker_cpu_us_per_event is not None and run1.worker_cpu_us_per_event:
            f = b.add(
                Figure(
                    "worker CPU per event, 2 workers",
                    run2.worker_cpu_us_per_event,
                    "us",
                    run1.worker_cpu_us_per_event,
                    "<= 1.15x one worker",
                    note="(baseline: 1 worker)",
                )
            )
            assert f.ratio is not None  # run1's CPU per event, checked non-zero above
            f.met = f.ratio <= 1.15

    console.print(
        f"[bold]state[/]: {state_accounts} accounts with live packs and trials, scaled to 100,000"
    )
    memory, changelog = measure_state(state_accounts)
    for name, size in (("memory", memory), ("changelog bytes", changelog)):
        b.add(
            Figure(
                f"{name} per 100,000 accounts",
                size / 1e6,
                "MB",
                target="<= 50 MB",
                met=size <= 50e6,
            )
        )

    console.print(f"[bold]simulate[/]: {simulate_events:,} events")
    sim_rate, cpu_us = measure_simulate(run_dir, simulate_events)
    rate = b.add(
        Figure(
            f"rating simulate, {simulate_events:,}-event file",
            sim_rate,
            "events/s",
            baseline,
            ">= 8x baseline",
            note="(ratio: vs the no-op faust agent)",
        )
    )
    assert rate.ratio is not None  # its baseline is a measured rate
    rate.met = rate.ratio >= 8
    b.add(Figure("core CPU per event (simulate)", cpu_us, "us"))

    console.print(f"[bold]heavy account[/]: one account, {heavy_requests:,} requests in one day")
    first, last, largest, state_bytes = measure_heavy_account(heavy_requests)
    f = b.add(
        Figure(
            "heavy account, last 100,000 events",
            last,
            "events/s",
            first,
            ">= 0.9x its first 100,000",
            note="(baseline: its first 100,000)",
        )
    )
    assert f.ratio is not None  # its baseline is a measured rate
    f.met = f.ratio >= 0.9
    f = b.add(
        Figure("heavy account, largest output record", largest, "bytes", target="<= 65,536 bytes")
    )
    f.met = largest <= 65_536
    b.add(Figure("heavy account, state after all its events", state_bytes, "bytes"))

    report = Table(
        title=(
            f"rating bench ({os.cpu_count()} cores; ratios against a baseline measured in this run)"
        )
    )
    for col in ("measure", "value", "baseline", "ratio", "target", "met"):
        report.add_column(col, justify="right" if col in ("value", "baseline", "ratio") else "left")
    for f in b.figures:
        report.add_row(
            f.name,
            f"{f.value:,.1f} {f.unit}",
            "" if f.baseline is None else f"{f.baseline:,.1f}",
            "" if f.ratio is None else f"{f.ratio:.2f}x",
            f.target,
            "" if f.met is None else ("[green]yes[/]" if f.met else "[red]no[/]"),
        )
    console.print(report)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "machine": {
                    "cores": os.cpu_count(),
                    "python": platform.python_version(),
                    "platform": platform.platform(),
                },
                "events": events,
                "accounts": accounts,
                "figures": [
                    {
                        "name": f.name,
                        "value": f.value,
                        "unit": f.unit,
                        "baseline": f.baseline,
                        "ratio": f.ratio,
                        "target": f.target,
                        "met": f.met,
                    }
                    for f in b.figures
                ],
            },
            indent=2,
        )
    )
    console.print(f"written {out}")
    return b.figures
