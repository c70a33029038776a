"""Conversational query reformulation: the prompt that asks the upstream LLM to rewrite a
follow-up question into a standalone one, and how its answer is read back.

The rendered prompt is also the key under which the rewrite is kept (in the cache server's
store, cache `REFORMULATION_CACHE_ID`, found again by exact match only), so it must tell apart
every two conversations that differ: each question is written as a JSON string literal on its
own line, which no question's own text (newlines, quotes, a "2." of its own) can imitate.
Surrounding whitespace of each question is ignored, as the cache's exact match ignores it.
The template itself is part of every key, so changing it never serves a rewrite made by
another one. docs/rest-api.md shows the rendered prompt (a unit test keeps it current).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from service_runtime import cache_ids

# The cache that holds the rewrites, in the cache server's store. The cache server accepts
# this one id beyond its rule for cache ids (cache_server/entries.py RESERVED_CACHE_IDS); the
# REST API's pattern refuses any id that starts with "_", so no REST client can read, fill or
# flush it by mistake. gRPC callers can (GetStats, Flush), deliberately.
REFORMULATION_CACHE_ID = cache_ids.REFORMULATIONS

# The rewrites of one application cache are kept apart from another's by this attribute (and
# a key may use them only where it holds that cache: cache_server.access).
SCOPE_ATTRIBUTE = cache_ids.RESERVED_SCOPES[REFORMULATION_CACHE_ID]

# Earlier questions accepted, at most.
MAX_CONTEXT_ITEMS = 20
# The cache server's default limit on a prompt (CACHE_MAX_PROMPT_CHARS): the rendered prompt
# is stored as the key of its rewrite, and the rewrite is searched as a prompt.
MAX_PROMPT_CHARS = 8192

TEMPLATE = """\
Rewrite the last question of a conversation as one standalone question, for a search over \
questions that were asked before.
- Replace every pronoun or reference to an earlier question (it, its, they, them, this, \
that, there, the same, ...) with what it stands for.
- Keep the meaning, the language and the details of the last question; add nothing else.
- Do not answer the question.
- If the last question already stands on its own, repeat it unchanged.
- Reply with the standalone question alone: one line, no quotes, no label.

Earlier questions, oldest first (each one a JSON string):
{history}

Last question (a JSON string):
{question}

Standalone question:"""


def _literal(text: str) -> str:
    return json.dumps(text.strip(), ensure_ascii=False)


def reformulation_prompt(context: Sequence[str], prompt: str) -> str:
    """The text sent to the upstream LLM (one user message) for `prompt` after the earlier
    questions `context`, oldest first. Two conversations that differ other than in the
    surrounding whitespace of a question give two different texts."""
    history = "\n".join(f"{n}. {_literal(q)}" for n, q in enumerate(context, start=1))
    return TEMPLATE.format(history=history, question=_literal(prompt))


_LABELS = ("standalone question:", "question:", "rewritten question:")
_QUOTES = (('"', '"'), ("'", "'"), ("\u201c", "\u201d"), ("\u2018", "\u2019"), ("`", "`"))


def standalone_question(answer: str) -> str | None:
    """The question in the LLM's answer: its first non-empty line, without a label such as
    "Standalone question:" or quotes around it. None when nothing usable is left (empty, or
    longer than a prompt may be)."""
    line = next((ln.strip() for ln in answer.splitlines() if ln.strip()), "")
    for label in _LABELS:
        if line.lower().startswith(label):
            line = line[len(label) :].strip()
            break
    line = _unquoted(line)
    if not line or len(line) > MAX_PROMPT_CHARS:
        return None
    return line


def _unquoted(line: str) -> str:
    if len(line) >= 2 and line[0] == line[-1] == '"':
        try:  # a JSON string, as the questions are written in the prompt
            decoded = json.loads(line)
        except ValueError:
            decoded = None
        if isinstance(decoded, str):
            return decoded.strip()
    for opening, closing in _QUOTES:
        if len(line) >= 2 and line.startswith(opening) and line.endswith(closing):
            return line[len(opening) : -len(closing)].strip()
    return line
