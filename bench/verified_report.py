"""The verified benchmark's tables and plot: static thresholds, semcache's verified policy and
vCache side by side, per stream, over all seeds."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.verified_runs import Run


def _rate(run: Run) -> str:
    rate = run.error_rate
    if rate is None:
        return "- (no hits)"
    low, high = run.error_interval
    return f"{rate:.3f} [{low:.3f}, {high:.3f}]"


def table(runs: Sequence[Run]) -> str:
    """One row per configuration (its seeds added up)."""
    lines = [
        "| policy | requests | new-question hits | hit rate | wrong | error of hits [95% CI] "
        "| wrong / requests | LLM calls / 1,000 requests | explorations | repeat hits |",
        "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in runs:
        lines.append(
            f"| {r.config.name} | {r.requests} | {r.hits} | {r.hit_rate:.4f} | {r.errors} | "
            f"{_rate(r)} | {r.wrong_per_request:.4f} | {r.calls_per_1000:.0f} | "
            f"{r.explorations} | {r.repeat_hits} |"
        )
    return "\n".join(lines)


def best_static(statics: Sequence[Run], delta: float) -> Run | None:
    """The static run with the most hits among those whose measured error is at most δ."""
    fit = [s for s in statics if s.error_rate is not None and s.error_rate <= delta]
    return max(fit, key=lambda s: s.hits, default=None)


def comparisons(runs: Sequence[Run]) -> list[dict[str, Any]]:
    """Per δ of a semcache run: its error against δ (and the Wilson upper bound against 2δ),
    its hits against the best static threshold whose error is at most δ, and the upstream
    calls of both."""
    statics = [r for r in runs if r.config.policy == "static"]
    out = []
    for r in runs:
        if r.config.policy != "semcache":
            continue
        delta = r.config.value
        best = best_static(statics, delta)
        high = r.error_interval[1] if r.hits else None
        bound = r.wrong_per_request if r.config.accounting == "requests" else r.error_rate
        out.append(
            {
                "name": r.config.name,
                "delta": delta,
                "accounting": r.config.accounting,
                "hits": r.hits,
                "hit_rate": r.hit_rate,
                "error_rate": r.error_rate,
                "error_upper_95": high,
                "bounded_error": bound,
                "within_delta": bound is not None and bound <= delta,
                "upper_within_2delta": high is not None and high <= 2 * delta,
                "best_static": best.config.value if best else None,
                "best_static_hits": best.hits if best else None,
                "best_static_error": best.error_rate if best else None,
                "hits_ratio": (r.hits / best.hits) if best and best.hits else None,
                "calls_per_1000": r.calls_per_1000,
                "best_static_calls_per_1000": best.calls_per_1000 if best else None,
            }
        )
    return out


def comparison_table(rows: Sequence[dict[str, Any]]) -> str:
    lines = [
        "| semcache | bounded error ≤ δ? | Wilson upper ≤ 2δ? | hits | best static with error "
        "≤ δ | its hits | hits, semcache / static | LLM calls / 1,000, semcache / static |",
        "|---|---|---|---:|---|---:|---:|---|",
    ]
    for c in rows:
        bounded = "-" if c["bounded_error"] is None else f"{c['bounded_error']:.3f}"
        upper = "-" if c["error_upper_95"] is None else f"{c['error_upper_95']:.3f}"
        if c["best_static"] is None:
            static, static_hits, ratio, calls = "none", "-", "-", f"{c['calls_per_1000']:.0f} / -"
        else:
            static = f"{c['best_static']:.2f} (error {c['best_static_error']:.3f})"
            static_hits = str(c["best_static_hits"])
            ratio = "-" if c["hits_ratio"] is None else f"{c['hits_ratio']:.2f}x"
            calls = f"{c['calls_per_1000']:.0f} / {c['best_static_calls_per_1000']:.0f}"
        lines.append(
            f"| {c['name']} | {bounded} {'yes' if c['within_delta'] else 'no'} | {upper} "
            f"{'yes' if c['upper_within_2delta'] else 'no'} | {c['hits']} | {static} | "
            f"{static_hits} | {ratio} | {calls} |"
        )
    return "\n".join(lines)


_STYLES = {
    "static": ("static threshold", "o-"),
    "semcache-hits": ("semcache verified (δ over hits)", "s-"),
    "semcache-requests": ("semcache verified (δ over requests)", "D--"),
    "vcache": ("vCache (δ over requests)", "^:"),
}


def plot(by_stream: dict[str, list[Run]], path: Path, title: str) -> None:
    """Per stream, the error of served hits against the hit rate: one curve per policy,
    with each δ's bound marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(by_stream), figsize=(6 * len(by_stream), 5), dpi=110)
    axes = axes if len(by_stream) > 1 else [axes]
    for ax, (stream, runs) in zip(axes, by_stream.items(), strict=True):
        for key, (label, style) in _STYLES.items():
            policy, _, accounting = key.partition("-")
            points = sorted(
                (
                    r
                    for r in runs
                    if r.config.policy == policy
                    and (not accounting or r.config.accounting == accounting)
                    and r.hits
                ),
                key=lambda r: r.hit_rate,
            )
            if not points:
                continue
            x = [r.hit_rate for r in points]
            y = [r.error_rate or 0.0 for r in points]
            below = [v - r.error_interval[0] for r, v in zip(points, y, strict=True)]
            above = [r.error_interval[1] - v for r, v in zip(points, y, strict=True)]
            ax.errorbar(x, y, yerr=[below, above], fmt=style, capsize=3, label=label)
            for r in points:
                text = f"{r.config.value:.2f}" if policy == "static" else f"δ={r.config.value:.2f}"
                ax.annotate(
                    text,
                    (r.hit_rate, r.error_rate or 0.0),
                    fontsize=7,
                    xytext=(4, 4),
                    textcoords="offset points",
                )
        for delta in sorted({r.config.value for r in runs if r.config.policy == "semcache"}):
            ax.axhline(delta, color="grey", linewidth=0.6, linestyle=":")
        ax.set_title(f"{stream} stream", fontsize=9)
        ax.set_xlabel("new-question hits / requests")
        ax.set_ylabel("error of served hits (95% Wilson); dotted: each δ")
        ax.set_xlim(left=0.0)
        ax.set_ylim(bottom=0.0)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
