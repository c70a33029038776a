"""Reading pooling from sentence-transformers files; resolving models and the fallback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from embedder import model_source
from embedder.manifest import Pooling
from embedder.model_source import (
    FALLBACK_MODEL_ID,
    ModelUnavailableError,
    UnsupportedModelError,
    read_sentence_layout,
    resolve_model,
)


def write_st_folder(
    folder: Path, pooling: dict[str, bool], normalize: bool, extra_module: str | None = None
) -> Path:
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
    ]
    if normalize:
        modules.append(
            {
                "idx": 2,
                "name": "2",
                "path": "2_Normalize",
                "type": "sentence_transformers.models.Normalize",
            }
        )
    if extra_module:
        modules.append({"idx": 3, "name": "3", "path": "3", "type": extra_module})
    (folder / "1_Pooling").mkdir(parents=True)
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 77}))
    return folder


def test_cls_pooling_without_normalize_like_langcache(tmp_path: Path) -> None:
    layout = read_sentence_layout(
        write_st_folder(tmp_path, {"pooling_mode_cls_token": True}, normalize=False)
    )
    assert layout.pooling is Pooling.CLS
    assert not layout.has_normalize_module
    assert layout.max_seq_length == 77
    assert layout.transformer_path == tmp_path


def test_mean_pooling_with_normalize_like_minilm(packaged_st_dir: Path) -> None:
    layout = read_sentence_layout(packaged_st_dir)
    assert layout.pooling is Pooling.MEAN
    assert layout.has_normalize_module
    assert layout.max_seq_length == 256


def test_a_model_without_modules_json_is_refused_not_guessed(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedModelError, match="never guessed"):
        read_sentence_layout(tmp_path)


def test_a_dense_module_is_refused(tmp_path: Path) -> None:
    folder = write_st_folder(
        tmp_path,
        {"pooling_mode_mean_tokens": True},
        True,
        extra_module="sentence_transformers.models.Dense",
    )
    with pytest.raises(UnsupportedModelError, match="Dense"):
        read_sentence_layout(folder)


def test_two_pooling_modes_are_refused(tmp_path: Path) -> None:
    folder = write_st_folder(
        tmp_path, {"pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": True}, True
    )
    with pytest.raises(UnsupportedModelError, match="exactly one"):
        read_sentence_layout(folder)


def test_explicit_missing_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailableError, match="does not exist"):
        resolve_model(str(tmp_path / "nope"))


def test_explicit_hub_id_unreachable_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelUnavailableError, match="someone/not-a-model"):
        resolve_model("someone/not-a-model")


def test_no_model_named_and_hub_unreachable_falls_back_loudly(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def unreachable(model_id: str) -> Path:
        raise ModelUnavailableError(f"{model_id} unreachable")

    monkeypatch.setattr(model_source, "_download", unreachable)
    source = resolve_model(None)
    assert source.fallback
    assert source.model_id == FALLBACK_MODEL_ID
    assert source.requested_model_id == "redis/langcache-embed-v1"
    assert (source.path / "modules.json").is_file()
    assert "FALLBACK MODEL" in caplog.text


def test_the_packaged_folder_named_explicitly_is_not_a_fallback(packaged_st_dir: Path) -> None:
    source = resolve_model(str(packaged_st_dir))
    assert not source.fallback
    assert source.model_id == FALLBACK_MODEL_ID


def test_the_newer_single_key_pooling_format(tmp_path: Path) -> None:
    layout = read_sentence_layout(write_st_folder(tmp_path, {"pooling_mode": "cls"}, False))  # type: ignore[dict-item]
    assert layout.pooling is Pooling.CLS
