"""What the cache stores, how entries are named, and what input is acceptable."""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from service_runtime import cache_ids
from service_runtime.cache_ids import CACHE_ID_PATTERN

DEFAULT_CACHE_ID = "default"
_CACHE_ID = re.compile(CACHE_ID_PATTERN)
_ATTRIBUTE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")
_ENTRY_ID = re.compile(r"^[0-9a-f]{32}$")
# Caches the gateway keeps for itself (the rewrites of conversational search). Accepted beside
# the rule above, which no id starting with "_" passes, and neither does the REST API's
# pattern: no REST client can read, fill or flush them; gRPC callers can, deliberately.
RESERVED_CACHE_IDS = frozenset(cache_ids.RESERVED_SCOPES)
# Scope attributes mark an entry as written for one surface: an entry carrying one is found
# only by a look-up that names it with the same value (every other attribute merely filters:
# an entry carrying more attributes than a look-up names is still found). `chat_scope` is the
# cache server's digest of a chat request (cache_server.chat_scope), `lc_scope` the LangChain
# cache's digest of its prompt and LLM string (semcache_client.langchain).
CHAT_SCOPE_ATTRIBUTE = "chat_scope"
SCOPE_ATTRIBUTES = frozenset({CHAT_SCOPE_ATTRIBUTE, "lc_scope"})
# Attributes only the cache server writes: a caller may name them in a look-up, never store them.
SERVER_ATTRIBUTES = frozenset({CHAT_SCOPE_ATTRIBUTE})
MAX_ATTRIBUTES = 32
MAX_ATTRIBUTE_VALUE_CHARS = 1024
MAX_TTL_SECONDS = 10 * 365 * 24 * 3600.0
MAX_RESULTS = 100


class InvalidInputError(ValueError):
    """The request is malformed; the message says what to fix."""


class EntryNotFoundError(LookupError):
    """No entry with that id in that cache."""


@dataclass(frozen=True)
class AnswerCost:
    """What one upstream call that produced a stored answer cost."""

    prompt_tokens: int
    completion_tokens: int
    upstream_seconds: float
    model: str

    def to_json(self) -> str:
        return json.dumps(
            [self.prompt_tokens, self.completion_tokens, self.upstream_seconds, self.model]
        )

    @classmethod
    def from_json(cls, text: str | bytes | None) -> AnswerCost | None:
        """The cost as to_json wrote it; None for an entry without one (or unreadable)."""
        if not text:
            return None
        try:
            prompt, completion, seconds, model = json.loads(text)
            return cls(int(prompt), int(completion), float(seconds), str(model))
        except (ValueError, TypeError):
            return None


@dataclass(frozen=True)
class CacheEntry:
    cache_id: str
    id: str
    prompt: str
    response: str
    attributes: Mapping[str, str] = field(default_factory=dict)
    created_at: float = 0.0  # Unix seconds
    expires_at: float | None = None  # Unix seconds; None: never
    # What producing the answer cost upstream (cache_server.savings); None: stored by Set.
    cost: AnswerCost | None = None

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and self.expires_at <= now

    def matches(self, attributes: Mapping[str, str]) -> bool:
        """Whether a look-up within `attributes` finds this entry (`in_scope`)."""
        return in_scope(self.attributes, attributes)


def in_scope(carried: Mapping[str, str], wanted: Mapping[str, str]) -> bool:
    """The look-up rule, for every store and surface: an entry carrying `carried` is found by
    a look-up within `wanted` when it carries every wanted attribute with the same value, and
    no scope attribute (SCOPE_ATTRIBUTES) that the look-up does not name."""
    if any(carried.get(k) != v for k, v in wanted.items()):
        return False
    return not any(name in carried and name not in wanted for name in SCOPE_ATTRIBUTES)


def unnamed_scopes(wanted: Mapping[str, str]) -> list[str]:
    """The scope attributes a look-up within `wanted` must find absent (sorted)."""
    return sorted(name for name in SCOPE_ATTRIBUTES if name not in wanted)


def normalize_prompt(prompt: str) -> str:
    """Exact matching ignores surrounding whitespace and nothing else."""
    return prompt.strip()


def prompt_key(prompt: str) -> str:
    return hashlib.sha256(normalize_prompt(prompt).encode()).hexdigest()


def entry_id(cache_id: str, prompt: str, attributes: Mapping[str, str]) -> str:
    """Deterministic: the same prompt and attributes in the same cache is the same entry."""
    material = json.dumps(
        [cache_id, normalize_prompt(prompt), sorted(attributes.items())], ensure_ascii=False
    )
    return hashlib.sha256(material.encode()).hexdigest()[:32]


def check_cache_id(cache_id: str, *, reserved: bool = True) -> str:
    """A valid cache id ("" is the default cache); `reserved`: a cache the cache server keeps
    for itself (RESERVED_CACHE_IDS) is acceptable here."""
    if not cache_id:
        return DEFAULT_CACHE_ID
    if cache_id in RESERVED_CACHE_IDS and not reserved:
        raise InvalidInputError(f"cache {cache_id!r} is reserved for the cache server's own use")
    if not _CACHE_ID.match(cache_id) and cache_id not in RESERVED_CACHE_IDS:
        raise InvalidInputError(
            f"cache_id {cache_id[:40]!r} is invalid: 1-128 characters of letters, digits and "
            "_ . : -, starting with a letter or digit"
        )
    return cache_id


MAX_ENTRY_ID_CHARS = 256


def check_entry_id(value: str) -> bool:
    """Whether an entry could have this id (ids are 32 lowercase hex characters). An id that
    cannot exist is simply not found; only an empty or absurdly long one is bad input."""
    if not value or len(value) > MAX_ENTRY_ID_CHARS:
        raise InvalidInputError(
            f"entry id of {len(value)} characters: ids are 32 lowercase hex characters"
        )
    return _ENTRY_ID.match(value) is not None


def check_text(name: str, value: str, max_chars: int) -> str:
    if not value.strip():
        raise InvalidInputError(f"{name} is empty")
    if len(value) > max_chars:
        raise InvalidInputError(f"{name} has {len(value)} characters; the limit is {max_chars}")
    return value


def check_attributes(attributes: Mapping[str, str], *, writing: bool = False) -> dict[str, str]:
    """Valid attributes; `writing`: for an entry to store, which may not carry an attribute
    only the cache server writes (SERVER_ATTRIBUTES)."""
    if writing:
        for name in SERVER_ATTRIBUTES.intersection(attributes):
            raise InvalidInputError(
                f"attribute {name!r} is the cache server's own (the scope of a chat request): "
                "it can be searched for, not stored"
            )
    if len(attributes) > MAX_ATTRIBUTES:
        raise InvalidInputError(
            f"{len(attributes)} attributes; at most {MAX_ATTRIBUTES} are allowed"
        )
    for name, value in attributes.items():
        if not _ATTRIBUTE_NAME.match(name):
            raise InvalidInputError(
                f"attribute name {name[:40]!r} is invalid: 1-64 characters of letters, digits "
                "and _ . -, starting with a letter or _"
            )
        if not value or len(value) > MAX_ATTRIBUTE_VALUE_CHARS:
            raise InvalidInputError(
                f"attribute {name!r} must have a value of 1-{MAX_ATTRIBUTE_VALUE_CHARS} characters"
            )
    return dict(attributes)


def check_threshold(value: float | None, default: float) -> float:
    if value is None:
        return default
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise InvalidInputError(
            f"similarity_threshold {value} is outside [0, 1] (cosine similarity; higher is "
            "stricter)"
        )
    return value


def check_ttl(value: float | None, default: float | None) -> float | None:
    if value is None:
        return default
    if not math.isfinite(value) or not 0.0 < value <= MAX_TTL_SECONDS:
        raise InvalidInputError(
            f"ttl_seconds {value} must be > 0 and at most {MAX_TTL_SECONDS:.0f}"
        )
    return value


def check_max_results(value: int) -> int:
    if value == 0:
        return 1
    if not 1 <= value <= MAX_RESULTS:
        raise InvalidInputError(f"max_results {value} must be between 1 and {MAX_RESULTS}")
    return value
