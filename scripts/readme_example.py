"""Keep README's `/score` example true: send its request to the shipped default model and compare the
answer with the one README quotes.

The request is the README's own (`curl -s localhost:8000/score ... -d '{...}'`); the server runs in this
process (the real app and lifespan, on the CPU in float32) on `model_store/`, or `--url` names a running
one. Every number README quotes must match the served one within TOLERANCE (README rounds to three
decimals). Exit status 1 on a mismatch; `--update` rewrites README's quoted answer from the served one
(after a new default model is published, for example).

    python scripts/readme_example.py            # check
    python scripts/readme_example.py --update   # rewrite the quoted answer
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import httpx
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
TOLERANCE = 0.002  # README quotes rounded to 3 decimals; float32 on any CPU agrees far closer than this
# the curl of the /score example and the `# {...}` comment lines quoting its answer
EXAMPLE = re.compile(
    r"curl -s localhost:8000/score -H 'content-type: application/json' \\\n\s+-d '(?P<request>\{.*?\})'\n"
    r"(?P<answer>(?:# .*\n)+)"
)
QUOTED_NUMBER = re.compile(r'"(?P<key>\w+)": (?P<value>-?\d+(?:\.\d+)?)')
QUOTED_VERSION = re.compile(r'"model_version": "(?P<version>[^"]+)"')
QUOTED_LINES = (
    ("model_version", "alpha", "beta", "normalize", "namespace"),
    ("clip", "reward", "model_raw", "model_reward", "heuristic_reward"),
    ("hybrid_reward", "normalized_reward", "heuristic"),
)


def readme_example(text: str) -> tuple[dict, str]:
    """The example's request body and its quoted answer (comment lines, `# ` stripped)."""
    match = EXAMPLE.search(text)
    if match is None:
        raise SystemExit(
            f"{README}: no `curl -s localhost:8000/score ... -d '{{...}}'` example with a quoted answer"
        )
    answer = "".join(line[2:] + "\n" for line in match["answer"].splitlines())
    return json.loads(match["request"]), answer


def quoted_figures(answer: str) -> dict[str, float | str]:
    """model_version and every `"key": number` the quoted answer shows (nested heuristic parts too)."""
    figures: dict[str, float | str] = {m["key"]: float(m["value"]) for m in QUOTED_NUMBER.finditer(answer)}
    version = QUOTED_VERSION.search(answer)
    if version:
        figures["model_version"] = version["version"]
    return figures


def flatten(answer: dict) -> dict[str, object]:
    return {**answer, **answer.get("heuristic", {})}


def mismatches(quoted: dict[str, float | str], served: dict) -> list[str]:
    flat, found = flatten(served), []
    for key, value in quoted.items():
        actual = flat.get(key)
        if isinstance(value, str) or not isinstance(actual, (int, float)):
            if actual != value:
                found.append(f"{key}: README {value!r}, served {actual!r}")
        elif abs(actual - value) > TOLERANCE:
            found.append(f"{key}: README {value}, served {actual:.4f} (tolerance {TOLERANCE})")
    return found


def format_answer(served: dict) -> str:
    """The quoted form README uses: three lines, numbers rounded to 3 decimals, the heuristic's parts cut."""
    rounded = {k: round(v, 3) if isinstance(v, float) else v for k, v in served.items()}
    rounded["heuristic"] = {k: served["heuristic"][k] for k in ("toxicity", "words")}
    lines = [
        ", ".join(f'"{key}": {json.dumps(rounded[key])}' for key in keys).removesuffix("}")
        for keys in QUOTED_LINES
    ]
    return "{" + ",\n ".join(lines) + ", ...}}\n"


def served_in_process(request: dict, store: Path) -> dict:
    settings = Settings(model_store=store, device="cpu", dtype="float32", stats_path="", reload_interval=0)
    with TestClient(create_app(settings)) as client:
        deadline = time.monotonic() + 120
        while client.get("/readyz").status_code != 200:
            if time.monotonic() > deadline:
                raise SystemExit(f"{store}: the default model did not load: {client.get('/readyz').text}")
            time.sleep(0.5)
        return client.post("/score", json=request).raise_for_status().json()


def served_by_url(request: dict, url: str) -> dict:
    return httpx.post(f"{url}/score", json=request, timeout=60).raise_for_status().json()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-store", type=Path, default=REPO / "model_store", help="CURRENT is served")
    parser.add_argument("--url", help="ask this running server instead (its dtype must be float32)")
    parser.add_argument("--update", action="store_true", help="rewrite README's quoted answer")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    text = README.read_text()
    request, answer = readme_example(text)
    served = served_by_url(request, args.url) if args.url else served_in_process(request, args.model_store)
    print(json.dumps(served, indent=2))
    if args.update:
        quoted = "".join(f"# {line}\n" for line in format_answer(served).splitlines())
        README.write_text(text.replace(EXAMPLE.search(text)["answer"], quoted, 1))
        print(f"updated {README}")
        return 0
    problems = mismatches(quoted_figures(answer), served)
    for problem in problems:
        print(f"README example differs: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
