"""What traces cost: the stack with tracing off (no OTEL_* set) against the same stack exporting
every trace over OTLP/gRPC to a receiver, and one exporting a tenth of them (sampled at the
gateway: OTEL_TRACES_SAMPLER=parentbased_traceidratio, OTEL_TRACES_SAMPLER_ARG=0.1), same run;
and what the off path costs per request.

The three stacks (gateway -> cache server -> embedder, embedded store, demo responder) run side
by side and are asked in turn, in blocks of 25 requests (the order reversed every block;
the others paused meanwhile: bench/interleave.py), so that all see the same drift of the
machine's load. Per request at concurrency 1: semantic hits (QQP `text_b` after `text_a` was
stored, threshold 0: embedder, store search), exact hits (`text_a` again: no embedding) and
misses (unseen questions, threshold 1: embedder, store search, upstream, store). Then
throughput at concurrency 8 on semantic hits, in rounds (the order rotated each round). The
traced stacks export with the SDK's defaults (BatchSpanProcessor: every 5 s or 512 spans), each
to an OTLP receiver in this process (tests/otlp_receiver.py) that counts what it was sent.

Off is compared with the code before tracing existed by measuring what tracing adds to a
request's path while off, directly: the span helpers a request calls (2 store spans and their
attribute checks in the cache server, 1 upstream span on a miss, the batcher's caller and batch
span in the embedder; no interceptor, no middleware: none is installed), timed in a loop, beside
the same calls through OpenTelemetry's API with no provider installed (the no-op tracer).

Run: make bench-tracing  (or python -m bench.tracing_bench [--pairs 200] [--runs 3])
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from opentelemetry import trace

from bench.gateway_bench import RestClient, pid_of, rest_load
from bench.interleave import Paused, in_blocks
from bench.qqp import QuestionPair, load_pairs
from bench.stack import local_stack
from bench.timing import p50_p99_ms
from embedder.manifest import ModelManifest
from service_runtime import tracing
from tests.otlp_receiver import OtlpReceiver

CONFIGS = ("off", "on", "sampled")
TRACED = ("on", "sampled")
SAMPLED = {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"}


class Asker:
    """Queries one stack over one keep-alive connection, at a fixed threshold."""

    def __init__(self, url: str, threshold: float) -> None:
        self.client = RestClient(url)
        self.threshold = threshold

    def __call__(self, text: str) -> float:
        started = time.perf_counter()
        self.client.connection.request(
            "POST",
            "/query",
            json.dumps({"query": text, "similarity_threshold": self.threshold}),
            {"Content-Type": "application/json"},
        )
        reply = self.client.connection.getresponse()
        data = reply.read()
        assert reply.status == 200, data
        return time.perf_counter() - started


def compare(
    urls: dict[str, str], texts: list[str], threshold: float, paused: Paused
) -> dict[str, dict[str, float]]:
    askers: dict[str, Callable[[str], float]] = {
        name: Asker(url, threshold) for name, url in urls.items()
    }
    seconds = in_blocks(askers, texts, paused)
    figures = {}
    for name, taken in seconds.items():
        p50, p99 = p50_p99_ms(taken)
        figures[name] = {"p50_ms": p50, "p99_ms": p99}
    for name in TRACED:  # against tracing off
        figures[f"{name}_ratio"] = {
            "p50": figures[name]["p50_ms"] / figures["off"]["p50_ms"],
            "p99": figures[name]["p99_ms"] / figures["off"]["p99_ms"],
        }
    return figures


def one_run(
    urls: dict[str, str],
    pairs: list[QuestionPair],
    unseen: list[str],
    rounds: int,
    paused: Paused,
) -> dict[str, Any]:
    run: dict[str, Any] = {
        "semantic_hit": compare(urls, [p.text_b for p in pairs], 0.0, paused),
        "exact_hit": compare(urls, [p.text_a for p in pairs], 0.0, paused),
        "miss": compare(urls, unseen, 1.0, paused),
        "c8": [],
    }
    for r in range(rounds):
        order = CONFIGS[r % 3 :] + CONFIGS[: r % 3]
        figures = {}
        for name in order:
            paused.only(name)
            figures[name] = asyncio.run(rest_load(urls[name], [p.text_b for p in pairs], 8))
        for name in TRACED:
            figures[f"{name}_ratio"] = {"per_s": figures[name]["per_s"] / figures["off"]["per_s"]}
        run["c8"].append(figures)
    paused.resume_all()
    return run


# -- the off path, per request --------------------------------------------------------------


def off_path_per_request(loops: int = 200_000) -> dict[str, float]:
    """ns per request of what tracing adds while off, and of the same spans through
    OpenTelemetry's no-op tracer instead (no provider installed)."""
    assert not tracing.enabled()
    noop = trace.get_tracer("bench")  # a proxy to the no-op tracer: no provider is installed
    described = {"semcache.k": 1}

    def with_helpers() -> None:
        # Cache server: the exact look-up's span, the search's span, each with its check.
        for _ in range(2):
            attributes = described if tracing.enabled() else None
            with tracing.span("store.search", attributes) as span:
                if span is not None:
                    span.set_attribute("semcache.store.found", 1)
        # Embedder: the request's span for its batch, the batch's span.
        caller = tracing.caller()
        with tracing.batch_span("embedder.batch", (c for c in (caller,)), described):
            pass

    def with_noop_tracer() -> None:
        for _ in range(2):
            with noop.start_as_current_span("store.search", attributes=described) as span:
                span.set_attribute("semcache.store.found", 1)
        caller = trace.get_current_span()
        with noop.start_as_current_span("embedder.batch", links=[], attributes=described):
            caller.get_span_context()

    def upstream_off() -> None:  # one more on a miss
        with tracing.span("chat demo-responder", None):
            pass

    def nothing() -> None:
        pass

    def per_call_ns(work: Callable[[], None]) -> float:
        best = float("inf")
        for _ in range(5):  # the best of five: the least disturbed by the machine
            started = time.perf_counter_ns()
            for _ in range(loops):
                work()
            best = min(best, (time.perf_counter_ns() - started) / loops)
        return best

    empty = per_call_ns(nothing)
    figures = {
        "hit_helpers_ns": per_call_ns(with_helpers) - empty,
        "miss_extra_helpers_ns": per_call_ns(upstream_off) - empty,
        "hit_noop_tracer_ns": per_call_ns(with_noop_tracer) - empty,
    }
    figures["miss_helpers_ns"] = figures["hit_helpers_ns"] + figures["miss_extra_helpers_ns"]
    return figures


async def extra_await_ns(loops: int = 200_000) -> float:
    """What Finder._search's own coroutine adds to a search: one more await."""

    async def leaf() -> int:
        return 1

    async def wrapped() -> int:
        return await leaf()

    async def timed(call: Callable[[], Any]) -> float:
        best = float("inf")
        for _ in range(5):
            started = time.perf_counter_ns()
            for _ in range(loops):
                await call()
            best = min(best, (time.perf_counter_ns() - started) / loops)
        return best

    return await timed(wrapped) - await timed(leaf)


# -- report ---------------------------------------------------------------------------------


WORKLOADS = {"semantic_hit": "semantic hit", "exact_hit": "exact hit", "miss": "miss"}


def rows(runs: list[dict[str, Any]]) -> list[str]:
    out = [
        "| run | request | p50 ms off / on / sampled | p50 ratio on, sampled | p99 ms off / on "
        "/ sampled | p99 ratio on, sampled |",
        "|---|---|---|---|---|---|",
    ]
    for i, run in enumerate(runs, 1):
        for key, label in WORKLOADS.items():
            w = run[key]
            out.append(
                f"| {i} | {label} | "
                + " / ".join(f"{w[c]['p50_ms']:.2f}" for c in CONFIGS)
                + " | "
                + ", ".join(f"{w[f'{t}_ratio']['p50']:.3f}" for t in TRACED)
                + " | "
                + " / ".join(f"{w[c]['p99_ms']:.2f}" for c in CONFIGS)
                + " | "
                + ", ".join(f"{w[f'{t}_ratio']['p99']:.3f}" for t in TRACED)
                + " |"
            )
        for r, rd in enumerate(run["c8"], 1):
            out.append(
                f"| {i} | req/s at c=8, round {r} | "
                + " / ".join(f"{rd[c]['per_s']:.0f}" for c in CONFIGS)
                + " | "
                + ", ".join(f"{rd[f'{t}_ratio']['per_s']:.3f}" for t in TRACED)
                + " | | |"
            )
    return out


def verdicts(runs: list[dict[str, Any]], off: dict[str, float], hit_ms: float) -> list[str]:
    def spread(values: list[float]) -> str:
        return f"{min(values):.3f}-{max(values):.3f} (median {statistics.median(values):.3f})"

    lines = []
    for traced in TRACED:
        ratios = [
            f"{label} {spread([r[key][f'{traced}_ratio']['p50'] for r in runs])}"
            for key, label in WORKLOADS.items()
        ]
        throughput = [rd[f"{traced}_ratio"]["per_s"] for r in runs for rd in r["c8"]]
        lines.append(
            f"tracing {traced} / off, p50 latency: {', '.join(ratios)}; throughput at "
            f"concurrency 8: {spread(throughput)}"
        )
    share = off["miss_helpers_ns"] / (hit_ms * 1e6)
    return [
        *lines,
        f"tracing off, what it adds per request: {off['hit_helpers_ns']:.0f} ns on a hit, "
        f"{off['miss_helpers_ns']:.0f} ns on a miss (span helpers) + {off['extra_await_ns']:.0f}"
        f" ns (one more await around the store search) = {share * 100:.4f}% of a "
        f"{hit_ms:.2f} ms semantic hit",
        f"the same spans through OpenTelemetry's no-op tracer instead: "
        f"{off['hit_noop_tracer_ns']:.0f} ns per hit "
        f"({off['hit_noop_tracer_ns'] / off['hit_helpers_ns']:.1f}x the helpers)",
    ]


def measure(
    args: argparse.Namespace,
    envs: dict[str, dict[str, str] | None],
    pairs: list[QuestionPair],
    spare: list[str],
) -> list[dict[str, Any]]:
    """Starts a stack per configuration, stores every text_a in each, and measures."""
    with ExitStack() as running:
        stacks = {
            name: running.enter_context(local_stack(args.model_dir, env=env))
            for name, env in envs.items()
        }
        urls, pids = {}, {}
        for name, stack in stacks.items():
            assert stack.gateway is not None
            urls[name] = stack.gateway.url
            pids[name] = [pid_of(stack.embedder), pid_of(stack.cache), pid_of(stack.gateway)]
        paused = Paused(pids)
        for url in urls.values():  # store every text_a in each stack
            # Threshold 1: only an exact repeat hits, so every text_a is stored (at 0, the
            # first would answer all the others, and "exact hits" would be semantic ones).
            ask = Asker(url, 1.0)
            for pair in pairs:
                ask(pair.text_a)
        compare(urls, [p.text_b for p in pairs[:30]], 0.0, paused)  # warm up
        runs = []
        for r in range(args.runs):
            unseen = spare[r * args.pairs : (r + 1) * args.pairs]
            runs.append(one_run(urls, pairs, unseen, args.rounds, paused))
            print("\n".join(rows(runs)[2:]), flush=True)
        time.sleep(6)  # the traced stacks' last batch of spans (every 5 s)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-dir", type=Path, default=Path("models/default"))
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3, help="c=8 rounds per run")
    args = parser.parse_args()
    for name in [n for n in os.environ if n.startswith("OTEL_")]:
        del os.environ[name]  # "off" means none set, in the stacks and in this process

    off = off_path_per_request()
    off["extra_await_ns"] = asyncio.run(extra_await_ns())
    manifest = ModelManifest.read(args.model_dir)
    loaded = [p for p in load_pairs(args.pairs * (args.runs + 4)) if p.text_a != p.text_b]
    pairs = loaded[: args.pairs]
    stored = {p.text_a for p in pairs}
    spare = list(dict.fromkeys(p.text_a for p in loaded[args.pairs :] if p.text_a not in stored))
    with OtlpReceiver() as every, OtlpReceiver() as tenth:
        envs: dict[str, dict[str, str] | None] = {
            "off": None,
            "on": {"OTEL_EXPORTER_OTLP_ENDPOINT": every.endpoint},
            "sampled": {"OTEL_EXPORTER_OTLP_ENDPOINT": tenth.endpoint} | SAMPLED,
        }
        runs = measure(args, envs, pairs, spare)
        exported = {"on": every.received(), "sampled": tenth.received()}
    counts = {
        name: {"spans": len(spans), "rest_requests": sum(s.name == "POST /query" for s in spans)}
        for name, spans in exported.items()
    }
    hit_ms = statistics.median(r["semantic_hit"]["off"]["p50_ms"] for r in runs)
    on = counts["on"]
    text = "\n".join(
        [
            f"model {manifest.model_id}, {len(pairs)} QQP pairs, {args.runs} runs (each: "
            f"{len(pairs)} semantic hits, exact hits and misses per configuration in turn, "
            f"{args.rounds} rounds at c=8). Exported: on, {on['spans']} spans for "
            f"{on['rest_requests']} REST requests ({on['spans'] / max(1, on['rest_requests']):.1f}"
            f" per request); sampled, {counts['sampled']['spans']} spans for "
            f"{counts['sampled']['rest_requests']} REST requests",
            "",
            *rows(runs),
            "",
            *verdicts(runs, off, hit_ms),
        ]
    )
    print(text)
    out = Path("bench/results")
    out.mkdir(parents=True, exist_ok=True)
    (out / "tracing.md").write_text(text + "\n")
    (out / "tracing.json").write_text(
        json.dumps({"runs": runs, "off_path": off, "exported": counts}, indent=2)
    )


if __name__ == "__main__":
    main()
