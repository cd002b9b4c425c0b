"""prepare -> train -> evaluate on the bundled sample, through the command-line entry points a user runs."""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

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
    assert 0.0 <= validation["all"]["accuracy"]["model"] <= 1.0
    assert 0.0 <= validation["hh_helpful_base"]["accuracy"]["beats_refusal"] <= 1.0
    assert 0.0 <= validation["hh_harmless_base"]["accuracy"]["refusal_beats_rejected"] <= 1.0
    check = load_version(version_dir).metrics["refusal_check"]  # computed by training on validation
    assert check["hh_helpful_base"]["n"] == validation["hh_helpful_base"]["n"]
    assert report["files"][SAMPLES[0]]["all"]["n"] == 240  # a raw file has no split: every pair counts
    assert (tmp_path / "report.png").stat().st_size > 0


def test_console_scripts_point_at_callables() -> None:
    pyproject = (REPO / "pyproject.toml").read_text()
    for name in ("reward-prepare-data", "reward-train", "reward-evaluate"):
        module, function = re.search(rf'^{name} = "([\w.]+):(\w+)"', pyproject, re.MULTILINE).groups()
        assert callable(getattr(importlib.import_module(module), function)), name
