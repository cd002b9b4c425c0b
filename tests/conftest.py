"""Shared fixtures: a tiny real checkpoint in a temporary model store, and the real server as a subprocess.

Other test modules reuse these: `publish_tiny_version` to add versions to a store (hot reload),
`start_server` / `server_factory` to run `python -m app` with any settings (reliability, client tests).
"""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import os
import random
import shutil
import subprocess
import sys
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import httpx
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from app.loadgen import app_command, free_port, stop_process
from app.model import RewardModel, RewardModelConfig
from app.store import publish_version, save_checkpoint_files
from app.tokenizer import EncodingSpec, PairTokenizer, train_tokenizer

REPO = Path(__file__).resolve().parents[1]
TINY_VERSION = "tiny-v1"
TINY_MAX_LEN = 64
_WORDS = str.split(
    "the a reward model scores answers to questions about cooking travel code music science history "
    "please help me explain why how what when good bad helpful careful honest short long water egg boil "
    "minutes python function list sort river mountain city train ticket song guitar chord atom energy"
)


@pytest.fixture(autouse=True)
def unfrozen_garbage_collector() -> Iterator[None]:
    """A service started in this process freezes the objects alive after a model load (gc.freeze); later
    tests must not inherit a collector that ignores what they made before."""
    yield
    gc.unfreeze()


@contextlib.contextmanager
def load_script(name: str) -> Iterator[types.ModuleType]:
    """scripts/<name>.py imported as module `name` (registered while in use: dataclasses look their
    module up by name)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[name]


def sample_texts(count: int, seed: int = 0) -> list[str]:
    """Deterministic pseudo-sentences: tokenizer training data and test inputs."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 30))) for _ in range(count)]


@lru_cache(maxsize=1)
def tiny_tokenizer() -> PairTokenizer:
    tokenizer = train_tokenizer(sample_texts(300), vocab_size=400, min_frequency=1)
    return PairTokenizer(tokenizer, EncodingSpec(max_len=TINY_MAX_LEN))


def tiny_model(seed: int = 0) -> RewardModel:
    torch.manual_seed(seed)
    cfg = RewardModelConfig(
        vocab_size=tiny_tokenizer().vocab_size,
        max_len=TINY_MAX_LEN,
        hidden=64,
        layers=2,
        heads=4,
        dropout=0.0,
    )
    return RewardModel(cfg).eval()


def calibration_of(model: RewardModel, tokenizer: PairTokenizer) -> dict:
    """reward_mean / reward_std of the raw output on sample pairs, as training writes them."""
    prompts, responses = sample_texts(64, seed=1), sample_texts(64, seed=2)
    with torch.inference_mode():
        raw = model(*tokenizer.encode_batch(prompts, responses))
    return {"reward_mean": raw.mean().item(), "reward_std": raw.std().item(), "valid_accuracy": 0.5}


def publish_tiny_version(store: Path, version: str, seed: int = 0, make_current: bool = True) -> Path:
    """Publish a random-init tiny model (hidden 64, 2 layers, 4 heads, max_len 64) into `store`."""
    model, tokenizer = tiny_model(seed), tiny_tokenizer()
    metrics = calibration_of(model, tokenizer)
    write = lambda d: save_checkpoint_files(d, model, tokenizer, metrics)  # noqa: E731
    return publish_version(store, write, version=version, make_current=make_current)


@pytest.fixture(scope="session")
def tiny_model_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model store whose CURRENT is the tiny checkpoint `tiny-v1`. Treat it as read-only."""
    store = tmp_path_factory.mktemp("model_store")
    publish_tiny_version(store, TINY_VERSION)
    return store


def readiness_after(
    client: httpx.Client, done: Callable[[httpx.Response], bool], timeout_s: float = 120.0
) -> dict:
    """Poll /readyz until `done(response)`; its JSON body."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        response = client.get("/readyz")
        if done(response):
            return response.json()
        time.sleep(0.1)
    raise AssertionError(f"/readyz never got there: {response.status_code} {response.text}")


def require_tool(name: str, package: str) -> str:
    """The path of an external program a test needs. Missing, the test skips on a workstation but fails
    under CI (CI=true), where .ci/run installs it: a silent skip there would hide an untested path."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (apt-get install -y {package})"
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail(f"{message}; CI must install it")
        pytest.skip(message)
    return path


@dataclass
class RunningServer:
    url: str  # http://127.0.0.1:<port>
    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def wait_until_ready(server: RunningServer, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"server exited with {server.process.returncode}:\n{server.log()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{server.url}/readyz", timeout=1.0).status_code == 200:
                return
        time.sleep(0.1)
    raise TimeoutError(f"server not ready within {timeout_s} s:\n{server.log()}")


def stop_server(server: RunningServer, timeout_s: float = 15.0) -> None:
    stop_process(server.process, timeout_s)


@contextlib.contextmanager
def start_server(
    model_store: Path,
    log_dir: Path,
    env: dict[str, str] | None = None,
    args: tuple[str, ...] = (),
    wait_ready: bool = True,
    ready_timeout_s: float = 90.0,
) -> Iterator[RunningServer]:
    """Run `python -m app` on a free loopback port with REWARD_* `env` overrides; stop it on exit.

    Running-stats snapshots go to `log_dir` unless `env` says otherwise; torch gets one thread so that
    tests sharing a few cores stay predictable, and computes in float32 whatever the CPU (the `auto`
    default measures the execution paths at load; tests/integration/test_dtype.py covers that).
    """
    port = free_port()
    command = app_command(model_store, "--port", str(port))
    defaults = {
        "REWARD_TORCH_THREADS": "1",
        "REWARD_STATS_PATH": str(log_dir / f"stats-{port}.json"),
        "REWARD_DTYPE": "float32",  # tests compare served rewards with fp32 ones computed in the test
    }
    log_path = log_dir / f"server-{port}.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [*command, *args],
            cwd=REPO,
            env={**os.environ, **defaults, **(env or {})},
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    server = RunningServer(f"http://127.0.0.1:{port}", process, log_path)
    try:
        if wait_ready:
            wait_until_ready(server, ready_timeout_s)
        yield server
    finally:
        stop_server(server)


@pytest.fixture
def server_factory(tmp_path: Path) -> Callable[..., contextlib.AbstractContextManager[RunningServer]]:
    """`with server_factory(store, env={...}) as server:` starts a server for one test."""
    return lambda model_store, **kwargs: start_server(model_store, tmp_path, **kwargs)


@pytest.fixture(scope="module")
def tiny_server(tiny_model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One server on the tiny checkpoint with default settings, shared by a test module."""
    with start_server(tiny_model_store, tmp_path_factory.mktemp("server")) as server:
        yield server


def tiny_server_with(env: dict[str, str]) -> Callable[..., Iterator[RunningServer]]:
    """A module-scoped fixture: one server on the tiny checkpoint with REWARD_* `env`, shared by a module.

    `limited_server = tiny_server_with({"REWARD_MAX_ITEMS": "8"})` at module level defines the fixture.
    """

    @pytest.fixture(scope="module")
    def server(tiny_model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
        with start_server(tiny_model_store, tmp_path_factory.mktemp("server"), env=env) as running:
            yield running

    return server


def assert_error(response: httpx.Response, status: int, error_type: str) -> dict:
    """The response is `status` with the one JSON error shape of `error_type` and a request id; its error."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["type"] == error_type
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["details"], list)
    assert response.headers.get("x-request-id")
    return error


@pytest.fixture(scope="module")
def server_url(tiny_server: RunningServer) -> str:
    return tiny_server.url


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape_metrics(url: str) -> Samples:
    """GET /metrics, parsed by prometheus-client's own parser: {(sample name, sorted labels): value}."""
    text = httpx.get(f"{url}/metrics", timeout=10.0).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; KeyError naming the series when the server does not export it."""
    key = (name, tuple(sorted(labels.items())))
    if key not in samples:
        raise KeyError(f"no series {name}{labels} in /metrics")
    return samples[key]


def publish_nan_version(store: Path, version: str, make_current: bool = True) -> Path:
    """Publish a tiny model whose head outputs NaN: its files are sound, only the warm-up can catch it."""
    model, tokenizer = tiny_model(), tiny_tokenizer()
    with torch.no_grad():
        model.head.net[-1].bias.fill_(float("nan"))
    write = lambda d: save_checkpoint_files(d, model, tokenizer, {"reward_mean": 0.0, "reward_std": 1.0})  # noqa: E731
    return publish_version(store, write, version=version, make_current=make_current)
