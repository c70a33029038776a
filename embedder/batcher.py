"""Dynamic batching: concurrent requests share model runs.

One owner (the worker task) takes texts from one bounded queue. While a batch runs, new texts
queue up; the next batch takes them all (up to `max_batch_size`), tokenizes them, sorts them by
length and splits them into model runs under a padded-token budget, so that short queries are not
padded to the length of a long one. Inference runs in a dedicated thread, off the event loop.
Texts of cancelled requests are skipped, and a full queue is refused at once (QueueFullError).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

import numpy as np
from opentelemetry.trace import Span

from embedder import metrics
from embedder.encoder import FloatArray, TextTooLongError, TokenizedText
from service_runtime import tracing

log = logging.getLogger(__name__)


class QueueFullError(RuntimeError):
    """Too many texts are waiting: the caller should back off and retry."""


class ShuttingDownError(RuntimeError):
    """The batcher no longer accepts work."""


class TextRejectedError(ValueError):
    """One text of a request cannot be embedded (too many tokens with truncation off)."""

    def __init__(self, index: int, cause: Exception) -> None:
        super().__init__(f"texts[{index}] {cause}")
        self.index = index


Item = TypeVar("Item")  # what one request sends per row: a text, or a (query, candidate) pair
Item_contra = TypeVar("Item_contra", contravariant=True)


class Model(Protocol[Item_contra]):
    """What the batcher needs of a model: OnnxEncoder (texts -> vectors) and OnnxPairScorer
    (pairs -> a column of probabilities) both satisfy it."""

    def tokenize(self, texts: Sequence[Item_contra]) -> list[TokenizedText]: ...
    def check_length(self, item: TokenizedText) -> None: ...
    def run(self, batch: Sequence[TokenizedText]) -> FloatArray: ...


@dataclass
class _Outcome:
    """What the inference thread found for one text."""

    tokens: TokenizedText
    vector: FloatArray | None = None
    run_size: int = 0
    seconds: float = 0.0
    error: Exception | None = None


@dataclass(frozen=True)
class TextResult:
    vector: FloatArray
    tokens: int
    truncated: bool
    batch_size: int
    queue_time_s: float
    inference_time_s: float


@dataclass(frozen=True)
class EmbedResult:
    vectors: FloatArray  # (n, dimension), float32, L2-normalised rows
    token_counts: list[int]
    truncated: bool
    batch_size: int
    queue_time_s: float
    inference_time_s: float


@dataclass
class _Pending(Generic[Item]):
    text: Item
    future: asyncio.Future[TextResult]
    enqueued_at: float = field(default_factory=time.perf_counter)
    caller: Span | None = None  # the request's span, for the batch's to link to (traces on)


@dataclass
class BatcherStats:
    """Counters since start; read by the servicer for logs and metrics."""

    batches: int = 0
    texts: int = 0
    max_batch_size: int = 0
    skipped_cancelled: int = 0
    rejected_queue_full: int = 0
    batch_size_counts: collections.Counter[int] = field(default_factory=collections.Counter)


def plan_runs(lengths: Sequence[int], max_batch_tokens: int) -> list[list[int]]:
    """Groups text indices into model runs: sorted by token length, each run's padded size
    (texts x longest) within `max_batch_tokens` (a single over-budget text runs alone)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    runs: list[list[int]] = []
    current: list[int] = []
    for index in order:
        # Sorted ascending, so the newcomer is the longest of the run.
        if current and (len(current) + 1) * lengths[index] > max_batch_tokens:
            runs.append(current)
            current = []
        current.append(index)
    if current:
        runs.append(current)
    return runs


class EmbeddingBatcher(Generic[Item]):
    def __init__(
        self,
        model: Model[Item],
        *,
        max_batch_size: int = 32,
        max_batch_tokens: int = 512,
        max_wait_s: float = 0.0,
        max_queue: int = 2048,
        instrument: bool = True,
        span_name: str = "embedder.batch",
    ) -> None:
        self._model = model
        self._span_name = span_name  # of each batch's span, when traces are on
        self._max_batch_size = max_batch_size
        self._max_batch_tokens = max_batch_tokens
        self._max_wait_s = max_wait_s
        self._max_queue = max_queue
        self._queue: collections.deque[_Pending[Item]] = collections.deque()
        self._wakeup = asyncio.Event()
        self._accepting = False
        self._worker: asyncio.Task[None] | None = None
        # One thread: ONNX Runtime parallelises inside a run; two concurrent runs on a small
        # machine would only fight for the same cores.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self.stats = BatcherStats()
        # The embedder's metrics describe embedding; a second batcher (the verifier's) keeps
        # its own counts in `stats` only.
        self._instrument = instrument
        if instrument:
            metrics.QUEUED.set_function(lambda: len(self._queue))

    @property
    def queued(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        self._accepting = True
        self._worker = asyncio.create_task(self._run_forever(), name="embedding-batcher")

    async def stop(self) -> None:
        """Stops accepting, finishes every queued text, then stops the worker."""
        self._accepting = False
        self._wakeup.set()
        if self._worker is not None:
            await self._worker
        self._executor.shutdown(wait=True)

    async def embed(self, texts: Sequence[Item]) -> EmbedResult:
        if not self._accepting:
            raise ShuttingDownError("the embedder is shutting down")
        if len(self._queue) + len(texts) > self._max_queue:
            self.stats.rejected_queue_full += 1
            raise QueueFullError(
                f"embedding queue is full ({len(self._queue)} texts waiting, limit "
                f"{self._max_queue}); retry later"
            )
        loop = asyncio.get_running_loop()
        caller = tracing.caller()
        pending = [_Pending(text, loop.create_future(), caller=caller) for text in texts]
        self._queue.extend(pending)
        self._wakeup.set()
        try:
            outcomes = await asyncio.gather(*(p.future for p in pending), return_exceptions=True)
        except BaseException:
            for p in pending:  # cancelled: whatever is still queued is skipped
                p.future.cancel()
            raise
        results: list[TextResult] = []
        for index, outcome in enumerate(outcomes):
            if isinstance(outcome, TextTooLongError):
                raise TextRejectedError(index, outcome)
            if isinstance(outcome, BaseException):
                raise outcome
            results.append(outcome)
        return EmbedResult(
            vectors=np.vstack([r.vector for r in results]),
            token_counts=[r.tokens for r in results],
            truncated=any(r.truncated for r in results),
            batch_size=max(r.batch_size for r in results),
            queue_time_s=min(r.queue_time_s for r in results),
            inference_time_s=max(r.inference_time_s for r in results),
        )

    async def _run_forever(self) -> None:
        while True:
            await self._wakeup.wait()
            if self._max_wait_s and len(self._queue) < self._max_batch_size and self._accepting:
                await asyncio.sleep(self._max_wait_s)
            batch = self._take_batch()
            if not batch:
                self._wakeup.clear()
                if not self._accepting and not self._queue:
                    return
                continue
            loop = asyncio.get_running_loop()
            started = time.perf_counter()
            texts = [p.text for p in batch]
            try:
                callers = (p.caller for p in batch)  # read only when traces are on
                with tracing.batch_span(
                    self._span_name, callers, {"semcache.batch.texts": len(batch)}
                ):
                    outcome = await loop.run_in_executor(self._executor, self._infer, texts)
            except Exception as exc:  # a model failure fails this batch's requests, not the server
                log.exception("embedding batch of %d texts failed", len(batch))
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(exc)
                continue
            self._deliver(batch, outcome, started)

    def _take_batch(self) -> list[_Pending[Item]]:
        batch: list[_Pending[Item]] = []
        while self._queue and len(batch) < self._max_batch_size:
            item = self._queue.popleft()
            if item.future.done():  # its request was cancelled or already failed
                self.stats.skipped_cancelled += 1
                continue
            batch.append(item)
        return batch

    def _infer(self, texts: list[Item]) -> list[_Outcome]:
        """Runs in the inference thread: tokenize, sort by length, run under the token budget."""
        tokenized = self._model.tokenize(texts)
        outcomes = [_Outcome(tokens=t) for t in tokenized]
        runnable: list[int] = []
        for i, item in enumerate(tokenized):
            try:
                self._model.check_length(item)
                runnable.append(i)
            except TextTooLongError as exc:
                outcomes[i].error = exc
        lengths = [tokenized[i].length for i in runnable]
        for run in plan_runs(lengths, self._max_batch_tokens):
            members = [runnable[j] for j in run]
            started = time.perf_counter()
            vectors = self._model.run([tokenized[i] for i in members])
            elapsed = time.perf_counter() - started
            if self._instrument:
                metrics.RUN_SECONDS.observe(elapsed)
            for row, i in enumerate(members):
                outcomes[i].vector = vectors[row]
                outcomes[i].run_size = len(members)
                outcomes[i].seconds = elapsed
        return outcomes

    def _deliver(
        self, batch: list[_Pending[Item]], outcomes: list[_Outcome], started: float
    ) -> None:
        self.stats.batches += 1
        self.stats.texts += len(batch)
        self.stats.max_batch_size = max(self.stats.max_batch_size, len(batch))
        self.stats.batch_size_counts[len(batch)] += 1
        if self._instrument:
            metrics.BATCH_TEXTS.observe(len(batch))
            metrics.TEXTS.inc(len(batch))
        for pending, outcome in zip(batch, outcomes, strict=True):
            if pending.future.done():
                continue
            if outcome.error is not None or outcome.vector is None:
                pending.future.set_exception(outcome.error or RuntimeError("no vector computed"))
                continue
            pending.future.set_result(
                TextResult(
                    vector=outcome.vector,
                    tokens=outcome.tokens.length,
                    truncated=outcome.tokens.truncated,
                    batch_size=outcome.run_size,
                    queue_time_s=started - pending.enqueued_at,
                    inference_time_s=outcome.seconds,
                )
            )
