"""The OpenAI chat-completions wire format, as the caching route needs it: what of a request
is the look-up key and what is its scope, whether it can be served from a cache at all, the
caller's steering (headers or `extra_body`), and the completions, chunks and errors a hit or a
refusal is answered with.

Scope: the look-up key is the text of the last message, which must be the user's. Everything
else in the body shapes the answer and is hashed into the entry's scope (attribute
`chat_scope`): model, every earlier message (system prompt included) and the last message's
other fields, temperature, top_p, max_tokens, stop, seed, response_format, penalties,
logit_bias, reasoning settings, and any field this module does not know. Left out are only the
fields that change how the answer is delivered or billed, not what it says: `stream`,
`stream_options`, `n` (when 1), `user`, `metadata`, `store`, `service_tier`, and `semcache`.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

SCOPE_ATTRIBUTE = "chat_scope"
# Fields that change how an answer is delivered or billed, not what it says.
DELIVERY_FIELDS = frozenset(
    {"stream", "stream_options", "n", "user", "metadata", "store", "service_tier", "semcache"}
)
HEADER_PREFIX = "x-semcache-"


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
    """How a request is handled: its look-up key and scope, or why it is passed through."""

    prompt: str
    attributes: dict[str, str]
    uncacheable: str | None  # the reason, when it cannot be served from a cache
    upstream_body: dict[str, Any]
    stream: bool


def _text_of(content: object) -> str | None:
    """A message's text: a string, or text parts only (None: other parts, e.g. images)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(
        isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
        for p in content
    ):
        return "".join(p["text"] for p in content)
    return None


def _why_uncacheable(body: Mapping[str, Any], messages: list[dict[str, Any]]) -> str | None:
    n = body.get("n")
    if n is not None and n != 1:
        return "n > 1 (several choices)"
    for name in ("tools", "functions", "tool_choice", "function_call"):
        if body.get(name):
            return f"{name} (an answer may be a tool call)"
    if body.get("logprobs") or body.get("top_logprobs"):
        return "logprobs"
    modalities = body.get("modalities")
    if body.get("audio") or (isinstance(modalities, list) and "audio" in modalities):
        return "audio output"
    if any(m.get("role") in ("tool", "function") for m in messages):
        return "tool results in the conversation"
    last = messages[-1]
    if last.get("role") != "user":
        return "the last message is not the user's"
    text = _text_of(last.get("content"))
    if text is None:
        return "the last message is not text only"
    if not text.strip():
        return "the last message is empty"
    return None


def scope_digest(body: Mapping[str, Any]) -> str:
    """A digest of all that shapes the answer except the last message's text."""
    messages = list(body["messages"])
    last = {k: v for k, v in messages[-1].items() if k != "content"}
    shaped = {k: v for k, v in body.items() if k not in DELIVERY_FIELDS and k != "messages"}
    shaped["messages"] = [*messages[:-1], last]
    canonical = json.dumps(shaped, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def plan(body: Mapping[str, Any], steering: Steering) -> Plan:
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
    upstream_body = {k: v for k, v in body.items() if k != "semcache"}
    reason = _why_uncacheable(body, messages)
    if reason is not None:
        return Plan("", {}, reason, upstream_body, bool(stream))
    prompt = _text_of(messages[-1].get("content")) or ""
    attributes = {**steering.attributes, SCOPE_ATTRIBUTE: scope_digest(body)}
    return Plan(prompt, attributes, None, upstream_body, bool(stream))


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
    if cache_id is not None and not isinstance(cache_id, str):
        raise ChatRequestError("cache_id must be a string", "cache_id")
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


def upstream_error_body(status: int, body: str, message: str) -> tuple[int, dict[str, Any]]:
    """An upstream's own error, passed through with its status; an upstream that could not be
    reached, timed out or broke off is 502 (504 for a timeout)."""
    if status:
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
            return status, parsed
        return status, error_body(status, body[:500] or message, code="upstream_error")
    status = 504 if "timed out" in message else 502
    # The cause is logged with the request id; a client is not told internal addresses.
    what = "timed out" if status == 504 else "could not be reached or broke off"
    return status, error_body(status, f"the upstream LLM {what}", code="upstream_error")
