"""The live model: load a version from the store, check it, warm it up, and swap it in atomically.

Requests read `registry.current` once at entry and keep that LoadedVersion for all their items, so a
swap (`activate`) is one reference assignment and never splits a request across versions.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import torch

from app.backends.choice import ONNX_PATHS, MeasuredBackend, candidate_names, measure_execution
from app.backends.onnx import onnx_available
from app.errors import CheckpointError
from app.store import LoadedVersion, load_version, read_current, version_dir

log = logging.getLogger(__name__)
T = TypeVar("T")

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# fixed inputs of the warm-up forward: short, ordinary, empty-ish and longer than most models' max_len
CANARY_PAIRS = (
    ("How do I boil an egg?", "Put it in boiling water for about eight minutes, then cool it in cold water."),
    ("Hi", "Hello! How can I help you today?"),
    ("?", "."),
    ("Tell me a long story. " * 40, "Once upon a time there was a reward model. " * 60),
)


def resolve_device(name: str) -> torch.device:
    """auto -> cuda when available, else cpu; asking for cuda without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise CheckpointError("REWARD_DEVICE=cuda but no CUDA device is available; use auto or cpu")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """The reference precision: auto -> float32 (on a CPU, app.backends.choice then measures the
    alternatives at each load); float16 only on CUDA."""
    if name == "float16" and device.type != "cuda":
        raise CheckpointError(f"REWARD_DTYPE=float16 needs a CUDA device; on {device.type} use float32")
    return torch.float32 if name == "auto" else DTYPES[name]


def prepare_for_serving(version: LoadedVersion, dtype: torch.dtype) -> None:
    """Ready a loaded version to serve in `dtype` (its backend checks that the checkpoint can serve)."""
    try:
        version.backend.prepare(dtype)
    except CheckpointError as exc:
        raise CheckpointError(f"version {version.version}: {exc}") from exc


def configure_torch_threads(threads: int) -> None:
    """Intra-op threads for the forward pass; one inter-op thread since batches run one at a time."""
    torch.set_num_threads(threads)
    if torch.get_num_interop_threads() != 1:
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:  # only settable before the first parallel work; harmless if too late
            log.debug("inter-op threads already fixed at %d", torch.get_num_interop_threads())


def forward_raw(version: LoadedVersion, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
    """Raw model outputs for pairs, in input order (encode and forward in one call: warm-up, benchmarks)."""
    return version.backend.forward(version.backend.encode(prompts, responses))


def warm_up(version: LoadedVersion, dtype: torch.dtype) -> None:
    """Score the canary pairs alone and together; refuse non-finite or batch-dependent rewards."""
    prompts, responses = zip(*CANARY_PAIRS, strict=True)
    together = forward_raw(version, prompts, responses)
    alone = [forward_raw(version, [p], [r])[0] for p, r in CANARY_PAIRS]
    if not all(math.isfinite(x) for x in together + alone):
        raise CheckpointError(f"version {version.version}: non-finite rewards on canary inputs: {together}")
    drift = max(abs(a - b) for a, b in zip(together, alone, strict=True))
    # a few units in the last place of the compute dtype (bf16: 2^-7) are rounding, not a batching bug
    eps = version.execution.path.eps if version.execution else torch.finfo(dtype).eps
    if drift > max(1e-3, 4 * eps) * max(1.0, max(abs(x) for x in alone)):
        raise CheckpointError(f"version {version.version}: rewards change with batching (by {drift:.3g})")


class ModelRegistry:
    """Holds the live LoadedVersion; loading is separate from activation so a new version is checked
    beside the old one before the swap."""

    def __init__(
        self, store: Path, device: str = "auto", dtype: str = "auto", execution_path: str = "auto",
        onnx_cache: Path | None = None,
    ):  # fmt: skip
        self.store = Path(store)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.paths = candidate_names(dtype, execution_path, self.device, onnx_available())
        self.onnx_cache = onnx_cache or self.store / ".cache"
        self.current: LoadedVersion | None = None
        self.previous: LoadedVersion | None = None
        self.last_error: str | None = None
        self.last_load_seconds: float | None = None
        # Every torch call of the service runs on this one thread: loads, warm-ups and the batcher's
        # forward passes. OpenMP keeps a thread team per calling thread, and a second team on a small
        # machine makes both spin-throttled (forward throughput 233 -> 157 items/s on 2 cores).
        self.compute = ThreadPoolExecutor(max_workers=1, thread_name_prefix="torch")

    async def run_compute(self, fn: Callable[..., T], *args: object) -> T:
        """Await `fn(*args)` on the compute thread (after the batch running there, if any)."""
        return await asyncio.get_running_loop().run_in_executor(self.compute, fn, *args)

    def close(self) -> None:
        self.compute.shutdown(wait=True)

    @property
    def ready(self) -> bool:
        return self.current is not None

    def load(self, version: str | None = None) -> LoadedVersion:
        """Verify, load and warm up `version` (default: the store's CURRENT). Does not activate it."""
        name = version or read_current(self.store)
        if name is None:
            raise CheckpointError(f"{self.store}: no CURRENT version; publish a model first (reward-train)")
        started = time.perf_counter()
        loaded = load_version(version_dir(self.store, name), device=self.device)
        prepare_for_serving(loaded, self.dtype)
        if len(self.paths) > 1 or self.paths[0] in ONNX_PATHS:
            self.measure_execution(loaded)
        warm_up(loaded, self.dtype)
        self.last_load_seconds = time.perf_counter() - started
        return loaded

    def measure_execution(self, loaded: LoadedVersion) -> None:
        """Serve `loaded` on the fastest of this machine's execution paths that keeps float32's rewards."""
        loaded.execution = measure_execution(
            loaded.backend,
            loaded.manifest,
            loaded.calibration[1],
            self.paths,
            self.onnx_cache / loaded.version,
        )
        loaded.backend = MeasuredBackend(loaded.backend, loaded.execution)
        loaded.model = loaded.backend.model  # the float32 copy goes when a bfloat16 copy serves

    def execution_report(self, version: LoadedVersion) -> dict:
        """The `execution` of /v1/model: the measured choice, or the torch precision a setting forced."""
        if version.execution is not None:
            return version.execution.report()
        dtype = str(self.dtype).removeprefix("torch.")
        return {"path": dtype, "dtype": dtype, "setting": dtype, "seconds": 0.0, "candidates": []}

    def activate(self, loaded: LoadedVersion) -> LoadedVersion | None:
        """Make `loaded` the live version (one reference swap); returns the one it replaced."""
        self.previous, self.current = self.current, loaded
        self.last_error = None
        path = self.execution_report(loaded)["path"]
        log.info("model version %s is live on %s (%s)", loaded.version, self.device, path)
        return self.previous

    def load_current(self) -> LoadedVersion:
        """Load the store's CURRENT and make it live; on failure keep what serves and remember why."""
        try:
            loaded = self.load()
        except CheckpointError as exc:
            self.last_error = str(exc)
            raise
        self.activate(loaded)
        return loaded
