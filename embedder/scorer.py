"""The verifier at serving time: ONNX Runtime runs a cross-encoder over (query, candidate)
pairs and gives the probability that the two mean the same. No PyTorch.

Both texts are read together (one sequence, `[CLS] query [SEP] candidate [SEP]`), which is what
lets it tell "How do I learn Python?" from "How do I learn Java?" where two independent
embeddings cannot. Same batching as the embedder (EmbeddingBatcher runs it), same checks.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
from tokenizers import Tokenizer

from embedder.encoder import (
    Device,
    FloatArray,
    TokenizedText,
    open_session,
    padded,
)
from embedder.verifier_manifest import VerifierManifest

TextPair = tuple[str, str]


def sigmoid(logits: FloatArray) -> FloatArray:
    return np.asarray(1.0 / (1.0 + np.exp(-logits.astype(np.float64))), dtype=np.float32)


class OnnxPairScorer:
    """One exported verifier folder in an ONNX Runtime session. `run` returns a (n, 1) column
    of probabilities, so the embedding batcher can schedule it like an encoder."""

    def __init__(
        self,
        folder: Path,
        *,
        device: Device = "cpu",
        cuda_device_id: int = 0,
        intra_op_threads: int = 0,
        verify_checksum: bool = True,
        spin_wait: bool = True,
        spin_after_run: bool = False,
    ) -> None:
        self.folder = folder
        self.manifest = VerifierManifest.read(folder)
        self._session = open_session(
            folder / self.manifest.onnx_file,
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
        self._tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self._tokenizer.no_padding()
        # Long pairs are cut from the longer text first, so both keep their beginnings.
        self._tokenizer.enable_truncation(
            max_length=self.manifest.max_seq_length, strategy="longest_first"
        )

    def tokenize(self, pairs: Sequence[TextPair]) -> list[TokenizedText]:
        encodings = self._tokenizer.encode_batch(list(pairs))
        return [TokenizedText(e, truncated=bool(e.overflowing)) for e in encodings]

    def check_length(self, item: TokenizedText) -> None:
        """Pairs are always cut at the model's length: nothing is refused."""

    def run(self, batch: Sequence[TokenizedText]) -> FloatArray:
        ids, mask, types = padded(batch, self.manifest.pad_token_id)
        feeds: dict[str, npt.NDArray[np.int64]] = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._input_names:
            feeds["token_type_ids"] = types
        (logits,) = self._session.run([self._output_name], feeds)
        column = np.asarray(logits, dtype=np.float32).reshape(len(batch), -1)[:, :1]
        return sigmoid(column)

    def score(self, pairs: Sequence[TextPair]) -> FloatArray:
        """Probabilities for `pairs` as one batch (no queue): for the export's check and tests."""
        return self.run(self.tokenize(pairs))[:, 0]
