"""Demo client: sends questions and their paraphrases to a running stack (`make run`) and
prints hits, similarities and timings.

    python client.py [--url http://localhost:8000] [--api-key KEY]    (or: make demo)

It is also the stack's smoke test (CI runs it right after `/health` turns healthy): it exits
non-zero unless it saw a miss, a semantic hit and an exact hit, every answer carrying the
embedding dimension the stack reports in `/health`.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field

import httpx

QUESTIONS = [
    ("What is the capital of France?", "Which city is the capital of France?"),
    ("How do I learn Python quickly?", "What is the fastest way to learn Python?"),
    ("How can I improve my sleep?", "What can I do to sleep better?"),
    ("What causes rainbows?", "Why do rainbows appear in the sky?"),
]
UNRELATED = "How many legs does a spider have?"
# The demo works in a cache of its own, emptied first, so every run shows the same story.
DEMO_CACHE = "demo"


@dataclass
class Seen:
    """What the demo saw; `problems` lists what a working stack would not have done."""

    expected_dimension: int | None
    misses: int = 0
    semantic_hits: int = 0
    exact_hits: int = 0
    problems: list[str] = field(default_factory=list)

    def record(self, question: str, body: dict[str, object]) -> None:
        dimension = body.get("embedding_dimension")
        if not isinstance(dimension, int) or dimension <= 0:
            self.problems.append(f"{question!r}: embedding_dimension {dimension!r}")
        elif self.expected_dimension is not None and dimension != self.expected_dimension:
            self.problems.append(
                f"{question!r}: embedding_dimension {dimension}, /health says "
                f"{self.expected_dimension}"
            )
        cached = body.get("cached_data")
        if not body.get("cache_hit"):
            self.misses += 1
        elif isinstance(cached, dict) and cached.get("cached_query") == question:
            self.exact_hits += 1
        else:
            self.semantic_hits += 1

    def verdict(self) -> list[str]:
        missing = [
            name
            for name, count in (
                ("a miss", self.misses),
                ("a semantic hit", self.semantic_hits),
                ("an exact hit", self.exact_hits),
            )
            if count == 0
        ]
        return self.problems + [f"never saw {name}" for name in missing]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default="http://localhost:8000")
    parser.add_argument("--api-key", default=None)
    args = parser.parse_args()
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    with httpx.Client(base_url=args.url, headers=headers, timeout=60) as client:
        try:
            health = client.get("/health")
        except httpx.HTTPError as exc:
            print(f"cannot reach {args.url}: {exc}. Start the stack with `make run`.")
            return 1
        health_body = health.json()
        print(f"health: {health.status_code} {health_body}\n")
        if health.status_code != 200:
            print("the stack is not healthy yet: wait for `make run` to finish starting")
            return 1
        seen = Seen(expected_dimension=health_body.get("embedding_dimension"))
        flushed = client.post(f"/v1/caches/{DEMO_CACHE}/flush")
        if flushed.status_code not in (200, 204):
            print(f"emptying cache {DEMO_CACHE!r}: HTTP {flushed.status_code} {flushed.text}")
            return 1
        print(f"cache {DEMO_CACHE!r} emptied; asking each question, its paraphrase, itself again")

        def ask(question: str) -> None:
            started = time.perf_counter()
            reply = client.post("/query", params={"cache_id": DEMO_CACHE}, json={"query": question})
            elapsed = (time.perf_counter() - started) * 1e3
            if reply.status_code != 200:
                print(f"  {question!r}: HTTP {reply.status_code} {reply.text}")
                seen.problems.append(f"{question!r}: HTTP {reply.status_code}")
                return
            body = reply.json()
            seen.record(question, body)
            if body["cache_hit"]:
                cached = body["cached_data"]
                print(
                    f"  HIT  {elapsed:7.1f} ms  similarity {cached['similarity_score']:.3f}  "
                    f"{question!r} ~ {cached['cached_query']!r}"
                )
            else:
                print(f"  MISS {elapsed:7.1f} ms  {question!r} -> {body['response'][:60]!r}")

        for question, paraphrase in QUESTIONS:
            ask(question)
            ask(paraphrase)
            ask(question)
        ask(UNRELATED)
        print(f"\nstats: {client.get('/cache/stats', params={'cache_id': DEMO_CACHE}).json()}")
    print(
        f"\nseen: {seen.misses} misses, {seen.semantic_hits} semantic hits, "
        f"{seen.exact_hits} exact hits, embedding dimension {seen.expected_dimension}"
    )
    failures = seen.verdict()
    for failure in failures:
        print(f"demo FAILED: {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
