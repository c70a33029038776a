"""`make dashboard-snapshot`: the README's pictures of dashboard panels (docs/img/dashboard-*.png).

No Grafana here (neither PyPI nor Debian has it), so the panels are drawn from the dashboard's
own queries: a real stack (the exported model, a fake upstream that takes 0.4 s and reports
usage, CACHE_PRICES), Debian's `prometheus` scraping its three /metrics every second with
deploy/observability/prometheus.yml (targets and interval changed, alerts.yml loaded), QQP
questions, paraphrases and repeats through REST /query, then each chosen panel's PromQL from
dashboard.json asked of Prometheus' HTTP API (`query_range`) and plotted with matplotlib.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench.qqp import QuestionPair, load_pairs
from bench.stack import local_stack
from tests.fake_llm import FakeLLM
from tests.processes import REPO, free_port
from tests.promql import ALERTS, OBSERVABILITY, fill_variables, load_dashboard, panel_queries

PRICES = {"gpt-4o-mini": {"prompt": 0.15, "completion": 0.6}}  # per million tokens
SCRAPE_S = 1
# Grafana's $__rate_interval at a 1 s scrape interval and a 2 s step (every cache: $cache).
WINDOW = {"__rate_interval": "10s"}
STEP_S = 2
# The pictures: file name, then the panels drawn side by side (titles in dashboard.json).
PICTURES = {
    "dashboard-hit-rate.png": ("Hit rate", "Look-ups by outcome"),
    "dashboard-savings.png": (
        "Tokens saved per second",
        "Money saved per hour",
        "Upstream waiting saved",
    ),
    "dashboard-latency.png": ("Mean latency by layer", "Cache look-up latency, hits and misses"),
}
CLIENTS = 3


def _usage(prompt: str, answer: str) -> dict[str, int]:
    """Tokens as a chat application spends them: a system prompt and a few hundred words."""
    prompt_tokens, completion_tokens = 150 + 2 * len(prompt.split()), 220 + len(answer) % 120
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


@contextmanager
def prometheus(targets: dict[str, str], data_dir: Path) -> Iterator[str]:
    """Debian's Prometheus with deploy/observability/prometheus.yml, `targets` (job name ->
    host:port) in place of the local stack's fixed ports, scraping every SCRAPE_S seconds;
    yields its URL."""
    binary = shutil.which("prometheus")
    if binary is None:
        raise SystemExit("prometheus is missing: run `make observability-tools`")
    config: dict[str, Any] = yaml.safe_load((OBSERVABILITY / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": f"{SCRAPE_S}s", "evaluation_interval": f"{SCRAPE_S}s"}
    for job in config["scrape_configs"]:
        job["static_configs"] = [{"targets": [targets[job["job_name"]]]}]
    shutil.copy(ALERTS, data_dir / ALERTS.name)
    (data_dir / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with (data_dir / "prometheus.log").open("wb") as log:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={data_dir / 'prometheus.yml'}",
                f"--storage.tsdb.path={data_dir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((data_dir / "prometheus.log").read_text()[-2000:])
                time.sleep(0.2)
            yield url
        finally:
            process.terminate()
            process.wait(30)


def _traffic(url: str, pairs: list[QuestionPair], until: float, seed: int) -> None:
    """New questions, their paraphrases and repeats: mostly new ones at first (the hit rate
    climbs as the cache fills), then mostly paraphrases and repeats of what was asked."""
    rng = random.Random(seed)
    asked: list[QuestionPair] = []
    fresh = iter(pairs)
    started = time.monotonic()
    with httpx.Client(base_url=url, timeout=30) as client:
        while time.monotonic() < until:
            progress = (time.monotonic() - started) / max(1e-9, until - started)
            if not asked or rng.random() < 0.8 - 0.6 * progress:
                pair = next(fresh, None)
                if pair is None:
                    return
                asked.append(pair)
                question = pair.text_a
            else:
                again = rng.choice(asked[-40:])
                question = again.text_b if rng.random() < 0.6 else again.text_a
            client.post("/query", json={"query": question})


def _query_range(prom: str, expr: str, start: float, end: float) -> list[dict[str, Any]]:
    reply = httpx.get(
        f"{prom}/api/v1/query_range",
        params={"query": expr, "start": start, "end": end, "step": STEP_S},
        timeout=30,
    )
    body = reply.json()
    if body.get("status") != "success":
        raise RuntimeError(f"{expr}: {body}")
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def _stat(prom: str, title: str, range_s: float, at: float) -> float:
    """The value of the stat panel `title` over the last `range_s` seconds before `at`."""
    [query] = [q for q in panel_queries(load_dashboard()) if q.panel == title]
    window = {**WINDOW, "__range": f"{max(1, round(range_s))}s"}
    reply = httpx.get(
        f"{prom}/api/v1/query",
        params={"query": fill_variables(query.expr, window), "time": at},
        timeout=30,
    ).json()
    result = reply["data"]["result"]
    return float(result[0]["value"][1]) if result else 0.0


def _legend(template: str, labels: dict[str, str]) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), template)


def _scale(unit: str, values: list[float]) -> tuple[float, str]:
    """A factor and an axis label for Grafana's unit of the panel."""
    top = max((abs(v) for v in values), default=0.0)
    if unit == "percentunit":
        return 100.0, "%"
    if unit == "s":
        return (1000.0, "ms") if top < 1 else (1.0, "s")
    if unit == "currencyUSD":
        return 1.0, "USD"
    if unit == "reqps":
        return 1.0, "requests/s"
    return 1.0, ""


def draw(prom: str, start: float, end: float, output: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = {p["title"]: p for p in load_dashboard()["panels"] if p["type"] != "row"}
    queries = panel_queries(load_dashboard())
    written = []
    for file_name, titles in PICTURES.items():
        figure, axes = plt.subplots(1, len(titles), figsize=(6.2 * len(titles), 3.4))
        for ax, title in zip(axes, titles, strict=True):
            defaults = panels[title]["fieldConfig"]["defaults"]
            unit = defaults.get("unit", "")
            # Grafana's log axis (hits take milliseconds, misses the upstream's time).
            log_axis = defaults.get("custom", {}).get("scaleDistribution", {}).get("type") == "log"
            series: list[tuple[str, list[float], list[float]]] = []
            for query in (q for q in queries if q.panel == title):
                for result in _query_range(prom, fill_variables(query.expr, WINDOW), start, end):
                    points = [(float(t) - start, float(v)) for t, v in result["values"]]
                    points = [(t, v) for t, v in points if v == v]  # NaN: no data yet
                    if log_axis:
                        points = [(t, v) for t, v in points if v > 0]
                    if points:
                        label = _legend(query.legend, result["metric"]) or query.ref_id
                        series.append((label, [t for t, _ in points], [v for _, v in points]))
            factor, axis = _scale(unit, [v for _, _, vs in series for v in vs])
            for label, ts, vs in series:
                ax.plot(ts, [v * factor for v in vs], label=label, linewidth=1.4)
            ax.set_title(title, fontsize=11, loc="left")
            ax.set_xlabel("seconds into the run")
            ax.set_ylabel(axis)
            if log_axis:
                ax.set_yscale("log")
            else:
                ax.set_ylim(bottom=0)
            ax.grid(alpha=0.3)
            if series:
                ax.legend(fontsize=8, loc="best")
        figure.text(
            0.995,
            0.01,
            "drawn from deploy/observability/dashboard.json's queries by Prometheus "
            "(bench/dashboard_snapshot.py), not a Grafana screenshot",
            ha="right",
            fontsize=7,
            color="grey",
        )
        figure.tight_layout(rect=(0, 0.03, 1, 1))
        path = output / file_name
        figure.savefig(path, dpi=110)
        plt.close(figure)
        written.append(path)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-dir", type=Path, default=REPO / "models" / "default")
    parser.add_argument("--seconds", type=float, default=75.0, help="traffic, seconds")
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "img")
    args = parser.parse_args()
    pairs = [p for p in load_pairs(6000) if p.duplicate]
    random.Random(7).shuffle(pairs)
    embedder_metrics, cache_metrics = free_port(), free_port()
    with (
        tempfile.TemporaryDirectory(prefix="dashboard-") as tmp,
        FakeLLM(delay_s=0.4) as llm,
    ):
        llm.usage_of = _usage
        with local_stack(
            args.model_dir,
            "--upstream-base-url",
            llm.base_url,
            "--metrics-port",
            str(cache_metrics),
            "--prices",
            json.dumps(PRICES),
            embedder_args=("--metrics-port", str(embedder_metrics)),
        ) as stack:
            assert stack.gateway is not None
            targets = {
                "semcache-embedder": f"127.0.0.1:{embedder_metrics}",
                "semcache-cache-server": f"127.0.0.1:{cache_metrics}",
                "semcache-gateway": f"127.0.0.1:{stack.gateway.port}",
            }
            with prometheus(targets, Path(tmp)) as prom:
                time.sleep(3 * SCRAPE_S)  # a first scrape of every counter at zero
                start = time.time()
                until = time.monotonic() + args.seconds
                clients = [
                    threading.Thread(
                        target=_traffic, args=(stack.gateway.url, pairs[i::CLIENTS], until, i)
                    )
                    for i in range(CLIENTS)
                ]
                for client in clients:
                    client.start()
                for client in clients:
                    client.join()
                end = time.time()
                time.sleep(3 * SCRAPE_S)  # the last scrape
                for path in draw(prom, start, end, args.output):
                    print(f"wrote {path}")
                totals = {
                    title: _stat(prom, title, end - start, end)
                    for title in ("Hits", "Misses", "Money saved", "Tokens saved", "Waiting saved")
                }
    print(
        f"{end - start:.0f} s of traffic, {llm.calls} upstream calls; the dashboard's stat "
        "panels over that range: " + ", ".join(f"{k} {v:.6g}" for k, v in totals.items())
    )


if __name__ == "__main__":
    main()
