"""How a client reaches its servers: addresses, TLS, deadlines, retries.

Every option here is plain data, validated when it is made, and shared by the sync and the
asyncio clients. Times are seconds.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

ChannelOption = tuple[str, Any]
# Where the caller's own request id comes from when a call is given none (e.g. the id of the
# request a service is serving now); returning None makes the client generate one.
RequestIdFactory = Callable[[], str | None]

_TARGET_SCHEMES = ("dns:", "ipv4:", "ipv6:", "unix:", "unix-abstract:", "vsock:")


def parse_addresses(addresses: str | Sequence[str]) -> list[str]:
    """A list of gRPC targets from "host:port,host:port" or a sequence of them.

    Each target is one channel: `host:port`, `[::1]:port`, or a gRPC name such as
    `dns:///cache-server-headless:50051` (every address the name resolves to is used, round
    robin) or `ipv4:10.0.0.1:50051,10.0.0.2:50051`. A name with a scheme is kept whole, commas
    included.
    """
    if isinstance(addresses, str):
        text = addresses.strip()
        parts = [text] if text.startswith(_TARGET_SCHEMES) else text.split(",")
    else:
        parts = list(addresses)
    targets = [part.strip() for part in parts if part.strip()]
    if not targets:
        raise ValueError("at least one address is needed (host:port or dns:///name:port)")
    for target in targets:
        if not target.startswith(_TARGET_SCHEMES) and ":" not in target:
            raise ValueError(f"address {target!r} has no port: write host:port")
    return targets


def _read(path: str | Path | None) -> bytes | None:
    return Path(path).read_bytes() if path is not None else None


@dataclass(frozen=True)
class TlsConfig:
    """TLS for the channel; with a client certificate and key, mutual TLS.

    `ca_cert` is the PEM of the CA that signed the server's certificate (None: the system's
    trusted roots). `client_cert`/`client_key` (PEM) go together. `server_name` is the name to
    check the server's certificate against when it is not the host dialled (e.g. dialling an
    IP address of a server whose certificate names `cache-server`).
    """

    ca_cert: bytes | None = None
    client_cert: bytes | None = None
    client_key: bytes | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.client_cert is None) != (self.client_key is None):
            raise ValueError("a client certificate and its key go together (mutual TLS)")

    @classmethod
    def from_files(
        cls,
        ca_file: str | Path | None = None,
        cert_file: str | Path | None = None,
        key_file: str | Path | None = None,
        server_name: str | None = None,
    ) -> TlsConfig:
        """Reads the PEM files now, so a missing file fails here rather than on a call."""
        return cls(_read(ca_file), _read(cert_file), _read(key_file), server_name)

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca_cert,
            private_key=self.client_key,
            certificate_chain=self.client_cert,
        )

    def channel_options(self) -> list[ChannelOption]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []


@dataclass(frozen=True)
class Timeouts:
    """Default deadline of each call, seconds, retries and their backoff included.

    `query_s` is for Query, which may wait for the upstream LLM on a miss (the cache server's
    own upstream timeout is 30 s by default); `bulk_s` for DeleteEntries and Flush, which may
    delete a whole cache; `default_s` for everything else. A call's `timeout=` replaces these.
    """

    default_s: float = 10.0
    query_s: float = 60.0
    bulk_s: float = 30.0

    def __post_init__(self) -> None:
        for name in ("default_s", "query_s", "bulk_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"Timeouts.{name} must be > 0 seconds")


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of idempotent calls that failed with UNAVAILABLE (and of nothing else).

    `max_attempts` counts the first try (1: never retry). The n-th retry waits
    `initial_backoff_s * multiplier**(n-1)`, at most `max_backoff_s`, scaled by a random
    factor in [1 - jitter, 1 + jitter] so that many clients do not retry in step. No retry
    starts when the call's deadline would pass during its backoff. Each try goes to the next
    address, addresses known to be failing last.
    """

    max_attempts: int = 3
    initial_backoff_s: float = 0.05
    max_backoff_s: float = 1.0
    multiplier: float = 2.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("RetryPolicy.max_attempts must be >= 1 (1: no retry)")
        if self.initial_backoff_s < 0 or self.max_backoff_s < 0 or self.multiplier < 1:
            raise ValueError("RetryPolicy backoffs must be >= 0 and its multiplier >= 1")
        if not 0 <= self.jitter < 1:
            raise ValueError("RetryPolicy.jitter must be in [0, 1)")

    def backoff_s(self, retry: int) -> float:
        """The wait before retry number `retry` (1 for the first retry), seconds."""
        base = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** (retry - 1))
        return base * random.uniform(1 - self.jitter, 1 + self.jitter)


# Fast reconnects after a server restarts (gRPC's default backoff grows to 2 minutes), and
# round robin over every address a name resolves to.
DEFAULT_CHANNEL_OPTIONS: tuple[ChannelOption, ...] = (
    ("grpc.lb_policy_name", "round_robin"),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    ("grpc.max_send_message_length", 16 * 1024 * 1024),
)


@dataclass(frozen=True)
class ClientConfig:
    """Everything a client is made of; a sync and an async client built from the same config
    behave the same."""

    addresses: tuple[str, ...]
    tls: TlsConfig | None = None
    timeouts: Timeouts = field(default_factory=Timeouts)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    metadata: tuple[tuple[str, str], ...] = ()
    request_id_factory: RequestIdFactory | None = None
    channel_options: tuple[ChannelOption, ...] = ()

    @classmethod
    def build(
        cls,
        addresses: str | Sequence[str],
        *,
        tls: TlsConfig | None = None,
        timeouts: Timeouts | None = None,
        retry: RetryPolicy | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        request_id_factory: RequestIdFactory | None = None,
        channel_options: Sequence[ChannelOption] = (),
        api_key: str | None = None,
    ) -> ClientConfig:
        """`api_key`: the key the cache server's operator gave this application, sent on
        every call as `authorization: Bearer <key>`."""
        for key, _ in metadata:
            if key.lower() == "x-request-id":
                raise ValueError("pass request ids per call (request_id=), not as metadata")
            if key.lower() == "authorization" and api_key is not None:
                raise ValueError("pass the key as api_key= or as metadata, not both")
        if api_key is not None and (not api_key.strip() or any(c in api_key for c in "\r\n")):
            raise ValueError("api_key is empty or not a single line")
        credentials = (("authorization", f"Bearer {api_key}"),) if api_key is not None else ()
        return cls(
            tuple(parse_addresses(addresses)),
            tls,
            timeouts or Timeouts(),
            retry or RetryPolicy(),
            (*metadata, *credentials),
            request_id_factory,
            tuple(channel_options),
        )

    def all_channel_options(self) -> list[ChannelOption]:
        """The defaults, then TLS's, then the caller's: a later option replaces an earlier one
        of the same name."""
        tls = self.tls.channel_options() if self.tls is not None else []
        merged = dict([*DEFAULT_CHANNEL_OPTIONS, *tls, *self.channel_options])
        return list(merged.items())
