"""Fakes for unit tests of SemanticCache: an embedder whose paraphrases are known, an
upstream that records its prompts, a clock the test moves."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence

import numpy as np

from cache_server.cache import SemanticCache
from cache_server.embedder_client import EmbedderModel, EmbedderUnavailableError
from cache_server.entries import AnswerCost
from cache_server.upstream import Completion, UpstreamError

DIM = 16
# Texts in the same group get nearly the same vector (paraphrases); others are unrelated.
GROUPS = {
    "how do i learn python": 0,
    "what is the best way to learn python": 0,
    "how do i cook rice": 1,
    "how to cook rice properly": 1,
}


class FakeEmbedder:
    def __init__(self) -> None:
        self.model: EmbedderModel | None = EmbedderModel("fake", DIM, False)
        self.calls = 0
        self.down = False
        self.dimension = DIM  # change it to play an embedder that now serves another model

    async def ensure_model(self, timeout_s: float | None = None) -> EmbedderModel:
        if self.model is None:
            if self.down:
                raise EmbedderUnavailableError("embedder unavailable (fake): UNAVAILABLE")
            self.model = EmbedderModel("fake", DIM, False)
        return self.model

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        if self.down:
            raise EmbedderUnavailableError("embedder unavailable (fake): UNAVAILABLE")
        self.calls += 1
        out = []
        for text in texts:
            key = text.strip().lower().rstrip("?")
            seed = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16)
            v = np.random.default_rng(seed).standard_normal(self.dimension) * 0.15
            group = GROUPS.get(key)
            if group is not None:
                v[group] += 3.0
            else:
                v[2 + seed % (self.dimension - 2)] += 3.0
            out.append(v / np.linalg.norm(v))
        return np.array(out, dtype=np.float32)


class FakeUpstream:
    kind = "fake"
    model = "fake-llm"

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.delay_s = 0.0
        self.fail = False

    async def complete(self, prompt: str) -> str:
        self.calls.append(prompt)
        await asyncio.sleep(self.delay_s)
        if self.fail:
            raise UpstreamError("upstream LLM answered HTTP 500")
        return f"LLM says: {prompt}"

    async def answer(self, prompt: str) -> Completion:
        """`complete`, costed one token per word (as tests.fake_llm counts)."""
        text = await self.complete(prompt)
        cost = AnswerCost(len(prompt.split()), len(text.split()), self.delay_s, self.model)
        return Completion(text, cost)

    async def close(self) -> None:
        return None


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


Parts = tuple[SemanticCache, FakeEmbedder, FakeUpstream, Clock]
