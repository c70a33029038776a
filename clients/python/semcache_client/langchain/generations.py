"""What a cache entry's response holds for LangChain: the generations, as JSON that rebuilds
them (a chat generation's whole message, through langchain_core's message dicts, so content,
metadata, tool calls and usage come back as they were stored).

A response that is not in this form (e.g. an answer stored by another client in the same
scope) is served as one plain `Generation` of that text, which chat models turn into an
`AIMessage`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from langchain_core.messages import message_to_dict, messages_from_dict
from langchain_core.outputs import ChatGeneration, Generation

FORMAT = "semcache_client.langchain/generations-v1"


def encode(generations: Sequence[Generation]) -> str:
    """JSON of the generations; TypeError or ValueError when they hold values JSON cannot
    express."""
    items: list[dict[str, Any]] = []
    for generation in generations:
        item: dict[str, Any] = {"text": generation.text, "info": generation.generation_info}
        if isinstance(generation, ChatGeneration):
            item["message"] = message_to_dict(generation.message)
        items.append(item)
    return json.dumps({"format": FORMAT, "generations": items}, ensure_ascii=False)


def decode(response: str) -> list[Generation]:
    try:
        document = json.loads(response)
    except ValueError:
        document = None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        return [Generation(text=response)]
    generations: list[Generation] = []
    for item in document["generations"]:
        info = item.get("info")
        if "message" in item:
            message = messages_from_dict([item["message"]])[0]
            generations.append(ChatGeneration(message=message, generation_info=info))
        else:
            generations.append(Generation(text=item["text"], generation_info=info))
    return generations
