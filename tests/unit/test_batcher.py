"""EmbeddingBatcher logic against a deterministic fake model (no ONNX)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pytest

from embedder.batcher import (
    EmbeddingBatcher,
    QueueFullError,
    ShuttingDownError,
    TextRejectedError,
    plan_runs,
)
from embedder.encoder import FloatArray, TextTooLongError


@dataclass
class FakeTokens:
    text: str
    truncated: bool = False

    @property
    def length(self) -> int:
        return len(self.text.split()) + 2


@dataclass
class FakeModel:
    """Vector = one-hot of len(text) % 8; records every run; can be slowed down or gated."""

    delay_s: float = 0.0
    max_tokens: int | None = None
    runs: list[list[str]] = field(default_factory=list)
    gate: threading.Event | None = None

    def tokenize(self, texts: Sequence[str]) -> list[FakeTokens]:
        return [FakeTokens(t) for t in texts]

    def check_length(self, item: FakeTokens) -> None:
        if self.max_tokens is not None and item.length > self.max_tokens:
            raise TextTooLongError(self.max_tokens)

    def run(self, batch: Sequence[FakeTokens]) -> FloatArray:
        if self.gate is not None:
            self.gate.wait(5)
        time.sleep(self.delay_s)
        self.runs.append([t.text for t in batch])
        out = np.zeros((len(batch), 8), dtype=np.float32)
        for row, item in enumerate(batch):
            out[row, len(item.text) % 8] = 1.0
        return out


def expected(text: str) -> FloatArray:
    v = np.zeros(8, dtype=np.float32)
    v[len(text) % 8] = 1.0
    return v


def test_plan_runs_sorts_by_length_and_respects_token_budget() -> None:
    lengths = [50, 3, 40, 4, 5, 60]
    runs = plan_runs(lengths, max_batch_tokens=120)
    assert sorted(i for run in runs for i in run) == list(range(6))
    for run in runs:
        assert len(run) * max(lengths[i] for i in run) <= 120 or len(run) == 1
    # The three short texts share a run, away from the long ones.
    assert runs[0] == [1, 3, 4]


def test_plan_runs_puts_an_over_budget_text_alone() -> None:
    assert plan_runs([500, 2], max_batch_tokens=100) == [[1], [0]]


async def test_concurrent_requests_are_batched_and_each_gets_its_own_vectors() -> None:
    model = FakeModel(delay_s=0.02)
    batcher = EmbeddingBatcher[str](model, max_batch_size=16)  # type: ignore[arg-type]
    batcher.start()
    texts = [f"question number {'x' * i}" for i in range(40)]
    results = await asyncio.gather(*(batcher.embed([t]) for t in texts))
    for text, result in zip(texts, results, strict=True):
        np.testing.assert_array_equal(result.vectors[0], expected(text))
    assert batcher.stats.max_batch_size > 1
    assert max(len(r) for r in model.runs) <= 16
    assert sum(len(r) for r in model.runs) == 40
    await batcher.stop()


async def test_multi_text_request_keeps_order() -> None:
    batcher = EmbeddingBatcher[str](FakeModel(), max_batch_size=4)  # type: ignore[arg-type]
    batcher.start()
    texts = ["a", "bb", "ccc", "dddd", "eeeee", "ffffff"]
    result = await batcher.embed(texts)
    np.testing.assert_array_equal(result.vectors, np.vstack([expected(t) for t in texts]))
    assert result.token_counts == [3] * 6
    await batcher.stop()


async def test_full_queue_is_refused_at_once() -> None:
    gate = threading.Event()
    batcher = EmbeddingBatcher[str](FakeModel(gate=gate), max_queue=3, max_batch_size=1)  # type: ignore[arg-type]
    batcher.start()
    first = asyncio.create_task(batcher.embed(["running"]))
    await asyncio.sleep(0.05)  # the worker holds "running"; the queue is empty again
    waiting = asyncio.create_task(batcher.embed(["a", "b", "c"]))
    await asyncio.sleep(0)
    with pytest.raises(QueueFullError, match="queue is full"):
        await batcher.embed(["one too many"])
    gate.set()
    await asyncio.gather(first, waiting)
    await batcher.stop()


async def test_cancelled_request_texts_never_reach_the_model() -> None:
    gate = threading.Event()
    model = FakeModel(gate=gate)
    batcher = EmbeddingBatcher[str](model, max_batch_size=1)  # type: ignore[arg-type]
    batcher.start()
    blocker = asyncio.create_task(batcher.embed(["blocker"]))
    await asyncio.sleep(0.05)
    doomed = asyncio.create_task(batcher.embed(["cancelled-1", "cancelled-2"]))
    await asyncio.sleep(0.01)
    doomed.cancel()
    kept = asyncio.create_task(batcher.embed(["kept"]))
    await asyncio.sleep(0.01)
    gate.set()
    await blocker
    await kept
    ran = [t for run in model.runs for t in run]
    assert ran == ["blocker", "kept"]
    assert batcher.stats.skipped_cancelled == 2
    await batcher.stop()


async def test_too_long_text_is_rejected_with_its_index_and_others_unharmed() -> None:
    batcher = EmbeddingBatcher[str](FakeModel(max_tokens=5))  # type: ignore[arg-type]
    batcher.start()
    neighbour = asyncio.create_task(batcher.embed(["fine"]))
    with pytest.raises(TextRejectedError, match=r"texts\[1\] has more than 5 tokens"):
        await batcher.embed(["short", "one two three four five six"])
    assert (await neighbour).vectors.shape == (1, 8)
    await batcher.stop()


async def test_stop_finishes_queued_work_then_refuses_new() -> None:
    batcher = EmbeddingBatcher[str](FakeModel(delay_s=0.01), max_batch_size=2)  # type: ignore[arg-type]
    batcher.start()
    pending = [asyncio.create_task(batcher.embed([f"t{i}"])) for i in range(8)]
    await asyncio.sleep(0)
    await batcher.stop()
    results = await asyncio.wait_for(asyncio.gather(*pending), 1)
    assert [r.vectors.shape for r in results] == [(1, 8)] * 8
    with pytest.raises(ShuttingDownError):
        await batcher.embed(["late"])
