"""The reward model: tokens -> embedding -> transformer encoder -> masked mean pooling -> MLP head -> scalar.

Torch only. Training and serving both build the model from `RewardModelConfig`, which is saved as
`config.json` beside the weights so that a checkpoint rebuilds itself.
"""

from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)


@dataclass
class RewardModelConfig:
    vocab_size: int = 16000  # tokenizer vocabulary, padding id included
    max_len: int = 256  # longest input in tokens, special tokens included
    hidden: int = 768  # model width H (256-1024)
    layers: int = 3  # transformer encoder layers (2-6)
    heads: int = 8  # attention heads; hidden must divide by it
    ffn_ratio: int = 4  # feed-forward width = ffn_ratio * hidden
    dropout: float = 0.1  # dropout in encoder and head (0.05-0.2 when training from scratch)
    pad_id: int = 0  # padding token id; its embedding is never trained
    activation: str = "gelu"  # encoder feed-forward activation: gelu or relu
    layer_norm_eps: float = 1e-5  # 1e-12 for BERT-style pretrained encoders
    encoder: str = "scratch"  # flavour of encoder weights: scratch, or the pretrained source name

    def __post_init__(self) -> None:
        if self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be divisible by heads ({self.heads})")
        if self.activation not in ("gelu", "relu"):
            raise ValueError(f"activation must be 'gelu' or 'relu', got {self.activation!r}")
        for name in ("vocab_size", "max_len", "hidden", "layers", "heads", "ffn_ratio"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> RewardModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**data)


class Embeddings(nn.Module):
    """Token + learned position embeddings, then LayerNorm (the BERT layout, so pretrained weights fit)."""

    def __init__(self, cfg: RewardModelConfig):
        super().__init__()
        self.tokens = nn.Embedding(cfg.vocab_size, cfg.hidden, padding_idx=cfg.pad_id)
        self.positions = nn.Embedding(cfg.max_len, cfg.hidden)
        self.norm = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) ids -> (B, T, H); or packed ids (M,) with each token's `positions` (M,) -> (M, H)."""
        if positions is None:
            positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.tokens(input_ids) + self.positions(positions)
        return self.dropout(self.norm(x))


class RewardHead(nn.Module):
    """pooled[H] -> H -> H/2 -> 1."""

    def __init__(self, cfg: RewardModelConfig):
        super().__init__()
        half = cfg.hidden // 2
        self.net = nn.Sequential(
            nn.Linear(cfg.hidden, cfg.hidden),
            nn.ReLU(),
            nn.Dropout(cfg.dropout),
            nn.Linear(cfg.hidden, half),
            nn.ReLU(),
            nn.Dropout(cfg.dropout),
            nn.Linear(half, 1),
        )

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        # the head may run in a wider dtype than the encoder (fp32 head on a bf16 encoder: the reward
        # is not rounded to bf16's 8-bit mantissa, which would make close rewards tie)
        return self.net(pooled.to(self.net[0].weight.dtype)).squeeze(-1)  # (B,)


def masked_mean(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of hidden states over real tokens only, summed in float32: (B, T, H), (B, T) -> (B, H)."""
    mask = attention_mask.unsqueeze(-1).float()  # (B, T, 1)
    summed = (hidden.float() * mask).sum(dim=1)
    count = mask.sum(dim=1).clamp(min=1.0)
    return summed / count


class RewardModel(nn.Module):
    def __init__(self, cfg: RewardModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embeddings = Embeddings(cfg)
        layer = nn.TransformerEncoderLayer(
            d_model=cfg.hidden,
            nhead=cfg.heads,
            dim_feedforward=cfg.ffn_ratio * cfg.hidden,
            dropout=cfg.dropout,
            activation=cfg.activation,
            layer_norm_eps=cfg.layer_norm_eps,
            batch_first=True,
            norm_first=False,  # post-norm: BERT's layout, and what the nested-tensor fast path needs
        )
        # enable_nested_tensor: in eval mode, padded positions are skipped entirely (compute on real tokens)
        self.encoder = nn.TransformerEncoder(layer, num_layers=cfg.layers, enable_nested_tensor=True)
        self.head = RewardHead(cfg)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T) token ids and (B, T) mask of real tokens (1) -> (B,) rewards."""
        x = self.embeddings(input_ids)  # (B, T, H)
        padding = attention_mask == 0
        x = self.encoder(x, src_key_padding_mask=padding)  # (B, T, H)
        return self.head(masked_mean(x, attention_mask))

    def forward_packed(self, ids: torch.Tensor, lengths: torch.Tensor, rows: int = 0) -> torch.Tensor:
        """Inference on inputs packed without padding: the token ids of B inputs one after another (M,)
        and their lengths (B,) -> (B,) rewards, those `forward` gives in eval mode (no dropout).

        The embeddings, every linear layer and every norm run on the M real tokens as one (M, H) matrix,
        grown with zero rows to `rows` when that is larger (so that the matrix shapes, and the kernels a
        library compiles per shape, repeat across batches); only attention sees the (B, T) layout, with
        padded keys masked, through `scaled_dot_product_attention`. The encoder layers run as one
        TorchScript function: no Python, and no wait for the GIL, between their operations. On a CPU this
        is faster than the nested-tensor path of `forward`, whose attention multiplies each input alone.
        """
        batch, real = lengths.numel(), ids.numel()
        width = int(lengths.max())
        item = torch.repeat_interleave(torch.arange(batch, device=ids.device), lengths)  # (M,) owner
        position = torch.arange(real, device=ids.device) - (torch.cumsum(lengths, 0) - lengths)[item]
        slots = item * width + position  # each token's place in the (B, T) layout
        keys = torch.zeros(batch * width, dtype=torch.bool, device=ids.device)
        keys[slots] = True
        keys = keys.view(batch, 1, 1, width)  # attend to real tokens only
        x = F.pad(self.embeddings(ids, position), (0, 0, 0, max(rows - real, 0)))  # (R, H)
        weights = [w for layer in self.encoder.layers for w in layer_weights(layer)]
        cfg = self.cfg
        x = packed_layers()(
            x, slots, keys, real, weights, cfg.heads, cfg.layer_norm_eps, cfg.activation == "gelu"
        )
        summed = torch.zeros(batch, x.shape[1], device=ids.device).index_add_(0, item, x[:real].float())
        count = lengths.unsqueeze(-1).clamp(min=1).float()
        return self.head(summed / count)  # masked mean, summed in float32 (as masked_mean)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def layer_weights(layer: nn.TransformerEncoderLayer) -> list[torch.Tensor]:
    """The 12 tensors of one encoder layer in the order `encoder_layers_packed` reads them."""
    attention = layer.self_attn
    return [
        attention.in_proj_weight, attention.in_proj_bias, attention.out_proj.weight, attention.out_proj.bias,
        layer.norm1.weight, layer.norm1.bias, layer.linear1.weight, layer.linear1.bias,
        layer.linear2.weight, layer.linear2.bias, layer.norm2.weight, layer.norm2.bias,
    ]  # fmt: skip


def encoder_layers_packed(
    x: torch.Tensor,
    slots: torch.Tensor,
    keys: torch.Tensor,
    real: int,
    weights: list[torch.Tensor],
    heads: int,
    eps: float,
    gelu: bool,
) -> torch.Tensor:
    """Post-norm encoder layers (`layer_weights` of each, one after another) in eval mode on packed rows
    (R, H): the first `real` are tokens at `slots` of the (B, T) layout that `keys` (B, 1, 1, T) masks,
    the rest filler."""
    batch, width, hidden = keys.shape[0], keys.shape[-1], x.shape[1]
    filler = x.shape[0] - real
    for first in range(0, len(weights), 12):
        w = weights[first : first + 12]
        qkv = F.linear(x, w[0], w[1])  # (R, 3H)
        laid_out = qkv.new_zeros(batch * width, 3 * hidden)
        laid_out[slots] = qkv[:real]
        heads_view = laid_out.view(batch, width, 3, heads, hidden // heads)
        q_k_v = heads_view.permute(2, 0, 3, 1, 4)  # 3 x (B, h, T, d)
        mixed = F.scaled_dot_product_attention(q_k_v[0], q_k_v[1], q_k_v[2], attn_mask=keys)
        mixed = F.pad(mixed.transpose(1, 2).reshape(batch * width, hidden)[slots], [0, 0, 0, filler])
        x = F.layer_norm(x + F.linear(mixed, w[2], w[3]), [hidden], w[4], w[5], eps)
        inner = F.linear(x, w[6], w[7])
        inner = F.gelu(inner) if gelu else F.relu(inner)
        x = F.layer_norm(x + F.linear(inner, w[8], w[9]), [hidden], w[10], w[11], eps)
    return x


@functools.cache
def packed_layers() -> Callable[..., torch.Tensor]:
    """`encoder_layers_packed` compiled by TorchScript (once per process, on first use), or as it is
    where TorchScript cannot compile it (torch 2.13 deprecates `torch.jit.script`; a torch without it
    runs the same operations from Python, only with the GIL taken between them)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.script(encoder_layers_packed)
    except Exception as exc:  # noqa: BLE001 - any failure to compile leaves the eager function, which is exact
        log.warning("encoder layers run from Python: TorchScript failed (%s: %s)", type(exc).__name__, exc)
        return encoder_layers_packed
