"""Traced graphs kept on disk, so a graph is traced once per architecture, not once per export.

Tracing (torch.onnx's dynamo exporter) is most of an ONNX or TensorRT export's time: 10-40 s a
graph even for the tiny test model on one core of a CI CPU. The wrapper is traced on the meta
device, so the traced graph is a function of the code, the libraries, the model's config and the
precision, never of the weights; another checkpoint of the same architecture, another recipe, or
the TensorRT target reading the same graphs all reuse one trace. The key hashes each of those,
so an edit to the reference model or an upgraded exporter is a miss, never a stale graph.

The folder is `$QIEDGE_CACHE/traces`, by default under `$XDG_CACHE_HOME/qiedge` (`~/.cache`);
`QIEDGE_CACHE=off` traces every time. Entries are written whole (a temporary file, then renamed)
and a lock per key makes concurrent exports of one graph trace it once.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.metadata
import os
import warnings
from collections.abc import Callable
from pathlib import Path

from qiedge.core.files import write_atomic

# What the traced graph runs: its wrappers and specs, the reference model, the contract.
CODE = ("qiedge.export", "qiedge.reference_model", "qiedge.core")
LIBRARIES = ("torch", "transformers", "onnx", "onnxscript", "onnx-ir")
# Where an initializer's weights would be: the graph is stored before any are bound.
UNBOUND = "unbound"


def folder() -> Path | None:
    """The traces folder, or None when the cache is off."""
    root = os.environ.get("QIEDGE_CACHE")
    if root == "off":
        return None
    if not root:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "qiedge"
    return Path(root) / "traces"


@functools.cache
def _environment() -> str:
    """A digest of the code and library versions every trace depends on."""
    digest = hashlib.sha256()
    for package in CODE:
        root = Path(importlib.import_module(package).__file__).parent
        for path in sorted(root.rglob("*.py")):
            digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    for name in LIBRARIES:
        digest.update(f"{name}=={importlib.metadata.version(name)}\0".encode())
    return digest.hexdigest()


def key(*parts) -> str:
    """The cache key of a trace described by `parts` (their reprs) in this environment."""
    digest = hashlib.sha256(_environment().encode())
    for part in parts:
        digest.update(repr(part).encode() + b"\0")
    return digest.hexdigest()[:32]


def cached(name: str, make: Callable[[], bytes]) -> bytes:
    """The trace stored under `name`, else `make()`'s, stored for next time. A cache that cannot
    be written costs the saving, not the export."""
    root = folder()
    if root is None:
        return make()
    from filelock import FileLock

    path = root / f"{name}.onnx"
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(path) + ".lock")
        lock.acquire()
    except OSError as e:
        warnings.warn(f"trace cache {root} is not usable ({e}); tracing without it", stacklevel=2)
        return make()
    try:
        if path.exists():
            return path.read_bytes()
        data = make()
        try:
            write_atomic(path, data)
        except OSError as e:
            warnings.warn(f"trace cache: could not store {path.name} ({e})", stacklevel=2)
        return data
    finally:
        lock.release()


def dumps(model) -> bytes:
    """A traced onnx_ir model as bytes. Its initializers hold meta tensors, which cannot be
    written, and binding replaces them all: each is written as a placeholder."""
    import onnx_ir as ir

    for value in model.graph.initializers.values():
        value.const_value = ir.ExternalTensor(UNBOUND, 0, 0, value.dtype, shape=value.shape, name=value.name)
    return ir.serde.serialize_model(model).SerializeToString()


def loads(data: bytes):
    """The onnx_ir model `dumps` wrote, its initializers without data again."""
    import onnx
    import onnx_ir as ir

    model = ir.serde.deserialize_model(onnx.load_model_from_string(data))
    for value in model.graph.initializers.values():
        value.const_value = None
    return model
