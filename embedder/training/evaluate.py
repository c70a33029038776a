"""Hit quality of an embedding model as a cache sees it, on labelled pairs.

The protocol of the cache benchmark: store every `text_a`, look up each `text_b`; the nearest
stored question is a hit when its cosine similarity reaches the threshold, and a hit is right
when it is the pair's own `text_a` and the pair is labelled 1. Precision is right hits over
hits; recall is right hits over pairs labelled 1. Pure numpy: any encoder (ONNX at serving
time, PyTorch while training) can be measured the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel

from embedder.training.pairs import Pair

FloatArray = npt.NDArray[np.float32]
Encode = Callable[[Sequence[str]], FloatArray]  # texts -> unit-length rows
THRESHOLDS = [round(0.50 + 0.01 * i, 2) for i in range(50)]  # 0.50 ... 0.99


class CurvePoint(BaseModel):
    threshold: float
    precision: float
    recall: float
    f1: float
    hits: int


class QualityReport(BaseModel):
    """What a set of held-out pairs says about a model's hits."""

    pairs: int
    positives: int
    pr_auc: float
    best_f1: CurvePoint
    curve: list[CurvePoint]

    def at(self, threshold: float) -> CurvePoint:
        return point_at(self.curve, threshold)


@dataclass(frozen=True)
class Lookups:
    """For each pair: the similarity of its nearest stored question, and whether that hit
    would be right."""

    similarity: FloatArray
    right: npt.NDArray[np.bool_]
    positives: int


def encode_in_batches(encode: Encode, texts: Sequence[str], batch: int = 64) -> FloatArray:
    rows = [encode(texts[i : i + batch]) for i in range(0, len(texts), batch)]
    return np.vstack(rows).astype(np.float32) if rows else np.zeros((0, 0), np.float32)


def nearest(
    queries: FloatArray, stored: FloatArray, k: int
) -> tuple[npt.NDArray[np.int64], FloatArray]:
    """Exact search: for each query row, the indices of its `k` most similar stored rows, most
    similar first, and their similarities. In slices of 512 queries: bounded memory."""
    k = min(k, len(stored))
    top = np.empty((len(queries), k), dtype=np.int64)
    similarity = np.empty((len(queries), k), dtype=np.float32)
    for start in range(0, len(queries), 512):
        scores = queries[start : start + 512] @ stored.T
        order = scores.argmax(axis=1)[:, None] if k == 1 else np.argsort(-scores, axis=1)[:, :k]
        top[start : start + 512] = order
        similarity[start : start + 512] = np.take_along_axis(scores, order, axis=1)
    return top, similarity


def lookups(encode: Encode, pairs: Sequence[Pair]) -> Lookups:
    stored = list(dict.fromkeys(p.text_a for p in pairs))
    row_of = {text: i for i, text in enumerate(stored)}
    a = encode_in_batches(encode, stored)
    b = encode_in_batches(encode, [p.text_b for p in pairs])
    top, similarity = nearest(b, a, 1)
    own = np.array([row_of[p.text_a] for p in pairs])
    labels = np.array([p.label == 1 for p in pairs])
    return Lookups(similarity[:, 0], (top[:, 0] == own) & labels, int(labels.sum()))


def point(found: Lookups, threshold: float) -> CurvePoint:
    hit = found.similarity >= threshold
    hits = int(hit.sum())
    right = int((hit & found.right).sum())
    precision = right / hits if hits else 1.0
    recall = right / found.positives if found.positives else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return CurvePoint(threshold=threshold, precision=precision, recall=recall, f1=f1, hits=hits)


def average_precision(
    scores: npt.NDArray[np.floating], right: npt.NDArray[np.bool_], positives: int | None = None
) -> float:
    """Area under the precision/recall curve traced by every cut of `scores` (step-wise);
    recall over `positives` (default: the right ones among the scored)."""
    order = np.argsort(-scores, kind="stable")
    ordered = right[order].astype(np.float64)
    positives = int(ordered.sum()) if positives is None else positives
    if not positives:
        return 0.0
    precision = np.cumsum(ordered) / np.arange(1, len(ordered) + 1)
    # Each right hit adds 1/positives of recall at the precision reached there.
    return float((precision * ordered).sum() / positives)


def pr_auc(found: Lookups) -> float:
    """Area under the precision/recall curve traced by every threshold (step-wise)."""
    return average_precision(found.similarity, found.right, found.positives)


def report(found: Lookups, pairs: int) -> QualityReport:
    curve = [point(found, t) for t in THRESHOLDS]
    return QualityReport(
        pairs=pairs,
        positives=found.positives,
        pr_auc=pr_auc(found),
        best_f1=max(curve, key=lambda p: p.f1),
        curve=curve,
    )


def evaluate(encode: Encode, pairs: Sequence[Pair]) -> QualityReport:
    return report(lookups(encode, pairs), len(pairs))


def point_at(curve: Sequence[CurvePoint], threshold: float) -> CurvePoint:
    return min(curve, key=lambda p: abs(p.threshold - threshold))


def threshold_for_precision(curve: Sequence[CurvePoint], target: float) -> CurvePoint | None:
    """The lowest threshold (so the most recall) whose precision reaches `target`, or None
    when none does."""
    reaching = [p for p in curve if p.precision >= target and p.hits > 0]
    return min(reaching, key=lambda p: p.threshold) if reaching else None


FALLBACK_MIN_RECALL = 0.5


def most_precise_point(
    curve: Sequence[CurvePoint], min_recall: float = FALLBACK_MIN_RECALL
) -> CurvePoint | None:
    """When no threshold reaches the target precision: the most precise one that still keeps
    `min_recall` (a cache would rather miss than serve a wrong answer), or None."""
    keeping = [p for p in curve if p.recall >= min_recall and p.hits > 0]
    return max(keeping, key=lambda p: (p.precision, -p.threshold)) if keeping else None
