"""The compose stack on a real container engine: images built once per session by `make images`,
one stack per store (embedded, Redis), each in its own compose project with a free port."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from bench.compose_stack import REPO, ComposeStack, ContainerHost, pick_engine
from tests.processes import free_port

# embedded: one cache server owns its file; redis: replicas share the store.
SCALES = {
    "embedded": {"embedder": 2, "cache_server": 1},
    "redis": {"embedder": 3, "cache_server": 2},
}


@pytest.fixture(scope="session")
def container_host() -> Iterator[ContainerHost]:
    engine = pick_engine()
    if engine is None:
        pytest.skip("no container engine: no Docker daemon, no podman (make images installs it)")
    subprocess.run(
        ["make", "images"], cwd=REPO, check=True, timeout=3600, env={**os.environ, "ENGINE": engine}
    )
    host = ContainerHost(engine)
    reason = host.reason_unusable("localhost/semcache-gateway:latest")
    if reason:
        pytest.skip(f"{engine} cannot run containers here: {reason}")
    host.start()
    yield host
    host.stop()


@dataclass
class RunningStack:
    stack: ComposeStack
    store: str
    url: str
    scale: dict[str, int]

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60)


@pytest.fixture(scope="module", params=sorted(SCALES))
def running_stack(
    request: pytest.FixtureRequest, container_host: ContainerHost
) -> Iterator[RunningStack]:
    store = str(request.param)
    port = free_port()
    env = {
        "CACHE_STORE_BACKEND": store,
        "GATEWAY_PORT": str(port),
        "SEMCACHE_REDIS_IMAGE": "localhost/semcache-redis:latest",
        "EMBEDDER_INTRA_OP_THREADS": "1",
    }
    stack = ComposeStack(container_host, f"semcache-test-{store}-{os.getpid()}", env)
    try:
        stack.up(SCALES[store])
        stack.wait_healthy("gateway")
        yield RunningStack(stack, store, f"http://127.0.0.1:{port}", dict(SCALES[store]))
    finally:
        stack.close()
