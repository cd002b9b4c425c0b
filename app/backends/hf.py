"""Hugging Face `*ForSequenceClassification` reward models behind the backend interface.

Two families, each rendered the way such models are trained:
- decoders (Llama, Mistral, Qwen2/Qwen3, Gemma/Gemma2, Phi-3): the conversation through the tokenizer's
  own chat template (prompt as the user turn, response as the assistant turn), tokenized without adding
  special tokens again (the template places them), scored at the last token: the rightmost token that
  is not the pad token, as `transformers` pools (TRL's `RewardTrainer` trains through that forward), or
  the last token outright for checkpoints trained by OpenRLHF, which end every input with the EOS
  token (`append_eos`) and pool at the last attended position;
- encoders (BERT, RoBERTa, DeBERTa-v2): the (prompt, response) text pair, scored from the classifier.

A pair longer than `max_len` tokens loses the beginning of its prompt first; only when the rendered
response alone does not fit does the response lose its end (the template's closing tokens stay).
Inputs are right-padded and the pad positions masked, so every real token sits at the position it has
alone and a reward does not depend on its batch.

Loading never runs code from the checkpoint: built-in classes only (`trust_remote_code=False`),
safetensors weights only. `transformers` is imported here and only when an HF version is loaded, so
the default install does not need it (the `[hf]` extra).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from app.backends import EncodeError
from app.errors import CheckpointError
from app.tokenizer import right_pad

HF_DIR = "hf"  # the checkpoint's own files, inside a version directory
DECODER_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3"})
ENCODER_TYPES = frozenset({"bert", "roberta", "deberta-v2"})
SUPPORTED_TYPES = DECODER_TYPES | ENCODER_TYPES
POOLINGS = ("last_non_pad", "last_token")


@dataclass(frozen=True)
class HFSpec:
    """How the service feeds a Hugging Face checkpoint; saved under "hf" in the version's config.json."""

    family: str  # "decoder" (chat template, last token) or "encoder" (text pair, classifier)
    max_len: int  # tokens of one input, special tokens included
    label_index: int = 0  # which output of the classifier is the reward
    pooling: str = "last_non_pad"  # decoders: "last_non_pad" (transformers) or "last_token" (OpenRLHF)
    append_eos: bool = False  # decoders: end the rendered text with the EOS token (OpenRLHF's inputs)
    reward_mean: float = 0.0  # the checkpoint's own output normalization: (logit - mean) / std
    reward_std: float = 1.0

    def __post_init__(self) -> None:
        if self.family not in ("decoder", "encoder"):
            raise CheckpointError(f"hf family must be 'decoder' or 'encoder', got {self.family!r}")
        if self.pooling not in POOLINGS:
            raise CheckpointError(f"hf pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.reward_std <= 0:
            raise CheckpointError(f"hf reward_std must be > 0, got {self.reward_std}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> HFSpec:
        try:
            return cls(**data)
        except TypeError as exc:
            raise CheckpointError(f"incompatible hf section in config.json ({exc})") from exc


def family_of(model_type: str) -> str:
    """'decoder' or 'encoder' for a supported `model_type`; CheckpointError otherwise."""
    if model_type in DECODER_TYPES:
        return "decoder"
    if model_type in ENCODER_TYPES:
        return "encoder"
    raise CheckpointError(
        f"model_type {model_type!r} is not supported; supported: {', '.join(sorted(SUPPORTED_TYPES))}"
    )


def _transformers():
    try:
        import transformers
    except ImportError as exc:
        raise CheckpointError(
            "this version is a Hugging Face checkpoint: install the extra (pip install 'reward-service[hf]')"
        ) from exc
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return transformers


def config_from_dict(raw: dict):
    """A `PretrainedConfig` of a built-in class from config.json's content (never code)."""
    if "auto_map" in raw:
        raise CheckpointError("config.json has auto_map: it asks for remote code, never run here")
    family_of(raw.get("model_type", ""))
    fields = {k: v for k, v in raw.items() if k != "model_type"}
    return _transformers().AutoConfig.for_model(raw["model_type"], **fields)


def sequence_classifier_name(model_type: str) -> str:
    """The built-in `*ForSequenceClassification` class name of a supported `model_type`."""
    family_of(model_type)
    names = _transformers().models.auto.modeling_auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES
    return names[model_type]


def expected_shapes(config) -> dict[str, tuple[int, ...]]:
    """Parameter and buffer shapes of the sequence-classification model for `config`, built on the meta
    device (no memory, no weights)."""
    transformers = _transformers()
    with torch.device("meta"):
        model = transformers.AutoModelForSequenceClassification.from_config(config)
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def load_tokenizer(hf_dir: Path):
    config_path = hf_dir / "tokenizer_config.json"
    if config_path.is_file() and "auto_map" in json.loads(config_path.read_text()):
        raise CheckpointError(f"{config_path} has auto_map: it asks for remote code, never run here")
    try:
        return _transformers().AutoTokenizer.from_pretrained(
            str(hf_dir), trust_remote_code=False, local_files_only=True
        )
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{hf_dir}: cannot load the tokenizer ({exc})") from exc


def _load_model(hf_dir: Path, model_type: str):
    """The classifier in the checkpoint's dtype, with SDPA attention where the class has it (DeBERTa-v2
    does not)."""
    transformers = _transformers()
    cls = getattr(transformers, sequence_classifier_name(model_type))
    attention = {"attn_implementation": "sdpa"} if cls._supports_sdpa else {}
    return cls.from_pretrained(
        str(hf_dir),
        trust_remote_code=False,
        use_safetensors=True,
        local_files_only=True,
        dtype="auto",
        **attention,
    )


def serving_dtype(device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """Half precision on CUDA (bf16 where the GPU has it, else fp16); the process's dtype on CPU."""
    if device.type != "cuda" or dtype in (torch.bfloat16, torch.float16):
        return dtype
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


class HFBackend:
    """A Hugging Face reward model: render + tokenize (encode), pad + forward + pool (forward)."""

    kind = "hf"
    packs_inputs = False  # padded to the longest of each batch

    def __init__(self, model, tokenizer, spec: HFSpec):
        self.model = model
        self.tokenizer = tokenizer
        self.spec = spec
        self.max_len = spec.max_len
        self.device = next(model.parameters()).device
        config = model.config.get_text_config()
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        # transformers pools at the rightmost token that is not config.pad_token_id (absent: the last one)
        self.pool_pad_id = config.pad_token_id if spec.pooling == "last_non_pad" else None
        self.sep_id = tokenizer.sep_token_id
        # segment ids exactly when the tokenizer gives them to the model (BERT's does, RoBERTa's does not)
        self.use_token_types = "token_type_ids" in tokenizer.model_input_names
        if spec.family == "encoder":
            # text is text: a literal "[SEP]" in a prompt cannot forge the pair boundary
            tokenizer.split_special_tokens = True
            if self.use_token_types and self.sep_id is None:
                raise CheckpointError("the tokenizer gives segment ids but has no separator token")
        elif tokenizer.chat_template is None:
            raise CheckpointError("decoder reward model without a chat template in its tokenizer config")
        self._check_room()

    @classmethod
    def load(cls, hf_dir: Path, spec: HFSpec, device: torch.device) -> HFBackend:
        """Load a checkpoint directory onto `device` in its own dtype (`prepare` casts it)."""
        # refuses remote code and unknown types before anything is loaded
        config = config_from_dict(json.loads((hf_dir / "config.json").read_text()))
        tokenizer = load_tokenizer(hf_dir)
        try:
            model = _load_model(hf_dir, config.model_type)
        except (OSError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"{hf_dir}: cannot load the model ({exc})") from exc
        return cls(model.to(device).eval(), tokenizer, spec)

    def prepare(self, dtype: torch.dtype, device: torch.device) -> None:
        """Cast to the serving dtype (see `serving_dtype`) where the weights are (the CPU), then move to
        `device`; a decoder's head, tiny, stays in float32 so that rewards keep their precision whatever
        the trunk's dtype."""
        self.model.to(dtype=serving_dtype(device, dtype)).eval()
        if self.spec.family == "decoder":
            self.model.score.float()
        self.model.to(device)
        self.device = device

    @property
    def dtype(self) -> torch.dtype:
        """The trunk's compute dtype."""
        return self.model.get_input_embeddings().weight.dtype

    def describe(self) -> dict:
        """What /v1/model shows: the checkpoint's architecture, how inputs are rendered, its size."""
        config = self.model.config
        architecture = {"backend": self.kind, "model_type": config.model_type, **self.spec.to_dict()}
        architecture["architectures"] = config.architectures
        encoding = {"max_len": self.max_len, "chat_template": self.spec.family == "decoder"}
        return {"architecture": architecture, "encoding": encoding, "parameters": self.model.num_parameters()}

    # --- encode: text -> ids (CPU, any thread) ---

    def render(self, prompt: str, response: str) -> str:
        """The decoder's input text: the chat template with the prompt as the user turn and the response
        as the assistant turn (plus the EOS token where the trainer appended it)."""
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        text = self.tokenizer.apply_chat_template(messages, tokenize=False)
        if self.spec.append_eos:
            eos = self.tokenizer.eos_token
            text = text.rstrip("\n")
            text = text if text.endswith(eos) else f"{text} {eos}"
        return text

    def _ids(self, prompt: str, response: str) -> list[int]:
        if self.spec.family == "encoder":
            return self.tokenizer(prompt, response)["input_ids"]
        ids = self.tokenizer(self.render(prompt, response), add_special_tokens=False)["input_ids"]
        if self.spec.append_eos:  # OpenRLHF overwrites the last id so that truncation keeps the EOS
            ids[-1] = self.tokenizer.eos_token_id
        return ids

    def _check_room(self) -> None:
        overhead = len(self._ids("", ""))
        if overhead + 2 > self.max_len:
            raise CheckpointError(
                f"max_len {self.max_len} leaves no room for text ({overhead} tokens of template)"
            )

    def _fit(self, prompt: str, response: str) -> list[int]:
        """Ids of the pair within max_len: cut the prompt from the left, then the response from the right."""
        ids = self._ids(prompt, response)
        if len(ids) <= self.max_len:
            return ids
        if len(self._ids("", response)) > self.max_len:
            end = _largest_fitting(len(response), lambda n: self._fits("", response[:n]))
            return self._ids("", response[:end])
        keep = _largest_fitting(len(prompt), lambda n: self._fits(prompt[len(prompt) - n :], response))
        return self._ids(prompt[len(prompt) - keep :], response)

    def _fits(self, prompt: str, response: str) -> bool:
        return len(self._ids(prompt, response)) <= self.max_len

    def encode(self, prompts: Sequence[str], responses: Sequence[str]) -> list[list[int]]:
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        encoded = []
        for index, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
            _check_text(index, "prompt", prompt)
            _check_text(index, "response", response)
            try:
                encoded.append(self._fit(prompt, response))
            except Exception as exc:  # jinja2 and tokenizers raise their own types
                raise EncodeError(index, "prompt", f"cannot be rendered or tokenized ({exc})") from exc
        return encoded

    # --- forward: ids -> rewards (a compute worker) ---

    def _token_types(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Segment ids of encoder pairs: 0 up to the first separator (included), 1 after it."""
        first_sep = (input_ids == self.sep_id).int().argmax(dim=1, keepdim=True)  # (B, 1)
        return (torch.arange(input_ids.shape[1], device=input_ids.device) > first_sep).long()

    def _pool_index(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B,) position scored in each row (see the module docstring)."""
        keep = mask.bool()
        if self.pool_pad_id is not None:
            keep &= input_ids != self.pool_pad_id
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        return (positions * keep).argmax(dim=1)

    def _rewards(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B,) float32 logits of the reward label."""
        if self.spec.family == "encoder":
            extra = {"token_type_ids": self._token_types(input_ids)} if self.use_token_types else {}
            return self.model(input_ids=input_ids, attention_mask=mask, **extra).logits.float()[
                :, self.spec.label_index
            ]
        trunk = getattr(self.model, self.model.base_model_prefix)
        hidden = trunk(input_ids=input_ids, attention_mask=mask).last_hidden_state  # (B, T, H)
        rows = torch.arange(len(input_ids), device=hidden.device)
        pooled = hidden[rows, self._pool_index(input_ids, mask)].float()  # (B, H)
        return self.model.score(pooled)[:, self.spec.label_index]

    def forward(self, ids: Sequence[Sequence[int]]) -> list[float]:
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        input_ids, mask = right_pad([ids[i] for i in order], self.pad_id)
        # a plain copy: a fresh page-locked buffer per batch overlaps nothing (the forward waits for it)
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        with torch.inference_mode():
            logits = self._rewards(input_ids, mask)
            sorted_out = ((logits - self.spec.reward_mean) / self.spec.reward_std).cpu().tolist()
        raw = [0.0] * len(ids)
        for position, index in enumerate(order):
            raw[index] = sorted_out[position]
        return raw


def _check_text(index: int, field: str, text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise EncodeError(index, field, f"not valid UTF-8 text ({exc.reason} at {exc.start})") from exc


def _largest_fitting(limit: int, fits: Callable[[int], bool]) -> int:
    """Largest n in [0, limit] with fits(n), for fits true at 0 and monotone (binary search)."""
    low, high = 0, limit
    while low < high:
        middle = (low + high + 1) // 2
        if fits(middle):
            low = middle
        else:
            high = middle - 1
    return low
