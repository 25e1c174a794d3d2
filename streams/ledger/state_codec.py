"""How an account state is stored: its JSON (``AccountState.dumps``), compressed with a preset
dictionary of typical states.

Why: an account's record is one value of the worker's table, held in memory (or RocksDB) and
written to the changelog after every round that touched the account. As JSON it is 0.9 to 3 KB,
mostly field names and default values that every account repeats; raw deflate primed with a
dictionary made of such records stores the same record in about 150 bytes (`make bench`: state
per 100,000 accounts), at about 20 us to compress and 5 us to decompress.

Format: one marker byte, then the deflate stream. ``{`` (an uncompressed JSON record, as every
version before this one wrote) is read as it is, so stored states of earlier versions stay
readable. The dictionary is part of the format: ``state_zdict_v1.bin`` must never change (a test
pins its digest); a better one is a new marker with a file of its own, and readers of both.
"""

from __future__ import annotations

import zlib
from pathlib import Path

ZDICT_V1 = (Path(__file__).parent / "state_zdict_v1.bin").read_bytes()
DEFLATE_V1 = 0x01
_JSON = ord("{")
_COMPRESSOR_V1 = zlib.compressobj(6, zlib.DEFLATED, -15, zdict=ZDICT_V1)
_DECOMPRESSOR_V1 = zlib.decompressobj(-15, zdict=ZDICT_V1)


class StateEncodingError(ValueError):
    pass


def pack_state(json_bytes: bytes) -> bytes:
    """The stored form of a state's JSON. Copies of a primed compressor skip loading the
    dictionary each time (most of the cost of a fresh one)."""
    compressor = _COMPRESSOR_V1.copy()
    return bytes((DEFLATE_V1,)) + compressor.compress(json_bytes) + compressor.flush()


def unpack_state(stored: bytes, max_bytes: int) -> bytes:
    """The JSON of a stored state, never longer than ``max_bytes`` (a record that would inflate
    past it is refused before it is held in memory)."""
    if not stored:
        raise StateEncodingError("empty account state record")
    marker = stored[0]
    if marker == _JSON:
        return stored
    if marker != DEFLATE_V1:
        raise StateEncodingError(f"unknown account state encoding 0x{marker:02x}")
    decompressor = _DECOMPRESSOR_V1.copy()
    try:
        data = decompressor.decompress(stored[1:], max_bytes + 1)
    except zlib.error as exc:
        raise StateEncodingError(f"corrupt account state record: {exc}") from exc
    if len(data) > max_bytes:
        raise StateEncodingError(f"account state inflates past {max_bytes} bytes")
    if not decompressor.eof or decompressor.unused_data:
        raise StateEncodingError("truncated or padded account state record")
    return data
