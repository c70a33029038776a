"""How the cache server reaches Redis: credentials, TLS, and URLs fit for logs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit


@dataclass(frozen=True)
class RedisAccess:
    """Credentials and TLS for reaching Redis, beside its URL.

    A password in the URL (redis://user:password@host) works too and wins over this one. TLS
    is chosen by the URL scheme (rediss://); the CA file checks Redis's certificate (without
    one, the system's CAs do), and a client certificate and key answer a Redis that demands
    them (`tls-auth-clients yes`)."""

    username: str | None = None
    password: str | None = None
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None

    def check(self, url: str) -> None:
        """Raises ValueError for settings that cannot work together."""
        scheme = urlsplit(url).scheme
        if scheme not in ("redis", "rediss", "unix"):
            raise ValueError(
                f"redis_url {redacted_url(url)!r}: scheme must be redis, rediss or unix"
            )
        files = (self.tls_ca_file, self.tls_cert_file, self.tls_key_file)
        if any(f is not None for f in files) and scheme != "rediss":
            raise ValueError("Redis TLS files are set but redis_url is not rediss://")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("redis_tls_cert_file and redis_tls_key_file go together")

    def connection_options(self, url: str) -> dict[str, Any]:
        self.check(url)
        options: dict[str, Any] = {}
        if self.username is not None:
            options["username"] = self.username
        if self.password is not None:
            options["password"] = self.password
        if urlsplit(url).scheme == "rediss":
            options.update(
                ssl_cert_reqs="required",
                ssl_check_hostname=True,
                ssl_ca_certs=str(self.tls_ca_file) if self.tls_ca_file else None,
                ssl_certfile=str(self.tls_cert_file) if self.tls_cert_file else None,
                ssl_keyfile=str(self.tls_key_file) if self.tls_key_file else None,
            )
        return options


def redacted_url(url: str) -> str:
    """The URL with any password replaced by ***, fit for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
