"""Train the verifier: a cross-encoder that reads the asked and the stored question together
and says whether they mean the same (training time only).

    python -m embedder.training.verifier --data pairs.jsonl.gz [--base MODEL]
        [--embedder-dir models/tuned] --output models/verifier
    (or: make finetune-verifier DATA=... [BASE=...] [EMBEDDER_DIR=...] [OUTPUT=...])

Same data rules and the same deterministic split as `make finetune`, so the held-out test part
is the same questions. The classifier starts from the base model's body (default: the model
`make model` exports) with a one-logit head, and learns from the training pairs plus, for each,
the stored questions the embedder it will serve beside puts nearest but which are not the
answer (hard negatives: exactly the candidates it will be asked about). Binary cross-entropy,
AdamW with warm-up and linear decay, gradient norm clipped, early stopping on the dev part's
average precision over those candidates (the best epoch is kept). The result goes through a
self-checking ONNX export, then the band (where a cache asks it, and the probability for a
hit) is chosen on the dev part for the target precision, through the ONNX embedder and
verifier a server runs, and the test part is measured with and without it.
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from embedder.encoder import OnnxEncoder
from embedder.manifest import ModelManifest
from embedder.model_source import (
    ModelUnavailableError,
    UnsupportedModelError,
    read_sentence_layout,
    resolve_model,
)
from embedder.training.calibrate import DEFAULT_TARGET_PRECISION
from embedder.training.cli import add_data_arguments, add_recipe_arguments, recipe_from
from embedder.training.evaluate import average_precision
from embedder.training.mining import mine_hard_negatives
from embedder.training.pairs import Pair, PairsError, read_pairs, split_pairs, summarize
from embedder.training.verified import (
    DEFAULT_CANDIDATES,
    Candidates,
    nearest_candidates,
)
from embedder.training.verifier_band import calibrate_band
from embedder.training.verifier_export import export_verifier, torch_probabilities
from embedder.verifier_manifest import VerifierManifest

log = logging.getLogger("embedder.finetune_verifier")


@dataclass(frozen=True)
class VerifierRecipe:
    epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 3e-5
    warmup_fraction: float = 0.1
    max_grad_norm: float = 1.0
    hard_negatives: int = 1  # mined per training pair with the embedder (0: none)
    max_seq_length: int = 128  # tokens of a pair, both questions together
    patience: int = 1
    seed: int = 13
    max_steps: int | None = None


def train(
    body: Path,
    data: list[Pair],
    dev: Candidates,
    dev_pairs: list[tuple[str, str]],
    recipe: VerifierRecipe,
    workdir: Path,
) -> tuple[Path | None, list[dict[str, float]]]:
    """Trains; returns the folder of the best epoch by dev average precision (None when no
    epoch ran) and the per-epoch history."""
    import torch
    from tqdm.auto import tqdm
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        get_linear_schedule_with_warmup,
    )

    random.seed(recipe.seed)
    torch.manual_seed(recipe.seed)
    tokenizer = AutoTokenizer.from_pretrained(str(body))
    tokenizer.model_max_length = recipe.max_seq_length  # where pairs are cut (and saved)
    model = AutoModelForSequenceClassification.from_pretrained(str(body), num_labels=1)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    steps_per_epoch = (len(data) + recipe.batch_size - 1) // recipe.batch_size
    total_steps = steps_per_epoch * recipe.epochs
    if recipe.max_steps is not None:
        total_steps = min(total_steps, recipe.max_steps)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.learning_rate)
    scheduler = get_linear_schedule_with_warmup(
        optimizer, int(total_steps * recipe.warmup_fraction), total_steps
    )
    shuffler = random.Random(recipe.seed)
    history: list[dict[str, float]] = []
    best: Path | None = None
    best_ap, stale, steps_done = -1.0, 0, 0
    right = dev.right.reshape(-1)
    with tqdm(total=total_steps, desc="verifier", unit="step", file=sys.stderr) as progress:
        for epoch in range(1, recipe.epochs + 1):
            rows = list(data)
            shuffler.shuffle(rows)
            batches = [
                rows[i : i + recipe.batch_size] for i in range(0, len(rows), recipe.batch_size)
            ][: total_steps - steps_done]
            if not batches:
                break
            model.train()
            total = 0.0
            for batch in batches:
                # Either order: the cache asks (asked, stored), the data may hold either.
                ordered = [
                    (p.text_b, p.text_a) if shuffler.random() < 0.5 else (p.text_a, p.text_b)
                    for p in batch
                ]
                features = tokenizer(
                    [a for a, _ in ordered],
                    [b for _, b in ordered],
                    padding=True,
                    truncation="longest_first",
                    max_length=recipe.max_seq_length,
                    return_tensors="pt",
                )
                labels = torch.tensor([float(p.label) for p in batch])
                loss = loss_fn(model(**features).logits[:, 0], labels)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
                total += float(loss.detach())
                progress.update(1)
                progress.set_postfix(loss=f"{float(loss.detach()):.4f}")
            steps_done += len(batches)
            model.eval()
            probs = np.concatenate(
                [
                    torch_probabilities(model, tokenizer, dev_pairs[i : i + 128])
                    for i in range(0, len(dev_pairs), 128)
                ]
            )
            ap = average_precision(probs, right)
            history.append(
                {"epoch": epoch, "train_loss": total / len(batches), "dev_candidate_ap": ap}
            )
            log.info("epoch %d: loss %.4f, dev candidate AP %.4f", epoch, total / len(batches), ap)
            if ap > best_ap:
                best_ap, stale = ap, 0
                best = workdir / f"epoch-{epoch}"
                model.save_pretrained(str(best))
                tokenizer.save_pretrained(str(best))
            else:
                stale += 1
                if stale >= recipe.patience:
                    log.info("no gain on dev for %d epoch(s): stopping", stale)
                    break
    return best, history


def finetune_verifier(
    data: Path,
    output: Path,
    *,
    embedder_dir: Path,
    base: str | None = None,
    recipe: VerifierRecipe | None = None,
    held_out_fraction: float = 0.2,
    target_precision: float = DEFAULT_TARGET_PRECISION,
    candidates: int = DEFAULT_CANDIDATES,
    limit: int | None = None,
) -> VerifierManifest:
    recipe = recipe or VerifierRecipe()
    pairs = read_pairs(data, limit)  # bad data stops here, before any training
    summary = summarize(data, pairs)
    split = split_pairs(pairs, held_out_fraction)
    embedder = OnnxEncoder(embedder_dir)  # a missing embedder stops here too
    source = resolve_model(base)
    body = read_sentence_layout(source.path).transformer_path
    log.info(
        "%d pairs: %d to train, %d dev, %d test; candidates from %s",
        len(pairs),
        len(split.train),
        len(split.dev),
        len(split.test),
        embedder.manifest.model_id,
    )
    negatives = mine_hard_negatives(embedder.encode, split.train, recipe.hard_negatives)
    dev_found = nearest_candidates(embedder.encode, None, split.dev, candidates)
    dev_pairs = dev_found.asked
    started = time.time()
    output = Path(output).resolve()
    with tempfile.TemporaryDirectory(prefix="semcache-verifier-") as tmp:
        best, history = train(
            body, list(split.train) + negatives, dev_found, dev_pairs, recipe, Path(tmp)
        )
        if best is None:
            raise PairsError("no training step ran: more data, or a larger --max-steps")
        manifest = export_verifier(
            best,
            output,
            model_id=f"{source.model_id}+semcache-verifier",
            max_seq_length=recipe.max_seq_length,
            extra_pairs=dev_pairs[:64],
        )
    manifest.training = {
        "base_model": source.model_id,
        "data": asdict(summary),
        "split": {"train": len(split.train), "dev": len(split.dev), "test": len(split.test)},
        "hard_negatives": len(negatives),
        "recipe": asdict(recipe),
        "history": history,
        "seconds": round(time.time() - started, 1),
    }
    manifest.write(output)
    return calibrate_band(output, embedder_dir, split, target_precision, candidates)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m embedder.training.verifier", description=__doc__
    )
    parser.add_argument("--output", type=Path, default=Path("models/verifier"))
    parser.add_argument("--base", default=None, help="hub id or folder (default: as make model)")
    parser.add_argument(
        "--embedder-dir",
        type=Path,
        default=Path("models/default"),
        help="the exported embedding model the verifier will serve beside",
    )
    parser.add_argument("--candidates", type=int, default=DEFAULT_CANDIDATES)
    add_data_arguments(parser)
    add_recipe_arguments(parser, VerifierRecipe())
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    recipe = recipe_from(args, VerifierRecipe)
    try:
        ModelManifest.read(args.embedder_dir)
        finetune_verifier(
            args.data,
            args.output,
            embedder_dir=args.embedder_dir,
            base=args.base,
            recipe=recipe,
            held_out_fraction=args.held_out_fraction,
            target_precision=args.target_precision,
            candidates=args.candidates,
            limit=args.limit,
        )
    except PairsError as exc:
        log.error("bad training data: %s", exc)
        return 2
    except (ModelUnavailableError, UnsupportedModelError, FileNotFoundError) as exc:
        log.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
