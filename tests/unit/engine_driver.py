"""A small driver of ``BillingEngine`` for the targeted tests: one account, events in order, the
account advanced to each event's time first (as the worker and ``simulate`` do), every output
kept. It uses only ``apply`` / ``advance`` and the records they return, never the state's
dedupe or serialization internals, so it survives a rebuild of the core's insides."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from streams.engine import BillingEngine, Outcome
from streams.ingest.events import parse_json_event
from streams.ledger.state import AccountState
from streams.rating.profiles import Profiles

PROFILES = Profiles()
D = Decimal


def ms(iso: str) -> int:
    return (datetime.fromisoformat(iso) - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(
        milliseconds=1
    )


def snapshot(state: AccountState | None) -> dict[str, Any] | None:
    """An independent deep copy of the full state (``to_dict`` shares nested dicts)."""
    return None if state is None else copy.deepcopy(state.to_dict())


class Account:
    def __init__(self, engine: BillingEngine | None = None, **engine_kw):
        self.engine = engine or BillingEngine(PROFILES, **engine_kw)
        self.state: AccountState | None = None
        self.clock = 0
        self.outcomes: list[Outcome] = []
        self.deductions: list[dict[str, Any]] = []
        self.alerts: list[dict[str, Any]] = []
        self.statuses: list[dict[str, Any]] = []
        self.settlements: list[dict[str, Any]] = []

    def _collect(self, out: Outcome) -> None:
        if out.deduction is not None:
            self.deductions.append(out.deduction.to_record())
        self.alerts.extend(out.alerts)
        if out.status is not None:
            self.statuses.append(out.status)
        self.settlements.extend(out.settlements)

    def advance(self, clock: int | str) -> Outcome | None:
        clock = ms(clock) if isinstance(clock, str) else clock
        self.clock = max(self.clock, clock)
        if self.state is None:
            return None
        out = self.engine.advance(self.state, self.clock)
        assert out.rejected is None and out.deduction is None
        self.state = out.state
        self._collect(out)
        return out

    def send(self, raw: dict[str, Any] | Any) -> Outcome:
        event = parse_json_event(raw) if isinstance(raw, dict) else raw
        self.advance(event.event_time)
        out = self.engine.apply(self.state, event)
        self.outcomes.append(out)
        if out.state is not None:
            self.state = out.state
        if out.rejected is None:
            self._collect(out)
        return out

    def send_all(self, *raws) -> list[Outcome]:
        return [self.send(r) for r in raws]

    # ------------------------------------------------------------ what the outputs say

    @property
    def cash(self) -> Decimal:
        assert self.state is not None, "no account yet: send its account_opened first"
        return self.state.cash

    def kinds(self) -> list[str]:
        return [a["kind"] for a in self.alerts]

    def status(self) -> str:
        return self.statuses[-1]["status"] if self.statuses else "active"


def splits(d: dict[str, Any]) -> list[tuple[str, str, Decimal]]:
    return [(s["bucket_kind"], s["bucket_id"], D(s["amount"])) for s in d["splits"]]
