"""Choose the similarity threshold from evidence instead of a magic 0.85.

    python -m embedder.training.calibrate --model-dir models/default --data pairs.jsonl.gz
        [--target-precision 0.90]          (or: make calibrate DATA=...)

It also fits the verified hit policy's prior on the same pairs (embedder.training.prior).

On held-out labelled pairs (the dev part of the deterministic split, so the test part stays
untouched; `--all-pairs` for data the model never trained on), measured through the very ONNX
encoder the server runs, it picks the lowest threshold whose hit precision reaches the target
(so the most recall at that precision) and writes it, with what it measured, into the model's
manifest. The cache server uses it as its default threshold when the operator has set none.
When no threshold reaches the target, the most precise threshold that still keeps half the
recall is written instead (a cache would rather miss than serve a wrong answer), marked as
such, and the command says so.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from embedder.encoder import OnnxEncoder
from embedder.manifest import Calibration, ModelManifest
from embedder.training.evaluate import (
    FALLBACK_MIN_RECALL,
    QualityReport,
    evaluate,
    most_precise_point,
    threshold_for_precision,
)
from embedder.training.pairs import Pair, PairsError, read_pairs, split_pairs, summarize
from embedder.training.prior import write_prior

log = logging.getLogger("embedder.calibrate")

DEFAULT_TARGET_PRECISION = 0.90


def calibrate_folder(
    model_dir: Path,
    pairs: list[Pair],
    target_precision: float,
    data_sha256: str,
    *,
    test: list[Pair] | None = None,
) -> tuple[Calibration, QualityReport | None]:
    """Calibrates on `pairs`, writes the manifest; also measures `test` when given."""
    encoder = OnnxEncoder(model_dir)
    found = evaluate(encoder.encode, pairs)
    chosen = threshold_for_precision(found.curve, target_precision)
    reached = chosen is not None
    if chosen is None:
        chosen = most_precise_point(found.curve) or found.best_f1
        log.warning(
            "no threshold reaches precision %.2f on these %d pairs (best: %.3f); using the "
            "most precise threshold that keeps recall >= %.1f: %.2f (precision %.3f, recall %.3f)",
            target_precision,
            len(pairs),
            max(p.precision for p in found.curve if p.hits) if found.curve else 0.0,
            FALLBACK_MIN_RECALL,
            chosen.threshold,
            chosen.precision,
            chosen.recall,
        )
    calibration = Calibration(
        threshold=chosen.threshold,
        target_precision=target_precision,
        precision=chosen.precision,
        recall=chosen.recall,
        pairs=len(pairs),
        data_sha256=data_sha256,
        reached_target=reached,
        calibrated_at=time.time(),
    )
    manifest = ModelManifest.read(model_dir)
    manifest.calibration = calibration
    manifest.write(model_dir)
    # The verified policy's prior, from the same held-out pairs (embedder.training.prior).
    write_prior(model_dir, pairs, data_sha256)
    log.info(
        "calibrated threshold %.2f: precision %.3f, recall %.3f on %d pairs (target %.2f%s)",
        calibration.threshold,
        calibration.precision,
        calibration.recall,
        len(pairs),
        target_precision,
        "" if reached else ", NOT reached",
    )
    return calibration, evaluate(encoder.encode, test) if test is not None else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m embedder.training.calibrate", description=__doc__
    )
    parser.add_argument("--model-dir", type=Path, default=Path("models/default"))
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--target-precision", type=float, default=DEFAULT_TARGET_PRECISION)
    parser.add_argument("--held-out-fraction", type=float, default=0.2)
    parser.add_argument(
        "--all-pairs",
        action="store_true",
        help="calibrate on every pair (only for data the model never trained on)",
    )
    parser.add_argument("--limit", type=int, default=None, help="use only the first N pairs")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if not 0.0 < args.target_precision <= 1.0:
        log.error("--target-precision must be in (0, 1]")
        return 2
    try:
        pairs = read_pairs(args.data, args.limit)
        chosen = pairs if args.all_pairs else split_pairs(pairs, args.held_out_fraction).dev
        summary = summarize(args.data, pairs)
        calibrate_folder(args.model_dir, chosen, args.target_precision, summary.sha256)
    except PairsError as exc:
        log.error("bad calibration data: %s", exc)
        return 2
    except FileNotFoundError as exc:
        log.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
