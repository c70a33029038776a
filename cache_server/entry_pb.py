"""A found entry and its strategy as protobuf, for every RPC that answers with entries."""

from __future__ import annotations

from cache_server.lookup import Hit, Strategy
from protos.semcache.cache.v1 import cache_pb2 as pb

STRATEGY_TO_PB = {
    Strategy.EXACT: pb.SEARCH_STRATEGY_EXACT,
    Strategy.SEMANTIC: pb.SEARCH_STRATEGY_SEMANTIC,
}
STRATEGY_FROM_PB = {v: k for k, v in STRATEGY_TO_PB.items()}


def entry_pb(hit: Hit) -> pb.Entry:
    e = hit.entry
    return pb.Entry(
        id=e.id,
        prompt=e.prompt,
        response=e.response,
        attributes=dict(e.attributes),
        created_at=e.created_at,
        expires_at=e.expires_at or 0.0,
    )
