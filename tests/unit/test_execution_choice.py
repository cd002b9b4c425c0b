"""The execution path of a version: measured among candidates at load, within the accuracy guard against
float32 (deviation in units of reward_std, clear preferences kept, rewards independent of the batch)."""

from __future__ import annotations

import pytest
import torch

from app.backends import RewardBackend
from app.backends.choice import (
    GUARD_STD,
    SPEED_MARGIN,
    CandidateReport,
    ExecutionPath,
    canary_ids,
    candidate_names,
    fastest,
    measure_and_choose,
    native_path,
)
from app.errors import CheckpointError
from app.registry import ModelRegistry
from tests.conftest import tiny_model, tiny_tokenizer

STD = 0.5  # the tiny version's reward_std in these tests


def reference(name: str = "float32") -> ExecutionPath:
    return native_path(name, tiny_model(), tiny_tokenizer())


def shifted(name: str, offset: float) -> ExecutionPath:
    """The real float32 path with every reward moved by `offset`."""
    base = reference().forward
    return ExecutionPath(name, lambda ids: [x + offset for x in base(ids)], "float32")


def batch_dependent(name: str) -> ExecutionPath:
    """Rewards that move with the batch's size, as per-batch activation scales make them."""
    base = reference().forward
    return ExecutionPath(name, lambda ids: [x + 0.1 * STD * len(ids) for x in base(ids)], "int8")


def negated(name: str) -> ExecutionPath:
    """The float32 rewards negated: every clear canary preference reversed."""
    base = reference().forward
    return ExecutionPath(name, lambda ids: [-x for x in base(ids)], "float32")


def choose(builders: dict, setting: str = "auto"):
    return measure_and_choose(reference(), builders, tiny_tokenizer(), STD, setting)


def test_auto_records_every_candidate_with_its_figures_and_serves_an_accepted_one() -> None:
    execution = choose({"bfloat16": lambda: reference("bfloat16")})
    report = execution.report()
    assert report["setting"] == "auto" and report["path"] in ("float32", "bfloat16")
    assert [c["path"] for c in report["candidates"]] == ["float32", "bfloat16"]
    for candidate in report["candidates"]:
        assert candidate["items_per_s"] > 0 and candidate["max_deviation_std"] is not None
    assert next(c for c in report["candidates"] if c["path"] == report["path"])["accepted"]


def test_a_path_that_moves_rewards_past_the_guard_is_refused_however_fast() -> None:
    execution = choose(
        {
            "within": lambda: shifted("within", 0.5 * GUARD_STD * STD),
            "beyond": lambda: shifted("beyond", 1.5 * GUARD_STD * STD),
        }
    )
    reports = {c.path: c for c in execution.candidates}
    assert reports["within"].accepted and reports["within"].max_deviation_std == pytest.approx(
        0.5 * GUARD_STD
    )
    assert not reports["beyond"].accepted and "reward_std" in reports["beyond"].reason
    assert reports["beyond"].items_per_s is None  # refused paths are not timed
    assert execution.path.name != "beyond"


def test_a_path_that_reverses_clear_preferences_or_depends_on_the_batch_is_refused() -> None:
    execution = choose({"swapped": lambda: negated("swapped"), "batchy": lambda: batch_dependent("batchy")})
    reports = {c.path: c for c in execution.candidates}
    assert not reports["swapped"].accepted and reports["swapped"].flipped > 0
    assert not reports["batchy"].accepted and "batching" in reports["batchy"].reason
    assert execution.path.name == "float32"


def test_a_path_that_fails_to_build_is_refused_with_its_error() -> None:
    def broken() -> ExecutionPath:
        raise RuntimeError("exporter exploded")

    execution = choose({"broken": broken})
    assert execution.candidates[1] == CandidateReport("broken", False, "RuntimeError: exporter exploded")
    assert execution.path.name == "float32"


def test_a_forced_path_must_pass_the_guard_or_the_version_is_refused() -> None:
    assert choose({"within": lambda: shifted("within", 0.0)}, setting="within").path.name == "within"
    with pytest.raises(CheckpointError, match="execution path beyond refused"):
        choose({"beyond": lambda: shifted("beyond", 2 * GUARD_STD * STD)}, setting="beyond")


def test_float32_serves_unless_another_path_is_clearly_faster() -> None:
    def reports(**rates: float) -> dict[str, CandidateReport]:
        return {
            name: CandidateReport(name, name != "refused", "", items_per_s=r) for name, r in rates.items()
        }

    assert fastest(reports(float32=100.0, bfloat16=100.0 * SPEED_MARGIN * 0.99)) == "float32"
    assert fastest(reports(float32=100.0, bfloat16=150.0, onnx=180.0)) == "onnx"
    assert fastest(reports(float32=100.0, refused=500.0)) == "float32"


def test_candidates_follow_the_settings() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert candidate_names("auto", "auto", cpu, onnx_installed=True) == (
        "float32",
        "bfloat16",
        "onnx",
        "onnx-int8",
    )
    assert candidate_names("auto", "auto", cpu, onnx_installed=False) == ("float32", "bfloat16")
    assert candidate_names("auto", "torch", cpu, onnx_installed=True) == ("float32", "bfloat16")
    assert candidate_names("bfloat16", "auto", cpu, onnx_installed=True) == ("bfloat16",)  # forced: no canary
    assert candidate_names("auto", "auto", cuda, onnx_installed=True) == ("float32",)
    assert candidate_names("auto", "onnx", cpu, onnx_installed=True) == ("onnx",)
    with pytest.raises(CheckpointError, match="runs on the CPU"):
        candidate_names("auto", "onnx", cuda, onnx_installed=True)


def test_measured_bfloat16_keeps_the_reward_head_in_float32() -> None:
    path = reference("bfloat16")
    assert next(path.model.encoder.parameters()).dtype == torch.bfloat16
    assert next(path.model.head.parameters()).dtype == torch.float32  # rewards not rounded to bf16


def test_forward_keeps_input_order_whatever_the_lengths() -> None:
    execution = choose({})
    ids, _ = canary_ids(tiny_tokenizer())
    shuffled = ids[::-1]
    assert execution.forward(shuffled) == pytest.approx(execution.forward(ids)[::-1], abs=1e-5)


def test_a_registry_load_with_auto_serves_the_measured_path_through_the_backend(tiny_model_store, tmp_path):
    registry = ModelRegistry(tiny_model_store, "cpu", "auto", "torch", onnx_cache=tmp_path)
    try:
        version = registry.load()
    finally:
        registry.close()
    assert version.execution is not None and version.execution.setting == "auto"
    assert isinstance(version.backend, RewardBackend)
    assert registry.execution_report(version)["path"] == version.execution.path.name
    assert version.backend.packs_inputs == version.execution.path.packs_inputs  # the batcher cuts by it
    reference = native_path("float32", tiny_model(), tiny_tokenizer())
    assert version.backend.encode(["Hi"], ["Hello"]) == tiny_tokenizer().encode_pairs(["Hi"], ["Hello"])
    ids, _ = canary_ids(tiny_tokenizer())  # where the guard holds the served path to float32
    served = version.backend.forward(ids)
    assert served == pytest.approx(reference.forward(ids), abs=GUARD_STD * version.calibration[1])
