"""Gateway settings: environment variables (GATEWAY_*) and flags, validated at start-up."""

from __future__ import annotations

from pathlib import Path
from typing import Self

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from service_runtime.settings import ServiceSettings
from service_runtime.tls import ClientTls


class GatewaySettings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="GATEWAY_", env_ignore_empty=True, populate_by_name=True, extra="forbid"
    )

    port: int = Field(8000, ge=0, le=65535, description="HTTP port")
    cache_server_address: str = Field(
        "127.0.0.1:50051",
        description="host:port of the cache server, or ip:port,ip:port for several (balanced)",
    )
    cache_server_tls_ca_file: Path | None = Field(
        None, description="CA that signed the cache servers' certificates: TLS to them"
    )
    cache_server_tls_cert_file: Path | None = Field(None, description="Client cert (mTLS)")
    cache_server_tls_key_file: Path | None = Field(None, description="Its private key")
    cache_server_tls_server_name: str | None = Field(
        None, description="Name in the cache servers' certificate, when not their host name"
    )
    request_timeout_s: float = Field(
        60.0, gt=0, le=600, description="Deadline of each call to the cache server, seconds"
    )
    chat_timeout_s: float = Field(
        600.0,
        gt=0,
        le=3600,
        description="Deadline of a chat completion through the cache server, seconds: a long "
        "completion is paid for, so it is not cut off at request_timeout_s",
    )
    # Tenants (service_runtime.tenants): the cache server enforces what each key may do and
    # its limits; the gateway turns away a request without a valid key before any work.
    api_key: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("GATEWAY_API_KEY", "SEMCACHE_API_KEY"),
        description="One key that may do everything: every route but /health needs "
        "'Authorization: Bearer <key>' (env SEMCACHE_API_KEY, shared with the cache server)",
    )
    keys_file: Path | None = Field(
        None,
        validation_alias=AliasChoices("GATEWAY_KEYS_FILE", "SEMCACHE_KEYS_FILE"),
        description="JSON file of API keys (their SHA-256) with their grants (env "
        "SEMCACHE_KEYS_FILE, shared with the cache server); wins over api_key",
    )
    keys_reload_s: float = Field(
        5.0,
        gt=0,
        validation_alias=AliasChoices("GATEWAY_KEYS_RELOAD_S", "SEMCACHE_KEYS_RELOAD_S"),
        description="Read keys_file again this often",
    )
    max_body_bytes: int = Field(1_048_576, ge=1024, description="Largest request body accepted")

    @model_validator(mode="after")
    def _safe(self) -> Self:
        _ = ClientTls(
            self.cache_server_tls_ca_file,
            self.cache_server_tls_cert_file,
            self.cache_server_tls_key_file,
        ).enabled
        if self.api_key is not None and len(self.api_key.get_secret_value()) < 16:
            raise ValueError("api_key is too short: use at least 16 characters")
        return self
