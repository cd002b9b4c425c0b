"""Devices, dtypes and threads: which device and dtype serve (REWARD_DEVICE, REWARD_DTYPE), the one map
from a dtype name (settings, manifests, execution paths) to torch's, and torch's thread counts."""

from __future__ import annotations

import logging

import torch

from app.errors import CheckpointError

log = logging.getLogger(__name__)

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(name: str) -> torch.device:
    """auto -> cuda when available, else cpu; asking for cuda without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise CheckpointError("REWARD_DEVICE=cuda but no CUDA device is available; use auto or cpu")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """auto -> on a CPU float32, the reference (app.backends.choice then measures the alternatives at each
    load); on a CUDA device bfloat16 where supported (float16 on older ones); float16 only on CUDA."""
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if name == "float16" and device.type != "cuda":
        raise CheckpointError(f"REWARD_DTYPE=float16 needs a CUDA device; on {device.type} use float32")
    return torch.float32 if name == "auto" else TORCH_DTYPES[name]


def enable_tf32(device: torch.device) -> None:
    """float32 matmuls on CUDA in TF32 (10-bit mantissa, tensor cores): used when REWARD_DTYPE=float32,
    whose rewards then move by far less than the bf16 default's tolerance."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def set_thread_threads(threads: int) -> None:
    """Intra-op threads of the calling thread's next torch operations (OpenMP's and MKL's settings are
    per thread; torch's global default, which new threads start from, follows the last call)."""
    torch.get_num_threads()  # a thread's first torch call resets its count to the global default: done
    torch.set_num_threads(threads)


def configure_torch_threads(threads: int) -> None:
    """Intra-op threads of the process (the compute pool's workers then set their own, per job); one
    inter-op thread, since batches run side by side on the compute pool's own threads (app/compute.py),
    never torch's."""
    torch.set_num_threads(threads)
    if torch.get_num_interop_threads() != 1:
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:  # only settable before the first parallel work; harmless if too late
            log.debug("inter-op threads already fixed at %d", torch.get_num_interop_threads())
