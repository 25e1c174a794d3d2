"""Settlement lines: deductions summed per main account, period and item/model/variant.

Hourly periods (on the hour, UTC; the shipped time zones have whole-hour offsets), daily periods in
the platform time zone for credit-based video and 3D generation (billing-rules §5). A period
closes when the partition's stream time passes its end plus the allowed lateness; a deduction
that arrives for a closed period becomes an **adjustment** line of its own, never a rewrite.
Every id and time in a line is derived from the data, so a replay produces the same lines.
A line holds sums and counts only, never a list that grows with the traffic: each deduction names
its line (``settlement_id``), and the line's events are found by joining on it.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from streams.deduction.record import money
from streams.ids import derived_id

SETTLEMENT_NAMESPACE = uuid.UUID("0c7d51a4-8f7e-4d0e-9f41-3c2b9a6d8e15")
HOUR_MS = 3_600_000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
BUCKETS = ("free", "trial", "pack", "voucher", "cash")


@lru_cache(maxsize=4096)
def _day_bounds(tz: str, hour_index: int) -> tuple[int, int]:
    local = (EPOCH + timedelta(hours=hour_index)).astimezone(ZoneInfo(tz))
    start = local.replace(hour=0, minute=0, second=0, microsecond=0)
    end = start + timedelta(days=1)  # wall-clock arithmetic in the zone: a local day, DST or not
    return (start - EPOCH) // timedelta(milliseconds=1), (end - EPOCH) // timedelta(milliseconds=1)


def period_of(granularity: str, event_ms: int, tz: str) -> tuple[int, int]:
    if granularity == "day":
        return _day_bounds(tz, event_ms // HOUR_MS)
    start = event_ms - event_ms % HOUR_MS
    return start, start + HOUR_MS


def _key(granularity: str, start: int, d: dict[str, Any]) -> str:
    return f"{granularity}|{start}|{d['item']}|{d['model'] or ''}|{d['variant'] or ''}"


def _new_period(granularity: str, start: int, end: int, d: dict[str, Any]) -> dict[str, Any]:
    return {
        "granularity": granularity,
        "period_start": start,
        "period_end": end,
        "item": d["item"],
        "model": d["model"],
        "variant": d["variant"],
        "profile": d["profile"],
        "currency": d["currency"],
        "quantities": {},
        "gross": "0",
        "unbilled": "0",
        **{b: "0" for b in BUCKETS},
        "event_count": 0,
        "price_versions": [],
    }


def _add(acc: dict[str, Any], d: dict[str, Any]) -> None:
    """Accumulate one deduction. Sums are kept as exact decimal strings (the state is JSON)."""
    q = acc["quantities"]
    for comp, value in d["quantities"].items():
        q[comp] = money(Decimal(q.get(comp, "0")) + Decimal(value))
    acc["gross"] = money(Decimal(acc["gross"]) + Decimal(d["rated_amount"]))
    acc["unbilled"] = money(Decimal(acc["unbilled"]) + Decimal(d["unbilled_amount"]))
    for s in d["splits"]:
        acc[s["bucket_kind"]] = money(Decimal(acc[s["bucket_kind"]]) + Decimal(s["amount"]))
    acc["event_count"] += 1
    if d["price_version"] not in acc["price_versions"]:
        acc["price_versions"].append(d["price_version"])
    acc.pop("event_ids", None)  # kept by state version 1: a line no longer lists its events


def line_id(main: str, acc: dict[str, Any], line_type: str, suffix: str | None = None) -> str:
    """``suffix``: the event id of an adjustment line (None for a regular line)."""
    return derived_id(
        SETTLEMENT_NAMESPACE,
        main,
        acc["granularity"],
        acc["period_start"],
        acc["item"],
        acc["model"],
        acc["variant"],
        line_type,
        suffix,
    )


def _line(
    main: str, acc: dict[str, Any], line_type: str, lateness_ms: int, suffix: str | None = None
) -> dict[str, Any]:
    sid = acc.get("settlement_id") if line_type == "regular" else None  # kept by settle()
    return {
        "settlement_id": sid if sid is not None else line_id(main, acc, line_type, suffix),
        "main_account_id": main,
        "period_start": acc["period_start"],
        "period_end": acc["period_end"],
        "granularity": acc["granularity"],
        "line_type": line_type,
        "profile": acc["profile"],
        "currency": acc["currency"],
        "item": acc["item"],
        "model": acc["model"],
        "variant": acc["variant"],
        "quantities": dict(sorted(acc["quantities"].items())),
        "gross_amount": acc["gross"],
        "free_amount": acc["free"],
        "trial_amount": acc["trial"],
        "pack_amount": acc["pack"],
        "voucher_amount": acc["voucher"],
        "cash_amount": acc["cash"],
        "unbilled_amount": acc["unbilled"],
        "event_count": acc["event_count"],
        "price_versions": sorted(acc["price_versions"]),
        "closed_at": acc["period_end"] + lateness_ms,
    }


def settle(
    periods: dict[str, dict],
    settled_until: int,
    main: str,
    d: dict[str, Any],
    tz: str,
    lateness_ms: int,
) -> tuple[str, list[dict]]:
    """Add a deduction to its open period, or make it an adjustment line of its own if the period
    has closed. Returns the id of the line the deduction is summed into, and the lines to emit."""
    granularity = d["settlement_period"]
    start, end = period_of(granularity, d["event_time"], tz)
    if end + lateness_ms <= settled_until:
        late = _new_period(granularity, start, end, d)
        _add(late, d)
        line = _line(main, late, "adjustment", lateness_ms, suffix=d["event_id"])
        return line["settlement_id"], [line]
    key = _key(granularity, start, d)
    acc = periods.get(key)
    if acc is None:
        acc = periods[key] = _new_period(granularity, start, end, d)
    _add(acc, d)
    sid = acc.get("settlement_id")
    if sid is None:  # computed once per period (states of version 1 lack it)
        sid = acc["settlement_id"] = line_id(main, acc, "regular")
    return sid, []


def close_due(periods: dict[str, dict], clock: int, main: str, lateness_ms: int) -> list[dict]:
    """Close every period whose end plus lateness the clock has reached, oldest first."""
    due = sorted(
        (acc["period_end"], key)
        for key, acc in periods.items()
        if acc["period_end"] + lateness_ms <= clock
    )
    return [_line(main, periods.pop(key), "regular", lateness_ms) for _, key in due]
