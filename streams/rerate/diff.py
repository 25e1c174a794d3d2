"""Re-rating: the recorded events of a period run again under another price version, beside the
live ledger and without touching it, and the difference per event, account and model.

Both runs are the pure core over the same events from the start of the stream, so buckets (free
points, trials, packs, vouchers, cash) are in the state they were at each event: the old run is
what the pipeline billed (same engine, same per-partition order), the new one differs only in the
price version in force inside [from, to) for one profile.

Booking the difference (``adjustments``) is idempotent: the delta of an event is new − old −
what earlier re-ratings already booked for it, so applying the same re-rating twice books nothing
the second time, and every adjustment has a deterministic id.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from streams.deduction.record import money
from streams.engine import BillingEngine
from streams.ids import derived_id
from streams.ingest.messages import Decoded
from streams.rating.profiles import Profiles
from streams.settlement.periods import SETTLEMENT_NAMESPACE, period_of
from streams.simulate import Simulation, SimulationResult

RERATE_NAMESPACE = uuid.UUID("7b0e3f0a-52c1-4a55-9d57-2f0f5b8a4c11")
ZERO = Decimal(0)
BUCKETS = ("free", "trial", "pack", "voucher", "cash")


def rerate_id(profile: str, version: str, from_ms: int, to_ms: int) -> str:
    return derived_id(RERATE_NAMESPACE, profile, version, from_ms, to_ms)


@dataclass(frozen=True)
class Rerating:
    profile: str
    version: str
    from_ms: int
    to_ms: int
    accounts: frozenset[str] = frozenset()  # empty: every account of the profile

    @property
    def id(self) -> str:
        return rerate_id(self.profile, self.version, self.from_ms, self.to_ms)

    def selects(self, d: dict[str, Any]) -> bool:
        return d["profile"] == self.profile and (
            not self.accounts or d["main_account_id"] in self.accounts
        )

    def covers(self, d: dict[str, Any]) -> bool:
        return self.selects(d) and self.from_ms <= d["event_time"] < self.to_ms


@dataclass
class EventDiff:
    old: dict[str, Any]  # the deduction as billed
    new: dict[str, Any] | None  # as re-rated; None when the new price version cannot rate it
    new_rejection: str | None = None
    # adjustments already booked for it, by any re-rating
    booked: list[dict[str, Any]] = field(default_factory=list)
    rerate_id: str = ""
    in_window: bool = (
        True  # False: outside the period, same price, but the buckets it found changed (knock-on)
    )

    @staticmethod
    def amounts(d: dict[str, Any] | None) -> dict[str, Decimal]:
        out = {"rated": ZERO, "unbilled": ZERO, **{b: ZERO for b in BUCKETS}}
        if d is None:
            return out
        out["rated"] = Decimal(d["rated_amount"])
        out["unbilled"] = Decimal(d["unbilled_amount"])
        for s in d["splits"]:
            out[s["bucket_kind"]] += Decimal(s["amount"])
        return out

    @property
    def knock_on(self) -> bool:
        return not self.in_window

    @property
    def base(self) -> list[dict[str, Any]]:
        """What the re-rated deduction replaces. Inside the period: the deduction and every
        adjustment since (the new price supersedes earlier re-ratings of the event). Outside it:
        the deduction and this re-rating's own adjustments only, so that a re-rating never undoes
        what another one booked for events it does not re-price."""
        own = (
            self.booked
            if self.in_window
            else [b for b in self.booked if b.get("rerate_id") == self.rerate_id]
        )
        return [self.old, *own]

    def _sum(self, records: list[dict[str, Any]]) -> dict[str, Decimal]:
        total = {"rated": ZERO, "unbilled": ZERO, **{b: ZERO for b in BUCKETS}}
        for r in records:
            for k, v in self.amounts(r).items():
                total[k] += v
        return total

    @property
    def billed(self) -> dict[str, Decimal]:
        """What stands billed now: the deduction plus every adjustment booked since."""
        return self._sum([self.old, *self.booked])

    @property
    def delta(self) -> dict[str, Decimal]:
        if self.new is None:
            return {k: ZERO for k in self.billed}
        new, base = self.amounts(self.new), self._sum(self.base)
        return {k: new[k] - v for k, v in base.items()}

    @property
    def changed(self) -> bool:
        return self.new is not None and (any(self.delta.values()) or bool(split_delta(self)))


@dataclass
class RerateResult:
    rerating: Rerating
    diffs: list[EventDiff]
    old_run: SimulationResult
    new_run: SimulationResult

    def summary(self) -> list[dict[str, Any]]:
        """Per account, item and model: events, quantities, old and new amounts, bucket split,
        delta."""
        groups: dict[tuple, dict[str, Any]] = {}
        for diff in self.diffs:
            d = diff.old
            key = (d["main_account_id"], d["item"], d["model"] or "")
            g = groups.get(key)
            if g is None:
                g = groups[key] = {
                    "main_account_id": key[0],
                    "item": key[1],
                    "model": key[2],
                    "currency": d["currency"],
                    "events": 0,
                    "quantities": {},
                    "old_amount": ZERO,
                    "new_amount": ZERO,
                    "delta": ZERO,
                    "old_split": {},
                    "new_split": {},
                    "not_rated": 0,
                }
            g["events"] += 1
            for comp, value in d["quantities"].items():
                g["quantities"][comp] = g["quantities"].get(comp, ZERO) + Decimal(value)
            billed, delta = diff.billed, diff.delta
            new = {k: v + delta[k] for k, v in billed.items()}
            g["not_rated"] += diff.new is None
            g["old_amount"] += billed["rated"]
            g["new_amount"] += new["rated"]
            g["delta"] += new["rated"] - billed["rated"]
            for k in (*BUCKETS, "unbilled"):
                g["old_split"][k] = g["old_split"].get(k, ZERO) + billed[k]
                g["new_split"][k] = g["new_split"].get(k, ZERO) + new[k]
        return [groups[k] for k in sorted(groups)]

    @property
    def total_delta(self) -> Decimal:
        return sum((d.delta["rated"] for d in self.diffs), ZERO)


def rerun(
    events: Iterable[tuple[Any, Decoded]],
    profiles: Profiles,
    rerating: Rerating,
    *,
    partitions: int,
    allowed_lateness_ms: int,
    booked: Iterable[dict[str, Any]] = (),
) -> RerateResult:
    """``events``: every input event from the start of the stream, in partition order, as (event,
    decoded) pairs. ``booked``: adjustment deductions already booked (from the deductions topic)."""
    profile = profiles[rerating.profile].pinned(rerating.version, rerating.from_ms, rerating.to_ms)
    old = Simulation(BillingEngine(profiles, allowed_lateness_ms=allowed_lateness_ms), partitions)
    new = Simulation(
        BillingEngine(profiles.replacing(profile), allowed_lateness_ms=allowed_lateness_ms),
        partitions,
    )
    new_rejections: dict[str, str] = {}
    for number, (event, decoded) in enumerate(events, 1):
        old.apply(event, decoded, "events", number)
        outcome = new.apply(event, decoded, "events", number)
        if outcome.rejected is not None:
            new_rejections[event.event_id] = f"{outcome.rejected.code}: {outcome.rejected.message}"
    old_run, new_run = old.finish(), new.finish()
    # by (main account, event id), not deduction id: deductions booked under an older id scheme
    # (README "Derived ids") still find their re-rated twin
    new_by_event = {(d["main_account_id"], d["event_id"]): d for d in new_run.deductions}
    booked_by_id: dict[str, list[dict[str, Any]]] = {}
    for adj in booked:
        booked_by_id.setdefault(adj["adjusts_deduction_id"], []).append(adj)
    diffs = []
    for d in old_run.deductions:
        if not rerating.selects(d):
            continue
        diff = EventDiff(
            d,
            new_by_event.get((d["main_account_id"], d["event_id"])),
            new_rejections.get(d["event_id"]),
            booked_by_id.get(d["deduction_id"], []),
            rerating.id,
            in_window=rerating.covers(d),
        )
        # outside the period (a later event, or a late one processed after the period's events) an
        # event is part of the re-rating only if what paid for it changed
        if diff.in_window or diff.changed:
            diffs.append(diff)
    return RerateResult(rerating, diffs, old_run, new_run)


def split_delta(diff: EventDiff) -> list[dict[str, Any]]:
    """Bucket by bucket (kind, id, unit): new − what it replaces (``EventDiff.base``), non-zero
    only."""
    acc: dict[tuple[str, str, str], list[Decimal]] = {}

    def add(d: dict[str, Any] | None, sign: int) -> None:
        for s in (d or {}).get("splits", []):
            a = acc.setdefault((s["bucket_kind"], s["bucket_id"], s["unit"]), [ZERO, ZERO])
            a[0] += sign * Decimal(s["amount"])
            a[1] += sign * Decimal(s["units"])

    if diff.new is None:
        return []
    add(diff.new, 1)
    for record in diff.base:
        add(record, -1)
    return [
        {"bucket_kind": k, "bucket_id": i, "amount": money(a), "units": money(u), "unit": unit}
        for (k, i, unit), (a, u) in sorted(acc.items())
        if a or u
    ]


def adjustments(result: RerateResult) -> list[dict[str, Any]]:
    """One adjustment deduction per event whose billed amounts differ from the re-rating."""
    out = []
    rid = result.rerating.id
    for diff in result.diffs:
        if not diff.changed:
            continue
        delta, new = diff.delta, diff.new
        assert new is not None  # a changed diff has a re-rated record
        # the id names what this adjustment comes after: the same re-rating applied again finds
        # nothing to book, and one applied after another (to undo it, say) gets ids of its own
        after = hashlib.sha256(
            "|".join(sorted(b["deduction_id"] for b in diff.booked)).encode()
        ).hexdigest()[:16]
        out.append(
            {
                **{
                    k: new[k]
                    for k in (
                        "event_id",
                        "trace_id",
                        "account_id",
                        "main_account_id",
                        "event_time",
                        "profile",
                        "currency",
                        "item",
                        "model",
                        "variant",
                        "billed_elsewhere",
                        "settlement_period",
                        "balance_after",
                    )
                },
                "deduction_id": derived_id(RERATE_NAMESPACE, diff.old["deduction_id"], rid, after),
                "price_version": new["price_version"],
                "quantities": {},
                "lines": [],
                "rated_amount": money(delta["rated"]),
                "splits": split_delta(diff),
                "unbilled_amount": money(delta["unbilled"]),
                "unbilled_reason": None,
                "flags": ["rerate"],
                "kind": "rerate_adjustment",
                "adjusts_deduction_id": diff.old["deduction_id"],
                "rerate_id": rid,
            }
        )
    return out


def settlement_lines(
    adjusted: list[dict[str, Any]], timezones: dict[str, str], closed_at: int
) -> list[dict[str, Any]]:
    """Adjustment deductions -> settlement lines of type ``rerate``, one per account, period and
    item/model/variant. A line's id covers exactly its adjustments, so lines booked by an
    interrupted run and by the run that completes it never replace one another. Each adjustment is
    given the id of its line (``settlement_id``): the line lists no ids, it is found from them."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for a in adjusted:
        start, end = period_of(a["settlement_period"], a["event_time"], timezones[a["profile"]])
        groups.setdefault(
            (
                a["main_account_id"],
                a["settlement_period"],
                start,
                end,
                a["item"],
                a["model"] or "",
                a["variant"] or "",
            ),
            [],
        ).append(a)
    lines = []
    for (main, granularity, start, end, item, model, variant), adjs in sorted(groups.items()):
        ids = sorted(a["deduction_id"] for a in adjs)
        sums = {"gross": ZERO, "unbilled": ZERO, **{b: ZERO for b in BUCKETS}}
        for a in adjs:
            sums["gross"] += Decimal(a["rated_amount"])
            sums["unbilled"] += Decimal(a["unbilled_amount"])
            for s in a["splits"]:
                sums[s["bucket_kind"]] += Decimal(s["amount"])
        line_id = derived_id(
            SETTLEMENT_NAMESPACE, main, granularity, start, item, model, variant, "rerate", *ids
        )
        for a in adjs:
            a["settlement_id"] = line_id
        lines.append(
            {
                "settlement_id": line_id,
                "main_account_id": main,
                "period_start": start,
                "period_end": end,
                "granularity": granularity,
                "line_type": "rerate",
                "profile": adjs[0]["profile"],
                "currency": adjs[0]["currency"],
                "item": item,
                "model": adjs[0]["model"],
                "variant": adjs[0]["variant"],
                "quantities": {},
                "gross_amount": money(sums["gross"]),
                "free_amount": money(sums["free"]),
                "trial_amount": money(sums["trial"]),
                "pack_amount": money(sums["pack"]),
                "voucher_amount": money(sums["voucher"]),
                "cash_amount": money(sums["cash"]),
                "unbilled_amount": money(sums["unbilled"]),
                "event_count": 0,
                "price_versions": sorted({a["price_version"] for a in adjs}),
                "closed_at": closed_at,
            }
        )
    return lines
