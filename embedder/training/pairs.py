"""Labelled question pairs: read, checked before any training, split deterministically.

A file has one JSON object per line (`.jsonl`, or `.jsonl.gz`): `{"text_a": str, "text_b": str,
"label": 0 | 1}` (1: the two mean the same). The held-out part is chosen by a hash of each
pair's questions, so the same file always splits the same way; a pair that shares a question
with the held-out part is kept out of training too, so that held-out figures are on questions
the model never saw.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

MIN_PAIRS = 50  # fewer cannot train or measure anything
MIN_PER_CLASS = 10
MIN_HELD_OUT = 20  # pairs in each held-out part


class PairsError(ValueError):
    """The data cannot be used; the message says which line and why."""


@dataclass(frozen=True)
class Pair:
    text_a: str
    text_b: str
    label: int  # 1: same meaning


@dataclass(frozen=True)
class DataSummary:
    path: str
    sha256: str
    size_bytes: int
    pairs: int
    positives: int


@dataclass(frozen=True)
class Split:
    train: list[Pair]
    dev: list[Pair]  # early stopping and calibration
    test: list[Pair]  # the figures reported: touched by no choice made in training


def _lines(path: Path) -> Iterator[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        yield from f


def read_pairs(path: Path, limit: int | None = None) -> list[Pair]:
    """Every pair of the file (the first `limit`), or PairsError naming the first bad line."""
    if not path.is_file():
        raise PairsError(f"{path}: no such file")
    pairs: list[Pair] = []
    try:
        for number, line in enumerate(_lines(path), start=1):
            if not line.strip():
                continue
            pairs.append(_parse(line, f"{path}:{number}"))
            if limit is not None and len(pairs) >= limit:
                break
    except (OSError, UnicodeDecodeError, EOFError) as exc:
        raise PairsError(f"{path}: cannot be read as UTF-8 JSON lines ({exc})") from exc
    check_pairs(pairs, str(path))
    return pairs


def _parse(line: str, where: str) -> Pair:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise PairsError(f"{where}: not JSON ({exc.msg})") from exc
    if not isinstance(row, dict):
        raise PairsError(f"{where}: expected an object with text_a, text_b, label")
    missing = [k for k in ("text_a", "text_b", "label") if k not in row]
    if missing:
        raise PairsError(f"{where}: missing {', '.join(missing)}")
    text_a, text_b, label = row["text_a"], row["text_b"], row["label"]
    if not isinstance(text_a, str) or not text_a.strip():
        raise PairsError(f"{where}: text_a must be a non-empty string")
    if not isinstance(text_b, str) or not text_b.strip():
        raise PairsError(f"{where}: text_b must be a non-empty string")
    if isinstance(label, bool) or label not in (0, 1):
        raise PairsError(f"{where}: label must be 0 or 1, got {label!r}")
    return Pair(text_a, text_b, int(label))


def check_pairs(
    pairs: list[Pair], source: str, min_pairs: int = MIN_PAIRS, min_per_class: int = MIN_PER_CLASS
) -> None:
    positives = sum(p.label for p in pairs)
    if len(pairs) < min_pairs:
        raise PairsError(
            f"{source}: {len(pairs)} pairs; at least {min_pairs} are needed (more data, or a "
            "larger held-out fraction)"
        )
    if positives < min_per_class or len(pairs) - positives < min_per_class:
        raise PairsError(
            f"{source}: {positives} pairs labelled 1 and {len(pairs) - positives} labelled 0; "
            f"each class needs at least {min_per_class}"
        )


def summarize(path: Path, pairs: list[Pair]) -> DataSummary:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return DataSummary(
        path=str(path),
        sha256=digest,
        size_bytes=path.stat().st_size,
        pairs=len(pairs),
        positives=sum(p.label for p in pairs),
    )


def _bucket(text: str) -> float:
    digest = hashlib.sha256(text.strip().lower().encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_pairs(pairs: list[Pair], held_out_fraction: float = 0.2) -> Split:
    """Held out: the pairs whose text_a falls in the held-out hash range, half of them for
    choices made while training (dev), half for the figures (test). Training: the rest, less
    any pair that shares a question with a held-out pair."""
    if not 0.0 < held_out_fraction < 1.0:
        raise PairsError(f"held_out_fraction must be in (0, 1), got {held_out_fraction}")
    test = [p for p in pairs if _bucket(p.text_a) < held_out_fraction / 2]
    dev = [p for p in pairs if held_out_fraction / 2 <= _bucket(p.text_a) < held_out_fraction]
    seen = {t.strip().lower() for p in test + dev for t in (p.text_a, p.text_b)}
    train = [
        p
        for p in pairs
        if _bucket(p.text_a) >= held_out_fraction
        and p.text_a.strip().lower() not in seen
        and p.text_b.strip().lower() not in seen
    ]
    check_pairs(test, "the held-out test part", MIN_HELD_OUT, MIN_HELD_OUT // 4)
    check_pairs(dev, "the held-out dev part", MIN_HELD_OUT, MIN_HELD_OUT // 4)
    check_pairs(train, "the training part")
    return Split(train=train, dev=dev, test=test)
