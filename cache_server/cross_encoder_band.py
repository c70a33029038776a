"""The verifier in the look-up: a second opinion for candidates in the grey zone.

When the embedder serves a verifier (a cross-encoder, `make finetune-verifier`), a semantic
look-up takes the nearest `candidates` stored prompts at or above the band's `low` edge. A
candidate at or above `high` is a hit without asking; one in between is a hit only when the
verifier, reading the asked and the stored prompt together, gives the pair a probability of at
least `threshold`. All candidates in the band are asked about in one Score call. The hits keep
their order of similarity, so the first is the answer.

The band comes from the operator's settings (CACHE_VERIFIER_BAND_LOW/HIGH/THRESHOLD), else from
the calibration stored with the verifier (chosen on held-out pairs for a target precision, with
the embedding model it was trained beside), else the default: ask about every candidate above
the similarity threshold in force (the verifier can then only remove hits). A request's own
similarity threshold replaces the low edge for that request.

When the verifier cannot be reached, a candidate in the band is not served (a miss: the
upstream answers) and the failure is counted: a cache serves no answer it could not check.

Not to be confused with the `verified` hit policy (cache_server.learned_thresholds), which
learns per-entry thresholds from judged answers and asks no cross-encoder.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from cache_server import metrics
from cache_server.embedder_client import (
    EmbedderModel,
    EmbedderRejectedError,
    EmbedderUnavailableError,
)
from service_runtime import tracing

log = logging.getLogger(__name__)

NEVER = 1.01  # a `high` no cosine similarity reaches: every candidate in the band is asked
DEFAULT_PROBABILITY = 0.5


class Scorer(Protocol):
    async def score(self, pairs: Sequence[tuple[str, str]]) -> list[float]: ...


@dataclass(frozen=True)
class VerifierSettings:
    mode: Literal["auto", "off"] = "auto"  # auto: use the embedder's verifier when it has one
    band_low: float | None = None
    band_high: float | None = None
    threshold: float | None = None
    candidates: int = 3


@dataclass(frozen=True)
class Band:
    model_id: str
    low: float
    high: float
    threshold: float
    source: str  # "operator", "calibrated" or "default"
    candidates: int

    def for_request(self, threshold: float | None) -> Band:
        """A request's own similarity threshold is the low edge for that request."""
        if threshold is None:
            return self
        return Band(
            self.model_id,
            threshold,
            max(threshold, self.high),
            self.threshold,
            self.source,
            self.candidates,
        )


class Verifier:
    def __init__(self, settings: VerifierSettings, scorer: Scorer) -> None:
        self.settings = settings
        self._scorer = scorer
        self._warned_sha: str | None = None

    def band(self, model: EmbedderModel | None, threshold_in_force: float) -> Band | None:
        """The band in force for `model`, or None when no verifier is used."""
        s = self.settings
        if s.mode == "off" or model is None or model.verifier is None:
            return None
        v = model.verifier
        calibrated = v.band_low is not None and v.band_high is not None
        mismatch = calibrated and v.band_embedder_sha256 not in ("", model.onnx_sha256)
        if mismatch and self._warned_sha != model.onnx_sha256:
            self._warned_sha = model.onnx_sha256
            log.warning(
                "the verifier's band was calibrated with another embedding model (%s): "
                "its similarities may not fit this one; re-run make finetune-verifier "
                "with EMBEDDER_DIR set to the model served",
                v.band_embedder_sha256[:12],
            )
        if s.band_low is not None or s.band_high is not None or s.threshold is not None:
            low = s.band_low if s.band_low is not None else (v.band_low or threshold_in_force)
            high = s.band_high if s.band_high is not None else (v.band_high or NEVER)
            probability = s.threshold if s.threshold is not None else v.threshold
            return Band(v.model_id, low, max(low, high), probability, "operator", s.candidates)
        if calibrated:
            assert v.band_low is not None and v.band_high is not None
            return Band(
                v.model_id, v.band_low, v.band_high, v.threshold, "calibrated", s.candidates
            )
        return Band(
            v.model_id,
            threshold_in_force,
            NEVER,
            v.threshold or DEFAULT_PROBABILITY,
            "default",
            s.candidates,
        )

    async def keep(
        self, prompt: str, candidates: Sequence[tuple[str, float]], band: Band, k: int = 1
    ) -> list[bool]:
        """For each (stored prompt, similarity), nearest first and already at or above
        band.low, whether it is a hit: above `high` without asking, in the band when the
        verifier agrees. The verifier is not asked when the `k` nearest need no asking."""
        verdict = [similarity >= band.high for _, similarity in candidates]
        asked = [i for i, ok in enumerate(verdict) if not ok]
        if not asked or all(verdict[:k]):
            return verdict
        try:
            described: dict[str, str | int] | None = (
                {"semcache.verifier.model": band.model_id, "semcache.verifier.pairs": len(asked)}
                if tracing.enabled()
                else None
            )
            with tracing.span("verifier.score", described):
                probabilities = await self._scorer.score(
                    [(prompt, candidates[i][0]) for i in asked]
                )
        except (EmbedderUnavailableError, EmbedderRejectedError) as exc:
            metrics.VERIFIER_CALLS.labels("error").inc()
            log.warning("the verifier could not be asked (%s): grey-zone candidates missed", exc)
            return verdict
        metrics.VERIFIER_CALLS.labels("ok").inc()
        for i, probability in zip(asked, probabilities, strict=True):
            verdict[i] = probability >= band.threshold
            metrics.VERIFIER_VERDICTS.labels("hit" if verdict[i] else "rejected").inc()
        return verdict
