"""Figures of the container images and the compose stack (make bench-containers): image sizes,
and for each store the time from `docker-compose up` to each tier's first passed health check
and to the first answer through the gateway, cold (new volumes) and warm (`down`, then `up`
on the kept volumes), with the tiers scaled out as in the tests.

    python -m bench.container_bench [--runs 2]

Needs the images (`make images`) and a container engine (podman or Docker).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import httpx

from bench.compose_stack import IMAGES, ComposeStack, ContainerHost, pick_engine
from tests.processes import free_port

RESULTS = Path(__file__).resolve().parent / "results"
SCALES = {
    "embedded": {"embedder": 2, "cache_server": 1},
    "redis": {"embedder": 3, "cache_server": 2},
}
TIERS = ("redis", "embedder", "cache_server", "gateway")


def start_once(stack: ComposeStack, scale: dict[str, int], url: str) -> dict[str, float]:
    """Seconds from `up` to each tier's last container passing its first health check, and to
    the first answered query."""
    started = time.monotonic()
    stack.up(scale)
    stack.wait_healthy("gateway")
    figures = {}
    for tier in TIERS:
        for _ in range(2):  # the ticker may still be recording the last pass
            times = [stack.first_healthy(n) for n in stack.containers(tier)]
            if all(times):
                break
            time.sleep(1)
        up_at = min(stack.started_at(n) for n in stack.containers("redis"))
        figures[tier] = max((t - up_at).total_seconds() for t in times if t is not None)
    with httpx.Client(base_url=url, timeout=60) as client:
        reply = client.post("/query", params={"cache_id": "bench"}, json={"query": "warm-up?"})
        reply.raise_for_status()
    figures["first_answer"] = time.monotonic() - started
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.container_bench")
    parser.add_argument("--runs", type=int, default=2, help="cold and warm starts per store")
    args = parser.parse_args(argv)
    engine = pick_engine()
    if engine is None:
        raise SystemExit("no container engine (podman or Docker): make images installs podman")
    host = ContainerHost(engine)
    host.start()
    report: dict[str, object] = {"engine": engine}
    try:
        sizes = {image: host.image_size_mb(f"localhost/{image}:latest") for image in IMAGES}
        report["image_mb"] = sizes
        print(f"engine: {engine}")
        for image, size in sizes.items():
            print(f"  {image:24s} {size:7.0f} MB")
        for store, scale in SCALES.items():
            port = free_port()
            env = {
                "CACHE_STORE_BACKEND": store,
                "GATEWAY_PORT": str(port),
                "SEMCACHE_REDIS_IMAGE": "localhost/semcache-redis:latest",
                "EMBEDDER_INTRA_OP_THREADS": "1",
            }
            stack = ComposeStack(host, f"semcache-bench-{store}-{os.getpid()}", env)
            runs: dict[str, list[dict[str, float]]] = {"cold": [], "warm": []}
            try:
                for i in range(args.runs):
                    kind = "cold" if i == 0 else "warm"
                    runs[kind].append(start_once(stack, scale, f"http://127.0.0.1:{port}"))
                    stack.down(volumes=False)
            finally:
                stack.close()
            report[store] = runs
            shape = ", ".join(f"{n} {s}" for s, n in scale.items())
            for kind, figures in runs.items():
                if not figures:
                    continue
                median = {k: statistics.median(f[k] for f in figures) for k in figures[0]}
                print(
                    f"{store} ({shape}), {kind}: "
                    + ", ".join(f"{k} healthy {median[k]:.1f} s" for k in TIERS)
                    + f"; first answer {median['first_answer']:.1f} s after up"
                )
    finally:
        host.stop()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "container_bench.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
