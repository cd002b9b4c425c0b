"""GPU tests: skipped without a CUDA device (`bash scripts/gpu_check.sh OUT_DIR` runs them on a GPU
machine). They use the real CUDA allocator, so each test starts from an emptied cache."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from app.model import RewardModel, RewardModelConfig
from app.store import publish_version, save_checkpoint_files
from tests.conftest import calibration_of, tiny_tokenizer

GPU_DIR = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(
        reason="needs a CUDA device (run bash scripts/gpu_check.sh OUT_DIR on a GPU machine)"
    )
    for item in items:
        if GPU_DIR in Path(item.fspath).parents:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def fresh_cuda_allocator() -> Iterator[None]:
    if torch.cuda.is_available():
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()
    yield
    if torch.cuda.is_available():
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()


def publish_wide_version(store: Path, version: str, seed: int, make_current: bool = True) -> Path:
    """A random-init model wide enough (hidden 512, 4 layers, ~13M parameters) that its weights dominate
    the memory a load or warm-up allocates, so memory figures say what happens to the weights."""
    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    cfg = RewardModelConfig(
        vocab_size=tokenizer.vocab_size, max_len=64, hidden=512, layers=4, heads=8, dropout=0.0
    )
    model = RewardModel(cfg).eval()
    metrics = calibration_of(model, tokenizer)
    write = lambda d: save_checkpoint_files(d, model, tokenizer, metrics)  # noqa: E731
    return publish_version(store, write, version=version, make_current=make_current)
