"""Per-main-account state: buckets, controls, status and the memory of applied events.

One ``AccountState`` is one value in the faust table (keyed by main account id), so balances and
the record of which events were applied change together in one changelog record.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from decimal import Decimal
from typing import Any, TypeVar

import orjson

from streams.ledger.state_codec import pack_state, unpack_state
from streams.limits import MAX_STATE_BYTES
from streams.settlement.periods import OpenPeriod

ZERO = Decimal(0)
LEGACY_WINDOW_MS = 35 * 86_400_000  # the default dedupe horizon
STATE_VERSION = 2  # 1: kept a window of the last 1,024 event ids; 2: ids live in the dedupe store


def legacy_fingerprint(event_id: str) -> str:
    """How version 1 recorded an event id in the account record (read for upgrades only)."""
    return hashlib.blake2b(event_id.encode(), digest_size=12).hexdigest()


_T = TypeVar("_T")


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
    def from_dict(cls, d: dict[str, Any]) -> Bucket:
        return cls(
            d["id"],
            d["kind"],
            Decimal(d["remaining"]),
            Decimal(d["granted"]),
            d["expires_at"],
            d["acquired_at"],
        )


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
    def from_dict(cls, d: dict[str, Any]) -> Trial:
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
    def from_dict(cls, d: dict[str, Any]) -> InferenceLimit:
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
    # every kept local day whose free_quota_exhausted went out: a late event for an earlier day
    # does not fire it again; pruned with free_used at free_horizon
    free_exhausted_days: list[str] = field(default_factory=list)
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
    # when the latest arrears_started / arrears_cleared took effect: the next one is never dated
    # before it, whatever the event time of the late event that triggers it (0: none yet)
    arrears_changed_at: int = 0
    status_since: int = 0  # when the current status took effect (0: written before this field)
    # per-account sequence of the status and alert records, in processing order; readers pick the
    # latest by it, since effective times of late events may tie or run backwards
    record_sequence: int = 0
    grace_reminded: bool = False
    stream_time: int = 0
    applied_events: int = (
        0  # sequence of applied events: what the dedupe entries are checked against
    )
    # ids a version-1 record remembered, consulted until ``legacy_until`` (one horizon after the
    # upgrade), so that an upgrade does not forget the duplicates of events applied just before it
    legacy_event_ids: list[str] = field(default_factory=list)
    legacy_until: int = 0
    offsets: dict[str, int] = field(default_factory=dict)  # input partition -> last applied offset
    periods: dict[str, OpenPeriod] = field(default_factory=dict)  # open settlement periods
    settled_until: int = 0  # the partition clock this account has been advanced to
    minutes: dict[str, dict[str, Any]] = field(default_factory=dict)  # open per-minute usage counts
    # knowledge-base allowance: clock hour (index since the epoch, as a string) -> free GB already
    # taken by the main account's samples that hour; only hours not yet closed are kept
    kb_free_used: dict[str, Decimal] = field(default_factory=dict)
    kb_closed_before: int = 0  # hours before this one are closed: their allowance is gone

    # ------------------------------------------------------------ dedupe (upgrades from version 1)

    def seen_before_upgrade(self, event_id: str, clock: int) -> bool:
        if not self.legacy_event_ids:
            return False
        if clock > self.legacy_until:
            self.legacy_event_ids = []
            return False
        return legacy_fingerprint(event_id) in self.legacy_event_ids

    # ------------------------------------------------------------ balances

    def available_balance(self, now: int) -> Decimal:
        """Cash plus live vouchers (billing-rules §5: arrears is this at or below zero)."""
        return self.cash + sum((v.remaining for v in self.vouchers if v.expires_at > now), ZERO)

    # ------------------------------------------------------------ serialization

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "main_account_id": self.main_account_id,
            "profile": self.profile,
            "currency": self.currency,
            "opened_at": self.opened_at,
            "post_paid": self.post_paid,
            "cash": str(self.cash),
            "balance_threshold": None
            if self.balance_threshold is None
            else str(self.balance_threshold),
            "threshold_armed": self.threshold_armed,
            "safe_trial_mode": self.safe_trial_mode,
            "vouchers": [v.to_dict() for v in self.vouchers],
            "packs": [p.to_dict() for p in self.packs],
            "free_used": {k: str(v) for k, v in sorted(self.free_used.items())},
            "free_exhausted_days": list(self.free_exhausted_days),
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
            "arrears_changed_at": self.arrears_changed_at,
            "status_since": self.status_since,
            "record_sequence": self.record_sequence,
            "grace_reminded": self.grace_reminded,
            "stream_time": self.stream_time,
            "applied_events": self.applied_events,
            "legacy_event_ids": list(self.legacy_event_ids),
            "legacy_until": self.legacy_until,
            "offsets": dict(sorted(self.offsets.items())),
            "periods": {k: v.to_dict() for k, v in sorted(self.periods.items())},
            "settled_until": self.settled_until,
            "minutes": dict(sorted(self.minutes.items())),
            "kb_free_used": {
                k: str(v) for k, v in sorted(self.kb_free_used.items(), key=lambda kv: int(kv[0]))
            },
            "kb_closed_before": self.kb_closed_before,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AccountState:
        """Reads every version written so far; a field missing from an older record takes its
        default, and a field this version does not know (written by a newer one) is ignored."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in d.items() if k in known}
        decimals = {
            "cash": Decimal,
            "balance_threshold": lambda v: None if v is None else Decimal(v),
        }
        for name, conv in decimals.items():
            if name in values:
                values[name] = conv(values[name])
        convert: dict[str, Callable[[Any], Any]] = {
            "vouchers": lambda v: [Bucket.from_dict(x) for x in v],
            "packs": lambda v: [Bucket.from_dict(x) for x in v],
            "free_used": lambda v: {k: Decimal(x) for k, x in v.items()},
            "kb_free_used": lambda v: {k: Decimal(x) for k, x in v.items()},
            "trials": lambda v: {k: Trial.from_dict(x) for k, x in v.items()},
            "limits": lambda v: {k: InferenceLimit.from_dict(x) for k, x in v.items()},
            "activated_models": set,
            "sub_accounts": set,
            "stopped_models": set,
            "safe_paused_models": set,
            "limit_changed_at": dict,
            "offsets": dict,
            "periods": lambda v: {k: OpenPeriod.from_dict(x) for k, x in v.items()},
            "minutes": dict,
            "legacy_event_ids": list,
            "free_exhausted_days": list,
        }
        for name, conv in convert.items():
            if name in values:
                values[name] = conv(values[name])
        state = cls(**values)
        older_alerted = d.get("free_exhausted_alerted")  # the one day records before the list kept
        if older_alerted and older_alerted not in state.free_exhausted_days:
            state.free_exhausted_days = sorted({*state.free_exhausted_days, older_alerted})
        if d.get("version", 1) == 1 and d.get("recent_events"):
            state.legacy_event_ids = list(d["recent_events"])
            state.legacy_until = (
                max(d.get("stream_time", 0), d.get("settled_until", 0)) + LEGACY_WINDOW_MS
            )
        return state

    def dumps(self) -> bytes:
        return orjson.dumps(self.to_dict())

    def clone(self) -> AccountState:
        """An independent copy, to roll back to: every container and bucket copied, immutable
        values (str, int, Decimal) shared. About a tenth of the cost of ``dumps`` plus ``loads``
        (the engine takes one per event); a test walks both object graphs for shared mutables."""
        c = _shallow(self)
        c.vouchers = [_shallow(b) for b in self.vouchers]
        c.packs = [_shallow(b) for b in self.packs]
        c.free_used = dict(self.free_used)
        c.free_exhausted_days = list(self.free_exhausted_days)
        c.trials = {k: _shallow(t) for k, t in self.trials.items()}
        c.activated_models = set(self.activated_models)
        c.limits = {k: _shallow(v) for k, v in self.limits.items()}
        c.limit_changed_at = dict(self.limit_changed_at)
        c.sub_accounts = set(self.sub_accounts)
        c.stopped_models = set(self.stopped_models)
        c.safe_paused_models = set(self.safe_paused_models)
        c.legacy_event_ids = list(self.legacy_event_ids)
        c.offsets = dict(self.offsets)
        c.periods = {k: v.copy() for k, v in self.periods.items()}
        c.minutes = {k: dict(v) for k, v in self.minutes.items()}  # flat: ints and strings
        c.kb_free_used = dict(self.kb_free_used)
        return c

    @classmethod
    def loads(cls, data: bytes) -> AccountState:
        """A state as ``dumps`` wrote it, or as stored (``stored``): both are read."""
        return cls.from_dict(orjson.loads(unpack_state(data, MAX_STATE_BYTES)))

    def stored(self) -> bytes:
        """The table's value for this state: its JSON, compressed (streams/ledger/state_codec.py).
        The size limit applies to the JSON (``check_record_size`` on ``dumps``), the larger."""
        return pack_state(self.dumps())


def _shallow(obj: _T) -> _T:
    """A shallow copy of a plain dataclass instance, without copy.copy's reduce protocol."""
    c = object.__new__(type(obj))
    c.__dict__.update(obj.__dict__)
    return c
