"""How likely a cached answer is right at a given similarity: a logistic curve per entry, and
the decision to serve it or to explore.

For one entry, P(right | similarity s) = sigmoid(w0 + w1 * x) with x = (s - CENTER) / WIDTH.
The curve is fitted by maximum a posteriori (Newton's method) to the entry's own observations,
with a Gaussian prior: the curve fitted to every observation of the cache (the pool), widened
by how much one entry may differ from the cache as a whole (ENTRY_SPREAD). A fresh entry thus
starts from what the cache has learned and its own evidence takes over as it accumulates
(vCache, arXiv 2502.03771, fits each entry alone; with one entry seeing only a handful of
requests, as in most caches, the pool is what lets anything be served early). The posterior's
covariance (Laplace approximation) gives the uncertainty.

A hit is served only when the lower confidence bound of P(right | s), at the confidence asked
for, is at least 1 - max_error_rate; otherwise the request explores: the upstream answers, the
cached answer is judged against the fresh one, and the outcome becomes one more observation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

CENTER = 0.85
WIDTH = 0.1
# The pool's own prior: weak, centred on "right more often as similarity grows".
POOL_PRIOR_MEAN = (0.0, 2.0)
POOL_PRIOR_SD = (4.0, 4.0)
# How far one entry's curve may lie from the pool's (prior standard deviation added to the
# pool's uncertainty, in logit units for w0 and per WIDTH of similarity for w1).
ENTRY_SPREAD = (1.5, 0.5)
NEWTON_STEPS = 25
GRID = np.linspace(0.0, 1.0, 1001)


@dataclass(frozen=True)
class Curve:
    """A fitted logistic curve: the mean of (w0, w1) and its covariance."""

    w0: float
    w1: float
    c00: float
    c01: float
    c11: float
    observations: int

    @property
    def covariance(self) -> FloatArray:
        return np.array([[self.c00, self.c01], [self.c01, self.c11]])

    def probability(self, similarity: float) -> float:
        return _sigmoid(self.w0 + self.w1 * _x(similarity))

    def lower_bound(self, similarity: float, z: float) -> float:
        """The one-sided lower confidence bound of P(right | similarity)."""
        x = _x(similarity)
        variance = self.c00 + 2 * x * self.c01 + x * x * self.c11
        return _sigmoid(self.w0 + self.w1 * x - z * math.sqrt(max(variance, 0.0)))

    def serving_threshold(self, max_error_rate: float, z: float) -> float | None:
        """The lowest similarity from which every higher one is served (None: none is)."""
        x = (GRID - CENTER) / WIDTH
        variance = self.c00 + 2 * x * self.c01 + x * x * self.c11
        bound = self.w0 + self.w1 * x - z * np.sqrt(np.maximum(variance, 0.0))
        # In probabilities, not logits: 1 - δ rounds to 1.0 for a δ below 1e-16 (never served).
        served = 1.0 / (1.0 + np.exp(-np.clip(bound, -700.0, 700.0))) >= 1.0 - max_error_rate
        if not served[-1]:
            return None
        unserved = np.flatnonzero(~served)
        return float(GRID[unserved[-1] + 1]) if unserved.size else 0.0

    def as_prior(self) -> tuple[FloatArray, FloatArray]:
        """(mean, precision) of the prior this curve gives one entry."""
        spread = np.diag(np.square(ENTRY_SPREAD))
        return np.array([self.w0, self.w1]), np.linalg.inv(self.covariance + spread)


def z_for(confidence: float) -> float:
    """The one-sided normal quantile for a confidence level (0.95 -> 1.645)."""
    return NormalDist().inv_cdf(confidence)


def pool_prior() -> tuple[FloatArray, FloatArray]:
    return np.array(POOL_PRIOR_MEAN), np.diag(1.0 / np.square(POOL_PRIOR_SD))


def fit(
    similarities: FloatArray,
    labels: FloatArray,
    prior: tuple[FloatArray, FloatArray],
) -> Curve:
    """The MAP curve for these observations under a Gaussian prior (mean, precision)."""
    mean, precision = prior
    x = np.column_stack([np.ones_like(similarities), (similarities - CENTER) / WIDTH])
    w = mean.astype(np.float64).copy()
    hessian = precision
    for _ in range(NEWTON_STEPS):
        p = 1.0 / (1.0 + np.exp(-(x @ w)))
        gradient = x.T @ (labels - p) - precision @ (w - mean)
        hessian = (x * (p * (1.0 - p))[:, None]).T @ x + precision
        step = np.linalg.solve(hessian, gradient)
        w = w + step
        if float(np.max(np.abs(step))) < 1e-7:
            break
    p = 1.0 / (1.0 + np.exp(-(x @ w)))
    hessian = (x * (p * (1.0 - p))[:, None]).T @ x + precision
    cov = np.linalg.inv(hessian)
    return Curve(
        float(w[0]),
        float(w[1]),
        float(cov[0, 0]),
        float(cov[0, 1]),
        float(cov[1, 1]),
        int(similarities.shape[0]),
    )


def _x(similarity: float) -> float:
    return (similarity - CENTER) / WIDTH


def _sigmoid(value: float) -> float:
    if value >= 0:
        return 1.0 / (1.0 + math.exp(-value))
    e = math.exp(value)
    return e / (1.0 + e)


# Observations this much below a similarity still count as support for serving at it (they
# are, if anything, less often right: counting them is conservative).
SUPPORT_MARGIN = 0.02


class Support:
    """What the observations themselves say, without the logistic curve: of the observations
    at or above a similarity (less SUPPORT_MARGIN), how many were right. A curve fitted to a
    handful of observations can be sure far beyond them; serving also needs the Wilson lower
    bound of this share to clear 1 - max_error_rate, in the entry's own observations or in the
    cache's pool."""

    def __init__(self, similarities: FloatArray, labels: FloatArray) -> None:
        order = np.argsort(similarities)
        self._similarities = similarities[order]
        # right_from[i]: right observations among those at index i and above.
        self._right_from = np.concatenate([np.cumsum(labels[order][::-1])[::-1], [0.0]])

    def lower_bound(self, similarity: float, z: float) -> float:
        start = int(np.searchsorted(self._similarities, similarity - SUPPORT_MARGIN))
        n = len(self._similarities) - start
        return wilson_lower(float(self._right_from[start]), n, z)


def wilson_lower(right: float, n: int, z: float) -> float:
    """The Wilson score interval's lower bound of a proportion (0 with no observation)."""
    if n == 0:
        return 0.0
    p = right / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - spread) / (1 + z * z / n)
