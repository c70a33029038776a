"""ONNX Runtime inference: tokenize, run, pool, L2-normalise. Synchronous; no PyTorch.

The serving path (EmbeddingBatcher) and the export's self-check both use this class, so what
the export verified is exactly what the server runs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from tokenizers import Encoding, Tokenizer

from embedder.manifest import ModelManifest, Pooling, sha256_of

log = logging.getLogger(__name__)

Device = Literal["cpu", "cuda"]
FloatArray = npt.NDArray[np.float32]


class ProviderUnavailableError(RuntimeError):
    """The configured execution provider (e.g. CUDA) cannot run here. Never silently replaced."""


class ModelIntegrityError(RuntimeError):
    """The ONNX file does not match the checksum in the manifest."""


class TextTooLongError(ValueError):
    """A text has more tokens than the model takes, and truncation is off."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"has more than {limit} tokens, the model's limit (truncation is off): shorten it"
        )
        self.limit = limit


@dataclass(frozen=True)
class TokenizedText:
    encoding: Encoding
    truncated: bool

    @property
    def length(self) -> int:
        return len(self.encoding.ids)


def providers_for(device: Device, cuda_device_id: int) -> list[str | tuple[str, dict[str, str]]]:
    if device == "cpu":
        return ["CPUExecutionProvider"]
    available = ort.get_available_providers()
    if "CUDAExecutionProvider" in available and hasattr(ort, "preload_dlls"):
        # Loads CUDA/cuDNN from the nvidia-* wheels when they are installed (as with
        # `pip install onnxruntime-gpu[cuda,cudnn]`); a no-op for system-wide CUDA.
        ort.preload_dlls()
    if "CUDAExecutionProvider" not in available:
        raise ProviderUnavailableError(
            "model_device=cuda but this onnxruntime build has no CUDAExecutionProvider "
            f"(available: {', '.join(available)}); install onnxruntime-gpu, or use model_device=cpu"
        )
    return [("CUDAExecutionProvider", {"device_id": str(cuda_device_id)}), "CPUExecutionProvider"]


def open_session(
    onnx_path: Path,
    expected_sha256: str | None,
    *,
    device: Device,
    cuda_device_id: int,
    intra_op_threads: int,
    spin_wait: bool,
    spin_after_run: bool = False,
) -> ort.InferenceSession:
    """An ONNX Runtime session as every model here is served: the file checked against its
    manifest's sha256 (unless None), thread pools sized on purpose, and CUDA never silently
    replaced by the CPU."""
    if expected_sha256 is not None and sha256_of(onnx_path) != expected_sha256:
        raise ModelIntegrityError(
            f"{onnx_path} does not match the sha256 in its manifest: re-export the model"
        )
    options = ort.SessionOptions()
    # Thread pools are sized on purpose: on a small machine, ONNX Runtime's pool and any
    # other pool (numpy/BLAS, a second process) fight for the same cores.
    options.intra_op_num_threads = intra_op_threads or (os.cpu_count() or 1)
    options.inter_op_num_threads = 1
    # Spinning between runs lowers latency but burns cores that other processes may need.
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin_wait else "0")
    # ONNX Runtime's threads otherwise go on spinning after a run ends, waiting for the next
    # one: on the cores the cache server and gateway need to finish the same request.
    options.add_session_config_entry("session.force_spinning_stop", "0" if spin_after_run else "1")
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(
        str(onnx_path), sess_options=options, providers=providers_for(device, cuda_device_id)
    )
    running = session.get_providers()[0]
    if device == "cuda" and running != "CUDAExecutionProvider":
        raise ProviderUnavailableError(
            f"model_device=cuda but ONNX Runtime runs {onnx_path.name} on {running} (CUDA "
            "libraries or a GPU missing?): refusing to fall back to CPU silently"
        )
    return session


def padded(
    batch: Sequence[TokenizedText], pad_token_id: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """input_ids, attention_mask and token_type_ids of a batch, padded to its longest."""
    width = max(t.length for t in batch)
    ids = np.full((len(batch), width), pad_token_id, dtype=np.int64)
    mask = np.zeros((len(batch), width), dtype=np.int64)
    types = np.zeros((len(batch), width), dtype=np.int64)
    for row, item in enumerate(batch):
        ids[row, : item.length] = item.encoding.ids
        mask[row, : item.length] = 1
        types[row, : item.length] = item.encoding.type_ids
    return ids, mask, types


class OnnxEncoder:
    """One exported model folder, loaded into an ONNX Runtime session.

    Vectors come back L2-normalised (when the manifest says so, which exports always do), so the
    dot product of two vectors is their cosine similarity.
    """

    def __init__(
        self,
        model_dir: Path,
        *,
        device: Device = "cpu",
        cuda_device_id: int = 0,
        intra_op_threads: int = 0,
        truncate: bool = True,
        verify_checksum: bool = True,
        spin_wait: bool = True,
        spin_after_run: bool = False,
    ) -> None:
        self.model_dir = model_dir
        self.manifest = ModelManifest.read(model_dir)
        self.truncate = truncate
        self._session = open_session(
            model_dir / self.manifest.onnx_file,
            self.manifest.onnx_sha256 if verify_checksum else None,
            device=device,
            cuda_device_id=cuda_device_id,
            intra_op_threads=intra_op_threads,
            spin_wait=spin_wait,
            spin_after_run=spin_after_run,
        )
        self.execution_provider = self._session.get_providers()[0]
        self._input_names = {i.name for i in self._session.get_inputs()}
        self._output_name = self._session.get_outputs()[0].name

        self._tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        # Some tokenizer.json files fix padding at 128: a one-word query would then cost as much
        # as a long one. Padding is done here, to the longest text of each batch.
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_length=self.manifest.max_seq_length)

    @property
    def dimension(self) -> int:
        return self.manifest.dimension

    def tokenize(self, texts: Sequence[str]) -> list[TokenizedText]:
        """Tokenizes (cut at max_seq_length); see `check_length` for truncation off."""
        encodings = self._tokenizer.encode_batch(list(texts))
        return [TokenizedText(e, truncated=bool(e.overflowing)) for e in encodings]

    def check_length(self, item: TokenizedText) -> None:
        """Raises TextTooLongError for a cut text when truncation is off."""
        if item.truncated and not self.truncate:
            raise TextTooLongError(self.manifest.max_seq_length)

    def run(self, batch: Sequence[TokenizedText]) -> FloatArray:
        """Runs one padded batch through the model; returns (len(batch), dimension) float32."""
        ids, mask, types = padded(batch, self.manifest.pad_token_id)
        feeds: dict[str, npt.NDArray[np.int64]] = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._input_names:
            feeds["token_type_ids"] = types  # all 0: one text per row
        (hidden,) = self._session.run([self._output_name], feeds)
        return self._pool(np.asarray(hidden, dtype=np.float32), mask)

    def encode(self, texts: Sequence[str]) -> FloatArray:
        """Tokenizes and runs `texts` as one batch (no queue); for export checks and tests."""
        tokenized = self.tokenize(texts)
        for item in tokenized:
            self.check_length(item)
        return self.run(tokenized)

    def _pool(self, hidden: FloatArray, mask: npt.NDArray[np.int64]) -> FloatArray:
        pooling = self.manifest.pooling
        if pooling is Pooling.CLS:
            pooled = hidden[:, 0, :]
        elif pooling is Pooling.MEAN:
            weights = mask[:, :, None].astype(np.float32)
            pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        elif pooling is Pooling.MAX:
            pooled = np.where(mask[:, :, None] > 0, hidden, np.float32(-1e9)).max(axis=1)
        else:  # LAST_TOKEN: right padding, so the last real token is at length - 1
            last = mask.sum(axis=1) - 1
            pooled = hidden[np.arange(hidden.shape[0]), last, :]
        pooled = np.ascontiguousarray(pooled, dtype=np.float32)
        if self.manifest.normalize:
            norms = np.linalg.norm(pooled, axis=1, keepdims=True)
            pooled /= np.maximum(norms, 1e-12)
        return pooled
