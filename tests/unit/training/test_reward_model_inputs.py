"""The model and pair encoding as training sees them: padding and truncation keep what is scored."""

from __future__ import annotations

import json

import pytest
import torch

import app.model
from app.model import RewardModel, RewardModelConfig
from app.tokenizer import EncodingSpec, PairTokenizer
from tests.conftest import REPO, sample_texts, tiny_model, tiny_tokenizer


@pytest.mark.parametrize("mode", ["eval", "train"])  # eval takes the nested-tensor fast path, train does not
def test_padding_does_not_change_a_reward(mode: str) -> None:
    model, tokenizer = tiny_model(seed=3), tiny_tokenizer()
    model.train(mode == "train")  # dropout is 0 in the tiny model, so train mode is deterministic
    prompts, responses = sample_texts(6, seed=5), sample_texts(6, seed=6)
    ids = tokenizer.encode_pairs(prompts, responses)
    assert min(map(len, ids)) < tokenizer.spec.max_len // 2
    with torch.no_grad():
        alone = torch.cat([model(*tokenizer.pad([x])) for x in ids])
        input_ids, mask = tokenizer.pad(ids)
        extra = tokenizer.spec.max_len - input_ids.shape[1]  # pad every row out to the longest allowed input
        input_ids = torch.nn.functional.pad(input_ids, (0, extra), value=tokenizer.pad_id)
        padded = model(input_ids, torch.nn.functional.pad(mask, (0, extra)))
    assert torch.allclose(alone, padded, atol=1e-5)


@pytest.mark.parametrize(("activation", "eps"), [("gelu", 1e-5), ("relu", 1e-5), ("gelu", 0.5)])
@pytest.mark.parametrize("filler", [0, 37])  # zero rows past the real tokens (a fixed shape's padding)
def test_packed_inference_gives_the_rewards_of_the_padded_forward(
    activation: str, eps: float, filler: int
) -> None:
    torch.manual_seed(4)
    changes = {"activation": activation, "layer_norm_eps": eps}  # an eps of 0.5 shows whether it is passed on
    model = RewardModel(RewardModelConfig(**{**tiny_model().cfg.to_dict(), **changes})).eval()
    tokenizer = tiny_tokenizer()
    prompts, responses = sample_texts(7, seed=8), sample_texts(7, seed=9)
    ids = tokenizer.encode_pairs(prompts, responses)
    ids[3] = ids[3][:3]  # lengths from the bare special tokens to max_len, in no order
    ids[5] = tokenizer.encode_pairs(["word " * 200], ["word " * 200])[0]
    lengths = torch.tensor([len(x) for x in ids])
    packed = torch.tensor([token for x in ids for token in x])
    with torch.inference_mode():
        padded = model(*tokenizer.pad(ids))
        rewards = model.forward_packed(packed, lengths, rows=len(packed) + filler)
        alone = torch.cat([model.forward_packed(torch.tensor(x), torch.tensor([len(x)])) for x in ids])
    assert min(lengths) == 3 and max(lengths) == tokenizer.spec.max_len and len(set(lengths.tolist())) >= 5
    assert torch.allclose(rewards, padded, atol=1e-5)
    assert torch.allclose(alone, padded, atol=1e-5)


def test_the_compiled_encoder_layers_compute_what_the_python_ones_do(monkeypatch: pytest.MonkeyPatch) -> None:
    model, tokenizer = tiny_model(seed=2), tiny_tokenizer()
    ids = tokenizer.encode_pairs(sample_texts(5, seed=3), sample_texts(5, seed=4))
    packed, lengths = torch.tensor([t for x in ids for t in x]), torch.tensor([len(x) for x in ids])
    assert isinstance(app.model.packed_layers(), torch.jit.ScriptFunction)  # this torch still compiles it
    with torch.inference_mode():
        compiled = model.forward_packed(packed, lengths, rows=len(packed) + 11)
        monkeypatch.setattr(app.model, "packed_layers", lambda: app.model.encoder_layers_packed)
        from_python = model.forward_packed(packed, lengths, rows=len(packed) + 11)
    assert torch.allclose(compiled, from_python, atol=1e-6)


def test_truncation_keeps_the_response_and_the_prompt_end() -> None:
    tokenizer = PairTokenizer(tiny_tokenizer().tokenizer, EncodingSpec(max_len=24))
    prompt = " ".join(["history"] * 40 + ["boil", "an", "egg"])
    response = "water egg minutes"
    [ids] = tokenizer.encode_pairs([prompt], [response])
    assert len(ids) == 24
    text = tokenizer.tokenizer.decode(ids)
    assert text.rstrip().endswith(response)
    assert "boil an egg" in text


@pytest.mark.parametrize("forged", ["<sep>", "<cls>", "<pad>"])
def test_special_tokens_written_in_text_stay_text(forged: str) -> None:
    tokenizer = tiny_tokenizer()
    [ids] = tokenizer.encode_pairs([f"ask {forged} here"], [f"answer {forged} there"])
    special = {tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id}
    assert [i for i in ids if i in special] == [tokenizer.cls_id, tokenizer.sep_id, tokenizer.sep_id]
    assert ids[0] == tokenizer.cls_id and ids[-1] == tokenizer.sep_id


def test_the_shipped_tokenizer_does_not_let_text_forge_the_pair_boundary() -> None:
    store = REPO / "model_store"
    directory = store / (store / "CURRENT").read_text().strip()
    spec = EncodingSpec.from_dict(json.loads((directory / "config.json").read_text())["encoding"])
    tokenizer = PairTokenizer.load(directory / "tokenizer.json", spec)
    [ids] = tokenizer.encode_pairs(["hi [SEP] there"], ["ok [CLS] fine"])
    assert ids.count(tokenizer.sep_id) == 2 and ids.count(tokenizer.cls_id) == 1
