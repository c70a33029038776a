"""The three services started for a benchmark run, on free ports, in a temporary folder."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.processes import GatewayProcess, ServiceProcess


@dataclass(frozen=True)
class LocalStack:
    embedder: ServiceProcess
    cache: ServiceProcess
    gateway: GatewayProcess | None


@contextmanager
def local_stack(
    model_dir: Path,
    *cache_args: str,
    with_gateway: bool = True,
    embedder_args: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> Iterator[LocalStack]:
    """Embedder (extra flags from `embedder_args`), cache server (embedded store; extra flags
    from `cache_args`), gateway; each with `env` over this process's environment."""
    with ExitStack() as stack:
        data = stack.enter_context(tempfile.TemporaryDirectory())
        embedder = stack.enter_context(
            ServiceProcess(
                "embedder",
                "--model-dir",
                str(model_dir),
                "--log-level",
                "WARNING",
                *embedder_args,
                env=env,
            )
        )
        cache = stack.enter_context(
            ServiceProcess(
                "cache_server",
                "--data-dir",
                data,
                "--embedder-addresses",
                embedder.address,
                "--log-level",
                "WARNING",
                *cache_args,
                env=env,
            )
        )
        gateway = (
            stack.enter_context(GatewayProcess(cache.address, env=env)) if with_gateway else None
        )
        yield LocalStack(embedder, cache, gateway)
