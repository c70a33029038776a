"""Real service processes for integration tests: started on a free port, stopped after."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

REPO = Path(__file__).resolve().parents[1]

# What a process told a client on each error it answered, logged at INFO at the one point
# where it answers errors (gateway.errors.problem_response and the OpenAI route's upstream
# failures; cache_server.statuses.abort and the Chat RPC's upstream failures): "error
# answered: <status> <detail>". Every process a test starts is scanned when it stops: each
# such detail is checked for anything internal, and a finding fails the test that started it.
ANSWERED_MARKER = "error answered: "
_LEAKS: list[tuple[str, re.Pattern[str]]] = [
    ("an IPv4 address", re.compile(r"\b\d{1,3}(\.\d{1,3}){3}(:\d+)?\b")),
    ("an IPv6 address", re.compile(r"\[[0-9A-Fa-f]*:[0-9A-Fa-f:.]*\]")),
    ("a host and port", re.compile(r"\blocalhost:\d+|\b(ipv4|ipv6):|\bunix:/")),
    ("a stack trace", re.compile(r'Traceback|File "')),
    ("an OS error", re.compile(r"Errno")),
    ("an exception's name", re.compile(r"\b[A-Z][A-Za-z]+(Error|Exception)\b")),
    # A key itself (OpenAI's sk-..., semcache's sc_...), not the words of an instruction.
    ("an API key", re.compile(r"\bsk-[A-Za-z0-9*_-]|\bsc_[A-Za-z0-9_-]{8}|Bearer (?!<key>)\S")),
]
# Details that may match a pattern above and are still fit for a client, with why. Kept
# tight: a caller's own input said back to it is not a leak, but no test needs one yet.
_ALLOWED: list[re.Pattern[str]] = []


def answer_leaks(log: str) -> list[str]:
    """The lines of `log` (text or JSON lines) where a process told a client something
    internal: an address, a stack trace, an OS error, an exception's name, an API key."""
    found = []
    for line in log.splitlines():
        message = line
        if line.startswith("{"):
            with contextlib.suppress(ValueError, AttributeError):  # not a JSON object
                message = str(json.loads(line).get("message", ""))
        at = message.find(ANSWERED_MARKER)
        if at < 0:
            continue
        told = message[at + len(ANSWERED_MARKER) :]
        if any(allowed.search(told) for allowed in _ALLOWED):
            continue
        if any(pattern.search(told) for _, pattern in _LEAKS):
            found.append(line)
    return found


def check_answers(name: str, log: str) -> None:
    """Raises AssertionError naming each line where `name` told a client something internal."""
    found = answer_leaks(log)
    if found:
        raise AssertionError(
            f"{name} told a client something internal (an address, a trace, an exception's "
            "name or a key):\n" + "\n".join(found)
        )


class ServiceProcess:
    """`python -m <module> --port 0 --port-file F ...`, waited on until its health is SERVING."""

    def __init__(self, module: str, *args: str, env: dict[str, str] | None = None) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix=f"{module}-")
        self.port_file = Path(self._dir.name) / "port"
        self.log_path = Path(self._dir.name) / "log"
        self.module = module
        self.args = [
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--port-file",
            str(self.port_file),
            *args,
        ]
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self._scanned = False

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 90.0, wait_serving: bool = True) -> ServiceProcess:
        self._log = self.log_path.open("wb")
        self._scanned = False
        self.process = subprocess.Popen(
            [sys.executable, "-m", self.module, *self.args],
            cwd=REPO,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while not self.port_file.exists() or not self.port_file.read_text().strip():
            self._check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.module} did not bind a port:\n{self.log()}")
            time.sleep(0.05)
        self.port = int(self.port_file.read_text())
        if wait_serving:
            self.wait_serving(deadline - time.monotonic())
        return self

    def channel(self, credentials: grpc.ChannelCredentials | None = None) -> grpc.Channel:
        """A blocking channel to this service (TLS with `credentials`)."""
        if credentials is None:
            return grpc.insecure_channel(self.address)
        return grpc.secure_channel(self.address, credentials)

    def wait_serving(
        self, timeout: float, credentials: grpc.ChannelCredentials | None = None
    ) -> None:
        deadline = time.monotonic() + timeout
        with self.channel(credentials) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                self._check_alive()
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.module} never became SERVING:\n{self.log()}")
                time.sleep(0.1)

    def _check_alive(self) -> None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(
                f"{self.module} exited with {self.process.returncode}:\n{self.log()}"
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM, then wait; returns the exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        finally:
            self.stop()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        if hasattr(self, "_log"):
            self._log.close()
            if not self._scanned:  # once, whether stopped again or terminated first
                self._scanned = True
                check_answers(f"{self.module} (log {self.log_path})", self.log())

    def __enter__(self) -> ServiceProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.stop()
        finally:
            self._dir.cleanup()


def run_module(
    module: str, *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Runs `python -m module args` to completion, capturing its output."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class GatewayProcess:
    """`python -m gateway` on a free port, waited on until it answers HTTP."""

    def __init__(self, cache_server: str, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.args = [
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--cache-server-address",
            cache_server,
            "--log-level",
            "INFO",  # the errors it answers are scanned when it stops (check_answers)
            *args,
        ]
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in __exit__
        self._scanned = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> GatewayProcess:
        import httpx

        self.process = subprocess.Popen(
            [sys.executable, "-m", "gateway", *self.args],
            cwd=REPO,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.process.returncode}:\n{self.log()}")
            try:
                httpx.get(f"{self.url}/health", timeout=1)
                return self
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"gateway never answered:\n{self.log()}") from None
                time.sleep(0.1)

    def log(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if self.process is not None and not self._log.closed and not self._scanned:
            self._scanned = True
            check_answers("gateway", self.log())

    def __enter__(self) -> GatewayProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.stop()
        finally:
            self._log.close()


@dataclass(frozen=True)
class RedisTls:
    """TLS for a test Redis: its certificate and key, the CA of both ends, and, when clients
    must present a certificate (`tls-auth-clients yes`), the pair the test's own client uses."""

    cert: Path
    key: Path
    ca: Path
    client_cert: Path | None = None
    client_key: Path | None = None


class RedisProcess:
    """A real Redis with RediSearch on a free port, in its own folder (AOF on); optionally
    with a password (AUTH) and TLS only (no plaintext port)."""

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        *,
        password: str | None = None,
        tls: RedisTls | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.password = password
        self.tls = tls
        self.process: subprocess.Popen[bytes] | None = None
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}/0"

    def _extra_args(self) -> list[str]:
        extra = ["--requirepass", self.password] if self.password else []
        if self.tls:
            extra += ["--port", "0", "--tls-port", str(self.port)]
            extra += ["--tls-cert-file", str(self.tls.cert), "--tls-key-file", str(self.tls.key)]
            extra += ["--tls-ca-cert-file", str(self.tls.ca)]
            extra += ["--tls-auth-clients", "yes" if self.tls.client_cert else "no"]
        return extra

    def client(self) -> Any:
        """A redis-py client that passes this server's password and TLS checks."""
        import redis

        options: dict[str, Any] = {"port": self.port, "password": self.password}
        if self.tls:
            options.update(ssl=True, ssl_ca_certs=str(self.tls.ca))
            if self.tls.client_cert:
                options.update(
                    ssl_certfile=str(self.tls.client_cert), ssl_keyfile=str(self.tls.client_key)
                )
        return redis.Redis(**options)

    def start(self, timeout: float = 60.0) -> RedisProcess:
        import redis

        from service_runtime.redis_stack import redis_command

        command, env = redis_command(self.port, self.data_dir, extra_args=self._extra_args())
        self.process = subprocess.Popen(
            command, env=env, stdout=self._log, stderr=subprocess.STDOUT
        )
        client = self.client()
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                self._log.seek(0)
                raise RuntimeError(f"redis exited: {self._log.read().decode()[-2000:]}")
            try:
                if client.ping():
                    return self
            except (redis.ConnectionError, redis.BusyLoadingError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("redis did not answer PING")
            time.sleep(0.05)

    def stop(self, kill: bool = False) -> None:
        if self.process is not None and self.process.poll() is None:
            if kill:
                self.process.kill()
            else:
                self.process.terminate()
            self.process.wait(30)


def cache_server_process(
    data_dir: Path, embedder: str, *args: str, env: dict[str, str] | None = None
) -> ServiceProcess:
    """A cache server (embedded store in `data_dir` unless `args` choose Redis), not started
    yet; expired entries are purged every 0.3 s so that TTL tests need not wait."""
    return ServiceProcess(
        "cache_server",
        "--data-dir",
        str(data_dir),
        "--embedder-addresses",
        embedder,
        "--purge-interval-s",
        "0.3",
        *args,
        env=env,
    )


def redis_cache_server(
    tmp_path: Path,
    embedder: str,
    redis_url: str,
    prefix: str,
    *args: str,
    env: dict[str, str] | None = None,
) -> ServiceProcess:
    """A cache server on the Redis backend (key prefix `prefix`), not started yet."""
    return cache_server_process(
        tmp_path / uuid.uuid4().hex,
        embedder,
        "--store-backend",
        "redis",
        "--redis-url",
        redis_url,
        "--redis-prefix",
        prefix,
        *args,
        env=env,
    )
