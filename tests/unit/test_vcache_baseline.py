"""bench.vcache (the in-process vCache baseline) on synthetic vectors: it learns to serve
paraphrases, keeps exploring neighbours that are wrong, serves exact repeats, and asks the LLM
on a miss."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from bench.vcache import Outcome, VCache, exploration_probability

DIM = 384


class World:
    """Questions in `topics` groups: two of one group have cosine similarity ~`same`, two of
    different groups ~`stranger`. The LLM answers every question of a group alike."""

    def __init__(self, topics: int, *, same: float = 0.95, stranger: float = 0.6, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        basis, _ = np.linalg.qr(self.rng.standard_normal((DIM, topics + 1)))
        self.common, self.directions = basis[:, 0], basis[:, 1:].T
        self.same, self.stranger = same, stranger
        self.calls = 0

    def vector(self, topic: int) -> npt.NDArray[np.float32]:
        noise = self.rng.standard_normal(DIM)
        noise /= np.linalg.norm(noise)
        v = (
            np.sqrt(self.stranger) * self.common
            + np.sqrt(self.same - self.stranger) * self.directions[topic]
            + np.sqrt(1 - self.same) * noise
        )
        unit: npt.NDArray[np.float32] = (v / np.linalg.norm(v)).astype(np.float32)
        return unit

    def llm(self, prompt: str) -> str:
        self.calls += 1
        return answer(int(prompt.split("/")[0]))


def answer(topic: int) -> str:
    return f"answer to topic {topic}"


def test_learns_to_serve_paraphrases_within_delta() -> None:
    world, cache, delta = World(10), VCache(0.05, seed=1), 0.05
    served_late = wrong = 0
    requests = 800
    for i in range(requests):
        topic = int(world.rng.integers(10))
        outcome = cache.query(f"{topic}/{i}", world.vector(topic), world.llm)
        assert outcome.similarity is None or 0.5 < outcome.similarity < 1.0
        if outcome.served:
            wrong += outcome.response != answer(topic)
            served_late += i >= requests // 2
    assert served_late / (requests // 2) > 0.6  # paraphrase hits, once learned
    assert wrong / requests <= delta
    assert world.calls < requests // 2


def test_keeps_exploring_neighbours_that_are_always_wrong() -> None:
    # A hub entry at similarity 0.95 to every question, which are 0.9 to each other: the hub
    # is always the nearest neighbour, and its answer is never right for them.
    rng = np.random.default_rng(2)
    hub = rng.standard_normal(DIM)
    hub /= np.linalg.norm(hub)
    delta, requests = 0.05, 1000
    cache = VCache(delta, seed=3)
    cache.query("hub", hub.astype(np.float32), lambda p: "the hub's answer")
    served = 0
    for i in range(requests):
        noise = rng.standard_normal(DIM)
        noise -= (noise @ hub) * hub
        noise /= np.linalg.norm(noise)
        vector = (0.95 * hub + np.sqrt(1 - 0.95**2) * noise).astype(np.float32)
        outcome = cache.query(f"q{i}", vector, lambda p: f"answer {p}")
        assert outcome.similarity == 0.95
        served += outcome.served  # every hit here is wrong
    # vCache's promise is over all requests. It is not quite kept here: for separated
    # observations the fit's uncertainty on t comes from a fixed table (sd ~0.1), which keeps
    # a lower bound of ~0.35 on P(right) at 0.95, so ~δ/0.65 of the requests are served.
    assert 0 < served / requests <= 2 * delta


def test_exact_repeat_is_served_without_the_llm() -> None:
    world, cache = World(3), VCache(0.01)
    vector = world.vector(0)
    first = cache.query("0/a", vector, world.llm)
    again = cache.query("0/a", vector, world.llm)
    assert (first.served, first.llm_called) == (False, True)
    assert (again.served, again.llm_called, again.explored) == (True, False, False)
    assert again.response == first.response and world.calls == 1


def test_a_miss_calls_the_llm_and_stores_the_answer() -> None:
    world, cache = World(3), VCache(0.05)
    outcome = cache.query("1/a", world.vector(1), world.llm)
    assert outcome == Outcome(
        served=False, response=answer(1), explored=False, llm_called=True, similarity=None
    )
    assert len(cache) == 1 and world.calls == 1


def test_a_new_entry_is_explored_until_it_has_four_observations() -> None:
    world, cache = World(3), VCache(0.10)
    cache.query("0/first", world.vector(0), world.llm)
    stranger = cache.query("1/first", world.vector(1), world.llm)
    assert stranger.explored and len(cache) == 2  # a wrong exploration is stored
    # "0/first" now has 1 real observation (the stranger's): 3 more before it can serve.
    outcomes = [cache.query(f"0/{i}", world.vector(0), world.llm) for i in range(3)]
    assert all(o.explored and o.llm_called and not o.served for o in outcomes)
    assert len(cache) == 2  # right explorations are not
    assert world.calls == 5


def test_exploration_probability_follows_the_observations() -> None:
    right = np.array([0.0, 1.0] + [0.95] * 20)
    right_labels = np.array([0.0, 1.0] + [1.0] * 20)
    assert exploration_probability(0.95, right[:5], right_labels[:5], 0.05) == 1.0  # too few
    assert exploration_probability(0.95, right, right_labels, 0.05) == 0.0
    both = np.concatenate([right, [0.6] * 20])
    both_labels = np.concatenate([right_labels, [0.0] * 20])
    far = exploration_probability(0.6, both, both_labels, 0.05)
    assert far > 0.9 and exploration_probability(0.95, both, both_labels, 0.05) < far
    # Overlapping observations (a finite fit); a stricter δ explores more.
    mixed = np.array([0.0, 1.0, 0.9, 0.91, 0.93, 0.95, 0.92, 0.97, 0.9])
    mixed_labels = np.array([0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0])
    loose = exploration_probability(0.94, mixed, mixed_labels, 0.10)
    strict = exploration_probability(0.94, mixed, mixed_labels, 0.01)
    assert 0.0 < loose < strict < 1.0
