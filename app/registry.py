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

from app.backends.choice import Execution, candidate_names, cast_for_serving, choose_execution, torch_path
from app.backends.onnx import onnx_available
from app.errors import CheckpointError
from app.store import LoadedVersion, load_version, read_current, version_dir

log = logging.getLogger(__name__)
T = TypeVar("T")

MIN_MAX_LEN = 8  # tokens: CLS, two SEPs and a few of text on each side
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
    """The version's torch model in `dtype` (see cast_for_serving), run as it is by forward_raw."""
    cast_for_serving(version.model, dtype)
    version.execution = None


def execution_of(version: LoadedVersion) -> Execution:
    """How the version's forward runs: chosen at load, or its torch model as it is."""
    if version.execution is None:
        dtype = str(next(version.model.parameters()).dtype).removeprefix("torch.")
        return Execution(torch_path(dtype, version.model), version.tokenizer.pad, dtype)
    return version.execution


def configure_torch_threads(threads: int) -> None:
    """Intra-op threads for the forward pass; one inter-op thread since batches run one at a time."""
    torch.set_num_threads(threads)
    if torch.get_num_interop_threads() != 1:
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:  # only settable before the first parallel work; harmless if too late
            log.debug("inter-op threads already fixed at %d", torch.get_num_interop_threads())


def forward_raw(version: LoadedVersion, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
    """Raw model outputs for pairs, in input order: tokenize in Rust, then the version's forward."""
    return execution_of(version).forward(version.tokenizer.encode_pairs(prompts, responses))


def check_compatible(version: LoadedVersion) -> None:
    """Refuse an encoding this service cannot feed to the model: a pair must fit the position table,
    leave room for text beside the three special tokens, and pad with the id the model masks."""
    spec, cfg, tokenizer = version.tokenizer.spec, version.model.cfg, version.tokenizer
    problems = []
    if not MIN_MAX_LEN <= spec.max_len <= cfg.max_len:
        problems.append(f"encoding max_len {spec.max_len} is not in [{MIN_MAX_LEN}, {cfg.max_len}] (model's)")
    if tokenizer.pad_id != cfg.pad_id:
        problems.append(f"tokenizer pads with id {tokenizer.pad_id}, the model masks id {cfg.pad_id}")
    if problems:
        raise CheckpointError(f"version {version.version}: incompatible config: {'; '.join(problems)}")


def warm_up(version: LoadedVersion) -> None:
    """Score the canary pairs alone and together; refuse non-finite or batch-dependent rewards."""
    prompts, responses = zip(*CANARY_PAIRS, strict=True)
    together = forward_raw(version, prompts, responses)
    alone = [forward_raw(version, [p], [r])[0] for p, r in CANARY_PAIRS]
    if not all(math.isfinite(x) for x in together + alone):
        raise CheckpointError(f"version {version.version}: non-finite rewards on canary inputs: {together}")
    drift = max(abs(a - b) for a, b in zip(together, alone, strict=True))
    # a few units in the last place of the compute dtype (bf16: 2^-7) are rounding, not a batching bug
    eps = execution_of(version).path.eps
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
        check_compatible(loaded)
        loaded.execution = choose_execution(
            loaded.model, loaded.tokenizer, loaded.manifest, loaded.calibration[1], self.paths,
            self.onnx_cache / loaded.version,
        )  # fmt: skip
        loaded.model = loaded.execution.path.model or loaded.model  # the fp32 copy goes when bf16 serves
        warm_up(loaded)
        self.last_load_seconds = time.perf_counter() - started
        return loaded

    def activate(self, loaded: LoadedVersion) -> LoadedVersion | None:
        """Make `loaded` the live version (one reference swap); returns the one it replaced."""
        self.previous, self.current = self.current, loaded
        self.last_error = None
        path = execution_of(loaded).path.name
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
