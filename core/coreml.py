"""coremltools, imported on use: an optional extra (`pip install qiedge[coreml]`), quiet about
what it cannot load off macOS (its prediction library) since qiedge never asks it to predict
there, and named in one clear error when missing."""

from __future__ import annotations

import logging
import sys
from types import ModuleType

VERSION = "9.0"  # the version the pin in pyproject.toml and the interpreter's tests are for


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
