"""The Hugging Face backend on tiny random checkpoints built here: rendering as transformers renders,
rewards as transformers computes them, independent of the batch, truncation that keeps the response."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from app import random_hf_models as hf_models  # noqa: E402
from app.backends import EncodeError  # noqa: E402
from app.backends.hf import HFBackend, HFSpec  # noqa: E402

PROMPTS = ["How do I boil an egg?", "hi", "Tell me about rivers and mountains. " * 6]
RESPONSES = ["Put it in boiling water for eight minutes.", "Hello! How can I help?", "Rivers run down."]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf")
    decoder, encoder = hf_models.decoder_tokenizer(), hf_models.encoder_tokenizer()
    return {
        "qwen2": hf_models.save_model(root / "qwen2", hf_models.decoder_config("qwen2"), decoder),
        "llama": hf_models.save_model(root / "llama", hf_models.decoder_config("llama"), decoder),
        "bert": hf_models.save_model(root / "bert", hf_models.encoder_config("bert"), encoder),
        "deberta": hf_models.save_model(root / "deberta", hf_models.encoder_config("deberta-v2"), encoder),
    }


def backend(directory: Path, max_len: int = 256, **spec) -> HFBackend:
    family = "encoder" if "bert" in directory.name else "decoder"
    loaded = HFBackend.load(directory, HFSpec(family, max_len, **spec), torch.device("cpu"))
    loaded.prepare(torch.float32, torch.device("cpu"))
    return loaded


def reference_rewards(directory: Path, prompts: list[str], responses: list[str]) -> list[float]:
    """transformers' own tokenizer and forward, one pair at a time, no padding."""
    model = transformers.AutoModelForSequenceClassification.from_pretrained(directory).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    rewards = []
    for prompt, response in zip(prompts, responses, strict=True):
        if "bert" in directory.name:
            inputs = tokenizer(prompt, response, return_tensors="pt")
        else:
            messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
            text = tokenizer.apply_chat_template(messages, tokenize=False)
            inputs = tokenizer(text, add_special_tokens=False, return_tensors="pt")
        with torch.no_grad():
            rewards.append(model(**inputs).logits[0, 0].item())
    return rewards


@pytest.mark.parametrize("name", ["qwen2", "llama", "bert", "deberta"])
def test_reward_equals_transformers_forward_in_float32(checkpoints: dict[str, Path], name: str) -> None:
    served = backend(checkpoints[name])
    rewards = served.forward(served.encode(PROMPTS, RESPONSES))
    assert rewards == pytest.approx(reference_rewards(checkpoints[name], PROMPTS, RESPONSES), abs=1e-5)
    assert not served.packs_inputs  # padded: the batcher sorts its items by length
    assert len(set(rewards)) == len(rewards)  # the inputs are told apart: the comparison means something


def test_rendered_text_is_the_chat_template_of_the_conversation(checkpoints: dict[str, Path]) -> None:
    served = backend(checkpoints["qwen2"])
    tokenizer = transformers.AutoTokenizer.from_pretrained(checkpoints["qwen2"])
    messages = [{"role": "user", "content": PROMPTS[0]}, {"role": "assistant", "content": RESPONSES[0]}]
    expected = tokenizer.apply_chat_template(messages, tokenize=False)
    assert served.render(PROMPTS[0], RESPONSES[0]) == expected
    assert (
        served.encode(PROMPTS[:1], RESPONSES[:1])[0]
        == tokenizer(expected, add_special_tokens=False)["input_ids"]
    )


@pytest.mark.parametrize("name", ["qwen2", "bert", "deberta"])
def test_batched_rewards_equal_single_ones(checkpoints: dict[str, Path], name: str) -> None:
    served = backend(checkpoints[name])
    ids = served.encode(PROMPTS * 2, RESPONSES[::-1] * 2)
    assert len({len(x) for x in ids}) > 1  # different lengths: padding is exercised
    together = served.forward(ids)
    alone = [served.forward([x])[0] for x in ids]
    assert together == pytest.approx(alone, abs=1e-5)


def test_truncation_cuts_the_prompt_from_the_left_and_keeps_the_response(
    checkpoints: dict[str, Path],
) -> None:
    served = backend(checkpoints["qwen2"], max_len=48)
    prompt = "first words of the prompt " + "water " * 80 + "last words of the prompt"
    ids = served.encode([prompt], [RESPONSES[0]])[0]
    text = served.tokenizer.decode(ids)
    assert 46 <= len(ids) <= 48  # as much of the prompt's end as fits (a character cut may merge tokens)
    assert text.endswith(f"words of the prompt<|im_end|>\n<|im_start|>assistant\n{RESPONSES[0]}<|im_end|>\n")
    assert "first words" not in text


def test_a_response_longer_than_max_len_keeps_its_start_and_the_closing_tokens(
    checkpoints: dict[str, Path],
) -> None:
    served = backend(checkpoints["qwen2"], max_len=40)
    ids = served.encode(["question"], ["beginning of the answer " + "egg " * 200])[0]
    text = served.tokenizer.decode(ids)
    assert len(ids) <= 40
    assert "assistant\nbeginning of the answer" in text and text.endswith("<|im_end|>\n")


def test_an_encoder_pair_is_cut_in_its_prompt_first(checkpoints: dict[str, Path]) -> None:
    served = backend(checkpoints["bert"], max_len=24)
    ids = served.encode(["egg " * 50 + "river"], ["good answer"])[0]
    assert len(ids) == 24
    assert served.tokenizer.decode(ids).endswith("egg river [SEP] good answer [SEP]")


def test_a_literal_separator_in_a_prompt_does_not_split_the_pair(checkpoints: dict[str, Path]) -> None:
    served = backend(checkpoints["bert"])
    ids = served.encode(["a [SEP] b"], ["c"])[0]
    assert ids.count(served.sep_id) == 2  # only the two the pair template places


@pytest.mark.parametrize("field", ["prompt", "response"])
def test_an_unpaired_surrogate_is_refused_with_its_item_and_field(
    checkpoints: dict[str, Path], field: str
) -> None:
    served = backend(checkpoints["qwen2"])
    bad = "broken \ud800 text"
    prompts, responses = (
        ["fine", bad if field == "prompt" else "fine"],
        ["fine", bad if field == "response" else "fine"],
    )
    with pytest.raises(EncodeError) as caught:
        served.encode(prompts, responses)
    assert (caught.value.index, caught.value.field) == (1, field)


def test_the_label_index_picks_the_reward_output(tmp_path: Path) -> None:
    config = hf_models.decoder_config("qwen2", num_labels=2)
    directory = hf_models.save_model(tmp_path / "qwen2-two", config, hf_models.decoder_tokenizer())
    first, second = backend(directory, label_index=0), backend(directory, label_index=1)
    ids = first.encode(PROMPTS, RESPONSES)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(directory).eval()
    with torch.no_grad():
        logits = [model(torch.tensor([x])).logits[0] for x in ids]
    assert second.forward(ids) == pytest.approx([row[1].item() for row in logits], abs=1e-5)
    assert first.forward(ids) == pytest.approx([row[0].item() for row in logits], abs=1e-5)


def test_a_decoder_without_chat_template_is_refused(tmp_path: Path) -> None:
    tokenizer = hf_models.decoder_tokenizer()
    tokenizer.chat_template = None
    directory = hf_models.save_model(tmp_path / "no-template", hf_models.decoder_config(), tokenizer)
    (directory / "chat_template.jinja").unlink(missing_ok=True)
    with pytest.raises(Exception, match="chat template"):
        backend(directory)
