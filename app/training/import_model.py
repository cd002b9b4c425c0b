"""Import a local Hugging Face reward model into a model store, where the service hot-swaps it.

    reward-import CHECKPOINT_DIR --model-store model_store [--label-index I] [--pairs pairs.jsonl ...]

Refused before anything is loaded: pickle weights (`.bin`, `.pt`, ...: loading them runs code) when no
safetensors weights are there, `auto_map` (remote code) in the model or tokenizer config, a model type
this service does not know, a classifier with more than one output unless `--label-index` picks the
reward, a tensor whose shape in the safetensors headers (every shard of a sharded checkpoint) is not
what the architecture in config.json expects, and a model whose estimated memory exceeds the limit.

Checkpoints saved by TRL (`*ForSequenceClassification`) are copied as they are. Checkpoints saved by
OpenRLHF (the base model's config, the trunk under `model.`, a one-output linear head named by
`value_head_prefix`: `score` or `value_head`, and `normalize_reward` with `mean`/`std` in config.json)
are rewritten into the `*ForSequenceClassification` layout: the head becomes `score`, the input is
rendered as OpenRLHF trains (chat template, EOS appended, last token pooled) and its own normalization
is kept.

The calibration (`reward_mean`, `reward_std`: mean and std of the raw reward over the chosen and the
rejected responses of the calibration pairs) puts `model_reward` on the same scale as for native
versions. The version is written, checksummed and verified in a temporary directory, then published
atomically (app.store.publish_version).
"""

from __future__ import annotations

import argparse
import json
import shutil
import struct
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from app.backends import hf
from app.config import default_of
from app.errors import CheckpointError
from app.store import FORMAT_VERSION, publish_version
from app.training.pairs import PreferencePair, read_pairs
from app.training.scoring import backend_rewards

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
# files copied from the checkpoint: configs, tokenizer files, weights; never code or pickles
COPIED_SUFFIXES = (".json", ".safetensors", ".jinja", ".txt", ".model")
SINGLE_FILE, SHARD_INDEX = "model.safetensors", "model.safetensors.index.json"
OPENRLHF_HEADS = ("score", "value_head")
DEFAULT_MAX_LEN = 2048  # tokens; a model's own limit is often far beyond what reward scoring needs
BUNDLED_PAIRS = sorted((Path(__file__).resolve().parents[2] / "data").glob("*.jsonl"))
ACTIVATION_RESERVE = 256 << 20  # bytes for activations, tokenizer and the interpreter beside the weights


@dataclass
class ImportPlan:
    """What an inspected checkpoint is and how it will be served."""

    source: Path
    config: dict  # config.json as it will be written (OpenRLHF checkpoints rewritten)
    shards: list[str]  # safetensors files
    spec: hf.HFSpec
    layout: str  # "transformers" or "openrlhf"
    head_key: str | None = None  # OpenRLHF head tensor to rename to score.weight
    parameters: int = 0
    notes: list[str] = field(default_factory=list)


def read_safetensors_header(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """{tensor name: (dtype, shape)} from a safetensors file's JSON header, without reading the data."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        if length > 100 << 20:
            raise CheckpointError(f"{path}: safetensors header of {length} bytes: not a safetensors file")
        try:
            header = json.loads(f.read(length))
        except ValueError as exc:
            raise CheckpointError(f"{path}: unreadable safetensors header ({exc})") from exc
    header.pop("__metadata__", None)
    return {name: (info["dtype"], tuple(info["shape"])) for name, info in header.items()}


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable ({exc})") from exc


def find_shards(source: Path) -> list[str]:
    """The safetensors weight files; refuses a checkpoint whose weights are pickles only."""
    if (source / SHARD_INDEX).is_file():
        weight_map = _read_json(source / SHARD_INDEX).get("weight_map", {})
        shards = sorted(set(weight_map.values()))
        bad = [s for s in shards if Path(s).name != s or not s.endswith(".safetensors")]
        missing = [s for s in shards if s not in bad and not (source / s).is_file()]
        if bad or missing or not shards:
            raise CheckpointError(f"{source / SHARD_INDEX}: bad or missing shards {bad + missing}")
        return shards
    if (source / SINGLE_FILE).is_file():
        return [SINGLE_FILE]
    pickles = sorted(p.name for p in source.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise CheckpointError(
            f"{source}: weights only as pickle files {pickles}; loading a pickle can run code. Convert them "
            "to safetensors where you trust them (model.save_pretrained(..., safe_serialization=True))"
        )
    raise CheckpointError(f"{source}: no {SINGLE_FILE} or {SHARD_INDEX}")


def read_headers(source: Path, shards: list[str]) -> dict[str, tuple[str, tuple[int, ...]]]:
    tensors: dict[str, tuple[str, tuple[int, ...]]] = {}
    for shard in shards:
        tensors.update(read_safetensors_header(source / shard))
    return tensors


def refuse_remote_code(source: Path, config: dict) -> None:
    for name, data in (("config.json", config), ("tokenizer_config.json", _tokenizer_config(source))):
        if "auto_map" in data:
            raise CheckpointError(
                f"{source / name} has auto_map {data['auto_map']}: the checkpoint asks for its own code, "
                "which is never run here; only built-in transformers architectures are served"
            )


def _tokenizer_config(source: Path) -> dict:
    path = source / "tokenizer_config.json"
    return _read_json(path) if path.is_file() else {}


def _openrlhf_head(config: dict, tensors: dict) -> str | None:
    """The value head's tensor name of an OpenRLHF checkpoint, None for any other layout."""
    architecture = (config.get("architectures") or [""])[0]
    if architecture.endswith("ForSequenceClassification"):
        return None
    prefixes = [config["value_head_prefix"]] if "value_head_prefix" in config else list(OPENRLHF_HEADS)
    for prefix in prefixes:
        if f"{prefix}.weight" in tensors:
            return f"{prefix}.weight"
    raise CheckpointError(
        f"architecture {architecture or 'unnamed'} is not a sequence classifier and has no value head "
        f"({' or '.join(p + '.weight' for p in prefixes)}): not a reward model"
    )


def output_count(config: dict, tensors: dict, head_key: str | None) -> int:
    if head_key is not None:
        return tensors[head_key][1][0]
    if "num_labels" in config:
        return int(config["num_labels"])
    return len(config.get("id2label") or {"0": "LABEL_0", "1": "LABEL_1"})  # transformers' default: 2


def choose_label(outputs: int, label_index: int | None) -> int:
    if label_index is None:
        if outputs != 1:
            raise CheckpointError(
                f"the classifier has {outputs} outputs, a reward model has one: pass --label-index to "
                "choose which output is the reward"
            )
        return 0
    if not 0 <= label_index < outputs:
        raise CheckpointError(f"--label-index {label_index} is not in [0, {outputs - 1}]")
    return label_index


def check_shapes(config: dict, tensors: dict[str, tuple[str, tuple[int, ...]]]) -> int:
    """Compare the checkpoint's tensors with the architecture's; returns its parameter count."""
    expected = hf.expected_shapes(hf.config_from_dict(config))
    problems = [
        f"{name}: checkpoint {tensors[name][1]}, architecture {shape}"
        for name, shape in expected.items()
        if name in tensors and tensors[name][1] != shape
    ]
    missing = sorted(set(expected) - set(tensors))
    if missing:
        problems.append(f"missing tensors {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    unexpected = sorted(set(tensors) - set(expected))
    if unexpected:
        problems.append(f"unexpected tensors {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
    if problems:
        raise CheckpointError("weights do not match config.json: " + "; ".join(problems))
    return sum(_numel(shape) for _, shape in tensors.values())


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


def available_memory_bytes() -> int:
    """MemAvailable of /proc/meminfo (Linux); elsewhere no limit."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62


def check_memory(parameters: int, limit_bytes: int) -> None:
    """The import scores in float32 on the CPU: 4 bytes a parameter plus a reserve must fit the limit."""
    needed = 4 * parameters + ACTIVATION_RESERVE
    if needed > limit_bytes:
        raise CheckpointError(
            f"the model needs about {needed / 2**30:.2f} GiB ({parameters:,} parameters in float32 plus "
            f"{ACTIVATION_RESERVE >> 20} MiB) but the memory limit is {limit_bytes / 2**30:.2f} GiB"
        )


def model_max_len(config: dict, source: Path, cap: int) -> int:
    """The model's own input limit (tokenizer's model_max_length, else its position table), capped."""
    limits = [cap]
    tokenizer_limit = _tokenizer_config(source).get("model_max_length")
    if isinstance(tokenizer_limit, int) and tokenizer_limit > 0:
        limits.append(tokenizer_limit)
    positions = config.get("max_position_embeddings")
    if isinstance(positions, int) and positions > 0:
        # RoBERTa's table starts at padding_idx + 1: two rows are never used by a token
        limits.append(positions - 2 if config.get("model_type") == "roberta" else positions)
    return min(limits)


def _as_sequence_classifier(config: dict, outputs: int) -> dict:
    """An OpenRLHF config rewritten as the built-in `*ForSequenceClassification` with `outputs` labels."""
    rewritten = {k: v for k, v in config.items() if k not in ("id2label", "label2id")}
    rewritten["architectures"] = [hf.sequence_classifier_name(config["model_type"])]
    rewritten["num_labels"] = outputs
    return rewritten


def _openrlhf_spec(config: dict, max_len: int, label: int) -> hf.HFSpec:
    normalize = bool(config.get("normalize_reward"))
    return hf.HFSpec(
        family="decoder",
        max_len=max_len,
        label_index=label,
        pooling="last_token",
        append_eos=True,
        reward_mean=float(config.get("mean", 0.0)) if normalize else 0.0,
        reward_std=float(config.get("std", 1.0)) if normalize else 1.0,
    )


def inspect_checkpoint(
    source: Path,
    label_index: int | None = None,
    max_len: int = DEFAULT_MAX_LEN,
    memory_limit: int | None = None,
) -> ImportPlan:
    """Every check that needs no weights loaded; the plan of the import."""
    if not (source / "config.json").is_file():
        raise CheckpointError(f"{source}: no config.json (expected a Hugging Face model directory)")
    config = _read_json(source / "config.json")
    refuse_remote_code(source, config)
    family = hf.family_of(config.get("model_type", ""))
    shards = find_shards(source)
    tensors = read_headers(source, shards)
    head_key = _openrlhf_head(config, tensors)
    outputs = output_count(config, tensors, head_key)
    label = choose_label(outputs, label_index)
    length = model_max_len(config, source, max_len)
    if head_key is None:
        plan = ImportPlan(source, config, shards, hf.HFSpec(family, length, label), "transformers")
    else:
        if family != "decoder":
            raise CheckpointError(
                f"a value-head checkpoint of an encoder ({config['model_type']}) is not supported"
            )
        tensors["score.weight"] = tensors.pop(head_key)
        config = _as_sequence_classifier(config, outputs)
        plan = ImportPlan(source, config, shards, _openrlhf_spec(config, length, label), "openrlhf", head_key)
    plan.parameters = check_shapes(plan.config, tensors)
    check_memory(plan.parameters, available_memory_bytes() if memory_limit is None else memory_limit)
    skipped = sorted(p.name for p in source.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if skipped:
        plan.notes.append(f"pickle files not copied: {skipped}")
    return plan


def copy_checkpoint(plan: ImportPlan, target: Path) -> None:
    """The checkpoint's config, tokenizer files and weights into `target` (OpenRLHF head renamed)."""
    target.mkdir()
    for path in sorted(plan.source.iterdir()):
        if path.is_file() and not path.is_symlink() and path.suffix in COPIED_SUFFIXES:
            shutil.copyfile(path, target / path.name)
    (target / "config.json").write_text(json.dumps(plan.config, indent=2, sort_keys=True))
    if plan.head_key is not None and plan.head_key != "score.weight":
        _rename_head(plan, target)


def _rename_head(plan: ImportPlan, target: Path) -> None:
    shard = next(s for s in plan.shards if plan.head_key in read_safetensors_header(target / s))
    tensors = load_file(str(target / shard))
    tensors["score.weight"] = tensors.pop(plan.head_key)
    save_file(tensors, str(target / shard), metadata={"format": "pt"})
    if (target / SHARD_INDEX).is_file():
        index = _read_json(target / SHARD_INDEX)
        index["weight_map"]["score.weight"] = index["weight_map"].pop(plan.head_key)
        (target / SHARD_INDEX).write_text(json.dumps(index, indent=2, sort_keys=True))


def calibration_pairs(paths: Sequence[Path], limit: int) -> list[PreferencePair]:
    """Up to `limit` pairs, taken in turn from each file so that every source is represented."""
    per_file = [read_pairs(path) for path in paths]
    mixed = [pair for group in zip(*per_file, strict=False) for pair in group]
    return mixed[:limit]


def calibrate(backend: hf.HFBackend, pairs: list[PreferencePair]) -> dict:
    """metrics.json of an imported version: calibration and pair accuracy on the calibration pairs."""
    prompts = [p.prompt for p in pairs]
    chosen = backend_rewards(backend, prompts, [p.chosen for p in pairs])
    rejected = backend_rewards(backend, prompts, [p.rejected for p in pairs])
    rewards = torch.cat([chosen, rejected])
    return {
        "reward_mean": rewards.mean().item(),
        "reward_std": rewards.std().item(),
        "calibration_pairs": len(pairs),
        "calibration_accuracy": ((chosen > rejected).float() + 0.5 * (chosen == rejected).float())
        .mean()
        .item(),
    }


def import_model(
    source: Path,
    store: Path,
    pairs: Sequence[Path] = (),
    version: str | None = None,
    label_index: int | None = None,
    max_len: int = DEFAULT_MAX_LEN,
    memory_limit: int | None = None,
    calibration_limit: int = 200,
    make_current: bool = True,
) -> Path:
    """Inspect, copy, calibrate and publish a Hugging Face checkpoint; returns the version directory."""
    plan = inspect_checkpoint(Path(source), label_index, max_len, memory_limit)
    pair_files = list(pairs) or BUNDLED_PAIRS
    if not pair_files:
        raise CheckpointError(
            "no calibration pairs: pass --pairs (the bundled data/ sample is not installed)"
        )
    sample = calibration_pairs(pair_files, calibration_limit)

    def write_files(directory: Path) -> None:
        copy_checkpoint(plan, directory / hf.HF_DIR)
        backend = hf.HFBackend.load(directory / hf.HF_DIR, plan.spec, torch.device("cpu"))
        backend.prepare(torch.float32, torch.device("cpu"))
        config = {"format": FORMAT_VERSION, "backend": "hf", "hf": plan.spec.to_dict()}
        (directory / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
        metrics = calibrate(backend, sample)
        (directory / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))

    provenance = {
        "imported_from": str(Path(source).resolve()),
        "layout": plan.layout,
        "architecture": plan.config["architectures"][0] if plan.config.get("architectures") else None,
        "parameters": plan.parameters,
        "calibration_data": [str(p) for p in pair_files],
        "notes": plan.notes,
    }
    return publish_version(store, write_files, version, {"import": provenance}, make_current)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reward-import", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="local Hugging Face model directory")
    parser.add_argument(
        "--model-store", type=Path, default=default_of("model_store"), help="store to publish into"
    )
    parser.add_argument("--version", default=None, help="version name (default: v<UTC time>-<pid>)")
    parser.add_argument("--label-index", type=int, default=None, help="output used as reward (multi-label)")
    parser.add_argument("--pairs", type=Path, nargs="*", default=[], help="calibration pairs (JSONL)")
    parser.add_argument("--calibration-pairs", type=int, default=200, help="pairs scored for calibration")
    parser.add_argument("--max-len", type=int, default=DEFAULT_MAX_LEN, help="cap of tokens per input")
    parser.add_argument("--memory-limit-mb", type=int, default=None, help="default: available memory")
    parser.add_argument("--no-activate", action="store_true", help="publish without making it CURRENT")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads for the calibration")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    limit = None if args.memory_limit_mb is None else args.memory_limit_mb << 20
    try:
        published = import_model(
            args.checkpoint, args.model_store, args.pairs, args.version, args.label_index, args.max_len,
            limit, args.calibration_pairs, not args.no_activate,
        )  # fmt: skip
    except (CheckpointError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    metrics = json.loads((published / "metrics.json").read_text())
    print(
        f"published {published.name} in {args.model_store}: reward_mean {metrics['reward_mean']:.4f}, "
        f"reward_std {metrics['reward_std']:.4f}, pair accuracy {metrics['calibration_accuracy']:.3f} "
        f"on {metrics['calibration_pairs']} calibration pairs"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
