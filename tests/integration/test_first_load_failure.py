"""A first load that fails for any reason (here: CUDA running out of memory while the weights move to the
device, injected on CPU) leaves a server that says why it is not ready and still picks up a later publish."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import app.registry
from app.config import Settings
from app.main import create_app
from tests.conftest import publish_tiny_version, readiness_after

OOM = "CUDA out of memory. Tried to allocate 2.00 GiB"


def fail_once_like_cuda_oom(monkeypatch: pytest.MonkeyPatch) -> None:
    real = app.registry.prepare_for_serving
    calls = []

    def prepare(*args: object) -> None:
        calls.append(args)
        if len(calls) == 1:
            raise RuntimeError(OOM)  # what torch raises from model.to("cuda") when the GPU is full
        real(*args)

    monkeypatch.setattr(app.registry, "prepare_for_serving", prepare)


def test_after_a_failed_first_load_readyz_says_why_and_a_later_publish_serves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    publish_tiny_version(tmp_path, "v1", seed=1)
    fail_once_like_cuda_oom(monkeypatch)
    settings = Settings(
        model_store=tmp_path, device="cpu", dtype="float32", reload_interval=0.05, stats_path=""
    )
    with TestClient(create_app(settings)) as client:
        refusal = readiness_after(client, lambda r: "loading" not in r.text)
        assert "RuntimeError: CUDA out of memory" in refusal["error"]["message"], refusal
        publish_tiny_version(tmp_path, "v2", seed=2)
        assert readiness_after(client, lambda r: r.status_code == 200)["model_version"] == "v2"
