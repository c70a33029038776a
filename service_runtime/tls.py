"""TLS, and optional mutual TLS, for the gRPC hops (gateway -> cache server -> embedder).

Certificates come from files named in each service's settings. A server with a certificate
and key speaks TLS only; with a client CA as well, it also demands a client certificate signed
by that CA (mutual TLS). A client with a CA file checks the server against it; with a
certificate and key as well, it presents them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from service_runtime.tracing_grpc import client_interceptors


class TlsConfigError(ValueError):
    """TLS settings that cannot work (e.g. a certificate without its key)."""


def _read(path: Path | None) -> bytes | None:
    return path.read_bytes() if path is not None else None


@dataclass(frozen=True)
class ServerTls:
    cert_file: Path | None = None
    key_file: Path | None = None
    client_ca_file: Path | None = None

    @property
    def enabled(self) -> bool:
        if (self.cert_file is None) != (self.key_file is None):
            raise TlsConfigError("tls_cert_file and tls_key_file go together")
        if self.client_ca_file is not None and self.cert_file is None:
            raise TlsConfigError("tls_client_ca_file (mutual TLS) needs tls_cert_file/key_file")
        return self.cert_file is not None

    def credentials(self) -> grpc.ServerCredentials:
        key, cert = _read(self.key_file), _read(self.cert_file)
        assert key is not None and cert is not None
        ca = _read(self.client_ca_file)
        return grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
        )


@dataclass(frozen=True)
class ClientTls:
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    server_name: str | None = None  # the name in the server's certificate, if not the host

    @property
    def enabled(self) -> bool:
        if (self.cert_file is None) != (self.key_file is None):
            raise TlsConfigError("a client certificate and its key go together")
        if self.cert_file is not None and self.ca_file is None:
            raise TlsConfigError("a client certificate (mutual TLS) needs the server's CA file")
        return self.ca_file is not None

    def channel(self, target: str, options: Sequence[tuple[str, Any]] = ()) -> grpc.aio.Channel:
        """A secure channel when TLS is configured, else a plaintext one; its calls traced
        when tracing is on (service_runtime.tracing_grpc)."""
        interceptors = client_interceptors()
        if not self.enabled:
            return grpc.aio.insecure_channel(
                target, options=list(options), interceptors=interceptors
            )
        credentials = grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca_file),
            private_key=_read(self.key_file),
            certificate_chain=_read(self.cert_file),
        )
        extra = [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []
        return grpc.aio.secure_channel(
            target, credentials, options=[*options, *extra], interceptors=interceptors
        )
