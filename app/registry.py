"""The live model: load a version from the store, check it, warm it up, and swap it in atomically.

Requests read `registry.current` once at entry and keep that LoadedVersion for all their items, so a
swap (`activate`) is one reference assignment and never splits a request across versions.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import torch

from app.backends.choice import (
    ONNX_PATHS,
    MeasuredBackend,
    canary_texts,
    candidate_names,
    measure_execution,
)
from app.backends.devices import enable_tf32, resolve_device, resolve_dtype
from app.backends.onnx import onnx_available
from app.backends.warmup import warm_up
from app.compute import ComputePool
from app.config import default_of
from app.errors import CheckpointError
from app.store import LoadedVersion, load_version, read_current, verify_version, version_dir

log = logging.getLogger(__name__)


def prepare_for_serving(version: LoadedVersion, dtype: torch.dtype, device: torch.device) -> None:
    """Ready a loaded version to serve in `dtype` on `device` (its backend checks that the checkpoint can
    serve, casts on the CPU, then moves: a float32 copy is never staged on the accelerator)."""
    try:
        version.backend.prepare(dtype, device)
    except CheckpointError as exc:
        raise CheckpointError(f"version {version.version}: {exc}") from exc


class ModelRegistry:
    """Holds the live LoadedVersion; loading is separate from activation so a new version is checked
    beside the old one before the swap."""

    def __init__(
        self,
        store: Path,
        device: str = default_of("device"),
        dtype: str = default_of("dtype"),
        execution_path: str = default_of("execution_path"),
        onnx_cache: Path | None = None,
        max_model_bytes: int = default_of("max_model_bytes"),
        compute: ComputePool | None = None,
    ):
        self.store = Path(store)
        self.max_model_bytes = max_model_bytes  # a version needing more memory to load is refused
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        enable_tf32(self.device)
        self.paths = candidate_names(dtype, execution_path, self.device, onnx_available())
        self.onnx_cache = onnx_cache or self.store / ".cache"
        self.current: LoadedVersion | None = None
        self.previous: LoadedVersion | None = None
        self.last_error: str | None = None
        self.last_load_seconds: float | None = None
        # loads run alone on the service's compute pool (given, shared with the batcher), or on its own
        self._owns_compute = compute is None
        self.compute = compute or ComputePool()
        self._layout_started = False  # the compute pool's layout is measured on the first version loaded

    def close(self) -> None:
        """End the compute pool if it is the registry's own (a given one is closed by its owner)."""
        if self._owns_compute:
            self.compute.close()

    @property
    def ready(self) -> bool:
        return self.current is not None

    def version_name(self, version: str | None) -> str:
        name = version or read_current(self.store)
        if name is None:
            raise CheckpointError(
                "the model store has no CURRENT version; publish a model first (reward-train)"
            )
        return name

    def load(self, version: str | None = None, manifest: dict | None = None) -> LoadedVersion:
        """Verify (unless given the `manifest` verify_version returned), load and warm up `version`
        (default: the store's CURRENT). Does not activate it."""
        name = self.version_name(version)
        started = time.perf_counter()
        loaded = load_version(version_dir(self.store, name), "cpu", self.max_model_bytes, manifest)
        prepare_for_serving(loaded, self.dtype, self.device)
        if loaded.backend.kind == "native" and (len(self.paths) > 1 or self.paths[0] in ONNX_PATHS):
            self.measure_execution(loaded)
        warm_up(loaded, loaded.backend.dtype)
        self.last_load_seconds = time.perf_counter() - started
        return loaded

    async def load_off_loop(self, version: str | None = None) -> LoadedVersion:
        """`load` with the checksums computed on a worker thread: hashing a large checkpoint on the compute
        thread would pause scoring for as long; only loading and warm-up queue behind the batches."""
        name = self.version_name(version)
        manifest = await asyncio.to_thread(verify_version, version_dir(self.store, name))
        loaded = await self.compute.run(self.load, name, manifest)
        auto = self.compute.setting == "auto" and self.compute.workers > 1
        if auto and self.current is None and not self._layout_started:
            self._layout_started = True  # once: a reload racing the first load does not measure again
            await self.measure_layout(loaded)  # nothing serves yet: the pool is the measurement's alone
        return loaded

    async def measure_layout(self, loaded: LoadedVersion) -> None:
        """Whether the compute pool runs batches side by side (app/compute.py), timed on this version's
        canary batches; on any failure it runs them one at a time, as with one worker."""
        try:
            ids = await asyncio.to_thread(loaded.backend.encode, *canary_texts())
            # two batches of one answer per canary prompt: both layouts timed in about a second
            layout = await self.compute.measure_layout(loaded.backend.forward, [ids[0::2], ids[1::2]])
        except Exception:  # noqa: BLE001 - a timing failure must not keep a good version from serving
            log.exception("could not time batches side by side; running them one at a time")
            self.compute.one_at_a_time()
            return
        log.info(
            "compute pool: %s (%d workers; canary %.1f items/s one at a time, %.1f side by side, "
            "median ratio %.2f)",
            "batches side by side" if layout["side_by_side"] else "one batch at a time", layout["workers"],
            layout["one_at_a_time_items_per_s"], layout["side_by_side_items_per_s"],
            layout["side_by_side_ratio"],
        )  # fmt: skip

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
            return {**version.execution.report(), "compute": self.compute.layout}
        dtype = str(self.dtype).removeprefix("torch.")
        return {
            "path": dtype, "dtype": dtype, "setting": dtype, "seconds": 0.0, "candidates": [],
            "compute": self.compute.layout,
        }  # fmt: skip

    def activate(self, loaded: LoadedVersion) -> LoadedVersion | None:
        """Make `loaded` the live version (one reference swap); returns the one it replaced. The version
        before that is dropped here; garbage collection, then `release_device_memory`, hands its memory
        back."""
        self.previous, self.current = self.current, loaded
        self.last_error = None
        path = self.execution_report(loaded)["path"]
        log.info("model version %s is live on %s (%s)", loaded.version, self.device, path)
        return self.previous

    def release_device_memory(self) -> None:
        """Return the CUDA caching allocator's free blocks to the driver after a swap: replicas sharing a
        GPU would otherwise each keep the peak of a reload (three versions) reserved."""
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    async def load_current(self) -> LoadedVersion:
        """Load the store's CURRENT and make it live; on any failure (a bad checkpoint, CUDA out of
        memory) keep what serves and remember why."""
        try:
            loaded = await self.load_off_loop()
        except Exception as exc:
            self.remember_failure(exc)
            raise
        self.activate(loaded)
        return loaded

    def remember_failure(self, exc: Exception) -> None:
        """What /readyz says while nothing serves: any failure (a bad checkpoint, CUDA out of memory)."""
        reason = " ".join(str(exc).split()) or type(exc).__name__  # torch errors span lines
        reason = reason.replace(str(self.store), "<model store>")  # shown to clients by 503s
        self.last_error = reason if isinstance(exc, CheckpointError) else f"{type(exc).__name__}: {reason}"
