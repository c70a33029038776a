"""One call's life, shared by the sync and the asyncio clients: which address each try goes
to, how long it may take, whether a failure is retried and after how long, and the error the
caller finally sees. The clients only send and sleep."""

from __future__ import annotations

import itertools
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

import grpc
from google.protobuf.message import Message

from semcache_client.config import ClientConfig
from semcache_client.errors import DeadlineExceeded, FailedCall, SemcacheError, from_failed_call

log = logging.getLogger("semcache_client")

REQUEST_ID_KEY = "x-request-id"
MAX_REQUEST_ID_CHARS = 128

RequestT = TypeVar("RequestT", bound=Message)
ResponseT = TypeVar("ResponseT", bound=Message)
TimeoutKind = Literal["default", "query", "bulk"]


@dataclass(frozen=True)
class Rpc(Generic[RequestT, ResponseT]):
    """A method: its path, its reply type, and whether repeating it is harmless. A
    server-streaming method (`server_streaming`, its replies a stream of `response_type`) is
    never idempotent: its events may have reached the caller before it failed."""

    service: str
    name: str
    request_type: type[RequestT]
    response_type: type[ResponseT]
    idempotent: bool
    timeout: TimeoutKind = "default"
    server_streaming: bool = False

    def __post_init__(self) -> None:
        if self.server_streaming and self.idempotent:
            raise ValueError(f"{self.name}: a stream is never retried (not idempotent)")

    @property
    def path(self) -> str:
        return f"/{self.service}/{self.name}"

    def deserialize(self, data: bytes) -> ResponseT:
        return self.response_type.FromString(data)


def serialize(message: Message) -> bytes:
    return message.SerializeToString()


def check_request_id(value: str) -> str:
    """The servers accept 1-128 printable characters without a double quote (and replace
    anything else with an id of their own, which the caller would never see)."""
    if (
        not value
        or len(value) > MAX_REQUEST_ID_CHARS
        or not value.isascii()
        or not value.isprintable()
        or '"' in value
    ):
        raise ValueError(
            f"request id {value[:40]!r}: 1-{MAX_REQUEST_ID_CHARS} printable ASCII characters "
            "without a double quote"
        )
    return value


def new_request_id() -> str:
    return uuid.uuid4().hex


class AddressRotation:
    """Round robin over a client's addresses: each call starts at the next one, and its
    retries visit the others before any repeat. An address whose last try failed with
    UNAVAILABLE less than `cooldown_s` ago goes last, so that calls, Query included, reach a
    live server first while gRPC reconnects to the dead one in the background."""

    def __init__(self, addresses: Sequence[str], cooldown_s: float = 2.0) -> None:
        self.addresses = list(addresses)
        self.cooldown_s = cooldown_s
        self._next = itertools.count()
        self._failed_at: list[float | None] = [None] * len(self.addresses)

    def order(self) -> list[int]:
        count = len(self.addresses)
        start = next(self._next) % count
        now = time.monotonic()
        order = [(start + k) % count for k in range(count)]
        return sorted(order, key=lambda i: self._recently_failed(i, now))

    def _recently_failed(self, index: int, now: float) -> bool:
        failed_at = self._failed_at[index]
        return failed_at is not None and now - failed_at < self.cooldown_s

    def record(self, index: int, unavailable: bool) -> None:
        self._failed_at[index] = time.monotonic() if unavailable else None


class CallPlan:
    """The tries of one call. `next_try()` gives the address index and the seconds left;
    `failed()` either raises the caller's error or gives the seconds to wait before the next
    try. The same request id goes with every try."""

    def __init__(
        self,
        config: ClientConfig,
        rpc: Rpc[RequestT, ResponseT],
        rotation: AddressRotation,
        timeout_s: float | None,
        request_id: str | None,
    ) -> None:
        if timeout_s is None:
            timeout_s = {
                "default": config.timeouts.default_s,
                "query": config.timeouts.query_s,
                "bulk": config.timeouts.bulk_s,
            }[rpc.timeout]
        elif not timeout_s > 0:
            raise ValueError(f"timeout must be > 0 seconds, not {timeout_s}")
        if request_id is None and config.request_id_factory is not None:
            request_id = config.request_id_factory()
        self.request_id = check_request_id(request_id) if request_id else new_request_id()
        self.metadata: tuple[tuple[str, str], ...] = (
            *config.metadata,
            (REQUEST_ID_KEY, self.request_id),
        )
        self._config = config
        self._rpc_name = rpc.name
        self._idempotent = rpc.idempotent
        self._rotation = rotation
        self._order = rotation.order()
        self._deadline = time.monotonic() + timeout_s
        self._timeout_s = timeout_s
        self.tries = 0
        self.index = self._order[0]

    def next_try(self) -> tuple[int, float]:
        self.index = self._order[self.tries % len(self._order)]
        self.tries += 1
        return self.index, max(self._deadline - time.monotonic(), 0.001)

    def succeeded(self) -> None:
        self._rotation.record(self.index, unavailable=False)

    def error(self, error: FailedCall) -> SemcacheError:
        """The caller's error for a failed try (the address's turn noted); no retry."""
        self._rotation.record(self.index, unavailable=error.code() == grpc.StatusCode.UNAVAILABLE)
        return from_failed_call(
            error,
            request_id=self.request_id,
            method=self._rpc_name,
            address=self._config.addresses[self.index],
            attempts=self.tries,
        )

    def failed(self, error: FailedCall) -> float:
        caller_error = self.error(error)
        address = caller_error.address
        if (
            not self._idempotent
            or error.code() != grpc.StatusCode.UNAVAILABLE
            or self.tries >= self._config.retry.max_attempts
        ):
            raise caller_error
        wait_s = self._config.retry.backoff_s(self.tries)
        if time.monotonic() + wait_s >= self._deadline:
            raise DeadlineExceeded(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"deadline of {self._timeout_s:g} s passed while retrying after "
                f"{caller_error.code.name}: {caller_error.message}",
                reason=caller_error.reason,
                request_id=self.request_id,
                method=self._rpc_name,
                address=address,
                attempts=self.tries,
            ) from caller_error
        log.debug(
            "%s on %s: %s (%s); retry %d in %.3f s [%s]",
            self._rpc_name,
            address,
            caller_error.code.name,
            caller_error.message,
            self.tries,
            wait_s,
            self.request_id,
        )
        return wait_s
