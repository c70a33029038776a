"""Demo client: sends questions and their paraphrases to a running stack (`make run`) and
prints hits, similarities and timings.

    python client.py [--url http://localhost:8000] [--api-key KEY]    (or: make demo)
"""

from __future__ import annotations

import argparse
import sys
import time

import httpx

QUESTIONS = [
    ("What is the capital of France?", "Which city is the capital of France?"),
    ("How do I learn Python quickly?", "What is the fastest way to learn Python?"),
    ("How can I improve my sleep?", "What can I do to sleep better?"),
    ("What causes rainbows?", "Why do rainbows appear in the sky?"),
]
UNRELATED = "How many legs does a spider have?"


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
        print(f"health: {health.status_code} {health.json()}\n")

        def ask(question: str) -> None:
            started = time.perf_counter()
            reply = client.post("/query", json={"query": question})
            elapsed = (time.perf_counter() - started) * 1e3
            if reply.status_code != 200:
                print(f"  {question!r}: HTTP {reply.status_code} {reply.text}")
                return
            body = reply.json()
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
        print(f"\nstats: {client.get('/cache/stats').json()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
