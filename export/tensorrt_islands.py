"""fp32 islands in fp16 / bf16 graphs, for TensorRT's strongly typed networks.

A strongly typed network computes every layer in its ONNX input type, so precision is decided
in the graph. The reference already computes RMSNorm, RoPE and the timestep angles in fp32 (the
exporter writes the casts); what it leaves in the graph's float type is cast to fp32 here:
- norm statistics (LayerNormalization, ReduceL2, and any Pow / ReduceMean / Sqrt / Reciprocal
  left in low precision): a square overflows fp16 once |x| > 256, and TensorRT's own builder
  warns that a LayerNorm run in fp16 after attention may overflow;
- Softmax: its exponentials and sums, which TensorRT's fused attention also keeps in fp32;
- Sin / Cos: angles reach thousands of radians, where fp16's spacing is several radians.
Each such node reads fp32 casts of its float inputs and its output is cast back, so its
neighbours and every graph interface keep their types. A cast back that feeds another island
is skipped, so a chain of island ops stays in fp32 throughout.
"""

from __future__ import annotations

ISLAND_OPS = frozenset(
    {"LayerNormalization", "ReduceL2", "Pow", "ReduceMean", "Sqrt", "Reciprocal", "Softmax", "Sin", "Cos"}
)


def fp32_islands(model, ops=ISLAND_OPS) -> int:
    """Rewrite `model` (onnx_ir) so the `ops` compute in fp32; returns how many nodes moved."""
    import onnx_ir as ir
    from onnx_ir.passes.common import RemoveUnusedNodesPass

    low = {ir.DataType.FLOAT16, ir.DataType.BFLOAT16}
    graph, moved, widened = model.graph, 0, {}
    for node in list(graph):
        if node.op_type not in ops or not any(v is not None and v.dtype in low for v in node.inputs):
            continue
        for index, value in enumerate(node.inputs):
            if value is not None and value.dtype in low:
                node.replace_input_with(index, _widened(graph, node, value, widened))
        for out in node.outputs:
            if out.dtype in low:
                narrowed(graph, node, out)
        moved += 1
    RemoveUnusedNodesPass()(model)
    return moved


def _widened(graph, before, value, cache: dict):
    """An fp32 view of `value`: the fp32 tensor it was cast from, if it was, else a new Cast."""
    import onnx_ir as ir

    producer = value.producer()
    if producer is not None and producer.op_type == "Cast" and producer.inputs[0].dtype == ir.DataType.FLOAT:
        return producer.inputs[0]
    if value not in cache:
        cast = ir.node("Cast", [value], attributes={"to": ir.DataType.FLOAT})
        cast.outputs[0].dtype, cast.outputs[0].shape = ir.DataType.FLOAT, value.shape
        graph.insert_before(before, [cast])
        cache[value] = cast.outputs[0]
    return cache[value]


def narrowed(graph, node, out) -> None:
    """Make `node` produce fp32 in `out` and give its readers a cast back to the old type."""
    import onnx_ir as ir

    dtype = out.dtype
    cast = ir.node("Cast", [out], attributes={"to": dtype})
    back = cast.outputs[0]
    back.dtype, back.shape = dtype, out.shape
    graph.insert_after(node, [cast])
    for use in list(out.uses()):
        if use.node is not cast:
            use.node.replace_input_with(use.idx, back)
    if out.is_graph_output():
        index = list(graph.outputs).index(out)
        name, out.name = out.name, f"{out.name}.fp32"
        back.name, graph.outputs[index] = name, back
    out.dtype = ir.DataType.FLOAT
