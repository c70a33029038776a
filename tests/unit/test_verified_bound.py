"""The verified policy's promise on a simulated stream, through the real engine and embedded
store: a fresh cache serves from the calibrated prior when its traffic is like the
calibration's, and keeps the bound when it is not (paraphrases there need a much higher
similarity), by learning from the candidates it explores."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from cache_server.entries import CacheEntry, entry_id
from cache_server.learned_thresholds import model
from cache_server.learned_thresholds.engine import ModelPrior, VerifiedEngine
from cache_server.learned_thresholds.judge import ExactJudge
from cache_server.learned_thresholds.policy import HitPolicy, VerifiedSettings
from cache_server.store.embedded import EmbeddedStore
from tests.unit.fakes import DIM

CALIBRATED = model.Calibrated(w0=1.64, w1=1.62, observations=1465)  # make model's, on QQP
ENTRIES = 200


World = Callable[[float], float]  # P(right | similarity)


def calibrated(similarity: float) -> float:
    """Traffic like the calibration's."""
    return 1.0 / (1.0 + math.exp(-(CALIBRATED.w0 + CALIBRATED.w1 * (similarity - 0.85) / 0.1)))


def stricter(similarity: float) -> float:
    """Traffic where paraphrases need a far higher similarity: even odds at 0.93 (where the
    calibration says 95% right), 96% right only from 0.97."""
    return 1.0 / (1.0 + math.exp(-80.0 * (similarity - 0.93)))


async def replay(
    tmp_path: Path, world: World, delta: float, requests: int, seed: int
) -> tuple[int, int, int]:
    """(served, wrong among them, first request served, or -1) over `requests` candidates
    with similarities uniform in [0.75, 1.0), each of a random stored entry."""
    store = EmbeddedStore(tmp_path / f"{world.__name__}-{seed}")
    await store.open()

    async def prior() -> ModelPrior:
        return ModelPrior("model", CALIBRATED)

    engine = VerifiedEngine(
        VerifiedSettings(default_policy="verified"),
        store,
        ExactJudge(),
        rng=random.Random(seed),
        model_prior=prior,
    )
    entries = []
    for i in range(ENTRIES):
        entry = CacheEntry("c", entry_id("c", f"q{i}", {}), f"q{i}", f"a{i}", {}, 1.0)
        vector = np.zeros(DIM, dtype=np.float32)
        vector[i % DIM] = 1.0
        await store.put(entry, vector, 10 * ENTRIES, 1.0, max_caches=10)
        entries.append(entry)
    rng = random.Random(seed + 1)
    policy = HitPolicy("verified", delta, "request", "hits")
    served = wrong = 0
    first = -1
    for n in range(requests):
        similarity = rng.uniform(0.75, 1.0)
        entry = rng.choice(entries)
        right = rng.random() < world(similarity)
        decision = await engine.decide("c", entry, similarity, policy)
        engine.note("c", f"asked {n}", similarity)
        if decision.serve:
            served += 1
            wrong += not right
            first = n if first < 0 else first
        elif decision.explore:
            await engine.learn("c", entry, similarity, right)
    await store.close()
    return served, wrong, first


@pytest.mark.parametrize("seed", [0, 1])
async def test_a_fresh_cache_serves_from_the_calibrated_prior_within_the_bound(
    tmp_path: Path, seed: int
) -> None:
    served, wrong, first = await replay(tmp_path, calibrated, delta=0.10, requests=1500, seed=seed)
    assert 0 <= first < 20  # from the first requests, before any observation of its own
    assert served > 300
    assert wrong / served <= 0.10


@pytest.mark.parametrize("seed", [0, 1])
async def test_the_bound_holds_where_the_prior_is_wrong(tmp_path: Path, seed: int) -> None:
    """A cache serving where its prior says (from about 0.92 at δ = 0.05) would serve one wrong
    answer in five here; the cache learns from what it explores, stays within δ, and still
    serves some of the near duplicates that are right."""
    delta = 0.05
    trusting = sum(1 - stricter(s) for s in np.linspace(0.92, 1.0, 81)) / 81
    assert trusting > 0.15  # the prior's own choice, in this world
    served, wrong, _ = await replay(tmp_path, stricter, delta=delta, requests=2500, seed=seed)
    assert wrong <= delta * served, (served, wrong)
    assert served >= 25, (served, wrong)  # and still serves some near duplicates
