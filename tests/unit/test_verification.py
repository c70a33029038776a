"""The verifier's rule, in the cache server (band in force, verdicts, failure) and in training
(the same rule measured on candidates, and the band chosen for a target precision)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from cache_server.cross_encoder_band import NEVER, Verifier, VerifierSettings
from cache_server.embedder_client import EmbedderModel, EmbedderUnavailableError, VerifierModel
from embedder.training.verified import Candidates, choose_band, measure


class FakeScorer:
    def __init__(self, probabilities: dict[str, float], fail: bool = False) -> None:
        self.probabilities = probabilities
        self.fail = fail
        self.asked: list[list[tuple[str, str]]] = []

    async def score(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        self.asked.append(list(pairs))
        if self.fail:
            raise EmbedderUnavailableError("embedder unavailable")
        return [self.probabilities[candidate] for _, candidate in pairs]


def model(band: tuple[float, float] | None = (0.7, 0.9), sha: str = "abc") -> EmbedderModel:
    verifier = VerifierModel(
        model_id="verifier",
        threshold=0.6,
        band_low=band[0] if band else None,
        band_high=band[1] if band else None,
        band_embedder_sha256="abc",
    )
    return EmbedderModel("m", 384, False, onnx_sha256=sha, verifier=verifier)


def test_the_band_comes_from_the_operator_then_the_calibration_then_the_default() -> None:
    scorer = FakeScorer({})
    calibrated = Verifier(VerifierSettings(), scorer).band(model(), 0.85)
    assert calibrated is not None
    assert (calibrated.low, calibrated.high, calibrated.threshold, calibrated.source) == (
        0.7,
        0.9,
        0.6,
        "calibrated",
    )
    operator = Verifier(VerifierSettings(band_low=0.6, threshold=0.8), scorer).band(model(), 0.85)
    assert operator is not None
    assert (operator.low, operator.high, operator.threshold, operator.source) == (
        0.6,
        0.9,
        0.8,
        "operator",
    )
    default = Verifier(VerifierSettings(), scorer).band(model(band=None), 0.85)
    assert default is not None
    assert (default.low, default.high, default.source) == (0.85, NEVER, "default")
    assert Verifier(VerifierSettings(mode="off"), scorer).band(model(), 0.85) is None
    no_verifier = EmbedderModel("m", 384, False)
    assert Verifier(VerifierSettings(), scorer).band(no_verifier, 0.85) is None


def test_a_requests_threshold_is_the_low_edge() -> None:
    band = Verifier(VerifierSettings(), FakeScorer({})).band(model(), 0.85)
    assert band is not None
    assert (band.for_request(0.5).low, band.for_request(0.5).high) == (0.5, 0.9)
    assert (band.for_request(0.95).low, band.for_request(0.95).high) == (0.95, 0.95)
    assert band.for_request(None) is band


async def test_only_grey_zone_candidates_are_asked_and_in_one_call() -> None:
    scorer = FakeScorer({"grey right": 0.9, "grey wrong": 0.2})
    verifier = Verifier(VerifierSettings(), scorer)
    band = verifier.band(model(), 0.85)
    assert band is not None
    verdict = await verifier.keep(
        "asked", [("sure", 0.95), ("grey wrong", 0.8), ("grey right", 0.75)], band, k=3
    )
    assert verdict == [True, False, True]
    assert scorer.asked == [[("asked", "grey wrong"), ("asked", "grey right")]]


async def test_the_verifier_is_not_asked_when_the_nearest_need_no_asking() -> None:
    scorer = FakeScorer({"grey": 0.9})
    verifier = Verifier(VerifierSettings(), scorer)
    band = verifier.band(model(), 0.85)
    assert band is not None
    assert await verifier.keep("asked", [("sure", 0.95), ("grey", 0.8)], band, k=1) == [
        True,
        False,
    ]
    assert scorer.asked == []
    assert await verifier.keep("asked", [("sure", 0.95), ("grey", 0.8)], band, k=2) == [True, True]
    assert scorer.asked == [[("asked", "grey")]]


async def test_an_unreachable_verifier_serves_no_grey_zone_candidate() -> None:
    scorer = FakeScorer({}, fail=True)
    verifier = Verifier(VerifierSettings(), scorer)
    band = verifier.band(model(), 0.85)
    assert band is not None
    assert await verifier.keep("asked", [("sure", 0.95), ("grey", 0.8)], band) == [True, False]


def candidates() -> Candidates:
    # Three queries, two candidates each. Query 0: right candidate first, in the grey zone;
    # query 1: a wrong candidate first, in the grey zone, the right one second; query 2: a
    # label-0 pair whose nearest candidate is close (any hit is wrong).
    similarity = np.array([[0.80, 0.6], [0.82, 0.81], [0.88, 0.5]], dtype=np.float32)
    probability = np.array([[0.9, 0.1], [0.1, 0.95], [0.3, 0.1]], dtype=np.float32)
    right = np.array([[True, False], [False, True], [False, False]])
    return Candidates(similarity, probability, right, positives=2, asked=[])


def test_the_rule_serves_the_first_candidate_that_passes() -> None:
    found = candidates()
    cosine = measure(found, 0.8, 0.8, 2.0)  # cosine alone at 0.8: all three hit, one right
    assert cosine.hits == 3 and cosine.precision == pytest.approx(1 / 3)
    verified = measure(found, 0.8, 0.9, 0.5)  # the verifier rejects both wrong ones
    assert (verified.hits, verified.precision, verified.recall) == (2, 1.0, 1.0)


def test_the_band_chosen_reaches_the_target_with_the_most_recall() -> None:
    few = candidates()
    many = Candidates(
        np.tile(few.similarity, (10, 1)),
        np.tile(few.probability, (10, 1)),
        np.tile(few.right, (10, 1)),
        positives=20,
        asked=[],
    )
    chosen, reached = choose_band(many, target_precision=0.9)
    assert reached and chosen.precision >= 0.9 and chosen.recall == 1.0
    # Two hits are too few to say a band reaches 0.9: the fallback is used, and says so.
    _, reached = choose_band(few, target_precision=0.9)
    assert not reached
