"""Hit quality of an embedder with a verifier, as a cache sees it, and the band that gives it.

The protocol is the cache benchmark's (embedder.training.evaluate): store every `text_a`, look
up each `text_b`. With a verifier, the cache server's rule (cache_server/cross_encoder_band.py) is:
take the nearest `candidates` stored questions; one is a hit when its similarity is at or above
the band's `high`, or when it is in the band (>= `low`) and the verifier gives the pair a
probability >= `threshold`; the answer is the first hit in order of similarity. Here every
candidate's similarity and probability is computed once, so any band is measured in
microseconds and the best one for a target precision is found by a grid search.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from embedder.training.evaluate import Encode, encode_in_batches, nearest
from embedder.training.pairs import Pair

FloatArray = npt.NDArray[np.float32]
Score = Callable[[Sequence[tuple[str, str]]], FloatArray]  # (query, candidate) -> probability
DEFAULT_CANDIDATES = 3
MIN_HITS = 20
LOWS = [round(0.50 + 0.01 * i, 2) for i in range(50)]  # 0.50 ... 0.99
PROBABILITIES = [round(0.05 * i, 2) for i in range(1, 20)]  # 0.05 ... 0.95


@dataclass(frozen=True)
class Candidates:
    """For each pair: its `k` nearest stored questions, their similarities and verifier
    probabilities, and which of them would be a right hit (the pair's own text_a, label 1)."""

    similarity: FloatArray  # (pairs, k), descending along each row
    probability: FloatArray  # (pairs, k)
    right: npt.NDArray[np.bool_]  # (pairs, k)
    positives: int
    asked: list[tuple[str, str]]  # (text_b, candidate) for every cell, row-major


@dataclass(frozen=True)
class BandPoint:
    low: float
    high: float
    threshold: float
    precision: float
    recall: float
    f1: float
    hits: int


def nearest_candidates(
    encode: Encode, score: Score | None, pairs: Sequence[Pair], k: int = DEFAULT_CANDIDATES
) -> Candidates:
    """Embeds, searches exactly, and asks the verifier about every candidate (probability 0
    for all when `score` is None: cosine alone)."""
    stored = list(dict.fromkeys(p.text_a for p in pairs))
    row_of = {text: i for i, text in enumerate(stored)}
    a = encode_in_batches(encode, stored)
    b = encode_in_batches(encode, [p.text_b for p in pairs])
    top, similarity = nearest(b, a, k)
    k = top.shape[1]
    probability = np.zeros_like(similarity)
    flat = [(p.text_b, stored[int(j)]) for p, row in zip(pairs, top, strict=True) for j in row]
    if score is not None:
        probs = np.concatenate([score(flat[i : i + 256]) for i in range(0, len(flat), 256)]).astype(
            np.float32
        )
        probability = probs.reshape(len(pairs), k)
    own = np.array([row_of[p.text_a] for p in pairs])[:, None]
    labels = np.array([p.label == 1 for p in pairs])[:, None]
    return Candidates(similarity, probability, (top == own) & labels, int(labels.sum()), flat)


def measure(found: Candidates, low: float, high: float, threshold: float) -> BandPoint:
    """Precision and recall of the cache's rule with this band."""
    passes = (found.similarity >= high) | (
        (found.similarity >= low) & (found.probability >= threshold)
    )
    hit = passes.any(axis=1)
    first = passes.argmax(axis=1)  # the first passing candidate, in order of similarity
    right = hit & found.right[np.arange(len(first)), first]
    hits, rights = int(hit.sum()), int(right.sum())
    precision = rights / hits if hits else 1.0
    recall = rights / found.positives if found.positives else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return BandPoint(low, high, threshold, precision, recall, f1, hits)


def band_grid(found: Candidates) -> list[BandPoint]:
    points: list[BandPoint] = []
    for low in LOWS:
        highs = [h for h in LOWS if h >= low] + [1.01]  # high == low: cosine alone
        for high in highs:
            for threshold in PROBABILITIES:
                points.append(measure(found, low, high, threshold))
    return points


def choose_band(
    found: Candidates, target_precision: float, min_recall: float = 0.5
) -> tuple[BandPoint, bool]:
    """The band with the most recall at `target_precision` (ties: the one asking the verifier
    least, i.e. the narrowest); when none reaches it, the most precise keeping `min_recall`
    (else best F1). Returns the point and whether the target was reached."""
    grid = band_grid(found)
    # A precision measured on a handful of hits says little: a band counts as reaching the
    # target only with MIN_HITS hits or more.
    reaching = [p for p in grid if p.precision >= target_precision and p.hits >= MIN_HITS]
    if reaching:
        return max(reaching, key=lambda p: (p.recall, -(p.high - p.low), p.precision)), True
    keeping = [p for p in grid if p.recall >= min_recall and p.hits > 0]
    if keeping:
        return max(keeping, key=lambda p: (p.precision, p.recall)), False
    return max(grid, key=lambda p: p.f1), False


def cosine_curve(found: Candidates) -> list[BandPoint]:
    """Cosine alone (no verifier): the band's low edge is the threshold, nothing is asked."""
    return [measure(found, t, t, 2.0) for t in LOWS]
