from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from app.training.pairs import TRAIN, VALIDATION, read_pairs
from app.training.prepare import PreparationError, main, prepare_pairs

REPO = Path(__file__).resolve().parents[3]
SAMPLES = [REPO / "data" / "hh_harmless_sample.jsonl", REPO / "data" / "alpaca_eval_sample.jsonl"]


def write_lines(path: Path, records: list[object | str]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def good(i: int) -> dict:
    return {"prompt": f"prompt {i}", "chosen": f"a fine answer number {i}", "rejected": f"meh {i}"}


def test_malformed_lines_are_reported_with_file_and_line(tmp_path: Path, capsys) -> None:
    path = write_lines(tmp_path / "in.jsonl", [good(0), "{not json", {"prompt": "p", "chosen": "c"}, good(1)])
    assert main(["--input", str(path), "--output", str(tmp_path / "out.jsonl")]) == 0
    err = capsys.readouterr().err
    assert f"{path}:2: invalid JSON" in err
    assert f"{path}:3: missing field 'rejected'" in err
    assert "skipped 2 malformed line(s)" in err
    assert len(read_pairs(tmp_path / "out.jsonl")) == 2


def test_strict_stops_at_the_first_malformed_line(tmp_path: Path, capsys) -> None:
    path = write_lines(tmp_path / "in.jsonl", [good(0), good(1), "[1, 2]", "{broken"])
    out = tmp_path / "out.jsonl"
    assert main(["--input", str(path), "--output", str(out), "--strict"]) == 1
    err = capsys.readouterr().err
    assert f"{path}:3: expected a JSON object" in err
    assert ":4:" not in err
    assert not out.exists()


def test_an_empty_result_is_an_error_not_an_empty_file(tmp_path: Path, capsys) -> None:
    same = {"prompt": "p", "chosen": "same", "rejected": "same"}
    path = write_lines(tmp_path / "in.jsonl", [same, "oops"])
    out = tmp_path / "out.jsonl"
    assert main(["--input", str(path), "--output", str(out)]) == 1
    assert "no usable pairs" in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(PreparationError):
        prepare_pairs([path])


def test_duplicates_and_identical_answers_are_dropped(tmp_path: Path) -> None:
    same = {"prompt": "p", "chosen": "same", "rejected": "same"}
    path = write_lines(tmp_path / "in.jsonl", [good(0), good(0), same, good(1)])
    assert [p.prompt for p in prepare_pairs([path])] == ["prompt 0", "prompt 1"]


def test_split_is_by_prompt_and_deterministic() -> None:
    first = prepare_pairs(SAMPLES, num_synthetic=100, seed=3, valid_fraction=0.2)
    again = prepare_pairs(SAMPLES, num_synthetic=100, seed=3, valid_fraction=0.2)
    assert first == again
    train = {p.prompt for p in first if p.split == TRAIN}
    valid = {p.prompt for p in first if p.split == VALIDATION}
    assert train and valid and not train & valid
    other_seed = prepare_pairs(SAMPLES, seed=4, valid_fraction=0.2)
    assert {p.prompt for p in other_seed if p.split == VALIDATION} != valid


def test_synthetic_negatives_are_tagged_by_kind_and_counted(tmp_path: Path, capsys) -> None:
    out = tmp_path / "pairs.jsonl"
    args = ["--input", *map(str, SAMPLES), "--output", str(out), "--num_synthetic", "50"]
    assert main(args) == 0
    pairs = read_pairs(out)
    kinds = Counter(p.kind for p in pairs if p.source == "synthetic")
    assert set(kinds) == {"repetition", "truncation", "toxic", "shuffle", "empty", "refusal", "off_topic"}
    assert sum(kinds.values()) == 50
    assert {p.source for p in pairs} == {"hh_harmless_base", "alpaca_eval_gpt4", "synthetic"}
    table = capsys.readouterr().out
    assert "synthetic" in table and "off_topic" in table and f"wrote {len(pairs)} pairs" in table


def test_synthetic_kinds_can_be_restricted(tmp_path: Path) -> None:
    out = tmp_path / "pairs.jsonl"
    args = ["--input", *map(str, SAMPLES), "--output", str(out), "--num_synthetic", "20"]
    assert main([*args, "--synthetic-kinds", "refusal", "empty"]) == 0
    kinds = Counter(p.kind for p in read_pairs(out) if p.source == "synthetic")
    assert kinds == {"refusal": 10, "empty": 10}


def test_max_per_source_caps_each_source() -> None:
    pairs = prepare_pairs(SAMPLES, max_per_source=30)
    assert Counter(p.source for p in pairs) == {"hh_harmless_base": 30, "alpaca_eval_gpt4": 30}


def longer_won(pair) -> bool:
    return len(pair.chosen) > len(pair.rejected)


def test_length_balance_evens_the_training_split_of_the_named_source_only() -> None:
    natural = prepare_pairs(SAMPLES, seed=1, valid_fraction=0.2)
    balanced = prepare_pairs(SAMPLES, seed=1, valid_fraction=0.2, length_balance=["alpaca_eval_gpt4"])

    def sides(pairs, source, split):
        won = [longer_won(p) for p in pairs if p.source == source and p.split == split]
        return won.count(True), won.count(False)

    longer, shorter = sides(natural, "alpaca_eval_gpt4", TRAIN)
    assert longer > 2 * shorter > 0  # the sample's own bias, which the option removes
    assert sides(balanced, "alpaca_eval_gpt4", TRAIN) == (shorter, shorter)
    # validation and the other source keep their natural mix, pair for pair
    for source, split in [("alpaca_eval_gpt4", VALIDATION), ("hh_harmless_base", TRAIN)]:
        assert [p for p in balanced if (p.source, p.split) == (source, split)] == [
            p for p in natural if (p.source, p.split) == (source, split)
        ]
    assert set(balanced) <= set(natural)


def test_length_balance_without_names_evens_every_source(tmp_path: Path) -> None:
    out = tmp_path / "pairs.jsonl"
    args = [
        "--input",
        *map(str, SAMPLES),
        "--output",
        str(out),
        "--valid-fraction",
        "0.2",
        "--length-balance",
    ]
    assert main(args) == 0
    pairs = read_pairs(out)
    for source in ("hh_harmless_base", "alpaca_eval_gpt4"):
        won = [
            longer_won(p)
            for p in pairs
            if p.source == source and p.split == TRAIN and len(p.chosen) != len(p.rejected)
        ]
        assert won and won.count(True) == won.count(False)
