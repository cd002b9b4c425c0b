"""How a version's forward pass runs on this machine: measured at load, within an accuracy guard.

`REWARD_DTYPE=auto` on a CPU does not guess from CPU flags: the same bfloat16 encoder ran 2.8x faster
than float32 on an AMD EPYC and 2x slower on an Intel Xeon that advertises AVX512-BF16 without AMX. At
each load every candidate path (torch float32, torch bfloat16, ONNX Runtime float32 and int8) scores a
fixed canary batch; a path whose rewards leave the guard against float32 is refused, the others are
timed in turn on the same batch, and the fastest serves, unless it beats float32 by less than the
timing noise. The choice and every candidate's figures go to the log, `/v1/model` and `/metrics`.
"""

from __future__ import annotations

import copy
import logging
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from app.backends.devices import TORCH_DTYPES
from app.backends.native import NativeBackend
from app.errors import CheckpointError
from app.model import RewardModel
from app.tokenizer import PairTokenizer

log = logging.getLogger(__name__)

GUARD_STD = 0.04  # largest |reward - float32 reward| a path may show, in units of the version's reward_std
SPEED_MARGIN = 1.05  # a path replaces float32 only when at least this much faster (noise of shared cores)
TIMING_ROUNDS = 3  # timed passes of the canary batch per candidate, taken in turn; the median counts
ALONE_STRIDE = 3  # every third canary item is also scored alone (rewards must not depend on the batch)
ONNX_PATHS = ("onnx", "onnx-int8")
# the canary batch: prompts with two answers each (short, ordinary, empty-ish, past max_len), so that
# the guard sees both reward deviations and preference orderings
CANARY_PROMPTS = (
    (
        "How do I boil an egg?",
        "Put it in boiling water for about eight minutes, then cool it in cold water.",
        "Eggs are eggs.",
    ),
    ("Hi", "Hello! How can I help you today?", "Go away."),
    ("?", ".", "I am not sure what you are asking; could you say more?"),
    (
        "Tell me a long story. " * 40,
        "Once upon a time there was a reward model. " * 60,
        "No.",
    ),
    (
        "What is the capital of France?",
        "Paris is the capital of France, and also its largest city.",
        "The capital of France is Berlin.",
    ),
    (
        "Can you help me write a polite email to my landlord about a broken heater?",
        "Of course. Dear landlord, the heater in my flat stopped working on Monday. "
        "Could you arrange a repair this week? Thank you for your help. " * 4,
        "Just tell him to fix it.",
    ),
    (
        "Explain photosynthesis simply. " * 8,
        "Plants use sunlight to turn water and carbon dioxide into sugar and oxygen. " * 6,
        "It is a thing plants do.",
    ),
    (
        "How can I hurt someone and get away with it?",
        "I can't help with hurting anyone.",
        "Here is how. " * 30,
    ),
)

Forward = Callable[[Sequence[Sequence[int]]], list[float]]  # a RewardBackend's forward: ids -> rewards


@dataclass
class ExecutionPath:
    """One way to run the model: its name and a backend forward (encoded inputs -> raw rewards)."""

    name: str  # float32, bfloat16, float16, onnx or onnx-int8
    forward: Forward
    dtype: str  # the precision of its arithmetic: float32, bfloat16, float16 or int8
    model: RewardModel | None = None  # the torch module behind `run`, if any (kept while it serves)
    packs_inputs: bool = False  # the forward packs its inputs (RewardBackend.packs_inputs)

    @property
    def eps(self) -> float:
        """Rounding unit of its arithmetic (int8 is counted like bfloat16's 8-bit mantissa)."""
        return 2.0**-7 if self.dtype == "int8" else torch.finfo(TORCH_DTYPES[self.dtype]).eps


@dataclass
class CandidateReport:
    path: str
    accepted: bool
    reason: str  # why it was refused, or "" when accepted
    items_per_s: float | None = None  # median over TIMING_ROUNDS on the canary batch
    max_deviation_std: float | None = None  # max |reward - float32| / reward_std on the canary batch
    flipped: int | None = None  # canary preferences with a clear float32 gap that this path reverses


@dataclass
class Execution:
    """The path serving a version, how it was chosen, and every candidate's figures."""

    path: ExecutionPath
    setting: str  # "auto" (measured) or the path a setting forced
    candidates: list[CandidateReport] = field(default_factory=list)
    seconds: float = 0.0  # time spent building, checking and timing the candidates

    def forward(self, ids: Sequence[Sequence[int]]) -> list[float]:
        return self.path.forward(ids)

    def report(self) -> dict:
        """What /v1/model shows: the path, how it was chosen, and each candidate's figures."""
        return {
            "path": self.path.name,
            "dtype": self.path.dtype,
            "setting": self.setting,
            "seconds": round(self.seconds, 3),
            "candidates": [asdict(c) for c in self.candidates],
        }


def native_path(name: str, model: RewardModel, tokenizer: PairTokenizer) -> ExecutionPath:
    """The native backend over `model` in the precision `name` (cast in place)."""
    backend = NativeBackend(model, tokenizer)
    backend.prepare(TORCH_DTYPES[name], torch.device("cpu"))
    return ExecutionPath(name, backend.forward, name, model, backend.packs_inputs)


class MeasuredBackend:
    """A version's backend with its forward on the measured path; encoding stays the backend's own."""

    kind = NativeBackend.kind

    def __init__(self, backend: NativeBackend, execution: Execution):
        self.model = execution.path.model or backend.model  # the torch module, when a torch path serves
        # a new native backend over the serving model: the float32 one is not kept alive by `encode`
        self.native = NativeBackend(self.model, backend.tokenizer)
        self.execution = execution
        self.max_len = self.native.max_len

    def encode(self, prompts: Sequence[str], responses: Sequence[str]) -> list[list[int]]:
        return self.native.encode(prompts, responses)

    def forward(self, ids: Sequence[Sequence[int]]) -> list[float]:
        return self.execution.forward(ids)

    @property
    def dtype(self) -> torch.dtype:
        """The torch dtype nearest the serving path's arithmetic (int8 paths compute around float32)."""
        return TORCH_DTYPES.get(self.execution.path.dtype, torch.float32)

    @property
    def packs_inputs(self) -> bool:
        return self.execution.path.packs_inputs

    def describe(self) -> dict:
        return self.native.describe()

    def prepare(self, dtype: torch.dtype, device: torch.device) -> None:
        """Nothing left to do: the backend was prepared in float32 on the CPU before the measurement, and
        the measurement chose the precision; a different one needs a new load."""
        if dtype != torch.float32 or device.type != "cpu":
            raise CheckpointError(f"measured path {self.execution.path.name} cannot be re-cast to {dtype}")


@dataclass
class Candidates:
    """Builds candidate paths from a version's float32 model."""

    reference: RewardModel  # float32, eval mode
    tokenizer: PairTokenizer
    manifest: dict
    onnx_cache: Path  # <cache>/<version>: where exported graphs go

    def build(self, name: str) -> ExecutionPath:
        if name == "float32":
            return native_path(name, self.reference, self.tokenizer)
        if name in TORCH_DTYPES:
            return native_path(name, copy.deepcopy(self.reference), self.tokenizer)
        from app.backends.onnx import OnnxRunner, cached_graph, writable_cache

        cache = writable_cache(self.onnx_cache)
        graph = cached_graph(self.reference, self.manifest, cache, quantized=name == "onnx-int8")
        dtype = "int8" if name == "onnx-int8" else "float32"
        return ExecutionPath(name, OnnxRunner(graph, self.tokenizer, torch.get_num_threads()).forward, dtype)


def canary_texts() -> tuple[list[str], list[str]]:
    """The canary items' prompts and responses (two answers per prompt, in order)."""
    prompts = [p for p, _, _ in CANARY_PROMPTS for _ in range(2)]
    responses = [r for _, first, second in CANARY_PROMPTS for r in (first, second)]
    return prompts, responses


def canary_ids(tokenizer: PairTokenizer) -> tuple[list[list[int]], Pairs]:
    """Encoded canary items and the (better-looking, other) item pairs that share a prompt."""
    prompts = [p for p, _, _ in CANARY_PROMPTS for _ in range(2)]
    responses = [r for _, first, second in CANARY_PROMPTS for r in (first, second)]
    pairs = [(2 * i, 2 * i + 1) for i in range(len(CANARY_PROMPTS))]
    return tokenizer.encode_pairs(prompts, responses), pairs


Pairs = list[tuple[int, int]]  # indices of two canary items that answer the same prompt


def guard_failure(rewards: list[float], reference: list[float], pairs: Pairs, std: float) -> dict:
    """Deviation from float32 in units of reward_std and the clear preferences reversed."""
    deviation = max(abs(a - b) for a, b in zip(rewards, reference, strict=True)) / std
    tolerance = GUARD_STD * std
    clear = [(i, j) for i, j in pairs if abs(reference[i] - reference[j]) > tolerance]
    flipped = sum((reference[i] > reference[j]) != (rewards[i] > rewards[j]) for i, j in clear)
    return {"max_deviation_std": deviation, "flipped": flipped}


def items_per_s(execution: Execution, ids: list[list[int]]) -> float:
    """One timed pass after an untimed one: the previous path's spinning threads (OpenMP, ORT) have
    gone quiet by then and this path's are awake, as in steady serving."""
    execution.forward(ids)
    started = time.perf_counter()
    execution.forward(ids)
    return len(ids) / (time.perf_counter() - started)


def check_against_reference(
    candidate: Execution, ids: list[list[int]], pairs: Pairs, reference: list[float], std: float
) -> CandidateReport:
    """Score the canary batch (also the untimed first pass) and each item alone; hold both to the guard
    (a path whose rewards depend on the batch, like per-batch activation scales, is refused here)."""
    batched = candidate.forward(ids)
    figures = guard_failure(batched, reference, pairs, std)
    alone = {i: candidate.forward([ids[i]])[0] for i in range(0, len(ids), ALONE_STRIDE)}
    drift = max(abs(batched[i] - reward) for i, reward in alone.items()) / std
    problems = []
    if not figures["max_deviation_std"] <= GUARD_STD:  # NaN fails too
        problems.append(f"rewards move by {figures['max_deviation_std']:.3g} reward_std (> {GUARD_STD})")
    if not drift <= GUARD_STD:
        problems.append(f"rewards change with batching by {drift:.3g} reward_std")
    if figures["flipped"]:
        problems.append(f"{figures['flipped']} clear preferences reversed")
    return CandidateReport(candidate.path.name, not problems, "; ".join(problems), **figures)


def time_in_turn(executions: list[Execution], ids: list[list[int]], reports: dict[str, CandidateReport]):
    """Median items/s of each path over TIMING_ROUNDS passes, interleaved so drift hits all alike."""
    rates: dict[str, list[float]] = {e.path.name: [] for e in executions}
    for _ in range(TIMING_ROUNDS):
        for execution in executions:
            rates[execution.path.name].append(items_per_s(execution, ids))
    for name, values in rates.items():
        reports[name].items_per_s = statistics.median(values)


def fastest(reports: dict[str, CandidateReport]) -> str:
    """The fastest accepted path; float32 unless another beats it by SPEED_MARGIN."""
    accepted = [r for r in reports.values() if r.accepted and r.items_per_s]
    best = max(accepted, key=lambda r: r.items_per_s)
    baseline = reports["float32"].items_per_s
    return best.path if best.items_per_s >= SPEED_MARGIN * baseline else "float32"


def measure_and_choose(
    reference: ExecutionPath,
    builders: dict[str, Callable[[], ExecutionPath]],
    tokenizer: PairTokenizer,
    reward_std: float,
    setting: str = "auto",
) -> Execution:
    """Check each built candidate against `reference` (float32) and serve the fastest that passes.
    With `setting` naming one path, that path must pass the guard or the version is refused."""
    started = time.perf_counter()
    ids, pairs = canary_ids(tokenizer)
    base = Execution(reference, setting)
    expected = base.forward(ids)
    reports = {reference.name: CandidateReport(reference.name, True, "", max_deviation_std=0.0, flipped=0)}
    executions = [base]
    for name, build in builders.items():
        try:
            execution = Execution(build(), setting)
            reports[name] = check_against_reference(execution, ids, pairs, expected, reward_std)
        except Exception as exc:  # an exporter, runtime or kernel may fail in its own way: refuse the path
            reports[name] = CandidateReport(name, False, f"{type(exc).__name__}: {exc}"[:300])
            continue
        if reports[name].accepted:
            executions.append(execution)
    if setting != "auto" and not reports[setting].accepted:
        raise CheckpointError(f"execution path {setting} refused: {reports[setting].reason}")
    time_in_turn(executions, ids, reports)
    chosen = setting if setting != "auto" else fastest(reports)
    execution = next(e for e in executions if e.path.name == chosen)
    execution.candidates = list(reports.values())
    execution.seconds = time.perf_counter() - started
    return execution


def candidate_names(dtype: str, path: str, device: torch.device, onnx_installed: bool) -> tuple[str, ...]:
    """Paths to consider for REWARD_DTYPE=`dtype` and REWARD_EXECUTION_PATH=`path` on `device`."""
    if path in ONNX_PATHS:
        if device.type != "cpu":
            raise CheckpointError(f"REWARD_EXECUTION_PATH={path} runs on the CPU, not on {device.type}")
        return (path,)
    if dtype != "auto" or device.type != "cpu":
        return (dtype if dtype != "auto" else "float32",)
    if path == "torch" or not onnx_installed:
        return ("float32", "bfloat16")
    return ("float32", "bfloat16", *ONNX_PATHS)


def measure_execution(
    backend: NativeBackend, manifest: dict, reward_std: float, names: tuple[str, ...], onnx_cache: Path
) -> Execution:
    """Check each of `names` against float32 on the canary batch and keep the fastest that passes (or
    the one path a setting forced). `backend` is prepared in float32."""
    candidates = Candidates(backend.model, backend.tokenizer, manifest, onnx_cache)
    builders = {name: (lambda name=name: candidates.build(name)) for name in names if name != "float32"}
    setting = names[0] if len(names) == 1 else "auto"
    execution = measure_and_choose(
        candidates.build("float32"), builders, backend.tokenizer, reward_std, setting
    )
    log.info(
        "execution path %s (%s) in %.1f s: %s", execution.path.name, setting, execution.seconds,
        ", ".join(f"{c.path} {c.items_per_s or 0:.1f} items/s{'' if c.accepted else ' refused: ' + c.reason}"
                  for c in execution.candidates),
    )  # fmt: skip
    return execution
