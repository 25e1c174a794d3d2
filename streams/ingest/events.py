"""Typed input events, parsed and validated from Avro records or JSON Lines (same field names).

Every way an event can be wrong raises ``Rejected`` with a stable reason code and a message that
names the field; the stream processor turns it into a dead letter and carries on.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, Literal, overload

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
MAX_ID_LENGTH = 256  # characters of an id (README "Input format": the id grammar)
MAX_NAME_LENGTH = 256  # characters of any other string field (model, variant, profile, ...)
# Hard limits of the input format, for every profile (README "Input format: limits"). The
# profiles' own, tighter per-item bounds are checked when rating (``quantity_out_of_range``).
MAX_TOKENS = 10**10  # token counts per field; far above any context window
MAX_QUANTITY = Decimal(10**9)  # any decimal quantity or amount, in absolute value
MAX_DECIMAL_SCALE = 12  # digits after the point: the scale of the Decimal128(12) columns
MAX_DECIMAL_LENGTH = 64  # characters of a decimal string
MIN_EVENT_MS = 946_684_800_000  # 2000-01-01
MAX_EVENT_MS = 4_102_444_800_000  # 2100-01-01
# Unicode general categories an id may not contain: controls (NUL, newline, ESC, ...), format
# characters (zero-width space and joiners, BOM, bidirectional overrides), surrogates, private
# use, unassigned code points, and every separator (spaces, line and paragraph separators).
_ID_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp"})
ID_FIELDS = (
    "event_id",
    "trace_id",
    "account_id",
    "main_account_id",
    "sub_account_id",
    "voucher_id",
    "pack_id",
)

USAGE_ITEMS = frozenset(
    {
        "tokens",
        "agent_call",
        "tts",
        "asr_streaming",
        "asr_file",
        "rtc_audio",
        "rtc_video",
        "kb_storage",
        "image",
        "video",
        "3d",
        "embedding",
        "rerank",
        "media_call",
    }
)
TOKEN_ITEMS = frozenset({"tokens", "embedding", "rerank"})
CREDIT_ITEMS = frozenset({"video", "3d"})  # items that may carry the credits a call consumed
MAX_REQUESTED_IMAGES = 10_000  # images of one batch request; far above any platform's batch size
ACCOUNT_EVENT_TYPES = frozenset(
    {
        "account_opened",
        "top_up",
        "voucher_granted",
        "pack_purchased",
        "model_activated",
        "post_paid_switched",
        "balance_threshold_set",
        "inference_limit_set",
        "inference_limit_removed",
        "trial_claimed",
        "sub_account_linked",
    }
)


class Rejected(Exception):
    """An input that cannot be applied:
    ``code`` is stable (metrics, queries), ``message`` says why."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class UsageEvent:
    event_id: str
    trace_id: str
    account_id: str
    main_account_id: str
    event_time: int  # ms since epoch, UTC
    item: str
    model: str | None
    variant: str | None
    status: str
    mode: str
    input_tokens: int
    cache_hit_tokens: int
    cache_write_tokens: int
    output_tokens: int
    reasoning_tokens: int
    quantity: Decimal | None
    hours: Decimal | None
    # usage_event v2 (defaults keep v1 events as they were)
    fine_tuned: bool = (
        False  # a call of the user's fine-tuned variant of ``model`` (the base model)
    )
    credits: Decimal | None = None  # credits one call consumed, for rows priced by a credit range
    requested_images: int | None = (
        None  # images asked for in a batch; ``quantity`` = images generated
    )

    kind = "usage"
    # (name, default) of the v2 fields, last in the slots; see dedupe.content_fingerprint
    ADDED_FIELDS = (("fine_tuned", False), ("credits", None), ("requested_images", None))

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass(frozen=True, slots=True)
class AccountEvent:
    event_id: str
    account_id: str
    main_account_id: str
    event_time: int
    type: str
    profile: str | None = None
    currency: str | None = None
    post_paid: bool | None = None
    amount: Decimal | None = None
    balance_threshold: Decimal | None = None
    safe_trial_mode: bool | None = None
    voucher_id: str | None = None
    pack_id: str | None = None
    pack_kind: str | None = None
    expires_at: int | None = None
    model: str | None = None
    limit_tokens: int | None = None
    effective_time: int | None = None
    inference_mode: str | None = None
    prefix_caching: bool | None = None
    tpm_guarantee: bool | None = None
    sub_account_id: str | None = None

    kind = "account"

    @property
    def trace_id(self) -> str:
        return ""


Event = UsageEvent | AccountEvent


def to_millis(value: Any, field: str) -> int:
    """Event times arrive as Avro datetimes,
    epoch milliseconds or ISO-8601 strings with an offset."""
    if isinstance(value, bool):
        raise Rejected("invalid_field", f"{field} must be a timestamp, got a boolean")
    if isinstance(value, int):
        ms = value
    elif isinstance(value, datetime):
        if value.tzinfo is None:
            raise Rejected("invalid_field", f"{field} has no time zone")
        ms = (value - EPOCH) // _MS
    elif isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise Rejected(
                "invalid_field", f"{field}={value[:64]!r} is not an ISO-8601 timestamp"
            ) from None
        if dt.tzinfo is None:
            raise Rejected("invalid_field", f"{field}={value[:64]!r} has no UTC offset")
        ms = (dt - EPOCH) // _MS
    else:
        raise Rejected("invalid_field", f"{field} must be a timestamp, got {type(value).__name__}")
    if not MIN_EVENT_MS <= ms <= MAX_EVENT_MS:
        raise Rejected("invalid_field", f"{field} is outside 2000-01-01..2100-01-01")
    return ms


def millis_to_iso(ms: int) -> str:
    dt = EPOCH + ms * _MS
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@overload
def _string(raw: Mapping[str, Any], name: str, required: Literal[True] = True) -> str: ...
@overload
def _string(raw: Mapping[str, Any], name: str, required: bool) -> str | None: ...
def _string(raw: Mapping[str, Any], name: str, required: bool = True) -> str | None:
    value = raw.get(name)
    if value is None or value == "":
        if required:
            raise Rejected("missing_field", f"{name} is required")
        return None
    if not isinstance(value, str):
        raise Rejected("invalid_field", f"{name} must be a string, got {type(value).__name__}")
    if name in ID_FIELDS:
        check_id(value, name)
    elif len(value) > MAX_NAME_LENGTH:
        raise Rejected(
            "invalid_field", f"{name} is {len(value)} characters long (at most {MAX_NAME_LENGTH})"
        )
    return value


def id_problem(value: str) -> str | None:
    """Why ``value`` is not an id of the id grammar, or None. An id is 1 to ``MAX_ID_LENGTH``
    characters, in Unicode normalization form NFC, with no character of the categories in
    ``_ID_FORBIDDEN_CATEGORIES`` (so no space, control, zero-width or other invisible character)."""
    if not value:
        return "is empty"
    if len(value) > MAX_ID_LENGTH:
        return f"is {len(value)} characters long (at most {MAX_ID_LENGTH})"
    if value.isascii() and value.isprintable() and " " not in value:
        # the usual id: of ASCII, only controls (Cc) and the space (Zs) are forbidden, and ASCII
        # is always NFC; this skips the per-character walk (a test checks the two paths agree)
        return None
    for i, ch in enumerate(value):
        category = unicodedata.category(ch)
        if category in _ID_FORBIDDEN_CATEGORIES:
            label = {
                "Cc": "a control character",
                "Cn": "unassigned",
                "Co": "private use",
                "Cs": "a surrogate",
            }.get(category)
            what = (
                "a space"
                if category == "Zs"
                else f"U+{ord(ch):04X} ({unicodedata.name(ch, '') or label or category})"
            )
            return (
                f"contains {what} at position {i}; "
                "ids are printable, without spaces or invisible characters"
            )
    if not unicodedata.is_normalized("NFC", value):
        return "is not in Unicode normalization form NFC (send the NFC spelling)"
    return None


def check_id(value: str, name: str) -> str:
    problem = id_problem(value)
    if problem is not None:
        raise Rejected("invalid_id", f"{name} {problem}")
    return value


def _count(raw: Mapping[str, Any], name: str) -> int:
    value = raw.get(name, 0)
    if value is None:
        return 0
    if isinstance(value, bool):
        raise Rejected(
            "invalid_field", f"{name} must be an integer, got a boolean ({str(value).lower()})"
        )
    if isinstance(value, float):
        # JSON numbers with a fraction or an exponent, and integers too large for 64 bits, arrive
        # as floats: say which of the two it is rather than only "got float".
        if not math.isfinite(value):
            raise Rejected("invalid_field", f"{name} must be an integer, got {value!r}")
        if value.is_integer() and abs(value) > MAX_TOKENS:
            raise Rejected(
                "quantity_out_of_range",
                f"{name}={value:.6g} is out of range: at most {MAX_TOKENS} tokens per field",
            )
        raise Rejected("invalid_field", f"{name} must be a whole number of tokens, got {value!r}")
    if not isinstance(value, int):
        what = (
            f"a string ({value[:32]!r}); send numbers as JSON numbers"
            if isinstance(value, str)
            else type(value).__name__
        )
        raise Rejected("invalid_field", f"{name} must be an integer, got {what}")
    if value < 0:
        raise Rejected("negative_quantity", f"{name}={value} is negative")
    if value > MAX_TOKENS:
        raise Rejected(
            "quantity_out_of_range",
            f"{name}={value} is out of range: at most {MAX_TOKENS} tokens per field",
        )
    return value


def parse_decimal(value: Any, name: str, *, allow_negative: bool = False) -> Decimal | None:
    """A decimal string (or integer) within the input format's bounds: finite, at most
    ``MAX_QUANTITY`` in absolute value, at most ``MAX_DECIMAL_SCALE`` significant digits after
    the point. The exponent is bounded by those two before any arithmetic, so ``1E-999999`` or
    ``1E+999999999`` (short strings) can never become a huge fixed-point number downstream."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise Rejected(
            "invalid_field", f"{name} must be a decimal string or integer, not a boolean"
        )
    if isinstance(value, float):
        # A float has already lost exactness. An integer too large for 64 bits also arrives as one
        # from a JSON parser: say that it is out of range rather than only "not float".
        if math.isfinite(value) and value.is_integer() and abs(value) > MAX_QUANTITY:
            raise Rejected(
                "quantity_out_of_range",
                f"{name}={value:.6g} is out of range: at most {MAX_QUANTITY} in absolute value",
            )
        raise Rejected(
            "invalid_field",
            f"{name} must be a decimal string or integer, got the JSON number {value!r} "
            '(send decimals as strings, e.g. "12.5")',
        )
    if isinstance(value, int):
        if abs(value) > MAX_QUANTITY:
            raise Rejected(
                "quantity_out_of_range",
                f"{name}={value} is out of range: at most {MAX_QUANTITY} in absolute value",
            )
        dec = Decimal(value)
    elif isinstance(value, str):
        if len(value) > MAX_DECIMAL_LENGTH:
            raise Rejected(
                "invalid_field",
                f"{name} is not a decimal ({len(value)} characters, at most {MAX_DECIMAL_LENGTH})",
            )
        try:
            dec = Decimal(value)
        except InvalidOperation:
            raise Rejected("invalid_field", f"{name}={value!r} is not a decimal") from None
    elif isinstance(value, Decimal):
        dec = value
    else:
        raise Rejected(
            "invalid_field", f"{name} must be a decimal string, got {type(value).__name__}"
        )
    if not dec.is_finite():
        raise Rejected("invalid_field", f"{name}={value!r} is not a finite decimal")
    if dec.is_signed() and not dec.is_zero() and not allow_negative:
        raise Rejected("negative_quantity", f"{name}={value} is negative")
    shown = value if isinstance(value, str) else str(dec)
    # adjusted() is the exponent of the most significant digit: no arithmetic on the value yet
    if not dec.is_zero() and dec.adjusted() > MAX_QUANTITY.adjusted():
        raise Rejected(
            "quantity_out_of_range",
            f"{name}={shown} is out of range: at most {MAX_QUANTITY} in absolute value",
        )
    if abs(dec) > MAX_QUANTITY:
        raise Rejected(
            "quantity_out_of_range",
            f"{name}={shown} is out of range: at most {MAX_QUANTITY} in absolute value",
        )
    sign, digits, exponent = dec.as_tuple()
    assert isinstance(exponent, int)  # a finite number (checked above) has an integer exponent
    trailing = _trailing_zeros(digits)
    scale = 0 if dec.is_zero() else max(0, -(exponent + trailing))
    if scale > MAX_DECIMAL_SCALE:
        raise Rejected(
            "decimal_precision_exceeded",
            f"{name}={shown} has {scale} digits after the point (at most {MAX_DECIMAL_SCALE})",
        )
    if exponent < -MAX_DECIMAL_SCALE or exponent > 0:
        # only trailing zeros (or an exponent) beyond the bounds: the same value at a bounded scale
        dec = dec.quantize(Decimal(1).scaleb(-scale))
    return dec


def _trailing_zeros(digits: tuple[int, ...]) -> int:
    n = 0
    for d in reversed(digits):
        if d:
            break
        n += 1
    return n


def parse_currency(value: Any) -> str | None:
    """An ISO 4217 alphabetic code, normalized: surrounding spaces removed, upper case (``cny`` is
    ``CNY``). Absent means the account's currency; the ledger rejects any other currency."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise Rejected(
            "invalid_currency",
            f"currency must be a string (an ISO 4217 code), got {type(value).__name__}",
        )
    code = value.strip().upper()
    if len(code) != 3 or not code.isascii() or not code.isalpha():
        raise Rejected(
            "invalid_currency",
            f"currency {value[:16]!r} is not an ISO 4217 code (three letters, e.g. CNY, USD)",
        )
    return code


def _bool(raw: Mapping[str, Any], name: str) -> bool | None:
    value = raw.get(name)
    if value is None or isinstance(value, bool):
        return value
    raise Rejected("invalid_field", f"{name} must be true or false, got {type(value).__name__}")


def _optional_time(raw: Mapping[str, Any], name: str) -> int | None:
    value = raw.get(name)
    return None if value is None else to_millis(value, name)


def parse_usage(raw: Mapping[str, Any]) -> UsageEvent:
    if not isinstance(raw, Mapping):
        raise Rejected("wrong_schema", "a usage event must be an object")
    item = _string(raw, "item")
    if item not in USAGE_ITEMS:
        raise Rejected(
            "unknown_item",
            f"item {item!r} is not a billing item ({', '.join(sorted(USAGE_ITEMS))})",
        )
    status = raw.get("status") or "succeeded"
    if status not in ("succeeded", "failed"):
        raise Rejected(
            "invalid_field", f"status must be 'succeeded' or 'failed', got {str(status)[:32]!r}"
        )
    mode = raw.get("mode") or "online"
    if mode not in ("online", "batch"):
        raise Rejected("invalid_field", f"mode must be 'online' or 'batch', got {str(mode)[:32]!r}")
    event = UsageEvent(
        event_id=_string(raw, "event_id"),
        trace_id=_string(raw, "trace_id", required=False) or "",
        account_id=_string(raw, "account_id"),
        main_account_id=_string(raw, "main_account_id"),
        event_time=to_millis(raw.get("event_time"), "event_time"),
        item=item,
        model=_string(raw, "model", required=False),
        variant=_string(raw, "variant", required=False),
        status=status,
        mode=mode,
        input_tokens=_count(raw, "input_tokens"),
        cache_hit_tokens=_count(raw, "cache_hit_tokens"),
        cache_write_tokens=_count(raw, "cache_write_tokens"),
        output_tokens=_count(raw, "output_tokens"),
        reasoning_tokens=_count(raw, "reasoning_tokens"),
        quantity=parse_decimal(raw.get("quantity"), "quantity"),
        hours=parse_decimal(raw.get("hours"), "hours"),
        fine_tuned=bool(_bool(raw, "fine_tuned")),
        credits=parse_decimal(raw.get("credits"), "credits"),
        requested_images=_optional_count(raw, "requested_images"),
    )
    if event.cache_hit_tokens + event.cache_write_tokens > event.input_tokens:
        raise Rejected(
            "quantities_do_not_add_up",
            f"cache_hit_tokens ({event.cache_hit_tokens}) + cache_write_tokens "
            f"({event.cache_write_tokens}) "
            f"exceed input_tokens ({event.input_tokens}), which includes them",
        )
    if event.reasoning_tokens > event.output_tokens:
        raise Rejected(
            "quantities_do_not_add_up",
            f"reasoning_tokens ({event.reasoning_tokens}) exceed output_tokens "
            f"({event.output_tokens}), which includes them",
        )
    if item in TOKEN_ITEMS:
        if event.model is None:
            raise Rejected("missing_field", f"model is required for item {item!r}")
        if event.quantity is not None:
            raise Rejected(
                "invalid_field", f"item {item!r} is metered in token fields, not quantity"
            )
    else:
        if event.total_tokens:
            raise Rejected("invalid_field", f"item {item!r} takes a quantity, not token counts")
        if event.quantity is None:
            raise Rejected("missing_quantity", f"quantity is required for item {item!r}")
    if item == "kb_storage" and event.hours is None:
        raise Rejected(
            "missing_quantity", "hours is required for kb_storage (GB stored for that many hours)"
        )
    _check_v2_fields(event)
    return event


def _optional_count(raw: Mapping[str, Any], name: str) -> int | None:
    return None if raw.get(name) is None else _count(raw, name)


def _check_v2_fields(event: UsageEvent) -> None:
    """The usage_event v2 fields belong to some items only: elsewhere they would be ignored
    silently, so they are refused (billing-rules §2: fine-tuned models, credits, image batches)."""
    if event.fine_tuned and event.item not in TOKEN_ITEMS:
        raise Rejected(
            "invalid_field",
            f"fine_tuned applies to token items ({', '.join(sorted(TOKEN_ITEMS))}), not "
            f"{event.item!r}",
        )
    if event.credits is not None and event.item not in CREDIT_ITEMS:
        raise Rejected(
            "invalid_field",
            f"credits apply to credit-priced items ({', '.join(sorted(CREDIT_ITEMS))}), not "
            f"{event.item!r}",
        )
    if event.requested_images is None:
        return
    if event.item != "image":
        raise Rejected(
            "invalid_field", f"requested_images applies to item 'image', not {event.item!r}"
        )
    if event.requested_images > MAX_REQUESTED_IMAGES:
        raise Rejected(
            "quantity_out_of_range",
            f"requested_images={event.requested_images} is above {MAX_REQUESTED_IMAGES} per "
            "request",
        )
    if event.quantity is not None and event.quantity > event.requested_images:
        raise Rejected(
            "quantities_do_not_add_up",
            f"quantity ({event.quantity} images generated) exceeds requested_images "
            f"({event.requested_images})",
        )


def parse_account(raw: Mapping[str, Any]) -> AccountEvent:
    if not isinstance(raw, Mapping):
        raise Rejected("wrong_schema", "an account event must be an object")
    kind = _string(raw, "type")
    if kind not in ACCOUNT_EVENT_TYPES:
        raise Rejected(
            "unknown_event_type",
            f"account event type {kind!r} is not one of {', '.join(sorted(ACCOUNT_EVENT_TYPES))}",
        )
    limit = raw.get("limit_tokens")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)):
        raise Rejected("invalid_field", "limit_tokens must be an integer")
    inference_mode = raw.get("inference_mode")
    if inference_mode not in (None, "online", "batch"):
        raise Rejected(
            "invalid_field",
            f"inference_mode must be 'online' or 'batch', got {str(inference_mode)[:32]!r}",
        )
    return AccountEvent(
        event_id=_string(raw, "event_id"),
        account_id=_string(raw, "account_id"),
        main_account_id=_string(raw, "main_account_id"),
        event_time=to_millis(raw.get("event_time"), "event_time"),
        type=kind,
        profile=_string(raw, "profile", required=False),
        currency=parse_currency(raw.get("currency")),
        post_paid=_bool(raw, "post_paid"),
        amount=parse_decimal(raw.get("amount"), "amount", allow_negative=True),
        balance_threshold=parse_decimal(raw.get("balance_threshold"), "balance_threshold"),
        safe_trial_mode=_bool(raw, "safe_trial_mode"),
        voucher_id=_string(raw, "voucher_id", required=False),
        pack_id=_string(raw, "pack_id", required=False),
        pack_kind=_string(raw, "pack_kind", required=False),
        expires_at=_optional_time(raw, "expires_at"),
        model=_string(raw, "model", required=False),
        limit_tokens=limit,
        effective_time=_optional_time(raw, "effective_time"),
        inference_mode=inference_mode,
        prefix_caching=_bool(raw, "prefix_caching"),
        tpm_guarantee=_bool(raw, "tpm_guarantee"),
        sub_account_id=_string(raw, "sub_account_id", required=False),
    )


def parse_json_event(raw: Any) -> Event:
    """JSON Lines: an object with ``"kind":
    "usage"`` or ``"kind": "account"`` plus the Avro fields."""
    if not isinstance(raw, dict):
        raise Rejected("wrong_schema", "each line must be a JSON object")
    kind = raw.get("kind")
    if kind == "usage":
        return parse_usage(raw)
    if kind == "account":
        return parse_account(raw)
    raise Rejected("wrong_schema", f"kind must be 'usage' or 'account', got {str(kind)[:32]!r}")
