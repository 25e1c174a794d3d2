"""`make soak` / `rating soak`: the embedded pipeline for a long run at half its measured rate.

One broker, the worker(s) and the sink each in a process of its own (as in production), fed a
seeded synthetic stream over many accounts and simulated days at a steady rate: half of what the
same pipeline drained in a burst at the start of the run. Every 10 s it samples each process's
resident memory, the worker's lag, the warnings in the logs and the age of events when their
round starts. At the end it compares ClickHouse with `rating simulate` on exactly the lines sent,
row for row, and prints how fast each process's memory grew over the second half of the run.
Not part of `make test`: it runs for as long as it is told to (30 minutes by default).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.table import Table

from streams.config import Settings
from streams.ingest.codec import registry
from streams.ingest.producer import EventProducer, encode_line
from streams.kafka_admin import create_topics
from streams.local.lifecycle import child_preexec
from streams.local.memory_guard import MIB, rss_bytes
from streams.local.pipeline import LocalPipeline, WorkerProcess
from streams.local.synthetic import stream_events
from streams.local.tansu import free_port

SAMPLE_EVERY_S = 10.0
# what the worker logs that the soak counts (faust's own words)
WARNINGS = {
    "producer_buffer_full": "producer buffer full",
    "commit_overlapping": "Timer commit is overlapping",
    "warning_lines": "WARNING",
    "error_lines": "ERROR",
}


@dataclass
class Sample:
    at_s: float  # since the steady phase began
    rss_mb: dict[str, float]
    cpu_pct: dict[str, float]  # of one core, since the previous sample
    produced: int
    consumed: int  # by the workers, from their metrics
    sink_rows: int
    age_at_start_ms: float | None  # the newest median the worker logged


@dataclass
class SoakReport:
    minutes: float
    accounts: int
    burst_events_per_s: float
    rate_events_per_s: float
    produced: int
    simulated_days: float
    samples: list[Sample] = field(default_factory=list)
    warnings: dict[str, int] = field(default_factory=dict)
    comparison: dict[str, dict[str, int]] = field(default_factory=dict)
    growth_mb_per_h: dict[str, float] = field(default_factory=dict)
    store: str = ""
    exact: bool = False
    broker_mb_at_end: float = 0.0
    topic_bytes: dict[str, list[int]] = field(default_factory=dict)  # topic -> [records, bytes]


def rss_mb(pid: int) -> float:
    return rss_bytes(pid) / MIB


def scrape(port: int, name: str) -> float:
    """Sum of a metric's samples from a process's /metrics endpoint (0 when unreachable)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return 0.0
    return sum(
        s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == name
    )


def slope_per_h(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MB) points, in MB per hour."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    var = sum((x - mx) ** 2 for x, _ in points)
    if var == 0:
        return 0.0
    return sum((x - mx) * (y - my) for x, y in points) / var * 3600


def start_sink(pipeline: LocalPipeline, run_dir: Path) -> tuple[subprocess.Popen, int]:
    """``rating sink`` in a process of its own, so that its memory is its own."""
    env = pipeline.worker_env()
    port = free_port()
    env["METRICS_PORT"] = str(port)
    log = open(run_dir / "sink.log", "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streams.cli.main", "sink"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
        preexec_fn=child_preexec(),
    )
    log.close()
    return proc, port


class Feed:
    """The synthetic stream, sent one event per message and kept in a file for the comparison."""

    def __init__(self, settings: Settings, lines: Iterator[bytes], keep: Path):
        self.settings = settings
        self.lines = lines
        self.keep = open(keep, "wb")
        self.sent = 0
        self.last_line = b""
        self.reg = registry()

    async def send(self, producer: EventProducer, n: int) -> None:
        for raw in itertools.islice(self.lines, n):
            key, value, _ = encode_line(self.reg, raw)
            await producer.producer.send(self.settings.topics.events, key=key, value=value)
            self.keep.write(raw + b"\n")
            self.sent += 1
            self.last_line = raw

    def close(self) -> None:
        self.keep.close()


class Probe:
    """What the soak watches: processes, metrics endpoints and logs."""

    def __init__(self, pipeline: LocalPipeline, sink: subprocess.Popen, sink_port: int):
        self.pipeline = pipeline
        self.sink = sink
        self.sink_port = sink_port
        self.read_to: dict[Path, int] = {}
        self.counted: dict[str, int] = {}
        self.last_age_ms: float | None = None
        self.cpu_seen: dict[str, tuple[float, float]] = {}

    def workers(self) -> list[WorkerProcess]:
        return [w for w in self.pipeline.workers if not w.replaced]

    def consumed(self) -> int:
        return int(
            sum(scrape(w.metrics_port, "billing_events_consumed_total") for w in self.workers())
        )

    def sink_rows(self) -> int:
        return int(scrape(self.sink_port, "billing_sink_rows_total"))

    def pids(self) -> dict[str, int]:
        assert self.pipeline.broker is not None
        out = {"broker": self.pipeline.broker.process.pid}
        for i, w in enumerate(self.workers()):
            out[f"worker-{i}"] = w.process.pid
        out["sink"] = self.sink.pid
        out["driver"] = os.getpid()  # this process: the producer of the input
        return out

    def rss(self) -> dict[str, float]:
        return {name: rss_mb(pid) for name, pid in self.pids().items()}

    def cpu_pct(self) -> dict[str, float]:
        from streams.bench.run import process_cpu_s

        now = time.monotonic()
        out = {}
        for name, pid in self.pids().items():
            cpu = process_cpu_s(pid) or 0.0
            before, at = self.cpu_seen.get(name, (cpu, now))
            out[name] = round((cpu - before) / (now - at) * 100, 1) if now > at else 0.0
            self.cpu_seen[name] = (cpu, now)
        return out

    def age_at_start_ms(self) -> float | None:
        self.read_logs()
        return self.last_age_ms

    def warnings(self) -> dict[str, int]:
        self.read_logs()
        return dict(self.counted)

    def read_logs(self) -> None:
        """Count what the logs added since the last look (they grow for the whole run)."""
        paths = [w.log_path for w in self.pipeline.workers] + [self.pipeline.run_dir / "sink.log"]
        for path in paths:
            if not path.exists():
                continue
            with open(path, "rb") as fh:
                fh.seek(self.read_to.get(path, 0))
                text = fh.read().decode(errors="replace")
                self.read_to[path] = fh.tell()
            for name, needle in WARNINGS.items():
                self.counted[name] = self.counted.get(name, 0) + text.count(needle)
            ages = re.findall(r"age_at_start_ms p50=([0-9.]+)", text)
            if ages and path.name.startswith("worker"):
                self.last_age_ms = float(ages[-1])

    def alive(self) -> bool:
        return self.sink.poll() is None and all(w.alive() for w in self.workers())


async def wait_consumed(probe: Probe, n: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if probe.consumed() >= n:
            return True
        await asyncio.sleep(0.2)
    return False


async def burst(probe: Probe, feed: Feed, producer: EventProducer, n: int) -> float:
    """Events/s the pipeline drains when ``n`` events arrive at once."""
    t0 = time.monotonic()
    await feed.send(producer, n)
    if not await wait_consumed(probe, feed.sent, 600):
        raise RuntimeError("the burst did not drain within 10 minutes; see the worker log")
    return n / (time.monotonic() - t0)


async def steady(
    probe: Probe, feed: Feed, producer: EventProducer, rate: float, seconds: float, console: Console
) -> list[Sample]:
    samples: list[Sample] = []
    start = time.monotonic()
    base = feed.sent
    next_sample = start
    while (now := time.monotonic()) < start + seconds:
        due = base + int((now - start) * rate)
        if due > feed.sent:
            await feed.send(producer, due - feed.sent)
        if now >= next_sample:
            next_sample += SAMPLE_EVERY_S
            s = Sample(
                round(now - start, 1),
                probe.rss(),
                probe.cpu_pct(),
                feed.sent,
                probe.consumed(),
                probe.sink_rows(),
                probe.age_at_start_ms(),
            )
            samples.append(s)
            console.print(sample_line(s))
            if not probe.alive():
                raise RuntimeError("a worker or the sink exited during the soak; see its log")
        await asyncio.sleep(0.01)
    return samples


def sample_line(s: Sample) -> str:
    rss = ", ".join(f"{k} {v:,.0f} MB {s.cpu_pct.get(k, 0):.0f}% CPU" for k, v in s.rss_mb.items())
    age = f", age at round start {s.age_at_start_ms:,.0f} ms" if s.age_at_start_ms else ""
    return (
        f"{s.at_s / 60:5.1f} min  sent {s.produced:,}  lag {s.produced - s.consumed:,}  "
        f"rows {s.sink_rows:,}  {rss}{age}"
    )


async def topic_bytes(settings: Settings, prefix: str = "") -> dict[str, list[int]]:
    """Records and bytes (keys and values) each topic holds, read back from the broker: what the
    run wrote, changelogs included (the embedded broker keeps all of it)."""
    from aiokafka import AIOKafkaConsumer

    from streams.kafka_client import client_kwargs

    probe = AIOKafkaConsumer(**client_kwargs(settings))
    await probe.start()
    names = sorted(t for t in await probe.topics() if t.startswith(prefix) and "__" not in t)
    await probe.stop()
    out: dict[str, list[int]] = {}
    for name in names:
        c = AIOKafkaConsumer(
            name,
            **client_kwargs(settings),
            group_id=None,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            max_partition_fetch_bytes=4 << 20,
        )
        await c.start()
        records = size = empty = 0
        try:
            while empty < 3:  # the local broker's high-water marks are unreliable: read to quiet
                batch = await c.getmany(timeout_ms=500, max_records=50_000)
                empty = 0 if batch else empty + 1
                for msgs in batch.values():
                    records += len(msgs)
                    size += sum(len(m.key or b"") + len(m.value or b"") for m in msgs)
        finally:
            await c.stop()
        out[name] = [records, size]
    return out


async def drain(probe: Probe, sent: int, timeout_s: float = 600) -> None:
    """Until the workers have consumed everything and the sink's row count has stood still."""
    if not await wait_consumed(probe, sent, timeout_s):
        raise RuntimeError(f"the workers did not consume all {sent:,} events; see their logs")
    last, still_since = -1, time.monotonic()
    while time.monotonic() - still_since < 5:
        rows = probe.sink_rows()
        if rows != last:
            last, still_since = rows, time.monotonic()
        await asyncio.sleep(0.5)


def compare(settings: Settings, kept: Path) -> dict[str, dict[str, int]]:
    """ClickHouse against `rating simulate` on the same lines: per table, rows expected, landed,
    missing, extra and different (by id)."""
    from streams.engine import BillingEngine
    from streams.rating.profiles import Profiles
    from streams.simulate import read_lines, simulate
    from streams.sink.clickhouse import connect

    engine = BillingEngine(
        Profiles(settings.profiles_dir),
        allowed_lateness_ms=settings.settlement_allowed_lateness_s * 1000,
        horizon_ms=settings.dedupe_horizon_s * 1000,
        max_ahead_ms=settings.max_event_ahead_s * 1000,
    )
    sim = simulate(read_lines(kept), engine, partitions=settings.kafka_partitions)
    ch = connect(settings)

    def landed(sql: str) -> dict[str, tuple]:
        return {r[0]: _norm(r[1:]) for r in ch.query(sql).result_rows}

    tables = {
        "deductions": (
            landed(
                "SELECT deduction_id, event_id, toString(rated_amount), toString(cash_amount), "
                "settlement_id FROM deductions FINAL"
            ),
            {
                d["deduction_id"]: _norm(
                    (d["event_id"], d["rated_amount"], _cash(d), d["settlement_id"])
                )
                for d in sim.deductions
            },
        ),
        "settlements": (
            landed(
                "SELECT settlement_id, line_type, toString(gross_amount), event_count "
                "FROM settlements FINAL"
            ),
            {
                s["settlement_id"]: _norm((s["line_type"], s["gross_amount"], s["event_count"]))
                for s in sim.settlements
            },
        ),
        "alerts": (
            landed("SELECT alert_id, kind FROM alerts FINAL"),
            {a["alert_id"]: (a["kind"],) for a in sim.alerts},
        ),
    }
    return {name: _differences(got, want) for name, (got, want) in tables.items()}


def _differences(got: dict[str, tuple], want: dict[str, tuple]) -> dict[str, int]:
    return {
        "expected": len(want),
        "landed": len(got),
        "missing": len(want.keys() - got.keys()),
        "extra": len(got.keys() - want.keys()),
        "different": sum(1 for k in want.keys() & got.keys() if want[k] != got[k]),
    }


def _cash(deduction: dict) -> Decimal:
    return sum(
        (Decimal(s["amount"]) for s in deduction["splits"] if s["bucket_kind"] == "cash"),
        Decimal(0),
    )


def _norm(row: tuple) -> tuple:
    """Amounts compared by value (ClickHouse drops trailing zeros), everything else as is."""
    return tuple(
        Decimal(v).normalize() if isinstance(v, str | Decimal) and _AMOUNT.fullmatch(str(v)) else v
        for v in row
    )


_AMOUNT = re.compile(r"-?\d+(\.\d+)?")


def soak_env(store: str) -> dict[str, str]:
    """The embedded pipeline's settings, with stream time from events only (as `rating simulate`
    without --until), so that ClickHouse can equal simulate row for row. Fetches wait up to
    1,500 ms (faust's own default) unless KAFKA_FETCH_MAX_WAIT_MS says otherwise: the embedded
    broker holds every fetch for the full wait and lists every batch of the partition on each, so
    its CPU is fetches per second times what it holds. At the 20 ms default (kept for latency in
    short runs) it was at a full core after 33,000 events at 150 events/s; at 100 ms after 44,000;
    at 500 ms the lag grew from 45,000 events on at 463 events/s (README "Long runs")."""
    return {
        "WORKER_IDLE_ADVANCE_S": "0",
        "WORKER_STORE": store,
        "METRICS_PORT": "1",
        "KAFKA_FETCH_MAX_WAIT_MS": os.environ.get("KAFKA_FETCH_MAX_WAIT_MS", "1500"),
    }


def run_soak(
    minutes: float,
    *,
    accounts: int = 240,
    burst_events: int = 20_000,
    fraction: float = 0.5,
    rate: float = 0.0,
    store: str = "rocksdb://",
    run_dir: Path = Path(".run/soak"),
    console: Console,
) -> SoakReport:
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    with LocalPipeline(run_dir, env_overrides=soak_env(store)) as pipeline:
        settings = pipeline.start_broker()
        asyncio.run(create_topics(settings))
        pipeline.start_worker()
        sink, sink_port = start_sink(pipeline, run_dir)
        probe = Probe(pipeline, sink, sink_port)
        feed = Feed(
            settings,
            stream_events(seed=19, accounts=accounts, prefix="soak"),
            run_dir / "sent.jsonl",
        )
        try:
            report = asyncio.run(
                _phases(probe, feed, minutes, burst_events, rate, fraction, console)
            )
        finally:
            feed.close()
            sink.terminate()
            sink.wait(timeout=60)
        report.warnings = probe.warnings()
        report.broker_mb_at_end = rss_mb(probe.pids()["broker"])
        console.print("reading back what each topic holds ...")
        report.topic_bytes = asyncio.run(topic_bytes(settings))
    report.accounts, report.store = accounts, store
    report.simulated_days = _simulated_days(feed.last_line)
    console.print("comparing ClickHouse with `rating simulate` on the lines sent ...")
    report.comparison = compare(settings, run_dir / "sent.jsonl")
    report.exact = all(
        c["missing"] == c["extra"] == c["different"] == 0 for c in report.comparison.values()
    )
    report.growth_mb_per_h = growth(report.samples)
    return report


async def _phases(
    probe: Probe,
    feed: Feed,
    minutes: float,
    burst_events: int,
    rate: float,
    fraction: float,
    console: Console,
) -> SoakReport:
    async with EventProducer(feed.settings) as producer:
        await wait_ready(probe)
        burst_rate = await burst(probe, feed, producer, burst_events)
        rate = rate or burst_rate * fraction
        console.print(
            f"burst: {burst_events:,} events drained at {burst_rate:,.0f} events/s; "
            f"steady phase at {rate:,.0f} events/s for {minutes:g} min"
        )
        samples = await steady(probe, feed, producer, rate, minutes * 60, console)
    await drain(probe, feed.sent)
    return SoakReport(minutes, 0, burst_rate, rate, feed.sent, 0.0, samples)


async def wait_ready(probe: Probe, timeout_s: float = 120) -> None:
    from streams.bench.run import wait_ready as worker_ready

    for w in probe.workers():
        await asyncio.to_thread(worker_ready, w.log_path, timeout_s)


def _simulated_days(last_line: bytes) -> float:
    from streams.ingest.events import to_millis
    from streams.local.synthetic import START

    if not last_line:
        return 0.0
    last_ms = to_millis(json.loads(last_line)["event_time"], "event_time")
    return (last_ms - START.timestamp() * 1000) / 86_400_000


def growth(samples: list[Sample]) -> dict[str, float]:
    """MB per hour of each process over the second half of the steady phase (after warm-up)."""
    if not samples:
        return {}
    half = samples[-1].at_s / 2
    later = [s for s in samples if s.at_s >= half]
    return {
        name: round(slope_per_h([(s.at_s, s.rss_mb.get(name, 0.0)) for s in later]), 1)
        for name in samples[0].rss_mb
    }


def print_report(report: SoakReport, console: Console) -> None:
    t = Table(title=f"soak: {report.minutes:g} min at {report.rate_events_per_s:,.0f} events/s")
    for col in ("process", "RSS at start", "at half", "at end", "growth, second half", "CPU"):
        t.add_column(col, justify="right" if col != "process" else "left")
    first, last = report.samples[0], report.samples[-1]
    mid = report.samples[len(report.samples) // 2]
    for name in first.rss_mb:
        t.add_row(
            name,
            f"{first.rss_mb[name]:,.0f} MB",
            f"{mid.rss_mb.get(name, 0):,.0f} MB",
            f"{last.rss_mb.get(name, 0):,.0f} MB",
            f"{report.growth_mb_per_h.get(name, 0):+,.1f} MB/h",
            f"{mean_cpu_pct(report.samples, name):.0f}% of a core",
        )
    console.print(t)
    lags = [s.produced - s.consumed for s in report.samples]
    ages = [s.age_at_start_ms for s in report.samples if s.age_at_start_ms is not None]
    console.print(
        f"{report.produced:,} events over {report.accounts} accounts and "
        f"{report.simulated_days:.1f} simulated days; burst {report.burst_events_per_s:,.0f} "
        f"events/s; lag at most {max(lags):,}; event age at round start p50 "
        f"{min(ages, default=0):,.0f}..{max(ages, default=0):,.0f} ms"
    )
    print_topic_bytes(report, console)
    console.print("warnings: " + ", ".join(f"{k} {v}" for k, v in report.warnings.items()))
    for name, c in report.comparison.items():
        console.print(f"{name}: " + ", ".join(f"{k} {v:,}" for k, v in c.items()))
    verdict = "[green]equal to simulate, row for row[/]" if report.exact else "[red]NOT equal[/]"
    console.print(f"ClickHouse {verdict}")


def print_topic_bytes(report: SoakReport, console: Console) -> None:
    if not report.topic_bytes or not report.produced:
        return
    t = Table(title="what the broker holds, per input event")
    t.add_column("topic", no_wrap=True)
    for col in ("records", "bytes", "records/event", "bytes/event"):
        t.add_column(col, justify="right")
    total = 0
    for name, (records, size) in report.topic_bytes.items():
        total += size
        t.add_row(
            name,
            f"{records:,}",
            f"{size:,}",
            f"{records / report.produced:.2f}",
            f"{size / report.produced:,.0f}",
        )
    console.print(t)
    first = report.samples[0]
    grown = (report.broker_mb_at_end - first.rss_mb["broker"]) * MIB
    per_event = grown / max(report.produced - first.produced, 1)
    console.print(
        f"payload {total / report.produced:,.0f} bytes per input event; the broker's resident "
        f"memory grew {per_event:,.0f} bytes per input event after the first sample "
        f"({(1 << 30) / max(per_event, 1):,.0f} events per GB)"
    )


def mean_cpu_pct(samples: list[Sample], name: str) -> float:
    values = [s.cpu_pct.get(name, 0.0) for s in samples[1:]]  # the first has no interval
    return sum(values) / len(values) if values else 0.0


def write_report(report: SoakReport, path: Path = Path("bench-results/soak.json")) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(report), indent=1))
    return path


def main() -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=float(os.environ.get("SOAK_MINUTES", 30)))
    ap.add_argument("--accounts", type=int, default=240)
    ap.add_argument("--store", default=os.environ.get("SOAK_STORE", "rocksdb://"))
    ap.add_argument(
        "--rate",
        type=float,
        default=float(os.environ.get("SOAK_RATE") or 0),
        help="steady events/s (default: --fraction of the burst rate)",
    )
    ap.add_argument("--fraction", type=float, default=0.5)
    args = ap.parse_args()
    console = Console(width=max(Console().width, 120))  # the tables stay readable in a log
    report = run_soak(
        args.minutes,
        accounts=args.accounts,
        store=args.store,
        rate=args.rate,
        fraction=args.fraction,
        console=console,
    )
    print_report(report, console)
    console.print(f"written to {write_report(report)}")
    return 0 if report.exact else 1


if __name__ == "__main__":
    sys.exit(main())
