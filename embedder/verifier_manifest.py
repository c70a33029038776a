"""The manifest of an exported verifier (a cross-encoder pair classifier) folder.

`make finetune-verifier` writes it; the embedder reads it to serve `Score`, and cache servers
learn from it (through `GetModelInfo`) the similarity band in which to ask the verifier and the
probability above which a candidate is a hit.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

VERIFIER_MANIFEST_NAME = "semcache-verifier.json"
FORMAT_VERSION = 1
DEFAULT_PROBABILITY_THRESHOLD = 0.5


class VerifierCheck(BaseModel):
    """How the export checked the ONNX verifier against the PyTorch one."""

    pairs: int
    max_abs_difference: float = Field(description="Largest |p_onnx - p_torch| over the pairs")
    required_max_abs_difference: float
    provider: str


class Band(BaseModel):
    """Where the verifier is asked: a candidate below `low` is a miss, at or above `high` a hit
    without asking, in between a hit only when the verifier's probability >= `threshold`."""

    low: float = Field(ge=0.0, le=1.0)
    high: float = Field(ge=0.0, le=1.01)
    threshold: float = Field(ge=0.0, le=1.0, description="Verifier probability for a hit")
    target_precision: float
    precision: float = Field(description="Measured on the calibration pairs, as a cache sees it")
    recall: float
    reached_target: bool
    pairs: int
    embedder_onnx_sha256: str = Field(
        description="The embedding model whose similarities the band was chosen for"
    )
    embedder_model_id: str


class VerifierManifest(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    format_version: int = FORMAT_VERSION
    kind: str = "verifier"
    model_id: str = Field(description="What the classifier was trained from")
    max_seq_length: int = Field(gt=0, description="Tokens of a pair, both texts together")
    pad_token_id: int = Field(ge=0)
    opset: int
    onnx_file: str = "model.onnx"
    onnx_sha256: str
    input_names: list[str]
    exported_at: float
    verification: VerifierCheck | None = None
    band: Band | None = None
    # What `make finetune-verifier` did: data, recipe, held-out figures before and after.
    training: dict[str, Any] | None = None

    def write(self, folder: Path) -> Path:
        path = folder / VERIFIER_MANIFEST_NAME
        path.write_text(self.model_dump_json(indent=2) + "\n")
        return path

    @classmethod
    def read(cls, folder: Path) -> VerifierManifest:
        path = folder / VERIFIER_MANIFEST_NAME
        if not path.is_file():
            raise FileNotFoundError(
                f"{folder} is not an exported verifier folder: {VERIFIER_MANIFEST_NAME} is "
                "missing (run `make finetune-verifier`)"
            )
        return cls.model_validate(json.loads(path.read_text()))
