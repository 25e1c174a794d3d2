"""Per-main-account state: buckets, controls, status and the memory of applied events.

One ``AccountState`` is one value in the faust table (keyed by main account id), so balances and
the record of which events were applied change together in one changelog record.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import orjson

ZERO = Decimal(0)
RECENT_EVENT_IDS = 1024  # producer duplicates arriving within this many events of one account are caught


def event_fingerprint(event_id: str) -> str:
    """Short stable hash of an event id (collision odds ~1e-20 within one account's window)."""
    return hashlib.blake2b(event_id.encode(), digest_size=12).hexdigest()


@dataclass
class Bucket:
    """A pack or a voucher: money (in currency) that expires."""

    id: str
    kind: str  # pack kind (coze_unified, legacy_agent, ...) or "voucher"
    remaining: Decimal
    granted: Decimal
    expires_at: int
    acquired_at: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "remaining": str(self.remaining),
            "granted": str(self.granted),
            "expires_at": self.expires_at,
            "acquired_at": self.acquired_at,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Bucket":
        return cls(d["id"], d["kind"], Decimal(d["remaining"]), Decimal(d["granted"]), d["expires_at"], d["acquired_at"])


@dataclass
class Trial:
    """A claimed free trial quota, in its own unit (tokens, images or credits)."""

    id: str
    unit: str
    granted: Decimal
    remaining: Decimal
    claimed_at: int
    expires_at: int
    expiring_alerted: bool = False
    exhausted_alerted: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "unit": self.unit,
            "granted": str(self.granted),
            "remaining": str(self.remaining),
            "claimed_at": self.claimed_at,
            "expires_at": self.expires_at,
            "expiring_alerted": self.expiring_alerted,
            "exhausted_alerted": self.exhausted_alerted,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Trial":
        return cls(
            d["id"],
            d["unit"],
            Decimal(d["granted"]),
            Decimal(d["remaining"]),
            d["claimed_at"],
            d["expires_at"],
            d["expiring_alerted"],
            d["exhausted_alerted"],
        )


@dataclass
class InferenceLimit:
    limit_tokens: int
    effective_time: int
    used_tokens: int = 0
    reached: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "limit_tokens": self.limit_tokens,
            "effective_time": self.effective_time,
            "used_tokens": self.used_tokens,
            "reached": self.reached,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "InferenceLimit":
        return cls(d["limit_tokens"], d["effective_time"], d["used_tokens"], d["reached"])


@dataclass
class AccountState:
    main_account_id: str
    profile: str
    currency: str
    opened_at: int
    post_paid: bool
    cash: Decimal = ZERO
    balance_threshold: Decimal | None = None
    threshold_armed: bool = True
    safe_trial_mode: bool = False
    vouchers: list[Bucket] = field(default_factory=list)
    packs: list[Bucket] = field(default_factory=list)
    free_used: dict[str, Decimal] = field(default_factory=dict)  # local day -> used (currency)
    free_exhausted_alerted: str | None = None  # the local day the alert went out
    free_horizon: str | None = None  # days before this one are forgotten: they get no free points
    trials: dict[str, Trial] = field(default_factory=dict)
    activated_models: set[str] = field(default_factory=set)
    limits: dict[str, InferenceLimit] = field(default_factory=dict)
    limit_changed_at: dict[str, int] = field(default_factory=dict)
    sub_accounts: set[str] = field(default_factory=set)
    stopped_models: set[str] = field(default_factory=set)
    safe_paused_models: set[str] = field(default_factory=set)
    status: str = "active"  # active, suspended, released
    status_reason: str | None = None
    arrears_since: int | None = None
    arrears_episode: int = 0
    grace_reminded: bool = False
    stream_time: int = 0
    recent_events: list[str] = field(default_factory=list)
    offsets: dict[str, int] = field(default_factory=dict)  # input partition -> last applied offset
    periods: dict[str, dict[str, Any]] = field(default_factory=dict)  # open settlement periods
    settled_until: int = 0  # the partition clock this account has been advanced to
    minutes: dict[str, dict[str, Any]] = field(default_factory=dict)  # open per-minute usage counts

    # ------------------------------------------------------------ dedupe

    def seen(self, fingerprint: str) -> bool:
        return fingerprint in self._recent_set()

    def remember(self, fingerprint: str) -> None:
        self.recent_events.append(fingerprint)
        if len(self.recent_events) > RECENT_EVENT_IDS:
            del self.recent_events[: len(self.recent_events) - RECENT_EVENT_IDS]
        self.__dict__.pop("_recent_cache", None)

    def _recent_set(self) -> set[str]:
        cached = self.__dict__.get("_recent_cache")
        if cached is None:
            cached = self.__dict__["_recent_cache"] = set(self.recent_events)
        return cached

    # ------------------------------------------------------------ balances

    def available_balance(self, now: int) -> Decimal:
        """Cash plus live vouchers (billing-rules §5: arrears is this at or below zero)."""
        return self.cash + sum((v.remaining for v in self.vouchers if v.expires_at > now), ZERO)

    # ------------------------------------------------------------ serialization

    def to_dict(self) -> dict[str, Any]:
        return {
            "main_account_id": self.main_account_id,
            "profile": self.profile,
            "currency": self.currency,
            "opened_at": self.opened_at,
            "post_paid": self.post_paid,
            "cash": str(self.cash),
            "balance_threshold": None if self.balance_threshold is None else str(self.balance_threshold),
            "threshold_armed": self.threshold_armed,
            "safe_trial_mode": self.safe_trial_mode,
            "vouchers": [v.to_dict() for v in self.vouchers],
            "packs": [p.to_dict() for p in self.packs],
            "free_used": {k: str(v) for k, v in sorted(self.free_used.items())},
            "free_exhausted_alerted": self.free_exhausted_alerted,
            "free_horizon": self.free_horizon,
            "trials": {k: t.to_dict() for k, t in sorted(self.trials.items())},
            "activated_models": sorted(self.activated_models),
            "limits": {k: v.to_dict() for k, v in sorted(self.limits.items())},
            "limit_changed_at": dict(sorted(self.limit_changed_at.items())),
            "sub_accounts": sorted(self.sub_accounts),
            "stopped_models": sorted(self.stopped_models),
            "safe_paused_models": sorted(self.safe_paused_models),
            "status": self.status,
            "status_reason": self.status_reason,
            "arrears_since": self.arrears_since,
            "arrears_episode": self.arrears_episode,
            "grace_reminded": self.grace_reminded,
            "stream_time": self.stream_time,
            "recent_events": list(self.recent_events),
            "offsets": dict(sorted(self.offsets.items())),
            "periods": dict(sorted(self.periods.items())),
            "settled_until": self.settled_until,
            "minutes": dict(sorted(self.minutes.items())),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "AccountState":
        return cls(
            main_account_id=d["main_account_id"],
            profile=d["profile"],
            currency=d["currency"],
            opened_at=d["opened_at"],
            post_paid=d["post_paid"],
            cash=Decimal(d["cash"]),
            balance_threshold=None if d["balance_threshold"] is None else Decimal(d["balance_threshold"]),
            threshold_armed=d["threshold_armed"],
            safe_trial_mode=d["safe_trial_mode"],
            vouchers=[Bucket.from_dict(v) for v in d["vouchers"]],
            packs=[Bucket.from_dict(p) for p in d["packs"]],
            free_used={k: Decimal(v) for k, v in d["free_used"].items()},
            free_exhausted_alerted=d["free_exhausted_alerted"],
            free_horizon=d["free_horizon"],
            trials={k: Trial.from_dict(t) for k, t in d["trials"].items()},
            activated_models=set(d["activated_models"]),
            limits={k: InferenceLimit.from_dict(v) for k, v in d["limits"].items()},
            limit_changed_at=dict(d["limit_changed_at"]),
            sub_accounts=set(d["sub_accounts"]),
            stopped_models=set(d["stopped_models"]),
            safe_paused_models=set(d["safe_paused_models"]),
            status=d["status"],
            status_reason=d["status_reason"],
            arrears_since=d["arrears_since"],
            arrears_episode=d["arrears_episode"],
            grace_reminded=d["grace_reminded"],
            stream_time=d["stream_time"],
            recent_events=list(d["recent_events"]),
            offsets=dict(d["offsets"]),
            periods=dict(d["periods"]),
            settled_until=d["settled_until"],
            minutes=dict(d["minutes"]),
        )

    def dumps(self) -> bytes:
        return orjson.dumps(self.to_dict())

    @classmethod
    def loads(cls, data: bytes) -> "AccountState":
        return cls.from_dict(orjson.loads(data))
