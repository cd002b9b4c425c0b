"""scripts/setup.sh installs the audited versions of requirements.lock and passes TORCH_SPEC to pip as
separate arguments. Run against a stand-in `.venv/bin/python` that records each pip call."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RECORDING_PYTHON = """#!/usr/bin/env bash
# no torch in this stand-in environment; every other call is recorded, with a copy of any -c file
[ "$1" = -c ] && exit 1
printf '%s\\n' "$*" >> "LOG"
for ((i = 1; i < $#; i++)); do
  [ "${!i}" = -c ] && { j=$((i + 1)); cp "${!j}" "CONSTRAINTS"; }
done
exit 0
"""


def run_setup(tmp_path: Path, env: dict[str, str]) -> tuple[list[list[str]], str]:
    checkout = tmp_path / "checkout"
    (checkout / "scripts").mkdir(parents=True)
    shutil.copy(REPO / "scripts" / "setup.sh", checkout / "scripts")
    shutil.copy(REPO / "requirements.lock", checkout)
    python = checkout / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    log, constraints = tmp_path / "pip.log", tmp_path / "constraints.txt"
    python.write_text(RECORDING_PYTHON.replace("LOG", str(log)).replace("CONSTRAINTS", str(constraints)))
    python.chmod(0o755)
    subprocess.run(
        ["bash", str(checkout / "scripts" / "setup.sh")], env={**os.environ, **env}, check=True, timeout=60
    )
    return [line.split() for line in log.read_text().splitlines()], constraints.read_text()


def test_torch_spec_reaches_pip_as_separate_arguments_so_an_index_can_be_named(tmp_path: Path) -> None:
    spec = "torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
    calls, _ = run_setup(tmp_path, {"TORCH_SPEC": spec})
    assert ["-m", "pip", "install", "-q", *spec.split()] in calls


def test_the_project_is_installed_within_the_locked_versions_but_any_torch_build(tmp_path: Path) -> None:
    calls, constraints = run_setup(tmp_path, {"SETUP_EXTRAS": "dev"})
    [project] = [call for call in calls if "-e" in call]
    assert "-c" in project and project[-1] == ".[dev]"
    pins = {line.split("==")[0] for line in constraints.splitlines() if "==" in line and line[0].isalnum()}
    assert {"fastapi", "uvicorn", "pydantic", "safetensors", "tokenizers"} <= pins
    assert "torch" not in pins, "the lock's CPU torch pin would refuse a CUDA build named by TORCH_SPEC"


def test_the_lock_pins_a_cpu_torch_only() -> None:
    torch_pins = [
        line for line in (REPO / "requirements.lock").read_text().splitlines() if line.startswith("torch==")
    ]
    assert torch_pins == ["torch==2.13.0+cpu"]
