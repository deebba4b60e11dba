"""The export targets, by the name `qiedge export --target` takes. A new target is one module
beside `onnx.py` (its stages, manifest fields and files, as `TARGET`) and one entry here.
Modules load on use, so listing the targets imports nothing heavy."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .stages import Target

TARGETS = {
    "onnx": "qiedge.export.onnx",
    "coreml": "qiedge.export.coreml",
    "tensorrt": "qiedge.export.tensorrt",
}  # name -> the module that defines its TARGET


def get_target(name: str, **options) -> Target:
    """The target `name`, configured with its own options (Core ML's buckets, ...)."""
    if name not in TARGETS:
        raise ValueError(f"target {name} is not built yet; built: {', '.join(TARGETS)}")
    target = importlib.import_module(TARGETS[name]).TARGET
    return target.configured(**options) if options else target
