"""The verified policy's prior for an exported model: how often a cache's nearest candidate is
right, as a function of its similarity, on simulated traffic over held-out labelled questions.

    python -m embedder.training.prior --model-dir models/default --data pairs.jsonl.gz
        [--seeds 3] [--stream-size 6000]          (also run by `make calibrate` and `make model`)

Traffic: the benchmark's popular-topics streams (embedder.training.traffic.POPULAR) over the dev
part of the deterministic split, so that the test part the benchmark replays stays unseen.
Each stream is replayed as a cache sees it: every question asked for the first time is
compared with the distinct questions asked before it, through the very ONNX encoder the
embedder serves; its nearest one is the candidate, right when both are in one group of the
labels. The logistic curve of cache_server.learned_thresholds.model is fitted to the
candidates at or above MIN_SIMILARITY and written into the model's manifest (`verified_prior`),
from which every cache server that uses this model starts (docs/verified.md).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from cache_server.learned_thresholds.model import Calibrated, fit_logistic
from embedder.encoder import OnnxEncoder
from embedder.manifest import ModelManifest, VerifiedPrior
from embedder.training.evaluate import encode_in_batches
from embedder.training.pairs import Pair, PairsError, read_pairs, split_pairs, summarize
from embedder.training.traffic import POPULAR, Clusters, popular_stream

log = logging.getLogger("embedder.prior")

Encode = Callable[[Sequence[str]], npt.NDArray[np.float32]]
MIN_SIMILARITY = 0.5
DEFAULT_SEEDS = 3
DEFAULT_STREAM_SIZE = 6000
SEED_BASE = 1000  # seeds apart from the benchmark's (0, 1, 2), though on other questions too


def candidates(
    stream: Sequence[str], vectors: dict[str, npt.NDArray[np.float32]], clusters: Clusters
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """(similarity, right) of the nearest earlier question, for each first-time question."""
    seen: list[str] = []
    rows: list[npt.NDArray[np.float32]] = []
    known: set[str] = set()
    similarities: list[float] = []
    labels: list[float] = []
    for question in stream:
        if question in known:
            continue
        vector = vectors[question]
        if rows:
            scores = np.stack(rows) @ vector
            best = int(np.argmax(scores))
            similarities.append(float(scores[best]))
            labels.append(1.0 if clusters.same(question, seen[best]) else 0.0)
        seen.append(question)
        rows.append(vector)
        known.add(question)
    return np.array(similarities), np.array(labels)


def fit_prior(
    encode: Encode, pairs: list[Pair], seeds: int, stream_size: int
) -> tuple[Calibrated, str]:
    """The prior fitted on `seeds` popular streams over `pairs`, and the streams' recipe."""
    clusters = Clusters.from_pairs(pairs)
    streams = [
        popular_stream(
            pairs,
            clusters,
            stream_size,
            SEED_BASE + i,
            exponent=POPULAR.exponent,
            topics=POPULAR.topics,
            paraphrased=POPULAR.paraphrased,
        )
        for i in range(seeds)
    ]
    texts = sorted({q for stream in streams for q in stream})
    matrix = encode_in_batches(encode, texts)
    vectors = {text: matrix[i] for i, text in enumerate(texts)}
    found = [candidates(stream, vectors, clusters) for stream in streams]
    similarities = np.concatenate([s for s, _ in found])
    labels = np.concatenate([y for _, y in found])
    keep = similarities >= MIN_SIMILARITY
    recipe = (
        f"popular: {POPULAR.topics} topics ({POPULAR.paraphrased:.0%} with paraphrases), Zipf "
        f"{POPULAR.exponent}, {stream_size} requests, seeds {SEED_BASE}-{SEED_BASE + seeds - 1}"
    )
    return fit_logistic(similarities[keep], labels[keep]), recipe


def write_prior(
    model_dir: Path,
    dev: list[Pair],
    data_sha256: str,
    *,
    seeds: int = DEFAULT_SEEDS,
    stream_size: int = DEFAULT_STREAM_SIZE,
) -> VerifiedPrior:
    """Fits the prior on `dev` (held-out pairs) and writes it into the model's manifest."""
    encoder = OnnxEncoder(model_dir)
    curve, recipe = fit_prior(encoder.encode, dev, seeds, stream_size)
    prior = VerifiedPrior(
        w0=curve.w0,
        w1=curve.w1,
        observations=curve.observations,
        streams=recipe,
        data_sha256=data_sha256,
        fitted_at=time.time(),
    )
    manifest = ModelManifest.read(model_dir)
    manifest.verified_prior = prior
    manifest.write(model_dir)
    log.info(
        "verified prior for %s: P(right | s) = sigmoid(%.3f + %.3f (s - 0.85) / 0.1), from %d "
        "candidates of %s",
        model_dir,
        prior.w0,
        prior.w1,
        prior.observations,
        recipe,
    )
    return prior


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m embedder.training.prior", description=__doc__)
    parser.add_argument("--model-dir", type=Path, default=Path("models/default"))
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--seeds", type=int, default=DEFAULT_SEEDS)
    parser.add_argument("--stream-size", type=int, default=DEFAULT_STREAM_SIZE)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.seeds < 1 or args.stream_size < 100:
        log.error("--seeds must be >= 1 and --stream-size >= 100")
        return 2
    try:
        pairs = read_pairs(args.data)
        write_prior(
            args.model_dir,
            split_pairs(pairs).dev,
            summarize(args.data, pairs).sha256,
            seeds=args.seeds,
            stream_size=args.stream_size,
        )
    except (PairsError, FileNotFoundError) as exc:
        log.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
