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
) -> Iterator[LocalStack]:
    """Embedder (extra flags from `embedder_args`), cache server (embedded store; extra flags
    from `cache_args`), gateway."""
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
            )
        )
        gateway = stack.enter_context(GatewayProcess(cache.address)) if with_gateway else None
        yield LocalStack(embedder, cache, gateway)
