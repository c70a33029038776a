"""What the embedding service answers, as plain typed Python values (fields as in the proto
messages of `semcache.embedding.v1`; absent sub-messages and unset optional fields are None)."""

from __future__ import annotations

import struct
from dataclasses import dataclass


@dataclass(frozen=True)
class EmbedMetadata:
    """Where the time of one request went."""

    queue_time_ms: float
    inference_time_ms: float
    batch_size: int  # the largest model run (texts from any request) that held its texts
    truncated: bool  # at least one text was cut at the model's max sequence length


@dataclass(frozen=True)
class Embeddings:
    """Unit-length float32 vectors, one per text, in the order of the texts.

    `raw` is the wire form (little-endian float32, row-major): with numpy,
    `numpy.frombuffer(e.raw, "<f4").reshape(e.count, e.dimension)`.
    """

    count: int
    dimension: int
    raw: bytes
    token_counts: list[int]
    metadata: EmbedMetadata

    @property
    def vectors(self) -> list[list[float]]:
        values = struct.unpack(f"<{self.count * self.dimension}f", self.raw)
        d = self.dimension
        return [list(values[i * d : (i + 1) * d]) for i in range(self.count)]


@dataclass(frozen=True)
class VerifierInfo:
    model_id: str
    onnx_sha256: str
    max_sequence_length: int
    execution_provider: str
    band_low: float | None
    band_high: float | None
    threshold: float
    band_embedder_sha256: str
    band_precision: float
    band_recall: float


@dataclass(frozen=True)
class ModelInfo:
    model_id: str
    dimension: int
    pooling: str  # "cls", "mean", "max", "last_token"
    max_sequence_length: int
    precision: str  # "fp32", "fp16", "int8"
    execution_provider: str
    fallback: bool  # the packaged fallback model is served instead of requested_model_id
    requested_model_id: str
    normalized: bool
    onnx_sha256: str
    max_batch_size: int
    max_texts_per_request: int
    max_text_chars: int
    calibrated_threshold: float | None
    calibration_target_precision: float
    calibration_precision: float
    calibration_recall: float
    verifier: VerifierInfo | None


@dataclass(frozen=True)
class Scores:
    """The verifier's probability that each (query, candidate) pair means the same."""

    probabilities: list[float]
    metadata: EmbedMetadata
