"""Devices and dtypes: the one map from a dtype name (settings, manifests, execution paths) to torch's."""

from __future__ import annotations

import torch

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
