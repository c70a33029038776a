// The live statistics of one cache (GET /cache/stats, every poll): the tiles and the charts.
// The hit rate of the last poll comes from the change in hits and misses since the one before.

import { api, formatNumber, percent, setText } from "./api.js";
import { LineChart } from "./charts.js";

const ms = (v) => (v >= 100 || v === 0 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2));

export class LiveStats {
  constructor(seconds) {
    this.hitRate = new LineChart(
      document.getElementById("chart-hit-rate"),
      [
        { label: "last poll", cls: "s1" },
        { label: "cumulative", cls: "s2" },
      ],
      { max: 1, format: (v) => `${Math.round(v * 100)}%`, seconds },
    );
    this.latency = new LineChart(
      document.getElementById("chart-latency"),
      [
        { label: "p50", cls: "s1" },
        { label: "p95", cls: "s2" },
        { label: "p99", cls: "s3" },
      ],
      { format: ms, seconds },
    );
    this.savings = new LineChart(
      document.getElementById("chart-savings"),
      [
        { label: "prompt", cls: "s2" },
        { label: "prompt + completion", cls: "s1" },
      ],
      { format: (v) => formatNumber(v, Number.isInteger(v) ? 0 : 1), seconds },
    );
    this.previous = null;
  }

  /** Starts over (another cache). */
  reset() {
    this.previous = null;
    for (const chart of [this.hitRate, this.latency, this.savings]) chart.clear();
  }

  /** Reads the cache's statistics and shows them; returns them. Throws ApiError. */
  async poll(cacheId) {
    const stats = await api("GET", `/cache/stats?cache_id=${encodeURIComponent(cacheId)}`);
    const lookups = stats.hits + stats.misses;
    let recent = null;
    if (this.previous) {
      const hits = stats.hits - this.previous.hits;
      const misses = stats.misses - this.previous.misses;
      if (hits >= 0 && misses >= 0 && hits + misses > 0) recent = hits / (hits + misses);
    }
    this.previous = stats;
    setText("t-hit-rate", percent(recent));
    setText(
      "t-hit-rate-sub",
      `cumulative ${percent(lookups ? stats.hit_rate : null)} · ${formatNumber(stats.hits)} of ${formatNumber(lookups)} look-ups hit`,
    );
    setText("t-latency", `${ms(stats.lookup_p50_ms)} ms`);
    const p95 = stats.lookup_p95_ms ?? null; // absent from older servers
    setText(
      "t-latency-sub",
      `p50${p95 === null ? "" : ` · p95 ${ms(p95)} ms`} · p99 ${ms(stats.lookup_p99_ms)} ms`,
    );
    setText("t-size", formatNumber(stats.cache_size));
    setText(
      "t-size-sub",
      `of ${formatNumber(stats.max_cache_size)} · ${formatNumber(stats.evictions)} evicted · ${formatNumber(stats.expirations)} expired`,
    );
    const verified = stats.policy === "verified";
    setText("t-policy", stats.policy);
    setText(
      "t-policy-sub",
      verified
        ? `error rate ≤ ${stats.max_error_rate} (${stats.error_accounting}) · ${formatNumber(stats.explorations)} explored`
        : `threshold ${stats.current_threshold.toFixed(3)} (${stats.threshold_source})`,
    );
    setText("t-feedback", `${formatNumber(stats.reported_wrong)} wrong`);
    setText("t-feedback-sub", `${formatNumber(stats.reported_right)} reported right`);
    this.showSavings(stats.savings);
    this.hitRate.push([recent, lookups ? stats.hit_rate : null]);
    this.latency.push([stats.lookup_p50_ms, p95, stats.lookup_p99_ms]);
    const s = stats.savings;
    this.savings.push(s ? [s.prompt_tokens, s.prompt_tokens + s.completion_tokens] : [null, null]);
    return stats;
  }

  showSavings(s) {
    if (!s) {
      for (const id of ["t-tokens", "t-seconds", "t-cost"]) setText(id, "–");
      setText("t-tokens-sub", "this server reports no savings");
      setText("t-seconds-sub", "");
      setText("t-cost-sub", "");
      setText("no-cost-note", "");
      return;
    }
    setText("t-tokens", formatNumber(s.prompt_tokens + s.completion_tokens));
    setText(
      "t-tokens-sub",
      `${formatNumber(s.prompt_tokens)} prompt · ${formatNumber(s.completion_tokens)} completion`,
    );
    setText("t-seconds", `${formatNumber(s.upstream_seconds, 1)} s`);
    setText("t-seconds-sub", `upstream time not waited, over ${formatNumber(s.hits_with_cost)} hits`);
    setText("t-cost", `${formatNumber(s.cost, 4)} ${s.currency || ""}`.trim());
    setText(
      "t-cost-sub",
      s.hits_unpriced ? `${formatNumber(s.hits_unpriced)} hits on a model with no price` : "priced per model",
    );
    setText(
      "no-cost-note",
      s.hits_without_cost
        ? `${formatNumber(s.hits_without_cost)} hits on answers stored by Set: no cost known.`
        : "",
    );
  }
}
