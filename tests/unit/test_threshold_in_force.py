"""Which default threshold a cache uses, and says it uses: the operator's, else the one
calibrated for the embedder's model, else 0.85."""

from __future__ import annotations

from dataclasses import replace

from cache_server.cache import DEFAULT_THRESHOLD, CachePolicy
from cache_server.embedder_client import EmbedderModel
from cache_server.lookup import Strategy
from tests.unit.fakes import DIM, Parts


async def test_the_calibrated_threshold_is_the_default_unless_the_operator_set_one(
    parts: Parts,
) -> None:
    cache, embedder, _, _ = parts
    assert cache.threshold_in_force() == (DEFAULT_THRESHOLD, "default")
    embedder.model = EmbedderModel("tuned", DIM, False, calibrated_threshold=0.97)
    assert cache.threshold_in_force() == (0.97, "calibrated")
    stats = await cache.stats_of("")
    assert (stats.threshold, stats.threshold_source) == (0.97, "calibrated")
    cache.policy = replace(cache.policy, threshold=0.5)
    assert cache.threshold_in_force() == (0.5, "operator")


async def test_look_ups_use_the_threshold_in_force_and_a_request_still_wins(
    parts: Parts,
) -> None:
    cache, embedder, _, _ = parts
    await cache.set("", "How do I learn Python?", "read the tutorial")
    paraphrase = "What is the best way to learn Python?"
    assert (await cache.search("", paraphrase)).hits  # similar enough for 0.85
    # The same model, calibrated since (make calibrate): its threshold is stricter.
    embedder.model = EmbedderModel("fake", DIM, False, calibrated_threshold=0.9999)
    assert not (await cache.search("", paraphrase)).hits
    loose = await cache.search("", paraphrase, threshold=0.5)
    assert loose.hits and loose.hits[0].strategy is Strategy.SEMANTIC
    assert isinstance(cache.policy, CachePolicy)
