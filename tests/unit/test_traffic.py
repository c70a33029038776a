"""The verified benchmark's ground truth: questions grouped by meaning (transitively), every
other question alone, a request stream that is the same for the same seed, has no repeats, and
holds no question of the training part."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from embedder.training.pairs import Pair, read_pairs, split_pairs
from embedder.training.traffic import (
    Clusters,
    adversarial_stream,
    held_out_pairs,
    popular_stream,
    reachable_hits,
    request_stream,
)


def test_duplicates_are_grouped_transitively() -> None:
    clusters = Clusters.from_pairs(
        [
            Pair("How do I learn Python?", "What is the best way to learn Python?", 1),
            Pair("What is the best way to learn Python?  ", "How can I learn Python fast?", 1),
            Pair("How can I learn Python fast?", "How do I learn Java?", 0),
        ]
    )
    first = clusters.cluster("How do I learn Python?")
    assert first is not None
    assert clusters.cluster("How can I learn Python fast?") == first  # never paired directly
    assert clusters.cluster(" What is the best way to learn Python?") == first  # strip()
    assert clusters.cluster("How do I learn Java?") != first
    assert clusters.same("How do I learn Python?", "How can I learn Python fast?")
    assert clusters.answer("How can I learn Python fast?") == clusters.answer(
        "How do I learn Python?"
    )
    assert clusters.answer("How do I learn Python?") == (
        f"answer for cluster {first}: How do I learn Python?"
    )


def test_questions_without_a_duplicate_are_alone() -> None:
    clusters = Clusters.from_pairs(
        [Pair("What is love?", "What is hate?", 0), Pair("Why is the sky blue?", "Is it?", 0)]
    )
    ids = {clusters.cluster(q) for q in ("What is love?", "What is hate?", "Why is the sky blue?")}
    assert len(ids) == 3
    assert len(clusters.canonical) == 4
    assert clusters.cluster("never asked") is None
    assert clusters.answer("never asked") != clusters.answer("also never asked")
    assert not clusters.same("never asked", "never asked")


def pairs(n: int) -> list[Pair]:
    # Every 3rd pair a duplicate, and pairs chained through shared questions now and then.
    return [
        Pair(f"question {i}?", f"question {i + 1 if i % 5 == 0 else -i}?", int(i % 3 == 0))
        for i in range(n)
    ]


def test_the_stream_depends_on_the_seed_only() -> None:
    data = pairs(400)
    first = request_stream(data, 300, seed=7)
    assert first == request_stream(data, 300, seed=7)
    assert first != request_stream(data, 300, seed=8)
    assert len(first) == 300
    assert len(set(first)) == len(first)  # no exact repeats
    everything = request_stream(data, 10_000, seed=7)
    assert len(everything) == len({q.strip() for p in data for q in (p.text_a, p.text_b)})
    assert request_stream(data, 0) == []


def test_reachable_hits_count_groups_asked_before() -> None:
    clusters = Clusters.from_pairs([Pair("a", "b", 1), Pair("b", "c", 1), Pair("d", "e", 0)])
    assert reachable_hits(["a", "d", "c", "e", "b", "unknown"], clusters) == 2


def write(path: Path, rows: list[Pair]) -> Path:
    with gzip.open(path, "wt") as f:
        for p in rows:
            f.write(json.dumps({"text_a": p.text_a, "text_b": p.text_b, "label": p.label}) + "\n")
    return path


def test_the_stream_holds_no_training_question(tmp_path: Path) -> None:
    data = [
        Pair(f"what is topic {i}?", f"what is topic {i + 7 if i % 4 else i * 3}?", int(i % 2 == 0))
        for i in range(2000)
    ]
    path = write(tmp_path / "pairs.jsonl.gz", data)
    held_out = held_out_pairs(path)
    assert held_out == split_pairs(read_pairs(path), 0.2).test
    training = {
        q.strip().lower()
        for p in split_pairs(read_pairs(path), 0.2).train
        for q in (p.text_a, p.text_b)
    }
    stream = request_stream(held_out, 10_000, seed=1)
    assert stream
    assert not {q.lower() for q in stream} & training


@pytest.mark.parametrize("size", [1, 2, 3])
def test_small_streams_are_capped(size: int) -> None:
    assert len(request_stream(pairs(50), size, seed=0)) == size


def test_the_adversarial_stream_asks_every_first_question_then_every_second() -> None:
    data = pairs(40)
    stream = adversarial_stream(data, 20, seed=2)
    assert len(stream) == 20
    firsts, seconds = stream[:10], stream[10:]
    by_first = {p.text_a: p.text_b for p in data}
    assert [by_first[q] for q in firsts] == seconds
    assert adversarial_stream(data, 20, seed=2) == stream != adversarial_stream(data, 20, seed=3)


def test_a_popular_stream_draws_the_share_of_topics_with_paraphrases_asked() -> None:
    # Groups of two (i < 40) and questions alone (i >= 40).
    data = [Pair(f"q{i}", f"p{i}", int(i < 40)) for i in range(80)]
    clusters = Clusters.from_pairs(data)
    stream = popular_stream(data, clusters, 3000, seed=1, exponent=1.1, topics=20, paraphrased=0.5)
    groups = {clusters.cluster(q) for q in stream}
    assert len(groups) == 20
    paired = {g for g in groups if sum(clusters.cluster(q) == g for q in clusters.of) > 1}
    assert len(paired) == 10
