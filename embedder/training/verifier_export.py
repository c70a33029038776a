"""Export a trained cross-encoder to ONNX and check it against PyTorch (training time only).

The same discipline as the embedder's export: optimum writes the ONNX graph, then the very
class the embedder serves with (embedder.scorer.OnnxPairScorer) scores sample pairs, one at a
time and all together, and the export fails unless every probability is within tolerance of
PyTorch's. The finished folder replaces `output` only once it has passed.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from embedder.export import DEFAULT_OPSET
from embedder.manifest import sha256_of
from embedder.scorer import OnnxPairScorer, TextPair
from embedder.verifier_manifest import VerifierCheck, VerifierManifest

log = logging.getLogger("embedder.verifier_export")

MAX_ABS_DIFFERENCE = 1e-4
SAMPLE_PAIRS: list[TextPair] = [
    ("How do I learn Python?", "How can I learn Python quickly?"),
    ("How do I learn Python?", "How do I learn Java?"),
    ("What is the capital of France?", "Which city is France's capital?"),
    ("Is it safe to eat raw eggs?", "What is the best way to boil eggs?"),
    ("hi", "a considerably longer question about the history of the Byzantine empire"),
]


class VerifierExportError(RuntimeError):
    """The ONNX verifier does not agree with the PyTorch one."""


def torch_probabilities(model: object, tokenizer: object, pairs: Sequence[TextPair]) -> np.ndarray:
    import torch

    assert callable(tokenizer) and callable(model)
    features = tokenizer(
        [a for a, _ in pairs],
        [b for _, b in pairs],
        padding=True,
        truncation="longest_first",
        max_length=getattr(tokenizer, "model_max_length", 512),
        return_tensors="pt",
    )
    with torch.no_grad():
        logits = model(**features).logits[:, 0]
    return torch.sigmoid(logits).numpy().astype(np.float32)


def export_verifier(
    trained: Path,
    output: Path,
    *,
    model_id: str,
    max_seq_length: int,
    extra_pairs: Sequence[TextPair] = (),
    opset: int = DEFAULT_OPSET,
) -> VerifierManifest:
    """`trained`: a transformers sequence-classification folder (one logit) with its tokenizer."""
    from optimum.exporters.onnx import main_export
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    output = Path(output).resolve()
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=f".{output.name}-") as tmp:
        final = Path(tmp) / "final"
        main_export(
            str(trained),
            output=str(final),
            task="text-classification",
            library_name="transformers",
            opset=opset,
            device="cpu",
            do_validation=False,  # checked below, through the serving class
        )
        import onnxruntime as ort

        onnx_path = final / "model.onnx"
        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        tokenizer = AutoTokenizer.from_pretrained(str(trained))
        tokenizer.model_max_length = max_seq_length
        manifest = VerifierManifest(
            model_id=model_id,
            max_seq_length=max_seq_length,
            pad_token_id=int(tokenizer.pad_token_id or 0),
            opset=opset,
            onnx_sha256=sha256_of(onnx_path),
            input_names=[i.name for i in session.get_inputs()],
            exported_at=time.time(),
        )
        del session
        manifest.write(final)
        pairs = list(SAMPLE_PAIRS) + list(extra_pairs)
        model = AutoModelForSequenceClassification.from_pretrained(str(trained)).eval()
        expected = torch_probabilities(model, tokenizer, pairs)
        scorer = OnnxPairScorer(final, verify_checksum=False)
        together = scorer.score(pairs)
        alone = np.concatenate([scorer.score([pair]) for pair in pairs])
        worst = float(max(np.abs(together - expected).max(), np.abs(alone - expected).max()))
        if worst > MAX_ABS_DIFFERENCE:
            raise VerifierExportError(
                f"ONNX verifier disagrees with PyTorch: max |p difference| {worst:.2e} > "
                f"{MAX_ABS_DIFFERENCE:.0e} over {len(pairs)} pairs"
            )
        manifest.verification = VerifierCheck(
            pairs=len(pairs),
            max_abs_difference=worst,
            required_max_abs_difference=MAX_ABS_DIFFERENCE,
            provider=scorer.execution_provider,
        )
        manifest.write(final)
        if output.exists():
            shutil.rmtree(output)
        final.rename(output)
    log.info("exported the verifier to %s: max |p difference| vs PyTorch %.2e", output, worst)
    return manifest
