"""`make run`: the whole stack in one terminal, one Ctrl-C stopping it all.

Starts each service as a child process (`python -m <service>`) and prefixes every line it prints
with its name (like docker compose). The stack heals: a service that dies on its own (a crash, an
out-of-memory kill, `kill -9`) is started again, with a backoff of 0.5 s doubling up to 30 s (back
to 0.5 s once it has stayed up 60 s), and says so loudly (`stack: embedder died (killed by
SIGKILL) after 5.2 s; restarting in 1.0 s (restart 2)`) while the others keep serving. A service
that keeps dying, even for a configuration error (exit code 2), is retried at the capped backoff;
each exit is logged with its code, and a louder line follows from the fifth death in a row within
10 s of starting, so the reason it printed just above stays in view. Ctrl-C or SIGTERM stops
them all, newest first, with SIGTERM (no restarts then), and the stack exits 0. If the stack
itself is killed (SIGKILL), Linux sends each service SIGTERM (PR_SET_PDEATHSIG). Each service
reads its own settings from its environment variables (EMBEDDER_*, CACHE_*, GATEWAY_*), so
everything there is configurable as usual.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import IO

COLOURS = ["\033[36m", "\033[35m", "\033[33m", "\033[32m"]
RESET = "\033[0m"

FIRST_BACKOFF_S = 0.5  # wait before the first restart of a service
MAX_BACKOFF_S = 30.0  # the wait doubles on each death in a row, up to this
STABLE_AFTER_S = 60.0  # up this long: its next death starts the backoff over
# A death this soon after starting counts as "dies at once" (a service that cannot start: its
# imports alone take a second or two, so a tighter bound would miss most of them).
QUICK_DEATH_S = 10.0
QUICK_DEATHS_WARNING = 5  # ... and this many in a row get a louder line
CONFIG_ERROR_EXIT = 2  # what every service exits with on invalid settings or an unloadable model
STOP_TIMEOUT_S = 20.0  # after SIGTERM, how long the services get before SIGKILL

# Started in front of each service on Linux: asks the kernel for SIGTERM when the stack dies
# (PR_SET_PDEATHSIG = 1), then becomes the service with execv (same pid; the death signal
# survives execve of a binary that is not set-user-ID). It replaces a `preexec_fn`, which runs
# between fork and exec in a copy of a process that may have other threads (the output pumps),
# where taking a lock another thread held (the import lock, malloc's) deadlocks: a restart
# happens while those threads run. Without preexec_fn, subprocess forks and execs in C, which is
# safe with threads. If the stack died before the prctl took effect, the parent is no longer
# the stack and the wrapper gives up instead of starting an orphan. The kernel sends the signal
# when the *thread* that forked the child ends, not the process: every child is therefore
# started from the main thread, which lives until the stack exits.
_DIE_WITH_STACK = """\
import ctypes, os, signal, sys
try:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
except (OSError, AttributeError):
    pass
if os.getppid() != int(sys.argv[1]):
    sys.exit(1)
os.execv(sys.argv[2], sys.argv[2:])
"""

_output = threading.Lock()  # one line at a time from the pumps and the stack itself


def say(line: str) -> None:
    """A line of the stack's own, between the services' lines."""
    with _output:
        sys.stdout.write(f"stack: {line}\n")
        sys.stdout.flush()


@dataclass
class Child:
    name: str
    argv: list[str]
    process: subprocess.Popen[bytes] | None = None
    pump: threading.Thread | None = field(default=None, repr=False)
    prefix: str = ""
    started_at: float = 0.0
    restarts: int = 0  # restarts so far (the first start is not one)
    backoff_s: float = FIRST_BACKOFF_S  # wait before the next restart
    quick_deaths: int = 0  # deaths in a row within QUICK_DEATH_S of starting
    restart_at: float | None = None  # when a dead service is due to start again


def describe_exit(returncode: int) -> str:
    """'killed by SIGKILL', 'exited with code 1', ..."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    if returncode == CONFIG_ERROR_EXIT:
        return f"exited with code {returncode}: invalid settings or a model it cannot load"
    return f"exited with code {returncode}"


def _pump(stream: IO[bytes], prefix: str) -> None:
    try:
        for raw in iter(stream.readline, b""):
            line = raw.decode(errors="replace").rstrip()
            with _output:
                sys.stdout.write(f"{prefix}{line}\n")
                sys.stdout.flush()
    finally:
        stream.close()


def _command(argv: list[str]) -> list[str]:
    if not sys.platform.startswith("linux"):  # no PR_SET_PDEATHSIG: a killed stack leaves them
        return argv
    return [sys.executable, "-I", "-c", _DIE_WITH_STACK, str(os.getpid()), *argv]


def start(child: Child) -> None:
    """Starts `child` (from the main thread only, see _DIE_WITH_STACK) and pumps its output."""
    assert threading.current_thread() is threading.main_thread()
    process = subprocess.Popen(
        _command(child.argv),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # Ctrl-C reaches the stack, which stops children in order
    )
    assert process.stdout is not None
    child.process = process
    child.started_at = time.monotonic()
    child.restart_at = None
    child.pump = threading.Thread(
        target=_pump, args=(process.stdout, child.prefix), name=f"pump-{child.name}", daemon=True
    )
    child.pump.start()
    again = f"; restart {child.restarts}" if child.restarts else ""
    say(f"started {child.name} (pid {process.pid}{again})")


def schedule_restart(child: Child, returncode: int, now: float) -> None:
    """`child` died on its own: logs it and sets when it starts again."""
    uptime = now - child.started_at
    if uptime >= STABLE_AFTER_S:
        child.backoff_s = FIRST_BACKOFF_S
    child.quick_deaths = child.quick_deaths + 1 if uptime < QUICK_DEATH_S else 0
    delay = child.backoff_s
    child.backoff_s = min(child.backoff_s * 2, MAX_BACKOFF_S)
    child.restarts += 1
    child.restart_at = now + delay
    child.process = None
    say(
        f"{child.name} died ({describe_exit(returncode)}) after {uptime:.1f} s; "
        f"restarting in {delay:.1f} s (restart {child.restarts})"
    )
    if child.quick_deaths >= QUICK_DEATHS_WARNING:
        say(
            f"{child.name} has died within {QUICK_DEATH_S:.0f} s of starting "
            f"{child.quick_deaths} times in a row: see its lines above; still retrying, "
            f"every {MAX_BACKOFF_S:.0f} s at most"
        )


def stop_all(children: Sequence[Child]) -> None:
    """SIGTERM to every running child, newest first; SIGKILL to any still up after
    STOP_TIMEOUT_S."""
    running = [c for c in reversed(children) if c.process is not None]
    for child in running:
        assert child.process is not None
        if child.process.poll() is None:
            child.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for child in running:
        assert child.process is not None
        try:
            child.process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            say(f"{child.name} did not stop within {STOP_TIMEOUT_S:.0f} s; killing it")
            child.process.kill()
            child.process.wait()
    for child in running:
        if child.pump is not None:
            child.pump.join(2)


def run(children: list[Child], announce: Sequence[str] = ()) -> int:
    """Runs `children` until SIGINT or SIGTERM, restarting any that dies; returns 0. The
    `announce` lines are said once all are started (where to find them)."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    width = max(len(c.name) for c in children)
    colour = sys.stdout.isatty()
    for i, child in enumerate(children):
        child.prefix = f"{child.name:<{width}} | "
        if colour:
            child.prefix = f"{COLOURS[i % len(COLOURS)]}{child.prefix}{RESET}"
    for child in children:
        if not stop.is_set():
            start(child)
    for line in announce:
        say(line)
    while not stop.is_set():
        now = time.monotonic()
        for child in children:
            if stop.is_set():
                break
            if child.process is not None:
                returncode = child.process.poll()
                if returncode is not None:
                    schedule_restart(child, returncode, now)
            elif child.restart_at is not None and now >= child.restart_at:
                start(child)
        stop.wait(0.2)
    say("stopping all")
    stop_all(children)
    say("stopped")
    return 0


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


def console_url() -> str:
    """The operator console on the gateway (GATEWAY_HOST, GATEWAY_PORT), as a browser on this
    machine reaches it."""
    host = os.environ.get("GATEWAY_HOST") or "127.0.0.1"
    if host in ("0.0.0.0", "::", "[::]"):
        host = "127.0.0.1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{os.environ.get('GATEWAY_PORT', '8000')}/console"


def main() -> int:
    """Arguments after `--model-dir ...` style flags go to the embedder."""
    return run(services(sys.argv[1:]), announce=[f"console: {console_url()}"])


if __name__ == "__main__":
    sys.exit(main())
