"""Training data is checked before anything trains; the split is deterministic and leaks no
question into training; the quality figures are those a cache would see."""

from __future__ import annotations

import gzip
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from embedder.training.evaluate import (
    Lookups,
    evaluate,
    most_precise_point,
    point,
    pr_auc,
    threshold_for_precision,
)
from embedder.training.pairs import Pair, PairsError, read_pairs, split_pairs


def rows(n: int, positives: int) -> list[dict[str, object]]:
    return [
        {"text_a": f"question {i}?", "text_b": f"query {i}?", "label": int(i < positives)}
        for i in range(n)
    ]


def write(path: Path, items: list[object]) -> Path:
    lines = "\n".join(json.dumps(r) if not isinstance(r, str) else r for r in items) + "\n"
    if path.suffix == ".gz":
        with gzip.open(path, "wt") as f:
            f.write(lines)
    else:
        path.write_text(lines)
    return path


def test_plain_and_gzipped_files_read_the_same(tmp_path: Path) -> None:
    data = rows(100, 40)
    plain = read_pairs(write(tmp_path / "p.jsonl", list(data)))
    zipped = read_pairs(write(tmp_path / "p.jsonl.gz", list(data)))
    assert plain == zipped and len(plain) == 100 and sum(p.label for p in plain) == 40


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"text_a": "a", "label": 1}, "bad.jsonl:3: missing text_b"),
        ({"text_a": "a", "text_b": "b", "label": 2}, "label must be 0 or 1"),
        ({"text_a": "a", "text_b": "b", "label": True}, "label must be 0 or 1"),
        ({"text_a": "", "text_b": "b", "label": 0}, "text_a must be a non-empty string"),
        ("not json at all", "bad.jsonl:3: not JSON"),
        ([1, 2], "expected an object"),
    ],
)
def test_a_bad_line_is_named_before_any_training(tmp_path: Path, bad: object, message: str) -> None:
    data: list[object] = list(rows(100, 40))
    data.insert(2, bad)
    with pytest.raises(PairsError, match=message):
        read_pairs(write(tmp_path / "bad.jsonl", data))


def test_too_few_pairs_or_one_class_only_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PairsError, match="at least 50"):
        read_pairs(write(tmp_path / "few.jsonl", list(rows(20, 10))))
    with pytest.raises(PairsError, match="each class"):
        read_pairs(write(tmp_path / "one.jsonl", list(rows(100, 100))))
    with pytest.raises(PairsError, match="no such file"):
        read_pairs(tmp_path / "missing.jsonl")


def test_the_split_is_deterministic_and_training_never_sees_a_held_out_question() -> None:
    pairs = [Pair(f"q{i}", f"q{i + 1}", i % 3 == 0) for i in range(600)]  # chained questions
    pairs = [Pair(p.text_a, p.text_b, int(p.label)) for p in pairs]
    one, two = split_pairs(pairs, 0.3), split_pairs(list(pairs), 0.3)
    assert one == two
    held = {t for p in one.dev + one.test for t in (p.text_a, p.text_b)}
    assert not [p for p in one.train if p.text_a in held or p.text_b in held]
    assert not set(one.dev) & set(one.test)


def test_quality_figures_follow_the_cache_protocol() -> None:
    # Three pairs: a right hit at 0.95, a wrong one (another question) at 0.9, a duplicate
    # whose nearest stored question is another at 0.8.
    found = Lookups(
        similarity=np.array([0.95, 0.9, 0.8], dtype=np.float32),
        right=np.array([True, False, False]),
        positives=2,
    )
    at_85 = point(found, 0.85)
    assert (at_85.hits, at_85.precision, at_85.recall) == (2, 0.5, 0.5)
    assert point(found, 0.93).precision == 1.0
    assert pr_auc(found) == pytest.approx(0.5)  # one right hit at precision 1, of 2 positives
    curve = [point(found, t) for t in (0.7, 0.85, 0.93, 0.97)]
    chosen = threshold_for_precision(curve, 0.9)
    assert chosen is not None and chosen.threshold == 0.93
    assert threshold_for_precision(curve[:2], 0.9) is None
    # Unreachable target: the most precise threshold that keeps half the recall, not best F1.
    fallback = most_precise_point(curve[:2])
    assert fallback is not None and fallback.threshold == 0.85
    assert most_precise_point(curve, min_recall=0.9) is None


def test_evaluate_stores_text_a_and_looks_up_text_b() -> None:
    vectors = {
        "how tall is everest": [1.0, 0.0, 0.0],
        "everest height": [0.99, 0.14, 0.0],
        "capital of france": [0.0, 1.0, 0.0],
        "paris population": [0.0, 0.8, 0.6],
    }

    def encode(texts: Sequence[str]) -> np.ndarray:
        out = np.array([vectors[t] for t in texts], dtype=np.float32)
        unit: np.ndarray = out / np.linalg.norm(out, axis=1, keepdims=True)
        return unit

    report = evaluate(
        encode,
        [
            Pair("how tall is everest", "everest height", 1),
            Pair("capital of france", "paris population", 0),
        ],
    )
    assert report.positives == 1 and report.pr_auc == pytest.approx(1.0)
    assert report.at(0.9).recall == 1.0 and report.at(0.9).precision == 1.0
    assert report.at(0.7).precision == 0.5  # the non-duplicate is served at 0.8
