"""Fine-tune the embedding model on your own labelled pairs, then export it (training time only).

    python -m embedder.training.finetune --data pairs.jsonl.gz [--base MODEL] --output models/tuned
    (or: make finetune DATA=... [BASE=...] [OUTPUT=...])

The recipe is LangCache-Embed's: a bi-encoder trained with an online contrastive loss (only
the hard positives and hard negatives of each batch count), gradient norm clipped to 0.5,
AdamW with linear warm-up and decay. On top of it, as options measured in the README: more
epochs with early stopping on the held-out dev part (the best epoch is kept, and the base
model itself counts as epoch 0, so training never ships a model worse on dev than it started
from), hard negatives mined from the model's own nearest neighbours, and a ranking loss
(in-batch negatives) beside the contrastive one.

The data is checked before anything trains, split deterministically (train / dev / test), and
the result goes through the same self-verifying ONNX export as `make model`; the manifest
records the base model, the data (sha256, size), the recipe, the held-out figures before and
after, and the threshold calibrated on dev (embedder.training.calibrate).
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from embedder.export import export_model
from embedder.manifest import ModelManifest
from embedder.model_source import ModelUnavailableError, UnsupportedModelError, resolve_model
from embedder.training.calibrate import DEFAULT_TARGET_PRECISION, calibrate_folder
from embedder.training.cli import add_data_arguments, add_recipe_arguments, recipe_from
from embedder.training.evaluate import QualityReport, evaluate
from embedder.training.mining import mine_hard_negatives
from embedder.training.pairs import Pair, PairsError, read_pairs, split_pairs, summarize

log = logging.getLogger("embedder.finetune")


@dataclass(frozen=True)
class Recipe:
    epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 2e-5
    warmup_fraction: float = 0.1
    max_grad_norm: float = 0.5
    margin: float = 0.5  # of the online contrastive loss (cosine distance)
    hard_negatives: int = 0  # mined negatives per training pair (0: none)
    ranking_loss_weight: float = 0.0  # weight of in-batch-negatives ranking loss (0: off)
    patience: int = 1  # epochs without a dev gain before stopping
    seed: int = 13
    max_steps: int | None = None  # for quick runs: stop after this many steps


def _encoder(model: Any) -> Any:
    def encode(texts: Sequence[str]) -> np.ndarray:
        return np.asarray(
            model.encode(
                list(texts),
                batch_size=64,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            ),
            dtype=np.float32,
        )

    return encode


def _train_epoch(
    model: Any,
    losses: list[tuple[Any, float]],
    batches: list[list[Pair]],
    optimizer: Any,
    scheduler: Any,
    recipe: Recipe,
    progress: Any,
) -> float:
    import torch

    model.train()
    total = 0.0
    for batch in batches:
        features = [
            model.preprocess([p.text_a for p in batch]),
            model.preprocess([p.text_b for p in batch]),
        ]
        labels = torch.tensor([p.label for p in batch], dtype=torch.float32)
        loss = sum(weight * fn(features, labels) for fn, weight in losses)
        assert isinstance(loss, torch.Tensor)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        total += float(loss.detach())
        progress.update(1)
        progress.set_postfix(loss=f"{float(loss.detach()):.4f}")
    return total / max(1, len(batches))


def train(
    base_path: Path, train_pairs: list[Pair], dev: list[Pair], recipe: Recipe, workdir: Path
) -> tuple[Path, list[dict[str, float]]]:
    """Trains a copy of the base model; returns the folder of the best epoch on dev (the base
    itself when no epoch beat it) and the per-epoch history."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import OnlineContrastiveLoss
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    random.seed(recipe.seed)
    torch.manual_seed(recipe.seed)
    model = SentenceTransformer(str(base_path), device="cpu")
    base_dev = evaluate(_encoder(model), dev)
    history: list[dict[str, float]] = [
        {"epoch": 0, "dev_pr_auc": base_dev.pr_auc, "dev_best_f1": base_dev.best_f1.f1}
    ]
    log.info("base model on dev: PR-AUC %.4f, best F1 %.4f", base_dev.pr_auc, base_dev.best_f1.f1)
    losses: list[tuple[Any, float]] = [(OnlineContrastiveLoss(model, margin=recipe.margin), 1.0)]
    if recipe.ranking_loss_weight > 0:
        losses.append((_RankingLoss(model), recipe.ranking_loss_weight))
    data = list(train_pairs) + mine_hard_negatives(
        _encoder(model), train_pairs, recipe.hard_negatives
    )
    steps_per_epoch = (len(data) + recipe.batch_size - 1) // recipe.batch_size
    total_steps = steps_per_epoch * recipe.epochs
    if recipe.max_steps is not None:
        total_steps = min(total_steps, recipe.max_steps)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.learning_rate)
    scheduler = get_linear_schedule_with_warmup(
        optimizer, int(total_steps * recipe.warmup_fraction), total_steps
    )
    best_dir, best_auc, stale = base_path, base_dev.pr_auc, 0
    shuffler = random.Random(recipe.seed)
    steps_done = 0
    with tqdm(total=total_steps, desc="fine-tuning", unit="step", file=sys.stderr) as progress:
        for epoch in range(1, recipe.epochs + 1):
            shuffler.shuffle(data)
            batches = [
                data[i : i + recipe.batch_size] for i in range(0, len(data), recipe.batch_size)
            ][: total_steps - steps_done]
            if not batches:
                break
            mean_loss = _train_epoch(model, losses, batches, optimizer, scheduler, recipe, progress)
            steps_done += len(batches)
            dev_report = evaluate(_encoder(model), dev)
            history.append(
                {
                    "epoch": epoch,
                    "train_loss": mean_loss,
                    "dev_pr_auc": dev_report.pr_auc,
                    "dev_best_f1": dev_report.best_f1.f1,
                }
            )
            log.info(
                "epoch %d: loss %.4f, dev PR-AUC %.4f (best so far %.4f)",
                epoch,
                mean_loss,
                dev_report.pr_auc,
                best_auc,
            )
            if dev_report.pr_auc > best_auc:
                best_auc, stale = dev_report.pr_auc, 0
                best_dir = workdir / f"epoch-{epoch}"
                model.save(str(best_dir))
            else:
                stale += 1
                if stale >= recipe.patience:
                    log.info("no gain on dev for %d epoch(s): stopping", stale)
                    break
    if best_dir == base_path:
        log.warning("no epoch beat the base model on dev: the result is the base model")
    return best_dir, history


class _RankingLoss:
    """In-batch negatives: each text_b should be nearest to its own text_a among the batch's
    (pairs labelled 1 only). Cross-entropy over scaled cosine similarities."""

    def __init__(self, model: Any, scale: float = 20.0) -> None:
        self.model = model
        self.scale = scale

    def __call__(self, features: list[dict[str, Any]], labels: Any) -> Any:
        import torch

        keep = labels > 0.5
        if int(keep.sum()) < 2:
            return torch.zeros((), requires_grad=True)
        a = self.model(features[0])["sentence_embedding"][keep]
        b = self.model(features[1])["sentence_embedding"][keep]
        scores = (
            torch.nn.functional.normalize(b, dim=-1) @ torch.nn.functional.normalize(a, dim=-1).T
        )
        target = torch.arange(len(scores))
        return torch.nn.functional.cross_entropy(scores * self.scale, target)


def _figures(report: QualityReport, threshold: float) -> dict[str, Any]:
    at = report.at(threshold)
    return {
        "pr_auc": report.pr_auc,
        "best_f1": report.best_f1.model_dump(),
        "at_threshold": at.model_dump(),
        "curve": [p.model_dump() for p in report.curve],
    }


def finetune(
    data: Path,
    output: Path,
    *,
    base: str | None = None,
    recipe: Recipe | None = None,
    held_out_fraction: float = 0.2,
    target_precision: float = DEFAULT_TARGET_PRECISION,
    limit: int | None = None,
) -> ModelManifest:
    recipe = recipe or Recipe()
    output = Path(output).resolve()
    pairs = read_pairs(data, limit)  # bad data stops here, before any training
    summary = summarize(data, pairs)
    split = split_pairs(pairs, held_out_fraction)
    log.info(
        "%d pairs: %d to train, %d dev, %d test (held out, with no question in training)",
        len(pairs),
        len(split.train),
        len(split.dev),
        len(split.test),
    )
    source = resolve_model(base)
    from sentence_transformers import SentenceTransformer

    base_test = evaluate(_encoder(SentenceTransformer(str(source.path), device="cpu")), split.test)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="semcache-finetune-") as tmp:
        workdir = Path(tmp)
        best, history = train(source.path, split.train, split.dev, recipe, workdir)
        named = workdir / f"{source.model_id.rsplit('/', 1)[-1]}-semcache-tuned"
        SentenceTransformer(str(best), device="cpu").save(str(named))
        manifest = export_model(str(named), output)
    calibration, tuned_test = calibrate_folder(
        output, split.dev, target_precision, summary.sha256, test=split.test
    )
    assert tuned_test is not None
    manifest = ModelManifest.read(output)
    manifest.training = {
        "base_model": source.model_id,
        "base_fallback": source.fallback,
        "data": asdict(summary),
        "split": {
            "held_out_fraction": held_out_fraction,
            "train": len(split.train),
            "dev": len(split.dev),
            "test": len(split.test),
        },
        "recipe": asdict(recipe),
        "history": history,
        "kept_epoch": 0 if best == source.path else int(best.name.rsplit("-", 1)[-1]),
        "seconds": round(time.time() - started, 1),
        "test_before": _figures(base_test, calibration.threshold),
        "test_after": _figures(tuned_test, calibration.threshold),
    }
    manifest.write(output)
    before, after = base_test.at(calibration.threshold), tuned_test.at(calibration.threshold)
    log.info(
        "held-out test, at the calibrated threshold %.2f: precision %.3f -> %.3f, recall %.3f "
        "-> %.3f; PR-AUC %.4f -> %.4f",
        calibration.threshold,
        before.precision,
        after.precision,
        before.recall,
        after.recall,
        base_test.pr_auc,
        tuned_test.pr_auc,
    )
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m embedder.training.finetune", description=__doc__
    )
    parser.add_argument("--output", type=Path, default=Path("models/tuned"))
    parser.add_argument("--base", default=None, help="hub id or folder (default: as make model)")
    add_data_arguments(parser)
    add_recipe_arguments(parser, Recipe())
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    recipe = recipe_from(args, Recipe)
    try:
        finetune(
            args.data,
            args.output,
            base=args.base,
            recipe=recipe,
            held_out_fraction=args.held_out_fraction,
            target_precision=args.target_precision,
            limit=args.limit,
        )
    except PairsError as exc:
        log.error("bad training data: %s", exc)
        return 2
    except (ModelUnavailableError, UnsupportedModelError) as exc:
        log.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
