"""coremltools, imported on use: an optional extra (`pip install qiedge[coreml]`), quiet about
what it cannot load off macOS (its prediction library) since qiedge never asks it to predict
there, and named in one clear error when missing."""

from __future__ import annotations

import logging
import sys
from types import ModuleType

import numpy as np

VERSION = "9.0"  # the version the pin in pyproject.toml and the interpreter's tests are for

# Core ML has neither int64 nor bool inputs: indices and masks travel as int32.
_NARROWED = {"int64": "int32", "bool": "int32"}
_NUMPY = {"fp16": np.float16, "fp32": np.float32, "float32": np.float32, "int32": np.int32}


def coreml_dtype(dtype: str) -> str:
    """A manifest dtype ('fp16', 'fp32', 'float32', 'int64', 'bool') as a Core ML package takes it."""
    return _NARROWED.get(dtype, dtype)


def numpy_dtype(dtype: str) -> type:
    """The NumPy dtype of a manifest dtype as Core ML takes it."""
    return _NUMPY[coreml_dtype(dtype)]


def coremltools() -> ModuleType:
    if "coremltools" in sys.modules:
        return sys.modules["coremltools"]
    # Its import logs one warning per macOS-only proxy and one about untested torch versions, and
    # conversion one per int64 constant it narrows (qiedge's indices fit int32) and per weight a
    # compression mode leaves fp16 (rows not a multiple of the group: small layers of small models).
    logging.getLogger("coremltools").setLevel(logging.ERROR)
    try:
        import coremltools
    except ImportError as e:
        raise ImportError(f"the Core ML target needs coremltools: pip install 'qiedge[coreml]' ({e})") from e
    return coremltools


def can_predict() -> bool:
    """Whether Core ML itself can run a model here (macOS with coremltools' native library)."""
    if sys.platform != "darwin":
        return False
    try:
        from coremltools import libcoremlpython  # noqa: F401
    except ImportError:
        return False
    return True
