"""Comparing contenders that run side by side on the same few cores.

Each contender is a set of processes. One is measured at a time, in blocks, which goes first
flipped every block, so that both see the same drift of a shared machine's load; the others are
paused meanwhile (SIGSTOP), because idle ONNX Runtime and PyTorch (OpenMP) threads spin-wait
after a run and would otherwise take the cores from the one being measured.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Sequence


class Paused:
    """SIGSTOPs every contender's processes but the one measured."""

    def __init__(self, pids: dict[str, list[int]]) -> None:
        self.pids = pids

    def only(self, name: str) -> None:
        for other, pids in self.pids.items():
            for pid in pids:
                os.kill(pid, signal.SIGCONT if other == name else signal.SIGSTOP)
        time.sleep(0.05)

    def resume_all(self) -> None:
        for pids in self.pids.values():
            for pid in pids:
                os.kill(pid, signal.SIGCONT)


def in_blocks(
    askers: dict[str, Callable[[str], float]],
    texts: Sequence[str],
    paused: Paused,
    block: int = 25,
) -> dict[str, list[float]]:
    """Every text to every contender (`asker(text)` returns seconds), block by block."""
    seconds: dict[str, list[float]] = {name: [] for name in askers}
    names = list(askers)
    try:
        for b, start in enumerate(range(0, len(texts), block)):
            for name in names if b % 2 else reversed(names):
                paused.only(name)
                seconds[name].extend(askers[name](text) for text in texts[start : start + block])
    finally:
        paused.resume_all()
    return seconds
