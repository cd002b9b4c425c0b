"""Train a reward model on prepared pairs and publish it into the model store.

    reward-train --data pairs.jsonl --model-store model_store [--epochs 3 --batch-size 8 --lr 2e-5 ...]
    torchrun --nproc_per_node 2 -m app.training.trainer --data pairs.jsonl ...   (DistributedDataParallel)

Reads the `train` and `validation` records of the prepared files, trains with the Bradley-Terry loss
(plus optional length-decorrelation and centering terms), validates every epoch, keeps the best
epoch's weights, and publishes them atomically with their tokenizer, metrics and training curve.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as torch_dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from app.config import default_of
from app.model import RewardModel, RewardModelConfig
from app.store import publish_version, save_checkpoint_files
from app.tokenizer import EncodingSpec, PairTokenizer, train_tokenizer
from app.training.batching import length_grouped_batches, shard_batches
from app.training.frozen import UpperLayers, cached_lower_states, pad_states, upper_rewards
from app.training.losses import bradley_terry_loss, centering_penalty, length_correlation_penalty
from app.training.pairs import TRAIN, VALIDATION, PreferencePair, fingerprint, read_pairs
from app.training.plots import plot_training_curves
from app.training.refusal import refusal_check
from app.training.scoring import rewards_for_ids, score_responses

SCRATCH = "scratch"


@dataclass
class TrainConfig:
    data: list[str]  # prepared pair files (records carry split = train / validation)
    model_store: str = str(default_of("model_store"))  # where the version is published
    version: str | None = None  # version name; default: a timestamp
    init: str = SCRATCH  # "scratch" (train a tokenizer + model) or a pretrained encoder name
    epochs: int = 3
    batch_size: int = 8  # pairs per step per process
    lr: float = 2e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1  # share of steps with a linear warmup, then linear decay to 0
    seed: int = 0
    patience: int = 0  # stop after this many epochs without a better validation score; 0 = never
    select_by: str = "accuracy"  # validation score picking the kept epoch: accuracy, loss, source_mean
    hidden: int = 768
    layers: int = 3
    heads: int = 8
    ffn_ratio: int = 4
    dropout: float = 0.1
    max_len: int = 256
    vocab_size: int = 16000  # BPE vocabulary trained on the training texts (scratch only)
    freeze_layers: int = -1  # pretrained only: freeze the embeddings and this many lower layers; -1 = none
    feature_cache: str | None = None  # directory caching the frozen layers' outputs between runs
    # loss weight per source, or per source/kind of synthetic pairs (e.g. synthetic/refusal); default 1
    source_weights: dict[str, float] = field(default_factory=dict)
    balance_sources: bool = False  # weight sources so each contributes equally, whatever its size
    # per source, equal weight to pairs won by the longer and by the shorter answer: in the named sources,
    # every source when the list is empty; None = off
    length_balance: list[str] | None = None
    length_penalty: float = 0.0  # weight of the squared reward/length correlation per batch
    center_penalty: float = 0.0  # weight of the squared mean reward per batch
    weights_dtype: str = "float32"  # dtype of the published weights: float32, float16 or bfloat16
    amp: str = "auto"  # mixed precision on CUDA: auto (bf16 if supported, else fp16), bf16, fp16, off
    device: str = "auto"  # auto, cpu, cuda
    threads: int = 2  # torch CPU threads per process
    progress: bool = True  # show a progress bar


@dataclass(frozen=True)
class Distributed:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@dataclass
class EncodedPairs:
    pairs: list[PreferencePair]
    chosen: list[list[int]]
    rejected: list[list[int]]
    weights: torch.Tensor  # (N,) loss weight per pair, mean 1
    states: list[torch.Tensor] | None = None  # cached frozen-layer outputs: N chosen then N rejected

    def inputs(self) -> list[list[int]]:
        """Every sequence: N chosen then N rejected."""
        return self.chosen + self.rejected

    def lengths(self) -> list[int]:
        return [max(len(c), len(r)) for c, r in zip(self.chosen, self.rejected, strict=True)]


@dataclass
class Validation:
    loss: float
    accuracy: float
    per_source: dict[str, dict]
    chosen: torch.Tensor  # (N,) rewards
    rejected: torch.Tensor  # (N,)

    def describe(self) -> str:
        per_source = "  ".join(f"{name} {v['accuracy']:.3f}" for name, v in self.per_source.items())
        return f"val loss {self.loss:.4f}  val acc {self.accuracy:.4f}  ({per_source})"

    def score(self, select_by: str) -> float:
        """Higher is better. source_mean: the mean of per-source accuracies, each source counting alike."""
        if select_by == "source_mean":
            return sum(v["accuracy"] for v in self.per_source.values()) / len(self.per_source)
        return self.accuracy if select_by == "accuracy" else -self.loss


# ---------------------------------------------------------------- setup


@dataclass
class Run:
    """Everything one training run works with, built once by `setup_run`."""

    cfg: TrainConfig
    dist: Distributed
    model: RewardModel
    # what a step calls: the model or its upper layers, maybe in DistributedDataParallel
    wrapped: torch.nn.Module
    upper: UpperLayers | None  # the trainable top when the lower layers are frozen and cached
    tokenizer: PairTokenizer
    train_data: EncodedPairs
    valid_data: EncodedPairs
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler  # per step: linear warm-up, then linear decay
    total_steps: int  # optimizer steps of the whole run (all epochs)
    amp_dtype: torch.dtype | None
    scaler: torch.amp.GradScaler
    provenance: dict | None


def setup_distributed(device: str) -> Distributed:
    """One process per device under torchrun (WORLD_SIZE > 1), else a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    torch_device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if world_size > 1:
        if use_cuda:
            torch.cuda.set_device(torch_device)
        torch_dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        return Distributed(torch_dist.get_rank(), world_size, torch_device)
    return Distributed(0, 1, torch_device)


def broadcast_from_main(value: object, dist: Distributed) -> object:
    if dist.world_size == 1:
        return value
    holder = [value]
    torch_dist.broadcast_object_list(holder, src=0)
    return holder[0]


def load_splits(paths: Sequence[str]) -> tuple[list[PreferencePair], list[PreferencePair]]:
    pairs = [pair for path in paths for pair in read_pairs(path)]
    train = [p for p in pairs if p.split == TRAIN]
    valid = [p for p in pairs if p.split == VALIDATION]
    if not train or not valid:
        raise ValueError(
            f"{', '.join(paths)}: {len(train)} train and {len(valid)} validation pairs; need both "
            "(prepare the data with reward-prepare-data, which splits by prompt)"
        )
    return train, valid


def build_scratch(cfg: TrainConfig, train: Sequence[PreferencePair], dist: Distributed):
    """Train the BPE tokenizer on the training texts (rank 0, shared with the others), build the model."""
    tokenizer_json = None
    if dist.is_main:
        texts = (text for p in train for text in (p.prompt, p.chosen, p.rejected))
        tokenizer_json = train_tokenizer(texts, vocab_size=cfg.vocab_size).to_str()
    from tokenizers import Tokenizer

    tokenizer = PairTokenizer(
        Tokenizer.from_str(broadcast_from_main(tokenizer_json, dist)), EncodingSpec(cfg.max_len)
    )
    model_cfg = RewardModelConfig(
        vocab_size=tokenizer.vocab_size,
        max_len=cfg.max_len,
        hidden=cfg.hidden,
        layers=cfg.layers,
        heads=cfg.heads,
        ffn_ratio=cfg.ffn_ratio,
        dropout=cfg.dropout,
        pad_id=tokenizer.pad_id,
    )
    return RewardModel(model_cfg), tokenizer, None


def build_pretrained(cfg: TrainConfig):
    """A model whose encoder carries pretrained weights; the lower layers optionally frozen."""
    from app.training.pretrained import load_pretrained

    model, tokenizer, provenance = load_pretrained(cfg.init, max_len=cfg.max_len, dropout=cfg.dropout)
    if cfg.freeze_layers >= 0:
        frozen = [model.embeddings, *model.encoder.layers[: cfg.freeze_layers]]
        for module in frozen:
            module.requires_grad_(False)
    return model, tokenizer, provenance


def source_weight(pair: PreferencePair, weights: dict[str, float]) -> float:
    """The weight named "source/kind" (e.g. synthetic/refusal), else "source", else 1."""
    return weights.get(f"{pair.source}/{pair.kind}", weights.get(pair.source, 1.0))


def pair_weights(pairs: Sequence[PreferencePair], cfg: TrainConfig) -> torch.Tensor:
    """Loss weight per pair from the source weights and the balancing options, scaled to mean 1."""
    weights = torch.tensor([source_weight(p, cfg.source_weights) for p in pairs], dtype=torch.float64)
    sources = Counter(p.source for p in pairs)
    if cfg.balance_sources:
        weights *= torch.tensor([len(pairs) / (len(sources) * sources[p.source]) for p in pairs])
    if cfg.length_balance is not None:
        unknown = set(cfg.length_balance) - set(sources)
        if unknown:
            raise ValueError(f"--length-balance names sources not in the data: {sorted(unknown)}")
        named = set(cfg.length_balance) or set(sources)
        longer_wins = Counter((p.source, len(p.chosen) > len(p.rejected)) for p in pairs)
        weights *= torch.tensor(
            [
                sources[p.source] / (2 * longer_wins[p.source, len(p.chosen) > len(p.rejected)])
                if p.source in named
                else 1.0
                for p in pairs
            ]
        )
    if weights.sum() <= 0:
        raise ValueError("every training pair has weight 0: check --source-weights")
    return (weights * len(pairs) / weights.sum()).float()


def encode(pairs: list[PreferencePair], tokenizer: PairTokenizer, weights: torch.Tensor) -> EncodedPairs:
    prompts = [p.prompt for p in pairs]
    chosen = tokenizer.encode_pairs(prompts, [p.chosen for p in pairs])
    rejected = tokenizer.encode_pairs(prompts, [p.rejected for p in pairs])
    return EncodedPairs(pairs, chosen, rejected, weights)


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, total_steps: int):
    """AdamW (no decay on biases and norms), linear warmup then linear decay to zero."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() > 1], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() <= 1], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr)
    warmup = max(1, int(cfg.warmup_ratio * total_steps))

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)


def autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """Mixed precision on CUDA only; CPU trains in float32."""
    if device.type != "cuda" or cfg.amp == "off":
        return None
    if cfg.amp == "fp16" or (cfg.amp == "auto" and not torch.cuda.is_bf16_supported()):
        return torch.float16
    return torch.bfloat16


# ---------------------------------------------------------------- training


def objective(
    rewards: torch.Tensor, lengths: torch.Tensor, weights: torch.Tensor, cfg: TrainConfig
) -> torch.Tensor:
    """rewards (2B,) = chosen then rejected; lengths (2B,) response characters; weights (B,)."""
    chosen, rejected = rewards.chunk(2)
    loss = bradley_terry_loss(chosen, rejected, weights)
    if cfg.length_penalty:
        loss = loss + cfg.length_penalty * length_correlation_penalty(rewards, lengths)
    if cfg.center_penalty:
        loss = loss + cfg.center_penalty * centering_penalty(rewards)
    return loss


def batch_tensors(data: EncodedPairs, batch: list[int], tokenizer: PairTokenizer, device: torch.device):
    """Chosen rows then rejected rows in one padded batch (token ids, or cached states when the lower
    layers are frozen): one forward pass per step."""
    rows = batch + [len(data.pairs) + i for i in batch]
    if data.states is None:
        sequences = data.inputs()
        input_ids, mask = tokenizer.pad([sequences[i] for i in rows])
    else:
        input_ids, mask = pad_states([data.states[i] for i in rows])
    lengths = torch.tensor(
        [len(data.pairs[i].chosen) for i in batch] + [len(data.pairs[i].rejected) for i in batch]
    )
    return input_ids.to(device), mask.to(device), lengths.to(device), data.weights[batch].to(device)


def gather_rewards(score: Callable[[list[int]], torch.Tensor], count: int, dist: Distributed) -> torch.Tensor:
    """score(indices) for all `count` items, each rank scoring a strided share: -> (count,) on every rank."""
    mine = list(range(dist.rank, count, dist.world_size))
    rewards = score(mine).tolist()
    if dist.world_size == 1:
        return torch.tensor(rewards)
    shares: list = [None] * dist.world_size
    torch_dist.all_gather_object(shares, (mine, rewards))
    out = torch.empty(count)
    for indices, values in shares:
        out[indices] = torch.tensor(values)
    return out


def summarize(chosen: torch.Tensor, rejected: torch.Tensor, pairs: Sequence[PreferencePair]) -> Validation:
    gaps = chosen - rejected
    losses = -torch.nn.functional.logsigmoid(gaps)
    correct = (gaps > 0).float() + 0.5 * (gaps == 0).float()  # a tie is a coin flip, as in evaluation
    per_source = {}
    for source in sorted({p.source for p in pairs}):
        idx = torch.tensor([i for i, p in enumerate(pairs) if p.source == source])
        per_source[source] = {
            "n": len(idx),
            "accuracy": correct[idx].mean().item(),
            "loss": losses[idx].mean().item(),
        }
    return Validation(losses.mean().item(), correct.mean().item(), per_source, chosen, rejected)


def validate(run: Run, full_model: bool = False) -> Validation:
    """Validation loss and accuracy; from cached frozen-layer states when there are some, unless
    `full_model` asks for the whole model's forward pass (what the service will compute)."""
    data = run.valid_data
    if run.upper is not None and not full_model:
        score = lambda rows: upper_rewards(run.upper, [data.states[i] for i in rows])  # noqa: E731
    else:
        sequences = data.inputs()
        score = lambda rows: rewards_for_ids(run.model, run.tokenizer, [sequences[i] for i in rows])  # noqa: E731
    chosen, rejected = gather_rewards(score, 2 * len(data.pairs), run.dist).chunk(2)
    return summarize(chosen, rejected, data.pairs)


# ---------------------------------------------------------------- artifact


def counts_by(pairs: Sequence[PreferencePair]) -> dict[str, int]:
    counts = Counter(p.source if p.kind == "real" else f"{p.source}/{p.kind}" for p in pairs)
    return dict(sorted(counts.items()))


def round_weights(model: RewardModel, weights_dtype: str) -> None:
    """Make the in-memory weights exactly what the published file will hold."""
    dtype = getattr(torch, weights_dtype)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(tensor.to(dtype).to(tensor.dtype))


def build_metrics(valid: Validation, curves: dict, train: list, valid_pairs: list, extra: dict) -> dict:
    rewards = torch.cat([valid.chosen, valid.rejected])
    return {
        "reward_mean": rewards.mean().item(),
        "reward_std": rewards.std().item(),
        "validation_accuracy": valid.accuracy,
        "validation_loss": valid.loss,
        "validation_per_source": valid.per_source,
        "curves": curves,
        "data_counts": {"train": counts_by(train), "validation": counts_by(valid_pairs)},
        **extra,
    }


def publish(model, tokenizer, cfg: TrainConfig, metrics: dict, manifest_extra: dict) -> Path:
    def write_files(directory: Path) -> None:
        save_checkpoint_files(directory, model, tokenizer, metrics, weights_dtype=cfg.weights_dtype)
        plot_training_curves(metrics["curves"], directory / "training_curve.png")

    return publish_version(cfg.model_store, write_files, version=cfg.version, manifest_extra=manifest_extra)


# ---------------------------------------------------------------- the run


def epoch_batches(data: EncodedPairs, cfg: TrainConfig, epoch: int, dist: Distributed) -> list[list[int]]:
    return shard_batches(
        length_grouped_batches(data.lengths(), cfg.batch_size, cfg.seed + epoch), dist.rank, dist.world_size
    )


def train(cfg: TrainConfig) -> Path | None:
    """The whole run; returns the published version's directory on rank 0 (None on the others)."""
    torch.set_num_threads(cfg.threads)
    dist = setup_distributed(cfg.device)
    try:
        published = run_training(cfg, dist)
        if dist.world_size > 1:
            torch_dist.barrier()  # the other ranks wait while rank 0 publishes; then all leave together
        return published
    finally:
        if dist.world_size > 1:
            torch_dist.destroy_process_group()


def run_training(cfg: TrainConfig, dist: Distributed) -> Path | None:
    """Set up, fit, validate with the published weights, and publish (rank 0)."""
    started = time.monotonic()
    run = setup_run(cfg, dist)
    curves, best_epoch = fit(run)
    round_weights(run.model, cfg.weights_dtype)
    final = validate(run, full_model=True)
    if not dist.is_main:
        return None
    extra = {
        "best_epoch": best_epoch,
        "epochs_run": len(curves["epoch"]),
        "training_seconds": round(time.monotonic() - started, 1),
        "parameters": run.model.num_parameters(),
        "world_size": dist.world_size,
    }
    train_pairs, valid_pairs = run.train_data.pairs, run.valid_data.pairs
    extra["refusal_check"] = validation_refusal_check(run, final)
    metrics = build_metrics(final, curves, train_pairs, valid_pairs, extra)
    manifest_extra = {
        "training_args": asdict(cfg),
        "data_fingerprint": fingerprint(train_pairs),
        "validation_fingerprint": fingerprint(valid_pairs),
        "data_counts": metrics["data_counts"],
        "pretrained": run.provenance,
    }
    return publish(run.model.cpu(), run.tokenizer, cfg, metrics, manifest_extra)


def setup_run(cfg: TrainConfig, dist: Distributed) -> Run:
    train_pairs, valid_pairs = load_splits(cfg.data)
    torch.manual_seed(cfg.seed)
    model, tokenizer, provenance = (
        build_scratch(cfg, train_pairs, dist) if cfg.init == SCRATCH else build_pretrained(cfg)
    )
    model.to(dist.device)
    train_data = encode(train_pairs, tokenizer, pair_weights(train_pairs, cfg))
    valid_data = encode(valid_pairs, tokenizer, torch.ones(len(valid_pairs)))
    upper = None
    if cfg.init != SCRATCH and cfg.freeze_layers >= 0:
        for data in (train_data, valid_data):
            progress = cfg.progress and dist.is_main
            cache = Path(cfg.feature_cache) if cfg.feature_cache else None
            data.states = cached_lower_states(
                model, tokenizer, data.inputs(), cfg.freeze_layers, cache, progress
            )
        upper = UpperLayers(model, cfg.freeze_layers)
    trained = upper if upper is not None else model
    total_steps = cfg.epochs * len(epoch_batches(train_data, cfg, 0, dist))
    optimizer, scheduler = make_optimizer(model, cfg, total_steps)
    amp_dtype = autocast_dtype(cfg, dist.device)
    return Run(
        cfg=cfg,
        dist=dist,
        model=model,
        wrapped=DistributedDataParallel(trained) if dist.world_size > 1 else trained,
        upper=upper,
        tokenizer=tokenizer,
        train_data=train_data,
        valid_data=valid_data,
        optimizer=optimizer,
        scheduler=scheduler,
        total_steps=total_steps,
        amp_dtype=amp_dtype,
        scaler=torch.amp.GradScaler(dist.device.type, enabled=amp_dtype == torch.float16),
        provenance=provenance,
    )


def fit(run: Run) -> tuple[dict[str, list[float]], int]:
    """Train epoch by epoch, validating after each; leaves the best epoch's weights in the model.
    Returns the curves and the best epoch."""
    cfg, dist = run.cfg, run.dist
    curves: dict[str, list[float]] = {
        k: [] for k in ("epoch", "train_loss", "val_loss", "val_accuracy", "lr")
    }
    best_score, best_epoch, best_state = float("-inf"), 0, None
    bar = tqdm(total=run.total_steps, disable=not (cfg.progress and dist.is_main), desc="train")
    for epoch in range(1, cfg.epochs + 1):
        batches = epoch_batches(run.train_data, cfg, epoch, dist)
        train_loss = train_epoch(run, batches, bar)
        valid = validate(run)
        lr = run.scheduler.get_last_lr()[0]
        for key, value in zip(curves, (epoch, train_loss, valid.loss, valid.accuracy, lr), strict=True):
            curves[key].append(value)
        if dist.is_main:
            tqdm.write(f"epoch {epoch}: train loss {train_loss:.4f}  {valid.describe()}")
        if valid.score(cfg.select_by) > best_score:
            best_score, best_epoch = valid.score(cfg.select_by), epoch
            best_state = {k: v.detach().clone().cpu() for k, v in run.model.state_dict().items()}
        elif cfg.patience and epoch - best_epoch >= cfg.patience:
            break
    bar.close()
    run.model.load_state_dict(best_state)
    return curves, best_epoch


def train_epoch(run: Run, batches: list[list[int]], bar: tqdm) -> float:
    """One pass over this rank's batches; returns the mean training loss."""
    optimizer, scheduler = run.optimizer, run.scheduler
    run.wrapped.train()
    total = 0.0
    for batch in batches:
        input_ids, mask, lengths, weights = batch_tensors(
            run.train_data, batch, run.tokenizer, run.dist.device
        )
        with torch.autocast(run.dist.device.type, dtype=run.amp_dtype, enabled=run.amp_dtype is not None):
            rewards = run.wrapped(input_ids, mask)
        loss = objective(rewards.float(), lengths, weights, run.cfg)
        optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        run.scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), 1.0)
        run.scaler.step(optimizer)
        run.scaler.update()
        scheduler.step()
        total += loss.item()
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
    return total / max(1, len(batches))


def validation_refusal_check(run: Run, final: Validation) -> dict[str, dict]:
    """The refusal check (app/training/refusal.py) on the validation pairs, with the published weights."""

    def score(prompts: list[str], responses: list[str]):
        return score_responses(run.model, run.tokenizer, prompts, responses).numpy()

    chosen, rejected = final.chosen.numpy(), final.rejected.numpy()
    return refusal_check(run.valid_data.pairs, chosen, rejected, score)


# ---------------------------------------------------------------- command line


def parse_source_weights(spec: str) -> dict[str, float]:
    """'hh_harmless_base=2,synthetic=0.5' -> {"hh_harmless_base": 2.0, "synthetic": 0.5}."""
    weights = {}
    for item in filter(None, spec.split(",")):
        name, sep, value = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"expected SOURCE=WEIGHT, got {item!r}")
        weights[name.strip()] = float(value)
    return weights


def build_parser() -> argparse.ArgumentParser:
    defaults = TrainConfig(data=[])
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data", nargs="+", required=True, help="prepared pair files (reward-prepare-data output)"
    )
    parser.add_argument(
        "--source-weights",
        type=parse_source_weights,
        default={},
        help="loss weight per source or source/kind, e.g. hh_harmless_base=2,synthetic/refusal=0 (default 1)",
    )
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    parser.add_argument("--balance-sources", action="store_true", help=_field_help("balance_sources"))
    parser.add_argument(
        "--length-balance",
        nargs="*",
        metavar="SOURCE",
        default=None,
        help="per source, equal loss weight to training pairs won by the longer and by the shorter answer, "
        "in the named sources (every source when none is named)",
    )
    for name, value in asdict(defaults).items():
        if name in ("data", "source_weights", "progress", "balance_sources", "length_balance"):
            continue
        kind = type(value) if value is not None else str
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, default=value, help=_field_help(name))
    return parser


def _field_help(name: str) -> str:
    """The comment beside the TrainConfig field, so the CLI help and the config say the same thing."""
    for line in Path(__file__).read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith(f"{name}:") and "#" in stripped:
            return stripped.split("#", 1)[1].strip().replace("%", "%%")
    return ""


def main(argv: Sequence[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    cfg = TrainConfig(**args)
    if cfg.select_by not in ("accuracy", "loss", "source_mean"):
        raise SystemExit("--select-by must be accuracy, loss or source_mean")
    try:
        published = train(cfg)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if published is not None:
        print(f"published {published}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
