"""What fits a Jetson's memory: the weights each component's engine holds (the artifacts' weight
files, measured) and its activations at the largest shapes of its profile, then whether all
components can stay resident or must run one after another.

Activations are the peak, over the graph's nodes in order, of the tensors alive at once (inputs
included, weights not), with the exporter's symbolic shapes evaluated at the profile's max shapes. That
is an upper bound for TensorRT, which fuses attention (no score matrix) and reuses buffers;
tensors whose shape inference cannot resolve are left out and counted.

A Jetson's GPU shares the system memory, so weight streaming does not help there: what does not
fit is run in turn, or at a smaller precision or size.
"""

from __future__ import annotations

import ast
import operator
from dataclasses import dataclass
from pathlib import Path

# JetPack's OS, the CUDA context and TensorRT's runtime: an estimate of what a Jetson keeps for itself.
SYSTEM_BYTES = 3 << 30
PHASES = {  # what runs together; the transformer's prefix and step engines share the weights file
    "vision_encoder": ("vision_encoder",),  # editing only, and only where it is exported
    "condition_encoder": ("condition_encoder",),
    "transformer": ("transformer_prefix", "transformer_step"),
    "vae_decoder": ("vae_decoder",),
}


@dataclass(frozen=True)
class Need:
    weights: int
    activations: int
    unresolved: int  # tensors left out of the activation peak


def activation_peak(graph_path: Path, shapes: dict[str, list[int]]) -> tuple[int, int]:
    """(peak bytes of live tensors, tensors with unresolved shapes) at these input shapes."""
    import numpy as np
    import onnx
    from onnx import helper

    model = onnx.load(str(graph_path), load_external_data=False)
    symbols = {
        dim.dim_param: size
        for value in model.graph.input
        if value.name in shapes
        for dim, size in zip(value.type.tensor_type.shape.dim, shapes[value.name])
        if dim.dim_param.isidentifier()
    }
    # The exporter's symbolic dims made concrete, then inference for the tensors it left untyped.
    for value in (*model.graph.input, *model.graph.value_info, *model.graph.output):
        for dim in value.type.tensor_type.shape.dim:
            size = _evaluate(dim.dim_param, symbols) if dim.dim_param else None
            if size is not None:
                dim.dim_value = size
    graph = onnx.shape_inference.infer_shapes(model, data_prop=True).graph
    sizes, unresolved = {}, 0
    for value in (*graph.input, *graph.value_info, *graph.output):
        tensor = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
        if not tensor.HasField("shape") or None in dims:
            unresolved += 1
            continue
        itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type)).itemsize
        sizes[value.name] = int(np.prod(dims, dtype=np.int64)) * itemsize
    weights = {t.name for t in graph.initializer}
    last_use = {name: i for i, node in enumerate(graph.node) for name in node.input}
    outputs = {v.name for v in graph.output}
    live = {v.name for v in graph.input if v.name not in weights}
    peak = sum(sizes.get(n, 0) for n in live)
    for i, node in enumerate(graph.node):
        live |= set(node.output)
        peak = max(peak, sum(sizes.get(n, 0) for n in live))
        live = {n for n in live if last_use.get(n, -1) > i or n in outputs}
    return peak, unresolved


_ARITHMETIC = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.FloorDiv: operator.floordiv}


def _evaluate(expression: str, symbols: dict[str, int]) -> int | None:
    """A symbolic dim the exporter wrote ("latent_width*latent_height", "target + prefix") at the
    inputs' sizes; None for anything else (an unknown symbol, a function)."""

    def value(node) -> int:
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, ast.Name):
            return symbols[node.id]
        if isinstance(node, ast.BinOp) and type(node.op) in _ARITHMETIC:
            return _ARITHMETIC[type(node.op)](value(node.left), value(node.right))
        raise KeyError(node)

    try:
        return value(ast.parse(expression, mode="eval").body)
    except (SyntaxError, KeyError):
        return None


def needs(artifacts) -> dict[str, Need]:
    """Per phase: the weight files' bytes (each file once) and the constants inside each graph,
    and the largest activation peak."""
    result = {}
    for phase, components in PHASES.items():
        present = [c for c in components if c in artifacts.components]
        if not present:
            continue
        peaks = [activation_peak(artifacts.verify(c), _max_shapes(artifacts.component(c))) for c in present]
        files = {f for c in present for f in artifacts.component(c)["files"] if not f.endswith(".onnx")}
        weights = sum(artifacts.inside(f).stat().st_size for f in files)
        weights += sum(inline_bytes(artifacts.verify(c)) for c in present)
        result[phase] = Need(weights, max(p for p, _ in peaks), sum(u for _, u in peaks))
    return result


def inline_bytes(graph_path: Path) -> int:
    """The bytes of the constants stored in the graph file itself: the Q/DQ scales among them,
    an fp16 per 64 weights of an INT4 graph (1/17 of its weights), and small tables."""
    import onnx

    model = onnx.load(str(graph_path), load_external_data=False)
    return sum(len(t.raw_data) for t in model.graph.initializer if not t.external_data)


def matrices(graph_path: Path, prefix: str = "transformer.") -> dict[str, int]:
    """The graph's Linear weights named under `prefix`, layer name (less the prefix) -> elements:
    what a recipe may quantize."""
    import onnx

    model = onnx.load(str(graph_path), load_external_data=False)
    return {
        t.name.removeprefix(prefix).removesuffix(".weight"): t.dims[0] * t.dims[1]
        for t in model.graph.initializer
        if len(t.dims) == 2 and t.name.startswith(prefix) and t.name.endswith(".weight")
    }


def requantized(need: Need, elements: int, bits_per_weight: float) -> Need:
    """`need` with `elements` fp16 weights stored at `bits_per_weight` (scales included) instead."""
    return Need(need.weights - int(elements * (16 - bits_per_weight) / 8), need.activations, need.unresolved)


def _max_shapes(entry: dict) -> dict[str, list[int]]:
    return {name: shapes["max"] for name, shapes in entry["profile"].items()}


def plan(needs: dict[str, Need], memory: int, workspace: int) -> dict:
    """Resident at once, one after another, or not at all, in `memory` bytes."""
    usable = memory - SYSTEM_BYTES
    total = sum(n.weights for n in needs.values()) + max(n.activations for n in needs.values()) + workspace
    per_phase = {phase: n.weights + n.activations + workspace for phase, n in needs.items()}
    if total <= usable:
        verdict = "all resident"
    elif max(per_phase.values()) <= usable:
        verdict = "one after another: " + ", then ".join(needs)
    else:
        too_big = [phase for phase, size in per_phase.items() if size > usable]
        verdict = f"does not fit: {' and '.join(too_big)} alone {'need' if len(too_big) > 1 else 'needs'} more"
    return {"memory": memory, "usable": usable, "all_resident": total, "per_phase": per_phase, "verdict": verdict}


def advice(plans: list[dict], tiled: bool) -> list[str]:
    """What would make a phase that does not fit alone fit, where the export can change it."""
    decoder = [p for p in plans if p["per_phase"].get("vae_decoder", 0) > p["usable"]]
    if decoder and not tiled:
        smallest = min(p["memory"] for p in decoder) >> 30
        return [
            f"the VAE decoder alone does not fit {smallest} GB at these sizes: export it with --vae-tile 512 "
            "(or another tile) and its engine plans one tile's activations"
        ]
    return []
