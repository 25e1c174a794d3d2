"""Property-based tests (hypothesis) of the pure billing core.

Random but valid event sequences over a few accounts of the four shipped profiles (coze-pro,
tokenhub, ark, jiekou) are replayed through ``BillingEngine`` exactly as ``simulate`` does (parse
the JSON-shaped dict, ``advance`` the account to its partition's clock, ``apply`` the event, keep
``outcome.state``; at the end advance every account to the final clock). The properties checked
are the invariants of billing-rules.md §1-§3:

1. conservation of every rated amount (lines, splits, unbilled, bucket deltas, settlement lines);
2. no bucket below zero, daily free points never above the grant, cash negative only post-paid;
3. the order of deduction of §3 (kinds, packs and vouchers by expiry/purchase/id, a later bucket
   only once the earlier applicable ones are exhausted, trial coverage order);
4. idempotence under redelivery;
5. determinism and a lossless state serialization;
6. rejected events change nothing;
7. rating: deterministic, non-negative, additive, tier boundaries.

Oracles are written from the rules, not copied from the code: the day of the daily free points is
computed with ``zoneinfo``, the unified Coze pack's scope and the tier prices are spelled out here.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_FLOOR, Decimal
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.engine import BillingEngine, Outcome
from streams.ingest.events import TOKEN_ITEMS, Rejected, parse_json_event, parse_usage
from streams.ingest.partitioner import partition_for
from streams.ledger.state import AccountState
from streams.rating.profiles import Profiles
from streams.rating.rate import rate

PROFILES = Profiles()
PROFILE_NAMES = ("coze-pro", "tokenhub", "ark", "jiekou")

# Example counts, deadline and shrinking come from the Hypothesis profile (tests/unit/conftest.py:
# ``quick`` by default, HYPOTHESIS_PROFILE=thorough for a long run); only what every test here
# needs regardless of the profile is set.
SETTINGS = settings(
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
)

MINUTE = 60_000
HOUR = 60 * MINUTE
DAY = 24 * HOUR
SHANGHAI = ZoneInfo("Asia/Shanghai")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def ms_of(iso: str) -> int:
    return (datetime.fromisoformat(iso) - EPOCH) // timedelta(milliseconds=1)


# tokenhub's price book starts 2026-04-03; every generated event is later than this
BASE_MS = ms_of("2026-04-10T00:00:00+08:00")
LAST_MS = ms_of("2026-12-20T00:00:00+08:00")

# ---------------------------------------------------------------- oracles written from the rules

KIND_RANK = {"free": 0, "trial": 1, "pack": 2, "voucher": 3, "cash": 4}
COVER_ORDER = ("cache_hit", "input", "cache_write", "output", "reasoning")  # §3 trial decision
COZE_DAILY_GRANT = Decimal("0.5")  # 500 points a day, 1 CNY = 1000 points
# fine-tuned calls are a flag on the event now (none generated here)
COZE_FINE_TUNED: set[str] = set()
# §3: the unified Coze pack covers agent calls, knowledge base overage, models (except fine-tuned
# and Ark models), voice and RTC; the daily free points have the same scope.
COZE_PLATFORM_ITEMS = {
    "tokens",
    "agent_call",
    "kb_storage",
    "tts",
    "asr_streaming",
    "asr_file",
    "rtc_audio",
    "rtc_video",
}
POINTS_PER_UNIT = {
    "coze-pro": Decimal(1000),
    "tokenhub": Decimal(1),
    "ark": Decimal(1),
    "jiekou": Decimal(1),
}


def coze_platform_scope(item: str, model: str | None) -> bool:
    return (
        item in COZE_PLATFORM_ITEMS
        and model not in COZE_FINE_TUNED
        and not (model or "").startswith("ark/")
    )


def shanghai_day(ms: int) -> str:
    return (EPOCH + timedelta(milliseconds=ms)).astimezone(SHANGHAI).date().isoformat()


def D(x: Any) -> Decimal:
    return Decimal(str(x))


# ---------------------------------------------------------------- catalog of what can be billed


@dataclass(frozen=True)
class Offer:
    item: str
    model: str | None
    variant: str | None
    unit: str | None  # None for token items
    max_input: int = 0
    credits: Decimal | None = None
    credits_range: tuple[Decimal, Decimal] | None = None  # the event carries the credits of a call


def _catalog(name: str) -> tuple[Offer, ...]:
    profile = PROFILES[name]
    out = []
    rows = profile.versions[-1].rows
    for item, model in sorted(rows, key=lambda k: (k[0], k[1] or "")):
        for variant in sorted(rows[(item, model)], key=lambda v: v or ""):
            row = rows[(item, model)][variant]
            if item in TOKEN_ITEMS:
                top = row.token_tiers()[-1].up_to
                out.append(
                    Offer(item, model, variant, None, max_input=top if top is not None else 200_000)
                )
            else:
                ranged: tuple[Decimal, Decimal] | None = None
                if row.credits_from_event:  # a credit-range row has both bounds (checked on load)
                    assert row.credits_min is not None and row.credits_max is not None
                    ranged = (row.credits_min, row.credits_max)
                out.append(
                    Offer(item, model, variant, row.unit, credits=row.credits, credits_range=ranged)
                )
    if name == "coze-pro":  # Ark models are billed by Ark, not Coze (§2)
        out.append(Offer("tokens", "ark/doubao-seed-1.6", None, None, max_input=32_000))
    return tuple(out)


CATALOG = {name: _catalog(name) for name in PROFILE_NAMES}
TRIAL_MODELS = {name: sorted(PROFILES[name].trial_by_model) for name in PROFILE_NAMES}
ARK_MODELS = sorted({o.model for o in CATALOG["ark"] if o.model})


def price_row(profile: str, item: str, model: str | None, variant: str | None, at_ms: int):
    version = PROFILES[profile].version_at(at_ms)
    assert version is not None, (profile, at_ms)  # every generated event is within a price book
    rows = version.rows[(item, model)]
    return rows[variant] if variant in rows else rows[None]


# ---------------------------------------------------------------- strategies


def fmt_time(draw, ms: int) -> Any:
    """Epoch ms, or ISO-8601 with +08:00, +00:00 or Z: all must parse to the same instant."""
    style = draw(st.sampled_from(["ms", "cst", "utc", "z"]))
    if style == "ms":
        return ms
    dt = EPOCH + timedelta(milliseconds=ms)
    if style == "cst":
        return dt.astimezone(SHANGHAI).isoformat(timespec="milliseconds")
    text = dt.isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z") if style == "z" else text


def money_str(draw, lo: int = 0, hi: int = 50_000, places: tuple[int, ...] = (0, 1, 2, 3)) -> str:
    n = draw(st.integers(lo, hi))
    p = draw(st.sampled_from(places))
    return str(Decimal(n).scaleb(-p))


def positive_money(draw) -> str:
    # mostly small next to the usage, so that buckets run out and the next one takes over
    if draw(st.integers(0, 3)):
        return money_str(draw, 1, 2_000, (3,))
    return money_str(draw, 1, 20_000)


@dataclass
class Acc:
    id: str
    profile: str
    subs: list[str] = field(default_factory=list)
    voucher_ids: list[str] = field(default_factory=list)
    offers: tuple[Offer, ...] = ()  # what this account uses (a few items, so quotas run out)


@dataclass
class Scenario:
    raws: list[dict[str, Any]]
    expect_rejected: set[str]

    def __repr__(self) -> str:  # readable falsifying examples
        return (
            "Scenario(\n"
            + "\n".join(f"  {r!r}," for r in self.raws)
            + f"\n  expect_rejected={sorted(self.expect_rejected)})"
        )


def usage_fields(draw, offer: Offer) -> dict[str, Any]:
    d: dict[str, Any] = {"item": offer.item}
    if offer.model is not None:
        d["model"] = offer.model
    if offer.variant is not None:
        d["variant"] = offer.variant
    if offer.unit is None:  # token item
        inp = draw(st.one_of(st.integers(0, 3_000), st.integers(0, offer.max_input)))
        ch = draw(st.one_of(st.just(0), st.integers(0, inp)))
        cw = draw(st.one_of(st.just(0), st.integers(0, inp - ch)))
        out = rs = 0
        if offer.item == "tokens":
            # now and then a very long answer, so that 500k/1M-token trial quotas run out
            # mid-request
            out = draw(
                st.one_of(
                    st.integers(0, 2_000), st.integers(0, 150_000), st.integers(100_000, 400_000)
                )
            )
            rs = draw(st.one_of(st.just(0), st.integers(0, out)))
        for name, value in (
            ("input_tokens", inp),
            ("cache_hit_tokens", ch),
            ("cache_write_tokens", cw),
            ("output_tokens", out),
            ("reasoning_tokens", rs),
        ):
            if value or draw(st.booleans()):
                d[name] = value
    else:
        if offer.unit in ("call", "image"):
            d["quantity"] = str(draw(st.integers(0, 12)))
        elif offer.item == "kb_storage":
            d["quantity"] = money_str(draw, 0, 4_000, (0, 1, 2))
            d["hours"] = money_str(draw, 1, 48, (0, 1))
        elif offer.unit == "second":
            d["quantity"] = money_str(draw, 0, 400, (0, 1))
        else:
            d["quantity"] = money_str(draw, 0, 3_000, (0, 1, 2))
        if offer.credits_range is not None:
            lo, hi = offer.credits_range
            d["credits"] = str(draw(st.integers(int(lo), int(hi))))
        if offer.item in ("image", "video", "3d", "media_call") and draw(st.integers(0, 5)) == 0:
            d["status"] = "failed"
    if draw(st.integers(0, 7)) == 0:
        d["mode"] = "batch"
    return d


COMMON_KINDS = ["usage"] * 9 + [
    "sub_usage",
    "top_up",
    "voucher_granted",
    "post_paid_switched",
    "balance_threshold_set",
    "sub_account_linked",
]
PROFILE_KINDS = {
    "coze-pro": ["pack_purchased"] * 3,
    "tokenhub": ["trial_claimed"],
    "ark": ["model_activated", "trial_claimed", "inference_limit_set"],
    "jiekou": ["voucher_granted"],
}
BAD_KINDS = [
    "bad_top_up",
    "bad_voucher",
    "bad_pack",
    "bad_usage",
    "bad_variant",
    "bad_stranger",
    "bad_reopen",
    "bad_self_sub",
    "bad_ghost",
    "bad_whole_units",
]


def _plus(start: int) -> Callable[[int], int]:
    """x -> start + x (a strategy's map, bound to the clock of the moment)."""
    return lambda x: start + x


def _midnight_plus(start: int) -> Callable[[int], int]:
    """k -> the UTC midnight k days after the day of ``start``."""
    return lambda k: (start // DAY + k) * DAY


@st.composite
def scenarios(draw, max_accounts: int = 3, max_events: int = 30, invalid: bool = False) -> Scenario:
    counter = itertools.count()
    raws: list[dict[str, Any]] = []
    expect_rejected: set[str] = set()
    clock = BASE_MS + draw(st.integers(0, 100)) * DAY + draw(st.integers(0, DAY - 1))

    def base(
        acc: Acc, kind: str, account_id: str | None = None, main: str | None = None
    ) -> dict[str, Any]:
        n = next(counter)
        d = {
            "kind": kind,
            "event_id": f"ev-{n:04d}",
            "account_id": account_id or acc.id,
            "main_account_id": main or acc.id,
            "event_time": fmt_time(draw, clock),
        }
        if kind == "usage":
            d["trace_id"] = f"tr-{n:04d}"
        return d

    accounts: list[Acc] = []
    for i in range(draw(st.integers(1, max_accounts))):
        profile = draw(st.sampled_from(PROFILE_NAMES))
        acc = Acc(f"acc{i}-{profile}", profile)
        if draw(st.booleans()):
            acc.offers = tuple(
                draw(
                    st.lists(st.sampled_from(CATALOG[profile]), min_size=1, max_size=3, unique=True)
                )
            )
        else:
            acc.offers = CATALOG[profile]
        accounts.append(acc)
        d = base(acc, "account")
        d.update(type="account_opened", profile=profile)
        if draw(st.booleans()):
            d["currency"] = PROFILES[profile].currency
        post_paid = draw(st.sampled_from([None, True, False]))
        if post_paid is not None:
            d["post_paid"] = post_paid
        if draw(st.integers(0, 3)):
            d["amount"] = money_str(draw, 0, 8_000, (0, 1, 2, 3))
        if draw(st.integers(0, 3)) == 0:
            d["balance_threshold"] = money_str(draw, 0, 5_000)
        if profile == "ark" and draw(st.booleans()):
            d["safe_trial_mode"] = True
        raws.append(d)
        clock += draw(st.integers(0, 10 * MINUTE))

    n_body = draw(st.integers(1, max_events))
    # some scenarios are heavy on packs and vouchers, so that several of them meet in one deduction
    bias = draw(st.sampled_from([0, 0, 2, 6]))
    extra = {
        "coze-pro": ["pack_purchased", "voucher_granted"],
        "tokenhub": ["voucher_granted", "post_paid_switched"],
        "ark": ["voucher_granted", "model_activated"],
        "jiekou": ["voucher_granted"],
    }
    bad_positions = set()
    if invalid:
        bad_positions = set(draw(st.lists(st.integers(0, n_body - 1), min_size=1, max_size=3)))
    for pos in range(n_body):
        step = draw(st.sampled_from(["min"] * 6 + ["hours"] * 3 + ["back", "days", "late"]))
        late_by = 0
        if step == "late":  # one late usage event (the clock stays): late data is normal in streams
            late_by = draw(st.integers(2 * DAY, 5 * DAY))
        elif step == "min":
            clock += draw(st.integers(0, 20 * MINUTE))
        elif step == "hours":
            clock += draw(st.integers(0, 8 * HOUR))
        elif step == "back":
            clock = max(BASE_MS, clock - draw(st.integers(1, 2 * HOUR)))
        else:  # days, now and then months (90-day trials expire, grace periods end)
            jump = draw(
                st.one_of(
                    st.integers(1 * DAY, 20 * DAY),
                    st.integers(1 * DAY, 20 * DAY),
                    st.integers(60 * DAY, 120 * DAY),
                )
            )
            clock = max(clock, min(clock + jump, LAST_MS))
        acc = draw(st.sampled_from(accounts))
        if pos in bad_positions:
            kind = draw(st.sampled_from(BAD_KINDS))
        else:
            kind = draw(
                st.sampled_from(
                    COMMON_KINDS + PROFILE_KINDS[acc.profile] + extra[acc.profile] * bias
                )
            )
        p = acc.profile

        if kind in ("usage", "sub_usage"):
            account_id = (
                draw(st.sampled_from(acc.subs)) if kind == "sub_usage" and acc.subs else acc.id
            )
            d = base(acc, "usage", account_id=account_id)
            d.update(usage_fields(draw, draw(st.sampled_from(acc.offers))))
            if late_by:
                d["event_time"] = fmt_time(draw, max(BASE_MS, clock - late_by))
        elif kind == "top_up":
            d = base(acc, "account")
            d.update(type="top_up", amount=positive_money(draw))
        elif kind == "voucher_granted":
            d = base(acc, "account")
            d.update(type="voucher_granted", amount=positive_money(draw))
            expires = draw(
                st.one_of(
                    st.integers(MINUTE, 60 * DAY).map(_plus(clock)),
                    st.integers(1, 30).map(_midnight_plus(clock)),
                )
            )
            d["expires_at"] = fmt_time(draw, expires)
            if draw(st.booleans()):
                vid = f"v-{draw(st.integers(0, 999)):03d}-{len(raws)}"
                acc.voucher_ids.append(vid)
                d["voucher_id"] = vid
        elif kind == "pack_purchased":
            d = base(acc, "account")
            points = (
                money_str(draw, 1, 3_000, (0, 1))
                if draw(st.integers(0, 3))
                else money_str(draw, 1, 300_000, (0,))
            )
            d.update(type="pack_purchased", pack_kind="coze_unified", amount=points)
            expires = draw(
                st.one_of(
                    st.integers(MINUTE, 90 * DAY).map(_plus(clock)),
                    st.integers(1, 20).map(_midnight_plus(clock)),
                )
            )
            d["expires_at"] = fmt_time(draw, expires)
            if draw(st.integers(0, 3)):
                d["pack_id"] = f"pack-{draw(st.integers(0, 999)):03d}-{len(raws)}"
        elif kind == "post_paid_switched":
            d = base(acc, "account")
            d.update(type="post_paid_switched", post_paid=draw(st.booleans()))
        elif kind == "balance_threshold_set":
            d = base(acc, "account")
            d.update(type="balance_threshold_set", balance_threshold=money_str(draw, 0, 5_000))
        elif kind == "sub_account_linked":
            sub = f"{acc.id}-sub{len(acc.subs)}"
            acc.subs.append(sub)
            d = base(acc, "account")
            d.update(type="sub_account_linked", sub_account_id=sub)
        elif kind == "model_activated":
            d = base(acc, "account")
            d.update(type="model_activated", model=draw(st.sampled_from(ARK_MODELS)))
        elif kind == "trial_claimed":
            d = base(acc, "account")
            d.update(type="trial_claimed", model=draw(st.sampled_from(TRIAL_MODELS[p])))
        elif kind == "inference_limit_set":
            d = base(acc, "account")
            d.update(
                type="inference_limit_set",
                model=draw(st.sampled_from(ARK_MODELS)),
                limit_tokens=draw(st.integers(1, 2_000_000)),
            )
        # ---- events the engine must reject (they parse fine)
        elif kind == "bad_top_up":
            d = base(acc, "account")
            d.update(type="top_up", amount=draw(st.sampled_from(["0", "-1.5", "-0.001"])))
        elif kind == "bad_voucher":
            d = base(acc, "account")
            d.update(
                type="voucher_granted",
                amount=positive_money(draw),
                expires_at=fmt_time(draw, clock - draw(st.integers(0, DAY))),
            )
        elif kind == "bad_pack":
            d = base(acc, "account")
            pk = (
                draw(st.sampled_from(["legacy_agent", "legacy_doubao"]))
                if p == "coze-pro"
                else "coze_unified"
            )
            d.update(
                type="pack_purchased",
                pack_kind=pk,
                amount="100",
                expires_at=fmt_time(draw, clock + 30 * DAY),
            )
        elif kind == "bad_usage":
            d = base(acc, "usage")
            if p == "tokenhub":  # above the top tier (32k, 128k]
                d.update(
                    item="tokens",
                    model="HY 2.0 Instruct",
                    input_tokens=draw(st.integers(128_001, 400_000)),
                    output_tokens=draw(st.integers(0, 100)),
                )
            elif p == "ark":  # above the top tier (128k, 256k]
                d.update(
                    item="tokens",
                    model="doubao-seed-1.6",
                    input_tokens=draw(st.integers(256_001, 900_000)),
                )
            else:
                d.update(
                    item="tokens", model="gpt-9-ultra", input_tokens=draw(st.integers(0, 1000))
                )
        elif kind == "bad_variant":
            d = base(acc, "usage")
            wrong_variant: dict[str, dict[str, Any]] = {
                "coze-pro": dict(item="rtc_video", variant="8k", quantity="1"),
                "tokenhub": dict(item="video", model="YT-Video-2.0", variant="4k", quantity="1"),
                "jiekou": dict(
                    item="media_call", model="flux-1-schnell", variant="video", quantity="1"
                ),
                "ark": dict(item="tokens", model="doubao-seed-1.6-ft", input_tokens=5),
            }
            d.update(wrong_variant[p])
        elif kind == "bad_stranger":
            d = base(acc, "usage", account_id=f"stranger-{acc.id}")
            d.update(usage_fields(draw, draw(st.sampled_from(CATALOG[p]))))
        elif kind == "bad_reopen":
            d = base(acc, "account")
            d.update(type="account_opened", profile=p)
        elif kind == "bad_self_sub":
            d = base(acc, "account")
            d.update(type="sub_account_linked", sub_account_id=acc.id)
        elif kind == "bad_ghost":
            d = base(acc, "usage", account_id="ghost", main="ghost")
            d.update(item="agent_call", quantity="1")
        elif kind == "bad_whole_units":  # calls and images are counted in whole units
            d = base(acc, "usage")
            fractional: dict[str, dict[str, Any]] = {
                "coze-pro": dict(item="agent_call", quantity="1.5"),
                "tokenhub": dict(item="image", model="HY-Image-Lite", quantity="2.5"),
                "jiekou": dict(
                    item="media_call", model="kling-v2", variant="video", quantity="0.5"
                ),
                "ark": dict(item="tokens", model="no-such-model", input_tokens=1),
            }
            d.update(fractional[p])
        else:  # pragma: no cover
            raise AssertionError(kind)
        if kind.startswith("bad_"):
            expect_rejected.add(d["event_id"])
        raws.append(d)
    return Scenario(raws, expect_rejected)


# ---------------------------------------------------------------- replay


PARTITIONS = 4  # as ``simulate``: stream time is per partition of the main account id


def snapshot(state: AccountState) -> dict[str, Any]:
    """A deep, independent copy of the state's dict (``to_dict`` shares nested period dicts)."""
    return orjson.loads(state.dumps())


@dataclass
class Step:
    raw: dict[str, Any]
    event: Any
    # a copy of the state the event met (advanced to its clock, if accepted)
    before: AccountState | None
    outcome: Outcome
    after: dict[str, Any] | None  # a snapshot of ``outcome.state``


@dataclass
class Run:
    steps: list[Step] = field(default_factory=list)
    deductions: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    statuses: list[dict[str, Any]] = field(default_factory=list)
    settlements: list[dict[str, Any]] = field(default_factory=list)
    dead: list[tuple[str, str, str]] = field(default_factory=list)
    states: dict[str, AccountState] = field(default_factory=dict)
    clocks: dict[int, int] = field(default_factory=dict)

    def collect(self, outcome: Outcome) -> None:
        if outcome.deduction is not None:
            self.deductions.append(outcome.deduction.to_record())
        self.alerts.extend(outcome.alerts)
        if outcome.status is not None:
            self.statuses.append(outcome.status)
        self.settlements.extend(outcome.settlements)

    def outputs(self) -> tuple:
        return self.deductions, self.alerts, self.statuses, self.settlements, self.dead

    def outputs_per_account(self) -> dict[str, tuple]:
        """The records of each main account in their order (the order Kafka keeps, per key)."""
        keys = sorted(
            {
                r["main_account_id"]
                for r in self.deductions + self.alerts + self.statuses + self.settlements
            }
        )
        return {
            k: tuple(
                [r for r in records if r["main_account_id"] == k]
                for records in (self.deductions, self.alerts, self.statuses, self.settlements)
            )
            for k in keys
        }

    def final_states(self) -> dict[str, dict[str, Any]]:
        return {k: snapshot(v) for k, v in sorted(self.states.items())}


def replay(
    raws: list[dict[str, Any]],
    *,
    restore_each_step: bool = False,
    keep_steps: bool = True,
    close_all_after_ms: int | None = None,
) -> Run:
    """Apply the events in order exactly as ``simulate`` does: advance the account to its
    partition's clock, apply the event, keep ``outcome.state``; at the end advance every account to
    its partition's final clock (plus ``close_all_after_ms``, to close every settlement period).
    ``restore_each_step`` continues from ``AccountState.loads(state.dumps())`` after every call (a
    changelog restore between any two events)."""
    engine = BillingEngine(PROFILES)
    run = Run()

    def keep(key: str, state: AccountState) -> AccountState:
        run.states[key] = AccountState.loads(state.dumps()) if restore_each_step else state
        return run.states[key]

    for raw in raws:
        event = parse_json_event(raw)  # every generated event is well formed
        key = event.main_account_id
        part = partition_for(key, PARTITIONS)
        state = run.states.get(key)
        before = AccountState.loads(state.dumps()) if keep_steps and state is not None else None
        # the one partition step the worker and ``simulate`` run: advance, then apply
        outcomes, run.clocks[part] = engine.step(state, event, clock_ms=run.clocks.get(part, 0))
        outcome = outcomes[-1]
        for advanced in outcomes[:-1]:
            assert advanced.deduction is None and advanced.rejected is None
            run.collect(advanced)
        if before is not None and outcome.rejected is None and not outcome.duplicate:
            # what the event met: the account advanced to its clock
            engine.advance(before, run.clocks[part])
        if outcome.rejected is not None:
            assert outcome.rejected.code != "internal_error", (
                f"engine crashed on {raw}: {outcome.rejected.message}"
            )
            run.dead.append((event.event_id, outcome.rejected.code, outcome.rejected.message))
        else:
            run.collect(outcome)
        if outcome.state is not None:
            keep(key, outcome.state)
        if keep_steps:
            after = snapshot(outcome.state) if outcome.state is not None else None
            run.steps.append(Step(raw, event, before, outcome, after))
    for key in sorted(run.states):
        clock = run.clocks[partition_for(key, PARTITIONS)] + (close_all_after_ms or 0)
        run.collect(engine.advance(run.states[key], clock))
    return run


def usage_steps(run: Run):
    for s in run.steps:
        if s.outcome.deduction is not None:
            assert s.event.kind == "usage"
            assert s.before is not None and s.outcome.state is not None and s.after is not None
            # a snapshot: outcome.state is the live object that later events keep changing
            yield s, s.outcome.deduction.to_record(), s.before, AccountState.from_dict(s.after)


# ---------------------------------------------------------------- 1. conservation


@SETTINGS
@given(scenarios())
def test_conservation_of_every_rated_amount(sc: Scenario):
    run = replay(sc.raws)
    for step, d, s0, s1 in usage_steps(run):
        rated = D(d["rated_amount"])
        unbilled = D(d["unbilled_amount"])
        splits = d["splits"]
        assert rated == sum((D(sp["amount"]) for sp in splits), Decimal(0)) + unbilled, d
        assert rated == sum((D(ln["amount"]) for ln in d["lines"]), Decimal(0)), d
        for line in d["lines"]:
            assert D(line["amount"]) == D(line["units"]) * D(line["unit_price"]), line
        assert rated >= 0 and unbilled >= 0, d
        assert all(D(sp["amount"]) > 0 for sp in splits), d
        assert (unbilled > 0) == (d["unbilled_reason"] is not None), d
        assert d["event_id"] == step.event.event_id and d["trace_id"] == step.event.trace_id

        # the buckets moved by exactly the splits (money neither created nor lost)
        by_id: dict[tuple[str, str], Decimal] = {}
        units_by_id: dict[tuple[str, str], Decimal] = {}
        for sp in splits:
            k = (sp["bucket_kind"], sp["bucket_id"])
            assert k not in by_id, f"bucket used twice in one deduction: {d}"
            by_id[k] = D(sp["amount"])
            units_by_id[k] = D(sp["units"])
        assert s0.cash - s1.cash == by_id.get(("cash", "cash"), Decimal(0)), d
        for kind, b0s, b1s in (("pack", s0.packs, s1.packs), ("voucher", s0.vouchers, s1.vouchers)):
            assert [b.id for b in b0s] == [b.id for b in b1s]
            for b0, b1 in zip(b0s, b1s, strict=True):
                assert b0.remaining - b1.remaining == by_id.get((kind, b0.id), Decimal(0)), (
                    b0,
                    b1,
                    d,
                )
        for (kind, bid), amount in by_id.items():
            if kind == "free":
                day = bid.removeprefix("daily:")
                assert s1.free_used[day] - s0.free_used.get(day, Decimal(0)) == amount, d
                assert units_by_id[(kind, bid)] == amount * POINTS_PER_UNIT[s1.profile]
            elif kind == "trial":
                t0 = s0.trials.get(bid)
                granted = (
                    t0.remaining
                    if t0 is not None
                    else PROFILES[s1.profile]
                    .policy.trials[[q.id for q in PROFILES[s1.profile].policy.trials].index(bid)]
                    .amount
                )
                assert granted - s1.trials[bid].remaining == units_by_id[(kind, bid)], d
            elif kind == "pack":
                assert units_by_id[(kind, bid)] == amount * POINTS_PER_UNIT[s1.profile]
            else:
                assert units_by_id[(kind, bid)] == amount
    # account events never produce deductions
    for step in run.steps:
        if step.event.kind == "account":
            assert step.outcome.deduction is None

    # settlement: once every period has closed, the lines of an account add up to its deductions
    closed = replay(sc.raws, keep_steps=False, close_all_after_ms=3 * DAY)
    assert closed.deductions == run.deductions
    fields = {
        "gross_amount": "rated",
        "unbilled_amount": "unbilled",
        "free_amount": "free",
        "trial_amount": "trial",
        "pack_amount": "pack",
        "voucher_amount": "voucher",
        "cash_amount": "cash",
    }
    want: dict[tuple[str, str], Decimal] = {}
    got: dict[tuple[str, str], Decimal] = {}
    for d in run.deductions:
        parts = {"rated": D(d["rated_amount"]), "unbilled": D(d["unbilled_amount"])}
        for sp in d["splits"]:
            parts[sp["bucket_kind"]] = parts.get(sp["bucket_kind"], Decimal(0)) + D(sp["amount"])
        for name, v in parts.items():
            want[(d["main_account_id"], name)] = (
                want.get((d["main_account_id"], name), Decimal(0)) + v
            )
    settled_ids = []
    for line in closed.settlements:
        for f, name in fields.items():
            got[(line["main_account_id"], name)] = got.get(
                (line["main_account_id"], name), Decimal(0)
            ) + D(line[f])
        assert D(line["gross_amount"]) == sum(
            (D(line[f]) for f in fields if f != "gross_amount"), Decimal(0)
        ), line
        settled_ids.append(line["settlement_id"])
    assert {k: v for k, v in got.items() if v} == {k: v for k, v in want.items() if v}
    # every deduction names the one line it is summed into, and each line is exactly its deductions
    assert len(settled_ids) == len(set(settled_ids))
    members: dict[str, list[dict[str, Any]]] = {}
    for d in closed.deductions:
        members.setdefault(d["settlement_id"], []).append(d)
    assert set(members) == set(settled_ids)
    for line in closed.settlements:
        ds = members[line["settlement_id"]]
        assert line["event_count"] == len(ds) and all(
            d["main_account_id"] == line["main_account_id"] for d in ds
        )
        assert D(line["gross_amount"]) == sum((D(d["rated_amount"]) for d in ds), Decimal(0))
    assert all(not st_.periods for st_ in closed.states.values()), (
        "periods left open after the final clock"
    )


# ---------------------------------------------------------------- 2. no bucket below zero


def _late_free_points_scenario() -> Scenario:
    """A coze-pro account uses all 500 free points of 05-01, then has usage on the next three days,
    then two events of 05-01 arrive late (3 days): 05-01 must not pay more than 500 points."""
    a = "coze-late"

    def ev(i, t, **kw):
        kind = "usage" if "item" in kw else "account"
        return {
            "kind": kind,
            "event_id": f"late-{i}",
            "trace_id": f"t-{i}",
            "account_id": a,
            "main_account_id": a,
            "event_time": t,
            **kw,
        }

    return Scenario(
        [
            ev(
                0,
                "2026-05-01T08:00:00+08:00",
                type="account_opened",
                profile="coze-pro",
                post_paid=True,
                amount="100",
            ),
            # 500 points: 05-01 used up
            ev(1, "2026-05-01T09:00:00+08:00", item="agent_call", quantity="250"),
            ev(2, "2026-05-02T09:00:00+08:00", item="agent_call", quantity="1"),
            ev(3, "2026-05-03T09:00:00+08:00", item="agent_call", quantity="1"),
            ev(4, "2026-05-04T09:00:00+08:00", item="agent_call", quantity="1"),
            # late, for 05-01
            ev(5, "2026-05-01T10:00:00+08:00", item="agent_call", quantity="250"),
            # late, for 05-01
            ev(6, "2026-05-01T11:00:00+08:00", item="agent_call", quantity="250"),
        ],
        set(),
    )


@SETTINGS
@given(scenarios())
def test_no_bucket_below_zero(sc: Scenario):
    check_no_bucket_below_zero(sc)


def check_no_bucket_below_zero(sc: Scenario) -> None:
    run = replay(sc.raws)
    ever_post_paid: dict[str, bool] = {}
    ever_activated: dict[str, bool] = {}
    last_remaining: dict[tuple[str, str], Decimal] = {}
    free_per_day: dict[tuple[str, str], Decimal] = {}
    for step in run.steps:
        if step.after is None or step.outcome.rejected is not None:
            continue
        s1 = AccountState.from_dict(step.after)
        key = s1.main_account_id
        ever_post_paid[key] = ever_post_paid.get(key, False) or s1.post_paid
        ever_activated[key] = ever_activated.get(key, False) or bool(s1.activated_models)
        for b in s1.packs + s1.vouchers:
            assert Decimal(0) <= b.remaining <= b.granted, b
            prev = last_remaining.get((key, b.id))
            assert prev is None or b.remaining <= prev, (
                f"bucket {b.id} grew from {prev} to {b.remaining}"
            )
            last_remaining[(key, b.id)] = b.remaining
        for t in s1.trials.values():
            assert Decimal(0) <= t.remaining <= t.granted, t
            prev = last_remaining.get((key, "trial:" + t.id))
            assert prev is None or t.remaining <= prev, t
            last_remaining[(key, "trial:" + t.id)] = t.remaining
        for day, used in s1.free_used.items():
            assert Decimal(0) <= used <= COZE_DAILY_GRANT, (day, used)
        # cash: negative only for post-paid accounts or activated (Ark) models
        if not ever_post_paid[key] and not ever_activated[key]:
            assert s1.cash >= 0, (
                f"pre-paid account without activated models has cash {s1.cash} after {step.raw}"
            )
        s0 = step.before
        if s0 is not None and s1.cash < 0 and s1.cash < s0.cash:
            ev = step.event
            assert ev.kind == "usage" and (
                s0.post_paid or (ev.model is not None and ev.model in s0.activated_models)
            ), f"cash went from {s0.cash} to {s1.cash} on a pre-paid account: {step.raw}"
        d = step.outcome.deduction
        if d is not None:
            for sp in d.to_record()["splits"]:
                if sp["bucket_kind"] == "free":
                    k = (key, sp["bucket_id"])
                    free_per_day[k] = free_per_day.get(k, Decimal(0)) + D(sp["amount"])
                    assert free_per_day[k] <= COZE_DAILY_GRANT, (
                        f"{free_per_day[k]} CNY of free points paid from {k}, more than the daily "
                        "grant "
                        f"{COZE_DAILY_GRANT} (500 points); last by {step.raw}"
                    )


def test_late_event_does_not_get_a_second_daily_grant():
    """Properties 2 and 3 on a fixed sequence: events of a day that arrive 3 days late."""
    sc = _late_free_points_scenario()
    check_no_bucket_below_zero(sc)
    check_order_of_deduction(sc)


# ---------------------------------------------------------------- 3. order of §3


def _pack_in_scope(profile: str, kind: str, item: str, model: str | None) -> bool:
    assert profile == "coze-pro" and kind == "coze_unified", (profile, kind)
    return coze_platform_scope(item, model)


def _expected_trial_cover(
    d: dict[str, Any], remaining: Decimal, unit: str, per: Decimal | None
) -> tuple[Decimal, Decimal]:
    """(units of the quota used, amount
    covered) under the §3 decision, from the deduction's lines."""
    lines = sorted(
        d["lines"],
        key=lambda ln: COVER_ORDER.index(ln["component"]) if ln["component"] in COVER_ORDER else 0,
    )
    used, amount = Decimal(0), Decimal(0)
    for ln in lines:
        units, price = D(ln["units"]), D(ln["unit_price"])
        if unit == "tokens":
            n = min(remaining - used, units)
            cost = n
        elif unit == "images":
            n = min(
                (remaining - used).to_integral_value(ROUND_FLOOR),
                units.to_integral_value(ROUND_FLOOR),
            )
            cost = n
        else:
            assert per is not None  # credits: the caller passes the credits of one call
            n = min(
                ((remaining - used) / per).to_integral_value(ROUND_FLOOR),
                units.to_integral_value(ROUND_FLOOR),
            )
            cost = n * per
        if n > 0:
            used += cost
            amount += n * price
    return used, amount


@SETTINGS
@given(scenarios(max_accounts=2, max_events=40))
def test_order_of_deduction(sc: Scenario):
    check_order_of_deduction(sc)


def check_order_of_deduction(sc: Scenario) -> None:
    run = replay(sc.raws)
    free_paid: dict[
        tuple[str, str], Decimal
    ] = {}  # (account, day) -> free points paid so far, from the deductions
    horizon: dict[
        str, str
    ] = {}  # account -> first local day still given free points (never moves back)
    for step, d, s0, s1 in usage_steps(run):
        ev = step.event
        now = ev.event_time
        p = s1.profile
        profile = PROFILES[p]
        splits = d["splits"]
        kinds = [sp["bucket_kind"] for sp in splits]
        ranks = [KIND_RANK[k] for k in kinds]
        assert ranks == sorted(ranks), f"bucket kinds out of §3 order: {kinds}"
        for k in ("free", "trial", "cash"):
            assert kinds.count(k) <= 1, kinds
        if d["billed_elsewhere"]:
            assert not splits and D(d["rated_amount"]) == 0
            continue
        rated = D(d["rated_amount"])
        later = lambda rank, ranks=ranks: any(r > rank for r in ranks)  # noqa: E731

        # -- 1. daily free points (coze-pro)
        free_applicable = p == "coze-pro" and coze_platform_scope(ev.item, ev.model) and rated > 0
        day = shanghai_day(now)
        if free_applicable:
            used0 = free_paid.get((s1.main_account_id, day), Decimal(0))
            want = min(rated, COZE_DAILY_GRANT - used0)
            # Documented decision (README, ledger.FREE_DAYS_KEPT): the ledger remembers the free
            # points of the last 3 calendar days (Asia/Shanghai) up to stream time, the clock the
            # event met; an event of an older day counts its day as used up.
            stream_day = date.fromisoformat(
                shanghai_day(max(s0.settled_until, s0.stream_time, now))
            )
            first_kept = (stream_day - timedelta(days=2)).isoformat()
            horizon[s1.main_account_id] = max(
                horizon.get(s1.main_account_id, first_kept), first_kept
            )
            if day < horizon[s1.main_account_id]:
                want = Decimal(0)
                free_applicable = False
            got = [sp for sp in splits if sp["bucket_kind"] == "free"]
            if want > 0:
                assert (
                    got and got[0]["bucket_id"] == f"daily:{day}" and D(got[0]["amount"]) == want
                ), (want, d)
            else:
                assert not got, (
                    f"{day} had {used0} of its {COZE_DAILY_GRANT} free already used, yet paid "
                    f"free again: {d}"
                )
            used1 = used0 + (D(got[0]["amount"]) if got else Decimal(0))
            free_paid[(s1.main_account_id, day)] = used1
            if later(0) and free_applicable:
                assert used1 == COZE_DAILY_GRANT, (
                    f"later buckets used before the day's free points: {d}"
                )
        else:
            assert "free" not in kinds, d

        # -- 2. the model's trial quota
        quota = profile.trial_by_model.get(ev.model) if ev.model else None
        trial_split = next((sp for sp in splits if sp["bucket_kind"] == "trial"), None)
        trial_live = False
        if quota is not None and rated > 0:
            t0 = s0.trials.get(quota.id)
            rem0 = t0.remaining if t0 is not None else quota.amount
            expires = t0.expires_at if t0 is not None else now + quota.valid_days * DAY
            trial_live = ev.model not in s0.safe_paused_models and now < expires and rem0 > 0
            if trial_live:
                row = price_row(p, ev.item, ev.model, ev.variant, now)
                # a credit-range row: one call costs the credits the event carries
                per = (
                    (ev.credits if row.credits_from_event else row.credits)
                    if quota.unit == "credits"
                    else None
                )
                used, amount = _expected_trial_cover(d, rem0, quota.unit, per)
                if used > 0:
                    assert trial_split is not None and trial_split["bucket_id"] == quota.id, d
                    assert D(trial_split["units"]) == used and D(trial_split["amount"]) == amount, (
                        used,
                        amount,
                        d,
                    )
                else:
                    assert trial_split is None, d
                if later(1):
                    left = s1.trials[quota.id].remaining
                    if quota.unit == "credits":
                        assert per is not None  # set for a credits quota above
                        units = sum((D(ln["units"]) for ln in d["lines"]), Decimal(0))
                        whole_units_covered = used == units.to_integral_value(ROUND_FLOOR) * per
                        assert left < per or whole_units_covered, (
                            f"trial {quota.id} still had {left} credits: {d}"
                        )
                    else:
                        assert left == 0, (
                            f"later buckets used while trial {quota.id} had {left} left: {d}"
                        )
        if not trial_live:
            assert trial_split is None, d

        # -- 3. packs: live, in scope, (expires_at, purchase time, id) order, each drained before
        # the next
        packs0 = {b.id: b for b in s0.packs}
        packs1 = {b.id: b for b in s1.packs}
        used_packs = [sp["bucket_id"] for sp in splits if sp["bucket_kind"] == "pack"]
        for pid in used_packs:
            b = packs0[pid]
            assert (
                b.expires_at > now
                and b.remaining > 0
                and _pack_in_scope(p, b.kind, ev.item, ev.model)
            ), (b, d)
        keys = [(packs0[i].expires_at, packs0[i].acquired_at, packs0[i].id) for i in used_packs]
        assert keys == sorted(keys), f"packs not used in (expiry, purchase, id) order: {keys}"
        for pid in used_packs[:-1]:
            assert packs1[pid].remaining == 0, f"next pack used before {pid} was empty: {d}"
        if used_packs:  # no skipped pack that sorts before the last one used
            last = keys[-1]
            for b in s0.packs:
                if (
                    b.id not in used_packs
                    and b.remaining > 0
                    and b.expires_at > now
                    and _pack_in_scope(p, b.kind, ev.item, ev.model)
                ):
                    assert (b.expires_at, b.acquired_at, b.id) > last, f"pack {b.id} skipped: {d}"
        if later(2):
            for b in s1.packs:
                if b.expires_at > now and _pack_in_scope(p, b.kind, ev.item, ev.model):
                    assert b.remaining == 0, (
                        f"voucher/cash used while pack {b.id} had {b.remaining} left: {d}"
                    )

        # -- 4. vouchers: live, earliest expiry first, each drained before the next
        v0 = {b.id: b for b in s0.vouchers}
        v1 = {b.id: b for b in s1.vouchers}
        used_v = [sp["bucket_id"] for sp in splits if sp["bucket_kind"] == "voucher"]
        for vid in used_v:
            assert v0[vid].expires_at > now and v0[vid].remaining > 0, d
        vkeys = [(v0[i].expires_at, v0[i].acquired_at, v0[i].id) for i in used_v]
        assert vkeys == sorted(vkeys), f"vouchers not used earliest expiry first: {vkeys}"
        for vid in used_v[:-1]:
            assert v1[vid].remaining == 0, d
        if later(3):
            for b in s1.vouchers:
                if b.expires_at > now:
                    assert b.remaining == 0, (
                        f"cash used while voucher {b.id} had {b.remaining} left: {d}"
                    )

        # -- 5. cash, and the controls that stop charging
        post_paid = s0.post_paid or (ev.model is not None and ev.model in s0.activated_models)
        safe = s0.safe_trial_mode and not s0.activated_models
        if safe:
            assert set(kinds) <= {"trial"}, f"safe trial mode charged the account: {d}"
        if quota is not None and not post_paid:
            assert not ({"voucher", "cash"} & set(kinds)), (
                f"pre-paid model with a free quota was charged: {d}"
            )
        unbilled = D(d["unbilled_amount"])
        if post_paid and not safe:
            assert unbilled == 0, f"post-paid usage left unbilled: {d}"
        if unbilled > 0 and not safe and (quota is None or post_paid):
            assert s1.cash <= 0, f"usage left unbilled while cash {s1.cash} remained: {d}"
            assert all(b.remaining == 0 for b in s1.vouchers if b.expires_at > now), d


# ---------------------------------------------------------------- 4. idempotence


def _dedupe(items: list) -> list:
    return list(dict.fromkeys(items))


@SETTINGS
@given(scenarios(invalid=True), st.data())
def test_redelivered_events_change_nothing(sc: Scenario, data):
    once = replay(sc.raws)

    # every event delivered twice in a row
    doubled = [r for raw in sc.raws for r in (raw, raw)]
    twice = replay(doubled)
    assert twice.deductions == once.deductions
    assert twice.alerts == once.alerts
    assert twice.statuses == once.statuses
    assert _dedupe(twice.dead) == once.dead  # a redelivered bad event is the same dead letter
    assert twice.final_states() == once.final_states()
    for first, second in zip(twice.steps[0::2], twice.steps[1::2], strict=True):
        if first.outcome.rejected is None:
            assert second.outcome.duplicate, (
                f"redelivery of an applied event was not recognised: {second.raw}"
            )
            assert (
                second.outcome.deduction is None
                and not second.outcome.alerts
                and second.outcome.status is None
            )
        else:
            assert (
                second.outcome.rejected is not None
                and second.outcome.rejected.code == first.outcome.rejected.code
            )

    # applied events redelivered later, after other events
    applied = [i for i, s in enumerate(once.steps) if s.outcome.rejected is None]
    n = len(sc.raws)
    again = data.draw(st.lists(st.sampled_from(applied), max_size=12)) if applied else []
    keyed = [((i, 0, 0), raw) for i, raw in enumerate(sc.raws)]
    for j, i in enumerate(again):
        at = data.draw(st.integers(i, n - 1), label=f"redeliver event {i} after")
        keyed.append(((at, 1, j), sc.raws[i]))
    later = replay([raw for _, raw in sorted(keyed, key=lambda kv: kv[0])], keep_steps=False)
    # A redelivered event still moves its account to the partition clock (``simulate`` and the
    # worker call ``advance`` before ``apply``), so records that come due may be emitted at the
    # redelivery instead of at the account's next event: the same records in the same order per
    # account.
    assert later.outputs_per_account() == once.outputs_per_account()
    # a redelivery more than the dedupe horizon behind stream time is a dead letter of its own
    # (``event_too_old``), never a charge; every other redelivery is silent
    too_old = [d for d in later.dead if d[1] == "event_too_old"]
    assert {d[0] for d in too_old} <= {
        s.event.event_id for s in once.steps if s.outcome.rejected is None
    }
    assert (
        later.deductions == once.deductions
        and [d for d in later.dead if d[1] != "event_too_old"] == once.dead
    )
    assert later.final_states() == once.final_states()


def test_redelivered_event_does_not_add_a_trial_expiring_notice():
    """Property 4 on a fixed sequence. th-a and th-c share a partition (murmur2, 4 partitions), so
    th-c's event moves th-a's stream time into the 7-day notice window of th-a's kimi-k2.5 trial
    (claimed 05-01 10:00 +08:00, expires 07-30 10:00); th-a's next event comes after the expiry.
    Redelivering th-a's usage after th-c's event must not change th-a's records."""
    assert partition_for("th-a", PARTITIONS) == partition_for("th-c", PARTITIONS)

    def ev(acct, i, t, **kw):
        kind = "usage" if "item" in kw else "account"
        return {
            "kind": kind,
            "event_id": f"{acct}-{i}",
            "account_id": acct,
            "main_account_id": acct,
            "event_time": t,
            **kw,
        }

    raws = [
        ev(
            "th-a",
            0,
            "2026-05-01T08:00:00+08:00",
            type="account_opened",
            profile="tokenhub",
            amount="10",
        ),
        ev(
            "th-c",
            0,
            "2026-05-01T08:00:00+08:00",
            type="account_opened",
            profile="tokenhub",
            amount="10",
        ),
        ev(
            "th-a",
            1,
            "2026-05-01T10:00:00+08:00",
            item="tokens",
            model="kimi-k2.5",
            input_tokens=1000,
            output_tokens=100,
        ),
        ev("th-c", 1, "2026-07-25T10:00:00+08:00", type="top_up", amount="1"),
        ev("th-a", 2, "2026-08-05T10:00:00+08:00", type="top_up", amount="1"),
    ]
    once = replay(raws)
    redelivered = replay(raws[:4] + [raws[2]] + raws[4:])
    # 86 days later the redelivery is past the 35-day dedupe horizon: a dead letter, not a charge
    assert redelivered.steps[4].outcome.rejected.code == "event_too_old"
    assert redelivered.alerts == once.alerts
    assert redelivered.outputs_per_account() == once.outputs_per_account()
    assert redelivered.final_states() == once.final_states()


# ---------------------------------------------------------------- 5. determinism and serialization


@SETTINGS
@given(scenarios(invalid=True))
def test_deterministic_and_state_round_trip(sc: Scenario):
    first = replay(sc.raws)
    second = replay(sc.raws)
    assert first.outputs() == second.outputs()
    assert first.final_states() == second.final_states()
    for step in first.steps:
        state = step.outcome.state
        if state is None:
            continue
        data = state.dumps()
        assert AccountState.loads(data).to_dict() == state.to_dict()
        assert AccountState.loads(data).dumps() == data
    # continuing from the serialized state after every event (a changelog restore) changes nothing
    restored = replay(sc.raws, restore_each_step=True)
    assert restored.outputs() == first.outputs()
    assert restored.final_states() == first.final_states()


# ---------------------------------------------------------------- 6. rejected events


@SETTINGS
@given(scenarios(invalid=True))
def test_rejected_events_change_nothing(sc: Scenario):
    run = replay(sc.raws)
    rejected = {s.event.event_id for s in run.steps if s.outcome.rejected is not None}
    assert sc.expect_rejected <= rejected, (
        f"invalid events were applied: {sorted(sc.expect_rejected - rejected)}"
    )
    for step in run.steps:
        out = step.outcome
        if out.rejected is None:
            continue
        before = snapshot(step.before) if step.before is not None else None
        assert step.after == before, (
            f"rejected event {step.raw} ({out.rejected.code}) changed the state"
        )
        assert out.deduction is None and not out.alerts and out.status is None
        assert out.result == "rejected"
        assert isinstance(out.rejected, Rejected) and out.rejected.code and out.rejected.message


# ---------------------------------------------------------------- 7. rating

TOKEN_OFFERS = [
    (name, o)
    for name in PROFILE_NAMES
    for o in CATALOG[name]
    if o.unit is None and not (o.model or "").startswith("ark/")
]
UNIT_OFFERS = [
    (name, o)
    for name in PROFILE_NAMES
    for o in CATALOG[name]
    if o.unit is not None and o.item != "kb_storage"
]
RATE_AT = "2026-05-01T10:00:00+08:00"


def _first_tier_bound(profile: str, o: Offer) -> int:
    tiers = price_row(profile, o.item, o.model, o.variant, ms_of(RATE_AT)).token_tiers()
    return tiers[0].up_to if tiers[0].up_to is not None else 500_000


def _token_event(o: Offer, inp=0, ch=0, cw=0, out=0, rs=0):
    return parse_usage(
        {
            "event_id": "r",
            "account_id": "a",
            "main_account_id": "a",
            "event_time": RATE_AT,
            "item": o.item,
            "model": o.model,
            "variant": o.variant,
            "input_tokens": inp,
            "cache_hit_tokens": ch,
            "cache_write_tokens": cw,
            "output_tokens": out,
            "reasoning_tokens": rs,
        }
    )


@st.composite
def token_requests(draw):
    name, o = draw(st.sampled_from(TOKEN_OFFERS))
    inp = draw(st.integers(0, _first_tier_bound(name, o)))  # one tier for the request and its parts
    ch = draw(st.integers(0, inp))
    cw = draw(st.integers(0, inp - ch))
    out = draw(st.integers(0, 100_000)) if o.item == "tokens" else 0
    rs = draw(st.integers(0, out))
    return name, o, (inp, ch, cw, out, rs)


@SETTINGS
@given(token_requests())
def test_token_rating_deterministic_nonnegative_additive(req):
    name, o, (inp, ch, cw, out, rs) = req
    profile = PROFILES[name]
    r1 = rate(profile, _token_event(o, inp, ch, cw, out, rs))
    r2 = rate(profile, _token_event(o, inp, ch, cw, out, rs))
    assert r1 == r2
    assert r1.amount >= 0 and all(ln.amount >= 0 and ln.unit_price >= 0 for ln in r1.lines)
    assert r1.amount == sum((ln.amount for ln in r1.lines), Decimal(0))
    # every token billed exactly once
    assert sum((ln.units for ln in r1.lines), Decimal(0)) == inp + out
    # the request rated as a whole == its components rated alone (same tier)
    parts = [
        _token_event(o, inp=ch, ch=ch),
        _token_event(o, inp=inp - ch - cw),
        _token_event(o, inp=cw, cw=cw),
        _token_event(o, out=out - rs),
        _token_event(o, out=rs, rs=rs),
    ]
    rated_parts = [rate(profile, e) for e in parts]
    assert r1.amount == sum((r.amount for r in rated_parts), Decimal(0)), (r1, rated_parts)
    whole = {ln.component: ln.amount for ln in r1.lines}
    for component, r in zip(COVER_ORDER, rated_parts, strict=False):
        assert sum((ln.amount for ln in r.lines), Decimal(0)) == whole.get(component, Decimal(0)), (
            component,
            r1,
            r,
        )
    # the lines come out in the order a trial quota covers them
    order = [COVER_ORDER.index(ln.component) for ln in r1.lines]
    assert order == sorted(order)


@st.composite
def unit_requests(draw):
    name, o = draw(st.sampled_from(UNIT_OFFERS))
    whole = o.unit in ("call", "image")
    q = [
        draw(st.integers(0, 50)) if whole else Decimal(draw(st.integers(0, 50_000))).scaleb(-2)
        for _ in range(2)
    ]
    if o.credits_range is not None:  # the credits of one call, anywhere in the model's range
        o = replace(
            o, credits=Decimal(draw(st.integers(int(o.credits_range[0]), int(o.credits_range[1]))))
        )
    return name, o, q


def _unit_event(o: Offer, q) -> Any:
    raw = {
        "event_id": "r",
        "account_id": "a",
        "main_account_id": "a",
        "event_time": RATE_AT,
        "item": o.item,
        "model": o.model,
        "variant": o.variant,
        "quantity": str(q),
    }
    if o.credits_range is not None:
        raw["credits"] = str(o.credits)
    return parse_usage(raw)


@SETTINGS
@given(unit_requests())
def test_unit_rating_deterministic_nonnegative_additive(req):
    name, o, (q1, q2) = req
    profile = PROFILES[name]
    r = rate(profile, _unit_event(o, q1 + q2))
    assert r == rate(profile, _unit_event(o, q1 + q2))
    assert r.amount >= 0
    assert (
        r.amount
        == rate(profile, _unit_event(o, q1)).amount + rate(profile, _unit_event(o, q2)).amount
    )
    if o.credits is not None:  # 1 video credit = 1.2 CNY, 1 3D credit = 0.12 CNY (§1)
        value = {"video": Decimal("1.2"), "3d": Decimal("0.12")}[o.item]
        assert r.amount == D(q1 + q2) * o.credits * value


HY_INSTRUCT = Offer("tokens", "HY 2.0 Instruct", None, None, max_input=128_000)
HY_TIERS = {
    1: (Decimal("3.18"), Decimal("7.95")),
    2: (Decimal("4.505"), Decimal("11.13")),
}  # CNY per 1M tokens


@pytest.mark.parametrize("inp,tier", [(1, 1), (32_000, 1), (32_001, 2), (128_000, 2)])
def test_tier_boundary_hy_instruct(inp, tier):
    profile = PROFILES["tokenhub"]
    r = rate(profile, _token_event(HY_INSTRUCT, inp=inp, out=1_000))
    in_price, out_price = HY_TIERS[tier]
    assert {ln.component: ln.unit_price for ln in r.lines} == {
        "input": in_price / 1_000_000,
        "output": out_price / 1_000_000,
    }
    assert r.amount == (inp * in_price + 1_000 * out_price) / 1_000_000


@SETTINGS
@given(st.integers(1, 128_000), st.integers(0, 40_000), st.data())
def test_tier_chosen_by_total_input_hy_instruct(inp, out, data):
    ch = data.draw(st.integers(0, inp))  # no cache price: cached tokens are billed as input (§2)
    r = rate(PROFILES["tokenhub"], _token_event(HY_INSTRUCT, inp=inp, ch=ch, out=out))
    in_price, out_price = HY_TIERS[1 if inp <= 32_000 else 2]
    assert r.amount == (inp * in_price + out * out_price) / 1_000_000


@pytest.mark.parametrize("inp", [128_001, 500_000])
def test_above_top_tier_is_rejected(inp):
    with pytest.raises(Rejected) as exc:
        rate(PROFILES["tokenhub"], _token_event(HY_INSTRUCT, inp=inp, out=10))
    assert exc.value.code == "above_top_tier"
