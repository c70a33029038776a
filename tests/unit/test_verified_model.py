"""The verified policy's statistics: evidence records, curve fits, the serve-or-explore
bound, and which policy a request runs under."""

from __future__ import annotations

import numpy as np
import pytest

from cache_server.entries import InvalidInputError
from cache_server.learned_thresholds import evidence, model
from cache_server.learned_thresholds.judge import ExactJudge, normalise
from cache_server.learned_thresholds.policy import (
    HitPolicy,
    VerifiedSettings,
    decode,
    encode,
    resolve,
)

Z = model.z_for(0.95)


def _observations(n: int, t: float, steepness: float, seed: int = 0) -> bytes:
    """n observations from a true curve P(right | s) = sigmoid(steepness * (s - t))."""
    rng = np.random.default_rng(seed)
    similarities = rng.uniform(0.6, 1.0, n)
    right = rng.random(n) < 1 / (1 + np.exp(-steepness * (similarities - t)))
    return b"".join(
        evidence.record(float(s), bool(r)) for s, r in zip(similarities, right, strict=True)
    )


def test_records_round_trip_at_the_similarity_resolution_and_stay_bounded() -> None:
    blob = (
        evidence.record(0.93217, True) + evidence.record(-0.2, False) + evidence.record(1.3, True)
    )
    similarities, labels = evidence.decode(blob)
    assert similarities == pytest.approx([0.93217, 0.0, 1.0], abs=1 / evidence.SCALE)
    assert labels.tolist() == [1.0, 0.0, 1.0]
    kept = b""
    for i in range(100):
        kept = evidence.append(kept, evidence.record(i / 100, i % 2 == 0), limit=64)
    assert evidence.count(kept) == 64
    assert evidence.decode(kept)[0][0] == pytest.approx(0.36)  # the newest 64 kept


def test_a_fit_on_much_evidence_recovers_the_true_curve() -> None:
    similarities, labels = evidence.decode(_observations(8000, t=0.88, steepness=60.0))
    curve = model.fit(similarities, labels, model.pool_prior())
    assert curve.probability(0.88) == pytest.approx(0.5, abs=0.05)
    assert curve.probability(0.95) == pytest.approx(1 / (1 + np.exp(-60 * 0.07)), abs=0.03)
    # Tight: the bound lies close to the estimate.
    assert curve.probability(0.95) - curve.lower_bound(0.95, Z) < 0.02


def test_no_evidence_serves_nothing_and_a_well_learned_pool_serves_high_similarities() -> None:
    empty = np.array([], dtype=np.float64)
    nothing = model.fit(empty, empty, model.pool_prior())
    assert nothing.serving_threshold(0.05, Z) is None
    assert nothing.lower_bound(0.99, Z) < 0.5

    similarities, labels = evidence.decode(_observations(8000, t=0.85, steepness=80.0))
    pool = model.fit(similarities, labels, model.pool_prior())
    fresh_entry = model.fit(empty, empty, pool.as_prior())
    loose = fresh_entry.serving_threshold(0.10, Z)
    strict = fresh_entry.serving_threshold(0.01, Z)
    assert loose is not None and strict is not None
    assert 0.85 < loose < strict <= 1.0  # a smaller error rate needs a higher similarity
    # A fresh entry is less sure than the pool's own curve (the entry spread).
    assert fresh_entry.lower_bound(0.95, Z) < pool.lower_bound(0.95, Z)


def test_an_entry_that_was_wrong_where_the_pool_is_sure_stops_being_served_there() -> None:
    similarities, labels = evidence.decode(_observations(8000, t=0.85, steepness=80.0))
    pool = model.fit(similarities, labels, model.pool_prior())
    empty = np.array([], dtype=np.float64)
    fresh = model.fit(empty, empty, pool.as_prior())
    assert fresh.lower_bound(0.97, Z) >= 0.95

    wrong = b"".join(evidence.record(0.96 + i / 1000, False) for i in range(6))
    s, y = evidence.decode(wrong)
    tricky = model.fit(s, y, pool.as_prior())
    assert tricky.lower_bound(0.97, Z) < 0.5

    right = b"".join(evidence.record(0.80 + i / 100, True) for i in range(12))
    s, y = evidence.decode(right)
    easy = model.fit(s, y, pool.as_prior())
    threshold = easy.serving_threshold(0.05, Z)
    fresh_threshold = fresh.serving_threshold(0.05, Z)
    assert threshold is not None and fresh_threshold is not None
    assert threshold < fresh_threshold  # served from lower similarities than a fresh entry


def test_the_request_overrides_the_cache_which_overrides_the_server() -> None:
    settings = VerifiedSettings(default_policy="threshold", max_error_rate=0.02)
    assert resolve(settings, None, None, None) == HitPolicy("threshold", 0.02, "server")
    cache = HitPolicy("verified", 0.05, "cache")
    assert resolve(settings, cache, None, None) == cache
    assert resolve(settings, cache, None, 0.01) == HitPolicy("verified", 0.01, "cache")
    assert resolve(settings, cache, "threshold", None) == HitPolicy("threshold", 0.05, "request")
    assert resolve(settings, None, "verified", None) == HitPolicy("verified", 0.02, "request")
    assert decode(encode(cache)) == cache
    assert decode("not json") is None


@pytest.mark.parametrize("rate", [0.0, -0.1, 0.51, float("nan"), float("inf")])
def test_an_error_rate_outside_the_range_is_refused_with_the_range(rate: float) -> None:
    with pytest.raises(InvalidInputError, match=r"max_error_rate must be in \(0, 0.5\]"):
        resolve(VerifiedSettings(), None, "verified", rate)


def test_an_unknown_policy_is_refused_by_name() -> None:
    with pytest.raises(InvalidInputError, match="threshold, verified"):
        resolve(VerifiedSettings(), None, "sometimes", None)


async def test_the_exact_judge_ignores_case_spacing_and_end_punctuation_only() -> None:
    judge = ExactJudge()
    assert normalise("  Paris.  ") == "paris"
    assert await judge.right("q", "The capital is  Paris.", "the capital is paris")
    assert not await judge.right("q", "The capital is Paris", "The capital is Lyon")


def test_a_vanishing_error_rate_serves_nothing_rather_than_failing() -> None:
    similarities, labels = evidence.decode(_observations(8000, t=0.85, steepness=80.0))
    pool = model.fit(similarities, labels, model.pool_prior())
    assert pool.serving_threshold(1e-300, Z) is None
    assert pool.serving_threshold(0.5, Z) is not None
