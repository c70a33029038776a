"""Where RedisStore keeps what, in Redis: key layout version 2.

A cache id is never part of a key. Each cache gets a token, the first 32 hex characters of the
SHA-256 of its id: fixed length, so no cache's key space is a prefix of another's whatever the
ids (`a` and `a:e:x`, `*`, `{`, spaces, unicode, 1000 characters), and written inside braces, a
Redis Cluster hash tag, so that every key of one cache lies in one hash slot. Under
`{prefix}:v2:`:

- `caches` — the registry, a hash: token -> cache id, for every cache held (from its first
  entry until it is flushed); its size is what `max_caches` bounds. The one key not in a
  cache's slot.
- `{token}:meta` — a hash: the cache id and the dimension of its vectors. It exists exactly
  while the cache's index exists: the put script creates both, the last flush step drops both.
- `{token}:e:{entry_id}` — a hash per entry (prompt, response, attributes, times, float32
  vector); an entry with a TTL carries a Redis expiry (PEXPIRE), so Redis itself drops it.
  Its field `ev` holds the entry's observations for the verified hit policy (packed records,
  `cache_server.learned_thresholds.evidence`), so they go with the hash (delete, eviction, expiry,
  flush), and a re-put (which DELs the hash first) starts the new answer with none. `ev` is
  not in the index schema and not in ENTRY_FIELDS, so searches neither filter on it nor
  return it; RediSearch (2.10) does re-index the document on any HSET, so each observation
  costs one re-index of its entry (observations follow an LLM call each: rare next to
  look-ups). HSET leaves the hash's PEXPIRE as it is.
- `{token}:lru` — a sorted set of entry ids by last use: the entries the cache holds (expired
  ones too, until purged), for the size cap.
- `{token}:exp` — a sorted set of entry ids by expiry time, so expirations are counted once.
- `{token}:stats` — a hash of counters (hits, misses, evictions, expirations) all replicas
  share; it outlives a flush (reset_counters removes it).
- `{token}:feedback`, `{token}:rejected` — feedback reports and the exclusions they make
  (redis_feedback); a flush removes both.
- `{token}:marks` — a sorted set of marks by time (answers served for a prompt, reports
  counted: cache_server.feedback), the newest feedback.MAX_MARKS_PER_CACHE kept, added to
  only while `meta` exists; a flush removes it.
- `{token}:pool` — a string: the cache's pooled observations (the last
  evidence.MAX_PER_CACHE records, oldest first), appended to only while `meta` exists (the
  cache is held). The last flush step deletes it together with `meta`, so no observation
  lands in the pool of a cache no longer held.
- `policies` — a hash: token -> cache id, of every cache with a hit policy set (what bounds
  how many caches that hold nothing may have one). Outside the caches' slots, like `caches`.
- `{token}:policy` — a string: the cache's hit policy (JSON) as set. Configuration, not data:
  a flush does not delete it (flush deletes the keys it names, never a SCAN of the cache's
  pattern), so it outlives the cache's entries; setting None deletes it.
- the RediSearch index `{prefix}:v2:{token}:idx` (not a key) over the entry hashes: TAG fields
  for the exact-match key and the attributes, NUMERIC `created_at` and `live_until` (the expiry,
  `inf` for none: searches filter on it, so expired entries never crowd out live ones), and a
  VECTOR field (cosine). FLAT by default: exact, and a TAG-filtered FLAT search loses no
  neighbour (measured here: HNSW with a TAG filter lost 7-8% of true nearest neighbours, and
  HNSW's default EF_RUNTIME 10 lost recall even unfiltered).

Every change that spans keys is one Lua script (`redis_scripts`) or MULTI transaction, atomic:
an entry hash, its lru and exp members and the counters never disagree, whatever is cancelled
or fails. The
scripts touching one cache's keys stay in its slot; put and the last flush step also touch
the registry (they must, for `max_caches` to hold under concurrency). The first layout
(`{prefix}:{cache_id}:...`, a `{prefix}:_caches` set) is not read: `legacy_layout_warning`
describes what is left of it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from cache_server.entries import SCOPE_ATTRIBUTES, AnswerCost, CacheEntry, unnamed_scopes

VERSION = "v2"
TOKEN_CHARS = 32
# Fields of an entry hash a search returns (besides the distance).
ENTRY_FIELDS = ("id", "prompt", "response", "attributes", "created_at", "expires_at", "cost")


@dataclass(frozen=True)
class CacheKeys:
    """The keys (and index) of one cache."""

    cache_id: str
    token: str
    root: str  # `{prefix}:v2:{token}:`

    @property
    def meta(self) -> str:
        return self.root + "meta"

    @property
    def lru(self) -> str:
        return self.root + "lru"

    @property
    def exp(self) -> str:
        return self.root + "exp"

    @property
    def stats(self) -> str:
        return self.root + "stats"

    @property
    def feedback(self) -> str:
        """The cache's feedback reports, a list of JSON objects, oldest first."""
        return self.root + "feedback"

    @property
    def marks(self) -> str:
        """Sorted set: the cache's marks (served answers, counted reports) by when made."""
        return self.root + "marks"

    @property
    def rejected(self) -> str:
        """Hash: prompt key -> JSON {entry id: [created_at of the answer reported wrong, id of
        the report that said so]} (the exclusion goes when that report leaves the list)."""
        return self.root + "rejected"

    @property
    def pool(self) -> str:
        """String: the cache's pooled observations (verified hit policy)."""
        return self.root + "pool"

    @property
    def policy(self) -> str:
        """String: the cache's hit policy (JSON); kept by a flush."""
        return self.root + "policy"

    @property
    def entry_prefix(self) -> str:
        return self.root + "e:"

    @property
    def index(self) -> str:
        return self.root + "idx"

    def entry(self, entry_id: str) -> str:
        return self.entry_prefix + entry_id

    @property
    def pattern(self) -> str:
        """A SCAN pattern matching every key of this cache (and nothing else: the token is
        hex, with no glob character)."""
        return self.root + "*"


class KeyLayout:
    def __init__(self, prefix: str) -> None:
        if "{" in prefix or "}" in prefix:
            raise ValueError(f"Redis key prefix {prefix!r} must not hold '{{' or '}}'")
        self.prefix = prefix
        self.base = f"{prefix}:{VERSION}:"
        self.registry = self.base + "caches"

    def cache(self, cache_id: str) -> CacheKeys:
        token = hashlib.sha256(cache_id.encode()).hexdigest()[:TOKEN_CHARS]
        return CacheKeys(cache_id, token, f"{self.base}{{{token}}}:")

    def is_legacy_index(self, name: str) -> bool:
        """An index of the first layout (`{prefix}:{cache_id}:idx`): its cache ids had no
        braces, every index of this one has."""
        return name.startswith(f"{self.prefix}:") and "{" not in name

    @property
    def policies(self) -> str:
        """Hash: token -> cache id, of every cache with a hit policy set (held or not)."""
        return f"{self.base}policies"

    @property
    def legacy_registry(self) -> str:
        return f"{self.prefix}:_caches"


def index_arguments(
    keys: CacheKeys,
    dimension: int,
    algorithm: Literal["FLAT", "HNSW"],
    hnsw_m: int,
    hnsw_ef_runtime: int,
) -> list[str]:
    """FT.CREATE's arguments after the index name."""
    vector = ["TYPE", "FLOAT32", "DIM", str(dimension), "DISTANCE_METRIC", "COSINE"]
    if algorithm == "HNSW":
        vector += ["M", str(hnsw_m), "EF_RUNTIME", str(hnsw_ef_runtime)]
    return [
        "ON",
        "HASH",
        "PREFIX",
        "1",
        keys.entry_prefix,
        "SCHEMA",
        "pkey",
        "TAG",
        "atags",
        "TAG",
        "SEPARATOR",
        ",",
        "created_at",
        "NUMERIC",
        "SORTABLE",
        "live_until",
        "NUMERIC",
        "vector",
        "VECTOR",
        algorithm,
        str(len(vector)),
        *vector,
    ]


def tag(name: str, value: str) -> str:
    """Attribute pairs as hex tokens: nothing to escape in a RediSearch TAG query."""
    return hashlib.sha1(f"{name}\0{value}".encode()).hexdigest()[:20]


def scope_marker(name: str) -> str:
    """The token of an entry that carries scope attribute `name` at all (whatever its value;
    no attribute value is empty): what a look-up that does not name it excludes."""
    return tag(name, "")


def live_filter(attributes: Mapping[str, str], now: float) -> str:
    """A query for the entries alive at `now` that a look-up within `attributes` finds
    (entries.in_scope): every attribute carried, no scope attribute it does not name."""
    scope = " ".join(f"@atags:{{{tag(k, v)}}}" for k, v in sorted(attributes.items()))
    unnamed = " ".join(f"-@atags:{{{scope_marker(name)}}}" for name in unnamed_scopes(attributes))
    return f"@live_until:[({now!r} +inf] {scope} {unnamed}".strip()


def attribute_filter(attributes: Mapping[str, str]) -> str:
    return " ".join(f"@atags:{{{tag(k, v)}}}" for k, v in sorted(attributes.items())) or "*"


def entry_fields(entry: CacheEntry, pkey: str, vector: bytes) -> list[Any]:
    """The entry hash, as field/value pairs."""
    fields: dict[str, Any] = {
        "id": entry.id,
        "prompt": entry.prompt,
        "pkey": pkey,
        "response": entry.response,
        "attributes": json.dumps(dict(entry.attributes), ensure_ascii=False),
        "atags": ",".join(
            [tag(k, v) for k, v in entry.attributes.items()]
            + [scope_marker(name) for name in SCOPE_ATTRIBUTES.intersection(entry.attributes)]
        ),
        "created_at": repr(entry.created_at),
        "expires_at": repr(entry.expires_at) if entry.expires_at is not None else "",
        "live_until": repr(entry.expires_at) if entry.expires_at is not None else "inf",
        "cost": entry.cost.to_json() if entry.cost is not None else "",
        "vector": vector,
    }
    return [item for pair in fields.items() for item in pair]


def decode_entry(cache_id: str, raw: Mapping[bytes, bytes], now: float) -> CacheEntry | None:
    """The entry in a hash (or a search reply's fields); None once expired at `now`."""
    expires = raw.get(b"expires_at", b"")
    expires_at = float(expires) if expires else None
    if expires_at is not None and expires_at <= now:
        return None
    return CacheEntry(
        cache_id=cache_id,
        id=raw[b"id"].decode(),
        prompt=raw[b"prompt"].decode(),
        response=raw[b"response"].decode(),
        attributes=json.loads(raw[b"attributes"]),
        created_at=float(raw[b"created_at"]),
        expires_at=expires_at,
        cost=AnswerCost.from_json(raw.get(b"cost")),
    )
