"""Memory of the embedded store at a start (issue 27): the peak resident memory while
`EmbeddedStore.open()` runs against the resident memory once it is open, and memory per entry.

Target: the peak within 10% of the steady state ("peak / steady" ≤ 1.10), both for a cold
start (every graph built from the SQLite rows) and for a start after a clean stop (the graph
adopted from its snapshot). Before this change, at 1M entries of 768 dims, ~12.5 GB was seen
while it opened against ~10.6 GB once open (each vector held by the numpy matrix and by the
graph, and twice more while loading).

The entries are bench.scale_stores' (QQP vectors, grown with seeded noise past ~100k, projected
to the dimension asked), written to SQLite in bulk in the store's schema. Each open runs in a
fresh process, which reports VmRSS before and after and VmHWM (the peak) after; growth is
measured from VmRSS before the open.

With `--baseline REV`, each open runs a second time with the code of git revision REV (a
worktree of it, in the same run, over the same files), and the table gains its rows.

Run: python -m bench.open_memory [--sizes 100000,1000000] [--dims 768] [--baseline REV]
     [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import scale_stores as ss
from cache_server.store.embedded import EmbeddedStore

TARGET = 1.10


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def worker(data_dir: Path) -> dict[str, Any]:
    """In a fresh process: open the store over `data_dir`, note memory, close it cleanly."""

    async def run() -> dict[str, Any]:
        store = EmbeddedStore(data_dir)
        before = _status_kb("VmRSS")
        started = time.perf_counter()
        await store.open()
        opened = time.perf_counter() - started
        gc.collect()
        out = {
            "open_s": opened,
            "steady_kb": _status_kb("VmRSS") - before,
            "peak_kb": _status_kb("VmHWM") - before,
            "from_snapshot": bool(store._snapshots.loaded),
        }
        await store.close()
        return out

    return asyncio.run(run())


def run_worker(data_dir: Path, code: Path | None = None) -> dict[str, Any]:
    """The worker in a fresh process, with this checkout's code or that of `code` (a
    worktree of another revision: this file runs as a script there, the rest comes from it)."""
    if code is None:
        command = [sys.executable, "-m", "bench.open_memory", "--worker", str(data_dir)]
        env = None
    else:
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", str(data_dir)]
        env = {**os.environ, "PYTHONPATH": str(code)}
    done = subprocess.run(command, check=True, capture_output=True, text=True, cwd=code, env=env)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def measure(size: int, dims: int, baseline: tuple[str, Path] | None) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="semcache-open-", dir="/tmp") as tmp:
        data_dir = Path(tmp) / "data"
        data_dir.mkdir()
        prompts, vectors, _ = ss.dataset(size, dims)
        ss.write_embedded(data_dir, prompts, vectors)
        del prompts, vectors
        gc.collect()
        rows = []
        codes: list[tuple[str, Path | None]] = [("this code", None)]
        if baseline is not None:
            codes.append(baseline)
        for name, code in codes:
            for start in ("cold", "after clean stop"):
                result = run_worker(data_dir, code)
                rows.append({"entries": size, "dims": dims, "code": name, "start": start})
                rows[-1].update(result)
                print(_line(rows[-1]), flush=True)
            shutil.rmtree(data_dir / "semcache.sqlite3.hnsw", ignore_errors=True)
        return rows


def _line(row: dict[str, Any]) -> str:
    steady, peak = row["steady_kb"] * 1024, row["peak_kb"] * 1024
    ratio = peak / steady if steady else float("nan")
    verdict = "met" if ratio <= TARGET else "NOT met"
    return (
        f"| {row['entries']} | {row['dims']} | {row['code']} | {row['start']} | "
        f"{row['open_s']:.1f} | "
        f"{steady / 1e9:.2f} | {peak / 1e9:.2f} | {steady / row['entries']:.0f} | "
        f"{ratio:.3f}x ({verdict}: ≤ {TARGET:.2f}x) |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--dims", default="768")
    parser.add_argument("--baseline", default=None, help="a git revision to compare with")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        print(json.dumps(worker(args.worker)))
        return
    print(
        "| entries | dims | code | start | open s | steady GB | peak GB | steady B/entry "
        "| peak / steady |"
    )
    print("|---:|---:|---|---|---:|---:|---:|---:|---|")
    rows = []
    with tempfile.TemporaryDirectory(prefix="semcache-baseline-", dir="/tmp") as tmp:
        baseline = None
        if args.baseline is not None:
            tree = Path(tmp) / "tree"
            subprocess.run(
                ["git", "worktree", "add", "--detach", str(tree), args.baseline],
                check=True,
                capture_output=True,
            )
            protos = [str(p.relative_to(tree)) for p in tree.glob("protos/**/*.proto")]
            subprocess.run(  # its generated stubs, as `make proto` builds them
                [
                    sys.executable,
                    "-m",
                    "grpc_tools.protoc",
                    "-I.",
                    "--python_out=.",
                    "--grpc_python_out=.",
                    *protos,
                ],
                check=True,
                cwd=tree,
            )
            baseline = (f"before ({args.baseline})", tree)
        try:
            for dims in (int(d) for d in args.dims.split(",")):
                for size in (int(s) for s in args.sizes.split(",")):
                    rows += measure(size, dims, baseline)
        finally:
            if baseline is not None:
                subprocess.run(["git", "worktree", "remove", "--force", str(baseline[1])])
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
