"""Questions grouped by meaning, and streams of requests drawn from them: simulated cache
traffic for the verified policy's prior (embedder.training.prior) and its benchmark
(bench.verified_bench).

A cluster is a connected group of questions under the "same meaning" pairs (label 1) of the
labelled data: union-find, so if a ~ b and b ~ c then a, b and c share one cluster even when
(a, c) was never labelled. Every other question is a cluster of its own. Questions are keys
after strip() (surrounding whitespace is not meaning). Each cluster has one answer (what a
deterministic LLM would say to any of its questions), so a cached answer is right for a
question exactly when the entry's question is in the question's cluster.

The labels are incomplete: two questions never paired are in different clusters even when a
person would call them the same, so an "error" here is an upper bound on real errors.

Two streams (seeded):
- distinct: pairs drawn at random, all their distinct questions emitted, shuffled, capped at
  the size asked for. Each question appears once: every hit is semantic, none is an exact
  repeat. Few groups come back more than once, so little can be learned per entry.
- popular: what an application's users send: some topics are asked about far more than
  others. Each request picks a group with probability proportional to its size over its
  popularity rank to the power POPULARITY_EXPONENT (a Zipf law over a random order of the
  groups), then one of the group's questions at random; exact repeats happen, and popular
  groups come back as paraphrases, so entries gather evidence.
- adversarial: every drawn pair's first question, then every second question, in the same
  seeded order. QQP pairs were chosen because they look alike, and most are labelled "not the
  same meaning": the nearest stored question is often close and wrong (a static 0.85 serves
  about 30% wrong answers here), the stream a verified bound exists for.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from embedder.training.pairs import Pair, read_pairs, split_pairs

HELD_OUT_FRACTION = 0.2
POPULARITY_EXPONENT = 0.8  # as bench.quality_bench and make finetune: the same test part


@dataclass(frozen=True)
class Popular:
    """The popular-topics traffic of the verified policy's prior and benchmark: `topics`
    topics, half of them with paraphrases, asked by a Zipf law of this exponent."""

    topics: int = 1500
    exponent: float = 1.1
    paraphrased: float = 0.5


POPULAR = Popular()


def held_out_pairs(path: Path, held_out_fraction: float = HELD_OUT_FRACTION) -> list[Pair]:
    """The held-out test part of the deterministic split (embedder.training.pairs): pairs no
    model was trained or calibrated on."""
    return split_pairs(read_pairs(path), held_out_fraction).test


def _key(question: str) -> str:
    return question.strip()


@dataclass(frozen=True)
class Clusters:
    """Cluster id of each known question (ids 0, 1, ... in order of first appearance in the
    pairs) and each cluster's canonical question (its first appearance)."""

    of: dict[str, int]
    canonical: list[str]

    @classmethod
    def from_pairs(cls, pairs: Iterable[Pair]) -> Clusters:
        pairs = list(pairs)
        index: dict[str, int] = {}
        order: list[str] = []
        for p in pairs:
            for text in (p.text_a, p.text_b):
                key = _key(text)
                if key not in index:
                    index[key] = len(order)
                    order.append(key)
        parent = list(range(len(order)))

        def root(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]  # path halving
                i = parent[i]
            return i

        for p in pairs:
            if p.label == 1:
                a, b = root(index[_key(p.text_a)]), root(index[_key(p.text_b)])
                if a != b:
                    parent[max(a, b)] = min(a, b)  # the root is the earliest question
        ids: dict[int, int] = {}
        canonical: list[str] = []
        of: dict[str, int] = {}
        for i, question in enumerate(order):
            r = root(i)
            if r not in ids:
                ids[r] = len(canonical)
                canonical.append(order[r])
            of[question] = ids[r]
        return cls(of=of, canonical=canonical)

    def cluster(self, question: str) -> int | None:
        """The question's cluster id; None when it is in none of the pairs."""
        return self.of.get(_key(question))

    def answer(self, question: str) -> str:
        """What a deterministic LLM answers: one text per cluster; an unknown question gets an
        answer of its own."""
        cid = self.cluster(question)
        if cid is None:
            return f"answer for a question outside the data: {_key(question)}"
        return f"answer for cluster {cid}: {self.canonical[cid]}"

    def same(self, a: str, b: str) -> bool:
        ca = self.cluster(a)
        return ca is not None and ca == self.cluster(b)


def request_stream(pairs: Sequence[Pair], size: int = 6000, seed: int = 0) -> list[str]:
    """Up to `size` distinct questions (stripped): pairs drawn at random without replacement,
    both questions of each (once), then shuffled; the same seed gives the same stream."""
    if size < 0:
        raise ValueError(f"size must be >= 0, got {size}")
    rng = random.Random(seed)
    order = list(range(len(pairs)))
    rng.shuffle(order)
    seen: set[str] = set()
    stream: list[str] = []
    for i in order:
        if len(stream) >= size:
            break
        for text in (pairs[i].text_a, pairs[i].text_b):
            key = _key(text)
            if key and key not in seen:
                seen.add(key)
                stream.append(key)
    rng.shuffle(stream)
    return stream[:size]


def adversarial_stream(pairs: Sequence[Pair], size: int = 6000, seed: int = 0) -> list[str]:
    """Up to `size` requests: the first questions of `size` // 2 seeded random pairs, then
    their second questions in the same order (stripped; a question may come back when pairs
    share it, as users repeat themselves)."""
    if size < 0:
        raise ValueError(f"size must be >= 0, got {size}")
    rng = random.Random(seed)
    chosen = rng.sample(list(pairs), min(len(pairs), size // 2))
    firsts = [_key(p.text_a) for p in chosen]
    seconds = [_key(p.text_b) for p in chosen]
    return [q for q in firsts + seconds if q]


def popular_stream(
    pairs: Sequence[Pair],
    clusters: Clusters,
    size: int = 6000,
    seed: int = 0,
    exponent: float = POPULARITY_EXPONENT,
    topics: int | None = None,
    paraphrased: float | None = None,
) -> list[str]:
    """`size` requests: a group drawn by a Zipf law over a seeded random order of the groups
    (weighted by group size; only the first `topics` of that order when given), then one of
    its questions at random. With `paraphrased` (a share, with `topics`), that share of the
    topics is drawn from the groups of two questions or more (whose questions are
    paraphrases of each other) and the rest from the others, before the order is shuffled."""
    if size < 0:
        raise ValueError(f"size must be >= 0, got {size}")
    rng = random.Random(seed)
    members: dict[int, list[str]] = {}
    for question, cid in sorted(clusters.of.items()):
        members.setdefault(cid, []).append(question)
    groups = sorted(members)
    rng.shuffle(groups)
    if topics is not None and paraphrased is not None:
        wanted = round(topics * paraphrased)
        several = [g for g in groups if len(members[g]) > 1][:wanted]
        single = [g for g in groups if len(members[g]) == 1][: topics - len(several)]
        groups = several + single
        rng.shuffle(groups)
    groups = groups[:topics] if topics is not None else groups
    weights = [len(members[g]) / (rank + 1) ** exponent for rank, g in enumerate(groups)]
    picks = rng.choices(groups, weights=weights, k=size)
    return [rng.choice(members[g]) for g in picks]


def reachable_hits(stream: Sequence[str], clusters: Clusters) -> int:
    """Requests that are not exact repeats but whose cluster was asked before in the stream:
    the most right semantic hits any policy can serve."""
    seen: set[int] = set()
    asked: set[str] = set()
    reachable = 0
    for question in stream:
        cid = clusters.cluster(question)
        if cid is None or question in asked:
            continue
        asked.add(question)
        reachable += cid in seen
        seen.add(cid)
    return reachable
