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
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from streams.deduction.record import Deduction, money
from streams.ids import derived_id

SETTLEMENT_NAMESPACE = uuid.UUID("0c7d51a4-8f7e-4d0e-9f41-3c2b9a6d8e15")
HOUR_MS = 3_600_000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
BUCKETS = ("free", "trial", "pack", "voucher", "cash")
ZERO = Decimal(0)


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


def _key(granularity: str, start: int, d: Deduction) -> str:
    return f"{granularity}|{start}|{d.item}|{d.model or ''}|{d.variant or ''}"


_STORED_KEYS = (
    "granularity",
    "period_start",
    "period_end",
    "item",
    "model",
    "variant",
    "profile",
    "currency",
    "quantities",
    "gross",
    "unbilled",
    *BUCKETS,
    "event_count",
    "price_versions",
)


@dataclass(slots=True, kw_only=True)
class OpenPeriod:
    """A settlement period's running sums in the account state: exact Decimals in memory, money
    strings in the stored JSON (``to_dict``; the keys and format every earlier version wrote).

    Changed only through ``add``, which drops the stored form kept since the last ``to_dict`` or
    ``from_dict``: an account's state is written after every round that touched it, and most of
    its open periods did not change in that round, so they are not formatted again."""

    granularity: str
    period_start: int
    period_end: int
    item: str
    model: str | None
    variant: str | None
    profile: str
    currency: str
    quantities: dict[str, Decimal] = field(default_factory=dict)
    gross: Decimal = ZERO
    unbilled: Decimal = ZERO
    free: Decimal = ZERO
    trial: Decimal = ZERO
    pack: Decimal = ZERO
    voucher: Decimal = ZERO
    cash: Decimal = ZERO
    event_count: int = 0
    price_versions: list[str] = field(default_factory=list)
    settlement_id: str | None = None  # computed once, with the first deduction
    stored: dict[str, Any] | None = field(default=None, compare=False, repr=False)

    def add(self, d: Deduction) -> None:
        """Accumulate one deduction."""
        self.stored = None
        q = self.quantities
        for comp, value in d.quantities.items():
            q[comp] = q.get(comp, ZERO) + Decimal(value)
        self.gross += d.rated_amount
        self.unbilled += d.unbilled_amount
        for split in d.splits:
            kind = split.bucket_kind
            setattr(self, kind, getattr(self, kind) + split.amount)
        self.event_count += 1
        if d.price_version not in self.price_versions:
            self.price_versions.append(d.price_version)

    def name(self, settlement_id: str) -> None:
        self.stored = None
        self.settlement_id = settlement_id

    def copy(self) -> OpenPeriod:
        """An independent copy (the stored form is not shared: it is a mutable dict)."""
        c = object.__new__(OpenPeriod)
        for name in _FIELDS:
            setattr(c, name, getattr(self, name))
        c.quantities = dict(self.quantities)
        c.price_versions = list(self.price_versions)
        c.stored = None
        return c

    def to_dict(self) -> dict[str, Any]:
        """The stored form; the caller must not change it (it is kept until the next ``add``)."""
        if self.stored is not None:
            return self.stored
        d: dict[str, Any] = {
            "granularity": self.granularity,
            "period_start": self.period_start,
            "period_end": self.period_end,
            "item": self.item,
            "model": self.model,
            "variant": self.variant,
            "profile": self.profile,
            "currency": self.currency,
            "quantities": {k: money(v) for k, v in self.quantities.items()},
            "gross": money(self.gross),
            "unbilled": money(self.unbilled),
            **{b: money(getattr(self, b)) for b in BUCKETS},
            "event_count": self.event_count,
            "price_versions": list(self.price_versions),
        }
        if self.settlement_id is not None:
            d["settlement_id"] = self.settlement_id
        self.stored = d
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> OpenPeriod:
        """Reads every version's record (version 1 also listed ``event_ids``: dropped). A record
        in today's form is kept as the stored form: writing the state back reuses it."""
        period = cls(
            granularity=d["granularity"],
            period_start=d["period_start"],
            period_end=d["period_end"],
            item=d["item"],
            model=d["model"],
            variant=d["variant"],
            profile=d["profile"],
            currency=d["currency"],
            quantities={k: Decimal(v) for k, v in d["quantities"].items()},
            gross=Decimal(d["gross"]),
            unbilled=Decimal(d["unbilled"]),
            free=Decimal(d["free"]),
            trial=Decimal(d["trial"]),
            pack=Decimal(d["pack"]),
            voucher=Decimal(d["voucher"]),
            cash=Decimal(d["cash"]),
            event_count=d["event_count"],
            price_versions=list(d["price_versions"]),
            settlement_id=d.get("settlement_id"),
        )
        keys = tuple(d)
        if keys == _STORED_KEYS or keys == (*_STORED_KEYS, "settlement_id"):
            period.stored = d
        return period


_FIELDS = tuple(f.name for f in fields(OpenPeriod))


def _new_period(granularity: str, start: int, end: int, d: Deduction) -> OpenPeriod:
    return OpenPeriod(
        granularity=granularity,
        period_start=start,
        period_end=end,
        item=d.item,
        model=d.model,
        variant=d.variant,
        profile=d.profile,
        currency=d.currency,
    )


def line_id(main: str, acc: OpenPeriod, line_type: str, suffix: str | None = None) -> str:
    """``suffix``: the event id of an adjustment line (None for a regular line)."""
    return derived_id(
        SETTLEMENT_NAMESPACE,
        main,
        acc.granularity,
        acc.period_start,
        acc.item,
        acc.model,
        acc.variant,
        line_type,
        suffix,
    )


def _line(
    main: str, acc: OpenPeriod, line_type: str, lateness_ms: int, suffix: str | None = None
) -> dict[str, Any]:
    """A closed period's settlement line, in its wire form."""
    sid = acc.settlement_id if line_type == "regular" else None  # kept by settle()
    return {
        "settlement_id": sid if sid is not None else line_id(main, acc, line_type, suffix),
        "main_account_id": main,
        "period_start": acc.period_start,
        "period_end": acc.period_end,
        "granularity": acc.granularity,
        "line_type": line_type,
        "profile": acc.profile,
        "currency": acc.currency,
        "item": acc.item,
        "model": acc.model,
        "variant": acc.variant,
        "quantities": {k: money(v) for k, v in sorted(acc.quantities.items())},
        "gross_amount": money(acc.gross),
        "free_amount": money(acc.free),
        "trial_amount": money(acc.trial),
        "pack_amount": money(acc.pack),
        "voucher_amount": money(acc.voucher),
        "cash_amount": money(acc.cash),
        "unbilled_amount": money(acc.unbilled),
        "event_count": acc.event_count,
        "price_versions": sorted(acc.price_versions),
        "closed_at": acc.period_end + lateness_ms,
    }


def settle(
    periods: dict[str, OpenPeriod],
    settled_until: int,
    main: str,
    d: Deduction,
    tz: str,
    lateness_ms: int,
) -> tuple[str, list[dict]]:
    """Add a deduction to its open period, or make it an adjustment line of its own if the period
    has closed. Returns the id of the line the deduction is summed into, and the lines to emit."""
    granularity = d.settlement_period
    start, end = period_of(granularity, d.event_time, tz)
    if end + lateness_ms <= settled_until:
        late = _new_period(granularity, start, end, d)
        late.add(d)
        line = _line(main, late, "adjustment", lateness_ms, suffix=d.event_id)
        return line["settlement_id"], [line]
    key = _key(granularity, start, d)
    acc = periods.get(key)
    if acc is None:
        acc = periods[key] = _new_period(granularity, start, end, d)
    acc.add(d)
    sid = acc.settlement_id
    if sid is None:  # computed once per period (states of version 1 lack it)
        sid = line_id(main, acc, "regular")
        acc.name(sid)
    return sid, []


def close_due(
    periods: dict[str, OpenPeriod], clock: int, main: str, lateness_ms: int
) -> list[dict]:
    """Close every period whose end plus lateness the clock has reached, oldest first."""
    due = sorted(
        (acc.period_end, key)
        for key, acc in periods.items()
        if acc.period_end + lateness_ms <= clock
    )
    return [_line(main, periods.pop(key), "regular", lateness_ms) for _, key in due]
