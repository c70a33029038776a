"""Latency levers (issue 16), each measured alone against its absence, side by side in one run
(bench/interleave.py: blocks in turn, the other contender paused).

1. ONNX Runtime's transformer fusions in the export (embedder/export.py): the model run at
   batch 1 and 32 in one process, and `Embed` over gRPC from two embedder processes.
2. gRPC over a Unix domain socket against TCP on 127.0.0.1: a bare unary round trip to two
   servers that answer a 384-dim vector at once (only the transport differs).
3. The embedder's ONNX Runtime threads: spinning on after a run ends (ONNX Runtime's default)
   against off, through the whole stack (REST semantic hits, two stacks side by side); and
   through `Embed` over gRPC, spin-waiting within runs on and off, one intra-op thread against
   two.

Levers that are code rather than settings (the gateway's per-request work, the batcher's
hand-off) were measured against the previous commit; docs/benchmarks.md has those rows.

Run: python -m bench.levers [--texts 300]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import grpc
import numpy as np

from bench.embedder_bench import questions, st_source
from bench.gateway_bench import RestClient, pid_of
from bench.interleave import Paused, in_blocks
from bench.qqp import load_pairs
from bench.stack import local_stack
from bench.timing import p50_p99_ms
from embedder.encoder import OnnxEncoder
from embedder.manifest import ModelManifest
from protos.semcache.embedding.v1 import embedding_pb2 as pb
from protos.semcache.embedding.v1 import embedding_pb2_grpc as pb_grpc
from tests.processes import REPO, ServiceProcess, free_port

RESULTS = Path("bench/results")


def p50(seconds: list[float]) -> float:
    return p50_p99_ms(seconds)[0]


def exports(model_dir: Path) -> dict[str, Path]:
    """The model exported with and without fusions (kept under bench/results/levers)."""
    from embedder.export import export_model

    source = st_source(ModelManifest.read(model_dir))
    folders = {}
    for name, fusions in (("unfused", False), ("fused", True)):
        folder = RESULTS / "levers" / name
        if not (folder / "semcache-model.json").exists():
            export_model(source, folder, fusions=fusions)
        folders[name] = folder
    return folders


def model_runs(folders: dict[str, Path], texts: list[str]) -> dict[str, dict[str, float]]:
    """In one process, both sessions without spin-waiting (so that neither slows the other),
    run in turn on the same tokenized input."""
    encoders = {n: OnnxEncoder(f, intra_op_threads=2, spin_wait=False) for n, f in folders.items()}
    one = next(iter(encoders.values()))
    figures: dict[str, dict[str, float]] = {n: {} for n in encoders}
    for batch in (1, 32):
        seconds: dict[str, list[float]] = {n: [] for n in encoders}
        groups = [texts[i : i + batch] for i in range(0, len(texts) - batch + 1, batch)]
        for group in groups * (3 if batch == 1 else 2):
            tokens = one.tokenize(group)
            for name, encoder in encoders.items():
                started = time.perf_counter()
                encoder.run(tokens)
                seconds[name].append(time.perf_counter() - started)
        for name in encoders:
            figures[name][f"batch {batch}"] = p50(seconds[name])
    return figures


def embedders(
    contenders: dict[str, list[str]], texts: list[str], rounds: int = 2
) -> dict[str, float]:
    """`Embed` of one text, p50 ms, for embedders started with each contender's flags."""
    started = {
        name: ServiceProcess("embedder", "--log-level", "WARNING", *flags).start()
        for name, flags in contenders.items()
    }
    try:
        askers: dict[str, Callable[[str], float]] = {}
        for name, process in started.items():
            stub = pb_grpc.EmbeddingServiceStub(grpc.insecure_channel(process.address))
            askers[name] = _embed_timer(stub)
        pids = {n: [p.process.pid] for n, p in started.items() if p.process is not None}
        in_blocks(askers, texts[:30], Paused(pids))  # warm up
        seconds = in_blocks(askers, texts * rounds, Paused(pids))
        return {name: p50(s) for name, s in seconds.items()}
    finally:
        for process in started.values():
            process.stop()


def _embed_timer(stub: pb_grpc.EmbeddingServiceStub) -> Callable[[str], float]:
    """Seconds for one `Embed` of one text."""

    def ask(text: str) -> float:
        started = time.perf_counter()
        stub.Embed(pb.EmbedRequest(texts=[text]), timeout=60)
        return time.perf_counter() - started

    return ask


# --- transport: a server that answers at once ----------------------------------------------


class _Instant(pb_grpc.EmbeddingServiceServicer):
    vector = np.zeros(384, dtype="<f4").tobytes()

    async def Embed(self, request: pb.EmbedRequest, context: object) -> pb.EmbedResponse:
        return pb.EmbedResponse(count=1, dimension=384, vectors=self.vector)


async def _serve(address: str) -> None:
    server = grpc.aio.server()
    pb_grpc.add_EmbeddingServiceServicer_to_server(_Instant(), server)  # type: ignore[abstract]
    server.add_insecure_port(address)
    await server.start()
    await server.wait_for_termination()


def transports(texts: list[str]) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as folder:
        addresses = {
            "TCP 127.0.0.1": f"127.0.0.1:{free_port()}",
            "Unix domain socket": f"unix://{folder}/grpc.sock",
        }
        servers = {
            name: subprocess.Popen(
                [sys.executable, "-m", "bench.levers", "--serve", address], cwd=REPO
            )
            for name, address in addresses.items()
        }
        try:
            askers: dict[str, Callable[[str], float]] = {}
            for name, address in addresses.items():
                channel = grpc.insecure_channel(address)
                grpc.channel_ready_future(channel).result(timeout=30)
                stub = pb_grpc.EmbeddingServiceStub(channel)
                askers[name] = _embed_timer(stub)
            paused = Paused({name: [s.pid] for name, s in servers.items()})
            in_blocks(askers, texts[:50], paused)
            seconds = in_blocks(askers, texts * 5, paused)
            return {name: p50(s) for name, s in seconds.items()}
        finally:
            for server in servers.values():
                server.terminate()
                server.wait(10)


def stacks(
    model_dir: Path, contenders: dict[str, tuple[str, ...]], texts: list[str]
) -> dict[str, float]:
    """REST semantic hits, p50 ms, through whole stacks whose embedders take each
    contender's flags (each stack holds every text's pair partner, asked for its paraphrase)."""
    pairs = [p for p in load_pairs(len(texts) * 3) if p.text_a != p.text_b][: len(texts)]
    with ExitStack() as stack:
        started = {
            name: stack.enter_context(local_stack(model_dir, embedder_args=flags))
            for name, flags in contenders.items()
        }
        askers: dict[str, Callable[[str], float]] = {}
        pids: dict[str, list[int]] = {}
        for name, services in started.items():
            assert services.gateway is not None
            rest = RestClient(services.gateway.url)
            for pair in pairs:
                rest.ask(pair.text_a)
            askers[name] = _rest_timer(rest)
            pids[name] = [
                pid_of(services.embedder),
                pid_of(services.cache),
                pid_of(services.gateway),
            ]
        paraphrases = [p.text_b for p in pairs]
        in_blocks(askers, paraphrases[:30], Paused(pids))  # warm up
        seconds = in_blocks(askers, paraphrases * 2, Paused(pids))
        return {name: p50(s) for name, s in seconds.items()}


def _rest_timer(rest: RestClient) -> Callable[[str], float]:
    return lambda text: rest.ask(text)[0]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-dir", type=Path, default=Path("models/default"))
    parser.add_argument("--texts", type=int, default=300)
    parser.add_argument("--serve", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(_serve(args.serve))
        return
    texts = questions(args.texts)
    folders = exports(args.model_dir)
    fused = str(folders["fused"])
    runs = model_runs(folders, texts)
    rpc = embedders({n: ["--model-dir", str(f)] for n, f in folders.items()}, texts)
    spin = embedders(
        {
            "spin on": ["--model-dir", fused, "--spin-wait", "true"],
            "spin off": ["--model-dir", fused, "--spin-wait", "false"],
        },
        texts,
    )
    threads = embedders(
        {
            "2 threads": ["--model-dir", fused, "--intra-op-threads", "2"],
            "1 thread": ["--model-dir", fused, "--intra-op-threads", "1"],
        },
        texts,
    )
    wire = transports(texts)
    after_run = stacks(
        folders["fused"],
        {"spin after run": ("--spin-after-run", "true"), "sleep after run": ()},
        texts,
    )
    rows = [
        ("fusions: model run, batch 1", runs["unfused"]["batch 1"], runs["fused"]["batch 1"]),
        ("fusions: model run, batch 32", runs["unfused"]["batch 32"], runs["fused"]["batch 32"]),
        ("fusions: Embed over gRPC", rpc["unfused"], rpc["fused"]),
        (
            "Unix socket instead of TCP: bare round trip",
            wire["TCP 127.0.0.1"],
            wire["Unix domain socket"],
        ),
        (
            "embedder threads sleep after a run: REST semantic hit",
            after_run["spin after run"],
            after_run["sleep after run"],
        ),
        ("embedder spin-wait within runs off (default on)", spin["spin on"], spin["spin off"]),
        ("embedder 1 intra-op thread (default 2)", threads["2 threads"], threads["1 thread"]),
    ]
    lines = [
        f"{len(texts)} QQP questions, p50 ms, contenders side by side (bench/interleave.py)",
        "",
        "| lever | without ms | with ms | without / with |",
        "|---|---:|---:|---:|",
        *(f"| {name} | {a:.3f} | {b:.3f} | {a / b:.2f}x |" for name, a, b in rows),
    ]
    text = "\n".join(lines)
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "levers.md").write_text(text + "\n")
    (RESULTS / "levers.json").write_text(json.dumps({n: [a, b] for n, a, b in rows}, indent=2))


if __name__ == "__main__":
    main()
