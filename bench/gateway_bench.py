"""REST benchmark: semcache's gateway -> cache server -> embedder against the original design
(FastAPI + sentence-transformers in process + a Python list), same texts, same run.

Both designs run side by side and are asked in turn, in blocks of 25 requests (which goes first
flipped every block), so that both see the same drift of the machine's load; throughput at
concurrency 16 is measured in alternating rounds. While one design is measured the other's
processes are paused (SIGSTOP): idle PyTorch (OpenMP) and ONNX Runtime threads spin-wait after
a run, and asked request by request each design's spinning starved the other (the original's
p50 went from ~12 to 168 ms), which says nothing about either.

Hits are paraphrase hits: `text_b` of QQP pairs after `text_a` was cached, threshold 0 so the
nearest entry answers; the embedder runs on every request. Exact hits (`text_a` asked again)
are reported too: semcache answers them without embedding, the original design embeds every
question. Also: the gateway's overhead over calling the cache service over gRPC directly,
interleaved request by request.

Run: make bench  (or python -m bench.gateway_bench [--pairs 300] [--runs 3] [--rounds 3])
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import signal
import statistics
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import httpx

from bench.interleave import Paused, in_blocks
from bench.qqp import QuestionPair, load_pairs
from bench.stack import local_stack
from bench.timing import p50_p99_ms
from embedder.manifest import ModelManifest
from protos.semcache.cache.v1 import cache_pb2 as pb
from protos.semcache.cache.v1 import cache_pb2_grpc as pb_grpc
from tests.processes import REPO, GatewayProcess, ServiceProcess, free_port

DESIGNS = ("original", "semcache")


class RestClient:
    """One keep-alive connection (http.client: the lightest client, so the figure is the
    server's, not the client library's)."""

    def __init__(self, url: str) -> None:
        parsed = urllib.parse.urlparse(url)
        self.connection = http.client.HTTPConnection(parsed.hostname or "127.0.0.1", parsed.port)

    def ask(self, text: str) -> tuple[float, bool]:
        body = json.dumps({"query": text, "similarity_threshold": 0.0})
        for attempt in (1, 2):
            started = time.perf_counter()
            try:
                self.connection.request(
                    "POST", "/query", body, {"Content-Type": "application/json"}
                )
                reply = self.connection.getresponse()
                data = reply.read()
                break
            except (ConnectionError, http.client.RemoteDisconnected):
                # The server closed the idle keep-alive connection (uvicorn: after 5 s) while
                # the other design was measured: reconnect, and time the retry only.
                self.connection.close()
                if attempt == 2:
                    raise
        elapsed = time.perf_counter() - started
        assert reply.status == 200, data
        return elapsed, bool(json.loads(data)["cache_hit"])


def in_turn(
    clients: dict[str, RestClient], texts: list[str], paused: Paused
) -> dict[str, dict[str, float]]:
    """Concurrency 1: each block of texts to every design, which goes first flipped
    (bench/interleave.py), counting hits."""
    hits = dict.fromkeys(clients, 0)

    def asker(name: str) -> Callable[[str], float]:
        def ask(text: str) -> float:
            elapsed, hit = clients[name].ask(text)
            hits[name] += hit
            return elapsed

        return ask

    latencies = in_blocks({name: asker(name) for name in clients}, texts, paused)
    figures = {}
    for name, seconds in latencies.items():
        p50, p99 = p50_p99_ms(seconds)
        figures[name] = {"p50_ms": p50, "p99_ms": p99, "hit_rate": hits[name] / len(texts)}
    return figures


async def rest_load(url: str, texts: list[str], concurrency: int) -> dict[str, float]:
    queue = list(reversed(texts))
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def worker() -> None:
            while queue:
                text = queue.pop()
                started = time.perf_counter()
                reply = await client.post(
                    "/query", json={"query": text, "similarity_threshold": 0.0}
                )
                latencies.append(time.perf_counter() - started)
                reply.raise_for_status()

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    p50, p99 = p50_p99_ms(latencies)
    return {"p50_ms": p50, "p99_ms": p99, "per_s": len(texts) / elapsed}


def gateway_overhead(rest_url: str, grpc_address: str, texts: list[str]) -> dict[str, float]:
    """The same queries through the gateway and straight to the cache service over gRPC,
    alternating request by request so both see the same machine load."""
    stub = pb_grpc.CacheServiceStub(grpc.insecure_channel(grpc_address))
    rest = RestClient(rest_url)
    through_rest, direct = [], []
    for i, text in enumerate(texts):
        for path in ("grpc", "rest") if i % 2 else ("rest", "grpc"):
            if path == "rest":
                through_rest.append(rest.ask(text)[0])
            else:
                started = time.perf_counter()
                stub.Query(pb.QueryRequest(query=text, similarity_threshold=0.0), timeout=60)
                direct.append(time.perf_counter() - started)
    (rest_p50, _), (grpc_p50, _) = p50_p99_ms(through_rest), p50_p99_ms(direct)
    return {"rest_p50_ms": rest_p50, "grpc_p50_ms": grpc_p50, "overhead_ms": rest_p50 - grpc_p50}


def pid_of(service: ServiceProcess | GatewayProcess) -> int:
    assert service.process is not None
    return service.process.pid


@contextmanager
def original_design(model: str) -> Iterator[tuple[str, int]]:
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
        yield url, process.pid
    finally:
        process.send_signal(signal.SIGCONT)
        process.terminate()
        process.wait(30)


def one_run(
    urls: dict[str, str],
    grpc_address: str,
    pairs: list[QuestionPair],
    rounds: int,
    paused: Paused,
) -> dict[str, Any]:
    clients = {name: RestClient(url) for name, url in urls.items()}
    paraphrases = [p.text_b for p in pairs]
    run: dict[str, Any] = {
        "semantic": in_turn(clients, paraphrases, paused),
        "exact": in_turn(clients, [p.text_a for p in pairs], paused),
        "c16": [],
    }
    for r in range(rounds):  # alternating which design goes first
        order = DESIGNS if r % 2 == 0 else tuple(reversed(DESIGNS))
        figures = {}
        for name in order:
            paused.only(name)
            figures[name] = asyncio.run(rest_load(urls[name], paraphrases, 16))
        run["c16"].append(figures)
    paused.only("semcache")
    run["overhead"] = gateway_overhead(urls["semcache"], grpc_address, paraphrases)
    paused.resume_all()
    return run


def where_time_goes(
    model_dir: Path, embedder: str, cache: str, rest_url: str, texts: list[str]
) -> dict[str, float]:
    """One semantic hit's p50 at each layer, the layers asked in turn for each text: the model
    alone in this process (its own session, no spin-waiting), `Embed` over gRPC, `Query` over
    gRPC to the cache server, and REST through the gateway."""
    from embedder.encoder import OnnxEncoder
    from protos.semcache.embedding.v1 import embedding_pb2 as epb
    from protos.semcache.embedding.v1 import embedding_pb2_grpc as epb_grpc

    encoder = OnnxEncoder(model_dir, intra_op_threads=2, spin_wait=False)
    embed = epb_grpc.EmbeddingServiceStub(grpc.insecure_channel(embedder))
    query = pb_grpc.CacheServiceStub(grpc.insecure_channel(cache))
    rest = RestClient(rest_url)

    def timed(call: Any) -> float:
        started = time.perf_counter()
        call()
        return time.perf_counter() - started

    layers: dict[str, Any] = {
        "model run in process": lambda t: encoder.encode([t]),
        "Embed over gRPC": lambda t: embed.Embed(epb.EmbedRequest(texts=[t]), timeout=60),
        "Query over gRPC": lambda t: query.Query(
            pb.QueryRequest(query=t, similarity_threshold=0.0), timeout=60
        ),
        "REST through the gateway": lambda t: rest.ask(t),
    }
    seconds: dict[str, list[float]] = {name: [] for name in layers}
    names = list(layers)
    for i, text in enumerate(texts * 2):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            seconds[name].append(timed(lambda: layers[name](text)))  # noqa: B023
    return {name: p50_p99_ms(s)[0] for name, s in seconds.items()}


def summary_rows(runs: list[dict[str, Any]]) -> list[str]:
    rows = [
        "| run | semantic hit p50 ms: original / semcache | ratio | exact hit p50 ms: "
        "original / semcache | ratio | req/s c=16: original / semcache (each round) | "
        "throughput ratios | gateway overhead p50 |",
        "|---|---|---:|---|---:|---|---|---:|",
    ]
    for i, run in enumerate(runs, 1):
        sem, exact = run["semantic"], run["exact"]
        c16 = run["c16"]
        rates = ", ".join(
            f"{r['original']['per_s']:.0f} / {r['semcache']['per_s']:.0f}" for r in c16
        )
        ratios = ", ".join(f"{r['semcache']['per_s'] / r['original']['per_s']:.2f}x" for r in c16)
        rows.append(
            f"| {i} | {sem['original']['p50_ms']:.2f} / {sem['semcache']['p50_ms']:.2f} | "
            f"{sem['original']['p50_ms'] / sem['semcache']['p50_ms']:.2f}x | "
            f"{exact['original']['p50_ms']:.2f} / {exact['semcache']['p50_ms']:.2f} | "
            f"{exact['original']['p50_ms'] / exact['semcache']['p50_ms']:.2f}x | {rates} | "
            f"{ratios} | {run['overhead']['overhead_ms']:+.2f} ms |"
        )
    return rows


def verdicts(runs: list[dict[str, Any]]) -> list[str]:
    semantic = [
        r["semantic"]["original"]["p50_ms"] / r["semantic"]["semcache"]["p50_ms"] for r in runs
    ]
    throughput = [
        rd["semcache"]["per_s"] / rd["original"]["per_s"] for r in runs for rd in r["c16"]
    ]
    overhead = [r["overhead"]["overhead_ms"] for r in runs]
    return [
        f"semantic hit p50: semcache {min(semantic):.2f}-{max(semantic):.2f}x faster than the "
        f"original design (median {statistics.median(semantic):.2f}x; target >= 2x)",
        f"throughput at concurrency 16: {min(throughput):.2f}-{max(throughput):.2f}x the "
        f"original design over {len(throughput)} rounds (target >= 3x in every run)",
        f"gateway overhead at p50: {min(overhead):+.2f} to {max(overhead):+.2f} ms (REST vs "
        f"gRPC straight to the cache server, interleaved; target <= 1 ms)",
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-dir", type=Path, default=Path("models/default"))
    parser.add_argument("--pairs", type=int, default=300)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3, help="c=16 rounds per run")
    args = parser.parse_args()
    from bench.embedder_bench import st_source

    manifest = ModelManifest.read(args.model_dir)
    pairs = [p for p in load_pairs(args.pairs * 3) if p.text_a != p.text_b][: args.pairs]
    with local_stack(args.model_dir) as services, original_design(st_source(manifest)) as theirs:
        assert services.gateway is not None
        urls = {"original": theirs[0], "semcache": services.gateway.url}
        ours = [pid_of(services.embedder), pid_of(services.cache), pid_of(services.gateway)]
        paused = Paused({"original": [theirs[1]], "semcache": ours})
        with httpx.Client(timeout=60) as client:  # cache every text_a in both designs
            for url in urls.values():
                for pair in pairs:
                    client.post(f"{url}/query", json={"query": pair.text_a}).raise_for_status()
        warm = {name: RestClient(url) for name, url in urls.items()}
        in_turn(warm, [p.text_b for p in pairs[:30]], paused)
        runs = []
        for _ in range(args.runs):
            runs.append(one_run(urls, services.cache.address, pairs, args.rounds, paused))
            print("\n".join(summary_rows(runs)[-1:]), flush=True)
        paused.only("semcache")
        layers = where_time_goes(
            args.model_dir,
            services.embedder.address,
            services.cache.address,
            services.gateway.url,
            [p.text_b for p in pairs],
        )
        paused.resume_all()
    breakdown = ["| layer (one semantic hit, p50) | ms | added by this layer |", "|---|---:|---:|"]
    previous = 0.0
    for name, ms in layers.items():
        breakdown.append(f"| {name} | {ms:.2f} | {ms - previous:+.2f} |")
        previous = ms
    text = "\n".join(
        [
            f"model {manifest.model_id}, {len(pairs)} QQP pairs, {args.runs} runs "
            f"(each: {len(pairs)} semantic and {len(pairs)} exact hits per design in turn, "
            f"{args.rounds} rounds at c=16)",
            "",
            *summary_rows(runs),
            "",
            *verdicts(runs),
            "",
            *breakdown,
        ]
    )
    print(text)
    out = Path("bench/results")
    out.mkdir(parents=True, exist_ok=True)
    (out / "gateway.md").write_text(text + "\n")
    (out / "gateway.json").write_text(json.dumps({"runs": runs, "layers": layers}, indent=2))


if __name__ == "__main__":
    main()
