"""The verified policy's statistics: evidence records, the calibration's fit, the cache's and
an entry's beliefs, the serving level, and which policy a request runs under."""

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

Z = model.z_for(0.9)  # the default confidence


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


def test_the_calibration_fit_recovers_the_true_curve() -> None:
    similarities, labels = evidence.decode(_observations(8000, t=0.88, steepness=60.0))
    curve = model.fit_logistic(similarities, labels)
    # sigmoid(60 (s - 0.88)) = sigmoid(w0 + w1 (s - 0.85) / 0.1): w1 = 6, w0 = -1.8.
    assert curve.w1 == pytest.approx(6.0, abs=0.6)
    assert curve.w0 == pytest.approx(-1.8, abs=0.25)
    assert curve.observations == 8000


CALIBRATED = model.Calibrated(w0=1.6, w1=1.6, observations=1500)  # about what QQP gives
EMPTY = np.array([], dtype=np.float64)


def _one(similarity: float) -> np.ndarray:
    counts = np.zeros(model.BANDS)
    counts[model.band_of(similarity)] = 1.0
    return counts


def test_a_fresh_cache_serves_near_duplicates_from_the_calibrated_prior_and_nothing_without() -> (
    None
):
    fresh = model.cache_belief(CALIBRATED, EMPTY, EMPTY)
    level = model.serving_level(fresh, _one(0.985), 1, 0.10, "hits", Z)
    assert 0.0 <= fresh.at(0.985)[0] <= level  # served at once
    # A far candidate is not, and a strict bound serves less.
    assert model.serving_level(fresh, _one(0.80), 1, 0.10, "hits", Z) < fresh.at(0.80)[0]
    assert model.serving_level(fresh, _one(0.985), 1, 0.001, "hits", Z) == -1.0

    blind = model.cache_belief(None, EMPTY, EMPTY)
    assert model.serving_level(blind, _one(0.985), 1, 0.10, "hits", Z) == -1.0


def test_wrong_answers_anywhere_make_the_whole_cache_stricter_through_the_shift() -> None:
    """Traffic harder than the calibration's: wrong at 0.80-0.90, where the prior expected
    mostly right. The bands above, never observed, are believed more often wrong too."""
    fresh = model.cache_belief(CALIBRATED, EMPTY, EMPTY)
    rng = np.random.default_rng(1)
    similarities = rng.uniform(0.80, 0.90, 60)
    labels = (rng.random(60) < 0.2).astype(np.float64)  # 80% wrong
    harder = model.cache_belief(CALIBRATED, similarities, labels)
    assert harder.shift < -1.0
    assert harder.at(0.97)[0] > 2 * fresh.at(0.97)[0]
    easier = model.cache_belief(CALIBRATED, similarities, np.ones(60))
    assert easier.shift > 0.0 and easier.at(0.97)[0] < fresh.at(0.97)[0]


def test_a_band_is_never_believed_more_often_wrong_than_the_band_below() -> None:
    similarities = np.array([0.905] * 30 + [0.925] * 30)
    labels = np.array([1.0] * 30 + [0.0] * 15 + [1.0] * 15)  # 0.92 worse than 0.90 here
    belief = model.cache_belief(CALIBRATED, similarities, labels)
    p = belief.p_wrong
    assert np.all(np.diff(p) <= 1e-12)
    assert belief.at(0.905)[0] == pytest.approx(belief.at(0.925)[0])  # pooled


def test_an_entry_wrong_where_its_band_serves_is_not_served_and_one_right_farther_is() -> None:
    belief = model.cache_belief(CALIBRATED, EMPTY, EMPTY)
    band = belief.at(0.97)
    wrong = evidence.decode(b"".join(evidence.record(0.96 + i / 1000, False) for i in range(3)))
    p_wrong, _ = model.entry_belief(band, 0.97, *wrong)
    assert p_wrong > 0.2 > band[0]
    right = evidence.decode(b"".join(evidence.record(0.80 + i / 100, True) for i in range(8)))
    farther, weight = model.entry_belief(belief.at(0.86), 0.86, *right)
    assert farther < 0.6 * belief.at(0.86)[0] and weight > belief.at(0.86)[1] / 2
    # An answer right for a nearer question says nothing about a farther one.
    near = evidence.decode(b"".join(evidence.record(0.99, True) for _ in range(8)))
    assert model.entry_belief(belief.at(0.86), 0.86, *near)[0] == pytest.approx(belief.at(0.86)[0])


def test_the_level_keeps_the_expected_error_of_hits_or_of_requests_within_delta() -> None:
    belief = model.cache_belief(CALIBRATED, EMPTY, EMPTY)
    counts = np.zeros(model.BANDS)
    for s, n in ((0.99, 40), (0.95, 40), (0.90, 40), (0.85, 40), (0.80, 40)):
        counts[model.band_of(s)] = n
    hits = model.serving_level(belief, counts, 1000, 0.05, "hits", 0.0)
    served = belief.p_wrong <= hits
    expected = float((counts * belief.p_wrong)[served].sum() / counts[served].sum())
    assert expected <= 0.05
    # One band more would break it.
    nxt = float(np.min(belief.p_wrong[(~served) & (counts > 0)]))
    more = belief.p_wrong <= nxt
    assert float((counts * belief.p_wrong)[more].sum() / counts[more].sum()) > 0.05
    # Over all requests (most of them no candidate) the same bound serves more; the margin
    # for the bands' uncertainty serves less.
    requests = model.serving_level(belief, counts, 1000, 0.05, "requests", 0.0)
    assert requests > hits
    assert model.serving_level(belief, counts, 1000, 0.05, "hits", Z) <= hits


def test_the_request_overrides_the_cache_which_overrides_the_server() -> None:
    settings = VerifiedSettings(default_policy="threshold", max_error_rate=0.02)
    assert resolve(settings, None, None, None) == HitPolicy("threshold", 0.02, "server", "hits")
    cache = HitPolicy("verified", 0.05, "cache", "requests")
    assert resolve(settings, cache, None, None) == cache
    assert resolve(settings, cache, None, 0.01) == HitPolicy("verified", 0.01, "cache", "requests")
    assert resolve(settings, cache, "threshold", None, "hits") == HitPolicy(
        "threshold", 0.05, "request", "hits"
    )
    assert resolve(settings, None, "verified", None) == HitPolicy(
        "verified", 0.02, "request", "hits"
    )
    # A cache that named no accounting follows the server's.
    unnamed = HitPolicy("verified", 0.05, "cache")
    assert resolve(settings, unnamed, None, None).accounting == "hits"
    assert decode(encode(cache)) == cache
    assert decode(encode(unnamed)) == unnamed
    assert decode('{"policy": "verified", "max_error_rate": 0.05}') == unnamed  # older rows
    assert decode("not json") is None


def test_an_unknown_accounting_is_refused_by_name() -> None:
    with pytest.raises(InvalidInputError, match="hits, requests"):
        resolve(VerifiedSettings(), None, "verified", None, "served")


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
    belief = model.cache_belief(CALIBRATED, EMPTY, EMPTY)
    assert model.serving_level(belief, _one(0.999), 1, 1e-300, "hits", Z) == -1.0
    assert belief.serving_threshold(1e-300) is None
    assert belief.serving_threshold(0.5) is not None
