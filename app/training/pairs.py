"""Preference pairs: the record every training step works on, and how pair files are read.

Two input formats are accepted, plain or gzipped JSON Lines:
- unified: `{"prompt", "chosen", "rejected"}` plus optional `source`, `kind`, `split`, `weight`;
- raw HH-RLHF transcripts: `{"chosen", "rejected"}` holding whole `\\n\\nHuman: ... \\n\\nAssistant: ...`
  conversations; the prompt is everything up to and including the last `Assistant:` turn.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO

ASSISTANT_TURN = "\n\nAssistant:"
TRAIN, VALIDATION = "train", "validation"


@dataclass(frozen=True)
class PreferencePair:
    prompt: str
    chosen: str
    rejected: str
    source: str  # where the pair came from: the input file's name, or "synthetic"
    kind: str = "real"  # "real", or the perturbation that made a synthetic rejected response
    split: str = ""  # "train", "validation", or "" before splitting

    @property
    def key(self) -> tuple[str, str, str]:
        return self.prompt, self.chosen, self.rejected

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)


class MalformedRecord(ValueError):
    """A line that is not a usable pair; the message says which field is wrong."""


def open_text(path: str | Path) -> IO[str]:
    """Open a plain or gzipped UTF-8 text file (gzip is recognised by its magic bytes, not the name)."""
    with open(path, "rb") as f:
        magic = f.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def source_name(path: str | Path) -> str:
    """'data/hh_sample.jsonl.gz' -> 'hh_sample': the default source of records that name none."""
    name = Path(path).name
    for suffix in (".gz", ".jsonl", ".json"):
        name = name.removesuffix(suffix)
    return name


def split_transcript(transcript: str) -> tuple[str, str]:
    """HH transcript -> (prompt up to and including the last Assistant turn, final reply stripped)."""
    cut = transcript.rfind(ASSISTANT_TURN)
    if cut < 0:
        raise MalformedRecord("transcript has no '\\n\\nAssistant:' turn")
    end = cut + len(ASSISTANT_TURN)
    return transcript[:end], transcript[end:].strip()


def _text_field(record: dict, name: str) -> str:
    if name not in record:
        raise MalformedRecord(f"missing field {name!r}")
    value = record[name]
    if not isinstance(value, str):
        raise MalformedRecord(f"field {name!r} must be a string, got {type(value).__name__}")
    return value


def parse_record(record: object, default_source: str) -> PreferencePair:
    """One decoded JSON line (either format) -> PreferencePair. Raises MalformedRecord."""
    if not isinstance(record, dict):
        raise MalformedRecord(f"expected a JSON object, got {type(record).__name__}")
    chosen, rejected = _text_field(record, "chosen"), _text_field(record, "rejected")
    if "prompt" in record:
        prompt = _text_field(record, "prompt")
    else:
        prompt, chosen = split_transcript(chosen)
        rejected_prompt, rejected = split_transcript(rejected)
        if rejected_prompt != prompt:
            raise MalformedRecord("chosen and rejected transcripts differ before the final Assistant turn")
    source = record.get("source") or default_source
    return PreferencePair(
        prompt=prompt,
        chosen=chosen,
        rejected=rejected,
        source=str(source),
        kind=str(record.get("kind") or "real"),
        split=str(record.get("split") or ""),
    )


def iter_records(path: str | Path) -> Iterator[tuple[int, PreferencePair | MalformedRecord]]:
    """(line number, pair or the reason it is malformed) for every non-blank line of `path`."""
    default_source = source_name(path)
    with open_text(path) as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield line_no, parse_record(json.loads(line), default_source)
            except json.JSONDecodeError as exc:
                yield line_no, MalformedRecord(f"invalid JSON ({exc.msg} at column {exc.colno})")
            except MalformedRecord as exc:
                yield line_no, exc


def read_pairs(path: str | Path, split: str | None = None) -> list[PreferencePair]:
    """Every well-formed pair of `path`, optionally only those of one split; malformed lines raise."""
    pairs = []
    for line_no, item in iter_records(path):
        if isinstance(item, MalformedRecord):
            raise MalformedRecord(f"{path}:{line_no}: {item}")
        if split is None or item.split == split:
            pairs.append(item)
    return pairs


def write_pairs(path: str | Path, pairs: list[PreferencePair]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for pair in pairs:
            f.write(pair.to_json() + "\n")


def fingerprint(pairs: list[PreferencePair]) -> str:
    """sha256 over the pairs' texts, sources and kinds, in order: identifies the data a model saw."""
    digest = hashlib.sha256()
    for pair in pairs:
        for part in (pair.prompt, pair.chosen, pair.rejected, pair.source, pair.kind):
            digest.update(part.encode("utf-8"))
            digest.update(b"\x00")
    return digest.hexdigest()
