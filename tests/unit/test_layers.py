"""The dependency direction of app/: each module imports only from its own layer or the layers before it.

1. config, schemas, errors, metrics, logs, templating (pure text rules: schemas render conversations with it)
2. model, tokenizer, heuristics, normalize, store, training/*, backends/*
3. registry, admission, batcher, watcher
4. service
5. api/*
6. main, __main__
The client and its trainer adapters talk HTTP only: they import no server module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parents[2] / "app"

LAYERS = {
    "config": 1, "schemas": 1, "errors": 1, "metrics": 1, "templating": 1, "logs": 1,
    "model": 2, "tokenizer": 2, "heuristics": 2, "normalize": 2, "store": 2, "training": 2,
    "backends": 2,
    "registry": 3, "batcher": 3, "watcher": 3, "admission": 3,
    "service": 4,
    "api": 5,
    "main": 6, "__main__": 6,
}  # fmt: skip
HTTP_ONLY = {"client", "adapters"}


def top_module(dotted: str) -> str:
    """'app.training.trainer' -> 'training'."""
    return dotted.split(".")[1] if dotted.count(".") >= 1 else ""


def app_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("app.")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("app"):
            if node.module == "app":
                found |= {f"app.{alias.name}" for alias in node.names}
            else:
                found.add(node.module)
    return {top_module(name) for name in found}


def modules() -> list[Path]:
    return sorted(p for p in APP.rglob("*.py") if p.name != "__init__.py" or p.parent != APP)


def module_key(path: Path) -> str:
    rel = path.relative_to(APP)
    return rel.parts[0].removesuffix(".py")


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(APP)))
def test_module_imports_only_from_its_layer_or_before(path: Path) -> None:
    key = module_key(path)
    imported = app_imports(path) - {key}
    if key in HTTP_ONLY:
        server_side = imported - HTTP_ONLY - {"templating"}
        assert not server_side, f"{path.name}: the client side must not import server modules {server_side}"
        return
    assert key in LAYERS, f"app/{key} has no layer: add it to LAYERS in this test and to the style guide"
    upward = {m for m in imported if LAYERS.get(m, 99) > LAYERS[key]}
    assert not upward, f"app/{key} (layer {LAYERS[key]}) imports from later layers: {sorted(upward)}"


def test_nothing_imports_main() -> None:
    importers = [
        p.name for p in modules() if {"main", "__main__"} & app_imports(p) and module_key(p) != "__main__"
    ]
    assert not importers, f"main is the composition root; imported by {importers}"
