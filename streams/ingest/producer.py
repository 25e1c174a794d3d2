"""Produce input events to Kafka as Avro, keyed by main account id: what upstream services do, and
what ``rating replay`` and ``rating demo`` use to send a JSON Lines file.

A line that passes the input validation (``streams.ingest.events``) is encoded as Avro, exactly:
nothing is coerced (fastavro would write ``1000.9`` or ``true`` into a long as 1000 or 1), and the
worker judges the rest (an unknown model, a closed account, ...). A line that fails the validation
(a float count, a naive timestamp, a missing ``event_id``) cannot be Avro faithfully: it is sent as
its raw JSON bytes, and the worker gives it the reason ``rating simulate`` gives the same line
(``messages.judge_json``). Bytes that are not a JSON event are sent as they are (``not_avro``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from fastavro.validation import validate

from streams.config import Settings
from streams.ingest.codec import Registry, registry
from streams.ingest.events import Rejected, parse_json_event, to_millis
from streams.kafka_client import producer_kwargs

_SCHEMA_FOR_KIND = {"usage": "usage_event", "account": "account_event"}
_BRANCH = {"usage_event": "billing.v1.UsageEvent", "account_event": "billing.v1.AccountEvent"}
_TIME_FIELDS = ("event_time", "expires_at", "effective_time")
# decimal strings in Avro
_DECIMAL_FIELDS = (
    "quantity",
    "hours",
    "amount",
    "balance_threshold",
    "credits",
)


def avro_record(obj: Any, reg: Registry | None = None) -> tuple[str, dict[str, Any]] | None:
    """JSON event -> (schema name, Avro record), or None if it cannot be one faithfully: the line
    fails the input validation, or a value would not survive Avro unchanged."""
    if not isinstance(obj, dict) or obj.get("kind") not in _SCHEMA_FOR_KIND:
        return None
    try:
        parse_json_event(obj)
    except Rejected:
        return None  # sent as JSON: the worker dead-letters it with the same reason as simulate
    schema = _SCHEMA_FOR_KIND[obj["kind"]]
    # null = absent (the Avro default applies, as the parser treats it)
    record = {k: v for k, v in obj.items() if k != "kind" and v is not None}
    for name in _TIME_FIELDS:
        if record.get(name) is not None:
            record[name] = to_millis(record[name], name)
    for name in _DECIMAL_FIELDS:
        if isinstance(record.get(name), int) and not isinstance(record[name], bool):
            record[name] = str(record[name])  # an integer is an exact decimal
    parsed = (reg or registry()).latest[schema].parsed
    if not validate(record, parsed, raise_errors=False):
        return None
    return schema, record


def encode_line(reg: Registry, raw: bytes) -> tuple[bytes | None, bytes, str | None]:
    """(key, value, main account id) for one JSON line."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None, raw, None
    converted = avro_record(obj, reg)
    key = obj.get("main_account_id") if isinstance(obj, dict) else None
    key_bytes = key.encode() if isinstance(key, str) else None
    if converted is None:
        return key_bytes, raw, None
    schema, record = converted
    try:
        return key_bytes, reg.encode(schema, record), key if isinstance(key, str) else None
    except Exception:  # fastavro rejects wrong types: the bytes go as they are
        return key_bytes, raw, None


def batched_messages(
    reg: Registry, lines: Iterable[bytes], batch_size: int
) -> Iterator[tuple[bytes | None, bytes, list[bytes]]]:
    """Group consecutive events of one account into EventBatch messages of up to batch_size events.

    Yields (key, value, the lines it carries). Each account's order is kept; events of different
    accounts may reach Kafka in another order than the file's (a batch waits to fill), which
    ``delivery_order`` reproduces for the offline twin.
    """
    pending: dict[bytes, list[tuple[str, dict, bytes]]] = {}

    def flush(key: bytes) -> tuple[bytes, bytes, list[bytes]]:
        items = pending.pop(key)
        value = reg.encode("event_batch", {"events": [(_BRANCH[s], r) for s, r, _ in items]})
        return key, value, [raw for _, _, raw in items]

    for raw in lines:
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            obj = None
        converted = avro_record(obj, reg)
        key = obj.get("main_account_id") if isinstance(obj, dict) else None
        if converted is None or not isinstance(key, str):
            k, v, _ = encode_line(reg, raw)
            if k is not None and k in pending:
                yield flush(k)
            yield k, v, [raw]
            continue
        kb = key.encode()
        try:
            reg.encode(converted[0], converted[1])
        except Exception:
            if kb in pending:
                yield flush(kb)
            yield kb, raw, [raw]
            continue
        pending.setdefault(kb, []).append((converted[0], converted[1], raw))
        if len(pending[kb]) >= batch_size:
            yield flush(kb)
    for kb in list(pending):
        yield flush(kb)


def delivery_order(lines: Iterable[bytes], batch_size: int) -> list[bytes]:
    """The lines in the order their events reach the events topic when sent with this batch size."""
    if batch_size <= 1:
        return list(lines)
    return [
        raw for _, _, carried in batched_messages(registry(), lines, batch_size) for raw in carried
    ]


class EventProducer:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.registry = registry()
        self.producer = AIOKafkaProducer(**producer_kwargs(settings))

    async def __aenter__(self) -> EventProducer:
        await self.producer.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.producer.stop()

    async def send_lines(self, lines: Iterable[bytes], batch_size: int = 1, on_sent=None) -> int:
        """Send every line; returns the number of events sent. Waits for all acknowledgements."""
        topic = self.settings.topics.events
        futures = []
        total = 0
        messages: Iterator[tuple[bytes | None, bytes, int | list[bytes]]]
        if batch_size <= 1:
            messages = ((k, v, 1) for k, v, _ in (encode_line(self.registry, raw) for raw in lines))
        else:
            messages = batched_messages(self.registry, lines, batch_size)
        for key, value, carried in messages:
            n = carried if isinstance(carried, int) else len(carried)
            futures.append(await self.producer.send(topic, value=value, key=key))
            total += n
            if on_sent is not None:
                on_sent(n)
            if len(futures) >= 5000:
                for f in futures:
                    await f
                futures.clear()
        for f in futures:
            await f
        return total
