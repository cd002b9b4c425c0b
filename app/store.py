"""The model store: versioned checkpoints on disk, published atomically, verified before use.

    model_store/
      CURRENT            the live version's name (replaced atomically)
      <version>/
        model.safetensors  weights (no pickles anywhere)
        config.json        {"format", "model": RewardModelConfig, "encoding": EncodingSpec, "weights_dtype"}
        tokenizer.json     HF tokenizers file
        metrics.json       curves, validation accuracy, "reward_mean" / "reward_std" for calibration
        manifest.json      version, created, sha256 of every other file, training args, data fingerprint

A Hugging Face version (`"backend": "hf"` in config.json) holds config.json, metrics.json and the
checkpoint's own files under `hf/` (its config.json, safetensors weights, tokenizer files); see
app/backends/hf.py. The manifest lists every file, those under `hf/` by their relative path.

A version is written under `.tmp-*`, verified, then renamed into place; only then is CURRENT replaced.
A crash at any moment leaves the previous CURRENT pointing at a complete version.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import torch
from safetensors.torch import load_file, save_file

from app.backends import RewardBackend
from app.backends.hf import HF_DIR, HFBackend, HFSpec
from app.backends.native import NativeBackend
from app.errors import CheckpointError
from app.model import RewardModel, RewardModelConfig
from app.tokenizer import EncodingSpec, PairTokenizer

FORMAT_VERSION = 1
CURRENT_FILE = "CURRENT"
MANIFEST = "manifest.json"
REQUIRED_FILES = {
    "native": ("model.safetensors", "config.json", "tokenizer.json", "metrics.json"),
    "hf": ("config.json", "metrics.json", f"{HF_DIR}/config.json"),
}
_VERSION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# mkstemp/mkdtemp create owner-only files; a store is read by the service, often as another user
READABLE_FILE, READABLE_DIR = 0o644, 0o755
_WEIGHT_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def validate_version_name(version: str) -> str:
    """Refuse names that could escape the store (`..`, `/`) or hide (`.tmp-*`)."""
    if not isinstance(version, str) or not _VERSION_NAME.match(version) or ".." in version:
        raise CheckpointError(
            f"invalid version name {version!r}: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return version


def new_version_name() -> str:
    return time.strftime("v%Y%m%d-%H%M%S", time.gmtime()) + f"-{os.getpid() % 10000:04d}"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, data: dict) -> None:
    """Write JSON so that a reader sees the old file or the new one, never a torn one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, READABLE_FILE)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def save_checkpoint_files(
    directory: Path,
    model: RewardModel,
    tokenizer: PairTokenizer,
    metrics: dict,
    weights_dtype: str = "float32",
) -> None:
    """Write weights, config, tokenizer and metrics of a model into `directory`."""
    if weights_dtype not in _WEIGHT_DTYPES:
        raise ValueError(f"weights_dtype must be one of {sorted(_WEIGHT_DTYPES)}, got {weights_dtype!r}")
    dtype = _WEIGHT_DTYPES[weights_dtype]
    state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    config = {
        "format": FORMAT_VERSION,
        "model": model.cfg.to_dict(),
        "encoding": tokenizer.spec.to_dict(),
        "weights_dtype": weights_dtype,
    }
    (directory / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    tokenizer.save(directory / "tokenizer.json")
    (directory / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))


def _member_path(directory: Path, name: str) -> Path:
    """The file `name` of a version: directly in it or in one subdirectory (`hf/`), never outside it."""
    parts = PurePosixPath(name).parts
    hidden_or_up = any(part.startswith(".") for part in parts)  # "..", ".tmp-*", ...
    if not 1 <= len(parts) <= 2 or hidden_or_up or "\\" in name or PurePosixPath(name).is_absolute():
        raise CheckpointError(f"{directory}: the manifest lists a file outside the version: {name!r}")
    path = directory.joinpath(*parts)
    if not path.is_file():
        raise CheckpointError(f"{directory}: file {name!r} listed in the manifest is missing")
    return path


def version_files(directory: Path) -> list[str]:
    """Relative paths of the files of a version being written (manifest excluded), sorted."""
    found = (p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)
    return sorted(p.relative_to(directory).as_posix() for p in found)


def backend_of(config: dict) -> str:
    """Which backend a version's config.json asks for ("native" when it names none)."""
    backend = config.get("backend", "native")
    if backend not in REQUIRED_FILES:
        raise CheckpointError(f"config.json names backend {backend!r}; known: {sorted(REQUIRED_FILES)}")
    return backend


def verify_version(directory: Path) -> dict:
    """Check the manifest and every file's sha256; return the manifest. Raises CheckpointError."""
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        raise CheckpointError(f"{directory}: no {MANIFEST}")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{manifest_path}: unreadable manifest ({exc})") from exc
    files = manifest.get("files", {})
    for name, expected in files.items():
        path = _member_path(directory, name)
        actual = sha256_file(path)
        if actual != expected:
            raise CheckpointError(
                f"{path}: sha256 {actual[:12]}… does not match the manifest's {expected[:12]}…"
            )
    backend = "native"
    if "config.json" in files:
        backend = backend_of(_read_json(directory / "config.json", "incompatible config"))
    missing = [name for name in REQUIRED_FILES[backend] if name not in files]
    if missing:
        raise CheckpointError(f"{manifest_path}: manifest lists no checksum for {missing}")
    return manifest


def _read_json(path: Path, problem: str = "unreadable") -> dict:
    """A JSON object from `path`; CheckpointError "<path>: <problem> (<why>)" otherwise."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: {problem} ({exc})") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: {problem} (not a JSON object)")
    return data


@dataclass
class LoadedVersion:
    version: str
    model: RewardModel | None  # native versions only (training and evaluation tools use it)
    tokenizer: PairTokenizer | None  # native versions only
    manifest: dict
    metrics: dict
    config: dict
    backend: RewardBackend  # the only way serving reaches the model: encode at admission, forward in batches

    @property
    def calibration(self) -> tuple[float, float]:
        """Validation mean and std of the raw model reward, to put it on a standard scale."""
        mean = float(self.metrics.get("reward_mean", 0.0))
        std = float(self.metrics.get("reward_std", 1.0))
        return mean, std if std > 0 else 1.0


def _read_native(directory: Path, config: dict) -> tuple[RewardModel, PairTokenizer]:
    try:
        model_cfg = RewardModelConfig.from_dict(config["model"])
        spec = EncodingSpec.from_dict(config["encoding"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{directory}/config.json: incompatible config ({exc})") from exc
    try:
        tokenizer = PairTokenizer.load(directory / "tokenizer.json", spec)
        state = load_file(str(directory / "model.safetensors"))
        model = RewardModel(model_cfg)
        model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    except Exception as exc:  # safetensors, tokenizers and torch each raise their own types
        raise CheckpointError(f"{directory}: cannot load weights/tokenizer ({exc})") from exc
    if tokenizer.vocab_size > model_cfg.vocab_size:
        raise CheckpointError(
            f"{directory}: tokenizer has {tokenizer.vocab_size} tokens, model only {model_cfg.vocab_size}"
        )
    return model, tokenizer


def load_version(directory: str | Path, device: str | torch.device = "cpu") -> LoadedVersion:
    """Rebuild a model from a version directory alone, after verifying every checksum; its config.json
    says which backend serves it."""
    directory = Path(directory)
    manifest = verify_version(directory)
    config = _read_json(directory / "config.json", problem="incompatible config")
    if config.get("format") != FORMAT_VERSION:
        found = config.get("format")
        raise CheckpointError(f"{directory}: config format {found!r}, expected {FORMAT_VERSION}")
    metrics = _read_json(directory / "metrics.json")
    name = manifest.get("version", directory.name)
    if backend_of(config) == "hf":
        spec = HFSpec.from_dict(config.get("hf", {}))
        backend = HFBackend.load(directory / HF_DIR, spec, torch.device(device))
        return LoadedVersion(name, None, None, manifest, metrics, config, backend)
    model, tokenizer = _read_native(directory, config)
    model.to(device).eval()
    return LoadedVersion(name, model, tokenizer, manifest, metrics, config, NativeBackend(model, tokenizer))


def read_current(store: str | Path) -> str | None:
    path = Path(store) / CURRENT_FILE
    if not path.is_file():
        return None
    return validate_version_name(path.read_text().strip())


def set_current(store: str | Path, version: str) -> None:
    """Point CURRENT at `version` atomically (write a temp file, fsync, rename over)."""
    store = Path(store)
    validate_version_name(version)
    if not (store / version / MANIFEST).is_file():
        raise CheckpointError(f"no published version {version!r} in {store}")
    fd, tmp = tempfile.mkstemp(dir=store, prefix=".CURRENT.")
    try:
        os.fchmod(fd, READABLE_FILE)
        with os.fdopen(fd, "w") as f:
            f.write(version + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, store / CURRENT_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(store)


def version_dir(store: str | Path, version: str) -> Path:
    return Path(store) / validate_version_name(version)


def list_versions(store: str | Path) -> list[str]:
    """Published versions (those with a manifest), oldest first by their manifest's creation time."""
    store = Path(store)
    if not store.is_dir():
        return []
    found = []
    for path in store.iterdir():
        if path.name.startswith(".") or not (path / MANIFEST).is_file():
            continue
        try:
            created = json.loads((path / MANIFEST).read_text()).get("created", "")
        except ValueError:
            continue
        found.append((str(created), path.name))
    return [name for _, name in sorted(found)]


def publish_version(
    store: str | Path,
    write_files: Callable[[Path], None],
    version: str | None = None,
    manifest_extra: dict | None = None,
    make_current: bool = True,
) -> Path:
    """Write a version with `write_files(tmpdir)`, add its manifest, verify it, rename it into place,
    then (optionally) make it current. Returns the version's directory."""
    store = Path(store)
    store.mkdir(parents=True, exist_ok=True)
    version = validate_version_name(version or new_version_name())
    final = store / version
    if final.exists():
        raise CheckpointError(f"version {version!r} already exists in {store}; versions are immutable")
    tmp = Path(tempfile.mkdtemp(dir=store, prefix=f".tmp-{version}-"))
    try:
        tmp.chmod(READABLE_DIR)
        write_files(tmp)
        files = {name: sha256_file(tmp / name) for name in version_files(tmp)}
        manifest = {
            "format": FORMAT_VERSION,
            "version": version,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "files": files,
            **(manifest_extra or {}),
        }
        write_json_atomic(tmp / MANIFEST, manifest)
        load_version(tmp)  # refuses anything that would not load in the service
        for name in [*version_files(tmp), MANIFEST]:
            with open(tmp / name, "rb") as f:
                os.fsync(f.fileno())
        for subdirectory in (p for p in tmp.iterdir() if p.is_dir()):
            _fsync_dir(subdirectory)
        os.rename(tmp, final)
        _fsync_dir(store)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if make_current:
        set_current(store, version)
    return final


def remove_stale_temporaries(store: str | Path, older_than_s: float = 0.0) -> list[str]:
    """Delete `.tmp-*` directories left by publishes that were killed midway, when last modified more
    than `older_than_s` ago (a publish in progress elsewhere keeps its directory)."""
    removed = []
    cutoff = time.time() - older_than_s
    for path in Path(store).glob(".tmp-*"):
        try:
            if path.stat().st_mtime > cutoff:
                continue
        except OSError:
            continue
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():  # a read-only store keeps them: not reported as removed
            removed.append(path.name)
    return removed
