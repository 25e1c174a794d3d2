"""``rating demo`` (what ``make run`` runs): the real path end to end on the embedded default."""

from __future__ import annotations

import asyncio
import shutil
import time
from decimal import Decimal
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from streams.cli.common import amount
from streams.cli.common import shown as _s
from streams.engine import BillingEngine
from streams.ingest.producer import EventProducer, delivery_order
from streams.kafka_admin import create_topics
from streams.local.pipeline import LocalPipeline, sink_until
from streams.rating.profiles import Profiles
from streams.simulate import SimulationResult, read_lines, simulate
from streams.sink.clickhouse import ClickHouseSink


class DemoFailed(Exception):
    pass


def demo_env() -> dict[str, str]:
    """The demo's own settings over the environment's. CLICKHOUSE_URL is emptied: the demo always
    lands in its own embedded chDB (.run/demo/chdb), never in a ClickHouse server the shell names.
    """
    from dataclasses import fields

    from streams.config import Settings

    names = {f.name.upper() for f in fields(Settings)}
    url, password = "clickhouse_url".upper(), "clickhouse_password".upper()
    assert url in names and password in names
    return {"WORKER_TICK_INTERVAL_MS": "1000", url: "", password: "", f"{password}_FILE": ""}


def expected_for_replay(
    lines: list[bytes],
    batch: int,
    *,
    source: str,
    partitions: int,
    profiles: Profiles | None = None,
    wall_ms: int | None = None,
    **engine_options: int,
) -> SimulationResult:
    """What the live pipeline must produce for ``lines`` sent with this batch size: ``rating
    simulate`` fed in the order the events reach the topic (``delivery_order``), not the file's
    order. Batching holds an account's events until its batch fills, so another account's later
    events can go first, and partition stream time (lateness, the dedupe horizon) follows them."""
    engine = BillingEngine(profiles or Profiles(), **engine_options)
    ordered = delivery_order(lines, batch)
    return simulate(
        enumerate(ordered, start=1), engine, source=source, partitions=partitions, wall_ms=wall_ms
    )


def run_demo(events: Path, *, batch: int, timeout: float, console: Console) -> None:
    from streams.cli.main import UserError

    run_dir = Path(".run") / "demo"
    # a second run starts clean: no lock, port or data clash
    shutil.rmtree(run_dir, ignore_errors=True)
    started = time.monotonic()
    lines = [raw for _, raw in read_lines(events)]

    with LocalPipeline(run_dir, env_overrides=demo_env()) as pipeline:
        settings = pipeline.start_broker()
        expected = expected_for_replay(
            lines,
            batch,
            source=events.name,
            partitions=settings.kafka_partitions,
            allowed_lateness_ms=settings.settlement_allowed_lateness_s * 1000,
            horizon_ms=settings.dedupe_horizon_s * 1000,
            max_ahead_ms=settings.max_event_ahead_s * 1000,
            wall_ms=int(time.time() * 1000),
        )
        want_deductions = len({d["deduction_id"] for d in expected.deductions})
        want_dead = len({d["event_id"] or d["dead_letter_id"] for d in expected.dead_letters})
        want_lines = len(expected.settlements)
        console.print(
            f"[bold]broker[/]  Tansu on {settings.kafka_bootstrap_servers} (log "
            f"{run_dir / 'broker.log'})"
        )
        asyncio.run(create_topics(settings))
        worker = pipeline.start_worker()
        console.print(f"[bold]worker[/]  faust, pid {worker.process.pid} (log {worker.log_path})")
        sink = ClickHouseSink(settings)
        console.print(f"[bold]sink[/]    ClickHouse {settings.clickhouse_dsn_for_display()}")

        def landed() -> tuple[int, int, int]:
            d = sink.client.query("SELECT count() FROM deductions FINAL").result_rows[0][0]
            x = sink.client.query(
                "SELECT uniqExact(if(event_id = '', dead_letter_id, event_id)) FROM dead_letters "
                "FINAL"
            ).result_rows[0][0]
            s = sink.client.query("SELECT count() FROM settlements FINAL").result_rows[0][0]
            return d, x, s

        async def main() -> bool:
            await sink.start()
            try:
                async with EventProducer(settings) as producer:
                    sent = await producer.send_lines(lines, batch_size=batch)
                console.print(
                    f"[bold]replay[/]  {sent} events from {_s(events)} "
                    f"({'batches of ' + str(batch) if batch > 1 else 'one per message'})"
                )
                with Progress(
                    TextColumn("[bold]landing"),
                    BarColumn(),
                    TextColumn("{task.completed}/{task.total} rows"),
                    TimeElapsedColumn(),
                    console=console,
                    transient=True,
                ) as progress:
                    task = progress.add_task("land", total=want_deductions + want_dead + want_lines)

                    def done() -> bool:
                        if not worker.alive():
                            raise DemoFailed(
                                f"the worker exited (code {worker.process.returncode}); see "
                                f"{worker.log_path}"
                            )
                        d, x, s = landed()
                        progress.update(task, completed=d + x + s)
                        return d >= want_deductions and x >= want_dead and s >= want_lines

                    return await sink_until(sink, done, timeout)
            finally:
                await sink.stop()

        try:
            ok = asyncio.run(main())
        except DemoFailed as exc:
            raise UserError(str(exc)) from None
        if not ok:
            d, x, s = landed()
            raise UserError(
                f"timed out after {timeout:.0f}s: {d}/{want_deductions} deductions, "
                f"{x}/{want_dead} dead letters and "
                f"{s}/{want_lines} settlement lines landed; see {worker.log_path}"
            )
        print_landed(sink.client, console)
        live = live_totals(sink.client)
    sim = simulated_totals(expected)
    same = live == sim
    verdict = "[green]identical to[/]" if same else "[red]DIFFERENT from[/]"
    for currency, (rated, cash, lines_gross) in sorted(
        live.items()
    ):  # never a sum across currencies
        console.print(
            f"ClickHouse totals {currency}: rated {amount(rated)}, cash {amount(cash)}, "
            f"closed settlement lines {amount(lines_gross)}"
        )
    console.print(f"per currency {verdict} `rating simulate` on the same file")
    console.print(f"done in {time.monotonic() - started:.1f}s; broker, worker and sink stopped")
    if not same:
        raise UserError("the live pipeline and the simulator disagree; see the worker log")


def print_landed(client, console: Console) -> None:
    rows = client.query(
        "SELECT main_account_id, formatDateTime(period_start, '%Y-%m-%d %H:%i', 'UTC'), "
        "granularity, line_type, item, model, "
        "variant, event_count, currency, gross_amount, free_amount + trial_amount AS free_trial, "
        "pack_amount, voucher_amount, "
        "cash_amount, unbilled_amount FROM settlements FINAL ORDER BY main_account_id, "
        "period_start, item, model, variant, line_type"
    ).result_rows
    table = Table(
        title=(
            "settlement lines in ClickHouse (closed periods; times in UTC; a period closes 5 "
            "min after its end in stream time)"
        )
    )
    cols = (
        "account",
        "period",
        "per",
        "line",
        "item",
        "model",
        "variant",
        "events",
        "cur",
        "gross",
        "free+trial",
        "pack",
        "voucher",
        "cash",
        "unbilled",
    )
    for col in cols:
        table.add_column(
            col,
            justify="right"
            if col in ("events", "gross", "free+trial", "pack", "voucher", "cash", "unbilled")
            else "left",
        )
    for r in rows:
        table.add_row(*("" if v is None else _s(v) for v in r[:9]), *(amount(v) for v in r[9:]))
    console.print(table)
    dead = client.query(
        "SELECT reason_code, event_id, main_account_id, reason FROM dead_letters FINAL ORDER BY "
        "source_offset, reason_code"
    ).result_rows
    dl = Table(title="dead letters in ClickHouse")
    for col in ("reason_code", "event_id", "account", "reason"):
        dl.add_column(col)
    for r in dead:
        dl.add_row(*(_s(v) for v in r))
    console.print(dl)
    alerts = client.query(
        "SELECT main_account_id, kind, message FROM alerts FINAL ORDER BY event_time, "
        "main_account_id, kind"
    ).result_rows
    at = Table(title="alerts in ClickHouse")
    for col in ("account", "kind", "message"):
        at.add_column(col)
    for r in alerts:
        at.add_row(*(_s(v) for v in r))
    console.print(at)


Totals = dict[
    str, tuple[Decimal, Decimal, Decimal]
]  # currency -> (rated, cash, settlement-line gross)


def live_totals(client) -> Totals:
    out: dict[str, list[Decimal]] = {}
    for cur, rated, cash in client.query(
        "SELECT currency, toString(sum(rated_amount)), toString(sum(cash_amount)) "
        "FROM deductions FINAL GROUP BY currency"
    ).result_rows:
        out.setdefault(cur, [Decimal(0)] * 3)[:2] = [Decimal(rated), Decimal(cash)]
    for cur, gross in client.query(
        "SELECT currency, toString(sum(gross_amount)) FROM settlements FINAL GROUP BY currency"
    ).result_rows:
        out.setdefault(cur, [Decimal(0)] * 3)[2] = Decimal(gross)
    return {k: (v[0], v[1], v[2]) for k, v in out.items()}


def simulated_totals(result) -> Totals:
    out: dict[str, list[Decimal]] = {}
    for d in result.deductions:
        t = out.setdefault(d["currency"], [Decimal(0)] * 3)
        t[0] += Decimal(d["rated_amount"])
        t[1] += sum(
            (Decimal(s["amount"]) for s in d["splits"] if s["bucket_kind"] == "cash"), Decimal(0)
        )
    for line in result.settlements:
        out.setdefault(line["currency"], [Decimal(0)] * 3)[2] += Decimal(line["gross_amount"])
    return {k: (v[0], v[1], v[2]) for k, v in out.items()}
