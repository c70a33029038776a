"""Cost as the work grows (issue 16): one table for 1k to 1M entries in one cache, at 384 and
768 dims, embedded store against Redis (RediSearch FLAT and HNSW).

For each entries x dims x store: search p50/p99 (500 novel QQP questions, one at a time, in
process), unscoped and scoped to one of 4 tenants by an attribute; recall@1 against exact
(numpy) search over the same stored set and scope; memory per entry; time to start; time to
fill. Vectors and entries: `bench.scale_stores`.

- embedded: the SQLite file is written in bulk in the store's own schema (as `put` would leave
  it), then each `EmbeddedStore.open()` runs in a fresh process: "start (cold)" is the first
  open after the fill, "start (after clean stop)" a second open after that process's clean
  `close()`. Memory: VmRSS growth around the first open, per entry. Fill: the bulk write.
- Redis: a fresh redis-server (AOF on, as deployed) per row, filled through
  RedisStore.put_many (the import's bulk path: the PUT script per entry, pipelined);
  memory: INFO used_memory growth per entry, and FT.INFO's vector index size per entry.
  Start: after BGREWRITEAOF and a clean stop, a fresh redis-server loading it, until FT.INFO
  says the index is complete. Fill: put_many until the index is complete (RediSearch indexes
  each entry as its script writes it).

Run: python -m bench.scale_table [--sizes 1000,10000,100000,1000000] [--dims 384,768]
     [--stores embedded,redis-flat,redis-hnsw] [--skip 1000000:768:redis-hnsw,...]
     [--deadline HH:MM (UTC; rows not begun by then are left out and listed)]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import fnmatch
import json
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np

from bench import scale_stores as ss
from bench.timing import p50_p99_ms

RESULTS = Path("bench/results")
PLOT = Path("docs/img/search-scaling.png")
STORES = {"embedded": "embedded", "redis-flat": "redis FLAT", "redis-hnsw": "redis HNSW ef64"}
HEADER = (
    "| entries | dims | store | scope | search p50 ms | p99 ms | recall@1 vs exact | "
    "memory B/entry | vector index B/entry | start (cold) s | start (after clean stop) s | "
    "fill s |"
)


def measure(
    store: str, prompts: list[str], stored: ss.FloatArray, queries: ss.FloatArray
) -> dict[str, Any]:
    """One store over these entries: the raw figures (see the module docstring)."""
    with tempfile.TemporaryDirectory(prefix="scale-table-") as work:
        root = Path(work)
        if store == "embedded":
            data = root / "data"
            data.mkdir()
            np.save(root / "queries.npy", queries)
            started = time.perf_counter()
            ss.write_embedded(data, prompts, stored)
            fill_s = time.perf_counter() - started
            first = ss.run_worker(data, root / "queries.npy", probe_too=True)
            second = ss.run_worker(data, root / "queries.npy", probe_too=False)
            return {
                "fill_s": fill_s,
                "memory_bytes": first["rss_growth_kb"] * 1024,
                "vector_index_bytes": None,
                "start_cold_s": first["open_s"],
                "start_clean_s": second["open_s"],
                "stop_s": first["close_s"],
                "all": first["all"],
                "scoped": first["scoped"],
            }
        algorithm: Literal["FLAT", "HNSW"] = "FLAT" if store == "redis-flat" else "HNSW"
        out = asyncio.run(ss.measure_redis(root / "redis", algorithm, prompts, stored, queries))
        return {**out, "start_cold_s": None, "start_clean_s": out["start_s"]}


def rows_of(
    size: int, dims: int, store: str, raw: dict[str, Any], recall: dict[str, float]
) -> list[dict[str, Any]]:
    rows = []
    for scope in ("all", "scoped"):
        p50, p99 = p50_p99_ms(raw[scope]["latencies"])
        index_bytes = raw.get("vector_index_bytes")
        rows.append(
            {
                "entries": size,
                "dims": dims,
                "store": store,
                "scope": "one tenant" if scope == "scoped" else "all",
                "p50_ms": p50,
                "p99_ms": p99,
                "recall_at_1": recall[scope],
                "memory_bytes_per_entry": raw["memory_bytes"] / size,
                "vector_index_bytes_per_entry": None if index_bytes is None else index_bytes / size,
                "start_cold_s": raw["start_cold_s"],
                "start_clean_s": raw["start_clean_s"],
                "fill_s": raw["fill_s"],
                "stop_s": raw.get("stop_s"),  # embedded: the first clean close()
            }
        )
    return rows


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None or value != value else f"{value:.{digits}f}"


def format_table(rows: list[dict[str, Any]], left_out: list[dict[str, Any]]) -> str:
    lines = [HEADER, "|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['entries']} | {r['dims']} | {STORES[r['store']]} | {r['scope']} | "
            f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['recall_at_1']:.3f} | "
            f"{_num(r['memory_bytes_per_entry'], 0)} | "
            f"{_num(r['vector_index_bytes_per_entry'], 0)} | {_num(r['start_cold_s'], 2)} | "
            f"{_num(r['start_clean_s'], 2)} | {_num(r['fill_s'], 1)} |"
        )
    if left_out:
        lines.append("")
        lines.append("Not measured in this run:")
        lines += [
            f"- {c['entries']} entries, {c['dims']} dims, {STORES[c['store']]}: {c['reason']}"
            for c in left_out
        ]
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5), sharey=True)
    palette = plt.get_cmap("tab20")  # pairs of colours: dark (384 dims), light (768)
    lines = sorted({(r["store"], r["dims"], r["scope"]) for r in rows})
    all_dims = sorted({r["dims"] for r in rows})
    for ax, metric in zip(axes, ("p50_ms", "p99_ms"), strict=True):
        for store, dims, scope in lines:
            points = sorted(
                (r["entries"], r[metric])
                for r in rows
                if (r["store"], r["dims"], r["scope"]) == (store, dims, scope)
            )
            colour = palette(2 * list(STORES).index(store) + min(all_dims.index(dims), 1))
            ax.plot(
                [p[0] for p in points],
                [p[1] for p in points],
                marker="o" if scope == "all" else "s",
                color=colour,
                linestyle="-" if scope == "all" else "--",
                label=f"{STORES[store]}, {dims} dims, {scope}",
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("entries in the cache")
        ax.set_title(f"search {metric[:3]} (ms, log scale)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("ms per search, one at a time")
    axes[1].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def reason_to_skip(cell: str, skip: list[str], deadline: dt.datetime | None) -> str | None:
    if any(fnmatch.fnmatch(cell, pattern) for pattern in skip):
        return "left out of this run (--skip): it would not finish within the time budget"
    if deadline is not None and dt.datetime.now(dt.UTC) >= deadline:
        return f"not begun by the run's deadline ({deadline:%H:%M} UTC)"
    return None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1000,10000,100000,1000000")
    parser.add_argument("--dims", default="384,768")
    parser.add_argument("--stores", default=",".join(STORES))
    parser.add_argument("--skip", default="", help="size:dims:store patterns (fnmatch), comma")
    parser.add_argument("--deadline", default=None, help="HH:MM UTC: begin no row after it")
    parser.add_argument("--name", default="scale-table", help="bench/results/NAME.md/.json")
    parser.add_argument("--plot", type=Path, default=PLOT)
    parser.add_argument("--from-json", type=Path, help="only print and draw a saved run")
    args = parser.parse_args()
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        print(format_table(saved["rows"], saved["left_out"]))
        plot(saved["rows"], args.plot)
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    dims_list = [int(d) for d in args.dims.split(",")]
    stores = args.stores.split(",")
    unknown = set(stores) - set(STORES)
    if unknown:
        parser.error(f"unknown stores {sorted(unknown)}: choose from {list(STORES)}")
    skip = [s for s in args.skip.split(",") if s]
    deadline = None
    if args.deadline:
        hour, minute = (int(x) for x in args.deadline.split(":"))
        deadline = dt.datetime.now(dt.UTC).replace(hour=hour, minute=minute, second=0)
    rows: list[dict[str, Any]] = []
    left_out: list[dict[str, Any]] = []
    timings: list[dict[str, Any]] = []
    RESULTS.mkdir(parents=True, exist_ok=True)
    for size in sizes:
        for dims in dims_list:
            todo = []
            for store in stores:
                reason = reason_to_skip(f"{size}:{dims}:{store}", skip, deadline)
                if reason is None:
                    todo.append(store)
                else:
                    left_out.append(
                        {"entries": size, "dims": dims, "store": store, "reason": reason}
                    )
            if not todo:
                continue
            started = time.perf_counter()
            prompts, stored, queries = ss.dataset(size, dims)
            truth = {
                "all": ss.exact_top1(stored, queries, False),
                "scoped": ss.exact_top1(stored, queries, True),
            }
            print(f"{size} x {dims}: data {time.perf_counter() - started:.0f}s", flush=True)
            for store in todo:
                reason = reason_to_skip(f"{size}:{dims}:{store}", skip, deadline)
                if reason is not None:
                    left_out.append(
                        {"entries": size, "dims": dims, "store": store, "reason": reason}
                    )
                    continue
                started = time.perf_counter()
                raw = measure(store, prompts, stored, queries)
                recall = {
                    scope: ss.recall_at_1(
                        stored, queries, raw[scope]["found"], truth[scope], scope == "scoped"
                    )
                    for scope in ("all", "scoped")
                }
                rows += rows_of(size, dims, store, raw, recall)
                timings.append(
                    {
                        "entries": size,
                        "dims": dims,
                        "store": store,
                        "s": time.perf_counter() - started,
                    }
                )
                print(json.dumps(rows[-2:]), f"{timings[-1]['s']:.0f}s", flush=True)
                (RESULTS / f"{args.name}.json").write_text(
                    json.dumps({"rows": rows, "left_out": left_out, "timings": timings}, indent=1)
                )
            del prompts, stored, queries
    text = format_table(rows, left_out)
    print(text)
    (RESULTS / f"{args.name}.md").write_text(text + "\n")
    (RESULTS / f"{args.name}.json").write_text(
        json.dumps({"rows": rows, "left_out": left_out, "timings": timings}, indent=1)
    )
    if rows:
        plot(rows, args.plot)


if __name__ == "__main__":
    main()
