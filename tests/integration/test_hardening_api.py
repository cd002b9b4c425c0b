"""What a client without a token can reach: probes answer HEAD, disguised admin paths are refused, the
model info and 503s reveal no local paths, namespaces cannot evict a live run's statistics, empty input
leaves no namespace behind; and startup files that are malformed never stop the server."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.store import publish_version, save_checkpoint_files, set_current
from tests.conftest import (
    RunningServer,
    calibration_of,
    publish_tiny_version,
    sample,
    scrape_metrics,
    start_server,
    tiny_model,
    tiny_tokenizer,
    wait_until_ready,
)

PAIR = {"prompt": "How do I boil an egg?", "response": "Boil it for eight minutes."}
MAX_NAMESPACES = 3
ADMIN_TOKEN = "hardening-api-admin-token"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny version whose manifest carries training arguments with local paths."""
    store = tmp_path_factory.mktemp("model_store")
    model, tokenizer = tiny_model(), tiny_tokenizer()
    metrics = calibration_of(model, tokenizer)
    training_args = {"lr": 0.001, "epochs": 3, "init": "scratch", "data": ["/home/alice/secret/pairs.jsonl"],
                     "feature_cache": "/var/cache/alice", "model_store": "model_store",
                     "notes": "~/plans"}  # fmt: skip
    publish_version(
        store, lambda d: save_checkpoint_files(d, model, tokenizer, metrics), version="v1",
        manifest_extra={"training_args": training_args},
    )  # fmt: skip
    return store


@pytest.fixture(scope="module")
def server(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    env = {"REWARD_MAX_NAMESPACES": str(MAX_NAMESPACES), "REWARD_ADMIN_TOKEN": ADMIN_TOKEN}
    with start_server(store, tmp_path_factory.mktemp("server"), env=env) as server:
        yield server


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_probes_answer_head_without_a_body(server: RunningServer, path: str) -> None:
    response = httpx.head(f"{server.url}{path}")
    assert response.status_code == 200 and response.content == b""


@pytest.mark.parametrize("path", ["/%61dmin/rollback", "/admin%2Frollback", "/%61%64%6D%69%6E/reload",
                                  "/v1/stats/%72un"])  # fmt: skip
def test_percent_encoded_path_characters_are_refused(server: RunningServer, path: str) -> None:
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    response = httpx.post(f"{server.url}{path}", headers=headers)
    assert response.status_code == 400 and response.json()["error"]["type"] == "bad_request"


def test_model_info_keeps_hyperparameters_and_drops_local_paths(server: RunningServer, store: Path) -> None:
    info = httpx.get(f"{server.url}/v1/model")
    args = info.json()["manifest"]["training_args"]
    assert args == {"lr": 0.001, "epochs": 3, "init": "scratch"}
    assert "alice" not in info.text and str(store) not in info.text


def test_namespaces_cannot_evict_a_live_run(server: RunningServer) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        assert (
            client.post("/score", json={**PAIR, "normalize": "running", "namespace": "live-run"}).status_code
            == 200
        )
        before = client.get("/v1/stats/live-run").json()
        answers = [client.post("/score", json={**PAIR, "normalize": "running", "namespace": f"attack-{i}"})
                   for i in range(MAX_NAMESPACES + 5)]  # fmt: skip
        refused = [a for a in answers if a.status_code == 429]
        assert len(refused) >= 5 and refused[0].headers["Retry-After"]
        assert client.get("/v1/stats/live-run").json() == before


@pytest.mark.parametrize("mode", ["batch", "running"])
def test_empty_input_never_divides_by_zero_nor_leaves_a_namespace(server: RunningServer, mode: str) -> None:
    namespace = f"empty-{mode}"
    body = {"query": [], "normalize": mode, "namespace": namespace}
    response = httpx.post(f"{server.url}/get_reward", json=body, timeout=30)
    assert response.status_code < 500, response.text
    assert httpx.get(f"{server.url}/v1/stats/{namespace}").status_code == 404


def test_no_model_yet_503_names_no_store_path(tmp_path: Path) -> None:
    empty_store = tmp_path / "secret-store-location"
    empty_store.mkdir()
    with start_server(empty_store, tmp_path, wait_ready=False) as server:
        wait_until_alive(server)
        answer = httpx.post(f"{server.url}/score", json=PAIR, timeout=30)
        assert answer.status_code == 503 and "secret-store-location" not in answer.text
        assert "no CURRENT version" in answer.json()["error"]["message"]


def wait_until_alive(server: RunningServer, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{server.url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError(f"server not alive within {timeout_s} s:\n{server.log()}")


def test_a_list_manifest_is_explained_and_a_later_publish_is_picked_up(tmp_path: Path) -> None:
    store = tmp_path / "store"
    broken = publish_tiny_version(store, "broken")
    (broken / "manifest.json").write_text("[]")
    with start_server(store, tmp_path, env={"REWARD_RELOAD_INTERVAL": "0.2"}, wait_ready=False) as server:
        wait_until_alive(server)
        deadline = time.monotonic() + 60
        while (
            "loading" in (unready := httpx.get(f"{server.url}/readyz")).text and time.monotonic() < deadline
        ):
            time.sleep(0.1)
        assert unready.status_code == 503 and "not a JSON object" in unready.json()["error"]["message"]
        publish_tiny_version(store, "good", seed=3, make_current=False)
        set_current(store, "good")
        wait_until_ready(server, 60)
        assert httpx.get(f"{server.url}/readyz").json()["model_version"] == "good"


@pytest.mark.parametrize(
    "snapshot",
    ['{"format": 1, "namespaces": []}',
     '{"format": 1, "namespaces": {"a": {"mean": 0, "variance": 1, "count": 1e400}}}',
     '{"format": 1, "namespaces": {"a": {"mean": NaN, "variance": 1, "count": 2}}}', "[1, 2"],
    ids=["namespaces-a-list", "count-1e400", "nan", "torn"],
)  # fmt: skip
def test_a_malformed_stats_snapshot_never_stops_the_server(
    tiny_model_store: Path, tmp_path: Path, snapshot: str
) -> None:
    path = tmp_path / "stats.json"
    path.write_text(snapshot)
    with start_server(tiny_model_store, tmp_path, env={"REWARD_STATS_PATH": str(path)}) as server:
        assert httpx.get(f"{server.url}/readyz").status_code == 200


def test_failing_snapshots_are_counted_and_shown_without_unreadiness(
    tiny_model_store: Path, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the snapshot's directory should be")
    env = {"REWARD_STATS_PATH": str(blocker / "stats.json"), "REWARD_STATS_SNAPSHOT_S": "0.1"}
    with start_server(tiny_model_store, tmp_path, env=env) as server:
        httpx.post(
            f"{server.url}/score", json={**PAIR, "normalize": "running", "namespace": "run"}, timeout=30
        )
        deadline = time.monotonic() + 30
        while sample(scrape_metrics(server.url), "reward_stats_snapshot_failures_total") < 2:
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.1)
        ready = httpx.get(f"{server.url}/readyz")
        assert ready.status_code == 200
        snapshot = ready.json()["stats_snapshot"]
        assert snapshot["failures"] >= 2 and snapshot["last_success"] is None and snapshot["last_error"]
        assert json.dumps(snapshot).find(str(tmp_path)) == -1
