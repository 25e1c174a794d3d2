"""The offline twin of the pipeline: the same ``BillingEngine`` over a JSON Lines file.

Events are applied in file order, which is the per-account order the live pipeline sees when
the file is replayed to Kafka (one partition per account, file order within it). Output files
are deterministic: the same input gives byte-identical files.
"""

from __future__ import annotations

import base64
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from streams.dedupe import MemoryEntries
from streams.engine import BillingEngine, Outcome
from streams.ingest.events import Rejected, millis_to_iso, parse_json_event
from streams.ingest.messages import Decoded, dead_letter_record
from streams.ingest.partitioner import partition_for
from streams.ledger.state import AccountState
from streams.limits import MAX_STATE_BYTES, check_record_size
from streams.rating.profiles import Profiles

TIME_FIELDS = ("event_time", "since", "period_start", "period_end", "closed_at", "minute_start")


@dataclass
class SimulationResult:
    deductions: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    dead_letters: list[dict[str, Any]] = field(default_factory=list)
    statuses: list[dict[str, Any]] = field(default_factory=list)
    balances: list[dict[str, Any]] = field(default_factory=list)
    settlements: list[dict[str, Any]] = field(default_factory=list)
    usage_minutes: list[dict[str, Any]] = field(default_factory=list)
    states: dict[str, AccountState] = field(default_factory=dict)
    counts: Counter = field(default_factory=Counter)


def read_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with open(path, "rb") as fh:
        for number, line in enumerate(fh, start=1):
            if line.strip():
                yield number, line.rstrip(b"\r\n")


def simulate(
    lines: Iterable[tuple[int, bytes]],
    engine: BillingEngine,
    source: str = "input",
    partitions: int = 4,
    *,
    wall_ms: int | None = None,
    until_ms: int | None = None,
) -> SimulationResult:
    """Apply every line in order. Stream time is per Kafka partition, as live: each account is
    advanced to its partition's clock before its event, and at the end of the input every account
    is advanced to its partition's final clock, or to ``until_ms`` if later (what the live
    worker's idle watermark does once the stream has been quiet until then). ``wall_ms``: the wall
    clock for the event_time_in_future check (``rating simulate`` passes now; None: no check)."""
    run = Simulation(engine, partitions, wall_ms=wall_ms)
    for number, raw in lines:
        run.result.counts["consumed"] += 1
        obj: Any = None
        try:
            obj = orjson.loads(raw)
            event = parse_json_event(obj)
        except orjson.JSONDecodeError as exc:
            _reject(
                run.result,
                Decoded(None, Rejected("invalid_json", f"line {number} is not JSON: {exc}"), raw),
                source,
                number,
            )
            continue
        except Rejected as exc:
            _reject(
                run.result,
                Decoded(None, exc, raw, obj if isinstance(obj, dict) else None),
                source,
                number,
            )
            continue
        run.apply(event, Decoded(event, None, raw), source, number)
    return run.finish(until_ms)


class Simulation:
    """The per-event loop shared by ``simulate`` (JSON lines) and re-rating (decoded events)."""

    def __init__(self, engine: BillingEngine, partitions: int, wall_ms: int | None = None):
        self.engine = engine
        self.wall_ms = wall_ms  # the wall clock, for the event_time_in_future check (None: none)
        self.partitions = partitions
        self.result = SimulationResult()
        self.clocks: dict[int, int] = {}
        # one dedupe store per partition, as live (a table partition each), pruned by its own clock
        self.entries: dict[int, MemoryEntries] = {}

    def apply(self, event: Any, decoded: Decoded, source: str, number: int) -> Outcome:
        states, engine = self.result.states, self.engine
        key = event.main_account_id
        part = partition_for(key, self.partitions)
        entries = self.entries.get(part)
        if entries is None:
            entries = self.entries[part] = MemoryEntries(engine.horizon_ms)
        outcomes, clock = engine.step(
            states.get(key),
            event,
            clock_ms=self.clocks.get(part, 0),
            entries=entries,
            wall_ms=self.wall_ms,
        )
        self.clocks[part] = clock
        entries.prune(clock)  # amortized O(1): it looks at the oldest entry only
        outcome = outcomes[-1]
        if outcome.state is not None:
            states[key] = outcome.state
        if outcome.rejected is not None:
            _reject(self.result, replace(decoded, rejected=outcome.rejected), source, number)
            return outcome
        self.result.counts[outcome.result] += 1
        for o in outcomes:
            _collect(self.result, o)
        return outcome

    def finish(self, until_ms: int | None = None) -> SimulationResult:
        """Advance every account to its partition's final clock, or to ``until_ms`` if later (what
        the live worker's idle watermark does once the stream has been quiet until then)."""
        states = self.result.states
        for key in sorted(states):
            clock = self.clocks[partition_for(key, self.partitions)]
            _collect(self.result, self.engine.advance(states[key], max(clock, until_ms or 0)))
        return self.result


def _collect(result: SimulationResult, outcome: Outcome) -> None:
    if outcome.deduction is not None:
        result.deductions.append(outcome.deduction.to_record())
    result.alerts.extend(outcome.alerts)
    if outcome.status is not None:
        result.statuses.append(outcome.status)
    if outcome.balance is not None:
        result.balances.append(outcome.balance)
    result.settlements.extend(outcome.settlements)
    result.usage_minutes.extend(outcome.usage_minutes)


def _reject(result: SimulationResult, decoded: Decoded, source: str, number: int) -> None:
    assert decoded.rejected is not None
    result.counts["rejected"] += 1
    result.counts[f"rejected:{decoded.rejected.code}"] += 1
    result.dead_letters.append(
        dead_letter_record(
            decoded,
            topic=source,
            partition=0,
            offset=number,
            key=None,
            fallback_id=f"{source}:{number}",
        )
    )


def to_json_record(record: dict[str, Any]) -> dict[str, Any]:
    """Avro-shaped dict -> JSON-friendly dict: times as ISO-8601 UTC, bytes as base64."""
    out = {}
    for k, v in record.items():
        if k in TIME_FIELDS and isinstance(v, int):
            v = millis_to_iso(v)
        elif isinstance(v, datetime):
            v = millis_to_iso(int(v.timestamp()) * 1000 + v.microsecond // 1000)
        elif isinstance(v, bytes):
            v = base64.b64encode(v).decode()
        out[k] = v
    return out


def dumps_line(record: dict[str, Any]) -> bytes:
    return orjson.dumps(to_json_record(record), option=orjson.OPT_SORT_KEYS) + b"\n"


def write_outputs(result: SimulationResult, out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {
        "deductions": (out_dir / "deductions.jsonl", result.deductions),
        "alerts": (out_dir / "alerts.jsonl", result.alerts),
        "dead_letters": (out_dir / "dead_letters.jsonl", result.dead_letters),
        "account_status": (out_dir / "account_status.jsonl", result.statuses),
        "account_balances": (out_dir / "account_balances.jsonl", result.balances),
        "settlements": (out_dir / "settlements.jsonl", result.settlements),
        "usage_per_minute": (out_dir / "usage_per_minute.jsonl", result.usage_minutes),
    }
    for name, (path, records) in files.items():
        with open(path, "wb") as fh:
            for r in records:
                # JSON is the larger encoding (Avro writes no field names): under the limit here,
                # under it on the wire
                fh.write(check_record_size(name, str(r.get("main_account_id")), dumps_line(r)))
    for key, state in result.states.items():
        check_record_size("account state", key, state.dumps(), MAX_STATE_BYTES)
    return {name: path for name, (path, _) in files.items()}


def run_file(
    path: Path,
    profiles: Profiles | None = None,
    *,
    partitions: int = 4,
    allowed_lateness_ms: int | None = None,
    horizon_ms: int | None = None,
    max_ahead_ms: int | None = None,
    wall_ms: int | None = None,
    until_ms: int | None = None,
) -> SimulationResult:
    options = {
        k: v
        for k, v in (
            ("allowed_lateness_ms", allowed_lateness_ms),
            ("horizon_ms", horizon_ms),
            ("max_ahead_ms", max_ahead_ms),
        )
        if v is not None
    }
    engine = BillingEngine(profiles or Profiles(), **options)
    return simulate(
        read_lines(path),
        engine,
        source=path.name,
        partitions=partitions,
        wall_ms=wall_ms,
        until_ms=until_ms,
    )
