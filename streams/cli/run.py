"""``rating run``: workers and the ClickHouse sink, on the embedded default or a configured cluster.

Embedded (no ``KAFKA_BOOTSTRAP_SERVERS``): a local Tansu broker is started and chDB is used. With a
cluster configured, the same command runs the workers and the sink against it; in production each
runs in its own container instead (``rating worker``, ``rating sink``; see infra/).
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

from rich.console import Console

from streams.cli.common import shown as _s
from streams.config import Settings
from streams.kafka_admin import create_topics
from streams.local.memory_guard import MIB, MemoryGuard, meminfo_bytes, rss_bytes
from streams.local.pipeline import LocalPipeline
from streams.observability.metrics import serve
from streams.sink.clickhouse import ClickHouseSink


def run_pipeline(
    s: Settings, *, workers: int, duration: float | None, replay: Path | None, console: Console
) -> dict[str, int]:
    run_dir = Path(".run") / "pipeline"
    run_dir.mkdir(parents=True, exist_ok=True)
    with LocalPipeline(run_dir) as pipeline:
        if s.embedded_broker:
            s = pipeline.start_broker()
            console.print(
                f"[bold]broker[/]  embedded Tansu on {s.kafka_bootstrap_servers} (log "
                f"{run_dir / 'broker.log'})"
            )
            from streams.cli.runfile import write_run_file

            # trace, rerate, account, dlq and topics find this run through it (removed on a clean
            # stop)
            console.print(f"[bold]run-file[/] {write_run_file(s)}")
        else:
            pipeline.settings = s
            console.print(f"[bold]broker[/]  {s.kafka_bootstrap_servers}")
        asyncio.run(create_topics(s))
        for _ in range(workers):
            w = pipeline.start_worker()
            endpoint = (
                f", metrics http://127.0.0.1:{w.metrics_port}/metrics" if w.metrics_port else ""
            )
            console.print(f"[bold]worker[/]  pid {w.process.pid} (log {w.log_path}{endpoint})")
        sink = ClickHouseSink(s)
        console.print(
            f"[bold]sink[/]    ClickHouse {s.clickhouse_dsn_for_display()}"
            + (
                f", metrics http://{s.metrics_host}:{s.metrics_port}/metrics"
                if s.metrics_port
                else ""
            )
        )
        try:
            stats = asyncio.run(_sink_loop(s, sink, pipeline, duration, replay, console))
        finally:
            from streams.cli.runfile import remove_run_file

            remove_run_file()
    console.print(
        "stopped; rows inserted this run: "
        + (", ".join(f"{t} {n}" for t, n in sorted(stats.items())) or "none")
    )
    return stats


async def _sink_loop(
    s: Settings,
    sink: ClickHouseSink,
    pipeline: LocalPipeline,
    duration: float | None,
    replay: Path | None,
    console: Console,
) -> dict[str, int]:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner = (
        await serve(s.metrics_host, s.metrics_port, sink.metrics, sink.ready)
        if s.metrics_port
        else None
    )
    await sink.start()
    try:
        if replay is not None:
            from streams.ingest.producer import EventProducer
            from streams.simulate import read_lines

            async with EventProducer(s) as producer:
                sent = await producer.send_lines([raw for _, raw in read_lines(replay)])
            console.print(f"[bold]replay[/]  {sent} events from {_s(replay)}")
        deadline = time.monotonic() + duration if duration else None
        console.print(
            "running; Ctrl-C stops" + (f" (or after {duration:.0f}s)" if duration else "")
        )
        next_report = time.monotonic() + 10
        while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
            await sink.step(stop)
            for w in pipeline.restart_stalled():
                console.print(
                    f"[yellow]a worker stalled and exited[/]; restarted as pid {w.process.pid} "
                    f"(log {w.log_path})"
                )
            if any(not w.alive() and not w.replaced for w in pipeline.workers):
                console.print("[red]a worker exited[/]; see its log")
                break
            if time.monotonic() >= next_report:
                next_report += 10
                broker = broker_memory_line(pipeline)
                console.print(
                    "rows so far: "
                    + (", ".join(f"{t} {n}" for t, n in sorted(sink.stats.rows.items())) or "none")
                    + broker
                )
                reason = memory_stop_reason(s, pipeline)
                if reason:
                    console.print(f"[red]stopping:[/] {reason}")
                    break
    finally:
        await sink.stop()
        if runner is not None:
            await runner.cleanup()
    return dict(sink.stats.rows)


def broker_memory_line(pipeline: LocalPipeline) -> str:
    if pipeline.broker is None:
        return ""
    return f"; embedded broker {rss_bytes(pipeline.broker.process.pid) / MIB:,.0f} MB"


def memory_stop_reason(s: Settings, pipeline: LocalPipeline) -> str | None:
    """Why an embedded run must stop now (its broker keeps every record in memory), or None."""
    if pipeline.broker is None:
        return None
    guard = MemoryGuard(s.local_broker_max_memory_mb * MIB)
    return guard.verdict(rss_bytes(pipeline.broker.process.pid), meminfo_bytes("MemAvailable"))
