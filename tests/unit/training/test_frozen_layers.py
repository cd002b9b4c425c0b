from __future__ import annotations

from pathlib import Path

import pytest
import torch

from app.training.frozen import UpperLayers, cached_lower_states, lower_states, upper_rewards
from app.training.scoring import score_responses
from tests.conftest import sample_texts, tiny_model, tiny_tokenizer


def test_cached_lower_layers_give_the_full_models_rewards() -> None:
    model, tokenizer = tiny_model(seed=2), tiny_tokenizer()
    prompts, responses = sample_texts(12, seed=8), sample_texts(12, seed=9)
    full = score_responses(model, tokenizer, prompts, responses)
    for start in (0, 1, 2):
        states = lower_states(model, tokenizer, tokenizer.encode_pairs(prompts, responses), start)
        cached = upper_rewards(UpperLayers(model, start), states)
        assert torch.allclose(full, cached, atol=2e-3), start  # states are cached in float16


def test_the_upper_layers_train_the_models_own_parameters() -> None:
    model = tiny_model(seed=2)
    upper = UpperLayers(model, 1)
    owned = {id(p) for p in model.parameters()}
    assert all(id(p) in owned for p in upper.parameters())
    assert {id(p) for p in model.encoder.layers[1].parameters()} <= {id(p) for p in upper.parameters()}
    assert not {id(p) for p in model.encoder.layers[0].parameters()} & {id(p) for p in upper.parameters()}


def test_states_are_cached_on_disk_and_reused(tmp_path) -> None:
    model, tokenizer = tiny_model(seed=2), tiny_tokenizer()
    ids = tokenizer.encode_pairs(sample_texts(5, seed=1), sample_texts(5, seed=2))
    first = cached_lower_states(model, tokenizer, ids, 1, tmp_path)
    [cache_file] = tmp_path.iterdir()
    torch.nn.init.normal_(model.embeddings.tokens.weight)  # a recomputation would now differ
    again = cached_lower_states(model, tokenizer, ids, 1, tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    cached_lower_states(model, tokenizer, ids[:4], 1, tmp_path)  # other inputs: another cache entry
    assert len(list(tmp_path.iterdir())) == 2 and cache_file.exists()


def test_with_every_layer_frozen_only_the_mean_is_kept() -> None:
    model, tokenizer = tiny_model(seed=2), tiny_tokenizer()
    states = lower_states(model, tokenizer, tokenizer.encode_pairs(["a b"], ["c d e"]), start=2)
    assert states[0].shape == (1, model.cfg.hidden)


def _rank_states(rank: int, world: int, init_file: str, cache_dir: str, out_dir: str, count: int) -> None:
    """One rank of `test_ranks_split_the_pass_and_agree_with_one_process`: its states, saved to out_dir."""
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world
    )
    try:
        model, tokenizer = tiny_model(seed=2), tiny_tokenizer()
        ids = tokenizer.encode_pairs(sample_texts(count, seed=1), sample_texts(count, seed=2))
        states = cached_lower_states(model, tokenizer, ids, 1, Path(cache_dir))
        torch.save(states, Path(out_dir) / f"rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.parametrize("count", [1, 5])  # 1: fewer inputs than ranks, one rank has no share
def test_ranks_split_the_pass_and_agree_with_one_process(tmp_path: Path, count: int) -> None:
    model, tokenizer = tiny_model(seed=2), tiny_tokenizer()
    ids = tokenizer.encode_pairs(sample_texts(count, seed=1), sample_texts(count, seed=2))
    alone = lower_states(model, tokenizer, ids, 1)
    cache, out = tmp_path / "cache", tmp_path / "out"
    out.mkdir()
    args = (2, str(tmp_path / "init"), str(cache), str(out), count)
    torch.multiprocessing.spawn(_rank_states, args=args, nprocs=2, join=True)
    for rank in (0, 1):
        states = torch.load(out / f"rank{rank}.pt")
        assert len(states) == count
        assert all(torch.allclose(a, b, atol=1e-2) for a, b in zip(alone, states, strict=True))
    assert [p.name.count(".share-") for p in cache.iterdir()] == [0]  # one whole file, no shares left
