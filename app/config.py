"""Service settings: pydantic-settings with the `REWARD_` env prefix; `reward-serve` flags override env.

Every field has one comment; validators refuse values that would make the service unsafe or useless.
Settings hold every default of the service: other modules take theirs with `default_of(name)` (or
build from a Settings object), never a literal of their own.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

NormalizeMode = Literal["none", "batch", "running"]
HttpProtocolName = Literal["auto", "httptools", "h11"]
CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup_cpu_quota(root: Path = CGROUP_ROOT) -> float | None:
    """CPUs the cgroup may use per period (cgroup v2 `cpu.max`, else v1 `cpu.cfs_quota_us`); None when
    unlimited or unknown. Containers see their own cgroup at the root of the mounted hierarchy."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]  # "max 100000" or "200000 100000"
    except (OSError, ValueError):
        try:
            quota = (root / "cpu" / "cpu.cfs_quota_us").read_text().strip()  # -1 when unlimited
            period = (root / "cpu" / "cpu.cfs_period_us").read_text().strip()
        except OSError:
            return None
    if not quota.isdigit() or not period.isdigit() or int(period) == 0:  # "max" / -1: unlimited
        return None
    return int(quota) / int(period)


def cpu_budget(root: Path | None = None) -> int:
    """CPUs this process may really use: its affinity mask, capped by the cgroup's CPU quota (rounded
    up). os.cpu_count() counts the host's cores, so replicas in containers would oversubscribe."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = cgroup_cpu_quota(root or CGROUP_ROOT)
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    return max(1, cpus)


# max_batch_tokens=0 (auto): on CPU, throughput peaks at batches of 8-16 full-length pairs and falls
# beyond (docs/benchmarks.md); a GPU wants large batches.
AUTO_BATCH_TOKENS = {"cpu": 2048, "cuda": 16384}


def batch_tokens(max_batch_tokens: int, device_type: str) -> int:
    """The token budget of one forward pass on this device type: `max_batch_tokens`, or its auto value."""
    return max_batch_tokens or AUTO_BATCH_TOKENS.get(device_type, AUTO_BATCH_TOKENS["cuda"])


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="REWARD_", extra="ignore", validate_default=True)

    # --- network ---
    host: str = "127.0.0.1"  # bind address; loopback by default, containers bind 0.0.0.0 explicitly
    port: int = Field(8000, ge=0, le=65535)  # TCP port (0 picks a free one)
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"  # uvicorn and app log level

    # --- connections (docs/reliability.md) ---
    # uvicorn's HTTP protocol: auto = httptools (C parser, less CPU per request) if installed, else h11
    http_protocol: HttpProtocolName = "auto"
    max_header_bytes: int = Field(16 * 1024, ge=1024)  # request line + headers; larger get 400 and a close
    header_timeout_s: float = Field(
        10.0, gt=0.0
    )  # a connection whose request headers are not in by then closes
    max_connections: int = Field(1024, ge=1)  # open connections; beyond, a new one gets 503 and a close

    # --- model ---
    model_store: Path = Path("model_store")  # directory of published versions with a CURRENT pointer
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto = cuda when available, else cpu
    # auto = on cpu, measured at each load among the execution paths (docs/benchmarks.md); on cuda
    # bfloat16 (float16 where bf16 is unsupported); float32/bfloat16 force that torch precision (float32
    # on cuda computes matmuls in TF32); float16 only on cuda
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    # auto = every path (torch float32/bfloat16, ONNX Runtime float32/int8 with the [onnx] extra) when
    # dtype is auto; torch = torch only; onnx / onnx-int8 force ONNX Runtime (cpu, still checked vs float32)
    execution_path: Literal["auto", "torch", "onnx", "onnx-int8"] = "auto"
    onnx_cache: Path | None = None  # where exported ONNX graphs are kept; None = <model_store>/.cache
    # memory a version may need to load (its weights file plus the float32 model); larger ones are refused
    # before anything is allocated, as are ones needing more than the memory available
    max_model_bytes: int = Field(8 * 1024**3, ge=1)
    torch_threads: int = Field(default_factory=cpu_budget, ge=1)  # intra-op threads; default: cpu_budget()
    # threads running forward passes side by side (app/compute.py), each with torch_threads // workers
    # when they do (a lone batch gets them all); 0 = auto: 2 on cpu with 2+ torch threads, else 1
    compute_workers: int = Field(0, ge=0, le=64)
    # how often (ms) a Python thread holding the GIL hands it over (Python's default: 5): the compute
    # thread needs the GIL between the operations of a forward pass, the event loop holds it for HTTP
    gil_switch_ms: float = Field(0.2, ge=0.05, le=100.0)

    # --- micro-batching ---
    max_batch_size: int = Field(64, ge=1, le=4096)  # items per forward pass (1 turns batching off)
    # token budget of one forward pass in exact lengths: their sum for a backend that packs its inputs (the
    # native CPU forward), else size x longest (padded); 0 = auto: 2048 on cpu, 16384 on cuda
    max_batch_tokens: int = Field(0, ge=0)
    max_wait_ms: float = Field(2.0, ge=0.0, le=1000.0)  # longest wait for more items after the first one
    queue_size: int = Field(4096, ge=1)  # items waiting at most; beyond it requests get 429
    max_queue_tokens: int = Field(262144, ge=1)  # tokens waiting at most; beyond it requests get 429
    tokenize_threads: int = Field(2, ge=1, le=64)  # threads encoding requests at admission (not the loop)
    retry_after_s: int = Field(1, ge=1)  # Retry-After advertised with 429 and 503 answers
    max_queue_wait_s: float = Field(10.0, ge=0.0)  # 429 when the queued tokens need longer; 0 = off

    # --- trainer routes (/get_reward, /classify, /v1/classify, /v1/embeddings) ---
    # Their callers retry at a fixed pace or never on a 4xx, so they wait in the queue instead of a fast 429:
    # OpenRLHF gives a request 180 s, verl retries server errors with backoff up to 16 times.
    trainer_max_queue_wait_s: float = Field(150.0, ge=0.0)  # 503 + Retry-After beyond this wait; 0 = off
    trainer_request_timeout_s: float = Field(170.0, gt=0.0)  # 504 after this; below OpenRLHF's 180 s
    get_reward_max_items: int = Field(4096, ge=1)  # queries in one /get_reward (whole rollout); <= queue_size
    get_reward_max_body_bytes: int = Field(64 * 1024 * 1024, ge=1024)  # body size of /get_reward

    # --- input limits ---
    max_items: int = Field(256, ge=1)  # items in one /score_batch request
    max_text_chars: int = Field(20000, ge=1)  # characters in one prompt or response
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)  # request body size, checked before parsing
    request_timeout_s: float = Field(60.0, gt=0.0)  # a request still queued or computing after this gets 504
    body_timeout_s: float = Field(10.0, gt=0.0)  # a body still arriving after this gets 408 (slow clients)
    shutdown_grace_s: float = Field(30.0, ge=0.0)  # on SIGTERM, time in-flight requests get to finish
    unready_after_failures: int = Field(3, ge=1)  # model failures in a row (canary too) -> /readyz 503

    # --- reward mixing and normalization ---
    alpha: float = Field(0.5, ge=0.0, le=1.0)  # default heuristic weight of the hybrid reward
    beta: float = Field(0.5, ge=0.0, le=1.0)  # default model weight (alpha and beta are normalized to sum 1)
    normalize: NormalizeMode = "none"  # default normalization when a request names none
    clip: float | None = Field(None, gt=0.0)  # default clipping bound c of [-c, c]; None = no clipping
    norm_eps: float = Field(1e-6, gt=0.0)  # added to the std before dividing
    running_momentum: float = Field(0.99, ge=0.0, lt=1.0)  # EMA momentum of running mean/variance
    max_namespaces: int = Field(1024, ge=1)  # namespaces with running stats kept; when full, see below
    # a full namespace table frees the least recently used namespace only when idle this long; else a
    # new namespace gets 429 (a client inventing namespaces cannot evict a live run's statistics)
    namespace_idle_s: float = Field(3600.0, gt=0.0)
    # snapshot file of running stats (state/ is git-ignored, so serving leaves a checkout clean); empty = off
    stats_path: Path | None = Path("state/running_stats.json")
    stats_snapshot_s: float = Field(30.0, gt=0.0)  # seconds between running-stats snapshots

    # --- admin ---
    admin_token: SecretStr | None = None  # bearer token of admin endpoints; unset = admin disabled
    reload_interval: float = Field(5.0, ge=0.0)  # seconds between checks of the store's CURRENT; 0 = off

    # --- heuristic reward (see app/heuristics.py) ---
    # comma-separated; None = built-in list
    toxic_keywords: Annotated[tuple[str, ...] | None, NoDecode] = None
    toxicity_weight: float = Field(1.0, ge=0.0)  # reward lost at full toxicity
    toxicity_threshold: float = Field(0.0, ge=0.0, le=1.0)  # toxic-word ratio above which it is penalized
    toxicity_saturation: float = Field(0.1, gt=0.0, le=1.0)  # toxic-word ratio counted as full toxicity
    min_words: int = Field(3, ge=0)  # shorter responses lose length_penalty
    max_words: int = Field(400, ge=1)  # longer responses lose length_penalty / 2
    length_penalty: float = Field(0.5, ge=0.0)  # reward lost by too short responses
    repetition_penalty: float = Field(2.0, ge=0.0)  # times (0.5 - unique-word ratio) below 0.5

    def compute_workers_for(self, device_type: str) -> int:
        """Forward passes run side by side on this device type (compute_workers, or its auto value)."""
        if self.compute_workers:
            return self.compute_workers
        return 2 if device_type == "cpu" and self.torch_threads >= 2 else 1

    def batch_tokens_for(self, device_type: str) -> int:
        """The token budget of one forward pass on this device type (max_batch_tokens, or its auto value)."""
        return batch_tokens(self.max_batch_tokens, device_type)

    @field_validator("toxic_keywords", mode="before")
    @classmethod
    def split_keywords(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(word.strip().lower() for word in value.split(",") if word.strip())
        return value

    @field_validator("stats_path", "onnx_cache", mode="before")
    @classmethod
    def empty_path_disables(cls, value: object) -> object:
        return None if value in ("", "none", "None") else value

    @field_validator("admin_token", mode="before")
    @classmethod
    def empty_token_disables(cls, value: object) -> object:
        return None if value == "" else value

    @model_validator(mode="after")
    def check_consistency(self) -> Settings:
        if self.alpha + self.beta <= 0:
            raise ValueError("alpha + beta must be > 0 (set REWARD_ALPHA and/or REWARD_BETA)")
        if self.max_words <= self.min_words:
            raise ValueError(f"max_words ({self.max_words}) must exceed min_words ({self.min_words})")
        if self.device == "cpu" and self.dtype == "float16":
            raise ValueError("dtype float16 needs device cuda; on cpu use bfloat16 or float32")
        onnx_misfit = self.device == "cuda" or self.dtype not in ("auto", "float32")
        if self.execution_path.startswith("onnx") and onnx_misfit:
            raise ValueError("execution_path onnx runs float32 graphs on the cpu: use dtype auto or float32")
        if self.admin_token is not None and len(self.admin_token.get_secret_value()) < 16:
            raise ValueError("admin_token must be at least 16 characters (use a random secret)")
        return self


def default_of(name: str) -> Any:
    """The default of the Settings field `name` (what the service runs with when nothing sets it)."""
    return Settings.model_fields[name].get_default(call_default_factory=True)
