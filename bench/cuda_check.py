"""CUDA execution provider check, for a machine with a GPU and onnxruntime-gpu.

    python -m bench.cuda_check --model-dir models/default --texts texts.json --out result.json

Makes an fp16 copy of the fp32 export (the same conversion `embedder.export --precision fp16`
uses), then checks on real text that CUDA fp32 and CUDA fp16 agree with the CPU provider's
fp32 vectors (which the export verified against PyTorch), and measures texts/s at batch 1 and
batch 64 for each. Refuses to report CUDA figures if ONNX Runtime did not really run on CUDA.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from embedder.encoder import Device, OnnxEncoder
from embedder.export import _convert_fp16
from embedder.manifest import ModelManifest, Precision, sha256_of


def fp16_copy(fp32_dir: Path, target: Path) -> Path:
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(fp32_dir, target, ignore=shutil.ignore_patterns("model.onnx"))
    _convert_fp16(fp32_dir / "model.onnx", target / "model.onnx")
    manifest = ModelManifest.read(fp32_dir)
    manifest.precision = Precision.FP16
    manifest.onnx_sha256 = sha256_of(target / "model.onnx")
    manifest.verification = None
    manifest.write(target)
    return target


def throughput(encoder: OnnxEncoder, texts: list[str], batch: int, seconds: float = 3.0) -> float:
    chunks = [texts[i : i + batch] for i in range(0, len(texts), batch)]
    for chunk in chunks[:3]:
        encoder.encode(chunk)
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for chunk in chunks:
            encoder.encode(chunk)
            done += len(chunk)
    return done / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--texts", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    texts: list[str] = json.loads(args.texts.read_text())
    report: dict[str, Any] = {
        "onnxruntime": ort.__version__,
        "available_providers": ort.get_available_providers(),
    }
    fp16_dir = fp16_copy(args.model_dir, args.model_dir.parent / "fp16")
    contenders: list[tuple[str, Path, Device]] = [
        ("cpu-fp32", args.model_dir, "cpu"),
        ("cuda-fp32", args.model_dir, "cuda"),
        ("cuda-fp16", fp16_dir, "cuda"),
    ]
    reference: np.ndarray | None = None
    for name, folder, device in contenders:
        encoder = OnnxEncoder(folder, device=device)
        row: dict[str, Any] = {"provider": encoder.execution_provider}
        if device == "cuda" and encoder.execution_provider != "CUDAExecutionProvider":
            raise SystemExit(f"{name}: not running on CUDA ({encoder.execution_provider})")
        vectors = np.vstack([encoder.encode(texts[i : i + 64]) for i in range(0, 512, 64)])
        alone = np.vstack([encoder.encode([t]) for t in texts[:64]])
        if reference is None:
            reference = vectors
        else:
            row["min_cosine_vs_cpu_fp32"] = float((vectors * reference).sum(axis=1).min())
            row["min_cosine_alone_vs_cpu_fp32"] = float((alone * reference[:64]).sum(axis=1).min())
        row["batch1_per_s"] = throughput(encoder, texts[:200], 1)
        row["batch64_per_s"] = throughput(encoder, texts, 64)
        report[name] = row
        print(name, json.dumps(row), flush=True)
    cpu = report["cpu-fp32"]
    for name in ("cuda-fp32", "cuda-fp16"):
        report[name]["batch1_vs_cpu"] = report[name]["batch1_per_s"] / cpu["batch1_per_s"]
        report[name]["batch64_vs_cpu"] = report[name]["batch64_per_s"] / cpu["batch64_per_s"]
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
