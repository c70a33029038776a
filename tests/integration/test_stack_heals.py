"""`make run` heals: the stack (`python -m service_runtime.stack`, real processes on free ports)
restarts a service that dies while the others keep serving, stops everything on Ctrl-C, and
takes its services down with it when it is killed itself.

While the embedder is down, exact repeats are still answered (the cache server needs no
embedder for them) and a paraphrase is a 503; once the stack has started it again, the paraphrase
is answered again.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType

import httpx
import pytest

from tests.processes import REPO, free_port

pytestmark = pytest.mark.slow

QUESTION = "What is the capital of France?"
PARAPHRASE = "Which city is the capital of France?"
SERVICES = ("embedder", "cache_server", "gateway")
# Variables the services read (and the original product's aliases): none leaks in from outside.
OWN_PREFIXES = ("EMBEDDER_", "CACHE_", "GATEWAY_")
ALIASES = ("SIMILARITY_THRESHOLD", "MAX_CACHE_SIZE", "MODEL_DEVICE")


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, dead but not yet reaped by whoever adopted it, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.05)


class Stack:
    """The stack as `make run` starts it, on free ports, its output read into `lines`."""

    def __init__(self, model_dir: Path, data_dir: Path) -> None:
        self.gateway_port = free_port()
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(OWN_PREFIXES) and k not in ALIASES
        }
        env.update(
            EMBEDDER_PORT=str(free_port()),
            CACHE_PORT=str(free_port()),
            EMBEDDER_METRICS_PORT=str(free_port()),
            CACHE_METRICS_PORT=str(free_port()),
            GATEWAY_PORT=str(self.gateway_port),
            EMBEDDER_HOST="127.0.0.1",
            CACHE_HOST="127.0.0.1",
            GATEWAY_HOST="127.0.0.1",
            EMBEDDER_INTRA_OP_THREADS="2",
            CACHE_DATA_DIR=str(data_dir),
            CACHE_EMBEDDER_TIMEOUT_S="2",
        )
        self.env = env
        self.command = [
            sys.executable,
            "-m",
            "service_runtime.stack",
            "--model-dir",
            str(model_dir),
        ]
        self.process: subprocess.Popen[bytes] | None = None
        self.lines: list[str] = []
        self._reader: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    def start(self) -> Stack:
        self.process = subprocess.Popen(
            self.command,
            cwd=REPO,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # signals from the terminal running pytest stay with pytest
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for raw in iter(self.process.stdout.readline, b""):
            self.lines.append(raw.decode(errors="replace").rstrip())

    def output(self) -> str:
        return "\n".join(self.lines[-200:])

    def join_output(self) -> None:
        """Waits for the last of the output, once the stack has exited."""
        if self._reader is not None:
            self._reader.join(10)

    def pids(self, service: str) -> list[int]:
        """Pids of `service`, one per start, oldest first (from `stack: started X (pid N...)`)."""
        pattern = re.compile(rf"^stack: started {service} \(pid (\d+)")
        return [int(m.group(1)) for line in list(self.lines) if (m := pattern.match(line))]

    def all_pids(self) -> list[int]:
        return [pid for service in SERVICES for pid in self.pids(service)]

    def has_line(self, fragment: str) -> bool:
        return any(fragment in line for line in list(self.lines))

    def wait_line(self, fragment: str, timeout: float) -> None:
        self.wait(lambda: self.has_line(fragment), timeout, f"no line with {fragment!r}")

    def wait(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        def done() -> bool:
            assert self.process is not None
            if self.process.poll() is not None and not condition():
                raise RuntimeError(f"stack exited with {self.process.returncode}:\n{self.output()}")
            return condition()

        try:
            wait_until(done, timeout, what)
        except TimeoutError:
            raise TimeoutError(f"{what} within {timeout} s:\n{self.output()}") from None

    def wait_healthy(self, client: httpx.Client, timeout: float) -> None:
        def healthy() -> bool:
            try:
                return client.get("/health").status_code == 200
            except httpx.HTTPError:
                return False

        self.wait(healthy, timeout, "GET /health never 200")

    def close(self) -> None:
        """Whatever happened: the stack stopped (SIGTERM, then SIGKILL) and no service left."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        for pid in self.all_pids():
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        self.join_output()

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@pytest.fixture
def model_dir(request: pytest.FixtureRequest) -> Path:
    """models/default as `make run` uses it, where `make model` exported it; else the packaged
    model, exported for the session."""
    default = REPO / "models" / "default"
    if (default / "semcache-model.json").exists():
        return default
    minilm: Path = request.getfixturevalue("minilm_dir")
    return minilm


@pytest.fixture
def stack(model_dir: Path, tmp_path: Path) -> Iterator[Stack]:
    with Stack(model_dir, tmp_path / "data") as running:
        yield running


def query(client: httpx.Client, text: str) -> httpx.Response:
    return client.post("/query", json={"query": text})


def test_a_killed_embedder_is_restarted_while_the_others_keep_serving(stack: Stack) -> None:
    with httpx.Client(base_url=stack.url, timeout=30) as client:
        stack.wait_healthy(client, 120)
        miss, exact = query(client, QUESTION), query(client, QUESTION)
        assert [miss.status_code, exact.status_code] == [200, 200], exact.text
        assert not miss.json()["cache_hit"] and exact.json()["cache_hit"]
        [embedder] = stack.pids("embedder")
        others = {service: stack.pids(service) for service in ("cache_server", "gateway")}

        # The stack is paused (SIGSTOP) while the embedder is killed, so that it is down for as
        # long as the checks below take, not just until the restart 0.5 s later; it then finds
        # the death on its own once it continues.
        assert stack.process is not None
        os.kill(stack.process.pid, signal.SIGSTOP)
        try:
            os.kill(embedder, signal.SIGKILL)
            wait_until(lambda: not alive(embedder), 10, "the embedder did not die")
            down = client.get("/health")
            assert down.status_code == 503 and "embedder" in down.json()["down"], down.text
            repeat = query(client, QUESTION)
            assert repeat.status_code == 200 and repeat.json()["cache_hit"], repeat.text
            assert query(client, PARAPHRASE).status_code == 503
        finally:
            os.kill(stack.process.pid, signal.SIGCONT)

        stack.wait_line("stack: embedder died (killed by SIGKILL)", 10)
        assert stack.has_line("restarting in 0.5 s (restart 1)"), stack.output()
        stack.wait(lambda: len(stack.pids("embedder")) == 2, 10, "the embedder not started again")
        assert stack.has_line("; restart 1)"), stack.output()
        restarted = stack.pids("embedder")[1]
        assert restarted != embedder and alive(restarted)

        deadline = time.monotonic() + 60
        while (semantic := query(client, PARAPHRASE)).status_code != 200:
            assert semantic.status_code == 503, semantic.text
            assert time.monotonic() < deadline, f"{semantic.text}\n{stack.output()}"
            time.sleep(0.2)
        assert semantic.json()["query"] == PARAPHRASE
        assert client.get("/health").status_code == 200
        # Only the embedder was started again; the others served throughout.
        assert {s: stack.pids(s) for s in others} == others
        assert all(alive(pid) for pids in others.values() for pid in pids)

    pids = stack.all_pids()
    os.kill(stack.process.pid, signal.SIGINT)
    assert stack.process.wait(30) == 0, stack.output()
    stack.join_output()
    assert stack.lines[-1] == "stack: stopped", stack.output()
    assert not [pid for pid in pids if alive(pid)], stack.output()
    stopping = stack.lines.index("stack: stopping all")
    assert not [line for line in stack.lines[stopping:] if line.startswith("stack: started")]


def test_services_die_with_a_killed_stack(stack: Stack) -> None:
    """PR_SET_PDEATHSIG: a stack killed with SIGKILL, which cannot stop them itself, still
    takes its services down. (They are serving first: a service still starting up may die on
    its own when its output pipe breaks, which would prove nothing.)"""
    with httpx.Client(base_url=stack.url, timeout=30) as client:
        stack.wait_healthy(client, 120)
    pids = stack.all_pids()
    assert len(pids) == len(SERVICES) and all(alive(pid) for pid in pids), stack.output()
    assert stack.process is not None
    os.kill(stack.process.pid, signal.SIGKILL)
    stack.process.wait(10)
    wait_until(lambda: not any(alive(pid) for pid in pids), 30, "a service outlived the stack")
