"""The Hugging Face backend on a CUDA device: half precision, the head in float32, rewards close to the
CPU's float32 ones and independent of the batch. Skipped without CUDA."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

from app import random_hf_models as hf_models  # noqa: E402
from app.store import load_version  # noqa: E402
from app.training.import_model import import_model  # noqa: E402

PROMPTS = ["How do I boil an egg?", "hi", "Tell me about rivers and mountains. " * 6]
RESPONSES = ["Put it in boiling water for eight minutes.", "Hello! How can I help?", "Rivers run down."]


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hf-cuda")
    source = hf_models.save_model(
        root / "qwen2", hf_models.decoder_config("qwen2"), hf_models.decoder_tokenizer()
    )
    return import_model(
        source, root / "store", [hf_models.DATA / "hh_harmless_sample.jsonl"], calibration_limit=16
    )


def rewards_on(version_dir: Path, device: str) -> tuple[list[float], list[float], torch.dtype]:
    version = load_version(version_dir)
    version.backend.prepare(torch.float32, torch.device(device))
    ids = version.backend.encode(PROMPTS, RESPONSES)
    together = version.backend.forward(ids)
    alone = [version.backend.forward([x])[0] for x in ids]
    return together, alone, version.backend.dtype


def test_cuda_serves_in_half_precision_close_to_cpu_float32(imported: Path) -> None:
    cpu, _, _ = rewards_on(imported, "cpu")
    cuda, alone, dtype = rewards_on(imported, "cuda")
    expected_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    assert dtype == expected_dtype
    scale = max(abs(x) for x in cpu)
    assert cuda == pytest.approx(cpu, abs=0.05 * scale)  # half-precision trunk, float32 head
    assert cuda == pytest.approx(alone, abs=0.02 * scale)  # a reward does not depend on its batch
