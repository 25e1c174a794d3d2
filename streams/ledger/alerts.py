"""Alert records with deterministic ids: (account, kind, episode) names an alert exactly once."""

from __future__ import annotations

import uuid
from typing import Any

from streams.deduction.record import Deduction
from streams.ids import derived_id

ALERT_NAMESPACE = uuid.UUID("6f1c2f0e-6a1b-4d8e-9a51-1f0f1b5e2a10")

ALERT_KINDS = (
    "balance_below_threshold",
    "arrears_started",
    "arrears_cleared",
    "grace_ending",
    "resources_released",
    "free_quota_exhausted",
    "trial_expiring",
    "trial_exhausted",
    "model_paused",
    "service_stopped",
)
ARREARS_KINDS = frozenset(
    {"arrears_started", "arrears_cleared", "grace_ending", "resources_released"}
)


def alert(
    kind: str,
    main_account_id: str,
    account_id: str,
    event_time: int,
    episode: str,
    message: str,
    *,
    model: str | None = None,
    details: dict[str, str] | None = None,
    source_event_ids: list[str] | None = None,
    trace_id: str = "",
) -> dict[str, Any]:
    assert kind in ALERT_KINDS, kind
    return {
        "alert_id": derived_id(ALERT_NAMESPACE, main_account_id, kind, episode),
        "kind": kind,
        "main_account_id": main_account_id,
        "account_id": account_id,
        "event_time": event_time,
        "episode": episode,
        "model": model,
        "message": message,
        "details": details or {},
        "source_event_ids": source_event_ids or [],
        "trace_id": trace_id,
        "sequence": 0,  # set by the engine (number_records), in processing order
    }


def number_records(
    state: Any,
    alerts: list[dict[str, Any]],
    status: dict[str, Any] | None,
    deduction: Deduction | None = None,
    balance: dict[str, Any] | None = None,
) -> None:
    """Give an outcome's deduction or balance record, then its alerts, then its status record, the
    account's next sequence numbers.

    The sequence follows processing order, so readers take an account's latest status or arrears
    alert by it: effective times can tie, or a late event can carry an earlier one. It never falls
    behind ``applied_events`` (the count of applied events), so it also says roughly which event
    produced a record, and it is part of the state, so a replay numbers the same records alike.
    Deductions and balance records share it, so an account's latest ``balance_after`` or
    ``cash_balance`` is the one with the highest sequence (finance's arrears)."""
    if deduction is not None:
        deduction.sequence = _next_sequence(state)
    first = [balance] if balance is not None else []
    for record in [*first, *alerts, *([status] if status is not None else [])]:
        record["sequence"] = _next_sequence(state)


def _next_sequence(state: Any) -> int:
    state.record_sequence = max(state.record_sequence, state.applied_events) + 1
    return state.record_sequence
