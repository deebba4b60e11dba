"""A static check of ONNX graphs against what TensorRT's ONNX parser accepts, for one TensorRT
version, so graphs are proven TensorRT-ready where TensorRT cannot be installed.

The operator table is data (export/tensorrt_support/trt-<version>.json, each taken from
onnx-tensorrt's docs/operators.md at that release, which the file names): per operator whether it
is supported, the input types, and which inputs must be build-time constants. On top, the rules
TensorRT's explicit quantization sets for Q/DQ:
- scales are constants, of the float type they quantize (so fp16 scales need opset >= 19);
- zero points are constant zeros;
- activations are quantized per tensor;
- weights per tensor or per output channel (axis 1 of a MatMul's [K, N] weight, axis 0 of a
  Conv's); blocked scales (INT4) only on weights, in blocks along K.
Every problem is reported as one line naming the node.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

SUPPORT = Path(__file__).with_name("tensorrt_support")
QDQ = ("QuantizeLinear", "DequantizeLinear")


@dataclass(frozen=True)
class OpSupport:
    supported: bool
    types: frozenset[str]
    constant_inputs: tuple[int, ...] = ()


@dataclass(frozen=True)
class Table:
    tensorrt: str
    source: str
    opsets: tuple[int, int]
    ops: dict[str, OpSupport]


def versions() -> list[str]:
    return sorted((p.stem.removeprefix("trt-") for p in SUPPORT.glob("trt-*.json")), key=_version_key)


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def resolve(version: str) -> str:
    """A stored table's version: exact, or the newest of a major version given alone ("11")."""
    known = versions()
    if version in known:
        return version
    same_major = [v for v in known if v.split(".")[0] == version]
    if "." not in version and same_major:
        return same_major[-1]
    raise ValueError(f"no TensorRT {version} operator table; known: {', '.join(known)}")


@functools.cache
def table(version: str) -> Table:
    path = SUPPORT / f"trt-{resolve(version)}.json"
    data = json.loads(path.read_text())
    ops = {
        name: OpSupport(op["supported"], frozenset(op.get("types", ())), tuple(op.get("constant_inputs", ())))
        for name, op in data["ops"].items()
    }
    return Table(data["tensorrt"], data["source"], (data["opset"]["min"], data["opset"]["max"]), ops)


def check_file(path: Path, version: str) -> list[str]:
    """Every problem TensorRT `version` would have with the graph at `path` (weights not read)."""
    import onnx

    return check_model(onnx.load(str(path), load_external_data=False), table(version), Path(path).parent)


def check_model(model, table: Table, base_dir: Path | None = None) -> list[str]:
    import onnx

    graph = onnx.shape_inference.infer_shapes(model).graph
    types = _types(graph)
    constants = {t.name: t for t in graph.initializer}
    constants |= {n.output[0]: n.attribute[0].t for n in graph.node if n.op_type == "Constant" and n.attribute}
    producers = {out: node for node in graph.node for out in node.output}
    consumers = {}
    for node in graph.node:
        for index, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node, index))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    low, high = table.opsets
    problems = [] if opset is not None and low <= opset <= high else [f"opset {opset} is outside {low}-{high}"]
    for node in nodes(graph):
        where = f"{node.op_type} {node.name or node.output[0]}"
        problems += _operator(node, where, table, types, constants)
        if node.op_type in QDQ:
            problems += _qdq(node, where, types, constants, producers, consumers, base_dir)
    return [f"TensorRT {table.tensorrt}: {p}" for p in problems]


def nodes(graph):
    """Every node of the graph and of its subgraphs (If branches, loop bodies): TensorRT parses them all."""
    import onnx

    for node in graph.node:
        yield node
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from nodes(attribute.g)


def _types(graph) -> dict[str, str]:
    """Tensor name -> TensorRT's name for its element type."""
    import onnx

    values = [*graph.input, *graph.output, *graph.value_info]
    types = {v.name: v.type.tensor_type.elem_type for v in values if v.type.HasField("tensor_type")}
    types |= {t.name: t.data_type for t in graph.initializer}
    return {
        name: TYPE_NAMES.get(onnx.TensorProto.DataType.Name(t), onnx.TensorProto.DataType.Name(t))
        for name, t in types.items()
    }


# ONNX element type -> the name the operator table uses.
TYPE_NAMES = {
    "FLOAT": "FP32",
    "FLOAT16": "FP16",
    "BFLOAT16": "BF16",
    "FLOAT8E4M3FN": "FP8",
    "INT4": "INT4",
    "INT8": "INT8",
    "UINT8": "UINT8",
    "INT32": "INT32",
    "INT64": "INT64",
    "BOOL": "BOOL",
    "DOUBLE": "DOUBLE",
}


def _operator(node, where: str, table: Table, types: dict, constants: dict) -> list[str]:
    if node.domain not in ("", "ai.onnx"):
        return [f"{where}: custom domain {node.domain!r} needs a plugin"]
    support = table.ops.get(node.op_type)
    if support is None or not support.supported:
        return [f"{where}: {node.op_type} is not supported by the ONNX parser"]
    problems = []
    first = types.get(node.input[0]) if node.input and node.input[0] else None
    if first is not None and support.types and first not in support.types:
        problems.append(
            f"{where}: input {node.input[0]} is {first}; {node.op_type} takes {', '.join(sorted(support.types))}"
        )
    for index in support.constant_inputs:
        if index < len(node.input) and node.input[index] and node.input[index] not in constants:
            problems.append(f"{where}: input {index} ({node.input[index]}) must be a build-time constant")
    return problems


def _qdq(node, where: str, types: dict, constants: dict, producers: dict, consumers: dict, base_dir) -> list[str]:
    x, scale = node.input[0], node.input[1]
    zero = node.input[2] if len(node.input) > 2 else ""
    problems = []
    if scale not in constants:
        return [f"{where}: the scale must be a build-time constant"]
    scale_type = types.get(scale)
    if node.op_type == "QuantizeLinear":
        float_type = types.get(x)
    else:
        float_type = _quantized_from(x, types, producers) or _read_beside(node, types, consumers)
    if float_type is not None and scale_type != float_type:
        problems.append(f"{where}: a {scale_type} scale on a {float_type} tensor (the scale must be {float_type})")
    if zero and (zero not in constants or _any_nonzero(constants[zero], base_dir)):
        problems.append(f"{where}: the zero point must be a constant zero")
    scale_size = _size(constants[scale])
    attributes = {a.name: a for a in node.attribute}
    if x not in constants:  # an activation
        if scale_size != 1:
            problems.append(f"{where}: activations are quantized per tensor; this scale has {scale_size} values")
        return problems
    if scale_size == 1:
        return problems
    axis = attributes["axis"].i if "axis" in attributes else 1
    rank = len(constants[x].dims)
    axis %= rank
    for consumer, index in consumers.get(node.output[0], []):
        expected = {"MatMul": rank - 1, "Gemm": None, "Conv": 0, "ConvTranspose": 1}.get(consumer.op_type)
        if index != 1 or expected is None:
            problems.append(f"{where}: per-channel or blocked weights must feed a MatMul or Conv weight")
        elif "block_size" in attributes and attributes["block_size"].i:
            if consumer.op_type != "MatMul" or rank != 2 or axis != 0:
                problems.append(f"{where}: blocked scales go along K: axis 0 of a MatMul's 2-D [K, N] weight")
        elif axis != expected:
            problems.append(f"{where}: per-channel scales go on the output-channel axis {expected}, not {axis}")
    return problems


def _quantized_from(x: str, types: dict, producers: dict) -> str | None:
    """The float type a DequantizeLinear's input was quantized from, where its Q is in the graph."""
    producer = producers.get(x)
    return types.get(producer.input[0]) if producer is not None and producer.op_type == "QuantizeLinear" else None


def _read_beside(node, types: dict, consumers: dict) -> str | None:
    """The float type a dequantized weight is multiplied with: its consumer's other operand's."""
    for consumer, index in consumers.get(node.output[0], []):
        if index == 1 and consumer.input[0]:
            return types.get(consumer.input[0])
    return None


def _size(tensor) -> int:
    size = 1
    for d in tensor.dims:
        size *= d
    return size


def _any_nonzero(tensor, base_dir) -> bool:
    from onnx import numpy_helper

    return bool(numpy_helper.to_array(tensor, str(base_dir) if base_dir else "").astype("float32").any())
