"""Throughput of moving a cache (`make export-cache`, `make import-cache`), real processes:
a cache of N QQP questions on the embedded store exported (with vectors, and without), then
imported into a fresh cache server on the embedded store (same model: the vectors are used;
again: every entry replaces itself; the prompts only: every one embedded again) and, with
`--redis`, on Redis. Entries per second, as the program reports its own time (no interpreter
start counted), best of `--runs`.

Run: python -m bench.transfer_bench [--entries 3000] [--runs 3] [--redis]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import re
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import grpc

from bench.qqp import load_pairs
from bench.stack import local_stack
from cache_server import transfer_cli
from protos.semcache.cache.v1 import cache_pb2 as pb
from protos.semcache.cache.v1 import cache_pb2_grpc as pb_grpc
from tests.processes import RedisProcess, ServiceProcess

RESULTS = Path("bench/results")


async def fill(address: str, prompts: list[str]) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.CacheServiceStub(channel)
        limit = asyncio.Semaphore(16)

        async def put(i: int, prompt: str) -> None:
            async with limit:
                request = pb.SetRequest(
                    cache_id="moved",
                    prompt=prompt,
                    response=f"answer {i}: " + prompt * 3,
                    attributes={"lang": "en"},
                    ttl_seconds=86_400,
                )
                await stub.Set(request, timeout=60)

        await asyncio.gather(*(put(i, p) for i, p in enumerate(prompts)))


def timed(*argv: str) -> float:
    """Seconds the program took, as it says itself ("... in 1.2 s")."""
    summary, bars = io.StringIO(), io.StringIO()  # its progress bars are not shown
    with contextlib.redirect_stdout(summary), contextlib.redirect_stderr(bars):
        status = transfer_cli.main(list(argv))
    said = summary.getvalue()
    if status != 0:
        raise RuntimeError(
            f"transfer_cli {argv[0]} failed ({status}): {said}{bars.getvalue()[-600:]}"
        )
    found = re.search(r" in ([0-9.]+) s", said)
    assert found, said
    return float(found.group(1))


def cache_server(data: Path, embedder: str, *args: str) -> ServiceProcess:
    return ServiceProcess(
        "cache_server",
        "--data-dir",
        str(data),
        "--embedder-addresses",
        embedder,
        "--log-level",
        "WARNING",
        "--max-cache-size",
        "1000000",
        *args,
    )


@contextlib.contextmanager
def target(kind: str, data: Path, embedder: str, redis: RedisProcess | None) -> Iterator[str]:
    args: tuple[str, ...] = ()
    if kind == "redis":
        assert redis is not None
        prefix = f"bench-{uuid.uuid4().hex[:8]}"
        args = ("--store-backend", "redis", "--redis-url", redis.url, "--redis-prefix", prefix)
    with cache_server(data / uuid.uuid4().hex, embedder, *args) as server:
        yield server.address


def best(runs: int, measure: Callable[[], float]) -> float:
    return min(measure() for _ in range(runs))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=Path("models/default"))
    parser.add_argument("--entries", type=int, default=3000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--redis", action="store_true", help="import into Redis as well")
    args = parser.parse_args(argv)
    prompts = list(dict.fromkeys(p.text_a for p in load_pairs(args.entries * 2)))[: args.entries]
    n = len(prompts)
    rows: dict[str, float] = {}
    with ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        services = stack.enter_context(
            local_stack(args.model_dir, "--max-cache-size", "1000000", with_gateway=False)
        )
        redis = None
        if args.redis:
            redis = RedisProcess(folder / "redis").start()
            stack.callback(redis.stop)
        source, embedder = services.cache.address, services.embedder.address
        started = time.perf_counter()
        asyncio.run(fill(source, prompts))
        print(f"filled {n} entries in {time.perf_counter() - started:.1f} s (Set, one embed each)")
        full, bare = folder / "full.jsonl.gz", folder / "bare.jsonl.gz"
        common = ("--address", source, "--cache-id", "moved")
        rows["export, vectors, gzip"] = best(
            args.runs, lambda: timed("export", *common, "--output", str(full))
        )
        rows["export, vectors, plain"] = best(
            args.runs, lambda: timed("export", *common, "--output", str(folder / "full.jsonl"))
        )
        rows["export, no vectors, gzip"] = best(
            args.runs, lambda: timed("export", *common, "--output", str(bare), "--omit-vectors")
        )
        sizes = {p.name: p.stat().st_size for p in folder.glob("*.jsonl*")}
        for kind in ["embedded", "redis"] if args.redis else ["embedded"]:

            def first_and_again(kind: str = kind) -> tuple[float, float]:
                with target(kind, folder, embedder, redis) as address:
                    first = timed("import", "--address", address, "--input", str(full))
                    return first, timed("import", "--address", address, "--input", str(full))

            runs = [first_and_again() for _ in range(args.runs)]
            rows[f"import into {kind}, same model (vectors used)"] = min(r[0] for r in runs)
            rows[f"import into {kind}, again (every entry replaced)"] = min(r[1] for r in runs)

            def reembedded(kind: str = kind) -> float:
                with target(kind, folder, embedder, redis) as address:
                    return timed("import", "--address", address, "--input", str(bare))

            rows[f"import into {kind}, no vectors (re-embedded)"] = best(args.runs, reembedded)
    print(f"\n{n} entries (prompt ~60 chars, response ~190, 384-dim vectors); files: {sizes}")
    print("| step | seconds | entries/s |\n|---|---|---|")
    for name, seconds in rows.items():
        print(f"| {name} | {seconds:.2f} | {n / seconds:,.0f} |")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "transfer.json").write_text(
        json.dumps({"entries": n, "file_bytes": sizes, "seconds": rows}, indent=2)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
