"""Settings: defaults, environment, flags, and refusal of bad values at start-up."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from embedder.service import validate_texts
from embedder.settings import EmbedderSettings
from service_runtime.settings import settings_from_args


def test_defaults_match_the_product() -> None:
    s = EmbedderSettings()
    assert s.port == 50052
    assert s.model_device == "cpu"
    assert s.model_dir == Path("models/default")


def test_flags_beat_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBEDDER_PORT", "6000")
    monkeypatch.setenv("EMBEDDER_MAX_BATCH_SIZE", "8")
    s = settings_from_args(EmbedderSettings, ["--port", "7000"], prog="t")
    assert s.port == 7000
    assert s.max_batch_size == 8


def test_model_device_from_the_original_products_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODEL_DEVICE", "cuda")
    assert EmbedderSettings().model_device == "cuda"
    assert (
        settings_from_args(EmbedderSettings, ["--model-device", "cpu"], "t").model_device == "cpu"
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["--model-device", "tpu"],
        ["--port", "70000"],
        ["--max-batch-size", "0"],
        ["--max-queue", "10", "--max-texts-per-request", "20"],
        ["--truncate", "maybe"],
    ],
)
def test_bad_settings_are_refused(argv: list[str]) -> None:
    with pytest.raises(ValidationError):
        settings_from_args(EmbedderSettings, argv, prog="t")


@pytest.mark.parametrize(
    ("texts", "message"),
    [
        ([], "texts is empty"),
        (["ok", ""], r"texts\[1\] is empty"),
        (["   "], r"texts\[0\] is empty"),
        (["x" * 9000], r"texts\[0\] has 9000 characters; the limit is 8192"),
        (["q"] * 257, "too many texts: 257; at most 256"),
    ],
)
def test_request_validation_messages(texts: list[str], message: str) -> None:
    import re

    problem = validate_texts(texts, EmbedderSettings())
    assert problem is not None and re.search(message, problem)


def test_valid_request_passes() -> None:
    assert validate_texts(["How do I learn Python?"], EmbedderSettings()) is None
