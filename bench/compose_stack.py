"""docker-compose.yml run for real on this host's container engine: the harness behind
`tests/containers/` and `bench/container_bench.py`.

The engine is Docker where its daemon answers, else podman, whose Docker-compatible API
service is started here for docker-compose to talk to. podman schedules health checks with
systemd timers; on a host without systemd (containers, CI runners) nothing would ever run them
and every `depends_on: condition: service_healthy` would wait forever, so a `HealthTicker` runs
each container's check at its own interval, as those timers would. The gating itself stays
docker-compose's: it starts a service only once the ones it depends on report healthy.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CONTAINERS = REPO / "deploy" / "containers"
IMAGES = ("semcache-embedder", "semcache-cache-server", "semcache-gateway", "semcache-redis")


def parse_time(text: str) -> datetime:
    """An engine's RFC 3339 time (nanoseconds, `Z` or an offset) as an aware datetime."""
    text = text.strip().replace("Z", "+00:00")
    if "." in text:  # datetime takes microseconds at most
        head, rest = text.split(".", 1)
        digits = "".join(c for c in rest if c.isdigit())
        offset = rest[len(digits) :]
        text = f"{head}.{digits[:6]}{offset}"
    return datetime.fromisoformat(text).astimezone(UTC)


def pick_engine() -> str | None:
    """docker when its daemon answers, podman when installed, else None."""
    if (
        shutil.which("docker")
        and subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0
    ):
        return "docker"
    return "podman" if shutil.which("podman") else None


class HealthTicker:
    """Runs `podman healthcheck run` for every container of a project, every second until it
    first passes and then at its own interval, and remembers when each first passed (podman's
    health log keeps only the last few checks)."""

    def __init__(self, engine_env: Mapping[str, str], project: str) -> None:
        self._env = dict(engine_env)
        self._project = project
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="health-ticker", daemon=True)
        self.first_healthy: dict[str, datetime] = {}  # container name -> time of first pass
        self._next: dict[str, float] = {}

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def forget(self) -> None:
        self.first_healthy.clear()
        self._next.clear()

    def _podman(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["podman", *args], env=self._env, capture_output=True, text=True, timeout=60
        )

    def _loop(self) -> None:
        while not self._stop.wait(0.5):
            listed = self._podman(
                "ps", "--filter", f"label=com.docker.compose.project={self._project}",
                "--format", "{{.Names}}",
            )  # fmt: skip
            for name in listed.stdout.split():
                now = time.monotonic()
                if now < self._next.get(name, 0.0):
                    continue
                config = self._podman("inspect", "--format", "{{json .Config.Healthcheck}}", name)
                check = json.loads(config.stdout or "null") if config.returncode == 0 else None
                if not check:
                    self._next[name] = float("inf")
                    continue
                # Every second until the first pass (Docker's start_interval), then at the
                # check's own interval.
                interval = int(check.get("Interval") or 5e9) / 1e9
                self._next[name] = now + (interval if name in self.first_healthy else 1.0)
                # The time the passing check began: the container cannot have been healthy
                # before it, and docker-compose could not have seen it so.
                began = datetime.now(UTC)
                if self._podman("healthcheck", "run", name).returncode == 0:
                    self.first_healthy.setdefault(name, began)


class ContainerHost:
    """The engine behind docker-compose; `reason_unusable()` says why containers can't run."""

    def __init__(self, engine: str) -> None:
        self.engine = engine
        self._workdir = Path(tempfile.mkdtemp(prefix="semcache-containers-"))
        self._service: subprocess.Popen[bytes] | None = None
        self.env = {**os.environ}
        if engine == "podman":
            self.env.setdefault("CONTAINERS_CONF", str(CONTAINERS / "containers.conf"))

    def cli(self, *args: str, timeout: float = 120, check: bool = True) -> str:
        result = subprocess.run(
            [self.engine, *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"{self.engine} {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout

    def reason_unusable(self, image: str) -> str | None:
        """None when a container of `image` runs here, else what the engine said."""
        result = subprocess.run(
            [self.engine, "run", "--rm", image, "true"],
            env=self.env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        return None if result.returncode == 0 else result.stderr.strip()[-500:]

    def start(self) -> None:
        """For podman: its Docker-compatible API on a socket of our own, for docker-compose."""
        if self.engine != "podman":
            return
        socket = self._workdir / "podman.sock"
        self._service = subprocess.Popen(
            [self.engine, "system", "service", "--time=0", f"unix://{socket}"],
            env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while not socket.exists():
            if time.monotonic() > deadline or self._service.poll() is not None:
                raise RuntimeError("podman's API service did not start")
            time.sleep(0.1)
        self.env["DOCKER_HOST"] = f"unix://{socket}"

    def stop(self) -> None:
        if self._service is not None:
            self._service.terminate()
            self._service.wait(timeout=30)
        shutil.rmtree(self._workdir, ignore_errors=True)

    def image_size_mb(self, image: str) -> float:
        return int(self.cli("image", "inspect", "--format", "{{.Size}}", image)) / 1e6

    def needs_ticker(self) -> bool:
        return self.engine == "podman" and not Path("/run/systemd/system").exists()


class ComposeStack:
    """One compose project (its own name, volumes and network) on a ContainerHost."""

    def __init__(self, host: ContainerHost, project: str, env: Mapping[str, str]) -> None:
        self.host = host
        self.project = project
        self.env = {**host.env, **env}
        self.files = ["docker-compose.yml"]
        if host.engine == "podman":
            self.files.append(str(CONTAINERS / "compose.limits.yml"))
        self.ticker = HealthTicker(self.env, project) if host.needs_ticker() else None
        if self.ticker:
            self.ticker.start()

    def compose(self, *args: str, timeout: float = 600) -> str:
        binary = shutil.which("docker-compose")
        if binary is None:
            raise RuntimeError("docker-compose is missing: make compose-tools installs it")
        argv = [binary, "-p", self.project]
        for name in self.files:
            argv += ["-f", name]
        result = subprocess.run(
            [*argv, *args], cwd=REPO, env=self.env, capture_output=True, text=True,
            timeout=timeout,
        )  # fmt: skip
        if result.returncode != 0:
            raise RuntimeError(f"docker-compose {' '.join(args)}: {result.stderr[-2000:]}")
        return result.stdout

    def up(self, scale: Mapping[str, int] | None = None) -> None:
        args = ["up", "-d", "--no-build"]
        for service, count in (scale or {}).items():
            args += ["--scale", f"{service}={count}"]
        self.compose(*args)

    def down(self, *, volumes: bool) -> None:
        self.compose("down", *(["-v"] if volumes else []), "--timeout", "20")
        if self.ticker:  # the next `up` reuses the container names
            self.ticker.forget()

    def close(self) -> None:
        try:
            self.down(volumes=True)
        finally:
            if self.ticker:
                self.ticker.stop()

    def containers(self, service: str) -> list[str]:
        ids = self.compose("ps", "-q", service).split()
        return [self.inspect(i)["Name"].lstrip("/") for i in ids]

    def inspect(self, container: str) -> dict[str, Any]:
        reply = json.loads(self.host.cli("inspect", container))
        return dict(reply[0])

    def started_at(self, container: str) -> datetime:
        return parse_time(self.inspect(container)["State"]["StartedAt"])

    def first_healthy(self, container: str) -> datetime | None:
        """When the container's health check first passed (the ticker's record, or the
        earliest pass the engine's health log still holds)."""
        if self.ticker and container in self.ticker.first_healthy:
            return self.ticker.first_healthy[container]
        state = self.inspect(container)["State"]
        health = state.get("Health") or state.get("Healthcheck") or {}
        passes = [parse_time(e["End"]) for e in health.get("Log") or [] if e["ExitCode"] == 0]
        return min(passes) if passes else None

    def wait_healthy(self, service: str, timeout: float = 300) -> float:
        """Seconds until every container of the service has passed its health check."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            names = self.containers(service)
            if names and all(self.first_healthy(n) for n in names):
                return time.monotonic() - started
            time.sleep(0.5)
        raise TimeoutError(f"{service} not healthy after {timeout:.0f} s")

    def exec(self, container: str, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.host.engine, "exec", container, *argv], env=self.env, capture_output=True,
            text=True, timeout=120,
        )  # fmt: skip
