"""Scoped against unscoped search on a Redis FLAT index, RediSearch's own hybrid policy against
the one RedisStore names (cache_server.store.redis_hybrid), side by side on one index.

bench.scale_table's data and fill (`bench.scale_stores`: N entries at D dims, a quarter of
them in each tenant, 500 novel QQP queries), one fresh redis-server; then for each query, in
turn (the order rotating, so load on the machine falls on all alike): the unscoped search, the
scoped search as RediSearch chooses (what the store sent before), and the scoped search with
the policy the store names. p50/p99 per kind and recall@1 against exact search.

Run: python -m bench.redis_scoped_search [--size 100000] [--dims 768] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bench import scale_stores as ss
from bench.timing import p50_p99_ms
from cache_server.store.redis_layout import CacheKeys
from cache_server.store.redis_store import RedisStore
from tests.processes import RedisProcess


class RediSearchChooses(RedisStore):
    """The store as it searched before: no HYBRID_POLICY named."""

    async def _hybrid_policy(self, keys: CacheKeys, attributes: Mapping[str, str]) -> str:
        return ""


async def run(size: int, dims: int) -> dict[str, Any]:
    prompts, stored, queries = ss.dataset(size, dims)
    truth = {"all": ss.exact_top1(stored, queries, False)}
    truth["scoped"] = ss.exact_top1(stored, queries, True)
    with tempfile.TemporaryDirectory(prefix="redis-scoped-") as work:
        server = RedisProcess(Path(work)).start()
        try:
            timeout = ss.CLIENT_TIMEOUT_S
            store = RedisStore(server.url, prefix=ss.CACHE, timeout_s=timeout)
            before = RediSearchChooses(server.url, prefix=ss.CACHE, timeout_s=timeout)
            await store.open()
            await before.open()
            started = time.perf_counter()
            await ss.fill_redis(store, prompts, stored)
            print(f"{size} x {dims}: filled in {time.perf_counter() - started:.0f}s", flush=True)
            kinds = {
                "unscoped": (store, False),
                "scoped, RediSearch's choice (before)": (before, True),
                "scoped, the store's choice (after)": (store, True),
            }
            latencies: dict[str, list[float]] = {kind: [] for kind in kinds}
            found: dict[str, list[int]] = {kind: [] for kind in kinds}
            names = list(kinds)
            for i, query in enumerate(queries):
                for kind in names[i % 3 :] + names[: i % 3]:
                    searcher, scoped = kinds[kind]
                    scope = ss.attributes(i) if scoped else {}
                    began = time.perf_counter()
                    hits = await searcher.search(ss.CACHE, query, 1, -1.0, scope, 2.0)
                    latencies[kind].append(time.perf_counter() - began)
                    found[kind].append(int(hits[0][0].response) if hits else -1)
            await store.close()
            await before.close()
        finally:
            server.stop()
    out: dict[str, Any] = {"size": size, "dims": dims, "rows": []}
    for kind, (_, scoped) in kinds.items():
        p50, p99 = p50_p99_ms(latencies[kind])
        exact = truth["scoped" if scoped else "all"]
        recall = ss.recall_at_1(stored, queries, found[kind], exact, scoped)
        out["rows"].append({"kind": kind, "p50_ms": p50, "p99_ms": p99, "recall_at_1": recall})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--dims", type=int, default=768)
    parser.add_argument("--out", type=Path, help="also write the figures here (JSON)")
    args = parser.parse_args()
    out = asyncio.run(run(args.size, args.dims))
    print(f"| {out['size']} x {out['dims']}, FLAT | search p50 ms | p99 ms | recall@1 |")
    print("|---|---:|---:|---:|")
    for row in out["rows"]:
        print(f"| {row['kind']} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} | ", end="")
        print(f"{row['recall_at_1']:.3f} |")
    if args.out:
        args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
