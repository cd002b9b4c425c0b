"""Pair encoding shared by training and serving: (prompt, response) -> token ids -> padded tensors.

Layout of one input: `CLS prompt SEP response SEP`. When the pair is longer than `max_len`, the prompt
loses its beginning first (the latest turns matter most); the prompt keeps at least a quarter of the
budget when the response alone would fill it, and the response then keeps its beginning.

The cost of encoding is bounded by `max_len`, not by the text: a side never keeps more than the pair's
budget of tokens, so only a window of characters at its kept end is tokenized (the response's head, the
prompt's tail). Tokens of words wholly inside the window are the whole text's tokens (normalizers and
pre-tokenizers work locally; the model merges within one word), so the word cut by the window is dropped
and, when the rest still holds the budget, those are the exact ids; otherwise the whole text is encoded.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tokenizers import Encoding, Tokenizer, decoders, models, pre_tokenizers, trainers

SPECIAL_TOKENS = ("<pad>", "<unk>", "<cls>", "<sep>")  # ids 0..3 in tokenizers trained here
# characters tokenized per token of budget before falling back to the whole text: prose needs ~4-5,
# words of rare letters and digits fewer; a text that needs more (e.g. words longer than any token of a
# WordPiece vocabulary, one [UNK] each) pays for one window and then the whole text
WINDOW_CHARS_PER_TOKEN = 8


@dataclass(frozen=True)
class EncodingSpec:
    """How a pair becomes ids; saved in config.json so serving encodes exactly as training did."""

    max_len: int = 256  # total tokens, special tokens included
    cls_token: str = "<cls>"
    sep_token: str = "<sep>"
    pad_token: str = "<pad>"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> EncodingSpec:
        return cls(**data)


def split_budget(prompt_len: int, response_len: int, budget: int) -> tuple[int, int]:
    """How many prompt and response tokens fit into `budget` (see the module docstring)."""
    if prompt_len + response_len <= budget:
        return prompt_len, response_len
    prompt_keep = min(prompt_len, max(budget - response_len, budget // 4))
    return prompt_keep, min(response_len, budget - prompt_keep)


def right_pad(batch: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token ids to the longest member: -> (B, T) input ids, (B, T) attention mask."""
    width = max(len(ids) for ids in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, ids in enumerate(batch):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        mask[row, : len(ids)] = 1
    return input_ids, mask


class PairTokenizer:
    def __init__(self, tokenizer: Tokenizer, spec: EncodingSpec):
        self.tokenizer = tokenizer
        # Text is text: a literal "<sep>" or "[SEP]" in a prompt or response is tokenized as characters,
        # so a client cannot forge the pair boundary. Only encode_pairs places special tokens.
        self.tokenizer.encode_special_tokens = True
        self.spec = spec
        self.cls_id = self._token_id(spec.cls_token)
        self.sep_id = self._token_id(spec.sep_token)
        self.pad_id = self._token_id(spec.pad_token)

    def _token_id(self, token: str) -> int:
        token_id = self.tokenizer.token_to_id(token)
        if token_id is None:
            raise ValueError(f"special token {token!r} is not in the tokenizer's vocabulary")
        return token_id

    @classmethod
    def load(cls, path: str | Path, spec: EncodingSpec) -> PairTokenizer:
        return cls(Tokenizer.from_file(str(path)), spec)

    def save(self, path: str | Path) -> None:
        self.tokenizer.save(str(path))

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode_pairs(self, prompts: Sequence[str], responses: Sequence[str]) -> list[list[int]]:
        """Token ids for each pair, truncated to `spec.max_len`. Tokenizes the whole batch in Rust."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        budget = self.spec.max_len - 3
        prompt_ids = self._encode_bounded(prompts, budget, keep_end=True)
        response_ids = self._encode_bounded(responses, budget, keep_end=False)
        encoded = []
        for p, r in zip(prompt_ids, response_ids, strict=True):
            keep_p, keep_r = split_budget(len(p), len(r), budget)
            p_tail = p[len(p) - keep_p :]
            encoded.append([self.cls_id, *p_tail, self.sep_id, *r[:keep_r], self.sep_id])
        return encoded

    def _encode_bounded(self, texts: Sequence[str], budget: int, keep_end: bool) -> list[list[int]]:
        """The first (or, `keep_end`, the last) `budget` ids of each text, as the whole text gives them,
        tokenizing a window of `budget * WINDOW_CHARS_PER_TOKEN` characters (see the module docstring)."""
        window = budget * WINDOW_CHARS_PER_TOKEN
        cut = [text[-window:] if keep_end else text[:window] for text in texts]
        encodings = self.tokenizer.encode_batch(cut, add_special_tokens=False)
        ids = [
            e.ids if len(piece) == len(text) else whole_words(e, drop_first=keep_end)
            for e, piece, text in zip(encodings, cut, texts, strict=True)
        ]
        short = [i for i, piece in enumerate(cut) if len(piece) < len(texts[i]) and len(ids[i]) < budget]
        if short:  # the window did not hold the budget: the whole text, for those only
            whole = self.tokenizer.encode_batch([texts[i] for i in short], add_special_tokens=False)
            for i, encoding in zip(short, whole, strict=True):
                ids[i] = encoding.ids
        return [one[len(one) - budget :] if keep_end and len(one) > budget else one[:budget] for one in ids]

    def pad(self, batch: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-pad to the longest member: -> (B, T) input ids, (B, T) attention mask."""
        return right_pad(batch, self.pad_id)

    def encode_batch(
        self, prompts: Sequence[str], responses: Sequence[str]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.pad(self.encode_pairs(prompts, responses))


def whole_words(encoding: Encoding, drop_first: bool) -> list[int]:
    """Ids of an encoded window without the word the window's edge may have cut (its first or last)."""
    words = encoding.word_ids
    if not words:
        return []
    edge = words[0] if drop_first else words[-1]
    return [token for token, word in zip(encoding.ids, words, strict=True) if word != edge]


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 16000,
    min_frequency: int = 2,
    special_tokens: Sequence[str] = SPECIAL_TOKENS,
) -> Tokenizer:
    """Byte-level BPE trained on `texts`; the special tokens take the first ids (here `<pad>` is 0)."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer
