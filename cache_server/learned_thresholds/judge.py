"""How an exploration decides whether the cached answer was right: the correctness signal.

- `exact`: the fresh answer equals the cached one once case, whitespace and surrounding
  punctuation are normalised. For deterministic upstreams (temperature 0, a fixed model), and
  the demo responder (its answers quote the prompt, so a paraphrase is never judged right:
  with the demo responder, `verified` serves exact repeats only).
- `embedding`: the cosine similarity of the two answers' embeddings, through the embedder, is
  at least CACHE_VERIFIED_JUDGE_THRESHOLD (0.9 by default). For upstreams whose wording varies.
- `llm`: the configured upstream is asked, with JUDGE_PROMPT, whether the cached answer would
  be an acceptable answer to the new question; "YES" is right, anything else wrong. The most
  faithful, and one more LLM call per exploration.

Application feedback (POST .../entries/{entryId}/feedback) is a further signal, whatever the
judge: a report on a served hit becomes an observation of that entry.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt

JudgeKind = Literal["exact", "embedding", "llm"]

JUDGE_PROMPT = """You check answers served from a cache.
Question: {question}
Cached answer (written for a similar earlier question): {cached}
Reference answer (written for this question): {fresh}
Would the cached answer be a correct and complete answer to the question, as good as the
reference answer? Reply with exactly one word: YES or NO."""

_SPACE = re.compile(r"\s+")


class Judge(Protocol):
    kind: JudgeKind

    async def right(self, question: str, cached: str, fresh: str) -> bool: ...


class _Embeds(Protocol):
    async def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]: ...


class _Completes(Protocol):
    async def complete(self, prompt: str) -> str: ...


def normalise(answer: str) -> str:
    return _SPACE.sub(" ", answer.casefold()).strip().strip(string.punctuation + " ")


class ExactJudge:
    kind: JudgeKind = "exact"

    async def right(self, question: str, cached: str, fresh: str) -> bool:
        return normalise(cached) == normalise(fresh)


class EmbeddingJudge:
    kind: JudgeKind = "embedding"

    def __init__(self, embedder: _Embeds, threshold: float) -> None:
        self._embedder = embedder
        self.threshold = threshold

    async def right(self, question: str, cached: str, fresh: str) -> bool:
        if normalise(cached) == normalise(fresh):
            return True
        vectors = await self._embedder.embed([cached, fresh])
        return float(np.dot(vectors[0], vectors[1])) >= self.threshold


class LlmJudge:
    kind: JudgeKind = "llm"

    def __init__(self, upstream: _Completes) -> None:
        self._upstream = upstream

    async def right(self, question: str, cached: str, fresh: str) -> bool:
        if normalise(cached) == normalise(fresh):
            return True
        verdict = await self._upstream.complete(
            JUDGE_PROMPT.format(question=question, cached=cached, fresh=fresh)
        )
        return normalise(verdict).split(" ")[0] == "yes"
