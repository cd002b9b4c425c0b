"""Training scales past one process with torchrun (DistributedDataParallel, gloo on CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from app.store import read_current, verify_version
from app.training.prepare import main as prepare_main
from app.training.pretrained import SOURCES

REPO = Path(__file__).resolve().parents[2]
SAMPLES = [str(REPO / "data" / "hh_harmless_sample.jsonl"), str(REPO / "data" / "alpaca_eval_sample.jsonl")]


def test_two_processes_train_one_valid_artifact(tmp_path: Path) -> None:
    data = tmp_path / "pairs.jsonl"
    assert prepare_main(["--input", *SAMPLES, "--output", str(data), "--max-per-source", "60"]) == 0
    store = tmp_path / "store"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "app.training.trainer", "--data", str(data), "--model-store", str(store), "--epochs", "2",
        "--hidden", "32", "--layers", "2", "--heads", "2", "--ffn-ratio", "2", "--max-len", "64",
        "--vocab-size", "400", "--batch-size", "8", "--lr", "1e-3", "--threads", "1", "--no-progress",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("published ") == 1  # rank 0 alone writes the artifact
    versions = [p for p in store.iterdir() if not p.name.startswith(".") and p.is_dir()]
    assert [p.name for p in versions] == [read_current(store)]
    manifest = verify_version(versions[0])
    metrics = json.loads((versions[0] / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and manifest["training_args"]["epochs"] == 2
    assert metrics["curves"]["epoch"] == [1, 2]


TINY_ARGS = [
    "--hidden", "32", "--layers", "2", "--heads", "2", "--ffn-ratio", "2", "--max-len", "64",
    "--vocab-size", "400", "--batch-size", "8", "--lr", "1e-3", "--threads", "1", "--no-progress",
]  # fmt: skip


def rank_parameters(tmp_path: Path, data: Path, mode: str) -> list[dict[str, torch.Tensor]]:
    out = tmp_path / mode
    out.mkdir()
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(REPO / "tests" / "integration" / "ddp_rank_parameters.py"), str(out), mode,
        "--data", str(data), "--model-store", str(tmp_path / f"store-{mode}"), "--epochs", "1", *TINY_ARGS,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    return [torch.load(out / f"rank{rank}.pt") for rank in (0, 1)]


def largest_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max((a[name] - b[name]).abs().max().item() for name in a)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("ddp") / "pairs.jsonl"
    assert prepare_main(["--input", *SAMPLES, "--output", str(data), "--max-per-source", "40"]) == 0
    return data


def test_ranks_training_on_different_batches_end_with_the_same_parameters(
    pairs: Path, tmp_path: Path
) -> None:
    """Gradients are averaged across ranks: after steps on different data both ranks hold the same
    weights, where the same run without synchronisation leaves them apart."""
    synced = rank_parameters(tmp_path, pairs, "synchronised")
    assert largest_difference(*synced) < 1e-6
    unsynced = rank_parameters(tmp_path, pairs, "unsynchronised")
    assert largest_difference(*unsynced) > 1e-4, "the ranks saw the same batches: the check proves nothing"


def _minilm_installed() -> bool:
    try:
        metadata.distribution(SOURCES["all-MiniLM-L6-v2"].package)
    except metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.skipif(not _minilm_installed(), reason="optional package of all-MiniLM-L6-v2 not installed")
def test_ranks_share_the_frozen_pass_and_cache_what_one_process_would(pairs: Path, tmp_path: Path) -> None:
    """With frozen lower layers and a feature cache, two ranks each compute half of the inputs; the cache
    they leave is the one a single process writes (same files, same states), with no shares left over."""
    args = [
        "-m", "app.training.trainer", "--data", str(pairs), "--init", "all-MiniLM-L6-v2",
        "--freeze-layers", "5", "--max-len", "64", "--epochs", "1", "--batch-size", "8",
        "--threads", "1", "--no-progress",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    launchers = {
        "one": [sys.executable],
        "two": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"],
    }
    for name, launcher in launchers.items():
        cache, store = tmp_path / f"cache-{name}", tmp_path / f"store-{name}"
        cmd = [*launcher, *args, "--feature-cache", str(cache), "--model-store", str(store)]
        result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
        assert result.returncode == 0, result.stdout + result.stderr
    one = sorted(p.name for p in (tmp_path / "cache-one").iterdir())
    two = sorted(p.name for p in (tmp_path / "cache-two").iterdir())
    assert one == two and len(one) == 2  # training and validation inputs; nothing else left behind
    for name in one:
        single = load_file(str(tmp_path / "cache-one" / name))
        shared = load_file(str(tmp_path / "cache-two" / name))
        assert torch.equal(single["lengths"], shared["lengths"])
        assert torch.allclose(single["states"].float(), shared["states"].float(), atol=2e-2)
