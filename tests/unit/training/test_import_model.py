"""reward-import on tiny checkpoints built here: what it publishes, what it refuses and why."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

transformers = pytest.importorskip("transformers")

from app import random_hf_models as hf_models  # noqa: E402
from app.backends.hf import HF_DIR  # noqa: E402
from app.errors import CheckpointError  # noqa: E402
from app.store import load_version, read_current, verify_version  # noqa: E402
from app.training.evaluate import main as evaluate  # noqa: E402
from app.training.import_model import import_model, main  # noqa: E402

PAIRS = [hf_models.DATA / "hh_harmless_sample.jsonl"]
PROMPTS = ["How do I boil an egg?", "hi"]
RESPONSES = ["Put it in boiling water for eight minutes.", "Hello! How can I help?"]


@pytest.fixture(scope="module")
def qwen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("src")
    return hf_models.save_model(
        root / "qwen2", hf_models.decoder_config("qwen2"), hf_models.decoder_tokenizer()
    )


@pytest.fixture
def copy_of(tmp_path: Path):
    def copy(source: Path) -> Path:
        return Path(shutil.copytree(source, tmp_path / f"copy-{source.name}"))

    return copy


def imported(source: Path, store: Path, **kwargs) -> Path:
    return import_model(source, store, PAIRS, calibration_limit=16, **kwargs)


def served_rewards(version_dir: Path) -> list[float]:
    version = load_version(version_dir)
    version.backend.prepare(torch.float32, torch.device("cpu"))
    return version.backend.forward(version.backend.encode(PROMPTS, RESPONSES))


def test_an_import_publishes_a_checksummed_hf_version_with_its_calibration(
    qwen: Path, tmp_path: Path
) -> None:
    published = imported(qwen, tmp_path / "store", version="qwen-v1")
    assert read_current(tmp_path / "store") == "qwen-v1"
    manifest = verify_version(published)
    assert {"config.json", "metrics.json", f"{HF_DIR}/config.json", f"{HF_DIR}/model.safetensors"} <= set(
        manifest["files"]
    )
    config = json.loads((published / "config.json").read_text())
    assert config["backend"] == "hf" and config["hf"]["family"] == "decoder"
    metrics = json.loads((published / "metrics.json").read_text())
    assert metrics["calibration_pairs"] == 16 and metrics["reward_std"] > 0
    assert manifest["import"]["layout"] == "transformers"


def test_a_changed_file_under_hf_fails_verification(qwen: Path, tmp_path: Path) -> None:
    published = imported(qwen, tmp_path / "store", version="qwen-v1")
    with open(published / HF_DIR / "tokenizer.json", "a") as f:
        f.write(" ")
    with pytest.raises(CheckpointError, match="sha256"):
        load_version(published)


def test_a_sharded_checkpoint_is_checked_and_imported(qwen: Path, tmp_path: Path) -> None:
    model = transformers.AutoModelForSequenceClassification.from_pretrained(qwen)
    sharded = tmp_path / "sharded"
    model.save_pretrained(sharded, safe_serialization=True, max_shard_size="20KB")
    transformers.AutoTokenizer.from_pretrained(qwen).save_pretrained(sharded)
    assert (sharded / "model.safetensors.index.json").is_file()
    published = imported(sharded, tmp_path / "store")
    assert served_rewards(published) == pytest.approx(
        served_rewards(imported(qwen, tmp_path / "s2")), abs=1e-6
    )


def test_pickle_weights_are_refused(qwen: Path, copy_of) -> None:
    source = copy_of(qwen)
    torch.save(load_file(source / "model.safetensors"), source / "pytorch_model.bin")
    (source / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="pickle"):
        imported(source, source.parent / "store")
    assert not (source.parent / "store").exists() or read_current(source.parent / "store") is None


@pytest.mark.parametrize("config_file", ["config.json", "tokenizer_config.json"])
def test_auto_map_is_refused(qwen: Path, copy_of, config_file: str) -> None:
    source = copy_of(qwen)
    hf_models.edit_json(source / config_file, auto_map={"AutoModelForSequenceClassification": "modeling.RM"})
    with pytest.raises(CheckpointError, match="auto_map"):
        imported(source, source.parent / "store")


def test_an_unknown_architecture_is_refused(qwen: Path, copy_of) -> None:
    source = copy_of(qwen)
    hf_models.edit_json(source / "config.json", model_type="gpt2")
    with pytest.raises(CheckpointError, match="not supported"):
        imported(source, source.parent / "store")


def test_two_outputs_need_a_label_index(tmp_path: Path) -> None:
    config = hf_models.decoder_config("qwen2", num_labels=2)
    source = hf_models.save_model(tmp_path / "two", config, hf_models.decoder_tokenizer())
    with pytest.raises(CheckpointError, match="--label-index"):
        imported(source, tmp_path / "store")
    published = imported(source, tmp_path / "store", label_index=1)
    assert json.loads((published / "config.json").read_text())["hf"]["label_index"] == 1


def test_a_shape_that_config_json_does_not_describe_is_refused(qwen: Path, copy_of) -> None:
    source = copy_of(qwen)
    hf_models.edit_json(source / "config.json", intermediate_size=48)
    with pytest.raises(CheckpointError, match="mlp.*\\(64, 32\\).*\\(48, 32\\)"):
        imported(source, source.parent / "store")


def test_a_shape_mismatch_in_one_shard_is_refused(qwen: Path, tmp_path: Path) -> None:
    model = transformers.AutoModelForSequenceClassification.from_pretrained(qwen)
    sharded = tmp_path / "sharded"
    model.save_pretrained(sharded, safe_serialization=True, max_shard_size="20KB")
    transformers.AutoTokenizer.from_pretrained(qwen).save_pretrained(sharded)
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    shard = index["weight_map"]["score.weight"]
    tensors = load_file(sharded / shard)
    tensors["score.weight"] = torch.zeros(1, 16)
    save_file(tensors, sharded / shard, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="score.weight"):
        imported(sharded, tmp_path / "store")


def test_a_model_over_the_memory_limit_is_refused(qwen: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="memory limit"):
        imported(qwen, tmp_path / "store", memory_limit=64 << 20)


def test_the_command_line_reports_a_refusal_and_publishes_nothing(qwen: Path, copy_of, capsys) -> None:
    source = copy_of(qwen)
    hf_models.edit_json(source / "config.json", auto_map={"AutoModel": "x.Y"})
    store = source.parent / "store"
    assert main([str(source), "--model-store", str(store), "--pairs", str(PAIRS[0])]) == 1
    assert "auto_map" in capsys.readouterr().err
    assert read_current(store) is None


def openrlhf_checkpoint(qwen: Path, target: Path, head: str = "value_head") -> Path:
    """`qwen` saved the way OpenRLHF saves a reward model: base config, trunk under model., head named
    `head` without bias, normalize_reward with mean and std in config.json."""
    target.mkdir()
    tensors = load_file(qwen / "model.safetensors")
    tensors[f"{head}.weight"] = tensors.pop("score.weight")
    save_file(tensors, target / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((qwen / "config.json").read_text())
    config.update(
        architectures=["Qwen2Model"], normalize_reward=True, mean=0.25, std=2.0, value_head_prefix=head
    )
    for key in ("num_labels", "id2label", "label2id"):
        config.pop(key, None)
    (target / "config.json").write_text(json.dumps(config))
    transformers.AutoTokenizer.from_pretrained(qwen).save_pretrained(target)
    return target


def test_an_openrlhf_reward_model_is_served_as_openrlhf_scores_it(qwen: Path, tmp_path: Path) -> None:
    source = openrlhf_checkpoint(qwen, tmp_path / "openrlhf")
    published = imported(source, tmp_path / "store")
    assert verify_version(published)["import"]["layout"] == "openrlhf"
    # OpenRLHF: chat template, trailing newlines stripped, EOS last, value head at the last token
    model = transformers.AutoModelForSequenceClassification.from_pretrained(qwen).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(qwen)
    expected = []
    for prompt, response in zip(PROMPTS, RESPONSES, strict=True):
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        text = tokenizer.apply_chat_template(messages, tokenize=False).rstrip("\n")
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        assert ids[0, -1].item() == tokenizer.eos_token_id
        with torch.no_grad():
            value = model.score(model.model(ids).last_hidden_state[0, -1])[0].item()
        expected.append((value - 0.25) / 2.0)
    assert served_rewards(published) == pytest.approx(expected, abs=1e-5)


def test_reward_evaluate_reports_on_an_imported_version(qwen: Path, tmp_path: Path) -> None:
    imported(qwen, tmp_path / "store", version="qwen-v1")
    report_path = tmp_path / "report.json"
    argv = ["--model-store", str(tmp_path / "store"), "--pairs", str(PAIRS[0]), "--split", "all"]
    assert evaluate([*argv, "--output", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    group = next(iter(report["files"][str(PAIRS[0])].values()))
    assert report["version"] == "qwen-v1" and group["n"] == 240 and 0.0 <= group["accuracy"]["model"] <= 1.0
