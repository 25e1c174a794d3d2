"""The entitlement ledger: account events change an account's state; a rated usage event is paid
from its buckets in the order of billing-rules §3 under the controls of §4.

Pure: no I/O, no clock. Every time-driven rule (daily reset, trial expiry, grace deadlines) follows
the events' own time, so a replay gives the same result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_FLOOR, Decimal
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from streams.deduction.record import (
    Deduction,
    DeductionLine,
    Split,
    deduction_id,
    money,
    settlement_period,
)
from streams.ingest.events import AccountEvent, Rejected, UsageEvent, millis_to_iso
from streams.ledger.alerts import alert
from streams.ledger.state import ZERO, AccountState, Bucket, InferenceLimit, Trial
from streams.rating.profiles import Profile, Profiles
from streams.rating.rate import Rating, kb_hours, rate

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MAX_LIVE_BUCKETS = 100  # vouchers, and packs, per account that have not expired (plus one horizon)
MAX_SUB_ACCOUNTS = (
    200  # with ids of at most 256 characters: the account record stays under its limit
)
FREE_DAYS_KEPT = 3  # late events of the last days still see their own day's free points


@lru_cache(maxsize=65536)
def _local_day(tz: str, hour_index: int) -> str:
    return (EPOCH + timedelta(hours=hour_index)).astimezone(ZoneInfo(tz)).date().isoformat()


def local_day(tz: str, event_ms: int) -> str:
    # Every zone in use has whole-hour or half-hour offsets at most; the hour bucket is exact for
    # whole-hour zones (all four shipped profiles use Asia/Shanghai, UTC+8, no DST).
    return _local_day(tz, event_ms // HOUR_MS)


def stream_clock(s: AccountState, event_ms: int) -> int:
    """Stream time as the ledger sees it: the partition clock the account was advanced to (the
    engine advances it before each event), never behind the account's own events."""
    return max(s.settled_until, s.stream_time, event_ms)


@dataclass
class Effects:
    """What applying one event produced, besides the new state."""

    deduction: Deduction | None = None
    alerts: list[dict[str, Any]] = field(default_factory=list)
    status_changed: bool = False
    status_time: int | None = None  # when a deadline (not an event) changed the status


def _room_for(items: Any, what: str, limit: int) -> None:
    if len(items) >= limit:
        raise Rejected(
            "limit_exceeded",
            f"an account holds at most {limit} {what} (see README 'Dedupe horizon and limits')",
        )


class Ledger:
    def __init__(self, profiles: Profiles, horizon_ms: int = 35 * DAY_MS):
        self.profiles = profiles
        self.horizon_ms = horizon_ms

    # ================================================================ account events

    def open_account(self, e: AccountEvent) -> AccountState:
        if e.profile is None:
            raise Rejected("missing_field", "account_opened requires profile")
        profile = self.profiles.get(e.profile)
        if profile is None:
            raise Rejected(
                "unknown_profile",
                f"profile {e.profile!r} is not one of {', '.join(self.profiles.names())}",
            )
        if e.currency is not None and e.currency != profile.currency:
            raise Rejected(
                "currency_mismatch",
                f"profile {profile.name!r} bills in {profile.currency}, not {e.currency}; there "
                "is no implicit exchange",
            )
        if e.account_id != e.main_account_id:
            raise Rejected(
                "not_a_main_account",
                "account_opened must name a main account (account_id == main_account_id)",
            )
        opening = e.amount or ZERO
        if opening < 0:
            raise Rejected("negative_amount", f"opening cash {opening} is negative")
        if e.safe_trial_mode and profile.policy.safe_trial is None:
            raise Rejected(
                "safe_trial_not_offered",
                f"profile {profile.name!r} has no safe trial mode (billing-rules §4)",
            )
        return AccountState(
            main_account_id=e.main_account_id,
            profile=profile.name,
            currency=profile.currency,
            opened_at=e.event_time,
            post_paid=profile.policy.post_paid_default if e.post_paid is None else e.post_paid,
            cash=opening,
            balance_threshold=e.balance_threshold,
            safe_trial_mode=bool(e.safe_trial_mode),
            stream_time=e.event_time,
        )

    def apply_account_event(self, s: AccountState, e: AccountEvent, fx: Effects) -> None:
        profile = self.profiles[s.profile]
        if e.type not in profile.policy.account_events:
            raise Rejected(
                "not_supported_by_profile",
                f"{e.type} is not an account event of profile {profile.name!r} "
                f"(it takes {', '.join(profile.policy.account_events)})",
            )
        if e.currency is not None and e.currency != s.currency:
            # the parser normalized it to an ISO 4217 code; there is no implicit exchange
            raise Rejected(
                "currency_mismatch",
                f"{e.type} is in {e.currency} but account {s.main_account_id!r} is billed in "
                f"{s.currency}; "
                "there is no implicit exchange",
            )
        if e.account_id != s.main_account_id:
            # account events change the main account's money and settings: only it may send them
            # (a link names the sub-account in sub_account_id)
            raise Rejected(
                "not_a_main_account",
                f"{e.type} must come from the main account {s.main_account_id!r}, "
                f"not {e.account_id!r}",
            )
        handler = getattr(self, f"_on_{e.type}")
        handler(s, e, profile, fx)
        self._after_balance_change(
            s, profile, e.event_time, e.account_id, [e.event_id], "", fx, charged=False
        )

    def _on_account_opened(self, s, e, profile, fx):
        raise Rejected("account_exists", f"main account {e.main_account_id!r} is already open")

    def _on_top_up(self, s, e, profile, fx):
        if e.amount is None:
            raise Rejected("missing_field", "top_up requires amount")
        if e.amount <= 0:
            raise Rejected("negative_top_up", f"a top-up must be positive, got {e.amount}")
        s.cash += e.amount
        s.stopped_models.clear()

    def _on_voucher_granted(self, s, e, profile, fx):
        if e.amount is None or e.amount <= 0:
            raise Rejected("invalid_amount", "voucher_granted requires a positive amount")
        if e.expires_at is None or e.expires_at <= e.event_time:
            raise Rejected(
                "invalid_expiry", "voucher_granted requires expires_at after the event time"
            )
        vid = e.voucher_id or e.event_id
        if any(v.id == vid for v in s.vouchers):
            raise Rejected("duplicate_bucket", f"voucher {vid!r} was already granted")
        _room_for(s.vouchers, "vouchers", MAX_LIVE_BUCKETS)
        s.vouchers.append(Bucket(vid, "voucher", e.amount, e.amount, e.expires_at, e.event_time))
        s.stopped_models.clear()

    def _on_pack_purchased(self, s, e, profile, fx):
        if e.pack_kind is None:
            raise Rejected("missing_field", "pack_purchased requires pack_kind")
        kind = profile.policy.packs.get(e.pack_kind)
        if kind is None:
            offered = ", ".join(sorted(profile.policy.packs)) or "none"
            raise Rejected(
                "unknown_pack_kind",
                f"profile {profile.name!r} sells no pack {e.pack_kind!r} (offered: {offered})",
            )
        if kind.purchasable_until is not None:
            from streams.ingest.events import to_millis

            until = to_millis(kind.purchasable_until, "purchasable_until")
            if e.event_time >= until:
                raise Rejected(
                    "legacy_pack_withdrawn",
                    f"{e.pack_kind} packs can no longer be bought or renewed since "
                    f"{millis_to_iso(until)} (billing-rules §3)",
                )
        if e.amount is None or e.amount <= 0:
            raise Rejected(
                "invalid_amount",
                f"pack_purchased requires a positive amount (in {profile.price_unit_name})",
            )
        if e.expires_at is None or e.expires_at <= e.event_time:
            raise Rejected(
                "invalid_expiry", "pack_purchased requires expires_at after the purchase time"
            )
        pid = e.pack_id or e.event_id
        if any(p.id == pid for p in s.packs):
            raise Rejected("duplicate_bucket", f"pack {pid!r} was already purchased")
        value = profile.to_currency(e.amount)
        _room_for(s.packs, "packs", MAX_LIVE_BUCKETS)
        s.packs.append(Bucket(pid, e.pack_kind, value, value, e.expires_at, e.event_time))
        s.stopped_models.clear()

    def _on_model_activated(self, s, e, profile, fx):
        self._known_model(profile, e)
        s.activated_models.add(e.model)
        s.safe_trial_mode = False  # safe trial is for accounts that never activated a model
        s.safe_paused_models.clear()
        s.stopped_models.discard(e.model)

    def _on_post_paid_switched(self, s, e, profile, fx):
        if e.post_paid is None:
            raise Rejected("missing_field", "post_paid_switched requires post_paid")
        s.post_paid = e.post_paid
        s.stopped_models.clear()

    def _on_balance_threshold_set(self, s, e, profile, fx):
        if e.balance_threshold is None:
            raise Rejected("missing_field", "balance_threshold_set requires balance_threshold")
        s.balance_threshold = e.balance_threshold
        s.threshold_armed = True

    def _limit_rules(self, s: AccountState, e: AccountEvent, profile: Profile) -> None:
        rules = profile.policy.inference_limits
        if not rules.allowed:
            raise Rejected(
                "inference_limit_not_offered", f"profile {profile.name!r} has no inference limits"
            )
        self._known_model(profile, e)
        assert e.model is not None  # _known_model rejects an event without one
        last = s.limit_changed_at.get(e.model)
        spacing = rules.min_spacing_hours * HOUR_MS
        if last is not None and e.event_time - last < spacing:
            raise Rejected(
                "inference_limit_too_soon",
                f"the inference limit of {e.model} was changed at {millis_to_iso(last)}; it can "
                "be changed again "
                f"from {millis_to_iso(last + spacing)} (at least {rules.min_spacing_hours} hours "
                "apart, billing-rules §4)",
            )

    def _on_inference_limit_set(self, s, e, profile, fx):
        self._limit_rules(s, e, profile)
        if e.limit_tokens is None or e.limit_tokens <= 0:
            raise Rejected("invalid_amount", "inference_limit_set requires a positive limit_tokens")
        if (e.inference_mode or "online") != "online":
            raise Rejected(
                "inference_limit_online_only",
                "inference limits apply to online inference only, not batch (billing-rules §4)",
            )
        if e.prefix_caching:
            raise Rejected(
                "inference_limit_with_prefix_caching",
                "an inference limit cannot be used together with prefix caching (billing-rules §4)",
            )
        if e.tpm_guarantee:
            raise Rejected(
                "inference_limit_with_tpm_guarantee",
                "an inference limit cannot be set on an endpoint with a TPM guarantee pack or "
                "model units (billing-rules §4)",
            )
        if e.model not in s.activated_models:
            raise Rejected(
                "inference_limit_model_not_activated",
                f"{e.model} is not activated; inference limits need an activated, token post-paid "
                "model (billing-rules §4)",
            )
        version = profile.versions[-1]
        if ("tokens", e.model) not in version.rows:
            raise Rejected(
                "inference_limit_model_type",
                f"{e.model} is not billed by tokens; inference limits need a token post-paid "
                "model (billing-rules §4)",
            )
        effective = e.effective_time if e.effective_time is not None else e.event_time
        s.limits[e.model] = InferenceLimit(e.limit_tokens, effective)
        s.limit_changed_at[e.model] = e.event_time

    def _on_inference_limit_removed(self, s, e, profile, fx):
        self._limit_rules(s, e, profile)
        if e.model not in s.limits:
            raise Rejected("no_inference_limit", f"{e.model} has no inference limit to remove")
        del s.limits[e.model]
        s.limit_changed_at[e.model] = e.event_time

    def _on_trial_claimed(self, s, e, profile, fx):
        self._known_model(profile, e)
        quota = profile.trial_by_model.get(e.model)
        if quota is None:
            raise Rejected(
                "no_trial_for_model", f"{e.model} offers no free trial in profile {profile.name!r}"
            )
        if quota.id in s.trials:
            raise Rejected(
                "trial_already_claimed",
                f"trial {quota.id!r} was already claimed; one claim per main account per model, "
                "ever",
            )
        self._claim(s, profile, quota, e.event_time)

    def _on_sub_account_linked(self, s, e, profile, fx):
        if e.sub_account_id is None:
            raise Rejected("missing_field", "sub_account_linked requires sub_account_id")
        if e.sub_account_id == s.main_account_id:
            raise Rejected("invalid_field", "a main account cannot be its own sub-account")
        if e.sub_account_id not in s.sub_accounts:
            _room_for(s.sub_accounts, "linked sub-accounts", MAX_SUB_ACCOUNTS)
        s.sub_accounts.add(e.sub_account_id)

    @staticmethod
    def _known_model(profile: Profile, e: AccountEvent) -> None:
        if e.model is None:
            raise Rejected("missing_field", f"{e.type} requires model")
        if e.model not in profile.models:
            raise Rejected(
                "unknown_model", f"model {e.model!r} has no price in profile {profile.name!r}"
            )

    @staticmethod
    def _claim(s: AccountState, profile: Profile, quota, when: int) -> Trial:
        trial = Trial(
            quota.id, quota.unit, quota.amount, quota.amount, when, when + quota.valid_days * DAY_MS
        )
        s.trials[quota.id] = trial
        return trial

    # ================================================================ usage

    def apply_usage(self, s: AccountState, e: UsageEvent, fx: Effects) -> None:
        if e.account_id != s.main_account_id and e.account_id not in s.sub_accounts:
            raise Rejected(
                "unknown_sub_account",
                f"account {e.account_id!r} is not linked to main account {s.main_account_id!r}",
            )
        profile = self.profiles[s.profile]
        kb_used = self._kb_used(s, e) if e.item == "kb_storage" else None
        rating = rate(profile, e, kb_used)
        self._kb_take(s, e, rating)
        now = e.event_time
        splits: list[Split] = []
        flags: list[str] = []
        unbilled = ZERO
        reason: str | None = None
        if e.fine_tuned:
            flags.append("fine_tuned")
        if rating.billed_elsewhere:
            flags.append("billed_elsewhere")
        else:
            if s.status != "active":
                flags.append(s.status)  # rated, recorded and flagged (billing-rules §5)
            remaining, splits = self._pay(s, profile, e, rating, fx)
            if remaining > 0:
                unbilled, reason = remaining, self._stop_reason(s, profile, e)
                self._on_uncovered(s, e, reason, fx)
            elif e.model is not None:
                s.stopped_models.discard(e.model)
            self._count_inference_limit(s, e, rating, fx, flags)
        fx.deduction = self._deduction(s, profile, e, rating, splits, unbilled, reason, flags)
        charged = any(sp.bucket_kind in ("cash", "voucher") for sp in splits)
        self._after_balance_change(
            s, profile, now, e.account_id, [e.event_id], e.trace_id, fx, charged=charged
        )

    @staticmethod
    def _kb_used(s: AccountState, e: UsageEvent) -> list[Decimal | None]:
        """The free GB the main account's samples already took in each hour of this sample (None:
        the hour has closed and its allowance is forgotten, so none is left)."""
        return [
            None if hour < s.kb_closed_before else s.kb_free_used.get(str(hour), ZERO)
            for hour, _ in kb_hours(e)
        ]

    @staticmethod
    def _kb_take(s: AccountState, e: UsageEvent, rating: Rating) -> None:
        """Record the allowance this sample took: once per main account and clock hour, consumed in
        processing order (README "Knowledge-base storage")."""
        if not rating.kb_free_gb:
            return
        for (hour, _), take in zip(kb_hours(e), rating.kb_free_gb, strict=True):
            if take > 0:
                key = str(hour)
                s.kb_free_used[key] = s.kb_free_used.get(key, ZERO) + take

    @staticmethod
    def close_kb_hours(s: AccountState, clock: int, lateness_ms: int) -> None:
        """Forget the allowance of every clock hour that has closed (its end plus the allowed
        lateness reached, as settlement periods close): the state keeps open hours only."""
        closed_before = max(0, (clock - lateness_ms) // HOUR_MS)
        if closed_before <= s.kb_closed_before:
            return
        s.kb_closed_before = closed_before
        if s.kb_free_used:
            s.kb_free_used = {k: v for k, v in s.kb_free_used.items() if int(k) >= closed_before}

    def _pay(
        self, s: AccountState, profile: Profile, e: UsageEvent, rating: Rating, fx: Effects
    ) -> tuple[Decimal, list[Split]]:
        """Allocate the rated amount to buckets in §3 order. Returns (uncovered amount, splits)."""
        splits: list[Split] = []
        remaining = rating.amount
        now = e.event_time
        policy = profile.policy
        safe = s.safe_trial_mode and not s.activated_models and policy.safe_trial is not None

        # 1. daily free points
        if (
            policy.daily_free
            and remaining > 0
            and profile.in_scope(policy.daily_free.scope, e.item, e.model, e.fine_tuned)
        ):
            remaining = self._pay_free(s, profile, e, remaining, splits, fx)

        # 2. the model's free trial quota (a trial is for the platform's model, not the account's
        # fine-tuned variant of it: README "Fine-tuned models")
        quota = profile.trial_by_model.get(e.model) if e.model and not e.fine_tuned else None
        if quota is not None and remaining > 0:
            assert e.model is not None  # a trial quota is found by model
            trial = s.trials.get(quota.id)
            if trial is None:
                trial = self._claim(s, profile, quota, now)  # auto-claimed on first use
            if e.model in s.safe_paused_models:
                pass  # safe trial mode paused this model: nothing more is drawn, nothing charged
            elif now < trial.expires_at and trial.remaining > 0:
                split = self._draw_trial(trial, rating)
                if split is not None:
                    splits.append(split)
                    remaining -= split.amount
                if trial.remaining == 0 and not trial.exhausted_alerted:
                    trial.exhausted_alerted = True
                    fx.alerts.append(
                        alert(
                            "trial_exhausted",
                            s.main_account_id,
                            e.account_id,
                            now,
                            trial.id,
                            f"free trial {trial.id} is used up",
                            model=e.model,
                            source_event_ids=[e.event_id],
                            trace_id=e.trace_id,
                        )
                    )
            if safe and policy.safe_trial is not None and e.model not in s.safe_paused_models:
                margin = trial.granted * policy.safe_trial.margin_fraction
                if trial.remaining < margin or now >= trial.expires_at:
                    s.safe_paused_models.add(e.model)
                    fx.alerts.append(
                        alert(
                            "model_paused",
                            s.main_account_id,
                            e.account_id,
                            now,
                            f"safe_trial:{e.model}",
                            f"{e.model} paused: safe trial mode and the free quota is nearly used "
                            "up",
                            model=e.model,
                            details={
                                "reason": "safe_trial_mode",
                                "trial_remaining": money(trial.remaining),
                            },
                            source_event_ids=[e.event_id],
                            trace_id=e.trace_id,
                        )
                    )
        if safe:
            return remaining, splits  # safe trial mode never charges

        # 3. packs in scope: earliest expiry, then purchase time, then id
        if remaining > 0 and s.packs:
            live = [
                p
                for p in s.packs
                if p.remaining > 0
                and p.expires_at > now
                and profile.in_scope(policy.packs[p.kind].scope, e.item, e.model, e.fine_tuned)
            ]
            for pack in sorted(live, key=lambda p: (p.expires_at, p.acquired_at, p.id)):
                take = min(remaining, pack.remaining)
                pack.remaining -= take
                remaining -= take
                splits.append(
                    Split(
                        "pack", pack.id, take, profile.to_price_unit(take), profile.price_unit_name
                    )
                )
                if remaining == 0:
                    break

        # A model with a free quota is used for free until post-paid is enabled (Ark: the model is
        # activated); past the quota it is then stopped rather than charged (billing-rules §3).
        post_paid = s.post_paid or (e.model is not None and e.model in s.activated_models)
        if quota is not None and not post_paid:
            return remaining, splits

        # 4. vouchers, earliest expiry first
        if remaining > 0 and s.vouchers:
            live = [v for v in s.vouchers if v.remaining > 0 and v.expires_at > now]
            for voucher in sorted(live, key=lambda v: (v.expires_at, v.acquired_at, v.id)):
                take = min(remaining, voucher.remaining)
                voucher.remaining -= take
                remaining -= take
                splits.append(Split("voucher", voucher.id, take, take, s.currency))
                if remaining == 0:
                    break

        # 5. cash; negative only when post-paid
        if remaining > 0:
            take = remaining if post_paid else min(remaining, max(s.cash, ZERO))
            if take > 0:
                s.cash -= take
                remaining -= take
                splits.append(Split("cash", "cash", take, take, s.currency))
                if not post_paid and s.cash < 0:  # an invariant (not stripped by python -O)
                    raise AssertionError(
                        f"pre-paid account {s.main_account_id!r} would be charged below zero"
                    )
        return remaining, splits

    def _pay_free(
        self,
        s: AccountState,
        profile: Profile,
        e: UsageEvent,
        remaining: Decimal,
        splits: list[Split],
        fx: Effects,
    ) -> Decimal:
        """The event's local day's free points, if that day is still within the window (README
        'Decisions'); the exhaustion alert once per account and day."""
        daily = profile.policy.daily_free
        assert daily is not None  # called only for profiles with daily free points
        day = local_day(profile.timezone, e.event_time)
        self._prune_free_days(s, profile.timezone, stream_clock(s, e.event_time))
        if s.free_horizon is not None and day < s.free_horizon:
            return remaining  # a day no longer kept: its allowance counts as used up
        grant = profile.to_currency(daily.amount)
        used = s.free_used.get(day, ZERO)
        take = min(remaining, grant - used)
        if take > 0:
            s.free_used[day] = used + take
            splits.append(
                Split(
                    "free",
                    f"daily:{day}",
                    take,
                    profile.to_price_unit(take),
                    profile.price_unit_name,
                )
            )
            remaining -= take
        if s.free_used.get(day, ZERO) >= grant and day not in s.free_exhausted_days:
            s.free_exhausted_days = sorted({*s.free_exhausted_days, day})
            fx.alerts.append(
                alert(
                    "free_quota_exhausted",
                    s.main_account_id,
                    e.account_id,
                    e.event_time,
                    day,
                    f"daily free {profile.price_unit_name} for {day} are used up",
                    model=e.model,
                    source_event_ids=[e.event_id],
                    trace_id=e.trace_id,
                )
            )
        return remaining

    @staticmethod
    def _draw_trial(trial: Trial, rating: Rating) -> Split | None:
        """Token quotas cover token
        kinds in rating-line order; credit and image quotas whole units."""
        covered_amount = ZERO
        covered_units = ZERO
        for line in rating.lines:
            if trial.remaining <= 0:
                break
            if trial.unit == "tokens":
                n = min(trial.remaining, line.units)
                cost = n
            elif trial.unit == "images":
                n = min(
                    trial.remaining.to_integral_value(ROUND_FLOOR),
                    line.units.to_integral_value(ROUND_FLOOR),
                )
                cost = n
            else:  # credits: as many whole units (calls, seconds) as the credits left can pay for
                per = line.credits_per_unit
                if not per:
                    continue
                n = min(
                    (trial.remaining / per).to_integral_value(ROUND_FLOOR),
                    line.units.to_integral_value(ROUND_FLOOR),
                )
                cost = n * per
            if n <= 0:
                continue
            trial.remaining -= cost
            covered_units += cost
            covered_amount += n * line.unit_price
        if covered_units == 0:
            return None
        return Split("trial", trial.id, covered_amount, covered_units, trial.unit)

    @staticmethod
    def _stop_reason(s: AccountState, profile: Profile, e: UsageEvent) -> str:
        if s.safe_trial_mode and not s.activated_models and profile.policy.safe_trial is not None:
            return "safe_trial_mode"
        return "service_stopped"

    def _on_uncovered(self, s: AccountState, e: UsageEvent, reason: str, fx: Effects) -> None:
        key = e.model or e.item
        if reason == "service_stopped" and key not in s.stopped_models:
            s.stopped_models.add(key)
            fx.alerts.append(
                alert(
                    "service_stopped",
                    s.main_account_id,
                    e.account_id,
                    e.event_time,
                    f"{key}:{e.event_id}",
                    f"{key} stopped: the free quota is used up and post-paid is not enabled; "
                    "usage is recorded unbilled",
                    model=e.model,
                    source_event_ids=[e.event_id],
                    trace_id=e.trace_id,
                )
            )

    def _count_inference_limit(
        self, s: AccountState, e: UsageEvent, rating: Rating, fx: Effects, flags: list[str]
    ) -> None:
        limit = s.limits.get(e.model) if e.model else None
        if limit is None or e.mode != "online" or e.event_time < limit.effective_time:
            return
        if limit.reached:
            flags.append("inference_limit_reached")
        limit.used_tokens += e.total_tokens
        if not limit.reached and limit.used_tokens >= limit.limit_tokens:
            limit.reached = True
            fx.alerts.append(
                alert(
                    "model_paused",
                    s.main_account_id,
                    e.account_id,
                    e.event_time,
                    f"inference_limit:{e.model}:{limit.effective_time}",
                    f"{e.model} paused: inference limit of {limit.limit_tokens} tokens reached",
                    model=e.model,
                    details={"reason": "inference_limit", "used_tokens": str(limit.used_tokens)},
                    source_event_ids=[e.event_id],
                    trace_id=e.trace_id,
                )
            )

    @staticmethod
    def _prune_free_days(s: AccountState, tz: str, clock_ms: int) -> None:
        """Keep the free points of the last FREE_DAYS_KEPT calendar days (in the platform's time
        zone) up to stream time; an event of an older day gets none: its day's allowance is no
        longer known, so it counts as used up, never as a fresh grant. Counted in calendar days,
        not days with usage, so sparse usage does not stretch the window."""
        first_kept = (
            date.fromisoformat(local_day(tz, clock_ms)) - timedelta(days=FREE_DAYS_KEPT - 1)
        ).isoformat()
        if s.free_horizon is not None and s.free_horizon >= first_kept:
            return
        s.free_horizon = first_kept
        for old in [d for d in s.free_used if d < first_kept]:
            del s.free_used[old]
        s.free_exhausted_days = [d for d in s.free_exhausted_days if d >= first_kept]

    def _deduction(
        self, s, profile, e: UsageEvent, rating: Rating, splits, unbilled, reason, flags
    ) -> Deduction:
        return Deduction(
            deduction_id=deduction_id(s.main_account_id, e.event_id),
            event_id=e.event_id,
            trace_id=e.trace_id,
            account_id=e.account_id,
            main_account_id=s.main_account_id,
            event_time=e.event_time,
            profile=profile.name,
            currency=s.currency,
            price_version=rating.price_version,
            item=e.item,
            model=e.model,
            variant=e.variant,
            quantities=rating.quantities,
            lines=tuple(
                DeductionLine(ln.component, ln.units, ln.unit_price, ln.amount)
                for ln in rating.lines
            ),
            rated_amount=rating.amount,
            splits=tuple(splits),
            unbilled_amount=unbilled,
            unbilled_reason=reason,
            billed_elsewhere=rating.billed_elsewhere,
            flags=flags,
            balance_after=s.available_balance(e.event_time),
            settlement_period=settlement_period(e.item),
        )

    # ======================================================= balance-driven status and alerts

    def _after_balance_change(
        self,
        s: AccountState,
        profile: Profile,
        now: int,
        account_id: str,
        source: list[str],
        trace_id: str,
        fx: Effects,
        *,
        charged: bool,
    ) -> None:
        s.stream_time = max(s.stream_time, now)
        available = s.available_balance(now)
        # balance below the user's threshold, re-armed once it is above again
        if s.balance_threshold is not None:
            if available < s.balance_threshold and s.threshold_armed:
                s.threshold_armed = False
                fx.alerts.append(
                    alert(
                        "balance_below_threshold",
                        s.main_account_id,
                        account_id,
                        now,
                        f"below:{now}:{source[0]}",
                        f"available balance {money(available)} {s.currency} is below the "
                        f"threshold {money(s.balance_threshold)}",
                        details={
                            "available": money(available),
                            "threshold": money(s.balance_threshold),
                        },
                        source_event_ids=source,
                        trace_id=trace_id,
                    )
                )
            elif available >= s.balance_threshold and not s.threshold_armed:
                s.threshold_armed = True
        # arrears (post-paid): at or below zero suspends at once; a top-up above zero resumes
        if s.status == "released":
            return
        # Arrears start when a charge leaves the available balance at or below zero (an account
        # opened with an empty balance owes nothing yet).
        if (
            charged
            and (s.post_paid or s.activated_models)
            and available <= 0
            and s.arrears_since is None
        ):
            # never dated before the clearing it follows (a late charge of an earlier time)
            started = max(now, s.arrears_changed_at)
            s.arrears_since = s.arrears_changed_at = started
            s.arrears_episode += 1
            s.grace_reminded = False
            fx.alerts.append(
                alert(
                    "arrears_started",
                    s.main_account_id,
                    account_id,
                    started,
                    f"arrears:{s.arrears_episode}",
                    f"account in arrears: available balance {money(available)} {s.currency}",
                    details={"available": money(available)},
                    source_event_ids=source,
                    trace_id=trace_id,
                )
            )
        if s.arrears_since is not None:
            if available > 0:
                episode = s.arrears_episode
                # a late top-up (dated before the charge that started the arrears) clears them
                # when they were there to clear, not before they started
                cleared = max(now, s.arrears_since, s.arrears_changed_at)
                s.arrears_since = None
                s.arrears_changed_at = cleared
                fx.alerts.append(
                    alert(
                        "arrears_cleared",
                        s.main_account_id,
                        account_id,
                        cleared,
                        f"arrears:{episode}",
                        f"arrears cleared: available balance {money(available)} {s.currency}",
                        details={"available": money(available)},
                        source_event_ids=source,
                        trace_id=trace_id,
                    )
                )
                if s.status == "suspended":
                    self._set_status(s, "active", None, fx)
            elif s.status == "active" and self._suspend_now(s, profile, now):
                self._set_status(s, "suspended", "arrears", fx)

    @staticmethod
    def _suspend_now(s: AccountState, profile: Profile, now: int) -> bool:
        daily = profile.policy.daily_free
        if (
            profile.policy.arrears.suspend_when_free_used_up_despite_legacy_packs
            and daily is not None
        ):
            # Coze: suspended once the day's free points are used up, whatever legacy packs remain
            day = local_day(profile.timezone, now)
            if s.free_horizon is not None and day < s.free_horizon:
                return True  # a day no longer kept counts as used up (see _prune_free_days)
            used = s.free_used.get(day, ZERO)
            return used >= profile.to_currency(daily.amount)
        return True

    @staticmethod
    def _set_status(s: AccountState, status: str, reason: str | None, fx: Effects) -> None:
        if s.status != status or s.status_reason != reason:
            s.status, s.status_reason = status, reason
            fx.status_changed = True

    def advance_time(self, s: AccountState, profile: Profile, clock: int, fx: Effects) -> None:
        """Deadlines that follow stream time (the partition clock): the grace reminder and release,
        trial expiry notices. Each alert carries its deadline as its time, so it is the same alert
        whether a tick or the account's next event finds it due."""
        arrears = profile.policy.arrears
        main = s.main_account_id
        if s.arrears_since is not None and s.status != "released":
            grace_end = s.arrears_since + arrears.grace_days * DAY_MS
            reminder = grace_end - arrears.reminder_hours_before * HOUR_MS
            episode = f"arrears:{s.arrears_episode}"
            if not s.grace_reminded and clock >= reminder:
                s.grace_reminded = True
                fx.alerts.append(
                    alert(
                        "grace_ending",
                        main,
                        main,
                        reminder,
                        episode,
                        f"grace period ends at {millis_to_iso(grace_end)}; resources are released "
                        "then",
                        details={"grace_end": millis_to_iso(grace_end)},
                    )
                )
            if clock >= grace_end:
                self._set_status(s, "released", "arrears_grace_expired", fx)
                fx.status_time = grace_end
                fx.alerts.append(
                    alert(
                        "resources_released",
                        main,
                        main,
                        grace_end,
                        episode,
                        f"resources released after {arrears.grace_days} days of arrears",
                        details={"arrears_since": millis_to_iso(s.arrears_since)},
                    )
                )
        self._forget_expired_buckets(s, clock)
        quotas = profile.policy.trials_by_id
        for _, trial in sorted(s.trials.items()):  # in key order: the order a restored state has
            quota = quotas.get(trial.id)
            notice_at = trial.expires_at - (quota.expiring_notice_days if quota else 7) * DAY_MS
            # due once stream time passes the notice time, wherever the clock lands (a tick, a
            # duplicate or the next event): the same alert, stamped at the notice time
            if not trial.expiring_alerted and trial.remaining > 0 and notice_at <= clock:
                trial.expiring_alerted = True
                fx.alerts.append(
                    alert(
                        "trial_expiring",
                        main,
                        main,
                        notice_at,
                        trial.id,
                        f"free trial {trial.id} expires at {millis_to_iso(trial.expires_at)} with "
                        f"{money(trial.remaining)} {trial.unit} left",
                        details={
                            "expires_at": millis_to_iso(trial.expires_at),
                            "remaining": money(trial.remaining),
                        },
                    )
                )

    def _forget_expired_buckets(self, s: AccountState, clock: int) -> None:
        """Vouchers and packs expired more than the dedupe horizon ago can pay for nothing any more:
        every event they could cover is older than the horizon, and a grant that names them again
        is refused (its expiry is before its own event time). Forgetting them bounds the state."""
        if not s.vouchers and not s.packs:
            return
        cutoff = clock - self.horizon_ms
        if any(b.expires_at < cutoff for b in s.vouchers) or any(
            b.expires_at < cutoff for b in s.packs
        ):
            s.vouchers = [b for b in s.vouchers if b.expires_at >= cutoff]
            s.packs = [b for b in s.packs if b.expires_at >= cutoff]

    @staticmethod
    def next_deadline(s: AccountState, profile: Profile) -> int | None:
        """The earliest stream time at which advance_time has something to do."""
        times = []
        if s.arrears_since is not None and s.status != "released":
            arrears = profile.policy.arrears
            grace_end = s.arrears_since + arrears.grace_days * DAY_MS
            times.append(
                grace_end
                if s.grace_reminded
                else grace_end - arrears.reminder_hours_before * HOUR_MS
            )
        quotas = profile.policy.trials_by_id
        for t in s.trials.values():
            if not t.expiring_alerted and t.remaining > 0:
                quota = quotas.get(t.id)
                times.append(t.expires_at - (quota.expiring_notice_days if quota else 7) * DAY_MS)
        return min(times) if times else None
