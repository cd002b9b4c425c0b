"""The model store: versioned checkpoints on disk, published atomically, verified before use.

    model_store/
      CURRENT            the live version's name (replaced atomically)
      <version>/
        model.safetensors  weights (no pickles anywhere)
        config.json        {"format", "model": RewardModelConfig, "encoding": EncodingSpec, "weights_dtype"}
        tokenizer.json     HF tokenizers file
        metrics.json       curves, validation accuracy, "reward_mean" / "reward_std" for calibration
        manifest.json      version, created, sha256 of every other file, training args, data fingerprint

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
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file, save_file

from app.backends import RewardBackend
from app.backends.native import NativeBackend
from app.errors import CheckpointError
from app.model import RewardModel, RewardModelConfig
from app.tokenizer import EncodingSpec, PairTokenizer

if TYPE_CHECKING:  # the registry sets it; the store only carries it
    from app.backends.choice import Execution

FORMAT_VERSION = 1
CURRENT_FILE = "CURRENT"
MANIFEST = "manifest.json"
REQUIRED_FILES = ("model.safetensors", "config.json", "tokenizer.json", "metrics.json")
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
    missing = [name for name in REQUIRED_FILES if name not in files]
    if missing:
        raise CheckpointError(f"{manifest_path}: manifest lists no checksum for {missing}")
    for name, expected in files.items():
        path = directory / name
        if Path(name).name != name or not path.is_file():
            raise CheckpointError(f"{directory}: file {name!r} listed in the manifest is missing")
        actual = sha256_file(path)
        if actual != expected:
            raise CheckpointError(
                f"{path}: sha256 {actual[:12]}… does not match the manifest's {expected[:12]}…"
            )
    return manifest


@dataclass
class LoadedVersion:
    version: str
    model: RewardModel
    tokenizer: PairTokenizer
    manifest: dict
    metrics: dict
    config: dict
    backend: RewardBackend  # the only way serving reaches the model: encode at admission, forward in batches
    execution: Execution | None = None  # how its forward pass runs here, chosen at load by the registry

    @property
    def calibration(self) -> tuple[float, float]:
        """Validation mean and std of the raw model reward, to put it on a standard scale."""
        mean = float(self.metrics.get("reward_mean", 0.0))
        std = float(self.metrics.get("reward_std", 1.0))
        return mean, std if std > 0 else 1.0


def _read_config(directory: Path) -> tuple[RewardModelConfig, EncodingSpec, dict]:
    try:
        config = json.loads((directory / "config.json").read_text())
        if config.get("format") != FORMAT_VERSION:
            raise CheckpointError(
                f"{directory}: config format {config.get('format')!r}, expected {FORMAT_VERSION}"
            )
        return (
            RewardModelConfig.from_dict(config["model"]),
            EncodingSpec.from_dict(config["encoding"]),
            config,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{directory}/config.json: incompatible config ({exc})") from exc


def load_version(directory: str | Path, device: str | torch.device = "cpu") -> LoadedVersion:
    """Rebuild a model from a version directory alone, after verifying every checksum."""
    directory = Path(directory)
    manifest = verify_version(directory)
    model_cfg, spec, config = _read_config(directory)
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
    try:
        metrics = json.loads((directory / "metrics.json").read_text())
    except ValueError as exc:
        raise CheckpointError(f"{directory}/metrics.json: unreadable ({exc})") from exc
    model.to(device).eval()
    name = manifest.get("version", directory.name)
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
        files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        manifest = {
            "format": FORMAT_VERSION,
            "version": version,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "files": files,
            **(manifest_extra or {}),
        }
        write_json_atomic(tmp / MANIFEST, manifest)
        load_version(tmp)  # refuses anything that would not load in the service
        for p in tmp.iterdir():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
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
