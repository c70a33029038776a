"""Deployment files: docker-compose.yml parses and wires health checks; run-time images and
dependencies hold no PyTorch; the container health check works against real services."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib

import pytest

from tests.processes import REPO, free_port

SERVICES = {"embedder", "cache_server", "gateway", "redis"}


def compose(*args: str) -> str:
    binary = shutil.which("docker-compose")
    assert binary, "docker-compose is missing: `make test` installs it (make compose-tools)"
    result = subprocess.run([binary, *args], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_compose_file_parses_and_every_service_has_a_health_check() -> None:
    assert set(compose("config", "--services").split()) == SERVICES
    config = compose("config")
    assert config.count("healthcheck:") == len(SERVICES)
    # cache_server waits for embedder and redis; gateway for cache_server
    assert config.count("condition: service_healthy") == 3
    assert "CACHE_EMBEDDER_ADDRESSES: embedder:50052" in config
    assert "CACHE_STORE_BACKEND: redis" in config and "redis://redis:6379/0" in config
    assert "container_name" not in config  # the embedder must stay scalable


def test_runtime_dependencies_hold_no_pytorch() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    runtime = " ".join(project["dependencies"]).lower()
    for heavy in ("torch", "optimum", "transformers", "sentence-transformers"):
        assert heavy not in runtime
    assert any(d.startswith("torch==") for d in project["optional-dependencies"]["export"])


def test_dockerfile_keeps_export_tools_out_of_the_runtime_images() -> None:
    text = (REPO / "Dockerfile").read_text()
    stages = {name for _, name in re.findall(r"^FROM (\S+) AS (\S+)", text, flags=re.M)}
    assert {"deps", "runtime", "embedder", "cache_server", "gateway", "redis"} <= stages
    assert "[export" not in text and "optimum" not in text  # the model is exported on the host
    runtime_part = text[text.index("AS runtime") : text.index("AS redis-deps")]
    assert "pip install" not in runtime_part
    assert "USER 10001:10001" in runtime_part  # containers run as a non-root user


def test_health_check_command(embedder_process: str) -> None:
    def check(*args: str) -> int:
        return subprocess.run(
            [sys.executable, "-m", "service_runtime.healthcheck", *args], cwd=REPO, timeout=30
        ).returncode

    assert check("grpc", embedder_process) == 0
    assert check("grpc", f"127.0.0.1:{free_port()}") == 1
    assert check("http", f"http://127.0.0.1:{free_port()}/health") == 1
    assert check("bogus") == 2


pytestmark = pytest.mark.slow
