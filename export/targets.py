"""The export targets, by the name `qiedge export --target` takes. A new target is one module
beside `onnx.py` (its stages, manifest fields and files, as `TARGET`) and one entry here.
Modules load on use, so listing the targets imports nothing heavy."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .stages import Target

TARGETS = {"onnx": "qiedge.export.onnx"}  # name -> the module that defines its TARGET


def get_target(name: str) -> Target:
    if name not in TARGETS:
        raise ValueError(f"target {name} is not built yet; built: {', '.join(TARGETS)}")
    return importlib.import_module(TARGETS[name]).TARGET
