"""vCache, re-implemented in process as a baseline for bench.verified_bench.

After "vCache: Verified Semantic Prompt Caching" (Schroeder et al., arXiv 2502.03771) and its
reference implementation (github.com/vcache-project/vCache, `VerifiedDecisionPolicy`).

Algorithm. Every cached entry keeps observations (s, c): the similarity s of a prompt that
had this entry as its nearest neighbour, and whether the entry's answer was right for it
(c = 1). A new entry starts with two pseudo-observations, (0, 0) and (1, 1). For a request
with nearest neighbour e at similarity s:

1. e has fewer than 6 observations (4 real ones): explore.
2. Fit P(right | s) = L(s; t, gamma) = 1 / (1 + exp(-gamma (s - t))) to e's observations by
   maximum likelihood (logistic regression of c on s: t^, gamma^); Var(t^) by the delta method.
3. For ε on a grid of 50 in (0, 1): t'_ε = clip(t^ + z_{1-ε} sd(t^), 0, 1) bounds t from
   above with confidence 1 - ε, so alpha_ε = (1 - ε) L(s; t'_ε, gamma^) bounds P(right)
   from below, and τ = min_ε [1 - δ / (1 - alpha_ε)]. Explore with probability τ, else serve
   e's answer: P(wrong) <= (1 - τ)(1 - alpha) = δ. The promise is over *all* requests (an
   exploration is right), not over served hits; even an entry known wrong is served for a
   share of about δ of its requests.
4. Explore: the LLM answers (the user gets that answer), the judge compares it with e's
   answer, (s, right?) is added to e's observations, and only when the answer differs is the
   prompt inserted as a new entry. A served hit teaches nothing. An empty cache: the LLM
   answers and the prompt is inserted (the only plain miss: vCache has no similarity floor).

Differences from the reference implementation:
- An exact repeat of a stored prompt (same text) is served directly, as our cache does
  (`Outcome.similarity` 1.0); the reference would treat it like any neighbour at s ≈ 1.
- The fit is Newton's method (numpy) instead of scikit-learn's L-BFGS. When the observations
  are perfectly separated (every right one above every wrong one, which the pseudo-
  observations make common) the maximum-likelihood estimate does not exist: t^ is then the
  middle of the gap and gamma^ puts the nearest observations at logit ±16, about where the
  reference's solver stops, and Var(t^) is the reference's empirical table by the number of
  observations (`SEPARATED_VAR_T`, values copied as data).
- The judge defaults to equality after normalising case, spaces and a final period (the
  reference's string judge also drops quotes and brackets).
- Similarities are rounded to 3 decimals as in the reference; t^ and gamma^ are not rounded.
- No eviction, no concurrency (the reference judges explorations in background threads).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np
import numpy.typing as npt

MIN_OBSERVATIONS = 6  # including the two pseudo-observations
EPSILONS = np.linspace(1e-6, 1 - 1e-6, 50)
Z_UPPER = np.array([NormalDist().inv_cdf(1 - e) for e in EPSILONS])  # z_{1-ε}
SEPARATED_LOGIT = 16.0
# Var(t^) for perfectly separated observations, by number of observations from 6 on (the
# reference implementation's empirical table; beyond its end, its last value).
SEPARATED_VAR_T = (
    0.035445, 0.028285, 0.026436, 0.021349, 0.019371, 0.012615, 0.011433, 0.010228,
    0.009963, 0.009253, 0.011674, 0.013015, 0.010897, 0.011841, 0.013081, 0.010585,
    0.014255, 0.012058, 0.013002, 0.011715, 0.00839, 0.008839, 0.010628, 0.009899,
    0.008033, 0.00457, 0.007335, 0.008932, 0.00729, 0.007445, 0.00761, 0.011423,
    0.011233, 0.006783, 0.005233, 0.00872, 0.010005, 0.01199, 0.00977, 0.01891,
    0.01513, 0.02109, 0.01531,
)  # fmt: skip

Floats = npt.NDArray[np.float64]


@dataclass
class Outcome:
    served: bool  # the cached response was returned (a semantic or exact hit)
    response: str  # what the user got
    explored: bool  # the LLM was asked because of exploration (not a plain miss)
    llm_called: bool  # the upstream LLM was called for this request
    similarity: float | None  # to the nearest neighbour (None: the cache was empty)


@dataclass
class _Entry:
    prompt: str
    response: str
    similarities: list[float] = field(default_factory=lambda: [0.0, 1.0])
    labels: list[int] = field(default_factory=lambda: [0, 1])


def same_answer(a: str, b: str) -> bool:
    """The default judge: equal once case, outer spaces and a final period are dropped."""
    return a.strip().rstrip(".").lower() == b.strip().rstrip(".").lower()


def _sigmoid(z: Floats) -> Floats:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # no overflow


def fit(similarities: Floats, labels: Floats) -> tuple[float, float, float] | None:
    """(t^, gamma^, Var(t^)) of L(s; t, gamma) fitted to the observations; None: it failed."""
    right, wrong = similarities[labels == 1], similarities[labels == 0]
    n = len(similarities)
    if right.min() > wrong.max():  # separated: no finite maximum-likelihood estimate
        low, high = float(wrong.max()), float(right.min())
        var_t = SEPARATED_VAR_T[min(n - MIN_OBSERVATIONS, len(SEPARATED_VAR_T) - 1)]
        return (low + high) / 2, SEPARATED_LOGIT / ((high - low) / 2), var_t
    x = np.column_stack([np.ones(n), similarities])

    def log_likelihood(beta: Floats) -> float:
        z = x @ beta
        return float(-np.sum(labels * np.logaddexp(0, -z) + (1 - labels) * np.logaddexp(0, z)))

    beta = np.zeros(2)
    for _ in range(100):  # Newton's method with step halving
        p = _sigmoid(x @ beta)
        hessian = x.T @ ((p * (1 - p))[:, None] * x)
        try:
            step = np.linalg.solve(hessian, x.T @ (labels - p))
        except np.linalg.LinAlgError:
            return None
        before = log_likelihood(beta)
        for _ in range(30):
            if log_likelihood(beta + step) >= before:
                break
            step = step / 2
        beta = beta + step
        if np.max(np.abs(step)) < 1e-10:
            break
    intercept, gamma = float(beta[0]), max(float(beta[1]), 1e-6)
    p = _sigmoid(x @ beta)
    try:
        covariance = np.linalg.inv(x.T @ ((p * (1 - p))[:, None] * x))
    except np.linalg.LinAlgError:
        return None
    gradient = np.array([-1.0 / gamma, intercept / gamma**2])  # of t = -intercept / gamma
    var_t = max(0.0, float(gradient @ covariance @ gradient))
    if not all(np.isfinite([intercept, gamma, var_t])):
        return None
    return float(np.clip(-intercept / gamma, 0.0, 1.0)), gamma, var_t


def exploration_probability(
    similarity: float, similarities: Floats, labels: Floats, delta: float
) -> float:
    """τ: the probability of exploring a neighbour with these observations at `similarity`."""
    if len(similarities) < MIN_OBSERVATIONS:
        return 1.0
    fitted = fit(similarities, labels)
    if fitted is None:
        return 1.0
    t_hat, gamma, var_t = fitted
    t_prime = np.clip(t_hat + Z_UPPER * np.sqrt(var_t), 0.0, 1.0)
    alpha = (1 - EPSILONS) * _sigmoid(gamma * (similarity - t_prime))
    return float(np.clip(np.min(1 - delta / (1 - alpha)), 0.0, 1.0))


class VCache:
    """vCache at max error rate `delta` (over all requests), deciding with a seeded RNG.

    Vectors are L2-normalised (cosine = dot product), searched by brute force. An exact
    repeat of a stored prompt is served directly.
    """

    def __init__(
        self,
        delta: float,
        *,
        seed: int = 0,
        dimension: int = 384,
        judge: Callable[[str, str], bool] = same_answer,
    ) -> None:
        if not 0 < delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {delta}")
        self.delta = delta
        self.judge = judge
        self._rng = np.random.default_rng(seed)
        self._vectors = np.zeros((1024, dimension), dtype=np.float32)
        self._entries: list[_Entry] = []
        self._by_prompt: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def query(self, prompt: str, vector: npt.ArrayLike, llm: Callable[[str], str]) -> Outcome:
        known = self._by_prompt.get(prompt)
        if known is not None:
            return Outcome(True, self._entries[known].response, False, False, 1.0)
        v = np.asarray(vector, dtype=np.float32).reshape(-1)
        if not self._entries:
            response = llm(prompt)
            self._insert(prompt, v, response)
            return Outcome(False, response, False, True, None)
        # einsum, not `@`: a multi-threaded BLAS gemv costs ~8 ms here on 2 busy cores.
        scores = np.einsum("ij,j->i", self._vectors[: len(self._entries)], v)
        nearest = int(np.argmax(scores))
        similarity = round(float(scores[nearest]), 3)
        entry = self._entries[nearest]
        tau = exploration_probability(
            similarity,
            np.array(entry.similarities, dtype=np.float64),
            np.array(entry.labels, dtype=np.float64),
            self.delta,
        )
        if self._rng.random() >= tau:
            return Outcome(True, entry.response, False, False, similarity)
        response = llm(prompt)
        right = self.judge(response, entry.response)
        entry.similarities.append(similarity)
        entry.labels.append(int(right))
        if not right:
            self._insert(prompt, v, response)
        return Outcome(False, response, True, True, similarity)

    def _insert(self, prompt: str, vector: npt.NDArray[np.float32], response: str) -> None:
        n = len(self._entries)
        if n == len(self._vectors):
            self._vectors = np.concatenate([self._vectors, np.zeros_like(self._vectors)])
        self._vectors[n] = vector
        self._entries.append(_Entry(prompt, response))
        self._by_prompt[prompt] = n
