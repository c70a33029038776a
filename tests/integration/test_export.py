"""The export: real models through optimum, checked against PyTorch on real text."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench.qqp import QuestionPair
from embedder.encoder import OnnxEncoder
from embedder.export import export_model
from embedder.manifest import MANIFEST_NAME, ModelManifest, Pooling, Precision, sha256_of
from tests.processes import REPO, run_module

pytestmark = pytest.mark.slow


def st_vectors(folder: Path, texts: list[str]) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(folder), device="cpu")
    return model.encode(texts, normalize_embeddings=True, show_progress_bar=False)


def test_minilm_manifest_describes_the_model(minilm_dir: Path) -> None:
    manifest = ModelManifest.read(minilm_dir)
    assert manifest.dimension == 384
    assert manifest.pooling is Pooling.MEAN
    assert manifest.source_has_normalize_module
    assert manifest.normalize
    assert manifest.max_seq_length == 256
    assert manifest.precision is Precision.FP32
    assert manifest.opset == 18
    assert manifest.onnx_sha256 == sha256_of(minilm_dir / "model.onnx")
    assert manifest.verification is not None and manifest.verification.min_cosine >= 0.9999
    assert not manifest.fallback  # named explicitly
    assert (minilm_dir / "tokenizer.json").is_file()


def test_minilm_onnx_agrees_with_pytorch_on_100_qqp_texts(
    minilm_dir: Path, packaged_st_dir: Path, qqp_pairs: list[QuestionPair]
) -> None:
    texts = [p.text_a for p in qqp_pairs[:100]]
    onnx = OnnxEncoder(minilm_dir).encode(texts)
    torch = st_vectors(packaged_st_dir, texts)
    cosines = (onnx * torch).sum(axis=1)
    assert cosines.min() >= 0.9999
    np.testing.assert_allclose(np.linalg.norm(onnx, axis=1), 1.0, atol=1e-5)


def test_padding_is_to_the_longest_in_the_batch_not_fixed(minilm_dir: Path) -> None:
    encoder = OnnxEncoder(minilm_dir)
    (short,) = encoder.tokenize(["hi"])
    assert short.length == 3  # [CLS] hi [SEP], not the tokenizer.json's fixed 128


def test_paraphrases_score_higher_than_non_paraphrases(
    minilm_dir: Path, qqp_pairs: list[QuestionPair]
) -> None:
    pairs = qqp_pairs[:600]
    encoder = OnnxEncoder(minilm_dir)
    a = np.vstack(
        [encoder.encode([p.text_a for p in pairs[i : i + 64]]) for i in range(0, len(pairs), 64)]
    )
    b = np.vstack(
        [encoder.encode([p.text_b for p in pairs[i : i + 64]]) for i in range(0, len(pairs), 64)]
    )
    sims = (a * b).sum(axis=1)
    labels = np.array([p.duplicate for p in pairs])
    margin = sims[labels].mean() - sims[~labels].mean()
    assert labels.sum() > 100 and (~labels).sum() > 100
    assert margin > 0.1, f"paraphrase margin only {margin:.3f}"


def test_int8_export_stays_close_to_pytorch(
    tmp_path: Path, packaged_st_dir: Path, qqp_pairs: list[QuestionPair]
) -> None:
    manifest = export_model(str(packaged_st_dir), tmp_path / "int8", precision=Precision.INT8)
    assert manifest.precision is Precision.INT8
    texts = [p.text_b for p in qqp_pairs[:50]]
    onnx = OnnxEncoder(tmp_path / "int8").encode(texts)
    cosines = (onnx * st_vectors(packaged_st_dir, texts)).sum(axis=1)
    assert cosines.min() >= 0.99
    assert (tmp_path / "int8" / "model.onnx").stat().st_size < 0.9 * (
        Path(packaged_st_dir) / "model.safetensors"
    ).stat().st_size


def test_modernbert_cls_export_matches_pytorch(
    tmp_path: Path, tiny_modernbert_dir: Path, qqp_pairs: list[QuestionPair]
) -> None:
    manifest = export_model(str(tiny_modernbert_dir), tmp_path / "mb")
    assert manifest.pooling is Pooling.CLS
    assert not manifest.source_has_normalize_module
    assert manifest.normalize  # CLS output is not unit-length: the service normalises it
    assert manifest.max_seq_length == 128
    assert manifest.dimension == 64
    assert "token_type_ids" not in manifest.input_names  # ModernBERT takes none
    texts = [p.text_a for p in qqp_pairs[:100]]
    onnx = OnnxEncoder(tmp_path / "mb").encode(texts)
    torch = st_vectors(tiny_modernbert_dir, texts)
    assert (onnx * torch).sum(axis=1).min() >= 0.9999


def test_cli_falls_back_loudly_when_no_model_is_named_and_the_hub_is_offline(
    tmp_path: Path,
) -> None:
    result = run_module(
        "embedder.export", "--output", str(tmp_path / "out"), env={"HF_HUB_OFFLINE": "1"}
    )
    assert result.returncode == 0, result.stderr
    assert "FALLBACK MODEL" in result.stderr
    manifest = json.loads((tmp_path / "out" / MANIFEST_NAME).read_text())
    assert manifest["fallback"] is True
    assert manifest["requested_model_id"] == "redis/langcache-embed-v1"
    assert manifest["model_id"] == "sentence-transformers/all-MiniLM-L6-v2"


@pytest.mark.parametrize("precision", ["fp32", "int8", "fp16"])
def test_cli_exports_to_a_relative_output_from_another_working_directory(
    tmp_path: Path, packaged_st_dir: Path, precision: str
) -> None:
    """What `make model` does (`--output models/default`), from a folder that is not the
    repository: the precision step changes the working directory, so relative paths must be
    resolved before it (a fresh clone's `make run` once died here)."""
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "embedder.export",
            "--model",
            str(packaged_st_dir),
            "--output",
            "models/default",
            "--precision",
            precision,
            "--verify-device",
            "cpu",
        ],
        cwd=workdir,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = workdir / "models" / "default"
    manifest = ModelManifest.read(out)
    assert manifest.precision.value == precision
    assert manifest.onnx_sha256 == sha256_of(out / "model.onnx")
    # Nothing but the finished folder is left: no temporary folder, no scratch files.
    assert sorted(p.name for p in (workdir / "models").iterdir()) == ["default"]
    assert sorted(p.name for p in workdir.iterdir()) == ["models"]


@pytest.mark.parametrize("model", ["/no/such/folder", "redis/langcache-embed-v1"])
def test_cli_fails_clearly_for_a_named_model_it_cannot_have(tmp_path: Path, model: str) -> None:
    result = run_module(
        "embedder.export",
        "--model",
        model,
        "--output",
        str(tmp_path / "out"),
        env={"HF_HUB_OFFLINE": "1"},
        timeout=120,
    )
    assert result.returncode == 2
    assert model in result.stderr
    assert not (tmp_path / "out").exists()


def test_serving_never_imports_pytorch(minilm_dir: Path) -> None:
    code = (
        "import sys\n"
        "import embedder.server\n"
        "from embedder.encoder import OnnxEncoder\n"
        f"OnnxEncoder(__import__('pathlib').Path({str(minilm_dir)!r})).encode(['hello'])\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'optimum', 'sentence_transformers')"
        " if m in sys.modules)\n"
        "print(heavy)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
