"""A real TRL GRPOTrainer run whose reward function is the service: the rewards TRL logs are the service's.

A tiny randomly initialised Llama and a word-level tokenizer are built here (no hub download); the
trainer runs 2 steps on CPU. Needs the `trl` extra: `pip install -e ".[trl]"`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

pytest.importorskip("trl", reason='needs the trl extra: pip install -e ".[trl]"')

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, TrainerCallback  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

from app.adapters.trl import as_async_trl_reward_func, as_trl_reward_func  # noqa: E402
from tests.conftest import sample_texts  # noqa: E402

pytestmark = pytest.mark.trl
QUESTIONS = ["how do i boil an egg", "please explain the river", "what is a good song", "help me sort a list"]
SPECIALS = ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]
CHAT_TEMPLATE = "{% for m in messages %}{{ m['content'] }} {% endfor %}"


@pytest.fixture(autouse=True)
def offline(monkeypatch) -> None:
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(name, "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")


def word_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer over the test vocabulary, built in memory."""
    words = sorted({word for text in sample_texts(300) + QUESTIONS for word in text.split()})
    vocab = {token: index for index, token in enumerate(SPECIALS + words)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.decoder = decoders.WordPiece()  # joins words with spaces
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="[PAD]", unk_token="[UNK]", bos_token="[BOS]", eos_token="[EOS]"
    )
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def tiny_llama(vocab_size: int) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=3,
    )
    return LlamaForCausalLM(config)


class LogRecorder(TrainerCallback):
    def __init__(self) -> None:
        self.logs: list[dict] = []

    def on_log(self, args, state, control, logs=None, **kwargs) -> None:
        self.logs.append(dict(logs or {}))


def run_grpo(reward_func: Callable, prompts: list, output_dir: Path) -> tuple[list[dict], list[tuple]]:
    """Two GRPO steps: TRL's logs, and the (prompts, completions) each step's rewards were asked for."""
    seen: list[tuple] = []

    def completions_recorder(prompts, completions, **kwargs) -> list[float]:
        seen.append((list(prompts), list(completions)))
        return [0.0] * len(prompts)  # weight 0: it only watches

    tokenizer = word_tokenizer()
    args = GRPOConfig(
        output_dir=str(output_dir),
        max_steps=2,
        per_device_train_batch_size=4,
        num_generations=2,
        max_completion_length=8,
        logging_steps=1,
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        beta=0.0,
        seed=0,
        disable_tqdm=True,
        reward_weights=[1.0, 0.0],
        dataloader_num_workers=0,
    )
    recorder = LogRecorder()
    trainer = GRPOTrainer(
        model=tiny_llama(len(tokenizer)),
        processing_class=tokenizer,
        args=args,
        reward_funcs=[reward_func, completions_recorder],
        train_dataset=Dataset.from_dict({"prompt": prompts}),
        callbacks=[recorder],
    )
    trainer.train()
    return [log for log in recorder.logs if f"rewards/{reward_func.__name__}/mean" in log], seen


def service_mean(url: str, pairs: list[tuple[str, str]]) -> float:
    """Mean of /score_batch rewards over the pairs (an empty completion is scored like any other)."""
    items = [{"prompt": p, "response": r} for p, r in pairs]
    response = httpx.post(f"{url}/score_batch", json={"items": items}, timeout=60)
    assert response.status_code == 200, response.text
    rewards = response.json()["rewards"]
    return sum(rewards) / len(rewards)


def scored_requests(url: str) -> float:
    families = text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=10).text)
    return sum(
        s.value
        for f in families
        for s in f.samples
        if s.name == "reward_requests_total" and s.labels.get("endpoint") == "/score_batch"
    )


def assert_logged_means_are_the_services(
    url: str, logs: list[dict], expected_pairs: list[list[tuple]], name: str
):
    assert len(logs) == len(expected_pairs) == 2, "two steps, each logging its rewards once"
    for log, pairs in zip(logs, expected_pairs, strict=True):
        logged = log[f"rewards/{name}/mean"]
        assert math.isfinite(logged)
        assert logged == pytest.approx(service_mean(url, pairs), rel=1e-4, abs=1e-5)


def test_grpo_trains_on_the_rewards_the_service_gives_its_completions(server_url: str, tmp_path: Path):
    before = scored_requests(server_url)
    reward_func = as_trl_reward_func(server_url, on_error="none", name="reward_service")
    logs, seen = run_grpo(reward_func, QUESTIONS, tmp_path)
    reward_func.client.close()
    assert scored_requests(server_url) - before == len(seen) == 2
    expected = [[(p, c.strip()) for p, c in zip(ps, cs, strict=True)] for ps, cs in seen]
    assert_logged_means_are_the_services(server_url, logs, expected, "reward_service")


def test_grpo_with_the_async_adapter_on_conversational_prompts(server_url: str, tmp_path: Path):
    conversations = [[{"role": "user", "content": question}] for question in QUESTIONS]
    reward_func = as_async_trl_reward_func(server_url, on_error="none", name="reward_service_async")
    logs, seen = run_grpo(reward_func, conversations, tmp_path)
    expected = [
        [
            (f"\n\nHuman: {p[0]['content']}\n\nAssistant:", c[0]["content"].strip())
            for p, c in zip(ps, cs, strict=True)
        ]
        for ps, cs in seen
    ]
    assert all(c[0]["role"] == "assistant" for _, cs in seen for c in cs), (
        "TRL passed conversational completions"
    )
    assert_logged_means_are_the_services(server_url, logs, expected, "reward_service_async")
