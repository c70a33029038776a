"""semcache-client, asyncio: many questions at once over one client, then the stats.

    python examples/async_quickstart.py [--cache localhost:50051]

Exits 1 unless every paraphrase was a hit.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from semcache_client import AsyncCacheClient

QUESTIONS = [
    ("What is the capital of France?", "Which city is the capital of France?"),
    ("How can I improve my sleep?", "What can I do to sleep better?"),
    ("How do rainbows form?", "How are rainbows formed?"),
]


async def main(address: str) -> int:
    async with AsyncCacheClient(address, cache_id="async-quickstart") as cache:
        await cache.flush()
        # The first questions go out together: each is a miss the server answers and stores.
        firsts = await asyncio.gather(*(cache.query(q) for q, _ in QUESTIONS))
        print(f"{sum(not r.cache_hit for r in firsts)} misses stored")
        seconds = await asyncio.gather(*(cache.query(p) for _, p in QUESTIONS))
        for (_, paraphrase), result in zip(QUESTIONS, seconds, strict=True):
            score = result.cached_data.similarity_score if result.cached_data else 0.0
            print(f"{paraphrase!r}: hit={result.cache_hit} similarity={score:.2f}")
        stats = await cache.get_stats()
        print(f"hit rate {stats.hit_rate:.2f} over {stats.hits + stats.misses} look-ups")
        return 0 if all(r.cache_hit for r in seconds) else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache", default="localhost:50051", help="cache server address(es)")
    sys.exit(asyncio.run(main(parser.parse_args().cache)))
