"""GPU memory across reloads and under pressure, measured with the CUDA caching allocator's counters."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from app.metrics import ServiceMetrics
from app.registry import ModelRegistry
from app.watcher import ModelWatcher
from tests.conftest import readiness_after
from tests.gpu.conftest import publish_wide_version

MiB = 1 << 20


def weight_bytes(registry: ModelRegistry) -> int:
    return sum(p.numel() * p.element_size() for p in registry.current.model.parameters())


def test_a_reload_stages_no_float32_copy_and_frees_the_version_it_drops(tmp_path: Path) -> None:
    publish_wide_version(tmp_path, "v1", seed=1)
    registry = ModelRegistry(tmp_path, device="cuda", dtype="bfloat16")
    watcher = ModelWatcher(registry, ServiceMetrics(), interval_s=0)

    async def reload_versions() -> list[tuple[int, int, int]]:
        await registry.load_current()
        watcher.start()
        figures = []
        for seed, name in ((2, "v2"), (3, "v3"), (4, "v4")):
            publish_wide_version(tmp_path, name, seed=seed, make_current=False)
            before = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            await watcher.reload(name)
            figures.append((before, torch.cuda.max_memory_allocated(), torch.cuda.memory_allocated()))
        return figures

    figures = asyncio.run(reload_versions())
    one_version = weight_bytes(registry)  # bf16 encoder, float32 head
    for before, peak, _ in figures:
        # staging float32 on the GPU would add twice the bf16 weights before the cast
        assert peak - before < 1.5 * one_version, (peak - before, one_version)
    # from v3 on, each reload drops the version before the previous one: live + rollback target stay
    (_, _, after_v3), (_, _, after_v4) = figures[1], figures[2]
    assert abs(after_v4 - after_v3) < 0.1 * one_version
    assert after_v4 < 2.5 * one_version
    assert torch.cuda.memory_reserved() - torch.cuda.memory_allocated() < one_version, "freed blocks kept"
    registry.close()


def test_a_batch_too_large_for_the_gpu_is_retried_smaller_and_the_server_stays_ready(tmp_path: Path) -> None:
    """Memory is capped just above what the loaded model needs: one forward pass of everything queued
    runs out of memory, halves of it fit. Needs the batch path's split-and-retry on CUDA out of memory."""
    publish_wide_version(tmp_path, "v1", seed=1)
    settings = Settings(
        model_store=tmp_path, device="cuda", dtype="bfloat16", stats_path="", reload_interval=0,
        max_batch_size=4096, max_batch_tokens=4096 * 64, max_wait_ms=200, max_items=256,
    )  # fmt: skip
    long_items = [{"prompt": "why " * 40, "response": f"because {i} " * 40} for i in range(256)]
    with TestClient(create_app(settings)) as client:
        readiness_after(client, lambda r: r.status_code == 200)
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.empty_cache()
        cap = torch.cuda.memory_reserved() + 256 * MiB  # far less than 16 x 256 long items at once need
        torch.cuda.set_per_process_memory_fraction(cap / total)
        with ThreadPoolExecutor(16) as pool:
            answers = list(
                pool.map(lambda _: client.post("/score_batch", json={"items": long_items}), range(16))
            )
        torch.cuda.set_per_process_memory_fraction(1.0)
        assert [a.status_code for a in answers] == [200] * 16, answers[0].text
        assert client.get("/readyz").status_code == 200
