"""Traced graphs kept on disk, so a graph is traced once per architecture, not once per export.

Tracing (torch.onnx's dynamo exporter) is most of an ONNX or TensorRT export's time: 10-40 s a
graph even for the tiny test model on one core of a CI CPU. The wrapper is traced on the meta
device, so the traced graph is a function of the code, the libraries, the model's config and the
precision, never of the weights; another checkpoint of the same architecture, another recipe, or
the TensorRT target reading the same graphs all reuse one trace. The key hashes each of those,
so an edit to the reference model or an upgraded exporter is a miss, never a stale graph.

Entries live in `$QIEDGE_CACHE/traces` (core/disk_cache.py: where, how they are written, and
`QIEDGE_CACHE=off`).
"""

from __future__ import annotations

from collections.abc import Callable

from qiedge.core import disk_cache

# What the traced graph runs: its wrappers and specs, the reference model, the contract.
CODE = ("qiedge.export", "qiedge.reference_model", "qiedge.core")
LIBRARIES = ("torch", "transformers", "onnx", "onnxscript", "onnx-ir")
# Where an initializer's weights would be: the graph is stored before any are bound.
UNBOUND = "unbound"


def key(*parts) -> str:
    """The cache key of a trace described by `parts` (their reprs) in this environment."""
    return disk_cache.key(disk_cache.environment(CODE, LIBRARIES), *parts)


def cached(name: str, make: Callable[[], bytes]):
    """The trace stored under `name`, else `make()`'s (bytes, from `dumps`), stored for next
    time; an onnx_ir model either way."""
    return disk_cache.cached("traces", f"{name}.onnx", make, loads)


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
