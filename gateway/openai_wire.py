"""The OpenAI chat-completions wire format, as the caching route needs it: the request's
shape checked (so that a malformed one gets OpenAI's 400 with its `param`), the caller's
steering (headers or `extra_body`), and the completions, chunks and errors a hit or a refusal
is answered with.

What of a request is its look-up key, what is its scope, and whether it can be cached at all
is the cache server's to say (cache_server.chat_scope), for every caller of its Chat RPC alike.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from service_runtime.cache_ids import CACHE_ID_PATTERN

SCOPE_ATTRIBUTE = "chat_scope"  # the cache server's (entries.CHAT_SCOPE_ATTRIBUTE)
HEADER_PREFIX = "x-semcache-"
# The cache id rule of the REST API: no caller names a cache the cache server keeps for itself
# (those start with "_").
_CACHE_ID = re.compile(CACHE_ID_PATTERN)


class ChatRequestError(ValueError):
    """A request this route cannot take; `param` names the field (OpenAI's `param`)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class Steering:
    """What the caller asked of the cache for this call."""

    cache_id: str = ""
    threshold: float | None = None
    bypass: bool = False
    ttl_seconds: float | None = None
    attributes: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Plan:
    """What is sent on: the upstream's body and whether it asks for a stream."""

    upstream_body: dict[str, Any]
    stream: bool


def plan(body: Mapping[str, Any]) -> Plan:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ChatRequestError("'model' is required: the model the upstream should use", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ChatRequestError("'messages' must be a non-empty list", "messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise ChatRequestError(f"messages[{i}] must be an object with a 'role'", "messages")
    stream = body.get("stream", False)
    if not isinstance(stream, bool) and stream is not None:
        raise ChatRequestError("'stream' must be a boolean", "stream")
    return Plan({k: v for k, v in body.items() if k != "semcache"}, bool(stream))


def _flag(value: object, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("1", "true", "yes", "0", "false", "no"):
        return value.lower() in ("1", "true", "yes")
    raise ChatRequestError(f"{name} must be true or false", name)


def _number(value: object, name: str, low: float, high: float | None) -> float:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ChatRequestError(f"{name} must be a number", name) from None
    if number != number or number < low or (high is not None and number > high):
        bounds = f"in [{low:g}, {high:g}]" if high is not None else f">= {low:g}"
        raise ChatRequestError(f"{name} must be {bounds}", name)
    return number


def steering(headers: Mapping[str, str], body: Mapping[str, Any]) -> Steering:
    """The caller's steering: `X-Semcache-*` headers, else the body's `semcache` object
    (`extra_body={"semcache": {...}}` in the OpenAI SDK); a header wins."""
    given = body.get("semcache") or {}
    if not isinstance(given, dict):
        raise ChatRequestError("'semcache' must be an object", "semcache")
    unknown = set(given) - {"cache_id", "threshold", "bypass", "ttl_seconds", "attributes"}
    if unknown:
        raise ChatRequestError(f"unknown semcache field(s): {sorted(unknown)}", "semcache")

    def pick(name: str) -> object:
        header = headers.get(HEADER_PREFIX + name.replace("_", "-"))
        return header if header is not None else given.get(name)

    cache_id = pick("cache_id")
    threshold, bypass, ttl = pick("threshold"), pick("bypass"), pick("ttl_seconds")
    attributes = given.get("attributes") or {}
    if not isinstance(attributes, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in attributes.items()
    ):
        raise ChatRequestError("semcache.attributes must map strings to strings", "semcache")
    if SCOPE_ATTRIBUTE in attributes:
        raise ChatRequestError(f"semcache.attributes cannot set {SCOPE_ATTRIBUTE}", "semcache")
    if cache_id is not None and (not isinstance(cache_id, str) or not _CACHE_ID.match(cache_id)):
        raise ChatRequestError(
            "cache_id must be 1-128 characters of letters, digits and _ . : -, starting with a "
            "letter or digit",
            "cache_id",
        )
    return Steering(
        cache_id=cache_id or "",
        threshold=_number(threshold, "threshold", 0.0, 1.0) if threshold is not None else None,
        bypass=_flag(bypass, "bypass") if bypass is not None else False,
        ttl_seconds=_number(ttl, "ttl_seconds", 0.0, None) if ttl is not None else None,
        attributes=dict(attributes),
    )


# -- answers built from a stored entry -------------------------------------------------------


def _head(model: str) -> dict[str, Any]:
    return {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": model}


# A hit costs no tokens: usage says so.
NO_USAGE = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


def completion(model: str, text: str) -> dict[str, Any]:
    message = {"role": "assistant", "content": text, "refusal": None}
    return {
        **_head(model),
        "object": "chat.completion",
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}],
        "usage": dict(NO_USAGE),
        "system_fingerprint": None,
    }


def chunks(model: str, text: str, *, include_usage: bool) -> Iterator[dict[str, Any]]:
    """A stored answer as `chat.completion.chunk` objects: the role, the text, the end."""
    head = {**_head(model), "object": "chat.completion.chunk", "system_fingerprint": None}
    for delta, finish in (
        ({"role": "assistant", "content": ""}, None),
        ({"content": text}, None),
        ({}, "stop"),
    ):
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        yield {**head, "choices": [choice]}
    if include_usage:
        yield {**head, "choices": [], "usage": dict(NO_USAGE)}


def sse(data: str) -> bytes:
    return f"data: {data}\n\n".encode()


DONE = sse("[DONE]")

# -- errors ----------------------------------------------------------------------------------

_ERROR_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
}


def error_body(
    status: int, message: str, *, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    kind = _ERROR_TYPES.get(status) or ("invalid_request_error" if status < 500 else "server_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}
