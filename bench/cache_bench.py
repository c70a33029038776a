"""Cache benchmark on the QQP dev pairs.

Part 1, hit quality over the real processes: store `text_a` of N pairs through the cache
server, search with `text_b`; precision, recall and F1 of hits at thresholds 0.70-0.95, and the
lookup latency (a gRPC Search: embed + vector search) at concurrency 1.
A hit is correct when it returns the pair's own `text_a` and the pair is labelled a duplicate.

Part 2, search scaling in process: real QQP embeddings at 10k and 100k entries, exact (numpy)
vs approximate (HNSW) search: latency per query and recall@1 against exact, for queries that
are paraphrases of stored questions and for novel ones.

Run: make bench  (or python -m bench.cache_bench [--pairs 2000] [--sizes 10000,100000])
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from bench.qqp import QuestionPair, load_pairs
from bench.stack import local_stack
from bench.timing import p50_p99_ms
from cache_server.vector_index import VectorIndex
from embedder.manifest import ModelManifest
from protos.semcache.cache.v1 import cache_pb2 as pb
from protos.semcache.cache.v1 import cache_pb2_grpc as pb_grpc

THRESHOLDS = [0.70, 0.75, 0.80, 0.85, 0.90, 0.95]
RESULTS = Path("bench/results")


# --- part 1 ---------------------------------------------------------------------------------


async def store_all(address: str, pairs: list[QuestionPair]) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.CacheServiceStub(channel)
        limit = asyncio.Semaphore(16)

        async def put(i: int, pair: QuestionPair) -> None:
            async with limit:
                await stub.Set(pb.SetRequest(prompt=pair.text_a, response=str(i)), timeout=60)

        await asyncio.gather(*(put(i, p) for i, p in enumerate(pairs)))


def hit_quality(model_dir: Path, pairs: list[QuestionPair]) -> dict[str, Any]:
    with local_stack(
        model_dir, "--max-cache-size", str(len(pairs) * 2), with_gateway=False
    ) as services:
        server = services.cache
        asyncio.run(store_all(server.address, pairs))
        stub = pb_grpc.CacheServiceStub(grpc.insecure_channel(server.address))
        found: list[tuple[float, bool]] = []  # (similarity, is the pair's own text_a)
        latencies: list[float] = []
        for pair in pairs:
            started = time.perf_counter()
            reply = stub.Search(
                pb.SearchRequest(prompt=pair.text_b, similarity_threshold=THRESHOLDS[0]),
                timeout=60,
            )
            latencies.append(time.perf_counter() - started)
            if reply.hits:
                hit = reply.hits[0]
                found.append((hit.similarity, hit.entry.prompt == pair.text_a))
            else:
                found.append((-1.0, False))
    positives = sum(p.duplicate for p in pairs)
    rows = []
    for t in THRESHOLDS:
        hits = [(own, p.duplicate) for (sim, own), p in zip(found, pairs, strict=True) if sim >= t]
        tp = sum(own and dup for own, dup in hits)
        precision = tp / len(hits) if hits else 0.0
        recall = tp / positives if positives else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows.append(
            {"threshold": t, "hits": len(hits), "precision": precision, "recall": recall, "f1": f1}
        )
    p50, p99 = p50_p99_ms(latencies)
    return {
        "pairs": len(pairs),
        "duplicates": positives,
        "rows": rows,
        "lookup_p50_ms": p50,
        "lookup_p99_ms": p99,
    }


# --- part 2 ---------------------------------------------------------------------------------


def qqp_vectors(model_dir: Path, limit: int) -> tuple[list[str], np.ndarray]:
    """Unique QQP questions and their embeddings (cached on disk per model checksum)."""
    from embedder.encoder import OnnxEncoder

    manifest = ModelManifest.read(model_dir)
    cache = RESULTS / f"qqp-vectors-{manifest.onnx_sha256[:12]}-{limit}.npz"
    if cache.exists():
        data = np.load(cache, allow_pickle=False)
        return list(data["texts"]), data["vectors"]
    texts = list(dict.fromkeys(t for p in load_pairs() for t in (p.text_a, p.text_b)))[:limit]
    encoder = OnnxEncoder(model_dir)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    vectors = np.zeros((len(texts), manifest.dimension), dtype=np.float32)
    started = time.perf_counter()
    for start in range(0, len(order), 64):
        chunk = order[start : start + 64]
        vectors[chunk] = encoder.encode([texts[i] for i in chunk])
    print(f"embedded {len(texts)} QQP questions in {time.perf_counter() - started:.0f}s")
    RESULTS.mkdir(parents=True, exist_ok=True)
    np.savez(cache, texts=np.array(texts), vectors=vectors)
    return texts, vectors


def search_scaling(model_dir: Path, sizes: list[int]) -> list[dict[str, Any]]:
    texts, vectors = qqp_vectors(model_dir, max(sizes) + 2000)
    position = {t: i for i, t in enumerate(texts)}
    rows = []
    for size in sizes:
        stored = vectors[:size]
        # Paraphrase queries: text_b of duplicate pairs whose text_a is stored.
        para = [
            position[p.text_b]
            for p in load_pairs()
            if p.duplicate and position.get(p.text_a, size) < size and p.text_b in position
        ][:1000]
        novel = list(range(size, min(size + 1000, len(texts))))
        exact = VectorIndex(stored.shape[1], ann_threshold=10**12)
        approx = VectorIndex(stored.shape[1], ann_threshold=1)
        for i, v in enumerate(stored):
            exact.add(str(i), v)
        started = time.perf_counter()
        for i, v in enumerate(stored):
            approx.add(str(i), v)
        build_s = time.perf_counter() - started
        for kind, queries in (("paraphrase", para), ("novel", novel)):
            timings: dict[str, list[float]] = {"exact": [], "hnsw": []}
            agree = 0
            for q in queries:
                results = {}
                for name, index in (("exact", exact), ("hnsw", approx)):
                    started = time.perf_counter()
                    results[name] = index.search(vectors[q], 1, -1.0)
                    timings[name].append(time.perf_counter() - started)
                agree += results["exact"][0][0] == results["hnsw"][0][0]
            e50, e99 = p50_p99_ms(timings["exact"])
            h50, h99 = p50_p99_ms(timings["hnsw"])
            rows.append(
                {
                    "entries": size,
                    "queries": kind,
                    "n": len(queries),
                    "exact_p50_ms": e50,
                    "exact_p99_ms": e99,
                    "hnsw_p50_ms": h50,
                    "hnsw_p99_ms": h99,
                    "recall_at_1": agree / len(queries),
                    "hnsw_build_s": build_s,
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-dir", type=Path, default=Path("models/default"))
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--sizes", default="10000,100000")
    args = parser.parse_args()
    manifest = ModelManifest.read(args.model_dir)
    print(f"model {manifest.model_id} ({manifest.dimension} dims)")

    quality = hit_quality(args.model_dir, load_pairs(args.pairs))
    table = [
        f"Hit quality, {quality['pairs']} QQP pairs ({quality['duplicates']} duplicates): "
        "store text_a, search text_b",
        "",
        "| threshold | hits | precision | recall | F1 |",
        "|---:|---:|---:|---:|---:|",
        *(
            f"| {r['threshold']:.2f} | {r['hits']} | {r['precision']:.3f} | {r['recall']:.3f} | "
            f"{r['f1']:.3f} |"
            for r in quality["rows"]
        ),
        "",
        f"Lookup latency over gRPC (embed + search), concurrency 1: p50 "
        f"{quality['lookup_p50_ms']:.2f} ms, p99 {quality['lookup_p99_ms']:.2f} ms",
        "",
    ]
    scaling = search_scaling(args.model_dir, [int(s) for s in args.sizes.split(",")])
    table += [
        "Search scaling (in process, one query at a time, real QQP embeddings)",
        "",
        "| entries | queries | exact p50 ms | exact p99 ms | HNSW p50 ms | HNSW p99 ms | "
        "recall@1 vs exact | HNSW build s |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {r['entries']} | {r['queries']} ({r['n']}) | {r['exact_p50_ms']:.2f} | "
            f"{r['exact_p99_ms']:.2f} | {r['hnsw_p50_ms']:.3f} | {r['hnsw_p99_ms']:.3f} | "
            f"{r['recall_at_1']:.3f} | {r['hnsw_build_s']:.1f} |"
            for r in scaling
        ),
    ]
    text = "\n".join(table)
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "cache.md").write_text(text + "\n")
    (RESULTS / "cache.json").write_text(
        json.dumps({"quality": quality, "scaling": scaling}, indent=2)
    )


if __name__ == "__main__":
    main()
