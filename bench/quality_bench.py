"""Hit quality at the product's defaults: the base model, the tuned model, tuned + calibrated
threshold, tuned + verifier, on held-out QQP pairs nobody trained on.

Protocol (the cache's): store every `text_a` of the held-out test part of the deterministic
split (embedder.training.pairs, the same `make finetune` and `make finetune-verifier` use), look
up each `text_b`; a hit is right when it is the pair's own `text_a` and the pair is labelled a
duplicate. Precision = right hits / hits, recall = right hits / duplicates. Quality is measured
in process through the very ONNX classes the services run (OnnxEncoder, OnnxPairScorer) with
exact search and the cache server's rule; hit latency p50 through the real processes (a gRPC
Search: embed, vector search, and the verifier's Score call when it is asked).

Draws the precision/recall curves (cosine threshold swept for each model; for the verifier, the
best precision any band reaches at each recall) with the operating points at the defaults, as
a PNG for the README.

Run: python -m bench.quality_bench [--tuned-dir models/tuned] [--verifier-dir models/verifier]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc

from bench.qqp import qqp_path
from bench.stack import local_stack
from bench.timing import p50_p99_ms
from embedder.encoder import OnnxEncoder
from embedder.manifest import ModelManifest
from embedder.scorer import OnnxPairScorer
from embedder.training.pairs import Pair, read_pairs, split_pairs
from embedder.training.verified import (
    BandPoint,
    Candidates,
    band_grid,
    cosine_curve,
    measure,
    nearest_candidates,
)
from embedder.verifier_manifest import VerifierManifest
from protos.semcache.cache.v1 import cache_pb2 as pb
from protos.semcache.cache.v1 import cache_pb2_grpc as pb_grpc

DEFAULT_THRESHOLD = 0.85
RESULTS = Path("bench/results")


@dataclass(frozen=True)
class Row:
    setup: str
    rule: str
    precision: float
    recall: float
    f1: float
    hit_p50_ms: float | None


def frontier(points: list[BandPoint]) -> list[tuple[float, float]]:
    """(recall, best precision reached at that recall or more), recall ascending."""
    ordered = sorted((p for p in points if p.hits), key=lambda p: (-p.recall, -p.precision))
    best, out = 0.0, list[tuple[float, float]]()
    for p in ordered:
        if p.precision > best and (not out or p.recall < out[-1][0]):
            best = p.precision
            out.append((p.recall, p.precision))
    return sorted(out)


def hit_latency(
    model_dir: Path, pairs: list[Pair], rule_args: tuple[str, ...], verifier: Path | None
) -> float:
    """p50 of the Search calls that hit, through the real embedder and cache server."""
    stored = list(dict.fromkeys(p.text_a for p in pairs))
    embedder_args = ("--verifier-dir", str(verifier)) if verifier else ()
    verifier_flag = () if verifier else ("--verifier", "off")
    with local_stack(
        model_dir,
        "--max-cache-size",
        str(2 * len(stored)),
        *rule_args,
        *verifier_flag,
        with_gateway=False,
        embedder_args=embedder_args,
    ) as services:
        stub = pb_grpc.CacheServiceStub(grpc.insecure_channel(services.cache.address))
        for i, text in enumerate(stored):
            stub.Set(pb.SetRequest(prompt=text, response=str(i)), timeout=60)
        for p in pairs[:20]:  # warm up
            stub.Search(pb.SearchRequest(prompt=p.text_b), timeout=60)
        seconds = []
        for p in pairs:
            started = time.perf_counter()
            reply = stub.Search(pb.SearchRequest(prompt=p.text_b), timeout=60)
            if reply.hits:
                seconds.append(time.perf_counter() - started)
    return p50_p99_ms(seconds)[0] if seconds else float("nan")


def plot(curves: dict[str, list[tuple[float, float]]], points: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5), dpi=110)
    for label, curve in curves.items():
        ax.plot([r for r, _ in curve], [p for _, p in curve], label=label)
    for row in points:
        ax.scatter([row.recall], [row.precision], zorder=3)
        ax.annotate(
            row.setup,
            (row.recall, row.precision),
            fontsize=7,
            xytext=(4, 4),
            textcoords="offset points",
        )
    ax.axhline(0.90, color="grey", linestyle=":", linewidth=0.8)
    ax.axvline(0.70, color="grey", linestyle=":", linewidth=0.8)
    ax.set_xlabel("recall (right hits / duplicates)")
    ax.set_ylabel("precision (right hits / hits)")
    ax.set_title("Hit quality on held-out QQP pairs (store text_a, look up text_b)")
    ax.set_xlim(0.3, 1.0)
    ax.set_ylim(0.4, 1.0)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=None, help="default: the shared QQP pairs")
    parser.add_argument("--base-dir", type=Path, default=Path("models/default"))
    parser.add_argument("--tuned-dir", type=Path, default=Path("models/tuned"))
    parser.add_argument("--verifier-dir", type=Path, default=Path("models/verifier"))
    parser.add_argument("--held-out-fraction", type=float, default=0.2)
    parser.add_argument("--latency-pairs", type=int, default=300)
    parser.add_argument("--plot", type=Path, default=Path("docs/img/hit-quality.png"))
    args = parser.parse_args()
    data = args.data or qqp_path()
    test = split_pairs(read_pairs(data), args.held_out_fraction).test
    print(f"held-out test pairs: {len(test)} ({sum(p.label for p in test)} duplicates)")
    sample = test[: args.latency_pairs]

    rows: list[Row] = []
    curves: dict[str, list[tuple[float, float]]] = {}

    def cosine_row(setup: str, found: Candidates, threshold: float, model_dir: Path) -> None:
        point = measure(found, threshold, threshold, 2.0)
        latency = hit_latency(model_dir, sample, ("--similarity-threshold", str(threshold)), None)
        rows.append(
            Row(
                setup,
                f"cosine >= {threshold:.2f}",
                point.precision,
                point.recall,
                point.f1,
                latency,
            )
        )

    base = OnnxEncoder(args.base_dir)
    base_found = nearest_candidates(base.encode, None, test)
    curves["base model, cosine"] = [(p.recall, p.precision) for p in cosine_curve(base_found)]
    cosine_row("base model", base_found, DEFAULT_THRESHOLD, args.base_dir)

    if (args.tuned_dir / "semcache-model.json").is_file():
        tuned = OnnxEncoder(args.tuned_dir)
        scorer = None
        if (args.verifier_dir / "semcache-verifier.json").is_file():
            scorer = OnnxPairScorer(args.verifier_dir)
        found = nearest_candidates(tuned.encode, scorer.score if scorer else None, test)
        curves["tuned model, cosine"] = [(p.recall, p.precision) for p in cosine_curve(found)]
        cosine_row("tuned", found, DEFAULT_THRESHOLD, args.tuned_dir)
        calibration = ModelManifest.read(args.tuned_dir).calibration
        if calibration is not None:
            cosine_row("tuned + calibrated", found, calibration.threshold, args.tuned_dir)
        band = VerifierManifest.read(args.verifier_dir).band if scorer else None
        if band is not None:
            point = measure(found, band.low, band.high, band.threshold)
            latency = hit_latency(args.tuned_dir, sample, (), args.verifier_dir)
            rows.append(
                Row(
                    "tuned + verifier",
                    f"band {band.low:.2f}-{band.high:.2f}, p >= {band.threshold:.2f}",
                    point.precision,
                    point.recall,
                    point.f1,
                    latency,
                )
            )
            curves["tuned + verifier (best band)"] = frontier(band_grid(found))

    print("\n| setup | rule | precision | recall | F1 | hit p50 (ms) |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r.setup} | {r.rule} | {r.precision:.3f} | {r.recall:.3f} | {r.f1:.3f} | "
            f"{r.hit_p50_ms:.1f} |"
        )
    plot(curves, rows, args.plot)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "quality.json").write_text(
        json.dumps(
            {"pairs": len(test), "rows": [asdict(r) for r in rows], "curves": curves}, indent=2
        )
    )
    print(f"\nplot: {args.plot}; figures: {RESULTS / 'quality.json'}")


if __name__ == "__main__":
    main()
