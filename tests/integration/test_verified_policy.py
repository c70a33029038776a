"""The verified hit policy end to end: the real embedder (the exported ONNX model, with and
without the prior `make model` fits) and cache servers, an OpenAI-compatible fake LLM that
answers every question of one topic alike, the embedded store across a restart and Redis
shared by two replicas."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from protos.semcache.cache.v1 import cache_pb2 as pb
from protos.semcache.cache.v1 import cache_pb2_grpc as pb_grpc
from tests.fake_llm import FakeLLM
from tests.processes import RedisProcess, cache_server_process, redis_cache_server

SEED = "How can I learn Python programming?"
PARAPHRASES = [
    "What is the best way to learn Python programming?",
    "How do I learn Python programming?",
    "How should I learn Python programming?",
    "How can I learn programming in Python?",
    "What is the best way to learn Python?",
    "How can I learn the Python programming language?",
]
# Near the Python questions, and answered otherwise.
OTHER_TOPIC = "How can I learn Python programming for data science?"
PYTHON_ANSWER = "Work through the official Python tutorial, then build small projects."
# Deterministic: no served candidate explored at random but by the chance that serving it is
# wrong, drawn from a seeded generator.
VERIFIED = (
    "--verified-judge",
    "exact",
    "--verified-audit-rate",
    "0",
    "--verified-unproven-explore-rate",
    "0",
    "--verified-seed",
    "7",
)


def _answer(prompt: str) -> str:
    if prompt == SEED or prompt.split(": ", 1)[-1] in PARAPHRASES:
        return PYTHON_ANSWER
    return f"An answer about: {prompt}"


@pytest.fixture(scope="module")
def topic_llm() -> Iterator[FakeLLM]:
    with FakeLLM(answer=_answer) as server:
        yield server


def _stub(address: str) -> pb_grpc.CacheServiceStub:
    return pb_grpc.CacheServiceStub(grpc.insecure_channel(address))


def _ask(stub: pb_grpc.CacheServiceStub, cache_id: str, prompt: str) -> pb.QueryResponse:
    reply: pb.QueryResponse = stub.Query(pb.QueryRequest(cache_id=cache_id, query=prompt))
    return reply


def _learn_until_served(stub: pb_grpc.CacheServiceStub, cache_id: str) -> pb.QueryResponse:
    """Paraphrases of SEED, each asked once (an explored one is stored: asked again, it would
    be an exact hit), until one is served from the cache; every one before explores."""
    for i in range(40):
        reply = _ask(stub, cache_id, f"Question {i}: {PARAPHRASES[i % len(PARAPHRASES)]}")
        assert reply.policy == "verified"
        if reply.cache_hit:
            assert reply.cached_data.strategy == pb.SEARCH_STRATEGY_SEMANTIC
            return reply
        assert reply.explored and reply.response == PYTHON_ANSWER
    raise AssertionError("no paraphrase served after 40 right explorations")


def test_explorations_teach_an_entry_and_what_it_learned_survives_a_restart(
    tmp_path: Path, embedder_process: str, topic_llm: FakeLLM
) -> None:
    args = ("--upstream-base-url", topic_llm.base_url, *VERIFIED)
    with cache_server_process(tmp_path, embedder_process, *args) as server:
        stub = _stub(server.address)
        policy = stub.SetCachePolicy(
            pb.SetCachePolicyRequest(
                cache_id="v", policy=pb.HIT_POLICY_VERIFIED, max_error_rate=0.1
            )
        )
        assert (policy.policy, policy.max_error_rate, policy.source) == ("verified", 0.1, "cache")
        first = _ask(stub, "v", SEED)
        assert not first.cache_hit and not first.explored
        served = _learn_until_served(stub, "v")
        assert served.response == PYTHON_ANSWER
        # The seed's entry, or a paraphrase's that inherited its evidence: the same answer.
        assert served.cached_data.cached_query != served.query
        # Another question near the learned one: explored, judged wrong, never given the
        # Python answer; the threshold policy at the same similarity would have served it.
        java = _ask(stub, "v", OTHER_TOPIC)
        assert java.explored and not java.cache_hit
        assert java.response == f"An answer about: {OTHER_TOPIC}"
        stats = stub.GetStats(pb.GetStatsRequest(cache_id="v"))
        assert stats.policy == "verified" and stats.max_error_rate == 0.1
        assert stats.verified_hits == 1 and stats.explorations_wrong == 1
        assert stats.explorations >= 2 and stats.learned.entries >= 1
        assert stats.learned.pooled_observations == stats.explorations
        assert 0.0 < stats.learned.threshold_p50 <= served.cached_data.similarity_score

    with cache_server_process(tmp_path, embedder_process, *args) as server:
        stub = _stub(server.address)
        kept = stub.GetCachePolicy(pb.GetCachePolicyRequest(cache_id="v"))
        assert (kept.policy, kept.source) == ("verified", "cache")
        after = stub.GetStats(pb.GetStatsRequest(cache_id="v")).learned
        assert after.prior == "uninformed"  # this export has no prior: all was learned here
        for field in ("entries", "observations", "pooled_observations"):
            assert getattr(after, field) == getattr(stats.learned, field), field


def test_a_fresh_cache_serves_a_near_paraphrase_from_the_calibrated_prior(
    tmp_path: Path, calibrated_embedder: str, topic_llm: FakeLLM
) -> None:
    """With the prior `make model` ships, a cache with no observation of its own serves a near
    paraphrase at once, and does again after a restart; without it, the same request only
    explores."""
    args = ("--upstream-base-url", topic_llm.base_url, "--hit-policy", "verified", *VERIFIED)
    near = "How do I learn Python programming?"
    with cache_server_process(tmp_path, calibrated_embedder, *args) as server:
        stub = _stub(server.address)
        first = stub.Query(pb.QueryRequest(cache_id="p", query=SEED, max_error_rate=0.1))
        assert not first.cache_hit
        calls = topic_llm.calls
        served = stub.Query(pb.QueryRequest(cache_id="p", query=near, max_error_rate=0.1))
        assert served.cache_hit and served.response == PYTHON_ANSWER, served
        assert served.cached_data.similarity_score > 0.9
        assert topic_llm.calls == calls
        learned = stub.GetStats(pb.GetStatsRequest(cache_id="p")).learned
        assert learned.prior == "calibrated" and learned.pooled_observations == 0
    with cache_server_process(tmp_path, calibrated_embedder, *args) as server:
        stub = _stub(server.address)
        again = stub.Query(pb.QueryRequest(cache_id="p", query=near, max_error_rate=0.1))
        assert again.cache_hit and topic_llm.calls == calls


def test_without_a_prior_a_fresh_cache_explores_the_same_paraphrase(
    tmp_path: Path, embedder_process: str, topic_llm: FakeLLM
) -> None:
    args = ("--upstream-base-url", topic_llm.base_url, "--hit-policy", "verified", *VERIFIED)
    with cache_server_process(tmp_path, embedder_process, *args) as server:
        stub = _stub(server.address)
        stub.Query(pb.QueryRequest(cache_id="u", query=SEED, max_error_rate=0.1))
        near = stub.Query(pb.QueryRequest(cache_id="u", query="How do I learn Python programming?"))
        assert near.explored and not near.cache_hit
        assert stub.GetStats(pb.GetStatsRequest(cache_id="u")).learned.prior == "uninformed"


def test_bad_policy_input_is_invalid_argument(
    tmp_path: Path, embedder_process: str, topic_llm: FakeLLM
) -> None:
    args = ("--upstream-base-url", topic_llm.base_url, *VERIFIED)
    with cache_server_process(tmp_path, embedder_process, *args) as server:
        stub = _stub(server.address)
        for request in (
            pb.QueryRequest(cache_id="v", query=SEED, max_error_rate=0.0),
            pb.QueryRequest(cache_id="v", query=SEED, max_error_rate=0.7),
            pb.QueryRequest(cache_id="v", query=SEED, policy=7),  # type: ignore[arg-type]
        ):
            with pytest.raises(grpc.RpcError) as caught:
                stub.Query(request)
            assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as caught:
            stub.SetCachePolicy(
                pb.SetCachePolicyRequest(
                    cache_id="v", policy=pb.HIT_POLICY_VERIFIED, max_error_rate=2
                )
            )
        assert "max_error_rate must be in (0, 0.5]" in (caught.value.details() or "")
        assert _ask(stub, "v", SEED).response == PYTHON_ANSWER  # still serving


@pytest.mark.slow
def test_replicas_on_one_redis_share_what_is_learned(
    tmp_path: Path, embedder_process: str, topic_llm: FakeLLM
) -> None:
    redis = RedisProcess(tmp_path / "redis").start()
    prefix = f"v-{uuid.uuid4().hex[:8]}"
    args = ("--upstream-base-url", topic_llm.base_url, "--hit-policy", "verified", *VERIFIED)
    try:
        with (
            redis_cache_server(tmp_path, embedder_process, redis.url, prefix, *args) as one,
            redis_cache_server(tmp_path, embedder_process, redis.url, prefix, *args) as two,
        ):
            a, b = _stub(one.address), _stub(two.address)
            b.SetCachePolicy(
                pb.SetCachePolicyRequest(
                    cache_id="r", policy=pb.HIT_POLICY_VERIFIED, max_error_rate=0.1
                )
            )
            _ask(a, "r", SEED)
            served = _learn_until_served(a, "r")
            calls = topic_llm.calls
            on_b = _ask(b, "r", served.query)
            assert on_b.cache_hit and on_b.response == PYTHON_ANSWER
            assert topic_llm.calls == calls
            assert b.GetStats(pb.GetStatsRequest(cache_id="r")).explorations >= 1
    finally:
        redis.stop()
