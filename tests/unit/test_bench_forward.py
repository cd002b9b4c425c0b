"""The forward benchmark times the packed and the padded forward on the same batches and reports both."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import load_script


def test_both_forwards_are_timed_for_every_batch_size_and_order(
    tiny_model_store: Path, tmp_path: Path
) -> None:
    out = tmp_path / "forward.json"
    with load_script("bench_forward") as bench:
        bench.main([
            "--model-store", str(tiny_model_store), "--dtypes", "float32", "--batch-sizes", "1", "3",
            "--pairs", "6", "--rounds", "1", "--threads", "1", "--json", str(out),
        ])  # fmt: skip
    report = json.loads(out.read_text())
    cases = {(r["batch"], r["order"], r["forward"]) for r in report["rows"]}
    assert cases == {
        (b, o, f) for b, o in ((1, "random"), (3, "random"), (3, "sorted")) for f in ("packed", "padded")
    }
    assert all(r["items_per_s"] > 0 and r["ms_per_batch"] > 0 for r in report["rows"])
    assert report["cpu"]
