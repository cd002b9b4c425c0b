"""The default number of torch threads follows the CPUs the process may use, read from fake cgroup files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from app.config import Settings, cgroup_cpu_quota, cpu_budget


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


@pytest.mark.parametrize(
    ("files", "quota"),
    [
        ({"cpu.max": "200000 100000\n"}, 2.0),
        ({"cpu.max": "150000 100000\n"}, 1.5),
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 3.0),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({}, None),
    ],
    ids=["v2-two", "v2-fraction", "v2-unlimited", "v1-three", "v1-unlimited", "no-cgroup"],
)
def test_cgroup_quota_is_read_from_v2_or_v1_files(tmp_path: Path, files: dict, quota: float | None) -> None:
    assert cgroup_cpu_quota(write(tmp_path, files)) == quota


def test_budget_is_the_quota_rounded_up_when_it_is_below_the_affinity(tmp_path: Path) -> None:
    affinity = len(os.sched_getaffinity(0))
    root = write(tmp_path, {"cpu.max": "50000 100000\n"})
    assert cpu_budget(root) == 1
    (root / "cpu.max").write_text(f"{affinity * 100000 - 50000} 100000\n")
    assert cpu_budget(root) == affinity
    (root / "cpu.max").write_text(f"{(affinity + 8) * 100000} 100000\n")
    assert cpu_budget(root) == affinity, "a quota above the affinity mask does not add CPUs"


def test_budget_follows_the_affinity_mask_without_a_quota(tmp_path: Path) -> None:
    assert cpu_budget(tmp_path) == len(os.sched_getaffinity(0))


def test_torch_threads_default_is_the_cpu_budget(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("REWARD_TORCH_THREADS", raising=False)
    monkeypatch.setattr("app.config.CGROUP_ROOT", write(tmp_path, {"cpu.max": "100000 100000\n"}))
    assert Settings().torch_threads == 1
