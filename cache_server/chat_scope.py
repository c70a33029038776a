"""What a chat answer depends on: the one rule, owned by the cache server, that every caller of
the Chat RPC (the gateway's OpenAI route, the client library, any gRPC caller) gets for free.

A chat-completions request is looked up by the text of its last message, which must be the
user's, within its scope: a digest (attribute `chat_scope`, entries.CHAT_SCOPE_ATTRIBUTE) of
everything else that shapes the answer. That is the model, every earlier message (system
prompt included) and the last message's other fields, temperature, top_p, max_tokens, stop,
seed, response_format, penalties, logit_bias, reasoning settings, any field this module does
not know, and the caller's own attributes (so a chat answer is served only within exactly the
attributes it was stored with). Left out are only the fields that change how an answer is
delivered or billed, not what it says: `stream`, `stream_options`, `n` (when 1), `user`,
`metadata`, `store`, `service_tier`, and `semcache` (the gateway's steering).

A request whose answer cannot be served from a cache (several choices, tools, logprobs, audio,
images, a last message that is not the user's text, or longer than the prompt limit) is passed
to the upstream as it is, with the reason.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cache_server.entries import CHAT_SCOPE_ATTRIBUTE, InvalidInputError, normalize_prompt

# Fields that change how an answer is delivered or billed, not what it says.
DELIVERY_FIELDS = frozenset(
    {"stream", "stream_options", "n", "user", "metadata", "store", "service_tier", "semcache"}
)
# Bumped when what the digest covers changes: answers stored under another rule are not found.
SCOPE_VERSION = "chat-scope-v2"


@dataclass(frozen=True)
class ChatScope:
    """How the cache server handles one chat request."""

    prompt: str  # the look-up key ("" when not cacheable)
    attributes: dict[str, str]  # the caller's attributes and the chat scope
    uncacheable: str | None  # why it is passed through uncached; None: cached
    upstream_body: dict[str, Any]  # what the upstream is sent

    @property
    def digest(self) -> str:
        return self.attributes.get(CHAT_SCOPE_ATTRIBUTE, "")


def text_of(content: object) -> str | None:
    """A message's text: a string, or text parts only (None: other parts, e.g. images)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(
        isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
        for p in content
    ):
        return "".join(p["text"] for p in content)
    return None


def why_uncacheable(body: Mapping[str, Any], max_prompt_chars: int) -> str | None:
    """Why the answer to `body` cannot be served from a cache, or None when it can."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "no messages"
    if not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages):
        return "a message without a role"
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
    text = text_of(last.get("content"))
    if text is None:
        return "the last message is not text only"
    if not text.strip():
        return "the last message is empty"
    if len(text) > max_prompt_chars:
        return f"the last message is longer than {max_prompt_chars} characters"
    return None


def scope_digest(body: Mapping[str, Any], attributes: Mapping[str, str]) -> str:
    """A digest of all that shapes the answer except the last message's text."""
    messages = list(body["messages"])
    last = {k: v for k, v in messages[-1].items() if k != "content"}
    shaped = {k: v for k, v in body.items() if k not in DELIVERY_FIELDS and k != "messages"}
    shaped["messages"] = [*messages[:-1], last]
    material = [SCOPE_VERSION, shaped, sorted(attributes.items())]
    canonical = json.dumps(material, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def upstream_body(body: Mapping[str, Any], stream: bool) -> dict[str, Any]:
    """The body the upstream is sent: the caller's, with `stream` as the call asks (a body
    that said otherwise would make the upstream answer in the other form), and without the
    gateway's `semcache` steering."""
    sent = {k: v for k, v in body.items() if k != "semcache"}
    if stream:
        sent["stream"] = True
    else:
        sent.pop("stream", None)
        sent.pop("stream_options", None)  # only allowed with a stream
    return sent


def scope_of(
    body: Mapping[str, Any],
    attributes: Mapping[str, str],
    *,
    prompt: str,
    stream: bool,
    cacheable: bool,
    max_prompt_chars: int,
) -> ChatScope:
    """The cache server's reading of one chat request. `prompt`, when a caller gives one, must
    be the last message's text: a key other than what the upstream is asked could serve an
    answer to another question."""
    sent = upstream_body(body, stream)
    reason = "the caller asked for no caching" if not cacheable else None
    reason = reason or why_uncacheable(body, max_prompt_chars)
    if reason is not None:
        return ChatScope("", dict(attributes), reason, sent)
    derived = text_of(body["messages"][-1].get("content")) or ""
    if prompt and normalize_prompt(prompt) != normalize_prompt(derived):
        raise InvalidInputError(
            "prompt must be the text of the body's last message (or empty: the cache server "
            "takes it from the body); a different key could serve an answer to another question"
        )
    scoped = {**attributes, CHAT_SCOPE_ATTRIBUTE: scope_digest(body, attributes)}
    return ChatScope(derived, scoped, None, sent)
