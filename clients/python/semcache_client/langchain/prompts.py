"""From what LangChain hands a cache (a prompt string and an `llm_string`) to what semcache
looks up: the text compared by meaning, and the attributes an entry must carry to be found.

- `llm_string` (the model and every invocation parameter: model name, temperature, stop
  words...) scopes the entry as a whole: its SHA-256 is the attribute `lc_llm`.
- A chat model's prompt is its messages, serialized by `langchain_core.load.dumps`. The text of
  the last human message is the look-up text; everything else in the conversation (system
  prompt, earlier turns, messages after it, non-text parts such as images, names...) scopes
  the entry: the SHA-256 of the messages with that one text blanked out is `lc_scope`. So
  "What is the capital of France?" and "Which city is France's capital?" asked in the same
  conversation of the same model share an entry; the same question after another system
  prompt does not.
- A text LLM's prompt is the look-up text itself (`lc_scope` is the hash of nothing).

A chat prompt without a human message, or whose last human message has no text, has no
look-up text: such calls are not cached.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

LLM_ATTRIBUTE = "lc_llm"
SCOPE_ATTRIBUTE = "lc_scope"
# Carried by every entry this integration stores, so that clear() deletes only those.
MARKER_ATTRIBUTE = "lc_cache"
MARKER_VALUE = "semcache_client.langchain"

_HUMAN_CLASSES = {"HumanMessage", "HumanMessageChunk"}


@dataclass(frozen=True)
class CacheKey:
    text: str  # compared by meaning
    attributes: dict[str, str]  # must all match


def digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def llm_attribute(llm_string: str) -> dict[str, str]:
    return {LLM_ATTRIBUTE: digest(llm_string)}


def _serialized_messages(prompt: str) -> list[dict[str, Any]] | None:
    """The messages of a chat prompt (LangChain's constructor form), or None for text."""
    if not prompt.startswith("["):
        return None
    try:
        value = json.loads(prompt)
    except ValueError:
        return None
    if not isinstance(value, list) or not value:
        return None
    for item in value:
        if not (
            isinstance(item, dict)
            and item.get("lc") == 1
            and item.get("type") == "constructor"
            and isinstance(item.get("id"), list)
            and isinstance(item.get("kwargs"), dict)
        ):
            return None
    return value


def _is_human(message: dict[str, Any]) -> bool:
    kwargs = message["kwargs"]
    kind = message["id"][-1] if message["id"] else ""
    if kind == "ChatMessage":
        return bool(kwargs.get("role") == "user")
    return kind in _HUMAN_CLASSES or kwargs.get("type") == "human"


def _split_content(content: object) -> tuple[str, object]:
    """(the text of a message's content, the content with that text blanked out)."""
    if isinstance(content, str):
        return content, ""
    if not isinstance(content, list):
        return "", content
    texts: list[str] = []
    blanked: list[object] = []
    for block in content:
        if isinstance(block, str):
            texts.append(block)
            blanked.append("")
        elif isinstance(block, dict) and block.get("type") == "text":
            texts.append(str(block.get("text", "")))
            blanked.append({**block, "text": ""})
        else:
            blanked.append(block)
    return "\n".join(t for t in texts if t), blanked


def cache_key(prompt: str, llm_string: str) -> CacheKey | None:
    """The look-up text and scope of a LangChain prompt, or None when it is not cacheable."""
    attributes = llm_attribute(llm_string)
    messages = _serialized_messages(prompt)
    if messages is None:
        if not prompt.strip():
            return None
        return CacheKey(prompt, {**attributes, SCOPE_ATTRIBUTE: digest("")})
    last_human = next((i for i in reversed(range(len(messages))) if _is_human(messages[i])), None)
    if last_human is None:
        return None
    message = messages[last_human]
    text, blanked = _split_content(message["kwargs"].get("content"))
    if not text.strip():
        return None
    context = list(messages)
    context[last_human] = {**message, "kwargs": {**message["kwargs"], "content": blanked}}
    canonical = json.dumps(context, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return CacheKey(text, {**attributes, SCOPE_ATTRIBUTE: digest(canonical)})
