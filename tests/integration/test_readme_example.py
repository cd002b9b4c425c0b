"""README's `/score` example is what the shipped default model answers (scripts/readme_example.py)."""

from __future__ import annotations

import pytest

from tests.conftest import load_script


@pytest.fixture(scope="module")
def example():
    with load_script("readme_example") as module:
        yield module


def test_readme_quotes_the_answer_the_shipped_model_gives(example) -> None:
    request, answer = example.readme_example(example.README.read_text())
    quoted = example.quoted_figures(answer)
    assert {"model_version", "model_raw", "model_reward", "reward"} <= set(quoted), "README quotes too little"
    served = example.served_in_process(request, example.REPO / "model_store")
    assert example.mismatches(quoted, served) == [], "run `python scripts/readme_example.py --update`"


def test_a_stale_figure_is_reported(example) -> None:
    served = {"model_version": "v2", "model_raw": -4.9398, "heuristic": {"words": 8}}
    assert example.mismatches({"model_version": "v2", "model_raw": -4.94, "words": 8.0}, served) == []
    stale = example.mismatches({"model_version": "v1", "model_raw": -1.998, "words": 9.0}, served)
    assert [problem.split(":")[0] for problem in stale] == ["model_version", "model_raw", "words"]
