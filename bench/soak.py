"""Bounded soak through the gateway: several concurrent clients mixing paraphrase hits, misses,
LangCache sets and deletes for a few minutes. Reports errors (any non-2xx, any exception),
latency p50/p99 per kind, and each process's memory (RSS) over time: once warm, it must not
keep growing.

Run: python -m bench.soak [--seconds 180] [--clients 8] [--max-growth-percent 5]   (make soak)

Exits non-zero when a request failed or a process's RSS grew by more than the bound over the
second half of the run (the first half is warm-up: caches fill, eviction starts).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from collections import defaultdict
from pathlib import Path

import httpx
import psutil

from bench.qqp import load_pairs
from bench.stack import local_stack
from bench.timing import p50_p99_ms

RESULTS = Path("bench/results")


async def client(
    url: str,
    seed: int,
    until: float,
    pairs: list[tuple[str, str]],
    latencies: dict[str, list[float]],
    errors: list[str],
) -> None:
    rng = random.Random(seed)
    stored: list[str] = []
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        while time.monotonic() < until:
            a, b = rng.choice(pairs)
            kind = rng.choices(["hit", "miss", "set", "delete"], weights=[5, 2, 2, 1])[0]
            started = time.perf_counter()
            try:
                if kind == "hit":
                    reply = await http.post("/query", json={"query": b})
                elif kind == "miss":
                    reply = await http.post(
                        "/query", json={"query": f"{a} #{rng.randrange(10**9)}"}
                    )
                elif kind == "set":
                    reply = await http.post(
                        "/v1/caches/soak/entries",
                        json={"prompt": a, "response": "soak", "attributes": {"client": str(seed)}},
                    )
                    if reply.status_code == 201:
                        stored.append(reply.json()["entryId"])
                elif stored:
                    reply = await http.delete(f"/v1/caches/soak/entries/{stored.pop()}")
                    if reply.status_code == 404:  # evicted or deleted already: not an error
                        reply = httpx.Response(204)
                else:
                    continue
                if reply.status_code >= 300:
                    errors.append(f"{kind}: HTTP {reply.status_code} {reply.text[:120]}")
            except httpx.HTTPError as exc:
                errors.append(f"{kind}: {type(exc).__name__} {exc}")
            latencies[kind].append(time.perf_counter() - started)


async def soak(
    url: str,
    seconds: float,
    clients: int,
    pairs: list[tuple[str, str]],
    processes: dict[str, psutil.Process],
) -> dict[str, object]:
    latencies: dict[str, list[float]] = defaultdict(list)
    errors: list[str] = []
    until = time.monotonic() + seconds
    memory: dict[str, list[float]] = {name: [] for name in processes}

    async def sample() -> None:
        while time.monotonic() < until:
            for name, proc in processes.items():
                memory[name].append(proc.memory_info().rss / 2**20)
            await asyncio.sleep(5)

    await asyncio.gather(
        sample(), *(client(url, i, until, pairs, latencies, errors) for i in range(clients))
    )
    return {"latencies": latencies, "errors": errors, "memory": memory}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=180)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument(
        "--max-growth-percent",
        type=float,
        default=5.0,
        help="fail when a process's RSS grows more than this over the second half",
    )
    args = parser.parse_args()
    pairs = [(p.text_a, p.text_b) for p in load_pairs(2000) if p.text_a != p.text_b]
    with local_stack(Path("models/default"), "--max-cache-size", "500") as services:
        embedder, cache, gateway = services.embedder, services.cache, services.gateway
        assert gateway is not None
        processes: dict[str, psutil.Process] = {}
        for name, popen in (
            ("embedder", embedder.process),
            ("cache_server", cache.process),
            ("gateway", gateway.process),
        ):
            assert popen is not None
            processes[name] = psutil.Process(popen.pid)
        with httpx.Client(base_url=gateway.url, timeout=30) as http:  # seed some hits
            for a, _ in pairs[:300]:
                http.post("/query", json={"query": a})
        result = asyncio.run(soak(gateway.url, args.seconds, args.clients, pairs, processes))
    latencies = result["latencies"]
    errors = result["errors"]
    memory = result["memory"]
    assert isinstance(latencies, dict) and isinstance(errors, list) and isinstance(memory, dict)
    total = sum(len(v) for v in latencies.values())
    lines = [
        f"soak: {args.seconds:.0f} s, {args.clients} clients, {total} requests, "
        f"{len(errors)} errors",
        "",
        "| kind | requests | p50 ms | p99 ms |",
        "|---|---:|---:|---:|",
    ]
    for kind, values in sorted(latencies.items()):
        p50, p99 = p50_p99_ms(values)
        lines.append(f"| {kind} | {len(values)} | {p50:.1f} | {p99:.1f} |")
    lines += [
        "",
        "| process | RSS after warm-up MB | half-way MB | at end MB | growth, 2nd half |",
        "|---|---:|---:|---:|---:|",
    ]
    grew: list[str] = []
    for name, samples in memory.items():
        warm = samples[min(2, len(samples) - 1)]  # after ~10 s
        half = samples[len(samples) // 2]
        growth = (samples[-1] - half) / half * 100
        if growth > args.max_growth_percent:
            grew.append(f"{name} grew {growth:+.1f}% over the second half")
        lines.append(f"| {name} | {warm:.0f} | {half:.0f} | {samples[-1]:.0f} | {growth:+.1f}% |")
    lines += [f"- {e}" for e in errors[:10]]
    verdict = [*grew, *([f"{len(errors)} requests failed"] if errors else [])]
    bound = f"every process within +{args.max_growth_percent:g}% over the second half"
    lines.append("")
    lines.append(f"FAILED: {'; '.join(verdict)}" if verdict else f"passed: 0 errors, {bound}")
    text = "\n".join(lines)
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "soak.md").write_text(text + "\n")
    return 1 if verdict else 0


if __name__ == "__main__":
    sys.exit(main())
