"""Avro on the wire: Confluent framing (magic byte 0, 4-byte big-endian schema id, Avro binary).

The registry is static (``schemas/registry.json``): no schema-registry server installs here, and a
file in the repository is reviewed with the code that reads it. A message names the schema *version*
it was written with; the reader decodes it with the newest version of the same record (Avro schema
resolution), so a consumer with the current schemas reads what older producers wrote.
"""

from __future__ import annotations

import io
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastavro import parse_schema, schemaless_reader, schemaless_writer

SCHEMAS_DIR = Path(__file__).resolve().parents[2] / "schemas"
MAGIC = 0
_HEADER = struct.Struct(">bI")

# record full name -> short name used by the pipeline
RECORD_NAMES = {
    "billing.v1.UsageEvent": "usage_event",
    "billing.v1.AccountEvent": "account_event",
    "billing.v1.EventBatch": "event_batch",
    "billing.v1.Deduction": "deduction",
    "billing.v1.Settlement": "settlement",
    "billing.v1.Alert": "alert",
    "billing.v1.DeadLetter": "dead_letter",
    "billing.v1.AccountStatus": "account_status",
    "billing.v1.AccountBalance": "account_balance",
    "billing.v1.ClockTick": "clock_tick",
    "billing.v1.UsageMinute": "usage_minute",
}


class DecodeError(ValueError):
    """The bytes are not a message this
    pipeline can read; ``code`` is the dead-letter reason code."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class SchemaVersion:
    schema_id: int
    name: str  # short name, e.g. "usage_event"
    version: int
    parsed: Any


def _without_logical_types(node: Any) -> Any:
    """The schema with every ``logicalType`` dropped: timestamps read as the longs on the wire."""
    if isinstance(node, dict):
        return {k: _without_logical_types(v) for k, v in node.items() if k != "logicalType"}
    if isinstance(node, list):
        return [_without_logical_types(v) for v in node]
    return node


class Registry:
    def __init__(self, schemas_dir: Path = SCHEMAS_DIR):
        index = json.loads((schemas_dir / "registry.json").read_text())["schemas"]
        named: dict[str, Any] = {}
        plain_named: dict[str, Any] = {}
        # An older version refers to the named types as they were when it was written (the
        # newest definitions with a smaller id): event_batch v1 holds usage_event v1 records.
        history: dict[str, Any] = {}
        plain_history: dict[str, Any] = {}
        self.by_id: dict[int, SchemaVersion] = {}
        self.latest: dict[str, SchemaVersion] = {}
        # Input events are validated from the wire values: a timestamp-millis far outside the
        # datetime range (year 10000, negative) must get the validation's reason, not corrupt_avro.
        self.plain_by_id: dict[int, Any] = {}
        # Files are parsed in id order so that a batch schema can refer to the records before it.
        for raw_id, filename in sorted(index.items(), key=lambda kv: int(kv[0])):
            schema_id = int(raw_id)
            raw = json.loads((schemas_dir / filename).read_text())
            full = f"{raw['namespace']}.{raw['name']}"
            short = RECORD_NAMES[full]
            version = int(filename.rsplit(".v", 1)[1].split(".")[0])
            # Older versions are parsed apart from the named types of the current ones.
            newest = self._is_newest(index, short, version)
            parsed = self._parse(raw, named, history, newest)
            self.plain_by_id[schema_id] = self._parse(
                _without_logical_types(raw), plain_named, plain_history, newest
            )
            sv = SchemaVersion(schema_id, short, version, parsed)
            self.by_id[schema_id] = sv
            if short not in self.latest or self.latest[short].version < version:
                self.latest[short] = sv

    @staticmethod
    def _parse(raw: Any, named: dict[str, Any], history: dict[str, Any], newest: bool) -> Any:
        scratch = dict(history)
        parsed = parse_schema(raw, named_schemas=scratch)
        history.update(scratch)  # this file's definitions replace the older ones from here on
        return parse_schema(raw, named_schemas=named) if newest else parsed

    @staticmethod
    def _is_newest(index: dict[str, str], short: str, version: int) -> bool:
        versions = [
            int(f.rsplit(".v", 1)[1].split(".")[0])
            for f in index.values()
            if f.startswith(short + ".v")
        ]
        return version == max(versions)

    def is_clock_tick(self, data: bytes | None) -> bool:
        """By the header alone: the workers' own ticks need no decoding to be told apart."""
        if not data or len(data) < 5:
            return False
        magic, schema_id = _HEADER.unpack_from(data)
        sv = self.by_id.get(schema_id)
        return magic == MAGIC and sv is not None and sv.name == "clock_tick"

    def encode(self, name: str, record: dict[str, Any], schema_id: int | None = None) -> bytes:
        sv = self.by_id[schema_id] if schema_id is not None else self.latest[name]
        buf = io.BytesIO()
        buf.write(_HEADER.pack(MAGIC, sv.schema_id))
        schemaless_writer(buf, sv.parsed, record)
        return buf.getvalue()

    def decode(self, data: bytes | None, *, plain_times: bool = False) -> tuple[str, Any]:
        """Returns (short schema name, record). Raises DecodeError with a specific code.
        ``plain_times``: timestamps come back as epoch milliseconds (the longs on the wire), not
        datetimes, so that any value decodes and the input validation judges it."""
        if not data:
            raise DecodeError("empty_message", "message value is empty")
        if len(data) < 5 or data[0] != MAGIC:
            raise DecodeError(
                "not_avro",
                "message is not Avro in the Confluent wire format (expected magic byte 0 and a "
                "4-byte schema id)",
            )
        _, schema_id = _HEADER.unpack_from(data)
        writer = self.by_id.get(schema_id)
        if writer is None:
            raise DecodeError(
                "unknown_schema", f"schema id {schema_id} is not in schemas/registry.json"
            )
        reader = self.latest[writer.name]
        buf = io.BytesIO(data)
        buf.seek(5)
        writer_schema = self.plain_by_id[writer.schema_id] if plain_times else writer.parsed
        reader_schema = self.plain_by_id[reader.schema_id] if plain_times else reader.parsed
        try:
            if reader is writer:
                record = schemaless_reader(buf, writer_schema, None, return_record_name=True)
            else:
                record = schemaless_reader(
                    buf, writer_schema, reader_schema, return_record_name=True
                )
        except Exception as exc:  # fastavro raises many types for truncated or corrupt input
            raise DecodeError(
                "corrupt_avro",
                f"cannot decode {writer.name} v{writer.version} body: {type(exc).__name__}: {exc}",
            ) from None
        if buf.tell() != len(data):
            raise DecodeError(
                "corrupt_avro",
                f"{len(data) - buf.tell()} trailing bytes after the {writer.name} "
                f"v{writer.version} record",
            )
        return writer.name, record


_default: Registry | None = None


def registry() -> Registry:
    global _default
    if _default is None:
        _default = Registry()
    return _default


__all__ = ["DecodeError", "Registry", "registry", "SCHEMAS_DIR"]
