"""Requests and tokens per main account, model and minute: what RPM/TPM limits count (billing-rules
§4), published so alerting can tell a rate-limit 403 from a low balance. Closed like settlement
periods: when stream time passes the minute's end plus the allowed lateness; a late request
yields an extra `adjustment` record for its minute."""

from __future__ import annotations

import uuid
from typing import Any

from streams.deduction.record import Deduction
from streams.ids import derived_id

USAGE_MINUTE_NAMESPACE = uuid.UUID("5e2d9a61-0b7c-4f3e-8a2d-7c1e4b9f6a03")
MINUTE_MS = 60_000
TOKEN_ITEMS = ("tokens", "embedding", "rerank")


def _record(
    main: str, acc: dict[str, Any], line_type: str, suffix: str | None = None
) -> dict[str, Any]:
    return {
        "usage_minute_id": derived_id(
            USAGE_MINUTE_NAMESPACE, main, acc["model"], acc["minute_start"], line_type, suffix
        ),
        "main_account_id": main,
        "model": acc["model"],
        "minute_start": acc["minute_start"],
        "line_type": line_type,
        "requests": acc["requests"],
        "tokens": acc["tokens"],
    }


def count(
    minutes: dict[str, dict], settled_until: int, main: str, d: Deduction, lateness_ms: int
) -> list[dict]:
    if d.item not in TOKEN_ITEMS or d.billed_elsewhere:
        return []
    start = d.event_time - d.event_time % MINUTE_MS
    tokens = sum(int(v) for v in d.quantities.values())
    if start + MINUTE_MS + lateness_ms <= settled_until:
        return [
            _record(
                main,
                {"model": d.model, "minute_start": start, "requests": 1, "tokens": tokens},
                "adjustment",
                d.event_id,
            )
        ]
    acc = minutes.setdefault(
        f"{d.model}|{start}",
        {"model": d.model, "minute_start": start, "requests": 0, "tokens": 0},
    )
    acc["requests"] += 1
    acc["tokens"] += tokens
    return []


def close_due(minutes: dict[str, dict], clock: int, main: str, lateness_ms: int) -> list[dict]:
    due = sorted(
        (acc["minute_start"], key)
        for key, acc in minutes.items()
        if acc["minute_start"] + MINUTE_MS + lateness_ms <= clock
    )
    return [_record(main, minutes.pop(key), "regular") for _, key in due]


def next_due(minutes: dict[str, dict], lateness_ms: int) -> int | None:
    return min(
        (acc["minute_start"] + MINUTE_MS + lateness_ms for acc in minutes.values()), default=None
    )
