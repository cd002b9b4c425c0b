"""Frozen lower layers, computed once.

When the embeddings and the first `start` encoder layers are frozen (fine-tuning only the top of a
pretrained encoder), their output for a given input never changes. It is computed once per sequence and
cached (float16, padding stripped; only the mean when every layer is frozen), optionally on disk, and
each training step runs only the layers above: on CPU this turns
hours of fine-tuning into minutes. The published model is the ordinary RewardModel: its frozen layers are
the pretrained ones, the layers above and the head are the trained ones.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.distributed as torch_dist
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from app.model import RewardModel, masked_mean
from app.tokenizer import PairTokenizer
from app.training.batching import ordered_batches


class UpperLayers(nn.Module):
    """The trainable top of a RewardModel (encoder layers `start`.., pooling, head); shares its parameters."""

    def __init__(self, model: RewardModel, start: int):
        super().__init__()
        self.layers = model.encoder.layers[start:]
        self.head = model.head

    def forward(self, states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T, H) lower-layer states and (B, T) mask -> (B,) rewards."""
        padding = attention_mask == 0
        x = states
        for layer in self.layers:
            x = layer(x, src_key_padding_mask=padding)
        return self.head(masked_mean(x, attention_mask))


@torch.no_grad()
def lower_states(
    model: RewardModel,
    tokenizer: PairTokenizer,
    ids: Sequence[Sequence[int]],
    start: int,
    batch_size: int = 32,
    progress: bool = False,
) -> list[torch.Tensor]:
    """Output of the embeddings and the first `start` layers for each input: (T_i, H) float16 each."""
    model.eval()
    device = next(model.parameters()).device
    out: list[torch.Tensor] = [torch.empty(0)] * len(ids)
    batches = ordered_batches([len(x) for x in ids], batch_size)
    for batch in tqdm(batches, desc=f"frozen layers 1-{start}", disable=not progress):
        input_ids, mask = tokenizer.pad([ids[i] for i in batch])
        x = model.embeddings(input_ids.to(device))
        for layer in model.encoder.layers[:start]:
            x = layer(x, src_key_padding_mask=mask.to(device) == 0)
        pooled = start == len(model.encoder.layers)  # nothing left to run per token: keep only the mean
        for row, i in enumerate(batch):
            real = x[row, : len(ids[i])]
            out[i] = (real.mean(dim=0, keepdim=True) if pooled else real).to("cpu", torch.float16).clone()
    return out


def cached_lower_states(
    model: RewardModel,
    tokenizer: PairTokenizer,
    ids: Sequence[Sequence[int]],
    start: int,
    cache_dir: Path | None,
    progress: bool = False,
) -> list[torch.Tensor]:
    """`lower_states`, read from / written to `cache_dir` when given (keyed by encoder, depth and inputs),
    so that runs differing only in what is trained above the frozen layers skip the expensive part.

    Under torch.distributed with a cache directory, each rank computes its share of the inputs and the
    shares meet through the directory (one machine, or a directory every rank sees); the whole is
    written once, atomically. Without a cache directory every rank computes every input."""
    if cache_dir is None:
        return lower_states(model, tokenizer, ids, start, progress=progress)
    digest = hashlib.sha256(f"{model.cfg.encoder}:{model.cfg.max_len}:{start}".encode())
    for sequence in ids:
        digest.update(torch.tensor(sequence, dtype=torch.int32).numpy().tobytes() + b";")
    path = Path(cache_dir) / f"states-{digest.hexdigest()[:24]}.safetensors"
    rank, world = _rank_and_world()
    if _everyone_has(path, world):
        return _read_states(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if world == 1:
        states = lower_states(model, tokenizer, ids, start, progress=progress)
        _write_states(path, states)
        return states
    run = _shared_token()  # share names of this run only: other jobs may use the same directory
    mine = list(range(rank, len(ids), world))
    share = lower_states(model, tokenizer, [ids[i] for i in mine], start, progress=progress)
    _write_states(_share_path(path, run, rank, world), share)
    torch_dist.barrier()  # every share written
    states: list[torch.Tensor] = [torch.empty(0)] * len(ids)
    for other in range(world):
        theirs = range(other, len(ids), world)
        for i, state in zip(theirs, _read_states(_share_path(path, run, other, world)), strict=True):
            states[i] = state
    torch_dist.barrier()  # every share read
    if rank == 0:
        _write_states(path, states)
        for other in range(world):
            _share_path(path, run, other, world).unlink(missing_ok=True)
    return states


def _rank_and_world() -> tuple[int, int]:
    if torch_dist.is_available() and torch_dist.is_initialized():
        return torch_dist.get_rank(), torch_dist.get_world_size()
    return 0, 1


def _everyone_has(path: Path, world: int) -> bool:
    """Whether every rank finds the cached file: decided together, so that no rank computes alone."""
    found = path.is_file()
    if world == 1:
        return found
    seen: list[bool] = [False] * world
    torch_dist.all_gather_object(seen, found)
    return all(seen)


def _shared_token() -> str:
    """A name for this run's shares, drawn by rank 0 and known to every rank."""
    token = [os.urandom(4).hex()]
    torch_dist.broadcast_object_list(token, src=0)
    return token[0]


def _share_path(path: Path, run: str, rank: int, world: int) -> Path:
    return path.with_name(f"{path.stem}.{run}.share-{rank}-of-{world}.safetensors")


def _read_states(path: Path) -> list[torch.Tensor]:
    flat = load_file(str(path))
    lengths = flat["lengths"].tolist()
    return list(torch.split(flat["states"], lengths)) if lengths else []


def _write_states(path: Path, states: Sequence[torch.Tensor]) -> None:
    """Written to a temporary name and renamed: a reader never sees half a file. No states (a rank with
    no share of a tiny input) is an empty file of the same form."""
    lengths = torch.tensor([s.shape[0] for s in states], dtype=torch.long)
    flat = torch.cat(list(states)) if states else torch.empty(0, dtype=torch.float16)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    save_file({"states": flat, "lengths": lengths}, str(partial))
    os.replace(partial, path)


def pad_states(states: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad (T_i, H) states: -> (B, T, H) float32 and (B, T) mask."""
    width, hidden = max(s.shape[0] for s in states), states[0].shape[1]
    padded = torch.zeros(len(states), width, hidden)
    mask = torch.zeros(len(states), width, dtype=torch.long)
    for row, s in enumerate(states):
        padded[row, : s.shape[0]] = s.float()
        mask[row, : s.shape[0]] = 1
    return padded, mask


@torch.no_grad()
def upper_rewards(upper: UpperLayers, states: Sequence[torch.Tensor], batch_size: int = 64) -> torch.Tensor:
    """Rewards from cached lower states, in input order: -> (N,) on CPU."""
    was_training = upper.training
    upper.eval()
    device = next(upper.parameters()).device
    out = torch.empty(len(states))
    for batch in ordered_batches([s.shape[0] for s in states], batch_size):
        padded, mask = pad_states([states[i] for i in batch])
        out[batch] = upper(padded.to(device), mask.to(device)).float().cpu()
    upper.train(was_training)
    return out
