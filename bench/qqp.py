"""The Quora Question Pairs dev set (shared/data), read in place for tests and benchmarks."""

from __future__ import annotations

import gzip
import json
import os
from dataclasses import dataclass
from pathlib import Path

_DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "qqp_pairs_dev.jsonl.gz"


@dataclass(frozen=True)
class QuestionPair:
    text_a: str
    text_b: str
    duplicate: bool  # label 1: the two questions mean the same


def qqp_path() -> Path:
    """`SEMCACHE_QQP_PATH`, else ../shared/data/qqp_pairs_dev.jsonl.gz beside the checkout."""
    return Path(os.environ.get("SEMCACHE_QQP_PATH", _DEFAULT))


def load_pairs(limit: int | None = None) -> list[QuestionPair]:
    pairs: list[QuestionPair] = []
    with gzip.open(qqp_path(), "rt", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            pairs.append(QuestionPair(row["text_a"], row["text_b"], bool(row["label"])))
            if limit is not None and len(pairs) >= limit:
                break
    return pairs
