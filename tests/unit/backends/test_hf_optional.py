"""transformers is optional: of the serving code only app/backends/hf.py imports it, and only when an HF
version loads. app/random_hf_models.py (tiny random checkpoints for tests and benchmarks) imports it too,
inside its functions, and no other module of app/ imports it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

APP = Path(__file__).resolve().parents[3] / "app"


def imports_transformers(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        if any(name.split(".")[0] == "transformers" for name in names):
            return True
    return False


def test_only_the_hf_backend_and_the_random_model_builders_import_transformers() -> None:
    importers = sorted(str(p.relative_to(APP)) for p in APP.rglob("*.py") if imports_transformers(p))
    assert importers == ["backends/hf.py", "random_hf_models.py"]


def test_no_module_of_app_imports_the_random_model_builders() -> None:
    importers = [
        p.name
        for p in APP.rglob("*.py")
        if "random_hf_models" in p.read_text() and p.name != "random_hf_models.py"
    ]
    assert importers == []


def test_serving_a_native_version_does_not_import_transformers(tiny_model_store: Path) -> None:
    code = (
        "import sys\n"
        "from app.main import create_app\n"
        "from app.config import Settings\n"
        "from app.store import load_version, read_current\n"
        f"store = {str(tiny_model_store)!r}\n"
        "create_app(Settings(model_store=store))\n"
        "load_version(f'{store}/{read_current(store)}')\n"
        "assert 'transformers' not in sys.modules, 'transformers was imported'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=APP.parent, timeout=120
    )
    assert result.returncode == 0, result.stderr
