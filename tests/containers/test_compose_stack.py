"""docker-compose.yml started for real (podman or Docker) on both stores: health gating, the
three kinds of answer through the gateway, every tier balanced over its scaled-out peers,
non-root processes, images without PyTorch, and data kept across `down` and `up`."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.compose_stack import IMAGES, ContainerHost
from tests.containers.conftest import RunningStack

QUESTION = "How do I learn Python quickly?"
PARAPHRASE = "What is the fastest way to learn Python?"
CACHE = "containers"
NON_ROOT_UID = 10001


@pytest.mark.parametrize("image", IMAGES)
def test_images_hold_no_pytorch_and_run_as_non_root(
    container_host: ContainerHost, image: str
) -> None:
    probe = (
        "import importlib.util, os; "
        "print([m for m in ('torch', 'transformers', 'optimum') if importlib.util.find_spec(m)],"
        " os.getuid())"
    )
    out = container_host.cli("run", "--rm", f"localhost/{image}:latest", "python", "-c", probe)
    assert out.split() == ["[]", str(NON_ROOT_UID)]


def test_each_service_starts_only_once_what_it_depends_on_is_healthy(
    running_stack: RunningStack,
) -> None:
    stack = running_stack.stack
    gates = (("cache_server", ("embedder", "redis")), ("gateway", ("cache_server",)))
    for service, depends_on in gates:
        for dependent in stack.containers(service):
            started = stack.started_at(dependent)
            for dependency in depends_on:
                for name in stack.containers(dependency):
                    healthy = stack.first_healthy(name)
                    assert healthy is not None and healthy <= started, (
                        f"{dependent} started at {started}, before {name} was healthy ({healthy})"
                    )


def test_miss_then_semantic_hit_then_exact_hit_through_the_gateway(
    running_stack: RunningStack,
) -> None:
    with running_stack.client() as client:
        assert client.post(f"/v1/caches/{CACHE}/flush").status_code < 300
        miss = client.post("/query", params={"cache_id": CACHE}, json={"query": QUESTION}).json()
        assert miss["cache_hit"] is False and miss["response"]
        semantic = client.post(
            "/query", params={"cache_id": CACHE}, json={"query": PARAPHRASE}
        ).json()
        assert semantic["cache_hit"] is True
        assert semantic["cached_data"]["cached_query"] == QUESTION
        assert 0.85 <= semantic["cached_data"]["similarity_score"] < 0.999
        assert semantic["response"] == miss["response"]
        exact = client.post("/query", params={"cache_id": CACHE}, json={"query": QUESTION}).json()
        assert exact["cache_hit"] is True
        assert exact["cached_data"]["similarity_score"] == pytest.approx(1.0, abs=1e-3)


def _counter(text: str, name: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#")
    )


def test_requests_are_spread_over_every_scaled_out_replica(running_stack: RunningStack) -> None:
    stack = running_stack.stack
    with running_stack.client() as client:
        for i in range(40):
            reply = client.post(
                "/query", params={"cache_id": CACHE}, json={"query": f"balance question {i}?"}
            )
            assert reply.status_code == 200
    metrics = (
        ("embedder", 9102, "semcache_embedder_texts_total"),
        ("cache_server", 9101, "semcache_cache_lookups_total"),
    )
    for service, port, counter in metrics:
        names = stack.containers(service)
        assert len(names) == running_stack.scale[service]
        for name in names:
            scraped = stack.exec(
                name, "python", "-c",
                f"import urllib.request; print(urllib.request.urlopen("
                f"'http://localhost:{port}/metrics').read().decode())",
            )  # fmt: skip
            assert scraped.returncode == 0, scraped.stderr
            assert _counter(scraped.stdout, counter) > 0, f"{name} got no requests"


def test_every_process_runs_as_the_non_root_user(running_stack: RunningStack) -> None:
    stack = running_stack.stack
    for service in ("embedder", "cache_server", "gateway", "redis"):
        for name in stack.containers(service):
            pid = stack.inspect(name)["State"]["Pid"]
            status = Path(f"/proc/{pid}/status").read_text()
            uids = next(line for line in status.splitlines() if line.startswith("Uid:"))
            assert set(uids.split()[1:]) == {str(NON_ROOT_UID)}, f"{name}: {uids}"


def test_answers_survive_down_and_up(running_stack: RunningStack) -> None:
    """Last in the module: the stack is recreated from its volumes."""
    stack = running_stack.stack
    with running_stack.client() as client:
        before = client.get("/cache/stats", params={"cache_id": CACHE}).json()["cache_size"]
    assert before > 0
    stack.down(volumes=False)
    stack.up(running_stack.scale)
    stack.wait_healthy("gateway")
    with running_stack.client() as client:
        stats = client.get("/cache/stats", params={"cache_id": CACHE}).json()
        assert stats["cache_size"] == before
        again = client.post("/query", params={"cache_id": CACHE}, json={"query": QUESTION}).json()
        assert again["cache_hit"] is True and again["cached_data"]["cached_query"] == QUESTION
