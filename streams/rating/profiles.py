"""Profiles: a price book plus an entitlement policy, loaded from YAML data files and validated.

A profile lives in one folder (``streams/profiles/<name>/price_book.yaml`` and ``policy.yaml``).
YAML numbers are read as ``Decimal`` (never float) and every validation error names the file,
the line and the key path, e.g.::

    streams/profiles/tokenhub/price_book.yaml:41 versions[0].rows[3].tiers[1].input: must be >= 0
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

PROFILES_DIR = Path(__file__).resolve().parents[1] / "profiles"
TOKEN_COMPONENTS = ("cache_hit", "input", "cache_write", "output", "reasoning")


class ProfileError(ValueError):
    """A profile file is wrong; the message names file, line, key and problem."""


# ---------------------------------------------------------------- YAML with exact decimals and
# lines


class _DecimalLoader(yaml.SafeLoader):
    pass


_SPECIAL_FLOATS = {".nan": "NaN", ".inf": "Infinity", "+.inf": "Infinity", "-.inf": "-Infinity"}


def _construct_decimal(loader: yaml.SafeLoader, node: yaml.Node) -> Decimal:
    text = loader.construct_scalar(node).replace("_", "")
    special = _SPECIAL_FLOATS.get(text.lower())
    try:
        # NaN and infinities load as such, so that validation names the key and refuses them
        return Decimal(special or text)
    except InvalidOperation:
        raise yaml.constructor.ConstructorError(
            None, None, f"{text!r} is not a number", node.start_mark
        ) from None


# Bounds of every decimal in a profile: finite, below 10^12, at most 12 digits after the point
# (the scale of the money columns). ``4e400``, ``.nan``, ``.inf`` or ``1e-999999`` are refused.
PROFILE_DECIMAL_MAX = Decimal(10) ** 12
PROFILE_DECIMAL_SCALE = 12


def _bounded(value: Decimal) -> Decimal:
    if not value.is_finite():
        raise ValueError(f"{value} is not a finite number")
    if not value.is_zero() and value.adjusted() >= PROFILE_DECIMAL_MAX.adjusted():
        raise ValueError(f"{value} is out of range (below 10^12)")
    _, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)  # finite (checked above)
    trailing_zeros = len(digits) - len("".join(map(str, digits)).rstrip("0"))
    if not value.is_zero() and exponent + trailing_zeros < -PROFILE_DECIMAL_SCALE:
        raise ValueError(f"{value} has more than {PROFILE_DECIMAL_SCALE} digits after the point")
    return value


Dec = Annotated[Decimal, AfterValidator(_bounded)]


_DecimalLoader.add_constructor("tag:yaml.org,2002:float", _construct_decimal)


def _line_index(node: yaml.Node, path: tuple = (), out: dict | None = None) -> dict[tuple, int]:
    out = {} if out is None else out
    out[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            out[path + (key.value,)] = key.start_mark.line + 1
            _line_index(value, path + (key.value,), out)
    elif isinstance(node, yaml.SequenceNode):
        for i, value in enumerate(node.value):
            _line_index(value, path + (i,), out)
    return out


def _load_yaml(path: Path) -> tuple[Any, dict[tuple, int]]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ProfileError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        column = exc.start - raw.rfind(b"\n", 0, exc.start)
        raise ProfileError(
            f"{path}:{line}: not UTF-8: byte 0x{raw[exc.start]:02x} at column {column}; "
            "profiles are UTF-8 text"
        ) from None
    lines: dict[tuple, int] = {}
    try:
        node = yaml.compose(text, Loader=_DecimalLoader)
        lines = _line_index(node) if node is not None else {}
        data = yaml.load(text, Loader=_DecimalLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        keys = [k for k, n in lines.items() if mark and n == mark.line + 1 and k]
        key = (" " + _key(max(keys, key=len))) if keys else ""
        raise ProfileError(
            f"{path}{where}{key}: not valid YAML: {getattr(exc, 'problem', exc)}"
        ) from None
    return data, lines


def _key(loc: tuple) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".") or "(top)"


def _explain(path: Path, lines: dict[tuple, int], exc: ValidationError) -> ProfileError:
    messages = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        line = None
        for n in range(len(loc), -1, -1):  # nearest enclosing node that has a line
            line = lines.get(loc[:n])
            if line:
                break
        key = _key(loc)
        messages.append(f"{path}:{line or '?'} {key}: {err['msg']}")
    return ProfileError("\n".join(messages))


# ---------------------------------------------------------------- price book


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)


NonNegative = Field(ge=0)


class TokenPrices(_Strict):
    """Prices of one tier, in the book's price unit per ``per_tokens`` tokens."""

    up_to: int | None = Field(
        default=None, gt=0, description="inclusive upper bound of input tokens; None = no bound"
    )
    input: Dec = NonNegative
    output: Dec = NonNegative
    cache_hit: Dec | None = Field(default=None, ge=0)
    cache_write: Dec | None = Field(default=None, ge=0)
    reasoning: Dec | None = Field(default=None, ge=0)


class PriceRow(_Strict):
    item: str
    model: str | None = None
    variant: str | None = None
    # token items
    per_tokens: int | None = Field(default=None, gt=0)
    input: Dec | None = Field(default=None, ge=0)
    output: Dec | None = Field(default=None, ge=0)
    cache_hit: Dec | None = Field(default=None, ge=0)
    cache_write: Dec | None = Field(default=None, ge=0)
    reasoning: Dec | None = Field(default=None, ge=0)
    tiers: tuple[TokenPrices, ...] | None = None
    # per-unit items
    unit: str | None = None
    price: Dec | None = Field(default=None, ge=0)
    credits: Dec | None = Field(default=None, ge=0)
    # credits carried by the event (seed 002: HY-3D "15~60积分/次"): the allowed range per call
    credits_min: Dec | None = Field(default=None, ge=0)
    credits_max: Dec | None = Field(default=None, ge=0)
    credit_kind: str | None = None
    free_gb: Dec | None = Field(default=None, ge=0)
    # labels
    fine_tuned: bool = False
    example: bool = False
    note: str | None = None

    @model_validator(mode="after")
    def _shape(self) -> PriceRow:
        from streams.ingest.events import TOKEN_ITEMS, USAGE_ITEMS

        if self.item not in USAGE_ITEMS:
            raise ValueError(
                f"item {self.item!r} is not a billing item ({', '.join(sorted(USAGE_ITEMS))})"
            )
        if self.item in TOKEN_ITEMS:
            if self.model is None:
                raise ValueError("token rows need a model")
            if self.per_tokens is None:
                raise ValueError("token rows need per_tokens (1000 or 1000000)")
            if self.tiers is None:
                if self.input is None or self.output is None:
                    raise ValueError("token rows need input and output prices, or tiers")
            else:
                if any(getattr(self, c) is not None for c in TOKEN_COMPONENTS):
                    raise ValueError("give prices either on the row or in tiers, not both")
                bounds = [t.up_to for t in self.tiers]
                if not bounds:
                    raise ValueError("tiers is empty")
                if any(b is None for b in bounds[:-1]):
                    raise ValueError("only the last tier may have no up_to")
                finite = [b for b in bounds if b is not None]
                if finite != sorted(set(finite)):
                    raise ValueError("tier bounds must increase strictly")
            if self.price is not None or self.credits is not None or self.credits_min is not None:
                raise ValueError("token rows take per-token prices, not price/credits")
        else:
            if self.fine_tuned:
                raise ValueError(
                    "fine_tuned rows are token rows (a fine-tuned variant of a base model)"
                )
            if self.unit is None:
                raise ValueError(
                    f"{self.item} rows need a unit (call, char, minute, GB-hour, image, second)"
                )
            ranged = self.credits_min is not None or self.credits_max is not None
            if [self.price is not None, self.credits is not None, ranged].count(True) != 1:
                raise ValueError(
                    "give exactly one of price, credits, or credits_min and credits_max"
                )
            if ranged and (
                self.credits_min is None
                or self.credits_max is None
                or self.credits_min > self.credits_max
            ):
                raise ValueError("a credit range needs credits_min <= credits_max")
            if (self.credits is not None or ranged) and self.credit_kind is None:
                raise ValueError("credit-priced rows need credit_kind")
            if self.per_tokens is not None or self.tiers is not None:
                raise ValueError("per-unit rows take price or credits, not token prices")
        return self

    @property
    def key(self) -> tuple[str, str | None, str | None, bool]:
        return (self.item, self.model, self.variant, self.fine_tuned)

    @property
    def credits_from_event(self) -> bool:
        """The event carries the credits of the call; the row gives their allowed range."""
        return self.credits_min is not None

    def token_tiers(self) -> tuple[TokenPrices, ...]:
        return self._token_tiers

    @cached_property
    def _token_tiers(self) -> tuple[TokenPrices, ...]:
        # once per row: building a validated TokenPrices per event was an eighth of the core's time
        if self.tiers is not None:
            return self.tiers
        # a token row without tiers has input and output prices (checked by _shape)
        assert self.input is not None and self.output is not None
        return (
            TokenPrices(
                up_to=None,
                input=self.input,
                output=self.output,
                cache_hit=self.cache_hit,
                cache_write=self.cache_write,
                reasoning=self.reasoning,
            ),
        )


class BookVersion(_Strict):
    version: str
    effective_from: datetime
    note: str | None = None
    rows: tuple[PriceRow, ...]

    @field_validator("effective_from")
    @classmethod
    def _aware(cls, v: datetime) -> datetime:
        if v.tzinfo is None:
            raise ValueError("effective_from needs a UTC offset, e.g. 2026-04-03T00:00:00+08:00")
        return v


class PriceBookFile(_Strict):
    profile: str
    currency: str
    price_unit: Literal["currency", "points"] = "currency"
    points_per_currency_unit: Dec | None = Field(default=None, gt=0)
    timezone: str = "Asia/Shanghai"
    credit_values: dict[str, Dec] = {}
    billed_elsewhere_model_prefixes: tuple[str, ...] = ()
    source: str | None = None
    versions: tuple[BookVersion, ...]

    @model_validator(mode="after")
    def _check(self) -> PriceBookFile:
        if self.price_unit == "points" and self.points_per_currency_unit is None:
            raise ValueError("price_unit points needs points_per_currency_unit")
        if not self.versions:
            raise ValueError("a price book needs at least one version")
        times = [v.effective_from for v in self.versions]
        if times != sorted(times) or len(set(times)) != len(times):
            raise ValueError("versions must be in strictly increasing effective_from order")
        for v in self.versions:
            keys = [r.key for r in v.rows]
            dupes = {k for k in keys if keys.count(k) > 1}
            if dupes:
                raise ValueError(f"version {v.version} prices {sorted(map(str, dupes))[0]} twice")
            for r in v.rows:
                if r.credit_kind is not None and r.credit_kind not in self.credit_values:
                    raise ValueError(f"credit_kind {r.credit_kind!r} has no entry in credit_values")
        return self


# ---------------------------------------------------------------- policy


class Scope(_Strict):
    """Which usage a bucket may pay for."""

    items: tuple[str, ...]
    model_prefixes: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    exclude_fine_tuned: bool = False


class DailyFree(_Strict):
    amount: Dec = Field(gt=0, description="in the book's price unit (points for coze-pro)")
    scope: str


class TrialQuota(_Strict):
    id: str
    models: tuple[str, ...]
    unit: Literal["tokens", "images", "credits"]
    amount: Dec = Field(gt=0)
    valid_days: int = Field(gt=0)
    expiring_notice_days: int = Field(default=7, ge=0)


class PackKind(_Strict):
    scope: str
    purchasable_until: datetime | None = None
    note: str | None = None


class SafeTrial(_Strict):
    margin_fraction: Dec = Field(default=Decimal("0.01"), ge=0, lt=1)


class Arrears(_Strict):
    grace_days: int = Field(default=15, gt=0)
    reminder_hours_before: int = Field(default=4, ge=0)
    suspend_when_free_used_up_despite_legacy_packs: bool = False


class InferenceLimits(_Strict):
    allowed: bool = False
    min_spacing_hours: int = Field(default=2, ge=0)


# Account events every profile takes; the others only where the policy lists them (billing-rules:
# model activation is Volcengine Ark's, packs are sold on Coze, trials claimed on TokenHub and Ark).
BASE_ACCOUNT_EVENTS = (
    "account_opened",
    "top_up",
    "voucher_granted",
    "post_paid_switched",
    "balance_threshold_set",
    "sub_account_linked",
)


class Limits(_Strict):
    """Per-request bounds of one profile's usage events: above them an event is dead-lettered as
    ``quantity_out_of_range`` instead of being charged (a producer bug, not a real request)."""

    max_tokens_per_request: int = Field(
        default=4_000_000, gt=0, description="input + output tokens of one request"
    )
    max_quantity: Dec = Field(
        default=Decimal(1_000_000), gt=0, description="quantity of one event of any per-unit item"
    )
    max_quantity_by_item: dict[str, Dec] = {}
    max_hours: Dec = Field(
        default=Decimal(744), gt=0, description="hours of one kb_storage sample (744 = 31 days)"
    )

    @field_validator("max_quantity_by_item")
    @classmethod
    def _items(cls, v: dict[str, Decimal]) -> dict[str, Decimal]:
        from streams.ingest.events import TOKEN_ITEMS, USAGE_ITEMS

        for item, bound in v.items():
            if item not in USAGE_ITEMS or item in TOKEN_ITEMS:
                raise ValueError(f"{item!r} is not a per-unit billing item")
            if bound <= 0:
                raise ValueError(f"the bound of {item} must be greater than 0")
        return v


class PolicyFile(_Strict):
    post_paid_default: bool = False
    account_events: tuple[str, ...] = BASE_ACCOUNT_EVENTS
    limits: Limits = Limits()
    daily_free: DailyFree | None = None
    trials: tuple[TrialQuota, ...] = ()

    @cached_property
    def trials_by_id(self) -> dict[str, TrialQuota]:
        return {q.id: q for q in self.trials}

    scopes: dict[str, Scope] = {}
    packs: dict[str, PackKind] = {}
    safe_trial: SafeTrial | None = None
    arrears: Arrears = Arrears()
    inference_limits: InferenceLimits = InferenceLimits()
    note: str | None = None

    @model_validator(mode="after")
    def _check(self) -> PolicyFile:
        from streams.ingest.events import ACCOUNT_EVENT_TYPES

        unknown = [t for t in self.account_events if t not in ACCOUNT_EVENT_TYPES]
        if unknown:
            raise ValueError(
                f"account_events: {unknown[0]!r} is not an account event type "
                f"({', '.join(sorted(ACCOUNT_EVENT_TYPES))})"
            )
        if "account_opened" not in self.account_events:
            raise ValueError("account_events must include account_opened")
        needs = {
            "pack_purchased": (self.packs, "packs"),
            "trial_claimed": (self.trials, "trials"),
            "inference_limit_set": (self.inference_limits.allowed, "inference_limits.allowed"),
            "inference_limit_removed": (self.inference_limits.allowed, "inference_limits.allowed"),
        }
        for kind, (present, what) in needs.items():
            if kind in self.account_events and not present:
                raise ValueError(f"account_events lists {kind} but the policy has no {what}")
        if self.daily_free and self.daily_free.scope not in self.scopes:
            raise ValueError(
                f"daily_free.scope {self.daily_free.scope!r} is not defined under scopes"
            )
        for name, pack in self.packs.items():
            if pack.scope not in self.scopes:
                raise ValueError(f"packs.{name}.scope {pack.scope!r} is not defined under scopes")
        ids = [t.id for t in self.trials]
        if len(ids) != len(set(ids)):
            raise ValueError("trial ids must be unique")
        seen: dict[str, str] = {}
        for t in self.trials:
            for m in t.models:
                if m in seen:
                    raise ValueError(
                        f"model {m!r} is in trials {seen[m]!r} and {t.id!r}; one trial per model"
                    )
                seen[m] = t.id
        return self


# ---------------------------------------------------------------- the loaded profile


@dataclass(frozen=True)
class ResolvedVersion:
    """One version of a price book with every row in force (inherited rows included)."""

    version: str
    effective_ms: int
    rows: dict[tuple[str, str | None], dict[str | None, PriceRow]]
    # the fine-tuned variants of base models, keyed like ``rows`` by (item, base model)
    fine_tuned_rows: dict[tuple[str, str | None], dict[str | None, PriceRow]] = field(
        default_factory=dict
    )


@dataclass(frozen=True)
class Profile:
    name: str
    book: PriceBookFile
    policy: PolicyFile
    versions: tuple[ResolvedVersion, ...]
    models: frozenset[str]
    trial_by_model: dict[str, TrialQuota] = field(default_factory=dict)
    fine_tuned_models: frozenset[str] = frozenset()  # base models that have a fine-tuned price

    @property
    def currency(self) -> str:
        return self.book.currency

    @property
    def timezone(self) -> str:
        return self.book.timezone

    def to_currency(self, amount_in_price_unit: Decimal) -> Decimal:
        if self.book.price_unit == "points":
            assert self.book.points_per_currency_unit is not None  # required for points (checked)
            return amount_in_price_unit / self.book.points_per_currency_unit
        return amount_in_price_unit

    def to_price_unit(self, amount_in_currency: Decimal) -> Decimal:
        if self.book.price_unit == "points":
            assert self.book.points_per_currency_unit is not None  # required for points (checked)
            return amount_in_currency * self.book.points_per_currency_unit
        return amount_in_currency

    @property
    def price_unit_name(self) -> str:
        return "points" if self.book.price_unit == "points" else self.currency

    def version_at(self, event_ms: int) -> ResolvedVersion | None:
        i = bisect_right([v.effective_ms for v in self.versions], event_ms)
        return self.versions[i - 1] if i else None

    def version_named(self, name: str) -> ResolvedVersion | None:
        return next((v for v in self.versions if v.version == name), None)

    def pinned(self, version: str, from_ms: int, to_ms: int) -> Profile:
        """This profile with ``version`` in force for events in [from_ms, to_ms): a retroactive
        price change, for re-rating. Outside the window the versions apply as published."""
        resolved = self.version_named(version)
        if resolved is None:
            known = ", ".join(v.version for v in self.versions)
            raise ProfileError(
                f"profile {self.name!r} has no price version {version!r} (versions: {known})"
            )
        fields = {f: getattr(self, f) for f in self.__dataclass_fields__}
        return PinnedProfile(**fields, pin=resolved, pin_from=from_ms, pin_to=to_ms)

    def billed_elsewhere(self, model: str | None) -> bool:
        return model is not None and any(
            model.startswith(p) for p in self.book.billed_elsewhere_model_prefixes
        )

    def in_scope(
        self, scope_name: str, item: str, model: str | None, fine_tuned: bool = False
    ) -> bool:
        scope = self.policy.scopes[scope_name]
        if item not in scope.items:
            return False
        if scope.exclude_fine_tuned and fine_tuned:
            return False
        if scope.models or scope.model_prefixes:
            return model is not None and (
                model in scope.models or any(model.startswith(p) for p in scope.model_prefixes)
            )
        return True


@dataclass(frozen=True)
class PinnedProfile(Profile):
    pin: ResolvedVersion | None = None
    pin_from: int = 0
    pin_to: int = 0

    def version_at(self, event_ms: int) -> ResolvedVersion | None:
        if self.pin is not None and self.pin_from <= event_ms < self.pin_to:
            return self.pin
        return super().version_at(event_ms)


def _resolve(book: PriceBookFile) -> tuple[ResolvedVersion, ...]:
    merged: dict[tuple[str, str | None, str | None, bool], PriceRow] = {}
    out = []
    for v in book.versions:
        for row in v.rows:
            merged[row.key] = row
        index: dict[tuple[str, str | None], dict[str | None, PriceRow]] = {}
        tuned: dict[tuple[str, str | None], dict[str | None, PriceRow]] = {}
        for (item, model, variant, fine_tuned), row in merged.items():
            (tuned if fine_tuned else index).setdefault((item, model), {})[variant] = row
        from streams.ingest.events import to_millis

        out.append(
            ResolvedVersion(v.version, to_millis(v.effective_from, "effective_from"), index, tuned)
        )
    return tuple(out)


def load_profile(folder: Path) -> Profile:
    book_path, policy_path = folder / "price_book.yaml", folder / "policy.yaml"
    book_raw, book_lines = _load_yaml(book_path)
    try:
        book = PriceBookFile.model_validate(book_raw)
    except ValidationError as exc:
        raise _explain(book_path, book_lines, exc) from None
    policy_raw, policy_lines = _load_yaml(policy_path)
    try:
        policy = PolicyFile.model_validate(policy_raw or {})
    except ValidationError as exc:
        raise _explain(policy_path, policy_lines, exc) from None
    if book.profile != folder.name:
        raise ProfileError(
            f"{book_path}:{book_lines.get(('profile',), '?')} profile: {book.profile!r} must "
            f"match its folder name {folder.name!r}"
        )
    versions = _resolve(book)
    models = frozenset(m for v in versions for (_, m) in v.rows if m is not None)
    fine_tuned = frozenset(m for v in versions for (_, m) in v.fine_tuned_rows if m is not None)
    untuned = fine_tuned - models
    if untuned:
        raise ProfileError(
            f"{book_path}: fine-tuned rows price a variant of {sorted(untuned)[0]!r}, which has "
            "no base row; "
            "model names the base model"
        )
    trial_by_model = {m: t for t in policy.trials for m in t.models}
    for i, t in enumerate(policy.trials):
        unknown = [m for m in t.models if m not in models]
        if unknown:
            line = policy_lines.get(("trials", i, "models"), "?")
            raise ProfileError(
                f"{policy_path}:{line} trials[{i}].models: {unknown[0]!r} has no price row in "
                "price_book.yaml"
            )
    if policy.daily_free:
        overlap = [
            m
            for m in trial_by_model
            if policy.daily_free and _scope_covers_model(policy.scopes[policy.daily_free.scope], m)
        ]
        if overlap:
            raise ProfileError(
                f"{policy_path}: daily_free scope and trial quotas both cover {overlap[0]!r}; "
                "a profile may use one or the other for a model"
            )
    return Profile(folder.name, book, policy, versions, models, trial_by_model, fine_tuned)


def _scope_covers_model(scope: Scope, model: str) -> bool:
    if not scope.models and not scope.model_prefixes:
        return "tokens" in scope.items
    return model in scope.models or any(model.startswith(p) for p in scope.model_prefixes)


class Profiles:
    """All profiles of a folder, loaded once."""

    def __init__(self, root: Path | None = None):
        self.root = root or PROFILES_DIR
        if not self.root.is_dir():
            raise ProfileError(f"{self.root}: profiles folder does not exist")
        self._profiles: dict[str, Profile] = {}
        for folder in sorted(
            p for p in self.root.iterdir() if p.is_dir() and (p / "price_book.yaml").exists()
        ):
            try:
                self._profiles[folder.name] = load_profile(folder)
            except ProfileError:
                raise
            except Exception as exc:  # a refusal, never a crash (a running worker keeps its books)
                raise ProfileError(
                    f"{folder}: cannot load the profile: {type(exc).__name__}: {exc}"
                ) from None

    def get(self, name: str) -> Profile | None:
        return self._profiles.get(name)

    def names(self) -> list[str]:
        return sorted(self._profiles)

    def __getitem__(self, name: str) -> Profile:
        return self._profiles[name]

    def replacing(self, profile: Profile) -> Profiles:
        """A copy in which ``profile`` stands in for the profile of the same name."""
        copy = object.__new__(Profiles)
        copy.root = self.root
        copy._profiles = {**self._profiles, profile.name: profile}
        return copy
