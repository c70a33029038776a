"""Shared fixtures: models exported once per test session, QQP data."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.qqp import QuestionPair, load_pairs, qqp_path


def pytest_configure(config: pytest.Config) -> None:
    logging.getLogger("embedder").setLevel(logging.WARNING)


@pytest.fixture(scope="session")
def qqp_pairs() -> list[QuestionPair]:
    if not qqp_path().exists():
        pytest.fail(f"QQP data not found at {qqp_path()} (set SEMCACHE_QQP_PATH)")
    return load_pairs(4000)


@pytest.fixture(scope="session")
def minilm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The packaged all-MiniLM-L6-v2, exported (fp32) through the production code path."""
    from embedder.export import export_model
    from embedder.model_source import packaged_model_path

    target = tmp_path_factory.mktemp("models") / "minilm"
    export_model(str(packaged_model_path()), target)
    return target


@pytest.fixture(scope="session")
def calibrated_dir(minilm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """minilm_dir with the verified policy's prior fitted on the QQP dev part, as `make model`
    ships it (embedder.training.prior, through the ONNX encoder)."""
    import shutil

    from embedder.training.pairs import read_pairs, split_pairs, summarize
    from embedder.training.prior import write_prior

    if not qqp_path().exists():
        pytest.fail(f"QQP data not found at {qqp_path()} (set SEMCACHE_QQP_PATH)")
    target = tmp_path_factory.mktemp("models") / "calibrated"
    shutil.copytree(minilm_dir, target)
    pairs = read_pairs(qqp_path())
    write_prior(target, split_pairs(pairs).dev, summarize(qqp_path(), pairs).sha256)
    return target


@pytest.fixture(scope="session")
def calibrated_embedder(calibrated_dir: Path) -> Iterator[str]:
    """An embedder serving calibrated_dir (its GetModelInfo carries the prior)."""
    yield from _embedder(calibrated_dir)


@pytest.fixture(scope="session")
def packaged_st_dir() -> Path:
    from embedder.model_source import packaged_model_path

    return packaged_model_path()


@pytest.fixture(scope="session")
def tiny_modernbert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.tiny_modernbert import build_tiny_modernbert

    return build_tiny_modernbert(tmp_path_factory.mktemp("tiny-modernbert"))


@pytest.fixture(scope="session")
def embedder_process(minilm_dir: Path) -> Iterator[str]:
    """One real embedder process for the session's read-only tests; yields its address."""
    yield from _embedder(minilm_dir)


def _embedder(model_dir: Path) -> Iterator[str]:
    from tests.processes import ServiceProcess

    with ServiceProcess(
        "embedder", "--model-dir", str(model_dir), "--intra-op-threads", "2"
    ) as process:
        yield process.address
