"""The `verified` hit policy against static similarity thresholds, on one stream of user
questions: how many hits each serves, and how many of those are wrong.

Protocol. Questions of the held-out QQP test part (embedder.training.traffic: the pairs no
model trained on) are grouped by meaning (union-find over the "same meaning" labels). A
deterministic fake LLM (bench.fake_upstream) gives every question of one group the same answer. A seeded stream
(embedder.training.traffic: `popular`, topics asked again as paraphrases and exact repeats,
by default; or `distinct`, each question once) is replayed, one request at a time as one user would,
through gRPC Query on the real embedder and cache server (embedded store, the verifier off,
the `exact` judge), once per configuration, each in a fresh cache:

- static: HIT_POLICY_THRESHOLD at a cosine similarity threshold (higher is stricter);
- verified: HIT_POLICY_VERIFIED at a max error rate δ (lower is stricter).

A served hit is right when the answer served is the question's group answer. Hits for a
question asked before in the stream (repeats: an exact match under the threshold policy; under
the verified policy, the entry a right exploration judged, when the repeat was not stored
again) are counted apart, with their errors; hit and error rates are those of questions asked
for the first time, where the policies differ. Per
configuration: hits / requests (hit rate), wrong hits / hits (error rate, with a 95% Wilson
interval), LLM calls (misses and explorations, counted by the fake LLM), explorations, and the
p50 latency of hits and of the rest (misses and explorations, which wait on the LLM).

How to read it. A verified run keeps its promise when its error rate is at most δ ("within its
interval" when only the interval's lower bound is). "At equal error rate" compares each
verified run with the static thresholds whose measured error rate is at most the verified
run's (no interpolation): the best of their hit rates, and how many times more hits verified
serves. "Reachable" is the share of requests whose group was asked before: the hit rate of a
perfect cache. The groups come from incomplete labels, so an error here may be a right answer
to a paraphrase nobody labelled: error rates are upper bounds, the same for every
configuration.

Run: make bench-verified  (or python -m bench.verified_bench [--stream-size 6000]
     [--deltas 0.01,0.02,0.05,0.10] [--thresholds 0.70,...,0.95] [--seed 0])
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict

from bench.fake_upstream import FakeUpstream
from bench.qqp import qqp_path
from bench.stack import local_stack
from bench.timing import p50_p99_ms
from embedder.training.pairs import read_pairs
from embedder.training.traffic import (
    POPULARITY_EXPONENT,
    Clusters,
    held_out_pairs,
    popular_stream,
    reachable_hits,
    request_stream,
)
from protos.semcache.cache.v1 import cache_pb2 as pb
from protos.semcache.cache.v1 import cache_pb2_grpc as pb_grpc

DELTAS = [0.01, 0.02, 0.05, 0.10]
THRESHOLDS = [0.70, 0.75, 0.80, 0.85, 0.90, 0.95]
Z95 = 1.959964


@dataclass(frozen=True)
class Config:
    policy: str  # "threshold" or "verified"
    value: float  # the similarity threshold, or δ (max error rate)

    @property
    def name(self) -> str:
        return (
            f"verified δ={self.value:.2f}"
            if self.policy == "verified"
            else f"static {self.value:.2f}"
        )

    def request(self, cache_id: str, question: str) -> pb.QueryRequest:
        if self.policy == "verified":
            return pb.QueryRequest(
                cache_id=cache_id,
                query=question,
                policy=pb.HIT_POLICY_VERIFIED,
                max_error_rate=self.value,
            )
        return pb.QueryRequest(
            cache_id=cache_id,
            query=question,
            policy=pb.HIT_POLICY_THRESHOLD,
            similarity_threshold=self.value,
        )


@dataclass
class Run:
    config: Config
    requests: int = 0
    hits: int = 0  # hits for questions asked for the first time (repeats are counted apart)
    repeat_hits: int = 0  # hits for a question asked before in the stream
    repeat_errors: int = 0
    errors: int = 0  # served hits whose answer is not the question's group answer
    explorations: int = 0
    llm_calls: int = 0
    fresh_mismatches: int = 0  # misses answered with something else than the fake LLM's answer
    seconds: float = 0.0
    hit_p50_ms: float | None = None
    other_p50_ms: float | None = None  # misses and explorations
    exploration_p50_ms: float | None = None
    by_quarter: list[dict[str, int]] = field(default_factory=list)
    server_stats: dict[str, Any] = field(default_factory=dict)
    skipped: str | None = None

    @property
    def hit_rate(self) -> float:
        return self.hits / self.requests if self.requests else 0.0

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.hits if self.hits else None

    @property
    def error_interval(self) -> tuple[float, float]:
        return wilson(self.errors, self.hits)


def wilson(successes: int, trials: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion (95% by default); (0, 1) with no trials."""
    if trials == 0:
        return 0.0, 1.0
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def promise(run: Run) -> str:
    """Whether a verified run's error rate is at most its δ."""
    rate = run.error_rate
    if rate is None:
        return "no hits"
    if rate <= run.config.value:
        return "yes"
    return "within its interval" if run.error_interval[0] <= run.config.value else "no"


def best_static_at(run: Run, statics: Sequence[Run]) -> Run | None:
    """The static run with the most hits among those whose error rate is at most `run`'s."""
    rate = run.error_rate
    if rate is None:
        return None
    fit = [s for s in statics if s.error_rate is not None and s.error_rate <= rate]
    return max(fit, key=lambda s: s.hit_rate, default=None)


def replay(
    stub: pb_grpc.CacheServiceStub,
    config: Config,
    cache_id: str,
    stream: Sequence[str],
    clusters: Clusters,
    llm_calls: Callable[[], int],
) -> Run:
    """`stream` through Query one request at a time in cache `cache_id`; `llm_calls()` counts
    the upstream's calls (the fake LLM's counter)."""
    run = Run(config)
    calls_before = llm_calls()
    hit_s: list[float] = []
    other_s: list[float] = []
    explore_s: list[float] = []
    quarters = [{"requests": 0, "hits": 0, "errors": 0, "explorations": 0} for _ in range(4)]
    asked: set[str] = set()
    started = time.perf_counter()
    for i, question in enumerate(stream):
        t0 = time.perf_counter()
        reply = stub.Query(config.request(cache_id, question), timeout=60)
        elapsed = time.perf_counter() - t0
        # A server without the policy answers under none (policy ""): fine for a threshold run.
        ran_under = reply.policy or "threshold"
        if i == 0 and ran_under != config.policy:
            stub.Flush(pb.FlushRequest(cache_id=cache_id), timeout=60)
            run.skipped = (
                f"the cache server ran the request under policy {reply.policy or '(none)'!r}, "
                f"not {config.policy!r}: it does not support this policy yet"
            )
            return run
        expected = clusters.answer(question)
        quarter = quarters[min(3, 4 * i // len(stream))]
        quarter["requests"] += 1
        run.requests += 1
        repeat = question in asked
        asked.add(question)
        if reply.cache_hit and repeat:
            run.repeat_hits += 1
            run.repeat_errors += reply.response.strip() != expected
        elif reply.cache_hit:
            run.hits += 1
            quarter["hits"] += 1
            hit_s.append(elapsed)
            if reply.response.strip() != expected:
                run.errors += 1
                quarter["errors"] += 1
        else:
            other_s.append(elapsed)
            run.fresh_mismatches += reply.response.strip() != expected
            if reply.explored:
                run.explorations += 1
                quarter["explorations"] += 1
                explore_s.append(elapsed)
    run.seconds = time.perf_counter() - started
    run.llm_calls = llm_calls() - calls_before
    run.hit_p50_ms = p50_p99_ms(hit_s)[0] if hit_s else None
    run.other_p50_ms = p50_p99_ms(other_s)[0] if other_s else None
    run.exploration_p50_ms = p50_p99_ms(explore_s)[0] if explore_s else None
    run.by_quarter = quarters
    stats = stub.GetStats(pb.GetStatsRequest(cache_id=cache_id), timeout=60)
    run.server_stats = MessageToDict(stats, preserving_proto_field_name=True)
    stub.Flush(pb.FlushRequest(cache_id=cache_id), timeout=60)  # every run on an equal store
    return run


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


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _rate(run: Run) -> str:
    rate = run.error_rate
    if rate is None:
        return "- (no hits)"
    low, high = run.error_interval
    return f"{rate:.3f} [{low:.3f}, {high:.3f}]"


def table(runs: Sequence[Run], reachable: float) -> str:
    lines = [
        f"reachable hit rate (a perfect cache): {reachable:.3f}",
        "",
        "| configuration | requests | repeat hits | new-question hits | hit rate | wrong hits | "
        "error rate [95% CI] | LLM calls | explorations | hit p50 (ms) | "
        "miss/explore p50 (ms) |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in runs:
        if r.skipped:
            lines.append(f"| {r.config.name} | skipped: {r.skipped} ||||||||||")
            continue
        lines.append(
            f"| {r.config.name} | {r.requests} | {r.repeat_hits} | {r.hits} | "
            f"{r.hit_rate:.3f} | {r.errors} | "
            f"{_rate(r)} | {r.llm_calls} | {r.explorations} | {_ms(r.hit_p50_ms)} | "
            f"{_ms(r.other_p50_ms)} |"
        )
    return "\n".join(lines)


def comparisons(runs: Sequence[Run]) -> list[dict[str, Any]]:
    statics = [r for r in runs if r.config.policy == "threshold" and not r.skipped]
    out = []
    for r in runs:
        if r.config.policy != "verified" or r.skipped:
            continue
        best = best_static_at(r, statics)
        out.append(
            {
                "delta": r.config.value,
                "error_rate": r.error_rate,
                "error_rate_within_delta": promise(r),
                "hit_rate": r.hit_rate,
                "best_static_threshold": best.config.value if best else None,
                "best_static_hit_rate": best.hit_rate if best else None,
                "best_static_error_rate": best.error_rate if best else None,
                "hits_ratio": (r.hit_rate / best.hit_rate) if best and best.hit_rate else None,
            }
        )
    return out


def comparison_table(rows: Sequence[dict[str, Any]]) -> str:
    lines = [
        "| δ | error rate | ≤ δ? | hit rate | best static at ≤ that error rate | its hit rate | "
        "hits, verified / static |",
        "|---:|---:|---|---:|---|---:|---:|",
    ]
    for c in rows:
        rate = "-" if c["error_rate"] is None else f"{c['error_rate']:.3f}"
        if c["best_static_threshold"] is None:
            static, static_rate, ratio = "none", "-", "-"
        else:
            static = f"{c['best_static_threshold']:.2f} (error {c['best_static_error_rate']:.3f})"
            static_rate = f"{c['best_static_hit_rate']:.3f}"
            ratio = "-" if c["hits_ratio"] is None else f"{c['hits_ratio']:.2f}x"
        lines.append(
            f"| {c['delta']:.2f} | {rate} | {c['error_rate_within_delta']} | "
            f"{c['hit_rate']:.3f} | {static} | {static_rate} | {ratio} |"
        )
    return "\n".join(lines)


def plot(runs: Sequence[Run], reachable: float, path: Path, title: str) -> None:
    """Error rate against hit rate, static thresholds and verified runs, with the bound δ of
    each verified run and the hit rate of a perfect cache."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5), dpi=110)
    widest = max([r.hit_rate for r in runs if not r.skipped] + [reachable])
    mark = 0.03 * max(0.05, widest)  # half the width of a y = δ mark
    for policy, label, style in (
        ("threshold", "static threshold", "o-"),
        ("verified", "verified (max error rate δ)", "s--"),
    ):
        points = sorted(
            (r for r in runs if r.config.policy == policy and r.hits and not r.skipped),
            key=lambda r: r.hit_rate,
        )
        if not points:
            continue
        x = [r.hit_rate for r in points]
        y = [r.error_rate or 0.0 for r in points]
        below = [rate - r.error_interval[0] for r, rate in zip(points, y, strict=True)]
        above = [r.error_interval[1] - rate for r, rate in zip(points, y, strict=True)]
        bars = ax.errorbar(x, y, yerr=[below, above], fmt=style, capsize=3, label=label)
        colour = bars.lines[0].get_color()
        for r in points:
            text = f"{r.config.value:.2f}" if policy == "threshold" else f"δ={r.config.value:.2f}"
            ax.annotate(
                text,
                (r.hit_rate, r.error_rate or 0.0),
                fontsize=7,
                xytext=(5, -9 if policy == "verified" else 4),
                textcoords="offset points",
            )
            if policy == "verified":  # the promise: a short mark at y = δ
                ax.plot(
                    [r.hit_rate - mark, r.hit_rate + mark],
                    [r.config.value] * 2,
                    color=colour,
                    linewidth=2,
                )
        if policy == "verified":
            ax.plot([], [], color=colour, linewidth=2, label="y = δ (each verified run's bound)")
    if reachable > 0:
        ax.axvline(reachable, color="grey", linestyle=":", linewidth=1)
        ax.annotate(
            "a perfect cache",
            (reachable, 0.0),
            fontsize=7,
            color="grey",
            rotation=90,
            xytext=(-9, 6),
            textcoords="offset points",
            va="bottom",
        )
    ax.set_xlabel("hit rate (served hits / requests)")
    ax.set_ylabel("error rate of served hits: another group's answer (95% Wilson)")
    ax.set_title(title, fontsize=9)
    ax.set_xlim(0.0, max(0.05, widest * 1.12))
    ax.set_ylim(bottom=0.0)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=None, help="default: the shared QQP pairs")
    parser.add_argument("--model-dir", type=Path, default=Path("models/default"))
    parser.add_argument("--stream-size", type=int, default=6000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--stream",
        choices=["distinct", "popular"],
        default="popular",
        help="distinct questions once each, or popular topics asked again "
        "(embedder.training.traffic)",
    )
    parser.add_argument(
        "--pairs",
        choices=["held-out", "all"],
        default="held-out",
        help="the held-out test part (default: no model trained on it), or every pair (more "
        "paraphrases per topic; the tuned models trained on most of them)",
    )
    parser.add_argument(
        "--popularity-exponent", type=float, default=POPULARITY_EXPONENT, help="popular stream"
    )
    parser.add_argument(
        "--topics", type=int, default=None, help="popular stream: groups drawn from (all)"
    )
    parser.add_argument(
        "--deltas", type=floats, default=DELTAS, help="max error rates, comma-separated ('' none)"
    )
    parser.add_argument(
        "--thresholds", type=floats, default=THRESHOLDS, help="cosine similarity, comma-separated"
    )
    parser.add_argument("--output", type=Path, default=Path("bench/results/verified.json"))
    parser.add_argument("--plot", type=Path, default=Path("docs/img/verified-policy.png"))
    args = parser.parse_args()

    data = args.data or qqp_path()
    pairs = held_out_pairs(data) if args.pairs == "held-out" else read_pairs(data)
    clusters = Clusters.from_pairs(pairs)
    if args.stream == "popular":
        stream = popular_stream(
            pairs,
            clusters,
            args.stream_size,
            args.seed,
            exponent=args.popularity_exponent,
            topics=args.topics,
        )
    else:
        stream = request_stream(pairs, args.stream_size, args.seed)
    reachable = reachable_hits(stream, clusters) / len(stream) if stream else 0.0
    print(
        f"{args.pairs} pairs: {len(pairs)}, questions: {len(clusters.of)}, groups: "
        f"{len(clusters.canonical)}; {args.stream} stream: {len(stream)} requests, "
        f"{len(set(stream))} distinct questions (seed "
        f"{args.seed}), reachable hit rate {reachable:.3f}",
        flush=True,
    )
    configs = [Config("threshold", t) for t in args.thresholds]
    configs += [Config("verified", d) for d in args.deltas]
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
            str(max(1000, 2 * len(stream))),
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
        for n, config in enumerate(configs):
            cache_id = f"bench-{config.policy}-{config.value:.4f}-{n}"
            run = replay(stub, config, cache_id, stream, clusters, lambda: upstream.calls)
            runs.append(run)
            status = run.skipped or (
                f"hit rate {run.hit_rate:.3f}, error rate {_rate(run)}, {run.seconds:.0f} s"
            )
            print(f"  {config.name}: {status}", file=sys.stderr, flush=True)
        model = f"{info.embedder_model_id} ({info.embedding_dimension} dims)"

    compared = comparisons(runs)
    print()
    print(table(runs, reachable))
    if compared:
        print()
        print(comparison_table(compared))
    plot(
        runs,
        reachable,
        args.plot,
        f"Verified policy vs static thresholds: {args.stream} stream of {len(stream)} requests "
        f"({len(set(stream))} distinct)\nfrom {args.pairs} QQP pairs (seed {args.seed}); "
        f"model {model}",
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(
        json.dumps(
            {
                "data": str(data),
                "model": model,
                "held_out_pairs": len(pairs),
                "questions": len(clusters.of),
                "groups": len(clusters.canonical),
                "stream_size": len(stream),
                "stream": args.stream,
                "pairs": args.pairs,
                "popularity_exponent": args.popularity_exponent,
                "topics": args.topics,
                "seed": args.seed,
                "reachable_hit_rate": reachable,
                "seconds": time.perf_counter() - began,
                "runs": [
                    {
                        **asdict(r),
                        "name": r.config.name,
                        "hit_rate": r.hit_rate,
                        "error_rate": r.error_rate,
                        "error_interval": r.error_interval if r.hits else None,
                    }
                    for r in runs
                ],
                "comparisons": compared,
            },
            indent=2,
            ensure_ascii=False,
        )
    )
    print(f"\nplot: {args.plot}; figures: {args.output}")
    skipped = [r.config.name for r in runs if r.skipped]
    if skipped:
        raise SystemExit(f"not measured: {', '.join(skipped)} (see the table)")


if __name__ == "__main__":
    main()
