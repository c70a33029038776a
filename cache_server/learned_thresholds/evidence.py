"""Observations, packed: two bytes each, so that an entry's evidence fits in its row (SQLite)
or its hash (Redis) and an append is a string operation both stores do atomically.

A record is a big-endian uint16: bit 15 says whether the cached answer was right, bits 0-14
hold the cosine similarity times SCALE (similarities below 0 are kept as 0). Oldest first; an
append beyond the limit drops the oldest (a Lua script does the same on Redis).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

RECORD_BYTES = 2
SCALE = 20_000  # similarity resolution 5e-5; 1.0 -> 20000 < 2**15
CORRECT_BIT = 0x8000
MAX_PER_ENTRY = 64  # observations kept per entry (the most recent)
MAX_PER_CACHE = 8192  # observations pooled per cache (the most recent), for the prior

FloatArray = npt.NDArray[np.float64]


def record(similarity: float, correct: bool) -> bytes:
    level = round(min(1.0, max(0.0, similarity)) * SCALE)
    return (level | (CORRECT_BIT if correct else 0)).to_bytes(RECORD_BYTES, "big")


def append(blob: bytes, new: bytes, limit: int) -> bytes:
    """`blob` with the records in `new` added, keeping the last `limit` records."""
    joined = blob[len(blob) % RECORD_BYTES :] + new  # a torn record never survives
    return joined[-limit * RECORD_BYTES :]


def decode(blob: bytes) -> tuple[FloatArray, FloatArray]:
    """(similarities, labels 1.0/0.0), oldest first."""
    usable = len(blob) - len(blob) % RECORD_BYTES
    raw = np.frombuffer(blob[:usable], dtype=">u2").astype(np.int64)
    similarities = (raw & ~CORRECT_BIT).astype(np.float64) / SCALE
    labels = ((raw & CORRECT_BIT) != 0).astype(np.float64)
    return similarities, labels


def count(blob: bytes) -> int:
    return len(blob) // RECORD_BYTES
