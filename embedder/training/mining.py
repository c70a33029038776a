"""Hard negatives: the near misses a cache would serve wrongly, mined with an encoder."""

from __future__ import annotations

from embedder.training.evaluate import Encode, encode_in_batches, nearest
from embedder.training.pairs import Pair


def mine_hard_negatives(encode: Encode, pairs: list[Pair], per_pair: int) -> list[Pair]:
    """For each pair, the stored questions nearest to its text_b that are not its own text_a
    (nor a known duplicate of it), as pairs labelled 0."""
    if per_pair <= 0:
        return []
    stored = list(dict.fromkeys(p.text_a for p in pairs))
    a = encode_in_batches(encode, stored)
    b = encode_in_batches(encode, [p.text_b for p in pairs])
    duplicates = {(p.text_a, p.text_b) for p in pairs if p.label == 1}
    mined: list[Pair] = []
    top, _ = nearest(b, a, per_pair + 1)
    for pair, row in zip(pairs, top, strict=True):
        taken = 0
        for index in row:
            candidate = stored[int(index)]
            if candidate == pair.text_a or (candidate, pair.text_b) in duplicates:
                continue
            mined.append(Pair(candidate, pair.text_b, 0))
            taken += 1
            if taken == per_pair:
                break
    return mined
