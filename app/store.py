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
import math
import os
import re
import shutil
import struct
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file, save_file

from app.backends import RewardBackend
from app.backends.devices import TORCH_DTYPES
from app.backends.hf import HF_DIR, HFBackend, HFSpec
from app.backends.native import NativeBackend
from app.config import default_of
from app.errors import CheckpointError
from app.model import RewardModel, RewardModelConfig
from app.names import validate_version_name
from app.tokenizer import EncodingSpec, PairTokenizer

if TYPE_CHECKING:  # the registry sets it; the store only carries it
    from app.backends.choice import Execution

FORMAT_VERSION = 1
CURRENT_FILE = "CURRENT"
MANIFEST = "manifest.json"
REQUIRED_FILES = {
    "native": ("model.safetensors", "config.json", "tokenizer.json", "metrics.json"),
    "hf": ("config.json", "metrics.json", f"{HF_DIR}/config.json"),
}
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# mkstemp/mkdtemp create owner-only files; a store is read by the service, often as another user
READABLE_FILE, READABLE_DIR = 0o644, 0o755

# --- limits checked before a checkpoint's weights are allocated ---
# a safetensors header (JSON) of a model this service builds is a few kB; real encoders stay under 1 MiB
MAX_SAFETENSORS_HEADER_BYTES = 4 * 1024**2
MAX_TENSORS = 10_000  # tensors in one weights file (a 64-layer model has about 1,000)
# the native architecture's sane range: beyond it a config is a mistake or an attack on memory
ARCHITECTURE_BOUNDS = {
    "vocab_size": 1_048_576, "max_len": 16_384, "hidden": 8_192, "layers": 64, "heads": 128, "ffn_ratio": 16,
}  # fmt: skip
SAFETENSORS_DTYPE_BYTES = {"F32": 4, "F16": 2, "BF16": 2}  # what save_checkpoint_files writes


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


def write_text_atomic(path: Path, text: str) -> None:
    """Write so that a reader sees the old file or the new one, never a torn one: a temporary file beside
    it, fsynced, renamed over it, then the directory fsynced."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, READABLE_FILE)
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_json_atomic(path: Path, data: dict, allow_nan: bool = True) -> None:
    """write_text_atomic of JSON. With `allow_nan=False`, NaN or infinity is a ValueError rather than a
    file no strict parser reads."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True, allow_nan=allow_nan))


def save_checkpoint_files(
    directory: Path,
    model: RewardModel,
    tokenizer: PairTokenizer,
    metrics: dict,
    weights_dtype: str = "float32",
) -> None:
    """Write weights, config, tokenizer and metrics of a model into `directory`."""
    if weights_dtype not in TORCH_DTYPES:
        raise ValueError(f"weights_dtype must be one of {sorted(TORCH_DTYPES)}, got {weights_dtype!r}")
    dtype = TORCH_DTYPES[weights_dtype]
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
        raise CheckpointError(f"{directory.name}: the manifest lists a file outside the version: {name!r}")
    path = directory.joinpath(*parts)
    inside = os.path.realpath(directory)
    if os.path.commonpath([inside, os.path.realpath(path)]) != inside:
        raise CheckpointError(f"{directory.name}: {name!r} resolves outside the version")
    if not path.is_file():
        raise CheckpointError(f"{directory.name}: file {name!r} listed in the manifest is missing")
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
    check_inside_store(directory)
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        raise CheckpointError(f"{directory.name}: no {MANIFEST}")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{directory.name}/{MANIFEST}: unreadable manifest ({exc})") from exc
    files = check_manifest_shape(manifest, directory.name)
    for name, expected in files.items():
        path = _member_path(directory, name)
        actual = sha256_file(path)
        if actual != expected:
            raise CheckpointError(
                f"{directory.name}/{name}: sha256 {actual[:12]}… does not match "
                f"the manifest's {expected[:12]}…"
            )
    backend = "native"
    if "config.json" in files:
        backend = backend_of(_read_json(directory / "config.json", "incompatible config"))
    missing = [name for name in REQUIRED_FILES[backend] if name not in files]
    if missing:
        raise CheckpointError(f"{directory.name}/{MANIFEST}: manifest lists no checksum for {missing}")
    return manifest


def check_inside_store(directory: Path) -> None:
    """Refuse a version directory, or any entry in it, that resolves outside its store (a symlink out):
    the store's checksums would vouch for files someone else controls."""
    store = os.path.realpath(directory.parent)
    entries = [directory, *directory.iterdir()] if directory.is_dir() else [directory]
    for entry in entries:
        if os.path.commonpath([store, os.path.realpath(entry)]) != store:
            raise CheckpointError(f"{directory.name}: {entry.name} resolves outside the model store")


def check_manifest_shape(manifest: object, name: str) -> dict[str, str]:
    """The manifest must be an object whose `files` maps names to sha256 hex digests, and whose
    `version` and `created`, when present, are strings. Returns `files`."""
    if not isinstance(manifest, dict):
        raise CheckpointError(f"{name}/{MANIFEST}: a {type(manifest).__name__}, not a JSON object")
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and _SHA256.match(v) for k, v in files.items()
    ):
        raise CheckpointError(f"{name}/{MANIFEST}: `files` must map file names to sha256 hex digests")
    for key in ("version", "created"):
        if not isinstance(manifest.get(key, ""), str):
            raise CheckpointError(f"{name}/{MANIFEST}: `{key}` must be a string")
    return files


def check_calibration(metrics: object, name: str) -> None:
    """metrics.json must be an object; `reward_mean` and `reward_std`, when present, finite numbers and
    the std > 0: rewards are divided by it, so anything else makes every score NaN or an error."""
    if not isinstance(metrics, dict):
        raise CheckpointError(f"{name}/metrics.json: a {type(metrics).__name__}, not a JSON object")
    for key in ("reward_mean", "reward_std"):
        value = metrics.get(key, 1.0)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise CheckpointError(f"{name}/metrics.json: {key} must be a finite number, got {value!r}")
    if metrics.get("reward_std", 1.0) <= 0:
        raise CheckpointError(f"{name}/metrics.json: reward_std must be > 0, got {metrics['reward_std']!r}")


def _read_json(path: Path, problem: str = "unreadable") -> dict:
    """A JSON object from `path`; CheckpointError "<version>/<file>: <problem> (<why>)" otherwise."""
    where = f"{path.parent.name}/{path.name}"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{where}: {problem} ({exc})") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{where}: {problem} (not a JSON object)")
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
    execution: Execution | None = None  # how its forward pass runs here, chosen at load by the registry

    @property
    def calibration(self) -> tuple[float, float]:
        """Validation mean and std of the raw model reward, to put it on a standard scale."""
        mean = float(self.metrics.get("reward_mean", 0.0))
        std = float(self.metrics.get("reward_std", 1.0))
        return mean, std if std > 0 else 1.0


def _native_config(directory: Path, config: dict) -> tuple[RewardModelConfig, EncodingSpec]:
    try:
        if not isinstance(config.get("model"), dict) or not isinstance(config.get("encoding"), dict):
            raise CheckpointError(f"{directory.name}/config.json: `model` and `encoding` must be objects")
        return RewardModelConfig.from_dict(config["model"]), EncodingSpec.from_dict(config["encoding"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{directory.name}/config.json: incompatible config ({exc})") from exc


def _read_native(directory: Path, config: dict, max_model_bytes: int) -> tuple[RewardModel, PairTokenizer]:
    """The architecture's bounds and the weights file's header are checked against the architecture and
    the memory budget before anything is allocated for the weights."""
    model_cfg, spec = _native_config(directory, config)
    check_architecture_bounds(model_cfg, directory.name)
    check_weights_file(directory / "model.safetensors", model_cfg, max_model_bytes)
    try:
        tokenizer = PairTokenizer.load(directory / "tokenizer.json", spec)
        state = load_file(str(directory / "model.safetensors"))
        model = RewardModel(model_cfg)
        model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    except Exception as exc:  # safetensors, tokenizers and torch each raise their own types
        raise CheckpointError(f"{directory.name}: cannot load weights/tokenizer ({exc})") from exc
    if tokenizer.vocab_size > model_cfg.vocab_size:
        raise CheckpointError(
            f"{directory.name}: tokenizer has {tokenizer.vocab_size} tokens, "
            f"model only {model_cfg.vocab_size}"
        )
    return model, tokenizer


def load_version(
    directory: str | Path,
    device: str | torch.device = "cpu",
    max_model_bytes: int = default_of("max_model_bytes"),
    manifest: dict | None = None,
) -> LoadedVersion:
    """Rebuild a model from a version directory alone, after verifying every checksum (`manifest`: what
    `verify_version` returned for it already, so that a caller can hash on another thread) and the
    calibration; its config.json says which backend serves it."""
    directory = Path(directory)
    manifest = manifest if manifest is not None else verify_version(directory)
    config = _read_json(directory / "config.json", problem="incompatible config")
    if config.get("format") != FORMAT_VERSION:
        found = config.get("format")
        raise CheckpointError(f"{directory.name}: config format {found!r}, expected {FORMAT_VERSION}")
    metrics = _read_json(directory / "metrics.json")
    check_calibration(metrics, directory.name)
    name = manifest.get("version", directory.name)
    if backend_of(config) == "hf":
        spec = HFSpec.from_dict(config.get("hf", {}))
        backend = HFBackend.load(directory / HF_DIR, spec, torch.device(device))
        return LoadedVersion(name, None, None, manifest, metrics, config, backend)
    model, tokenizer = _read_native(directory, config, max_model_bytes)
    model.to(device).eval()
    return LoadedVersion(name, model, tokenizer, manifest, metrics, config, NativeBackend(model, tokenizer))


def read_current(store: str | Path) -> str | None:
    path = Path(store) / CURRENT_FILE
    if not path.is_file():
        return None
    store_real = os.path.realpath(store)
    if os.path.commonpath([store_real, os.path.realpath(path)]) != store_real:
        raise CheckpointError(f"{CURRENT_FILE} resolves outside the model store")
    return validate_version_name(path.read_text().strip())


def set_current(store: str | Path, version: str) -> None:
    """Point CURRENT at `version` atomically (write a temp file, fsync, rename over)."""
    store = Path(store)
    validate_version_name(version)
    if not (store / version / MANIFEST).is_file():
        raise CheckpointError(f"no published version {version!r} in {store}")
    write_text_atomic(store / CURRENT_FILE, version + "\n")


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


# --- checks of a checkpoint's size and weights file, before anything is allocated for it ---


def check_architecture_bounds(cfg: RewardModelConfig, name: str) -> None:
    """Whole numbers within ARCHITECTURE_BOUNDS; a 300-layer config is refused before any allocation."""
    for field in fields(RewardModelConfig):
        value = getattr(cfg, field.name)
        if field.type == "int" and (isinstance(value, bool) or not isinstance(value, int)):
            raise CheckpointError(f"{name}/config.json: model.{field.name} must be an integer, got {value!r}")
    too_large = {k: getattr(cfg, k) for k, bound in ARCHITECTURE_BOUNDS.items() if getattr(cfg, k) > bound}
    if too_large:
        limits = {k: ARCHITECTURE_BOUNDS[k] for k in too_large}
        raise CheckpointError(f"{name}/config.json: architecture {too_large} exceeds the bounds {limits}")


def expected_tensors(cfg: RewardModelConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor of the model's state dict, built on the meta device (no memory)."""
    with torch.device("meta"):
        model = RewardModel(cfg)
    return {key: tuple(tensor.shape) for key, tensor in model.state_dict().items()}


def read_safetensors_header(path: Path) -> dict:
    """The header of a safetensors file (8-byte little-endian length, then JSON), bounded in size and
    tensor count, with each tensor's data range checked against the file's size."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(8)
        (length,) = struct.unpack("<Q", prefix) if len(prefix) == 8 else (-1,)
        if not 0 < length <= min(MAX_SAFETENSORS_HEADER_BYTES, size - 8):
            raise CheckpointError(
                f"model.safetensors: header of {length} bytes (at most {MAX_SAFETENSORS_HEADER_BYTES})"
            )
        try:
            header = json.loads(f.read(length))
        except ValueError as exc:
            raise CheckpointError(f"model.safetensors: unreadable header ({exc})") from exc
    if not isinstance(header, dict) or len(header) > MAX_TENSORS + 1:  # + the optional __metadata__
        raise CheckpointError(f"model.safetensors: header is not an object of at most {MAX_TENSORS} tensors")
    header.pop("__metadata__", None)
    for key, entry in header.items():
        _check_tensor_entry(key, entry, size - 8 - length)
    return header


def _check_tensor_entry(key: str, entry: object, data_size: int) -> None:
    try:
        dtype, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
        valid = dtype in SAFETENSORS_DTYPE_BYTES and all(isinstance(n, int) and n >= 0 for n in shape)
        nbytes = math.prod(shape) * SAFETENSORS_DTYPE_BYTES[dtype] if valid else -1
        valid = valid and 0 <= begin <= end <= data_size and end - begin == nbytes
    except (TypeError, KeyError, ValueError):
        valid = False
    if not valid:
        raise CheckpointError(f"model.safetensors: tensor {key!r} has a malformed entry in the header")


def memory_available_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux); None where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def check_weights_file(path: Path, cfg: RewardModelConfig, max_model_bytes: int) -> None:
    """Before loading: the file's tensors must be exactly the model's (names and shapes), and the load's
    memory (the file's tensors plus the float32 model) within `max_model_bytes` and what is available."""
    header = read_safetensors_header(path)
    expected = expected_tensors(cfg)
    found = {key: tuple(entry["shape"]) for key, entry in header.items()}
    if found != expected:
        missing, unexpected = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
        reshaped = sorted(k for k in set(found) & set(expected) if found[k] != expected[k])
        raise CheckpointError(
            f"model.safetensors does not match config.json: missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}, other shapes {reshaped[:5]}"
        )
    needed = sum(entry["data_offsets"][1] - entry["data_offsets"][0] for entry in header.values())
    needed += 4 * sum(math.prod(shape) for shape in expected.values())
    available = memory_available_bytes()
    if needed > max_model_bytes or (available is not None and needed > available):
        raise CheckpointError(
            f"loading needs about {needed / 2**20:.0f} MiB; the limit is {max_model_bytes / 2**20:.0f} MiB "
            f"(REWARD_MAX_MODEL_BYTES) and {'?' if available is None else available // 2**20} MiB "
            "are available"
        )
