"""A real CUDA out-of-memory error during the first load (the weights cannot move to the GPU): /readyz
says so, and once memory is available a publish is picked up without a restart."""

from __future__ import annotations

from pathlib import Path

import torch
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from tests.conftest import readiness_after
from tests.gpu.conftest import publish_wide_version


def test_a_first_load_out_of_gpu_memory_is_explained_and_a_later_publish_serves(tmp_path: Path) -> None:
    publish_wide_version(tmp_path, "v1", seed=1)
    torch.cuda.init()
    torch.cuda.set_per_process_memory_fraction(1e-6)  # no allocation of the weights can succeed
    settings = Settings(
        model_store=tmp_path, device="cuda", dtype="bfloat16", stats_path="", reload_interval=0.2
    )
    with TestClient(create_app(settings)) as client:
        refusal = readiness_after(client, lambda r: "loading" not in r.text)
        assert "out of memory" in refusal["error"]["message"].lower(), refusal
        torch.cuda.set_per_process_memory_fraction(1.0)
        publish_wide_version(tmp_path, "v2", seed=2)
        assert readiness_after(client, lambda r: r.status_code == 200)["model_version"] == "v2"
