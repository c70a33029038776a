"""Cache server settings: environment variables (CACHE_*, and the original product's
SIMILARITY_THRESHOLD / MAX_CACHE_SIZE) and flags, validated at start-up."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from cache_server.savings import PriceTable
from cache_server.store.redis_store import RedisAccess
from service_runtime.settings import GrpcServiceSettings
from service_runtime.tls import ClientTls


class CacheSettings(GrpcServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="CACHE_", env_ignore_empty=True, populate_by_name=True, extra="forbid"
    )

    port: int = Field(50051, ge=0, le=65535, description="gRPC port (0: any free port)")
    store_backend: Literal["embedded", "redis"] = Field(
        "embedded",
        description="embedded: SQLite + in-process index (one server); redis: Redis with vector "
        "search, shared by many cache-server replicas",
    )
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="Redis for store_backend=redis; rediss:// for TLS",
    )
    redis_username: str | None = Field(None, description="Redis ACL user (AUTH), if not default")
    redis_password: SecretStr | None = Field(
        None, description="Redis password (AUTH); never logged. A password in redis_url wins"
    )
    redis_tls_ca_file: Path | None = Field(
        None, description="CA that signed Redis's certificate (with a rediss:// URL)"
    )
    redis_tls_cert_file: Path | None = Field(
        None, description="Client certificate for a Redis with tls-auth-clients"
    )
    redis_tls_key_file: Path | None = Field(None, description="Its private key")
    redis_prefix: str = Field("semcache", description="Key prefix in Redis (one per deployment)")
    redis_vector_algorithm: Literal["FLAT", "HNSW"] = Field(
        "FLAT",
        description="FLAT: exact, and no recall lost under attribute filters; HNSW: faster on "
        "very large caches (EF_RUNTIME below)",
    )
    redis_hnsw_ef_runtime: int = Field(64, ge=1, le=4096)
    data_dir: Path = Field(Path("data"), description="Folder of the embedded store")
    sqlite_synchronous: Literal["NORMAL", "FULL"] = Field(
        "NORMAL",
        description="NORMAL: an acknowledged write survives a crash of the process (kill -9); "
        "FULL: also a power cut, at one fsync per write",
    )
    embedder_addresses: str = Field(
        "127.0.0.1:50052",
        description="Comma-separated host:port list (a DNS name may resolve to several)",
    )
    embedder_tls_ca_file: Path | None = Field(
        None, description="CA that signed the embedders' certificates: TLS to the embedder"
    )
    embedder_tls_cert_file: Path | None = Field(None, description="Client certificate (mTLS)")
    embedder_tls_key_file: Path | None = Field(None, description="Its private key")
    embedder_tls_server_name: str | None = Field(
        None, description="Name in the embedders' certificate, when not their host name"
    )
    embedder_timeout_s: float = Field(5.0, gt=0, le=300, description="Deadline per embedder call")
    embedder_retries: int = Field(2, ge=0, le=10, description="Extra tries on other embedders")
    similarity_threshold: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        validation_alias=AliasChoices(
            "similarity_threshold", "CACHE_SIMILARITY_THRESHOLD", "SIMILARITY_THRESHOLD"
        ),
        description="Default hit threshold, cosine similarity (higher is stricter). Unset: the "
        "model's calibrated threshold (make calibrate), else 0.85",
    )
    verifier: Literal["auto", "off"] = Field(
        "auto",
        description="auto: ask the embedder's verifier (cross-encoder) about grey-zone "
        "candidates when it serves one; off: cosine similarity alone",
    )
    verifier_band_low: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="Similarity below which a candidate is a miss. Unset: the band calibrated "
        "with the verifier, else the hit threshold in force",
    )
    verifier_band_high: float | None = Field(
        None,
        ge=0.0,
        le=1.01,
        description="Similarity from which a candidate is a hit without asking (1.01: always "
        "ask). Unset: the calibrated band, else 1.01",
    )
    verifier_threshold: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="Verifier probability for a hit. Unset: the calibrated one, else 0.5",
    )
    verifier_candidates: int = Field(
        3, ge=1, le=32, description="Nearest candidates asked about per look-up, at most"
    )
    hit_policy: Literal["threshold", "verified"] = Field(
        "threshold",
        description="Default hit policy of a cache that sets none: threshold (a similarity "
        "threshold decides) or verified (per-entry thresholds learned online, kept under "
        "max_error_rate; docs/verified.md)",
    )
    max_error_rate: float = Field(
        0.02,
        gt=0.0,
        le=0.5,
        description="Verified policy: the share of served hits (or of requests, with "
        "verified_accounting=requests) that may be wrong, by default",
    )
    verified_accounting: Literal["hits", "requests"] = Field(
        "hits",
        description="Verified policy: what max_error_rate bounds by default: wrong hits over "
        "semantic hits served (hits), or over all requests, misses and explorations counting "
        "as right (requests, vCache's)",
    )
    verified_confidence: float = Field(
        0.9,
        ge=0.5,
        lt=1.0,
        description="Verified policy: confidence that the expected error of the hits served "
        "stays within max_error_rate (the bands' uncertainty is added at this confidence)",
    )
    verified_min_similarity: float = Field(
        0.70,
        ge=0.0,
        le=1.0,
        description="Verified policy: candidates below this similarity are plain misses",
    )
    verified_audit_rate: float = Field(
        0.01,
        ge=0.0,
        le=1.0,
        description="Verified policy: least share of served candidates explored anyway (more "
        "while the chance that serving is wrong is higher), to keep learning",
    )
    verified_unproven_explore_rate: float = Field(
        0.3,
        ge=0.0,
        le=1.0,
        description="Verified policy: share of served candidates explored while their "
        "similarity band knows only the prior; it falls as the band gathers its own evidence",
    )
    verified_seed: int | None = Field(
        None,
        description="Verified policy: seed of the draws that choose which served candidates "
        "are explored (reproducible tests and benchmarks); unset: random",
    )
    verified_judge: Literal["auto", "exact", "embedding", "llm"] = Field(
        "auto",
        description="How an exploration judges the cached answer against the fresh one: exact "
        "(normalised text), embedding (answer similarity >= verified_judge_threshold), llm "
        "(the upstream is asked); auto: exact with the demo responder, else embedding",
    )
    verified_judge_threshold: float = Field(
        0.9, ge=0.0, le=1.0, description="The embedding judge's answer similarity"
    )
    max_cache_size: int = Field(
        1000,
        ge=1,
        validation_alias=AliasChoices("max_cache_size", "CACHE_MAX_CACHE_SIZE", "MAX_CACHE_SIZE"),
        description="Entries per cache; least recently used are evicted beyond it",
    )
    max_caches: int = Field(
        10_000,
        ge=1,
        description="Caches (cache ids) the deployment holds, at most: a write that would open "
        "one more is RESOURCE_EXHAUSTED (HTTP 429) until one is flushed",
    )
    decisions_per_cache: int = Field(
        200,
        ge=0,
        le=100_000,
        description="Recent look-up decisions kept in memory per cache (ListDecisions, GET "
        "/v1/caches/{cacheId}/decisions), for at most max_caches caches; prompts truncated to "
        "500 characters (0: none kept)",
    )
    default_ttl_s: float | None = Field(None, gt=0, description="Default entry TTL, seconds")
    purge_interval_s: float = Field(5.0, gt=0, description="How often expired entries go")
    max_prompt_chars: int = Field(8192, ge=1)
    max_response_chars: int = Field(200_000, ge=1)
    ann_threshold: int = Field(
        20_000, ge=1, description="Entries in a cache from which HNSW replaces exact search"
    )
    hnsw_m: int = Field(16, ge=4, le=128)
    hnsw_ef_search: int = Field(
        128,
        ge=1,
        le=4096,
        description="HNSW search breadth (recall vs latency) up to 100k entries in a cache; "
        "beyond, it grows with the log of the size (x2 at 1M: recall@1 0.982 -> 0.994)",
    )
    blas_threads: int = Field(
        1,
        ge=1,
        le=64,
        description="OpenBLAS/numpy threads (exact search). Keep it small beside an embedder: "
        "two pools on the same cores slow each other down",
    )
    upstream_base_url: str | None = Field(
        None, description="OpenAI-compatible API base, e.g. https://api.openai.com/v1"
    )
    upstream_model: str = Field("gpt-4o-mini", description="Model name sent upstream")
    upstream_api_key: SecretStr | None = Field(None, description="Bearer key for the upstream")
    upstream_timeout_s: float = Field(
        30.0, gt=0, le=600, description="Deadline to connect to the upstream and send a request"
    )
    upstream_read_timeout_s: float = Field(
        600.0,
        gt=0,
        le=3600,
        description="Longest wait for the upstream's answer (a whole completion, or the next "
        "chunk of a stream): a long completion is paid for, so it is not cut off early",
    )
    log_prompts: bool = Field(
        False, description="Include prompts in the per-request log lines (off: ids and figures)"
    )
    upstream_models: str = Field(
        "",
        description="Comma-separated models the chat route may ask the upstream for, beside "
        "upstream_model ('*': any); a request naming another is refused (403)",
    )
    # Tenants (service_runtime.tenants): read by the gateway too, under the SEMCACHE_ names.
    api_key: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("CACHE_API_KEY", "SEMCACHE_API_KEY"),
        description="One key that may do everything (env SEMCACHE_API_KEY, shared with the "
        "gateway); every call then needs 'authorization: Bearer <key>'",
    )
    keys_file: Path | None = Field(
        None,
        validation_alias=AliasChoices("CACHE_KEYS_FILE", "SEMCACHE_KEYS_FILE"),
        description="JSON file of API keys (their SHA-256), each granting caches and actions "
        "(env SEMCACHE_KEYS_FILE); wins over api_key",
    )
    keys_reload_s: float = Field(
        5.0,
        gt=0,
        validation_alias=AliasChoices("CACHE_KEYS_RELOAD_S", "SEMCACHE_KEYS_RELOAD_S"),
        description="Read keys_file again this often: a revoked key stops working within it",
    )
    chat_passthrough: bool = Field(
        False,
        description="With no keys configured: may uncacheable chat requests go to the upstream "
        "(with keys, each key's 'passthrough' decides; the single api_key may)",
    )
    rate_limit_per_s: float | None = Field(
        None,
        gt=0,
        description="Requests per second per key (or client address without keys), unless the "
        "key sets its own; beyond it RESOURCE_EXHAUSTED / 429 with Retry-After. None: no limit",
    )
    rate_limit_burst: int = Field(20, ge=1, description="Requests a client may send at once")
    concurrency_limit: int | None = Field(
        None, ge=1, description="Requests one key (or address) may have in flight. None: any"
    )
    upstream_requests_per_day: int | None = Field(
        None, ge=1, description="Upstream LLM calls per key per UTC day, unless the key says"
    )
    upstream_tokens_per_day: int | None = Field(
        None, ge=1, description="Upstream tokens (from its usage) per key per UTC day"
    )
    prices: str | None = Field(
        None,
        description='What upstream tokens cost, per million, per model: JSON {"gpt-4o-mini": '
        '{"prompt": 0.15, "completion": 0.6}, "gpt-4o*": {...}} (a trailing * matches a '
        "prefix). Prices what each hit saves; a model not listed saves tokens, not money",
    )
    price_currency: str = Field(
        "USD", min_length=1, max_length=8, description="The currency of `prices`"
    )

    @property
    def redis_access(self) -> RedisAccess:
        return RedisAccess(
            username=self.redis_username,
            password=self.redis_password.get_secret_value() if self.redis_password else None,
            tls_ca_file=self.redis_tls_ca_file,
            tls_cert_file=self.redis_tls_cert_file,
            tls_key_file=self.redis_tls_key_file,
        )

    @property
    def allowed_models(self) -> frozenset[str]:
        listed = {m.strip() for m in self.upstream_models.split(",") if m.strip()}
        return frozenset({self.upstream_model, *listed})

    @property
    def price_table(self) -> PriceTable:
        return PriceTable.parse(self.prices, self.price_currency)

    @property
    def embedder_address_list(self) -> list[str]:
        return [a.strip() for a in self.embedder_addresses.split(",") if a.strip()]

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        _ = ClientTls(
            self.embedder_tls_ca_file, self.embedder_tls_cert_file, self.embedder_tls_key_file
        ).enabled
        self.redis_access.check(self.redis_url)
        _ = self.price_table  # raises ValueError saying what is wrong with CACHE_PRICES
        if not self.embedder_address_list:
            raise ValueError("embedder_addresses is empty")
        if self.upstream_base_url is not None and not self.upstream_base_url.startswith(
            ("http://", "https://")
        ):
            raise ValueError(f"upstream_base_url {self.upstream_base_url!r} is not an http(s) URL")
        return self
