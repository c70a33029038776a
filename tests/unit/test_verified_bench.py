"""The verified benchmark's counting and report (bench.verified_runs, bench.verified_report),
on a fake cache server stub and fake vectors: the figures in the README come from these."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import numpy as np

from bench.verified_report import best_static, comparison_table, comparisons, plot, table
from bench.verified_runs import Config, Run, replay, replay_vcache, total, wilson
from embedder.training.pairs import Pair
from embedder.training.traffic import Clusters, request_stream
from protos.semcache.cache.v1 import cache_pb2 as pb
from protos.semcache.cache.v1 import cache_pb2_grpc as pb_grpc


class FakeCache:
    """Stands in for the cache server's stub: the most recent stored answer is served on every
    3rd request, explored on the next, and every other request is a miss."""

    def __init__(self, clusters: Clusters) -> None:
        self.clusters = clusters
        self.calls = 0
        self.last_answer: str | None = None
        self.requests = 0
        self.seen: list[pb.QueryRequest] = []

    def Query(self, request: pb.QueryRequest, timeout: float) -> pb.QueryResponse:
        self.seen.append(request)
        step, self.requests = self.requests % 3, self.requests + 1
        if step == 0 and self.last_answer is not None:
            return pb.QueryResponse(response=self.last_answer, cache_hit=True)
        self.calls += 1
        fresh = self.clusters.answer(request.query)
        explored = step == 1 and self.last_answer is not None
        self.last_answer = fresh
        return pb.QueryResponse(response=fresh, explored=explored)

    def GetStats(self, request: pb.GetStatsRequest, timeout: float) -> pb.GetStatsResponse:
        return pb.GetStatsResponse(cache_id=request.cache_id, explorations=7)

    def Flush(self, request: pb.FlushRequest, timeout: float) -> pb.FlushResponse:
        return pb.FlushResponse()


def test_wilson_interval() -> None:
    low, high = wilson(5, 100)
    assert low < 0.05 < high
    assert wilson(0, 0) == (0.0, 1.0)
    assert wilson(0, 50)[0] == 0.0


def test_a_replay_counts_hits_errors_explorations_and_llm_calls() -> None:
    # q0 ... q20 one group (a chain of duplicates), q21 ... q30 alone.
    data = [Pair(f"q{i}", f"q{i + 1}", int(i < 20)) for i in range(30)]
    clusters = Clusters.from_pairs(data)
    stream = request_stream(data, 100, seed=3)
    n = len(stream)
    fake = FakeCache(clusters)
    config = Config("semcache", 0.05, "requests")
    run = replay(
        cast(pb_grpc.CacheServiceStub, fake), config, "c", stream, clusters, lambda: fake.calls
    )
    assert run.requests == n == 31
    assert run.hits == len(range(3, n, 3))
    assert run.explorations == len(range(1, n, 3))
    assert run.llm_calls == fake.calls == n - run.hits
    served = [(stream[i], stream[i - 1]) for i in range(3, n, 3)]
    assert run.errors == sum(not clusters.same(q, before) for q, before in served)
    assert 0 < run.errors < run.hits
    assert run.server_stats["explorations"] == "7"
    assert run.calls_per_1000 == 1000 * run.llm_calls / n
    request = fake.seen[0]
    assert request.policy == pb.HIT_POLICY_VERIFIED
    assert request.error_accounting == pb.ERROR_ACCOUNTING_REQUESTS
    assert request.max_error_rate == 0.05


def test_vcache_is_replayed_on_the_given_vectors() -> None:
    data = [Pair(f"q{i}", f"q{i + 1}", int(i < 20)) for i in range(30)]
    clusters = Clusters.from_pairs(data)
    stream = request_stream(data, 100, seed=3) * 2  # every question asked twice
    rng = np.random.default_rng(0)
    vectors = {}
    for q in set(stream):
        v = rng.standard_normal(384).astype(np.float32)
        vectors[q] = v / np.linalg.norm(v)
    run = replay_vcache(Config("vcache", 0.05), stream, vectors, clusters, seed=0)
    assert run.requests == len(stream)
    assert run.repeat_hits > 0  # exact repeats are served
    assert run.llm_calls >= len(set(stream))


def test_the_comparison_picks_the_best_static_within_delta_and_adds_seeds() -> None:
    statics = [
        Run(Config("static", 0.95), requests=100, hits=10, errors=0, llm_calls=90),
        Run(Config("static", 0.90), requests=100, hits=20, errors=1, llm_calls=80),  # 0.05
        Run(Config("static", 0.80), requests=100, hits=50, errors=10, llm_calls=50),  # 0.20
    ]
    best = best_static(statics, 0.05)
    assert best is not None and best.config.value == 0.90
    assert best_static(statics, 0.01) is not None and best_static(statics[1:], 0.01) is None
    seeds = [
        Run(Config("semcache", 0.05, "hits"), requests=100, hits=15, errors=0, llm_calls=85),
        Run(Config("semcache", 0.05, "hits"), requests=100, hits=15, errors=1, llm_calls=86),
    ]
    semcache = total(seeds)
    assert (semcache.requests, semcache.hits, semcache.errors) == (200, 30, 1)
    semcache_run = Run(Config("semcache", 0.05, "hits"), requests=100, hits=30, errors=1)
    rows = comparisons([*statics, semcache_run])
    assert len(rows) == 1 and rows[0]["best_static"] == 0.90
    assert rows[0]["hits_ratio"] == 1.5 and rows[0]["within_delta"]
    assert "1.50x" in comparison_table(rows)
    assert "semcache δ=0.05" in table([*statics, semcache])


def test_the_plot_is_drawn(tmp_path: Path) -> None:
    runs = [
        Run(Config("static", 0.90), requests=100, hits=20, errors=1),
        Run(Config("semcache", 0.05, "hits"), requests=100, hits=15, errors=0),
        Run(Config("vcache", 0.05), requests=100, hits=5, errors=3),
    ]
    plot({"popular": runs, "adversarial": runs}, tmp_path / "plot.png", "title")
    assert (tmp_path / "plot.png").stat().st_size > 0
