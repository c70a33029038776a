"""How likely a cached answer is wrong at a given similarity, and which candidates to serve.

One Bayesian model in three levels, per similarity band (BAND wide):

1. the calibration: the logistic curve P(right | s) fitted offline to labelled questions for
   this embedding model (`make calibrate`, shipped in its manifest; `Calibrated`), or an
   uninformed one when the model has none;
2. the cache: that curve shifted by one unknown amount for the whole cache (SHIFT_SD a priori:
   traffic where near questions differ in meaning more often, or less, than in the
   calibration), plus a deviation per band (BAND_SD a priori: where the logistic shape is
   wrong; on QQP, P(wrong) stays near 10% up to similarity 1.0). Every observation of the cache
   (its pool: a similarity and whether the candidate's answer was right) informs the shift
   (a Gaussian on the logit, by the Laplace approximation); each band is then a Beta belief
   over P(wrong) with the shifted curve's mean and spread as its prior, and its own
   observations counted, made monotone (P(wrong) never grows with similarity);
3. an entry: its band's Beta belief, weighing at most ENTRY_WEIGHT observations (entries
   differ), plus the entry's own observations: one judged right for a farther question
   (lower similarity, less ENTRY_MARGIN) counts as right at this one, one judged wrong for a
   nearer question as wrong.

The shift is shared: a few dozen observations anywhere tell a cache that its traffic is harder
than the calibration's, before any has been seen in the band that would have been served; the
bands' counts are exact where a Gaussian on the logit would be sure of nothing after 40 right
answers in a row.

The rule. Serving the candidates least likely to be wrong first maximises hits for a given
expected number of wrong ones (the fractional knapsack), so the rule is a level on P(wrong):
a cache serves a candidate whose P(wrong) is at most the level lambda. Lambda is chosen on the
cache's recent requests: bands are taken in order of P(wrong) while the expected number of
wrong hits plus `z` standard deviations of it (from the bands' own uncertainty) stays within
delta of the hits taken (`hits`) or of all requests, a request not served counting as right
(`requests`, vCache's accounting). See docs/verified.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Literal

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
Accounting = Literal["hits", "requests"]
ACCOUNTINGS: tuple[Accounting, ...] = ("hits", "requests")

BAND = 0.02
BANDS = round(1.0 / BAND)
CENTRES: FloatArray = (np.arange(BANDS, dtype=np.float64) + 0.5) * BAND
CENTER = 0.85
WIDTH = 0.1
# A priori standard deviations, in logit units.
SHIFT_SD = 0.75  # of the whole cache's curve from the calibrated one
BAND_SD = 0.5  # of one band from the cache's shifted curve
# Without a calibration: a weak curve (right more often as similarity grows), with wide
# shift and band deviations.
UNINFORMED = (0.0, 2.0)
UNINFORMED_SD = 2.5
ENTRY_MARGIN = 0.02  # an entry's observation this far on the other side still counts
# A band's prior weighs as many observations as its spread says, within these.
MIN_WEIGHT = 2.0
MAX_WEIGHT = 64.0
# How much its band speaks for one entry, in observations: its own evidence outweighs the
# band's after ENTRY_WEIGHT observations.
ENTRY_WEIGHT = 8.0
NEWTON_STEPS = 30
_PROBIT = math.pi / 8.0
_NORMAL = NormalDist()


@dataclass(frozen=True)
class Calibrated:
    """The offline fit: P(right | s) = sigmoid(w0 + w1 (s - CENTER) / WIDTH), from
    `observations` labelled candidates."""

    w0: float
    w1: float
    observations: int

    def logit(self, similarity: FloatArray) -> FloatArray:
        return self.w0 + self.w1 * (similarity - CENTER) / WIDTH


def fit_logistic(similarities: FloatArray, labels: FloatArray) -> Calibrated:
    """Maximum likelihood (with a weak Gaussian prior, sd 10): the calibration's curve."""
    x = np.column_stack([np.ones_like(similarities), (similarities - CENTER) / WIDTH])
    precision = np.eye(2) / 100.0
    w = np.zeros(2)
    for _ in range(NEWTON_STEPS):
        p = _sigmoid(x @ w)
        gradient = x.T @ (labels - p) - precision @ w
        hessian = (x * (p * (1.0 - p))[:, None]).T @ x + precision
        step = np.linalg.solve(hessian, gradient)
        w = w + step
        if float(np.max(np.abs(step))) < 1e-9:
            break
    return Calibrated(float(w[0]), float(w[1]), int(similarities.shape[0]))


@dataclass(frozen=True)
class Belief:
    """Per band, a Beta belief over P(wrong): pseudo-counts of wrong and right (the prior's
    weight plus the band's observations), and the cache's shift from the calibration."""

    wrong: FloatArray
    right: FloatArray
    shift: float
    shift_variance: float
    observations: int
    # Per band: the weight of the prior in observations, and the cache's own observations.
    prior_weight: FloatArray
    observed: FloatArray

    @property
    def p_wrong(self) -> FloatArray:
        return self.wrong / (self.wrong + self.right)

    @property
    def p_wrong_variance(self) -> FloatArray:
        n = self.wrong + self.right
        p = self.wrong / n
        return p * (1.0 - p) / (n + 1.0)

    def at(self, similarity: float) -> tuple[float, float]:
        """(P(wrong), weight in observations) of the band of `similarity`."""
        band = band_of(similarity)
        n = float(self.wrong[band] + self.right[band])
        return float(self.wrong[band]) / n, n

    def unproven(self, similarity: float) -> float:
        """How much of the band's belief is still the prior's (1: all of it, no observation
        of this cache; 0.5: as much evidence of its own as the prior weighs)."""
        band = band_of(similarity)
        prior = float(self.prior_weight[band])
        return prior / (prior + float(self.observed[band]))

    def serving_threshold(self, level: float) -> float | None:
        """The lowest similarity from which every band has P(wrong) <= level (None: none)."""
        served = self.p_wrong <= level
        if not served[-1]:
            return None
        unserved = np.flatnonzero(~served)
        return (int(unserved[-1]) + 1) * BAND if unserved.size else 0.0


def band_of(similarity: float) -> int:
    return min(BANDS - 1, max(0, int(similarity / BAND)))


def bands_of(similarities: FloatArray) -> IntArray:
    return np.clip((similarities / BAND).astype(np.int64), 0, BANDS - 1)


def cache_belief(
    calibrated: Calibrated | None, similarities: FloatArray, labels: FloatArray
) -> Belief:
    """The cache's belief after its pooled observations (labels 1.0: right)."""
    curve = calibrated or Calibrated(UNINFORMED[0], UNINFORMED[1], 0)
    shift_prior = (SHIFT_SD if calibrated else UNINFORMED_SD) ** 2
    band_prior = (BAND_SD if calibrated else UNINFORMED_SD) ** 2
    # The shift, from every observation (the bands' deviations averaged out).
    everyone = np.zeros(similarities.shape[0], np.int64)
    shift, shift_variance = _newton(
        np.zeros(1), np.full(1, shift_prior), curve.logit(similarities), labels, everyone
    )
    # Each band's prior: the shifted curve, as a Beta of the same mean and spread.
    mean = curve.logit(CENTRES) + shift[0]
    variance = shift_variance[0] + band_prior
    p_right = _sigmoid(mean / np.sqrt(1.0 + _PROBIT * variance))
    spread = p_right * (1.0 - p_right)
    weight = np.clip(1.0 / (spread * variance) - 1.0, MIN_WEIGHT, MAX_WEIGHT)
    # Then its own observations, counted.
    bands = bands_of(similarities)
    observed = np.bincount(bands, minlength=BANDS).astype(np.float64)
    wrong = weight * (1.0 - p_right) + np.bincount(bands, weights=1.0 - labels, minlength=BANDS)
    right = weight * p_right + np.bincount(bands, weights=labels, minlength=BANDS)
    wrong, right = _monotone(wrong, right)
    return Belief(
        wrong,
        right,
        float(shift[0]),
        float(shift_variance[0]),
        int(labels.shape[0]),
        weight,
        observed,
    )


def _monotone(wrong: FloatArray, right: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Pool adjacent violators: where a higher band is more often wrong than the one below,
    the two share their pooled rate (P(wrong) never grows with similarity); each band keeps
    its own weight."""
    blocks: list[tuple[float, float, int]] = []  # (wrong, right, first band)
    for band in range(BANDS):
        w, r, first = float(wrong[band]), float(right[band]), band
        while blocks and w / (w + r) > blocks[-1][0] / (blocks[-1][0] + blocks[-1][1]):
            pw, pr, first = blocks.pop()
            w, r = w + pw, r + pr
        blocks.append((w, r, first))
    out_wrong = np.empty(BANDS)
    out_right = np.empty(BANDS)
    ends = [first for _, _, first in blocks[1:]] + [BANDS]
    for (w, r, first), end in zip(blocks, ends, strict=True):
        rate = w / (w + r)
        weight = wrong[first:end] + right[first:end]
        out_wrong[first:end] = rate * weight
        out_right[first:end] = (1.0 - rate) * weight
    return out_wrong, out_right


def _newton(
    prior_mean: FloatArray,
    prior_variance: FloatArray,
    offsets: FloatArray,
    labels: FloatArray,
    groups: IntArray,
) -> tuple[FloatArray, FloatArray]:
    """For each group g, the Laplace posterior of theta_g ~ N(prior_mean, prior_variance) with
    observations y ~ Bernoulli(sigmoid(offset + theta_g)): (mean, variance) per group."""
    theta = prior_mean.copy()
    size = prior_mean.shape[0]
    for _ in range(NEWTON_STEPS):
        p = _sigmoid(offsets + theta[groups])
        gradient = (
            np.bincount(groups, weights=labels - p, minlength=size)
            - (theta - prior_mean) / prior_variance
        )
        curvature = (
            np.bincount(groups, weights=p * (1.0 - p), minlength=size) + 1.0 / prior_variance
        )
        step = gradient / curvature
        theta = theta + step
        if float(np.max(np.abs(step))) < 1e-7:
            break
    p = _sigmoid(offsets + theta[groups])
    curvature = np.bincount(groups, weights=p * (1.0 - p), minlength=size) + 1.0 / prior_variance
    return theta, 1.0 / curvature


def entry_belief(
    band: tuple[float, float], similarity: float, similarities: FloatArray, labels: FloatArray
) -> tuple[float, float]:
    """(P(wrong), weight) for one entry at `similarity`: its band's belief, held with the
    weight of at most ENTRY_WEIGHT observations (entries differ), updated with the entry's
    own observations that speak for this similarity: right ones at or below it plus
    ENTRY_MARGIN (right for a farther question), wrong ones at or above it less ENTRY_MARGIN."""
    p, weight = band
    held = min(weight, ENTRY_WEIGHT)
    right = float(np.count_nonzero((labels > 0.5) & (similarities <= similarity + ENTRY_MARGIN)))
    wrong = float(np.count_nonzero((labels < 0.5) & (similarities >= similarity - ENTRY_MARGIN)))
    n = held + right + wrong
    return (held * p + wrong) / n, n


def sd(p: float, weight: float) -> float:
    """The standard deviation of a Beta belief of mean `p` weighing `weight` observations."""
    return math.sqrt(max(p * (1.0 - p), 1e-9) / (weight + 1.0))


def chance_above(p: float, weight: float, level: float) -> float:
    """The probability that the true P(wrong) exceeds `level`, under a Beta belief of mean `p`
    and `weight` observations (normal approximation: enough to decide how often to look)."""
    return 1.0 - _NORMAL.cdf((level - p) / sd(p, weight))


def serving_level(
    belief: Belief,
    counts: FloatArray,
    requests: int,
    delta: float,
    accounting: Accounting,
    z: float,
) -> float:
    """The level lambda: the P(wrong) of the last band taken, in order of P(wrong), while the
    expected wrong hits of the bands taken (their candidates per band in `counts`) plus `z`
    standard deviations stay within `delta` of the hits taken (`hits`) or of `requests`
    (`requests`). -1.0 when not even the best band fits: nothing is served."""
    p = belief.p_wrong
    variance = belief.p_wrong_variance
    expected = 0.0
    spread = 0.0
    taken = 0.0
    levels = [-1.0]
    for band in np.argsort(p, kind="stable"):
        c = float(counts[band])
        if c == 0.0:
            continue
        expected += c * float(p[band])
        spread += c * c * float(variance[band])
        taken += c
        allowed = delta * (taken if accounting == "hits" else max(float(requests), taken))
        if expected + z * math.sqrt(spread) > allowed:
            # Bands of one P(wrong) (pooled by monotony) are served together or not at all.
            return max(level for level in levels if level < p[band])
        levels.append(float(p[band]))
    return levels[-1]


def z_for(confidence: float) -> float:
    """The one-sided normal quantile for a confidence level (0.95 -> 1.645)."""
    return _NORMAL.inv_cdf(confidence)


def _sigmoid(value: FloatArray) -> FloatArray:
    return 1.0 / (1.0 + np.exp(-np.clip(value, -700.0, 700.0)))
