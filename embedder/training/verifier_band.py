"""Choose the verifier's band for the embedding model it serves beside (training time only;
no PyTorch).

    python -m embedder.training.verifier_band --verifier-dir models/verifier
        --embedder-dir models/tuned --data pairs.jsonl.gz [--target-precision 0.90]
    (or: make calibrate-verifier ...; `make finetune-verifier` ends with the same step)

On the dev part of the deterministic split, through the ONNX embedder and verifier a server
runs and with the cache server's own rule, a grid search picks the band (low, high, verifier
probability) with the most recall at the target precision (else the most precise keeping half
the recall), and writes it into the verifier's manifest with the embedding model's checksum it
was chosen for, and the held-out test figures with and without the verifier. Re-run it when
the embedding model changes (`make finetune` again): the band is in that model's similarities.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from embedder.encoder import OnnxEncoder
from embedder.scorer import OnnxPairScorer
from embedder.training.calibrate import DEFAULT_TARGET_PRECISION
from embedder.training.cli import add_data_arguments
from embedder.training.pairs import PairsError, Split, read_pairs, split_pairs
from embedder.training.verified import (
    DEFAULT_CANDIDATES,
    BandPoint,
    choose_band,
    cosine_curve,
    measure,
    nearest_candidates,
)
from embedder.verifier_manifest import Band, VerifierManifest

log = logging.getLogger("embedder.verifier_band")


def _point(point: BandPoint) -> dict[str, Any]:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(point).items()}


def calibrate_band(
    verifier_dir: Path,
    embedder_dir: Path,
    split: Split,
    target_precision: float = DEFAULT_TARGET_PRECISION,
    candidates: int = DEFAULT_CANDIDATES,
) -> VerifierManifest:
    embedder = OnnxEncoder(embedder_dir)
    scorer = OnnxPairScorer(verifier_dir)
    dev = nearest_candidates(embedder.encode, scorer.score, split.dev, candidates)
    chosen, reached = choose_band(dev, target_precision)
    test = nearest_candidates(embedder.encode, scorer.score, split.test, candidates)
    calibration = embedder.manifest.calibration
    cosine_threshold = calibration.threshold if calibration else 0.85
    before = measure(test, cosine_threshold, cosine_threshold, 2.0)
    after = measure(test, chosen.low, chosen.high, chosen.threshold)
    manifest = VerifierManifest.read(verifier_dir)
    manifest.band = Band(
        low=chosen.low,
        high=chosen.high,
        threshold=chosen.threshold,
        target_precision=target_precision,
        precision=chosen.precision,
        recall=chosen.recall,
        reached_target=reached,
        pairs=len(split.dev),
        embedder_onnx_sha256=embedder.manifest.onnx_sha256,
        embedder_model_id=embedder.manifest.model_id,
    )
    manifest.training = {
        **(manifest.training or {}),
        "embedder": str(embedder_dir),
        "candidates": candidates,
        "test_pairs": len(split.test),
        "test_cosine_threshold": cosine_threshold,
        "test_cosine_alone": _point(before),
        "test_with_verifier": _point(after),
        "test_cosine_curve": [_point(p) for p in cosine_curve(test)],
    }
    manifest.write(verifier_dir)
    log.info(
        "band %.2f-%.2f, verifier p >= %.2f (dev: precision %.3f, recall %.3f%s); held-out "
        "test: cosine %.2f alone P %.3f R %.3f -> with the verifier P %.3f R %.3f",
        chosen.low,
        chosen.high,
        chosen.threshold,
        chosen.precision,
        chosen.recall,
        "" if reached else f", target {target_precision:.2f} NOT reached",
        cosine_threshold,
        before.precision,
        before.recall,
        after.precision,
        after.recall,
    )
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m embedder.training.verifier_band", description=__doc__
    )
    parser.add_argument("--verifier-dir", type=Path, default=Path("models/verifier"))
    parser.add_argument("--embedder-dir", type=Path, default=Path("models/default"))
    add_data_arguments(parser)
    parser.add_argument("--candidates", type=int, default=DEFAULT_CANDIDATES)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        split = split_pairs(read_pairs(args.data, args.limit), args.held_out_fraction)
        calibrate_band(
            args.verifier_dir, args.embedder_dir, split, args.target_precision, args.candidates
        )
    except PairsError as exc:
        log.error("bad calibration data: %s", exc)
        return 2
    except FileNotFoundError as exc:
        log.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
