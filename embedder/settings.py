"""Embedder settings: environment variables (EMBEDDER_*) and command-line flags, validated at
start-up. A flag beats an environment variable, which beats the default."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, Self

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import SettingsConfigDict

from service_runtime.settings import GrpcServiceSettings


class EmbedderSettings(GrpcServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="EMBEDDER_",
        env_ignore_empty=True,
        protected_namespaces=(),
        populate_by_name=True,
        extra="forbid",
    )

    port: int = Field(50052, ge=0, le=65535, description="gRPC port (0: any free port)")
    model_dir: Path = Field(Path("models/default"), description="Exported model folder")
    verifier_dir: Path | None = Field(
        None,
        description="Exported verifier folder (`make finetune-verifier`), served through the "
        "Score RPC; unset: no verifier",
    )
    model_device: Literal["cpu", "cuda"] = Field(
        "cpu",
        validation_alias=AliasChoices("model_device", "EMBEDDER_MODEL_DEVICE", "MODEL_DEVICE"),
        description="ONNX Runtime provider; cuda fails at start-up if CUDA is not there",
    )
    cuda_device_id: int = Field(0, ge=0)
    intra_op_threads: int = Field(
        0,
        ge=0,
        description="ONNX Runtime intra-op threads (0: one per core). On a shared machine give "
        "it fewer than the cores, so it does not fight the cache server's BLAS pool",
    )
    spin_wait: bool = Field(
        True,
        description="Let ONNX Runtime threads spin-wait for work within a run. Measured here, "
        "32 gRPC clients: 326/s with, 269/s without; turn it off when the embedder shares its "
        "cores with other busy processes",
    )
    spin_after_run: bool = Field(
        False,
        description="Keep ONNX Runtime threads spinning after a run ends, waiting for the next "
        "(ONNX Runtime's own default). Off, they sleep once the run is done and leave the cores "
        "to the cache server and gateway finishing the same request: REST semantic hits 1.2-1.3x "
        "faster at p50 here (docs/benchmarks.md, levers)",
    )
    max_batch_size: int = Field(32, ge=1, le=4096, description="Texts per model run, at most")
    max_batch_tokens: int | None = Field(
        None,
        ge=1,
        description="Padded tokens (texts x longest) per model run, at most. Default: 512 on "
        "cpu (measured: larger runs of mixed lengths cost more per text than they save), "
        "16384 on cuda",
    )
    max_wait_ms: float = Field(
        0.0,
        ge=0,
        le=1000,
        description="Extra wait for batch-mates, milliseconds. 0: batch whatever queued up "
        "while the previous batch ran (no added latency when idle)",
    )
    max_queue: int = Field(
        2048, ge=1, description="Texts waiting, at most; then RESOURCE_EXHAUSTED"
    )
    max_texts_per_request: int = Field(256, ge=1)
    max_text_chars: int = Field(8192, ge=1, description="Characters per text, at most")
    truncate: bool = Field(True, description="Cut texts at the model's max length (else reject)")
    verify_checksum: bool = Field(True, description="Check the ONNX file's sha256 at load")

    @property
    def batch_token_budget(self) -> int:
        if self.max_batch_tokens is not None:
            return self.max_batch_tokens
        return 512 if self.model_device == "cpu" else 16384

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.max_texts_per_request > self.max_queue:
            raise ValueError(
                f"max_texts_per_request ({self.max_texts_per_request}) cannot exceed max_queue "
                f"({self.max_queue}): such a request could never be queued"
            )
        if self.intra_op_threads > 4 * (os.cpu_count() or 1):
            raise ValueError(f"intra_op_threads={self.intra_op_threads} is far above the cores")
        return self
