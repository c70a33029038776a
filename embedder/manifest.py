"""The manifest that makes an exported model folder self-describing.

The serving side reads everything it needs (pooling, dimension, limits, checksum) from this
file, so it never guesses and never needs PyTorch or the original model folder.
"""

from __future__ import annotations

import hashlib
import json
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

MANIFEST_NAME = "semcache-model.json"
FORMAT_VERSION = 1


class Pooling(StrEnum):
    """How token vectors become one sentence vector (as in sentence-transformers)."""

    CLS = "cls"
    MEAN = "mean"
    MAX = "max"
    LAST_TOKEN = "lasttoken"


class Precision(StrEnum):
    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"


class Verification(BaseModel):
    """How the export checked itself against the PyTorch model."""

    texts: int
    min_cosine: float
    required_min_cosine: float
    provider: str


class Calibration(BaseModel):
    """The similarity threshold chosen on held-out labelled pairs for a target precision."""

    threshold: float = Field(ge=0.0, le=1.0)
    target_precision: float
    precision: float = Field(description="Measured at the threshold, on the calibration pairs")
    recall: float
    pairs: int = Field(description="Held-out pairs it was chosen on")
    data_sha256: str
    reached_target: bool = Field(
        description="False: no threshold reached the target; the best-F1 threshold is used"
    )
    calibrated_at: float


class VerifiedPrior(BaseModel):
    """The verified hit policy's prior for this model: P(right | s) = sigmoid(w0 + w1 (s -
    0.85) / 0.1), fitted to the nearest-neighbour candidates of simulated cache traffic over
    held-out labelled questions (embedder/training/prior.py)."""

    w0: float
    w1: float
    observations: int = Field(description="Labelled candidates it was fitted to")
    streams: str = Field(description="The simulated traffic: recipe and seeds")
    data_sha256: str
    fitted_at: float


class ModelManifest(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    format_version: int = FORMAT_VERSION
    model_id: str = Field(description="Hub id or folder of the model that was exported")
    fallback: bool = Field(
        default=False, description="True when the requested model was unavailable offline"
    )
    requested_model_id: str | None = None
    dimension: int = Field(gt=0)
    pooling: Pooling
    normalize: bool = Field(
        default=True, description="L2-normalise pooled vectors (cosine = dot product)"
    )
    source_has_normalize_module: bool
    max_seq_length: int = Field(gt=0, description="Tokens beyond this are truncated")
    pad_token_id: int = Field(ge=0)
    precision: Precision
    opset: int
    onnx_file: str = "model.onnx"
    onnx_sha256: str
    input_names: list[str]
    graph_fusions: dict[str, int] = Field(
        default_factory=dict,
        description="ONNX Runtime transformer kernels the export fused in (operator: count); "
        "empty when exported unfused",
    )
    exported_at: float = Field(description="Unix time, seconds")
    verification: Verification | None = None
    calibration: Calibration | None = None
    verified_prior: VerifiedPrior | None = None
    # What `make finetune` did (base model, data, recipe, held-out figures), as it wrote it.
    training: dict[str, Any] | None = None

    def write(self, folder: Path) -> Path:
        path = folder / MANIFEST_NAME
        path.write_text(self.model_dump_json(indent=2) + "\n")
        return path

    @classmethod
    def read(cls, folder: Path) -> ModelManifest:
        path = folder / MANIFEST_NAME
        if not path.is_file():
            raise FileNotFoundError(
                f"{folder} is not an exported model folder: {MANIFEST_NAME} is missing "
                "(run `make model` or `python -m embedder.export`)"
            )
        return cls.model_validate(json.loads(path.read_text()))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
