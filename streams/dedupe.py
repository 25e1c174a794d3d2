"""Exact deduplication by event id over a horizon of event time, at any volume.

Every applied event leaves one small entry, keyed by a fingerprint of (main account, event id):
its event time, the account's sequence number after applying it, and a fingerprint of its content.
The entries live outside the account state (a faust table of their own live, a dict offline), so
the account record stays the same size however busy the account is.

Why the sequence number: the entries and the account state are written in two records. The worker
writes the entries first and the state second, and waits for the first to be acknowledged before
it writes the second. A crash between them leaves entries whose sequence the state has not
reached; such an entry is our own unfinished write, not a duplicate, so the event is applied
again (same deterministic output ids). A crash after both leaves an entry the state has absorbed:
the event is a duplicate. Neither a double charge nor a lost one.

Events older than the horizon relative to their partition's stream time are rejected
(``event_too_old``) and never charged, so entries older than the horizon can be forgotten.
No probabilistic filter: a fingerprint is 128 bits of BLAKE2b (collision odds ~1e-20 at 10^9 ids).
"""

from __future__ import annotations

import hashlib
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from operator import attrgetter
from typing import Any, Protocol

DAY_MS = 86_400_000
DEFAULT_HORIZON_MS = 35 * DAY_MS
KEY_BYTES = 16
_ENTRY = struct.Struct(">qq8s")  # event_time_ms, account sequence, content fingerprint
ENTRY_BYTES = _ENTRY.size


@cache
def _fields_of(cls: type) -> Callable[[Any], tuple]:
    return attrgetter(*cls.__slots__)  # type: ignore[attr-defined]


def content_fingerprint(event: object) -> bytes:
    """What an event says, in 8 bytes: a retry has the same, a reused id with other content not.
    Decimals are normalized so that ``"1.50"`` and ``"1.5"`` say the same; ``repr`` of the tuple
    quotes every string, so no two different events print the same."""
    fields_of = _fields_of(type(event))  # type: ignore[arg-type]  # a class is hashable
    values = tuple(v.normalize() if isinstance(v, Decimal) else v for v in fields_of(event))
    # Fields added by a later schema version count only when set: an event written before they
    # existed keeps its fingerprint, so its retry after an upgrade is a duplicate, not a conflict.
    added = getattr(type(event), "ADDED_FIELDS", ())
    if added and all(getattr(event, name) == default for name, default in added):
        values = values[: len(values) - len(added)]
    text = f"{type(event).__name__}{values!r}".encode()
    return hashlib.blake2b(text, digest_size=8, person=b"billing-content").digest()


def id_key(main_account_id: str, event_id: str) -> bytes:
    """Unambiguous: each part is length-prefixed before hashing, so no two (main, id) pairs meet."""
    h = hashlib.blake2b(digest_size=KEY_BYTES, person=b"billing-event-id")
    for part in (main_account_id, event_id):
        data = part.encode()
        h.update(len(data).to_bytes(4, "big"))
        h.update(data)
    return h.digest()


@dataclass(frozen=True, slots=True)
class Entry:
    event_time_ms: int
    sequence: int  # the account's applied-event count right after this event
    content: bytes  # 8-byte fingerprint of what the event says

    def encode(self) -> bytes:
        return _ENTRY.pack(self.event_time_ms, self.sequence, self.content)

    @classmethod
    def decode(cls, data: bytes) -> Entry:
        t, seq, content = _ENTRY.unpack(data)
        return cls(t, seq, content)


class EntryStore(Protocol):
    """What the engine needs of the store: look up and record entries by key."""

    def get(self, key: bytes) -> Entry | None: ...

    def put(self, key: bytes, entry: Entry) -> None: ...


class MemoryEntries:
    """The offline store (``rating simulate``, tests, re-rating): a dict, pruned by the horizon.

    Entries are kept encoded (24 bytes each): bytes are not tracked by the garbage collector, so a
    million ids do not slow every collection down. Pruning follows insertion order, which is
    arrival order: an entry is dropped once the stream time has passed its event time by the
    horizon. A late entry behind younger ones waits for them (at most one more horizon), so the
    dict holds at most two horizons of ids.
    """

    def __init__(self, horizon_ms: int = DEFAULT_HORIZON_MS):
        self.horizon_ms = horizon_ms
        self.entries: dict[bytes, bytes] = {}
        self._order: deque[tuple[int, bytes]] = deque()

    def get(self, key: bytes) -> Entry | None:
        data = self.entries.get(key)
        return Entry.decode(data) if data is not None else None

    def put(self, key: bytes, entry: Entry) -> None:
        if key not in self.entries:
            self._order.append((entry.event_time_ms, key))
        self.entries[key] = entry.encode()

    def prune(self, clock_ms: int) -> int:
        cutoff, dropped = clock_ms - self.horizon_ms, 0
        while self._order and self._order[0][0] < cutoff:
            _, key = self._order.popleft()
            data = self.entries.get(key)
            if data is not None and Entry.decode(data).event_time_ms < cutoff:
                del self.entries[key]
                dropped += 1
        return dropped

    def __len__(self) -> int:
        return len(self.entries)


class RoundEntries:
    """A round's overlay on a durable store: reads see this round's writes first; the writes are
    kept apart so the worker can make them durable before the account states (see above).
    ``scope`` prefixes every key (live: the input partition, so that an entry can be deleted in
    its own table partition), and ``anchor`` is kept with each write for the caller (live: the
    faust event whose partition the entry is written to). Both are set before each apply."""

    def __init__(self, durable_get: Callable[[bytes], bytes | None]):
        self._durable_get = durable_get
        self.written: dict[bytes, tuple[Entry, Any]] = {}
        self.scope = b""
        self.anchor: Any = None

    def get(self, key: bytes) -> Entry | None:
        hit = self.written.get(self.scope + key)
        if hit is not None:
            return hit[0]
        data = self._durable_get(self.scope + key)
        return Entry.decode(data) if data is not None else None

    def put(self, key: bytes, entry: Entry) -> None:
        self.written[self.scope + key] = (entry, self.anchor)


def partition_scope(partition: int) -> bytes:
    return partition.to_bytes(2, "big")


def scope_partition(scoped_key: bytes) -> int:
    return int.from_bytes(scoped_key[:2], "big")
