"""The dependency direction of app/: each module imports only from its own layer or the layers before it.

1. config, schemas, errors, metrics, logs, templating (pure text rules: schemas render conversations with it),
   compute (the one compute thread), names (model version names)
2. model, tokenizer, heuristics, normalize, store, training/*, backends/*, random_hf_models
3. registry, admission, batcher, watcher
4. service
5. api/*
6. main, __main__
The client, its trainer adapters and the load generator talk HTTP only: they import no server module.

scripts/ and examples/ are thin entry points over public names of layers <= 3 (and the HTTP-only
modules), never `sys.path` tricks or imports from tests/. The exceptions are named in SCRIPT_EXCEPTIONS.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parents[2] / "app"

LAYERS = {
    "config": 1, "schemas": 1, "errors": 1, "metrics": 1, "templating": 1, "logs": 1, "names": 1,
    "compute": 1,
    "model": 2, "tokenizer": 2, "heuristics": 2, "normalize": 2, "store": 2, "training": 2,
    "backends": 2, "random_hf_models": 2,
    "registry": 3, "batcher": 3, "watcher": 3, "admission": 3,
    "service": 4,
    "api": 5,
    "main": 6, "__main__": 6,
}  # fmt: skip
HTTP_ONLY = {"client", "adapters", "loadgen"}
REPO = APP.parent
ENTRY_POINT_LAYER = 3  # scripts and examples may import public names of layers up to this one
SCRIPT_EXCEPTIONS = {
    # renders README's example from the app itself, so that the README cannot drift from it
    "scripts/readme_example.py": {"main"},
}


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


def entry_points() -> list[Path]:
    return sorted([*(REPO / "scripts").glob("*.py"), *(REPO / "examples").glob("*.py")])


def imported_names(tree: ast.AST) -> list[tuple[str, str]]:
    """(module, name) of every `from X import name`, and (module, "") of every `import X`."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, "") for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found += [(node.module, alias.name) for alias in node.names]
    return found


def touches_sys_path(tree: ast.AST) -> bool:
    return any(
        isinstance(node, ast.Attribute) and node.attr == "path" and getattr(node.value, "id", None) == "sys"
        for node in ast.walk(tree)
    )


@pytest.mark.parametrize("path", entry_points(), ids=lambda p: str(p.relative_to(REPO)))
def test_entry_points_import_public_names_of_early_layers_only(path: Path) -> None:
    tree = ast.parse(path.read_text(), filename=str(path))
    imports = imported_names(tree)
    rel = str(path.relative_to(REPO))
    assert not touches_sys_path(tree), f"{rel}: no sys.path tricks; install the project (scripts/setup.sh)"
    assert not [m for m, _ in imports if m == "tests" or m.startswith("tests.")], f"{rel} imports from tests/"
    app_names = [(m, n) for m, n in imports if m == "app" or m.startswith("app.")]
    private = [f"{m}.{n}" for m, n in app_names if n.startswith("_") or "._" in m]
    assert not private, f"{rel} imports private names {private}"
    modules = {top_module(m) if m != "app" else n for m, n in app_names}
    allowed = SCRIPT_EXCEPTIONS.get(rel, set()) | HTTP_ONLY
    late = {m for m in modules - allowed if LAYERS.get(m, 99) > ENTRY_POINT_LAYER}
    assert not late, f"{rel} imports from layers after {ENTRY_POINT_LAYER}: {sorted(late)}"
