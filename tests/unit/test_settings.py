"""Settings: defaults, environment, flags, and refusal of bad values at start-up."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from cache_server.settings import CacheSettings
from cache_server.store.redis_store import redacted_url
from embedder.service import validate_texts
from embedder.settings import EmbedderSettings
from service_runtime.settings import describe_errors, settings_from_args, start_service


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


@pytest.mark.parametrize(
    "argv",
    [
        ["--redis-tls-ca-file", "/tmp/ca.pem"],  # TLS files without rediss://
        ["--redis-url", "rediss://h:6380/0", "--redis-tls-cert-file", "/tmp/c.pem"],  # no key
        ["--redis-url", "http://h:6379"],
        ["--port", "not-a-port"],
    ],
)
def test_a_refused_setting_never_shows_a_secret(
    argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CACHE_REDIS_PASSWORD", "hunter2-redis")
    monkeypatch.setenv("CACHE_UPSTREAM_API_KEY", "sk-upstream-secret")
    assert start_service(CacheSettings, argv, "cache_server") is None
    said = capsys.readouterr().err
    assert "invalid settings" in said
    assert "hunte" not in said and "sk-up" not in said
    with pytest.raises(ValidationError) as caught:
        settings_from_args(CacheSettings, argv, "t")
    assert describe_errors(caught.value).strip()


def test_redis_access_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CACHE_REDIS_PASSWORD", "pw")
    s = settings_from_args(
        CacheSettings,
        ["--redis-url", "rediss://cache.internal:6380/0", "--redis-tls-ca-file", "/ca.pem"],
        "t",
    )
    options = s.redis_access.connection_options(s.redis_url)
    assert options["password"] == "pw" and options["ssl_ca_certs"] == "/ca.pem"
    assert options["ssl_cert_reqs"] == "required" and options["ssl_check_hostname"] is True
    assert "pw" not in repr(s)  # SecretStr


def test_a_password_in_the_redis_url_is_redacted() -> None:
    assert redacted_url("redis://:s3cret@h:6379/0") == "redis://:***@h:6379/0"
    assert redacted_url("rediss://app:s3cret@h:6380/1") == "rediss://app:***@h:6380/1"
    assert redacted_url("redis://h:6379/0") == "redis://h:6379/0"
