from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from app.training.pairs import MalformedRecord, parse_record, read_pairs, source_name

HH_CHOSEN = (
    "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how do I boil an egg?\n\nAssistant: Boil it 8 minutes."
)
HH_REJECTED = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how do I boil an egg?\n\nAssistant: No idea."


def test_hh_transcript_splits_at_the_last_assistant_turn() -> None:
    pair = parse_record({"chosen": HH_CHOSEN, "rejected": HH_REJECTED}, "hh")
    assert pair.prompt.endswith("how do I boil an egg?\n\nAssistant:")
    assert pair.prompt.startswith("\n\nHuman: hi")
    assert (pair.chosen, pair.rejected) == ("Boil it 8 minutes.", "No idea.")
    assert pair.source == "hh"


def test_hh_transcripts_with_different_histories_are_malformed() -> None:
    other = HH_REJECTED.replace("hi", "hey")
    with pytest.raises(MalformedRecord, match="differ before the final"):
        parse_record({"chosen": HH_CHOSEN, "rejected": other}, "hh")


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ({"prompt": "p", "chosen": "c"}, "missing field 'rejected'"),
        ({"prompt": "p", "chosen": 3, "rejected": "r"}, "'chosen' must be a string"),
        ({"chosen": "no turns here", "rejected": "x"}, "no '\\\\n\\\\nAssistant:' turn"),
        (["a", "list"], "expected a JSON object"),
    ],
)
def test_malformed_records_say_what_is_wrong(record: object, reason: str) -> None:
    with pytest.raises(MalformedRecord, match=reason):
        parse_record(record, "x")


def test_gzipped_and_plain_files_read_the_same(tmp_path: Path) -> None:
    lines = [json.dumps({"prompt": f"p{i}", "chosen": "good", "rejected": "bad"}) + "\n" for i in range(3)]
    plain, zipped = tmp_path / "pairs.jsonl", tmp_path / "pairs.jsonl.gz"
    plain.write_text("".join(lines))
    with gzip.open(zipped, "wt") as f:
        f.writelines(lines)
    assert read_pairs(plain) == read_pairs(zipped)
    assert [p.source for p in read_pairs(zipped)] == ["pairs"] * 3


def test_source_name_strips_data_suffixes() -> None:
    assert source_name("/x/hh_harmless_base.jsonl.gz") == "hh_harmless_base"
