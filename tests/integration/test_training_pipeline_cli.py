"""prepare -> train -> evaluate on the bundled sample, through the command-line entry points a user runs."""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from app.store import load_version, read_current, verify_version

REPO = Path(__file__).resolve().parents[2]
SAMPLES = [
    str(REPO / "data" / name)
    for name in ("hh_harmless_sample.jsonl", "hh_helpful_sample.jsonl", "alpaca_eval_sample.jsonl")
]
TINY_MODEL = (
    "--hidden", "32", "--layers", "2", "--heads", "2", "--ffn-ratio", "2", "--max-len", "96",
    "--vocab-size", "500", "--batch-size", "16", "--lr", "1e-3", "--threads", "1", "--no-progress",
)  # fmt: skip


def command(console_script: str, shim: str) -> list[str]:
    """The installed console script when the project is installed (as scripts/test.sh does), else its shim."""
    installed = Path(sys.executable).parent / console_script
    return [str(installed)] if installed.exists() else [sys.executable, str(REPO / "scripts" / shim)]


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, f"{cmd} failed:\n{result.stdout}\n{result.stderr}"
    return result


def test_prepare_train_evaluate_on_the_bundled_sample(tmp_path: Path) -> None:
    prepare = command("reward-prepare-data", "prepare_reward_data.py")
    args = [
        "--input",
        *SAMPLES,
        "--output",
        "pairs.jsonl",
        "--num_synthetic",
        "40",
        "--max-per-source",
        "100",
    ]
    out = run([*prepare, *args], tmp_path)
    assert "wrote" in out.stdout and "hh_harmless_base" in out.stdout and "hh_helpful_rs" in out.stdout

    train = command("reward-train", "train_reward_model.py")
    run([*train, "--data", "pairs.jsonl", "--model-store", "store", "--epochs", "1", *TINY_MODEL], tmp_path)
    version_dir = tmp_path / "store" / read_current(tmp_path / "store")
    verify_version(version_dir)
    assert load_version(version_dir).calibration[1] > 0

    evaluate = command("reward-evaluate", "evaluate_reward_model.py")
    args = ["--model-store", "store", "--pairs", "pairs.jsonl", SAMPLES[0], "--output", "report.json"]
    table = run([*evaluate, *args, "--plot", "report.png"], tmp_path).stdout
    assert "pairs.jsonl:hh_harmless_base" in table and "longer_wins" in table
    report = json.loads((tmp_path / "report.json").read_text())
    validation = report["files"]["pairs.jsonl"]
    assert {"all", "hh_harmless_base", "hh_helpful_base", "alpaca_eval_gpt4", "synthetic"} <= set(validation)
    model_wins, longer_wins = recomputed_accuracies(version_dir, tmp_path / "pairs.jsonl")
    assert validation["all"]["accuracy"]["model"] == pytest.approx(model_wins, abs=1e-9)
    assert validation["all"]["accuracy"]["longer_wins"] == pytest.approx(longer_wins, abs=1e-9)
    assert validation["all"]["accuracy"]["model"] != validation["all"]["accuracy"]["longer_wins"]
    # the refusal rates are reported per source (their arithmetic: tests/unit/training)
    assert "beats_refusal" in validation["hh_helpful_base"]["accuracy"]
    assert "refusal_beats_rejected" in validation["hh_harmless_base"]["accuracy"]
    check = load_version(version_dir).metrics["refusal_check"]  # computed by training on validation
    assert check["hh_helpful_base"]["n"] == validation["hh_helpful_base"]["n"]
    assert report["files"][SAMPLES[0]]["all"]["n"] == 240  # a raw file has no split: every pair counts
    assert (tmp_path / "report.png").stat().st_size > 0


def recomputed_accuracies(version_dir: Path, pairs_file: Path) -> tuple[float, float]:
    """The validation pairs' model accuracy and longer-wins rate, computed here from the served model's
    own backend, independently of the evaluation code."""
    rows = [json.loads(line) for line in pairs_file.read_text().splitlines()]
    rows = [r for r in rows if r["split"] == "validation"]
    version = load_version(version_dir)
    version.backend.prepare(torch.float32, torch.device("cpu"))
    prompts = [r["prompt"] for r in rows]
    ids = version.backend.encode(prompts * 2, [r["chosen"] for r in rows] + [r["rejected"] for r in rows])
    rewards = [version.backend.forward([one])[0] for one in ids]
    chosen, rejected = rewards[: len(rows)], rewards[len(rows) :]
    model_wins = sum(c > r for c, r in zip(chosen, rejected, strict=True)) / len(rows)
    longer = sum(len(r["chosen"]) > len(r["rejected"]) for r in rows) / len(rows)
    return model_wins, longer


def test_console_scripts_point_at_callables() -> None:
    pyproject = (REPO / "pyproject.toml").read_text()
    for name in ("reward-prepare-data", "reward-train", "reward-evaluate"):
        module, function = re.search(rf'^{name} = "([\w.]+):(\w+)"', pyproject, re.MULTILINE).groups()
        assert callable(getattr(importlib.import_module(module), function)), name
