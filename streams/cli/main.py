"""``rating``: the one command line of the pipeline (typer + rich)."""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC
from decimal import Decimal
from pathlib import Path

import typer
from rich.table import Table

from streams.cli.common import (
    UserError,
    _profiles,
    amount,
    client_settings,
    console,
    emit_json_lines,
    err,
    exact,
    friendly,
    hide_flag_types,
    input_file,
    settings,
    setup_logging,
)
from streams.cli.common import shown as _s

hide_flag_types()

app = typer.Typer(
    help=(
        "AI-platform billing: rate usage events, pay them from account buckets, settle into "
        "ClickHouse."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


# ---------------------------------------------------------------- offline


@app.command()
@friendly
def simulate(
    events: Path = typer.Argument(
        ..., help="JSON Lines file of usage and account events (- = standard input)", exists=False
    ),
    out: Path = typer.Option(
        Path("simulate-out"), "--out", help="folder for the output .jsonl files"
    ),
    until: str = typer.Option(
        "",
        "--until",
        help="ISO-8601 time with offset: at the end of the input, advance stream "
        "time to it (as a live partition that stays quiet until then), closing what is due",
    ),
    as_json: bool = typer.Option(
        False,
        "--json",
        help="print the summary as JSON Lines: one object per account, then the counts",
    ),
):
    """Run the pure core over a JSON Lines file: the offline twin of the pipeline.

    Example: rating simulate examples/demo.jsonl --out out --until 2026-05-02T00:00:00+08:00"""
    import time

    from streams.ingest.events import Rejected, to_millis
    from streams.simulate import run_file, write_outputs

    events = input_file(events)
    try:
        until_ms = to_millis(until, "--until") if until else None
    except Rejected as exc:
        raise UserError(f"--until: {exc.message}") from None
    s = settings()
    result = run_file(
        events,
        _profiles(s),
        partitions=s.kafka_partitions,
        allowed_lateness_ms=s.settlement_allowed_lateness_s * 1000,
        horizon_ms=s.dedupe_horizon_s * 1000,
        max_ahead_ms=s.max_event_ahead_s * 1000,
        wall_ms=int(time.time() * 1000),
        until_ms=until_ms,
    )
    files = write_outputs(result, out)
    summary = Table(title=f"rating simulate {_s(events)}")
    summary.add_column("account")
    summary.add_column("currency")
    summary.add_column("events", justify="right")
    for col in ("rated", "free", "trial", "pack", "voucher", "cash", "unbilled"):
        summary.add_column(col, justify="right")
    totals: dict[str, dict[str, Decimal]] = {}
    counts: dict[str, int] = {}
    currency: dict[str, str] = {}
    for d in result.deductions:
        acc = d["main_account_id"]
        t = totals.setdefault(
            acc,
            {
                k: Decimal(0)
                for k in ("rated", "free", "trial", "pack", "voucher", "cash", "unbilled")
            },
        )
        counts[acc] = counts.get(acc, 0) + 1
        currency[acc] = d["currency"]
        t["rated"] += Decimal(d["rated_amount"])
        t["unbilled"] += Decimal(d["unbilled_amount"])
        for sp in d["splits"]:
            t[sp["bucket_kind"]] += Decimal(sp["amount"])
    c = result.counts
    if as_json:
        emit_json_lines(
            [
                *(
                    {
                        "kind": "account",
                        "main_account_id": acc,
                        "currency": currency[acc],
                        "events": counts[acc],
                        **{k: exact(v) for k, v in totals[acc].items()},
                    }
                    for acc in sorted(totals)
                ),
                {
                    "kind": "counts",
                    **c,
                    "alerts": len(result.alerts),
                    "settlement_lines": len(result.settlements),
                    "files": {name: str(path) for name, path in files.items()},
                },
            ]
        )
        return
    for acc in sorted(totals):
        t = totals[acc]
        summary.add_row(
            _s(acc),
            _s(currency[acc]),
            str(counts[acc]),
            *(
                amount(t[k])
                for k in ("rated", "free", "trial", "pack", "voucher", "cash", "unbilled")
            ),
        )
    console.print(summary)
    console.print(
        f"consumed {c['consumed']} = rated {c['rated']} + applied {c['applied']} + rejected "
        f"{c['rejected']} "
        f"+ duplicates {c['duplicate']};  alerts {len(result.alerts)}, settlement lines "
        f"{len(result.settlements)}"
    )
    for name, path in files.items():
        console.print(f"  {name:<15} {_s(path)}")


@app.command()
@friendly
def quote(
    profile: str = typer.Option(..., "--profile", "-p", help="coze-pro, tokenhub, ark, jiekou"),
    model: str | None = typer.Option(None, "--model", "-m"),
    item: str = typer.Option(
        "tokens", "--item", help="billing item (tokens, tts, rtc_video, image, video, 3d, ...)"
    ),
    input_tokens: int = typer.Option(0, "--input", help="total input tokens, cache hits included"),
    cache_hit: int = typer.Option(0, "--cache-hit"),
    cache_write: int = typer.Option(0, "--cache-write"),
    output_tokens: int = typer.Option(
        0, "--output", help="total output tokens, reasoning included"
    ),
    reasoning: int = typer.Option(0, "--reasoning"),
    quantity: str | None = typer.Option(None, "--quantity", "-q", help="units for per-unit items"),
    hours: str | None = typer.Option(None, "--hours", help="hours, for kb_storage"),
    variant: str | None = typer.Option(None, "--variant"),
    at: str | None = typer.Option(None, "--at", help="event time (ISO-8601); default: now"),
):
    """Price one request and show the breakdown line by line (no account, no buckets)."""
    from datetime import datetime

    from streams.cli.profiles import check_names, profile_or_error
    from streams.deduction.record import money
    from streams.ingest.events import Rejected, parse_usage
    from streams.rating.rate import rate

    p = profile_or_error(_profiles(settings()), profile)
    raw = {
        "event_id": "quote",
        "account_id": "quote",
        "main_account_id": "quote",
        "event_time": at or datetime.now(UTC).isoformat(),
        "item": item,
        "model": model,
        "variant": variant,
        "input_tokens": input_tokens,
        "cache_hit_tokens": cache_hit,
        "cache_write_tokens": cache_write,
        "output_tokens": output_tokens,
        "reasoning_tokens": reasoning,
        "quantity": quantity,
        "hours": hours,
    }
    try:
        event = parse_usage(raw)
        rating = rate(p, event)
    except Rejected as exc:
        if exc.code in ("unknown_item", "unknown_model", "unknown_variant"):
            from streams.ingest.events import to_millis

            # names the nearest ones
            check_names(p, item, model, variant, to_millis(raw["event_time"], "--at"))
        raise UserError(f"{exc.code}: {exc.message}") from None
    table = Table(title=f"{_s(profile)} {_s(model or '')} {_s(item)} ({_s(rating.price_version)})")
    table.add_column("component")
    table.add_column("units", justify="right")
    table.add_column(f"unit price ({p.currency})", justify="right")
    table.add_column(f"amount ({p.currency})", justify="right")
    for line in rating.lines:
        table.add_row(
            line.component, money(line.units), money(line.unit_price), amount(line.amount)
        )
    table.add_row("[bold]total", "", "", f"[bold]{amount(rating.amount)}")
    console.print(table)
    extra = (
        f" = {money(p.to_price_unit(rating.amount))} points"
        if p.book.price_unit == "points"
        else ""
    )
    console.print(
        f"total {amount(rating.amount)} {p.currency} (rounded half-even to 6 places){extra}"
    )
    if rating.billed_elsewhere:
        console.print(
            "billed elsewhere: this model is charged by its own platform, not by this profile"
        )


# ---------------------------------------------------------------- live pipeline


@app.command()
@friendly
def worker():
    """Run a stream-processing worker (faust) against the configured Kafka cluster."""
    s = settings()
    if s.embedded_broker:
        raise UserError(
            "KAFKA_BOOTSTRAP_SERVERS is not set; `rating run` starts an embedded broker, `rating "
            "worker` needs a cluster"
        )
    from streams.cli.common import require_free_port

    require_free_port(s)
    setup_logging(s)
    from streams.worker.app import run_worker

    run_worker(s)


@app.command()
@friendly
def sink():
    """Run the ClickHouse sink against the configured Kafka cluster and ClickHouse."""
    s = settings()
    if s.embedded_broker:
        raise UserError("KAFKA_BOOTSTRAP_SERVERS is not set; the sink needs a Kafka cluster")
    from streams.cli.common import require_free_port

    require_free_port(s)
    setup_logging(s)
    from streams.sink.clickhouse import run_sink

    async def main():
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        import signal

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        return await run_sink(s, stop)

    stats = asyncio.run(main())
    console.print(f"sink stopped: {stats.rows}")


@app.command()
@friendly
def demo(
    events: Path = typer.Argument(
        Path("examples/demo.jsonl"), help="JSON Lines stream to replay (- = standard input)"
    ),
    batch: int = typer.Option(
        1, "--batch", min=1, help="events per Kafka message (EventBatch) for the replay"
    ),
    timeout: float = typer.Option(
        90.0, "--timeout", min=1, help="seconds to wait for everything to land"
    ),
):
    """Start a local broker, a worker and the sink, replay EVENTS, print what landed, stop."""
    from streams.cli.demo import run_demo
    from streams.local.lifecycle import stop_on_signals

    events = input_file(events)
    stop_on_signals()
    run_demo(events, batch=batch, timeout=timeout, console=console)


@app.command()
@friendly
def topics(
    check: bool = typer.Option(
        False,
        "--check",
        help=(
            "only describe; exit 1 if a topic is missing or differs (partitions, replication "
            "factor, min ISR, retention, compaction)"
        ),
    ),
    as_json: bool = typer.Option(False, "--json", help="one JSON object per topic (JSON Lines)"),
):
    """Create the pipeline's topics (idempotent) and describe them: partitions, replication, min
    ISR, retention, compaction."""
    s = client_settings()
    if s.embedded_broker:
        raise UserError(
            "KAFKA_BOOTSTRAP_SERVERS is not set; `rating topics` manages a cluster's topics"
        )
    from streams.kafka_admin import create_topics, describe, differences, topic_specs

    created = [] if check else asyncio.run(create_topics(s))
    specs = topic_specs(s)
    actual = asyncio.run(describe(s, [spec.name for spec in specs]))
    table = Table(title=f"topics on {s.kafka_bootstrap_servers}")
    for col in ("topic", "partitions", "config", "content", "state"):
        table.add_column(col, overflow="fold")
    problems, records = 0, []
    for spec in specs:
        cfg = ", ".join(f"{k}={v}" for k, v in spec.config.items())
        have = actual.get(spec.name)
        differ = differences(spec, have, s.kafka_replication_factor) if have is not None else []
        if have is None:
            state, problems = "[red]missing[/]", problems + 1
        elif differ:
            state, problems = f"[red]{'; '.join(differ)}[/]", problems + 1
        else:
            state = "created" if spec.name in created else "ok"
        table.add_row(spec.name, str(spec.partitions), cfg, spec.doc, state)
        records.append(
            {
                "topic": spec.name,
                "partitions": spec.partitions,
                "config": dict(spec.config),
                "content": spec.doc,
                "state": "missing" if have is None else ("different" if differ else state),
                "differences": differ,
            }
        )
    if as_json:
        emit_json_lines(records)
    else:
        console.print(table)
    if problems:
        err.print(
            f"{problems} topic(s) missing or different; run `rating topics` (without --check) to "
            "create missing ones"
        )
        raise typer.Exit(1)


@app.command()
@friendly
def migrate(
    wait: float = typer.Option(
        0.0,
        "--wait",
        min=0,
        help=(
            "seconds to keep retrying while ClickHouse cannot be reached (a server still "
            "starting); 0 = try once"
        ),
    ),
):
    """Apply the ClickHouse DDL in infra/clickhouse (idempotent)."""
    import time

    from clickhouse_connect.driver.exceptions import OperationalError

    from streams.cli.common import redact

    s = settings()
    from streams.sink.clickhouse import connect
    from streams.sink.clickhouse import migrate as apply

    deadline, pause = time.monotonic() + wait, 1.0
    while True:
        try:  # only connection failures are retried: a wrong password or bad DDL fails at once
            client = connect(s)
            # the cluster form only when configured (single server and chDB: the files as written)
            applied = (
                apply(client, cluster=s.clickhouse_cluster)
                if s.clickhouse_cluster
                else apply(client)
            )
            break
        except OperationalError as exc:
            if time.monotonic() + pause > deadline:
                raise
            reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
            err.print(
                redact(f"ClickHouse not reachable yet ({reason}); retrying in {pause:.0f}s"),
                markup=False,
            )
            time.sleep(pause)
            pause = min(pause * 2, 10.0)
    console.print(f"{s.clickhouse_dsn_for_display()}: applied {applied or 'nothing (up to date)'}")


@app.command()
@friendly
def replay(
    events: Path = typer.Argument(
        ..., help="JSON Lines file to send to the events topic (- = standard input)"
    ),
    batch: int = typer.Option(1, "--batch", min=1, help="events per Kafka message"),
):
    """Send a JSON Lines file to Kafka as Avro, keyed by main account id, with a progress bar."""
    from rich.progress import Progress

    from streams.ingest.producer import EventProducer
    from streams.simulate import read_lines

    s = settings()
    if s.embedded_broker:
        raise UserError("KAFKA_BOOTSTRAP_SERVERS is not set")
    events = input_file(events)
    lines = [raw for _, raw in read_lines(events)]

    async def main():
        with Progress(console=err) as progress:
            task = progress.add_task(f"replay {events.name}", total=len(lines))
            async with EventProducer(s) as producer:
                return await producer.send_lines(
                    lines, batch_size=batch, on_sent=lambda n: progress.advance(task, n)
                )

    sent = asyncio.run(main())
    console.print(f"sent {sent} events to {s.topics.events}")


@app.command()
@friendly
def bench(
    out: Path = typer.Option(
        Path("bench-results/bench.json"), "--out", help="JSON file for the figures"
    ),
    events: int = typer.Option(20_000, "--events", min=1, help="events per throughput measurement"),
    accounts: int = typer.Option(200, "--accounts", min=1),
    simulate_events: int = typer.Option(
        1_000_000, "--simulate-events", min=1, help="size of the file for the simulate figure"
    ),
    state_accounts: int = typer.Option(
        20_000,
        "--state-accounts",
        min=1,
        help="accounts built for the state figure (scaled to 100k)",
    ),
    heavy_requests: int = typer.Option(
        1_000_000,
        "--heavy-requests",
        min=200_001,
        help="requests of the one heavy account (one day) for its first/last 100k figure",
    ),
):
    """Measure throughput, latency, sink rate, scaling and state size, each against a same-run
    baseline."""
    from streams.bench.run import run_bench
    from streams.local.lifecycle import stop_on_signals

    stop_on_signals()
    run_bench(
        out,
        events=events,
        accounts=accounts,
        simulate_events=simulate_events,
        state_accounts=state_accounts,
        console=console,
        heavy_requests=heavy_requests,
    )


@app.command()
@friendly
def run(
    workers: int = typer.Option(
        1, "--workers", "-w", min=1, help="worker processes (at most KAFKA_PARTITIONS do work)"
    ),
    duration: float | None = typer.Option(
        None, "--duration", min=0.1, help="stop after this many seconds (default: until Ctrl-C)"
    ),
    replay_file: Path | None = typer.Option(
        None, "--replay", help="JSON Lines file to send once everything runs (- = standard input)"
    ),
):
    """Run workers and the ClickHouse sink: embedded broker + chDB by default, or the configured
    cluster."""
    from streams.cli.common import require_free_port
    from streams.cli.run import run_pipeline
    from streams.local.lifecycle import stop_on_signals

    if replay_file is not None:
        replay_file = input_file(replay_file)
    s = settings()
    require_free_port(s)
    setup_logging(s)
    stop_on_signals()
    run_pipeline(s, workers=workers, duration=duration, replay=replay_file, console=console)


from streams.cli.account import account_app  # noqa: E402  (sub-commands register after the shared helpers)
from streams.cli.dlq import dlq_app  # noqa: E402
from streams.cli.profiles import profiles_command  # noqa: E402
from streams.cli.rerate import rerate_command  # noqa: E402
from streams.cli.trace import trace_command  # noqa: E402

app.add_typer(account_app, name="account")
app.add_typer(dlq_app, name="dlq")
app.command("rerate")(friendly(rerate_command))
app.command("trace")(friendly(trace_command))
app.command("profiles")(friendly(profiles_command))


EXAMPLES = {
    "simulate": "rating simulate examples/demo.jsonl --out simulate-out --json | jq .",
    "quote": "rating quote -p tokenhub -m kimi-k2.5 --input 200000 --cache-hit 50000 --output 3000",
    "worker": "KAFKA_BOOTSTRAP_SERVERS=kafka:9092 rating worker",
    "sink": "KAFKA_BOOTSTRAP_SERVERS=kafka:9092 "
    "CLICKHOUSE_URL=http://billing@clickhouse:8123/billing rating sink",
    "demo": "rating demo examples/demo.jsonl --batch 8",
    "topics": "KAFKA_BOOTSTRAP_SERVERS=kafka:9092 rating topics --check --json",
    "migrate": "rating migrate --wait 120",
    "replay": "cat events.jsonl | rating replay - --batch 100",
    "bench": "rating bench --events 5000",
    "run": "rating run --workers 2 --replay examples/demo.jsonl  "
    "(then, in another shell: rating dlq list)",
    "rerate": "rating rerate -p jiekou --prices 2026-06-cut --from 2026-05-01T00:00:00+08:00 "
    "--to 2026-05-02T00:00:00+08:00 --input examples/demo.jsonl --out diff.csv",
    "trace": "rating trace tr-coze-alice-009 --json | jq .deductions",
    "profiles": "rating profiles tokenhub --json | jq .versions",
    "account show": "rating account show alice --json | jq .cash",
    "dlq list": "rating dlq list --reason unknown_model --json",
    "dlq explain": "rating dlq explain 3f2a",
    "dlq redrive": "rating dlq redrive --reason unknown_model --dry-run",
}


def add_examples(typer_app: typer.Typer, prefix: str = "") -> None:
    """Every subcommand's help ends with an example (typer's epilog), from one table."""
    for info in typer_app.registered_commands:
        if info.name:
            name = prefix + info.name
        else:
            assert info.callback is not None  # every command here is registered from a function
            name = prefix + info.callback.__name__.replace("_", "-")
        info.epilog = f"Example: {EXAMPLES[name]}"
    for group in typer_app.registered_groups:
        assert group.typer_instance is not None  # every group here is added as a typer app
        add_examples(group.typer_instance, f"{group.name} ")


add_examples(app)


def main() -> None:  # pragma: no cover - console script entry
    app()


if __name__ == "__main__":
    sys.exit(app())
