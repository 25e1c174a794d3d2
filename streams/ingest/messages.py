"""From one Kafka message (key, Avro value) to the typed events it carries, or the reason it can't.

A message holds one usage event, one account event, or an ``EventBatch`` of one main account's
events. Each event that fails gets its own dead letter whose payload is that event alone,
re-encoded, so it can be re-driven after a fix.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from streams.deduction.record import dead_letter_id
from streams.ingest.codec import DecodeError, Registry
from streams.ingest.events import (
    MAX_ID_LENGTH,
    Event,
    Rejected,
    parse_account,
    parse_json_event,
    parse_usage,
)
from streams.ingest.partitioner import partition_for

INPUT_SCHEMAS = ("usage_event", "account_event", "event_batch")
_PARSERS: dict[str, Callable[[Any], Event]] = {
    "usage_event": parse_usage,
    "account_event": parse_account,
}
_BRANCH = {"billing.v1.UsageEvent": "usage_event", "billing.v1.AccountEvent": "account_event"}


@dataclass(slots=True)
class Decoded:
    event: Event | None
    rejected: Rejected | None
    payload: bytes
    record: Any = None  # the decoded Avro record, when the bytes decoded
    schema: str | None = None  # its schema, to re-encode one event of a batch for the dead letter

    def standalone_payload(self, registry: Registry) -> bytes:
        """The event alone as an input message: what a dead letter keeps, so it can be re-driven."""
        if self.payload or self.record is None or self.schema is None:
            return self.payload
        return registry.encode(self.schema, self.record)


def decode_message(
    registry: Registry,
    key: bytes | None,
    value: bytes | None,
    *,
    partition: int | None = None,
    partitions: int | None = None,
) -> list[Decoded]:
    """``partition`` and ``partitions``: where the message was read and how many partitions the
    topic has; when given, a message on another partition than its key hashes to is refused
    (``wrong_partition``), since its account's state lives in the key's partition."""
    try:
        name, record = registry.decode(value, plain_times=True)
    except DecodeError as exc:
        if exc.code == "not_avro":
            judged = judge_json(value)
            if judged is not None:
                return [judged]
        return [Decoded(None, Rejected(exc.code, str(exc)), value or b"")]
    assert value is not None  # a null value does not decode
    parts: list[tuple[str, Any, bytes | None]]
    if name == "event_batch":
        parts = [(_BRANCH[branch], rec, None) for branch, rec in record["events"]]
        if not parts:
            return [
                Decoded(None, Rejected("empty_batch", "the event batch holds no events"), value)
            ]
    elif name in _PARSERS:
        parts = [(name, record, value)]
    else:
        return [
            Decoded(
                None,
                Rejected(
                    "wrong_schema",
                    f"a {name} record is not an input event (expected {', '.join(INPUT_SCHEMAS)})",
                ),
                value,
            )
        ]
    out = []
    for schema, rec, payload in parts:
        try:
            event = _PARSERS[schema](rec)
            check_key(event.main_account_id, key, partition, partitions)
            out.append(Decoded(event, None, payload or b"", rec, schema))
        except Rejected as exc:
            out.append(
                Decoded(
                    None,
                    exc,
                    payload if payload is not None else registry.encode(schema, rec),
                    rec,
                    schema,
                )
            )
    return out


def check_key(
    main_account_id: str, key: bytes | None, partition: int | None, partitions: int | None
) -> None:
    """The key must be valid UTF-8 and equal main_account_id byte for byte (a lenient decode
    would map several keys, and so several table states, to one account), and the message must
    sit on the partition its key hashes to."""
    if key is None:
        raise Rejected(
            "missing_key", "the message has no key; input messages are keyed by main_account_id"
        )
    try:
        key.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Rejected(
            "invalid_key",
            f"the message key is not valid UTF-8 ({exc.reason} at byte {exc.start}); "
            "keys are the main account id in UTF-8",
        ) from None
    if key != main_account_id.encode():
        raise Rejected(
            "key_mismatch",
            f"main_account_id {main_account_id!r} differs from the message key {key.decode()!r}; "
            "events of one main account must share its key (and so its partition)",
        )
    if (
        partition is not None
        and partitions is not None
        and partition != (want := partition_for(key, partitions))
    ):
        raise Rejected(
            "wrong_partition",
            f"the message is on partition {partition}, but its key hashes to partition "
            f"{want} of {partitions}; produce with the default (murmur2) partitioner",
        )


def judge_json(value: bytes | None) -> Decoded | None:
    """A message that is not Avro but a JSON event, as ``rating replay`` sends a line that cannot be
    Avro (a float or a boolean for a count, a naive timestamp, a missing required field): it gets
    the reason ``rating simulate`` gives the same line, from the same parser. A JSON event is never
    applied live (input messages are Avro): one that parses is still ``not_avro``."""
    if not value or value.lstrip()[:1] not in (b"{", b"["):
        return None
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    try:
        parse_json_event(obj)
    except Rejected as exc:
        return Decoded(None, exc, value, obj)
    return Decoded(
        None,
        Rejected(
            "not_avro",
            "message is a JSON event, not Avro in the Confluent wire format; `rating replay` "
            "encodes JSON Lines",
        ),
        value,
        obj,
    )


def dead_letter_record(
    decoded: Decoded,
    *,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    fallback_id: str,
) -> dict[str, Any]:
    rec = decoded.record if isinstance(decoded.record, dict) else {}
    event = decoded.event

    def pick(name: str) -> Any:
        value = getattr(event, name, None) if event is not None else rec.get(name)
        return value if isinstance(value, str) and value else None

    event_id = pick("event_id")
    event_time = getattr(event, "event_time", None) if event is not None else None
    assert decoded.rejected is not None
    payload = decoded.payload or b""
    return {
        "dead_letter_id": dead_letter_id(
            decoded.rejected.code, event_id, fallback_id, pick("main_account_id")
        ),
        "reason_code": decoded.rejected.code,
        "reason": _cut(decoded.rejected.message, MAX_REASON_CHARS),
        "source_topic": topic,
        "source_partition": partition,
        "source_offset": offset,
        "event_id": _cut(event_id, MAX_ID_LENGTH),
        "main_account_id": _cut(pick("main_account_id"), MAX_ID_LENGTH),
        "trace_id": _cut(pick("trace_id"), MAX_ID_LENGTH),
        "event_time": event_time,
        "key": key[:MAX_LETTER_KEY_BYTES] if key is not None else None,
        "payload": payload[:MAX_LETTER_PAYLOAD_BYTES],
        "payload_size_bytes": len(payload),
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
        "payload_truncated": len(payload) > MAX_LETTER_PAYLOAD_BYTES,
    }


# What a dead letter keeps of a hostile input, so that none can exceed the record limit
# (streams/limits.py, 64 KiB): an id too long for the id grammar is cut to its first 256
# characters (the reason says how long it was), the payload to 32 KiB with its size and hash.
MAX_LETTER_PAYLOAD_BYTES = 32 * 1024
MAX_LETTER_KEY_BYTES = 1024
MAX_REASON_CHARS = 1000


def _cut(text: str | None, limit: int) -> str | None:
    if text is None or len(text) <= limit:
        return text
    return text[:limit] + "…"
