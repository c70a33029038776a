"""Settings from flags over environment variables, for every service.

Each field of a pydantic-settings class becomes a flag `--field-name`; a flag beats the
environment, which beats the default; pydantic validates the result at start-up.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, Self, TypeVar

from pydantic import Field, ValidationError, model_validator
from pydantic_settings import BaseSettings

from service_runtime.logs import configure_logging
from service_runtime.tls import ServerTls
from service_runtime.tracing import TracingConfigError, setup_tracing


class ServiceSettings(BaseSettings):
    """What every service is configured with; each adds its own fields and env prefix."""

    host: str | None = Field(
        None,
        description="Interface to listen on (default 0.0.0.0; for the gateway and the cache "
        "server, 127.0.0.1 while no API key is configured)",
    )

    def listen_host(self, *, open_to_all: bool = False) -> str:
        """The interface to listen on: `host` if set; else every interface, or loopback only
        for a service that anyone reaching it could use (`open_to_all`: no keys)."""
        if self.host is not None:
            return self.host
        return "127.0.0.1" if open_to_all else "0.0.0.0"

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = Field(
        "text", description="json: one JSON object per line (with the request id)"
    )


class GrpcServiceSettings(ServiceSettings):
    """What every gRPC service (embedder, cache server) is configured with, for the shell it
    runs in (service_runtime.grpc_service): port, TLS, shutdown grace, metrics."""

    port: int = Field(0, ge=0, le=65535, description="gRPC port (0: any free port)")
    port_file: Path | None = Field(None, description="Write the bound port here once listening")
    tls_cert_file: Path | None = Field(None, description="Server certificate (PEM): TLS on")
    tls_key_file: Path | None = Field(None, description="Its private key (PEM)")
    tls_client_ca_file: Path | None = Field(
        None, description="CA of accepted client certificates: mutual TLS on"
    )
    grace_period_s: float = Field(10.0, ge=0, description="SIGTERM: seconds to finish in-flight")
    max_connection_age_s: float = Field(
        60.0,
        ge=0,
        description="Close each client connection after this long (gRPC adds up to 10%% jitter; "
        "in-flight calls get grace_period_s), so clients resolve the name again and reach "
        "replicas added since (0: never)",
    )
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="Serve Prometheus /metrics on this port (none: off)"
    )

    @property
    def server_tls(self) -> ServerTls:
        return ServerTls(self.tls_cert_file, self.tls_key_file, self.tls_client_ca_file)

    @model_validator(mode="after")
    def _server_tls_consistent(self) -> Self:
        _ = self.server_tls.enabled  # raises for a half-configured pair
        return self


S = TypeVar("S", bound=ServiceSettings)


def settings_from_args(cls: type[S], argv: Sequence[str] | None, prog: str) -> S:
    """Builds settings from flags (one `--field-name` per field) over environment variables."""
    parser = argparse.ArgumentParser(prog=prog, description=cls.__doc__)
    for name, field in cls.model_fields.items():
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            default=None,
            metavar=name.upper(),
            help=f"{field.description or ''} (env {_env_name(cls, name)}; default {field.default})",
        )
    given = {k: v for k, v in vars(parser.parse_args(argv)).items() if v is not None}
    return cls(**given)


def _env_name(cls: type[BaseSettings], name: str) -> str:
    prefix = str(cls.model_config.get("env_prefix", ""))
    return f"{prefix}{name}".upper()


def describe_errors(error: ValidationError) -> str:
    """One line per invalid setting, without the values given: pydantic's own text quotes
    them, secrets (passwords, API keys) included."""
    lines = []
    for e in error.errors(include_url=False, include_input=False, include_context=False):
        where = ".".join(str(part) for part in e["loc"]) or "settings"
        lines.append(f"  {where}: {e['msg']}")
    return "\n".join(lines)


def start_service(cls: type[S], argv: Sequence[str] | None, service: str) -> S | None:
    """Settings of `service` from flags and environment, with logging configured (lines tagged
    with the service's name) and traces when OTEL_* asks for them (service_runtime.tracing);
    None, after saying why on stderr, when the settings are invalid."""
    try:
        settings = settings_from_args(cls, argv, prog=f"python -m {service}")
    except ValidationError as exc:
        print(f"{service}: invalid settings:\n{describe_errors(exc)}", file=sys.stderr)
        return None
    configure_logging(service, settings.log_level, settings.log_format)
    try:
        setup_tracing(service)
    except TracingConfigError as exc:
        print(f"{service}: invalid settings:\n  {exc}", file=sys.stderr)
        return None
    return settings
