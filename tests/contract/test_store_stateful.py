"""A stateful, model-based test of the store contract, on every backend.

Hypothesis drives a store (on Redis, two replicas sharing one Redis, in turns) through random
sequences of puts (new, replacing, with and without a TTL, of another dimension, one cache too
many), deletes, deletes by attributes, flushes, look-ups (semantic with top-k and a threshold,
exact, by id), recency refreshes, clock jumps, purges, counts and counters, and checks every
answer against a plain-Python model of the contract. The cache ids and attribute values are the
kind that break key and query designs. Time is the `now` passed to each call, so TTLs expire
when the test says (they are long in real time: Redis's own expiry never fires during a run).

The vectors lie in one plane at angles 17 degrees apart: any two similarities are equal or at
least 0.04 apart, and none is within 0.01 of a threshold, so the expected answer is never a
matter of float rounding; equal similarities (the same vector stored twice) come in any order.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule, run_state_machine_as_test

from cache_server.entries import CacheEntry, entry_id, normalize_prompt
from cache_server.store.base import CacheLimitError, CacheStore, StoreConflictError
from cache_server.store.embedded import EmbeddedStore
from cache_server.store.redis_store import RedisStore
from tests.contract.stores import NOW, fresh_prefix, redis_server

CACHE_IDS = ["a", "a:e", "a:e:x", "{a}*", "ünï:cødé ☃ " + "x" * 300]
MAX_CACHES = 3  # fewer than the ids: opening one cache too many is part of the game
CAP = 6  # entries per cache: room for expired entries to outrank the live ones a search wants
PROMPTS = ["p", "  p ", "q", "P", "ü ☃ {prompt}*"]
ATTRIBUTE_NAMES = ["team", "lang"]
ATTRIBUTE_VALUES = ["x", "y", "", "a,b", "{x}", "*", "ü ☃", 'q"uote\\', " "]
DIMENSIONS = [8, 4]  # the model's and, after a model change, another
ANGLES = 6  # vector j lies at j * 17 degrees
THRESHOLDS = [-1.0, 0.5, 0.9, 0.99]
TTLS = [None, None, 30.0, 100.0]  # seconds of the test's clock
FILTERS = st.dictionaries(
    st.sampled_from(ATTRIBUTE_NAMES), st.sampled_from(ATTRIBUTE_VALUES), max_size=1
)


def put_rule() -> Callable[[Callable[..., None]], Callable[..., None]]:
    """The rule of a put: what is stored, where the rule picks the cache."""
    return rule(
        data=st.data(),
        prompt=st.sampled_from(PROMPTS),
        attributes=st.dictionaries(
            st.sampled_from(ATTRIBUTE_NAMES), st.sampled_from(ATTRIBUTE_VALUES), max_size=2
        ),
        angle=st.integers(0, ANGLES - 1),
        ttl=st.sampled_from(TTLS),
        dimension=st.sampled_from([*DIMENSIONS, 8, 8, 8, 8]),
        # A replica whose clock lags: its entry may be the least recently used of its cache.
        lag=st.sampled_from([0.0, 0.0, 0.0, 2.5, 1000.5]),
    )


def vector(j: int, dimension: int) -> np.ndarray:
    v = np.zeros(dimension, dtype=np.float32)
    angle = math.radians(17 * j)
    v[0], v[1] = math.cos(angle), math.sin(angle)
    return v


def similarity(i: int, j: int) -> float:
    return math.cos(math.radians(17 * (i - j)))


@dataclass
class Held:
    entry: CacheEntry
    angle: int
    dimension: int
    last_use: float

    def live(self, now: float) -> bool:
        return not self.entry.expired(now)


@dataclass
class Model:
    """The contract in plain Python: per cache, every entry held (expired ones too, until
    purged), the caches held (from their first entry until flushed), their dimension and
    counters."""

    entries: dict[str, dict[str, Held]] = field(default_factory=dict)
    dimensions: dict[str, int] = field(default_factory=dict)
    counters: dict[str, dict[str, int]] = field(default_factory=dict)

    def held(self, cache_id: str) -> bool:
        return cache_id in self.dimensions

    def count(self, name: str, cache_id: str, n: int) -> None:
        counts = self.counters.setdefault(cache_id, {})
        counts[name] = counts.get(name, 0) + n


class StoreMachine(RuleBasedStateMachine):
    backend: ClassVar[str]

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.now = NOW
        self.model = Model()
        self.ids: list[tuple[str, str]] = []  # every (cache, entry id) ever written
        self.data_dir: Path | None = None
        self.stores: list[CacheStore] = []
        if self.backend == "redis":  # two replicas sharing one Redis
            prefix = fresh_prefix()
            self.stores = [RedisStore(redis_server().url, prefix=prefix) for _ in range(2)]
        else:
            self.data_dir = Path(tempfile.mkdtemp(prefix="stateful-"))
            self.stores = [EmbeddedStore(self.data_dir)]
        for store in self.stores:
            self.run(store.open())
        self.store = self.stores[0]  # the one each call goes to

    def run(self, coroutine: Any) -> Any:
        return self.loop.run_until_complete(coroutine)

    def tick(self) -> float:
        """Every call happens one second after the one before: recency is never a tie."""
        self.now += 1.0
        return self.now

    # -- writes ---------------------------------------------------------------------------

    # Three rules for one operation: writes come up as often as all the rest, mostly to caches
    # that hold entries already, so that caches fill up to their cap and beyond.
    @put_rule()
    def put_anywhere(self, data: st.DataObject, **arguments: Any) -> None:
        self.put(data.draw(st.sampled_from(CACHE_IDS)), **arguments)

    @put_rule()
    def put_more(self, data: st.DataObject, **arguments: Any) -> None:
        self.put(self.pick_cache(data), **arguments)

    @put_rule()
    def put_even_more(self, data: st.DataObject, **arguments: Any) -> None:
        self.put(self.pick_cache(data), **arguments)

    def put(
        self,
        cache_id: str,
        prompt: str,
        attributes: dict[str, str],
        angle: int,
        ttl: float | None,
        dimension: int,
        lag: float,
    ) -> None:
        now = self.tick() - lag  # never a tie: every other time is a whole second
        new = CacheEntry(
            cache_id=cache_id,
            id=entry_id(cache_id, prompt, attributes),
            prompt=prompt,
            response=f"answer to {prompt!r} {attributes} at {now}",
            attributes=attributes,
            created_at=now,
            expires_at=now + ttl if ttl is not None else None,
        )
        model = self.model
        put = self.store.put(new, vector(angle, dimension), CAP, now, max_caches=MAX_CACHES)
        if not model.held(cache_id) and len(model.dimensions) >= MAX_CACHES:
            with pytest.raises(CacheLimitError):
                self.run(put)
            return
        if model.dimensions.get(cache_id, dimension) != dimension:
            with pytest.raises(StoreConflictError, match=f"holds {model.dimensions[cache_id]}-"):
                self.run(put)
            return
        outcome = self.run(put)
        model.dimensions[cache_id] = dimension
        entries = model.entries.setdefault(cache_id, {})
        entries[new.id] = Held(new, angle, dimension, now)
        self.ids.append((cache_id, new.id))
        others = sorted((h.last_use, i) for i, h in entries.items() if i != new.id)
        victims = [i for _, i in others[: max(0, len(entries) - CAP)]]
        for victim in victims:
            del entries[victim]
        if victims:
            model.count("evictions", cache_id, len(victims))
        assert outcome.evicted == len(victims)

    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        cache_id, entry_id_ = self.pick_id(data)
        self.tick()
        existed = entry_id_ in self.model.entries.get(cache_id, {})
        assert self.run(self.store.delete(cache_id, entry_id_)) == existed
        self.model.entries.get(cache_id, {}).pop(entry_id_, None)

    @rule(
        cache_id=st.sampled_from(CACHE_IDS),
        attributes=st.dictionaries(
            st.sampled_from(ATTRIBUTE_NAMES), st.sampled_from(ATTRIBUTE_VALUES), max_size=2
        ),
    )
    def delete_matching(self, cache_id: str, attributes: dict[str, str]) -> None:
        self.tick()
        entries = self.model.entries.get(cache_id, {})
        doomed = [i for i, h in entries.items() if h.entry.matches(attributes)]
        assert self.run(self.store.delete_matching(cache_id, attributes)) == len(doomed)
        for i in doomed:
            del entries[i]

    @rule(cache_id=st.sampled_from(CACHE_IDS))
    def flush(self, cache_id: str) -> None:
        self.tick()
        expected = len(self.model.entries.pop(cache_id, {}))
        self.model.dimensions.pop(cache_id, None)
        assert self.run(self.store.flush(cache_id)) == expected

    @rule(data=st.data())
    def touch(self, data: st.DataObject) -> None:
        cache_id, entry_id_ = self.pick_id(data)
        now = self.tick()
        self.run(self.store.touch(cache_id, entry_id_, now))
        held = self.model.entries.get(cache_id, {}).get(entry_id_)
        if held is not None:
            held.last_use = now

    @rule(replica=st.integers(0, 1))
    def switch_replica(self, replica: int) -> None:
        self.store = self.stores[replica % len(self.stores)]

    @rule(seconds=st.sampled_from([5.0, 29.0, 40.0, 100.0]))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds

    @rule()
    def purge_expired(self) -> None:
        now = self.tick()
        expected: dict[str, int] = {}
        for cache_id, entries in self.model.entries.items():
            gone = [i for i, h in entries.items() if not h.live(now)]
            for i in gone:
                del entries[i]
            if gone:
                expected[cache_id] = len(gone)
                self.model.count("expirations", cache_id, len(gone))
        assert dict(self.run(self.store.purge_expired(now)).expired) == expected

    @rule(
        cache_id=st.sampled_from(CACHE_IDS),
        counts=st.dictionaries(st.sampled_from(["hits", "misses"]), st.integers(0, 3)),
    )
    def add_counters(self, cache_id: str, counts: dict[str, int]) -> None:
        self.run(self.store.add_counters(cache_id, counts))
        if self.model.held(cache_id):
            for name, n in counts.items():
                self.model.count(name, cache_id, n)

    @rule(cache_id=st.sampled_from(CACHE_IDS))
    def reset_counters(self, cache_id: str) -> None:
        self.run(self.store.reset_counters(cache_id))
        self.model.counters.pop(cache_id, None)

    # -- reads ----------------------------------------------------------------------------

    @rule(
        data=st.data(),
        angle=st.integers(0, ANGLES - 1),
        dimension=st.sampled_from([*DIMENSIONS, 8, 8]),
        k=st.integers(1, 5),
        threshold=st.sampled_from(THRESHOLDS),
        attributes=st.one_of(st.just({}), FILTERS),
    )
    def search(
        self,
        data: st.DataObject,
        angle: int,
        dimension: int,
        k: int,
        threshold: float,
        attributes: dict[str, str],
    ) -> None:
        cache_id = self.pick_cache(data)
        now = self.tick()
        found = self.run(
            self.store.search(cache_id, vector(angle, dimension), k, threshold, attributes, now)
        )
        candidates = {
            i: similarity(angle, h.angle)
            for i, h in self.model.entries.get(cache_id, {}).items()
            if h.live(now) and h.dimension == dimension and h.entry.matches(attributes)
        }
        expected = sorted(s for s in candidates.values() if s >= threshold)[::-1][:k]
        got = [s for _, s in found]
        assert len(got) == len(expected), (found, expected)
        assert got == pytest.approx(expected, abs=1e-3), (found, expected)
        for entry, score in found:
            assert entry == self.model.entries[cache_id][entry.id].entry
            assert score == pytest.approx(candidates[entry.id], abs=1e-3)

    @rule(
        data=st.data(),
        prompt=st.sampled_from(PROMPTS),
        attributes=st.one_of(st.just({}), FILTERS),
    )
    def find_exact(self, data: st.DataObject, prompt: str, attributes: dict[str, str]) -> None:
        cache_id = self.pick_cache(data)
        now = self.tick()
        got = self.run(self.store.find_exact(cache_id, prompt, attributes, now))
        matches = [
            h.entry
            for h in self.model.entries.get(cache_id, {}).values()
            if h.live(now)
            and normalize_prompt(h.entry.prompt) == normalize_prompt(prompt)
            and h.entry.matches(attributes)
        ]
        newest = max((e.created_at for e in matches), default=None)
        if newest is None:
            assert got is None
        else:
            assert got in [e for e in matches if e.created_at == newest]

    @rule(data=st.data())
    def get(self, data: st.DataObject) -> None:
        cache_id, entry_id_ = self.pick_id(data)
        now = self.tick()
        held = self.model.entries.get(cache_id, {}).get(entry_id_)
        expected = held.entry if held is not None and held.live(now) else None
        assert self.run(self.store.get(cache_id, entry_id_, now)) == expected

    @rule(cache_id=st.sampled_from(CACHE_IDS), dimension=st.sampled_from(DIMENSIONS))
    def check_dimension(self, cache_id: str, dimension: int) -> None:
        check = self.store.check_dimension(cache_id, dimension)
        if self.model.dimensions.get(cache_id, dimension) != dimension:
            with pytest.raises(StoreConflictError):
                self.run(check)
        else:
            self.run(check)

    @rule(cache_id=st.sampled_from(CACHE_IDS), max_caches=st.integers(1, MAX_CACHES + 1))
    def admits(self, cache_id: str, max_caches: int) -> None:
        expected = self.model.held(cache_id) or len(self.model.dimensions) < max_caches
        assert self.run(self.store.admits(cache_id, max_caches)) == expected

    @rule(cache_id=st.sampled_from(CACHE_IDS))
    def count_and_counters(self, cache_id: str) -> None:
        live = [h for h in self.model.entries.get(cache_id, {}).values() if h.live(self.now)]
        assert self.run(self.store.count(cache_id, self.now)) == len(live)
        assert self.run(self.store.counters(cache_id)) == self.model.counters.get(cache_id, {})

    def pick_cache(self, data: st.DataObject) -> str:
        """Mostly a cache that holds entries: look-ups in empty caches teach little."""
        populated = sorted(c for c, entries in self.model.entries.items() if entries)
        mostly = data.draw(st.integers(0, 4)) > 0
        if populated and mostly:
            return data.draw(st.sampled_from(populated))
        return data.draw(st.sampled_from(CACHE_IDS))

    def pick_id(self, data: st.DataObject) -> tuple[str, str]:
        """An id written before (perhaps since deleted, evicted, replaced or flushed), or one
        that never was."""
        never = (data.draw(st.sampled_from(CACHE_IDS)), "0" * 32)
        return data.draw(st.sampled_from([*self.ids[-20:], never]))

    def teardown(self) -> None:
        try:
            for cache_id in CACHE_IDS:
                self.count_and_counters(cache_id)
            if isinstance(self.store, RedisStore):
                self.assert_nothing_left_after_flushes(self.store)
        finally:
            for store in self.stores:
                with contextlib.suppress(Exception):
                    self.run(store.close())
            self.loop.close()
            if self.data_dir is not None:
                shutil.rmtree(self.data_dir, ignore_errors=True)

    def assert_nothing_left_after_flushes(self, store: RedisStore) -> None:
        """Flushing every cache and resetting its counters leaves no key and no index."""
        for cache_id in CACHE_IDS:
            self.flush(cache_id)
            self.run(store.reset_counters(cache_id))
        client = redis_server().client()
        assert list(client.scan_iter(match=f"{store.prefix}*")) == []
        names = [n.decode() for n in client.execute_command("FT._LIST")]
        assert [n for n in names if n.startswith(store.prefix)] == []


# About 10 s per backend here (2 cores). Longer runs (600 examples of up to 100 steps per
# backend) passed too.
SETTINGS = settings(
    max_examples=150,
    stateful_step_count=80,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.mark.parametrize("backend", ["embedded", "redis"])
def test_the_store_behaves_as_its_model(backend: str) -> None:
    machine = type(f"{backend.title()}StoreMachine", (StoreMachine,), {"backend": backend})
    run_state_machine_as_test(machine, settings=SETTINGS)


def test_the_model_vectors_are_well_separated() -> None:
    values = sorted({round(similarity(0, j), 6) for j in range(ANGLES)})
    gaps = [b - a for a, b in itertools.pairwise(values)]
    assert min(gaps) > 0.04
    assert all(abs(v - t) >= 0.01 for v in values for t in THRESHOLDS)
