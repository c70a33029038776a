"""Embedder benchmark: sentence-transformers (PyTorch) vs our ONNX fp32 and int8, in process
and over gRPC, on the same QQP questions, in one run on this machine.

Each in-process contender runs in its own subprocess (so peak RSS is its own). Ratios are to
sentence-transformers encoding one request at a time: what a naive server does.
Run: make bench  (or python -m bench.embedder_bench [--queries 300])
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc

from bench.qqp import load_pairs
from bench.timing import p50_p99_ms
from embedder.manifest import ModelManifest
from protos.semcache.embedding.v1 import embedding_pb2 as pb
from protos.semcache.embedding.v1 import embedding_pb2_grpc as pb_grpc
from tests.processes import ServiceProcess

THREADS = 2  # every contender gets the same number of threads


def questions(n: int, offset: int = 0) -> list[str]:
    return [p.text_b for p in load_pairs(offset + n)][offset:]


def percentiles(seconds: list[float]) -> dict[str, float]:
    p50, p99 = p50_p99_ms(seconds)
    return {"p50_ms": p50, "p99_ms": p99}


def peak_rss_mb(pid: int | str = "self") -> float:
    """VmHWM: peak resident memory of this process image (ru_maxrss survives fork+exec)."""
    status = Path(f"/proc/{pid}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("VmHWM"))
    return int(line.split()[1]) / 1024


# --- in-process contenders (each runs in a child process) ----------------------------------


def worker(kind: str, model: str, queries: int) -> dict[str, Any]:
    texts = questions(queries)
    if kind == "sentence-transformers":
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(THREADS)
        st = SentenceTransformer(model, device="cpu")

        def encode(batch: list[str]) -> Any:
            return st.encode(batch, normalize_embeddings=True, show_progress_bar=False)
    else:
        from embedder.encoder import OnnxEncoder

        onnx = OnnxEncoder(Path(model), intra_op_threads=THREADS)

        def encode(batch: list[str]) -> Any:
            return onnx.encode(batch)

    for text in texts[:20]:
        encode([text])
    latencies = []
    for text in texts:
        started = time.perf_counter()
        encode([text])
        latencies.append(time.perf_counter() - started)
    started = time.perf_counter()
    for i in range(0, len(texts), 32):
        encode(texts[i : i + 32])
    batched = len(texts) / (time.perf_counter() - started)
    return {
        **percentiles(latencies),
        "one_at_a_time_per_s": len(texts) / sum(latencies),
        "batch32_per_s": batched,
        "peak_rss_mb": peak_rss_mb(),
    }


def run_worker(kind: str, model: str, queries: int) -> dict[str, Any]:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.embedder_bench",
            "--worker",
            kind,
            "--model",
            model,
            "--queries",
            str(queries),
        ],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "OMP_NUM_THREADS": str(THREADS), "TOKENIZERS_PARALLELISM": "false"},
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


# --- over gRPC ------------------------------------------------------------------------------


async def grpc_load(
    address: str, texts: list[str], clients: int, warm: bool = True
) -> dict[str, float]:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.EmbeddingServiceStub(channel)
        queue = list(texts)
        latencies: list[float] = []

        async def client() -> None:
            while queue:
                text = queue.pop()
                started = time.perf_counter()
                await stub.Embed(pb.EmbedRequest(texts=[text]), timeout=60)
                latencies.append(time.perf_counter() - started)

        for text in texts[:20] if warm else ():
            await stub.Embed(pb.EmbedRequest(texts=[text]), timeout=60)
        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        elapsed = time.perf_counter() - started
    return {**percentiles(latencies), "per_s": len(texts) / elapsed}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc/<pid>/stat, clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _load_process(address: str, texts: list[str], clients: int, start_at: float) -> None:
    """One load-generating process (for spawn): waits for a common start, then runs."""
    time.sleep(max(0.0, start_at - time.time()))
    asyncio.run(grpc_load(address, texts, clients, warm=False))


def spread_load(address: str, texts: list[str], processes: int, clients: int) -> dict[str, float]:
    """`clients` concurrent clients spread over `processes` load-generating processes: if the
    throughput does not rise over one process's, the clients were not the limit. Also the
    server's CPU per text, from its /proc counters."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    share = [texts[i::processes] for i in range(processes)]
    start_at = time.time() + 3.0  # all spawned and imported by then
    workers = [
        context.Process(target=_load_process, args=(address, part, clients // processes, start_at))
        for part in share
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
        if w.exitcode != 0:
            raise RuntimeError(f"a load process failed with exit code {w.exitcode}")
    return {"per_s": len(texts) / (time.time() - start_at)}


def server_figures(model_dir: Path, texts: list[str]) -> dict[str, Any]:
    with ServiceProcess(
        "embedder",
        "--model-dir",
        str(model_dir),
        "--intra-op-threads",
        str(THREADS),
        "--log-level",
        "WARNING",
    ) as server:
        assert server.process is not None
        pid = server.process.pid
        one = asyncio.run(grpc_load(server.address, texts, 1))
        cpu_before = cpu_seconds(pid)
        many = asyncio.run(grpc_load(server.address, texts * 2, 32))
        many["server_cpu_ms_per_text"] = (cpu_seconds(pid) - cpu_before) / (2 * len(texts)) * 1e3
        spread = spread_load(server.address, texts * 2, 4, 32)
        rss = peak_rss_mb(pid)
    return {"grpc_1": one, "grpc_32": many, "grpc_32_in_4": spread, "peak_rss_mb": rss}


def ensure_int8(fp32_dir: Path, source: str) -> Path:
    target = fp32_dir.parent / f"{fp32_dir.name}-int8"
    if not (target / "semcache-model.json").exists():
        from embedder.export import export_model
        from embedder.manifest import Precision

        export_model(source, target, precision=Precision.INT8)
    return target


def st_source(manifest: ModelManifest) -> str:
    from embedder.model_source import FALLBACK_MODEL_ID, packaged_model_path

    if manifest.model_id == FALLBACK_MODEL_ID:
        return str(packaged_model_path())
    return manifest.model_id


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-dir", type=Path, default=Path("models/default"))
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--worker", default=None)
    parser.add_argument("--model", default=None)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.model, args.queries)))
        return

    manifest = ModelManifest.read(args.model_dir)
    source = st_source(manifest)
    int8_dir = ensure_int8(args.model_dir, source)
    texts = questions(args.queries)
    print(
        f"model {manifest.model_id} ({manifest.dimension} dims), {len(texts)} QQP questions, "
        f"{THREADS} threads each, {os.cpu_count()} cores"
    )
    results: dict[str, dict[str, Any]] = {
        "sentence-transformers": run_worker("sentence-transformers", source, args.queries),
        "onnx-fp32": run_worker("onnx", str(args.model_dir), args.queries),
        "onnx-int8": run_worker("onnx", str(int8_dir), args.queries),
    }
    for name, folder in (("onnx-fp32", args.model_dir), ("onnx-int8", int8_dir)):
        results[name]["server"] = server_figures(folder, texts)

    base = results["sentence-transformers"]
    naive = base["one_at_a_time_per_s"]
    rows = [
        "| contender | 1 query p50 ms | p99 ms | vs ST p50 | 1 at a time /s | batch 32 /s | "
        "gRPC 1 client p50 ms | p99 ms | gRPC 32 clients /s | vs naive ST | "
        "32 clients in 4 processes /s | peak RSS MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        server = r.get("server")
        grpc_cells = (
            f"{server['grpc_1']['p50_ms']:.2f} | {server['grpc_1']['p99_ms']:.2f} | "
            f"{server['grpc_32']['per_s']:.0f} | {server['grpc_32']['per_s'] / naive:.2f}x | "
            f"{server['grpc_32_in_4']['per_s']:.0f}"
            if server
            else "- | - | - | - | -"
        )
        rss = f"{r['peak_rss_mb']:.0f}" + (
            f" (server {server['peak_rss_mb']:.0f})" if server else ""
        )
        rows.append(
            f"| {name} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
            f"{base['p50_ms'] / r['p50_ms']:.2f}x | {r['one_at_a_time_per_s']:.0f} | "
            f"{r['batch32_per_s']:.0f} | {grpc_cells} | {rss} |"
        )
    table = "\n".join(rows)
    print(table)
    fp32 = results["onnx-fp32"]
    print(
        f"\none short query, ONNX fp32 vs sentence-transformers: "
        f"{base['p50_ms'] / fp32['p50_ms']:.2f}x faster at p50 (target >= 2.5x)"
    )
    print(
        f"32 concurrent gRPC clients vs naive sentence-transformers: "
        f"{fp32['server']['grpc_32']['per_s'] / naive:.2f}x the throughput (target >= 4x); "
        f"the same 32 clients spread over 4 processes: "
        f"{fp32['server']['grpc_32_in_4']['per_s'] / naive:.2f}x"
    )
    print(
        f"ceiling on these cores: ONNX fp32 alone, one text at a time, "
        f"{fp32['one_at_a_time_per_s'] / naive:.2f}x naive; batched 32, "
        f"{fp32['batch32_per_s'] / naive:.2f}x; server CPU per text under load "
        f"{fp32['server']['grpc_32']['server_cpu_ms_per_text']:.2f} ms"
    )
    out = Path("bench/results")
    out.mkdir(parents=True, exist_ok=True)
    (out / "embedder.json").write_text(json.dumps(results, indent=2))
    (out / "embedder.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
