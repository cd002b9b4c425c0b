"""ONNX Runtime execution of the native encoder (the CPU path of text-embeddings-inference).

The graph is exported from the version's float32 model at its first load, with dynamic batch and
sequence axes, into a derived cache that cannot be mistaken for the version's checksummed files:

    <cache>/<version>/<key>/model.onnx          (+ model-int8.onnx, each with a .sha256 beside it)

`<key>` is a digest of the weights' and config's checksums from the manifest and of the exporter's and
runtime's versions, so a cached graph is reused only for the same weights exported by the same tools;
its own sha256 is checked on reuse (a torn or altered file is exported again). A graph is data: loading
it runs no code from the checkpoint, and no custom-operator library is ever registered with the
runtime. Whatever the cache holds, the caller verifies the session's rewards against torch float32
on the canary batch before serving from it (app/backends/choice.py).

Optional dependency: the `[onnx]` extra (onnxruntime, onnx, and onnxscript for torch's exporter).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

import torch

from app.model import RewardModel
from app.store import sha256_file
from app.tokenizer import PairTokenizer

log = logging.getLogger(__name__)

EXPORT_PACKAGES = ("torch", "onnx", "onnxscript", "onnxruntime")
INPUT_NAMES = ("input_ids", "attention_mask")
# ORT_ENABLE_BASIC: constant folding and redundant-node removal. The extended and full levels (operator
# fusions, layout changes) were no faster for this encoder on an AMD EPYC (docs/benchmarks.md).
OPTIMIZATION_LEVEL = "ORT_ENABLE_BASIC"


def onnx_available() -> bool:
    """Whether the `[onnx]` extra is installed (every package the export and the session need)."""
    try:
        for package in EXPORT_PACKAGES:
            metadata.version(package)
    except metadata.PackageNotFoundError:
        return False
    return True


def export_key(manifest: dict, variant: str) -> str:
    """Digest naming a cached export: the weights and config it came from, the tools and the variant."""
    files = manifest.get("files", {})
    material = {
        "weights": files.get("model.safetensors"),
        "config": files.get("config.json"),
        "tools": {package: metadata.version(package) for package in EXPORT_PACKAGES},
        "variant": variant,
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:32]


def _cached(path: Path) -> bool:
    """A cached graph whose recorded sha256 matches its bytes."""
    recorded = path.with_suffix(".sha256")
    return path.is_file() and recorded.is_file() and recorded.read_text().strip() == sha256_file(path)


def _publish(tmp: Path, path: Path) -> None:
    """Record the sha256 of a finished graph, then rename it into place (readers never see half a file)."""
    os.replace(tmp, path)
    path.with_suffix(".sha256").write_text(sha256_file(path) + "\n")


def _export_float32(model: RewardModel, path: Path) -> None:
    """torch.export-based exporter (dynamo): the legacy TorchScript exporter bakes the traced sequence
    length into the attention's reshapes in torch 2.13, so its graph fails on any other length."""
    reference = copy.deepcopy(model).float().eval()
    example = (torch.full((2, 16), 5, dtype=torch.long), torch.ones((2, 16), dtype=torch.long))  # (B, T)
    batch = torch.export.Dim("batch", min=1, max=4096)
    seq = torch.export.Dim("seq", min=2, max=model.cfg.max_len)
    axes = {name: {0: batch, 1: seq} for name in INPUT_NAMES}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.onnx.export(
        reference, example, str(tmp), input_names=list(INPUT_NAMES), output_names=["reward"],
        dynamic_shapes=axes, dynamo=True, external_data=False, verbose=False,
    )  # fmt: skip
    _publish(tmp, path)


def _quantize_int8(source: Path, path: Path) -> None:
    """Dynamic int8 quantization of the MatMul weights (activations quantized per batch at run time)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    quantize_dynamic(str(source), str(tmp), weight_type=QuantType.QInt8)
    _publish(tmp, path)


def cached_graph(model: RewardModel, manifest: dict, directory: Path, quantized: bool) -> Path:
    """The version's graph in `directory` (float32, or int8 made from the float32 one), made if absent."""
    variant = "int8" if quantized else "float32"
    folder = directory / export_key(manifest, variant)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ("model-int8.onnx" if quantized else "model.onnx")
    if _cached(path):
        return path
    log.info("exporting %s ONNX graph to %s", variant, path)
    if quantized:
        _quantize_int8(cached_graph(model, manifest, directory, quantized=False), path)
    else:
        _export_float32(model, path)
    return path


def writable_cache(preferred: Path) -> Path:
    """`preferred` when it can be written (a read-only store is fine), else a private temporary folder."""
    try:
        preferred.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=preferred):
            return preferred
    except OSError as exc:
        fallback = Path(tempfile.mkdtemp(prefix="reward-onnx-"))
        log.warning("ONNX cache %s is not writable (%s); exporting to %s", preferred, exc, fallback)
        return fallback


class OnnxRunner:
    """An ONNX Runtime session of one graph as a backend forward: encoded inputs -> raw rewards."""

    def __init__(self, path: Path, tokenizer: PairTokenizer, threads: int):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1  # one batch at a time, as for torch
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPTIMIZATION_LEVEL)
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.tokenizer = tokenizer

    def forward(self, ids: Sequence[Sequence[int]]) -> list[float]:
        """Sorted by length so that similar lengths share a batch's padding, as the native backend does."""
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        input_ids, mask = self.tokenizer.pad([list(ids[i]) for i in order])  # (B, T) each
        feed = {"input_ids": input_ids.numpy(), "attention_mask": mask.numpy()}
        sorted_out = self.session.run(None, feed)[0].tolist()  # (B,)
        raw = [0.0] * len(ids)
        for position, index in enumerate(order):
            raw[index] = sorted_out[position]
        return raw
