"""semcache-client, blocking: ask, store, search, look at the stats, embed, and handle errors.

    python examples/quickstart.py [--cache localhost:50051] [--embedder localhost:50052]

Works in a cache of its own ("quickstart"), emptied first. Exits 1 unless the paraphrases
were found.
"""

from __future__ import annotations

import argparse
import sys

from semcache_client import (
    CacheClient,
    EmbedderClient,
    InvalidArgument,
    SearchStrategy,
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache", default="localhost:50051", help="cache server address(es)")
    parser.add_argument("--embedder", default="localhost:50052", help="embedder(s)")
    args = parser.parse_args()

    with CacheClient(args.cache, cache_id="quickstart") as cache:
        cache.flush()
        first = cache.query("How do I reset my password?")
        print(f"miss:  {first.cache_hit=} -> {first.response[:60]!r}")
        second = cache.query("How can I reset my password?")
        similarity = second.cached_data.similarity_score if second.cached_data else 0.0
        print(f"again: {second.cache_hit=} (similarity {similarity:.2f})")

        entry_id = cache.set(
            "What time do you open?", "At 9:00, Monday to Friday.", attributes={"shop": "a"}
        )
        found = cache.search(
            "When do you open?",
            attributes={"shop": "a"},
            strategies=[SearchStrategy.EXACT, SearchStrategy.SEMANTIC],
        )
        if found.best is not None:
            print(f"search: {found.best.entry.response!r} ({found.best.similarity:.2f})")
        cache.delete(entry_id)

        stats = cache.get_stats()
        print(f"stats: {stats.cache_size} entries, {stats.hits} hits, {stats.misses} misses")

        try:
            cache.search("anything", similarity_threshold=1.5, request_id="quickstart-bad-1")
        except InvalidArgument as error:
            print(f"refused: {error.message} [reason {error.reason}, request {error.request_id}]")

    with EmbedderClient(args.embedder) as embedder:
        vectors = embedder.embed(["semantic caching", "a cache that understands meaning"])
        a, b = vectors.vectors
        cosine = sum(x * y for x, y in zip(a, b, strict=True))
        print(f"embed: {vectors.count} x {vectors.dimension}, cosine {cosine:.2f}")

    return 0 if second.cache_hit and found.best is not None else 1


if __name__ == "__main__":
    sys.exit(main())
