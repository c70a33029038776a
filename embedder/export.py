"""Export a sentence-embedding model to a self-describing ONNX folder (export time only).

    python -m embedder.export [--model HUB_ID_OR_FOLDER] --output models/default [--precision fp32]

Writes model.onnx, the tokenizer files and semcache-model.json, after checking that the ONNX
model, run through the very encoder the server uses, agrees with the PyTorch
sentence-transformers model (cosine >= 0.9999 for fp32, 0.99 for int8, 0.999 for fp16). A
failed check leaves no folder behind and exits non-zero.

This is the only module that imports PyTorch (through optimum and sentence-transformers).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from embedder.encoder import Device, OnnxEncoder
from embedder.manifest import ModelManifest, Precision, Verification, sha256_of
from embedder.model_source import (
    ModelSource,
    ModelUnavailableError,
    UnsupportedModelError,
    read_sentence_layout,
    resolve_model,
)

log = logging.getLogger("embedder.export")

REQUIRED_COSINE = {Precision.FP32: 0.9999, Precision.INT8: 0.99, Precision.FP16: 0.999}
DEFAULT_OPSET = 18

# Varied on purpose: short and long, punctuation, digits, non-ASCII, and one text longer than
# any max_seq_length so that truncation is checked too.
SAMPLE_TEXTS = [
    "How do I reset my password?",
    "What is the capital of France?",
    "hi",
    "Is it safe to eat raw cookie dough?",
    "Which is the best programming language to learn first, Python or JavaScript?",
    "Wie viel kostet ein Bahnticket von Berlin nach München?",
    "Quelle est la différence entre un crocodile et un alligator ?",
    "What are the side effects of taking 400mg of ibuprofen every day for 3 weeks?",
    "Can you explain quantum entanglement to a five-year-old? 🙂",
    "Why do cats purr when they are happy, and do they also purr when they are in pain?",
    "Stock prices fell 3.2% on Monday after the central bank raised rates by 0.25 points.",
    " ".join(["A very long question about caching, embeddings and latency."] * 120),
]


class VerificationError(RuntimeError):
    """The exported ONNX model does not agree with the PyTorch model."""


class ExportOptions(argparse.Namespace):
    model: str | None
    output: Path
    precision: Precision
    opset: int
    max_seq_length: int | None
    verify_device: Device | None
    fusions: bool


def _export_fp32(transformer_path: Path, workdir: Path, opset: int) -> Path:
    from optimum.exporters.onnx import main_export

    out = workdir / "fp32"
    main_export(
        str(transformer_path),
        output=str(out),
        task="feature-extraction",
        library_name="transformers",
        opset=opset,
        device="cpu",
        do_validation=False,  # our own check below compares pooled sentence vectors
    )
    return out


# Architectures whose encoder graph onnxruntime.transformers' BERT fusions recognise (attention,
# skip-LayerNorm, embedding-LayerNorm, bias-GELU). Others (ModernBERT: rotary attention, GeGLU)
# are exported unfused: ONNX Runtime's own online optimisations still apply at load time.
BERT_LIKE = {"bert", "roberta", "xlm-roberta", "distilbert", "camembert", "electra", "mpnet"}


def fuse_transformer_graph(fp32_onnx: Path, target: Path, config: dict[str, Any]) -> dict[str, int]:
    """Fuses the encoder's subgraphs into ONNX Runtime's transformer kernels (Attention,
    SkipLayerNormalization, EmbedLayerNormalization, BiasGelu) and writes the result to
    `target`; returns the count of each fused operator (empty, and `target` a plain copy, for
    an architecture outside BERT_LIKE or a graph the fusions do not match).

    Measured on all-MiniLM-L6-v2 (docs/benchmarks.md): ONNX Runtime's online optimiser alone
    fuses LayerNorm and BiasGelu but not attention (524 -> 290 nodes); offline, every block's
    attention becomes one Attention node (-> ~110 nodes)."""
    model_type = str(config.get("model_type", ""))
    if model_type not in BERT_LIKE:
        log.info("graph fusions: none for model type %r (exported unfused)", model_type)
        shutil.copy2(fp32_onnx, target)
        return {}
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    optimized = optimize_model(
        str(fp32_onnx),
        model_type="bert",
        num_heads=int(config.get("num_attention_heads", 0)),
        hidden_size=int(config.get("hidden_size", 0)),
        optimization_options=FusionOptions("bert"),
        opt_level=0,  # only the offline fusions; ONNX Runtime's online passes run at load
        use_gpu=False,
    )
    fused = {op: n for op, n in optimized.get_fused_operator_statistics().items() if n}
    if not fused.get("Attention"):
        log.warning("graph fusions: attention not matched in %s; exported unfused", model_type)
        shutil.copy2(fp32_onnx, target)
        return {}
    optimized.save_model_to_file(str(target))
    log.info("graph fusions: %s", ", ".join(f"{op} x{n}" for op, n in sorted(fused.items())))
    return fused


def feed_forward_matmuls(onnx_model: Any, intermediate_size: int) -> list[str]:
    """MatMul nodes whose weight has the feed-forward width (intermediate_size, or twice it for
    gated units such as ModernBERT's GeGLU)."""
    widths = {intermediate_size, 2 * intermediate_size}
    weight_dims = {init.name: set(init.dims) for init in onnx_model.graph.initializer}
    return [
        node.name
        for node in onnx_model.graph.node
        if node.op_type == "MatMul"
        and len(node.input) > 1
        and weight_dims.get(node.input[1], set()) & widths
    ]


def _quantize_int8(fp32_onnx: Path, target: Path, intermediate_size: int | None) -> None:
    """Dynamic int8: weights per channel, activations per batch at run time.

    Measured on all-MiniLM-L6-v2 (min cosine to PyTorch over the sample texts): per-tensor
    scales ~0.95; per-channel on every MatMul 0.978; the same without activation-by-activation
    MatMuls (attention scores) 0.985; and, keeping the feed-forward layers in fp32 as well
    (their inputs, after GELU, carry outliers that an 8-bit range clips), 0.9955.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(fp32_onnx))
    keep_fp32 = feed_forward_matmuls(model, intermediate_size) if intermediate_size else []
    del model
    quantize_dynamic(
        str(fp32_onnx),
        str(target),
        per_channel=True,
        weight_type=QuantType.QInt8,
        op_types_to_quantize=["MatMul"],
        nodes_to_exclude=keep_fp32,
        extra_options={"MatMulConstBOnly": True},
    )


def _convert_fp16(fp32_onnx: Path, target: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(fp32_onnx))
    # Inputs and outputs stay as they are (int64 ids in, float32 hidden states out).
    converted = convert_float_to_float16(model, keep_io_types=True)
    onnx.save(converted, str(target))


def _pad_token_id(folder: Path) -> int:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    pad = tokenizer.pad_token_id
    return int(pad) if pad is not None else 0


def _verify(
    source: ModelSource, folder: Path, precision: Precision, device: Device
) -> Verification:
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(source.path), device="cpu")
    expected = reference.encode(
        SAMPLE_TEXTS, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
    )
    encoder = OnnxEncoder(folder, device=device, verify_checksum=False)
    # One text at a time and all together: batching must not change a vector beyond tolerance.
    together = encoder.encode(SAMPLE_TEXTS)
    alone = np.vstack([encoder.encode([text]) for text in SAMPLE_TEXTS])
    cosines = np.concatenate([(together * expected).sum(axis=1), (alone * expected).sum(axis=1)])
    required = REQUIRED_COSINE[precision]
    worst = float(cosines.min())
    if worst < required:
        raise VerificationError(
            f"ONNX ({precision.value}) disagrees with PyTorch: min cosine {worst:.6f} "
            f"< {required} over {len(SAMPLE_TEXTS)} sample texts"
        )
    return Verification(
        texts=len(SAMPLE_TEXTS),
        min_cosine=worst,
        required_min_cosine=required,
        provider=encoder.execution_provider,
    )


def export_model(
    model: str | None,
    output: Path,
    *,
    precision: Precision = Precision.FP32,
    opset: int = DEFAULT_OPSET,
    max_seq_length: int | None = None,
    verify_device: Device | None = None,
    fusions: bool = True,
) -> ModelManifest:
    """Exports, verifies, then moves the finished folder into `output` (replacing it)."""
    # Absolute from here on: the precision step below changes the working directory.
    output = Path(output).resolve()
    source = resolve_model(model)
    layout = read_sentence_layout(source.path)
    log.info(
        "exporting %s (%s pooling, normalize module: %s) as %s",
        source.model_id,
        layout.pooling.value,
        layout.has_normalize_module,
        precision.value,
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=f".{output.name}-") as tmp:
        workdir = Path(tmp)
        fp32_dir = _export_fp32(layout.transformer_path, workdir, opset)
        config = json.loads((layout.transformer_path / "config.json").read_text())
        final = workdir / "final"
        shutil.copytree(fp32_dir, final, ignore=shutil.ignore_patterns("*.onnx", "*.onnx_data"))
        onnx_path = final / "model.onnx"
        # onnxruntime's tools may drop scratch files into the working directory: keep them in
        # the temporary folder.
        with contextlib.chdir(workdir):
            fused: dict[str, int] = {}
            if precision is Precision.INT8:
                # Quantised from the unfused graph: its feed-forward MatMuls are found by name
                # and kept in fp32 (_quantize_int8), which fused nodes would hide.
                intermediate = config.get("intermediate_size")
                _quantize_int8(fp32_dir / "model.onnx", onnx_path, intermediate)
            else:
                graph = workdir / "fused.onnx"
                if fusions:
                    fused = fuse_transformer_graph(fp32_dir / "model.onnx", graph, config)
                else:
                    shutil.copy2(fp32_dir / "model.onnx", graph)
                if precision is Precision.FP32:
                    shutil.copy2(graph, onnx_path)
                else:
                    _convert_fp16(graph, onnx_path)

        import onnxruntime as ort

        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        tokenizer_limit = int(config.get("max_position_embeddings", 512))
        manifest = ModelManifest(
            model_id=source.model_id,
            fallback=source.fallback,
            requested_model_id=source.requested_model_id,
            dimension=int(config["hidden_size"]),
            pooling=layout.pooling,
            source_has_normalize_module=layout.has_normalize_module,
            max_seq_length=max_seq_length or layout.max_seq_length or tokenizer_limit,
            pad_token_id=_pad_token_id(layout.transformer_path),
            precision=precision,
            opset=opset,
            onnx_sha256=sha256_of(onnx_path),
            input_names=[i.name for i in session.get_inputs()],
            graph_fusions=fused,
            exported_at=time.time(),
        )
        del session
        manifest.write(final)
        device: Device = verify_device or ("cuda" if precision is Precision.FP16 else "cpu")
        manifest.verification = _verify(source, final, precision, device)
        manifest.write(final)
        if output.exists():
            shutil.rmtree(output)
        final.rename(output)
    log.info(
        "exported %s to %s: %d dims, min cosine vs PyTorch %.6f",
        manifest.model_id,
        output,
        manifest.dimension,
        manifest.verification.min_cosine,
    )
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m embedder.export", description=__doc__)
    parser.add_argument(
        "--model",
        default=None,
        help="hub id or local sentence-transformers folder (default: redis/langcache-embed-v1, "
        "falling back to the packaged all-MiniLM-L6-v2 when the hub is unreachable)",
    )
    parser.add_argument("--output", type=Path, required=True, help="folder to write")
    parser.add_argument(
        "--precision", type=Precision, choices=list(Precision), default=Precision.FP32
    )
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    parser.add_argument("--max-seq-length", type=int, default=None)
    parser.add_argument(
        "--verify-device",
        choices=["cpu", "cuda"],
        default=None,
        help="execution provider for the self-check (default: cuda for fp16, else cpu)",
    )
    parser.add_argument(
        "--fusions",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="fuse attention, LayerNorm and GELU into ONNX Runtime's transformer kernels "
        "(BERT-like models, fp32/fp16; default on)",
    )
    args = parser.parse_args(argv, namespace=ExportOptions())
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s export: %(message)s")
    try:
        export_model(
            args.model,
            args.output,
            precision=args.precision,
            opset=args.opset,
            max_seq_length=args.max_seq_length,
            verify_device=args.verify_device,
            fusions=args.fusions,
        )
    except (ModelUnavailableError, UnsupportedModelError) as exc:
        log.error("%s", exc)
        return 2
    except VerificationError as exc:
        log.error("%s", exc)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
