"""``rating rerate``: re-rate a period under another price version, report the diff, and optionally
book it as adjustments (see streams/rerate/diff.py for the rules)."""

from __future__ import annotations

import asyncio
import csv
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import typer
from rich.progress import Progress
from rich.table import Table

from streams.cli.common import (
    UserError,
    _profiles,
    amount,
    client_settings,
    console,
    emit_json_lines,
    err,
    require_cluster,
)
from streams.cli.common import input_file as read_input
from streams.cli.common import shown as _s
from streams.deduction.record import money
from streams.ingest.codec import registry
from streams.ingest.events import Rejected, parse_json_event, to_millis
from streams.ingest.messages import Decoded, decode_message
from streams.kafka_client import producer_kwargs, read_records, read_topic
from streams.rerate.diff import (
    BUCKETS,
    RerateResult,
    Rerating,
    adjustments,
    rerun,
    settlement_lines,
)
from streams.simulate import read_lines


def _time(text: str, option: str) -> int:
    try:
        return to_millis(text, option)
    except Rejected:
        raise UserError(
            f"{option} {text!r} is not an ISO-8601 time with a UTC offset, e.g. "
            "2026-05-01T00:00:00+08:00"
        ) from None


def events_from_file(path: Path) -> list[tuple[Any, Decoded]]:
    out = []
    for _, raw in read_lines(path):
        try:
            event = parse_json_event(orjson.loads(raw))
        except (orjson.JSONDecodeError, Rejected):
            continue  # a dead letter when it was sent: it charged nothing
        out.append((event, Decoded(event, None, raw)))
    return out


def events_from_messages(
    messages: list[tuple[int, int, bytes | None, bytes | None]],
) -> list[tuple[Any, Decoded]]:
    """(partition, offset, key, value) of input messages -> events, partition by partition in
    offset order: each account lives in one partition, so this is the order the workers applied
    them in. Ticks and what cannot be decoded (dead letters, never charged) are left out."""
    reg = registry()
    out: list[tuple[Any, Decoded]] = []
    for _, _, key, value in sorted(messages, key=lambda m: (m[0], m[1])):
        if reg.is_clock_tick(value):
            continue
        out.extend((d.event, d) for d in decode_message(reg, key, value) if d.event is not None)
    return out


async def events_from_topic(s) -> list[tuple[Any, Decoded]]:
    messages = []
    with Progress(console=err, transient=True) as progress:
        task = progress.add_task(f"reading {s.topics.events}", total=None)
        async for m in read_topic(
            s, s.topics.events, on_progress=lambda d, t: progress.update(task, completed=d, total=t)
        ):
            messages.append((m.partition, m.offset, m.key, m.value))
    return events_from_messages(messages)


def events_from_clickhouse(client, topic: str) -> list[tuple[Any, Decoded]]:
    """The same from the sink's archive of the events topic (kept beyond Kafka retention)."""
    result = client.query(
        "SELECT source_partition, source_offset, main_account_id, payload FROM events_archive "
        "FINAL "
        "WHERE source_topic = {topic:String}",
        parameters={"topic": topic},
        column_formats={"payload": "bytes"},
    )
    return events_from_messages(
        [(p, o, k.encode() if k else None, v) for p, o, k, v in result.result_rows]
    )


@dataclass
class Billed:
    """What the pipeline published: usage deductions by id, re-rating adjustments, and the ids of
    the re-rating settlement lines that exist (an adjustment whose line is missing is uncovered)."""

    usage: dict[str, dict[str, Any]]
    adjustments: list[dict[str, Any]]
    covered: set[str]


async def billed_from_topics(s) -> Billed:
    usage: dict[str, dict[str, Any]] = {}
    adjusted: dict[str, dict[str, Any]] = {}
    covered: set[str] = set()
    with Progress(console=err, transient=True) as progress:
        task = progress.add_task(f"reading {s.topics.deductions}", total=None)
        async for _, record in read_records(
            s,
            s.topics.deductions,
            "deduction",
            on_progress=lambda d, t: progress.update(task, completed=d, total=t),
        ):
            record["event_time"] = to_millis(record["event_time"], "event_time")
            (adjusted if record["kind"] == "rerate_adjustment" else usage)[
                record["deduction_id"]
            ] = record
    async for _, record in read_records(s, s.topics.settlements, "settlement"):
        if record["line_type"] == "rerate":
            covered.add(record["settlement_id"])
    return Billed(usage, list(adjusted.values()), covered)


def _same_charge(a: dict[str, Any], b: dict[str, Any]) -> bool:
    def key(d: dict[str, Any]) -> tuple:
        return (
            Decimal(d["rated_amount"]),
            Decimal(d["unbilled_amount"]),
            sorted((x["bucket_kind"], x["bucket_id"], Decimal(x["amount"])) for x in d["splits"]),
        )

    return key(a) == key(b)


def unmatched(result: RerateResult, billed: Billed) -> list[str]:
    """Event ids whose replayed deduction is not what the pipeline billed: the events topic no
    longer holds the full history (retention), or the input file is not the whole stream."""
    return [
        d.old["event_id"]
        for d in result.diffs
        if d.old["deduction_id"] not in billed.usage
        or not _same_charge(d.old, billed.usage[d.old["deduction_id"]])
    ]


def rerate_command(
    profile: str = typer.Option(..., "--profile", "-p", help="the profile whose prices change"),
    prices: str = typer.Option(
        ...,
        "--prices",
        help="the price version to apply (a version in the profile's price_book.yaml)",
    ),
    start: str = typer.Option(
        ..., "--from", help="start of the period (ISO-8601 with offset), inclusive"
    ),
    end: str = typer.Option(..., "--to", help="end of the period, exclusive"),
    accounts: str | None = typer.Option(
        None, "--accounts", help="comma-separated main account ids (default: all of the profile)"
    ),
    input_file: Path | None = typer.Option(
        None,
        "--input",
        help="JSON Lines file of the events, - = standard input (default: the events topic)",
    ),
    from_clickhouse: bool = typer.Option(
        False,
        "--from-clickhouse",
        help="read the events from ClickHouse's events_archive (beyond Kafka retention)",
    ),
    out: Path | None = typer.Option(None, "--out", help="write the diff as .csv or .parquet"),
    to_clickhouse: bool = typer.Option(
        False, "--clickhouse", help="also insert the diff into the ClickHouse table rerate_diffs"
    ),
    apply: bool = typer.Option(
        False, "--apply", help="book the deltas as adjustment deductions and settlement lines"
    ),
    yes: bool = typer.Option(False, "--yes", "-y", help="do not ask before booking"),
    as_json: bool = typer.Option(
        False, "--json", help="print the diff as JSON Lines: one object per account, item and model"
    ),
):
    """Re-rate a period under another price version,
    beside the live ledger; show and save the diff."""
    s = client_settings()
    profiles = _profiles(s)
    from streams.cli.profiles import profile_or_error

    profile_or_error(profiles, profile)
    from_ms, to_ms = _time(start, "--from"), _time(end, "--to")
    if to_ms <= from_ms:
        raise UserError("--to must be after --from")
    if out is not None and out.suffix not in (".csv", ".parquet"):
        raise UserError(f"--out {out}: write .csv or .parquet")
    rerating = Rerating(
        profile,
        prices,
        from_ms,
        to_ms,
        frozenset(a.strip() for a in (accounts or "").split(",") if a.strip()),
    )
    # an unknown version fails here, before any reading
    profiles[profile].pinned(prices, from_ms, to_ms)
    if input_file is not None and from_clickhouse:
        raise UserError("--input and --from-clickhouse both name the events; give one")
    if input_file is not None:
        events = events_from_file(read_input(input_file))
    elif from_clickhouse:
        from streams.cli.common import open_clickhouse

        events = events_from_clickhouse(open_clickhouse(s), s.topics.events)
    else:
        require_cluster(s, "re-rating from the events topic (or pass --input FILE)")
        events = asyncio.run(events_from_topic(s))
    billed: Billed | None = None
    if apply:
        require_cluster(s, "`rerate --apply`")
    if not s.embedded_broker:
        billed = asyncio.run(billed_from_topics(s))
    result = rerun(
        events,
        profiles,
        rerating,
        partitions=s.kafka_partitions,
        allowed_lateness_ms=s.settlement_allowed_lateness_s * 1000,
        booked=billed.adjustments if billed else (),
    )
    mismatch = unmatched(result, billed) if billed is not None else []
    if as_json:
        emit_json_lines(
            {"rerate_id": rerating.id, "profile": profile, "price_version": prices, **g}
            for g in result.summary()
        )
    else:
        show(result)
    if mismatch:
        message = (
            f"{len(mismatch)} of {len(result.diffs)} replayed deductions differ from what the "
            "pipeline billed "
            f"(first: {', '.join(mismatch[:3])}): the events no longer hold the whole history "
            "(topic retention), "
            "so the bucket state at the period is unknown; re-rate from a complete archive with "
            "--input FILE"
        )
        if apply:
            raise UserError(message + "; nothing was booked")
        err.print(f"[yellow]warning:[/] {message}")
    note = err if as_json else console  # with --json, stdout holds the JSON Lines only
    if out is not None:
        write_report(result, out)
        note.print(f"diff written to {out}")
    if to_clickhouse:
        from streams.sink.clickhouse import connect, migrate

        client = connect(s)
        migrate(client, cluster=s.clickhouse_cluster)
        client.insert("rerate_diffs", diff_rows(result), column_names=DIFF_COLUMNS)
        note.print(
            f"diff inserted into rerate_diffs ({s.clickhouse_dsn_for_display()}), rerate_id "
            f"{rerating.id}"
        )
    if apply:
        assert billed is not None
        book(s, profiles, result, billed.adjustments, billed.covered, yes)


def show(result: RerateResult) -> None:
    r = result.rerating
    table = Table(
        title=(
            f"re-rating {_s(r.profile)} at {_s(r.version)}, {len(result.diffs)} events "
            f"(rerate_id {_s(r.id)})"
        )
    )
    for col in (
        "account",
        "item",
        "model",
        "events",
        "old",
        "new",
        "delta",
        "old split",
        "new split",
    ):
        table.add_column(
            col,
            justify="right" if col in ("events", "old", "new", "delta") else "left",
            overflow="fold",
        )

    def split(d: dict[str, Decimal]) -> str:
        return " ".join(f"{k} {amount(v)}" for k, v in d.items() if v)

    for g in result.summary():
        note = f" ({g['not_rated']} not rated)" if g["not_rated"] else ""
        table.add_row(
            _s(g["main_account_id"]),
            _s(g["item"]),
            _s(g["model"]),
            f"{g['events']}{note}",
            amount(g["old_amount"]),
            amount(g["new_amount"]),
            amount(g["delta"]),
            split(g["old_split"]),
            split(g["new_split"]),
        )
    console.print(table)
    knock_on = sum(1 for d in result.diffs if d.knock_on)
    console.print(
        f"total delta {amount(result.total_delta)}"
        + (f"; {knock_on} later events paid from other buckets as a result" if knock_on else "")
    )
    for d in result.diffs:
        if d.new_rejection:
            console.print(
                f"[yellow]not rated at {_s(r.version)}[/]: {_s(d.old['event_id'])}: "
                f"{_s(d.new_rejection)}"
            )


DIFF_COLUMNS = [
    "rerate_id",
    "profile",
    "price_version",
    "period_from",
    "period_to",
    "main_account_id",
    "model",
    "item",
    "currency",
    "events",
    "quantities",
    "old_amount",
    "new_amount",
    "delta",
    "old_split",
    "new_split",
    "created_at",
]


def diff_rows(result: RerateResult) -> list[tuple]:
    r = result.rerating
    now = datetime.now(UTC)

    def ts(ms: int) -> datetime:
        return datetime.fromtimestamp(ms / 1000, UTC)

    return [
        (
            r.id,
            r.profile,
            r.version,
            ts(r.from_ms),
            ts(r.to_ms),
            g["main_account_id"],
            g["model"],
            g["item"],
            g["currency"],
            g["events"],
            g["quantities"],
            g["old_amount"],
            g["new_amount"],
            g["delta"],
            g["old_split"],
            g["new_split"],
            now,
        )
        for g in result.summary()
    ]


def write_report(result: RerateResult, path: Path) -> None:
    r = result.rerating
    header = [
        "rerate_id",
        "profile",
        "price_version",
        "main_account_id",
        "item",
        "model",
        "currency",
        "events",
        "not_rated",
        "quantities",
        "old_amount",
        "new_amount",
        "delta",
        *(f"old_{b}" for b in (*BUCKETS, "unbilled")),
        *(f"new_{b}" for b in (*BUCKETS, "unbilled")),
    ]
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    csv_path = (
        path if path.suffix == ".csv" else Path(tempfile.mkstemp(suffix=".csv", dir=path.parent)[1])
    )
    with open(csv_path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for g in result.summary():
            w.writerow(
                [
                    r.id,
                    r.profile,
                    r.version,
                    g["main_account_id"],
                    g["item"],
                    g["model"],
                    g["currency"],
                    g["events"],
                    g["not_rated"],
                    orjson.dumps({k: money(v) for k, v in g["quantities"].items()}).decode(),
                    money(g["old_amount"]),
                    money(g["new_amount"]),
                    money(g["delta"]),
                    *(money(g["old_split"][b]) for b in (*BUCKETS, "unbilled")),
                    *(money(g["new_split"][b]) for b in (*BUCKETS, "unbilled")),
                ]
            )
    if path.suffix == ".parquet":
        _csv_to_parquet(csv_path, path)
        csv_path.unlink()


def _csv_to_parquet(csv_path: Path, parquet_path: Path) -> None:
    """chDB (the `local` extra, also the embedded ClickHouse) writes Parquet; money stays decimal
    text."""
    try:
        import chdb
    except ImportError:
        raise UserError(
            "--out *.parquet needs chDB: pip install '.[local]' (or write a .csv)"
        ) from None

    quoted = str(csv_path.resolve()).replace("\\", "\\\\").replace("'", "\\'")
    data = chdb.query(
        f"SELECT * FROM file('{quoted}', 'CSVWithNames') SETTINGS "
        "schema_inference_make_columns_nullable = 0, "
        "input_format_csv_use_best_effort_in_schema_inference = 0",
        "Parquet",
    )
    parquet_path.write_bytes(data.bytes())


def book(
    s, profiles, result: RerateResult, booked: list[dict[str, Any]], covered: set[str], yes: bool
) -> None:
    fresh = adjustments(result)
    # booked by a run that stopped before its lines: booked again below, naming their new line
    uncovered = [b for b in booked if b.get("settlement_id") not in covered]
    timezones = {name: profiles[name].timezone for name in profiles.names()}
    lines = settlement_lines(fresh + uncovered, timezones, closed_at=int(time.time() * 1000))
    if not fresh and not lines:
        console.print("nothing to book: the billed amounts already equal this re-rating")
        return
    delta = sum((Decimal(a["rated_amount"]) for a in fresh), Decimal(0))
    if not yes and not typer.confirm(
        f"book {len(fresh)} adjustment deductions (total {money(delta)}) and {len(lines)} "
        "settlement lines?"
    ):
        raise typer.Abort()
    asyncio.run(_produce(s, fresh + uncovered, lines))
    console.print(
        f"booked {len(fresh)} adjustment deductions (total {money(delta)}) and {len(lines)} "
        "settlement lines "
        f"to {s.topics.deductions} and {s.topics.settlements}"
    )


async def _produce(s, deductions: list[dict[str, Any]], lines: list[dict[str, Any]]) -> None:
    from aiokafka import AIOKafkaProducer

    reg = registry()
    producer = AIOKafkaProducer(**producer_kwargs(s))
    await producer.start()
    try:
        futures = [
            await producer.send(
                s.topics.deductions,
                key=d["main_account_id"].encode(),
                value=reg.encode("deduction", d),
            )
            for d in deductions
        ]
        await asyncio.gather(*futures)
        # lines only after their adjustments are durable: a rerun books lines for adjustments that
        # lack one
        futures = [
            await producer.send(
                s.topics.settlements,
                key=x["main_account_id"].encode(),
                value=reg.encode("settlement", x),
            )
            for x in lines
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
