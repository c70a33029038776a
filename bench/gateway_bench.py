"""REST benchmark: semcache's gateway -> cache server -> embedder against the original design
(FastAPI + sentence-transformers in process + a Python list), same texts, same run.

Hits are paraphrase hits: `text_b` of QQP pairs after `text_a` was cached, threshold 0 so the
nearest entry answers; the embedder runs on every request (no exact repeats).
Also: the gateway's overhead over calling the cache service over gRPC directly.

Run: make bench  (or python -m bench.gateway_bench [--pairs 300])
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

import grpc
import httpx

from bench.qqp import QuestionPair, load_pairs
from bench.stack import local_stack
from bench.timing import p50_p99_ms
from embedder.manifest import ModelManifest
from protos.semcache.cache.v1 import cache_pb2 as pb
from protos.semcache.cache.v1 import cache_pb2_grpc as pb_grpc
from tests.processes import REPO, free_port


def rest_latency(url: str, texts: list[str]) -> dict[str, float]:
    """Concurrency 1 over one keep-alive connection (http.client: the lightest client, so the
    figure is the server's, not the client library's)."""
    parsed = urllib.parse.urlparse(url)
    connection = http.client.HTTPConnection(parsed.hostname or "127.0.0.1", parsed.port)
    latencies: list[float] = []
    hits = 0
    for text in texts:
        body = json.dumps({"query": text, "similarity_threshold": 0.0})
        started = time.perf_counter()
        connection.request("POST", "/query", body, {"Content-Type": "application/json"})
        reply = connection.getresponse()
        data = reply.read()
        latencies.append(time.perf_counter() - started)
        assert reply.status == 200, data
        hits += bool(json.loads(data)["cache_hit"])
    connection.close()
    p50, p99 = p50_p99_ms(latencies)
    return {"p50_ms": p50, "p99_ms": p99, "hit_rate": hits / len(texts)}


async def rest_load(url: str, texts: list[str], concurrency: int) -> dict[str, float]:
    queue = list(reversed(texts))
    latencies: list[float] = []
    hits = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def worker() -> None:
            nonlocal hits
            while queue:
                text = queue.pop()
                started = time.perf_counter()
                reply = await client.post(
                    "/query", json={"query": text, "similarity_threshold": 0.0}
                )
                latencies.append(time.perf_counter() - started)
                reply.raise_for_status()
                hits += bool(reply.json()["cache_hit"])

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    p50, p99 = p50_p99_ms(latencies)
    return {
        "p50_ms": p50,
        "p99_ms": p99,
        "per_s": len(texts) / elapsed,
        "hit_rate": hits / len(texts),
    }


def interleaved(rest_url: str, grpc_address: str, texts: list[str]) -> dict[str, float]:
    """The same queries through the gateway and straight to the cache service over gRPC,
    alternating request by request so both see the same machine load."""
    stub = pb_grpc.CacheServiceStub(grpc.insecure_channel(grpc_address))
    parsed = urllib.parse.urlparse(rest_url)
    connection = http.client.HTTPConnection(parsed.hostname or "127.0.0.1", parsed.port)
    rest, direct = [], []
    for i, text in enumerate(texts * 2):
        body = json.dumps({"query": text, "similarity_threshold": 0.0})
        for path in ("grpc", "rest") if i % 2 else ("rest", "grpc"):
            started = time.perf_counter()
            if path == "rest":
                connection.request("POST", "/query", body, {"Content-Type": "application/json"})
                reply = connection.getresponse()
                reply.read()
                rest.append(time.perf_counter() - started)
            else:
                stub.Query(pb.QueryRequest(query=text, similarity_threshold=0.0), timeout=60)
                direct.append(time.perf_counter() - started)
    connection.close()
    (rest_p50, _), (grpc_p50, _) = p50_p99_ms(rest), p50_p99_ms(direct)
    return {"rest_p50_ms": rest_p50, "grpc_p50_ms": grpc_p50}


def seed_rest(url: str, pairs: list[QuestionPair]) -> None:
    with httpx.Client(base_url=url, timeout=60) as client:
        for pair in pairs:
            client.post("/query", json={"query": pair.text_a}).raise_for_status()


def measure(url: str, pairs: list[QuestionPair]) -> dict[str, Any]:
    seed_rest(url, pairs)
    queries = [p.text_b for p in pairs]
    rest_latency(url, queries[:20])  # warm up
    return {"c1": rest_latency(url, queries), "c16": asyncio.run(rest_load(url, queries * 2, 16))}


def original_figures(model: str, pairs: list[QuestionPair]) -> dict[str, Any]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.original_design", "--model", model, "--port", str(port)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                httpx.get(f"{url}/health", timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("the original design did not start") from None
                time.sleep(0.2)
        return measure(url, pairs)
    finally:
        process.terminate()
        process.wait(30)


def semcache_figures(model_dir: Path, pairs: list[QuestionPair]) -> dict[str, Any]:
    with local_stack(model_dir) as services:
        cache, gateway = services.cache, services.gateway
        assert gateway is not None
        figures = measure(gateway.url, pairs)
        figures["overhead"] = interleaved(gateway.url, cache.address, [p.text_b for p in pairs])
    return figures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-dir", type=Path, default=Path("models/default"))
    parser.add_argument("--pairs", type=int, default=300)
    args = parser.parse_args()
    from bench.embedder_bench import st_source

    manifest = ModelManifest.read(args.model_dir)
    pairs = [p for p in load_pairs(args.pairs * 3) if p.text_a != p.text_b][: args.pairs]
    ours = semcache_figures(args.model_dir, pairs)
    original = original_figures(st_source(manifest), pairs)
    rows = [
        "| design | hit p50 ms (c=1) | hit p99 ms (c=1) | req/s (c=16) | p99 ms (c=16) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, f in (
        ("original (FastAPI + sentence-transformers + list)", original),
        ("semcache (gateway -> cache server -> embedder)", ours),
    ):
        rows.append(
            f"| {name} | {f['c1']['p50_ms']:.2f} | {f['c1']['p99_ms']:.2f} | "
            f"{f['c16']['per_s']:.0f} | {f['c16']['p99_ms']:.1f} |"
        )
    paired = ours["overhead"]
    overhead = paired["rest_p50_ms"] - paired["grpc_p50_ms"]
    summary = [
        f"REST hit p50: semcache {original['c1']['p50_ms'] / ours['c1']['p50_ms']:.2f}x faster "
        f"than the original design (target >= 2x)",
        f"throughput at concurrency 16: {ours['c16']['per_s'] / original['c16']['per_s']:.2f}x "
        f"the original design (target >= 3x)",
        f"gateway overhead at p50: {overhead:+.2f} ms (REST {paired['rest_p50_ms']:.2f} ms vs "
        f"gRPC {paired['grpc_p50_ms']:.2f} ms, interleaved; target <= 1 ms)",
    ]
    text = "\n".join(
        [f"model {manifest.model_id}, {len(pairs)} QQP paraphrase hits", "", *rows, "", *summary]
    )
    print(text)
    out = Path("bench/results")
    out.mkdir(parents=True, exist_ok=True)
    (out / "gateway.md").write_text(text + "\n")
    (out / "gateway.json").write_text(
        json.dumps({"semcache": ours, "original": original}, indent=2)
    )


if __name__ == "__main__":
    main()
