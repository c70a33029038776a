"""The verified benchmark's ground truth: questions grouped by meaning (transitively), every
other question alone, a request stream that is the same for the same seed, has no repeats, and
holds no question of the training part."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import cast

import pytest

from embedder.training.traffic import Clusters, held_out_pairs, reachable_hits, request_stream
from bench.verified_bench import (
    Config,
    Run,
    best_static_at,
    comparison_table,
    comparisons,
    plot,
    promise,
    replay,
    table,
    wilson,
)
from embedder.training.pairs import Pair, read_pairs, split_pairs
from protos.semcache.cache.v1 import cache_pb2 as pb
from protos.semcache.cache.v1 import cache_pb2_grpc as pb_grpc


def test_duplicates_are_grouped_transitively() -> None:
    clusters = Clusters.from_pairs(
        [
            Pair("How do I learn Python?", "What is the best way to learn Python?", 1),
            Pair("What is the best way to learn Python?  ", "How can I learn Python fast?", 1),
            Pair("How can I learn Python fast?", "How do I learn Java?", 0),
        ]
    )
    first = clusters.cluster("How do I learn Python?")
    assert first is not None
    assert clusters.cluster("How can I learn Python fast?") == first  # never paired directly
    assert clusters.cluster(" What is the best way to learn Python?") == first  # strip()
    assert clusters.cluster("How do I learn Java?") != first
    assert clusters.same("How do I learn Python?", "How can I learn Python fast?")
    assert clusters.answer("How can I learn Python fast?") == clusters.answer(
        "How do I learn Python?"
    )
    assert clusters.answer("How do I learn Python?") == (
        f"answer for cluster {first}: How do I learn Python?"
    )


def test_questions_without_a_duplicate_are_alone() -> None:
    clusters = Clusters.from_pairs(
        [Pair("What is love?", "What is hate?", 0), Pair("Why is the sky blue?", "Is it?", 0)]
    )
    ids = {clusters.cluster(q) for q in ("What is love?", "What is hate?", "Why is the sky blue?")}
    assert len(ids) == 3
    assert len(clusters.canonical) == 4
    assert clusters.cluster("never asked") is None
    assert clusters.answer("never asked") != clusters.answer("also never asked")
    assert not clusters.same("never asked", "never asked")


def pairs(n: int) -> list[Pair]:
    # Every 3rd pair a duplicate, and pairs chained through shared questions now and then.
    return [
        Pair(f"question {i}?", f"question {i + 1 if i % 5 == 0 else -i}?", int(i % 3 == 0))
        for i in range(n)
    ]


def test_the_stream_depends_on_the_seed_only() -> None:
    data = pairs(400)
    first = request_stream(data, 300, seed=7)
    assert first == request_stream(data, 300, seed=7)
    assert first != request_stream(data, 300, seed=8)
    assert len(first) == 300
    assert len(set(first)) == len(first)  # no exact repeats
    everything = request_stream(data, 10_000, seed=7)
    assert len(everything) == len({q.strip() for p in data for q in (p.text_a, p.text_b)})
    assert request_stream(data, 0) == []


def test_reachable_hits_count_groups_asked_before() -> None:
    clusters = Clusters.from_pairs([Pair("a", "b", 1), Pair("b", "c", 1), Pair("d", "e", 0)])
    assert reachable_hits(["a", "d", "c", "e", "b", "unknown"], clusters) == 2


def write(path: Path, rows: list[Pair]) -> Path:
    with gzip.open(path, "wt") as f:
        for p in rows:
            f.write(json.dumps({"text_a": p.text_a, "text_b": p.text_b, "label": p.label}) + "\n")
    return path


def test_the_stream_holds_no_training_question(tmp_path: Path) -> None:
    data = [
        Pair(f"what is topic {i}?", f"what is topic {i + 7 if i % 4 else i * 3}?", int(i % 2 == 0))
        for i in range(2000)
    ]
    path = write(tmp_path / "pairs.jsonl.gz", data)
    held_out = held_out_pairs(path)
    assert held_out == split_pairs(read_pairs(path), 0.2).test
    training = {
        q.strip().lower()
        for p in split_pairs(read_pairs(path), 0.2).train
        for q in (p.text_a, p.text_b)
    }
    stream = request_stream(held_out, 10_000, seed=1)
    assert stream
    assert not {q.lower() for q in stream} & training


def test_error_rate_bound_and_comparison() -> None:
    low, high = wilson(5, 100)
    assert low < 0.05 < high
    assert wilson(0, 0) == (0.0, 1.0)
    assert wilson(0, 50)[0] == 0.0
    verified = Run(Config("verified", 0.05), requests=100, hits=40, errors=3)
    assert promise(verified) == "within its interval"  # 3/40 = 0.075, interval from ~0.026
    assert promise(Run(Config("verified", 0.05), requests=300, hits=200, errors=30)) == "no"
    assert promise(Run(Config("verified", 0.10), requests=100, hits=40, errors=3)) == "yes"
    assert promise(Run(Config("verified", 0.10), requests=100)) == "no hits"
    statics = [
        Run(Config("threshold", 0.95), requests=100, hits=10, errors=0),
        Run(Config("threshold", 0.90), requests=100, hits=20, errors=1),  # 0.05
        Run(Config("threshold", 0.80), requests=100, hits=50, errors=10),  # 0.20
    ]
    best = best_static_at(verified, statics)
    assert best is not None and best.config.value == 0.90
    assert best_static_at(Run(Config("verified", 0.01), 100, 5, 0), statics[1:]) is None


@pytest.mark.parametrize("size", [1, 2, 3])
def test_small_streams_are_capped(size: int) -> None:
    assert len(request_stream(pairs(50), size, seed=0)) == size


class FakeVerifiedCache:
    """Stands in for the cache server's stub: the most recent stored answer is served on every
    3rd request, explored on the next, and every other request is a miss."""

    def __init__(self, clusters: Clusters) -> None:
        self.clusters = clusters
        self.calls = 0
        self.last_answer: str | None = None
        self.requests = 0

    def Query(self, request: pb.QueryRequest, timeout: float) -> pb.QueryResponse:
        step, self.requests = self.requests % 3, self.requests + 1
        policy = "verified" if request.policy == pb.HIT_POLICY_VERIFIED else "threshold"
        if step == 0 and self.last_answer is not None:
            return pb.QueryResponse(response=self.last_answer, cache_hit=True, policy=policy)
        self.calls += 1
        fresh = self.clusters.answer(request.query)
        explored = step == 1 and self.last_answer is not None
        self.last_answer = fresh
        return pb.QueryResponse(response=fresh, explored=explored, policy=policy)

    def GetStats(self, request: pb.GetStatsRequest, timeout: float) -> pb.GetStatsResponse:
        return pb.GetStatsResponse(cache_id=request.cache_id, explorations=7)

    def Flush(self, request: pb.FlushRequest, timeout: float) -> pb.FlushResponse:
        return pb.FlushResponse()


def test_a_replay_counts_hits_errors_explorations_and_llm_calls(tmp_path: Path) -> None:
    # q0 ... q20 one group (a chain of duplicates), q21 ... q30 alone.
    data = [Pair(f"q{i}", f"q{i + 1}", int(i < 20)) for i in range(30)]
    clusters = Clusters.from_pairs(data)
    stream = request_stream(data, 100, seed=3)
    n = len(stream)
    fake = FakeVerifiedCache(clusters)
    stub = cast(pb_grpc.CacheServiceStub, fake)
    run = replay(stub, Config("verified", 0.05), "c", stream, clusters, lambda: fake.calls)
    assert run.skipped is None
    assert run.requests == n == 31
    assert run.hits == len(range(3, n, 3))
    assert run.explorations == len(range(1, n, 3))
    assert run.llm_calls == fake.calls == n - run.hits
    assert run.fresh_mismatches == 0
    served = [(stream[i], stream[i - 1]) for i in range(3, n, 3)]
    assert run.errors == sum(not clusters.same(q, before) for q, before in served)
    assert 0 < run.errors < run.hits
    assert sum(q["hits"] for q in run.by_quarter) == run.hits
    assert run.server_stats["explorations"] == "7"
    assert run.hit_p50_ms is not None and run.exploration_p50_ms is not None

    statics = [
        Run(Config("threshold", 0.9), requests=60, hits=5, errors=0),
        Run(Config("threshold", 0.8), requests=60, hits=30, errors=20),
    ]
    rows = comparisons([run, *statics])
    assert len(rows) == 1 and rows[0]["best_static_threshold"] == 0.9
    assert "0.90" in comparison_table(rows)
    assert "verified δ=0.05" in table([run, *statics], 0.2)
    plot([run, *statics], 0.2, tmp_path / "plot.png", "title")
    assert (tmp_path / "plot.png").stat().st_size > 0


def test_a_server_without_the_policy_is_reported_not_measured() -> None:
    clusters = Clusters.from_pairs([Pair("a", "b", 1)])

    class OldServer(FakeVerifiedCache):
        def Query(self, request: pb.QueryRequest, timeout: float) -> pb.QueryResponse:
            reply = super().Query(request, timeout)
            reply.policy = ""  # a server from before the field
            return reply

    old = OldServer(clusters)
    stub = cast(pb_grpc.CacheServiceStub, old)
    verified = replay(stub, Config("verified", 0.05), "c", ["a", "b"], clusters, lambda: 0)
    assert verified.skipped and verified.requests == 0
    static = replay(stub, Config("threshold", 0.85), "d", ["a", "b"], clusters, lambda: 0)
    assert static.skipped is None and static.requests == 2
