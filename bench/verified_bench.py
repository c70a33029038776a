"""Semcache's verified policy against static similarity thresholds and vCache, on streams of
user questions: how many hits each serves, how many of those are wrong, and what it costs in
LLM calls.

Protocol. Questions of the held-out QQP test part (embedder.training.traffic: pairs no model
trained on, and not those the verified prior was fitted on) are grouped by meaning (union-find
over the "same meaning" labels). A deterministic fake LLM (bench.fake_upstream) gives every
question of one group the same answer, so a served answer is right or wrong without doubt (the
`exact` judge). Two seeded streams of 6,000 requests, three seeds each:

- popular: 1,500 topics, half of them with paraphrases, asked by a Zipf law (exponent 1.1);
- adversarial: every drawn pair's first question, then every second question. QQP pairs were
  picked because they look alike and most are labelled different: the nearest stored question
  is often close and wrong, at every similarity.

Each configuration replays each stream in a fresh cache (bench.verified_runs): static
thresholds and semcache's verified policy through gRPC Query on the real embedder and cache
server (embedded store, verifier off), vCache (bench.vcache) in process on the vectors the
embedder gives. Hits and errors count questions asked for the first time (repeats apart).
"Best static with error <= δ" is the threshold, among those measured, with the most hits whose
measured error is at most δ: chosen with hindsight, which no online policy has. Error rates
are upper bounds: the labels are incomplete (an "error" may be a right answer to a paraphrase
nobody labelled), the same for every policy.

Run: make bench-verified  (python -m bench.verified_bench [--seeds 0,1,2]
     [--streams popular,adversarial] [--deltas 0.02,0.05,0.10] [--stream-size 6000])
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import grpc
import numpy as np
import numpy.typing as npt

from bench.fake_upstream import FakeUpstream
from bench.qqp import qqp_path
from bench.stack import local_stack
from bench.verified_report import comparison_table, comparisons, plot, table
from bench.verified_runs import Config, Run, replay, replay_vcache, total
from embedder.training.traffic import (
    POPULAR,
    Clusters,
    adversarial_stream,
    held_out_pairs,
    popular_stream,
)
from protos.semcache.cache.v1 import cache_pb2 as pb
from protos.semcache.cache.v1 import cache_pb2_grpc as pb_grpc
from protos.semcache.embedding.v1 import embedding_pb2 as epb
from protos.semcache.embedding.v1 import embedding_pb2_grpc as epb_grpc

DELTAS = [0.02, 0.05, 0.10]
THRESHOLDS = [0.70, 0.75, 0.80, 0.85, 0.90, 0.95]
STREAMS = ["popular", "adversarial"]


@contextmanager
def environment(**variables: str) -> Iterator[None]:
    """os.environ with `variables` set while the services start (they copy it), then as was."""
    saved = {k: os.environ.get(k) for k in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def stream_of(kind: str, pairs: list, clusters: Clusters, size: int, seed: int) -> list[str]:  # type: ignore[type-arg]
    if kind == "popular":
        return popular_stream(
            pairs,
            clusters,
            size,
            seed,
            exponent=POPULAR.exponent,
            topics=POPULAR.topics,
            paraphrased=POPULAR.paraphrased,
        )
    return adversarial_stream(pairs, size, seed)


def embed_all(address: str, texts: list[str]) -> dict[str, npt.NDArray[np.float32]]:
    """The embedder's vectors for `texts` (what the cache server gets for them)."""
    out: dict[str, npt.NDArray[np.float32]] = {}
    with grpc.insecure_channel(address) as channel:
        stub = epb_grpc.EmbeddingServiceStub(channel)
        for start in range(0, len(texts), 64):
            batch = texts[start : start + 64]
            reply = stub.Embed(epb.EmbedRequest(texts=batch), timeout=120)
            vectors = np.frombuffer(reply.vectors, dtype="<f4").reshape(reply.count, -1)
            out.update(zip(batch, vectors, strict=True))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=None, help="default: the shared QQP pairs")
    parser.add_argument("--model-dir", type=Path, default=Path("models/default"))
    parser.add_argument("--stream-size", type=int, default=6000)
    parser.add_argument("--seeds", type=lambda t: [int(v) for v in t.split(",")], default=[0, 1, 2])
    parser.add_argument("--streams", type=lambda t: t.split(","), default=STREAMS)
    parser.add_argument("--deltas", type=floats, default=DELTAS, help="semcache and vCache")
    parser.add_argument(
        "--requests-deltas",
        type=floats,
        default=[0.05],
        help="semcache with δ over all requests (vCache's accounting), comma-separated",
    )
    parser.add_argument("--thresholds", type=floats, default=THRESHOLDS)
    parser.add_argument("--output", type=Path, default=Path("bench/results/verified.json"))
    parser.add_argument("--plot", type=Path, default=Path("docs/img/verified-policy.png"))
    args = parser.parse_args()

    data = args.data or qqp_path()
    pairs = held_out_pairs(data)
    clusters = Clusters.from_pairs(pairs)
    configs = [Config("static", t) for t in args.thresholds]
    configs += [Config("semcache", d, "hits") for d in args.deltas]
    configs += [Config("semcache", d, "requests") for d in args.requests_deltas]
    configs += [Config("vcache", d) for d in args.deltas]
    streams = {
        (kind, seed): stream_of(kind, pairs, clusters, args.stream_size, seed)
        for kind in args.streams
        for seed in args.seeds
    }
    runs: list[Run] = []
    began = time.perf_counter()
    with (
        FakeUpstream(clusters.answer) as upstream,
        environment(
            CACHE_UPSTREAM_BASE_URL=upstream.base_url,
            CACHE_UPSTREAM_MODEL="fake-deterministic",
            CACHE_VERIFIED_JUDGE="exact",
        ),
        local_stack(
            args.model_dir,
            "--max-cache-size",
            str(max(1000, 2 * args.stream_size)),
            "--verifier",
            "off",
            with_gateway=False,
        ) as services,
        grpc.insecure_channel(services.cache.address) as channel,
    ):
        stub = pb_grpc.CacheServiceStub(channel)
        info = stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=60)
        if info.upstream != "openai-compatible":
            raise SystemExit(f"the cache server is not using the fake LLM ({info.upstream})")
        for i in range(20):  # warm up the embedder and the LLM client, in a cache of its own
            stub.Query(pb.QueryRequest(cache_id="warm-up", query=f"warm-up question {i}?"))
        texts = sorted({q for stream in streams.values() for q in stream})
        vectors = embed_all(services.embedder.address, texts)
        for (kind, seed), stream in streams.items():
            for n, config in enumerate(configs):
                if config.policy == "vcache":
                    run = replay_vcache(config, stream, vectors, clusters, seed)
                else:
                    cache_id = f"bench-{kind}-{seed}-{n}"
                    run = replay(stub, config, cache_id, stream, clusters, lambda: upstream.calls)
                run.stream, run.seed = kind, seed
                runs.append(run)
                error = "-" if run.error_rate is None else f"{run.error_rate:.3f}"
                print(
                    f"  {kind} seed {seed} {config.name}: hits {run.hits} ({run.hit_rate:.4f}), "
                    f"error {error}, LLM calls {run.llm_calls}, {run.seconds:.0f} s",
                    file=sys.stderr,
                    flush=True,
                )
        model = f"{info.embedder_model_id} ({info.embedding_dimension} dims)"

    by_stream: dict[str, list[Run]] = {}
    report: dict[str, object] = {}
    for kind in args.streams:
        totals = [total([r for r in runs if r.stream == kind and r.config == c]) for c in configs]
        by_stream[kind] = totals
        compared = comparisons(totals)
        print(f"\n## {kind} stream: {len(args.seeds)} seeds x {args.stream_size} requests\n")
        print(table(totals))
        print()
        print(comparison_table(compared))
        report[kind] = {"totals": [_row(r) for r in totals], "comparisons": compared}
    plot(
        by_stream,
        args.plot,
        f"Hits against their error: seeds {','.join(map(str, args.seeds))} x "
        f"{args.stream_size} requests per stream; model {model}",
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(
        json.dumps(
            {
                "data": str(data),
                "model": model,
                "held_out_pairs": len(pairs),
                "stream_size": args.stream_size,
                "seeds": args.seeds,
                "popular": asdict(POPULAR),
                "seconds": time.perf_counter() - began,
                "streams": report,
                "runs": [_row(r) for r in runs],
            },
            indent=2,
            ensure_ascii=False,
        )
    )
    print(f"\nplot: {args.plot}; figures: {args.output}")


def _row(r: Run) -> dict[str, object]:
    return {
        **asdict(r),
        "name": r.config.name,
        "hit_rate": r.hit_rate,
        "error_rate": r.error_rate,
        "error_interval": r.error_interval if r.hits else None,
        "wrong_per_request": r.wrong_per_request,
        "calls_per_1000": r.calls_per_1000,
    }


if __name__ == "__main__":
    main()
