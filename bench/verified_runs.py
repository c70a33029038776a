"""One run of the verified benchmark: a stream of questions through one policy, counted.

- static and semcache's verified policy: gRPC Query on the real cache server, one request at a
  time as one user would, each configuration in a fresh cache;
- vCache (bench.vcache): in process, on the very vectors the embedder gives the cache server.

A served answer is right when it is the question's group answer (the fake LLM answers every
question of one group alike). Hits for a question asked before in the stream are counted apart
(repeats: an exact match under a threshold, a stored exploration under a verified policy):
hits and errors are those of questions asked for the first time, where policies differ.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from google.protobuf.json_format import MessageToDict

from bench.timing import p50_p99_ms
from bench.vcache import VCache
from embedder.training.traffic import Clusters
from protos.semcache.cache.v1 import cache_pb2 as pb
from protos.semcache.cache.v1 import cache_pb2_grpc as pb_grpc

Z95 = 1.959964
_ACCOUNTING = {"hits": pb.ERROR_ACCOUNTING_HITS, "requests": pb.ERROR_ACCOUNTING_REQUESTS}


@dataclass(frozen=True)
class Config:
    policy: str  # "static", "semcache" (the verified policy) or "vcache"
    value: float  # the similarity threshold, or δ (max error rate)
    accounting: str = ""  # semcache: "hits" or "requests"

    @property
    def name(self) -> str:
        if self.policy == "static":
            return f"static {self.value:.2f}"
        if self.policy == "vcache":
            return f"vCache δ={self.value:.2f}"
        over = "" if self.accounting == "hits" else f", over {self.accounting}"
        return f"semcache δ={self.value:.2f}{over}"

    def request(self, cache_id: str, question: str) -> pb.QueryRequest:
        if self.policy == "semcache":
            return pb.QueryRequest(
                cache_id=cache_id,
                query=question,
                policy=pb.HIT_POLICY_VERIFIED,
                max_error_rate=self.value,
                error_accounting=_ACCOUNTING[self.accounting or "hits"],
            )
        return pb.QueryRequest(
            cache_id=cache_id,
            query=question,
            policy=pb.HIT_POLICY_THRESHOLD,
            similarity_threshold=self.value,
        )


@dataclass
class Run:
    config: Config
    stream: str = ""
    seed: int = 0
    requests: int = 0
    hits: int = 0  # served to questions asked for the first time
    errors: int = 0  # ... with another group's answer
    repeat_hits: int = 0
    repeat_errors: int = 0
    explorations: int = 0
    llm_calls: int = 0
    seconds: float = 0.0
    hit_p50_ms: float | None = None
    other_p50_ms: float | None = None
    server_stats: dict[str, Any] = field(default_factory=dict)

    @property
    def hit_rate(self) -> float:
        return self.hits / self.requests if self.requests else 0.0

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.hits if self.hits else None

    @property
    def error_interval(self) -> tuple[float, float]:
        return wilson(self.errors, self.hits)

    @property
    def wrong_per_request(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def calls_per_1000(self) -> float:
        return 1000.0 * self.llm_calls / self.requests if self.requests else 0.0


def wilson(successes: int, trials: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion (95% by default); (0, 1) with no trials."""
    if trials == 0:
        return 0.0, 1.0
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def total(runs: Sequence[Run]) -> Run:
    """The runs of one configuration (seeds) added up."""
    out = Run(runs[0].config, runs[0].stream, -1)
    for r in runs:
        out.requests += r.requests
        out.hits += r.hits
        out.errors += r.errors
        out.repeat_hits += r.repeat_hits
        out.repeat_errors += r.repeat_errors
        out.explorations += r.explorations
        out.llm_calls += r.llm_calls
        out.seconds += r.seconds
    return out


def replay(
    stub: pb_grpc.CacheServiceStub,
    config: Config,
    cache_id: str,
    stream: Sequence[str],
    clusters: Clusters,
    llm_calls: Callable[[], int],
) -> Run:
    """`stream` through Query, one request at a time, in cache `cache_id` (flushed after);
    `llm_calls()` counts the upstream's calls (the fake LLM's counter)."""
    run = Run(config)
    before = llm_calls()
    hit_s: list[float] = []
    other_s: list[float] = []
    asked: set[str] = set()
    started = time.perf_counter()
    for question in stream:
        t0 = time.perf_counter()
        reply = stub.Query(config.request(cache_id, question), timeout=60)
        elapsed = time.perf_counter() - t0
        right = reply.response.strip() == clusters.answer(question)
        _count(run, question in asked, reply.cache_hit, right, reply.explored)
        asked.add(question)
        (hit_s if reply.cache_hit else other_s).append(elapsed)
    run.seconds = time.perf_counter() - started
    run.llm_calls = llm_calls() - before
    run.hit_p50_ms = p50_p99_ms(hit_s)[0] if hit_s else None
    run.other_p50_ms = p50_p99_ms(other_s)[0] if other_s else None
    stats = stub.GetStats(pb.GetStatsRequest(cache_id=cache_id), timeout=60)
    run.server_stats = MessageToDict(stats, preserving_proto_field_name=True)
    stub.Flush(pb.FlushRequest(cache_id=cache_id), timeout=60)
    return run


def replay_vcache(
    config: Config,
    stream: Sequence[str],
    vectors: dict[str, npt.NDArray[np.float32]],
    clusters: Clusters,
    seed: int,
) -> Run:
    """`stream` through vCache in process, on the embedder's vectors."""
    run = Run(config)
    cache = VCache(config.value, seed=seed)
    asked: set[str] = set()
    started = time.perf_counter()
    for question in stream:
        outcome = cache.query(question, vectors[question], clusters.answer)
        right = outcome.response.strip() == clusters.answer(question)
        _count(run, question in asked, outcome.served, right, outcome.explored)
        run.llm_calls += outcome.llm_called
        asked.add(question)
    run.seconds = time.perf_counter() - started
    return run


def _count(run: Run, repeat: bool, served: bool, right: bool, explored: bool) -> None:
    run.requests += 1
    if served and repeat:
        run.repeat_hits += 1
        run.repeat_errors += not right
    elif served:
        run.hits += 1
        run.errors += not right
    elif explored:
        run.explorations += 1
