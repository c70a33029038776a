"""Latency figures shared by the benchmarks."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def p50_p99_ms(seconds: Sequence[float]) -> tuple[float, float]:
    """Median and 99th percentile of latencies given in seconds, in milliseconds."""
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))
