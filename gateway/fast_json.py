"""The hot paths' answers, rendered straight from the cache server's protobuf replies.

`POST /query` and the LangCache API's `entries/search` answer thousands of times a second:
building a pydantic model from the reply, dumping it to a dict and encoding that costs more
than the few fields are worth. Here the dict is built once and encoded by orjson. The shapes are
the documented `QueryResponse` (gateway/routes/original.py) and `SearchResponse`
(gateway/routes/langcache.py), which keep declaring them in the OpenAPI schema;
tests/unit/test_fast_json.py checks they agree field for field.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import Response

from protos.semcache.cache.v1 import cache_pb2 as pb


def query_answer(reply: pb.QueryResponse, processing_time_s: float) -> dict[str, Any]:
    """The original API's answer to one query. `policy` and `explored` are semcache's
    extension, present only in answers given under the verified policy."""
    cached = reply.cached_data
    answer: dict[str, Any] = {
        "query": reply.query,
        "response": reply.response,
        "cache_hit": reply.cache_hit,
        "cached_data": {
            "cached_response": cached.cached_response,
            "similarity_score": cached.similarity_score,
            "cached_query": cached.cached_query,
            "cache_timestamp": cached.cache_timestamp,
        }
        if reply.cache_hit
        else None,
        "embedding_dimension": reply.embedding_dimension,
        "processing_time": processing_time_s,
    }
    if reply.policy == "verified":
        answer["policy"] = "verified"
        answer["explored"] = reply.explored
    return answer


_STRATEGY = {pb.SEARCH_STRATEGY_EXACT: "exact", pb.SEARCH_STRATEGY_SEMANTIC: "semantic"}


def search_answer(reply: pb.SearchResponse) -> dict[str, Any]:
    """The LangCache API's answer to `entries/search` (`SearchResponse`, by alias)."""
    return {
        "data": [
            {
                "id": hit.entry.id,
                "prompt": hit.entry.prompt,
                "response": hit.entry.response,
                "attributes": dict(hit.entry.attributes),
                "similarity": hit.similarity,
                "searchStrategy": _STRATEGY[hit.strategy],
            }
            for hit in reply.hits
        ]
    }


def json_response(content: dict[str, Any], status_code: int = 200) -> Response:
    """A JSON response encoded by orjson (what JSONResponse does with the standard library's
    encoder, ~3x faster for these bodies)."""
    return Response(orjson.dumps(content), status_code=status_code, media_type="application/json")
