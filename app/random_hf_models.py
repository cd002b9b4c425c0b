"""Tiny random Hugging Face reward models built locally (no hub): a tokenizer trained on the bundled
sample, a config, `save_pretrained(safe_serialization=True)`. Needs `transformers` (the [hf] extra).

For tests of the Hugging Face backend and for benchmarks of it (scripts/make_random_hf_model.py): their
rewards mean nothing. Nothing on the serving path imports this module."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from app.tokenizer import train_tokenizer
from app.training.pairs import read_pairs

DATA = Path(__file__).resolve().parents[1] / "data"
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
DECODER_SPECIALS = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>"]
ENCODER_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
TINY = {  # 32 wide, 2 layers: a model of about 50k parameters, one output
    "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
    "max_position_embeddings": 512, "num_labels": 1, "pad_token_id": 0,
}  # fmt: skip


def corpus(pairs_per_file: int = 120) -> list[str]:
    """Texts of the bundled sample pairs: tokenizer training data."""
    pairs = [pair for path in sorted(DATA.glob("*.jsonl")) for pair in read_pairs(path)[:pairs_per_file]]
    return [text for p in pairs for text in (p.prompt, p.chosen, p.rejected)]


def decoder_tokenizer(vocab_size: int = 400):
    from transformers import PreTrainedTokenizerFast

    tok = train_tokenizer(corpus(), vocab_size, min_frequency=0, special_tokens=DECODER_SPECIALS)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        unk_token="<unk>",
        eos_token="<|im_end|>",
        chat_template=CHAT_TEMPLATE,
    )


def encoder_tokenizer():
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=400, special_tokens=ENCODER_SPECIALS, show_progress=False)
    tok.train_from_iterator(corpus(), trainer=trainer)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]", model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )  # fmt: skip


def decoder_config(model_type: str = "qwen2", vocab_size: int = 400, **overrides):
    """A tiny decoder (TINY) with one output; `overrides` change any field (e.g. a larger model)."""
    from transformers import AutoConfig

    fields = {**TINY, "num_key_value_heads": 2}
    return AutoConfig.for_model(model_type, vocab_size=vocab_size, **{**fields, **overrides})


def encoder_config(model_type: str = "bert", vocab_size: int = 400, **overrides):
    from transformers import AutoConfig

    return AutoConfig.for_model(model_type, vocab_size=vocab_size, **{**TINY, **overrides})


def save_model(directory: Path, config, tokenizer, seed: int = 0, init_std: float = 0.2) -> Path:
    """A random classifier for `config` (weights ~ N(0, init_std)), saved as safetensors with `tokenizer`."""
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(config)
    with torch.no_grad():  # a wider init than transformers' spreads rewards: comparisons mean something
        for param in model.parameters():
            param.normal_(0.0, init_std)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory


def edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))
