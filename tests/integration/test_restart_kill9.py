"""kill -9 at random moments while the running-statistics snapshot or the model store is being written:
afterwards the snapshot parses and is exactly one of the states written, and the store's CURRENT
names a complete version that verifies and loads. Writers are real subprocesses; SIGKILL is real."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import httpx

from app.normalize import RunningStats
from app.store import list_versions, load_version, read_current, remove_stale_temporaries, verify_version
from tests.conftest import REPO, publish_tiny_version, start_server

STATS_ROUNDS = 6
STORE_ROUNDS = 4  # each round starts torch in a fresh writer: a few seconds
NAMESPACES = 300  # a snapshot of a few tens of kB, so kills land inside writes too

STATS_WRITER = f"""
import sys
from pathlib import Path
from app.normalize import RunningStats, write_snapshot
stats = RunningStats(0.9, 1e-6, {NAMESPACES})
step = 0
while True:
    step += 1
    stats.normalize(f"run-{{step % {NAMESPACES}}}", [float(step)])
    write_snapshot(Path(sys.argv[1]), stats.to_dict())
    if step == 1:
        print("writing", flush=True)
"""

STORE_WRITER = """
import sys
from pathlib import Path
from tests.conftest import publish_tiny_version, tiny_tokenizer
tiny_tokenizer()
print("writing", flush=True)
step = 0
while True:
    step += 1
    publish_tiny_version(Path(sys.argv[1]), f"{sys.argv[2]}-{step:05d}", seed=step)
"""


def stats_after(steps: int) -> dict:
    """The snapshot STATS_WRITER writes after `steps` steps, replayed here."""
    stats = RunningStats(0.9, 1e-6, NAMESPACES)
    for step in range(1, steps + 1):
        stats.normalize(f"run-{step % NAMESPACES}", [float(step)])
    return stats.to_dict()


def kill_at_random_moment(
    script: str, target: Path, rng: random.Random, max_delay_s: float, *args: str
) -> None:
    """Start `script` writing to `target`, SIGKILL it at a random moment once it writes."""
    writer = subprocess.Popen(
        [sys.executable, "-c", script, str(target), *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert writer.stdout.readline() == b"writing\n", writer.stderr.read().decode()
        time.sleep(rng.uniform(0.0, max_delay_s))
    finally:
        writer.kill()
        writer.wait(timeout=30)
    assert writer.returncode == -9


def test_running_stats_snapshot_survives_kill_9_mid_write(tmp_path: Path) -> None:
    rng = random.Random(6)
    path = tmp_path / "running_stats.json"
    for _ in range(STATS_ROUNDS):
        path.unlink(missing_ok=True)
        kill_at_random_moment(STATS_WRITER, path, rng, max_delay_s=0.5)
        snapshot = json.loads(path.read_text())  # complete JSON, never torn
        steps = sum(entry["count"] for entry in snapshot["namespaces"].values())
        assert steps >= 1
        assert snapshot == stats_after(steps)
        RunningStats(0.9, 1e-6, NAMESPACES).restore(path)


def test_model_store_survives_kill_9_mid_publish(tmp_path: Path) -> None:
    rng = random.Random(9)
    store = tmp_path / "model_store"
    publish_tiny_version(store, "v00000")
    for round_ in range(STORE_ROUNDS):
        # each writer publishes its own names (r0-00001, r0-00002, ...): no collisions across rounds
        kill_at_random_moment(STORE_WRITER, store, rng, 1.0, f"r{round_}")
        current = read_current(store)
        assert current is not None
        load_version(store / current)  # verifies every checksum, then loads
        for version in list_versions(store):
            verify_version(store / version)
        remove_stale_temporaries(store)  # what a restart does with half-written versions (once old)
    assert not list(store.glob(".tmp-*"))


def test_a_server_start_removes_old_half_written_versions_only(tmp_path: Path) -> None:
    store = tmp_path / "model_store"
    publish_tiny_version(store, "v1")
    old, fresh = store / ".tmp-killed-publish", store / ".tmp-publish-in-progress"
    for directory in (old, fresh):
        directory.mkdir()
        (directory / "model.safetensors").write_bytes(b"half written")
    hours_ago = time.time() - 2 * 3600
    os.utime(old, (hours_ago, hours_ago))
    with start_server(store, tmp_path) as server:
        assert httpx.get(f"{server.url}/readyz").json()["model_version"] == "v1"
        assert "removed 1 half-written versions" in server.log()
    assert not old.exists() and fresh.exists()


def test_server_killed_mid_snapshot_restarts_with_its_stats(tiny_model_store: Path, tmp_path: Path) -> None:
    path = tmp_path / "running_stats.json"
    env = {"REWARD_STATS_PATH": str(path), "REWARD_STATS_SNAPSHOT_S": "0.01"}  # snapshots back to back
    request = {"prompt": "How do I boil an egg?", "response": "Boil it.", "normalize": "running"}
    with start_server(tiny_model_store, tmp_path, env=env) as server:
        for index in range(20):
            namespace_request = {**request, "namespace": f"run-{index}"}
            assert httpx.post(f"{server.url}/score", json=namespace_request).status_code == 200
        server.process.kill()
        server.process.wait(timeout=30)
    snapshot = json.loads(path.read_text())
    assert len(snapshot["namespaces"]) >= 1
    with start_server(tiny_model_store, tmp_path, env=env) as restarted:
        saved = sorted(snapshot["namespaces"])[0]
        stats = httpx.get(f"{restarted.url}/v1/stats/{saved}").json()
        assert stats["count"] == snapshot["namespaces"][saved]["count"]
