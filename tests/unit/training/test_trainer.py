from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from app.store import load_version, read_current, verify_version
from app.training.pairs import TRAIN, PreferencePair, fingerprint, read_pairs, write_pairs
from app.training.refusal import REFUSALS
from app.training.scoring import score_responses
from app.training.trainer import TrainConfig, build_parser, main, pair_weights, parse_source_weights

from .conftest import TINY_TRAIN_ARGS, separable_pairs


def train_tiny(data: Path, store: Path, *extra: str) -> Path:
    assert main(["--data", str(data), "--model-store", str(store), *TINY_TRAIN_ARGS, *extra]) == 0
    return store / read_current(store)


def accuracy_on(version_dir: Path, pairs: list[PreferencePair]) -> float:
    loaded = load_version(version_dir)
    prompts = [p.prompt for p in pairs]
    chosen = score_responses(loaded.model, loaded.tokenizer, prompts, [p.chosen for p in pairs])
    rejected = score_responses(loaded.model, loaded.tokenizer, prompts, [p.rejected for p in pairs])
    return (chosen > rejected).float().mean().item()


def test_a_tiny_run_learns_a_separable_task(separable_file: Path, tmp_path: Path) -> None:
    version_dir = train_tiny(
        separable_file, tmp_path / "store", "--epochs", "4", "--weights-dtype", "float16"
    )
    metrics = json.loads((version_dir / "metrics.json").read_text())
    assert metrics["validation_accuracy"] >= 0.9
    assert accuracy_on(version_dir, separable_pairs(60, seed=7, split="unseen")) >= 0.85
    # the calibration describes the weights as published (rounded to float16), not the float32 ones
    valid = read_pairs(separable_file, split="validation")
    loaded = load_version(version_dir)
    rewards = score_responses(
        loaded.model,
        loaded.tokenizer,
        [p.prompt for p in valid] * 2,
        [p.chosen for p in valid] + [p.rejected for p in valid],
    )
    assert metrics["reward_mean"] == pytest.approx(rewards.mean().item(), abs=1e-5)
    assert metrics["reward_std"] == pytest.approx(rewards.std().item(), abs=1e-5)
    # the refusal check on validation, with the published weights too
    polite = [p for p in valid if p.source == "polite"]
    refusals = score_responses(
        loaded.model,
        loaded.tokenizer,
        [p.prompt for p in polite for _ in REFUSALS],
        list(REFUSALS) * len(polite),
    ).reshape(len(polite), len(REFUSALS))
    chosen = score_responses(
        loaded.model, loaded.tokenizer, [p.prompt for p in polite], [p.chosen for p in polite]
    )
    check = metrics["refusal_check"]
    assert set(check) == {"all", "other", "polite"} and check["polite"]["n"] == len(polite)
    assert check["polite"]["beats_refusal"] == pytest.approx(
        (chosen[:, None] > refusals).float().mean().item()
    )


def test_the_artifact_records_how_it_was_made(separable_file: Path, tmp_path: Path) -> None:
    version_dir = train_tiny(separable_file, tmp_path / "store", "--epochs", "1", "--seed", "5")
    manifest = verify_version(version_dir)
    assert manifest["training_args"]["seed"] == 5
    assert manifest["data_fingerprint"] == fingerprint(read_pairs(separable_file, split=TRAIN))
    assert manifest["data_counts"]["train"] == {"other": 80, "polite": 80}
    assert "training_curve.png" in manifest["files"]
    metrics = json.loads((version_dir / "metrics.json").read_text())
    assert set(metrics["validation_per_source"]) == {"other", "polite"}
    assert metrics["curves"]["epoch"] == [1]


def test_early_stopping_keeps_the_best_epoch(separable_file: Path, tmp_path: Path) -> None:
    # with lr 0 nothing improves after epoch 1, so patience 1 stops after epoch 2 and keeps epoch 1
    version_dir = train_tiny(
        separable_file, tmp_path / "store", "--epochs", "5", "--patience", "1", "--lr", "0"
    )
    metrics = json.loads((version_dir / "metrics.json").read_text())
    assert (metrics["epochs_run"], metrics["best_epoch"]) == (2, 1)


def test_training_without_a_validation_split_is_refused(tmp_path: Path, capsys) -> None:
    data = tmp_path / "train_only.jsonl"
    write_pairs(data, separable_pairs(20, seed=0, split=TRAIN))
    assert main(["--data", str(data), "--model-store", str(tmp_path / "store"), *TINY_TRAIN_ARGS]) == 1
    assert "0 validation pairs" in capsys.readouterr().err
    assert not (tmp_path / "store").exists() or read_current(tmp_path / "store") is None


def pairs_of(source: str, longer: int, shorter: int) -> list[PreferencePair]:
    return [PreferencePair("p", "long answer", "short", source)] * longer + [
        PreferencePair("p", "short", "long answer", source)
    ] * shorter


def build_config(argv: list[str]) -> TrainConfig:
    """The TrainConfig the command line makes of these arguments."""
    return TrainConfig(**vars(build_parser().parse_args(["--data", "pairs.jsonl", *argv])))


def total_weight(pairs: list[PreferencePair], weights: torch.Tensor, keep) -> float:
    return sum(w.item() for p, w in zip(pairs, weights, strict=True) if keep(p))


def test_balancing_gives_each_source_and_length_side_equal_weight() -> None:
    pairs = pairs_of("a", 30, 10) + pairs_of("b", 5, 5)
    weights = pair_weights(pairs, TrainConfig(data=[], balance_sources=True, length_balance=[]))
    assert weights.mean().item() == pytest.approx(1.0)
    assert total_weight(pairs, weights, lambda p: p.source == "a") == pytest.approx(
        total_weight(pairs, weights, lambda p: p.source == "b")
    )
    a_longer = total_weight(pairs, weights, lambda p: p.source == "a" and p.chosen == "long answer")
    a_shorter = total_weight(pairs, weights, lambda p: p.source == "a" and p.chosen == "short")
    assert a_longer == pytest.approx(a_shorter)


def test_length_balance_of_named_sources_leaves_the_others_alone() -> None:
    pairs = pairs_of("a", 30, 10) + pairs_of("b", 6, 2)
    weights = pair_weights(pairs, build_config(["--length-balance", "a"]))
    a_longer = total_weight(pairs, weights, lambda p: p.source == "a" and p.chosen == "long answer")
    a_shorter = total_weight(pairs, weights, lambda p: p.source == "a" and p.chosen == "short")
    assert a_longer == pytest.approx(a_shorter)
    b = [w.item() for p, w in zip(pairs, weights, strict=True) if p.source == "b"]
    assert b == pytest.approx([b[0]] * 8)  # b keeps its natural mix: every pair weighs the same
    assert pair_weights(pairs, build_config([])).tolist() == pytest.approx([1.0] * len(pairs))
    with pytest.raises(ValueError, match="not in the data"):
        pair_weights(pairs, build_config(["--length-balance", "a", "typo"]))


def test_source_weights_scale_the_loss_of_their_source() -> None:
    pairs = pairs_of("a", 2, 0) + pairs_of("b", 2, 0)
    weights = pair_weights(pairs, TrainConfig(data=[], source_weights=parse_source_weights("a=3")))
    assert weights.tolist() == pytest.approx([1.5, 1.5, 0.5, 0.5])
    synthetic = [PreferencePair("p", "c", "r", "synthetic", kind) for kind in ("refusal", "empty", "empty")]
    spec = parse_source_weights("synthetic=2,synthetic/refusal=0")
    assert pair_weights(synthetic, TrainConfig(data=[], source_weights=spec)).tolist() == [0.0, 1.5, 1.5]
    with pytest.raises(argparse.ArgumentTypeError, match="SOURCE=WEIGHT"):
        parse_source_weights("a:3")
