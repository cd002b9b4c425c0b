"""Settings: defaults, REWARD_* environment, flags over environment, refusal of unsafe values."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from app.__main__ import settings_from_args
from app.config import Settings


def test_defaults_are_safe_and_documented_values(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in Settings.model_fields:
        monkeypatch.delenv(f"REWARD_{name.upper()}", raising=False)
    settings = Settings()
    assert (settings.host, settings.port, settings.model_store) == ("127.0.0.1", 8000, Path("model_store"))
    assert (settings.alpha, settings.beta, settings.admin_token) == (0.5, 0.5, None)


def test_environment_sets_fields_and_flags_override_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REWARD_PORT", "9001")
    monkeypatch.setenv("REWARD_MAX_BATCH_SIZE", "8")
    monkeypatch.setenv("REWARD_TOXIC_KEYWORDS", "Foo, bar")
    settings = settings_from_args(["--port", "9002", "--model-store", "/tmp/store"])
    assert (settings.port, settings.max_batch_size, settings.model_store) == (9002, 8, Path("/tmp/store"))
    assert settings.toxic_keywords == ("foo", "bar")


def test_every_setting_has_a_flag() -> None:
    settings = settings_from_args(["--max-wait-ms", "3.5", "--stats-path", "", "--normalize", "running"])
    assert (settings.max_wait_ms, settings.stats_path, settings.normalize) == (3.5, None, "running")


@pytest.mark.parametrize(
    "field, value",
    [
        ("alpha", 1.5),
        ("max_batch_size", 0),
        ("queue_size", 0),
        ("running_momentum", 1.0),
        ("clip", 0.0),
        ("normalize", "zscore"),
        ("device", "tpu"),
        ("admin_token", "short"),
    ],
)
def test_unsafe_values_are_refused(field: str, value: object) -> None:
    with pytest.raises(ValidationError, match=field):
        Settings(**{field: value})


def test_half_precision_needs_cuda() -> None:
    with pytest.raises(ValidationError, match="needs device cuda"):
        Settings(device="cpu", dtype="float16")


def test_a_forced_onnx_path_refuses_other_precisions_and_cuda() -> None:
    for conflicting in ({"dtype": "bfloat16"}, {"device": "cuda"}):
        with pytest.raises(ValidationError, match="execution_path onnx"):
            Settings(execution_path="onnx", **conflicting)
    assert Settings(execution_path="onnx-int8", onnx_cache="").onnx_cache is None  # empty: beside the store
