"""`make run`: the whole stack in one terminal, one Ctrl-C stopping it all.

Starts each service as a child process (`python -m <service>`), prefixes every line it prints
with its name (like docker compose), and stops them all, newest first, with SIGTERM when
interrupted or when any of them exits on its own. Each service reads its own settings from its
environment variables (EMBEDDER_*, CACHE_*), so everything there is configurable as usual.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import IO

PR_SET_PDEATHSIG = 1
COLOURS = ["\033[36m", "\033[35m", "\033[33m", "\033[32m"]
RESET = "\033[0m"


@dataclass
class Child:
    name: str
    argv: list[str]
    process: subprocess.Popen[bytes] | None = None
    pump: threading.Thread | None = field(default=None, repr=False)


def _die_with_parent() -> None:
    """Linux: the child gets SIGTERM if the stack dies without stopping it (e.g. SIGKILL)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:  # not Linux: children outlive a killed stack
        pass


def _pump(stream: IO[bytes], prefix: str) -> None:
    for raw in iter(stream.readline, b""):
        sys.stdout.write(f"{prefix}{raw.decode(errors='replace').rstrip()}\n")
        sys.stdout.flush()


def services(argv: Sequence[str]) -> list[Child]:
    """Embedder, cache server, gateway; `argv` goes to the embedder."""
    embedder_port = os.environ.get("EMBEDDER_PORT", "50052")
    cache_port = os.environ.get("CACHE_PORT", "50051")
    embedders = os.environ.get("CACHE_EMBEDDER_ADDRESSES", f"127.0.0.1:{embedder_port}")
    cache = os.environ.get("GATEWAY_CACHE_SERVER_ADDRESS", f"127.0.0.1:{cache_port}")
    python = sys.executable
    return [
        Child(
            "embedder",
            [
                python,
                "-m",
                "embedder",
                "--metrics-port",
                os.environ.get("EMBEDDER_METRICS_PORT", "9102"),
                *argv,
            ],
        ),
        Child(
            "cache_server",
            [
                python,
                "-m",
                "cache_server",
                "--embedder-addresses",
                embedders,
                "--metrics-port",
                os.environ.get("CACHE_METRICS_PORT", "9101"),
            ],
        ),
        Child("gateway", [python, "-m", "gateway", "--cache-server-address", cache]),
    ]


def run(children: list[Child]) -> int:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    width = max(len(c.name) for c in children)
    colour = sys.stdout.isatty()
    # Every child is started before any thread: preexec_fn is only safe without threads.
    for child in children:
        child.process = subprocess.Popen(
            child.argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches the stack, which stops children in order
            preexec_fn=_die_with_parent,
        )
    for i, child in enumerate(children):
        prefix = f"{child.name:<{width}} | "
        if colour:
            prefix = f"{COLOURS[i % len(COLOURS)]}{prefix}{RESET}"
        assert child.process is not None and child.process.stdout is not None
        child.pump = threading.Thread(
            target=_pump, args=(child.process.stdout, prefix), daemon=True
        )
        child.pump.start()
    exit_code = 0
    while not stop.is_set():
        for child in children:
            assert child.process is not None
            if child.process.poll() is not None:
                print(f"stack: {child.name} exited with {child.process.returncode}; stopping all")
                exit_code = child.process.returncode or 1
                stop.set()
        stop.wait(0.2)
    for child in reversed(children):
        assert child.process is not None
        if child.process.poll() is None:
            child.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 20
    for child in reversed(children):
        assert child.process is not None
        try:
            child.process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.process.kill()
        if child.pump is not None:
            child.pump.join(2)
    print("stack: stopped")
    return exit_code


def main() -> int:
    """Arguments after `--model-dir ...` style flags go to the embedder."""
    return run(services(sys.argv[1:]))


if __name__ == "__main__":
    sys.exit(main())
