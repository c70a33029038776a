"""The entries of an import (cache_server.transfer): each one as an export gave it, the checks
that refuse it on its own (Set's limits, its times and cost), the vector it may keep, and
what the import did with the batch."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from cache_server.cache_types import CachePolicy, FloatArray
from cache_server.entries import (
    MAX_TTL_SECONDS,
    AnswerCost,
    CacheEntry,
    InvalidInputError,
    check_attributes,
    check_text,
    entry_id,
)

UNIT_TOLERANCE = 1e-3  # how far from length 1 a vector may be and still be used as it is


@dataclass(frozen=True)
class Incoming:
    """One entry of an import batch, as an export gave it."""

    prompt: str
    response: str
    attributes: Mapping[str, str]
    created_at: float  # Unix seconds; 0: not known (the time of the import is used)
    expires_at: float | None  # Unix seconds; None: never
    cost: AnswerCost | None
    vector: bytes  # little-endian float32; b"" for none


@dataclass(frozen=True)
class Refusal:
    index: int  # the entry's position in its batch
    reason: str  # see the ImportRefusal message of the proto
    message: str


@dataclass
class ImportOutcome:
    imported: int = 0
    reembedded: int = 0
    skipped_expired: int = 0
    refused: list[Refusal] = field(default_factory=list)


class Refused(Exception):
    """An entry that breaks one of the rules: refused alone, for `reason`."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def checked_entry(cache_id: str, incoming: Incoming, now: float, policy: CachePolicy) -> CacheEntry:
    """The entry to store in `cache_id`, under the id computed for that cache; Refused when
    it breaks a rule (see cache_server.transfer)."""
    for name, text, limit in (
        ("prompt", incoming.prompt, policy.max_prompt_chars),
        ("response", incoming.response, policy.max_response_chars),
    ):
        try:
            check_text(name, text, limit)
        except InvalidInputError as exc:
            raise Refused(name, str(exc)) from None
    try:
        # The cache server's own scope attributes (chat_scope) come back with its entries.
        attributes = check_attributes(incoming.attributes)
    except InvalidInputError as exc:
        raise Refused("attributes", str(exc)) from None
    created_at = incoming.created_at or now
    expires_at = incoming.expires_at
    if not math.isfinite(created_at) or created_at < 0:
        raise Refused("times", f"created_at {created_at} is not a time")
    if expires_at is not None and not expires_at - now <= MAX_TTL_SECONDS:
        raise Refused("times", f"expires_at {expires_at} is further than the longest TTL from now")
    cost = incoming.cost
    seconds = cost.upstream_seconds if cost is not None else 0.0
    if not (math.isfinite(seconds) and seconds >= 0):
        raise Refused("cost", f"upstream_seconds {seconds} is not a duration")
    return CacheEntry(
        cache_id=cache_id,
        id=entry_id(cache_id, incoming.prompt, attributes),
        prompt=incoming.prompt,
        response=incoming.response,
        attributes=attributes,
        created_at=created_at,
        expires_at=expires_at,
        cost=cost,
    )


def usable_vector(blob: bytes, dimension: int) -> FloatArray | None:
    """The vector in `blob` when it has `dimension` finite values and unit length, else None."""
    if len(blob) != 4 * dimension:
        return None
    vector = np.frombuffer(blob, dtype="<f4").astype(np.float32)
    if not np.all(np.isfinite(vector)):
        return None
    if abs(float(np.linalg.norm(vector)) - 1.0) > UNIT_TOLERANCE:
        return None
    return vector


def too_many_caches(limit: int) -> str:
    return (
        f"the cache would be one too many: this deployment holds at most {limit} caches "
        "(max_caches)"
    )
