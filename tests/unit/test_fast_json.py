"""The hot path's hand-built answer (gateway/fast_json.py) against the documented model."""

from __future__ import annotations

import json

from gateway.fast_json import json_response, query_answer, search_answer
from gateway.routes.langcache import SearchResponse
from gateway.routes.original import QueryResponse
from protos.semcache.cache.v1 import cache_pb2 as pb


def _hit(policy: str = "") -> pb.QueryResponse:
    return pb.QueryResponse(
        query="Which city is the capital of France?",
        response="Paris.",
        cache_hit=True,
        cached_data=pb.CachedData(
            cached_response="Paris.",
            similarity_score=0.942,
            cached_query="What is the capital of France?",
            cache_timestamp=1795761001.5,
        ),
        embedding_dimension=384,
        policy=policy,
        explored=bool(policy),
    )


def test_a_hit_has_exactly_the_documented_fields_and_values() -> None:
    answer = query_answer(_hit(), 0.0042)
    model = QueryResponse.model_validate(answer)
    assert answer == model.model_dump(exclude={"policy", "explored"})
    assert answer["cached_data"]["cached_query"] == "What is the capital of France?"
    assert abs(answer["cached_data"]["similarity_score"] - 0.942) < 1e-6
    assert answer["processing_time"] == 0.0042


def test_a_miss_has_null_cached_data() -> None:
    reply = pb.QueryResponse(query="q", response="a", cache_hit=False, embedding_dimension=384)
    answer = query_answer(reply, 0.01)
    assert answer["cached_data"] is None and answer["cache_hit"] is False
    assert set(answer) == set(QueryResponse.model_fields) - {"policy", "explored"}


def test_the_verified_policy_adds_its_two_fields() -> None:
    answer = query_answer(_hit("verified"), 0.01)
    assert answer["policy"] == "verified" and answer["explored"] is True
    assert QueryResponse.model_validate(answer).model_dump() == answer


def test_the_body_is_json_that_the_standard_library_reads_back_the_same() -> None:
    answer = query_answer(_hit(), 0.0042)
    response = json_response(answer)
    assert response.media_type == "application/json"
    assert json.loads(bytes(response.body)) == answer


def test_a_langcache_search_answer_is_search_response_by_alias() -> None:
    reply = pb.SearchResponse(
        hits=[
            pb.SearchHit(
                entry=pb.Entry(
                    id="e1", prompt="p", response="r", attributes={"tenant": "a"}, created_at=1.0
                ),
                similarity=0.91,
                strategy=pb.SEARCH_STRATEGY_SEMANTIC,
            ),
            pb.SearchHit(
                entry=pb.Entry(id="e2", prompt="q", response="s"),
                similarity=1.0,
                strategy=pb.SEARCH_STRATEGY_EXACT,
            ),
        ]
    )
    answer = search_answer(reply)
    model = SearchResponse.model_validate(answer)
    assert answer == model.model_dump(by_alias=True, mode="json")
    assert [e["searchStrategy"] for e in answer["data"]] == ["semantic", "exact"]
    assert answer["data"][0]["attributes"] == {"tenant": "a"}
    assert search_answer(pb.SearchResponse()) == {"data": []}
