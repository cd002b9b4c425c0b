"""A publish killed midway (SIGKILL while writing the new version) leaves the previous version current."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.errors import CheckpointError
from app.store import list_versions, load_version, publish_version, read_current, remove_stale_temporaries
from tests.conftest import publish_tiny_version

REPO = Path(__file__).resolve().parents[2]
# publishes "v2" whose write_files writes real checkpoint files, announces it is midway, then keeps writing
SLOW_PUBLISH = """
import sys, time
from pathlib import Path
import pytest

from app.errors import CheckpointError
from app.store import publish_version, save_checkpoint_files
from tests.conftest import tiny_model, tiny_tokenizer

store, marker = Path(sys.argv[1]), Path(sys.argv[2])

def write_files(directory):
    metrics = {"reward_mean": 0.0, "reward_std": 1.0}
    save_checkpoint_files(directory, tiny_model(seed=1), tiny_tokenizer(), metrics)
    with open(directory / "model.safetensors", "ab") as f:
        f.write(b"partial")
        f.flush()
        marker.write_text(str(directory))
        while True:
            f.write(b"x" * 4096)
            time.sleep(0.01)

publish_version(store, write_files, version="v2")
"""


def wait_for(path: Path, process: subprocess.Popen, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the publish never got midway"
        time.sleep(0.05)


def test_a_killed_publish_leaves_the_previous_version_current(tmp_path: Path) -> None:
    store = tmp_path / "store"
    publish_tiny_version(store, "v1")
    before = load_version(store / "v1")
    marker = tmp_path / "midway"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-c", SLOW_PUBLISH, str(store), str(marker)], cwd=REPO, env=env
    )
    try:
        wait_for(marker, process)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait(timeout=30)
    assert Path(marker.read_text()).name.startswith(".tmp-v2-")  # it died inside the temporary directory
    assert read_current(store) == "v1"
    assert list_versions(store) == ["v1"]
    after = load_version(store / read_current(store))
    assert after.manifest == before.manifest
    # the leftover is cleaned up, and the same version name can then be published
    assert remove_stale_temporaries(store) == [Path(marker.read_text()).name]
    publish_tiny_version(store, "v2", seed=1)
    assert read_current(store) == "v2" and list_versions(store) == ["v1", "v2"]


def test_a_failing_publish_changes_nothing(tmp_path: Path) -> None:
    store = tmp_path / "store"
    publish_tiny_version(store, "v1")

    def write_garbage(directory: Path) -> None:
        for name in ("model.safetensors", "config.json", "tokenizer.json", "metrics.json"):
            (directory / name).write_text("not a checkpoint")

    with pytest.raises(CheckpointError, match="incompatible config"):
        publish_version(store, write_garbage, version="v2")
    assert read_current(store) == "v1"
    assert sorted(p.name for p in store.iterdir()) == ["CURRENT", "v1"]
