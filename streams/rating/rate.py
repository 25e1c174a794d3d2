"""Rate one usage event against the price book version in force at its event time.

Pure and exact: ``Decimal`` from the YAML to the result, no rounding (bills round when presented).
Token lines come out in the order a trial quota covers them (billing-rules §3): cache-hit input,
other input, cache-write input, output, reasoning output.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal

from streams.deduction.record import quantize_amount
from streams.ingest.events import TOKEN_ITEMS, Rejected, UsageEvent
from streams.rating.profiles import PriceRow, Profile, TokenPrices

ZERO = Decimal(0)
ONE = Decimal(1)
HOUR_MS = 3_600_000
GENERATION_ITEMS = frozenset({"image", "video", "3d", "media_call"})  # failed ones are free
WHOLE_UNITS = frozenset({"call", "image"})


@dataclass(frozen=True, slots=True)
class RatingLine:
    component: str  # cache_hit, input, cache_write, output, reasoning, unit
    # tokens, or units of the row (calls, characters, minutes, GB-hours, images, seconds)
    units: Decimal
    unit_price: Decimal  # currency per unit
    amount: Decimal
    credits_per_unit: Decimal | None = None  # credit-priced rows: what one unit costs in credits


@dataclass(frozen=True, slots=True)
class Rating:
    price_version: str
    lines: tuple[RatingLine, ...]
    amount: Decimal
    quantities: dict[str, str]
    billed_elsewhere: bool = False
    unit: str = "tokens"
    # kb_storage: free GB taken from the main account's allowance in each clock hour of the sample
    # (``kb_hours``), for the ledger to record
    kb_free_gb: tuple[Decimal, ...] = ()

    @property
    def token_units(self) -> int:
        return int(sum((ln.units for ln in self.lines), ZERO)) if self.unit == "tokens" else 0


def find_row(profile: Profile, event: UsageEvent, version) -> PriceRow:
    if event.fine_tuned:
        rows = version.fine_tuned_rows.get((event.item, event.model))
        if rows is None and event.model in profile.models:
            raise Rejected(
                "no_fine_tuned_price",
                f"profile {profile.name!r} has no price for a fine-tuned {event.model} "
                "(fine_tuned: true names the base model; add a fine_tuned row to the price book)",
            )
    else:
        rows = version.rows.get((event.item, event.model))
    if rows is None:
        if event.model is not None and event.model not in profile.models:
            raise Rejected(
                "unknown_model", f"model {event.model!r} has no price in profile {profile.name!r}"
            )
        what = f"item {event.item!r}" + (f" for model {event.model!r}" if event.model else "")
        raise Rejected("unknown_item", f"{what} has no price in profile {profile.name!r}")
    row = rows.get(event.variant)
    if row is None:
        if None in rows and len(rows) == 1:
            return rows[None]  # the price does not depend on a variant (e.g. image resolution)
        known = ", ".join(sorted(str(v) for v in rows))
        label = f"{event.model} {event.item}" if event.model else event.item
        raise Rejected(
            "unknown_variant",
            f"{label} has no price for variant {event.variant!r} (known: {known})",
        )
    return row


def _tier(row: PriceRow, event: UsageEvent) -> TokenPrices:
    tiers = row.token_tiers()
    for tier in tiers:
        if tier.up_to is None or event.input_tokens <= tier.up_to:
            return tier
    bounds, lower = [], 0
    for t in tiers:
        assert t.up_to is not None  # only the top tier may be unbounded, and it was not reached
        bounds.append(f"({lower}, {t.up_to}]")
        lower = t.up_to
    raise Rejected(
        "above_top_tier",
        f"{event.model}: {event.input_tokens} input tokens is above the top tier; its tiers are "
        f"{', '.join(bounds)} input tokens",
    )


def _rate_tokens(
    profile: Profile, row: PriceRow, event: UsageEvent
) -> tuple[tuple[RatingLine, ...], dict[str, str]]:
    tier = _tier(row, event)
    assert row.per_tokens is not None  # token rows need it (checked by PriceRow._shape)
    per = Decimal(row.per_tokens)

    def unit_price(value: Decimal) -> Decimal:
        return profile.to_currency(value) / per

    input_price = unit_price(tier.input)
    output_price = unit_price(tier.output)
    components = (
        (
            "cache_hit",
            event.cache_hit_tokens,
            input_price if tier.cache_hit is None else unit_price(tier.cache_hit),
        ),
        (
            "input",
            event.input_tokens - event.cache_hit_tokens - event.cache_write_tokens,
            input_price,
        ),
        (
            "cache_write",
            event.cache_write_tokens,
            input_price if tier.cache_write is None else unit_price(tier.cache_write),
        ),
        ("output", event.output_tokens - event.reasoning_tokens, output_price),
        (
            "reasoning",
            event.reasoning_tokens,
            output_price if tier.reasoning is None else unit_price(tier.reasoning),
        ),
    )
    lines = tuple(
        RatingLine(name, Decimal(n), price, quantize_amount(n * price))
        for name, n, price in components
        if n
    )
    quantities = {name: str(n) for name, n, _ in components if n}
    return lines, quantities


def kb_hours(event: UsageEvent) -> list[tuple[int, Decimal]]:
    """The clock hours a kb_storage sample covers, as (hour index since the epoch, hours of it):
    from the hour of its event time, one per started hour of ``hours`` (1.5 h: 1 and 0.5)."""
    hours = event.hours
    assert hours is not None  # kb_storage samples carry hours (checked at ingest)
    first = event.event_time // HOUR_MS
    count = int(hours.to_integral_value(ROUND_CEILING))
    return [(first + k, min(ONE, hours - k)) for k in range(count)]


def _rate_kb(
    row: PriceRow, event: UsageEvent, used_gb: Sequence[Decimal | None] | None
) -> tuple[Decimal, dict[str, str], tuple[Decimal, ...]]:
    """GB-hours billed for a sample: in each clock hour it covers, the GB above what is left of
    the main account's free GB that hour. ``used_gb``: the allowance other samples already took in
    each of those hours (None for an hour whose allowance is no longer known: none left; no list:
    a sample alone)."""
    free = row.free_gb or ZERO
    quantity = event.quantity
    assert quantity is not None  # a unit item carries its quantity (checked at ingest)
    slots = kb_hours(event)
    if used_gb is None:
        used_gb = [ZERO] * len(slots)
    assert len(used_gb) == len(slots), "one allowance figure per hour of the sample"
    takes = tuple(
        ZERO if used is None else min(quantity, max(ZERO, free - used)) for used in used_gb
    )
    billed = sum(
        ((quantity - take) * hours for take, (_, hours) in zip(takes, slots, strict=True)),
        ZERO,
    )
    first_free = takes[0] if takes else ZERO
    quantities = {
        "stored_gb": str(event.quantity),
        "hours": str(event.hours),
        "free_gb": str(first_free),
    }
    return quantize_amount(billed), quantities, takes


def _credits_per_call(profile: Profile, row: PriceRow, event: UsageEvent) -> Decimal | None:
    """The credits one unit costs: the row's, or for a credit-range row the event's, checked."""
    label = f"{event.model} {event.item}" if event.model else event.item
    if row.credits is None and not row.credits_from_event:
        if event.credits is not None:
            raise Rejected(
                "credits_not_applicable",
                f"{label} is priced in {profile.currency}, not credits; drop credits",
            )
        return None
    if not row.credits_from_event:
        if event.credits is not None and event.credits != row.credits:
            raise Rejected(
                "credits_out_of_range",
                f"{label} costs {row.credits} credits per {row.unit}, the event says "
                f"{event.credits}",
            )
        return row.credits
    if event.credits is None:
        if event.status == "failed":
            return row.credits_min  # free anyway: a failed generation consumes no credits
        raise Rejected(
            "credits_missing",
            f"{label} is priced by the credits each call consumed "
            f"({row.credits_min} to {row.credits_max} per {row.unit}): the event must carry "
            "credits",
        )
    assert row.credits_min is not None and row.credits_max is not None  # a credit-range row
    if event.status != "failed" and not row.credits_min <= event.credits <= row.credits_max:
        raise Rejected(
            "credits_out_of_range",
            f"{label}: {event.credits} credits per {row.unit} is outside "
            f"{row.credits_min} to {row.credits_max} (profile {profile.name!r})",
        )
    return event.credits


def _rate_units(
    profile: Profile,
    row: PriceRow,
    event: UsageEvent,
    kb_used_gb: Sequence[Decimal | None] | None = None,
) -> tuple[tuple[RatingLine, ...], dict[str, str], tuple[Decimal, ...]]:
    quantity = event.quantity
    assert quantity is not None  # a unit item carries its quantity (checked at ingest)
    if row.unit in WHOLE_UNITS and quantity != quantity.to_integral_value():
        raise Rejected(
            "invalid_quantity",
            f"{event.item} is counted in whole {row.unit}s, got quantity {quantity}",
        )
    credits = _credits_per_call(profile, row, event)
    if event.status == "failed" and event.item in GENERATION_ITEMS:
        quantity = ZERO
    quantities = {"quantity": str(event.quantity)}
    takes: tuple[Decimal, ...] = ()
    if event.item == "kb_storage":
        quantity, quantities, takes = _rate_kb(row, event, kb_used_gb)
    elif event.item == "image" and event.requested_images is not None:
        generated = quantity  # failed: none generated
        quantities = {
            "quantity": str(event.quantity),
            "requested_images": str(event.requested_images),
            "generated_images": str(generated),
        }
    if credits is not None:
        if row.credits_from_event:
            quantities["credits_per_call"] = str(credits)
        assert row.credit_kind is not None  # a credit-priced row names its kind (checked)
        price = credits * profile.book.credit_values[row.credit_kind]
        line = RatingLine(
            "unit", quantity, price, quantize_amount(quantity * price), credits_per_unit=credits
        )
    else:
        assert row.price is not None  # a unit row has a price or credits (checked)
        price = profile.to_currency(row.price)
        line = RatingLine("unit", quantity, price, quantize_amount(quantity * price))
    return ((line,) if quantity else ()), quantities, takes


def check_bounds(profile: Profile, event: UsageEvent) -> None:
    """The profile's per-request bounds (``policy.yaml`` ``limits``): ``quantity_out_of_range``."""
    limits = profile.policy.limits
    if event.item in TOKEN_ITEMS:
        total = event.input_tokens + event.output_tokens
        if total > limits.max_tokens_per_request:
            raise Rejected(
                "quantity_out_of_range",
                f"{total} tokens in one request (input {event.input_tokens} + output "
                f"{event.output_tokens}) is above "
                f"profile {profile.name!r}'s bound of {limits.max_tokens_per_request} tokens per "
                "request",
            )
        return
    bound = limits.max_quantity_by_item.get(event.item, limits.max_quantity)
    if event.quantity is not None and event.quantity > bound:
        raise Rejected(
            "quantity_out_of_range",
            f"{event.item} quantity {event.quantity} is above profile {profile.name!r}'s bound of "
            f"{bound} per event",
        )
    if event.hours is not None and event.hours > limits.max_hours:
        raise Rejected(
            "quantity_out_of_range",
            f"{event.item} hours {event.hours} is above profile {profile.name!r}'s bound of "
            f"{limits.max_hours} hours per sample",
        )


def rate(
    profile: Profile, event: UsageEvent, kb_used_gb: Sequence[Decimal | None] | None = None
) -> Rating:
    """Raises ``Rejected`` with a specific code for anything that cannot be priced. ``kb_used_gb``:
    for kb_storage, the free GB of the main account already taken in each hour of the sample
    (``kb_hours``); without it the sample is rated alone, with the whole allowance."""
    check_bounds(profile, event)
    if profile.billed_elsewhere(event.model):
        return Rating(f"{profile.name}@elsewhere", (), ZERO, {}, billed_elsewhere=True, unit="none")
    version = profile.version_at(event.event_time)
    if version is None:
        first = profile.versions[0]
        raise Rejected(
            "no_price_in_force",
            f"profile {profile.name!r} has no price version in force at the event time (first "
            f"version {first.version} starts later)",
        )
    row = find_row(profile, event, version)
    takes: tuple[Decimal, ...] = ()
    if event.item in TOKEN_ITEMS:
        lines, quantities = _rate_tokens(profile, row, event)
        unit = "tokens"
    else:
        lines, quantities, takes = _rate_units(profile, row, event, kb_used_gb)
        assert row.unit is not None  # per-unit rows name their unit (checked)
        unit = row.unit
    amount = sum((line.amount for line in lines), ZERO)
    return Rating(
        f"{profile.name}@{version.version}", lines, amount, quantities, unit=unit, kb_free_gb=takes
    )
